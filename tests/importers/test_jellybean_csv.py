"""The JellyBean optimizer-input importer on the authors' published VQA instance."""

from __future__ import annotations

import collections
import copyreg
import dataclasses
import io
import json
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import shutil
import time
import types
from pathlib import Path
from typing import Any
from collections.abc import Callable

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
    assert "latency_ms: {1: 135.08435991666667}" in text  # the one writer: a batch-size table on one line
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
    (folder / "nodes_accuracy_profiles.pkl").unlink()  # one pickle per folder
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
    (CYCLIC_PICKLE, "a cycle: this value is the one at the top level, which contains it"),
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
    assert "a cycle" in done.stderr and "Traceback" not in done.stderr


# --- JellyBean's own pickle: their classes, read as inert stand-ins -------------------------

REAL_PICKLE = VQA / "nodes_accuracy_profiles.pkl"
THEIR_CLASSES = {("beam_search", "EndToEndAccuracyProfile"), ("beam_search", "OperatorAccuracyProfile"),
                 ("beam_search", "AccSample")}


def test_real_pickle_names_exactly_their_three_classes() -> None:
    """What the authors' file holds (read with pickletools, never unpickled here): protocol 4, three
    STACK_GLOBALs of their beam_search classes built by NEWOBJ and BUILD, and no REDUCE at all."""
    strings: list[str] = []  # the strings pushed, in order (directly or from the memo)
    memo: list[Any] = []
    top: Any = None  # what the previous opcode pushed, when a string
    globals_: set[tuple[str, str]] = set()
    opcodes: set[str] = set()
    for op, arg, _ in pickletools.genops(REAL_PICKLE.read_bytes()):
        opcodes.add(op.name)
        if op.name == "MEMOIZE":
            memo.append(top)
            continue
        top = arg if "UNICODE" in op.name else memo[arg] if op.name in ("BINGET", "LONG_BINGET") else None
        if isinstance(top, str):
            strings.append(top)
        if op.name == "STACK_GLOBAL":
            globals_.add((strings[-2], strings[-1]))
    assert globals_ == THEIR_CLASSES == set(jellybean_csv._RefusingUnpickler.ALLOWED_GLOBALS)
    assert {"NEWOBJ", "BUILD"} <= opcodes
    assert not opcodes & {"REDUCE", "GLOBAL", "INST", "OBJ", "NEWOBJ_EX", "PERSID", "BINPERSID",
                          "EXT1", "EXT2", "EXT4"}


def test_real_pickle_reads_as_the_json() -> None:
    assert safe_unpickle(REAL_PICKLE) == json.loads((VQA / "accuracy_profiles.json").read_text())


def test_real_pickle_imports_like_the_json(folder: Path) -> None:
    expected = _import(folder)
    (folder / "accuracy_profiles.json").unlink()
    assert (folder / "nodes_accuracy_profiles.pkl").read_bytes() == REAL_PICKLE.read_bytes()
    assert _import(folder) == expected
    zoo = expected[0]
    assert zoo.spec.accuracy_tables[0].tasks == ["ExtractImageFeature", "SpeechRecognition"]


def test_the_cli_imports_the_real_pickle(folder: Path, tmp_path: Path) -> None:
    """`jellybean import jellybean` on the folder as their prototype has it (no JSON profile) writes
    the same files as from the JSON profile."""
    write_documents(import_jellybean(folder, name="vqa-medium", warnings=[]), tmp_path / "from-json")
    (folder / "accuracy_profiles.json").unlink()
    out = tmp_path / "from-pickle"
    done = subprocess.run([sys.executable, "-m", "jellybean", "import", "jellybean", str(folder), "--name",
                           "vqa-medium", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for name in ("zoo.yaml", "topology.yaml", "workflow.yaml"):
        assert (out / name).read_text() == (tmp_path / "from-json" / name).read_text()


def test_a_standin_cannot_be_called() -> None:
    """REDUCE calls the class: refused by the stand-ins' metaclass. NEWOBJ calls ``__new__``: data only."""
    with pytest.raises(pickle.UnpicklingError, match="refused call of beam_search.AccSample"):
        jellybean_csv._AccSample([], 1.0)
    sample = jellybean_csv._AccSample.__new__(jellybean_csv._AccSample, [], 1.0)
    assert sample.fields == {"inputs_acc": [], "output_acc": 1.0}


def _beam_search_module() -> types.ModuleType:
    """A module named like JellyBean's, with classes shaped like theirs (a namedtuple, two dataclasses),
    so that ``pickle.dumps`` writes what their prototype writes."""
    module = types.ModuleType("beam_search")
    namespace = {"__module__": "beam_search"}
    module.AccSample = collections.namedtuple("AccSample", ["inputs_acc", "output_acc"], module="beam_search")
    module.EndToEndAccuracyProfile = dataclasses.make_dataclass(
        "EndToEndAccuracyProfile", ["operators", "acc_profile"], namespace=namespace)
    module.OperatorAccuracyProfile = dataclasses.make_dataclass(
        "OperatorAccuracyProfile", ["op_name", "inputs", "acc_profile", "cost_profile", "weight"], namespace=namespace)
    module.PartialAssignment = dataclasses.make_dataclass(
        "PartialAssignment", ["variants_assignments", "input_acc_requirements"], namespace=namespace)
    return module


@pytest.fixture
def beam_search(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = _beam_search_module()
    monkeypatch.setitem(sys.modules, "beam_search", module)
    return module


def _their_objects(bs: types.ModuleType, weight: float = 1.0) -> dict[str, Any]:
    """The JSON profile as instances of their classes, laid out as their MLDataflowGraph reads it."""
    data = json.loads((VQA / "accuracy_profiles.json").read_text())
    per_operator = [
        bs.OperatorAccuracyProfile(
            op_name=entry["operator"], inputs=entry["inputs"],
            acc_profile={variant: [bs.AccSample(s["inputs_accuracy"], s["output_accuracy"]) for s in samples]
                         for variant, samples in entry["variants"].items()},
            cost_profile=dict(entry["cost_proxy"]), weight=weight)
        for entry in data["per_operator"]
    ]
    end_to_end = bs.EndToEndAccuracyProfile(
        operators=data["end_to_end"]["operators"],
        acc_profile={tuple(row["variants"]): row["accuracy"] for row in data["end_to_end"]["rows"]})
    return {"end_to_end_profile": end_to_end, "per_operator_profiles": per_operator}


@pytest.mark.parametrize("protocol", range(2, pickle.HIGHEST_PROTOCOL + 1))
def test_their_classes_pickled_at_protocols_2_to_5_import_like_the_json(
        folder: Path, beam_search: types.ModuleType, protocol: int) -> None:
    expected = _import(folder)
    (folder / "accuracy_profiles.json").unlink()
    (folder / "nodes_accuracy_profiles.pkl").write_bytes(pickle.dumps(_their_objects(beam_search), protocol))
    assert _import(folder) == expected


def test_their_weight_scales_the_cost_proxy(tmp_path: Path, beam_search: types.ModuleType) -> None:
    """Their search ranks a variant by weight x cost_profile[variant]; that is the cost_proxy."""
    path = tmp_path / "p.pkl"
    path.write_bytes(pickle.dumps(_their_objects(beam_search, weight=2.0)))
    plain = json.loads((VQA / "accuracy_profiles.json").read_text())
    got = safe_unpickle(path)
    for mine, theirs in zip(got["per_operator"], plain["per_operator"]):
        assert mine["cost_proxy"] == {v: 2.0 * c for v, c in theirs["cost_proxy"].items()}


def test_a_bare_list_of_their_operator_profiles_is_their_other_layout(tmp_path: Path,
                                                                       beam_search: types.ModuleType) -> None:
    path = tmp_path / "p.pkl"
    path.write_bytes(pickle.dumps(_their_objects(beam_search)["per_operator_profiles"]))
    plain = json.loads((VQA / "accuracy_profiles.json").read_text())
    assert safe_unpickle(path) == {"per_operator": plain["per_operator"]}


@pytest.mark.parametrize("protocol", [0, 1])
def test_their_classes_at_protocols_0_and_1_need_copyreg_and_are_refused(
        tmp_path: Path, beam_search: types.ModuleType, protocol: int) -> None:
    path = tmp_path / "p.pkl"
    path.write_bytes(pickle.dumps(_their_objects(beam_search), protocol))
    with pytest.raises(SpecError, match=r"refused global copy_?reg\._reconstructor"):  # py2 name at 0, 1
        safe_unpickle(path)


# Hostile pickles, each written into a folder whose JSON profile is gone; `marker` is the file a
# successful attack would create.


class _SystemCall:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _with_their_name_calling_system(bs: types.ModuleType, marker: Path) -> bytes:
    """Their OperatorAccuracyProfile (NEWOBJ + BUILD) whose state holds a REDUCE of os.system."""
    objects = _their_objects(bs)
    objects["per_operator_profiles"][0].op_name = _SystemCall(marker)
    return pickle.dumps(objects, protocol=4)


def _their_class_called_with_args(bs: types.ModuleType, marker: Path) -> bytes:
    """A class pickled under their name whose ``__reduce__`` calls the class itself with arguments."""
    class Sneaky:
        def __reduce__(self):
            return (bs.OperatorAccuracyProfile, (f"touch {marker}", None, {}, {}, 1.0))
    return pickle.dumps({"per_operator_profiles": [Sneaky()]}, protocol=4)


def _self_referencing(bs: types.ModuleType, marker: Path) -> bytes:
    objects = _their_objects(bs)
    profile = objects["per_operator_profiles"][1]
    profile.acc_profile["resnet18"].append(profile)  # it contains itself, through the memo
    return pickle.dumps(objects, protocol=4)


def _cycle_through_a_sample(bs: types.ModuleType, marker: Path) -> bytes:
    objects = _their_objects(bs)
    inputs: list = []
    inputs.append(bs.AccSample(inputs, 1.0))  # a list holding a sample whose inputs_acc is that list
    objects["per_operator_profiles"][0].acc_profile["default"][0] = inputs[0]
    return pickle.dumps(objects, protocol=4)


def _end_to_end_holding_itself(bs: types.ModuleType, marker: Path) -> bytes:
    objects = _their_objects(bs)
    table = objects["end_to_end_profile"]
    table.acc_profile[("resnet18", SPEECH_LARGE)] = table
    return pickle.dumps(objects, protocol=4)


def _their_unlisted_class(bs: types.ModuleType, marker: Path) -> bytes:
    return pickle.dumps({"per_operator_profiles": [], "x": bs.PartialAssignment({}, {})}, protocol=4)


def _with_persistent_id(bs: types.ModuleType, marker: Path) -> bytes:
    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return f"touch {marker}" if isinstance(obj, list) and obj == ["ExtractImageFeature", "SpeechRecognition"] \
                else None
    buffer = io.BytesIO()
    Pickler(buffer, protocol=4).dump(_their_objects(bs))
    return buffer.getvalue()


def _s(text: str) -> bytes:
    data = text.encode()
    return pickle.SHORT_BINUNICODE + bytes([len(data)]) + data


def _global(module: str, name: str) -> bytes:
    return _s(module) + _s(name) + pickle.STACK_GLOBAL


def _p4(*parts: bytes) -> bytes:
    return pickle.PROTO + b"\x04" + b"".join(parts) + pickle.STOP


def _f(value: float) -> bytes:
    return pickle.BINFLOAT + struct.pack(">d", value)


def _crafted(body: Callable[[Path], bytes]) -> Callable[[types.ModuleType, Path], bytes]:
    return lambda bs, marker: body(marker)


HOSTILE: dict[str, tuple[Callable[[types.ModuleType, Path], bytes], str]] = {
    "their-name-wrapping-os-system": (_with_their_name_calling_system, "refused global posix.system"),
    "their-class-reduced-with-args": (_their_class_called_with_args,
                                      "refused call of beam_search.OperatorAccuracyProfile"),
    "their-sample-reduced": (_crafted(lambda m: _p4(
        _global("beam_search", "AccSample"), pickle.EMPTY_LIST, _s(f"touch {m}"), pickle.TUPLE2, pickle.REDUCE)),
        "refused call of beam_search.AccSample"),
    "their-class-reduced-without-args": (_crafted(lambda m: _p4(
        _global("beam_search", "EndToEndAccuracyProfile"), pickle.EMPTY_TUPLE, pickle.REDUCE)),
        "refused call of beam_search.EndToEndAccuracyProfile"),
    "their-class-newobj-with-args": (_crafted(lambda m: _p4(
        _global("beam_search", "EndToEndAccuracyProfile"), _s(f"touch {m}"), pickle.TUPLE1, pickle.NEWOBJ)),
        "refused beam_search.EndToEndAccuracyProfile built from 1 arguments"),
    "their-sample-with-keywords": (_crafted(lambda m: _p4(
        _global("beam_search", "AccSample"), pickle.EMPTY_LIST, _f(1.0), pickle.TUPLE2,
        pickle.EMPTY_DICT, _s("cmd"), _s(f"touch {m}"), pickle.SETITEM, pickle.NEWOBJ_EX)),
        "refused keyword arguments to beam_search.AccSample"),
    "their-class-state-unknown-attribute": (_crafted(lambda m: _p4(
        _global("beam_search", "OperatorAccuracyProfile"), pickle.EMPTY_TUPLE, pickle.NEWOBJ,
        pickle.EMPTY_DICT, _s("__reduce__"), _s(f"touch {m}"), pickle.SETITEM, pickle.BUILD)),
        "refused attribute '__reduce__' of beam_search.OperatorAccuracyProfile"),
    "their-class-state-not-a-dict": (_crafted(lambda m: _p4(
        _global("beam_search", "OperatorAccuracyProfile"), pickle.EMPTY_TUPLE, pickle.NEWOBJ,
        pickle.NONE, pickle.EMPTY_DICT, pickle.TUPLE2, pickle.BUILD)),
        "refused state of beam_search.OperatorAccuracyProfile: a tuple"),
    "their-sample-with-state": (_crafted(lambda m: _p4(
        _global("beam_search", "AccSample"), pickle.EMPTY_LIST, _f(1.0), pickle.TUPLE2, pickle.NEWOBJ,
        pickle.EMPTY_DICT, pickle.BUILD)), "refused state for beam_search.AccSample"),
    "their-class-as-a-value": (_crafted(lambda m: _p4(
        pickle.EMPTY_DICT, _s("per_operator_profiles"), _global("beam_search", "AccSample"), pickle.SETITEM)),
        "the class beam_search.AccSample itself"),
    "their-unlisted-class": (_their_unlisted_class, "refused global beam_search.PartialAssignment"),
    "unknown-module": (_crafted(lambda m: _p4(
        _global("jellybean_helpers", "OperatorAccuracyProfile"), pickle.EMPTY_TUPLE, pickle.NEWOBJ)),
        "refused global jellybean_helpers.OperatorAccuracyProfile"),
    "numpy": (_crafted(lambda m: _p4(_global("numpy.core.multiarray", "_reconstruct"), pickle.EMPTY_TUPLE,
                                      pickle.REDUCE)), "refused global numpy.core.multiarray._reconstruct"),
    "builtins-eval": (_crafted(lambda m: _p4(
        _global("builtins", "eval"), _s(f"__import__('os').system('touch {m}')"), pickle.TUPLE1, pickle.REDUCE)),
        "refused global builtins.eval"),
    "builtins-eval-protocol-0": (_crafted(lambda m: (
        b"c__builtin__\neval\n(V__import__('os').system('touch " + str(m).encode() + b"')\ntR.")),
        "refused global __builtin__.eval"),
    "copyreg-reconstructor": (_crafted(lambda m: _p4(
        _global("copyreg", "_reconstructor"), _global("beam_search", "AccSample"), _global("builtins", "object"),
        pickle.NONE, pickle.TUPLE3, pickle.REDUCE)), "refused global copyreg._reconstructor"),
    "self-referencing-profile": (_self_referencing, "a cycle: this value is the one at per_operator_profiles[1]"),
    "cycle-through-a-sample": (_cycle_through_a_sample, "a cycle"),
    "self-referencing-end-to-end": (_end_to_end_holding_itself, "a cycle: this value is the one at end_to_end_profile"),
    "persistent-id": (_with_persistent_id, "refused persistent id"),
    "extension-code": (_crafted(lambda m: _p4(pickle.EXT1 + b"\x7f", pickle.EMPTY_TUPLE, pickle.REDUCE)),
                       "refused extension code"),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_pickles_are_refused_fast_without_running(folder: Path, tmp_path: Path,
                                                          beam_search: types.ModuleType, case: str) -> None:
    build, message = HOSTILE[case]
    marker = tmp_path / "pwned"
    (folder / "accuracy_profiles.json").unlink()
    (folder / "nodes_accuracy_profiles.pkl").write_bytes(build(beam_search, marker))
    started = time.monotonic()
    with pytest.raises(SpecError) as caught:
        import_jellybean(folder, warnings=[])
    assert time.monotonic() - started < 5
    assert not marker.exists()
    (issue,) = caught.value.issues
    assert message in issue.message and issue.file.endswith("nodes_accuracy_profiles.pkl")


def test_a_registered_extension_code_still_meets_the_allowlist(tmp_path: Path) -> None:
    """An extension code that some library registered resolves through find_class, so it is refused by name."""
    marker = tmp_path / "pwned"
    path = tmp_path / "p.pkl"
    path.write_bytes(_p4(pickle.EXT2 + struct.pack("<H", 0xBEEF), _s(f"touch {marker}"), pickle.TUPLE1,
                         pickle.REDUCE))
    copyreg.add_extension("os", "system", 0xBEEF)
    try:
        with pytest.raises(SpecError, match="refused global os.system"):
            safe_unpickle(path)
    finally:
        copyreg.remove_extension("os", "system", 0xBEEF)
    assert not marker.exists()


def test_their_classes_shared_many_times_meet_the_size_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              beam_search: types.ModuleType) -> None:
    samples = [beam_search.AccSample([], 1.0)]
    for _ in range(40):
        samples = [samples, samples]  # 2**40 samples as a tree, in a few hundred bytes
    objects = _their_objects(beam_search)
    objects["per_operator_profiles"][1].acc_profile["resnet18"] = samples
    path = tmp_path / "p.pkl"
    path.write_bytes(pickle.dumps(objects, protocol=4))
    started = time.monotonic()
    with pytest.raises(SpecError, match=f"more than {jellybean_csv.MAX_PROFILE_VALUES} values"):
        safe_unpickle(path)
    assert time.monotonic() - started < 30
    monkeypatch.setattr(jellybean_csv, "MAX_PROFILE_VALUES", 50)
    with pytest.raises(SpecError, match="more than 50 values"):
        safe_unpickle(REAL_PICKLE)


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
