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
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

from pydantic import BaseModel

from jellybean.optimizer.plan import Plan
from jellybean.runtime.affinity import CpuLayout, InstanceLoad, cpu_layout, pin_process, usable_cores
from jellybean.runtime.flow import Ledger, RetryPolicy, collect_batch, percentile, queue_capacity
from jellybean.runtime.routing import AffinityRouter, WeightedRouter
from jellybean.spec.bundle import Bundle
from jellybean.spec.topology import Topology

SITE_RESOURCE_PREFIX = "site:"
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
    #: Which instance the replica runs on: replicas of one shared instance have the same key.
    instance_key: tuple = ()
    instance_cpus: float = 1.0
    utilization: float = 0.0  # planned busy fraction of its instance that this replica accounts for


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
                # Shared instances host every stage placed on their group; exclusive ones one stage.
                instance_key = (site, a.instance, k) if plan.sharing == "shared" else (site, a.instance, a.stage, k)
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


@dataclass
class _Item:
    payload: dict
    origin: str  # site the message comes from
    attempts: int = 0
    excluded: set = field(default_factory=set)


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
                 fuse: bool = True, in_flight_batches: int = 2, pin_cpus: bool = False) -> None:
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
        self.hop_overhead_ms: list[float] = []
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
        self.stopped_at: float | None = None
        self._frame_ids = count()
        self._summary: RunSummary | None = None

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self, *, timeout_s: float = 120.0) -> None:
        """Deploy the replicas and start the sources. Raises :class:`ServingError` (after removing
        what it created) when the replicas cannot be placed or loaded within ``timeout_s``."""
        import ray

        from jellybean.runtime.replica import StageReplica

        from jellybean.zoo.registry import is_stateful

        chains: dict[str, list[ReplicaSpec]] = {}
        if self.fuse:
            inputs = {s.name: len(s.inputs) for s in self.bundle.workflow.spec.stages}
            order = [s.name for s in self.bundle.workflow.spec.stages]
            chains = plan_fusion(self.specs, order, self.consumers, inputs, is_stateful)
        absorbed = {spec.key for chain in chains.values() for spec in chain[1:]}
        for spec in self.specs:
            if spec.key in absorbed:
                continue
            chain = chains.get(spec.key, [spec])
            cpus = sum(c.num_cpus for c in chain)
            actor = StageReplica.options(
                num_cpus=_cpu_amount(cpus), resources={site_resource(spec.site): SITE_SLOT},
                name=None, max_concurrency=1,
            ).remote([c.loader for c in chain], str(self.cache_dir), max(1, int(cpus + 1e-9)),
                     [c.batch_size for c in chain])
            self.replicas[spec.key] = _Replica(spec, actor, chain=chain)
            self.by_stage[spec.stage].append(spec.key)
        try:
            infos = ray.get([r.actor.info.remote() for r in self.replicas.values()], timeout=timeout_s)
        except Exception as exc:  # noqa: BLE001 - GetTimeoutError, an actor that failed to load, ...
            self._kill_actors()
            raise ServingError(f"replicas of {self.plan.workflow} could not start within {timeout_s:g} s "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); are the "
                               "sites' resources and CPUs available?") from None
        for replica, info in zip(self.replicas.values(), infos):
            replica.node_id = info["node_id"]
            replica.stateful = info["stateful"]
            replica.pid = info["pid"]
        if self.pin_cpus:
            self._pin(ray.get_runtime_context().get_node_id())
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="jellybean-dataplane", daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start_async(), self.loop).result()

    async def _start_async(self) -> None:
        for replica in self.replicas.values():
            replica.queue = asyncio.Queue(maxsize=queue_capacity(replica.spec.batch_size))
            replica.task = asyncio.ensure_future(self._sender(replica))
        self.started_at = time.time()
        for source in self.bundle.workflow.spec.sources:
            frames = self._dataset(source)
            per_site = source.count_per_site
            for site in source.sites:
                for k in range(per_site):
                    self.source_tasks.append(asyncio.ensure_future(
                        self._source(source.name, site, source.rate_per_s, frames, offset=len(self.source_tasks))))

    def _dataset(self, source) -> list[dict]:
        from jellybean.zoo.datasets import load_dataset

        if not source.dataset:
            raise ServingError(f"source {source.name!r} names no `dataset` to replay (e.g. digits-frames)")
        return load_dataset(source.dataset, seed=self.seed)

    def stop(self, *, drain: bool = True) -> RunSummary:
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
        summary = self.summary()
        self.loop.call_soon_threadsafe(self.loop.stop)
        if self.thread:
            self.thread.join(timeout=5)
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
        cores = usable_cores()
        layout = cpu_layout(loads.values(), cores)
        self.cpu_layout = layout
        if not layout.pinned:
            return
        for replica in self.replicas.values():
            pin_process(layout.instances[replica.spec.instance_key], pid=replica.pid)
        if pin_process(layout.driver):
            self._driver_cores = cores

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

    def _kill_actors(self) -> None:
        import ray

        for replica in self.replicas.values():
            try:
                ray.kill(replica.actor)
            except Exception:  # noqa: BLE001 - already dead is fine
                pass
            replica.alive = False
        self._unpin_driver()

    async def _stop_sources(self) -> None:
        for task in self.source_tasks:
            task.cancel()
        await asyncio.gather(*self.source_tasks, return_exceptions=True)
        self.stopped_at = time.time()

    async def _close(self) -> None:
        for frame_id in list(self.ledger._open):
            self.ledger.fail(frame_id, "still in flight when the pipeline stopped (drain timeout)")
        pending = []
        for replica in self.replicas.values():
            for task in [replica.task, *replica.calls]:
                if task:
                    task.cancel()
                    pending.append(task)
        await asyncio.gather(*pending, return_exceptions=True)

    # --- sources ----------------------------------------------------------------------------------
    async def _source(self, name: str, site: str, rate_per_s: float, frames: list[dict], offset: int) -> None:
        interval = 1.0 / rate_per_s
        next_at = time.monotonic()
        position = offset * 7919 % len(frames)
        while True:
            now = time.monotonic()
            if next_at > now:
                await asyncio.sleep(next_at - now)
            frame = dict(frames[position % len(frames)])
            position += 1
            frame_id = next(self._frame_ids)
            frame["frame_id"] = frame_id
            frame["sent_at"] = time.time()
            self.ledger.send(frame_id)
            consumers = self.source_consumers[name]
            for n, stage in enumerate(consumers):
                try:
                    await self._submit(stage, _Item(dict(frame), origin=site))
                except asyncio.CancelledError:
                    # Stopped while waiting for room (backpressure): if no stage got the frame it
                    # was never sent; if some did, the rest of it cannot follow.
                    if n == 0:
                        self.ledger.withdraw(frame_id)
                    else:
                        self.ledger.fail(frame_id, "source stopped while handing the frame to its stages")
                    raise
            # Backpressure: if submitting blocked, the source has fallen behind; it does not burst
            # to catch up, it simply sends at the rate it can.
            next_at = max(next_at + interval, time.monotonic() - interval)

    # --- routing --------------------------------------------------------------------------------------
    def _router(self, stage: str, origin: str):
        key = (stage, origin)
        router = self._routers.get(key)
        if router is None:
            reachable = set(self.reach.get(origin, [origin]))
            weights = {k: self.replicas[k].spec.weight for k in self.by_stage[stage]
                       if self.replicas[k].spec.site in reachable and self.replicas[k].alive}
            if not weights:
                return None
            stateful = any(self.replicas[k].stateful for k in weights)
            router = AffinityRouter(weights) if stateful else WeightedRouter(weights)
            self._routers[key] = router
        return router

    async def _submit(self, stage: str, item: _Item) -> None:
        router = self._router(stage, item.origin)
        choice = None
        if router is not None:
            if isinstance(router, AffinityRouter):
                choice = router.pick(item.payload.get("frame_id"), exclude=item.excluded)
            else:
                choice = router.pick(exclude=item.excluded)
        if choice is None:
            self.ledger.fail(item.payload.get("frame_id"), f"no live replica of stage {stage} reachable from "
                                                            f"{item.origin}")
            return
        queue = self.replicas[choice].queue
        if queue.full():
            await queue.put(item)  # backpressure: wait for room
        else:
            queue.put_nowait(item)  # the common case, without a coroutine round trip

    def _drop_replica(self, key: str) -> None:
        self.replicas[key].alive = False
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
            items = await collect_batch(replica.queue, spec.batch_size, self.max_wait_s)
            await window.acquire()
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
            outputs, model_ms, counts = await replica.actor.process.remote([i.payload for i in items])
        except asyncio.CancelledError:
            window.release()
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of the call is retried elsewhere
            window.release()
            reason = f"{type(exc).__name__} on {spec.key}"
            if _is_actor_death(exc):
                self._drop_replica(spec.key)
            await self._retry(spec.stage, items, spec.key, reason)
            return
        window.release()  # the replica is free for the next batch while these outputs are routed
        rtt_ms = (time.perf_counter() - started) * 1000.0
        self.hop_overhead_ms.append(max(0.0, rtt_ms - model_ms))
        replica.busy_ms += model_ms
        for stage_spec, (requests, batches) in zip(replica.chain, counts):
            replica.requests[stage_spec.stage] += requests
            replica.batches[stage_spec.stage] += batches
        last = replica.chain[-1]
        if last.stage == self.sink:
            for produced in outputs:
                for message in produced:
                    self._finish(message)
            return
        consumers = self.consumers[last.stage]
        for produced in outputs:
            for message in produced:
                # Messages arrive freshly deserialised from the replica: no copy needed, except
                # when several stages consume the same output.
                for n, consumer in enumerate(consumers):
                    await self._submit(consumer, _Item(message if n == 0 else dict(message), origin=last.site))

    async def _retry(self, stage: str, items: list[_Item], failed_on: str, reason: str) -> None:
        for item in items:
            item.attempts += 1
            item.excluded.add(failed_on)
            if self.retry.retry(item.attempts):
                await self._submit(stage, item)
            else:
                self.ledger.fail(item.payload.get("frame_id"), f"stage {stage}: {reason}")

    def _finish(self, message: dict) -> None:
        now = time.time()
        latency_ms = (now - message.get("sent_at", now)) * 1000.0
        correct = bool(message.get("correct", False))
        if self.ledger.complete(message["frame_id"], correct=correct, latency_ms=latency_ms):
            if self.first_result_at is None:
                self.first_result_at = now
            self.last_result_at = now

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


def _cpu_amount(cpus: float) -> float:
    """A CPU reservation Ray accepts (granularity 1e-4), rounded *down* so that shares which add up to
    an instance's cores never ask for more than the node has."""
    return max(0.01, math.floor(cpus * 10_000 + 1e-6) / 10_000)


def _is_actor_death(exc: Exception) -> bool:
    return type(exc).__name__ in {"RayActorError", "ActorDiedError", "ActorUnavailableError"}


def local_cpus() -> int:
    return os.cpu_count() or 1
