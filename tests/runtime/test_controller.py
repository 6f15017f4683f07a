"""The controller: pure decisions, declarative apply (twice = no change; a change re-plans and rolls
over, new pipeline first), delete, restart ("state survives"), failures with backoff, and growing an
embedded Ray when a topology adds sites. No Ray: pipelines and the cluster are fakes."""

from __future__ import annotations

import itertools
import threading
import json
import sqlite3
import shutil
from pathlib import Path

import pytest

from jellybean.runtime.controller import (
    Action, ClusterDecision, Controller, NotFound, Rejected, backoff_s, compare_stages, decide, decide_cluster,
    merge_resources, planned_rows,
)
from jellybean.runtime.state import StateStore
from jellybean.spec.errors import SpecError

ROOT = Path(__file__).resolve().parents[2]
VQA = ROOT / "workflows" / "vqa-medium"
VEHICLES = ROOT / "workflows" / "vehicle-tracking"


# --------------------------------------------------------------------------------------------------
# fakes (test_api imports them)


class Recorder:
    """What the fake pipelines did, in order: ("start"|"stop", workflow, pipeline id, extra)."""

    def __init__(self) -> None:
        self.log: list[tuple] = []
        self.fail: dict[str, int] = {}  # workflow -> starts left to fail
        self.ids = itertools.count(1)
        self.live: dict[int, FakePipeline] = {}

    def factory(self, bundle, plan) -> FakePipeline:
        return FakePipeline(self, bundle, plan)

    def events(self, kind: str | None = None) -> list[tuple]:
        return [e for e in self.log if kind is None or e[0] == kind]


class FakePipeline:
    """Implements the data plane's contract (start, stop(drain), status, summary) without Ray."""

    def __init__(self, recorder: Recorder, bundle, plan) -> None:
        self.recorder = recorder
        self.bundle = bundle
        self.plan = plan
        self.id = next(recorder.ids)
        self.name = plan.workflow
        self.started = False

    def start(self) -> None:
        if self.recorder.fail.get(self.name, 0) > 0:
            self.recorder.fail[self.name] -= 1
            raise RuntimeError("replica failed to load its model")
        self.started = True
        self.recorder.live[self.id] = self
        self.recorder.log.append(("start", self.name, self.id, self.plan.accuracy_target))

    def stop(self, *, drain: bool = True) -> dict:
        self.recorder.live.pop(self.id, None)
        self.recorder.log.append(("stop", self.name, self.id, drain))
        return {"workflow": self.name, "frames": {"sent": 10, "completed": 10, "failed": 0, "lost": 0}}

    def status(self) -> dict:
        rows = {}
        for a in self.plan.assignments:
            for site in a.sites or [a.site]:
                row = rows.setdefault((a.stage, site), {
                    "stage": a.stage, "site": site, "variant": a.variant, "replicas_planned": 0, "replicas_alive": 0,
                    "rate_planned_per_s": 0.0, "rate_measured_per_s": 0.0})
                row["replicas_planned"] += 1
                row["replicas_alive"] += 1
                row["rate_planned_per_s"] += a.rate_per_s
                row["rate_measured_per_s"] += a.rate_per_s * 0.9
        return {"stages": list(rows.values()), "frames": {"sent": 5, "completed": 4, "failed": 0, "lost": 0}}

    def summary(self) -> dict:
        return {"workflow": self.name}


class FakeCluster:
    """An embedded (or joined) Ray: records starts and restarts with their resources."""

    def __init__(self, *, embedded: bool = True, offered: dict | None = None) -> None:
        self.embedded = embedded
        self.resources: dict | None = None if embedded else dict(offered or {})
        self.connected = False
        self.log: list[tuple[str, dict]] = []

    def offered(self) -> dict | None:
        return None if not self.connected else dict(self.resources or {})

    def start(self, resources) -> None:
        self.connected = True
        if self.embedded:
            self.resources = dict(resources)
        self.log.append(("start", dict(resources)))

    def grow(self, resources) -> None:
        self.resources = {**(self.resources or {}), **dict(resources)}
        self.log.append(("grow", dict(resources)))

    def shutdown(self) -> None:
        self.connected = False
        self.log.append(("shutdown", {}))

    def describe(self) -> dict:
        return {"mode": "embedded" if self.embedded else "external", "resources": self.resources}


def sites_of(topology) -> dict[str, float]:
    return {f"site:{s.name}": 1000.0 for s in topology.spec.sites}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def files_of(folder: Path, prefix: str | None = None) -> list[tuple[str, str]]:
    """A folder's YAML files as the API receives them: (name the client gave, text)."""
    prefix = prefix if prefix is not None else folder.name
    return [(f"{prefix}/{p.name}", p.read_text()) for p in sorted(folder.glob("*.yaml"))]


def edited(files: list[tuple[str, str]], name: str, old: str, new: str) -> list[tuple[str, str]]:
    out = []
    for file, text in files:
        if file.endswith(name):
            assert old in text, (file, old)
            text = text.replace(old, new, 1)
        out.append((file, text))
    return out


def make(tmp_path: Path, recorder: Recorder | None = None, **kwargs) -> tuple[Controller, Recorder]:
    recorder = recorder or Recorder()
    kwargs.setdefault("site_resources", sites_of)
    kwargs.setdefault("pipeline_factory", recorder.factory)
    controller = Controller(StateStore(tmp_path / "state"), **kwargs)
    return controller, recorder


# --------------------------------------------------------------------------------------------------
# pure decisions


def test_decide_starts_replaces_and_stops() -> None:
    desired = {"a": "1", "b": "2", "c": "3"}
    running = {"b": "2", "c": "old", "d": "4"}
    assert decide(desired, running) == [
        Action("stop", "d", None, "4"), Action("start", "a", "1"), Action("replace", "c", "3", "old")]


def test_decide_is_idempotent_and_respects_hold() -> None:
    desired = {"a": "1", "b": "2"}
    assert decide(desired, desired) == []
    assert decide({}, {}) == []
    assert decide(desired, {"b": "old"}, hold={"a", "b"}) == []
    assert decide({}, {"a": "1"}, hold={"a"}) == [Action("stop", "a", None, "1")]  # deletion is never held


def test_decide_cluster() -> None:
    need = {"site:a": 1000.0, "site:b": 1000.0}
    assert decide_cluster(None, need, embedded=True) == ClusterDecision("start", need)
    assert decide_cluster(need, need, embedded=True).action == "none"
    grown = decide_cluster({"site:a": 1000.0, "site:z": 5.0}, need, embedded=True)
    # Only what is missing is added to the running node (in place: nothing restarts, no site is dropped).
    assert grown == ClusterDecision("grow", {"site:b": 1000.0}, {"site:b": 1000.0})
    assert decide_cluster({"site:a": 10.0}, {"site:a": 1000.0}, embedded=True) == ClusterDecision(
        "grow", {"site:a": 1000.0}, {"site:a": 1000.0})
    joined = decide_cluster({"site:a": 1.0}, need, embedded=False)
    assert joined.action == "none" and set(joined.missing) == {"site:b"}
    assert decide_cluster(None, need, embedded=False) == ClusterDecision("start", {})


def test_merge_resources_and_backoff() -> None:
    assert merge_resources([{"site:a": 1, "site:b": 5}, {"site:b": 7}]) == {"site:a": 1.0, "site:b": 7.0}
    assert [backoff_s(n, 5, 60) for n in (1, 2, 3, 4, 5)] == [5, 10, 20, 40, 60]


def test_planned_rows_expand_like_the_data_plane() -> None:
    plan = {"models": {"s": "v"}, "assignments": [
        {"stage": "s", "variant": "v", "site": "h1", "sites": ["h1", "h2"], "instances": 1.2, "rate_per_s": 3.0},
        {"stage": "s", "variant": "v", "site": "h1", "sites": [], "instances": 0.5, "rate_per_s": 1.0}]}
    rows = planned_rows(plan)
    assert rows[("s", "h1")]["replicas_planned"] == 3 and rows[("s", "h1")]["rate_planned_per_s"] == 4.0
    assert rows[("s", "h2")]["replicas_planned"] == 2
    merged = compare_stages(plan, {"stages": [{"stage": "s", "site": "h2", "variant": "v", "replicas_alive": 1,
                                               "rate_measured_per_s": 2.5}]})
    h2 = next(r for r in merged if r["site"] == "h2")
    assert (h2["replicas_alive"], h2["rate_measured_per_s"], h2["variant_running"]) == (1, 2.5, "v")


# --------------------------------------------------------------------------------------------------
# apply, reconcile, delete


def test_apply_twice_changes_nothing(tmp_path: Path) -> None:
    controller, rec = make(tmp_path)
    first = controller.apply(files_of(VQA))
    assert first.changed
    assert {d["action"] for d in first.documents} == {"created"}
    assert [(w["name"], w["action"], w["generation"]) for w in first.workflows] == [("vqa-medium", "created", 1)]
    assert controller.reconcile() == [Action("start", "vqa-medium", first.workflows[0]["digest"])]
    before = controller.store.counts()

    # The same documents, formatted differently (a comment, defaults left out): the same content.
    again = edited(files_of(VQA), "workflow.yaml", "spec:\n", "spec:  # the same workflow\n")
    again = edited(again, "workflow.yaml", "  labels: {}\n  annotations: {}\n", "")
    second = controller.apply(again)
    assert not second.changed
    assert {d["action"] for d in second.documents} == {"unchanged"}
    assert [(w["action"], w["generation"]) for w in second.workflows] == [("unchanged", 1)]
    assert second.workflows[0]["cost_per_hour"] == pytest.approx(7.485, abs=1e-3)
    assert controller.store.counts() == before  # nothing written, not even history
    assert controller.reconcile() == []
    assert rec.events("start") == [("start", "vqa-medium", 1, 56.0)] and rec.events("stop") == []


def test_changed_workflow_is_replanned_and_rolled_over_stop_first_when_there_is_no_room(tmp_path: Path) -> None:
    controller, rec = make(tmp_path)
    controller.apply(files_of(VQA))
    controller.reconcile()
    result = controller.apply(edited(files_of(VQA), "workflow.yaml", "accuracy: 56.0", "accuracy: 55.0"))
    assert [(w["action"], w["generation"]) for w in result.workflows] == [("configured", 2)]
    assert {(d["kind"], d["action"]) for d in result.documents} == {
        ("Workflow", "configured"), ("ModelZoo", "unchanged"), ("Topology", "unchanged")}
    assert controller.store.revision("vqa-medium").plan["accuracy_target"] == 55.0
    [action] = controller.reconcile()
    assert action.kind == "replace"
    # vqa-medium's topology has one instance of each worker, all in use: the new version cannot start
    # beside the old one, so the old one is drained and stopped first (stop-first), said in the event.
    assert rec.log == [("start", "vqa-medium", 1, 56.0), ("stop", "vqa-medium", 1, True),
                       ("start", "vqa-medium", 2, 55.0)]
    status = controller.workflow_status("vqa-medium")
    assert (status["phase"], status["generation"], status["running_generation"]) == ("Running", 2, 2)
    events = status["events"]
    assert [e["event"] for e in events][-3:] == ["applied", "stopped", "replaced"]
    assert events[-1]["detail"]["strategy"] == "stop-first"
    assert "no room to start the new version beside the old one" in events[-1]["detail"]["why"]
    assert "needs 1 instance(s), 0 free" in events[-1]["detail"]["why"]
    assert [r["generation"] for r in controller.store.revisions("vqa-medium")] == [1, 2]


def roomy(files: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """vehicle-tracking with two Jetsons per hub (its plan uses one): room for a second version."""
    return [(name, text.replace("count: 1\n", "count: 2\n") if name.endswith("topology.yaml") else text)
            for name, text in files]


def test_a_change_with_room_rolls_over_new_first(tmp_path: Path) -> None:
    """With a second Jetson per hub (and the elastic edge DC), the new version starts beside the old
    one, which is drained and stopped once the new one runs."""
    controller, rec = make(tmp_path)
    controller.apply(roomy(files_of(VEHICLES)))
    controller.reconcile()
    controller.apply(edited(roomy(files_of(VEHICLES)), "workflow.yaml", "accuracy: 33.0", "accuracy: 32.0"))
    [action] = controller.reconcile()
    assert action.kind == "replace"
    assert [e[:3] for e in rec.log] == [("start", "vehicle-tracking", 1), ("start", "vehicle-tracking", 2),
                                        ("stop", "vehicle-tracking", 1)]
    replaced = controller.workflow_status("vehicle-tracking")["events"][-1]
    assert replaced["event"] == "replaced" and replaced["detail"]["strategy"] == "new-first"


def test_changing_a_topology_replans_the_workflows_that_use_it(tmp_path: Path) -> None:
    controller, rec = make(tmp_path)
    controller.apply(files_of(VQA))
    controller.reconcile()
    # Only the topology is sent: the stored workflow using it is re-planned.
    [(name, text)] = [f for f in files_of(VQA) if f[0].endswith("topology.yaml")]
    cheaper = text.replace("price_per_hour: 2.305", "price_per_hour: 1.305", 1)
    result = controller.apply([(name, cheaper)])
    [wf] = result.workflows
    assert (wf["name"], wf["action"], wf["generation"]) == ("vqa-medium", "configured", 2)
    assert "Topology vqa-medium changed" in wf["reason"]
    assert wf["cost_per_hour"] < 7.485
    controller.reconcile()
    assert [e[:3] for e in rec.log] == [("start", "vqa-medium", 1), ("stop", "vqa-medium", 1),
                                        ("start", "vqa-medium", 2)]  # every worker in use: stop-first


def test_a_workflow_alone_resolves_against_stored_documents(tmp_path: Path) -> None:
    controller, _ = make(tmp_path)
    controller.apply([f for f in files_of(VQA) if not f[0].endswith("workflow.yaml")])
    assert controller.store.desired() == {}
    result = controller.apply([f for f in files_of(VQA) if f[0].endswith("workflow.yaml")])
    assert [(w["name"], w["action"]) for w in result.workflows] == [("vqa-medium", "created")]


def test_invalid_documents_are_refused_with_located_issues_and_nothing_stored(tmp_path: Path) -> None:
    controller, _ = make(tmp_path)
    controller.apply(files_of(VQA))
    before = controller.store.counts()
    broken = edited(files_of(VQA), "workflow.yaml", "    rate_per_s: 40.0", "    rate_per_s: fast")
    broken = edited(broken, "topology.yaml", "price_per_hour: 0.096", "price_per_hour: 0.096\n      colour: red")
    with pytest.raises(SpecError) as caught:
        controller.apply(broken)
    text = [str(i) for i in caught.value.issues]
    wf_line = next(i for i, line in enumerate(broken[1][1].splitlines(), 1) if "rate_per_s: fast" in line)
    assert f"vqa-medium/workflow.yaml:{wf_line}: spec.sources[0].rate_per_s:" in "\n".join(text)
    assert any("vqa-medium/topology.yaml" in t and "colour" in t for t in text)  # every file's issues at once
    assert controller.store.counts() == before


def test_a_zoo_change_that_breaks_a_stored_workflow_is_refused(tmp_path: Path) -> None:
    controller, _ = make(tmp_path)
    controller.apply(files_of(VQA))
    [(name, text)] = [f for f in files_of(VQA) if f[0].endswith("zoo.yaml")]
    with pytest.raises(SpecError) as caught:
        controller.apply([(name, text.replace("name: VQA\n", "name: VisualQA\n", 1))])
    assert any("stored workflow 'vqa-medium'" in str(i) and "unknown task 'VQA'" in str(i)
               for i in caught.value.issues)


def test_infeasible_plan_is_rejected_and_the_running_version_stays(tmp_path: Path) -> None:
    controller, rec = make(tmp_path)
    controller.apply(files_of(VQA))
    controller.reconcile()
    before = controller.store.counts()
    with pytest.raises(Rejected) as caught:
        controller.apply(edited(files_of(VQA), "workflow.yaml", "accuracy: 56.0", "accuracy: 99.0"))
    [rejection] = caught.value.rejections
    assert rejection.workflow == "vqa-medium" and rejection.reason == "infeasible"
    assert any("99" in line for line in rejection.explanation)
    assert controller.store.counts() == before
    assert controller.reconcile() == [] and len(rec.live) == 1


def test_not_servable_plan_is_rejected(tmp_path: Path) -> None:
    from jellybean.runtime.controller import NotServable

    def refuse(bundle, plan) -> None:
        raise NotServable("variant 'resnet18' of stage 'ExtractImageFeature' names no `loader`")

    controller, _ = make(tmp_path, check_servable=refuse)
    with pytest.raises(Rejected) as caught:
        controller.apply(files_of(VQA))
    assert caught.value.rejections[0].reason == "not-servable"
    assert controller.store.desired() == {}


def test_empty_and_duplicate_submissions_are_invalid(tmp_path: Path) -> None:
    controller, _ = make(tmp_path)
    with pytest.raises(SpecError, match="no files"):
        controller.apply([])
    with pytest.raises(SpecError, match="no documents"):
        controller.apply([("empty.yaml", "# nothing here\n")])
    [(name, text)] = [f for f in files_of(VQA) if f[0].endswith("zoo.yaml")]
    with pytest.raises(SpecError, match="a second ModelZoo named 'vqa-medium'"):
        controller.apply([(name, text), ("copy.yaml", text)])


def test_delete_stops_the_pipeline_and_keeps_history(tmp_path: Path) -> None:
    controller, rec = make(tmp_path)
    controller.apply(files_of(VQA))
    controller.reconcile()
    controller.delete("vqa-medium")
    assert controller.workflow_status("vqa-medium")["phase"] == "Terminating"
    assert [a.kind for a in controller.reconcile()] == ["stop"]
    assert rec.log[-1] == ("stop", "vqa-medium", 1, True) and not rec.live
    with pytest.raises(NotFound):
        controller.workflow_status("vqa-medium")
    with pytest.raises(NotFound):
        controller.delete("vqa-medium")
    assert [e.event for e in controller.store.events("vqa-medium")][-2:] == ["deleted", "stopped"]
    # Applying it again creates generation 2 (revisions are history, never reused).
    result = controller.apply(files_of(VQA))
    assert [(w["action"], w["generation"]) for w in result.workflows] == [("created", 2)]


def test_state_survives_a_restart(tmp_path: Path) -> None:
    controller, rec = make(tmp_path)
    controller.apply(files_of(VQA))
    controller.apply(files_of(VEHICLES))
    controller.reconcile()
    controller.stop()  # drains and stops every pipeline; the desired state stays
    assert not rec.live and all(e[3] is True for e in rec.events("stop"))
    controller.store.close()

    again, rec2 = make(tmp_path)  # a new controller on the same state directory
    assert again.store.desired().keys() == {"vqa-medium", "vehicle-tracking"}
    assert sorted(a.name for a in again.reconcile()) == ["vehicle-tracking", "vqa-medium"]
    assert {e[1] for e in rec2.events("start")} == {"vqa-medium", "vehicle-tracking"}
    status = again.workflow_status("vehicle-tracking")
    assert status["phase"] == "Running" and status["generation"] == 1
    assert status["frames"] == {"sent": 5, "completed": 4, "failed": 0, "lost": 0}
    assert all(r["replicas_alive"] > 0 for r in status["stages"])
    assert again.apply(files_of(VQA)).changed is False  # what was stored is what is sent


def test_failed_start_is_reported_and_retried_with_backoff(tmp_path: Path) -> None:
    clock = Clock()
    rec = Recorder()
    rec.fail["vqa-medium"] = 2
    controller, _ = make(tmp_path, rec, clock=clock, retry_initial_s=5, retry_max_s=60)
    controller.apply(files_of(VQA))
    controller.reconcile()
    status = controller.workflow_status("vqa-medium")
    assert status["phase"] == "Failed" and "replica failed to load its model" in status["message"]
    assert controller.settled("vqa-medium")
    assert controller.reconcile() == []  # backing off
    clock.now += 5
    controller.reconcile()  # second failure: 10 s now
    clock.now += 9
    assert controller.reconcile() == []
    clock.now += 1
    controller.reconcile()
    assert controller.workflow_status("vqa-medium")["phase"] == "Running"
    assert [e.event for e in controller.store.events("vqa-medium")][-3:] == ["failed", "failed", "started"]


def test_failed_rollover_keeps_the_old_pipeline(tmp_path: Path) -> None:
    controller, rec = make(tmp_path)
    controller.apply(roomy(files_of(VEHICLES)))
    controller.reconcile()
    rec.fail["vehicle-tracking"] = 1
    controller.apply(edited(roomy(files_of(VEHICLES)), "workflow.yaml", "accuracy: 33.0", "accuracy: 32.0"))
    controller.reconcile()
    status = controller.workflow_status("vehicle-tracking")
    assert status["phase"] == "Failed" and "generation 1 keeps running" in status["message"]
    assert status["running_generation"] == 1
    assert status["last_failure"]["reason"] == "DeployFailed"
    assert "replica failed to load its model" in status["last_failure"]["message"]
    # The half-started new pipeline is cleaned up (no drain); the old one keeps serving.
    assert rec.events("stop") == [("stop", "vehicle-tracking", 2, False)] and list(rec.live) == [1]


def test_a_failed_stop_first_rollout_says_why_and_retries(tmp_path: Path) -> None:
    """No room (every vqa worker in use): the old version is stopped first; when the new one then fails
    to start, the status says so (the reason, stop-first) and the start is retried with backoff."""
    clock = Clock()
    controller, rec = make(tmp_path, clock=clock, retry_initial_s=5)
    controller.apply(files_of(VQA))
    controller.reconcile()
    rec.fail["vqa-medium"] = 1
    controller.apply(edited(files_of(VQA), "workflow.yaml", "accuracy: 56.0", "accuracy: 55.0"))
    controller.reconcile()
    status = controller.workflow_status("vqa-medium")
    assert status["phase"] == "Failed" and status["running_generation"] is None
    assert "replica failed to load its model" in status["message"]
    assert "stop-first: the previous generation was stopped to make room" in status["message"]
    assert "retrying in 5 s" in status["message"]
    clock.now += 5
    controller.reconcile()
    status = controller.workflow_status("vqa-medium")
    assert (status["phase"], status["running_generation"]) == ("Running", 2)
    assert status["last_failure"]["reason"] == "DeployFailed" and status["last_failure"]["retry_in_s"] is None


def test_embedded_ray_grows_in_place_when_a_topology_adds_sites(tmp_path: Path) -> None:
    cluster = FakeCluster()
    controller, rec = make(tmp_path, cluster=cluster)
    controller.reconcile()
    assert cluster.log == []  # nothing to serve: Ray is not started
    controller.apply(files_of(VQA))
    controller.reconcile()
    assert cluster.log == [("start", {"site:cloud": 1000.0, "site:edge": 1000.0})]
    controller.apply(files_of(VEHICLES))
    controller.reconcile()
    kind, added = cluster.log[-1]
    assert kind == "grow" and {"site:hub-1", "site:edc"} <= set(added) and "site:cloud" not in added
    # vqa-medium keeps running: only the new workflow starts.
    assert [e[:2] for e in rec.log] == [("start", "vqa-medium"), ("start", "vehicle-tracking")]
    grown = [e for e in controller.store.events() if e.event == "ray-grown"]
    assert grown and grown[0].detail["kept_running"] == ["vqa-medium"]
    assert controller.reconcile() == []
    controller.stop()
    assert cluster.log[-1][0] == "shutdown"


def test_joined_cluster_without_the_sites_blocks_the_workflow(tmp_path: Path) -> None:
    cluster = FakeCluster(embedded=False, offered={"site:cloud": 1.0})
    controller, rec = make(tmp_path, cluster=cluster)
    controller.apply(files_of(VQA))
    controller.reconcile()
    status = controller.workflow_status("vqa-medium")
    assert status["phase"] == "Blocked" and "site:edge" in status["message"]
    assert rec.log == []
    cluster.resources["site:edge"] = 1.0  # the edge node joins
    controller.reconcile()
    assert controller.workflow_status("vqa-medium")["phase"] == "Running"


def test_background_loop_applies_and_stops(tmp_path: Path) -> None:
    controller, rec = make(tmp_path, interval_s=0.05)
    controller.start()
    try:
        controller.apply(files_of(VQA))
        assert controller.wait_settled(["vqa-medium"], 10)
        assert controller.workflow_status("vqa-medium")["phase"] == "Running"
        controller.delete("vqa-medium")
        assert controller.wait_settled(["vqa-medium"], 10)
        assert not rec.live
    finally:
        controller.stop()
    assert controller.list_status() == []


def test_status_lists_every_workflow(tmp_path: Path) -> None:
    controller, _ = make(tmp_path)
    controller.apply(files_of(VQA))
    assert [(w["name"], w["phase"]) for w in controller.list_status()] == [("vqa-medium", "Pending")]
    controller.reconcile()
    [row] = controller.list_status()
    assert row["phase"] == "Running" and row["replicas_alive"] == row["replicas_planned"] > 0


def test_workflow_folder_copy_is_independent(tmp_path: Path) -> None:
    """The same documents under another file name are still the same documents."""
    controller, _ = make(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(VQA, copy)
    controller.apply(files_of(VQA))
    assert controller.apply(files_of(copy, prefix=str(copy))).changed is False


# --------------------------------------------------------------------------------------------------
# one pass with a real embedded Ray (no data plane): site resources exist, actors land on them


class RayProbePipeline:
    """Starts one actor per planned site, each requiring that site's resource, and pings it."""

    def __init__(self, bundle, plan) -> None:
        self.sites = sorted({s for a in plan.assignments for s in (a.sites or [a.site])})
        self.actors: list = []

    def start(self) -> None:
        import ray

        @ray.remote(num_cpus=0)
        class Probe:
            def ping(self) -> str:
                return "pong"

            def pid(self) -> int:
                import os

                return os.getpid()

        self.actors = [Probe.options(resources={f"site:{site}": 0.001}).remote() for site in self.sites]
        assert ray.get([a.ping.remote() for a in self.actors], timeout=60) == ["pong"] * len(self.sites)

    def stop(self, *, drain: bool = True) -> dict:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        return {}

    def status(self) -> dict:
        return {"stages": [], "frames": None}


def test_embedded_ray_serves_site_resources_and_grows_in_place(tmp_path: Path) -> None:
    """A real embedded Ray: applying an unrelated workflow with new sites adds them to the running node,
    and the running workflow's actors are untouched (the same pipeline, the same actors, each answering
    the ping it answered before, in the same process)."""
    pytest.importorskip("ray")
    import ray

    from jellybean.runtime.controller import RayCluster

    cluster = RayCluster(num_cpus=1)
    controller = Controller(StateStore(tmp_path / "state"), pipeline_factory=RayProbePipeline, cluster=cluster)
    try:
        controller.apply(files_of(VQA))
        controller.reconcile()
        assert controller.workflow_status("vqa-medium")["phase"] == "Running"
        assert set(cluster.offered()) == {"site:cloud", "site:edge"}
        vqa = controller.executor.running["vqa-medium"].pipeline
        before = ray.get([a.pid.remote() for a in vqa.actors], timeout=60)
        controller.apply(files_of(VEHICLES))  # new sites: added to the running node
        controller.reconcile()
        assert {"site:edge", "site:hub-1", "site:edc"} <= set(cluster.offered())
        assert {"site:hub-1", "site:edc"} <= set(ray.cluster_resources())
        assert [w["phase"] for w in controller.list_status()] == ["Running", "Running"]
        assert controller.executor.running["vqa-medium"].pipeline is vqa
        assert ray.get([a.pid.remote() for a in vqa.actors], timeout=60) == before
        assert [e.event for e in controller.store.events("vqa-medium")] == ["applied", "started"]
        assert [e.event for e in controller.store.events() if e.event.startswith("ray-")] == ["ray-started", "ray-grown"]
    finally:
        controller.stop()
    assert cluster.offered() is None


def test_controller_metrics_count_applies_passes_and_errors(tmp_path: Path) -> None:
    from jellybean.runtime.metrics import Metrics

    metrics = Metrics()
    value = metrics.registry.get_sample_value
    rec = Recorder()
    rec.fail["vqa-medium"] = 1
    controller, _ = make(tmp_path, rec, metrics=metrics, clock=Clock())
    controller.apply(files_of(VQA))
    controller.apply(files_of(VQA))
    with pytest.raises(SpecError):
        controller.apply([("bad.yaml", "kind: Nonsense\n")])
    assert value("jellybean_controller_applies_total", {"outcome": "changed"}) == 1
    assert value("jellybean_controller_applies_total", {"outcome": "unchanged"}) == 1
    assert value("jellybean_controller_applies_total", {"outcome": "invalid"}) == 1
    controller.reconcile()  # the start fails once
    assert value("jellybean_controller_reconcile_errors_total", {"workflow": "vqa-medium"}) == 1
    assert value("jellybean_controller_workflows", {"state": "failed"}) == 1
    assert value("jellybean_controller_reconcile_duration_seconds_count") == 1


def test_a_damaged_store_is_reported_and_the_rest_serves(tmp_path: Path) -> None:
    """Bad JSON in one revision and a stored Topology the models refuse: a restarted controller says
    what is damaged, lists every workflow (no 500), serves the intact one on the sites it needs, and
    an apply of the damaged workflow's documents repairs it."""
    controller, _ = make(tmp_path)
    controller.apply(files_of(VQA))
    controller.apply(files_of(VEHICLES))
    controller.store.close()
    with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
        conn.execute("UPDATE revisions SET plan='{not json' WHERE workflow='vqa-medium'")
        body = json.loads(conn.execute("SELECT body FROM documents WHERE kind='Topology' AND name='vehicle-tracking-city-block'")
                          .fetchone()[0])
        body["spec"]["sites"][0]["tier"] = "orbit"
        conn.execute("UPDATE documents SET body=? WHERE kind='Topology' AND name='vehicle-tracking-city-block'", (json.dumps(body),))

    cluster = FakeCluster()
    again, rec = make(tmp_path, cluster=cluster)
    summary = again.store.damage_summary()
    assert "revision of workflow vqa-medium" in summary and "Topology vehicle-tracking-city-block" in summary
    again.reconcile()
    assert [e[1] for e in rec.events("start")] == ["vehicle-tracking"]
    assert set(sites_of(again.store.revision("vehicle-tracking").bundle().topology)) <= set(cluster.resources)
    rows = {w["name"]: w for w in again.list_status()}
    assert rows["vehicle-tracking"]["phase"] == "Running"
    assert rows["vqa-medium"]["phase"] == "Failed" and "stored revision is damaged" in rows["vqa-medium"]["message"]
    assert again.workflow_status("vqa-medium")["plan"] is None

    # A new workflow naming the damaged Topology is refused with the reason, not a 500.
    with pytest.raises(SpecError) as info:
        again.apply(edited(files_of(VEHICLES)[1:2], "workflow.yaml", "name: vehicle-tracking", "name: other"))
    assert any("stored Topology 'vehicle-tracking-city-block' is damaged" in i.message for i in info.value.issues)

    assert again.apply(files_of(VQA)).changed  # the same documents again: re-planned, not "unchanged"
    again.reconcile()
    assert again.workflow_status("vqa-medium")["phase"] == "Running" and again.store.damage_summary() is not None
    again.apply(files_of(VEHICLES))
    assert again.store.document_damage("Topology", "vehicle-tracking-city-block") is None


# --------------------------------------------------------------------------------------------------
# starts that can be cancelled, apply --wait, metrics of deleted workflows, the phase


class StuckPipeline(FakePipeline):
    """A start that cannot finish (its actors cannot be placed) until it is cancelled."""

    entered: threading.Event

    def start(self) -> None:
        type(self).entered.set()
        if not self.cancelled.wait(60):
            raise AssertionError("never cancelled")
        raise RuntimeError("setup calls failed: actors killed")

    def cancel(self) -> None:
        self.recorder.log.append(("cancel", self.name, self.id))
        self.cancelled.set()


def test_delete_cancels_a_start_under_way(tmp_path: Path) -> None:
    rec = Recorder()
    StuckPipeline.entered = threading.Event()

    def factory(bundle, plan):
        pipeline = StuckPipeline(rec, bundle, plan)
        pipeline.cancelled = threading.Event()
        return pipeline

    controller, _ = make(tmp_path, rec, pipeline_factory=factory, interval_s=0.05)
    controller.start()
    try:
        controller.apply(files_of(VQA))
        assert StuckPipeline.entered.wait(30)
        status = controller.workflow_status("vqa-medium")
        assert status["phase"] == "Starting" and status["message"] == "starting the pipeline"
        assert not controller.settled("vqa-medium")
        controller.delete("vqa-medium")  # cancels the start: the loop is free at once
        assert controller.wait_settled(["vqa-medium"], 10)
        assert ("cancel", "vqa-medium", 1) in rec.log
        events = [e.event for e in controller.store.events("vqa-medium")]
        assert events[-2:] == ["deleted", "cancelled"] and "failed" not in events
        with pytest.raises(NotFound):
            controller.workflow_status("vqa-medium")
    finally:
        controller.stop()


def test_a_retried_start_says_what_failed_last(tmp_path: Path) -> None:
    """While a start is retried, Starting says which attempt it is and what the last one failed with."""
    clock = Clock()
    rec = Recorder()
    rec.fail["vqa-medium"] = 1
    controller, _ = make(tmp_path, rec, clock=clock, retry_initial_s=5)
    controller.apply(files_of(VQA))
    controller.reconcile()
    clock.now += 5
    seen = []
    original = rec.factory

    def watching(bundle, plan):
        seen.append(controller.workflow_status("vqa-medium", events=0))
        return original(bundle, plan)

    controller.executor.pipeline_factory = watching
    controller.reconcile()
    assert seen[0]["phase"] == "Starting"
    assert seen[0]["message"] == ("starting the pipeline (attempt 2; the last one failed: RuntimeError: replica "
                                  "failed to load its model)")
    assert controller.workflow_status("vqa-medium")["phase"] == "Running"


def test_running_is_what_apply_wait_waits_for(tmp_path: Path) -> None:
    rec = Recorder()
    rec.fail["vqa-medium"] = 1
    controller, _ = make(tmp_path, rec, clock=Clock())
    controller.apply(files_of(VQA))
    assert not controller.running("vqa-medium")
    controller.reconcile()
    assert controller.settled("vqa-medium") and not controller.running("vqa-medium")  # failed: settled, not running
    controller.executor.failures.clear()
    controller.reconcile()
    assert controller.running("vqa-medium")


def test_a_deleted_workflows_series_leave_the_metrics(tmp_path: Path) -> None:
    from jellybean.runtime.metrics import Metrics

    metrics = Metrics()
    controller, _ = make(tmp_path, metrics=metrics)
    controller.apply(files_of(VQA))
    controller.apply(files_of(VEHICLES))
    controller.reconcile()
    for name in ("vqa-medium", "vehicle-tracking"):  # what a running pipeline's telemetry exports
        metrics.frames_completed.labels(name).inc(3)
        metrics.stage_dropped.labels(name, "s").inc()
    text = lambda: metrics.registry.get_sample_value  # noqa: E731
    assert text()("jellybean_frames_completed_total", {"workflow": "vqa-medium"}) == 3
    controller.delete("vqa-medium")
    controller.reconcile()
    from prometheus_client import generate_latest

    exported = generate_latest(metrics.registry).decode()
    assert 'workflow="vqa-medium"' not in exported
    assert 'jellybean_frames_completed_total{workflow="vehicle-tracking"} 3.0' in exported
    assert text()("jellybean_controller_workflows", {"state": "running"}) == 1
    # One that never ran (its start failed) leaves too, with its last failure.
    rec = controller.pipeline_factory.__self__
    rec.fail["vqa-medium"] = 1
    controller.apply(files_of(VQA))
    controller.reconcile()
    assert text()("jellybean_controller_reconcile_errors_total", {"workflow": "vqa-medium"}) == 1
    controller.delete("vqa-medium")
    assert text()("jellybean_controller_reconcile_errors_total", {"workflow": "vqa-medium"}) is None
    assert "vqa-medium" not in controller.executor.last_failures


def test_phase_of_is_pure_and_says_why() -> None:
    from jellybean.runtime.reconcile import Failure, Observation, Phase, phase_of

    failure = Failure("d2", "DeployFailed", "ServingError: 3 actor(s) could not start within 120 s", 2, 130.0, 0.0)
    assert phase_of(Observation("d1", "d1", 1)) == (Phase.RUNNING, "")
    assert phase_of(Observation("d1", "d1", 1, pipeline_state="degraded"))[0] is Phase.DEGRADED
    assert phase_of(Observation(None, "d1", 1)) == (Phase.TERMINATING, "deleted; stopping the pipeline")
    assert phase_of(Observation("d2", failure=failure, now=100.0)) == (
        Phase.FAILED, "ServingError: 3 actor(s) could not start within 120 s; attempt 2, retrying in 30 s")
    assert phase_of(Observation("d2", "d1", 1, failure=failure, now=100.0))[1].endswith(
        "(generation 1 keeps running)")
    assert phase_of(Observation("d2", transition="start", failure=failure))[1] == (
        "starting the pipeline (attempt 3; the last one failed: ServingError: 3 actor(s) could not start within "
        "120 s)")
    assert phase_of(Observation("d2", "d1", 1, transition="replace", rollout="rolling out (stop-first): no room"))[1] \
        == "rolling out (stop-first): no room"
    assert phase_of(Observation("d2", blocked="no node advertises site:x")) == (Phase.BLOCKED, "no node advertises site:x")
    assert phase_of(Observation("d2", "d1", 1))[0] is Phase.UPDATING
    assert phase_of(Observation("d2", planned=True))[0] is Phase.PLANNED
    assert phase_of(Observation("d2", problem=("ZooNotFound", "no ModelZoo 'z'")))[0] is Phase.PENDING
    assert phase_of(Observation("d2", "d1", 1, problem=("Infeasible", "no feasible plan"))) == (
        Phase.FAILED, "no feasible plan (generation 1 keeps running)")
    assert phase_of(Observation("d2")) == (Phase.PENDING, "")


def test_plan_rollout_is_new_first_only_with_room() -> None:
    from jellybean.optimizer import plan as make_plan
    from jellybean.runtime.reconcile import plan_rollout
    from jellybean.spec import load_bundle

    bundle = load_bundle([VQA])
    plan = make_plan(bundle, baselines=False, time_limit_s=30)
    assert plan_rollout(plan, bundle.topology, []).strategy == "new-first"
    crowded = plan_rollout(plan, bundle.topology, [plan])
    assert crowded.strategy == "stop-first" and "needs 1 instance(s), 0 free" in crowded.reason
    assert plan_rollout(None, None, [plan]).strategy == "new-first"


def test_a_workflow_applied_next_to_others_is_planned_on_what_they_leave(tmp_path: Path) -> None:
    """Two copies of vehicle-tracking on one Topology: the second is planned on what the first leaves
    (each hub's one Jetson is the first one's), so together they never count on the same instance;
    while nothing runs yet, each is planned on the whole topology."""
    from jellybean.optimizer.capacity import instances_in_use

    controller, _ = make(tmp_path)
    controller.apply(files_of(VEHICLES))
    controller.reconcile()
    second = edited([f for f in files_of(VEHICLES) if f[0].endswith("workflow.yaml")], "workflow.yaml",
                    "name: vehicle-tracking\n", "name: second-block\n")
    [result] = controller.apply(second).workflows
    controller.reconcile()
    plans = {name: controller.store.revision(name).plan_model() for name in ("vehicle-tracking", "second-block")}
    assert instances_in_use([plans["vehicle-tracking"]])[("hub-1", "agx-orin")] == 1
    assert ("hub-1", "agx-orin") not in instances_in_use([plans["second-block"]])
    assert result["cost_per_hour"] > plans["vehicle-tracking"].cost.total_per_hour  # the Jetsons were cheaper
    together = instances_in_use(plans.values())
    topology = controller.store.revision("vehicle-tracking").bundle().topology
    for site in topology.spec.sites:
        for group in site.instances:
            bound = group.count if group.count is not None else group.max_count
            assert together.get((site.name, group.name), 0) <= bound
    assert [w["phase"] for w in controller.list_status()] == ["Running", "Running"]


def test_a_new_first_rollout_that_finds_no_room_in_ray_stops_the_old_version_first(tmp_path: Path) -> None:
    """The plan says there is room (two Jetsons per hub) but Ray has not the CPUs free beside the old
    version (the machine is smaller than the topology): the start fails at once with NoRoom and the
    rollout goes on stop-first, said in the event, instead of failing and retrying forever."""
    from jellybean.runtime.deployment import NoRoom

    rec = Recorder()

    class Crowded(FakePipeline):
        def start(self) -> None:
            if any(p.name == self.name for p in rec.live.values()):
                raise NoRoom(f"{self.name} needs 4 CPU(s) for its replicas and Ray has 0 free")
            super().start()

    controller, _ = make(tmp_path, rec, pipeline_factory=lambda bundle, plan: Crowded(rec, bundle, plan))
    controller.apply(roomy(files_of(VEHICLES)))
    controller.reconcile()
    controller.apply(edited(roomy(files_of(VEHICLES)), "workflow.yaml", "accuracy: 33.0", "accuracy: 32.0"))
    controller.reconcile()
    assert [e[:3] for e in rec.log] == [("start", "vehicle-tracking", 1), ("stop", "vehicle-tracking", 2),
                                        ("stop", "vehicle-tracking", 1), ("start", "vehicle-tracking", 3)]
    status = controller.workflow_status("vehicle-tracking")
    assert (status["phase"], status["running_generation"]) == ("Running", 2)
    replaced = status["events"][-1]
    assert replaced["event"] == "replaced" and replaced["detail"]["strategy"] == "stop-first"
    assert "Ray has 0 free: the old version is stopped first" in replaced["detail"]["why"]
