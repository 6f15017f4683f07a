"""The data plane: a Plan becomes Ray actors pinned to their sites, and frames flow through them.

Shape. Each placement of the plan (stage, variant, site, instance group) becomes
``ceil(instances)`` replicas: Ray actors that hold the variant's runner (a registered loader from
:mod:`jellybean.zoo.registry`), reserve the instance's CPU share (``num_cpus``; torch threads to
match) and require the custom resource ``site:<name>``, so Ray places them on the node that is that
site (on an embedded single-node Ray every site is a resource of the one node). Replicas are
actors rather than Ray Serve deployments: one actor call per *batch* costs about a millisecond here,
the routing by plan shares and the frame-level accounting need to live in our code anyway, and a
deployment's HTTP ingress would add a hop we do not need (measured: ``bench/runtime.py``).

Flow. An asyncio loop in a background thread drives everything. Sources replay their dataset at the
configured rate. A message for a stage is routed to one of its replicas by the plan's shares
(:mod:`jellybean.runtime.routing`), among the replicas it can reach without flowing down the tiers;
stateful stages (joins) route by frame id so one frame's parts meet. Each replica has a bounded
queue and a sender that forms dynamic batches up to the plan's batch size
(:mod:`jellybean.runtime.flow`); a full queue makes the router wait, which slows the stage before
it, and so on back to the sources. A batch that fails is retried request by request on other
replicas; what still fails is recorded with its reason. At the sink the frame's result is checked
against the ground truth it carried.

Two measured optimisations keep Ray's per-call cost (about 1-2 ms here) from dominating tiny models:
consecutive stateless stages placed on the same instance, one replica each, run *fused* in one actor
(:func:`plan_fusion`; the plan is unchanged, only the hop between them moves inside the process),
and each replica keeps two batch calls outstanding so the next batch waits at the actor while the
current one runs (the slot is freed as soon as the call returns, before its outputs are routed).
On one machine, ``pin_cpus`` gives each planned instance cores of its own and keeps this process off
the busy ones (:mod:`jellybean.runtime.affinity`); ``jellybean run`` turns it on. The controller
leaves it off, because several workflows deployed side by side would each claim the same cores.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

from pydantic import BaseModel

from jellybean.optimizer.plan import Plan
from jellybean.runtime.affinity import CpuLayout, InstanceLoad, cpu_layout, pin_process, usable_cores
from jellybean.runtime.flow import (
    LATENCY_SAMPLES, Ledger, RetryPolicy, collect_batch, percentile, queue_capacity,
)
from jellybean.runtime.metrics import Metrics
from jellybean.runtime.routing import AffinityRouter, WeightedRouter, uplinks_between
from jellybean.runtime.telemetry import Telemetry
from jellybean.spec.bundle import Bundle
from jellybean.spec.topology import Topology

SITE_RESOURCE_PREFIX = "site:"
#: Ray namespace of detached (adoptable) replicas.
ACTOR_NAMESPACE = "jellybean"
#: Each replica asks for this much of its site's resource; a site offers SITE_CAPACITY of it.
SITE_SLOT = 0.001
SITE_CAPACITY = 1000.0


def site_resource(site: str) -> str:
    return f"{SITE_RESOURCE_PREFIX}{site}"


def site_resources(topology: Topology) -> dict[str, float]:
    """The custom resources an embedded single-node Ray needs so that every site exists."""
    return {site_resource(s.name): SITE_CAPACITY for s in topology.spec.sites}


class ServingError(Exception):
    """The plan cannot be served as written (no loader, no dataset): a user error, said in words."""


# --------------------------------------------------------------------------------------------------
# what to deploy


@dataclass(frozen=True)
class ReplicaSpec:
    key: str
    stage: str
    variant: str
    loader: str
    site: str
    tier: str
    instance: str
    batch_size: int
    weight: float  # planned requests/s for this replica
    num_cpus: float
    threads: int
    #: Which instance the replica runs on, ``(site, instance group, index)``: replicas of one shared
    #: instance have the same key.
    instance_key: tuple = ()
    instance_cpus: float = 1.0
    utilization: float = 0.0  # planned busy fraction of its instance that this replica accounts for

    @property
    def instance_label(self) -> str:
        """The ``instance`` label of metrics: the group's name and the instance's index (``hub-cpu-0``)."""
        return f"{self.instance_key[1]}-{self.instance_key[2]}" if len(self.instance_key) == 3 else self.instance


def replica_specs(bundle: Bundle, plan: Plan) -> list[ReplicaSpec]:
    """Expand the plan's placements into replicas with their CPU shares."""
    if not plan.feasible:
        raise ServingError(f"workflow {plan.workflow} has no feasible plan: " + "; ".join(plan.explanation))
    zoo = bundle.zoo.spec
    stage_task = {s.name: s.task for s in bundle.workflow.spec.stages}
    groups = {(site.name, inst.name): inst for site in bundle.topology.spec.sites for inst in site.instances}
    # Busy instance-equivalents of each stage on each group, to split a shared instance's CPUs.
    busy: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for a in plan.assignments:
        load = a.utilization * a.instances
        busy[(a.site, a.instance)][a.stage] = busy[(a.site, a.instance)].get(a.stage, 0.0) + load
    specs: list[ReplicaSpec] = []
    next_index: dict[tuple[str, str], int] = defaultdict(int)  # exclusive mode: instances handed out per group
    for a in plan.assignments:
        task = zoo.task(stage_task[a.stage])
        variant = task.variant(a.variant) if task else None
        if variant is None or not variant.loader:
            raise ServingError(f"variant {a.variant!r} of stage {a.stage!r} names no `loader`: it can be planned "
                               "but not served (see `jellybean zoo list` for registered loaders)")
        replicas = max(1, math.ceil(a.instances - 1e-9))
        for site in a.sites or [a.site]:
            group = groups[(site, a.instance)]
            cpus = group.cpus or 1.0
            if plan.sharing == "shared":
                loads = busy[(a.site, a.instance)]
                share = loads[a.stage] / sum(loads.values()) if sum(loads.values()) > 0 else 1.0 / len(loads)
                cpus = cpus * share
            for k in range(replicas):
                # Shared instances host every stage placed on their group; exclusive ones one stage each.
                if plan.sharing == "shared":
                    index = k
                else:
                    index = next_index[(site, a.instance)]
                    next_index[(site, a.instance)] += 1
                instance_key = (site, a.instance, index)
                specs.append(ReplicaSpec(
                    key=f"{a.stage}/{site}/{a.instance}/{a.variant}/{k}", stage=a.stage, variant=a.variant,
                    loader=variant.loader, site=site, tier=a.tier, instance=a.instance, batch_size=a.batch_size,
                    weight=a.rate_per_s / replicas, num_cpus=_cpu_amount(cpus),
                    threads=max(1, int(cpus + 1e-9)), instance_key=instance_key,
                    instance_cpus=group.cpus or 1.0, utilization=a.utilization,
                ))
    return specs


def plan_fusion(specs: list[ReplicaSpec], stage_order: list[str], consumers: dict[str, list[str]],
                inputs: dict[str, int], stateful) -> dict[str, list[ReplicaSpec]]:
    """Chains of consecutive stages to run inside one replica: head replica key -> the chain.

    Stage ``s`` joins the chain of ``u`` when ``u`` feeds only ``s``, ``s`` reads only from ``u``,
    each has a single replica, both sit on the same instance of the same site, and neither keeps
    state (a join must see every part of a frame, so it is routed, never fused). The plan is
    unchanged (same placement, same CPU shares, same batch sizes); only the hop between the two
    stages moves inside the process."""
    by_stage: dict[str, list[ReplicaSpec]] = defaultdict(list)
    for spec in specs:
        by_stage[spec.stage].append(spec)
    chains: dict[str, list[ReplicaSpec]] = {}
    absorbed: set[str] = set()
    for stage in stage_order:
        if stage in absorbed or len(by_stage[stage]) != 1:
            continue
        chain = [by_stage[stage][0]]
        while True:
            tail = chain[-1]
            following = consumers.get(tail.stage, [])
            if len(following) != 1:
                break
            nxt_stage = following[0]
            if inputs.get(nxt_stage, 0) != 1 or len(by_stage[nxt_stage]) != 1:
                break
            nxt = by_stage[nxt_stage][0]
            if (nxt.site, nxt.instance) != (tail.site, tail.instance) or stateful(nxt.loader) or stateful(tail.loader):
                break
            chain.append(nxt)
            absorbed.add(nxt_stage)
        if len(chain) > 1:
            chains[chain[0].key] = chain
    return chains


# --------------------------------------------------------------------------------------------------
# the summary (`jellybean run --format json`)


class Predicted(BaseModel):
    throughput_per_s: float
    accuracy: float | None
    latency_ms_p50: float | None
    cost_per_hour: float | None


class Measured(BaseModel):
    throughput_per_s: float
    accuracy: float | None
    latency_ms_p50: float | None
    latency_ms_p99: float | None
    hop_overhead_ms_p50: float | None = None
    hop_overhead_ms_p99: float | None = None


class Frames(BaseModel):
    sent: int
    completed: int
    failed: int
    lost: int


class StageStatus(BaseModel):
    stage: str
    site: str
    variant: str
    replicas_planned: int
    replicas_alive: int
    rate_planned_per_s: float
    rate_measured_per_s: float
    batches: int
    mean_batch_size: float | None


class RunSummary(BaseModel):
    workflow: str
    duration_s: float
    predicted: Predicted
    measured: Measured
    frames: Frames
    failures: dict[str, int] = {}
    stages: list[StageStatus] = []
    time_to_first_result_s: float | None = None
    first_result_at_unix: float | None = None
    #: Which cores each instance and the data plane were given (see jellybean.runtime.affinity).
    cpu_pinning: dict = {}
    plan: dict = {}


# --------------------------------------------------------------------------------------------------
# the engine


@dataclass
class _Replica:
    spec: ReplicaSpec
    actor: object
    chain: list[ReplicaSpec] = field(default_factory=list)  # the stages it runs, first is `spec`
    queue: asyncio.Queue | None = None
    alive: bool = True
    stateful: bool = False
    node_id: str = ""
    pid: int = 0
    requests: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # per stage of the chain
    batches: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    task: asyncio.Task | None = None
    calls: set = field(default_factory=set)  # outstanding batch calls
    busy_ms: float = 0.0  # time spent inside the models, as the replica measured it
    retired: bool = False  # replaced by a re-plan: finishes what it holds, takes nothing new
    in_hand: list = field(default_factory=list)  # taken from the queue by the sender, not yet sent

    def same_actor(self, chain: list[ReplicaSpec]) -> bool:
        """Whether this live replica can serve ``chain`` as it is: same stages, placement, models and
        batch sizes. Its traffic share and its CPU share may differ: Ray cannot resize a running actor's
        reservation, and restarting a replica only to change a share would need room for both
        (on a full node, none) and drop what the replica keeps (a join's partial frames)."""
        def shape(c: ReplicaSpec) -> tuple:
            return (c.key, c.loader, c.batch_size)

        return self.alive and not self.retired and [shape(c) for c in self.chain] == [shape(c) for c in chain]


@dataclass
class _Item:
    payload: dict
    origin: str  # site the message comes from
    attempts: int = 0
    excluded: set = field(default_factory=set)
    size_bytes: float = 0.0  # declared size (source payload_kb, variant output_kb), for link accounting


def _ancestors(topology: Topology) -> dict[str, list[str]]:
    parent = {s.name: s.parent for s in topology.spec.sites}
    out = {}
    for name in parent:
        chain, cursor = [name], parent[name]
        while cursor is not None:
            chain.append(cursor)
            cursor = parent[cursor]
        out[name] = chain
    return out


class Pipeline:
    """One deployed workflow. Ray must be initialised by the caller (``jellybean run``, the controller)."""

    def __init__(self, bundle: Bundle, plan: Plan, *, cache_dir: Path | None = None, max_wait_ms: float = 2.0,
                 retry: RetryPolicy | None = None, seed: int = 0, drain_timeout_s: float = 30.0,
                 fuse: bool = True, in_flight_batches: int = 2, pin_cpus: bool = False,
                 metrics: Metrics | None = None, overload: str = "backpressure", shed_after_ms: float = 50.0,
                 hold_s: float = 0.0, hold_capacity: int = 10_000, link_buffer_capacity: int = 10_000,
                 frame_timeout_s: float = 120.0, detached: bool = False) -> None:
        if overload not in ("backpressure", "shed"):
            raise ValueError(f"overload must be 'backpressure' or 'shed', not {overload!r}")
        from jellybean.zoo.build import default_cache_dir

        self.bundle = bundle
        self.plan = plan
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.max_wait_s = max_wait_ms / 1000.0
        self.retry = retry or RetryPolicy()
        self.seed = seed
        self.drain_timeout_s = drain_timeout_s
        self.fuse = fuse
        self.in_flight_batches = in_flight_batches
        self.pin_cpus = pin_cpus
        self.cpu_layout: CpuLayout | None = None
        self._driver_cores: list[int] | None = None  # this process's cores before pinning, to restore
        self.specs = replica_specs(bundle, plan)
        self.ledger = Ledger()
        self.hop_overhead_ms: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.replicas: dict[str, _Replica] = {}
        self.by_stage: dict[str, list[str]] = defaultdict(list)
        self.consumers: dict[str, list[str]] = defaultdict(list)
        self.source_consumers: dict[str, list[str]] = defaultdict(list)
        for stage in bundle.workflow.spec.stages:
            for inp in stage.input_specs():
                target = self.source_consumers if inp.from_ in {s.name for s in bundle.workflow.spec.sources} \
                    else self.consumers
                target[inp.from_].append(stage.name)
        self.sink = bundle.workflow.spec.sink
        self.reach = _ancestors(bundle.topology)
        if bundle.topology.spec.allow_downward_flows:
            every = [s.name for s in bundle.topology.spec.sites]
            self.reach = {name: every for name in every}
        self._routers: dict[tuple[str, str], object] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.source_tasks: list = []
        self.started_at: float | None = None
        self.first_result_at: float | None = None
        self.last_result_at: float | None = None
        self.last_result_sent_at: float | None = None  # when the latest completed frame left its source
        self.stopped_at: float | None = None
        self._frame_ids = count()
        self._summary: RunSummary | None = None
        self._flusher: asyncio.Task | None = None
        self._housekeeper: asyncio.Task | None = None
        self._sources_stopping = False
        self.telemetry = Telemetry(self, metrics) if metrics is not None else None
        # Resilience (see the module docstring): overload policy, messages held for a re-plan, uplinks.
        self.overload = overload
        self.shed_after_s = shed_after_ms / 1000.0
        self.hold_s = hold_s
        self.hold_capacity = hold_capacity
        self.held: deque[tuple[float, str, _Item]] = deque()  # (deadline, stage, item)
        self.link_buffer_capacity = link_buffer_capacity
        self.links_down: set[str] = set()  # child sites whose uplink is cut
        self.link_buffers: dict[str, deque[tuple[str, _Item]]] = defaultdict(deque)
        self.parent = {site.name: site.parent for site in bundle.topology.spec.sites}
        self.frame_timeout_s = frame_timeout_s
        self.source_rates = {source.name: source.rate_per_s for source in bundle.workflow.spec.sources}
        self.generated: dict[str, int] = defaultdict(int)  # frames each source produced (sent or shed)
        self.shed = 0
        self.dead: set[str] = set()  # replica keys whose actor died
        self.attention = threading.Event()  # set when something needs the supervisor (a death, a hold)
        self.reconfigurations = 0
        # Detached replicas outlive this process (a controller restart on a cluster that outlives it):
        # named by workflow and replica shape, so the next controller adopts them instead of
        # loading the models again (see _spawn).
        self.detached = detached
        self.adopted: list[str] = []

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self, *, timeout_s: float = 120.0) -> None:
        """Deploy the replicas and start the sources. Raises :class:`ServingError` (after removing
        what it created) when the replicas cannot be placed or loaded within ``timeout_s``."""
        import ray

        self.replicas = self._spawn(list(self._chains(self.specs).values()), timeout_s)
        self._index()
        if self.pin_cpus:
            self._pin(ray.get_runtime_context().get_node_id())
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="jellybean-dataplane", daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start_async(), self.loop).result()

    def _chains(self, specs: list[ReplicaSpec]) -> dict[str, list[ReplicaSpec]]:
        """Head replica key -> the stages its actor runs (fused chains, or the replica alone)."""
        from jellybean.zoo.registry import is_stateful

        chains: dict[str, list[ReplicaSpec]] = {}
        if self.fuse:
            inputs = {s.name: len(s.inputs) for s in self.bundle.workflow.spec.stages}
            order = [s.name for s in self.bundle.workflow.spec.stages]
            chains = plan_fusion(specs, order, self.consumers, inputs, is_stateful)
        absorbed = {spec.key for chain in chains.values() for spec in chain[1:]}
        return {spec.key: chains.get(spec.key, [spec]) for spec in specs if spec.key not in absorbed}

    def _spawn(self, chains: list[list[ReplicaSpec]], timeout_s: float) -> dict[str, _Replica]:
        """Start one actor per chain and wait until each has loaded its models."""
        import ray

        from jellybean.runtime.replica import StageReplica

        made: dict[str, _Replica] = {}
        for chain in chains:
            head = chain[0]
            cpus = sum(c.num_cpus for c in chain)
            name = self._actor_name(chain) if self.detached else None
            actor = self._adopt(name) if name else None
            if actor is not None:
                self.adopted.append(head.key)
            else:
                options = {"lifetime": "detached", "namespace": ACTOR_NAMESPACE} if name else {}
                actor = StageReplica.options(
                    num_cpus=_cpu_amount(cpus), resources={site_resource(head.site): SITE_SLOT},
                    name=name, max_concurrency=1, **options,
                ).remote([c.loader for c in chain], str(self.cache_dir), max(1, int(cpus + 1e-9)),
                         [c.batch_size for c in chain])
            made[head.key] = _Replica(head, actor, chain=chain)
        try:
            infos = ray.get([r.actor.info.remote() for r in made.values()], timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001 - GetTimeoutError, an actor that failed to load, ...
            self._kill_actors(made.values())
            raise ServingError(f"replicas of {self.plan.workflow} could not start within {timeout_s:g} s "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); are the "
                               "sites' resources and CPUs available?") from None
        for replica, info in zip(made.values(), infos):
            replica.node_id = info["node_id"]
            replica.stateful = info["stateful"]
            replica.pid = info["pid"]
        return made

    def _actor_name(self, chain: list[ReplicaSpec]) -> str:
        """A detached replica's name: its workflow and a digest of what it runs, so only a replica
        that serves exactly this chain (stages, placement, models, batch sizes) is ever adopted."""
        import hashlib

        shape = "|".join(f"{c.key}:{c.loader}:{c.batch_size}" for c in chain)
        return f"{self.plan.workflow}/{hashlib.sha256(shape.encode()).hexdigest()[:16]}"

    @staticmethod
    def _adopt(name: str):  # noqa: ANN205 - a Ray actor handle or None
        import ray

        try:
            actor = ray.get_actor(name, namespace=ACTOR_NAMESPACE)
            ray.get(actor.info.remote(), timeout=10)
            return actor
        except Exception:  # noqa: BLE001 - no such actor, or one that no longer answers
            return None

    def release(self) -> RunSummary:
        """Stop the flow here (draining what is in flight) but leave detached replicas running for the
        next controller to adopt."""
        return self.stop(drain=True, keep_replicas=self.detached)

    def _index(self) -> None:
        self.by_stage = defaultdict(list)
        for key, replica in self.replicas.items():
            self.by_stage[replica.spec.stage].append(key)
        self._routers = {}

    def reconfigure(self, plan: Plan, bundle: Bundle | None = None, *, timeout_s: float = 120.0) -> dict:
        """Move the running pipeline to ``plan`` without stopping the flow or losing a frame.

        Replicas the new plan keeps unchanged (same stage, site, instance, model, batch size, CPUs)
        stay; the others are started first, then the routing switches over in one step, and the
        replaced ones finish the batches they hold and stop. Messages queued at a replaced replica and
        messages held because no replica could take them are routed again under the new plan.
        Call from any thread but the data plane's; raises :class:`ServingError` when the new
        replicas cannot start (the old plan keeps running then)."""
        import ray

        bundle = bundle or self.bundle
        specs = replica_specs(bundle, plan)
        wanted = self._chains(specs)
        kept = {key: self.replicas[key] for key, chain in wanted.items()
                if key in self.replicas and self.replicas[key].same_actor(chain)}
        started = self._spawn([chain for key, chain in wanted.items() if key not in kept], timeout_s)
        for key, replica in kept.items():
            replica.chain = wanted[key]
            replica.spec = wanted[key][0]
        asyncio.run_coroutine_threadsafe(self._swap(plan, bundle, specs, {**kept, **started}), self.loop).result()
        if self.pin_cpus:
            self._pin(ray.get_runtime_context().get_node_id())
        return {"kept": sorted(kept), "started": sorted(started)}

    async def _swap(self, plan: Plan, bundle: Bundle, specs: list[ReplicaSpec], replicas: dict[str, _Replica]) -> None:
        retiring = [r for key, r in self.replicas.items() if replicas.get(key) is not r]
        for replica in replicas.values():
            if replica.queue is None:
                replica.queue = asyncio.Queue(maxsize=queue_capacity(replica.spec.batch_size))
                replica.task = asyncio.ensure_future(self._sender(replica))
        self.plan, self.bundle, self.specs = plan, bundle, specs
        self.replicas = replicas
        self._index()
        self.dead -= set(replicas)
        self.reconfigurations += 1
        again: list[tuple[str, _Item]] = []
        for replica in retiring:
            replica.retired = True
            replica.alive = False
            while replica.queue is not None and not replica.queue.empty():
                again.append((replica.spec.stage, replica.queue.get_nowait()))
            asyncio.ensure_future(self._retire(replica))
        while self.held:
            _, stage, item = self.held.popleft()
            again.append((stage, item))
        if self.telemetry is not None:
            self.telemetry.started()
        if again:
            asyncio.ensure_future(self._resubmit(again))

    async def _resubmit(self, items: list[tuple[str, _Item]]) -> None:
        for stage, item in items:
            item.excluded.clear()
            await self._submit(stage, item)

    async def _retire(self, replica: _Replica) -> None:
        """Let a replaced replica finish its outstanding batches, then stop it."""
        if replica.calls:
            await asyncio.gather(*list(replica.calls), return_exceptions=True)
        if replica.task is not None:
            await _cancel_all([replica.task])
        if replica.queue is not None:  # what it held or what arrived meanwhile goes to the new replicas
            left = [(replica.spec.stage, item) for item in replica.in_hand]
            replica.in_hand = []
            while not replica.queue.empty():
                left.append((replica.spec.stage, replica.queue.get_nowait()))
            if left:
                await self._resubmit(left)
        self._kill_actors([replica])

    # --- resilience hooks (called from any thread) ------------------------------------------------------
    def set_source_rate(self, source: str, rate_per_s: float) -> None:
        """Change how fast a source really sends (a busier camera), leaving the plan as it is."""
        if source not in self.source_rates or not rate_per_s > 0:
            raise ValueError(f"unknown source {source!r} or non-positive rate")
        self.source_rates[source] = rate_per_s

    def set_uplink(self, site: str, up: bool) -> None:
        """Mark ``site``'s uplink cut (``up=False``) or restored. While it is cut, stages on both sides
        keep serving what they can reach; messages that must cross it wait in a bounded buffer (beyond
        it they fail with the reason) and are sent when it returns."""
        if site not in self.parent or self.parent[site] is None:
            raise ValueError(f"{site!r} is not a site with an uplink")
        self.loop.call_soon_threadsafe(self._set_uplink, site, up)

    def _set_uplink(self, site: str, up: bool) -> None:
        if up:
            self.links_down.discard(site)
        else:
            self.links_down.add(site)
        self._routers = {}
        if up:
            waiting = self.link_buffers.pop(site, deque())
            if waiting:
                asyncio.ensure_future(self._resubmit(list(waiting)))

    def _crosses_down_link(self, origin: str, destination: str) -> str | None:
        if not self.links_down:
            return None
        for site, _direction in uplinks_between(self.parent, origin, destination):
            if site in self.links_down:
                return site
        return None

    async def _start_async(self) -> None:
        for replica in self.replicas.values():
            replica.queue = asyncio.Queue(maxsize=queue_capacity(replica.spec.batch_size))
            replica.task = asyncio.ensure_future(self._sender(replica))
        self.started_at = time.time()
        if self.telemetry is not None:
            self.telemetry.started()
            self._flusher = asyncio.ensure_future(self._flush_telemetry())
        self._housekeeper = asyncio.ensure_future(self._housekeeping())
        for source in self.bundle.workflow.spec.sources:
            frames = self._dataset(source)
            per_site = source.count_per_site
            for site in source.sites:
                for k in range(per_site):
                    self.source_tasks.append(asyncio.ensure_future(
                        self._source(source.name, site, frames, offset=len(self.source_tasks))))

    async def _flush_telemetry(self, every_s: float = 0.5) -> None:
        while True:
            await asyncio.sleep(every_s)
            self.telemetry.flush()

    async def _housekeeping(self, every_s: float = 0.2) -> None:
        """Fail, with their reason, messages held too long for a replica and frames in flight too long."""
        while True:
            await asyncio.sleep(every_s)
            now = time.monotonic()
            while self.held and self.held[0][0] <= now:
                _, stage, item = self.held.popleft()
                self._fail(item.payload.get("frame_id"), f"no live replica of stage {stage} for {self.hold_s:g} s "
                                                          "(no re-plan could serve it)")
            for frame_id in self.ledger.older_than(time.time() - self.frame_timeout_s):
                self._fail(frame_id, f"in flight for more than {self.frame_timeout_s:g} s (its parts were held by a "
                                     "replica that was replaced or lost)")

    def _fail(self, frame_id, reason: str) -> None:
        if self.ledger.fail(frame_id, reason) and self.telemetry is not None:
            self.telemetry.frame_failed()

    def _dataset(self, source) -> list[dict]:
        from jellybean.zoo.datasets import load_dataset

        if not source.dataset:
            raise ServingError(f"source {source.name!r} names no `dataset` to replay (e.g. digits-frames)")
        return load_dataset(source.dataset, seed=self.seed)

    def stop(self, *, drain: bool = True, keep_replicas: bool = False) -> RunSummary:
        if self._summary is not None:
            return self._summary
        if self.loop is None:  # never started, or a start that failed: nothing flows, just clean up
            self._kill_actors()
            self._summary = self.summary()
            return self._summary
        asyncio.run_coroutine_threadsafe(self._stop_sources(), self.loop).result()
        deadline = time.time() + (self.drain_timeout_s if drain else 0.0)
        while self.ledger.in_flight and time.time() < deadline:
            time.sleep(0.02)
        asyncio.run_coroutine_threadsafe(self._close(), self.loop).result()
        if self.telemetry is not None:
            self.telemetry.stopped()
        summary = self.summary()
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self.thread:
            self.thread.join(timeout=5)
        if keep_replicas:
            self._unpin_driver()  # the replicas stay for the next controller
        else:
            self._kill_actors()
        self._summary = summary
        return summary

    def _pin(self, driver_node: str) -> None:
        """Pin replicas and this process to cores (:mod:`jellybean.runtime.affinity`) when every
        replica runs on this machine; otherwise record why not."""
        if any(r.node_id != driver_node for r in self.replicas.values()):
            self.cpu_layout = CpuLayout(reason="replicas run on other nodes: each node schedules its own cores")
            return
        loads: dict[tuple, InstanceLoad] = {}
        for spec in self.specs:
            known = loads.get(spec.instance_key)
            utilization = spec.utilization + (known.utilization if known else 0.0)
            loads[spec.instance_key] = InstanceLoad(spec.instance_key, spec.instance_cpus, utilization)
        cores = self._driver_cores or usable_cores()  # a re-plan lays out the cores this process started with
        layout = cpu_layout(loads.values(), cores)
        self.cpu_layout = layout
        if not layout.pinned:
            return
        for replica in self.replicas.values():
            pin_process(layout.instances[replica.spec.instance_key], pid=replica.pid)
        if self._driver_cores is None and pin_process(layout.driver):
            self._driver_cores = cores
        elif self._driver_cores is not None:
            pin_process(layout.driver)

    def _pinning_report(self) -> dict:
        layout = self.cpu_layout
        if layout is None:
            return {"pinned": False, "reason": "not requested"}
        if not layout.pinned:
            return {"pinned": False, "reason": layout.reason}
        return {"pinned": True, "instances": {"/".join(map(str, key)): cores for key, cores in layout.instances.items()},
                "driver": layout.driver}

    def _unpin_driver(self) -> None:
        if self._driver_cores is not None:
            pin_process(self._driver_cores)
            self._driver_cores = None

    def _kill_actors(self, replicas=None) -> None:  # noqa: ANN001 - an iterable of _Replica
        import ray

        for replica in self.replicas.values() if replicas is None else replicas:
            try:
                ray.kill(replica.actor)
            except Exception:  # noqa: BLE001 - already dead is fine
                pass
            replica.alive = False
        if replicas is None:  # the whole pipeline goes: this process gets its cores back
            self._unpin_driver()

    async def _stop_sources(self) -> None:
        self._sources_stopping = True
        await _cancel_all(self.source_tasks)
        self.stopped_at = time.time()

    async def _close(self) -> None:
        for frame_id in list(self.ledger._open):
            self._fail(frame_id, "still in flight when the pipeline stopped (drain timeout)")
        pending = [task for task in (self._flusher, self._housekeeper) if task]
        while self.held:
            _, stage, item = self.held.popleft()
            self._fail(item.payload.get("frame_id"), f"held for stage {stage} when the pipeline stopped")
        for replica in self.replicas.values():
            pending += [task for task in [replica.task, *replica.calls] if task]
        await _cancel_all(pending)

    # --- sources ----------------------------------------------------------------------------------
    async def _source(self, name: str, site: str, frames: list[dict], offset: int) -> None:
        """Replay ``frames`` at the source's current rate (:meth:`set_source_rate` may change it).

        Overload: with ``backpressure`` a source that cannot hand a frame over waits, and so sends
        fewer frames (right for measuring capacity); with ``shed`` it waits at most
        ``shed_after_ms`` and then drops the frame *explicitly*: recorded as failed with the reason and
        counted as shed, as a camera that cannot be served would (right for serving)."""
        next_at = time.monotonic()
        telemetry = self.telemetry
        size_bytes = telemetry.source_bytes.get(name, 0.0) if telemetry is not None else 0.0
        position = offset * 7919 % len(frames)
        shed = self.overload == "shed"
        # The flag, not only the cancellation, ends the loop: Python 3.11's asyncio.wait_for (the shed
        # path) can swallow a cancellation that arrives as its inner put completes.
        while not self._sources_stopping:
            interval = 1.0 / self.source_rates[name]
            now = time.monotonic()
            if next_at > now:
                await asyncio.sleep(next_at - now)
            frame = dict(frames[position % len(frames)])
            position += 1
            frame_id = next(self._frame_ids)
            frame["frame_id"] = frame_id
            frame["sent_at"] = time.time()
            self.ledger.send(frame_id)
            self.generated[name] += 1
            consumers = self.source_consumers[name]
            for n, stage in enumerate(consumers):
                try:
                    taken = await self._submit(stage, _Item(dict(frame), origin=site, size_bytes=size_bytes),
                                               shed_after_s=self.shed_after_s if shed else None)
                    if not taken:  # shed: recorded as failed, the rest of the frame is not sent
                        self.shed += 1
                        if telemetry is not None:
                            telemetry.frame_shed(name, site)
                        self._fail(frame_id, f"shed at the source: stage {stage} could not take it within "
                                             f"{self.shed_after_s * 1000:g} ms (overload)")
                        break
                    if n == 0 and telemetry is not None:  # in the pipeline now (a withdrawn frame never was)
                        telemetry.frame_sent(name, site)
                except asyncio.CancelledError:
                    # Stopped while waiting for room (backpressure): if no stage got the frame it
                    # was never sent; if some did, the rest of it cannot follow.
                    if n == 0:
                        self.ledger.withdraw(frame_id)
                        self.generated[name] -= 1
                    else:
                        self._fail(frame_id, "source stopped while handing the frame to its stages")
                    raise
            # A source that fell behind (backpressure) does not burst to catch up: it sends at the rate
            # it can; a shedding one keeps its own pace.
            next_at = max(next_at + interval, time.monotonic() - interval)

    # --- routing --------------------------------------------------------------------------------------
    def _router(self, stage: str, origin: str):
        """The router for ``stage`` from ``origin`` over the live replicas it can reach (up the tiers,
        and not across a cut uplink); None when there is none."""
        key = (stage, origin)
        router = self._routers.get(key)
        if router is None:
            reachable = set(self.reach.get(origin, [origin]))
            weights = {k: self.replicas[k].spec.weight for k in self.by_stage[stage]
                       if self.replicas[k].spec.site in reachable and self.replicas[k].alive
                       and self._crosses_down_link(origin, self.replicas[k].spec.site) is None}
            if not weights:
                return None
            stateful = any(self.replicas[k].stateful for k in weights)
            router = AffinityRouter(weights) if stateful else WeightedRouter(weights)
            self._routers[key] = router
        return router

    async def _submit(self, stage: str, item: _Item, *, shed_after_s: float | None = None) -> bool:
        """Route ``item`` to a replica of ``stage`` and queue it. Returns False only when
        ``shed_after_s`` is given and the chosen queue stayed full that long (the caller sheds)."""
        router = self._router(stage, item.origin)
        choice = None
        if router is not None:
            if isinstance(router, AffinityRouter):
                choice = router.pick(item.payload.get("frame_id"), exclude=item.excluded)
            else:
                choice = router.pick(exclude=item.excluded)
        if choice is None:
            self._unroutable(stage, item)
            return True
        replica = self.replicas[choice]
        if self.telemetry is not None:
            self.telemetry.routed(item.origin, replica.spec.site, item.size_bytes)
        queue = replica.queue
        if not queue.full():
            queue.put_nowait(item)  # the common case, without a coroutine round trip
            return True
        if shed_after_s is None:
            await queue.put(item)  # backpressure: wait for room
            return True
        try:
            await asyncio.wait_for(queue.put(item), shed_after_s)
        except asyncio.TimeoutError:
            return False
        return True

    def _unroutable(self, stage: str, item: _Item) -> None:
        """No live replica of ``stage`` can take ``item`` now. Behind a cut uplink it waits in that
        link's bounded buffer; while a re-plan may still come (``hold_s``) it is held; else it fails."""
        frame_id = item.payload.get("frame_id")
        beyond = [k for k in self.by_stage[stage] if self.replicas[k].alive
                  and self.replicas[k].spec.site in self.reach.get(item.origin, [item.origin])]
        link = next((self._crosses_down_link(item.origin, self.replicas[k].spec.site) for k in beyond), None)
        if link is not None:
            buffer = self.link_buffers[link]
            if len(buffer) < self.link_buffer_capacity:
                buffer.append((stage, item))
                return
            self._fail(frame_id, f"uplink of {link} is down and its buffer ({self.link_buffer_capacity} messages) "
                                 "is full")
        elif self.hold_s > 0 and len(self.held) < self.hold_capacity:
            self.held.append((time.monotonic() + self.hold_s, stage, item))
            self.attention.set()
            return
        else:
            self._fail(frame_id, f"no live replica of stage {stage} reachable from {item.origin}")
        if self.telemetry is not None:
            self.telemetry.dropped(stage)

    def _drop_replica(self, key: str) -> None:
        self.replicas[key].alive = False
        self.dead.add(key)
        self.attention.set()
        for router in self._routers.values():
            router.remove(key)

    # --- replicas ---------------------------------------------------------------------------------------
    async def _sender(self, replica: _Replica) -> None:
        """Form batches for one replica and keep up to ``in_flight_batches`` calls outstanding: the
        actor runs them one at a time, but the next batch is already waiting at it, which hides the
        round trip (with one call at a time a tiny model would spend most of its time idle)."""
        spec = replica.spec
        window = asyncio.Semaphore(self.in_flight_batches)
        while True:
            # What the sender holds between the queue and the call is kept on the replica, so a
            # retired replica's sender can be cancelled without dropping it (see _retire).
            replica.in_hand = []
            items = await collect_batch(replica.queue, spec.batch_size, self.max_wait_s, into=replica.in_hand)
            await window.acquire()
            replica.in_hand = []
            call = asyncio.ensure_future(self._call(replica, items, window))
            replica.calls.add(call)
            call.add_done_callback(replica.calls.discard)

    async def _call(self, replica: _Replica, items: list[_Item], window: asyncio.Semaphore) -> None:
        spec = replica.spec
        if not replica.alive:
            window.release()
            await self._retry(spec.stage, items, spec.key, "replica is down")
            return
        started = time.perf_counter()
        try:
            outputs, model_ms, report = await replica.actor.process.remote([i.payload for i in items])
        except asyncio.CancelledError:
            window.release()
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of the call is retried elsewhere
            window.release()
            if self.telemetry is not None:
                self.telemetry.batch_failed(replica, len(items))
            reason = f"{type(exc).__name__} on {spec.key}"
            if _is_actor_death(exc):
                self._drop_replica(spec.key)
            await self._retry(spec.stage, items, spec.key, reason)
            return
        window.release()  # the replica is free for the next batch while these outputs are routed
        rtt_ms = (time.perf_counter() - started) * 1000.0
        overhead_ms = max(0.0, rtt_ms - model_ms)
        self.hop_overhead_ms.append(overhead_ms)
        replica.busy_ms += model_ms
        for stage_spec, (requests, batches, _outputs, _timings) in zip(replica.chain, report):
            replica.requests[stage_spec.stage] += requests
            replica.batches[stage_spec.stage] += batches
        if self.telemetry is not None:
            self.telemetry.batch_done(replica, report, model_ms, overhead_ms)
        last = replica.chain[-1]
        if last.stage == self.sink:
            for produced in outputs:
                for message in produced:
                    self._finish(message)
            return
        consumers = self.consumers[last.stage]
        size_bytes = self.telemetry.output_bytes.get(last.stage, 0.0) if self.telemetry is not None else 0.0
        for produced in outputs:
            for message in produced:
                # Messages arrive freshly deserialised from the replica: no copy needed, except
                # when several stages consume the same output.
                for n, consumer in enumerate(consumers):
                    await self._submit(consumer, _Item(message if n == 0 else dict(message), origin=last.site,
                                                       size_bytes=size_bytes))

    async def _retry(self, stage: str, items: list[_Item], failed_on: str, reason: str) -> None:
        for item in items:
            item.attempts += 1
            item.excluded.add(failed_on)
            if self.retry.retry(item.attempts):
                await self._submit(stage, item)
            else:
                self._fail(item.payload.get("frame_id"), f"stage {stage}: {reason}")
                if self.telemetry is not None:
                    self.telemetry.dropped(stage)

    def _finish(self, message: dict) -> None:
        now = time.time()
        latency_ms = (now - message.get("sent_at", now)) * 1000.0
        correct = bool(message.get("correct", False))
        if self.ledger.complete(message["frame_id"], correct=correct, latency_ms=latency_ms):
            if self.telemetry is not None:
                self.telemetry.frame_completed(correct, latency_ms)
            if self.first_result_at is None:
                self.first_result_at = now
            self.last_result_at = now
            self.last_result_sent_at = message.get("sent_at", now)

    # --- reporting --------------------------------------------------------------------------------------
    def status(self) -> dict:
        elapsed = max(1e-9, (self.stopped_at or time.time()) - (self.started_at or time.time()))
        rows = []
        grouped: dict[tuple[str, str, str], list[tuple[ReplicaSpec, _Replica]]] = defaultdict(list)
        for replica in self.replicas.values():
            for stage_spec in replica.chain:
                grouped[(stage_spec.stage, stage_spec.site, stage_spec.variant)].append((stage_spec, replica))
        for (stage, site, variant), members in grouped.items():
            batches = sum(r.batches[stage] for _, r in members)
            requests = sum(r.requests[stage] for _, r in members)
            rows.append(StageStatus(
                stage=stage, site=site, variant=variant, replicas_planned=len(members),
                replicas_alive=sum(r.alive for _, r in members),
                rate_planned_per_s=sum(spec.weight for spec, _ in members), rate_measured_per_s=requests / elapsed,
                batches=batches, mean_batch_size=(requests / batches) if batches else None,
            ).model_dump())
        ledger = self.ledger
        alive_by_stage = {stage: any(self.replicas[k].alive for k in keys) for stage, keys in self.by_stage.items()
                          if keys}
        if self._summary is not None or self.loop is None:
            state = "stopped"
        elif not all(alive_by_stage.values()):
            state = "failed"
        elif any(not r.alive for r in self.replicas.values()):
            state = "degraded"
        else:
            state = "running"
        # While running, frames in flight are not lost: lost counts only the unaccounted rest.
        return {"state": state, "stages": rows,
                "frames": {"sent": ledger.sent, "completed": ledger.completed, "failed": ledger.failed,
                           "in_flight": ledger.in_flight, "lost": ledger.lost - ledger.in_flight}}

    def summary(self) -> RunSummary:
        ledger = self.ledger
        plan = self.plan
        started = self.started_at or time.time()
        end = self.last_result_at or time.time()
        duration = (self.stopped_at or time.time()) - started
        source_rate = sum(s.rate_per_s * s.count_per_site * len(s.sites) for s in self.bundle.workflow.spec.sources)
        # Served rate in steady state: completions between the first and the last result (the
        # start-up before the first result is reported separately as time to first result).
        first = self.first_result_at or started
        if ledger.completed > 1 and end > first:
            served = (ledger.completed - 1) / (end - first)
        else:
            served = ledger.completed / max(1e-9, end - started)
        status = self.status()
        return RunSummary(
            workflow=plan.workflow, duration_s=duration,
            predicted=Predicted(throughput_per_s=source_rate, accuracy=plan.accuracy, latency_ms_p50=plan.latency_ms,
                                cost_per_hour=plan.cost.total_per_hour if plan.cost else None),
            measured=Measured(
                throughput_per_s=served,
                accuracy=(100.0 * ledger.correct / ledger.completed) if ledger.completed else None,
                latency_ms_p50=percentile(ledger.latencies_ms, 50), latency_ms_p99=percentile(ledger.latencies_ms, 99),
                hop_overhead_ms_p50=percentile(self.hop_overhead_ms, 50),
                hop_overhead_ms_p99=percentile(self.hop_overhead_ms, 99),
            ),
            frames=Frames(sent=ledger.sent, completed=ledger.completed, failed=ledger.failed, lost=ledger.lost),
            failures=dict(ledger.reasons),
            stages=[StageStatus(**row) for row in status["stages"]],
            time_to_first_result_s=(self.first_result_at - started) if self.first_result_at else None,
            first_result_at_unix=self.first_result_at,
            cpu_pinning=self._pinning_report(),
            plan=plan.model_dump(mode="json", by_alias=True),
        )


async def _cancel_all(tasks: list, rounds: int = 5, wait_s: float = 1.0) -> None:
    """Cancel ``tasks`` and wait for them to end. A task that swallowed its cancellation (Python
    3.11's asyncio.wait_for can, when the awaited result arrives with the cancel) is cancelled again,
    a few times, instead of being waited for forever."""
    pending = {task for task in tasks if not task.done()}
    for _ in range(rounds):
        if not pending:
            return
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=wait_s)


def _cpu_amount(cpus: float) -> float:
    """A CPU reservation Ray accepts (granularity 1e-4), rounded *down* so that shares which add up to
    an instance's cores never ask for more than the node has."""
    return max(0.01, math.floor(cpus * 10_000 + 1e-6) / 10_000)


def _is_actor_death(exc: Exception) -> bool:
    return type(exc).__name__ in {"RayActorError", "ActorDiedError", "ActorUnavailableError"}


def local_cpus() -> int:
    return os.cpu_count() or 1
