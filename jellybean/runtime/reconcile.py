"""The one reconcile core of the controller (:mod:`jellybean.runtime.controller`: desired state from
its store, plus the HTTP API) and the operator (:mod:`jellybean.k8s.operator`: desired state from the
watch cache, plus status on the custom resources).

    desired state (name, digest, bundle, plan)
      -> pure decisions: actions (:func:`decide`), how a change rolls out (:func:`plan_rollout`),
         when to try again (:func:`backoff_s`), what Ray must offer (:func:`decide_cluster`), and
         one :class:`Phase` derived from an :class:`Observation` (:func:`phase_of`)
      -> one executor of effects (:class:`Executor`: start, replace, stop, cancel, Ray, failures)
      -> one typed status (:class:`jellybean.runtime.status.WorkflowStatus`, :func:`workflow_status`)

Rollouts. A changed workflow is planned against what the *other* workflows leave
(:func:`jellybean.optimizer.capacity.capacity_left`). Its new version then starts first, beside the
old one, when the capacity left by everything running (the old version included) holds it
(``new-first``: no gap in serving). When it does not, the old version is drained and stopped first
and the new one started on what it freed (``stop-first``, said in the status and the event): a
rollout never waits for room that only its own end would free. If the new version then fails to
start, the status says so, with the reason, and the start is retried with backoff.

Cancelling. A start in progress is cancelled by :meth:`Executor.cancel` (a delete): the pipeline
being started is told to give up (``cancel()``: its actors are killed, so the calls it waits on fail
at once), and the start ends as ``cancelled``, never as a failure.

Ray's site resources. Every site a workflow runs at is a custom resource ``site:<name>`` of the
embedded Ray; new sites are added to the running node in place (:meth:`Cluster.grow`), so applying a
workflow with new sites never stops the ones running.
"""

from __future__ import annotations

import enum
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from jellybean.spec.errors import SpecError

if TYPE_CHECKING:
    from jellybean.optimizer.plan import Plan
    from jellybean.runtime.metrics import Metrics
    from jellybean.spec.bundle import Bundle
    from jellybean.spec.topology import Topology

log = logging.getLogger("jellybean.reconcile")

MAX_MESSAGE = 2000


class PipelineLike(Protocol):
    """What the core needs of a deployed workflow (``jellybean.runtime.dataplane.Pipeline``); a
    pipeline may also offer ``cancel()`` (give up a start under way) and ``release()`` (hand its
    replicas to the next controller)."""

    def start(self) -> None: ...

    def stop(self, *, drain: bool = True) -> Any: ...

    def status(self) -> dict: ...


PipelineFactory = Callable[["Bundle", "Plan"], PipelineLike]


class NotServable(Exception):
    """The plan is valid but cannot be served as written (no loader, no dataset): said in words."""


class Cancelled(Exception):
    """A start was cancelled (the workflow was deleted while it started)."""


# --------------------------------------------------------------------------------------------------
# the phase: one vocabulary for the controller, the operator, their status and the metric


class Phase(str, enum.Enum):
    """Where a workflow is in its life. ``jellybean_controller_workflows{state}`` counts workflows by
    these, lower-cased; the HTTP API, ``jellybean status`` and the custom resource's ``status.phase``
    show them as written."""

    PENDING = "Pending"  # desired, nothing done yet (or waiting for a document it names)
    PLANNED = "Planned"  # planned; its pipeline has not started yet
    STARTING = "Starting"  # its first pipeline is starting
    RUNNING = "Running"  # its desired version serves, every replica alive
    UPDATING = "Updating"  # a new version rolls out; the old one serves meanwhile (new-first)
    DEGRADED = "Degraded"  # its desired version serves with replicas down
    BLOCKED = "Blocked"  # cannot start until something outside it changes (Ray lacks its sites)
    FAILED = "Failed"  # planning or starting failed: the message says why (retried with backoff)
    TERMINATING = "Terminating"  # deleted; its pipeline stops

    @property
    def state(self) -> str:
        """The metric's label."""
        return self.value.lower()


#: Problems that keep a workflow from being planned (the operator's inputs); they wait for a change.
PLAN_FAILURES = frozenset({"InvalidSpec", "DiscoveryFailed", "Infeasible", "PlanError", "Damaged"})
#: Problems that may resolve themselves (the missing document appears).
WAITING = frozenset({"ZooNotFound"})
#: Problems after a plan: the pipeline cannot be served, or its start failed (retried with backoff).
DEPLOY_FAILURES = frozenset({"NotServable", "DeployFailed"})


# --------------------------------------------------------------------------------------------------
# pure decisions


@dataclass(frozen=True)
class Action:
    kind: Literal["start", "replace", "stop"]
    name: str
    digest: str | None  # what to run (None when stopping)
    old_digest: str | None = None  # what runs now (replace, stop)


def decide(desired: Mapping[str, str], running: Mapping[str, str],
           hold: Iterable[str] = frozenset()) -> list[Action]:
    """The actions that take ``running`` to ``desired`` (name -> digest): stops first (freeing
    resources), then replacements and starts, each in name order. ``hold`` names desired workflows to
    leave alone (backing off, blocked); a deletion is never held. Applying them twice does nothing."""
    held = set(hold)
    stops = [Action("stop", name, None, running[name]) for name in sorted(running) if name not in desired]
    changes = []
    for name in sorted(desired):
        if name in held:
            continue
        if name not in running:
            changes.append(Action("start", name, desired[name]))
        elif running[name] != desired[name]:
            changes.append(Action("replace", name, desired[name], running[name]))
    return stops + changes


def backoff_s(attempts: int, initial: float, maximum: float) -> float:
    """Seconds before retry ``attempts`` + 1: doubling from ``initial``, at most ``maximum``."""
    return min(maximum, initial * 2 ** max(0, attempts - 1))


@dataclass(frozen=True)
class Rollout:
    strategy: Literal["new-first", "stop-first"]
    reason: str


def plan_rollout(new: Plan | None, topology: Topology | None, running: Iterable[Plan]) -> Rollout:
    """How a new version replaces the old: ``new-first`` when ``new`` fits in what ``running`` (every
    running plan, the old version of this workflow included) leaves of ``topology``; ``stop-first``
    otherwise, with the shortfall in words. Without a plan or a topology to judge by: new-first."""
    if new is None or topology is None:
        return Rollout("new-first", "")
    from jellybean.optimizer.capacity import capacity_left, shortfalls

    short = shortfalls(new, capacity_left(topology, running))
    if not short:
        return Rollout("new-first", "the new version fits beside the old one")
    shown = "; ".join(short[:3]) + (f"; ... and {len(short) - 3} more" if len(short) > 3 else "")
    return Rollout("stop-first", f"no room to start the new version beside the old one ({shown}): "
                                 "the old one is stopped first")


def merge_resources(parts: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """The union of several resource maps (a site named by two topologies gets the larger amount)."""
    out: dict[str, float] = {}
    for part in parts:
        for key, amount in part.items():
            out[key] = max(out.get(key, 0.0), float(amount))
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class ClusterDecision:
    action: Literal["none", "start", "grow"]
    resources: dict[str, float] = field(default_factory=dict)  # start with these / add these in place
    missing: dict[str, float] = field(default_factory=dict)  # required but not offered


def decide_cluster(offered: Mapping[str, float] | None, required: Mapping[str, float], *,
                   embedded: bool) -> ClusterDecision:
    """Start Ray if it is not running; grow an embedded one whose site resources fall short (the
    missing amounts are added to the running node: nothing restarts); for a cluster we joined, report
    what it lacks (its nodes advertise their sites)."""
    if offered is None:
        return ClusterDecision("start", dict(required) if embedded else {})
    missing = {k: v for k, v in required.items()
               if k not in offered or (embedded and offered[k] + 1e-9 < v)}
    if embedded and missing:
        return ClusterDecision("grow", dict(missing), missing)
    return ClusterDecision("none", {}, missing)


# --------------------------------------------------------------------------------------------------
# failures and observations


@dataclass(frozen=True)
class Failure:
    """The last failure of one version (digest) of a workflow."""

    digest: str
    reason: str  # DeployFailed, PlanError, ... (the condition reasons)
    message: str
    attempts: int
    retry_at: float  # the clock's time of the next try
    at: float  # wall-clock time it happened (unix)


@dataclass(frozen=True)
class Observation:
    """What is known of one workflow, from which its phase follows (:func:`phase_of`)."""

    desired_digest: str | None  # None: deleted
    running_digest: str | None = None
    running_generation: int | None = None
    transition: str | None = None  # "start" | "replace" | "stop" under way
    rollout: str = ""  # what the rollout under way does, and why
    failure: Failure | None = None  # the desired version's last failure (None once it runs)
    problem: tuple[str, str] | None = None  # (reason, message): a problem before any start (plan, damage)
    blocked: str = ""  # why it cannot start (Ray lacks its sites, Ray failed)
    planned: bool = False  # a plan exists for the desired version
    pipeline_state: str | None = None  # the running pipeline's: running, degraded, failed, ...
    now: float = 0.0  # the clock's time (for "retrying in N s")


def phase_of(obs: Observation) -> tuple[Phase, str]:
    """The phase and a message saying why, for what was observed. Pure."""
    running = obs.running_digest is not None
    keeps = f" (generation {obs.running_generation} keeps running)" if running else ""
    if obs.desired_digest is None:
        return Phase.TERMINATING, "deleted; stopping the pipeline"
    reason, problem = obs.problem or ("", "")
    if reason in PLAN_FAILURES or reason in DEPLOY_FAILURES:
        return Phase.FAILED, problem + keeps
    if reason in WAITING:
        return Phase.PENDING, problem
    if obs.transition == "stop":
        return Phase.TERMINATING, "stopping the pipeline"
    last = ""
    if obs.failure is not None:
        last = f" (attempt {obs.failure.attempts + 1}; the last one failed: {obs.failure.message})"
    if obs.transition == "start":
        return Phase.STARTING, "starting the pipeline" + last
    if obs.transition == "replace":
        return Phase.UPDATING, (obs.rollout or f"starting the new version; generation {obs.running_generation} "
                                "serves until it runs") + last
    if running and obs.running_digest == obs.desired_digest:
        if obs.pipeline_state in ("degraded", "failed"):
            return Phase.DEGRADED, f"the pipeline is {obs.pipeline_state}: replicas are down"
        return Phase.RUNNING, ""
    if obs.failure is not None:
        retry = max(0.0, obs.failure.retry_at - obs.now)
        return Phase.FAILED, (f"{obs.failure.message}; attempt {obs.failure.attempts}, retrying in {retry:.0f} s"
                              + keeps)
    if obs.blocked:
        return Phase.BLOCKED, obs.blocked
    if running:
        return Phase.UPDATING, f"generation {obs.running_generation} runs; the new one starts next"
    if obs.planned:
        return Phase.PLANNED, "planned; the pipeline starts next"
    return Phase.PENDING, ""


#: Terminal colour and cursor sequences (Ray's exceptions carry them): never part of a message.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def message_of(exc: BaseException) -> str:
    """An exception in one line for a status: its text (with its type, unless it is a user-facing
    error), without terminal sequences, at most :data:`MAX_MESSAGE` characters."""
    text = _ANSI.sub("", str(exc)) or type(exc).__name__
    serving = any(c.__name__ == "ServingError" for c in type(exc).__mro__)  # the data plane's, said for users
    if not isinstance(exc, (NotServable, SpecError, Cancelled)) and not serving:
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "..."


def summary_dict(summary: Any) -> dict:
    """What a stopped pipeline's summary keeps in an event (duration, frames, measured, failures)."""
    if summary is None:
        return {}
    if hasattr(summary, "model_dump"):
        summary = summary.model_dump(mode="json")
    if not isinstance(summary, dict):
        return {}
    return {k: v for k, v in summary.items() if k in ("duration_s", "frames", "measured", "failures")}


# --------------------------------------------------------------------------------------------------
# plan beside actual (the status's stage table)


def planned_rows(plan: Mapping[str, Any]) -> dict[tuple[str, str], dict]:
    """Per (stage, site): the planned variant, replicas and requests/s, expanded like the data plane
    does (``max(1, ceil(instances))`` replicas per placement, at each site of the row)."""
    rows: dict[tuple[str, str], dict] = {}
    for a in plan.get("assignments", []):
        replicas = max(1, math.ceil(float(a.get("instances", 1.0)) - 1e-9))
        for site in a.get("sites") or [a["site"]]:
            row = rows.setdefault((a["stage"], site), {
                "stage": a["stage"], "site": site, "variant": a["variant"], "replicas_planned": 0,
                "rate_planned_per_s": 0.0})
            row["replicas_planned"] += replicas
            row["rate_planned_per_s"] += float(a.get("rate_per_s", 0.0))
    return rows


def compare_stages(plan: Mapping[str, Any] | None, actual: Mapping[str, Any] | None) -> list[dict]:
    """Plan beside actual, one row per (stage, site), in the plan's stage order."""
    planned = planned_rows(plan) if plan else {}
    rows = {key: {**row, "variant_running": None, "replicas_alive": 0, "rate_measured_per_s": None}
            for key, row in planned.items()}
    for got in (actual or {}).get("stages", []):
        key = (got.get("stage"), got.get("site"))
        row = rows.setdefault(key, {"stage": key[0], "site": key[1], "variant": None, "replicas_planned": 0,
                                    "rate_planned_per_s": 0.0, "variant_running": None, "replicas_alive": 0,
                                    "rate_measured_per_s": None})
        row["variant_running"] = got.get("variant")
        row["replicas_alive"] += int(got.get("replicas_alive") or 0)
        measured = got.get("rate_measured_per_s")
        if measured is not None:
            row["rate_measured_per_s"] = (row["rate_measured_per_s"] or 0.0) + float(measured)
    order = {stage: i for i, stage in enumerate((plan or {}).get("models", {}))}
    return sorted(rows.values(), key=lambda r: (order.get(r["stage"], len(order)), str(r["stage"]), str(r["site"])))


# --------------------------------------------------------------------------------------------------
# Ray


class Cluster(Protocol):
    embedded: bool

    def offered(self) -> dict[str, float] | None: ...

    def start(self, resources: Mapping[str, float]) -> None: ...

    def grow(self, resources: Mapping[str, float]) -> None:
        """Add custom resources to the running (embedded) node, in place."""

    def shutdown(self) -> None: ...

    def describe(self) -> dict: ...


# --------------------------------------------------------------------------------------------------
# the executor


@dataclass(frozen=True)
class Desired:
    """One version of one workflow to run."""

    name: str
    digest: str
    generation: int
    bundle: Bundle
    plan: Plan
    extra: dict = field(default_factory=dict)  # kept with the deployment (the operator's plan summary)


@dataclass
class Deployed:
    """A running pipeline and what it serves."""

    name: str
    digest: str
    generation: int
    pipeline: PipelineLike
    started_at: float  # unix time
    plan: Plan | None = None
    topology: Topology | None = None
    extra: dict = field(default_factory=dict)  # what the caller keeps with it (the operator's plan summary)


@dataclass
class _Transition:
    kind: str  # start | replace | stop
    digest: str | None
    rollout: str = ""
    pipeline: PipelineLike | None = None
    cancelled: bool = False


Recorder = Callable[[str | None, str, dict], None]


def _no_record(_workflow: str | None, _event: str, _detail: dict) -> None:
    return None


class Executor:
    """The effects of reconciling, for the controller and the operator alike: it runs the actions on
    pipelines made by an injected factory, keeps what runs, what starts (cancellable) and the last
    failure of each workflow (with its backoff), grows Ray, and reports events through ``record``
    (the controller stores them; the operator posts them as Kubernetes events)."""

    def __init__(self, pipeline_factory: PipelineFactory, *, cluster: Cluster | None = None,
                 site_resources: Callable[[Topology], Mapping[str, float]] | None = None,
                 record: Recorder = _no_record, metrics: Metrics | None = None,
                 clock: Callable[[], float] = time.monotonic, retry_initial_s: float = 5.0,
                 retry_max_s: float = 300.0) -> None:
        self.pipeline_factory = pipeline_factory
        self.cluster = cluster
        self.site_resources = site_resources or _default_site_resources
        self.record = record
        self.metrics = metrics
        self.clock = clock
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.running: dict[str, Deployed] = {}
        self.failures: dict[str, Failure] = {}  # the desired version's failure, until it runs
        self.last_failures: dict[str, Failure] = {}  # the last failure, kept while the workflow exists
        self.blocked: dict[str, str] = {}
        self.cluster_error: Failure | None = None
        self.transitions: dict[str, _Transition] = {}
        self.lock = threading.RLock()  # the in-memory view (read by status, from other threads)

    # --- what is known --------------------------------------------------------------------------------
    def running_digests(self) -> dict[str, str]:
        with self.lock:
            return {name: d.digest for name, d in self.running.items()}

    def plans_beside(self, name: str) -> list[Plan]:
        """The plans of every running workflow but ``name``: what a new or changed ``name`` is planned
        around (:func:`jellybean.optimizer.capacity.capacity_left`)."""
        with self.lock:
            return [d.plan for n, d in self.running.items() if n != name and d.plan is not None]

    def hold(self, desired: Mapping[str, str]) -> set[str]:
        """Desired workflows not to act on this pass: backing off after a failure of the same version,
        or blocked. A failure of another version (a new one was applied, or it was deleted) is
        forgotten: the new version is tried at once."""
        now = self.clock()
        held = set(self.blocked)
        with self.lock:
            for name, failure in list(self.failures.items()):
                if desired.get(name) != failure.digest:
                    del self.failures[name]
                elif now < failure.retry_at:
                    held.add(name)
        return held

    def next_retry(self) -> float | None:
        """The clock's time of the earliest retry due (failures, Ray), or None."""
        with self.lock:
            times = [f.retry_at for f in self.failures.values()]
            if self.cluster_error is not None:
                times.append(self.cluster_error.retry_at)
        return min(times) if times else None

    def observe(self, name: str, desired_digest: str | None, *, problem: tuple[str, str] | None = None,
                planned: bool = False, pipeline_state: str | None = None) -> Observation:
        with self.lock:
            deployed = self.running.get(name)
            transition = self.transitions.get(name)
            failure = self.failures.get(name)
            blocked = self.blocked.get(name, "")
            if not blocked and self.cluster_error is not None and desired_digest is not None:
                blocked = f"Ray: {self.cluster_error.message}"
        if failure is not None and failure.digest != desired_digest:
            failure = None
        return Observation(desired_digest, deployed.digest if deployed else None,
                           deployed.generation if deployed else None,
                           transition.kind if transition else None, transition.rollout if transition else "",
                           failure, problem, blocked, planned, pipeline_state, self.clock())

    # --- effects --------------------------------------------------------------------------------------
    def execute(self, action: Action, desired: Desired | None, *, on_begin: Callable[[], None] | None = None) -> None:
        """Run one action (``desired`` is what to start for start and replace)."""
        if action.kind == "stop":
            self.stop(action.name, drain=True, reason="deleted")
        elif desired is not None:
            self.start(desired, on_begin=on_begin)

    def start(self, desired: Desired, *, on_started: Callable[[PipelineLike], None] | None = None,
              on_begin: Callable[[], None] | None = None) -> bool:
        """Start ``desired`` (replacing what runs of it: new-first when there is room, else stop-first).
        Returns whether it runs. A failure is recorded (with its backoff); a cancelled start is not."""
        name = desired.name
        with self.lock:
            old = self.running.get(name)
            others = [d.plan for n, d in self.running.items() if d.plan is not None and n != name]
        rollout = Rollout("new-first", "")
        if old is not None:
            rollout = plan_rollout(desired.plan, desired.bundle.topology,
                                   others + ([old.plan] if old.plan is not None else []))
        note = ""
        if old is not None:
            note = (f"rolling out generation {desired.generation} ({rollout.strategy}): " + rollout.reason
                    if rollout.strategy == "stop-first" else
                    f"rolling out generation {desired.generation} (new-first); generation {old.generation} "
                    "serves until it runs")
        transition = _Transition("replace" if old is not None else "start", desired.digest, note)
        with self.lock:
            self.transitions[name] = transition
        stopped_old: dict | None = None
        try:
            if on_begin is not None:  # the caller reports Starting / Updating now (the operator's status)
                try:
                    on_begin()
                except Exception:
                    log.debug("reporting the start of %s failed", name, exc_info=True)
            if old is not None and rollout.strategy == "stop-first":
                stopped_old = self._stop_first(name, old, desired.generation)
            pipeline = None
            try:
                try:
                    pipeline = self._start_pipeline(desired, transition)
                except Exception as exc:
                    if not (getattr(exc, "no_room", False) and old is not None and stopped_old is None):
                        raise
                    # New-first found no room in Ray after all (the plan's topology has more CPUs than
                    # the machine): stop the old version first, then start the new one on what it frees.
                    rollout = Rollout("stop-first", f"{message_of(exc)}: the old version is stopped first")
                    with self.lock:
                        transition.rollout = (f"rolling out generation {desired.generation} (stop-first): "
                                              + rollout.reason)
                    stopped_old = self._stop_first(name, old, desired.generation)
                    pipeline = self._start_pipeline(desired, transition)
            except Exception as exc:  # noqa: BLE001 - recorded, shown in status, retried with backoff
                if transition.cancelled:
                    self.record(name, "cancelled", {"generation": desired.generation, "digest": desired.digest})
                    log.info("the start of %s was cancelled", name)
                    return False
                self.fail(name, desired.digest, desired.generation, "DeployFailed", message_of(exc),
                          note=" (stop-first: the previous generation was stopped to make room)" if stopped_old
                          is not None else "")
                return False
            if on_started is not None:
                on_started(pipeline)
            deployed = Deployed(name, desired.digest, desired.generation, pipeline, time.time(), desired.plan,
                                desired.bundle.topology, dict(desired.extra))
            with self.lock:
                self.running[name] = deployed
                self.failures.pop(name, None)
            if old is None:
                self.record(name, "started", {"generation": desired.generation, "digest": desired.digest})
                log.info("started %s (generation %d)", name, desired.generation)
                return True
            if stopped_old is None:  # new-first: the new pipeline runs; now drain and stop the old one
                stopped_old = self._stop_deployed(old, drain=True)
            self.record(name, "replaced", {"from_generation": old.generation, "generation": desired.generation,
                                           "digest": desired.digest, "strategy": rollout.strategy,
                                           "why": rollout.reason, "old": stopped_old})
            log.info("replaced %s: generation %d -> %d (%s)", name, old.generation, desired.generation,
                     rollout.strategy)
            return True
        finally:
            with self.lock:
                if self.transitions.get(name) is transition:
                    del self.transitions[name]

    def _start_pipeline(self, desired: Desired, transition: _Transition) -> PipelineLike:
        """Make and start the pipeline (cleaned up, and the exception raised again, when it fails)."""
        pipeline = self.pipeline_factory(desired.bundle, desired.plan)
        with self.lock:
            transition.pipeline = pipeline
            cancelled = transition.cancelled
        try:
            if cancelled:
                raise Cancelled("the start was cancelled")
            pipeline.start()
            if transition.cancelled:
                raise Cancelled("the start was cancelled")
        except Exception:
            try:
                pipeline.stop(drain=False)
            except Exception:
                log.debug("cleanup of a failed start failed", exc_info=True)
            with self.lock:
                transition.pipeline = None
            raise
        return pipeline

    def cancel(self, name: str) -> bool:
        """Cancel a start of ``name`` under way (a delete): the pipeline gives up what it waits on.
        Returns whether one was under way."""
        with self.lock:
            transition = self.transitions.get(name)
            if transition is None or transition.kind == "stop":
                return False
            transition.cancelled = True
            pipeline = transition.pipeline
        if pipeline is not None:
            try:
                if hasattr(pipeline, "cancel"):
                    pipeline.cancel()
            except Exception:
                log.debug("cancelling the start of %s failed", name, exc_info=True)
        return True

    def fail(self, name: str, digest: str, generation: int, reason: str, message: str, *, note: str = "") -> Failure:
        """Record a failure of ``digest``: attempts counted per version, the next try after a backoff."""
        now = self.clock()
        with self.lock:
            previous = self.failures.get(name)
            attempts = previous.attempts + 1 if previous and previous.digest == digest else 1
            delay = backoff_s(attempts, self.retry_initial_s, self.retry_max_s)
            failure = Failure(digest, reason, message + note, attempts, now + delay, time.time())
            self.failures[name] = failure
            self.last_failures[name] = failure
        if self.metrics is not None:
            self.metrics.reconcile_errors.labels(name).inc()
        self.record(name, "failed", {"generation": generation, "digest": digest, "reason": reason,
                                     "message": failure.message, "attempts": attempts, "retry_in_s": round(delay, 1)})
        log.warning("%s: %s failed (attempt %d, retry in %.0f s): %s", name, reason, attempts, delay, failure.message)
        return failure

    def stop(self, name: str, *, drain: bool, reason: str, release: bool = False) -> dict | None:
        """Stop a workflow's pipeline; with ``release`` (controller shutdown) a pipeline that can hand
        its replicas to the next controller does so. Its frame counts go into the event (the next
        controller continues them). Returns the summary, or None when nothing ran."""
        self.cancel(name)
        with self.lock:
            deployed = self.running.get(name)
            if deployed is None:
                return None
            self.transitions[name] = _Transition("stop", None)
        try:
            summary = self._stop_deployed(deployed, drain=drain, release=release)
        finally:
            with self.lock:
                if self.running.get(name) is deployed:
                    del self.running[name]
                if self.transitions.get(name) is not None and self.transitions[name].kind == "stop":
                    del self.transitions[name]
        self.record(name, "stopped", {"generation": deployed.generation, "digest": deployed.digest, "reason": reason,
                                      "summary": summary})
        log.info("stopped %s (generation %d): %s", name, deployed.generation, reason)
        return summary

    def forget(self, name: str) -> None:
        """A workflow that is gone: its failures, and its metric series."""
        with self.lock:
            self.failures.pop(name, None)
            self.last_failures.pop(name, None)
            self.blocked.pop(name, None)
        if self.metrics is not None:
            self.metrics.forget_workflow(name)

    def _stop_first(self, name: str, old: Deployed, generation: int) -> dict:
        """Stop the running version ahead of ``generation`` (a stop-first rollout), drained, and say so."""
        stopped = self._stop_deployed(old, drain=True)
        with self.lock:
            if self.running.get(name) is old:
                del self.running[name]
        self.record(name, "stopped", {"generation": old.generation, "digest": old.digest,
                                      "reason": f"rollout of generation {generation} (stop-first)", "summary": stopped})
        return stopped

    @staticmethod
    def _stop_deployed(deployed: Deployed, *, drain: bool, release: bool = False) -> dict:
        pipeline = deployed.pipeline
        try:
            ending = pipeline.release() if release and hasattr(pipeline, "release") else pipeline.stop(drain=drain)
            return summary_dict(ending)
        except Exception as exc:  # noqa: BLE001 - the pipeline is gone from our view either way
            return {"error": message_of(exc)}

    # --- Ray --------------------------------------------------------------------------------------------
    def ensure_cluster(self, topologies: Iterable[Topology], needs: Mapping[str, Topology]) -> set[str]:
        """Start Ray, or add the sites of ``topologies`` to the running one (in place); for a cluster
        we joined, the workflows of ``needs`` (name -> its topology) whose sites no node advertises are
        blocked. Returns the names to hold this pass (all of them while Ray fails, with backoff)."""
        if self.cluster is None:
            return set()
        now = self.clock()
        if self.cluster_error is not None and now < self.cluster_error.retry_at:
            return set(needs)
        try:
            required = merge_resources(self.site_resources(t) for t in topologies)
            decision = decide_cluster(self.cluster.offered(), required, embedded=self.cluster.embedded)
            if decision.action == "start":
                self.cluster.start(decision.resources)
                self.record(None, "ray-started", self._cluster_detail(decision.resources))
            elif decision.action == "grow":
                self.cluster.grow(decision.resources)
                with self.lock:
                    running = sorted(self.running)
                self.record(None, "ray-grown", {**self._cluster_detail(decision.resources),
                                                "added": sorted(decision.resources), "kept_running": running})
            self.cluster_error = None
        except Exception as exc:  # noqa: BLE001 - reported in status, retried with backoff
            attempts = self.cluster_error.attempts + 1 if self.cluster_error else 1
            self.cluster_error = Failure("", "ClusterError", message_of(exc), attempts,
                                         now + backoff_s(attempts, self.retry_initial_s, self.retry_max_s), time.time())
            if self.metrics is not None:
                self.metrics.reconcile_errors.labels("").inc()  # the cluster's, no workflow's
            self.record(None, "ray-failed", {"message": self.cluster_error.message, "attempts": attempts})
            log.warning("Ray: %s", self.cluster_error.message)
            return set(needs)
        blocked: dict[str, str] = {}
        if not self.cluster.embedded:
            offered = self.cluster.offered() or {}
            for name, topology in needs.items():
                missing = sorted(k for k in self.site_resources(topology) if k not in offered)
                if missing:
                    blocked[name] = (f"no node of the Ray cluster advertises {', '.join(missing)}: start the site's "
                                     f"node with `ray start --address ... --resources '{{\"{missing[0]}\": 1000}}'`")
        with self.lock:  # only the workflows looked at now (the operator asks for one at a time)
            for name in needs:
                self.blocked.pop(name, None)
            self.blocked.update(blocked)
        return set(blocked)

    def _cluster_detail(self, resources: Mapping[str, float]) -> dict:
        return {"mode": "embedded" if self.cluster and self.cluster.embedded else "external",
                "sites": sorted(k.split(":", 1)[-1] for k in resources)}

    def shutdown(self, *, drain: bool = True, reason: str = "shutdown", release: bool = False) -> None:
        """Stop every pipeline (cancelling starts under way), then Ray if we started it."""
        with self.lock:
            starting = sorted(self.transitions)
            names = sorted(self.running)
        for name in starting:
            self.cancel(name)
        for name in names:
            self.stop(name, drain=drain, reason=reason, release=release)
        if self.cluster is not None:
            try:
                self.cluster.shutdown()
            except Exception:
                log.exception("Ray shutdown failed")

    # --- the metric -----------------------------------------------------------------------------------
    def export_phases(self, phases: Mapping[str, Phase]) -> None:
        """``jellybean_controller_workflows{state}``: workflows by phase (every phase, zeros included),
        and a zero error counter for each workflow (so a quiet workflow has a series)."""
        if self.metrics is None:
            return
        for name in phases:
            self.metrics.reconcile_errors.labels(name)
        for phase in Phase:
            self.metrics.workflows.labels(phase.state).set(sum(1 for p in phases.values() if p is phase))


def _default_site_resources(topology: Topology) -> dict[str, float]:
    from jellybean.runtime.deployment import site_resources

    return site_resources(topology)
