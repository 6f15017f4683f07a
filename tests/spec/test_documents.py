"""The three documents (ModelZoo, Topology, Workflow): good ones load, and every validation rule
refuses bad input with a message that names the problem, the file, the line and the field.

The small inline documents below (ZOO, TOPOLOGY, WORKFLOW) form a valid bundle that plans; the
other spec tests reuse them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from jellybean.spec import (
    Issue,
    ModelZoo,
    SpecError,
    Tier,
    Topology,
    Workflow,
    load_bundle,
    load_bundles,
    load_documents,
    load_text,
)

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / "workflows"
VQA = WORKFLOWS / "vqa-medium"

ZOO = """\
apiVersion: jellybean.io/v1alpha1
kind: ModelZoo
metadata:
  name: zoo
spec:
  tasks:
  - name: detect
    variants:
    - name: small
      accuracy: 80
      output_kb: 1
      profiles:
      - hardware: cpu
        latency_ms: {1: 10}
    - name: big
      accuracy: 90
      output_kb: 1
      profiles:
      - hardware: cpu
        latency_ms: {1: 20, 4: 50}
  - name: classify
    variants:
    - name: c1
      accuracy: 70
      output_kb: 0.1
      profiles:
      - hardware: cpu
        latency_ms: {1: 5}
  accuracy_tables:
  - name: e2e
    tasks: [detect, classify]
    rows:
    - variants: [small, c1]
      accuracy: 60
    - variants: [big, c1]
      accuracy: 65
"""

TOPOLOGY = """\
apiVersion: jellybean.io/v1alpha1
kind: Topology
metadata:
  name: topo
spec:
  sites:
  - name: cloud
    tier: cloud
    instances:
    - name: vm
      hardware: cpu
      price_per_hour: 1.0
      max_count: 10
  - name: edge
    tier: edge
    parent: cloud
    uplink:
      up: {bandwidth_mbps: 1000, cost_per_gb: 0.05}
    instances:
    - name: box
      hardware: cpu
      price_per_hour: 0.1
      count: 2
"""

WORKFLOW = """\
apiVersion: jellybean.io/v1alpha1
kind: Workflow
metadata:
  name: wf
spec:
  sources:
  - name: cam
    rate_per_s: 10
    payload_kb: 100
    sites: [edge]
  stages:
  - name: det
    task: detect
    inputs: [cam]
  - name: cls
    task: classify
    inputs:
    - from: det
      ratio_by_variant: {small: 2, big: 3}
  slo:
    accuracy: 60
"""

DOCS = {"ModelZoo": ZOO, "Topology": TOPOLOGY, "Workflow": WORKFLOW}


def edit(text: str, old: str, new: str) -> str:
    """Replace the one occurrence of ``old`` (fails loudly if the template changed)."""
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times"
    return text.replace(old, new)


def line_of(text: str, needle: str | tuple[str, int]) -> int:
    """1-based line of the first line that contains ``needle`` (or of its n-th occurrence)."""
    needle, nth = needle if isinstance(needle, tuple) else (needle, 1)
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            nth -= 1
            if nth == 0:
                return number
    raise AssertionError(f"{needle!r} not in the text")


def refused(text: str, file: str = "doc.yaml") -> list[Issue]:
    with pytest.raises(SpecError) as info:
        load_text(text, file)
    issues = info.value.issues
    assert issues, "a SpecError must carry at least one issue"
    for issue in issues:
        assert issue.file == file
        assert issue.message
    return issues


def find(issues: list[Issue], fragment: str) -> Issue:
    matching = [i for i in issues if fragment in i.message]
    assert matching, f"no issue mentions {fragment!r}: {[str(i) for i in issues]}"
    return matching[0]


def write_bundle(folder: Path, **overrides: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    texts = {"zoo": ZOO, "topology": TOPOLOGY, "workflow": WORKFLOW, **overrides}
    for name, text in texts.items():
        (folder / f"{name}.yaml").write_text(text)
    return folder


# --- good documents -------------------------------------------------------------------------


def test_vqa_medium_documents_load() -> None:
    documents = load_documents([VQA])
    by_kind = {d.model.kind: d for d in documents}
    assert sorted(by_kind) == ["ModelZoo", "Topology", "Workflow"]

    zoo: ModelZoo = by_kind["ModelZoo"].model
    assert [t.name for t in zoo.spec.tasks] == ["ExtractImageFeature", "SpeechRecognition", "VQA"]
    assert sum(len(t.variants) for t in zoo.spec.tasks) == 8
    resnet18 = zoo.spec.task("ExtractImageFeature").variant("resnet18")
    assert resnet18 is not None and resnet18.profile_for("workflow-compute-gpu-1").latency_ms == {1: 16.1434125}
    assert zoo.spec.accuracy_tables[0].name == "vqa-medium-end-to-end"
    assert len(zoo.spec.accuracy_tables[0].rows) == 10

    topology: Topology = by_kind["Topology"].model
    assert topology.spec.sharing == "exclusive" and topology.spec.max_utilization == 1.0
    edge = topology.spec.site("edge")
    assert edge.tier is Tier.edge and edge.parent == "cloud"
    assert edge.uplink.up.cost_per_gb == 0.1 and edge.uplink.down.cost_per_gb == 1.0
    assert edge.uplink.up.bandwidth_mbps is None  # omitted: unlimited
    assert len(topology.spec.site("cloud").instances) == 4

    workflow: Workflow = by_kind["Workflow"].model
    assert workflow.spec.sink == "VQA"
    assert [s.name for s in workflow.spec.sources] == ["ReadImage", "ReadSpeech"]
    assert workflow.spec.slo.accuracy_table == "vqa-medium-end-to-end"

    # Source maps: every value's line, for error messages and the controller's API.
    wf_source = by_kind["Workflow"].source
    assert wf_source.file == str(VQA / "workflow.yaml")
    text = (VQA / "workflow.yaml").read_text()
    assert wf_source.start_line == line_of(text, "apiVersion:")
    assert wf_source.lines[("spec", "sources", 0, "rate_per_s")] == line_of(text, "rate_per_s:")
    assert wf_source.lines[("spec", "slo", "accuracy")] == line_of(text, "    accuracy: 56")


def test_vqa_medium_bundle_resolves() -> None:
    bundle = load_bundle([VQA])
    assert bundle.name == "vqa-medium"
    assert bundle.zoo.metadata.name == bundle.topology.metadata.name == "vqa-medium"
    assert set(bundle.sources) == {"Workflow", "ModelZoo", "Topology"}


@pytest.mark.parametrize("folder", sorted(p.name for p in WORKFLOWS.iterdir() if p.is_dir()))
def test_every_committed_workflow_loads_and_resolves(folder: str) -> None:
    """Covers vqa-medium and any workflow added later (vehicle-tracking, ...), and every workflow of
    a folder holding several (store: planned together, on one topology)."""
    bundles = load_bundles([WORKFLOWS / folder])
    assert bundles and all(bundle.workflow.spec.stages for bundle in bundles)
    assert len({bundle.topology.metadata.name for bundle in bundles}) == 1


def test_inline_documents_load_from_files(tmp_path: Path) -> None:
    folder = write_bundle(tmp_path / "docs")
    documents = load_documents([folder])
    assert sorted(d.model.kind for d in documents) == ["ModelZoo", "Topology", "Workflow"]
    bundle = load_bundle([folder])
    wf = bundle.workflow.spec
    assert wf.sink == "cls"
    # Defaults filled in.
    assert wf.sources[0].kind == "camera" and wf.sources[0].count_per_site == 1
    assert wf.stages[0].input_specs()[0].from_ == "cam" and wf.stages[0].input_specs()[0].ratio == 1.0
    assert wf.stages[1].input_specs()[0].ratio_by_variant == {"small": 2.0, "big": 3.0}
    topo = bundle.topology.spec
    assert topo.sharing == "shared" and topo.max_utilization == 0.8 and not topo.allow_downward_flows
    assert topo.site("edge").uplink.down.bandwidth_mbps is None  # `down` defaulted: unlimited, free
    assert topo.site("edge").instances[0].limit == 2 and not topo.site("edge").instances[0].elastic
    assert topo.site("cloud").instances[0].elastic
    assert bundle.zoo.spec.task("detect").variant("big").profiles[0].latency_ms == {1: 20.0, 4: 50.0}


def test_several_sinks_each_with_its_target() -> None:
    """A workflow may end in several sinks; `slo.sinks` gives one its own target and table, the others
    take `slo.accuracy`; a stage's `min_accuracy` and an output's `sinks` are kept as written."""
    text = edit(WORKFLOW, "  slo:\n    accuracy: 60\n",
                "  - name: extra\n    task: classify\n    inputs: [cam]\n    min_accuracy: 65\n"
                "  outputs:\n  - {name: all, kind: stream}\n  - {name: some, kind: stream, sinks: [extra]}\n"
                "  slo:\n    accuracy: 60\n    sinks:\n    - {stage: extra, accuracy: 70, accuracy_table: e2e}\n")
    (doc,) = load_text(text)
    wf = doc.model.spec
    assert wf.sinks == ["cls", "extra"] and wf.sink == "cls"
    assert [(o.stage, o.accuracy, o.accuracy_table) for o in wf.objectives()] == [("cls", 60, None),
                                                                                ("extra", 70, "e2e")]
    assert wf.stages[2].min_accuracy == 65 and wf.stages[0].min_accuracy is None
    assert [wf.output_sinks(o) for o in wf.outputs] == [["cls", "extra"], ["extra"]]
    # Without a default, every sink needs its own entry; with one for each, none is needed.
    both = edit(text, "    accuracy: 60\n    sinks:\n", "    sinks:\n    - {stage: cls, accuracy: 61}\n")
    (doc,) = load_text(both)
    assert [o.accuracy for o in doc.model.spec.objectives()] == [61, 70]
    issue = find(refused(edit(text, "    accuracy: 60\n    sinks:\n", "    sinks:\n")), "no accuracy target")
    assert issue.message == "no accuracy target for sink cls"
    assert "give `slo.accuracy`" in issue.hint


def test_a_target_for_an_unknown_sink_lists_the_sinks() -> None:
    text = edit(WORKFLOW, "    accuracy: 60\n", "    accuracy: 60\n    sinks:\n    - {stage: moon, accuracy: 70}\n")
    issue = find(refused(text), "unknown stage 'moon'")
    assert issue.hint == "sinks: cls"


def test_multi_document_file_with_separators(tmp_path: Path) -> None:
    path = tmp_path / "all.yaml"
    # A leading and a trailing `---` (as in concatenated Kubernetes manifests) are fine.
    path.write_text("---\n" + ZOO + "---\n" + TOPOLOGY + "---\n" + WORKFLOW + "---\n")
    documents = load_documents([path])
    assert [d.model.kind for d in documents] == ["ModelZoo", "Topology", "Workflow"]
    assert [d.index for d in documents] == [0, 1, 2]
    text = path.read_text()
    # The Topology's source map counts lines from the top of the file, not of the document.
    topo = documents[1].source
    assert topo.start_line == line_of(text, "kind: Topology") - 1
    assert topo.lines[("metadata", "name")] == line_of(text, "name: topo")
    assert load_bundle([path]).name == "wf"


def test_stage_input_as_name_or_mapping() -> None:
    (doc,) = load_text(edit(WORKFLOW, "inputs: [cam]", "inputs: [{from: cam, ratio: 0.5}]"))
    assert doc.model.spec.stages[0].input_specs()[0].ratio == 0.5


def test_names_follow_the_relaxed_dns_rules() -> None:
    for good in ["a", "ExtractImageFeature", "workflow-compute-cpu-1", "v1.2_b"]:
        load_text(edit(WORKFLOW, "name: wf", f"name: {good}"))
    for bad in ["-a", "a-", "a b", "é", "a/b"]:
        issues = refused(edit(WORKFLOW, "name: wf", f"name: '{bad}'"))
        assert issues[0].path == "metadata.name"
        assert issues[0].line == line_of(WORKFLOW, "name: wf")


# --- each validation rule -------------------------------------------------------------------

# (id, kind, old, new, message fragment, expected path, needle for the expected line in the edited
# text). Rules checked by a pydantic validator of a whole object are located at that object: a
# rule across the whole `spec` (names, the DAG, the site tree) at the first line of `spec`.
RULES = [
    # ModelZoo
    ("duplicate task", "ModelZoo", "  - name: classify\n", "  - name: detect\n",
     "task names must be unique; repeated: detect", "spec.tasks[1].name", ('  - name: detect', 2)),
    ("duplicate variant", "ModelZoo", "    - name: big\n", "    - name: small\n",
     "variant names must be unique within a task; repeated: small", "spec.tasks[0].variants[1].name", ('    - name: small', 2)),
    ("hardware profiled twice", "ModelZoo", "        latency_ms: {1: 20, 4: 50}\n",
     "        latency_ms: {1: 20, 4: 50}\n      - hardware: cpu\n        latency_ms: {1: 1}\n",
     "hardware 'cpu' is profiled twice", "spec.tasks[0].variants[1].profiles[1].hardware", ('      - hardware: cpu', 3)),
    ("latency zero", "ModelZoo", "{1: 10}", "{1: 0}",
     "latency 0.0 ms at batch 1 must be > 0", "spec.tasks[0].variants[0].profiles[0].latency_ms", "{1: 0}"),
    ("latency negative", "ModelZoo", "{1: 10}", "{1: -3}",
     "latency -3.0 ms at batch 1 must be > 0", "spec.tasks[0].variants[0].profiles[0].latency_ms", "{1: -3}"),
    ("batch below one", "ModelZoo", "{1: 20, 4: 50}", "{0: 20, 4: 50}",
     "batch size 0 must be >= 1", "spec.tasks[0].variants[1].profiles[0].latency_ms", "{0: 20"),
    ("no batch sizes", "ModelZoo", "{1: 10}", "{}",
     "needs at least one batch size", "spec.tasks[0].variants[0].profiles[0].latency_ms", "latency_ms: {}"),
    ("table row width", "ModelZoo", "[small, c1]", "[small]",
     "rows[0] names 1 variants but the table has 2 tasks", "spec.accuracy_tables[0].rows[0].variants", '    - variants: [small]'),
    ("table unknown variant", "ModelZoo", "[big, c1]", "[huge, c1]",
     "accuracy table 'e2e' rows[1]: task 'detect' has no variant 'huge'", "spec.accuracy_tables[0].rows[1].variants[0]", '    - variants: [huge, c1]'),
    ("table unknown task", "ModelZoo", "[detect, classify]", "[detect, segment]",
     "accuracy table 'e2e' names unknown task 'segment'", "spec.accuracy_tables[0].tasks[1]", '    tasks: [detect, segment]'),
    ("negative output size", "ModelZoo", "output_kb: 0.1", "output_kb: -1",
     "greater than or equal to 0", "spec.tasks[1].variants[0].output_kb", "output_kb: -1"),
    ("no variants", "ModelZoo", "    variants:\n    - name: c1\n      accuracy: 70\n      output_kb: 0.1\n"
     "      profiles:\n      - hardware: cpu\n        latency_ms: {1: 5}\n", "    variants: []\n",
     "at least 1 item", "spec.tasks[1].variants", "variants: []"),
    # Topology
    ("duplicate site", "Topology", "  - name: edge\n", "  - name: cloud\n",
     "site 'cloud' is defined twice", "spec.sites[1].name", ('  - name: cloud', 2)),
    ("unknown parent", "Topology", "parent: cloud", "parent: sky",
     "site 'edge' names unknown parent 'sky'", "spec.sites[1].parent", '    parent: sky'),
    ("parent in a lower tier", "Topology", "    tier: cloud\n", "    tier: device\n",
     "has parent 'cloud' in a lower tier (device)", "spec.sites[1].parent", '    parent: cloud'),
    ("count and max_count", "Topology", "      count: 2\n", "      count: 2\n      max_count: 3\n",
     "give exactly one of `count`", "spec.sites[1].instances[0]", "    - name: box"),
    ("neither count nor max_count", "Topology", "      max_count: 10\n", "",
     "give exactly one of `count`", "spec.sites[0].instances[0]", "    - name: vm"),
    ("root with uplink", "Topology", "    tier: cloud\n", "    tier: cloud\n    uplink: {}\n",
     "a root site (no `parent`) cannot have an `uplink`", "spec.sites[0]", "  - name: cloud"),
    ("duplicate instance", "Topology", "      count: 2\n",
     "      count: 2\n    - name: box\n      hardware: cpu\n      price_per_hour: 0.2\n      count: 1\n",
     "instance names must be unique within a site; repeated: box", "spec.sites[1].instances[1].name", ('    - name: box', 2)),
    ("unknown tier", "Topology", "tier: edge", "tier: fog",
     "'device', 'hub', 'edge' or 'cloud'", "spec.sites[1].tier", "tier: fog"),
    ("zero bandwidth", "Topology", "bandwidth_mbps: 1000", "bandwidth_mbps: 0",
     "greater than 0", "spec.sites[1].uplink.up.bandwidth_mbps", "bandwidth_mbps: 0"),
    ("utilization above one", "Topology", "  sites:\n", "  max_utilization: 1.5\n  sites:\n",
     "less than or equal to 1", "spec.max_utilization", "max_utilization"),
    ("unknown sharing", "Topology", "  sites:\n", "  sharing: partial\n  sites:\n",
     "'shared' or 'exclusive'", "spec.sharing", "sharing: partial"),
    # Workflow
    ("unknown stage input", "Workflow", "inputs: [cam]", "inputs: [camera]",
     "stage 'det' reads from unknown input 'camera'", "spec.stages[0].inputs[0].from", '    inputs: [camera]'),
    ("self input", "Workflow", "inputs: [cam]", "inputs: [cam, det]",
     "stage 'det' reads from itself", "spec.stages[0].inputs[1].from", '    inputs: [cam, det]'),
    ("dag cycle", "Workflow", "inputs: [cam]", "inputs: [cam, cls]",
     "stages form a cycle: det -> cls -> det", "spec.stages[0].inputs[1].from", '    inputs: [cam, cls]'),
    ("a sink without a target", "Workflow", "  slo:\n    accuracy: 60\n",
     "  - name: extra\n    task: classify\n    inputs: [cam]\n  slo:\n    sinks:\n    - {stage: cls, accuracy: 60}\n",
     "no accuracy target for sink extra", "spec.slo", "  slo:"),
    ("a target for an unknown sink", "Workflow", "    accuracy: 60\n",
     "    accuracy: 60\n    sinks:\n    - stage: clss\n      accuracy: 70\n",
     "`slo.sinks` names unknown stage 'clss'; did you mean 'cls'?", "spec.slo.sinks[0].stage", "- stage: clss"),
    ("a target for a stage that is not a sink", "Workflow", "    accuracy: 60\n",
     "    accuracy: 60\n    sinks:\n    - stage: det\n      accuracy: 70\n",
     "`slo.sinks` names stage 'det', which is not a sink (cls read from it)", "spec.slo.sinks[0].stage",
     "- stage: det"),
    ("two targets for one sink", "Workflow", "    accuracy: 60\n",
     "    accuracy: 60\n    sinks:\n    - {stage: cls, accuracy: 70}\n    - {stage: cls, accuracy: 75}\n",
     "sink 'cls' has two targets in `slo.sinks`", "spec.slo.sinks[1].stage", "accuracy: 75"),
    ("an output of an unknown sink", "Workflow", "  slo:\n",
     "  outputs:\n  - name: out\n    kind: stream\n    sinks: [cl]\n  slo:\n",
     "output 'out' names unknown stage 'cl'; did you mean 'cls'?", "spec.outputs[0].sinks[0]", "sinks: [cl]"),
    ("an output of a stage that is not a sink", "Workflow", "  slo:\n",
     "  outputs:\n  - name: out\n    kind: stream\n    sinks: [cls, det]\n  slo:\n",
     "output 'out' names stage 'det', which is not a sink", "spec.outputs[0].sinks[1]", "sinks: [cls, det]"),
    ("a sink twice in an output", "Workflow", "  slo:\n",
     "  outputs:\n  - name: out\n    kind: stream\n    sinks: [cls, cls]\n  slo:\n",
     "output 'out' lists sink 'cls' twice", "spec.outputs[0].sinks[1]", "sinks: [cls, cls]"),
    ("min_accuracy not a number", "Workflow", "    inputs: [cam]\n", "    inputs: [cam]\n    min_accuracy: high\n",
     "valid number", "spec.stages[0].min_accuracy", "min_accuracy: high"),
    ("unused source", "Workflow", "  stages:\n",
     "  - name: mic\n    rate_per_s: 1\n    payload_kb: 1\n    sites: [edge]\n  stages:\n",
     "sources not read by any stage: mic", "spec.sources[1]", '  - name: mic'),
    ("ratio_by_variant on a source", "Workflow", "inputs: [cam]",
     "inputs: [{from: cam, ratio_by_variant: {small: 2}}]",
     "`ratio_by_variant` applies to stage inputs, but 'cam' is a source", "spec.stages[0].inputs[0].ratio_by_variant", '    inputs: [{from: cam, ratio_by_variant: {small: 2}}]'),
    ("name used twice", "Workflow", "  - name: det\n", "  - name: cam\n",
     "name 'cam' is used twice", "spec.stages[0].name", ('  - name: cam', 2)),
    ("slo latency zero", "Workflow", "accuracy: 60", "accuracy: 60\n    latency_ms: 0",
     "greater than 0", "spec.slo.latency_ms", "latency_ms: 0"),
    ("rate zero", "Workflow", "rate_per_s: 10", "rate_per_s: 0",
     "greater than 0", "spec.sources[0].rate_per_s", "rate_per_s: 0"),
    ("unknown source kind", "Workflow", "    rate_per_s: 10\n", "    kind: lidar\n    rate_per_s: 10\n",
     "'camera', 'microphone' or 'sensor'", "spec.sources[0].kind", "kind: lidar"),
    ("no stages", "Workflow", "  stages:\n  - name: det\n    task: detect\n    inputs: [cam]\n  - name: cls\n"
     "    task: classify\n    inputs:\n    - from: det\n      ratio_by_variant: {small: 2, big: 3}\n",
     "  stages: []\n", "at least 1 item", "spec.stages", "  stages: []"),
]


@pytest.mark.parametrize(("kind", "old", "new", "fragment", "path", "needle"),
                         [r[1:] for r in RULES], ids=[r[0] for r in RULES])
def test_rule_refuses_bad_input(kind: str, old: str, new: str, fragment: str, path: str, needle: str) -> None:
    text = edit(DOCS[kind], old, new)
    issues = refused(text, f"{kind.lower()}.yaml")
    issue = find(issues, fragment)
    assert issue.path == path
    assert issue.line == line_of(text, needle)
    assert str(issue).startswith(f"{kind.lower()}.yaml:{issue.line}: {path}: ")


def test_the_template_documents_are_valid() -> None:
    for kind, text in DOCS.items():
        (doc,) = load_text(text)
        assert doc.model.kind == kind


def test_parent_cycle() -> None:
    two_edges = edit(TOPOLOGY, "  - name: edge\n    tier: edge\n    parent: cloud\n",
                     "  - name: a\n    tier: edge\n    parent: b\n  - name: b\n    tier: edge\n    parent: a\n"
                     "  - name: edge\n    tier: edge\n    parent: cloud\n")
    issues = refused(two_edges, "topology.yaml")
    issue = find(issues, "sites form a cycle through 'a'")
    assert (issue.path, issue.line) == ("spec.sites[1].parent", line_of(two_edges, "    parent: b"))
    assert "`parent` must form a tree" in issue.message


# --- unknown keys ---------------------------------------------------------------------------


def test_typo_on_line_12_is_reported_at_line_12(tmp_path: Path) -> None:
    text = edit(WORKFLOW, "rate_per_s: 10", "rate_per_sec: 10")
    text = "# comment\n" * (12 - line_of(text, "rate_per_sec")) + text
    assert line_of(text, "rate_per_sec") == 12
    path = tmp_path / "wf.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_documents([path])
    issues = info.value.issues
    typo = next(i for i in issues if i.path == "spec.sources[0].rate_per_sec")
    assert typo.file == str(path) and typo.line == 12
    assert "Extra inputs are not permitted" in typo.message
    assert typo.hint == "remove it or check its spelling"
    assert str(typo) == (f"{path}:12: spec.sources[0].rate_per_sec: Extra inputs are not permitted "
                         "(remove it or check its spelling)")
    # ... and the field it was meant to be is reported missing, at the source's first line.
    missing = next(i for i in issues if i.path == "spec.sources[0].rate_per_s")
    assert missing.message == "Field required" and missing.hint == "add this field"
    assert missing.line == line_of(text, "  - name: cam")
    # Both problems are reported at once, not one per run.
    assert len(issues) == 2


@pytest.mark.parametrize(("kind", "old", "new", "path"), [
    ("Workflow", "  name: wf\n", "  name: wf\n  nmae: x\n", "metadata.nmae"),
    ("Workflow", "    accuracy: 60\n", "    accuracy: 60\n    acuracy_table: e2e\n", "spec.slo.acuracy_table"),
    ("Topology", "      price_per_hour: 0.1\n", "      price_per_hour: 0.1\n      gpus: 1\n",
     "spec.sites[1].instances[0].gpus"),
    ("Topology", "cost_per_gb: 0.05}", "cost_per_gb: 0.05, cost_per_tb: 50}", "spec.sites[1].uplink.up.cost_per_tb"),
    ("ModelZoo", "      output_kb: 0.1\n", "      output_kb: 0.1\n      ouput_kb: 0.1\n", "spec.tasks[1].variants[0].ouput_kb"),
    ("Workflow", "kind: Workflow\n", "kind: Workflow\nstatus: {}\n", "status"),
    ("Workflow", "    - from: det\n", "    - form: det\n", "spec.stages[1].inputs[0].form"),
])
def test_unknown_keys_are_refused_with_a_hint(kind: str, old: str, new: str, path: str) -> None:
    text = edit(DOCS[kind], old, new)
    issues = refused(text)
    issue = next((i for i in issues if i.path == path), None)
    assert issue is not None, [str(i) for i in issues]
    key = path.rsplit(".", 1)[-1]
    assert issue.line == line_of(text, f"{key}:")
    assert issue.message == "Extra inputs are not permitted"
    assert issue.hint == "remove it or check its spelling"


def test_stage_input_union_reports_the_meant_alternative_only() -> None:
    # A mapping with a typo: the mapping's problems, not "should be a valid string".
    text = edit(WORKFLOW, "    - from: det\n", "    - form: det\n")
    issues = refused(text)
    assert {i.path for i in issues} == {"spec.stages[1].inputs[0].from", "spec.stages[1].inputs[0].form"}
    assert not any("valid string" in i.message for i in issues)
    # A bad name: the name's problem, not "should be a valid dictionary".
    text = edit(WORKFLOW, "inputs: [cam]", "inputs: ['bad name!']")
    (issue,) = refused(text)
    assert issue.path == "spec.stages[0].inputs[0]" and "pattern" in issue.message
    assert not any(tag in str(issue) for tag in ("constrained-str", "StageInput"))


def test_every_problem_of_a_document_is_reported_at_once() -> None:
    text = edit(edit(TOPOLOGY, "price_per_hour: 1.0", "price_per_hour: -1"), "tier: edge", "tier: fog")
    issues = refused(text)
    assert {i.path for i in issues} == {"spec.sites[0].instances[0].price_per_hour", "spec.sites[1].tier"}


def test_problems_in_several_files_are_reported_together(tmp_path: Path) -> None:
    folder = write_bundle(tmp_path / "docs",
                          zoo=edit(ZOO, "{1: 10}", "{1: 0}"),
                          workflow=edit(WORKFLOW, "rate_per_s: 10", "rate_per_sec: 10"))
    with pytest.raises(SpecError) as info:
        load_documents([folder])
    files = {Path(i.file).name for i in info.value.issues}
    assert files == {"zoo.yaml", "workflow.yaml"}
