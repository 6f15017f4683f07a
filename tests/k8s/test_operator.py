"""The operator as it runs: kopf (its real watching, finalizer, event and patch code, and the
``kubernetes`` client for status patches) against a small API server over HTTP on 127.0.0.1
(tests/k8s/kubeserver.py) that replays recorded objects (tests/k8s/recorded/: the vehicle-tracking
InferenceWorkflow, ModelZoo and Topology as `kubectl apply` leaves them, a NodeList and recorded Node
watch events). No real API server runs in CI, no Ray: pipelines are the controller tests' fakes, and
the planner is the real one. The tests wait for outcomes (an event of the fake, a reconcile pass of
the operator), never for a fixed time."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from datetime import datetime, timedelta, UTC
from types import SimpleNamespace

import pytest

from jellybean.k8s.names import FINALIZER
from jellybean.k8s.operator import (
    NODE, WORKFLOW, ClientKubeApi, Operator, Seen, desired_status, inputs_digest, merge_patch, run, spec_document,
)
from jellybean.optimizer import plan as make_plan
from jellybean.runtime.metrics import Metrics
from jellybean.runtime.reconcile import Phase
from jellybean.spec.errors import Issue, SpecError
from jellybean.runtime.status import LastFailure, WorkflowStatus
from tests.k8s.fakekube import NAMESPACE, FakeKubeApi, recorded
from tests.runtime.test_controller import FakePipeline, Recorder

VT = "vehicle-tracking"
NODES_WF = "tracking-on-nodes"


START = datetime(2024, 5, 21, 8, 30, tzinfo=UTC)


class Pipeline(FakePipeline):
    """The controller tests' fake, with the data plane's ``state``, a frame ledger and ``cancel``."""

    stuck: threading.Event | None = None  # set by a test: start() waits until cancelled

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.state = "running"
        self.down: set[str] = set()  # stages whose replicas died
        self.ledger = SimpleNamespace(completed=0, correct=0)
        self.cancelled = threading.Event()

    def start(self) -> None:
        if type(self).stuck is not None:
            type(self).stuck.set()
            self.cancelled.wait(60)
            raise RuntimeError("setup calls failed: actors killed")
        super().start()

    def cancel(self) -> None:
        self.recorder.log.append(("cancel", self.name, self.id))
        self.cancelled.set()

    def status(self) -> dict:
        status = super().status()
        for row in status["stages"]:
            if row["stage"] in self.down:
                row["replicas_alive"] = 0
        return {**status, "state": self.state}


class Pipelines(Recorder):
    def factory(self, bundle, plan) -> Pipeline:
        return Pipeline(self, bundle, plan)


class Clock:
    """Condition timestamps (lastTransitionTime) the test controls; the operator's own clock is real."""

    def __init__(self) -> None:
        self.t = 0.0

    def stamp(self) -> str:
        return (START + timedelta(seconds=self.t)).strftime("%Y-%m-%dT%H:%M:%SZ")


_PLANS: dict[str, object] = {}


def plan_of(bundle):
    """The real planner, once per distinct input (tests plan the same documents many times)."""
    key = inputs_digest(bundle) + repr([(s.name, [(g.name, g.count, g.max_count) for g in s.instances])
                                        for s in bundle.topology.spec.sites])
    if key not in _PLANS:
        _PLANS[key] = make_plan(bundle, baselines=False, time_limit_s=30)
    return _PLANS[key]


class World(SimpleNamespace):
    """The fake API server (over HTTP), the operator and kopf running it, the fake pipelines."""

    def effects(self, since: int = 0) -> list[tuple]:
        """What changed the world, in order: pipelines started/stopped/cancelled, status patches."""
        return [e for e in self.pipelines.log[since:] if e[0] in ("start", "stop", "cancel", "patch_status")]

    def mark(self) -> int:
        return len(self.pipelines.log)

    def live(self, name: str) -> Pipeline:
        return self.operator.deployed[name].pipeline

    def status(self, name: str = VT) -> dict:
        with self.api.lock:
            return copy.deepcopy(self.api.status(name))

    def until(self, predicate: Callable[[], object], what: str, timeout_s: float = 60.0) -> object:
        """Wait until ``predicate()`` holds, woken by each change of the fake (and each pass)."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: statuses "
                                     f"{ {n: (o.get('status') or {}).get('phase') for n, o in self.api.objects[WORKFLOW].items()} }, "
                                     f"{[e for e in self.effects() if e[0] != 'patch_status']}, last status "
                                     f"{[e[2] for e in self.effects() if e[0] == 'patch_status'][-1:]}")
            with self.api.changed:
                self.api.changed.wait(0.05)

    def phase(self, name: str, phase: str, **kwargs) -> dict:
        self.until(lambda: self.status(name).get("phase") == phase, f"{name} {phase}", **kwargs)
        return self.status(name)

    def settle(self, name: str = VT) -> None:
        """Wake ``name`` twice and wait for each pass (so that what happened before was seen)."""
        for _ in range(2):
            start = self.operator.passes[name]
            self.operator.wake_soon({name})
            self.until(lambda start=start: self.operator.passes[name] > start, f"a pass of {name}")

    def start(self) -> World:
        self.thread.start()
        self.until(self.operator.ready.is_set, "kopf to be ready")
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(30)
        assert not self.thread.is_alive()


def make_world(*, resync_s: float = 30.0, retry_initial_s: float = 5.0, discover_nodes: bool = True,
               planner=None) -> World:
    from kubernetes import client

    from tests.k8s.kubeserver import KubeServer

    Pipeline.stuck = None
    pipelines = Pipelines()
    api = FakeKubeApi(pipelines.log)
    clock = Clock()
    planned: list[str] = []

    def planning(bundle):
        planned.append(bundle.name)
        return (planner or plan_of)(bundle)

    server = KubeServer(api, linger_s=5.0)
    server.__enter__()
    configuration = client.Configuration(host=server.url)
    configuration.api_key = {"authorization": "Bearer fake-service-account-token"}
    kube = ClientKubeApi(client.ApiClient(configuration))
    metrics = Metrics()
    operator = Operator(kube, NAMESPACE, pipeline_factory=pipelines.factory, planner=planning, now=clock.stamp,
                        ray_address="ray://ray-head:10001", retry_initial_s=retry_initial_s, metrics=metrics,
                        resync_s=resync_s, watch_timeout_s=5.0, discover_nodes=discover_nodes)
    stopping = threading.Event()
    thread = threading.Thread(target=run, args=(operator, stopping), kwargs={"login": kube.connection},
                              name="kopf", daemon=True)
    return World(pipelines=pipelines, api=api, server=server, clock=clock, planned=planned, operator=operator,
                 metrics=metrics, thread=thread, stopping=stopping)


@contextmanager
def world_of(**kwargs):
    made = make_world(**kwargs)
    try:
        yield made
    finally:
        if made.thread.is_alive():
            made.stop()
        made.server.__exit__(None, None, None)


@pytest.fixture
def world():
    with world_of() as made:
        yield made


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


def roomy(world: World) -> None:
    """Two Jetsons at each hub of the stored Topology (a plan uses one): room for a second version."""
    topology = world.api.objects["Topology"]["vehicle-tracking-city-block"]
    for site in topology["spec"]["sites"]:
        for group in site.get("instances") or []:
            if group.get("count") == 1:
                group["count"] = 2


def deployed(world: World, **seeded) -> Pipeline:
    """Seed the recorded objects, start the operator, wait for the workflow to run; its pipeline."""
    seed(world, **seeded)
    world.start()
    world.phase(VT, "Running")
    return world.live(VT)


def conditions(status: dict) -> dict[str, tuple]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def since(status: dict, type_: str) -> str:
    return next(c["lastTransitionTime"] for c in status["conditions"] if c["type"] == type_)


def message(status: dict, type_: str) -> str:
    return next(c["message"] for c in status["conditions"] if c["type"] == type_)


# --------------------------------------------------------------------------------------------------
# create, repeat, update, delete


def test_create_adds_the_finalizer_plans_deploys_and_reports(world: World) -> None:
    seed(world)
    world.start()
    status = world.phase(VT, "Running")
    # the work may run before kopf's finalizer patch lands: wait for it, not for the phase
    world.until(lambda: world.api.objects[WORKFLOW][VT]["metadata"]["finalizers"] == [FINALIZER], "the finalizer")
    plan = world.operator.deployed[VT].plan
    patches = [e[2] for e in world.effects() if e[0] == "patch_status"]
    # Planned is reported before the (slow) pipeline start, Running after it.
    assert patches[0]["phase"] == "Planned" and conditions(patches[0])["Deployed"] == ("False", "Deploying")
    assert status["observedGeneration"] == 1
    assert status["costPerHour"] == pytest.approx(plan.cost.total_per_hour, abs=1e-6)
    assert status["predictedAccuracy"] == pytest.approx(plan.accuracy)
    assert status["rayAddress"] == "ray://ray-head:10001"
    assert "accuracy" not in status and "lastFailure" not in status  # measured: none before the first frame
    assert status["framesLost"] == 0
    assert conditions(status) == {"Planned": ("True", "Planned"), "Deployed": ("True", "Running"),
                                  "Degraded": ("False", "Healthy")}
    assert "measured 0 frames lost" in message(status, "Deployed")
    assert {c["lastTransitionTime"] for c in status["conditions"]} == {"2024-05-21T08:30:00Z"}
    assert status["plan"]["models"] == plan.models
    assert status["plan"]["solver"]["status"] == "optimal" and status["plan"]["solver"]["gap"] < 1e-6
    assert status["plan"]["topology"] == {"name": "vehicle-tracking-city-block", "source": "Topology"}
    assert world.planned == [VT]
    # The core's events are Kubernetes Events on the resource.
    world.until(lambda: any(e.get("reason") == "Started" for e in world.api.events), "a Started event")
    started = next(e for e in world.api.events if e.get("reason") == "Started")
    assert started["involvedObject"]["name"] == VT and started["type"] == "Normal"
    sample = world.metrics.registry.get_sample_value
    world.until(lambda: sample("jellybean_controller_workflows", {"state": "running"}) == 1, "the phase metric")
    assert sample("jellybean_controller_workflows", {"state": "failed"}) == 0
    assert sample("jellybean_controller_reconcile_duration_seconds_count") >= 1


def test_a_change_outside_the_spec_changes_nothing(world: World) -> None:
    deployed(world)
    world.settle()
    mark = world.mark()
    with world.api.lock:
        world.api.update_metadata(WORKFLOW, VT, {"labels": {"team": "traffic"}})
    world.settle()
    assert world.effects(mark) == []
    assert world.planned == [VT]


def test_a_generation_bump_replans_and_rolls_out_stop_first_without_room(world: World) -> None:
    first = deployed(world)
    world.clock.t += 60
    mark = world.mark()
    world.api.update_spec(WORKFLOW, VT, lambda spec: spec["slo"].update(accuracy=30.0))
    status = world.until(lambda: (s := world.status()).get("observedGeneration") == 2
                         and s.get("phase") == "Running" and s["plan"]["generation"] == 2 and s, "generation 2")
    starts_stops = [e[:3] for e in world.effects(mark) if e[0] in ("start", "stop")]
    # Every Jetson is in use: the old pipeline is stopped first, then the new one started.
    assert starts_stops == [("stop", VT, first.id), ("start", VT, first.id + 1)]
    assert status["plan"]["accuracy"]["target"] == 30.0
    assert since(status, "Planned") == "2024-05-21T08:30:00Z"  # stayed True: no transition
    assert world.planned == [VT, VT]
    rolled = world.until(lambda: [e for e in world.api.events if e.get("reason") == "RolledOut"], "RolledOut")
    assert "stop-first" in rolled[0]["message"] and "no room to start the new version" in rolled[0]["message"]


def test_a_generation_bump_rolls_out_new_first_with_room(world: World) -> None:
    seed(world)
    roomy(world)
    world.start()
    world.phase(VT, "Running")
    first = world.live(VT)
    mark = world.mark()
    world.api.update_spec(WORKFLOW, VT, lambda spec: spec["slo"].update(accuracy=30.0))
    world.until(lambda: world.status().get("observedGeneration") == 2 and world.status()["phase"] == "Running"
                and world.status()["plan"]["generation"] == 2, "generation 2")
    transitional = [e[2] for e in world.effects(mark) if e[0] == "patch_status"
                    and e[2].get("observedGeneration") == 2][0]
    assert transitional["phase"] == "Updating"
    assert conditions(transitional)["Deployed"] == ("True", "PreviousPlanRunning")
    rolling = [e[2] for e in world.effects(mark) if e[0] == "patch_status" and "rolling out" in e[2].get("message", "")]
    assert rolling and rolling[0]["message"].startswith("rolling out generation 2 (new-first); generation 1 serves")
    assert [e[:3] for e in world.effects(mark) if e[0] in ("start", "stop")] == [
        ("start", VT, first.id + 1), ("stop", VT, first.id)]


def test_deletion_stops_the_pipeline_then_kopf_removes_the_finalizer(world: World) -> None:
    seed(world, workflows=())
    obj = recorded("inferenceworkflow-vehicle-tracking.json")
    obj["metadata"]["finalizers"] = ["backup.example.com/snapshot"]
    world.api.load(WORKFLOW, obj)
    world.start()
    world.phase(VT, "Running")
    # the work may run before kopf's finalizer patch lands: wait for it, not for the phase
    world.until(lambda: world.api.objects[WORKFLOW][VT]["metadata"]["finalizers"]
                == ["backup.example.com/snapshot", FINALIZER], "ours added, the other kept")
    pipeline = world.live(VT)
    world.metrics.frames_completed.labels(VT).inc(7)  # what the pipeline's telemetry exports
    world.api.delete(WORKFLOW, VT)
    world.until(lambda: world.api.objects[WORKFLOW][VT]["metadata"]["finalizers"] == ["backup.example.com/snapshot"],
                "our finalizer removed, the other kept")
    assert ("stop", VT, pipeline.id, True) in world.effects()
    assert world.operator.deployed == {}
    from prometheus_client import generate_latest

    assert f'workflow="{VT}"' not in generate_latest(world.metrics.registry).decode()


def test_delete_cancels_a_start_under_way(world: World) -> None:
    seed(world)
    Pipeline.stuck = threading.Event()
    world.start()
    assert Pipeline.stuck.wait(30)
    world.until(lambda: world.status().get("phase") == "Starting", "Starting")
    # kopf's daemon may start the work before kopf's finalizer patch lands; a delete before it would
    # remove the resource at once (nothing holds it), and the cancel would come after this test looked
    world.until(lambda: FINALIZER in world.api.objects[WORKFLOW][VT]["metadata"].get("finalizers", []),
                "our finalizer on the resource")
    world.api.delete(WORKFLOW, VT)
    world.until(lambda: VT not in world.api.objects[WORKFLOW], "the resource to go", timeout_s=30)
    assert ("cancel", VT, 1) in world.pipelines.log
    assert world.operator.deployed == {}


# --------------------------------------------------------------------------------------------------
# problems become conditions


@pytest.mark.parametrize(("change", "expected"), [
    (lambda spec: spec["slo"].update(accuracy="high"),
     "InferenceWorkflow/vehicle-tracking: spec.slo.accuracy: Input should be a valid number, unable to parse "
     "string as a number (give a number)"),
    (lambda spec: spec["slo"].update(acuracy=30),
     "InferenceWorkflow/vehicle-tracking: spec.slo.acuracy: Extra inputs are not permitted"),
    (lambda spec: spec["stages"][0].update(task="vehicle-detect"),
     "InferenceWorkflow/vehicle-tracking: spec.stages[0].task: unknown task 'vehicle-detect'"),
])
def test_an_invalid_spec_is_a_condition_not_a_crash(world: World, change, expected: str) -> None:
    seed(world, workflows=())
    obj = recorded("inferenceworkflow-vehicle-tracking.json")
    change(obj["spec"])
    world.api.load(WORKFLOW, obj)
    world.start()
    status = world.phase(VT, "Failed")
    assert conditions(status)["Planned"] == ("False", "InvalidSpec")
    assert status["message"].startswith(expected)
    assert message(status, "Planned") == status["message"]
    assert world.pipelines.events("start") == [] and world.planned == []
    # Fixing it (a new generation) deploys.
    good = recorded("inferenceworkflow-vehicle-tracking.json")["spec"]
    world.api.update_spec(WORKFLOW, VT, lambda spec: (spec.clear(), spec.update(good)))
    world.phase(VT, "Running")


def test_a_missing_zoo_waits_and_a_zoo_change_replans_its_workflows(world: World) -> None:
    seed(world, zoo=False)
    world.start()
    status = world.phase(VT, "Pending")
    assert conditions(status)["Planned"] == ("False", "ZooNotFound")
    assert status["message"] == "no ModelZoo 'vehicle-tracking' in namespace edge-ai"
    world.api.create("ModelZoo", recorded("modelzoo-vehicle-tracking.json"))
    world.phase(VT, "Running")
    first = world.live(VT)

    def slower(spec: dict) -> None:
        spec["tasks"][0]["variants"][0]["output_kb"] *= 2

    world.api.update_spec("ModelZoo", VT, slower)
    world.until(lambda: ("stop", VT, first.id, True) in world.pipelines.log and world.status()["phase"] == "Running",
                "a rollout for the zoo change")
    assert world.status()["observedGeneration"] == 1  # the workflow's own generation did not change
    assert world.planned == [VT, VT]


def test_an_infeasible_change_keeps_the_previous_plan_serving(world: World) -> None:
    deployed(world)
    before = world.status()
    world.api.update_spec(WORKFLOW, VT, lambda spec: spec["slo"].update(accuracy=99.0))
    status = world.phase(VT, "Failed")
    assert status["observedGeneration"] == 2
    assert conditions(status) == {"Planned": ("False", "Infeasible"), "Deployed": ("True", "PreviousPlanRunning"),
                                  "Degraded": ("False", "Healthy")}
    assert status["message"].startswith("no feasible plan: ")
    assert status["message"].endswith("(generation 1 keeps running)")
    assert status["plan"] == before["plan"] and status["costPerHour"] == before["costPerHour"]
    assert len(world.pipelines.events("start")) == 1 and world.pipelines.events("stop") == []
    world.settle()
    assert world.planned == [VT, VT]  # not planned again until something changes


def test_a_failed_start_is_retried_with_backoff_and_reported() -> None:
    with world_of(retry_initial_s=0.5) as world:
        seed(world)
        world.pipelines.fail[VT] = 1
        world.start()
        status = world.phase(VT, "Failed")
        assert conditions(status)["Deployed"] == ("False", "DeployFailed")
        assert status["message"].startswith("RuntimeError: replica failed to load its model; attempt 1, retrying in")
        assert status["lastFailure"]["reason"] == "DeployFailed" and status["lastFailure"]["attempts"] == 1
        status = world.phase(VT, "Running")
        # The last failure stays in the status and the Deployed condition after the recovery.
        assert status["lastFailure"]["message"] == "RuntimeError: replica failed to load its model"
        assert "last failure (DeployFailed): RuntimeError: replica failed" in message(status, "Deployed")
        assert world.planned == [VT]  # not planned again
        warning = next(e for e in world.api.events if e.get("reason") == "DeployFailed")
        assert warning["type"] == "Warning" and "replica failed to load its model" in warning["message"]


def test_a_degraded_pipeline_sets_the_degraded_condition() -> None:
    with world_of(resync_s=0.2) as world:
        pipeline = deployed(world)
        world.clock.t += 30
        pipeline.ledger.completed, pipeline.ledger.correct = 400, 134
        pipeline.state, pipeline.down = "degraded", {"associate"}
        status = world.phase(VT, "Degraded")
        assert conditions(status)["Degraded"] == ("True", "ReplicasDown")
        assert message(status, "Degraded") == "pipeline degraded: 6 of 7 replicas alive; short: associate@edc (0/1)"
        assert since(status, "Degraded") == "2024-05-21T08:30:30Z"
        assert since(status, "Deployed") == "2024-05-21T08:30:00Z"
        assert status["accuracy"] == 33.5  # measured on completed frames
        pipeline.state = "failed"
        world.until(lambda: conditions(world.status())["Degraded"] == ("True", "PipelineFailed"), "PipelineFailed")
        world.clock.t += 30
        pipeline.state, pipeline.down = "running", set()
        status = world.phase(VT, "Running")
        assert conditions(status)["Degraded"] == ("False", "Healthy")
        assert since(status, "Degraded") == "2024-05-21T08:31:00Z"


def test_a_second_workflow_is_planned_on_what_the_first_leaves(world: World) -> None:
    """Two InferenceWorkflows on one Topology: the second is planned on what the first leaves (each hub's
    one Jetson is the first one's), so together they never count on the same instance."""
    from jellybean.optimizer.capacity import instances_in_use

    deployed(world)
    other = recorded("inferenceworkflow-vehicle-tracking.json")
    other["metadata"]["name"] = "second-block"
    world.api.create(WORKFLOW, other)
    world.phase("second-block", "Running")
    plans = [d.plan for d in world.operator.deployed.values()]
    used = instances_in_use(plans)
    assert used[("hub-1", "agx-orin")] == 1  # not 2: the second workflow went elsewhere
    topology = world.operator.deployed[VT].topology
    for site in topology.spec.sites:
        for group in site.instances:
            bound = group.count if group.count is not None else group.max_count
            assert used.get((site.name, group.name), 0) <= bound


# --------------------------------------------------------------------------------------------------
# topology discovery and watches


def test_the_discovered_topology_follows_the_nodes(world: World) -> None:
    seed(world, workflows=(VT, NODES_WF))
    world.start()
    status = world.phase(NODES_WF, "Running")
    world.phase(VT, "Running")
    topology = status["plan"]["topology"]
    assert (topology["name"], topology["source"], topology["sites"], topology["nodes"]) == ("cluster", "Nodes", 6, 9)
    events = recorded("node-events.json")

    # A kubelet heartbeat changes no part of the topology: nothing happens.
    world.settle(NODES_WF)
    mark = world.mark()
    world.api.replay(NODE, events["heartbeat"])
    world.settle(NODES_WF)
    assert world.effects(mark) == []

    # A node going NotReady: only the workflow on discovered nodes re-plans, and rolls out.
    assert world.operator.observe(NODE, "MODIFIED", events["not_ready"][0]["object"]) == {NODES_WF}
    old = world.live(NODES_WF)
    world.api.replay(NODE, events["not_ready"])
    world.until(lambda: ("stop", NODES_WF, old.id, True) in world.pipelines.log
                and world.status(NODES_WF)["phase"] == "Running", "a rollout for the node")
    assert any("edc-t4-2 (site edc) left out: NotReady" in w
               for w in world.status(NODES_WF)["plan"]["topology"]["warnings"])

    # A node added: a new site, re-planned.
    world.api.replay(NODE, events["added"])
    world.until(lambda: world.status(NODES_WF)["plan"]["topology"]["sites"] == 7, "7 sites")

    # A node deleted: cam-02 loses its parent site. The topology is invalid, the message says which
    # node and annotation, and the running pipeline keeps serving.
    world.api.replay(NODE, events["deleted"])
    status = world.phase(NODES_WF, "Failed")
    assert conditions(status)["Planned"] == ("False", "DiscoveryFailed")
    assert conditions(status)["Deployed"] == ("True", "PreviousPlanRunning")
    assert ("Node/cam-02-nano: metadata.annotations[jellybean.io/parent]: site 'cam-02' names parent site 'hub-2', "
            "which no schedulable, Ready node provides") in status["message"]
    assert world.status(VT)["phase"] == "Running" and world.planned.count(VT) == 1


def test_nodes_the_operator_may_not_list_stop_only_the_workflows_discovered_from_them(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """RBAC without nodes: the workflow naming a Topology runs all the same, and the one discovered from
    the Nodes says why it cannot be planned."""
    from tests.k8s import kubeserver

    serve = kubeserver.KubeServer._serve

    def forbidden(self, handler, method: str) -> None:
        if handler.path.startswith("/api/v1/nodes"):
            self._send(handler, 403, self._status(403, "Forbidden", 'nodes is forbidden: User "system:serviceaccount:'
                                                  'edge-ai:jellybean" cannot list resource "nodes"'))
            return
        serve(self, handler, method)

    monkeypatch.setattr(kubeserver.KubeServer, "_serve", forbidden)
    seed(world, workflows=(VT, NODES_WF))
    world.start()
    world.phase(VT, "Running")
    status = world.phase(NODES_WF, "Failed")
    assert conditions(status)["Planned"] == ("False", "DiscoveryFailed")
    assert "cannot list the Nodes: (403) Forbidden (give the operator's service account list/watch on nodes)" in \
        status["message"]


def test_410_gone_on_a_watch_lists_again(world: World) -> None:
    deployed(world)
    lists = len([r for r in world.server.requests if r.resource == "inferenceworkflows" and r.verb == "list"])
    world.api.compact(WORKFLOW)  # the history the watch may resume from is gone: open watches end
    world.until(lambda: _relisted(world, lists), "a relist after 410 Gone")
    world.api.update_spec(WORKFLOW, VT, lambda spec: spec["slo"].update(accuracy=30.0))
    world.until(lambda: world.status().get("observedGeneration") == 2 and world.status()["phase"] == "Running",
                "generation 2 after a relist")
    assert len([r for r in world.server.requests if r.resource == "inferenceworkflows" and r.verb == "list"]) > lists


def _relisted(world: World, before: int) -> bool:
    return len([r for r in world.server.requests if r.resource == "inferenceworkflows" and r.verb == "list"]) > before


def test_shutdown_stops_the_pipelines_and_keeps_the_finalizers(world: World) -> None:
    deployed(world)
    world.stop()
    assert [e[:2] for e in world.pipelines.events("stop")] == [("stop", VT)]
    assert world.api.objects[WORKFLOW][VT]["metadata"]["finalizers"] == [FINALIZER]


def test_every_status_written_fits_the_generated_crd() -> None:
    """The operator and jellybean/k8s/crds.py agree: each stored object, after each kind of status
    (running, degraded, failed to start, infeasible, discovery failed), validates strictly against the
    CRD's schema."""
    from jellybean.k8s.crds import crd
    from tests.k8s.k8s_schema import crd_schema, errors, validator

    check = validator(crd_schema(crd(WORKFLOW)))
    seen = []
    with world_of(resync_s=0.2, retry_initial_s=0.3) as world:

        def snapshot() -> None:
            with world.api.lock:
                seen.extend(copy.deepcopy(o) for o in world.api.objects[WORKFLOW].values() if o.get("status"))

        world.pipelines.fail[VT] = 1
        seed(world, workflows=(VT, NODES_WF))
        world.start()
        world.phase(VT, "Failed")
        snapshot()
        world.phase(VT, "Running")
        snapshot()
        pipeline = world.live(VT)
        pipeline.ledger.completed, pipeline.ledger.correct = 10, 3
        pipeline.state, pipeline.down = "degraded", {"detect"}
        world.phase(VT, "Degraded")
        snapshot()
        world.api.update_spec(WORKFLOW, VT, lambda spec: spec["slo"].update(accuracy=99.0))
        world.api.replay(NODE, recorded("node-events.json")["deleted"])
        world.phase(VT, "Failed")
        world.phase(NODES_WF, "Failed")
        snapshot()
    assert {o["status"]["phase"] for o in seen} >= {"Running", "Degraded", "Failed"}
    assert [e for o in seen for e in errors(check, o)] == []


# --------------------------------------------------------------------------------------------------
# pure parts


def test_spec_document_keeps_the_document_and_drops_what_the_server_and_tools_add() -> None:
    obj = recorded("inferenceworkflow-vehicle-tracking.json")
    obj["status"] = {"phase": "Deployed"}
    doc = spec_document(WORKFLOW, obj)
    assert doc == {"apiVersion": "jellybean.io/v1alpha1", "kind": WORKFLOW,
                   "metadata": {"name": VT, "labels": {"benchmark": "ai-city-challenge"}}, "spec": obj["spec"]}


def test_the_digest_is_the_controllers_without_labels_and_annotations() -> None:
    """One digest function: the operator's is the controller's bundle digest of the documents with
    only their names as metadata (a label added by a tool does not re-plan)."""
    from jellybean.runtime.state import bundle_bodies, bundle_digest
    from jellybean.spec.bundle import resolve
    from jellybean.spec.loader import LoadedDocument, SourceMap, parse_document

    def bundle(labels: dict):
        obj = recorded("inferenceworkflow-vehicle-tracking.json")
        obj["metadata"]["labels"] = labels
        docs = [parse_document(spec_document(kind, o), SourceMap(kind), 0) for kind, o in (
            (WORKFLOW, obj), ("ModelZoo", recorded("modelzoo-vehicle-tracking.json")),
            ("Topology", recorded("topology-vehicle-tracking-city-block.json")))]
        return resolve([LoadedDocument(d.model, d.source, 0) for d in docs], VT)

    one, two = bundle({"a": "1"}), bundle({"a": "2"})
    assert inputs_digest(one) == inputs_digest(two) == bundle_digest(bundle_bodies(one, metadata=False))
    assert bundle_digest(bundle_bodies(one)) != bundle_digest(bundle_bodies(two))


def test_merge_patch_sends_only_differences_and_nulls_removed_keys() -> None:
    current = {"phase": "Deployed", "plan": {"models": {"a": "x"}, "latencyMs": {"predicted": 3}}, "accuracy": 91.0}
    desired = {"phase": "Deployed", "plan": {"models": {"a": "y"}}, "costPerHour": 0.5}
    assert merge_patch(current, desired) == {"plan": {"models": {"a": "y"}, "latencyMs": None}, "costPerHour": 0.5,
                                             "accuracy": None}
    assert merge_patch(desired, copy.deepcopy(desired)) is None


def _status(phase: Phase, message: str = "", **fields) -> WorkflowStatus:
    return WorkflowStatus(name=VT, phase=phase, message=message, generation=1, digest="d", running_generation=None,
                          running_digest=None, zoo=None, topology=None, applied_at=None, started_at=None, plan=None,
                          stages=[], frames=None, **fields)


def test_desired_status_keeps_transition_times_until_a_status_flips() -> None:
    summary = {"generation": 1, "models": {"detect": "m"}, "costPerHour": {"total": 1.5},
               "accuracy": {"predicted": 40.0}}
    runtime = {"state": "running", "stages": []}
    running = Seen(_status(Phase.RUNNING, accuracy_measured=91.04, throughput_per_s=39.96, frames_lost=0), 1,
                   summary, None, summary, True, runtime)
    first = desired_status({}, running, "T1")
    assert first["phase"] == "Running" and first["costPerHour"] == 1.5 and first["predictedAccuracy"] == 40.0
    assert (first["accuracy"], first["throughputPerSecond"], first["framesLost"]) == (91.0, 40.0, 0)
    assert message(first, "Deployed") == ("serving generation 1: detect=m; $1.5000/h; accuracy 40 predicted; "
                                          "measured accuracy 91.0, 40.0 frames/s, 0 frames lost")
    again = desired_status(first, Seen(_status(Phase.RUNNING), 2, {**summary, "generation": 2}, None, summary, True,
                                       runtime), "T2")
    assert {c["lastTransitionTime"] for c in again["conditions"]} == {"T1"}
    assert {c["observedGeneration"] for c in again["conditions"]} == {2}
    broken = desired_status(again, Seen(_status(Phase.FAILED, "bad (generation 1 keeps running)"), 3, None,
                                        ("InvalidSpec", "bad"), summary, False, runtime), "T3")
    assert broken["phase"] == "Failed" and broken["plan"] == summary  # the running plan stays shown
    assert {c["type"]: c["lastTransitionTime"] for c in broken["conditions"]} == {
        "Planned": "T3", "Deployed": "T1", "Degraded": "T1"}
    failure = LastFailure(reason="DeployFailed", message="RuntimeError: no", at=0.0, attempts=2)
    failed = desired_status({}, Seen(_status(Phase.FAILED, "RuntimeError: no; attempt 2, retrying in 10 s",
                                             last_failure=failure), 1, summary,
                                     ("DeployFailed", "RuntimeError: no; attempt 2, retrying in 10 s")), "T1")
    assert conditions(failed)["Deployed"] == ("False", "DeployFailed")
    assert failed["lastFailure"] == {"reason": "DeployFailed", "message": "RuntimeError: no",
                                     "time": "1970-01-01T00:00:00Z", "attempts": 2}
    blocked = desired_status({}, Seen(_status(Phase.BLOCKED, "no node advertises site:edc"), 1, summary), "T1")
    assert conditions(blocked)["Deployed"] == ("False", "Blocked") and blocked["message"] == \
        "no node advertises site:edc"
    pending = desired_status({}, Seen(_status(Phase.PENDING), 1), "T1")
    assert pending["phase"] == "Pending" and "plan" not in pending and "costPerHour" not in pending


# --------------------------------------------------------------------------------------------------
# the kubernetes client adapter, the probes, the command


def test_the_client_adapter_speaks_merge_patch_and_gives_kopf_the_same_connection() -> None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = ClientKubeApi()
    calls = []
    api.custom.patch_namespaced_custom_object_status = lambda *a, **k: calls.append((a, k)) or {"ok": 1}
    assert api.patch_status(WORKFLOW, NAMESPACE, VT, {"phase": "Running"}) == {"ok": 1}
    assert calls[0][0] == ("jellybean.io", "v1alpha1", NAMESPACE, "inferenceworkflows", VT,
                           {"status": {"phase": "Running"}})
    assert calls[0][1] == {"_content_type": "application/merge-patch+json"}

    def refuse(status: int):
        def call(*_a, **_k):
            raise ApiException(status=status, reason="refused")
        return call

    api.custom.patch_namespaced_custom_object_status = refuse(404)
    assert api.patch_status(WORKFLOW, NAMESPACE, VT, {"phase": "Running"}) is None
    api.custom.get_namespaced_custom_object = refuse(404)
    assert api.get(WORKFLOW, NAMESPACE, VT) is None
    api.custom.get_namespaced_custom_object = refuse(500)
    with pytest.raises(ApiException):
        api.get(WORKFLOW, NAMESPACE, VT)

    configuration = client.Configuration(host="https://10.0.0.1:6443")
    configuration.api_key = {"authorization": "Bearer s3cret"}
    configuration.ssl_ca_cert = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    info = ClientKubeApi(client.ApiClient(configuration)).connection()
    assert (info.server, info.scheme, info.token, info.ca_path, info.insecure) == (
        "https://10.0.0.1:6443", "Bearer", "s3cret", "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt", False)


def test_the_probes(world: World) -> None:
    from fastapi.testclient import TestClient

    from jellybean.k8s.probes import create_app

    seed(world)
    client = TestClient(create_app(world.operator, "s3cret", liveness_s=60))
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503
    world.start()
    world.phase(VT, "Running")
    assert client.get("/readyz").json() == {"status": "ready"}
    assert client.get("/v1/operator").status_code == 401
    described = client.get("/v1/operator", headers={"Authorization": "Bearer s3cret"}).json()
    assert described["workflows"][VT] == {"phase": "Running", "generation": 1, "runningGeneration": 1}
    world.stop()  # nothing beats any more (before it, the loop's beat or a reconcile could reset the clock)
    world.operator.heartbeat -= 61
    assert client.get("/healthz").status_code == 503
    assert TestClient(create_app(world.operator)).get("/v1/operator").status_code == 404


def test_the_command_says_in_one_line_when_there_is_no_cluster(monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture) -> None:
    from jellybean.cli import main

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(["operator"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no Kubernetes cluster config: not running in a pod") and err.count("\n") == 1


def test_a_discovery_raced_by_a_node_event_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Node that arrives while a workflow's topology is being discovered (in the reconcile's thread)
    clears the cache first; the discovery made from the older list must not be stored after it, or
    every later reconcile would reuse the stale one until another Node changed."""
    import jellybean.k8s.operator as module

    operator = Operator(SimpleNamespace(), NAMESPACE)
    calls: list[int] = []
    node = {"metadata": {"name": "n1", "labels": {}}}

    def discover(nodes, name):
        calls.append(len(nodes))
        if len(calls) == 1:  # a Node event lands while the first discovery runs
            operator.observe(NODE, "ADDED", node)
        return SpecError([Issue("Nodes", None, "", "none yet", "")])

    monkeypatch.setattr(module, "discover_topology", discover)
    operator._discover("wf")
    operator._discover("wf")
    assert calls == [0, 1]  # rediscovered from the list that includes the new Node
    operator._discover("wf")
    assert calls == [0, 1]  # and that one is kept
