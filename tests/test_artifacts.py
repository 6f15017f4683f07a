"""Artifact variants (jellybean.artifacts): each format profiled, planned and served end to end with
outputs equal to the artifact called directly; the store that reads only what it should; signatures
checked against the artifact; validate and apply refusing what cannot be served."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from jellybean.artifacts import ArtifactError, ModelStore, apply_steps, artifact_runner, sha256_file  # noqa: E402
from jellybean.cli import main  # noqa: E402
from jellybean.spec.zoo import Artifact, Step, Variant  # noqa: E402

FORMATS = {"torchscript": "tiny.ts", "onnx": "tiny.onnx", "torch-export": "tiny.pt2"}


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(7)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store holding one small network in each format, built here."""
    root = tmp_path_factory.mktemp("store")
    (root / "tiny").mkdir()
    model = tiny_model()
    example = torch.zeros(2, 8)
    torch.jit.save(torch.jit.trace(model, example), root / "tiny" / FORMATS["torchscript"])
    torch.onnx.export(model, (example,), str(root / "tiny" / FORMATS["onnx"]), input_names=["x"],
                      output_names=["scores"], dynamic_axes={"x": {0: "batch"}, "scores": {0: "batch"}}, dynamo=False)
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.export.save(torch.export.export(model, (example,), dynamic_shapes=({0: batch},)),
                      root / "tiny" / FORMATS["torch-export"])
    return root


def variant_doc(store: Path, fmt: str, **changes) -> dict:
    doc = {"name": f"tiny-{fmt}", "accuracy": 90.0, "output_kb": 0.1,
           "profiles": [{"hardware": "local-cpu-1t", "latency_ms": {1: 1.0, 8: 2.0}}],
           "artifact": {"format": fmt, "uri": f"tiny/{FORMATS[fmt]}",
                        "sha256": sha256_file(store / "tiny" / FORMATS[fmt])},
           "signature": {"inputs": [{"name": "x", "shape": [-1, 8]}],
                         "outputs": [{"name": "scores", "shape": [-1, 3]}]},
           "post": [{"op": "argmax", "field": "scores", "to": "label", "labels": ["a", "b", "c"]}]}
    doc.update(changes)
    return doc


def direct(x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return tiny_model()(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_format_runs_as_the_artifact_called_directly(store: Path, fmt: str) -> None:
    runner = artifact_runner(Variant.model_validate(variant_doc(store, fmt)), ModelStore(store))
    x = np.random.default_rng(1).standard_normal((5, 8)).astype(np.float32)
    outputs = runner([{"x": row, "frame_id": k} for k, row in enumerate(x)])
    expected = direct(x)
    assert [len(o) for o in outputs] == [1] * 5
    for k, (out,) in enumerate(outputs):
        np.testing.assert_allclose(out["scores"], expected[k], rtol=1e-5, atol=1e-5)
        assert out["label"] == "abc"[int(np.argmax(expected[k]))]


# --- the store reads only what it should --------------------------------------------------------------


def test_a_wrong_digest_is_refused_every_time_the_file_is_loaded(store: Path, tmp_path: Path) -> None:
    own = tmp_path / "own"
    (own / "tiny").mkdir(parents=True)
    (own / "tiny" / "tiny.onnx").write_bytes((store / "tiny" / "tiny.onnx").read_bytes())
    variant = Variant.model_validate(variant_doc(store, "onnx"))
    artifact_runner(variant, ModelStore(own))  # the same bytes: accepted
    with open(own / "tiny" / "tiny.onnx", "ab") as f:
        f.write(b"\0")  # the file changes after it was checked once
    with pytest.raises(ArtifactError, match="has SHA-256 .* not the"):
        artifact_runner(variant, ModelStore(own))


def test_paths_outside_the_store_are_refused(store: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"`\.\.`|pattern"):
        Artifact(format="onnx", uri="../tiny/tiny.onnx", sha256="0" * 64)
    with pytest.raises(ValueError):
        Artifact(format="onnx", uri="/etc/passwd", sha256="0" * 64)
    root = tmp_path / "store"
    root.mkdir()
    secret = tmp_path / "secret.onnx"
    secret.write_bytes((store / "tiny" / "tiny.onnx").read_bytes())
    (root / "out.onnx").symlink_to(secret)  # a symlink out of the store
    with pytest.raises(ArtifactError, match="outside the model store"):
        ModelStore(root).read(Artifact(format="onnx", uri="out.onnx", sha256=sha256_file(secret)))
    (root / "dir").symlink_to(tmp_path)  # a directory link out of it
    with pytest.raises(ArtifactError, match="outside the model store"):
        ModelStore(root).read(Artifact(format="onnx", uri="dir/secret.onnx", sha256=sha256_file(secret)))
    inside = root / "real.onnx"
    inside.write_bytes(secret.read_bytes())
    (root / "alias.onnx").symlink_to(inside)  # a link that stays inside is fine
    assert ModelStore(root).read(Artifact(format="onnx", uri="alias.onnx", sha256=sha256_file(inside)))
    with pytest.raises(ArtifactError, match="does not exist"):
        ModelStore(tmp_path / "nowhere").read(Artifact(format="onnx", uri="a.onnx", sha256="0" * 64))
    with pytest.raises(ArtifactError, match="is not in the model store"):
        ModelStore(root).read(Artifact(format="onnx", uri="missing.onnx", sha256="0" * 64))


def test_a_fifo_a_directory_and_a_huge_file_are_refused_without_reading_them(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    os.mkfifo(root / "pipe.onnx")  # opened non-blocking, refused by fstat: no writer is ever waited for
    with pytest.raises(ArtifactError, match="not a regular file"):
        ModelStore(root).read(Artifact(format="onnx", uri="pipe.onnx", sha256="0" * 64))
    (root / "folder.onnx").mkdir()
    with pytest.raises(ArtifactError, match="not a regular file|cannot be opened"):
        ModelStore(root).read(Artifact(format="onnx", uri="folder.onnx", sha256="0" * 64))
    with open(root / "huge.onnx", "wb") as f:
        f.truncate(64 * 1024 * 1024)  # sparse: large on paper, nothing read
    with pytest.raises(ArtifactError, match="over the 1048576-byte limit"):
        ModelStore(root, max_bytes=1024 * 1024).read(Artifact(format="onnx", uri="huge.onnx", sha256="0" * 64))


def test_a_file_that_is_not_the_format_it_claims_is_refused_in_words(store: Path) -> None:
    for claimed, actual in (("torchscript", "onnx"), ("onnx", "torchscript"), ("torch-export", "onnx")):
        doc = variant_doc(store, claimed)
        doc["artifact"] = {**doc["artifact"], "uri": f"tiny/{FORMATS[actual]}",
                           "sha256": sha256_file(store / "tiny" / FORMATS[actual])}
        with pytest.raises(ArtifactError, match=f"not a valid {'ONNX' if claimed == 'onnx' else ''}"):
            artifact_runner(Variant.model_validate(doc), ModelStore(store))


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_a_signature_that_does_not_match_the_artifact_is_refused(store: Path, fmt: str) -> None:
    wrong_width = variant_doc(store, fmt, signature={"inputs": [{"name": "x", "shape": [-1, 9]}],
                                                     "outputs": [{"name": "scores", "shape": [-1, 3]}]})
    wrong_out = variant_doc(store, fmt, signature={"inputs": [{"name": "x", "shape": [-1, 8]}],
                                                   "outputs": [{"name": "scores", "shape": [-1, 4]}]})
    for doc in (wrong_width, wrong_out):
        with pytest.raises(ArtifactError, match="dimension|shape|trial run"):
            artifact_runner(Variant.model_validate(doc), ModelStore(store))
    if fmt == "onnx":
        renamed = variant_doc(store, fmt, signature={"inputs": [{"name": "input", "shape": [-1, 8]}],
                                                     "outputs": [{"name": "scores", "shape": [-1, 3]}]})
        with pytest.raises(ArtifactError, match="has input 'x', which the signature does not declare"):
            artifact_runner(Variant.model_validate(renamed), ModelStore(store))
        wrong_type = variant_doc(store, fmt, signature={"inputs": [{"name": "x", "dtype": "int64", "shape": [-1, 8]}],
                                                        "outputs": [{"name": "scores", "shape": [-1, 3]}]})
        with pytest.raises(ArtifactError, match="is float32 in the ONNX graph, not int64"):
            artifact_runner(Variant.model_validate(wrong_type), ModelStore(store))


def test_documents_say_what_serves_a_variant_one_way_only(store: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        Variant.model_validate(variant_doc(store, "onnx", runner="digits-aggregator"))
    with pytest.raises(ValueError, match="needs its `signature`"):
        Variant.model_validate({k: v for k, v in variant_doc(store, "onnx").items() if k != "signature"})
    with pytest.raises(ValueError, match="disagree"):
        Variant.model_validate({"name": "v", "accuracy": 1, "output_kb": 1, "runner": "a", "loader": "b",
                                "profiles": [{"hardware": "h", "latency_ms": {1: 1.0}}]})
    older = Variant.model_validate({"name": "v", "accuracy": 1, "output_kb": 1, "loader": "digits-aggregator",
                                    "profiles": [{"hardware": "h", "latency_ms": {1: 1.0}}]})
    assert older.runner == "digits-aggregator"  # `loader`, the older name, still reads
    with pytest.raises(ValueError, match="batch"):
        Variant.model_validate(variant_doc(store, "onnx", signature={"inputs": [{"name": "x", "shape": [8]}],
                                                                     "outputs": [{"name": "s", "shape": [-1]}]}))


# --- steps ---------------------------------------------------------------------------------------------


def test_the_fixed_steps_transform_drop_and_fan_out_messages() -> None:
    import io
    import wave

    from PIL import Image

    png = io.BytesIO()
    Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4) * 20).save(png, format="PNG")
    steps = [Step(op="decode-image", field="payload", to="image", mode="gray"),
             Step(op="resize", field="image", size=[6, 8]),
             Step(op="normalize", field="image", mean=0.5, std=0.25)]
    (out,) = apply_steps(steps, {"payload": png.getvalue()})
    assert out["image"].shape == (6, 8) and abs(float(out["image"].min()) + 2.0) < 1e-6
    wav = io.BytesIO()
    with wave.open(wav, "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes((np.array([0, 16384, -16384], dtype=np.int16)).tobytes())
    (out,) = apply_steps([Step(op="decode-audio", field="wav", to="audio", rate=16000),
                          Step(op="pad", field="audio", length=5)], {"wav": wav.getvalue()})
    np.testing.assert_allclose(out["audio"], [0, 0.5, -0.5, 0, 0])
    with pytest.raises(ValueError, match="expects 8000 Hz"):
        apply_steps([Step(op="decode-audio", field="wav", rate=8000)], {"wav": wav.getvalue()})
    assert apply_steps([Step(op="threshold", field="p", above=0.5, to="yes"), Step(op="keep-if", field="yes")],
                       {"p": np.array([0.3])}) == []
    image = np.ones((10, 10), np.float32)
    crops = apply_steps([Step(op="crop-boxes", field="image", boxes="boxes", size=[4, 4], to="crops"),
                         Step(op="fan-out", field="crops", to="crop")],
                        {"image": image, "boxes": [[0, 0, 5, 5], [5, 5, 10, 10], [3, 3, 3, 3]]})
    assert len(crops) == 2 and crops[0]["crop"].shape == (4, 4)  # the empty box makes no crop
    (top,) = apply_steps([Step(op="top-k", field="s", k=2, labels=["x", "y", "z"], to="best")],
                         {"s": np.array([0.1, 0.7, 0.2])})
    assert top["best"] == ["y", "z"]
    (judged,) = apply_steps([Step(op="argmax", field="s", to="label", judge=True)], {"s": [0.1, 0.9], "truth": 1})
    assert judged["label"] == 1 and judged["correct"] is True


# --- the CLI: store, validate, profile, plan; the API's 409 ---------------------------------------------


DOCS = """\
apiVersion: jellybean.io/v1alpha1
kind: ModelZoo
metadata: {{name: tiny}}
spec:
  tasks:
  - name: tiny-classify
    variants:
{variants}
---
apiVersion: jellybean.io/v1alpha1
kind: Topology
metadata: {{name: one-box}}
spec:
  sites:
  - name: cloud
    tier: cloud
    instances:
    - {{name: cpu, hardware: local-cpu-1t, price_per_hour: 0.1, max_count: 1, memory_mb: 1024, cpus: 1}}
  - name: sensor
    tier: device
    parent: cloud
    uplink: {{up: {{bandwidth_mbps: 10}}, down: {{bandwidth_mbps: 10}}}}
---
apiVersion: jellybean.io/v1alpha1
kind: Workflow
metadata: {{name: tiny}}
spec:
  zoo: tiny
  topology: one-box
  sources:
  - name: sensors
    ingest: http
    rate_per_s: 5
    payload_kb: 0.1
    payload: {{name: x, dtype: float32, shape: [8]}}
    sites: [sensor]
  stages:
  - name: classify
    task: tiny-classify
    inputs: [sensors]
  outputs:
  - {{name: labels, kind: stream}}
  slo: {{accuracy: 50.0}}
"""


def documents(store: Path, formats: list[str], tmp_path: Path, **changes) -> Path:
    import yaml

    variants = yaml.safe_dump([variant_doc(store, fmt, **changes) for fmt in formats], sort_keys=False)
    path = tmp_path / "tiny.yaml"
    path.write_text(DOCS.format(variants=textwrap.indent(variants, "    ")))
    return path


def test_store_add_prints_the_artifact_line(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "mine"
    assert main(["store", "add", str(store / "tiny" / "tiny.onnx"), "--to", "models/v1",
                 "--model-store", str(target)]) == 0
    line = capsys.readouterr().out.strip()
    assert line == f"artifact: {{format: onnx, uri: models/v1/tiny.onnx, sha256: {sha256_file(store / 'tiny' / 'tiny.onnx')}}}"
    assert (target / "models" / "v1" / "tiny.onnx").is_file()


def test_validate_proves_artifacts_loadable_and_names_the_variant(store: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = documents(store, list(FORMATS), tmp_path)
    assert main(["validate", "-f", str(path), "--model-store", str(store)]) == 0
    capsys.readouterr()
    bad = documents(store, ["onnx"], tmp_path, signature={"inputs": [{"name": "x", "shape": [-1, 9]}],
                                                          "outputs": [{"name": "scores", "shape": [-1, 3]}]})
    assert main(["validate", "-f", str(bad), "--model-store", str(store)]) == 2
    err = capsys.readouterr().err
    assert "spec.tasks[0].variants[0].artifact: variant 'tiny-onnx' (onnx, tiny/tiny.onnx)" in err
    assert "dimension 1 is 8 in the ONNX graph, 9 in the signature" in err
    assert "Traceback" not in err and "internal error" not in err
    assert main(["validate", "-f", str(path), "--model-store", str(tmp_path / "empty")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_apply_refuses_an_artifact_that_cannot_be_served_with_its_variant_and_reason(store: Path, tmp_path: Path) -> None:
    from functools import partial

    from jellybean.runtime.controller import Controller, Rejected, default_servability_check
    from jellybean.runtime.state import StateStore
    from tests.runtime.test_controller import Recorder, files_of, sites_of

    folder = tmp_path / "docs"
    folder.mkdir()
    documents(store, ["torchscript"], folder, artifact={"format": "torchscript", "uri": "tiny/tiny.ts",
                                                        "sha256": "1" * 64})
    controller = Controller(StateStore(tmp_path / "state"), pipeline_factory=Recorder().factory,
                            site_resources=sites_of, check_servable=partial(default_servability_check, model_store=store))
    with pytest.raises(Rejected) as info:
        controller.apply(files_of(folder))
    (rejection,) = info.value.rejections
    assert rejection.reason == "not-servable"
    assert "variant 'tiny-torchscript'" in rejection.explanation[0] and "has SHA-256" in rejection.explanation[0]
    assert controller.store.counts()["submissions"] == 0


def test_profile_measures_any_format_and_merges_a_second_hardware_entry(store: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    path = documents(store, list(FORMATS), tmp_path)
    out = tmp_path / "profiled.yaml"
    assert main(["profile", "-f", str(path), "--model-store", str(store), "--batch-sizes", "1,4", "--repeats", "5",
                 "--variant", "tiny-onnx", "--variant", "tiny-torch-export", "--out", str(out)]) == 0
    zoo = next(d for d in yaml.safe_load_all(out.read_text()) if d["kind"] == "ModelZoo")
    by_name = {v["name"]: v for v in zoo["spec"]["tasks"][0]["variants"]}
    for name in ("tiny-onnx", "tiny-torch-export"):
        (profile,) = by_name[name]["profiles"]  # local-cpu-1t measured: replaced, not doubled
        assert sorted(profile["latency_ms"]) == [1, 4] and profile["latency_ms_p90"][4] >= profile["latency_ms_p50"][4]
        assert by_name[name]["memory_mb"] >= 0
    assert by_name["tiny-torchscript"]["profiles"][0]["latency_ms"] == {1: 1.0, 8: 2.0}  # not asked: untouched
    # A second machine's measurements are a second entry; CPU figures are never filed as a GPU's unasked.
    assert main(["profile", "-f", str(out), "--model-store", str(store), "--batch-sizes", "1", "--repeats", "3",
                 "--variant", "tiny-onnx", "--hardware", "edge-box-cpu", "--out", str(out)]) == 0
    assert main(["profile", "-f", str(out), "--model-store", str(store), "--variant", "tiny-onnx",
                 "--hardware", "t4-gpu"]) == 2
    assert "Say --as t4-gpu" in capsys.readouterr().err
    zoo = next(d for d in yaml.safe_load_all(out.read_text()) if d["kind"] == "ModelZoo")
    onnx = next(v for v in zoo["spec"]["tasks"][0]["variants"] if v["name"] == "tiny-onnx")
    assert [p["hardware"] for p in onnx["profiles"]] == ["local-cpu-1t", "edge-box-cpu"]
    assert main(["validate", "-f", str(out), "--model-store", str(store)]) == 0


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_format_is_planned_and_served_with_the_artifacts_outputs(store: Path, tmp_path: Path, fmt: str) -> None:
    """profile -> plan -> serve: the measured profile is what the planner reads, the replica builds
    the runner from the store itself (the in-process backend runs the real hosts, no fake runners),
    and each result carries the sink's outputs under ``outputs``, equal to the artifact called directly."""
    from jellybean.optimizer import plan as make_plan
    from jellybean.runtime.dataplane import Pipeline
    from jellybean.runtime.replicas import InProcessBackend
    from jellybean.runtime.worker import COMPLETED
    from jellybean.spec import load_bundle
    from tests.runtime.inprocess import ends, inject

    path = documents(store, [fmt], tmp_path)
    profiled = tmp_path / "profiled.yaml"
    assert main(["profile", "-f", str(path), "--model-store", str(store), "--batch-sizes", "1,2", "--repeats", "3",
                 "--out", str(profiled)]) == 0
    bundle = load_bundle([profiled])
    plan = make_plan(bundle, baselines=False)
    (assignment,) = plan.assignments
    assert assignment.variant == f"tiny-{fmt}" and plan.feasible
    backend = InProcessBackend()
    p = Pipeline(bundle, plan, backend=backend, model_store=store, data_token="t", report_interval_s=3600.0)
    try:
        p.start()
        x = np.random.default_rng(3).standard_normal((6, 8)).astype(np.float32)
        answers = ends(p, inject(p, [{"x": row} for row in x], site="sensor", source="sensors", reply=True))
        expected = direct(x)
        for k, (state, result) in enumerate(sorted(answers.values(), key=lambda a: int(a[1]["frame_id"].rsplit("#", 1)[1]))):
            assert state == COMPLETED
            np.testing.assert_allclose(result["outputs"]["scores"], expected[k], rtol=1e-5, atol=1e-5)
            assert result["outputs"]["label"] == "abc"[int(np.argmax(expected[k]))]
    finally:
        p.stop(drain=False)
        backend.close()


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_format_served_on_ray_answers_as_the_artifact_called_directly(ray_local, store: Path, tmp_path: Path,
                                                                           fmt: str) -> None:
    """The same, on Ray: the replica actor builds the runner from the store, the frames enter at the
    sensor's ingest endpoint over HTTP, and each answer (``?wait``) carries the artifact's outputs."""
    from jellybean.optimizer import plan as make_plan
    from jellybean.runtime.dataplane import Pipeline
    from jellybean.spec import load_bundle
    from tests.runtime.test_endpoints import request
    from tests.runtime.test_sources import npy

    path = documents(store, [fmt], tmp_path)  # the sensor renamed to a site the shared Ray has resources for
    path.write_text(path.read_text().replace("- name: sensor\n", "- name: device\n").replace("[sensor]", "[device]"))
    bundle = load_bundle([path])
    plan = make_plan(bundle, baselines=False)
    p = Pipeline(bundle, plan, model_store=store, data_token="t", report_interval_s=0.5)
    x = np.random.default_rng(5).standard_normal((4, 8)).astype(np.float32)
    expected = direct(x)
    try:
        p.start()
        (ingest,) = [e.url for e in p.endpoints() if e.kind == "ingest"]
        for k, row in enumerate(x):
            status, _, body = request(ingest, "POST", npy(row), content_type="application/x-npy", token="t",
                                      query="wait=30")
            answer = json.loads(body)
            assert status == 200 and answer["state"] == "completed", answer
            np.testing.assert_allclose(answer["result"]["outputs"]["scores"], expected[k], rtol=1e-5, atol=1e-5)
            assert answer["result"]["outputs"]["label"] == "abc"[int(np.argmax(expected[k]))]
    finally:
        summary = p.stop(drain=True)
    assert summary.frames.completed == summary.frames.sent == 4 and summary.frames.lost == 0
