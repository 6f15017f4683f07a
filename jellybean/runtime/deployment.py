"""What a plan means for Ray, computed once: the :class:`Deployment` value.

A Plan says which variant serves each stage, where, on how many instances, at which batch size and
with which share of the traffic. The runtime needs that in its own terms, and needs it in several
places (the data plane that starts actors and pushes routing tables, the controller's status, the
telemetry that compares measured with planned): so it is computed here, once, from (Bundle, Plan),
and every one of them reads the same value.

- **Replicas.** Each placement becomes ``ceil(instances)`` replicas (:class:`ReplicaSpec`), with the
  CPU share of their instance (shared instances split their cores by the planned busy time of each
  stage placed there), its torch threads, its batch size and its planned requests/s (its routing
  weight). Consecutive stateless stages placed on the same instance, one replica each, are *fused*
  into one actor (:func:`plan_fusion`): the plan is unchanged, one hop moves inside a process.
- **Sources.** One per (source group, site): an ingest endpoint or a replay loop there, with the
  rate of its ``count_per_site`` sources and what a payload must decode to.
- **Sinks.** A workflow may have several (stages no stage reads from): ``sinks``, and for every stage
  the sinks downstream of it (``sinks_below``), which is how a frame's ends are kept per sink.
- **Outputs.** One per output and site where results are delivered: the output's own site when it
  names one, else every site where one of its sinks runs. Each carries the results of its sinks
  (``OutputPlan.sinks``; by default every sink's).
- **Routes.** For a stage and the site a message comes from, the replicas of the stage it may go to
  (those it can reach without flowing down the tiers, unless the topology allows it, and not across a
  cut uplink) with their planned shares as weights: :meth:`Deployment.route_weights`.
- **Link batching**: a send to another site carries as many messages as the plan priced
  (:meth:`Deployment.link_batch_of`: up to ``link_batch_messages``, fewer for messages near a TCP
  segment's size), waiting at most ``link_batch_wait_ms`` for them (the Topology's).
- **Message sizes** (bytes of one message, as the plan priced it: a source's ``payload_kb``, a
  variant's ``output_kb``, an output's result size; 1 KB = 1024 bytes) and **planned link traffic**
  (bytes/s per uplink and direction, from the plan's flows).

Sites are Ray custom resources: every replica, source and output asks for a sliver of
``site:<name>``, which only the node (or nodes) of that site offer, so Ray places it there.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from jellybean.optimizer.framing import Framing
from jellybean.plugins import serving_ref
from jellybean.spec.workflow import WorkflowSpec, topological_order

if TYPE_CHECKING:
    from jellybean.optimizer.plan import Plan
    from jellybean.spec.bundle import Bundle
    from jellybean.spec.topology import Topology

SITE_RESOURCE_PREFIX = "site:"
#: Each actor asks for this much of its site's resource; a site offers SITE_CAPACITY of it.
SITE_SLOT = 0.001
SITE_CAPACITY = 1000.0
KB = 1024.0


def site_resource(site: str) -> str:
    return f"{SITE_RESOURCE_PREFIX}{site}"


def site_resources(topology: Topology) -> dict[str, float]:
    """The custom resources an embedded single-node Ray needs so that every site exists."""
    return {site_resource(s.name): SITE_CAPACITY for s in topology.spec.sites}


class ServingError(Exception):
    """The plan cannot be served as written (no loader, no dataset, no room): a user error, in words."""


class NoRoom(ServingError):
    """Ray has not the CPUs free that the replicas ask for now (other pipelines hold them): said at once,
    instead of after the setup timeout; a rollout then stops the old version first."""

    no_room = True  # what the reconcile core looks for (it imports no data plane)


def cpu_amount(cpus: float) -> float:
    """A CPU reservation Ray accepts (granularity 1e-4), rounded *down* so that shares which add up to
    an instance's cores never ask for more than the node has."""
    return max(0.01, math.floor(cpus * 10_000 + 1e-6) / 10_000)


@dataclass(frozen=True)
class ReplicaSpec:
    """One replica of one stage (a fused actor holds several, consecutive)."""

    key: str
    stage: str
    variant: str
    #: What serves it: a registered runner's name, or ``artifact:FORMAT:SHA256`` for an artifact variant
    #: (whose description travels in ``artifact``, as the JSON of the variant's serving fields).
    runner: str
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
    latency_ms: float = 0.0  # the profile's latency of one batch
    artifact: str | None = None  # the variant's artifact, signature and steps (JSON), for artifact variants

    @property
    def instance_label(self) -> str:
        """The ``instance`` label of metrics: the group's name and the instance's index (``hub-cpu-0``)."""
        return f"{self.instance_key[1]}-{self.instance_key[2]}" if len(self.instance_key) == 3 else self.instance


@dataclass(frozen=True)
class ReplicaPlan:
    """One actor: a chain of replica specs (one, or several fused), at one site."""

    chain: tuple[ReplicaSpec, ...]
    stateful: bool = False

    @property
    def key(self) -> str:
        return self.chain[0].key

    @property
    def head(self) -> ReplicaSpec:
        return self.chain[0]

    @property
    def tail(self) -> ReplicaSpec:
        return self.chain[-1]

    @property
    def site(self) -> str:
        return self.chain[0].site

    @property
    def num_cpus(self) -> float:
        return cpu_amount(sum(c.num_cpus for c in self.chain))

    @property
    def threads(self) -> int:
        return max(1, int(sum(c.num_cpus for c in self.chain) + 1e-9))

    @property
    def shape(self) -> tuple:
        """What the actor runs: a replica of the same shape serves the chain as it is, so a re-plan
        keeps it (its batch sizes and shares change in place; its CPU reservation stays, since Ray
        cannot resize a running actor's, and replacing it would need room for both, and would drop
        what it keeps: a join's partial frames)."""
        return tuple((c.key, c.runner) for c in self.chain)

    def name(self, workflow: str) -> str:
        """A detached actor's name: the workflow and a digest of its shape, so that only an actor
        running exactly this chain is ever adopted by a later controller."""
        shape = "|".join(f"{key}:{runner}" for key, runner in self.shape)
        return f"{workflow}/{hashlib.sha256(shape.encode()).hexdigest()[:16]}"


@dataclass(frozen=True)
class SourcePlan:
    """The sources of one group at one site: an ingest endpoint, or a replay loop, there."""

    source: str
    site: str
    tier: str
    mode: str  # "http" | "replay"
    dataset: str | None
    rate_per_s: float  # all ``count`` sources of the group at this site together
    count: int
    payload_bytes: float
    array: str  # the message field a payload decodes to
    dtype: str | None
    shape: tuple[int, ...] | None
    consumers: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.source}@{self.site}"


@dataclass(frozen=True)
class OutputPlan:
    """One output delivered at one site."""

    name: str
    kind: str  # stream | webhook | file
    site: str
    tier: str
    url: str | None
    options: dict = field(default_factory=dict, hash=False, compare=False)  # batch_max, flush_ms, ...
    sinks: tuple[str, ...] = ()  # the sinks whose results it carries

    @property
    def key(self) -> str:
        return f"{self.name}@{self.site}"


@dataclass(frozen=True)
class Deployment:
    workflow: str
    replicas: tuple[ReplicaPlan, ...]
    sources: tuple[SourcePlan, ...]
    outputs: tuple[OutputPlan, ...]
    stage_order: tuple[str, ...]
    consumers: dict[str, tuple[str, ...]]  # stage -> the stages it feeds
    sink: str
    parent: dict[str, str | None]
    reach: dict[str, tuple[str, ...]]  # site -> the sites its messages may go to
    tiers: dict[str, str]
    message_bytes: dict[str, float]  # stage or source -> bytes of one message it sends
    result_bytes: float
    planned_link_bytes_per_s: dict[tuple[str, str], float]  # (child site, up|down) -> bytes/s
    hop_latency_ms: float = 1.0
    link_latency_ms: dict[tuple[str, str], float] = field(default_factory=dict)  # (child site, up|down) -> ms
    #: How sends to another site batch (Topology.link_batch_messages / link_batch_wait_ms), as priced.
    link_batch_messages: int = 8
    link_batch_wait_ms: float = 0.0
    #: Every sink (``sink`` is the first), and stage -> the sinks downstream of it (a sink: itself).
    sinks: tuple[str, ...] = ()
    sinks_below: dict[str, tuple[str, ...]] = field(default_factory=dict)

    # --- lookups ---------------------------------------------------------------------------------
    def link_batch_of(self, sender: str) -> int:
        """How many messages a send of ``sender``'s (a stage or a source) to another site carries, as
        the plan priced it (:meth:`jellybean.optimizer.framing.Framing.per_send` of its message size)."""
        framing = Framing(messages_per_send=self.link_batch_messages, wait_ms=self.link_batch_wait_ms)
        return framing.per_send(self.message_bytes.get(sender, 0.0) / KB)

    @property
    def specs(self) -> list[ReplicaSpec]:
        return [spec for replica in self.replicas for spec in replica.chain]

    def replica(self, key: str) -> ReplicaPlan | None:
        return next((r for r in self.replicas if r.key == key), None)

    def heads_of(self, stage: str) -> list[ReplicaPlan]:
        """The actors whose first stage is ``stage`` (a fused stage is reached through its head)."""
        return [r for r in self.replicas if r.head.stage == stage]

    def outputs_for(self, site: str, sink: str | None = None) -> list[OutputPlan]:
        """The outputs a replica of ``sink`` (default: the first sink) at ``site`` delivers to: those
        carrying its results, pinned ones wherever they are and the unpinned ones at ``site`` itself."""
        sink = sink or self.sink
        return [o for o in self.outputs if (o.site == site or o.options.get("pinned")) and sink in o.sinks]

    def route_weights(self, stage: str, origin: str, *, dead: frozenset[str] | set[str] = frozenset(),
                      links_down: frozenset[str] | set[str] = frozenset()) -> dict[str, float]:
        """Replica key -> planned share, over the actors of ``stage`` that a message from ``origin``
        may go to: reachable (up the tiers, or anywhere with downward flows allowed), alive, and not
        across a cut uplink."""
        reachable = set(self.reach.get(origin, (origin,)))
        out = {}
        for replica in self.heads_of(stage):
            if replica.key in dead or replica.site not in reachable:
                continue
            if links_down and any(link in links_down for link, _ in self.path(origin, replica.site)):
                continue
            out[replica.key] = replica.head.weight
        return out

    def path(self, origin: str, destination: str) -> list[tuple[str, str]]:
        """The uplinks a message from ``origin`` to ``destination`` crosses: (child site, up|down)."""
        from jellybean.runtime.routing import uplinks_between

        return uplinks_between(self.parent, origin, destination)

    def delay_ms(self, origin: str, destination: str) -> float:
        """The propagation latency of the links between two sites (for emulating them on one machine)."""
        return sum(self.link_latency_ms.get(link, 0.0) for link in self.path(origin, destination))

    def planned_rows(self) -> dict[tuple[str, str], dict]:
        """Per (stage, site): the planned variant, replicas and requests/s (for status)."""
        rows: dict[tuple[str, str], dict] = {}
        for spec in self.specs:
            row = rows.setdefault((spec.stage, spec.site), {
                "stage": spec.stage, "site": spec.site, "variant": spec.variant, "replicas_planned": 0,
                "rate_planned_per_s": 0.0})
            row["replicas_planned"] += 1
            row["rate_planned_per_s"] += spec.weight
        return rows

    @property
    def planned_frames_per_s(self) -> float:
        return sum(s.rate_per_s for s in self.sources)


# --------------------------------------------------------------------------------------------------
# building it


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
        if variant is None or not variant.servable:
            raise ServingError(f"variant {a.variant!r} of stage {a.stage!r} names no `runner` and no `artifact`: it "
                               "can be planned but not served (see `jellybean zoo list` for registered runners)")
        ref = serving_ref(variant)
        runner, served = ref["runner"], ref["artifact"]
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
                specs.append(ReplicaSpec(
                    key=f"{a.stage}/{site}/{a.instance}/{a.variant}/{k}", stage=a.stage, variant=a.variant,
                    runner=runner, artifact=served, site=site, tier=a.tier, instance=a.instance, batch_size=a.batch_size,
                    weight=a.rate_per_s / replicas, num_cpus=cpu_amount(cpus),
                    threads=max(1, int(cpus + 1e-9)), instance_key=(site, a.instance, index),
                    instance_cpus=group.cpus or 1.0, utilization=a.utilization, latency_ms=a.latency_ms,
                ))
    return specs


def plan_fusion(specs: list[ReplicaSpec], stage_order: list[str], consumers: dict[str, list[str]],
                inputs: dict[str, int], stateful, reach: dict[str, tuple[str, ...]]  # noqa: ANN001 - runner -> bool
                ) -> dict[str, list[ReplicaSpec]]:
    """Chains of consecutive stages to run inside one replica: head replica key -> the chain.

    The replica ``r`` of stage ``u`` at site ``X`` absorbs the replica ``q`` of stage ``s`` when the
    hop between them is private, so that moving it inside one process changes no route:

    - ``u`` feeds only ``s`` and ``s`` reads only from ``u``;
    - ``q`` is the only replica of ``s`` that a message from ``X`` may reach (so ``r`` sends all its
      outputs to ``q``), on the same instance of the same site;
    - ``r`` is the only replica of ``u`` that may reach ``q`` (so ``q`` hears from no one else: a
      replica of ``u`` at a site below ``X`` would also route to ``q``);
    - neither keeps state (a join must see every part of a frame, so it is routed, never fused).

    This holds site by site: with a hub per camera, each hub's detector and classifier fuse, however
    many hubs there are (the rule used to ask for a single replica of each stage in the whole plan,
    so a pipeline copied at four hubs paid a hop per stage that one hub did not). The plan is
    unchanged (same placement, same CPU shares, same batch sizes); only hops move inside processes.
    ``reach``: site -> the sites its messages may go to (:func:`_reach`)."""
    by_stage: dict[str, list[ReplicaSpec]] = defaultdict(list)
    at: dict[tuple[str, str], list[ReplicaSpec]] = defaultdict(list)  # (stage, site) -> its replicas there
    for spec in specs:
        by_stage[spec.stage].append(spec)
        at[(spec.stage, spec.site)].append(spec)
    reached_from: dict[str, list[str]] = defaultdict(list)  # site -> the sites whose messages may reach it
    for origin, sites in reach.items():
        for site in sites:
            reached_from[site].append(origin)

    def private_successor(tail: ReplicaSpec) -> ReplicaSpec | None:
        following = consumers.get(tail.stage, [])
        if len(following) != 1 or inputs.get(following[0], 0) != 1 or stateful(tail.runner):
            return None
        reached = [q for site in reach.get(tail.site, (tail.site,)) for q in at[(following[0], site)]]
        if len(reached) != 1:
            return None
        nxt = reached[0]
        if (nxt.site, nxt.instance) != (tail.site, tail.instance) or stateful(nxt.runner):
            return None
        feeders = [r for site in reached_from.get(nxt.site, [nxt.site]) for r in at[(tail.stage, site)]]
        return nxt if feeders == [tail] else None

    chains: dict[str, list[ReplicaSpec]] = {}
    absorbed: set[str] = set()
    for stage in stage_order:
        for head in by_stage[stage]:
            if head.key in absorbed:
                continue
            chain = [head]
            while (nxt := private_successor(chain[-1])) is not None and nxt.key not in absorbed:
                chain.append(nxt)
                absorbed.add(nxt.key)
            if len(chain) > 1:
                chains[head.key] = chain
    return chains


def _reach(topology: Topology) -> dict[str, tuple[str, ...]]:
    """Where a site's messages may go: itself and its ancestors, or anywhere with downward flows."""
    sites = topology.spec.sites
    if topology.spec.allow_downward_flows:
        every = tuple(s.name for s in sites)
        return {s.name: every for s in sites}
    parent = {s.name: s.parent for s in sites}
    out = {}
    for name in parent:
        chain, cursor = [name], parent[name]
        while cursor is not None:
            chain.append(cursor)
            cursor = parent[cursor]
        out[name] = tuple(chain)
    return out


def build_deployment(bundle: Bundle, plan: Plan, *, fuse: bool = True, stateful=None) -> Deployment:  # noqa: ANN001
    """The Deployment of ``plan`` (raises :class:`ServingError` when it cannot be served as written).
    ``stateful(runner) -> bool`` says which runners keep state across requests (default: the
    registry's answer)."""
    if stateful is None:
        from jellybean.plugins import is_stateful as stateful
    wf, topology = bundle.workflow.spec, bundle.topology
    specs = replica_specs(bundle, plan)
    source_names = {s.name for s in wf.sources}
    consumers: dict[str, list[str]] = defaultdict(list)
    source_consumers: dict[str, list[str]] = defaultdict(list)
    for stage in wf.stages:
        for inp in stage.input_specs():
            (source_consumers if inp.from_ in source_names else consumers)[inp.from_].append(stage.name)
    order = [s.name for s in wf.stages]
    chains: dict[str, list[ReplicaSpec]] = {}
    if fuse:
        inputs = {s.name: len(s.inputs) for s in wf.stages}
        chains = plan_fusion(specs, order, consumers, inputs, stateful, _reach(topology))
    absorbed = {spec.key for chain in chains.values() for spec in chain[1:]}
    replicas = tuple(ReplicaPlan(tuple(chains.get(spec.key, [spec])),
                                 stateful=any(stateful(c.runner) for c in chains.get(spec.key, [spec])))
                     for spec in specs if spec.key not in absorbed)
    tiers = {s.name: str(getattr(s.tier, "value", s.tier)) for s in topology.spec.sites}
    sources = []
    for source in wf.sources:
        for site in source.sites:
            payload = source.payload
            sources.append(SourcePlan(
                source=source.name, site=site, tier=tiers[site], mode=source.mode, dataset=source.replay_dataset,
                rate_per_s=source.rate_per_s * source.count_per_site, count=source.count_per_site,
                payload_bytes=float(source.payload_kb) * KB, array=source.array_name,
                dtype=payload.dtype if payload else None,
                shape=tuple(payload.shape) if payload and payload.shape else None,
                consumers=tuple(source_consumers[source.name])))
    stage_task = {s.name: s.task for s in wf.stages}
    message_bytes: dict[str, float] = {s.name: float(s.payload_kb) * KB for s in wf.sources}
    for spec in specs:
        variant = bundle.zoo.spec.task(stage_task[spec.stage]).variant(spec.variant)
        message_bytes[spec.stage] = float(variant.output_kb) * KB
    outputs = []
    for output in wf.outputs:
        options = {"batch_max": output.batch_max, "flush_ms": output.flush_ms, "give_up_s": output.give_up_s,
                   "rotate_mb": output.rotate_mb, "keep": output.keep, "retain": output.retain,
                   "pinned": output.site is not None}
        carried = tuple(wf.output_sinks(output))
        sink_sites = sorted({spec.site for spec in specs if spec.stage in carried})
        for site in ([output.site] if output.site is not None else sink_sites):
            outputs.append(OutputPlan(output.name, output.kind, site, tiers[site], output.url, options, carried))
    result_kb = next((o.result_kb for o in wf.outputs if o.result_kb is not None), None)
    planned: dict[tuple[str, str], float] = defaultdict(float)
    for flow in plan.links:
        child = flow.from_ if flow.direction == "up" else flow.to
        for site in flow.sites or [child]:
            planned[(site, flow.direction)] += flow.mbps * 1e6 / 8.0
    return Deployment(
        workflow=plan.workflow, replicas=replicas, sources=tuple(sources), outputs=tuple(outputs),
        stage_order=tuple(order), consumers={k: tuple(v) for k, v in consumers.items()}, sink=wf.sink,
        parent={s.name: s.parent for s in topology.spec.sites}, reach=_reach(topology), tiers=tiers,
        message_bytes=message_bytes,
        result_bytes=(result_kb * KB) if result_kb is not None else message_bytes.get(wf.sink, 0.0),
        planned_link_bytes_per_s=dict(planned), hop_latency_ms=topology.spec.hop_latency_ms,
        link_batch_messages=topology.spec.link_batch_messages, link_batch_wait_ms=topology.spec.link_batch_wait_ms,
        link_latency_ms={(s.name, direction): getattr(s.uplink, direction).latency_ms
                         for s in topology.spec.sites if s.uplink is not None for direction in ("up", "down")},
        sinks=tuple(wf.sinks), sinks_below=sinks_below(wf),
    )


def sinks_below(wf: WorkflowSpec) -> dict[str, tuple[str, ...]]:
    """Stage -> the sinks its messages reach (a sink reaches itself), in the order of ``wf.sinks``:
    what an end of a message sent to that stage concerns (:func:`jellybean.runtime.worker.scope`).
    One pass against the topological order: a stage reaches what its consumers reach."""
    sinks = wf.sinks
    reach: dict[str, set[str]] = {}
    for stage in reversed(topological_order(wf) or []):
        reach[stage] = {stage} if stage in sinks else set()
        for other in wf.stages:
            if any(i.from_ == stage for i in other.input_specs()):
                reach[stage] |= reach[other.name]
    return {stage: tuple(s for s in sinks if s in found) for stage, found in reach.items()}
