"""Price, check and report a Solution: the one code path from any strategy's decisions to a Plan.

``build_plan`` computes costs (compute: instances in use x price; network: traffic on each uplink
direction x its $/GB), carbon (each instance in use at idle + (busy - idle) x utilisation W, at its
site's grid intensity: :func:`carbon_by_group`), accuracy (each sink's, with its accuracy model),
the worst-path latency (to each sink, and over all), and the tables the CLI prints. ``verify``
re-checks a solution against every constraint independently
of how it was produced; tests run it on every strategy's output.

Heuristic strategies give no flows; their traffic is routed in proportion to where the consuming
stage runs (JellyBean's semantics: a stage's output is split across the next stage's workers by
their shares), along the tree path between the sites.

Pricing and checking only read a Solution: flows they derive (:func:`flows_of`) are returned, never
written back, so checking a plan cannot change what is checked next.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from jellybean.optimizer.accuracy import AccuracyModel
from jellybean.optimizer.carbon import grams_per_hour, group_power_w, price_per_g
from jellybean.optimizer.plan import (
    Assignment,
    Carbon,
    Cost,
    Direction,
    InstanceUse,
    LinkFlow,
    Plan,
    SinkResult,
    SolverStats,
    StageMinimum,
    TierCarbon,
    TierCost,
)
from jellybean.optimizer.problem import (
    KB_PER_GB,
    SECONDS_PER_HOUR,
    Edge,
    FlowEdge,
    OutputEdge,
    Problem,
    forward_times,
    gb_per_hour,
    mbps,
)
from jellybean.optimizer.solution import Solution

TOL = 1e-6


def stage_rates(problem: Problem, solution: Solution) -> dict[tuple[str, int], float]:
    """(stage, node) -> requests/s per member site."""
    out: dict[tuple[str, int], float] = {}
    for o_index, rate in solution.rates.items():
        o = problem.options[o_index]
        key = (o.stage, problem.groups[o.group].node)
        out[key] = out.get(key, 0.0) + rate
    return out


def message_kb(problem: Problem, models: dict[str, str], src: str) -> float:
    if src in problem.source_payload_kb:
        return problem.source_payload_kb[src]
    return problem.stages[src].variant(models[src]).output_kb


def per_frame(problem: Problem, models: dict[str, str], edge: FlowEdge) -> float:
    """Messages an edge carries per source request: the product of the ratios from the source to it
    (through a join, its largest input's)."""
    if edge.from_source:
        return edge.ratio
    upstream = [per_frame(problem, models, e) for e in problem.stages[edge.src].inputs]
    return edge.ratio_for(models.get(edge.src)) * (max(upstream) if upstream else 1.0)


def production(problem: Problem, solution: Solution, rates: dict[tuple[str, int], float]) -> dict[str, dict[int, float]]:
    """Edge key -> node -> messages/s produced per member site (outputs' edges included)."""
    out: dict[str, dict[int, float]] = {}
    for edge in problem.flow_edges():
        per_node: dict[int, float] = {}
        if edge.from_source:
            for i, rate in problem.source_rates[edge.src].items():
                per_node[i] = edge.ratio * rate
        else:
            ratio = edge.ratio_for(solution.models[edge.src])
            for (stage, i), rate in rates.items():
                if stage == edge.src:
                    per_node[i] = per_node.get(i, 0.0) + ratio * rate
        out[edge.key] = per_node
    return out


def consumers_of(problem: Problem, edge: FlowEdge, rates: dict[tuple[str, int], float]) -> dict[int, float]:
    """Node -> the share (in requests/s over all members) of an edge's messages consumed there: the
    consuming stage's rate, or everything at a pinned output's node."""
    if isinstance(edge, OutputEdge):
        return {edge.node: 1.0}
    return {i: rate * problem.nodes[i].total for (stage, i), rate in rates.items() if stage == edge.dst}


Flows = dict[tuple[str, int], float]  # (edge key, node index) -> messages/s per member site


def proportional_flows(problem: Problem, solution: Solution) -> tuple[Flows, Flows]:
    """The flows (up, down) of JellyBean's routing: each producing site sends to each consuming site
    in proportion to the consumer's share of the stage's total rate (a pinned output's node takes all
    of its edge), along the tree path; identical member sites serve their own traffic locally. With
    ``P_i`` messages/s produced over all members of node ``i`` and ``C_j`` the consumer ``j``'s share,
    ``P_i C_j / sum_k C_k`` crosses every link of the path ``i -> j``, divided by the link's members."""
    rates = stage_rates(problem, solution)
    produced = production(problem, solution, rates)
    up: dict[tuple[str, int], float] = {}
    down: dict[tuple[str, int], float] = {}
    for edge in problem.flow_edges():
        consumers = consumers_of(problem, edge, rates)
        total = sum(consumers.values())
        if total <= 0:
            continue
        for i, per_member in produced[edge.key].items():
            amount_i = per_member * problem.nodes[i].total
            for j, consumed in consumers.items():
                amount = amount_i * consumed / total
                if amount <= 0 or i == j:
                    continue
                route = problem.path(i, j)
                if route is None:
                    continue
                for n in route[0]:
                    key = (edge.key, n)
                    up[key] = up.get(key, 0.0) + amount / problem.nodes[n].total
                for n in route[1]:
                    key = (edge.key, n)
                    down[key] = down.get(key, 0.0) + amount / problem.nodes[n].total
    return up, down


def route_proportionally(problem: Problem, solution: Solution) -> None:
    """Fill ``flows_up``/``flows_down`` with :func:`proportional_flows`: for a strategy that gives
    no flows of its own and wants its Solution to carry JellyBean's routing."""
    solution.flows_up, solution.flows_down = proportional_flows(problem, solution)


def flows_of(problem: Problem, solution: Solution) -> tuple[Flows, Flows]:
    """The flows a solution is priced and checked on: its own, or, when it gives none (a heuristic),
    :func:`proportional_flows`. Reads the solution, never writes it."""
    if solution.flows_up is None:
        return proportional_flows(problem, solution)
    return solution.flows_up, solution.flows_down or {}


@dataclass
class _LinkLoad:
    node: int
    direction: Direction
    messages: dict[str, float]  # edge key -> msg/s per member
    gb_per_hour: float
    mbps: float
    cost_per_hour: float  # over all members


def link_loads(problem: Problem, solution: Solution, flows: tuple[Flows, Flows] | None = None) -> list[_LinkLoad]:
    """Traffic, bandwidth and price per link direction, on ``flows`` (default :func:`flows_of`):
    ``GB/h = msg/s * KB * 3600 / 1024^2`` and ``Mbps = msg/s * KB * 8192 / 10^6`` per member link,
    the price ``GB/h * $/GB`` over all the node's members."""
    up, down = flows if flows is not None else flows_of(problem, solution)
    per_link: dict[tuple[int, Direction], dict[str, float]] = {}
    directions: tuple[tuple[Direction, Flows], ...] = (("up", up), ("down", down))
    for direction, flows_on in directions:
        for (edge_key, index), value in flows_on.items():
            if value > TOL:
                per_link.setdefault((index, direction), {})[edge_key] = value
    out = []
    for (node_index, direction), messages in sorted(per_link.items()):
        node = problem.nodes[node_index]
        link = node.up if direction == "up" else node.down
        gb = 0.0
        mb = 0.0
        for edge_key, value in messages.items():
            src = edge_key.split("->")[0]
            declared = problem.output_kb(edge_key)
            kb = declared if declared is not None else message_kb(problem, solution.models, src)
            gb += gb_per_hour(value, kb)
            mb += mbps(value, kb)
        cost = gb * (link.cost_per_gb if link else 0.0) * node.total
        out.append(_LinkLoad(node_index, direction, messages, gb, mb, cost))
    return out


def _group_loads(problem: Problem, solution: Solution) -> dict[int, float]:
    """Group -> busy instance-equivalents per member (sum of rate / throughput)."""
    loads: dict[int, float] = {}
    for o_index, rate in solution.rates.items():
        o = problem.options[o_index]
        loads[o.group] = loads.get(o.group, 0.0) + rate / o.throughput_per_s
    return loads


def _group_count(problem: Problem, solution: Solution, g: int) -> float:
    return sum(count for (group, _), count in solution.counts.items() if group == g)


@dataclass
class GroupCarbon:
    """One instance group's draw and emissions in a solution: ``power_w`` per member site (all its
    instances in use there), ``g_per_hour`` over all the node's sites; ``known``: the group has
    ``power_w`` and its site an intensity (else both are 0)."""

    power_w: float
    g_per_hour: float
    known: bool


def carbon_by_group(problem: Problem, solution: Solution) -> dict[int, GroupCarbon]:
    """Group -> its :class:`GroupCarbon`, for every group in use: ``n`` instances whose busy fractions
    add up to ``L = sum_o r_o / mu_o`` draw ``idle n + (busy - idle) L`` W per site
    (:func:`jellybean.optimizer.carbon.group_power_w`), emitting ``P I / 1000`` gCO2/h per site."""
    loads = _group_loads(problem, solution)
    out: dict[int, GroupCarbon] = {}
    for g in problem.groups:
        count = _group_count(problem, solution, g.index)
        if count <= TOL:
            continue
        node = problem.nodes[g.node]
        intensity = node.carbon_intensity_g_per_kwh
        if g.power_idle_w is None or g.power_busy_w is None or intensity is None:
            out[g.index] = GroupCarbon(0.0, 0.0, False)
            continue
        power = group_power_w(g.power_idle_w, g.power_busy_w, count, loads.get(g.index, 0.0))
        out[g.index] = GroupCarbon(power, grams_per_hour(power, intensity) * node.total, True)
    return out


def carbon_g_per_hour(problem: Problem, solution: Solution) -> float:
    """What a solution's instances emit in all, gCO2/h (:func:`carbon_by_group`)."""
    return sum(c.g_per_hour for c in carbon_by_group(problem, solution).values())


def _carbon_report(problem: Problem, solution: Solution, by_group: dict[int, GroupCarbon]) -> Carbon | None:
    """The plan's :class:`Carbon`: None when no instance group has both figures (a topology without
    carbon data), else totals per tier and in all, with the groups in use that lack them named."""
    if all(g.power_idle_w is None or problem.nodes[g.node].carbon_intensity_g_per_kwh is None
           for g in problem.groups):
        return None
    by_tier: dict[str, TierCarbon] = {}
    uncounted = []
    for g_index, c in by_group.items():
        g = problem.groups[g_index]
        node = problem.nodes[g.node]
        if not c.known:
            uncounted.append(f"{node.name}/{g.name}")
            continue
        tier = by_tier.setdefault(node.tier.value, TierCarbon())
        tier.power_w += c.power_w * node.total
        tier.g_per_hour += c.g_per_hour
    objective = problem.objective
    total = sum(t.g_per_hour for t in by_tier.values())
    price = objective.carbon_price_per_tonne
    return Carbon(
        total_g_per_hour=total, power_w=sum(t.power_w for t in by_tier.values()),
        by_tier={t: by_tier[t] for t in ["device", "hub", "edge", "cloud"] if t in by_tier},
        intensity=problem.carbon_at, uncounted=uncounted, price_per_tonne=price,
        cost_per_hour=None if price is None else price_per_g(price) * total,
        budget_g_per_hour=objective.carbon_budget_g_per_hour)


def _interpolated(latency_ms: dict[int, float], batch: float) -> float:
    """A profile's batch latency at a batch size between (or below) the profiled ones, linearly."""
    sizes = sorted(latency_ms)
    if batch <= sizes[0]:
        return latency_ms[sizes[0]] * max(batch, 1.0) / sizes[0] if sizes[0] > 1 else latency_ms[sizes[0]]
    for low, high in zip(sizes, sizes[1:]):
        if batch <= high:
            return latency_ms[low] + (latency_ms[high] - latency_ms[low]) * (batch - low) / (high - low)
    return latency_ms[sizes[-1]] * batch / sizes[-1]


def expected_latency_ms(problem: Problem, solution: Solution, option_index: int, rate: float, *,
                        fused: bool = False) -> float:
    r"""What one request of an option takes on average, the runtime included.

    With ``lambda`` the requests/s one replica gets (``rate`` over the replicas of its group), ``W``
    the batching wait (``Topology.batch_wait_ms``) and ``b`` the planned batch size:

    - the batches that form are ``b_eff = min(b, 1 + lambda W)`` requests (dynamic batching takes what
      arrives within ``W``), and take the profile's latency at ``b_eff`` (interpolated), ``S``;
    - a request waits for its batch to fill: about ``W`` when batches stay single (``b_eff < 1.5``),
      about ``W / 2`` when company comes, nothing at ``b = 1``;
    - it queues behind busy batches: M/D/1, ``rho / (2 (1 - rho)) S`` with ``rho = lambda S / b_eff``
      (at most 0.95);
    - and it pays one hop to get there (``Topology.hop_latency_ms``).

    A ``fused`` stage (run in its input stage's process) pays neither the hop nor the wait."""
    o = problem.options[option_index]
    group = problem.groups[o.group]
    count = solution.counts.get((o.group, problem.count_key(o.stage)), solution.counts.get((o.group, None), 1.0))
    replicas = max(1, math.ceil(count - 1e-9))
    per_replica = max(rate, 1e-9) / replicas
    wait_ms = problem.batch_wait_ms
    profile = problem.stages[o.stage].variant(o.variant).profile_for(group.hardware)
    table = {b: ms for b, ms in (profile.latency_ms.items() if profile else {o.batch: o.latency_ms}.items())
             if b <= o.batch} or {o.batch: o.latency_ms}
    effective = min(float(o.batch), 1.0 + per_replica * wait_ms / 1000.0) if o.batch > 1 else 1.0
    service = _interpolated(table, effective)
    fill = 0.0 if o.batch == 1 or fused else (wait_ms if effective < 1.5 else wait_ms / 2.0)
    rho = min(0.95, per_replica * service / 1000.0 / effective)
    queue = rho / (2.0 * (1.0 - rho)) * service
    return service + fill + queue + (0.0 if fused else problem.hop_ms)


def _fused(problem: Problem, solution: Solution) -> set[tuple[str, int]]:
    """(stage, node)s the runtime runs in the same process as their input stage, so that no hop and
    no batching wait comes between them: a stage whose one input is a stage feeding only it, both
    served by one instance of the same group at that node (as the runtime fuses them; it leaves
    joins apart, which the documents do not say, so a join placed that way is counted fused)."""
    consumers: dict[str, list[str]] = {s: [] for s in problem.order}
    for s in problem.order:
        for edge in problem.stages[s].inputs:
            if not edge.from_source:
                consumers[edge.src].append(s)
    where: dict[tuple[str, int], set[int]] = {}
    for o_index, rate in solution.rates.items():
        if rate > TOL:
            o = problem.options[o_index]
            where.setdefault((o.stage, problem.groups[o.group].node), set()).add(o.group)
    out = set()
    for s in problem.order:
        inputs = problem.stages[s].inputs
        if len(inputs) != 1 or inputs[0].from_source or consumers[inputs[0].src] != [s]:
            continue
        u = inputs[0].src
        for (stage, node), groups in where.items():
            if stage == s and where.get((u, node)) == groups and len(groups) == 1:
                (group,) = groups
                count = solution.counts.get((group, problem.count_key(s)), solution.counts.get((group, None), 1.0))
                if count <= 1.0 + 1e-9:
                    out.add((s, node))
    return out


def worst_latency(problem: Problem, solution: Solution, percentile: str) -> float | None:
    """Longest source-to-sink path over every sink (:func:`sink_latencies`), in ms."""
    ends = [t for t in sink_latencies(problem, solution, percentile).values() if t is not None]
    return max(ends) if ends else None


def sink_latencies(problem: Problem, solution: Solution, percentile: str) -> dict[str, float | None]:
    """Sink -> its longest source-to-sink path over the sites actually used, in ms: ``mean`` / ``p90``, each
    stage's profile at the planned batch plus the runtime's overhead bound (the hop and the longest
    batching wait: what latency bounds are checked on); ``expected``, each request's expected time
    under the planned load (:func:`expected_latency_ms`: the batches that really form, the wait for
    them, queueing, hops; the prediction to compare a measured median with)."""
    proc: dict[tuple[str, int], float] = {}
    fused = _fused(problem, solution) if percentile == "expected" else set()
    for o_index, rate in solution.rates.items():
        if rate <= TOL:
            continue
        o = problem.options[o_index]
        key = (o.stage, problem.groups[o.group].node)
        if percentile == "p90":
            value = o.latency_ms_p90 + o.overhead_ms
        elif percentile == "mean":
            value = o.latency_ms + o.overhead_ms
        else:
            value = expected_latency_ms(problem, solution, o_index, rate, fused=key in fused)
        proc[key] = max(proc.get(key, 0.0), value)
    # A message bound for another site waits for company: the longest wait for the bounds, the median
    # for the expected time, at the rate its edge produces at its node (messages/s per member site),
    # in bursts of one source frame's messages on the edge (a frame's messages travel together: the
    # replicas batch whole pushes, and a frame's outputs leave in one).
    flow_of: Callable[[Edge, int], tuple[float, float]] | None = None
    if percentile == "expected":
        produced = production(problem, solution, stage_rates(problem, solution))

        def flow_at(edge: Edge, node: int) -> tuple[float, float]:
            return produced.get(edge.key, {}).get(node, 0.0), per_frame(problem, solution.models, edge)

        flow_of = flow_at

    finish = forward_times(problem, proc, lambda edge: message_kb(problem, solution.models, edge.src), flow_of=flow_of)
    out: dict[str, float | None] = {}
    for sink in problem.sink_names:
        ends = [t for (s, _), t in finish.items() if s == sink]
        out[sink] = max(ends) if ends else None
    return out


def build_plan(
    problem: Problem,
    solution: Solution | None,
    *,
    strategy: str,
    stats: SolverStats,
    accuracy: AccuracyModel,
    explanation: list[str] | None = None,
) -> Plan:
    plan_of = functools.partial(
        Plan, workflow=problem.name, strategy=strategy, sharing=problem.sharing,
        accuracy_target=problem.accuracy_target, accuracy_method=accuracy.description,
        latency_bound_ms=problem.latency_bound_ms, solver=stats, warnings=list(problem.warnings),
        objective=problem.objective.kind,
    )
    if solution is None:
        return plan_of(feasible=False, explanation=explanation or [], sinks=sink_results(problem, None, accuracy),
                       stage_minimums=stage_minimums(problem, None))
    nodes, groups = problem.nodes, problem.groups
    loads = _group_loads(problem, solution)
    by_tier: dict[str, TierCost] = {}
    assignments: list[Assignment] = []
    for o_index, rate in sorted(solution.rates.items(), key=lambda kv: (problem.order.index(problem.options[kv[0]].stage), kv[0])):
        o = problem.options[o_index]
        g = groups[o.group]
        node = nodes[g.node]
        count = solution.counts.get((g.index, problem.count_key(o.stage)), 0.0)
        busy = rate / o.throughput_per_s
        assignments.append(Assignment(
            stage=o.stage, variant=o.variant, tier=node.tier.value, site=node.name,
            sites=node.members if node.total > 1 else [], instance=g.name, hardware=g.hardware, batch_size=o.batch,
            rate_per_s=rate, instances=count, utilization=busy / count if count > 0 else math.inf,
            latency_ms=o.latency_ms,
        ))
    instances: list[InstanceUse] = []
    compute = 0.0
    carbon = carbon_by_group(problem, solution)
    for g in groups:
        count = _group_count(problem, solution, g.index)
        if count <= TOL:
            continue
        node = nodes[g.node]
        group_cost = g.price_per_hour * count * node.total
        compute += group_cost
        tier = node.tier.value
        by_tier.setdefault(tier, TierCost()).compute_per_hour += group_cost
        hosted = sorted({problem.options[o].stage for o in solution.rates if problem.options[o].group == g.index},
                        key=problem.order.index)
        instances.append(InstanceUse(
            tier=tier, site=node.name, sites=node.members if node.total > 1 else [], instance=g.name,
            hardware=g.hardware, count=int(math.ceil(count - 1e-9)), available=g.limit, price_per_hour=g.price_per_hour,
            cost_per_hour=group_cost, utilization=loads.get(g.index, 0.0) / count, stages=hosted,
            power_w=carbon[g.index].power_w / count if carbon[g.index].known else None,
            carbon_g_per_hour=carbon[g.index].g_per_hour if carbon[g.index].known else None,
        ))
    network = 0.0
    links: list[LinkFlow] = []
    for load in link_loads(problem, solution):
        node = nodes[load.node]
        parent = nodes[node.parent].name if node.parent is not None else "?"
        link = node.up if load.direction == "up" else node.down
        capacity = link.bandwidth_mbps if link else None
        network += load.cost_per_hour
        by_tier.setdefault(node.tier.value, TierCost()).network_per_hour += load.cost_per_hour
        links.append(LinkFlow(
            from_=node.name if load.direction == "up" else parent,
            to=parent if load.direction == "up" else node.name,
            direction=load.direction, sites=node.members if node.total > 1 else [],
            gb_per_hour=load.gb_per_hour, mbps=load.mbps, capacity_mbps=capacity,
            utilization=(load.mbps / capacity) if capacity else None, cost_per_hour=load.cost_per_hour,
            tier=node.tier.value, carries=sorted(load.messages),
        ))
    rates = stage_rates(problem, solution)
    totals = {s: sum(rate * nodes[i].total for (st, i), rate in rates.items() if st == s) for s in problem.order}
    tier_order = ["device", "hub", "edge", "cloud"]
    cost = Cost(compute_per_hour=compute, network_per_hour=network, total_per_hour=compute + network,
                by_tier={t: by_tier[t] for t in tier_order if t in by_tier})
    sinks = sink_results(problem, solution, accuracy)
    result = plan_of(
        feasible=True, models=dict(solution.models), assignments=assignments, instances=instances, links=links,
        cost=cost, accuracy=accuracy.evaluate(problem, solution.models),
        latency_ms=_worst(s.latency_ms for s in sinks), latency_ms_p90=_worst(s.latency_ms_p90 for s in sinks),
        latency_ms_expected=worst_latency(problem, solution, "expected"),
        rate_per_s=totals, explanation=explanation or [], carbon=_carbon_report(problem, solution, carbon),
        sinks=sinks, stage_minimums=stage_minimums(problem, solution),
    )
    result.keep_solution(solution)
    return result


def _worst(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def sink_results(problem: Problem, solution: Solution | None, accuracy: AccuracyModel) -> list[SinkResult]:
    """Every sink's accuracy (None without a solution), target, method and worst-path latencies."""
    mean = sink_latencies(problem, solution, "mean") if solution is not None else {}
    p90 = sink_latencies(problem, solution, "p90") if solution is not None else {}
    return [SinkResult(stage=target.stage, accuracy_target=target.accuracy_target, accuracy_method=model.description,
                       accuracy=model.evaluate(problem, solution.models) if solution is not None else None,
                       latency_ms=mean.get(target.stage), latency_ms_p90=p90.get(target.stage))
            for target, model in zip(problem.sinks, accuracy.sinks)]


def stage_minimums(problem: Problem, solution: Solution | None) -> list[StageMinimum]:
    """Every stage with a minimum on its task's own metric, and the chosen variant's accuracy on it."""
    out = []
    for s in problem.order:
        info = problem.stages[s]
        if info.min_accuracy is None:
            continue
        variant = solution.models.get(s) if solution is not None else None
        out.append(StageMinimum(stage=s, metric=info.metric, min_accuracy=info.min_accuracy, variant=variant,
                                accuracy=info.variant(variant).accuracy if variant is not None else None))
    return out


@dataclass
class Verification:
    """What :func:`check_solution` found: the violations in words (empty: a valid plan), and the
    flows it checked them on (the solution's own, or JellyBean's proportional routing when the
    solution gives none: computed here and returned, never written into the solution)."""

    violations: list[str]
    flows_up: Flows
    flows_down: Flows


def verify(problem: Problem, solution: Solution, accuracy: AccuracyModel, *, tol: float = 1e-5) -> list[str]:
    """Every constraint a plan must satisfy, checked directly; returns the violations in words
    (:func:`check_solution`'s, which also returns the flows checked). The solution is not modified."""
    return check_solution(problem, solution, accuracy, tol=tol).violations


def check_solution(problem: Problem, solution: Solution, accuracy: AccuracyModel, *, tol: float = 1e-5
                   ) -> Verification:
    """Check ``solution`` against every constraint, independently of how it was produced: variants as
    chosen, memory, capacity ``sum_o r_o / mu_o <= h n`` per count, counts within limits, shared
    memory, flow conservation per edge and node (joins pairing one to one), no flow down the tiers
    unless allowed, link bandwidth within ``max_link_utilization``, every sink's accuracy target and
    every stage's minimum, the latency bound, and the carbon budget. Reads the solution only."""
    problems: list[str] = []
    nodes, groups = problem.nodes, problem.groups
    h = problem.max_utilization
    up, down = flows_of(problem, solution)
    for o_index, rate in solution.rates.items():
        o = problem.options[o_index]
        if solution.models.get(o.stage) != o.variant and rate > tol:
            problems.append(f"stage {o.stage} serves {rate:.3f}/s with {o.variant}, not its chosen variant")
        g = groups[o.group]
        variant = problem.stages[o.stage].variant(o.variant)
        if g.memory_mb is not None and variant.memory_mb > g.memory_mb + tol:
            problems.append(f"{o.variant} needs {variant.memory_mb} MB, {g.name} has {g.memory_mb}")
    # Capacity and counts.
    loads_by_key: dict[tuple[int, str | None], float] = {}
    for o_index, rate in solution.rates.items():
        o = problem.options[o_index]
        key = (o.group, problem.count_key(o.stage))
        loads_by_key[key] = loads_by_key.get(key, 0.0) + rate / o.throughput_per_s
    for key, busy in loads_by_key.items():
        count = solution.counts.get(key, 0.0)
        if busy > h * count * (1 + tol) + tol:
            problems.append(f"group {groups[key[0]].name} at {nodes[groups[key[0]].node].name} carries load "
                            f"{busy:.4f} > {h} x {count} instances")
    for g in groups:
        used = _group_count(problem, solution, g.index)
        if used > g.limit + tol:
            problems.append(f"group {g.name} at {nodes[g.node].name} uses {used} instances, has {g.limit}")
    if problem.sharing == "shared":  # an instance in use hosts every model of its count placed on its group
        for g in groups:
            if g.memory_mb is None:
                continue
            hosted: dict[str | None, set[tuple[str, str]]] = {}
            for o_index, rate in solution.rates.items():
                if rate > tol and problem.options[o_index].group == g.index:
                    stage = problem.options[o_index].stage
                    hosted.setdefault(problem.count_key(stage), set()).add((stage, problem.options[o_index].variant))
            for workflow, models in sorted(hosted.items(), key=lambda kv: kv[0] or ""):
                total = sum(problem.stages[s].variant(v).memory_mb for s, v in models)
                if total > g.memory_mb + tol:
                    whose = "" if workflow is None else f" for workflow {workflow}"
                    problems.append(f"group {g.name} at {nodes[g.node].name} hosts {total} MB of models{whose}, "
                                    f"has {g.memory_mb}")
    # Flow conservation: everything produced is consumed, joins pair one to one.
    rates = stage_rates(problem, solution)
    produced = production(problem, solution, rates)
    for s in problem.order:
        for edge in problem.stages[s].inputs:
            for node in nodes:
                i = node.index
                inflow = produced[edge.key].get(i, 0.0) + down.get((edge.key, i), 0.0)
                inflow += sum(nodes[j].multiplicity * up.get((edge.key, j), 0.0) for j in node.children)
                outflow = up.get((edge.key, i), 0.0) + rates.get((s, i), 0.0)
                outflow += sum(nodes[j].multiplicity * down.get((edge.key, j), 0.0) for j in node.children)
                if abs(inflow - outflow) > tol * max(1.0, inflow):
                    problems.append(f"edge {edge.key} at {node.name}: {inflow:.4f} msg/s arrive, {outflow:.4f} leave")
    for output in problem.outputs:  # a pinned output's node takes all its results; every other node passes them on
        produced_total = sum(rate * nodes[i].total for i, rate in produced[output.key].items())
        for node in nodes:
            i = node.index
            inflow = produced[output.key].get(i, 0.0) + down.get((output.key, i), 0.0)
            inflow += sum(nodes[j].multiplicity * up.get((output.key, j), 0.0) for j in node.children)
            outflow = up.get((output.key, i), 0.0) + sum(nodes[j].multiplicity * down.get((output.key, j), 0.0)
                                                         for j in node.children)
            if i == output.node:
                outflow += produced_total / node.total
            if abs(inflow - outflow) > tol * max(1.0, inflow):
                problems.append(f"output edge {output.key} at {node.name}: {inflow:.4f} msg/s arrive, "
                                f"{outflow:.4f} leave")
    if not problem.allow_downward and any(v > tol for v in down.values()):
        problems.append("traffic flows down the tiers, which the topology does not allow")
    for load in link_loads(problem, solution, (up, down)):
        node = nodes[load.node]
        link = node.up if load.direction == "up" else node.down
        if link and link.bandwidth_mbps is not None:
            allowed = problem.max_link_utilization * link.bandwidth_mbps
            if load.mbps > allowed * (1 + tol):
                share = "" if problem.max_link_utilization == 1 else \
                    f" ({problem.max_link_utilization:g} of {link.bandwidth_mbps:g}, max_link_utilization)"
                problems.append(f"uplink of {node.name} ({load.direction}) carries {load.mbps:.2f} Mbps > "
                                f"{allowed:g}{share}")
    problems += accuracy.shortfalls(problem, solution.models, tol=1e-6)
    problems += _latency_violations(problem, solution, tol)
    budget = problem.objective.carbon_budget_g_per_hour
    if budget is not None:
        emitted = carbon_g_per_hour(problem, solution)
        if emitted > budget * (1 + tol) + tol:
            problems.append(f"carbon {emitted:.2f} gCO2/h above the budget of {budget:g} gCO2/h")
    return Verification(problems, up, down)


def _latency_violations(problem: Problem, solution: Solution, tol: float) -> list[str]:
    """The latency bound, on the worst path over every sink; where sinks are bounded apart (several
    workflows planned together, :meth:`Problem.sink_latency_bound`), each sink on its own."""
    if problem.latency_bound_ms is None:
        return []
    bounds = {t.stage: problem.sink_latency_bound(t) for t in problem.sinks}
    if all(t.latency_bound_ms is None for t in problem.sinks):
        latency = worst_latency(problem, solution, problem.latency_percentile)
        if latency is not None and latency > problem.latency_bound_ms * (1 + tol):
            return [f"latency {latency:.2f} ms above bound {problem.latency_bound_ms}"]
        return []
    out = []
    for sink, latency in sink_latencies(problem, solution, problem.latency_percentile).items():
        bound = bounds[sink]
        if bound is not None and latency is not None and latency > bound * (1 + tol):
            out.append(f"latency {latency:.2f} ms at sink {sink} above its bound {bound:g}")
    return out


def plan_cost(plan: Plan) -> float:
    return plan.cost.total_per_hour if plan.cost else math.inf


__all__ = ["build_plan", "verify", "carbon_by_group", "carbon_g_per_hour", "check_solution", "Verification", "route_proportionally", "proportional_flows",
           "flows_of", "link_loads", "stage_rates", "KB_PER_GB", "SECONDS_PER_HOUR"]
