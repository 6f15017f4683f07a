"""Compile a Bundle (workflow + zoo + topology) into a Problem: indexed sets, rates, capacities, costs.

The Problem is what every strategy (the MILP and each baseline) consumes, so they all see the same
world. Two reductions happen here:

*Symmetry.* Sibling sites that are identical (same tier, uplink, instance groups, attached sources,
placement rules, and recursively identical subtrees) are merged into one :class:`Node` with a
``multiplicity``. Decisions are then made for one representative member and copied to all of them
(the *symmetric* restriction, which yields a deployable plan), or, for a lower bound, for the class
as a whole (the *merged* relaxation). A city of 10,000 cameras has a few hundred nodes.

*Options.* For each stage, the ways to serve it: (variant, instance group, batch size) with the
throughput one instance reaches, ``mu = b * 1000 / latency_ms[b]`` requests/s. Without a latency
bound only the highest-throughput batch size of each (variant, group) can matter, so the others are
pruned; with a bound the (latency, throughput) Pareto set is kept.

Units: rates in requests (messages) per second, sizes in KB (1024 bytes), traffic priced per GB
(1024^3 bytes): ``GB/h = msg/s * KB * 3600 / 1024^2``; bandwidth in Mbit/s:
``Mbps = msg/s * KB * 8192 / 10^6``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import time

from jellybean.optimizer.carbon import Objective
from jellybean.optimizer.framing import Framing
from jellybean.spec.bundle import Bundle
from jellybean.spec.common import Tier
from jellybean.spec.errors import listed
from jellybean.spec.topology import LinkDirection, Sharing, TopologySpec
from jellybean.spec.workflow import WorkflowSpec, topological_order
from jellybean.spec.zoo import AccuracyTable, ModelZooSpec, Variant

KB_PER_GB = 1024.0 * 1024.0
SECONDS_PER_HOUR = 3600.0
MBIT_PER_KB = 8192.0 / 1e6


def gb_per_hour(rate_per_s: float, kb: float) -> float:
    return rate_per_s * kb * SECONDS_PER_HOUR / KB_PER_GB


def mbps(rate_per_s: float, kb: float) -> float:
    return rate_per_s * kb * MBIT_PER_KB


@dataclass
class Node:
    """A class of identical sibling sites; decisions are per member."""

    index: int
    name: str
    members: list[str]
    tier: Tier
    parent: int | None
    multiplicity: int  # members per member of the parent node
    up: LinkDirection | None
    down: LinkDirection | None
    children: list[int] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)
    depth: int = 0
    #: The sites' grid carbon intensity for this plan, gCO2/kWh (a series resolved: its daily mean, or
    #: the value at the planned time); None: the topology gives none.
    carbon_intensity_g_per_kwh: float | None = None

    @property
    def total(self) -> int:
        return len(self.members)


@dataclass
class Group:
    """An instance group at a node: ``limit`` identical instances at each member site."""

    index: int
    node: int
    name: str
    hardware: str
    price_per_hour: float
    limit: int
    elastic: bool
    memory_mb: float | None
    cpus: float | None
    #: One instance's draw in use, W, idle and fully busy (Topology ``power_w``); None: not given.
    power_idle_w: float | None = None
    power_busy_w: float | None = None


@dataclass
class Option:
    """Serving ``stage`` with ``variant`` on instances of ``group`` at batch size ``batch``."""

    index: int
    stage: str
    variant: str
    group: int
    batch: int
    latency_ms: float
    latency_ms_p90: float
    throughput_per_s: float  # one instance, fully busy
    #: What the runtime adds at most, per request: the hop into the stage and, for a batch of more
    #: than one, the longest wait for the batch to fill (an upper bound, for latency constraints).
    overhead_ms: float = 0.0


@dataclass
class Edge:
    """A workflow edge ``src -> dst``; ``src`` is a source group or a stage."""

    src: str
    dst: str
    from_source: bool
    ratio: float
    ratio_by_variant: dict[str, float]

    @property
    def key(self) -> str:
        return f"{self.src}->{self.dst}"

    def ratio_for(self, variant: str | None) -> float:
        if variant is None:
            return self.ratio
        return self.ratio_by_variant.get(variant, self.ratio)


@dataclass
class OutputEdge:
    """Results of one sink carried to an output pinned at a site (``node``): priced like any flow.
    ``ratio`` results per request of the sink, ``kb`` each (None: the sink variant's ``output_kb``).
    An output carrying several sinks' results has one edge per sink."""

    name: str
    src: str  # the sink
    node: int
    ratio: float
    kb: float | None
    from_source: bool = False

    @property
    def key(self) -> str:
        return f"{self.src}->output:{self.name}"

    @property
    def dst(self) -> str:
        return f"output:{self.name}"

    def ratio_for(self, variant: str | None) -> float:
        return self.ratio


#: What messages flow on: a workflow edge, or a sink's results to a pinned output.
FlowEdge = Edge | OutputEdge


@dataclass
class StageInfo:
    name: str
    task: str
    variants: list[Variant]
    inputs: list[Edge]
    allowed_nodes: set[int]
    rate_bound_per_s: float = 0.0  # upper bound on the stage's total rate over all sites
    batch_sizes: list[int] | None = None  # the workflow's restriction, if any
    #: The lowest ``Variant.accuracy`` (the task's own metric, ``metric``) the stage may run: the
    #: workflow's ``min_accuracy``; None: no minimum.
    min_accuracy: float | None = None
    metric: str = "accuracy"

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)

    def meets_minimum(self, variant: str, tol: float = 1e-9) -> bool:
        """Whether ``variant`` is at least the stage's ``min_accuracy`` on the task's own metric."""
        return self.min_accuracy is None or self.variant(variant).accuracy >= self.min_accuracy - tol


@dataclass
class SinkTarget:
    """One sink (a stage no stage reads from) and its end-to-end accuracy target, in the zoo's unit.

    Its accuracy depends on the variants of ``stages`` only: the sink and every stage upstream of it,
    in topological order (for a workflow with one sink, every stage)."""

    stage: str
    accuracy_target: float
    #: The table its SLO names (``slo.sinks[].accuracy_table``, or ``slo.accuracy_table``), which must
    #: then cover it; None: none named.
    accuracy_table: AccuracyTable | None = None
    stages: list[str] = field(default_factory=list)
    #: A latency bound of the sink's own, ms, where one Problem plans several workflows whose SLOs
    #: bound latency differently (:mod:`jellybean.optimizer.joint`); ``math.inf``: none. None: the
    #: Problem's ``latency_bound_ms`` (a single workflow's, the same at every sink).
    latency_bound_ms: float | None = None


@dataclass
class Churn:
    """The running plan, for a re-plan that should move little.

    The objective adds ``cost_per_change_per_hour`` for every stage whose variant changes and for
    every instance started or stopped per member site (``|n_g - previous_g|``), so a new plan must save
    more than its moves cost before it is preferred. Units are $/h, like the objective: the penalty
    amortises a move's cost (reloading models, re-routing) over an hour. It only breaks near-ties
    unless it is large; the reported cost of the plan never includes it."""

    variants: dict[str, str]  # stage -> variant running now
    counts: dict[int, float]  # group index -> instances in use now, per member site
    cost_per_change_per_hour: float
    #: Several workflows planned together (:mod:`jellybean.optimizer.joint`): (group index, workflow)
    #: -> instances the workflow uses now, per member site. Each running workflow's own instances
    #: started or stopped are then counted (one that a workflow frees and another takes is a stop and
    #: a start), and a workflow not running yet pays for none; ``counts`` is not read.
    counts_by_workflow: dict[tuple[int, str], float] | None = None


@dataclass
class Problem:
    """Everything a strategy needs, compiled from the documents: it holds no document itself, so a
    strategy sees exactly what the planner saw (and tests can build one from parts)."""

    name: str
    nodes: list[Node]
    groups: list[Group]
    stages: dict[str, StageInfo]  # in topological order
    order: list[str]
    #: Every sink with its accuracy target, in the order the workflow declares them (at least one).
    sinks: list[SinkTarget]
    options: list[Option]
    options_by_stage: dict[str, list[int]]
    source_rates: dict[str, dict[int, float]]  # source group -> node -> rate per member site
    source_payload_kb: dict[str, float]
    sharing: Sharing
    max_utilization: float
    allow_downward: bool
    latency_bound_ms: float | None
    latency_percentile: str
    warnings: list[str] = field(default_factory=list)
    #: The highest planned share of a link's bandwidth (Topology.max_link_utilization).
    max_link_utilization: float = 1.0
    #: Outputs pinned to a site: their sinks' results flow there (see :class:`OutputEdge`), one edge per
    #: (output, sink it carries).
    outputs: list[OutputEdge] = field(default_factory=list)
    hop_ms: float = 0.0  # the runtime's cost of one hop (Topology.hop_latency_ms)
    batch_wait_ms: float = 0.0  # the runtime's dynamic batching wait (Topology.batch_wait_ms)
    #: How messages travel on links: sends to another site, their wait for company, their pricing.
    framing: Framing = field(default_factory=lambda: Framing(enabled=False, wait_ms=0.0))
    #: A priced (wire) message size -> the message's own size, for :meth:`Framing.per_send` (filled
    #: by :func:`priced_on_links`; a size not in it is its own).
    message_kb: dict[float, float] = field(default_factory=dict)
    #: (stage, node) -> upper bound on the stage's rate at one member site of the node: without
    #: downward flows a site only ever sees data produced in its own subtree.
    member_rate_bound: dict[tuple[str, int], float] = field(default_factory=dict)
    #: Re-planning a running workflow: what runs now, and what a change costs (see :class:`Churn`).
    churn: Churn | None = None
    #: The zoo's measured end-to-end accuracy tables, in the zoo's order: the first that covers a sink
    #: is its accuracy model (:func:`jellybean.optimizer.accuracy.choose_model`).
    accuracy_tables: list[AccuracyTable] = field(default_factory=list)
    #: What the planner minimises and the carbon budget it keeps to (:mod:`jellybean.optimizer.carbon`).
    objective: Objective = field(default_factory=Objective)
    #: How the sites' carbon-intensity series were read: ``daily mean`` or ``at HH:MM UTC``.
    carbon_at: str = "daily mean"
    #: Stage -> the workflow it belongs to, when one Problem plans several workflows at once
    #: (:mod:`jellybean.optimizer.joint`); empty: one workflow. See :meth:`count_key`.
    workflow_of: dict[str, str] = field(default_factory=dict)

    def count_key(self, stage: str) -> str | None:
        """The second key of the instance count that serves ``stage`` (``Solution.counts``): in
        exclusive mode the stage (its instances serve it alone); in shared mode None, or the stage's
        workflow where several are planned together: an instance then hosts stages of one workflow
        only, because workflows are deployed and stopped apart and what running workflows use is
        counted in whole instances (``capacity_left``), never a share of one."""
        if self.sharing == "exclusive":
            return stage
        return self.workflow_of.get(stage)

    def sink_latency_bound(self, target: SinkTarget) -> float | None:
        """The latency bound at sink ``target``, ms: its own, else the Problem's; None: unbounded."""
        bound = self.latency_bound_ms if target.latency_bound_ms is None else target.latency_bound_ms
        return None if bound is None or math.isinf(bound) else bound

    def stage_latency_bound(self, stage: str) -> float | None:
        """The loosest latency bound of the sinks ``stage`` reaches (a path through it ends at one of
        them), ms; None: none of them is bounded."""
        bounds = [self.sink_latency_bound(t) for t in self.sinks if stage in t.stages or stage == t.stage]
        if not bounds:  # sinks given without their stages (a Problem built from parts): the Problem's
            return self.latency_bound_ms
        known = [b for b in bounds if b is not None]
        return None if len(known) < len(bounds) else max(known)

    def missing_carbon_data(self) -> list[str]:
        """What the carbon model lacks: ``site/instance`` for each instance group without ``power_w``
        or at a site without ``carbon_intensity_g_per_kwh`` (empty: every group's carbon is known)."""
        missing = []
        for g in self.groups:
            node = self.nodes[g.node]
            lacks = [what for what, absent in (("power_w", g.power_idle_w is None),
                                               ("the site's carbon_intensity_g_per_kwh",
                                                node.carbon_intensity_g_per_kwh is None)) if absent]
            if lacks:
                missing.append(f"{node.name}/{g.name} ({' and '.join(lacks)})")
        return missing

    # --- the sinks --------------------------------------------------------------------------------
    @property
    def sink(self) -> str:
        """The first sink (the only one of a workflow with one sink)."""
        return self.sinks[0].stage

    @property
    def sink_names(self) -> list[str]:
        return [t.stage for t in self.sinks]

    @property
    def accuracy_target(self) -> float:
        """The first sink's accuracy target (see :attr:`sinks` for every sink's)."""
        return self.sinks[0].accuracy_target

    @accuracy_target.setter
    def accuracy_target(self, value: float) -> None:
        self.sinks[0].accuracy_target = value

    @property
    def accuracy_table(self) -> AccuracyTable | None:
        """The table the first sink's SLO names, if any."""
        return self.sinks[0].accuracy_table

    @accuracy_table.setter
    def accuracy_table(self, table: AccuracyTable | None) -> None:
        self.sinks[0].accuracy_table = table

    # --- tree helpers -------------------------------------------------------------------------
    def ancestors(self, node: int) -> list[int]:
        """``node`` and its ancestors, bottom-up."""
        chain = [node]
        while self.nodes[chain[-1]].parent is not None:
            chain.append(self.nodes[chain[-1]].parent)  # type: ignore[arg-type]
        return chain

    def path(self, a: int, b: int) -> tuple[list[int], list[int]] | None:
        """Links from node ``a`` to node ``b``: (nodes whose uplink is used upward, nodes whose uplink is used
        downward, top-down), or None when they are in different trees."""
        up_a = self.ancestors(a)
        up_b = self.ancestors(b)
        common = next((n for n in up_a if n in set(up_b)), None)
        if common is None:
            return None
        ups = up_a[: up_a.index(common)]
        downs = list(reversed(up_b[: up_b.index(common)]))
        return ups, downs

    def reachable(self, a: int, b: int) -> bool:
        route = self.path(a, b)
        if route is None:
            return False
        return self.allow_downward or not route[1]

    def path_latency_ms(self, a: int, b: int, kb: float, flow: tuple[float, float] | None = None) -> float:
        """Propagation plus transmission time of one message of ``kb`` KB (as priced) from ``a`` to
        ``b``, plus its wait for company when it leaves its site: the longest (``flow`` None: what
        bounds are checked on) or the median for ``flow`` = (messages/s to one peer, messages per burst)
        (:meth:`Framing.expected_wait_ms`)."""
        route = self.path(a, b)
        if route is None:
            return math.inf
        total = 0.0
        if route[0] or route[1]:
            own = self.message_kb.get(kb, kb)
            total = (self.framing.wait_bound_ms(own) if flow is None
                     else self.framing.expected_wait_ms(own, *flow))
        for n in route[0]:
            link = self.nodes[n].up
            total += _link_ms(link, kb)
        for n in route[1]:
            link = self.nodes[n].down
            total += _link_ms(link, kb)
        return total

    def flow_edges(self) -> list[FlowEdge]:
        """Every edge messages flow on: the stages' inputs, then the sinks' results to pinned outputs."""
        return [edge for s in self.order for edge in self.stages[s].inputs] + list(self.outputs)

    def output_kb(self, edge_key: str) -> float | None:
        """The declared result size of an output edge (None: not an output edge, or none declared)."""
        return next((o.kb for o in self.outputs if o.key == edge_key), None)

    def group_of(self, option: Option) -> Group:
        return self.groups[option.group]

    def node_of(self, option: Option) -> Node:
        return self.nodes[self.groups[option.group].node]


def member_rate_bounds(nodes: list[Node], order: list[str], stages: dict[str, StageInfo],
                       source_rates: dict[str, dict[int, float]], allow_downward: bool) -> dict[tuple[str, int], float]:
    """Per member site of each node, a bound on each stage's rate within its subtree.

    ``sub[q][i] = rate_q(i) + sum_{c in ch(i)} m_c sub[q][c]`` is the source traffic produced under
    one member of ``i``; stage bounds follow the DAG with the largest ratio of each edge. With
    downward flows allowed data can arrive from anywhere, so the global bound applies.
    """
    bounds: dict[tuple[str, int], float] = {}
    if allow_downward:
        return {(s, n.index): stages[s].rate_bound_per_s for s in order for n in nodes}
    post = sorted(range(len(nodes)), key=lambda i: -nodes[i].depth)
    sub: dict[str, dict[int, float]] = {}
    for source, per_node in source_rates.items():
        acc = {i: per_node.get(i, 0.0) for i in range(len(nodes))}
        for i in post:
            parent = nodes[i].parent
            if parent is not None:
                acc[parent] += nodes[i].multiplicity * acc[i]
        sub[source] = acc
    for s in order:
        info = stages[s]
        for node in nodes:
            candidates = []
            for edge in info.inputs:
                if edge.from_source:
                    candidates.append(edge.ratio * sub[edge.src][node.index])
                else:
                    ratio = max(edge.ratio_for(v.name) for v in stages[edge.src].variants)
                    candidates.append(ratio * bounds[(edge.src, node.index)])
            bounds[(s, node.index)] = min(candidates) if candidates else 0.0
    return bounds


def forward_times(
    problem: Problem,
    proc_ms: dict[tuple[str, int], float],
    kb_of: Callable[[Edge], float],
    choose: Callable[[list[float]], float] = max,
    flow_of: Callable[[Edge, int], tuple[float, float]] | None = None,
) -> dict[tuple[str, int], float]:
    """Completion time of each (stage, node) in ``proc_ms``, in ms: the arrival of its inputs plus its
    own processing time. An input arrives from every node that produces it and can reach this one,
    after the path's latency and the transmission of one message of ``kb_of(edge)`` KB; ``choose``
    combines those arrivals (``max``: the worst path; ``min``: a lower bound on the earliest), and a
    stage waits for its slowest input; a message bound for another site waits for company, the
    longest wait, or the median for ``flow_of(edge, origin node)`` = (messages/s, messages per burst)
    (:meth:`Problem.path_latency_ms`). One forward pass in topological order; used for the
    reported latency, the latency pruning and the check that a bound cannot bind."""
    finish: dict[tuple[str, int], float] = {}
    for s in problem.order:
        for (stage, i), p in proc_ms.items():
            if stage != s:
                continue
            arrival = 0.0
            for edge in problem.stages[s].inputs:
                if edge.from_source:
                    starts = [(j, 0.0) for j, r in problem.source_rates[edge.src].items() if r > 0]
                else:
                    starts = [(j, t) for (u, j), t in finish.items() if u == edge.src]
                kb = kb_of(edge)
                times = [t + problem.path_latency_ms(j, i, kb, None if flow_of is None else flow_of(edge, j))
                         for j, t in starts if problem.reachable(j, i)]
                if times:
                    arrival = max(arrival, choose(times))
                elif choose is min:
                    arrival = math.inf
            finish[(s, i)] = arrival + p
    return finish


def _link_ms(link: LinkDirection | None, kb: float) -> float:
    if link is None:
        return 0.0
    transmit = 0.0 if link.bandwidth_mbps is None else kb * MBIT_PER_KB / link.bandwidth_mbps * 1000.0
    return link.latency_ms + transmit


def _pareto(options: list[tuple[int, float, float, float]], keep_all: bool) -> list[tuple[int, float, float, float]]:
    """Options as (batch, latency, p90, throughput); keep the best throughput, or the Pareto set."""
    if not options:
        return []
    if not keep_all:
        return [max(options, key=lambda o: (o[3], -o[0]))]
    kept: list[tuple[int, float, float, float]] = []
    for cand in sorted(options, key=lambda o: (o[1], -o[3])):
        if not kept or cand[3] > kept[-1][3] + 1e-12:
            kept.append(cand)
    return kept


def compile_problem(
    bundle: Bundle,
    *,
    sharing: Sharing | None = None,
    aggregate: bool = True,
    carbon_at: time | None = None,
    classes: SymmetryClasses | None = None,
) -> Problem:
    """Build the Problem for ``bundle``: the classes of identical sites (:func:`symmetry_classes`),
    the sources' rates per member site (:func:`source_rates_per_node`), the stages with their rate
    bounds (:func:`compile_stages`) and the ways to serve each (:func:`compile_options`).
    ``sharing`` overrides the topology's mode; ``aggregate=False`` keeps every site a class of its own;
    ``carbon_at``: the UTC time of day at which sites' carbon-intensity series are read (None: each
    series' daily mean, :func:`jellybean.spec.topology.intensity_g_per_kwh`); ``classes``: the
    topology's classes of identical sites when they are not the workflow's own (several workflows
    planned together share classes that tell apart what any of them does, :mod:`jellybean.optimizer.joint`)."""
    wf = bundle.workflow.spec
    topo = bundle.topology.spec
    zoo = bundle.zoo.spec
    sources_at = sources_per_site(wf)
    if classes is None:
        classes = symmetry_classes(topo, sources_at, pinned_sites(wf), aggregate=aggregate, carbon_at=carbon_at)
    source_rates, payload = source_rates_per_node(wf, sources_at, classes.site_node)
    order, stages = compile_stages(wf, zoo, classes.nodes, classes.site_node, source_rates)
    framing = framing_of(topo)
    payload, outputs_kb, own_sizes = priced_on_links(framing, stages, payload)
    options, by_stage = compile_options(order, stages, classes.groups, latency_bound=wf.slo.latency_ms is not None,
                                        hop_ms=topo.hop_latency_ms, batch_wait_ms=topo.batch_wait_ms)
    member_bound = member_rate_bounds(classes.nodes, order, stages, source_rates, topo.allow_downward_flows)
    outputs = [OutputEdge(o.name, sink, classes.site_node[o.site], o.ratio, outputs_kb(o.result_kb))
               for o in wf.outputs if o.site is not None for sink in wf.output_sinks(o)]
    return Problem(
        member_rate_bound=member_bound,
        name=bundle.name, nodes=classes.nodes, groups=classes.groups, stages=stages, order=order,
        sinks=compile_sinks(wf, zoo, order, stages), options=options, options_by_stage=by_stage,
        source_rates=source_rates,
        source_payload_kb=payload, sharing=sharing or topo.sharing, max_utilization=topo.max_utilization,
        max_link_utilization=topo.max_link_utilization,
        allow_downward=topo.allow_downward_flows,
        latency_bound_ms=wf.slo.latency_ms, latency_percentile=wf.slo.latency_percentile,
        warnings=unprofiled_batch_sizes(order, stages), hop_ms=topo.hop_latency_ms, batch_wait_ms=topo.batch_wait_ms,
        outputs=outputs, framing=framing, message_kb=own_sizes,
        accuracy_tables=list(zoo.accuracy_tables),
        carbon_at="daily mean" if carbon_at is None else f"at {carbon_at.strftime('%H:%M')} UTC",
    )


# --- messages on links ------------------------------------------------------------------------------


def framing_of(topo: TopologySpec) -> Framing:
    """How the topology's links carry messages (:mod:`jellybean.optimizer.framing`)."""
    return Framing(enabled=topo.message_framing, messages_per_send=topo.link_batch_messages,
                   wait_ms=topo.link_batch_wait_ms)


def priced_on_links(framing: Framing, stages: dict[str, StageInfo], payload_kb: dict[str, float]
                    ) -> tuple[dict[str, float], Callable[[float | None], float | None], dict[float, float]]:
    """Every message size the Problem holds, as it travels on a link (:meth:`Framing.wire_kb`): the
    sources' payloads, each candidate variant's ``output_kb`` (the stage's variants are copies with
    the priced size: strategies, flows, costs and transmission times all read them), a function for
    the outputs' declared result sizes, and each priced size's own size (for the wait for company,
    which depends on it). Compiled once, so that no strategy prices bytes its own way."""
    own: dict[float, float] = {}

    def priced(kb: float) -> float:
        wire = framing.wire_kb(kb)
        own[wire] = kb
        return wire

    for info in stages.values():
        info.variants = [v.model_copy(update={"output_kb": priced(v.output_kb)}) for v in info.variants]

    def result_kb(kb: float | None) -> float | None:
        return None if kb is None else priced(kb)

    return {name: priced(kb) for name, kb in payload_kb.items()}, result_kb, own


def compile_sinks(wf: WorkflowSpec, zoo: ModelZooSpec, order: list[str], stages: dict[str, StageInfo]
                  ) -> list[SinkTarget]:
    """Each sink with its target and named table (:meth:`WorkflowSpec.objective`) and the stages its
    accuracy depends on: itself and every stage upstream (:func:`upstream_of`)."""
    return [SinkTarget(o.stage, o.accuracy, _named_table(zoo.accuracy_tables, o.accuracy_table),
                       upstream_of(o.stage, order, stages))
            for o in wf.objectives()]


def upstream_of(stage: str, order: list[str], stages: dict[str, StageInfo]) -> list[str]:
    """``stage`` and every stage it reads from, directly or not, in topological ``order``."""
    seen = {stage}
    for name in reversed(order):
        if name in seen:
            seen.update(e.src for e in stages[name].inputs if not e.from_source)
    return [name for name in order if name in seen]


# --- symmetry classes -------------------------------------------------------------------------------


def sources_per_site(wf: WorkflowSpec) -> dict[str, dict[str, int]]:
    """Site -> source group -> how many of the group's sources (cameras, microphones) are at the site."""
    at: dict[str, dict[str, int]] = {}
    for source in wf.sources:
        for site in source.sites:
            at.setdefault(site, {})
            at[site][source.name] = at[site].get(source.name, 0) + source.count_per_site
    return at


def pinned_sites(wf: WorkflowSpec) -> dict[str, tuple[str, ...]]:
    """Sites named by a stage's placement, or where an output is delivered, with what pins them: such
    a site must stay distinguishable from its otherwise identical siblings."""
    pinned: dict[str, tuple[str, ...]] = {}
    for stage in wf.stages:
        if stage.placement and stage.placement.sites:
            for site in stage.placement.sites:
                pinned[site] = pinned.get(site, ()) + (stage.name,)
    for output in wf.outputs:
        if output.site is not None:
            pinned[output.site] = pinned.get(output.site, ()) + (f"output:{output.name}",)
    return pinned


@dataclass
class SymmetryClasses:
    """The site tree as classes of identical siblings: the nodes (parents before children), their
    instance groups, and each site's node."""

    nodes: list[Node]
    groups: list[Group]
    site_node: dict[str, int]


def site_signatures(topo: TopologySpec, sources_at: dict[str, dict[str, int]], pinned: dict[str, tuple[str, ...]],
                    *, aggregate: bool = True) -> dict[str, str]:
    """Site -> a signature equal for two sites exactly when they are interchangeable: same tier,
    uplink (both directions), instance groups, attached sources and pins, and, recursively, the same
    multiset of children's signatures. Computed bottom-up; ``aggregate=False`` makes every site unique."""
    sites = {s.name: s for s in topo.sites}
    children = _children(topo)

    def own_signature(name: str) -> tuple[object, ...]:
        s = sites[name]
        uplink = None if s.uplink is None else (
            tuple(sorted(s.uplink.up.model_dump().items())), tuple(sorted(s.uplink.down.model_dump().items())))
        instances = tuple((i.name, i.hardware, i.price_per_hour, i.count, i.max_count, i.memory_mb, i.cpus,
                           None if i.power_w is None else (i.power_w.idle, i.power_w.busy)) for i in s.instances)
        srcs = tuple(sorted(sources_at.get(name, {}).items()))
        intensity = s.carbon_intensity_g_per_kwh
        carbon = intensity if not isinstance(intensity, list) else tuple((k.from_, k.g_per_kwh) for k in intensity)
        return (s.tier.value, uplink, instances, srcs, pinned.get(name, ()), carbon)

    # Post-order without recursion (trees can be deep and wide).
    post: list[str] = []
    stack = [(name, False) for name in children.get(None, [])]
    while stack:
        name, expanded = stack.pop()
        if expanded:
            post.append(name)
            continue
        stack.append((name, True))
        for child in children.get(name, []):
            stack.append((child, False))
    signature: dict[str, str] = {}
    for name in post:
        kids = sorted(signature[c] for c in children.get(name, []))
        counted: list[tuple[str, int]] = []
        for sig in kids:
            if counted and counted[-1][0] == sig:
                counted[-1] = (sig, counted[-1][1] + 1)
            else:
                counted.append((sig, 1))
        # A string: hashable and totally ordered whatever the field types (None, floats).
        signature[name] = repr((own_signature(name), tuple(counted)) if aggregate else (name,))
    return signature


def symmetry_classes(topo: TopologySpec, sources_at: dict[str, dict[str, int]], pinned: dict[str, tuple[str, ...]],
                     *, aggregate: bool = True, carbon_at: time | None = None) -> SymmetryClasses:
    """Merge identical sibling sites (equal :func:`site_signatures`) into one :class:`Node`, top-down.

    A node's ``multiplicity`` ``m`` is how many of its sites sit under *one* member of its parent
    node, so a node has ``M_i = m_i * M_parent`` sites in all. The class's instance groups are those
    of its representative (its first site); its children's classes are formed member by member, in a
    stable order, so that the k-th child class of every member is alike."""
    sites = {s.name: s for s in topo.sites}
    children = _children(topo)
    signature = site_signatures(topo, sources_at, pinned, aggregate=aggregate)
    nodes: list[Node] = []
    groups: list[Group] = []
    site_node: dict[str, int] = {}

    def add_class(member_lists: list[list[str]], parent: int | None, depth: int) -> None:
        """member_lists: for each member of the parent node, the sibling sites of this class."""
        representative = member_lists[0][0]
        s = sites[representative]
        members = [m for lst in member_lists for m in lst]
        node = Node(
            index=len(nodes), name=representative, members=members, tier=s.tier, parent=parent,
            multiplicity=len(member_lists[0]),
            up=s.uplink.up if s.uplink else None, down=s.uplink.down if s.uplink else None, depth=depth,
            carbon_intensity_g_per_kwh=s.carbon_intensity(carbon_at),
        )
        nodes.append(node)
        for m in members:
            site_node[m] = node.index
        if parent is not None:
            nodes[parent].children.append(node.index)
        for inst in s.instances:
            group = Group(len(groups), node.index, inst.name, inst.hardware, inst.price_per_hour, inst.limit,
                          inst.elastic, inst.memory_mb, inst.cpus,
                          power_idle_w=inst.power_w.idle if inst.power_w else None,
                          power_busy_w=inst.power_w.busy if inst.power_w else None)
            groups.append(group)
            node.groups.append(group.index)
        # Children classes: group each member's children by signature, in a stable order.
        per_member: list[dict[str, list[str]]] = []
        for m in members:
            by_sig: dict[str, list[str]] = {}
            for c in children.get(m, []):
                by_sig.setdefault(signature[c], []).append(c)
            per_member.append(by_sig)
        for sig in per_member[0] if per_member else []:
            add_class([pm[sig] for pm in per_member], node.index, depth + 1)

    roots_by_sig: dict[str, list[str]] = {}
    for r in children.get(None, []):
        roots_by_sig.setdefault(signature[r], []).append(r)
    for members in roots_by_sig.values():
        add_class([members], None, 0)
    return SymmetryClasses(nodes, groups, site_node)


def _children(topo: TopologySpec) -> dict[str | None, list[str]]:
    """Parent site (None: the roots) -> its children, in the topology's order."""
    children: dict[str | None, list[str]] = {}
    for s in topo.sites:
        children.setdefault(s.parent, []).append(s.name)
    return children


def source_rates_per_node(wf: WorkflowSpec, sources_at: dict[str, dict[str, int]], site_node: dict[str, int]
                          ) -> tuple[dict[str, dict[int, float]], dict[str, float]]:
    """Source group -> node -> requests/s it produces at *one* member site of the node
    (``rate_per_s * sources at the site``), and source group -> payload in KB."""
    rates: dict[str, dict[int, float]] = {}
    payload_kb: dict[str, float] = {}
    for source in wf.sources:
        payload_kb[source.name] = source.payload_kb
        per_node: dict[int, float] = {}
        for site in source.sites:
            per_node[site_node[site]] = source.rate_per_s * sources_at[site][source.name]
        rates[source.name] = per_node
    return rates, payload_kb


# --- stages -------------------------------------------------------------------------------------------


def compile_stages(wf: WorkflowSpec, zoo: ModelZooSpec, nodes: list[Node], site_node: dict[str, int],
                   source_rates: dict[str, dict[int, float]]) -> tuple[list[str], dict[str, StageInfo]]:
    """The stages in topological order, each with its candidate variants (the workflow may restrict
    them), its input edges, the nodes it may run at (its placement's tiers and sites), its minimum
    accuracy on its task's own metric (if any) and the bound on its total rate (:func:`_stage_rate_bounds`)."""
    order = topological_order(wf) or []
    stage_specs = {s.name: s for s in wf.stages}
    source_names = {s.name for s in wf.sources}
    stages: dict[str, StageInfo] = {}
    tiers_of_node = {n.index: n.tier for n in nodes}
    for name in order:
        spec = stage_specs[name]
        task = zoo.task(spec.task)
        assert task is not None  # cross-checked by the spec layer
        variants = [v for v in task.variants if spec.variants is None or v.name in spec.variants]
        inputs = [
            Edge(i.from_, name, i.from_ in source_names, i.ratio, dict(i.ratio_by_variant))
            for i in spec.input_specs()
        ]
        allowed = set(tiers_of_node)
        if spec.placement and spec.placement.tiers:
            allowed = {n for n in allowed if tiers_of_node[n] in set(spec.placement.tiers)}
        if spec.placement and spec.placement.sites:
            wanted = {site_node[s] for s in spec.placement.sites}
            allowed &= wanted
        stages[name] = StageInfo(name, task.name, variants, inputs, allowed,
                                 batch_sizes=list(spec.batch_sizes) if spec.batch_sizes is not None else None,
                                 min_accuracy=spec.min_accuracy, metric=task.metric)
    _stage_rate_bounds(order, stages, nodes, source_rates)
    return order, stages


def unprofiled_batch_sizes(order: list[str], stages: dict[str, StageInfo]) -> list[str]:
    """Warnings for the batch sizes the workflow allows a stage that no profile of its variants has
    (on any hardware): they can never be used, which is said rather than silently ignored. (Where
    none of a stage's allowed batch sizes is profiled, the stage cannot run at all and the plan's
    explanation says so.)"""
    warnings = []
    for name in order:
        info = stages[name]
        if info.batch_sizes is None:
            continue
        have = {b for v in info.variants for p in v.profiles for b in p.latency_ms}
        missing = [b for b in info.batch_sizes if b not in have]
        if missing:
            warnings.append(f"stage {name}: batch size{'s' if len(missing) > 1 else ''} {listed(missing)} in no "
                            f"profile of its variants (profiled batch sizes: {listed(have)}), so never used")
    return warnings


def _stage_rate_bounds(order: list[str], stages: dict[str, StageInfo], nodes: list[Node],
                       source_rates: dict[str, dict[int, float]]) -> None:
    """Set each stage's ``rate_bound_per_s``, an upper bound on its total rate over all sites (the
    MILP's big-M constants): ``R_s = min_{e=(u->s)} rho_e^max R_u``, where a source's ``R`` is its
    traffic over every site, ``sum_i M_i rate_i``, and ``rho_e^max`` the edge's largest ratio over
    the upstream variants. The minimum: a join serves no more than its scarcest input."""
    for name in order:
        info = stages[name]
        bounds = []
        for edge in info.inputs:
            if edge.from_source:
                total = sum(rate * len(nodes[n].members) for n, rate in source_rates[edge.src].items())
                bounds.append(edge.ratio * total)
            else:
                upstream = stages[edge.src]
                ratio = max(edge.ratio_for(v.name) for v in upstream.variants)
                bounds.append(ratio * upstream.rate_bound_per_s)
        info.rate_bound_per_s = min(bounds) if bounds else 0.0


# --- options ------------------------------------------------------------------------------------------


def compile_options(order: list[str], stages: dict[str, StageInfo], groups: list[Group], *, latency_bound: bool,
                    hop_ms: float, batch_wait_ms: float) -> tuple[list[Option], dict[str, list[int]]]:
    """Every way to serve each stage: (variant, instance group, batch size) where the group's node
    is allowed, the variant is profiled on the group's hardware and fits its memory, and the batch
    size is one the workflow allows. One instance serves ``mu = b * 1000 / latency_ms[b]``
    requests/s. Without a ``latency_bound`` only the highest-throughput batch size of each
    (variant, group) can matter; with one the (latency, throughput) Pareto set is kept
    (:func:`_pareto`). Each option carries the runtime's overhead bound: the hop into the stage
    (``hop_ms``) and, above batch 1, the longest wait for a batch to fill (``batch_wait_ms``).
    Returns the options (indexed by position) and stage -> its options' indices."""
    options: list[Option] = []
    by_stage: dict[str, list[int]] = {name: [] for name in order}
    for name in order:
        info = stages[name]
        for variant in info.variants:
            for group in groups:
                if group.node not in info.allowed_nodes:
                    continue
                profile = variant.profile_for(group.hardware)
                if profile is None:
                    continue
                if group.memory_mb is not None and variant.memory_mb > group.memory_mb:
                    continue
                candidates = []
                for batch, latency in profile.latency_ms.items():
                    if info.batch_sizes is not None and batch not in info.batch_sizes:
                        continue
                    p90 = (profile.latency_ms_p90 or {}).get(batch, latency)
                    candidates.append((batch, latency, p90, batch * 1000.0 / latency))
                for batch, latency, p90, mu in _pareto(candidates, latency_bound):
                    overhead = hop_ms + (batch_wait_ms if batch > 1 else 0.0)
                    option = Option(len(options), name, variant.name, group.index, batch, latency, p90, mu, overhead)
                    options.append(option)
                    by_stage[name].append(option.index)
    return options, by_stage


def _named_table(tables: list[AccuracyTable], name: str | None) -> AccuracyTable | None:
    """The accuracy table a sink's SLO names (the bundle's cross-check has made sure the zoo has it)."""
    if name is None:
        return None
    for table in tables:
        if table.name == name:
            return table
    raise ValueError(f"the workflow's SLO names accuracy table {name!r}, which the zoo does not have")
