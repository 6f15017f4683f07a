"""The in-cluster operator: InferenceWorkflow custom resources are the desired state, pipelines on Ray
the actual one. It is "desired state from the watch cache, plus status on the custom resources" on the
reconcile core shared with the controller (:mod:`jellybean.runtime.reconcile`: decisions, the
executor of effects, one Phase), with kopf for the Kubernetes machinery.

kopf (:func:`registry`, :func:`run`). kopf lists and watches (relisting after a ``410 Gone`` or a
dropped connection), keeps the finalizer ``jellybean.io/teardown`` on every InferenceWorkflow (added
on first sight, removed once its ``on.delete`` handler has stopped the pipeline; a failure there is
retried with kopf's backoff), posts Kubernetes Events, and coordinates replicas through peering
(``--peering NAME``: only the one with the highest priority acts; without it the operator runs
standalone). Watch events of every kind update the watch cache (:meth:`Operator.observe`) and wake
the workflows they concern: the workflow itself, those that use a changed ModelZoo or Topology, and,
for a Node, those whose topology is discovered from the Nodes. Each InferenceWorkflow has a kopf
daemon: a loop that reconciles it when woken, when a retry is due and every ``resync_s`` (pipeline
health), and that cancels a start under way when the resource is deleted.

Reconciling one workflow (:meth:`Operator.reconcile`):

1. resolve: the resource becomes the spec document it holds (:func:`spec_document`) and is validated
   by the same pydantic models as files are; its ``spec.zoo``/``spec.topology`` name a ModelZoo and a
   Topology of the namespace. A topology that is no Topology resource is discovered from the Nodes
   (:mod:`jellybean.k8s.discovery`). Problems become conditions (``InvalidSpec``, ``ZooNotFound``,
   ``DiscoveryFailed``...) with the located message, never a crash.
2. plan: a version (the digest of the resolved documents, :func:`inputs_digest`) not planned yet is
   planned against what the other workflows running leave of its topology
   (:func:`jellybean.optimizer.capacity.capacity_left`). An infeasible plan leaves the previous
   pipeline serving; a planner error is retried with backoff.
3. act: :func:`jellybean.runtime.reconcile.decide` on this workflow, run by the core's
   :class:`~jellybean.runtime.reconcile.Executor` (start; a rollout new-first when there is room,
   stop-first otherwise; failures retried with backoff).
4. report: :func:`desired_status` (pure) renders the workflow's
   :class:`~jellybean.runtime.status.WorkflowStatus` (the model ``jellybean status`` and the API show)
   as the CRD's status: phase and message, plan, measured accuracy, throughput, lost frames, the last
   failure, and the conditions ``Planned``, ``Deployed``, ``Degraded``. Only the difference from the
   stored status is sent, as a merge patch of the status subresource (:func:`merge_patch`);
   ``lastTransitionTime`` changes only when a condition's status flips.

Status patches and reads go through :class:`KubeApi` (the ``kubernetes`` client); kopf connects with
the same configuration (:meth:`ClientKubeApi.connection`). The tests run both against a small API
server over HTTP that replays recorded objects (tests/k8s/kubeserver.py): no real API server runs in
CI.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import datetime, UTC
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from jellybean.k8s.discovery import Discovery, discover_topology
from jellybean.k8s.names import API_VERSION, FINALIZER, GROUP, KINDS, VERSION
from jellybean.runtime.controller import default_pipeline_factory, default_servability_check
from jellybean.runtime.reconcile import (
    DEPLOY_FAILURES, PLAN_FAILURES, WAITING, Cluster, Desired, Executor, NotServable, Phase, PipelineFactory,
    backoff_s, compare_stages, decide, message_of, phase_of,
)
from jellybean.runtime.state import bundle_bodies, bundle_digest
from jellybean.runtime.status import LastFailure, PlanSummary, WorkflowStatus
from jellybean.spec.errors import Issue, SpecError
from jellybean.spec.loader import LoadedDocument, SourceMap, parse_document

if TYPE_CHECKING:
    from pathlib import Path

    from jellybean.optimizer.plan import Plan
    from jellybean.runtime.metrics import Metrics
    from jellybean.spec.bundle import Bundle

log = logging.getLogger("jellybean.operator")

WORKFLOW = "InferenceWorkflow"
NODE = "Node"
#: Every kind the operator watches; the workflows first.
WATCHED = (WORKFLOW, "ModelZoo", "Topology", NODE)
#: The name a discovered topology gets when the workflow names none.
DISCOVERED_TOPOLOGY = "discovered"
#: Annotations that tools add to every object they touch: not part of the document (kopf's own too).
TOOL_ANNOTATIONS = ("kubectl.kubernetes.io/", "meta.helm.sh/", "kopf.zalando.org/", "kopf.jellybean.io/")
#: Where kopf keeps its handlers' progress and last-handled state on the resource (annotations).
KOPF_PREFIX = "kopf.jellybean.io"
MAX_MESSAGE = 2000
#: Placements listed in ``status.plan`` (a city-scale plan has thousands; the status must stay small).
MAX_PLACEMENTS = 50
#: Workflows reconciled at once (each start or plan holds a thread while it runs).
MAX_THREADS = 64

Planner = Callable[["Bundle"], "Plan"]


class KubeApi(Protocol):
    """What the operator asks of the API server itself (kopf does the watching and the finalizers).
    Objects are plain dicts shaped as the server sends them."""

    def get(self, kind: str, namespace: str, name: str) -> dict | None: ...

    def patch_status(self, kind: str, namespace: str, name: str, status: Mapping) -> dict | None:
        """Merge-patch ``.status`` through the status subresource; the updated object (None: it is gone)."""


def plural(kind: str) -> str:
    return KINDS[kind][0]


class ClusterConfigError(Exception):
    """No usable cluster configuration (not in a pod, or a kubeconfig that does not load)."""


SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def pod_namespace() -> str | None:
    """The namespace the operator's pod runs in ($POD_NAMESPACE, else its service account's), or None."""
    import os

    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE, encoding="utf-8") as handle:
            return handle.read().strip() or None
    except OSError:
        return None


class ClientKubeApi:
    """:class:`KubeApi` on the ``kubernetes`` client (``CustomObjectsApi``)."""

    def __init__(self, api_client: Any = None) -> None:
        from kubernetes import client

        self.client = api_client if api_client is not None else client.ApiClient()
        self.custom = client.CustomObjectsApi(self.client)

    @classmethod
    def connect(cls, kubeconfig: str | None = None) -> ClientKubeApi:
        """The in-cluster configuration (the pod's service account), or ``kubeconfig`` when given."""
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        configuration = client.Configuration()
        try:
            if kubeconfig:
                config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
            else:
                config.load_incluster_config(client_configuration=configuration)
        except (ConfigException, OSError, ValueError, TypeError) as exc:
            if kubeconfig:
                raise ClusterConfigError(f"cannot load the kubeconfig {kubeconfig}: {exc}") from None
            raise ClusterConfigError(f"no Kubernetes cluster config: not running in a pod ({exc}); pass --kubeconfig "
                                     "PATH to run outside the cluster") from None
        return cls(client.ApiClient(configuration))

    def connection(self) -> Any:
        """The same server, credentials and TLS settings for kopf (a ``kopf.ConnectionInfo``)."""
        import kopf

        conf = self.client.configuration
        key = (conf.api_key or {}).get("authorization") or (conf.api_key or {}).get("BearerToken") or ""
        prefix = (conf.api_key_prefix or {}).get("authorization", "")
        scheme, _, token = f"{prefix} {key}".strip().partition(" ")
        if not token:
            scheme, token = ("Bearer", scheme) if scheme else (None, None)
        return kopf.ConnectionInfo(
            server=conf.host, ca_path=conf.ssl_ca_cert or None, insecure=not conf.verify_ssl,
            scheme=scheme.capitalize() if scheme else None, token=token or None,
            certificate_path=conf.cert_file or None, private_key_path=conf.key_file or None,
            username=conf.username or None, password=conf.password or None)

    def nodes_refused(self) -> str | None:
        """Why the Nodes cannot be listed (RBAC, most likely), or None when they can: asked when
        discovery finds no Node at all, so that the workflow's condition says which it is."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            client.CoreV1Api(self.client).list_node(limit=1)
        except ApiException as exc:
            return f"({exc.status}) {exc.reason}"
        return None

    def get(self, kind: str, namespace: str, name: str) -> dict | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural(kind), name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch_status(self, kind: str, namespace: str, name: str, status: Mapping) -> dict | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, plural(kind), name, {"status": dict(status)},
                _content_type="application/merge-patch+json")
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise


# --------------------------------------------------------------------------------------------------
# pure parts


def name_of(obj: Mapping) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def generation_of(obj: Mapping) -> int:
    return int((obj.get("metadata") or {}).get("generation") or 0)


def reference(obj: Mapping, field: str) -> str | None:
    """``spec.zoo`` / ``spec.topology`` as written (None when absent, or the spec is no mapping)."""
    spec = obj.get("spec")
    value = spec.get(field) if isinstance(spec, Mapping) else None
    return value if isinstance(value, str) else None


def utc_now() -> str:
    """Now, as Kubernetes writes times (RFC 3339, seconds, UTC)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def clip(text: str, limit: int = MAX_MESSAGE) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def spec_document(kind: str, obj: Mapping) -> dict:
    """The spec document a custom resource holds: what the API server adds (uid, resourceVersion,
    generation, managedFields, status...) and tools' annotations are left out; ``kind`` stays as the
    resource's (the loader reads ``InferenceWorkflow`` as a Workflow)."""
    meta = obj.get("metadata") or {}
    metadata: dict = {"name": meta.get("name")}
    if meta.get("labels"):
        metadata["labels"] = dict(meta["labels"])
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if not k.startswith(TOOL_ANNOTATIONS)}
    if annotations:
        metadata["annotations"] = annotations
    return {"apiVersion": obj.get("apiVersion", API_VERSION), "kind": kind, "metadata": metadata,
            "spec": obj.get("spec")}


def _unlined(issues: Iterable[Issue]) -> list[Issue]:
    """A resource has no lines (the user's file is not ours to see): drop the loader's line 1."""
    return [Issue(i.file, None, i.path, i.message, i.hint) for i in issues]


def load_resource(kind: str, obj: Mapping) -> LoadedDocument:
    """Validate a custom resource with the spec's models; :class:`SpecError` issues are located as
    ``InferenceWorkflow/NAME: spec.field: message``."""
    try:
        return parse_document(spec_document(kind, obj), SourceMap(f"{kind}/{name_of(obj)}"), 0)
    except SpecError as exc:
        raise SpecError(_unlined(exc.issues)) from None


def inputs_digest(bundle: Bundle) -> str:
    """The digest of what a plan depends on: the three documents' names and specs (labels and
    annotations do not re-plan), by the one digest function (:func:`jellybean.runtime.state.bundle_digest`)."""
    return bundle_digest(bundle_bodies(bundle, metadata=False))


def _round(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(float(value), digits)


def plan_summary(plan: Plan, generation: int, topology: Mapping, planned_at: str) -> dict:
    """What ``status.plan`` shows of a plan (the whole plan is ``jellybean plan --format json``)."""
    cost = plan.cost
    summary = {
        "generation": generation,
        "plannedAt": planned_at,
        "strategy": plan.strategy,
        "sharing": plan.sharing,
        "models": dict(plan.models),
        "costPerHour": None if cost is None else {
            "compute": _round(cost.compute_per_hour), "network": _round(cost.network_per_hour),
            "total": _round(cost.total_per_hour)},
        "accuracy": {"predicted": _round(plan.accuracy, 4), "target": plan.accuracy_target},
        "latencyMs": {"predicted": _round(plan.latency_ms, 3), "bound": plan.latency_bound_ms},
        "solver": {"name": plan.solver.name, "status": plan.solver.status, "gap": plan.solver.gap},
        "placements": [{"stage": a.stage, "variant": a.variant, "site": a.site, "sites": len(a.sites) or 1,
                        "instance": a.instance, "instances": _round(a.instances, 3), "batchSize": a.batch_size}
                       for a in plan.assignments[:MAX_PLACEMENTS]],
        "placementsOmitted": max(0, len(plan.assignments) - MAX_PLACEMENTS) or None,
        "topology": dict(topology),
    }
    return compact(summary)


def compact(value: Any) -> Any:
    """``value`` without None anywhere in its mappings (a null in a merge patch deletes the key)."""
    if isinstance(value, Mapping):
        return {k: compact(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [compact(v) for v in value]
    return value


def merge_patch(current: Mapping, desired: Mapping) -> dict | None:
    """The JSON merge patch (RFC 7386) that turns ``current`` into ``desired``: changed keys, nested
    mappings recursively, None for keys to remove; None when they are equal."""
    patch: dict = {}
    for key, value in desired.items():
        old = current.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            sub = merge_patch(old, value)
            if sub is not None:
                patch[key] = sub
        elif old != value or key not in current:
            patch[key] = value
    for key in current:
        if key not in desired:
            patch[key] = None
    return patch or None


def condition(previous: Mapping | None, type_: str, status: str, reason: str, message: str, now: str,
              generation: int) -> dict:
    """A condition; its ``lastTransitionTime`` is kept unless its status flips."""
    since = previous.get("lastTransitionTime") if previous and previous.get("status") == status else None
    return {"type": type_, "status": status, "reason": reason, "message": clip(message),
            "lastTransitionTime": since or now, "observedGeneration": generation}


def _plan_line(summary: Mapping) -> str:
    models = ", ".join(f"{stage}={variant}" for stage, variant in (summary.get("models") or {}).items())
    cost = (summary.get("costPerHour") or {}).get("total")
    accuracy = (summary.get("accuracy") or {}).get("predicted")
    parts = [models or "no stages"]
    if cost is not None:
        parts.append(f"${cost:.4f}/h")
    if accuracy is not None:
        parts.append(f"accuracy {accuracy:g} predicted")
    return "; ".join(parts)


def _runtime_line(runtime: Mapping) -> str:
    rows = runtime.get("stages") or []
    alive = sum(int(r.get("replicas_alive") or 0) for r in rows)
    planned = sum(int(r.get("replicas_planned") or 0) for r in rows)
    down = [f"{r.get('stage')}@{r.get('site')} ({r.get('replicas_alive', 0)}/{r.get('replicas_planned', 0)})"
            for r in rows if int(r.get("replicas_alive") or 0) < int(r.get("replicas_planned") or 0)]
    text = f"pipeline {runtime.get('state')}: {alive} of {planned} replicas alive"
    if down:
        text += f"; short: {', '.join(down)}"
    if runtime.get("error"):
        text += f"; {runtime['error']}"
    return text


@dataclass(frozen=True)
class Seen:
    """What the operator knows of one workflow, from which its custom-resource status follows."""

    status: WorkflowStatus  # the shared model: phase and message (the core's), measured figures, last failure
    generation: int
    plan: dict | None = None  # summary of the plan for the current version, once planned
    problem: tuple[str, str] | None = None  # (reason, message) of what stands in the way
    running: dict | None = None  # summary of the running pipeline's plan
    running_current: bool = False  # the running pipeline serves the current version
    runtime: Mapping | None = None  # the running pipeline's status(): state, stages, frames
    ray_address: str | None = None


def _measured_line(status: WorkflowStatus) -> str:
    parts = []
    if status.accuracy_measured is not None:
        parts.append(f"accuracy {status.accuracy_measured:.1f}")
    if status.throughput_per_s is not None:
        parts.append(f"{status.throughput_per_s:.1f} frames/s")
    if status.frames_lost is not None:
        parts.append(f"{status.frames_lost} frames lost")
    return ("measured " + ", ".join(parts)) if parts else ""


def _failure_line(failure: LastFailure | None) -> str:
    return "" if failure is None else f"last failure ({failure.reason}): {failure.message}"


def desired_status(current: Mapping, seen: Seen, now: str) -> dict:
    """The workflow's whole custom-resource status for what was seen. ``current`` is the stored status
    (for the conditions' transition times). Keys are exactly the CRD's status fields."""
    old = {c.get("type"): c for c in current.get("conditions") or [] if isinstance(c, Mapping)}
    status = seen.status
    gen = seen.generation
    reason, problem = seen.problem or ("", "")
    running = seen.running is not None

    if reason in PLAN_FAILURES or reason in WAITING:
        planned = ("False", reason, problem)
    elif seen.plan is not None:
        planned = ("True", "Planned", _plan_line(seen.plan))
    else:
        planned = ("Unknown", "Pending", "not planned yet")

    measured, failed = _measured_line(status), _failure_line(status.last_failure)
    if running and seen.running_current:
        text = "; ".join(p for p in (f"serving generation {gen}: {_plan_line(seen.running)}", measured, failed) if p)
        deployed = ("True", "Running", text)
    elif running:
        deployed = ("True", "PreviousPlanRunning",
                    f"the plan of generation {seen.running.get('generation')} keeps serving until a new one deploys"
                    + (f" ({status.message})" if status.message else ""))
    elif reason in DEPLOY_FAILURES:
        deployed = ("False", reason, problem)
    elif status.phase is Phase.BLOCKED:
        deployed = ("False", "Blocked", status.message)
    elif seen.plan is not None:
        deployed = ("False", "Deploying", status.message or "starting the pipeline")
    else:
        deployed = ("False", "NotPlanned", "nothing to deploy until the workflow is planned")

    state = (seen.runtime or {}).get("state") if running else None
    if not running:
        degraded = ("Unknown", "NotDeployed", "no pipeline runs")
    elif state == "failed":
        degraded = ("True", "PipelineFailed", _runtime_line(seen.runtime or {}))
    elif state == "degraded":
        degraded = ("True", "ReplicasDown", _runtime_line(seen.runtime or {}))
    elif state == "running":
        degraded = ("False", "Healthy", _runtime_line(seen.runtime or {}))
    else:
        degraded = ("Unknown", "StatusUnknown", _runtime_line({"state": state or "unknown", **(seen.runtime or {})}))

    shown = seen.plan if seen.plan is not None else seen.running
    message = status.message or (f"serving: {_plan_line(seen.running)}" if running and seen.running_current else "")
    failure = status.last_failure
    out = {
        "phase": status.phase.value,
        "message": clip(message),
        "observedGeneration": gen,
        "conditions": [condition(old.get(t), t, *values, now, gen)
                       for t, values in (("Planned", planned), ("Deployed", deployed), ("Degraded", degraded))],
        "plan": shown,
        "costPerHour": ((shown or {}).get("costPerHour") or {}).get("total"),
        "predictedAccuracy": ((shown or {}).get("accuracy") or {}).get("predicted"),
        "predictedLatencyMs": ((shown or {}).get("latencyMs") or {}).get("predicted"),
        "lastPlanTime": (shown or {}).get("plannedAt"),
        # Rounded so that the status is not patched for every frame.
        "accuracy": _round(status.accuracy_measured, 1) if running else None,
        "throughputPerSecond": _round(status.throughput_per_s, 1) if running else None,
        "framesLost": status.frames_lost if running else None,
        "lastFailure": None if failure is None else {
            "reason": failure.reason, "message": clip(failure.message),
            "time": None if failure.at is None else
            datetime.fromtimestamp(failure.at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "attempts": failure.attempts},
        "rayAddress": seen.ray_address if running else None,
    }
    return compact(out)


# --------------------------------------------------------------------------------------------------
# the operator


class Unresolved(Exception):
    """The workflow cannot be planned as things stand: a condition reason and a message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class Attempt:
    """Planning one version (generation and digest) of a workflow, kept while it does not run."""

    generation: int
    digest: str
    plan: Plan | None = None
    summary: dict | None = None
    reason: str = ""
    message: str = ""
    attempts: int = 0
    retry_at: float = 0.0


def _default_plan(bundle: Bundle, *, time_limit_s: float) -> Plan:
    from jellybean.optimizer import plan

    return plan(bundle, baselines=False, time_limit_s=time_limit_s)


def _issues_text(exc: SpecError) -> str:
    return clip("; ".join(str(i) for i in exc.issues))


#: Events of the core reported as Kubernetes Events: (type, reason).
_EVENTS = {"started": ("Normal", "Started"), "replaced": ("Normal", "RolledOut"), "stopped": ("Normal", "Stopped"),
           "failed": ("Warning", "DeployFailed"), "cancelled": ("Normal", "Cancelled")}


class Operator:
    """Keeps every InferenceWorkflow of ``namespace`` planned, deployed and reported; kopf feeds it
    (:func:`registry`, :func:`run`)."""

    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        *,
        pipeline_factory: PipelineFactory | None = None,
        check_servable: Callable[[Bundle, Plan], None] | None = None,
        planner: Planner | None = None,
        cluster: Cluster | None = None,
        ray_address: str | None = None,
        plan_time_limit_s: float = 60.0,
        cache_dir: Path | None = None,
        model_store: Path | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], str] = utc_now,
        retry_initial_s: float = 5.0,
        retry_max_s: float = 300.0,
        resync_s: float = 30.0,
        watch_timeout_s: float = 300.0,
        discover_nodes: bool = True,
    ) -> None:
        self.api = api
        #: Whether Nodes are read (listed and watched) to discover sites: with it off the operator makes
        #: no call on Nodes at all, so its service account needs no right on them.
        self.discover_nodes = discover_nodes
        self.namespace = namespace
        # As the controller does: the data plane's Pipeline unless one is injected, and then the
        # servability check that refuses at plan time what that Pipeline could never start.
        self.check_servable = check_servable or (
            None if pipeline_factory else partial(default_servability_check, model_store=model_store))
        pipeline_factory = pipeline_factory or default_pipeline_factory(
            cache_dir, metrics, serving={"model_store": model_store} if model_store else None)
        self.planner = planner or partial(_default_plan, time_limit_s=plan_time_limit_s)
        self.metrics = metrics
        self.cluster = cluster
        self.ray_address = ray_address
        self.clock = clock
        self.now = now
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.resync_s = resync_s
        self.watch_timeout_s = watch_timeout_s
        self.executor = Executor(pipeline_factory, cluster=cluster, record=self._record, metrics=metrics, clock=clock,
                                 retry_initial_s=retry_initial_s, retry_max_s=retry_max_s)
        self.objects: dict[str, dict[str, dict]] = {kind: {} for kind in WATCHED}
        self.attempts: dict[str, Attempt] = {}
        self.phases: dict[str, Phase] = {}
        self.heartbeat = clock()
        self.passes: Counter[str] = Counter()  # reconcile passes per workflow (the tests wait on them)
        self.ready = threading.Event()  # kopf's ready flag: set once it watches
        self._wakes: dict[str, asyncio.Event] = {}
        self.loop: asyncio.AbstractEventLoop | None = None  # kopf's, while it runs
        self._threads: ThreadPoolExecutor | None = None
        self._discovered: dict[str, Discovery | SpecError] = {}
        #: Counts the Node events seen: a discovery computed from an older list of Nodes is not kept.
        self._nodes_seen = 0
        self._parsed: dict[tuple[str, str], tuple[str | None, LoadedDocument | SpecError]] = {}
        self._lock = threading.RLock()  # the caches (read by the HTTP probes)

    @property
    def deployed(self) -> dict:
        """What runs, by workflow (the core's deployments)."""
        with self.executor.lock:
            return dict(self.executor.running)

    # --- the watch cache --------------------------------------------------------------------------------
    def observe(self, kind: str, event_type: str | None, obj: Mapping | None) -> set[str]:
        """Apply one watch event (``None``: the initial listing; ADDED, MODIFIED, DELETED) to the
        cache; returns the workflows it concerns."""
        with self._lock:
            cache = self.objects[kind]
            name = name_of(obj or {})
            if event_type == "DELETED":
                cache.pop(name, None)
                self._parsed.pop((kind, name), None)
            else:
                cache[name] = dict(obj or {})
            if kind == NODE:
                self._discovered.clear()
                self._nodes_seen += 1
            return self._concerned(kind, {name})

    def _concerned(self, kind: str, names: set[str]) -> set[str]:
        workflows = self.objects[WORKFLOW]
        if kind == WORKFLOW:
            return set(names)
        if kind == NODE:
            return {w for w, obj in workflows.items() if self._discovers(obj)}
        field = "zoo" if kind == "ModelZoo" else "topology"
        return {w for w, obj in workflows.items() if reference(obj, field) in names or reference(obj, field) is None}

    def _discovers(self, obj: Mapping) -> bool:
        """Whether the workflow's topology comes from the Nodes (it names no Topology resource)."""
        wanted = reference(obj, "topology")
        topologies = self.objects["Topology"]
        return (wanted not in topologies) if wanted is not None else not topologies

    def wake(self, names: Iterable[str]) -> None:
        """Wake the daemons of ``names`` (from kopf's event loop)."""
        for name in names:
            event = self._wakes.get(name)
            if event is not None:
                event.set()

    def wake_soon(self, names: Iterable[str]) -> None:
        """:meth:`wake`, from any thread."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.wake, set(names))

    def synced(self) -> bool:
        """kopf watches (its ready flag is set)."""
        return self.ready.is_set()

    # --- the daemon of one workflow ---------------------------------------------------------------------
    async def daemon(self, name: str, stopped: Any) -> None:
        """Reconcile ``name`` when woken, when a retry is due and every ``resync_s``, until kopf stops
        the daemon (the resource is deleted, or the operator stops): a start under way is then cancelled."""
        wake = self._wakes.setdefault(name, asyncio.Event())
        try:
            while not stopped:
                wake.clear()
                work = asyncio.ensure_future(self._in_thread(self._reconcile_logged, name))
                halt = asyncio.ensure_future(stopped.wait())
                await asyncio.wait({work, halt}, return_when=asyncio.FIRST_COMPLETED)
                if not work.done():  # stopped while reconciling: a start under way gives up
                    self.executor.cancel(name)
                    await work
                halt.cancel()
                if stopped:
                    break
                woken, halt = asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stopped.wait())
                await asyncio.wait({woken, halt}, timeout=self._next_wait(name), return_when=asyncio.FIRST_COMPLETED)
                woken.cancel()
                halt.cancel()
        except asyncio.CancelledError:
            self.executor.cancel(name)
            raise
        finally:
            self._wakes.pop(name, None)

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the operator's own threads (one per workflow being reconciled, so that a long
        start or plan never waits for another's), with kopf's context (its Events queue)."""
        if self._threads is None:
            self._threads = ThreadPoolExecutor(max_workers=MAX_THREADS, thread_name_prefix="jellybean-reconcile")
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self._threads, partial(context.run, fn, *args))

    def _next_wait(self, name: str) -> float:
        due = [self.executor.next_retry()]
        with self._lock:
            attempt = self.attempts.get(name)
        if attempt is not None and attempt.reason == "PlanError":
            due.append(attempt.retry_at)
        wait = self.resync_s
        for at in due:
            if at is not None:
                wait = min(wait, max(0.05, at - self.clock()))
        return wait

    def _reconcile_logged(self, name: str) -> None:
        self.heartbeat = self.clock()
        started = time.perf_counter()
        try:
            self.reconcile(name)
        except Exception:
            log.exception("reconciling %s failed", name)
            if self.metrics is not None:
                self.metrics.reconcile_errors.labels(name).inc()
        finally:
            if self.metrics is not None:
                self.metrics.reconcile_seconds.observe(time.perf_counter() - started)
            self._export_states()
            with self._lock:
                self.passes[name] += 1

    # --- one workflow -----------------------------------------------------------------------------------
    def reconcile(self, name: str) -> None:
        with self._lock:
            obj = self.objects[WORKFLOW].get(name)
        if obj is None or (obj.get("metadata") or {}).get("deletionTimestamp"):
            return  # deletion is kopf's on.delete handler's (teardown)
        generation = generation_of(obj)
        try:
            bundle, topology = self._resolve(obj)
        except Unresolved as exc:
            self._report(name, None, (exc.reason, exc.message))
            return
        digest = inputs_digest(bundle)
        running = self.executor.running_digests().get(name)
        if running == digest:
            with self._lock:
                self.attempts.pop(name, None)
            self._report(name, digest)
            return
        with self._lock:
            attempt = self.attempts.get(name)
        if attempt is None or attempt.digest != digest:
            attempt = self._plan(name, generation, digest, bundle, topology)
            if attempt.plan is not None and not attempt.reason:
                self._report(name, digest)  # Planned: seen while the (slow) pipeline starts
        elif attempt.reason == "PlanError" and self.clock() >= attempt.retry_at:
            attempt = self._plan(name, generation, digest, bundle, topology, previous=attempt)
        if attempt.reason or attempt.plan is None:
            self._report(name, digest)
            return
        hold = self.executor.hold({name: digest})
        if name not in hold and self.cluster is not None:
            with self.executor.lock:
                topologies = [d.topology for n, d in self.executor.running.items() if n != name and d.topology]
            hold |= self.executor.ensure_cluster(topologies + [bundle.topology], {name: bundle.topology})
        for action in decide({name: digest}, {name: running} if running else {}, hold):
            # Starting / Updating (with how the rollout goes) is reported as the start begins.
            self.executor.execute(action, Desired(name, digest, attempt.generation, bundle, attempt.plan,
                                                  {"summary": attempt.summary}),
                                  on_begin=partial(self._report, name, digest))
        self._report(name, digest)

    def teardown(self, name: str) -> None:
        """The resource is being deleted (kopf's on.delete, before the finalizer goes): cancel a start
        under way, stop the pipeline, forget the workflow (its metric series leave /metrics)."""
        self.executor.stop(name, drain=True, reason="deleted")
        self.executor.forget(name)
        with self._lock:
            self.attempts.pop(name, None)
            self.phases.pop(name, None)
        self._export_states()

    def shutdown(self, *, drain: bool = True) -> None:
        """Stop every pipeline this operator runs (the resources and their finalizers stay: the next
        operator redeploys), then Ray."""
        self.executor.shutdown(drain=drain, reason="operator shutdown")
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
            self._threads = None

    def _load(self, kind: str, obj: Mapping) -> LoadedDocument:
        """:func:`load_resource`, remembered per resourceVersion (a resync validates nothing again)."""
        key = (kind, name_of(obj))
        version = (obj.get("metadata") or {}).get("resourceVersion")
        with self._lock:
            cached = self._parsed.get(key)
        if cached is None or cached[0] != version or version is None:
            try:
                cached = (version, load_resource(kind, obj))
            except SpecError as exc:
                cached = (version, exc)
            with self._lock:
                self._parsed[key] = cached
        if isinstance(cached[1], SpecError):
            raise cached[1]
        return cached[1]

    def _candidates(self, kind: str, wanted: str | None) -> list[LoadedDocument]:
        objects = self.objects[kind]
        chosen = [objects[wanted]] if wanted is not None and wanted in objects else \
            list(objects.values()) if wanted is None else []
        try:
            return [self._load(kind, o) for o in chosen]
        except SpecError as exc:
            raise Unresolved("InvalidSpec", _issues_text(exc)) from None

    def _resolve(self, obj: Mapping) -> tuple[Bundle, dict]:
        """The workflow's Bundle and where its topology came from; :class:`Unresolved` otherwise."""
        from jellybean.spec.bundle import resolve

        try:
            workflow = self._load(WORKFLOW, obj)
        except SpecError as exc:
            raise Unresolved("InvalidSpec", _issues_text(exc)) from None
        spec = workflow.model.spec
        zoos = self._candidates("ModelZoo", spec.zoo)
        if not zoos:
            raise Unresolved("ZooNotFound", f"no ModelZoo {spec.zoo!r} in namespace {self.namespace}" if spec.zoo
                             else f"no ModelZoo in namespace {self.namespace}")
        topologies = self._candidates("Topology", spec.topology)
        source = {"name": spec.topology or (topologies[0].model.metadata.name if topologies else DISCOVERED_TOPOLOGY),
                  "source": "Topology"}
        if not topologies:
            found = self._discover(source["name"])
            if isinstance(found, SpecError):
                absent = (f"no Topology {spec.topology!r} in namespace {self.namespace}" if spec.topology
                          else f"no Topology in namespace {self.namespace}")
                raise Unresolved("DiscoveryFailed", clip(f"{absent}, and discovering it from the Nodes failed: "
                                                         f"{_issues_text(found)}"))
            topologies = [LoadedDocument(found.topology, SourceMap("Nodes"), 0)]
            source = {"name": source["name"], "source": "Nodes", "sites": len(found.sites),
                      "nodes": sum(len(n) for n in found.sites.values()),
                      "warnings": found.warnings[:5] or None}
        try:
            bundle = resolve([workflow, *zoos, *topologies], workflow.model.metadata.name)
        except SpecError as exc:
            raise Unresolved("InvalidSpec", clip("; ".join(str(i) for i in _unlined(exc.issues)))) from None
        return bundle, compact(source)

    def _discover(self, name: str) -> Discovery | SpecError:
        with self._lock:
            if name in self._discovered:
                return self._discovered[name]
            nodes = list(self.objects[NODE].values())
            seen = self._nodes_seen
        if not self.discover_nodes:
            return SpecError([Issue("Nodes", None, "", "the workflow names no Topology of the namespace, and node "
                                    "discovery is off", "apply a Topology and name it in spec.topology, or install "
                                    "the chart with operator.discoverNodes=true")])
        refused = self.api.nodes_refused() if not nodes and hasattr(self.api, "nodes_refused") else None
        if refused:
            found: Discovery | SpecError = SpecError([Issue("Nodes", None, "", f"cannot list the Nodes: {refused}",
                                                            "give the operator's service account list/watch on nodes")])
        else:
            try:
                found = discover_topology(nodes, name)
            except SpecError as exc:
                found = exc
        with self._lock:
            if self._nodes_seen == seen:  # else a Node changed meanwhile: the next reconcile, woken by it, rediscovers
                self._discovered[name] = found
        return found

    def _plan(self, name: str, generation: int, digest: str, bundle: Bundle, topology: dict,
              previous: Attempt | None = None) -> Attempt:
        """Plan on what the other running workflows leave of the topology."""
        from jellybean.optimizer.capacity import capacity_left

        attempt = Attempt(generation, digest, attempts=previous.attempts if previous else 0)
        log.info("planning %s (generation %d)", name, generation)
        try:
            others = self.executor.plans_beside(name)
            planning = replace(bundle, topology=capacity_left(bundle.topology, others)) if others else bundle
            plan = self.planner(planning)
        except Exception as exc:  # noqa: BLE001 - reported in the status, retried with backoff
            attempt.attempts += 1
            delay = backoff_s(attempt.attempts, self.retry_initial_s, self.retry_max_s)
            attempt.reason = "PlanError"
            attempt.message = clip(f"planning failed: {message_of(exc)}; attempt {attempt.attempts}, retrying in "
                                   f"{delay:.0f} s")
            attempt.retry_at = self.clock() + delay
            if self.metrics is not None:
                self.metrics.reconcile_errors.labels(name).inc()
        else:
            attempt.plan = plan
            attempt.summary = plan_summary(plan, generation, topology, self.now())
            if not plan.feasible:
                attempt.reason = "Infeasible"
                attempt.message = clip("no feasible plan: " + "; ".join(plan.explanation or ["(no explanation)"]))
            elif self.check_servable is not None:
                try:
                    self.check_servable(bundle, plan)
                except NotServable as exc:
                    attempt.reason, attempt.message = "NotServable", clip(str(exc))
        if attempt.reason:
            self._record(name, "plan-failed", {"reason": attempt.reason, "message": attempt.message})
        with self._lock:
            self.attempts[name] = attempt
        return attempt

    def _seen(self, name: str, generation: int, digest: str | None, problem: tuple[str, str] | None) -> Seen:
        with self._lock:
            attempt = self.attempts.get(name)
        with self.executor.lock:
            deployed = self.executor.running.get(name)
            failure = self.executor.failures.get(name)
            last = self.executor.last_failures.get(name)
        if attempt is not None and attempt.digest != digest:
            attempt = None
        current = deployed is not None and deployed.digest == digest
        runtime = None
        if deployed is not None:
            try:
                runtime = deployed.pipeline.status()
            except Exception as exc:  # noqa: BLE001
                runtime = {"state": "unknown", "error": clip(f"status unavailable: {message_of(exc)}", 300)}
        if problem is None and attempt is not None and attempt.reason and not current:
            problem = (attempt.reason, attempt.message)
        plan = attempt.summary if attempt is not None and attempt.reason not in PLAN_FAILURES else None
        if plan is None and current:
            plan = deployed.extra.get("summary")
        observation = self.executor.observe(name, digest if digest is not None else "", problem=problem,
                                            planned=plan is not None, pipeline_state=(runtime or {}).get("state"))
        phase, message = phase_of(observation)
        if problem is None and failure is not None and failure.digest == digest and not current:
            problem = ("DeployFailed", message)
        frames = (runtime or {}).get("frames")
        status = WorkflowStatus(
            name=name, phase=phase, message=message, generation=generation, digest=digest,
            running_generation=deployed.generation if deployed else None,
            running_digest=deployed.digest if deployed else None, zoo=None, topology=None, applied_at=None,
            started_at=deployed.started_at if deployed else None,
            plan=None if plan is None else PlanSummary(
                strategy=plan.get("strategy"), sharing=plan.get("sharing"),
                cost_per_hour=(plan.get("costPerHour") or {}).get("total"),
                accuracy=(plan.get("accuracy") or {}).get("predicted"),
                accuracy_target=(plan.get("accuracy") or {}).get("target"), models=plan.get("models") or {}),
            stages=compare_stages(deployed.plan.model_dump(mode="json", by_alias=True)
                                  if deployed is not None and deployed.plan is not None else None, runtime),
            frames=frames, accuracy_measured=self._measured_accuracy(deployed, runtime),
            throughput_per_s=(runtime or {}).get("throughput_per_s"),
            frames_lost=None if not frames else int(frames.get("lost", 0)),
            last_failure=None if last is None else LastFailure(
                reason=last.reason, message=last.message, at=last.at, attempts=last.attempts))
        return Seen(status, generation, plan, problem, deployed.extra.get("summary") if deployed else None, current,
                    runtime, self.ray_address)

    @staticmethod
    def _measured_accuracy(deployed: Any, runtime: Mapping | None) -> float | None:
        if runtime and runtime.get("accuracy_measured") is not None:
            return float(runtime["accuracy_measured"])
        ledger = getattr(deployed.pipeline, "ledger", None) if deployed is not None else None
        if ledger is not None and getattr(ledger, "completed", 0):
            return 100.0 * ledger.correct / ledger.completed
        return None

    def status_model(self, name: str) -> WorkflowStatus:
        """The workflow's :class:`WorkflowStatus`, as ``jellybean status`` shows the controller's."""
        with self._lock:
            obj = self.objects[WORKFLOW].get(name) or {}
        try:
            digest = inputs_digest(self._resolve(obj)[0]) if obj else None
        except Unresolved:
            digest = None
        return self._seen(name, generation_of(obj), digest, None).status

    def _report(self, name: str, digest: str | None, problem: tuple[str, str] | None = None) -> None:
        """Patch the status where it differs from what was seen (an unchanged status sends nothing)."""
        with self._lock:
            obj = self.objects[WORKFLOW].get(name)
        if obj is None:
            return
        seen = self._seen(name, generation_of(obj), digest, problem)
        current = obj.get("status") or {}
        status = desired_status(current, seen, self.now())
        with self._lock:
            self.phases[name] = seen.status.phase
        patch = merge_patch(current, status)
        if patch is None:
            return
        updated = self.api.patch_status(WORKFLOW, self.namespace, name, patch)
        if isinstance(updated, dict):
            with self._lock:  # only the status: the watch may have brought a newer spec meanwhile
                cached = self.objects[WORKFLOW].get(name)
                if cached is not None:
                    self.objects[WORKFLOW][name] = {**cached, "status": updated.get("status") or {}}

    def _record(self, workflow: str | None, event: str, detail: Mapping) -> None:
        """The core's events, as Kubernetes Events on the resource (posted by kopf)."""
        if workflow is None:
            log.info("%s: %s", event, dict(detail))
            return
        with self._lock:
            body = self.objects[WORKFLOW].get(workflow)
        if body is None:
            return
        kind, reason = _EVENTS.get(event, ("Warning" if "fail" in event else "Normal",
                                           event.title().replace("-", "")))
        words = ", ".join(f"{k} {v}" for k, v in detail.items()
                          if k in ("generation", "strategy", "why", "reason", "message") and v)
        with suppress(Exception):  # outside kopf (or its queue gone): the log has it
            import kopf

            kopf.event(body, type=kind, reason=reason, message=clip(f"{event}: {words}" if words else event, 1000))

    def _export_states(self) -> None:
        with self._lock:
            phases = dict(self.phases)
        self.executor.export_phases(phases)

    # --- for the probes -------------------------------------------------------------------------------
    def describe(self) -> dict:
        with self._lock:
            workflows = sorted(self.objects[WORKFLOW].items())
            phases = dict(self.phases)
            nodes = len(self.objects[NODE])
        running = self.deployed
        return {
            "namespace": self.namespace,
            "synced": self.synced(),
            "workflows": {name: {"phase": phases[name].value if name in phases else None,
                                 "generation": generation_of(obj),
                                 "runningGeneration": running[name].generation if name in running else None}
                          for name, obj in workflows},
            "nodes": nodes,
            "ray": self.ray_address or ("embedded" if self.cluster is not None else None),
        }


# --------------------------------------------------------------------------------------------------
# kopf


def settings(operator: Operator, *, peering: str | None = None) -> Any:
    """kopf's settings for the operator: the finalizer ``jellybean.io/teardown``; handler progress in
    annotations under ``kopf.jellybean.io`` (never in ``status``, which is the CRD's); Events posted for
    warnings and the core's events; no scan of CRDs (the resources are known); peering only when named."""
    import kopf

    config = kopf.OperatorSettings()
    config.persistence.finalizer = FINALIZER
    config.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    config.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=KOPF_PREFIX,
                                                                          key="last-handled-configuration")
    config.posting.level = logging.WARNING
    config.scanning.disabled = True
    config.watching.server_timeout = operator.watch_timeout_s
    config.watching.client_timeout = operator.watch_timeout_s + 30
    config.networking.error_backoffs = [1, 2, 5, 10, 30, 60]
    config.queueing.error_delays = [1, 2, 5, 10, 30, 60]
    if peering:
        config.peering.name = peering
        config.peering.mandatory = True
    else:
        config.peering.standalone = True
    return config


def registry(operator: Operator, *, login: Callable[[], Any] | None = None) -> Any:
    """kopf's handlers for ``operator``: the watch cache fed from every kind's events (waking the
    workflows they concern), one daemon per InferenceWorkflow, teardown on deletion (behind the
    finalizer), and the login (``login()``, or the pod's service account / the kubeconfig)."""
    import kopf

    handlers = kopf.OperatorRegistry()

    @kopf.on.login(registry=handlers)
    def _login(**kwargs: Any) -> Any:
        if login is not None:
            return login()
        return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

    def watch(group: str, version: str, resource: str, kind: str, *, gate: bool) -> None:
        if gate:
            # An index handler sees every object of the initial listing before any daemon starts (kopf
            # holds the handlers until every index is populated): no workflow is planned on a partial
            # view of its own namespace's documents.
            @kopf.index(group, version, resource, registry=handlers, id=f"cache-{resource}")
            async def _index(body: Any, **_: Any) -> None:
                operator.wake(operator.observe(kind, "MODIFIED", dict(body)))

        @kopf.on.event(group, version, resource, registry=handlers, id=f"event-{resource}")
        async def _event(type: str | None, body: Any, **_: Any) -> None:
            if gate and type != "DELETED":
                return  # the index handler has it
            affected = operator.observe(kind, type, dict(body))
            if kind == WORKFLOW and type == "DELETED":  # gone without our teardown (finalizer removed by hand)
                await operator._in_thread(operator.teardown, name_of(body))
            operator.wake(affected)

    for kind in (WORKFLOW, "ModelZoo", "Topology"):
        watch(GROUP, VERSION, plural(kind), kind, gate=True)
    if operator.discover_nodes:
        # Nodes do not gate the handlers: a cluster that refuses to list them (RBAC) must not stop the
        # workflows that name a Topology; a workflow discovered from them is re-planned as they arrive.
        watch("", "v1", "nodes", NODE, gate=False)

    @kopf.daemon(GROUP, VERSION, plural(WORKFLOW), registry=handlers, cancellation_backoff=5.0,
                 cancellation_timeout=60.0)
    async def _daemon(name: str, stopped: Any, **_: Any) -> None:
        await operator.daemon(name, stopped)

    @kopf.on.delete(GROUP, VERSION, plural(WORKFLOW), registry=handlers, backoff=5.0)
    def _delete(name: str, **_: Any) -> None:
        operator.teardown(name)

    return handlers


def run(operator: Operator, stop: threading.Event, *, login: Callable[[], Any] | None = None,
        peering: str | None = None, priority: int = 0) -> None:
    """Run kopf for ``operator`` in this thread until ``stop`` is set; then stop the pipelines (the
    finalizers stay: the next operator redeploys)."""
    import kopf

    async def main() -> None:
        async def beat() -> None:  # liveness: the event loop turns
            while not stop.is_set():
                operator.heartbeat = operator.clock()
                await asyncio.sleep(1.0)

        operator.loop = asyncio.get_running_loop()
        beating = asyncio.ensure_future(beat())
        try:
            await kopf.operator(registry=registry(operator, login=login), settings=settings(operator, peering=peering),
                                namespaces=[operator.namespace], standalone=peering is None, peering_name=peering,
                                priority=priority, stop_flag=stop, ready_flag=operator.ready)
        finally:
            beating.cancel()

    try:
        contextvars.copy_context().run(asyncio.run, main())
    finally:
        operator.shutdown()
