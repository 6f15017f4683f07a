"""The JellyBean optimizer-input importer on the authors' published VQA instance."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import shutil
from pathlib import Path

import pytest

from jellybean.importers import jellybean_csv
from jellybean.importers.jellybean_csv import (
    JellyBeanImportWarning,
    import_jellybean,
    safe_unpickle,
    write_documents,
)
from jellybean.spec import ModelZoo, SpecError, Topology, Workflow, load_bundle

ROOT = Path(__file__).resolve().parents[2]
VQA = ROOT / "tests" / "data" / "jellybean-vqa-medium"
COMMITTED = ROOT / "workflows" / "vqa-medium"

WORKER_PRICES = {
    "workflow-compute-cpu-1": 0.096,
    "workflow-compute-cpu-2": 0.192,
    "workflow-compute-cpu-3": 0.384,
    "workflow-compute-cpu-4": 0.384,
    "workflow-compute-cpu-5": 0.768,
    "workflow-compute-cpu-6": 2.305,
    "workflow-compute-gpu-1": 2.497,
    "workflow-compute-gpu-2": 2.497,
    "workflow-compute-gpu-3": 2.497,
}
SPEECH_LARGE = "wav2vec2-large-960h-lv60-self"


def _import(folder: Path = VQA, **kwargs) -> tuple[ModelZoo, Topology, Workflow, list[str]]:
    warnings: list[str] = []
    zoo, topology, workflow = import_jellybean(folder, name="vqa-medium", warnings=warnings, **kwargs)
    assert isinstance(zoo, ModelZoo) and isinstance(topology, Topology) and isinstance(workflow, Workflow)
    return zoo, topology, workflow, warnings


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A writable copy of the VQA folder."""
    copy = tmp_path / "jellybean-vqa-medium"
    shutil.copytree(VQA, copy)
    for path in copy.iterdir():
        path.chmod(0o644)
    return copy


def _as_pickle(folder: Path, protocol: int, name: str = "nodes_accuracy_profiles.pkl") -> None:
    profile = folder / "accuracy_profiles.json"
    data = json.loads(profile.read_text())
    profile.unlink()
    (folder / name).write_bytes(pickle.dumps(data, protocol=protocol))


# --- the published numbers ------------------------------------------------------------------


def test_infrastructure_numbers() -> None:
    _, topology, _, warnings = _import()
    assert warnings == []
    spec = topology.spec
    assert (spec.sharing, spec.max_utilization, spec.allow_downward_flows) == ("exclusive", 1.0, False)
    assert [(s.name, s.tier.value, s.parent) for s in spec.sites] == [("edge", "edge", "cloud"), ("cloud", "cloud", None)]
    instances = {i.name: i for s in spec.sites for i in s.instances}
    assert len(instances) == 9
    assert {name: i.price_per_hour for name, i in instances.items()} == WORKER_PRICES
    assert all(i.hardware == i.name and i.count == 1 and i.max_count is None for i in instances.values())
    edge, cloud = spec.sites
    assert [i.name for i in edge.instances] == [f"workflow-compute-cpu-{k}" for k in range(1, 6)]
    assert [i.name for i in cloud.instances] == ["workflow-compute-cpu-6"] + [f"workflow-compute-gpu-{k}" for k in (1, 2, 3)]
    assert edge.uplink is not None and cloud.uplink is None
    assert edge.uplink.up.cost_per_gb == pytest.approx(0.1)
    assert edge.uplink.down.cost_per_gb == pytest.approx(1.0)
    assert edge.uplink.up.bandwidth_mbps is None and edge.uplink.down.bandwidth_mbps is None


def test_workflow_numbers() -> None:
    _, _, workflow, _ = _import()
    spec = workflow.spec
    assert (workflow.metadata.name, spec.zoo, spec.topology) == ("vqa-medium",) * 3
    sources = {s.name: s for s in spec.sources}
    assert list(sources) == ["ReadImage", "ReadSpeech"]
    assert sources["ReadImage"].kind == "camera" and sources["ReadSpeech"].kind == "microphone"
    assert sources["ReadImage"].rate_per_s == 40 and sources["ReadSpeech"].rate_per_s == 40
    assert sources["ReadImage"].payload_kb == pytest.approx(794.03, abs=0.005)
    assert sources["ReadSpeech"].payload_kb == pytest.approx(97.07, abs=0.005)
    assert all(s.sites == ["edge"] and s.count_per_site == 1 for s in sources.values())
    stages = {s.name: s for s in spec.stages}
    assert list(stages) == ["ExtractImageFeature", "SpeechRecognition", "VQA"]
    assert all(s.task == s.name for s in stages.values())
    assert [(i.from_, i.ratio) for i in stages["VQA"].input_specs()] == [
        ("ExtractImageFeature", 1.0), ("SpeechRecognition", 1.0)]
    assert [(i.from_, i.ratio) for i in stages["ExtractImageFeature"].input_specs()] == [("ReadImage", 1.0)]
    assert spec.sink == "VQA"
    assert spec.slo.accuracy == 56.0 and spec.slo.accuracy_table == "vqa-medium-end-to-end"


def test_zoo_numbers() -> None:
    zoo, _, _, _ = _import()
    tasks = {t.name: t for t in zoo.spec.tasks}
    assert list(tasks) == ["ExtractImageFeature", "SpeechRecognition", "VQA"]
    image = tasks["ExtractImageFeature"]
    assert [v.name for v in image.variants] == ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
    resnet18 = image.variant("resnet18")
    assert resnet18.output_kb == 2.00390625
    assert image.variant("resnet50").output_kb == 8.00390625
    assert tasks["SpeechRecognition"].variant(SPEECH_LARGE).output_kb == pytest.approx(0.1)
    assert tasks["VQA"].variant("default").output_kb == 0.0  # the sink sends nothing on
    assert resnet18.accuracy == 89.074 and resnet18.cost_proxy == pytest.approx(6.0817391967773435)
    assert [(s.inputs, s.output) for s in resnet18.accuracy_profile] == [({}, 89.074)]
    gpu1 = resnet18.profile_for("workflow-compute-gpu-1")
    assert gpu1.latency_ms == {1: 16.1434125}
    assert gpu1.latency_ms_p90 == {1: 17.268001833333333}
    every = [p for t in tasks.values() for v in t.variants for p in v.profiles]
    assert len(every) == 9 * (5 + 2 + 1)
    assert all(p.latency_ms_p90 is not None for p in every)
    vqa = tasks["VQA"].variant("default")
    assert vqa.accuracy == 58.33 and len(vqa.accuracy_profile) == 10
    assert vqa.accuracy_profile[1].inputs == {"ExtractImageFeature": 89.074, "SpeechRecognition": -1.8621}
    assert vqa.accuracy_profile[1].output == 56.59
    assert vqa.cost_proxy == pytest.approx(3.718242340022698)
    (table,) = zoo.spec.accuracy_tables
    assert table.name == "vqa-medium-end-to-end"
    assert table.tasks == ["ExtractImageFeature", "SpeechRecognition"]
    assert len(table.rows) == 10
    rows = {tuple(r.variants): r.accuracy for r in table.rows}
    assert rows[("resnet18", SPEECH_LARGE)] == 56.59


def test_name_defaults_to_the_folder(folder: Path) -> None:
    docs = import_jellybean(folder, warnings=[])
    assert [d.metadata.name for d in docs] == ["jellybean-vqa-medium"] * 3
    assert docs[2].spec.zoo == docs[2].spec.topology == "jellybean-vqa-medium"
    assert docs[0].spec.accuracy_tables[0].name == "jellybean-vqa-medium-end-to-end"


def test_scaling_factor_is_a_parameter() -> None:
    _, topology, _, _ = _import(comm_cost_scaling=1.0)
    uplink = topology.spec.sites[0].uplink
    assert (uplink.up.cost_per_gb, uplink.down.cost_per_gb) == (1.0, 10.0)


# --- writing and the committed documents ----------------------------------------------------


def _models(bundle) -> tuple:
    return bundle.zoo, bundle.topology, bundle.workflow


def test_written_yaml_round_trips_to_the_committed_workflow(tmp_path: Path) -> None:
    docs = import_jellybean(VQA, name="vqa-medium", warnings=[])
    paths = write_documents(docs, tmp_path / "out")
    assert sorted(p.name for p in paths) == ["topology.yaml", "workflow.yaml", "zoo.yaml"]
    for path in paths:
        text = path.read_text()
        assert text.startswith("# ") and "JellyBean optimizer-input folder" in text.splitlines()[0]
        assert "Units:" in text
    written = load_bundle([tmp_path / "out"])
    committed = load_bundle([COMMITTED])
    assert _models(written) == tuple(docs)
    assert _models(written) == _models(committed)


def test_committed_workflow_states_its_source() -> None:
    for name in ("zoo.yaml", "topology.yaml", "workflow.yaml"):
        head = (COMMITTED / name).read_text().split("apiVersion:")[0]
        for needle in ("libertyeagle/JellyBean", "VQA/examples/optimizer_inputs", "PVLDB 16(3)", "0.1",
                       "1024", "56.59", "$7.509/h", "ResNet-18", "wav2vec2-large"):
            assert needle in head, (name, needle)


def test_latency_keys_are_written_as_integers(tmp_path: Path) -> None:
    write_documents(import_jellybean(VQA, name="vqa-medium", warnings=[]), tmp_path)
    text = (tmp_path / "zoo.yaml").read_text()
    assert "latency_ms:\n          1: 135.08435991666667" in text
    assert "'1'" not in text


# --- the accuracy profile as a pickle -------------------------------------------------------


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickled_profile_imports_like_the_json(folder: Path, protocol: int) -> None:
    expected = _import(folder)[:3]
    _as_pickle(folder, protocol)
    assert not (folder / "accuracy_profiles.json").exists()
    assert _import(folder)[:3] == expected


def test_pickle_with_tuples_imports_like_the_json(folder: Path) -> None:
    expected = _import(folder)[:3]
    data = json.loads((folder / "accuracy_profiles.json").read_text())
    for entry in data["per_operator"]:
        entry["inputs"] = tuple(entry["inputs"]) if entry["inputs"] else None
        for samples in entry["variants"].values():
            for sample in samples:
                sample["inputs_accuracy"] = tuple(sample["inputs_accuracy"])
    (folder / "accuracy_profiles.json").unlink()
    (folder / "profiles.pickle").write_bytes(pickle.dumps(data))
    assert _import(folder)[:3] == expected


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_malicious_pickle_is_refused_without_running(folder: Path, tmp_path: Path, protocol: int) -> None:
    marker = tmp_path / "pwned"
    (folder / "accuracy_profiles.json").unlink()
    payload = {"per_operator": [_Evil(marker)]}
    (folder / "nodes_accuracy_profiles.pkl").write_bytes(pickle.dumps(payload, protocol=protocol))
    with pytest.raises(SpecError) as caught:
        import_jellybean(folder, warnings=[])
    assert not marker.exists()
    message = str(caught.value)
    assert "refused global" in message and "system" in message  # os.system pickles as posix.system
    assert "nodes_accuracy_profiles.pkl" in caught.value.issues[0].file


def test_pickled_class_instances_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.pkl"
    path.write_bytes(pickle.dumps({"x": pytest.approx(1.0)}))
    with pytest.raises(SpecError, match="refused global"):
        safe_unpickle(path)


def test_pickle_size_and_shape_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "p.pkl"
    path.write_bytes(pickle.dumps(list(range(100))))
    monkeypatch.setattr(jellybean_csv, "MAX_PROFILE_VALUES", 50)
    with pytest.raises(SpecError, match="more than 50 values"):
        safe_unpickle(path)
    monkeypatch.setattr(jellybean_csv, "MAX_FILE_BYTES", 64)
    with pytest.raises(SpecError, match="bytes, more than 64"):
        safe_unpickle(path)
    path.write_bytes(b"\x80\x04garbage")
    monkeypatch.setattr(jellybean_csv, "MAX_FILE_BYTES", 1024)
    with pytest.raises(SpecError, match="invalid pickle"):
        safe_unpickle(path)


#: A list holding itself, in protocol 0: MARK, LIST, PUT 0, GET 0, APPEND, STOP.
CYCLIC_PICKLE = b"(lp0\ng0\na."
#: A list nested 200,000 deep (EMPTY_LIST x N, APPEND x N-1): a 400 kB file.
DEEP_PICKLE = b"]" * 200_000 + b"a" * 199_999 + b"."


def _shared_pickle(levels: int) -> bytes:
    """A list of two references to one list of two references ... : 2**levels leaves in a few bytes."""
    data: list = [1]
    for _ in range(levels):
        data = [data, data]
    return pickle.dumps(data, protocol=4)


@pytest.mark.parametrize("raw, message", [
    (CYCLIC_PICKLE, f"nested deeper than {jellybean_csv.MAX_PROFILE_DEPTH} levels (a cycle?)"),
    (DEEP_PICKLE, f"nested deeper than {jellybean_csv.MAX_PROFILE_DEPTH} levels"),
    (_shared_pickle(40), f"more than {jellybean_csv.MAX_PROFILE_VALUES} values (shared references?)"),
], ids=["cycle", "deep", "shared"])
def test_hostile_shapes_are_refused_with_the_real_limits(tmp_path: Path, raw: bytes, message: str) -> None:
    path = tmp_path / "p.pkl"
    path.write_bytes(raw)
    assert pickle.loads(raw) is not None  # each is a valid pickle of plain lists
    with pytest.raises(SpecError) as info:
        safe_unpickle(path)
    (issue,) = info.value.issues
    assert message in issue.message and issue.file == str(path)


def test_a_cyclic_pickle_does_not_hang_the_importer(folder: Path) -> None:
    """`jellybean import jellybean` on a folder whose profile is the 10-byte cycle exits 2 at once
    (a subprocess with a deadline: the old check copied the path at every step and ran for an hour)."""
    (folder / "accuracy_profiles.json").unlink()
    (folder / "nodes_accuracy_profiles.pkl").write_bytes(CYCLIC_PICKLE)
    done = subprocess.run([sys.executable, "-m", "jellybean", "import", "jellybean", str(folder), "--out",
                           str(folder / "out")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "nested deeper than" in done.stderr and "Traceback" not in done.stderr


# --- errors and warnings --------------------------------------------------------------------


def test_missing_file_names_it(folder: Path) -> None:
    (folder / "execution_profile.csv").unlink()
    with pytest.raises(SpecError) as caught:
        import_jellybean(folder, warnings=[])
    assert any(i.file.endswith("execution_profile.csv") and "missing" in i.message for i in caught.value.issues)


def test_bad_csv_rows_name_file_and_line(folder: Path) -> None:
    path = folder / "execution_profile.csv"
    lines = path.read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0] + ",fast"
    lines[4] = "SpeechRecognition,workflow-compute-cpu-3"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SpecError) as caught:
        import_jellybean(folder, warnings=[])
    found = {(Path(i.file).name, i.line) for i in caught.value.issues}
    assert ("execution_profile.csv", 3) in found and ("execution_profile.csv", 5) in found
    assert "not a number" in str(caught.value) and "expected 4 fields" in str(caught.value)


def test_unknown_worker_is_an_error(folder: Path) -> None:
    path = folder / "workers_workers_link.csv"
    lines = path.read_text().splitlines() + ["workflow-compute-cpu-9,workflow-compute-gpu-1,1.0"]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SpecError) as caught:
        import_jellybean(folder, warnings=[])
    (issue,) = caught.value.issues
    assert Path(issue.file).name == "workers_workers_link.csv" and issue.line == len(lines) == 41


def test_unequal_link_prices_warn_and_use_the_maximum(folder: Path) -> None:
    path = folder / "workers_workers_link.csv"
    path.write_text(path.read_text().replace("workflow-compute-cpu-1,workflow-compute-gpu-1,1.0",
                                             "workflow-compute-cpu-1,workflow-compute-gpu-1,3.0"))
    _, topology, _, warnings = _import(folder)
    assert topology.spec.sites[0].uplink.up.cost_per_gb == pytest.approx(0.3)
    assert len(warnings) == 1 and "not all equal" in warnings[0]
    with pytest.warns(JellyBeanImportWarning, match="not all equal"):
        import_jellybean(folder)


def test_unlisted_pairs_cost_nothing(folder: Path) -> None:
    (folder / "workers_workers_link.csv").unlink()
    (folder / "sources_workers_link.csv").unlink()
    _, topology, _, warnings = _import(folder)
    uplink = topology.spec.sites[0].uplink
    assert (uplink.up.cost_per_gb, uplink.down.cost_per_gb) == (0.0, 0.0)
    assert warnings == []


def test_tier_names_follow_the_number_of_tiers(folder: Path) -> None:
    cpu = [f"workflow-compute-cpu-{k}" for k in range(1, 7)]
    cloud = [cpu[5]] + [f"workflow-compute-gpu-{k}" for k in (1, 2, 3)]
    partitions = {
        3: ([cpu[0:2], cpu[2:5], cloud], ["hub", "edge", "cloud"]),
        4: ([cpu[0:2], cpu[2:3], cpu[3:5], cloud], ["device", "hub", "edge", "cloud"]),
    }
    for partition, names in partitions.values():
        (folder / "workers_partition.json").write_text(json.dumps(partition))
        _, topology, workflow, _ = _import(folder)
        sites = topology.spec.sites
        assert [s.name for s in sites] == names and [s.tier.value for s in sites] == names
        assert [s.parent for s in sites] == names[1:] + [None]
        assert [[i.name for i in s.instances] for s in sites] == partition
        assert all(s.sites == [names[0]] for s in workflow.spec.sources)
    (folder / "workers_partition.json").write_text(json.dumps([cpu + cloud[1:]]))
    with pytest.raises(SpecError, match="1 tiers"):
        import_jellybean(folder, warnings=[])


def test_folder_name_that_is_no_document_name_needs_name(tmp_path: Path) -> None:
    odd = tmp_path / "vqa medium!"
    shutil.copytree(VQA, odd)
    with pytest.raises(SpecError, match="pass name="):
        import_jellybean(odd, warnings=[])
    assert import_jellybean(odd, name="vqa-medium", warnings=[])[0].metadata.name == "vqa-medium"
