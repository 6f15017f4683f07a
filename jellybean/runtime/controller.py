"""The controller: stored documents are the desired state, running pipelines the actual one, and a
reconcile loop moves the second towards the first.

Decisions are pure functions, tested on their own:

- :func:`decide` ``(desired, running, hold) -> [Action]``: desired and running map a workflow's name
  to the digest of its documents; a workflow missing from ``running`` is started, one running another
  digest is replaced (the new pipeline is started, then the old one stopped), one no longer desired is
  stopped; names in ``hold`` (backing off after a failure, or blocked on missing Ray resources) are
  left as they are. Applying the same decisions twice does nothing: the loop is idempotent.
- :func:`decide_cluster` ``(offered, required, embedded)``: whether Ray must be started, or restarted
  with more site resources.

Effects are thin: :class:`Controller` reads the store, calls those functions and runs the actions
on pipelines made by an injected factory (the data plane's ``Pipeline`` by default; tests inject a
fake). Restart-safe: the in-memory view of what runs starts empty, so a new controller on the same
state directory starts every stored workflow again.

Apply is declarative. Documents are validated (every issue, located), each Workflow is resolved
against the documents of the same request first, then against the stored ones, and its digest is the
digest of the canonical content of its workflow, zoo and topology (:mod:`jellybean.runtime.state`).
An unchanged digest changes nothing (nothing is written); a changed one is re-planned (synchronously,
so an infeasible plan is refused with its explanation and the running version stays) and stored as a
new revision; changing a zoo or a topology re-plans every stored workflow that uses it.

Ray. On an embedded Ray (``ray.init``) every site of every stored topology is a custom resource
``site:<name>`` of the one node (:func:`jellybean.runtime.deployment.site_resources`), with
``num_cpus = os.cpu_count()``. Ray's resources are fixed at ``ray.init``: when a newly applied
topology adds sites (or needs more of a site), the controller stops every pipeline, restarts Ray
with the union of all stored topologies' resources and redeploys (so a rollover across a Ray
restart is stop-then-start, not start-then-stop). With ``--address`` the controller joins an existing
cluster whose nodes advertise their ``site:<name>`` resources; a workflow whose sites no node
advertises is held as ``Blocked`` (with the missing names) until they appear. Ray's own token
authentication stays on (Ray's default for new local clusters); an embedded Ray's token file is made
readable by its owner only, and ``jellybean up`` keeps an embedded Ray off the network
(:mod:`jellybean.runtime.localray`).
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from jellybean.runtime.state import (
    DamagedRecord, NewDocument, NewEvent, NewRevision, StateStore, StoredDocument, bundle_bodies, bundle_digest,
    digest_of, document_body,
)
from jellybean.spec.errors import Issue, SpecError

if TYPE_CHECKING:
    from jellybean.optimizer.plan import Plan
    from jellybean.runtime.metrics import Metrics
    from jellybean.spec.bundle import Bundle
    from jellybean.spec.loader import LoadedDocument
    from jellybean.spec.topology import Topology

log = logging.getLogger("jellybean.controller")

MAX_MESSAGE = 2000


class PipelineLike(Protocol):
    """What the controller needs of a deployed workflow (``jellybean.runtime.dataplane.Pipeline``)."""

    def start(self) -> None: ...

    def stop(self, *, drain: bool = True) -> Any: ...

    def status(self) -> dict: ...


PipelineFactory = Callable[["Bundle", "Plan"], PipelineLike]
Planner = Callable[["Bundle"], "Plan"]


class NotServable(Exception):
    """The plan is valid but cannot be served as written (no loader, no dataset): said in words."""


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
# pure decisions


@dataclass(frozen=True)
class Action:
    kind: Literal["start", "replace", "stop"]
    name: str
    digest: str | None  # what to run (None when stopping)
    old_digest: str | None = None  # what runs now (replace, stop)


def decide(desired: Mapping[str, str], running: Mapping[str, str],
           hold: Iterable[str] = frozenset()) -> list[Action]:
    """The actions that take ``running`` to ``desired``: stops first (freeing resources), then
    replacements and starts, each in name order. ``hold`` names desired workflows to leave alone."""
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


def merge_resources(parts: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """The union of several resource maps (a site named by two topologies gets the larger amount)."""
    out: dict[str, float] = {}
    for part in parts:
        for key, amount in part.items():
            out[key] = max(out.get(key, 0.0), float(amount))
    return dict(sorted(out.items()))


@dataclass(frozen=True)
class ClusterDecision:
    action: Literal["none", "start", "restart"]
    resources: dict[str, float] = field(default_factory=dict)  # what to start an embedded Ray with
    missing: dict[str, float] = field(default_factory=dict)  # required but not offered


def decide_cluster(offered: Mapping[str, float] | None, required: Mapping[str, float], *,
                   embedded: bool) -> ClusterDecision:
    """Start Ray if it is not running; restart an embedded one whose resources fall short (with the
    union, so no site is ever dropped); for a cluster we joined, report what it lacks."""
    if offered is None:
        return ClusterDecision("start", dict(required) if embedded else {})
    missing = {k: v for k, v in required.items()
               if k not in offered or (embedded and offered[k] + 1e-9 < v)}
    if embedded and missing:
        return ClusterDecision("restart", merge_resources([offered, required]), missing)
    return ClusterDecision("none", {}, missing)


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


def backoff_s(attempts: int, initial: float, maximum: float) -> float:
    return min(maximum, initial * 2 ** max(0, attempts - 1))


# --------------------------------------------------------------------------------------------------
# Ray


class Cluster(Protocol):
    embedded: bool

    def offered(self) -> dict[str, float] | None: ...

    def start(self, resources: Mapping[str, float]) -> None: ...

    def restart(self, resources: Mapping[str, float]) -> None: ...

    def shutdown(self) -> None: ...

    def describe(self) -> dict: ...


class RayCluster:
    """Ray, embedded (``address=None``: a local single-node Ray started here) or joined (``address``)."""

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None,
                 namespace: str | None = "jellybean") -> None:
        self.address = address
        self.embedded = address is None
        self.num_cpus = num_cpus or os.cpu_count() or 1
        self.namespace = namespace
        self._resources: dict[str, float] | None = None
        self._connected = False

    def offered(self) -> dict[str, float] | None:
        if not self._connected:
            return None
        if self.embedded:
            return dict(self._resources or {})
        import ray

        return {k: v for k, v in ray.cluster_resources().items() if k.startswith("site:")}

    def start(self, resources: Mapping[str, float]) -> None:
        import ray

        if self.embedded:
            # address="local" starts a new local Ray even where RAY_ADDRESS is set. Token
            # authentication stays on (Ray's default for new local clusters), with a token file only
            # its owner can read (jellybean.runtime.localray).
            from jellybean.runtime.localray import private_ray_token

            private_ray_token()
            ray.init(address="local", num_cpus=self.num_cpus, resources=dict(resources), include_dashboard=False,
                     log_to_driver=False, namespace=self.namespace)
            self._resources = dict(resources)
        else:
            ray.init(address=self.address, log_to_driver=False, namespace=self.namespace)
        self._connected = True

    def restart(self, resources: Mapping[str, float]) -> None:
        self.shutdown()
        self.start(resources)

    def shutdown(self) -> None:
        if self._connected:
            import ray

            ray.shutdown()
            self._connected = False

    def describe(self) -> dict:
        return {"mode": "embedded" if self.embedded else "external", "address": self.address,
                "connected": self._connected, "num_cpus": self.num_cpus if self.embedded else None,
                "resources": self.offered() if self._connected else None}


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
class _Deployed:
    digest: str
    generation: int
    pipeline: PipelineLike
    started_at: float


@dataclass
class _Failure:
    digest: str
    message: str
    attempts: int
    retry_at: float  # monotonic


@dataclass
class ApplyResult:
    documents: list[dict]  # {kind, name, action, digest, file, line}
    workflows: list[dict]  # {name, action, generation, digest, cost_per_hour, accuracy, models, reason}
    changed: bool


#: Terminal colour and cursor sequences (Ray's exceptions carry them): never part of a message.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def _message(exc: BaseException) -> str:
    text = _ANSI.sub("", str(exc)) or type(exc).__name__
    if not isinstance(exc, (NotServable, SpecError)) and type(exc).__name__ != "ServingError":
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "..."


def _summary_dict(summary: Any) -> dict:
    if summary is None:
        return {}
    if hasattr(summary, "model_dump"):
        summary = summary.model_dump(mode="json")
    if not isinstance(summary, dict):
        return {}
    return {k: v for k, v in summary.items() if k in ("duration_s", "frames", "measured", "failures")}


class Controller:
    """Desired state in a :class:`StateStore`, actual state in pipelines, a loop in between."""

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
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.clock = clock
        self._running: dict[str, _Deployed] = {}
        self._failures: dict[str, _Failure] = {}
        self._blocked: dict[str, str] = {}
        self._cluster_error: _Failure | None = None
        self._transition: dict[str, str] = {}
        self._state_lock = threading.RLock()  # the in-memory view (read by status)
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
            plan = self.planner(bundle)
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
        """Remove a workflow from the desired state; the loop stops its pipeline."""
        if not self.store.delete_workflow(name):
            raise NotFound(name)
        with self._state_lock:
            self._failures.pop(name, None)
            self._blocked.pop(name, None)
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
            except Exception:  # noqa: BLE001 - the loop must survive; the next pass retries
                log.exception("reconcile pass failed")
            self._wake.wait(self._next_wait())

    def _next_wait(self) -> float:
        now = self.clock()
        wait = self.interval_s
        with self._state_lock:
            pending = [f.retry_at for f in self._failures.values()]
            if self._cluster_error is not None:
                pending.append(self._cluster_error.retry_at)
        for at in pending:
            wait = min(wait, max(0.05, at - now))
        return wait

    def stop(self, *, drain: bool = True) -> None:
        """Stop the loop, then every pipeline (draining in-flight frames), then Ray if we started it.
        The desired state is kept: the next controller redeploys it."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._reconcile_lock:
            for name in sorted(self._running):
                self._stop_pipeline(name, drain=drain, reason="controller shutdown", release=True)
            if self.cluster is not None:
                try:
                    self.cluster.shutdown()
                except Exception:  # noqa: BLE001
                    log.exception("Ray shutdown failed")
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
        """Workflows by state, and a zero error counter for each (so a quiet workflow has a series)."""
        desired = self.store.desired()
        with self._state_lock:
            running = set(self._running)
            failed, blocked = set(self._failures), set(self._blocked)
        counts = {"running": 0, "failed": 0, "blocked": 0, "pending": 0}
        for name in desired:
            self.metrics.reconcile_errors.labels(name)
            state = ("failed" if name in failed else "blocked" if name in blocked
                     else "running" if name in running else "pending")
            counts[state] += 1
        for state, n in counts.items():
            self.metrics.workflows.labels(state).set(n)

    def _reconcile(self) -> list[Action]:
        with self._reconcile_lock:
            desired = self.store.desired()
            hold = self._ensure_cluster(desired) if self.cluster is not None and desired else set()
            now = self.clock()
            with self._state_lock:
                for name, failure in list(self._failures.items()):
                    if desired.get(name) != failure.digest:
                        del self._failures[name]  # a new version (or deleted): try it at once
                    elif now < failure.retry_at:
                        hold.add(name)
                running = {name: d.digest for name, d in self._running.items()}
            actions = decide(desired, running, hold)
            for action in actions:
                if self._stopping.is_set() and action.kind != "stop":
                    break
                self._execute(action)
        self._notify()
        return actions

    def _notify(self) -> None:
        with self._passed:
            self._passes += 1
            self._passed.notify_all()

    def _ensure_cluster(self, desired: Mapping[str, str]) -> set[str]:
        """Start (or grow) Ray for the stored topologies; the names to hold this pass."""
        assert self.cluster is not None
        now = self.clock()
        if self._cluster_error is not None and now < self._cluster_error.retry_at:
            return set(desired)
        try:
            required = merge_resources(self.site_resources(t) for t in self._topologies(desired))
            decision = decide_cluster(self.cluster.offered(), required, embedded=self.cluster.embedded)
            if decision.action == "start":
                self.cluster.start(decision.resources)
                self.store.add_event(None, "ray-started", self._cluster_detail(decision.resources))
            elif decision.action == "restart":
                names = sorted(self._running)
                for name in names:
                    self._stop_pipeline(name, drain=True, reason="Ray restarts to add site resources")
                self.cluster.restart(decision.resources)
                self.store.add_event(None, "ray-restarted", {**self._cluster_detail(decision.resources),
                                                             "added": sorted(decision.missing), "redeploying": names})
            self._cluster_error = None
        except Exception as exc:  # noqa: BLE001 - reported in status, retried with backoff
            attempts = self._cluster_error.attempts + 1 if self._cluster_error else 1
            self._cluster_error = _Failure("", _message(exc), attempts,
                                           now + backoff_s(attempts, self.retry_initial_s, self.retry_max_s))
            if self.metrics is not None:
                self.metrics.reconcile_errors.labels("").inc()  # the cluster's, no workflow's
            self.store.add_event(None, "ray-failed", {"message": self._cluster_error.message, "attempts": attempts})
            log.warning("Ray: %s", self._cluster_error.message)
            return set(desired)
        blocked: dict[str, str] = {}
        if not self.cluster.embedded:
            offered = self.cluster.offered() or {}
            for name in desired:
                revision = self.store.revision(name)
                if revision is None:
                    continue
                needs = self.site_resources(revision.bundle().topology)
                missing = sorted(k for k in needs if k not in offered)
                if missing:
                    blocked[name] = (f"no node of the Ray cluster advertises {', '.join(missing)}: start the site's "
                                     f"node with `ray start --address ... --resources '{{\"{missing[0]}\": 1000}}'`")
        with self._state_lock:
            self._blocked = blocked
        return set(blocked)

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

    def _cluster_detail(self, resources: Mapping[str, float]) -> dict:
        detail = {"mode": "embedded" if self.cluster and self.cluster.embedded else "external",
                  "sites": sorted(k.split(":", 1)[-1] for k in resources)}
        return detail

    def _execute(self, action: Action) -> None:
        if action.kind == "stop":
            self._stop_pipeline(action.name, drain=True, reason="deleted")
            return
        try:
            revision = self.store.revision(action.name)
        except DamagedRecord:
            return  # shown in its status; it leaves the desired state until applied again
        if revision is None or revision.digest != action.digest:
            self.trigger()  # changed since this pass read it: the next pass sees the new version
            return
        with self._state_lock:
            self._transition[action.name] = "Starting" if action.kind == "start" else "Updating"
        try:
            pipeline = None
            try:
                pipeline = self.pipeline_factory(revision.bundle(), revision.plan_model())
                pipeline.start()
            except Exception as exc:  # noqa: BLE001 - recorded, shown in status, retried with backoff
                if pipeline is not None:
                    try:
                        pipeline.stop(drain=False)
                    except Exception:  # noqa: BLE001
                        log.debug("cleanup of a failed start failed", exc_info=True)
                self._record_failure(action.name, revision.digest, revision.generation, exc)
                return
            if action.kind == "start":
                self._continue_counts(action.name, revision.digest, pipeline)
            deployed = _Deployed(revision.digest, revision.generation, pipeline, time.time())
            with self._state_lock:
                old = self._running.get(action.name)
                self._running[action.name] = deployed
                self._failures.pop(action.name, None)
            if action.kind == "start" or old is None:
                self.store.add_event(action.name, "started", {"generation": revision.generation,
                                                              "digest": revision.digest})
                log.info("started %s (generation %d)", action.name, revision.generation)
                return
            # Rollover: the new pipeline runs; now drain and stop the old one.
            summary: dict = {}
            try:
                summary = _summary_dict(old.pipeline.stop(drain=True))
            except Exception as exc:  # noqa: BLE001
                summary = {"error": _message(exc)}
            self.store.add_event(action.name, "replaced", {"from_generation": old.generation,
                                                           "generation": revision.generation,
                                                           "digest": revision.digest, "old": summary})
            log.info("replaced %s: generation %d -> %d", action.name, old.generation, revision.generation)
        finally:
            with self._state_lock:
                self._transition.pop(action.name, None)

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

    def _record_failure(self, name: str, digest: str, generation: int, exc: BaseException) -> None:
        now = self.clock()
        with self._state_lock:
            previous = self._failures.get(name)
            attempts = previous.attempts + 1 if previous and previous.digest == digest else 1
            delay = backoff_s(attempts, self.retry_initial_s, self.retry_max_s)
            failure = _Failure(digest, _message(exc), attempts, now + delay)
            self._failures[name] = failure
        if self.metrics is not None:
            self.metrics.reconcile_errors.labels(name).inc()
        self.store.add_event(name, "failed", {"generation": generation, "digest": digest, "message": failure.message,
                                              "attempts": attempts, "retry_in_s": round(delay, 1)})
        log.warning("starting %s failed (attempt %d, retry in %.0f s): %s", name, attempts, delay, failure.message)

    def _stop_pipeline(self, name: str, *, drain: bool, reason: str, release: bool = False) -> None:
        """Stop a workflow's pipeline; with ``release`` (controller shutdown) a pipeline that can hand
        its replicas to the next controller does so. Its frame counts go into the event, so the next
        controller continues them."""
        with self._state_lock:
            deployed = self._running.get(name)
            if deployed is None:
                return
            self._transition[name] = "Terminating"
        try:
            pipeline = deployed.pipeline
            ending = pipeline.release() if release and hasattr(pipeline, "release") else pipeline.stop(drain=drain)
            summary = _summary_dict(ending)
        except Exception as exc:  # noqa: BLE001 - the pipeline is gone from our view either way
            summary = {"error": _message(exc)}
        with self._state_lock:
            if self._running.get(name) is deployed:
                del self._running[name]
            self._transition.pop(name, None)
        self.store.add_event(name, "stopped", {"generation": deployed.generation, "digest": deployed.digest,
                                               "reason": reason, "summary": summary})
        log.info("stopped %s (generation %d): %s", name, deployed.generation, reason)

    # --- waiting ----------------------------------------------------------------------------------------
    def settled(self, name: str) -> bool:
        """Whether the loop has done what it can for ``name``: it runs its desired version, is stopped
        when deleted, or failed / is blocked (shown in its status)."""
        desired = self.store.desired().get(name)
        with self._state_lock:
            deployed = self._running.get(name)
            if name in self._transition:
                return False
            if desired is None:
                return deployed is None
            if deployed is not None and deployed.digest == desired:
                return True
            failure = self._failures.get(name)
            if failure is not None and failure.digest == desired:
                return True
            return name in self._blocked or self._cluster_error is not None

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
    def _phase(self, name: str, desired_digest: str | None) -> tuple[str, str]:
        with self._state_lock:
            deployed = self._running.get(name)
            transition = self._transition.get(name)
            failure = self._failures.get(name)
            blocked = self._blocked.get(name)
            cluster_error = self._cluster_error
        if desired_digest is None:
            return "Terminating", "deleted; stopping the pipeline"
        damage = self.store.workflow_damage(name)
        if damage is not None:
            return "Failed", (f"its stored revision is damaged ({damage}); apply its documents again "
                              "(`jellybean apply -f ...`)")
        if transition:
            return transition, ""
        if deployed is not None and deployed.digest == desired_digest:
            return "Running", ""
        if failure is not None and failure.digest == desired_digest:
            retry = max(0.0, failure.retry_at - self.clock())
            note = f" (the previous generation {deployed.generation} keeps running)" if deployed else ""
            return "Failed", f"{failure.message}; attempt {failure.attempts}, retrying in {retry:.0f} s{note}"
        if blocked:
            return "Blocked", blocked
        if cluster_error is not None:
            return "Blocked", f"Ray: {cluster_error.message}"
        if deployed is not None:
            return "Updating", f"generation {deployed.generation} runs; the new one starts next"
        return "Pending", ""

    def _actual(self, name: str) -> tuple[_Deployed | None, dict | None, str]:
        with self._state_lock:
            deployed = self._running.get(name)
        if deployed is None:
            return None, None, ""
        try:
            return deployed, deployed.pipeline.status(), ""
        except Exception as exc:  # noqa: BLE001
            log.debug("status of %s unavailable", name, exc_info=True)
            return deployed, None, f"status unavailable: {_message(exc)}"

    def workflow_status(self, name: str, *, events: int = 10) -> dict:
        record = self.store.workflow(name)
        deployed, actual, problem = self._actual(name)
        if record is None and deployed is None:
            raise NotFound(name)
        try:
            revision = self.store.revision(name) if record else None
        except DamagedRecord:
            revision = None
        plan = revision.plan if revision else None
        phase, message = self._phase(name, record.digest if record else None)
        if problem:
            message = f"{message}; {problem}" if message else problem
        cost = (plan or {}).get("cost") or {}
        return {
            "name": name,
            "phase": phase,
            "message": message,
            "generation": record.generation if record else None,
            "digest": record.digest if record else None,
            "running_generation": deployed.generation if deployed else None,
            "running_digest": deployed.digest if deployed else None,
            "zoo": record.zoo if record else None,
            "topology": record.topology if record else None,
            "applied_at": record.updated_at if record else None,
            "started_at": deployed.started_at if deployed else None,
            "plan": None if plan is None else {
                "strategy": plan.get("strategy"), "sharing": plan.get("sharing"),
                "cost_per_hour": cost.get("total_per_hour"), "accuracy": plan.get("accuracy"),
                "accuracy_target": plan.get("accuracy_target"), "latency_ms_p90": plan.get("latency_ms_p90"),
                "models": plan.get("models", {}), "sinks": plan.get("sinks", []),
            },
            "stages": compare_stages(plan, actual),
            "frames": (actual or {}).get("frames"),
            "endpoints": (actual or {}).get("endpoints", []),
            "outputs": (actual or {}).get("outputs", []),
            "accuracy_measured": (actual or {}).get("accuracy_measured"),
            "sinks": (actual or {}).get("sinks", []),
            "throughput_per_s": (actual or {}).get("throughput_per_s"),
            "events": [e.as_dict() for e in self.store.events(name, limit=events)],
        }

    def list_status(self) -> list[dict]:
        records = {r.name: r for r in self.store.workflows()}
        with self._state_lock:
            names = sorted(set(records) | set(self._running))
        out = []
        for name in names:
            try:
                status = self.workflow_status(name, events=0)
            except NotFound:
                continue
            alive = sum(r["replicas_alive"] for r in status["stages"])
            planned = sum(r["replicas_planned"] for r in status["stages"])
            out.append({"name": name, "phase": status["phase"], "message": status["message"],
                        "generation": status["generation"], "running_generation": status["running_generation"],
                        "cost_per_hour": (status["plan"] or {}).get("cost_per_hour"),
                        "accuracy": (status["plan"] or {}).get("accuracy"),
                        "replicas_alive": alive, "replicas_planned": planned, "applied_at": status["applied_at"]})
        return out

    def describe(self) -> dict:
        with self._state_lock:
            error = self._cluster_error.message if self._cluster_error else None
        ray = None
        if self.cluster is not None:
            try:
                ray = self.cluster.describe()
            except Exception as exc:  # noqa: BLE001
                ray = {"error": _message(exc)}
            if error:
                ray = {**(ray or {}), "error": error}
        return {"state_dir": str(self.store.state_dir), "workflows": len(self.store.desired()),
                "running": len(self._running), "ray": ray}

