"""The in-cluster operator: InferenceWorkflow custom resources are the desired state, pipelines on Ray
the actual one, and a reconcile loop moves the second towards the first.

Watching. One :class:`Watcher` per kind (InferenceWorkflow, ModelZoo, Topology in the operator's
namespace, and the cluster's Nodes) lists, then watches from the list's ``resourceVersion``; a
``410 Gone`` (the version was compacted away) makes it list again. Events update a cache of the
objects; each names the workflows it concerns: the workflow itself, the workflows that use a changed
ModelZoo or Topology, and, for a Node, the workflows whose topology is discovered from the Nodes.

Reconciling one workflow (:meth:`Operator.reconcile`):

1. deletion: when ``metadata.deletionTimestamp`` is set, stop its pipeline, then remove the
   finalizer ``jellybean.io/teardown`` (a merge patch of ``metadata.finalizers`` carrying the
   ``resourceVersion`` it read, so a concurrent change is a conflict, not a lost update). Otherwise
   the finalizer is added on first sight.
2. resolve: the resource becomes the spec document it holds (:func:`spec_document`) and is validated
   by the same pydantic models as files are; its ``spec.zoo``/``spec.topology`` name a ModelZoo and a
   Topology of the namespace. A topology that is no Topology resource is discovered from the Nodes
   (:mod:`jellybean.k8s.discovery`). Problems become conditions (``InvalidSpec``, ``ZooNotFound``,
   ``DiscoveryFailed``...) with the located message, never a crash.
3. decide: :func:`needs_replan` compares the generation and the digest of the resolved documents with
   what runs. Nothing changed: nothing is done (only the status is brought up to date, and only when it
   differs). Changed: plan (:func:`jellybean.optimizer.plan`), start the new pipeline, then stop the
   old one (a rollover). An infeasible plan leaves the previous pipeline serving.
4. report: :func:`desired_status` (pure) computes the status from what was observed; the difference
   from the stored status is sent as a merge patch of the status subresource
   (:func:`merge_patch`); ``lastTransitionTime`` changes only when a condition's status flips.

The API calls sit behind :class:`KubeApi` (one implementation on the ``kubernetes`` client, a fake
replaying recorded objects in the tests); pipelines come from an injected factory (the data plane's
``Pipeline`` on Ray by default), exactly as for :class:`jellybean.runtime.controller.Controller`,
whose pure decisions (backoff, Ray's resources) are reused here.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from jellybean.k8s.discovery import Discovery, discover_topology
from jellybean.k8s.names import API_VERSION, FINALIZER, GROUP, KINDS, VERSION
from jellybean.runtime.controller import (
    Cluster, NotServable, PipelineFactory, PipelineLike, Planner, backoff_s, decide_cluster,
    default_pipeline_factory, default_servability_check, default_site_resources, merge_resources,
)
from jellybean.runtime.state import digest_of, document_body
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
#: Every kind the operator watches; the workflows first, so that one round sees them before the rest.
WATCHED = (WORKFLOW, "ModelZoo", "Topology", NODE)
#: The name a discovered topology gets when the workflow names none.
DISCOVERED_TOPOLOGY = "discovered"
#: Annotations that tools add to every object they touch: not part of the document.
TOOL_ANNOTATIONS = ("kubectl.kubernetes.io/", "meta.helm.sh/")
MAX_MESSAGE = 2000
#: Placements listed in ``status.plan`` (a city-scale plan has thousands; the status must stay small).
MAX_PLACEMENTS = 50

# Condition reasons. Planning problems keep the workflow from being planned; waiting ones may resolve
# themselves (the missing resource appears); deployment problems come after a plan.
PLAN_FAILURES = frozenset({"InvalidSpec", "DiscoveryFailed", "Infeasible", "PlanError"})
WAITING = frozenset({"ZooNotFound"})
DEPLOY_FAILURES = frozenset({"NotServable", "DeployFailed"})
#: Failures retried with backoff (the others wait for a change of the inputs).
RETRIED = frozenset({"PlanError", "DeployFailed"})


class Gone(Exception):
    """410 Gone: the watch's resourceVersion is too old; list again."""


class Conflict(Exception):
    """409 Conflict: the object changed since it was read."""


class WatchError(Exception):
    """The watch stream reported an error other than 410."""


class KubeApi(Protocol):
    """The operator's view of the API server. Objects are plain dicts shaped as the server sends them."""

    def list(self, kind: str, namespace: str) -> dict:
        """A list object (``{"metadata": {"resourceVersion"}, "items": [...]}``) of a custom kind."""

    def list_nodes(self) -> dict:
        """The NodeList."""

    def watch(self, kind: str, namespace: str, resource_version: str, timeout_s: float) -> Iterable[dict]:
        """Events ``{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": ...}`` after
        ``resource_version`` (``kind`` may be ``Node``); raises :class:`Gone` when it is too old."""

    def get(self, kind: str, namespace: str, name: str) -> dict | None: ...

    def patch_status(self, kind: str, namespace: str, name: str, status: Mapping) -> dict:
        """Merge-patch ``.status`` through the status subresource; the updated object."""

    def patch_metadata(self, kind: str, namespace: str, name: str, metadata: Mapping) -> dict | None:
        """Merge-patch ``.metadata``; raises :class:`Conflict` when ``metadata.resourceVersion`` is
        stale. The updated object, or None when the patch let the object go (last finalizer removed)."""


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
    """:class:`KubeApi` on the ``kubernetes`` client (``CustomObjectsApi`` and ``CoreV1Api``)."""

    def __init__(self, api_client: Any = None) -> None:
        from kubernetes import client

        self.client = api_client if api_client is not None else client.ApiClient()
        self.custom = client.CustomObjectsApi(self.client)
        self.core = client.CoreV1Api(self.client)

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

    def _translate(self, exc: Exception) -> Exception:
        status = getattr(exc, "status", None)
        if status == 410:
            return Gone(getattr(exc, "reason", "") or str(exc))
        if status == 409:
            return Conflict(getattr(exc, "reason", "") or str(exc))
        return exc

    def list(self, kind: str, namespace: str) -> dict:
        return self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, plural(kind))

    def list_nodes(self) -> dict:
        return self.client.sanitize_for_serialization(self.core.list_node())

    def watch(self, kind: str, namespace: str, resource_version: str, timeout_s: float) -> Iterator[dict]:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        if kind == NODE:
            func, args = self.core.list_node, ()
        else:
            func, args = self.custom.list_namespaced_custom_object, (GROUP, VERSION, namespace, plural(kind))
        stream = watch.Watch()
        try:
            for event in stream.stream(func, *args, resource_version=resource_version,
                                       timeout_seconds=max(1, int(timeout_s)), allow_watch_bookmarks=True):
                yield {"type": event["type"], "object": event.get("raw_object", event.get("object"))}
        except ApiException as exc:
            raise self._translate(exc) from None
        finally:
            stream.stop()

    def get(self, kind: str, namespace: str, name: str) -> dict | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural(kind), name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch_status(self, kind: str, namespace: str, name: str, status: Mapping) -> dict:
        return self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, plural(kind), name, {"status": dict(status)},
            _content_type="application/merge-patch+json")

    def patch_metadata(self, kind: str, namespace: str, name: str, metadata: Mapping) -> dict | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, plural(kind), name, {"metadata": dict(metadata)},
                _content_type="application/merge-patch+json")
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise self._translate(exc) from None


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
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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
    annotations do not re-plan)."""
    parts = {}
    for kind, model in (("Workflow", bundle.workflow), ("ModelZoo", bundle.zoo), ("Topology", bundle.topology)):
        body = document_body(model)
        body["metadata"] = {"name": model.metadata.name}
        parts[kind] = body
    return digest_of(parts)


@dataclass
class Deployment:
    """A running pipeline and what it serves."""

    generation: int
    digest: str
    pipeline: PipelineLike
    bundle: Bundle
    summary: dict  # plan_summary(...) of its plan
    started_at: float


def needs_replan(obj: Mapping, deployed: Deployment | None, digest: str) -> str | None:
    """Why the workflow must be planned (and deployed) again, in words; None when what runs is current."""
    generation = generation_of(obj)
    if deployed is None:
        return "not deployed"
    if generation != deployed.generation:
        return f"spec changed (generation {deployed.generation} -> {generation})"
    if digest != deployed.digest:
        return "its ModelZoo or Topology changed"
    return None


def finalizer_patch(obj: Mapping, present: bool) -> dict | None:
    """The metadata merge patch that adds (or removes) the finalizer, guarded by the resourceVersion
    read; None when there is nothing to change."""
    meta = obj.get("metadata") or {}
    finalizers = list(meta.get("finalizers") or [])
    if (FINALIZER in finalizers) == present:
        return None
    finalizers = finalizers + [FINALIZER] if present else [f for f in finalizers if f != FINALIZER]
    return {"finalizers": finalizers, "resourceVersion": meta.get("resourceVersion")}


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


@dataclass(frozen=True)
class Observation:
    """What the operator knows about one workflow, from which its status follows."""

    generation: int
    plan: dict | None = None  # summary of the plan for the current generation and inputs, once planned
    problem: tuple[str, str] | None = None  # (reason, message) of what stands in the way
    running: dict | None = None  # summary of the running pipeline's plan
    running_current: bool = False  # the running pipeline serves the current generation and inputs
    runtime: Mapping | None = None  # the running pipeline's status(): state, stages, frames
    measured_accuracy: float | None = None
    ray_address: str | None = None


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


def desired_status(current: Mapping, obs: Observation, now: str) -> dict:
    """The workflow's whole status for what was observed. ``current`` is the stored status (for the
    conditions' transition times). Keys are exactly the CRD's status fields."""
    old = {c.get("type"): c for c in current.get("conditions") or [] if isinstance(c, Mapping)}
    gen = obs.generation
    reason, problem = obs.problem or ("", "")
    running = obs.running is not None

    if reason in PLAN_FAILURES or reason in WAITING:
        planned = ("False", reason, problem)
    elif obs.plan is not None:
        planned = ("True", "Planned", _plan_line(obs.plan))
    else:
        planned = ("Unknown", "Pending", "not planned yet")

    if running and obs.running_current:
        deployed = ("True", "Running", f"serving generation {gen}: {_plan_line(obs.running)}")
    elif running:
        deployed = ("True", "PreviousPlanRunning",
                    f"the plan of generation {obs.running.get('generation')} keeps serving until a new one deploys")
    elif reason in DEPLOY_FAILURES:
        deployed = ("False", reason, problem)
    elif obs.plan is not None:
        deployed = ("False", "Deploying", "starting the pipeline")
    else:
        deployed = ("False", "NotPlanned", "nothing to deploy until the workflow is planned")

    state = (obs.runtime or {}).get("state") if running else None
    if not running:
        degraded = ("Unknown", "NotDeployed", "no pipeline runs")
    elif state == "failed":
        degraded = ("True", "PipelineFailed", _runtime_line(obs.runtime or {}))
    elif state == "degraded":
        degraded = ("True", "ReplicasDown", _runtime_line(obs.runtime or {}))
    elif state == "running":
        degraded = ("False", "Healthy", _runtime_line(obs.runtime or {}))
    else:
        degraded = ("Unknown", "StatusUnknown", _runtime_line({"state": state or "unknown", **(obs.runtime or {})}))

    if reason in PLAN_FAILURES or reason in DEPLOY_FAILURES:
        phase, message = "Failed", problem
        if running:
            message += f" (the plan of generation {obs.running.get('generation')} keeps serving)"
    elif reason in WAITING:
        phase, message = "Pending", problem
    elif running and obs.running_current:
        phase = "Degraded" if degraded[0] == "True" else "Deployed"
        message = degraded[2] if phase == "Degraded" else f"serving: {_plan_line(obs.running)}"
    elif obs.plan is not None:
        phase, message = "Planned", f"planned ({_plan_line(obs.plan)}); starting the pipeline"
    else:
        phase, message = "Pending", "waiting to be planned"

    shown = obs.plan if obs.plan is not None else obs.running
    status = {
        "phase": phase,
        "message": clip(message),
        "observedGeneration": gen,
        "conditions": [condition(old.get(t), t, *values, now, gen)
                       for t, values in (("Planned", planned), ("Deployed", deployed), ("Degraded", degraded))],
        "plan": shown,
        "costPerHour": ((shown or {}).get("costPerHour") or {}).get("total"),
        "predictedAccuracy": ((shown or {}).get("accuracy") or {}).get("predicted"),
        "predictedLatencyMs": ((shown or {}).get("latencyMs") or {}).get("predicted"),
        "lastPlanTime": (shown or {}).get("plannedAt"),
        "accuracy": _round(obs.measured_accuracy, 1) if running else None,  # 0.1: not a patch per frame
        "rayAddress": obs.ray_address if running else None,
    }
    return compact(status)


# --------------------------------------------------------------------------------------------------
# watching


class Watcher:
    """List, then watch from the list's resourceVersion; a 410 Gone makes the next :meth:`pump` list again."""

    def __init__(self, api: KubeApi, kind: str, namespace: str, timeout_s: float = 300.0) -> None:
        self.api = api
        self.kind = kind
        self.namespace = namespace
        self.timeout_s = timeout_s
        self.resource_version: str | None = None
        self.lists = 0
        self.expired = 0
        self.error: str | None = None  # the last failure of the list or the watch (cleared by success)

    def pump(self, emit: Callable[[str, str, Any], Any]) -> None:
        """One list (when needed) and one watch call until the server ends it. ``emit(kind, type, payload)``
        gets ``SYNC`` with every listed item, then each ADDED/MODIFIED/DELETED object."""
        if self.resource_version is None:
            listing = self.api.list_nodes() if self.kind == NODE else self.api.list(self.kind, self.namespace)
            emit(self.kind, "SYNC", list(listing.get("items") or []))
            self.resource_version = str((listing.get("metadata") or {}).get("resourceVersion") or "")
            self.lists += 1
        try:
            for event in self.api.watch(self.kind, self.namespace, self.resource_version, self.timeout_s):
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone(str(obj.get("message") or "resource version too old"))
                    raise WatchError(f"{obj.get('reason')}: {obj.get('message')}")
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    emit(self.kind, kind, obj)
                version = (obj.get("metadata") or {}).get("resourceVersion")
                if version:
                    self.resource_version = str(version)
        except Gone as exc:
            log.info("watch of %s expired (%s): listing again", self.kind, exc)
            self.resource_version = None
            self.expired += 1
        self.error = None


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
    """Planning (and deploying) one generation and digest of a workflow, kept while it is not running."""

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


class Operator:
    """Watches the cluster and keeps every InferenceWorkflow of ``namespace`` planned, deployed and reported."""

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
        self.pipeline_factory = pipeline_factory or default_pipeline_factory(
            cache_dir, metrics, serving={"model_store": model_store} if model_store else None)
        self.check_servable = check_servable or (
            None if pipeline_factory else partial(default_servability_check, model_store=model_store))
        self.planner = planner or partial(_default_plan, time_limit_s=plan_time_limit_s)
        self.metrics = metrics
        self.cluster = cluster
        self.ray_address = ray_address
        self.clock = clock
        self.now = now
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.resync_s = resync_s
        self.objects: dict[str, dict[str, dict]] = {kind: {} for kind in WATCHED}
        self.watchers = {kind: Watcher(api, kind, namespace, watch_timeout_s) for kind in WATCHED
                         if discover_nodes or kind != NODE}
        self.deployed: dict[str, Deployment] = {}
        self.attempts: dict[str, Attempt] = {}
        self.phases: dict[str, str] = {}
        self.pending: set[str] = set()
        self.heartbeat = clock()
        self._discovered: dict[str, Discovery | SpecError] = {}
        self._parsed: dict[tuple[str, str], tuple[str | None, LoadedDocument | SpecError]] = {}
        self._lock = threading.RLock()  # the caches and deployments (read by the HTTP probes)

    # --- events ---------------------------------------------------------------------------------------
    def observe(self, kind: str, event_type: str, payload: Any) -> set[str]:
        """Apply one event (``SYNC`` with a full listing, or ADDED/MODIFIED/DELETED with an object) to
        the cache; the workflows it concerns are added to :attr:`pending` and returned."""
        with self._lock:
            cache = self.objects[kind]
            if event_type == "UNAVAILABLE":  # the Nodes cannot be listed: discovery says why
                names: set[str] = set()
            elif event_type == "SYNC":
                fresh = {name_of(o): o for o in payload}
                names = set(cache) | set(fresh)
                cache.clear()
                cache.update(fresh)
            else:
                names = {name_of(payload)}
                if event_type == "DELETED":
                    cache.pop(name_of(payload), None)
                else:
                    cache[name_of(payload)] = payload
            if kind == NODE:
                self._discovered.clear()
            for name in names:
                if name not in cache:
                    self._parsed.pop((kind, name), None)
            affected = self._concerned(kind, names)
            self.pending |= affected
            return affected

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

    # --- the loop -------------------------------------------------------------------------------------
    def synced(self) -> bool:
        """Every kind listed once (the Nodes may instead have failed: discovery then says why)."""
        return all(w.lists > 0 or (w.kind == NODE and w.error) for w in self.watchers.values())

    def step(self) -> None:
        """One synchronous round: pump every watch once (a list first where needed), then reconcile
        what changed. The tests drive the operator with it; :meth:`run` does the same with threads."""
        for watcher in self.watchers.values():
            watcher.pump(self.observe)
        self.process()

    def resync(self) -> None:
        """Look at every workflow again (pipeline health, retries due)."""
        with self._lock:
            self.pending |= set(self.objects[WORKFLOW]) | set(self.deployed)

    def process(self) -> None:
        """Reconcile every pending workflow, each once, in name order."""
        while True:
            with self._lock:
                if not self.pending:
                    break
                name = min(self.pending)
                self.pending.discard(name)
            self.heartbeat = self.clock()
            started = time.perf_counter()
            try:
                self.reconcile(name)
            except Exception:  # noqa: BLE001 - one workflow's failure must not stop the others; resync retries
                log.exception("reconciling %s failed", name)
                if self.metrics is not None:
                    self.metrics.reconcile_errors.labels(name).inc()
            finally:
                if self.metrics is not None:
                    self.metrics.reconcile_seconds.observe(time.perf_counter() - started)
        self._export_states()

    def run(self, stop: threading.Event) -> None:
        """Watch every kind from threads and reconcile on this one until ``stop`` is set; pipelines are
        then stopped (finalizers stay: the next operator redeploys)."""
        events: queue.Queue = queue.Queue()
        threads = [threading.Thread(target=self._watch_loop, args=(w, events, stop), name=f"watch-{w.kind}",
                                    daemon=True) for w in self.watchers.values()]
        for thread in threads:
            thread.start()
        next_resync = self.clock() + self.resync_s
        try:
            while not stop.is_set():
                self.heartbeat = self.clock()
                try:
                    item = events.get(timeout=0.5)
                    while True:
                        self.observe(*item)
                        item = events.get_nowait()
                except queue.Empty:
                    pass
                now = self.clock()
                if now >= next_resync:
                    self.resync()
                    next_resync = now + self.resync_s
                with self._lock:
                    self.pending |= {n for n, a in self.attempts.items() if a.reason in RETRIED and a.retry_at <= now}
                if self.synced():
                    self.process()
        finally:
            self.shutdown()

    def _watch_loop(self, watcher: Watcher, events: queue.Queue, stop: threading.Event) -> None:
        failures = 0
        while not stop.is_set():
            try:
                watcher.pump(lambda *event: events.put(event))
                failures = 0
            except Exception as exc:  # noqa: BLE001 - the API server may be away for a while; retry
                failures += 1
                watcher.error = clip(f"{type(exc).__name__}: {exc}", 300)
                delay = backoff_s(failures, 1.0, 60.0)
                log.warning("watching %s failed (%s); retrying in %.0f s", watcher.kind, watcher.error, delay)
                if watcher.kind == NODE:
                    events.put((NODE, "UNAVAILABLE", None))
                stop.wait(delay)

    def shutdown(self, *, drain: bool = True) -> None:
        """Stop every pipeline this operator runs (the resources and their finalizers stay)."""
        with self._lock:
            names = sorted(self.deployed)
        for name in names:
            self._stop(name, drain=drain, reason="operator shutdown")
        try:
            if self.cluster is not None:
                self.cluster.shutdown()
        except Exception:  # noqa: BLE001 - shutting down anyway
            log.exception("Ray shutdown failed")

    # --- one workflow ---------------------------------------------------------------------------------
    def reconcile(self, name: str) -> None:
        obj = self.objects[WORKFLOW].get(name)
        if obj is None:  # gone (its finalizer was removed by someone else): stop what runs
            self._stop(name, drain=True, reason="the resource is gone")
            with self._lock:
                self.attempts.pop(name, None)
                self.phases.pop(name, None)
            return
        meta = obj.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            if FINALIZER in (meta.get("finalizers") or []):
                self._stop(name, drain=True, reason="deleted")
                with self._lock:
                    self.attempts.pop(name, None)
                    self.phases.pop(name, None)
                self._set_finalizer(obj, present=False)
            return
        obj = self._set_finalizer(obj, present=True)
        if obj is None:
            return
        generation = generation_of(obj)
        try:
            bundle, topology = self._resolve(obj)
        except Unresolved as exc:
            self._report(obj, None, (exc.reason, exc.message))
            return
        digest = inputs_digest(bundle)
        why = needs_replan(obj, self.deployed.get(name), digest)
        if why is None:
            with self._lock:
                self.attempts.pop(name, None)
            self._report(obj, digest)
            return
        attempt = self.attempts.get(name)
        if attempt is None or (attempt.generation, attempt.digest) != (generation, digest):
            attempt = self._plan(name, generation, digest, bundle, topology, why)
            if attempt.plan is not None and not attempt.reason:
                self._report(obj, digest)  # Planned: seen while the (slow) pipeline starts
        if attempt.reason and (attempt.reason not in RETRIED or self.clock() < attempt.retry_at):
            self._report(obj, digest)
            return
        if attempt.plan is None:  # a planner error due for its retry
            attempt = self._plan(name, generation, digest, bundle, topology, why, previous=attempt)
            if attempt.reason:
                self._report(obj, digest)
                return
        self._deploy(name, attempt, bundle)
        self._report(obj, digest)

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
        if not self.discover_nodes:
            return SpecError([Issue("Nodes", None, "", "the workflow names no Topology of the namespace, and node "
                                    "discovery is off", "apply a Topology and name it in spec.topology, or install "
                                    "the chart with operator.discoverNodes=true")])
        error = self.watchers[NODE].error
        if not nodes and error:
            found: Discovery | SpecError = SpecError([Issue("Nodes", None, "", f"cannot list the Nodes: {error}",
                                                            "give the operator's service account list/watch on nodes")])
        else:
            try:
                found = discover_topology(nodes, name)
            except SpecError as exc:
                found = exc
        with self._lock:
            self._discovered[name] = found
        return found

    def _plan(self, name: str, generation: int, digest: str, bundle: Bundle, topology: dict, why: str,
              previous: Attempt | None = None) -> Attempt:
        attempt = Attempt(generation, digest, attempts=previous.attempts if previous else 0)
        log.info("planning %s: %s", name, why)
        try:
            plan = self.planner(bundle)
        except Exception as exc:  # noqa: BLE001 - reported in the status, retried with backoff
            self._fail(name, attempt, "PlanError", f"planning failed: {type(exc).__name__}: {exc}")
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
        with self._lock:
            self.attempts[name] = attempt
        return attempt

    def _fail(self, name: str, attempt: Attempt, reason: str, message: str) -> None:
        attempt.attempts += 1
        delay = backoff_s(attempt.attempts, self.retry_initial_s, self.retry_max_s)
        attempt.reason = reason
        attempt.message = clip(f"{message}; attempt {attempt.attempts}, retrying in {delay:.0f} s")
        attempt.retry_at = self.clock() + delay
        if self.metrics is not None:
            self.metrics.reconcile_errors.labels(name).inc()

    def _deploy(self, name: str, attempt: Attempt, bundle: Bundle) -> None:
        """Start the new pipeline; once it runs, stop the old one (a rollover)."""
        assert attempt.plan is not None and attempt.summary is not None
        pipeline = None
        try:
            self._ensure_ray(name, bundle)
            pipeline = self.pipeline_factory(bundle, attempt.plan)
            pipeline.start()
        except Exception as exc:  # noqa: BLE001 - reported in the status, retried with backoff
            with suppress(Exception):  # what a failed start left behind
                if pipeline is not None:
                    pipeline.stop(drain=False)
            text = str(exc) if type(exc).__name__ in ("ServingError", "NotServable") else f"{type(exc).__name__}: {exc}"
            self._fail(name, attempt, "DeployFailed", f"starting the pipeline failed: {text}")
            log.warning("deploying %s failed: %s", name, attempt.message)
            return
        with self._lock:
            old = self.deployed.get(name)
            self.deployed[name] = Deployment(attempt.generation, attempt.digest, pipeline, bundle, attempt.summary,
                                             time.time())
            self.attempts.pop(name, None)
        log.info("deployed %s (generation %d)", name, attempt.generation)
        if old is not None:
            try:
                old.pipeline.stop(drain=True)
            except Exception:  # noqa: BLE001 - the new one serves; the old one is gone from our view
                log.exception("stopping the previous pipeline of %s failed", name)

    def _ensure_ray(self, name: str, bundle: Bundle) -> None:
        """Ray offers every site of what runs and of ``bundle`` (an embedded Ray is started, or restarted
        with more sites: the pipelines it held are then started again by the next passes)."""
        if self.cluster is None:
            return
        with self._lock:
            bundles = [d.bundle for n, d in self.deployed.items() if n != name] + [bundle]
        required = merge_resources(default_site_resources(b.topology) for b in bundles)
        decision = decide_cluster(self.cluster.offered(), required, embedded=self.cluster.embedded)
        if decision.action == "start":
            self.cluster.start(decision.resources)
        elif decision.action == "restart":
            with self._lock:
                names = sorted(self.deployed)
            for other in names:
                self._stop(other, drain=True, reason="Ray restarts to add site resources")
            self.cluster.restart(decision.resources)
            with self._lock:
                self.pending |= set(names) - {name}
        elif decision.missing:
            missing = ", ".join(sorted(decision.missing))
            raise NotServable(f"no node of the Ray cluster advertises {missing}: start each site's Ray node with "
                              f"`ray start --address ... --resources '{{\"site:<name>\": 1000}}'`")

    def _stop(self, name: str, *, drain: bool, reason: str) -> None:
        with self._lock:
            deployed = self.deployed.pop(name, None)
        if deployed is None:
            return
        try:
            deployed.pipeline.stop(drain=drain)
        except Exception:  # noqa: BLE001 - the pipeline is gone from our view either way
            log.exception("stopping %s failed", name)
        log.info("stopped %s (generation %d): %s", name, deployed.generation, reason)

    def _set_finalizer(self, obj: dict, *, present: bool) -> dict | None:
        """Add (or remove) the finalizer; the object as it is afterwards (None when it went away)."""
        name = name_of(obj)
        for _ in range(5):
            patch = finalizer_patch(obj, present)
            if patch is None:
                return obj
            try:
                updated = self.api.patch_metadata(WORKFLOW, self.namespace, name, patch)
            except Conflict:
                fresh = self.api.get(WORKFLOW, self.namespace, name)
                if fresh is None:
                    return None
                obj = fresh
                continue
            with self._lock:
                if updated is None:
                    self.objects[WORKFLOW].pop(name, None)
                else:
                    self.objects[WORKFLOW][name] = updated
            return updated
        raise Conflict(f"the finalizer of {name} kept conflicting")

    def _observation(self, name: str, generation: int, digest: str | None,
                     problem: tuple[str, str] | None) -> Observation:
        with self._lock:
            deployed = self.deployed.get(name)
            attempt = self.attempts.get(name)
        if attempt is not None and (attempt.generation, attempt.digest) != (generation, digest):
            attempt = None
        current = deployed is not None and (deployed.generation, deployed.digest) == (generation, digest)
        runtime = accuracy = None
        if deployed is not None:
            try:
                runtime = deployed.pipeline.status()
            except Exception as exc:  # noqa: BLE001
                runtime = {"state": "unknown", "error": clip(f"status unavailable: {type(exc).__name__}: {exc}", 300)}
            ledger = getattr(deployed.pipeline, "ledger", None)
            if ledger is not None and getattr(ledger, "completed", 0):
                accuracy = 100.0 * ledger.correct / ledger.completed
        if problem is None and attempt is not None and attempt.reason:
            problem = (attempt.reason, attempt.message)
        plan = attempt.summary if attempt is not None and attempt.reason not in PLAN_FAILURES else None
        if plan is None and current:
            plan = deployed.summary
        return Observation(generation, plan, problem, deployed.summary if deployed else None, current, runtime,
                           accuracy, self.ray_address)

    def _report(self, obj: dict, digest: str | None, problem: tuple[str, str] | None = None) -> None:
        """Patch the status where it differs from what was observed (an unchanged status sends nothing)."""
        name = name_of(obj)
        with self._lock:
            obj = self.objects[WORKFLOW].get(name, obj)
        observation = self._observation(name, generation_of(obj), digest, problem)
        current = obj.get("status") or {}
        status = desired_status(current, observation, self.now())
        with self._lock:
            self.phases[name] = status["phase"]
        patch = merge_patch(current, status)
        if patch is None:
            return
        updated = self.api.patch_status(WORKFLOW, self.namespace, name, patch)
        if isinstance(updated, dict):
            with self._lock:
                if name in self.objects[WORKFLOW]:
                    self.objects[WORKFLOW][name] = updated

    def _export_states(self) -> None:
        if self.metrics is None:
            return
        with self._lock:
            phases = dict(self.phases)
        for phase in ("Pending", "Planned", "Deployed", "Degraded", "Failed"):
            self.metrics.workflows.labels(phase.lower()).set(sum(1 for p in phases.values() if p == phase))

    # --- for the probes -------------------------------------------------------------------------------
    def describe(self) -> dict:
        with self._lock:
            return {
                "namespace": self.namespace,
                "synced": self.synced(),
                "watches": {k: {"listed": w.lists, "expired": w.expired, "error": w.error,
                                "resourceVersion": w.resource_version} for k, w in self.watchers.items()},
                "workflows": {name: {"phase": self.phases.get(name),
                                     "generation": generation_of(obj),
                                     "runningGeneration": self.deployed[name].generation if name in self.deployed
                                     else None}
                              for name, obj in sorted(self.objects[WORKFLOW].items())},
                "nodes": len(self.objects[NODE]),
                "ray": self.ray_address or ("embedded" if self.cluster is not None else None),
            }
