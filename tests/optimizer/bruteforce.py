"""An independent, exhaustive planner for tiny instances, to check the MILP against.

It shares only the compiled data (options, sites, paths) with the optimizer, not its model:
variants are enumerated; in exclusive mode every individual instance (not an aggregated count) is
assigned a stage or nothing; in shared mode every instance group picks the set of stages it hosts and
how many instances it uses (per workflow, when several are planned together: an instance serves one). For each such choice the remaining problem is a linear program over
per-instance rates and *site-to-site* flows (routes are whole tree paths, not the MILP's per-link
flows), solved with SciPy's ``linprog``. The cheapest over all choices is the optimum.

Carbon, written out here on its own: an instance in use at site ``i`` emits
``I_i / 1000 (idle + (busy - idle) u)`` gCO2/h, ``u`` its busy fraction. The idle part is fixed by
the enumerated choice (per instance used), the busy part is linear in the LP's rates
(``(busy - idle) I_i / 1000 / mu_o`` per request/s of option ``o``). The minimum is taken of
``cost_weight x $/h + carbon_weight x gCO2/h``, with at most ``carbon_budget`` gCO2/h.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy.optimize import linprog

from jellybean.optimizer.accuracy import AccuracyModel, enumerate_combinations
from jellybean.optimizer.problem import KB_PER_GB, MBIT_PER_KB, SECONDS_PER_HOUR, Problem


def brute_force(problem: Problem, accuracy: AccuracyModel, *, cost_weight: float = 1.0, carbon_weight: float = 0.0,
                carbon_budget: float | None = None) -> float:
    """Minimum of ``cost_weight x $/h + carbon_weight x gCO2/h`` over every plan emitting at most
    ``carbon_budget`` gCO2/h (default: $/h, no budget), or ``math.inf`` when none exists. Needs
    ``aggregate=False``."""
    assert all(n.total == 1 for n in problem.nodes), "compile with aggregate=False"
    weights = _Weights(cost_weight, carbon_weight, carbon_budget)
    best = math.inf
    for models in enumerate_combinations(problem) or []:
        if not admissible(problem, accuracy, models):
            continue
        opts = {s: [o for o in (problem.options[i] for i in problem.options_by_stage[s]) if o.variant == models[s]]
                for s in problem.order}
        if problem.sharing == "exclusive":
            best = min(best, _exclusive(problem, models, opts, weights))
        else:
            best = min(best, _shared(problem, models, opts, weights))
    return best


def admissible(problem: Problem, accuracy: AccuracyModel, models: dict[str, str]) -> bool:
    """Every sink reaches its target and every stage its minimum, decided here on its own: a sink's
    stages are found by walking the workflow's edges upstream from it, and the product form is
    multiplied out here (a table or profiles are the zoo's measurements, read through the sink's
    model); a minimum is compared with the chosen variant's own accuracy."""
    for target, model in zip(problem.sinks, accuracy.sinks):
        if model.kind == "product":
            value = 100.0
            for stage in _upstream(problem, target.stage):
                value *= max(problem.stages[stage].variant(models[stage]).accuracy, 0.0) / 100.0
        else:
            value = model.evaluate(problem, models)
        if value is None or value < target.accuracy_target - 1e-9:
            return False
    for stage, variant in models.items():
        minimum = problem.stages[stage].min_accuracy
        if minimum is not None and problem.stages[stage].variant(variant).accuracy < minimum - 1e-9:
            return False
    return True


def _upstream(problem: Problem, sink: str) -> set[str]:
    """``sink`` and every stage whose messages reach it."""
    found, todo = set(), [sink]
    while todo:
        stage = todo.pop()
        if stage not in found:
            found.add(stage)
            todo += [e.src for e in problem.stages[stage].inputs if not e.from_source]
    return found


class _Weights:
    def __init__(self, cost: float, carbon: float, budget: float | None) -> None:
        self.cost, self.carbon, self.budget = cost, carbon, budget


def _g_per_wh(problem: Problem, g: int) -> float:
    """gCO2 per Wh drawn by group ``g`` (its site's intensity / 1000; 0 without figures)."""
    return (problem.nodes[problem.groups[g].node].carbon_intensity_g_per_kwh or 0.0) / 1000.0


def _idle_g_per_hour(problem: Problem, g: int, instances: float) -> float:
    return (problem.groups[g].power_idle_w or 0.0) * instances * _g_per_wh(problem, g)


def _busy_g_per_request(problem: Problem, o) -> float:
    """gCO2/h per request/s served with option ``o``: its share of a busy instance's extra draw."""
    g = problem.groups[o.group]
    extra_w = (g.power_busy_w or 0.0) - (g.power_idle_w or 0.0)
    return extra_w / o.throughput_per_s * _g_per_wh(problem, o.group)


def _exclusive(problem: Problem, models, opts, weights: _Weights) -> float:
    instances = [(g.index, k) for g in problem.groups for k in range(g.limit)]
    choices = [None] + problem.order
    best = math.inf
    for assignment in itertools.product(choices, repeat=len(instances)):
        used = [g for (g, _), s in zip(instances, assignment) if s is not None]
        compute = sum(problem.groups[g].price_per_hour for g in used)
        idle = sum(_idle_g_per_hour(problem, g, 1.0) for g in used)
        fixed = weights.cost * compute + weights.carbon * idle
        if fixed >= best or (weights.budget is not None and idle > weights.budget + 1e-9):
            continue
        # Serving units: one per used instance, with the options of its stage on its group.
        units = [(s, [o for o in opts[s] if o.group == g], 1.0)
                 for (g, _), s in zip(instances, assignment) if s is not None]
        best = min(best, fixed + _lp(problem, models, units, weights, idle))
    return best


def _shared(problem: Problem, models, opts, weights: _Weights) -> float:
    """Every group picks, for each workflow (the one, or each of several planned together, whose
    instances serve it alone), the set of its stages it hosts and how many instances they use; the
    counts of one group add up within its limit."""
    owners = sorted(set(problem.workflow_of.values())) or [None]

    def stages_of(owner: str | None) -> list[str]:
        return [s for s in problem.order if owner is None or problem.workflow_of[s] == owner]

    per_group = []
    for g in problem.groups:
        menus = []
        for owner in owners:
            menu = []
            mine = stages_of(owner)
            for hosted in itertools.chain.from_iterable(itertools.combinations(mine, k) for k in range(len(mine) + 1)):
                memory = sum(problem.stages[s].variant(models[s]).memory_mb for s in hosted)
                if g.memory_mb is not None and memory > g.memory_mb + 1e-9:
                    continue
                counts = [0] if not hosted else range(1, g.limit + 1)
                for n in counts:
                    menu.append((hosted, n))
            menus.append(menu)
        per_group.append([combo for combo in itertools.product(*menus) if sum(n for _, n in combo) <= g.limit])
    best = math.inf
    for pick in itertools.product(*per_group):
        compute = sum(problem.groups[g].price_per_hour * n for g, combo in enumerate(pick) for _, n in combo)
        idle = sum(_idle_g_per_hour(problem, g, n) for g, combo in enumerate(pick) for _, n in combo)
        fixed = weights.cost * compute + weights.carbon * idle
        if fixed >= best or (weights.budget is not None and idle > weights.budget + 1e-9):
            continue
        units = []
        for g, combo in enumerate(pick):
            for hosted, n in combo:
                if n:
                    units.append((tuple(hosted), [o for s in hosted for o in opts[s] if o.group == g], float(n)))
        best = min(best, fixed + _lp(problem, models, units, weights, idle))
    return best


def _lp(problem: Problem, models, units, weights: _Weights, idle_g_per_hour: float) -> float:
    """Least ``cost_weight x network $/h + carbon_weight x busy gCO2/h`` for fixed serving units,
    with the busy carbon within ``budget - idle``, or inf. Units: (stage(s), options, instances)."""
    nodes = problem.nodes
    h = problem.max_utilization
    columns: list[tuple] = []  # ("r", unit, option) | ("f", edge_key, i, j)
    for u, (_, options, _) in enumerate(units):
        for o in options:
            columns.append(("r", u, o.index))
    busy_carbon = {("r", u, o.index): _busy_g_per_request(problem, o)
                   for u, (_, options, _) in enumerate(units) for o in options}
    edges = [(s, e) for s in problem.order for e in problem.stages[s].inputs]
    pairs = [(i, j) for i in range(len(nodes)) for j in range(len(nodes)) if problem.reachable(i, j)]
    for _s, e in edges:
        for i, j in pairs:
            columns.append(("f", e.key, i, j))
    index = {c: k for k, c in enumerate(columns)}
    cost = np.zeros(len(columns))
    a_eq, b_eq, a_ub, b_ub = [], [], [], []

    def kb_of(edge) -> float:
        return problem.source_payload_kb[edge.src] if edge.from_source else \
            problem.stages[edge.src].variant(models[edge.src]).output_kb

    for _s, e in edges:
        kb = kb_of(e)
        for i, j in pairs:
            ups, downs = problem.path(i, j)
            price = sum(nodes[n].up.cost_per_gb for n in ups) + sum(nodes[n].down.cost_per_gb for n in downs)
            cost[index[("f", e.key, i, j)]] = weights.cost * price * kb * SECONDS_PER_HOUR / KB_PER_GB
    carbon_row = np.zeros(len(columns))
    for column, grams in busy_carbon.items():
        carbon_row[index[column]] = grams
    cost += weights.carbon * carbon_row
    if weights.budget is not None:
        a_ub.append(carbon_row)
        b_ub.append(weights.budget - idle_g_per_hour)
    # Capacity of each unit.
    for u, (_, options, n) in enumerate(units):
        row = np.zeros(len(columns))
        for o in options:
            row[index[("r", u, o.index)]] = 1.0 / o.throughput_per_s
        a_ub.append(row)
        b_ub.append(h * n)
    # Conservation: producers send all, consumers receive their rate on every input edge.
    for s, e in edges:
        for i in range(len(nodes)):
            row = np.zeros(len(columns))
            for (a, b) in pairs:
                if a == i:
                    row[index[("f", e.key, a, b)]] += 1.0
            constant = 0.0
            if e.from_source:
                constant = e.ratio * problem.source_rates[e.src].get(i, 0.0)
            else:
                for u, (_, options, _) in enumerate(units):
                    for o in options:
                        if o.stage == e.src and problem.groups[o.group].node == i:
                            row[index[("r", u, o.index)]] -= e.ratio_for(models[e.src])
            a_eq.append(row)
            b_eq.append(constant)
            row = np.zeros(len(columns))
            for (a, b) in pairs:
                if b == i:
                    row[index[("f", e.key, a, b)]] += 1.0
            for u, (_, options, _) in enumerate(units):
                for o in options:
                    if o.stage == s and problem.groups[o.group].node == i:
                        row[index[("r", u, o.index)]] -= 1.0
            a_eq.append(row)
            b_eq.append(0.0)
    # Bandwidth on every link direction.
    for node in nodes:
        if node.parent is None:
            continue
        for direction, link in (("up", node.up), ("down", node.down)):
            if link is None or link.bandwidth_mbps is None:
                continue
            row = np.zeros(len(columns))
            for _s, e in edges:
                for i, j in pairs:
                    ups, downs = problem.path(i, j)
                    if node.index in (ups if direction == "up" else downs):
                        row[index[("f", e.key, i, j)]] += kb_of(e) * MBIT_PER_KB
            a_ub.append(row)
            b_ub.append(problem.max_link_utilization * link.bandwidth_mbps)
    result = linprog(cost, A_ub=np.array(a_ub) if a_ub else None, b_ub=b_ub or None,
                     A_eq=np.array(a_eq), b_eq=b_eq, bounds=(0, None), method="highs")
    return result.fun if result.status == 0 else math.inf
