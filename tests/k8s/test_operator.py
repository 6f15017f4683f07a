"""The operator against an in-memory API server (tests/k8s/fakekube.py) holding recorded objects
(tests/k8s/recorded/): the vehicle-tracking InferenceWorkflow, ModelZoo and Topology as `kubectl
apply` leaves them, a NodeList and recorded Node watch events. No API server, no network, no Ray:
pipelines are the controller tests' fakes, and the planner is the real one."""

from __future__ import annotations

import copy
import threading
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from jellybean.k8s.names import FINALIZER
from jellybean.k8s.operator import (
    NODE, WORKFLOW, ClientKubeApi, Conflict, Deployment, Gone, Observation, Operator, desired_status,
    finalizer_patch, inputs_digest, merge_patch, needs_replan, spec_document,
)
from jellybean.optimizer import plan as make_plan
from jellybean.runtime.metrics import Metrics
from tests.k8s.fakekube import NAMESPACE, FakeKubeApi, recorded
from tests.runtime.test_controller import FakePipeline, Recorder

VT = "vehicle-tracking"
NODES_WF = "tracking-on-nodes"
START = datetime(2024, 5, 21, 8, 30, tzinfo=timezone.utc)


class Pipeline(FakePipeline):
    """The controller tests' fake, with the data plane's ``state`` and a frame ledger."""

    def __init__(self, *args) -> None:  # noqa: ANN002
        super().__init__(*args)
        self.state = "running"
        self.down: set[str] = set()  # stages whose replicas died
        self.ledger = SimpleNamespace(completed=0, correct=0)

    def status(self) -> dict:
        status = super().status()
        for row in status["stages"]:
            if row["stage"] in self.down:
                row["replicas_alive"] = 0
        return {**status, "state": self.state}


class Pipelines(Recorder):
    def factory(self, bundle, plan) -> Pipeline:  # noqa: ANN001
        return Pipeline(self, bundle, plan)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def stamp(self) -> str:
        return (START + timedelta(seconds=self.t)).strftime("%Y-%m-%dT%H:%M:%SZ")


class World(SimpleNamespace):
    def effects(self, since: int = 0) -> list[tuple]:
        """What changed the world, in order: pipelines started/stopped, status and metadata patches."""
        return [e for e in self.pipelines.log[since:] if e[0] in ("start", "stop", "patch_status", "patch_metadata")]

    def mark(self) -> int:
        return len(self.pipelines.log)

    def live(self, name: str) -> Pipeline:
        return self.operator.deployed[name].pipeline

    def resync(self, seconds: float = 0.0) -> None:
        """Time passes, then the periodic pass over every workflow."""
        self.clock.t += seconds
        self.operator.resync()
        self.operator.process()


_PLANS: dict[str, object] = {}


def plan_of(bundle):  # noqa: ANN001, ANN201
    """The real planner, once per distinct input (tests plan the same documents many times)."""
    key = inputs_digest(bundle)
    if key not in _PLANS:
        _PLANS[key] = make_plan(bundle, baselines=False, time_limit_s=30)
    return _PLANS[key]


@pytest.fixture
def world() -> World:
    pipelines = Pipelines()
    api = FakeKubeApi(pipelines.log)
    clock = Clock()
    planned: list[str] = []

    def planner(bundle):  # noqa: ANN001, ANN202
        planned.append(bundle.name)
        return plan_of(bundle)

    metrics = Metrics()
    operator = Operator(api, NAMESPACE, pipeline_factory=pipelines.factory, planner=planner, clock=clock,
                        now=clock.stamp, ray_address="ray://ray-head:10001", retry_initial_s=5.0, metrics=metrics)
    return World(pipelines=pipelines, api=api, clock=clock, planned=planned, operator=operator, metrics=metrics)


def seed(world: World, *, zoo: bool = True, topology: bool = True, nodes: bool = True,
         workflows: tuple[str, ...] = (VT,)) -> None:
    if zoo:
        world.api.load("ModelZoo", recorded("modelzoo-vehicle-tracking.json"))
    if topology:
        world.api.load("Topology", recorded("topology-vehicle-tracking-city-block.json"))
    if nodes:
        for node in recorded("nodes.json")["items"]:
            world.api.load(NODE, node)
    for name in workflows:
        world.api.load(WORKFLOW, recorded(f"inferenceworkflow-{name}.json"))


def deployed(world: World, **seeded) -> Pipeline:  # noqa: ANN003
    """Seed the recorded objects, run a round (the workflow gets deployed), return its pipeline."""
    seed(world, **seeded)
    world.operator.step()
    return world.live(VT)


def conditions(status: dict) -> dict[str, tuple]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def since(status: dict, type_: str) -> str:
    return next(c["lastTransitionTime"] for c in status["conditions"] if c["type"] == type_)


# --------------------------------------------------------------------------------------------------
# create, repeat, update, delete


def test_create_adds_the_finalizer_plans_deploys_and_reports(world: World) -> None:
    seed(world)
    world.operator.step()
    effects = world.effects()
    assert [e[0] for e in effects] == ["patch_metadata", "patch_status", "start", "patch_status"]
    # The finalizer is added with the resourceVersion read (a concurrent change would be a 409).
    assert effects[0] == ("patch_metadata", VT, {"finalizers": [FINALIZER], "resourceVersion": "51206"})
    assert world.api.objects[WORKFLOW][VT]["metadata"]["finalizers"] == [FINALIZER]
    # Planned is reported before the (slow) pipeline start, Deployed after it.
    assert effects[1][2]["phase"] == "Planned"
    assert conditions(effects[1][2])["Deployed"] == ("False", "Deploying")
    status = world.api.status(VT)
    plan = plan_of(world.operator.deployed[VT].bundle)
    assert status["phase"] == "Deployed"
    assert status["observedGeneration"] == 1
    assert status["costPerHour"] == pytest.approx(plan.cost.total_per_hour, abs=1e-6)
    assert status["predictedAccuracy"] == pytest.approx(plan.accuracy)
    assert status["rayAddress"] == "ray://ray-head:10001"
    assert "accuracy" not in status  # measured: none before the first frame
    assert conditions(status) == {"Planned": ("True", "Planned"), "Deployed": ("True", "Running"),
                                  "Degraded": ("False", "Healthy")}
    assert {c["lastTransitionTime"] for c in status["conditions"]} == {"2024-05-21T08:30:00Z"}
    assert status["plan"]["models"] == plan.models
    assert status["plan"]["solver"]["status"] == "optimal" and status["plan"]["solver"]["gap"] < 1e-6
    assert status["plan"]["costPerHour"]["compute"] + status["plan"]["costPerHour"]["network"] == \
        pytest.approx(status["costPerHour"], abs=1e-5)
    assert status["plan"]["topology"] == {"name": "vehicle-tracking-city-block", "source": "Topology"}
    assert world.planned == [VT]
    sample = world.metrics.registry.get_sample_value
    assert sample("jellybean_controller_workflows", {"state": "deployed"}) == 1
    assert sample("jellybean_controller_reconcile_duration_seconds_count") >= 1


def test_the_same_generation_again_changes_nothing(world: World) -> None:
    seed(world)
    world.operator.step()
    mark = world.mark()
    world.clock.t += 120
    world.operator.step()  # the MODIFIED events of its own patches come back
    world.resync()
    world.operator.step()
    assert world.effects(mark) == []
    assert world.planned == [VT]


def test_a_generation_bump_replans_and_rolls_over_new_pipeline_first(world: World) -> None:
    first = deployed(world)
    world.clock.t += 60
    world.api.update_spec(WORKFLOW, VT, lambda spec: spec["slo"].update(accuracy=30.0))
    mark = world.mark()
    world.operator.step()
    effects = world.effects(mark)
    assert [e[0] for e in effects] == ["patch_status", "start", "stop", "patch_status"]
    assert effects[1][1:] == (VT, first.id + 1, 30.0) and effects[2][1:] == (VT, first.id, True)
    transitional = effects[0][2]
    assert transitional["phase"] == "Planned" and transitional["observedGeneration"] == 2
    assert conditions(transitional)["Deployed"] == ("True", "PreviousPlanRunning")
    status = world.api.status(VT)
    assert status["phase"] == "Deployed" and status["observedGeneration"] == 2
    assert status["plan"]["generation"] == 2 and status["plan"]["accuracy"]["target"] == 30.0
    assert since(status, "Planned") == "2024-05-21T08:30:00Z"  # stayed True: no transition
    assert world.planned == [VT, VT]


def test_deletion_stops_the_pipeline_then_removes_the_finalizer(world: World) -> None:
    pipeline = deployed(world)
    world.api.delete(WORKFLOW, VT)
    meta = copy.deepcopy(world.api.objects[WORKFLOW][VT]["metadata"])
    assert meta["deletionTimestamp"]
    mark = world.mark()
    world.operator.step()
    removal = {"finalizers": [], "resourceVersion": meta["resourceVersion"]}
    assert world.effects(mark) == [("stop", VT, pipeline.id, True), ("patch_metadata", VT, removal)]
    assert VT not in world.api.objects[WORKFLOW]  # the API server let it go
    mark = world.mark()
    world.operator.step()  # its DELETED event
    assert world.effects(mark) == [] and world.operator.deployed == {}


def test_other_finalizers_are_kept_and_a_conflict_is_retried(world: World) -> None:
    seed(world, workflows=())
    obj = recorded("inferenceworkflow-vehicle-tracking.json")
    obj["metadata"]["finalizers"] = ["backup.example.com/snapshot"]
    world.api.load(WORKFLOW, obj)
    world.api.conflicts = 1
    world.operator.step()
    patches = world.api.calls("patch_metadata", "get")
    assert [c[0] for c in patches] == ["patch_metadata", "get", "patch_metadata"]
    assert world.api.objects[WORKFLOW][VT]["metadata"]["finalizers"] == ["backup.example.com/snapshot", FINALIZER]
    assert finalizer_patch(world.api.objects[WORKFLOW][VT], present=False)["finalizers"] == \
        ["backup.example.com/snapshot"]


# --------------------------------------------------------------------------------------------------
# problems become conditions


@pytest.mark.parametrize(("change", "message"), [
    (lambda spec: spec["slo"].update(accuracy="high"),
     "InferenceWorkflow/vehicle-tracking: spec.slo.accuracy: Input should be a valid number, unable to parse "
     "string as a number (give a number)"),
    (lambda spec: spec["slo"].update(acuracy=30),
     "InferenceWorkflow/vehicle-tracking: spec.slo.acuracy: Extra inputs are not permitted"),
    (lambda spec: spec["stages"][0].update(task="vehicle-detect"),
     "InferenceWorkflow/vehicle-tracking: spec.stages[0].task: unknown task 'vehicle-detect'"),
])
def test_an_invalid_spec_is_a_condition_not_a_crash(world: World, change, message: str) -> None:  # noqa: ANN001
    seed(world, workflows=())
    obj = recorded("inferenceworkflow-vehicle-tracking.json")
    change(obj["spec"])
    world.api.load(WORKFLOW, obj)
    world.operator.step()
    status = world.api.status(VT)
    assert status["phase"] == "Failed"
    assert conditions(status)["Planned"] == ("False", "InvalidSpec")
    assert status["message"].startswith(message)
    assert next(c["message"] for c in status["conditions"] if c["type"] == "Planned") == status["message"]
    assert world.pipelines.events("start") == [] and world.planned == []
    mark = world.mark()
    world.operator.step()
    world.resync()
    assert world.effects(mark) == []
    # Fixing it (a new generation) deploys.
    good = recorded("inferenceworkflow-vehicle-tracking.json")["spec"]
    world.api.update_spec(WORKFLOW, VT, lambda spec: (spec.clear(), spec.update(good)))
    world.operator.step()
    assert world.api.status(VT)["phase"] == "Deployed"


def test_a_missing_zoo_waits_and_a_zoo_change_replans_its_workflows(world: World) -> None:
    seed(world, zoo=False)
    world.operator.step()
    status = world.api.status(VT)
    assert (status["phase"], conditions(status)["Planned"]) == ("Pending", ("False", "ZooNotFound"))
    assert status["message"] == "no ModelZoo 'vehicle-tracking' in namespace edge-ai"
    world.api.create("ModelZoo", recorded("modelzoo-vehicle-tracking.json"))
    world.operator.step()
    assert world.api.status(VT)["phase"] == "Deployed"
    first = world.live(VT)

    def slower(spec: dict) -> None:
        spec["tasks"][0]["variants"][0]["output_kb"] *= 2

    world.api.update_spec("ModelZoo", VT, slower)
    mark = world.mark()
    world.operator.step()
    assert [e[0] for e in world.effects(mark)] == ["patch_status", "start", "stop", "patch_status"]
    assert world.pipelines.events("stop")[-1][2] == first.id
    assert world.api.status(VT)["observedGeneration"] == 1  # the workflow's own generation did not change


def test_an_infeasible_change_keeps_the_previous_plan_serving(world: World) -> None:
    seed(world)
    world.operator.step()
    before = world.api.status(VT)
    world.api.update_spec(WORKFLOW, VT, lambda spec: spec["slo"].update(accuracy=99.0))
    world.operator.step()
    status = world.api.status(VT)
    assert status["phase"] == "Failed" and status["observedGeneration"] == 2
    assert conditions(status) == {"Planned": ("False", "Infeasible"), "Deployed": ("True", "PreviousPlanRunning"),
                                  "Degraded": ("False", "Healthy")}
    assert status["message"].startswith("no feasible plan: ")
    assert status["message"].endswith("(the plan of generation 1 keeps serving)")
    assert status["plan"] == before["plan"] and status["costPerHour"] == before["costPerHour"]
    assert len(world.pipelines.events("start")) == 1 and world.pipelines.events("stop") == []
    mark = world.mark()
    world.resync()
    assert world.effects(mark) == [] and world.planned == [VT, VT]  # not planned again until something changes


def test_a_failed_start_is_retried_with_backoff_without_planning_again(world: World) -> None:
    seed(world)
    world.pipelines.fail[VT] = 1
    world.operator.step()
    status = world.api.status(VT)
    assert status["phase"] == "Failed"
    assert conditions(status)["Deployed"] == ("False", "DeployFailed")
    assert status["message"] == ("starting the pipeline failed: RuntimeError: replica failed to load its model; "
                                 "attempt 1, retrying in 5 s")
    world.resync()  # not due yet
    assert world.pipelines.events("start") == []
    world.resync(6)
    assert world.api.status(VT)["phase"] == "Deployed"
    assert world.planned == [VT]


def test_a_degraded_pipeline_sets_the_degraded_condition(world: World) -> None:
    pipeline = deployed(world)
    world.clock.t += 30
    pipeline.state, pipeline.down = "degraded", {"associate"}
    pipeline.ledger.completed, pipeline.ledger.correct = 400, 134
    world.resync()
    status = world.api.status(VT)
    assert status["phase"] == "Degraded"
    assert conditions(status)["Degraded"] == ("True", "ReplicasDown")
    assert status["message"] == "pipeline degraded: 6 of 7 replicas alive; short: associate@edc (0/1)"
    assert since(status, "Degraded") == "2024-05-21T08:30:30Z" and since(status, "Deployed") == "2024-05-21T08:30:00Z"
    assert status["accuracy"] == 33.5  # measured on completed frames
    pipeline.state = "failed"
    world.resync()
    assert conditions(world.api.status(VT))["Degraded"] == ("True", "PipelineFailed")
    world.clock.t += 30
    pipeline.state, pipeline.down = "running", set()
    world.resync()
    status = world.api.status(VT)
    assert status["phase"] == "Deployed" and conditions(status)["Degraded"] == ("False", "Healthy")
    assert since(status, "Degraded") == "2024-05-21T08:31:00Z"


# --------------------------------------------------------------------------------------------------
# topology discovery and watches


def test_the_discovered_topology_follows_the_nodes(world: World) -> None:
    seed(world, workflows=(VT, NODES_WF))
    world.operator.step()
    status = world.api.status(NODES_WF)
    assert status["phase"] == "Deployed"
    topology = status["plan"]["topology"]
    assert (topology["name"], topology["source"], topology["sites"], topology["nodes"]) == ("cluster", "Nodes", 6, 9)
    events = recorded("node-events.json")

    # A kubelet heartbeat changes no part of the topology: nothing happens.
    mark = world.mark()
    world.api.replay(NODE, events["heartbeat"])
    world.operator.step()
    assert world.effects(mark) == []

    # A node going NotReady: only the workflow on discovered nodes re-plans, and rolls over.
    assert world.operator.observe(NODE, "MODIFIED", events["not_ready"][0]["object"]) == {NODES_WF}
    old = world.live(NODES_WF)
    mark = world.mark()
    world.api.replay(NODE, events["not_ready"])
    world.operator.step()
    assert [e[:2] for e in world.effects(mark)] == [("patch_status", NODES_WF), ("start", NODES_WF),
                                                   ("stop", NODES_WF), ("patch_status", NODES_WF)]
    assert world.pipelines.events("stop")[-1][2] == old.id
    assert any("edc-t4-2 (site edc) left out: NotReady" in w
               for w in world.api.status(NODES_WF)["plan"]["topology"]["warnings"])

    # A node added: a new site, re-planned.
    mark = world.mark()
    world.api.replay(NODE, events["added"])
    world.operator.step()
    assert ("start", NODES_WF) in [e[:2] for e in world.effects(mark)]
    assert world.api.status(NODES_WF)["plan"]["topology"]["sites"] == 7

    # A node deleted: cam-02 loses its parent site. The topology is invalid, the message says which
    # node and annotation, and the running pipeline keeps serving.
    mark = world.mark()
    world.api.replay(NODE, events["deleted"])
    world.operator.step()
    status = world.api.status(NODES_WF)
    assert status["phase"] == "Failed"
    assert conditions(status)["Planned"] == ("False", "DiscoveryFailed")
    assert conditions(status)["Deployed"] == ("True", "PreviousPlanRunning")
    assert ("Node/cam-02-nano: metadata.annotations[jellybean.io/parent]: site 'cam-02' names parent site 'hub-2', "
            "which no schedulable, Ready node provides") in status["message"]
    assert [e[0] for e in world.effects(mark)] == ["patch_status"]
    assert world.api.status(VT)["phase"] == "Deployed" and world.planned.count(VT) == 1


def test_410_gone_on_a_watch_lists_again(world: World) -> None:
    seed(world)
    world.operator.step()
    watcher = world.operator.watchers[WORKFLOW]
    world.api.update_spec(WORKFLOW, VT, lambda spec: spec["slo"].update(accuracy=30.0))
    world.api.compact(WORKFLOW)  # the change is older than the etcd history the watch may resume from
    world.operator.step()
    assert (watcher.expired, watcher.resource_version) == (1, None)
    assert world.api.status(VT)["observedGeneration"] == 1  # not seen yet
    world.operator.step()
    assert [c for c in world.api.calls("list") if c[1] == WORKFLOW] == [("list", WORKFLOW)] * 2
    assert watcher.lists == 2 and watcher.resource_version == str(world.api.version - 2)
    assert world.api.status(VT)["observedGeneration"] == 2 and world.api.status(VT)["phase"] == "Deployed"


def test_a_workflow_that_vanished_during_a_watch_gap_is_stopped_on_relist(world: World) -> None:
    pipeline = deployed(world)
    del world.api.objects[WORKFLOW][VT]  # its finalizer was stripped by hand and it was deleted
    world.api.compact(WORKFLOW)
    world.operator.step()
    world.operator.step()
    assert world.pipelines.events("stop") == [("stop", VT, pipeline.id, True)]
    assert world.operator.deployed == {}


def test_run_watches_from_threads_reconciles_and_shuts_down_keeping_finalizers(world: World) -> None:
    seed(world, workflows=(VT, NODES_WF))

    def forbidden() -> dict:
        raise RuntimeError('(403) nodes is forbidden: User "system:serviceaccount:edge-ai:jellybean" cannot list '
                           'resource "nodes" at the cluster scope')

    world.api.list_nodes = forbidden
    world.operator.clock = time.monotonic  # real time: the loop waits on queues
    stop = threading.Event()
    thread = threading.Thread(target=world.operator.run, args=(stop,), daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not ({VT, NODES_WF} <= set(world.operator.phases)
                                              and world.operator.phases[VT] == "Deployed"):
        time.sleep(0.02)
    stop.set()
    thread.join(10)
    assert not thread.is_alive()
    assert world.api.status(VT)["phase"] == "Deployed"
    status = world.api.status(NODES_WF)
    assert conditions(status)["Planned"] == ("False", "DiscoveryFailed")
    assert "cannot list the Nodes: RuntimeError: (403) nodes is forbidden" in status["message"]
    # Shutdown stops the pipelines but keeps the finalizers: the next operator takes over.
    assert [e[:2] for e in world.pipelines.events("stop")] == [("stop", VT)]
    assert world.api.objects[WORKFLOW][VT]["metadata"]["finalizers"] == [FINALIZER]


def test_every_status_written_fits_the_generated_crd(world: World) -> None:
    """The operator and jellybean/k8s/crds.py agree: each stored object, after each kind of status
    (deployed, degraded, infeasible, discovery failed), validates strictly against the CRD's schema."""
    from jellybean.k8s.crds import crd
    from tests.k8s.k8s_schema import crd_schema, errors, validator

    check = validator(crd_schema(crd(WORKFLOW)))
    seen = []

    def snapshot() -> None:
        seen.extend(copy.deepcopy(o) for o in world.api.objects[WORKFLOW].values())

    pipeline = deployed(world, workflows=(VT, NODES_WF))
    snapshot()
    pipeline.state, pipeline.down = "degraded", {"detect"}
    pipeline.ledger.completed, pipeline.ledger.correct = 10, 3
    world.resync(30)
    snapshot()
    world.api.update_spec(WORKFLOW, VT, lambda spec: spec["slo"].update(accuracy=99.0))
    world.api.replay(NODE, recorded("node-events.json")["deleted"])
    world.operator.step()
    snapshot()
    assert {o["status"]["phase"] for o in seen} == {"Deployed", "Degraded", "Failed"}
    assert [e for o in seen for e in errors(check, o)] == []


# --------------------------------------------------------------------------------------------------
# pure parts


def test_spec_document_keeps_the_document_and_drops_what_the_server_and_tools_add() -> None:
    obj = recorded("inferenceworkflow-vehicle-tracking.json")
    obj["status"] = {"phase": "Deployed"}
    doc = spec_document(WORKFLOW, obj)
    assert doc == {"apiVersion": "jellybean.io/v1alpha1", "kind": WORKFLOW,
                   "metadata": {"name": VT, "labels": {"benchmark": "ai-city-challenge"}}, "spec": obj["spec"]}


def test_needs_replan() -> None:
    obj = {"metadata": {"generation": 3}}
    running = Deployment(3, "abc", None, None, {}, 0.0)
    assert needs_replan(obj, None, "abc") == "not deployed"
    assert needs_replan(obj, running, "abc") is None
    assert needs_replan({"metadata": {"generation": 4}}, running, "abc") == "spec changed (generation 3 -> 4)"
    assert needs_replan(obj, running, "def") == "its ModelZoo or Topology changed"


def test_merge_patch_sends_only_differences_and_nulls_removed_keys() -> None:
    current = {"phase": "Deployed", "plan": {"models": {"a": "x"}, "latencyMs": {"predicted": 3}}, "accuracy": 91.0}
    desired = {"phase": "Deployed", "plan": {"models": {"a": "y"}}, "costPerHour": 0.5}
    assert merge_patch(current, desired) == {"plan": {"models": {"a": "y"}, "latencyMs": None}, "costPerHour": 0.5,
                                             "accuracy": None}
    assert merge_patch(desired, copy.deepcopy(desired)) is None


def test_desired_status_keeps_transition_times_until_a_status_flips() -> None:
    summary = {"generation": 1, "models": {"detect": "m"}, "costPerHour": {"total": 1.5},
               "accuracy": {"predicted": 40.0}}
    running = Observation(1, summary, None, summary, True, {"state": "running", "stages": []})
    first = desired_status({}, running, "T1")
    assert first["phase"] == "Deployed" and first["costPerHour"] == 1.5 and first["predictedAccuracy"] == 40.0
    again = desired_status(first, Observation(2, {**summary, "generation": 2}, None, summary, True,
                                              {"state": "running", "stages": []}), "T2")
    assert {c["lastTransitionTime"] for c in again["conditions"]} == {"T1"}
    assert {c["observedGeneration"] for c in again["conditions"]} == {2}
    broken = desired_status(again, Observation(3, None, ("InvalidSpec", "bad"), summary, False,
                                               {"state": "running", "stages": []}), "T3")
    assert broken["phase"] == "Failed" and broken["plan"] == summary  # the running plan stays shown
    assert {c["type"]: c["lastTransitionTime"] for c in broken["conditions"]} == {
        "Planned": "T3", "Deployed": "T1", "Degraded": "T1"}
    pending = desired_status({}, Observation(1), "T1")
    assert pending["phase"] == "Pending" and "plan" not in pending and "costPerHour" not in pending


# --------------------------------------------------------------------------------------------------
# the kubernetes client adapter, the probes, the command


def test_the_client_adapter_speaks_merge_patch_and_translates_410_409_404(monkeypatch: pytest.MonkeyPatch) -> None:
    from kubernetes import watch
    from kubernetes.client.exceptions import ApiException

    api = ClientKubeApi()
    calls = []
    api.custom.patch_namespaced_custom_object_status = lambda *a, **k: calls.append((a, k)) or {"ok": 1}
    assert api.patch_status(WORKFLOW, NAMESPACE, VT, {"phase": "Deployed"}) == {"ok": 1}
    assert calls[0][0] == ("jellybean.io", "v1alpha1", NAMESPACE, "inferenceworkflows", VT,
                           {"status": {"phase": "Deployed"}})
    assert calls[0][1] == {"_content_type": "application/merge-patch+json"}

    def refuse(status: int):  # noqa: ANN202
        def call(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
            raise ApiException(status=status, reason="refused")
        return call

    api.custom.patch_namespaced_custom_object = refuse(409)
    with pytest.raises(Conflict):
        api.patch_metadata(WORKFLOW, NAMESPACE, VT, {"finalizers": []})
    api.custom.patch_namespaced_custom_object = refuse(404)
    assert api.patch_metadata(WORKFLOW, NAMESPACE, VT, {"finalizers": []}) is None
    api.custom.get_namespaced_custom_object = refuse(404)
    assert api.get(WORKFLOW, NAMESPACE, VT) is None
    monkeypatch.setattr(watch.Watch, "stream", lambda self, *a, **k: refuse(410)())
    with pytest.raises(Gone):
        list(api.watch(WORKFLOW, NAMESPACE, "123", 5))
    events = [{"type": "ADDED", "object": object(), "raw_object": {"metadata": {"name": "n"}}}]
    monkeypatch.setattr(watch.Watch, "stream", lambda self, *a, **k: iter(events))
    assert list(api.watch(NODE, NAMESPACE, "123", 5)) == [{"type": "ADDED", "object": {"metadata": {"name": "n"}}}]


def test_the_probes(world: World) -> None:
    from fastapi.testclient import TestClient

    from jellybean.k8s.probes import create_app

    seed(world)
    client = TestClient(create_app(world.operator, "s3cret", liveness_s=60))
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503
    world.operator.step()
    assert client.get("/readyz").json() == {"status": "ready"}
    assert client.get("/v1/operator").status_code == 401
    described = client.get("/v1/operator", headers={"Authorization": "Bearer s3cret"}).json()
    assert described["workflows"][VT] == {"phase": "Deployed", "generation": 1, "runningGeneration": 1}
    world.clock.t += 61
    assert client.get("/healthz").status_code == 503
    assert TestClient(create_app(world.operator)).get("/v1/operator").status_code == 404


def test_the_command_says_in_one_line_when_there_is_no_cluster(monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture) -> None:
    from jellybean.cli import main

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(["operator"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no Kubernetes cluster config: not running in a pod") and err.count("\n") == 1
