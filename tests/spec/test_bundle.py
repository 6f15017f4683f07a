"""Cross-document checks: a Workflow's references to the zoo and the topology it uses, each
problem reported in the workflow's file at the line (and field) that makes the reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from jellybean.spec import Issue, SpecError, load_bundle, load_text, resolve
from jellybean.spec.bundle import resolve_all
from jellybean.spec.loader import LoadedDocument
from tests.spec.test_documents import TOPOLOGY, WORKFLOW, ZOO, edit, line_of, write_bundle

WF_FILE = "workflow.yaml"


def documents(*texts: tuple[str, str]) -> list[LoadedDocument]:
    out: list[LoadedDocument] = []
    for file, text in texts:
        out += load_text(text, file)
    return out


def refused(docs: list[LoadedDocument], workflow: str | None = None) -> list[Issue]:
    with pytest.raises(SpecError) as info:
        resolve(docs, workflow)
    issues = info.value.issues
    assert issues
    for issue in issues:
        assert issue.message and issue.file
    return issues


def with_workflow(text: str) -> list[LoadedDocument]:
    return documents(("zoo.yaml", ZOO), ("topology.yaml", TOPOLOGY), (WF_FILE, text))


def test_the_templates_resolve() -> None:
    bundle = resolve(with_workflow(WORKFLOW))
    assert bundle.name == "wf" and bundle.zoo.metadata.name == "zoo" and bundle.topology.metadata.name == "topo"
    assert bundle.sources["Workflow"].file == WF_FILE


# (id, old, new, message fragment, path, needle for the line in the edited workflow)
REFERENCES = [
    ("unknown task", "task: classify", "task: clasify",
     "unknown task 'clasify'", "spec.stages[1].task", "task: clasify"),
    ("unknown variant", "    inputs: [cam]\n", "    inputs: [cam]\n    variants: [small, tiny]\n",
     "task 'detect' has no variant 'tiny'", "spec.stages[0].variants[1]", "variants: [small, tiny]"),
    ("unknown source site", "sites: [edge]", "sites: [edge, egde]",
     "unknown site 'egde'", "spec.sources[0].sites[1]", "sites: [edge, egde]"),
    ("unknown placement site", "    inputs: [cam]\n", "    inputs: [cam]\n    placement:\n      sites:\n      - cloud\n"
     "      - moon\n", "unknown site 'moon'", "spec.stages[0].placement.sites[1]", "- moon"),
    ("unknown accuracy table", "    accuracy: 60\n", "    accuracy: 60\n    accuracy_table: e2e-v2\n",
     "zoo has no accuracy table 'e2e-v2'", "spec.slo.accuracy_table", "accuracy_table: e2e-v2"),
    ("unknown accuracy table of a sink", "    accuracy: 60\n",
     "    accuracy: 60\n    sinks:\n    - stage: cls\n      accuracy: 61\n      accuracy_table: ee2\n",
     "zoo has no accuracy table 'ee2'; did you mean 'e2e'?", "spec.slo.sinks[0].accuracy_table", "accuracy_table: ee2"),
    ("unknown ratio_by_variant variant", "{small: 2, big: 3}", "{small: 2, huge: 3}",
     "input 'det' (task 'detect') has no variant 'huge'", "spec.stages[1].inputs[0].ratio_by_variant.huge",
     "ratio_by_variant"),
]


@pytest.mark.parametrize(("old", "new", "fragment", "path", "needle"), [r[1:] for r in REFERENCES],
                         ids=[r[0] for r in REFERENCES])
def test_unknown_reference(old: str, new: str, fragment: str, path: str, needle: str) -> None:
    text = edit(WORKFLOW, old, new)
    (issue,) = refused(with_workflow(text))
    assert fragment in issue.message
    assert issue.file == WF_FILE
    assert issue.path == path
    assert issue.line == line_of(text, needle)
    assert issue.hint  # names what exists
    assert str(issue).startswith(f"{WF_FILE}:{issue.line}: {path}: ")


def test_hints_list_what_exists() -> None:
    (issue,) = refused(with_workflow(edit(WORKFLOW, "task: classify", "task: clasify")))
    assert issue.hint == "tasks of zoo 'zoo': classify, detect"
    assert issue.message == "unknown task 'clasify'; did you mean 'classify'?"
    (issue,) = refused(with_workflow(edit(WORKFLOW, "sites: [edge]", "sites: [egde]")))
    assert "cloud, edge" in issue.hint
    (issue,) = refused(with_workflow(edit(WORKFLOW, "    accuracy: 60\n", "    accuracy: 60\n    accuracy_table: x\n")))
    assert issue.hint == "tables: e2e"


def test_every_cross_document_problem_is_reported_at_once() -> None:
    text = edit(WORKFLOW, "task: classify", "task: clasify")
    text = edit(text, "sites: [edge]", "sites: [egde]")
    text = edit(text, "    accuracy: 60\n", "    accuracy: 60\n    accuracy_table: nope\n")
    issues = refused(with_workflow(text))
    assert [i.path for i in issues] == ["spec.sources[0].sites[0]", "spec.stages[1].task", "spec.slo.accuracy_table"]
    assert all(i.file == WF_FILE for i in issues)


def test_two_topologies_and_the_workflow_names_none() -> None:
    other = edit(TOPOLOGY, "name: topo", "name: topo-b")
    docs = documents(("zoo.yaml", ZOO), ("a.yaml", TOPOLOGY), ("b.yaml", other), (WF_FILE, WORKFLOW))
    (issue,) = refused(docs)
    assert issue.message == "expected exactly one Topology document, found 2 (topo, topo-b)"
    assert issue.file == WF_FILE and issue.path == "spec"
    assert issue.line == line_of(WORKFLOW, "spec:")
    assert "spec.topology" in issue.hint
    # Naming one resolves it.
    named = edit(WORKFLOW, "spec:\n", "spec:\n  topology: topo-b\n")
    docs = documents(("zoo.yaml", ZOO), ("a.yaml", TOPOLOGY), ("b.yaml", other), (WF_FILE, named))
    assert resolve(docs).topology.metadata.name == "topo-b"


def test_no_zoo_given() -> None:
    docs = documents(("topology.yaml", TOPOLOGY), (WF_FILE, WORKFLOW))
    (issue,) = refused(docs)
    assert issue.message == "expected exactly one ModelZoo document, found 0 (none)"
    assert issue.file == WF_FILE and issue.line == line_of(WORKFLOW, "spec:")
    assert "spec.zoo" in issue.hint


@pytest.mark.parametrize(("field", "kind", "given"), [("topology", "Topology", "topo"), ("zoo", "ModelZoo", "zoo")])
def test_the_workflow_names_a_missing_document(field: str, kind: str, given: str) -> None:
    text = edit(WORKFLOW, "spec:\n", f"spec:\n  {field}: nope\n")
    (issue,) = refused(with_workflow(text))
    assert issue.message == f"workflow 'wf' names {kind} 'nope', which was not given"
    assert issue.file == WF_FILE and issue.path == f"spec.{field}"
    assert issue.line == line_of(text, f"{field}: nope")
    assert issue.hint == f"{kind} documents given: {given}"


def test_two_documents_of_one_kind_with_one_name() -> None:
    text = edit(WORKFLOW, "spec:\n", "spec:\n  topology: topo\n")
    copy = "\n\n" + TOPOLOGY  # the second one starts further down its file
    docs = documents(("zoo.yaml", ZOO), ("a.yaml", TOPOLOGY), ("b.yaml", copy), (WF_FILE, text))
    (issue,) = refused(docs)
    assert issue.message == "a second Topology named 'topo'"
    assert issue.file == "b.yaml" and issue.path == "metadata.name"
    assert issue.line == line_of(copy, "name: topo")


def test_two_workflows_with_one_name() -> None:
    docs = with_workflow(WORKFLOW) + documents(("other.yaml", "# x\n" + WORKFLOW))
    (issue,) = refused(docs, "wf")
    assert issue.message == "a second Workflow named 'wf'"
    assert (issue.file, issue.line) == ("other.yaml", line_of(WORKFLOW, "name: wf") + 1)


def test_several_workflows_need_a_name() -> None:
    other = edit(WORKFLOW, "name: wf", "name: wf-2")
    docs = with_workflow(WORKFLOW) + documents(("other.yaml", other))
    (issue,) = refused(docs)
    assert issue.message == "expected exactly one Workflow document, found 2 (wf, wf-2)"
    assert "--workflow" in issue.hint
    assert resolve(docs, "wf-2").name == "wf-2"
    (issue,) = refused(docs, "wf-3")
    assert issue.message == "the command names Workflow 'wf-3', which was not given; did you mean 'wf-2'?"
    assert issue.hint == "Workflow documents given: wf, wf-2"


def test_load_bundle_reports_the_real_file_and_line(tmp_path: Path) -> None:
    text = "# a header comment\n" + edit(WORKFLOW, "task: classify", "task: clasify")
    folder = write_bundle(tmp_path / "docs", workflow=text)
    with pytest.raises(SpecError) as info:
        load_bundle([folder])
    (issue,) = info.value.issues
    assert issue.file == str(folder / "workflow.yaml")
    assert issue.line == line_of(text, "task: clasify")
    assert str(issue).startswith(f"{folder / 'workflow.yaml'}:{issue.line}: spec.stages[1].task: unknown task")


def test_load_bundle_picks_the_named_workflow(tmp_path: Path) -> None:
    folder = write_bundle(tmp_path / "docs", other=edit(WORKFLOW, "name: wf", "name: wf-2"))
    assert load_bundle([folder], "wf-2").name == "wf-2"


# --- several workflows, planned together (resolve_all) ---------------------------------------------


def several(*workflows: tuple[str, str], topologies: tuple[str, ...] = (TOPOLOGY,)) -> list[LoadedDocument]:
    """The zoo, the topologies, and the workflows as (file, text)."""
    return documents(("zoo.yaml", ZOO), *[(f"topology-{k}.yaml", t) for k, t in enumerate(topologies)], *workflows)


def refused_all(docs: list[LoadedDocument], workflows: list[str] | None = None) -> list[Issue]:
    with pytest.raises(SpecError) as info:
        resolve_all(docs, workflows)
    return info.value.issues


OTHER = edit(WORKFLOW, "name: wf", "name: wf-2")


def test_every_workflow_in_the_documents_order() -> None:
    docs = several(("b.yaml", OTHER), (WF_FILE, WORKFLOW))
    assert [b.name for b in resolve_all(docs)] == ["wf-2", "wf"]
    assert [b.name for b in resolve_all(docs, ["wf", "wf-2"])] == ["wf", "wf-2"]
    assert [b.name for b in resolve_all(docs, ["wf"])] == ["wf"]
    bundles = resolve_all(docs)
    assert bundles[0].topology is bundles[1].topology


def test_a_workflow_named_twice_or_not_given() -> None:
    docs = several((WF_FILE, WORKFLOW), ("b.yaml", OTHER))
    (issue,) = refused_all(docs, ["wf", "wf"])
    assert (issue.path, issue.message) == ("--workflow", "workflow wf named twice")
    (issue,) = refused_all(docs, ["wf", "wf-3"])
    assert issue.message == "the command names Workflow 'wf-3', which was not given; did you mean 'wf-2'?"
    (issue,) = refused_all(documents(("zoo.yaml", ZOO), ("topology.yaml", TOPOLOGY)))
    assert issue.message == "no Workflow document given"


def test_workflows_planned_together_share_one_topology() -> None:
    """The second workflow names another Topology: located at its spec.topology, naming both."""
    second_topology = edit(TOPOLOGY, "name: topo", "name: topo-2")
    mine = edit(WORKFLOW, "spec:\n", "spec:\n  topology: topo\n")
    theirs = edit(OTHER, "spec:\n", "spec:\n  topology: topo-2\n")
    (issue,) = refused_all(several((WF_FILE, mine), ("b.yaml", theirs), topologies=(TOPOLOGY, second_topology)))
    assert (issue.file, issue.line, issue.path) == ("b.yaml", line_of(theirs, "topology: topo-2"), "spec.topology")
    assert issue.message == ("workflow 'wf-2' uses Topology 'topo-2', but workflow 'wf' uses 'topo': workflows "
                             "planned together share one Topology")
    assert "--workflow NAME" in issue.hint
    # Naming none while two are given: the existing rule, located in the workflow that names none.
    issues = refused_all(several((WF_FILE, mine), ("b.yaml", OTHER), topologies=(TOPOLOGY, second_topology)))
    assert [(i.file, i.message) for i in issues] == [
        ("b.yaml", "expected exactly one Topology document, found 2 (topo, topo-2)")]


def test_two_workflows_with_one_name_are_refused() -> None:
    (issue,) = refused_all(several((WF_FILE, WORKFLOW), ("b.yaml", "# x\n" + WORKFLOW)))
    assert (issue.file, issue.line, issue.message) == ("b.yaml", line_of(WORKFLOW, "name: wf") + 1,
                                                       "a second Workflow named 'wf'")


def test_each_workflow_may_use_its_own_zoo() -> None:
    zoo_2 = edit(ZOO, "name: zoo", "name: zoo-2")
    mine = edit(WORKFLOW, "spec:\n", "spec:\n  zoo: zoo\n")
    theirs = edit(OTHER, "spec:\n", "spec:\n  zoo: zoo-2\n")
    docs = documents(("zoo.yaml", ZOO), ("zoo-2.yaml", zoo_2), ("topology.yaml", TOPOLOGY), (WF_FILE, mine),
                     ("b.yaml", theirs))
    assert [(b.name, b.zoo.metadata.name) for b in resolve_all(docs)] == [("wf", "zoo"), ("wf-2", "zoo-2")]
    # Every workflow's problems are reported at once.
    bad = edit(theirs, "task: classify", "task: clasify")
    worse = edit(mine, "sites: [edge]", "sites: [egde]")
    issues = refused_all(documents(("zoo.yaml", ZOO), ("zoo-2.yaml", zoo_2), ("topology.yaml", TOPOLOGY),
                                   (WF_FILE, worse), ("b.yaml", bad)))
    assert [(i.file, i.path) for i in issues] == [(WF_FILE, "spec.sources[0].sites[0]"), ("b.yaml", "spec.stages[1].task")]


def test_latency_bounds_planned_together_are_on_one_percentile() -> None:
    mine = edit(WORKFLOW, "    accuracy: 60\n", "    accuracy: 60\n    latency_ms: 100\n")
    theirs = edit(OTHER, "    accuracy: 60\n", "    accuracy: 60\n    latency_ms: 100\n    latency_percentile: mean\n")
    (issue,) = refused_all(several((WF_FILE, mine), ("b.yaml", theirs)))
    assert (issue.file, issue.line, issue.path) == ("b.yaml", line_of(theirs, "latency_percentile: mean"),
                                                    "spec.slo.latency_percentile")
    assert "checks its latency bound on the mean latencies, workflow 'wf' on the p90" in issue.message
    # A workflow without a bound has no say.
    unbounded = edit(OTHER, "    accuracy: 60\n", "    accuracy: 60\n    latency_percentile: mean\n")
    assert len(resolve_all(several((WF_FILE, mine), ("b.yaml", unbounded)))) == 2
