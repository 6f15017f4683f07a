"""Simpler strategies the optimal plan is compared against, all producing Solutions priced by
:func:`jellybean.optimizer.evaluate.build_plan`.

- ``cloud-only``: every stage in the cloud tier (variants and cloud placement still chosen
  optimally by the MILP restricted to cloud sites): what a team without edge capacity would do.
- ``two-stage``: choose the variants first by cost proxy alone (the cheapest combination meeting the
  accuracy target, ties to higher accuracy), then place them optimally: model selection and worker
  assignment decoupled, as in prior serving systems.
- ``edge-first``: the two-stage variants, placed greedily as close to the data as capacity allows:
  each site serves what arrives at it on its cheapest-per-request instances and passes the rest to
  its parent; traffic then takes the cheapest routes.
- ``jellybean``: the published heuristic, see :mod:`jellybean.optimizer.jellybean_heuristic`.
"""

from __future__ import annotations

import math

import pulp

from jellybean.optimizer.accuracy import AccuracyModel, enumerate_combinations, targets_text
from jellybean.optimizer.problem import KB_PER_GB, SECONDS_PER_HOUR, Option, Problem
from jellybean.optimizer.solution import Solution
from jellybean.optimizer.solver import solve

TOL = 1e-9


class NoPlan(Exception):
    """A strategy found no feasible plan; the message says why."""


def select_by_cost_proxy(problem: Problem, accuracy: AccuracyModel) -> dict[str, str]:
    """The combination with the lowest summed cost proxy that meets every accuracy target and stage
    minimum (ties to the more accurate, sink by sink)."""
    combos = enumerate_combinations(problem)
    if combos is None:
        raise NoPlan("too many variant combinations to enumerate for cost-proxy selection")
    best: tuple[float, tuple[float, ...], dict[str, str]] | None = None
    for models in combos:
        if not accuracy.admissible(problem, models):
            continue
        proxy = sum(problem.stages[s].variant(v).default_cost_proxy() for s, v in models.items())
        key = (proxy, tuple(-a for a in accuracy.ranking(problem, models)))
        if best is None or key < best[:2]:
            best = (*key, models)
    if best is None:
        raise NoPlan(f"no variant combination reaches {targets_text(problem)}")
    return best[2]


def edge_first(problem: Problem, models: dict[str, str]) -> Solution:
    """Greedy lowest-tier-first placement of fixed variants, then cheapest routing."""
    nodes, groups = problem.nodes, problem.groups
    h = problem.max_utilization
    used_count: dict[tuple[int, str | None], float] = {}
    rates: dict[int, float] = {}
    bottom_up = sorted(range(len(nodes)), key=lambda i: -nodes[i].depth)

    def load_of(g: int, key: str | None) -> float:
        """Busy instance-equivalents on group g of one count (:meth:`Problem.count_key`), per member site."""
        return sum(r / problem.options[oi].throughput_per_s for oi, r in rates.items()
                   if problem.options[oi].group == g and problem.count_key(problem.options[oi].stage) == key)

    def best_option(stage: str, g: int) -> Option | None:
        opts = [problem.options[o] for o in problem.options_by_stage[stage]
                if problem.options[o].group == g and problem.options[o].variant == models[stage]]
        return max(opts, key=lambda o: o.throughput_per_s) if opts else None

    for s in problem.order:
        info = problem.stages[s]
        primary = info.inputs[0]
        # Messages of the primary input arriving at each node per member (produced there).
        arriving: dict[int, float] = {}
        if primary.from_source:
            for i, rate in problem.source_rates[primary.src].items():
                arriving[i] = primary.ratio * rate
        else:
            ratio = primary.ratio_for(models[primary.src])
            for o_index, rate in rates.items():
                o = problem.options[o_index]
                if o.stage == primary.src:
                    i = groups[o.group].node
                    arriving[i] = arriving.get(i, 0.0) + ratio * rate
        pending = dict(arriving)  # per member of node
        for i in bottom_up:
            demand = pending.get(i, 0.0)
            if demand <= TOL:
                continue
            node = nodes[i]
            if i in info.allowed_nodes:
                candidates = []
                for g in node.groups:
                    best = best_option(s, g)
                    if best is not None:
                        candidates.append((groups[g].price_per_hour / best.throughput_per_s, g, best))
                for _, g, o in sorted(candidates, key=lambda c: (c[0], c[1])):
                    group = groups[g]
                    # The instances of the group's other counts (other stages in exclusive mode, other
                    # workflows planned together in shared mode) are not this stage's to use.
                    key = problem.count_key(s)
                    others = sum(c for (gg, k), c in used_count.items() if gg == g and k != key)
                    capacity = h * (group.limit - others) - load_of(g, key)
                    serve = min(demand, max(0.0, capacity) * o.throughput_per_s)
                    if serve <= TOL:
                        continue
                    rates[o.index] = rates.get(o.index, 0.0) + serve
                    demand -= serve
                    used_count[(g, key)] = math.ceil(load_of(g, key) / h - 1e-9)
                    if demand <= TOL:
                        break
            if demand > TOL:
                if node.parent is None:
                    raise NoPlan(f"stage {s}: {demand * node.total:.2f} req/s reach the top of the tree at "
                                 f"{node.name} with no capacity left")
                parent = node.parent
                pending[parent] = pending.get(parent, 0.0) + demand * node.multiplicity
    solution = Solution(models=dict(models), rates=rates, counts=dict(used_count))
    route_min_cost(problem, solution)
    return solution


def route_min_cost(problem: Problem, solution: Solution) -> None:
    """Route every edge's messages over the tree at the lowest network cost, rates fixed (an LP)."""
    from jellybean.optimizer.evaluate import message_kb, production, stage_rates

    rates = stage_rates(problem, solution)
    produced = production(problem, solution, rates)
    lp = pulp.LpProblem("route", pulp.LpMinimize)
    up: dict[tuple[str, int], pulp.LpVariable] = {}
    down: dict[tuple[str, int], pulp.LpVariable] = {}
    cost = []
    nodes = problem.nodes
    consumed: dict[tuple[str, int], float] = {}
    for edge in problem.flow_edges():
        if hasattr(edge, "node"):  # a pinned output: its node takes every result
            total = sum(rate * nodes[i].total for i, rate in produced[edge.key].items())
            consumed.update({(edge.key, node.index): (total / node.total if node.index == edge.node else 0.0)
                             for node in nodes})
        else:
            consumed.update({(edge.key, node.index): rates.get((edge.dst, node.index), 0.0) for node in nodes})
    for edge in problem.flow_edges():
        declared = problem.output_kb(edge.key)
        kb = declared if declared is not None else message_kb(problem, solution.models, edge.src)
        for node in nodes:
            if node.parent is None:
                continue
            up[(edge.key, node.index)] = lp.add_variable(f"u_{len(up)}", lowBound=0)
            link = node.up
            price = (link.cost_per_gb if link else 0.0) + 1e-6
            cost.append(node.total * price * kb * SECONDS_PER_HOUR / KB_PER_GB * up[(edge.key, node.index)])
            if problem.allow_downward:
                down[(edge.key, node.index)] = lp.add_variable(f"d_{len(down)}", lowBound=0)
                link = node.down
                price = (link.cost_per_gb if link else 0.0) + 1e-6
                cost.append(node.total * price * kb * SECONDS_PER_HOUR / KB_PER_GB * down[(edge.key, node.index)])
        for node in nodes:
            i = node.index
            inflow = [produced[edge.key].get(i, 0.0)]
            outflow = [consumed[(edge.key, i)]]
            if (edge.key, i) in up:
                outflow.append(up[(edge.key, i)])
            if (edge.key, i) in down:
                inflow.append(down[(edge.key, i)])
            for j in node.children:
                m = nodes[j].multiplicity
                inflow.append(m * up[(edge.key, j)])
                if (edge.key, j) in down:
                    outflow.append(m * down[(edge.key, j)])
            lp += pulp.lpSum(inflow) == pulp.lpSum(outflow)
    lp += pulp.lpSum(cost)
    outcome = solve(lp)
    if outcome.values is None or outcome.stats.status != "optimal":
        raise NoPlan("the placement cannot be routed without sending data down the tiers")
    if outcome.fallback is not None:
        solution.notes.append(f"routing: {outcome.fallback}")
    values = outcome.values
    solution.flows_up = {k: values[v.name] for k, v in up.items() if values[v.name] > 1e-9}
    solution.flows_down = {k: values[v.name] for k, v in down.items() if values[v.name] > 1e-9}
