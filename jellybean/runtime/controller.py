"""The controller: stored documents are the desired state, running pipelines the actual one, and a
reconcile loop moves the second towards the first.

The reconcile core (:mod:`jellybean.runtime.reconcile`) holds the decisions and the effects, shared
with the operator: :func:`~jellybean.runtime.reconcile.decide` turns desired and running digests into
actions, the :class:`~jellybean.runtime.reconcile.Executor` runs them (start, rollover new-first or
stop-first, stop, cancel, Ray, failures with backoff), and :func:`~jellybean.runtime.reconcile.phase_of`
gives one :class:`~jellybean.runtime.reconcile.Phase`. This module is "desired state from the store,
plus the HTTP API": the store's digests are the desired state, the executor's pipelines the actual one.
Restart-safe: the in-memory view of what runs starts empty, so a new controller on the same state
directory starts every stored workflow again.

Apply is declarative. Documents are validated (every issue, located), each Workflow is resolved
against the documents of the same request first, then against the stored ones, and its digest is the
digest of the canonical content of its workflow, zoo and topology (:mod:`jellybean.runtime.state`).
An unchanged digest changes nothing (nothing is written); a changed one is re-planned (synchronously,
so an infeasible plan is refused with its explanation and the running version stays) and stored as a
new revision; changing a zoo or a topology re-plans every stored workflow that uses it.

Capacity. A new or changed workflow is planned against what the others running leave of its
topology (:func:`jellybean.optimizer.capacity.capacity_left`: their instances in use removed, their
link bandwidth subtracted), so two workflows never count on the same instance.

Ray. On an embedded Ray (``ray.init``) every site of every stored topology is a custom resource
``site:<name>`` of the one node (:func:`jellybean.runtime.deployment.site_resources`), with
``num_cpus = os.cpu_count()``; a newly applied topology's sites are added to the running node in place
(:meth:`jellybean.runtime.cluster.RayCluster.grow`): nothing running restarts. With ``--address`` the
controller joins an existing cluster whose nodes advertise their ``site:<name>`` resources; a workflow
whose sites no node advertises is held as ``Blocked`` (with the missing names) until they appear. Ray's
own token authentication stays on (Ray's default for new local clusters); an embedded Ray's token file
is made readable by its owner only, and ``jellybean up`` keeps an embedded Ray off the network
(:mod:`jellybean.runtime.localray`).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from jellybean.runtime.cluster import RayCluster
from jellybean.runtime.reconcile import (
    Action, Cluster, ClusterDecision, Deployed, Desired, Executor, NotServable, Phase, PipelineFactory, PipelineLike,
    backoff_s, compare_stages, decide, decide_cluster, merge_resources, message_of, phase_of, planned_rows,
)
from jellybean.runtime.state import (
    DamagedRecord, NewDocument, NewEvent, NewRevision, StateStore, StoredDocument, bundle_bodies, bundle_digest,
    digest_of, document_body,
)
from jellybean.runtime.status import LastFailure, PlanSummary, WorkflowStatus, WorkflowSummary
from jellybean.spec.errors import Issue, SpecError

if TYPE_CHECKING:
    from jellybean.optimizer.plan import Plan
    from jellybean.runtime.metrics import Metrics
    from jellybean.spec.bundle import Bundle
    from jellybean.spec.loader import LoadedDocument
    from jellybean.spec.topology import Topology

log = logging.getLogger("jellybean.controller")

#: What the reconcile core offers, importable from here as before.
__all__ = ["Action", "ApplyResult", "Cluster", "ClusterDecision", "Controller", "NotFound", "NotServable",
           "PipelineFactory", "PipelineLike", "Planner", "RayCluster", "Rejected", "Rejection", "backoff_s",
           "compare_stages", "decide", "decide_cluster", "default_pipeline_factory", "default_servability_check",
           "default_site_resources", "merge_resources", "planned_rows"]

#: A planner: the bundle (its topology already narrowed to what the other workflows leave) -> a Plan.
Planner = Callable[["Bundle"], "Plan"]
_message = message_of  # the name tests and older callers use


@dataclass
class Rejection:
    workflow: str
    reason: Literal["infeasible", "not-servable"]
    explanation: list[str]


class Rejected(Exception):
    """Valid documents, but some workflow has no plan that can be served; nothing was stored."""

    def __init__(self, rejections: list[Rejection]) -> None:
        super().__init__("; ".join(f"{r.workflow}: {r.reason}" for r in rejections))
        self.rejections = rejections


class NotFound(KeyError):
    pass


# --------------------------------------------------------------------------------------------------
# defaults that use the data plane (imported lazily: tests inject fakes and need no Ray)


def default_site_resources(topology: Topology) -> dict[str, float]:
    from jellybean.runtime.deployment import site_resources

    return site_resources(topology)


def default_pipeline_factory(cache_dir: Path | None = None, metrics: Metrics | None = None,
                             detached: bool = False, serving: Mapping[str, Any] | None = None) -> PipelineFactory:
    """The data plane's Pipeline; before each, the hooks of the plugins whose runners the workflow may
    use prepare the cache (once per set of runners: e.g. the digits plugin trains its weights)."""
    built = threading.Lock()
    done: set[frozenset] = set()

    def factory(bundle: Bundle, plan: Plan) -> PipelineLike:
        from jellybean.runtime.supervisor import Supervisor

        from jellybean.plugins import default_cache_dir, prepare, runners_of

        used = frozenset(runners_of(bundle))
        with built:
            if used not in done:
                prepare(Path(cache_dir) if cache_dir else default_cache_dir(), set(used))
                done.add(used)
        # Supervised: re-planned when sites fail or return and when load drifts (jellybean.runtime.supervisor).
        return Supervisor(bundle, plan, cache_dir=cache_dir, metrics=metrics, detached=detached, **dict(serving or {}))

    return factory


def default_servability_check(bundle: Bundle, plan: Plan, model_store: Path | None = None) -> None:
    """Refuse at apply time what the data plane could plan but never serve (it would fail at start):
    unregistered runners and datasets, and artifacts not loadable from the model store as declared
    (each named with its variant and the reason; the API answers 409)."""
    from jellybean.artifacts import ModelStore, default_model_store
    from jellybean.runtime.deployment import ServingError, build_deployment
    from jellybean.plugins import unservable

    problems = unservable(bundle, ModelStore(model_store or default_model_store()))
    if problems:
        raise NotServable("; ".join(f"{i.path}: {i.message}" for i in problems))
    try:
        build_deployment(bundle, plan)
    except ServingError as exc:
        raise NotServable(str(exc)) from None


# --------------------------------------------------------------------------------------------------
# the controller


@dataclass
class ApplyResult:
    documents: list[dict]  # {kind, name, action, digest, file, line}
    workflows: list[dict]  # {name, action, generation, digest, cost_per_hour, accuracy, models, reason}
    changed: bool


class Controller:
    """Desired state in a :class:`StateStore`, actual state in the core's executor, a loop in between."""

    def __init__(
        self,
        store: StateStore,
        *,
        pipeline_factory: PipelineFactory | None = None,
        cluster: Cluster | None = None,
        site_resources: Callable[[Topology], Mapping[str, float]] | None = None,
        check_servable: Callable[[Bundle, Plan], None] | None = None,
        planner: Planner | None = None,
        plan_time_limit_s: float = 60.0,
        cache_dir: Path | None = None,
        interval_s: float = 5.0,
        retry_initial_s: float = 5.0,
        retry_max_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        metrics: Metrics | None = None,
        serving: Mapping[str, Any] | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        if pipeline_factory is None:
            # On a cluster that outlives the controller, replicas are detached: a restarted
            # controller adopts them instead of loading the models again.
            pipeline_factory = default_pipeline_factory(cache_dir, metrics,
                                                        detached=cluster is not None and not cluster.embedded,
                                                        serving=serving)
            check_servable = check_servable or partial(default_servability_check,
                                                       model_store=(serving or {}).get("model_store"))
        self.pipeline_factory = pipeline_factory
        self.check_servable = check_servable
        self.cluster = cluster
        self.site_resources = site_resources or default_site_resources
        self.planner = planner or self._default_planner
        self.plan_time_limit_s = plan_time_limit_s
        self.interval_s = interval_s
        self.clock = clock
        self.executor = Executor(pipeline_factory, cluster=cluster, site_resources=self.site_resources,
                                 record=self.store.add_event, metrics=metrics, clock=clock,
                                 retry_initial_s=retry_initial_s, retry_max_s=retry_max_s)
        self._reconcile_lock = threading.Lock()  # one pass at a time
        self._apply_lock = threading.Lock()  # one apply at a time
        self._passes = 0
        self._passed = threading.Condition()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def _default_planner(self, bundle: Bundle) -> Plan:
        from jellybean.optimizer import plan

        return plan(bundle, baselines=False, time_limit_s=self.plan_time_limit_s)

    def _plan_beside_others(self, bundle: Bundle) -> Plan:
        """Plan ``bundle`` on what the other running workflows leave of its topology (the plan's
        ``available`` counts then say what was left)."""
        from jellybean.optimizer.capacity import capacity_left

        others = self.executor.plans_beside(bundle.name)
        if others:
            bundle = dataclasses.replace(bundle, topology=capacity_left(bundle.topology, others))
        return self.planner(bundle)

    # --- apply / delete ------------------------------------------------------------------------------
    def apply(self, files: list[tuple[str, str]]) -> ApplyResult:
        """Submit documents (file name as the client calls it, YAML text). Raises :class:`SpecError`
        with every located issue, or :class:`Rejected` when a workflow cannot be planned or served;
        in both cases nothing is stored. Parses here, in this thread; the API parses in a process of
        its own (:class:`jellybean.runtime.parsing.IsolatedParser`) and calls :meth:`apply_documents`."""
        from jellybean.runtime.parsing import parse_files

        try:
            documents = parse_files(files)
        except SpecError:
            self._count_apply("invalid")
            raise
        return self.apply_documents(files, documents)

    def apply_documents(self, files: list[tuple[str, str]], documents: list[LoadedDocument]) -> ApplyResult:
        """:meth:`apply` for documents already parsed from ``files`` (kept as submitted). Parsing is
        done before the apply lock is taken: only resolving, planning and storing hold it."""
        with self._apply_lock:
            try:
                result = self._apply(files, documents)
            except SpecError:
                self._count_apply("invalid")
                raise
            except Rejected:
                self._count_apply("rejected")
                raise
        self._count_apply("changed" if result.changed else "unchanged")
        if result.changed:
            self.trigger()
        return result

    def _count_apply(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.applies.labels(outcome).inc()

    def _apply(self, files: list[tuple[str, str]], request: list[LoadedDocument]) -> ApplyResult:
        from jellybean.spec.bundle import Bundle, cross_check, resolve
        from jellybean.spec.loader import LoadedDocument

        stored = {(d.kind, d.name): d for d in self.store.documents()}

        def loaded(doc: StoredDocument) -> LoadedDocument:
            return LoadedDocument(doc.model(), doc.source(), 0)

        def candidates(kind: str, wanted: str | None) -> list[LoadedDocument]:
            # The request's own documents first, then the stored ones.
            given = [d for d in request if d.model.kind == kind]
            if wanted is not None:
                chosen = [d for d in given if d.model.metadata.name == wanted]
                if chosen:
                    return chosen
                damage = self.store.document_damage(kind, wanted)
                if damage is not None:
                    raise SpecError([Issue(f"<stored {kind} {wanted}>", None, "", f"the stored {kind} {wanted!r} is "
                                           f"damaged ({damage})", f"apply the {kind} {wanted!r} again with this request")])
                return [loaded(stored[(kind, wanted)])] if (kind, wanted) in stored else []
            return given or [loaded(d) for key, d in stored.items() if key[0] == kind]

        # Documents: created, configured or unchanged.
        doc_results: list[dict] = []
        new_documents: list[NewDocument] = []
        changed_docs: set[tuple[str, str]] = set()
        for doc in request:
            body = document_body(doc.model)
            digest = digest_of(body)
            key = (doc.model.kind, doc.model.metadata.name)
            before = stored.get(key)
            action = "created" if before is None else "unchanged" if before.digest == digest else "configured"
            doc_results.append({"kind": key[0], "name": key[1], "action": action, "digest": digest,
                                "file": doc.source.file, "line": doc.source.start_line})
            if action != "unchanged":
                changed_docs.add(key)
                new_documents.append(NewDocument(key[0], key[1], digest, body, doc.source.file, doc.source.start_line))

        # Workflows: those in the request, and stored ones whose zoo or topology changed.
        bundles: dict[str, tuple[Bundle, str]] = {}
        issues: list[Issue] = []
        for doc in request:
            if doc.model.kind != "Workflow":
                continue
            spec = doc.model.spec
            try:
                bundle = resolve([doc] + candidates("ModelZoo", spec.zoo) + candidates("Topology", spec.topology),
                                 doc.model.metadata.name)
            except SpecError as exc:
                issues.extend(exc.issues)
                continue
            bundles[bundle.name] = (bundle, "")
        request_workflows = set(bundles)
        for record in self.store.workflows():
            if record.name in request_workflows:
                continue
            reasons = [f"{kind} {name} changed" for kind, name in (("ModelZoo", record.zoo), ("Topology", record.topology))
                       if (kind, name) in changed_docs]
            if not reasons:
                continue
            wf_doc = stored.get(("Workflow", record.name))
            if wf_doc is None:
                continue
            zoo = candidates("ModelZoo", record.zoo)
            topo = candidates("Topology", record.topology)
            if not zoo or not topo:
                continue
            bundle = Bundle(wf_doc.model(), zoo[0].model, topo[0].model,
                            {"Workflow": wf_doc.source(), "ModelZoo": zoo[0].source, "Topology": topo[0].source})
            found = cross_check(bundle)
            if found:
                issues.extend(Issue(i.file, i.line, i.path, f"{i.message} (stored workflow {record.name!r}, "
                                    f"after this change to its {' and '.join(r.split()[0] for r in reasons)})", i.hint)
                              for i in found)
                continue
            bundles[record.name] = (bundle, ", ".join(reasons))
        if issues:
            raise SpecError(issues)

        # Plan what changed.
        revisions: list[NewRevision] = []
        wf_results: list[dict] = []
        rejections: list[Rejection] = []
        events: list[NewEvent] = []
        for name in sorted(bundles):
            bundle, reason = bundles[name]
            bodies = bundle_bodies(bundle)
            digest = bundle_digest(bodies)
            record = self.store.workflow(name)
            if record is not None and record.digest == digest and self.store.workflow_damage(name) is None:
                current = self.store.revision(name)
                plan_data = current.plan if current else {}
                wf_results.append({"name": name, "action": "unchanged", "generation": record.generation,
                                   "digest": digest, "cost_per_hour": (plan_data.get("cost") or {}).get("total_per_hour"),
                                   "accuracy": plan_data.get("accuracy"), "models": plan_data.get("models", {}),
                                   "reason": ""})
                continue
            plan = self._plan_beside_others(bundle)
            if not plan.feasible:
                rejections.append(Rejection(name, "infeasible", list(plan.explanation) or ["no feasible plan"]))
                continue
            if self.check_servable is not None:
                try:
                    self.check_servable(bundle, plan)
                except NotServable as exc:
                    rejections.append(Rejection(name, "not-servable", [str(exc)]))
                    continue
            action = "created" if record is None else "configured"
            plan_data = plan.model_dump(mode="json", by_alias=True)
            revisions.append(NewRevision(name, digest, bodies, plan_data, bundle.zoo.metadata.name,
                                         bundle.topology.metadata.name))
            cost = plan.cost.total_per_hour if plan.cost else None
            reason = reason or ("new workflow" if record is None else "documents changed")
            wf_results.append({"name": name, "action": action, "generation": None, "digest": digest,
                               "cost_per_hour": cost, "accuracy": plan.accuracy, "models": dict(plan.models),
                               "reason": reason})
            events.append(NewEvent(name, "applied", {"action": action, "digest": digest, "cost_per_hour": cost,
                                                     "models": dict(plan.models), "reason": reason}))
        if rejections:
            raise Rejected(rejections)
        for result in doc_results:
            if result["action"] != "unchanged":
                events.append(NewEvent(None, f"document-{result['action']}",
                                       {k: result[k] for k in ("kind", "name", "digest", "file", "line")}))
        changed = bool(new_documents or revisions)
        if changed:
            generations = self.store.commit_apply(files, new_documents, revisions, events)
            for result in wf_results:
                if result["generation"] is None:
                    result["generation"] = generations[result["name"]]
        return ApplyResult(doc_results, wf_results, changed)

    def delete(self, name: str) -> None:
        """Remove a workflow from the desired state; a start of it under way is cancelled, and the
        loop stops its pipeline."""
        if not self.store.delete_workflow(name):
            raise NotFound(name)
        self.executor.cancel(name)
        with self.executor.lock:
            idle = name not in self.executor.running and name not in self.executor.transitions
        if idle:  # nothing to stop (it never ran, or failed): forget it now, its metric series too
            self.executor.forget(name)
        self.trigger()

    # --- the loop -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Run the reconcile loop in a background thread (the first pass redeploys what is stored)."""
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="jellybean-reconcile", daemon=True)
        self._thread.start()

    def trigger(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                self.reconcile()
            except Exception:
                log.exception("reconcile pass failed")
            self._wake.wait(self._next_wait())

    def _next_wait(self) -> float:
        due = self.executor.next_retry()
        return self.interval_s if due is None else min(self.interval_s, max(0.05, due - self.clock()))

    def stop(self, *, drain: bool = True) -> None:
        """Stop the loop, then every pipeline (draining in-flight frames; detached replicas are handed
        to the next controller), then Ray if we started it. The desired state is kept: the next
        controller redeploys it."""
        self._stopping.set()
        self._wake.set()
        for name in list(self.executor.transitions):
            self.executor.cancel(name)
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._reconcile_lock:
            self.executor.shutdown(drain=drain, reason="controller shutdown", release=True)
        self._notify()

    def reconcile(self) -> list[Action]:
        """One pass: compare, decide, act. Safe to call at any time, from any thread."""
        started = time.perf_counter()
        try:
            return self._reconcile()
        finally:
            if self.metrics is not None:
                self.metrics.reconcile_seconds.observe(time.perf_counter() - started)
                self._export_states()

    def _export_states(self) -> None:
        phases = {}
        for name, digest in self.store.desired().items():
            phases[name] = self._phase(name, digest)[0]
        self.executor.export_phases(phases)

    def _reconcile(self) -> list[Action]:
        with self._reconcile_lock:
            desired = self.store.desired()
            hold: set[str] = set()
            if self.cluster is not None and desired:
                hold |= self.executor.ensure_cluster(self._topologies(desired), self._needs(desired))
            hold |= self.executor.hold(desired)
            actions = decide(desired, self.executor.running_digests(), hold)
            for action in actions:
                if self._stopping.is_set() and action.kind != "stop":
                    break
                self._execute(action)
        self._notify()
        return actions

    def _execute(self, action: Action) -> None:
        if action.kind == "stop":
            self.executor.stop(action.name, drain=True, reason="deleted")
            if action.name not in self.store.desired():
                self.executor.forget(action.name)  # its metric series leave /metrics
            return
        try:
            revision = self.store.revision(action.name)
        except DamagedRecord:
            return  # shown in its status; it leaves the desired state until applied again
        if revision is None or revision.digest != action.digest:
            self.trigger()  # changed since this pass read it: the next pass sees the new version
            return
        desired = Desired(action.name, revision.digest, revision.generation, revision.bundle(), revision.plan_model())
        self.executor.start(desired, on_started=None if action.kind == "replace" else
                            partial(self._continue_counts, action.name, revision.digest))
        if action.name not in self.store.desired():  # deleted while it started (cancelled, or just in time)
            self.executor.stop(action.name, drain=False, reason="deleted")
            self.executor.forget(action.name)

    def _notify(self) -> None:
        with self._passed:
            self._passes += 1
            self._passed.notify_all()

    def _needs(self, desired: Mapping[str, str]) -> dict[str, Topology]:
        """Each desired workflow's topology, as its stored revision planned with it."""
        needs = {}
        for name in desired:
            try:
                revision = self.store.revision(name)
            except DamagedRecord:
                continue
            if revision is not None:
                needs[name] = revision.bundle().topology
        return needs

    def _topologies(self, desired: Mapping[str, str]) -> list[Topology]:
        """Every stored Topology that reads, and for a desired workflow whose Topology document is
        damaged, the copy its revision planned with (so that its sites still exist in Ray)."""
        topologies = self.store.topologies()
        for record in self.store.workflows():
            if record.name in desired and self.store.document_damage("Topology", record.topology) is not None:
                revision = self.store.revision(record.name)
                if revision is not None:
                    topologies.append(revision.bundle().topology)
        return topologies

    def _continue_counts(self, name: str, digest: str, pipeline: PipelineLike) -> None:
        """A workflow started again after a controller shutdown continues its frame counts."""
        ledger = getattr(pipeline, "carried", None)
        if ledger is None:
            return
        last = self.store.events(name, limit=1)
        if not last:
            return
        event, detail = last[-1].event, last[-1].detail
        if event != "stopped" or detail.get("reason") != "controller shutdown" or detail.get("digest") != digest:
            return  # only the run a shutdown ended continues (its counts were drained and recorded)
        summary = detail.get("summary") or {}
        frames = summary.get("frames") or {}
        accuracy = (summary.get("measured") or {}).get("accuracy")
        ledger.sent += int(frames.get("sent", 0))
        ledger.completed += int(frames.get("completed", 0))
        ledger.failed += int(frames.get("failed", 0))
        if accuracy is not None:  # the run's measured accuracy, carried as if over every completed frame
            ledger.correct += round(accuracy * int(frames.get("completed", 0)) / 100.0)
            ledger.judged += int(frames.get("completed", 0))

    # --- waiting ----------------------------------------------------------------------------------------
    def settled(self, name: str) -> bool:
        """Whether the loop has done what it can for ``name``: it runs its desired version, is stopped
        when deleted, or failed / is blocked (shown in its status)."""
        desired = self.store.desired().get(name)
        executor = self.executor
        with executor.lock:
            deployed = executor.running.get(name)
            if name in executor.transitions:
                return False
            if desired is None:
                return deployed is None
            if deployed is not None and deployed.digest == desired:
                return True
            failure = executor.failures.get(name)
            if failure is not None and failure.digest == desired:
                return True
            return name in executor.blocked or executor.cluster_error is not None

    def running(self, name: str) -> bool:
        """Whether ``name`` runs its desired version (what ``apply --wait`` waits for)."""
        desired = self.store.desired().get(name)
        with self.executor.lock:
            deployed = self.executor.running.get(name)
            return desired is not None and deployed is not None and deployed.digest == desired \
                and name not in self.executor.transitions

    @property
    def looping(self) -> bool:
        """Whether the reconcile loop runs in its thread (:meth:`start`)."""
        return self._thread is not None

    def all_settled(self, names: Iterable[str]) -> bool:
        return all(self.settled(n) for n in names)

    def wait_settled(self, names: Iterable[str], timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) until every name is settled; runs a pass itself when no loop runs."""
        names = list(names)
        if self._thread is None:
            self.reconcile()
            return all(self.settled(n) for n in names)
        self.trigger()
        deadline = time.monotonic() + timeout_s
        with self._passed:
            while not all(self.settled(n) for n in names):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._passed.wait(min(remaining, 0.5))
        return True

    # --- status -----------------------------------------------------------------------------------------
    def _phase(self, name: str, desired_digest: str | None, pipeline_state: str | None = None) -> tuple[Phase, str]:
        damage = self.store.workflow_damage(name) if desired_digest is not None else None
        problem = None if damage is None else (
            "Damaged", f"its stored revision is damaged ({damage}); apply its documents again (`jellybean apply -f ...`)")
        return phase_of(self.executor.observe(name, desired_digest, problem=problem, pipeline_state=pipeline_state))

    def _actual(self, name: str) -> tuple[Deployed | None, dict | None, str]:
        with self.executor.lock:
            deployed = self.executor.running.get(name)
        if deployed is None:
            return None, None, ""
        try:
            return deployed, deployed.pipeline.status(), ""
        except Exception as exc:
            log.debug("status of %s unavailable", name, exc_info=True)
            return deployed, None, f"status unavailable: {message_of(exc)}"

    def _last_failure(self, name: str) -> LastFailure | None:
        with self.executor.lock:
            failure = self.executor.last_failures.get(name)
            current = self.executor.failures.get(name) is failure
        if failure is None:
            return None
        retry = max(0.0, failure.retry_at - self.clock()) if current else None
        return LastFailure(reason=failure.reason, message=failure.message, at=failure.at, attempts=failure.attempts,
                           retry_in_s=None if retry is None else round(retry, 1))

    def status_model(self, name: str, *, events: int = 10) -> WorkflowStatus:
        """The workflow's :class:`WorkflowStatus` (plan beside actual, frames, measured figures, the
        last failure, recent events)."""
        from jellybean.runtime.status import EventOut

        record = self.store.workflow(name)
        deployed, actual, problem = self._actual(name)
        if record is None and deployed is None:
            raise NotFound(name)
        try:
            revision = self.store.revision(name) if record else None
        except DamagedRecord:
            revision = None
        plan = revision.plan if revision else None
        phase, message = self._phase(name, record.digest if record else None, (actual or {}).get("state"))
        if problem:
            message = f"{message}; {problem}" if message else problem
        cost = (plan or {}).get("cost") or {}
        frames = (actual or {}).get("frames")
        return WorkflowStatus(
            name=name, phase=phase, message=message,
            generation=record.generation if record else None, digest=record.digest if record else None,
            running_generation=deployed.generation if deployed else None,
            running_digest=deployed.digest if deployed else None,
            zoo=record.zoo if record else None, topology=record.topology if record else None,
            applied_at=record.updated_at if record else None, started_at=deployed.started_at if deployed else None,
            plan=None if plan is None else PlanSummary(
                strategy=plan.get("strategy"), sharing=plan.get("sharing"), cost_per_hour=cost.get("total_per_hour"),
                accuracy=plan.get("accuracy"), accuracy_target=plan.get("accuracy_target"),
                latency_ms_p90=plan.get("latency_ms_p90"), models=plan.get("models", {}), sinks=plan.get("sinks", [])),
            stages=compare_stages(plan, actual), frames=frames,
            endpoints=(actual or {}).get("endpoints", []), outputs=(actual or {}).get("outputs", []),
            accuracy_measured=(actual or {}).get("accuracy_measured"), sinks=(actual or {}).get("sinks", []),
            throughput_per_s=(actual or {}).get("throughput_per_s"),
            frames_lost=None if not frames else int(frames.get("lost", 0)),
            last_failure=self._last_failure(name),
            events=[EventOut(**e.as_dict()) for e in self.store.events(name, limit=events)] if events else [])

    def workflow_status(self, name: str, *, events: int = 10) -> dict:
        return self.status_model(name, events=events).model_dump(mode="json")

    def list_status(self) -> list[dict]:
        records = {r.name: r for r in self.store.workflows()}
        with self.executor.lock:
            names = sorted(set(records) | set(self.executor.running))
        out = []
        for name in names:
            try:
                status = self.status_model(name, events=0)
            except NotFound:
                continue
            out.append(WorkflowSummary(
                name=name, phase=status.phase, message=status.message, generation=status.generation,
                running_generation=status.running_generation,
                cost_per_hour=status.plan.cost_per_hour if status.plan else None,
                accuracy=status.plan.accuracy if status.plan else None,
                replicas_alive=sum(r.replicas_alive for r in status.stages),
                replicas_planned=sum(r.replicas_planned for r in status.stages), applied_at=status.applied_at,
                accuracy_measured=status.accuracy_measured, throughput_per_s=status.throughput_per_s,
                frames_lost=status.frames_lost, last_failure=status.last_failure).model_dump(mode="json"))
        return out

    def describe(self) -> dict:
        error = self.executor.cluster_error.message if self.executor.cluster_error else None
        ray = None
        if self.cluster is not None:
            try:
                ray = self.cluster.describe()
            except Exception as exc:  # noqa: BLE001
                ray = {"error": message_of(exc)}
            if error:
                ray = {**(ray or {}), "error": error}
        return {"state_dir": str(self.store.state_dir), "workflows": len(self.store.desired()),
                "running": len(self.executor.running), "ray": ray}
