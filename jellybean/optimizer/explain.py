"""Explain an infeasible problem in words, naming what binds, with numbers.

Three passes. Cheap checks first (a stage no instance can run; an accuracy target above what any
combination reaches). With a carbon budget, the least carbon any plan reaches within the other
limits (one solve with carbon as the objective): above the budget, that is the answer, with the
number. Then an *elastic* solve of the same MILP in which every limit may be
exceeded at a steep price (link bandwidth, instance counts, the accuracy target, the latency bound,
and, as a last resort, serving the sources' traffic at all): the cheapest way to violate the limits
points at the ones that bind, and by how much.
"""

from __future__ import annotations

import dataclasses
import math

from jellybean.optimizer.accuracy import AccuracyModel, enumerate_combinations
from jellybean.optimizer.carbon import Objective
from jellybean.optimizer.evaluate import carbon_g_per_hour
from jellybean.optimizer.milp import solve_milp
from jellybean.optimizer.problem import Problem
from jellybean.spec.errors import closest, listed


def _fmt(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".") if abs(x) < 1e6 else f"{x:.3g}"


def best_accuracy(problem: Problem, accuracy: AccuracyModel) -> tuple[float | None, dict[str, str] | None]:
    if accuracy.kind == "table" and accuracy.table is not None:
        allowed = {s: {v.name for v in problem.stages[s].variants} for s in accuracy.table_stages}
        rows = [r for r in accuracy.table.rows
                if all(v in allowed[s] for s, v in zip(accuracy.table_stages, r.variants))]
        if not rows:
            return None, None
        row = max(rows, key=lambda r: r.accuracy)
        models = {s: problem.stages[s].variants[0].name for s in problem.order}
        models.update(dict(zip(accuracy.table_stages, row.variants)))
        return row.accuracy, models
    combos = enumerate_combinations(problem)
    if combos is None:
        if accuracy.kind == "product":
            models = {s: max(problem.stages[s].variants, key=lambda v: v.accuracy).name for s in problem.order}
            return accuracy.evaluate(problem, models), models
        return None, None
    best: tuple[float, dict[str, str]] | None = None
    for models in combos:
        value = accuracy.evaluate(problem, models)
        if value is not None and (best is None or value > best[0]):
            best = (value, models)
    return (best[0], best[1]) if best else (None, None)


def _site_label(problem: Problem, node_index: int) -> str:
    node = problem.nodes[node_index]
    if node.total == 1:
        return node.name
    return f"{node.name} (and {node.total - 1} identical sites)"


def _nowhere(problem: Problem, s: str, allowed_tiers: set[str] | None) -> str:
    """Why stage ``s`` has no option at all, the first reason that holds: no instance where it may
    run; none of the hardware its variants are profiled on (with the closest name); none whose
    memory holds a variant; none of the batch sizes the workflow allows in any profile there."""
    info = problem.stages[s]
    where = f" in tiers {', '.join(sorted(allowed_tiers))}" if allowed_tiers else ""
    head = f"stage {s} (task {info.task}) cannot run on any instance{where}"
    groups = [g for g in problem.groups if g.node in info.allowed_nodes
              and (allowed_tiers is None or problem.nodes[g.node].tier.value in allowed_tiers)]
    if not groups:
        return f"{head}: no site it may run at{' (its placement)' if info.allowed_nodes else ''} has instances"
    profiled = {p.hardware for v in info.variants for p in v.profiles}
    offered = {g.hardware for g in groups}
    if not profiled & offered:
        close = "".join(f"; for {h!r}, did you mean {match!r}?" for h in sorted(offered)
                        if (match := closest(h, profiled)))
        return (f"{head}: its variants are profiled on {listed(profiled)}; the instances it may use are "
                f"{listed(offered)}{close}")
    fitting = [(v, g) for v in info.variants for g in groups if v.profile_for(g.hardware) is not None
               and (g.memory_mb is None or v.memory_mb <= g.memory_mb)]
    if not fitting:
        smallest = min((v for v in info.variants if any(v.profile_for(g.hardware) for g in groups)),
                       key=lambda v: v.memory_mb)
        roomiest = max((g.memory_mb or 0.0) for g in groups if smallest.profile_for(g.hardware) is not None)
        return (f"{head}: no variant fits an instance's memory (the smallest, {smallest.name}, needs "
                f"{_fmt(smallest.memory_mb)} MB; the largest instance it is profiled on has {_fmt(roomiest)} MB)")
    if info.batch_sizes is not None:
        have = {b for v, g in fitting for b in v.profile_for(g.hardware).latency_ms}
        return (f"{head}: the workflow allows batch sizes {listed(info.batch_sizes)}, which no profile of its "
                f"variants on these instances has (profiled batch sizes: {listed(sorted(have))})")
    return f"{head} (the stage's placement excludes the sites whose instances could)"


def _over_budget(problem: Problem, accuracy: AccuracyModel, allowed_tiers: set[str] | None,
                 fixed_models: dict[str, str] | None, time_limit_s: float) -> str | None:
    """The carbon budget, when it is what makes the problem infeasible: the least carbon any plan
    reaches within every other limit (one solve, carbon the objective, no budget) is above it. None
    when that plan keeps to the budget, or none exists (then something else binds)."""
    budget = problem.objective.carbon_budget_g_per_hour
    assert budget is not None
    least_carbon = dataclasses.replace(problem, objective=Objective("carbon"))
    result = solve_milp(least_carbon, accuracy, allowed_tiers=allowed_tiers, fixed_models=fixed_models,
                        time_limit_s=time_limit_s)
    if result.solution is None:
        return None
    least = carbon_g_per_hour(problem, result.solution)
    if least <= budget * (1 + 1e-6) + 1e-6:
        return None
    proven = "" if result.stats.status == "optimal" else \
        f" (the search stopped at the time limit: the least may be lower, down to {_fmt(result.stats.bound or 0)})"
    return (f"carbon budget {_fmt(budget)} gCO2/h (--carbon-budget) unreachable: the least carbon any plan reaches "
            f"within the other limits is {_fmt(least)} gCO2/h{proven}")


def explain(problem: Problem, accuracy: AccuracyModel, *, allowed_tiers: set[str] | None = None,
            fixed_models: dict[str, str] | None = None, time_limit_s: float = 30.0) -> list[str]:
    reasons: list[str] = []
    for s in problem.order:
        opts = [problem.options[o] for o in problem.options_by_stage[s]]
        if allowed_tiers is not None:
            opts = [o for o in opts if problem.node_of(o).tier.value in allowed_tiers]
        if not opts:
            reasons.append(_nowhere(problem, s, allowed_tiers))
    best, models = best_accuracy(problem, accuracy)
    if best is not None and best < problem.accuracy_target - 1e-9:
        combo = ", ".join(f"{s}={v}" for s, v in (models or {}).items())
        reasons.append(f"accuracy target {_fmt(problem.accuracy_target)} unreachable: the best combination "
                       f"reaches {_fmt(best)} ({combo}; {accuracy.description})")
    if reasons:
        return reasons
    if problem.objective.carbon_budget_g_per_hour is not None:
        over = _over_budget(problem, accuracy, allowed_tiers, fixed_models, time_limit_s)
        if over is not None:
            return [over]
    result = solve_milp(problem, accuracy, elastic=True, allowed_tiers=allowed_tiers, fixed_models=fixed_models,
                        time_limit_s=time_limit_s)
    slacks = result.slacks
    if result.solution is None or slacks is None:
        return [f"no plan exists and the diagnosis solve ended {result.stats.status}"]
    nodes = problem.nodes
    for (node_index, direction), extra in sorted(slacks.bandwidth_mbps.items()):
        node = nodes[node_index]
        parent = nodes[node.parent].name if node.parent is not None else "?"
        link = node.up if direction == "up" else node.down
        capacity = problem.max_link_utilization * link.bandwidth_mbps if link and link.bandwidth_mbps else None
        carried = [k for (k, i) in (result.solution.flows_up if direction == "up" else result.solution.flows_down or {})
                   if i == node_index]
        what = " for raw source data" if carried and all(k.split("->")[0] in problem.source_rates for k in carried) else ""
        ends = (node.name, parent) if direction == "up" else (parent, node.name)
        label = _site_label(problem, node_index)
        usable = "" if problem.max_link_utilization == 1 or not link or not link.bandwidth_mbps else \
            f" usable ({problem.max_link_utilization:g} of {_fmt(link.bandwidth_mbps)}, max_link_utilization)"
        reasons.append(f"uplink {ends[0]} -> {ends[1]} needs {_fmt((capacity or 0) + extra)} Mbps{what}, has "
                       f"{_fmt(capacity or 0)}{usable}" + (f" (each of {label})" if node.total > 1 else ""))
    for (g_index, stage), extra in sorted(slacks.instances.items(), key=lambda kv: kv[0][0]):
        g = problem.groups[g_index]
        reasons.append(f"instances {g.name} at {_site_label(problem, g.node)}: the plan needs "
                       f"{_fmt(g.limit + extra)}, the site has {g.limit}")
    if slacks.accuracy > 1e-6:
        if accuracy.kind == "product":
            reached = problem.accuracy_target * math.exp(-slacks.accuracy)
        else:
            reached = problem.accuracy_target - slacks.accuracy
        reasons.append(f"accuracy target {_fmt(problem.accuracy_target)} unreachable within the other limits: "
                       f"the best feasible combination reaches {_fmt(reached)}")
    if slacks.latency_ms > 1e-6 and problem.latency_bound_ms is not None:
        reasons.append(f"latency bound {_fmt(problem.latency_bound_ms)} ms unreachable: the fastest plan within the "
                       f"other limits takes {_fmt(problem.latency_bound_ms + slacks.latency_ms)} ms")
    if slacks.carbon_g_per_hour > 1e-6 and problem.objective.carbon_budget_g_per_hour is not None:
        budget = problem.objective.carbon_budget_g_per_hour
        reasons.append(f"carbon budget {_fmt(budget)} gCO2/h (--carbon-budget) unreachable within the other limits: "
                       f"the plan that misses them least emits {_fmt(budget + slacks.carbon_g_per_hour)} gCO2/h")
    for (source, node_index), rate in sorted(slacks.unserved.items()):
        reasons.append(f"{_fmt(rate * nodes[node_index].total)} req/s from {source} at "
                       f"{_site_label(problem, node_index)} cannot be served: no reachable instance above it has "
                       "capacity for the first stage, and data may not flow down the tiers")
    if not reasons:
        reasons.append("no plan satisfies every constraint at once, although each limit can be met alone; "
                       "try relaxing the accuracy target or adding capacity")
    return reasons
