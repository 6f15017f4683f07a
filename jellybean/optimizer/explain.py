"""Explain an infeasible problem in words, naming what binds, with numbers.

Three passes. Cheap checks first (a stage no instance can run; a stage's minimum accuracy above every
variant's; a sink's accuracy target above what any combination reaches): each is one limit that
cannot be met alone. With a carbon budget, the least
carbon any plan reaches within the other limits (one solve with carbon as the objective): above the
budget, that is the answer, with the number. Then the limits that cannot be met together: the
smallest set of constraints that conflict (:func:`jellybean.optimizer.conflict.find_conflict`, a
deletion filter), each said with its numbers (:func:`describe_conflict`). Then by how much: an
*elastic* solve of the same MILP in which every limit may be exceeded at a steep price (link
bandwidth, instance counts, each sink's accuracy target, the latency bound, the carbon budget), and,
only where no such violation serves the sources' traffic, that traffic may go unserved: the cheapest
way to violate the limits says how far each binding one is exceeded.

Words for the user: constraint names as the documents spell them, units in every number, no
variable of the model.
"""

from __future__ import annotations

import dataclasses
import math
import time

from jellybean.optimizer.accuracy import AccuracyModel, SinkAccuracy, enumerate_combinations
from jellybean.optimizer.carbon import Objective
from jellybean.optimizer.conflict import Conflict, Constraint, find_conflict
from jellybean.optimizer.evaluate import carbon_g_per_hour
from jellybean.optimizer.milp import fastest_path_ms, solve_milp, usable_options
from jellybean.optimizer.problem import MBIT_PER_KB, Option, Problem
from jellybean.spec.errors import closest, listed

#: Of the time left for explaining, the share the search for the conflicting constraints may take;
#: the elastic solve (how far each limit is exceeded) gets the rest.
CONFLICT_SHARE = 0.6


def _fmt(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".") if abs(x) < 1e6 else f"{x:.3g}"


def best_accuracy(problem: Problem, accuracy: AccuracyModel | SinkAccuracy
                  ) -> tuple[float | None, dict[str, str] | None]:
    """The best accuracy a sink can reach (the first sink's, given the workflow's model), with every
    stage at its minimum or above, and the variants that reach it; (None, None) when unknown or when
    no combination meets the minimums."""
    model = accuracy.first if isinstance(accuracy, AccuracyModel) else accuracy
    meets = {s: [v.name for v in problem.stages[s].variants if problem.stages[s].meets_minimum(v.name)]
             for s in problem.order}
    if model.kind == "table" and model.table is not None:
        rows = [r for r in model.table.rows if all(v in meets[s] for s, v in zip(model.table_stages, r.variants))]
        if not rows:
            return None, None
        row = max(rows, key=lambda r: r.accuracy)
        models = {s: (meets[s] or [problem.stages[s].variants[0].name])[0] for s in problem.order}
        models.update(dict(zip(model.table_stages, row.variants)))
        return row.accuracy, {s: models[s] for s in model.stages}
    combos = enumerate_combinations(problem)
    if combos is None:
        if model.kind == "product" and all(meets.values()):
            models = {s: max((v for v in problem.stages[s].variants if v.name in meets[s]),
                             key=lambda v: v.accuracy).name for s in problem.order}
            return model.evaluate(problem, models), {s: models[s] for s in model.stages}
        return None, None
    best: tuple[float, dict[str, str]] | None = None
    for models in combos:
        if not all(models[s] in meets[s] for s in problem.order):
            continue
        value = model.evaluate(problem, models)
        if value is not None and (best is None or value > best[0]):
            best = (value, models)
    return (best[0], {s: best[1][s] for s in model.stages}) if best else (None, None)


def _unmet_minimums(problem: Problem) -> list[str]:
    """Each stage whose minimum on its task's own metric no candidate variant reaches."""
    out = []
    for s in problem.order:
        info = problem.stages[s]
        if info.min_accuracy is not None and not any(info.meets_minimum(v.name) for v in info.variants):
            top = max(info.variants, key=lambda v: v.accuracy)
            out.append(f"stage {s}: no variant reaches its min_accuracy {_fmt(info.min_accuracy)} ({info.metric}); "
                       f"the most accurate, {top.name}, has {_fmt(top.accuracy)}")
    return out


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
        have = {b for v, g in fitting if (profile := v.profile_for(g.hardware)) is not None for b in profile.latency_ms}
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
            fixed_models: dict[str, str] | None = None, time_limit_s: float = 30.0,
            solver: str = "highs") -> list[str]:
    """Why ``problem`` (restricted to ``allowed_tiers`` / ``fixed_models``, as the strategy was) has
    no plan: the passes of the module docstring, within ``time_limit_s`` seconds of wall clock."""
    started = time.perf_counter()
    reasons: list[str] = []
    for s in problem.order:
        opts = [problem.options[o] for o in problem.options_by_stage[s]]
        if allowed_tiers is not None:
            opts = [o for o in opts if problem.node_of(o).tier.value in allowed_tiers]
        if not opts:
            reasons.append(_nowhere(problem, s, allowed_tiers))
    reasons += _unmet_minimums(problem)
    for target, model in zip(problem.sinks, accuracy.sinks):
        best, models = best_accuracy(problem, model)
        if best is not None and best < target.accuracy_target - 1e-9:
            combo = ", ".join(f"{s}={v}" for s, v in (models or {}).items())
            at = f" at sink {target.stage}" if len(problem.sinks) > 1 else ""
            within = " with every stage at its min_accuracy" if any(
                problem.stages[s].min_accuracy is not None for s in model.stages) else ""
            reasons.append(f"accuracy target {_fmt(target.accuracy_target)}{at} unreachable: the best combination"
                           f"{within} reaches {_fmt(best)} ({combo}; {model.description})")
    if reasons:
        return reasons
    if problem.objective.carbon_budget_g_per_hour is not None:
        over = _over_budget(problem, accuracy, allowed_tiers, fixed_models, time_limit_s)
        if over is not None:
            return [over]
    conflict = find_conflict(problem, accuracy, allowed_tiers=allowed_tiers, fixed_models=fixed_models,
                             time_limit_s=time_limit_s * CONFLICT_SHARE, solver=solver)
    reasons.append(describe_conflict(problem, accuracy, conflict, allowed_tiers=allowed_tiers,
                                     fixed_models=fixed_models))
    left = time_limit_s - (time.perf_counter() - started)
    reasons += _exceeded(problem, accuracy, allowed_tiers=allowed_tiers, fixed_models=fixed_models,
                         time_limit_s=max(0.05, left), solver=solver)
    return reasons


def _exceeded(problem: Problem, accuracy: AccuracyModel, *, allowed_tiers: set[str] | None,
              fixed_models: dict[str, str] | None, time_limit_s: float, solver: str) -> list[str]:
    """How far each binding limit is exceeded by the cheapest violation (the elastic solve): first
    with every request served; only if even that admits no plan, with traffic allowed to go unserved."""
    started = time.perf_counter()
    result = solve_milp(problem, accuracy, elastic=True, unserved=False, time_limit_s=time_limit_s,
                        allowed_tiers=allowed_tiers, fixed_models=fixed_models, solver=solver)
    if result.solution is None and result.stats.status == "infeasible":
        left = time_limit_s - (time.perf_counter() - started)
        result = solve_milp(problem, accuracy, elastic=True, time_limit_s=max(0.05, left),
                            allowed_tiers=allowed_tiers, fixed_models=fixed_models, solver=solver)
    slacks = result.slacks
    if result.solution is None or slacks is None:
        return [f"how far each limit is exceeded is not known: the diagnosis solve ended {result.stats.status}"]
    reasons = []
    nodes = problem.nodes
    for (node_index, direction), extra in sorted(slacks.bandwidth_mbps.items()):
        node = nodes[node_index]
        link = node.up if direction == "up" else node.down
        capacity = problem.max_link_utilization * link.bandwidth_mbps if link and link.bandwidth_mbps else None
        carried = [k for (k, i) in (result.solution.flows_up if direction == "up" else result.solution.flows_down) or {}
                   if i == node_index]
        what = " for raw source data" if carried and all(k.split("->")[0] in problem.source_rates for k in carried) else ""
        label = _site_label(problem, node_index)
        usable = "" if problem.max_link_utilization == 1 or not link or not link.bandwidth_mbps else \
            f" usable ({problem.max_link_utilization:g} of {_fmt(link.bandwidth_mbps)}, max_link_utilization)"
        needs = _fmt((capacity or 0) + extra)
        reasons.append(f"{_link_name(problem, node_index, direction)} needs {needs} Mbps{what}, has "
                       f"{_fmt(capacity or 0)}{usable}" + (f" (each of {label})" if node.total > 1 else ""))
    for (g_index, _stage), extra in sorted(slacks.instances.items(), key=lambda kv: kv[0][0]):
        g = problem.groups[g_index]
        reasons.append(f"instances {g.name} at {_site_label(problem, g.node)}: the plan needs "
                       f"{_fmt(g.limit + extra)}, the site has {g.limit}")
    for target, model in zip(problem.sinks, accuracy.sinks):
        missed = slacks.accuracy_by_sink.get(target.stage, 0.0)
        if missed > 1e-6:
            if model.kind == "product":
                reached = target.accuracy_target * math.exp(-missed)
            else:
                reached = target.accuracy_target - missed
            at = f" at sink {target.stage}" if len(problem.sinks) > 1 else ""
            reasons.append(f"accuracy target {_fmt(target.accuracy_target)}{at} unreachable within the other limits: "
                           f"the best feasible combination reaches {_fmt(reached)}")
    if slacks.latency_ms > 1e-6 and problem.latency_bound_ms is not None:
        if _one_latency_bound(problem):
            reasons.append(f"latency bound {_fmt(problem.latency_bound_ms)} ms unreachable: the fastest plan within "
                           f"the other limits takes {_fmt(problem.latency_bound_ms + slacks.latency_ms)} ms")
        else:
            reasons.append(f"{_latency_bounds(problem)} unreachable: the fastest plan within the other limits takes "
                           f"{_fmt(slacks.latency_ms)} ms more at one of those sinks")
    if slacks.carbon_g_per_hour > 1e-6 and problem.objective.carbon_budget_g_per_hour is not None:
        budget = problem.objective.carbon_budget_g_per_hour
        reasons.append(f"carbon budget {_fmt(budget)} gCO2/h (--carbon-budget) unreachable within the other limits: "
                       f"the plan that misses them least emits {_fmt(budget + slacks.carbon_g_per_hour)} gCO2/h")
    for (source, node_index), rate in sorted(slacks.unserved.items()):
        reasons.append(f"{_fmt(rate * nodes[node_index].total)} req/s from {source} at "
                       f"{_site_label(problem, node_index)} cannot be served, however far bandwidth, instance "
                       "counts, accuracy and latency were exceeded: its data reaches no instances for every stage")
    if reasons and result.stats.status != "optimal":
        reasons[-1] += " (these amounts are the least the search found by the time limit, not proven the least)"
    return reasons


def _link_name(problem: Problem, node_index: int, direction: str) -> str:
    """``uplink hub -> cloud`` or ``downlink cloud -> hub``: the site's link to its parent, one way."""
    node = problem.nodes[node_index]
    parent = problem.nodes[node.parent].name if node.parent is not None else "?"
    return f"uplink {node.name} -> {parent}" if direction == "up" else f"downlink {parent} -> {node.name}"


# --------------------------------------------------------------------------------------------------
# the conflicting constraints, in words


def describe_conflict(problem: Problem, accuracy: AccuracyModel, conflict: Conflict, *,
                      allowed_tiers: set[str] | None = None, fixed_models: dict[str, str] | None = None) -> str:
    """One sentence naming the constraints of ``conflict`` with their numbers, e.g. "these 3 limits
    cannot all be met together (...): (1) stage blur may run only at hub (its placement); (2) instances
    box at hub have 512 MB of memory: no variant of stage detect fits (the smallest, yolo-n, needs
    600 MB); (3) data may not flow down the tiers (...)". The traffic is stated where the members
    are rates (instance counts, bandwidth), and the strategy's restriction where there is one."""
    where = ""
    if allowed_tiers is not None:
        where += f" within tiers {', '.join(sorted(allowed_tiers))}"
    if fixed_models is not None:
        where += f" with the variants fixed ({', '.join(f'{s}={v}' for s, v in fixed_models.items())})"
    if not conflict.members:
        return (f"no plan exists{where} even without any limit a user sets (placement, batch sizes, memory, "
                "instance counts, bandwidth, downward flows, outputs, latency and accuracy): the stages cannot "
                "be chained over the sites whose hardware their variants are profiled on")
    parts = []
    for family in dict.fromkeys(c.family for c in conflict.members):  # in the families' order
        members = [c for c in conflict.members if c.family == family]
        if len(members) <= AT_MOST_APART:
            parts += [_describe(problem, conflict.relaxed, accuracy, c, allowed_tiers, fixed_models) for c in members]
        elif family == "instances":
            parts.append(_describe_many_instances(conflict.relaxed, [c.key[0] for c in members], allowed_tiers,
                                                  fixed_models))
        else:
            parts.append(f"{len(members)} {FAMILY_NAMES[family]}: " + listed(
                [_describe(problem, conflict.relaxed, accuracy, c, allowed_tiers, fixed_models) for c in members],
                at_most=AT_MOST_APART, ordered=True, sep="; "))
    n = len(conflict.members)
    rates = f" at the sources' rates ({_rates(problem)})" \
        if any(c.family in ("instances", "bandwidth") for c in conflict.members) else ""
    if n == 1 and conflict.minimal:
        head = f"this limit cannot be met{where}{rates}, whatever else is relaxed"
    elif conflict.minimal:
        head = (f"these {n} limits cannot all be met together{where}{rates}; each can be met alone, and relaxing "
                "any one of them allows a plan")
    elif conflict.families_minimal:
        unnarrowed = ", ".join(FAMILY_NAMES[f] for f in conflict.unnarrowed)
        head = (f"these {n} limits cannot all be met together{where}{rates}; relaxing all of any one kind of them "
                f"allows a plan (the search stopped at its limit of time or solves before narrowing the {unnarrowed} "
                "to the fewest that conflict)")
    else:
        head = (f"these {n} limits cannot all be met together{where}{rates} (the search for the smallest set "
                "stopped at its limit of time or solves: some may not be needed)")
    return head + ": " + "; ".join(f"({k}) {p}" for k, p in enumerate(parts, 1))


#: Up to this many constraints of one family are said one by one; more are said together.
AT_MOST_APART = 3
#: A family of constraints in words, for several of them at once.
FAMILY_NAMES = {"downward": "downward flows", "output": "outputs delivered at sites",
                "batch_sizes": "stages' batch sizes", "placement": "stages' placements",
                "memory": "instance groups' memory", "instances": "instance counts",
                "bandwidth": "links' bandwidths", "latency": "latency bound", "accuracy": "accuracy target"}


def _describe_many_instances(relaxed: Problem, group_indices: list[int], allowed_tiers: set[str] | None,
                             fixed_models: dict[str, str] | None) -> str:
    """Many groups' counts at once: how many, where, and what they serve at most together, per stage
    ``sum_g L_g h mu_g`` (each group's fastest option for the stage)."""
    h = relaxed.max_utilization
    chosen = set(group_indices)
    fastest: dict[tuple[int, str], float] = {}
    for o in usable_options(relaxed, fixed_models, allowed_tiers):
        if o.group in chosen:
            fastest[(o.group, o.stage)] = max(fastest.get((o.group, o.stage), 0.0), o.throughput_per_s)
    total: dict[str, float] = {}
    for (g, stage), mu in fastest.items():
        total[stage] = total.get(stage, 0.0) + relaxed.groups[g].limit * h * mu * relaxed.nodes[relaxed.groups[g].node].total
    count = sum(relaxed.groups[g].limit * relaxed.nodes[relaxed.groups[g].node].total for g in group_indices)
    sites = listed(dict.fromkeys(relaxed.nodes[relaxed.groups[g].node].name for g in group_indices), at_most=4)
    text = (f"the counts of {len(group_indices)} instance groups at {sites} ({count} instances: "
            + listed([relaxed.groups[g].name for g in group_indices], at_most=4) + ")")
    if total:
        at = "" if h == 1 else f", at max_utilization {h:g}"
        text += (", serving at most " + ", or ".join(f"{_fmt(r)} req/s of stage {s}" for s, r in total.items())
                 + f" in all{at}")
    return text


def _describe(problem: Problem, relaxed: Problem, accuracy: AccuracyModel, c: Constraint,
              allowed_tiers: set[str] | None, fixed_models: dict[str, str] | None) -> str:
    """One constraint of a conflict with its numbers: its own limit from ``problem``, and what it
    rules out in ``relaxed`` (the problem with every constraint outside the conflict dropped)."""
    if c.family == "downward":
        return "data may not flow down the tiers (the topology's allow_downward_flows is false)"
    if c.family == "output":
        output = next(o for o in problem.outputs if o.name == c.key[0])
        return f"the results are delivered at {_site_label(problem, output.node)} (output {output.name})"
    if c.family == "batch_sizes":
        info = problem.stages[c.key[0]]
        have = {b for v in info.variants for p in v.profiles for b in p.latency_ms}
        return (f"stage {info.name} may use only batch sizes {listed(info.batch_sizes or [])} (its batch_sizes; "
                f"its variants are profiled at batch sizes {listed(have)})")
    if c.family == "placement":
        info = problem.stages[c.key[0]]
        sites = [_site_label(problem, n) for n in sorted(info.allowed_nodes)]
        return f"stage {info.name} may run only at {listed(sites) if sites else 'no site'} (its placement)"
    if c.family == "memory":
        return _describe_memory(problem, relaxed, c.key[0], fixed_models)
    if c.family == "instances":
        return _describe_instances(relaxed, c.key[0], allowed_tiers, fixed_models)
    if c.family == "bandwidth":
        node_index, direction = c.key
        node = problem.nodes[node_index]
        link = node.up if direction == "up" else node.down
        assert link is not None and link.bandwidth_mbps is not None
        text = f"{_link_name(problem, node_index, direction)} carries at most "
        if problem.max_link_utilization == 1:
            text += f"{_fmt(link.bandwidth_mbps)} Mbps"
        else:
            share = problem.max_link_utilization
            text += (f"{_fmt(share * link.bandwidth_mbps)} Mbps ({share:g} of {_fmt(link.bandwidth_mbps)}, "
                     "max_link_utilization)")
        if node.total > 1:
            text += f" (each of {_site_label(problem, node_index)})"
        raw = _raw_mbps_below(problem, node_index)
        if direction == "up" and raw > 0:
            text += f"; the raw source data below it come at {_fmt(raw)} Mbps"
        return text
    if c.family == "latency":
        return _describe_latency(relaxed, allowed_tiers, fixed_models)
    return _describe_accuracy(problem, accuracy)


def _describe_accuracy(problem: Problem, accuracy: AccuracyModel) -> str:
    """The accuracy family: the sink's target (each sink's, when there are several) with how it is
    modelled, and the stages' minimums on their own metrics, where there are any."""
    if len(problem.sinks) == 1:
        text = f"accuracy target {_fmt(problem.accuracy_target)} ({accuracy.description})"
    else:
        text = "accuracy targets " + ", ".join(f"{t.stage} {_fmt(t.accuracy_target)} ({m.description})"
                                               for t, m in zip(problem.sinks, accuracy.sinks))
    minimums = [f"{s} {info.metric} >= {_fmt(info.min_accuracy)}" for s, info in problem.stages.items()
                if info.min_accuracy is not None]
    return text + (f" and the stages' minimums ({', '.join(minimums)})" if minimums else "")


def _describe_memory(problem: Problem, relaxed: Problem, g_index: int, fixed_models: dict[str, str] | None) -> str:
    """Instances too small: per stage that may run at the group's site (in ``relaxed``), the variants
    profiled on its hardware that do not fit, or (shared mode) what all of them need together."""
    g = problem.groups[g_index]
    assert g.memory_mb is not None
    head = f"instances {g.name} at {_site_label(problem, g.node)} have {_fmt(g.memory_mb)} MB of memory"
    details, together = [], []
    for s in problem.order:
        if g.node not in relaxed.stages[s].allowed_nodes:
            continue
        variants = [v for v in problem.stages[s].variants if v.profile_for(g.hardware) is not None
                    and (fixed_models is None or fixed_models.get(s) == v.name)]
        too_big = [v for v in variants if v.memory_mb > g.memory_mb]
        together += [(s, v) for v in variants if v not in too_big]
        if not too_big:
            continue
        if len(too_big) == len(variants):
            smallest = min(too_big, key=lambda v: v.memory_mb)
            details.append(f"no variant of stage {s} fits (the smallest, {smallest.name}, needs "
                           f"{_fmt(smallest.memory_mb)} MB)")
        else:
            details.append(f"stage {s}'s " + listed([f"{v.name} ({_fmt(v.memory_mb)} MB)" for v in too_big])
                           + " do not fit")
    if not details and together:  # shared mode: each fits, not all of them at once
        need = sum(v.memory_mb for _, v in together)
        details.append(f"the models that could share them need {_fmt(need)} MB together ("
                       + listed([f"{s} {v.name} {_fmt(v.memory_mb)} MB" for s, v in together]) + ")")
    return head + (": " + ", and ".join(details) if details else "")


def _describe_instances(relaxed: Problem, g_index: int, allowed_tiers: set[str] | None,
                        fixed_models: dict[str, str] | None) -> str:
    """A group's count, and what it serves at most: per stage its fastest option there, ``L h mu``."""
    g = relaxed.groups[g_index]
    node = relaxed.nodes[g.node]
    site = node.name if node.total == 1 else f"each of {_site_label(relaxed, g.node)}"
    text = f"{site} has {g.limit} instance{'' if g.limit == 1 else 's'} of {g.name} ({g.hardware})"
    h = relaxed.max_utilization
    fastest: dict[str, Option] = {}
    for o in usable_options(relaxed, fixed_models, allowed_tiers):
        if o.group == g_index and (o.stage not in fastest or o.throughput_per_s > fastest[o.stage].throughput_per_s):
            fastest[o.stage] = o
    at = "" if h == 1 else f", max_utilization {h:g}"
    serves = [f"{g.limit} x {_fmt(h * o.throughput_per_s)} = {_fmt(g.limit * h * o.throughput_per_s)} req/s of stage "
              f"{s} ({o.variant} at batch {o.batch}{at})" for s, o in fastest.items()]
    if serves:
        text += ", serving at most " + ", or ".join(serves)
    return text


def _describe_latency(relaxed: Problem, allowed_tiers: set[str] | None, fixed_models: dict[str, str] | None) -> str:
    """The bound, and the (stage, site) pairs it rules out in ``relaxed``: those whose fastest path
    from the sources through them to the sink already exceeds it, with the links' share of it."""
    assert relaxed.latency_bound_ms is not None
    said = f"latency bound {_fmt(relaxed.latency_bound_ms)} ms" if _one_latency_bound(relaxed) else \
        _latency_bounds(relaxed)
    text = f"{said} (on the {relaxed.latency_percentile} latencies)"
    usable = usable_options(relaxed, fixed_models, allowed_tiers)
    fastest: dict[tuple[str, int], float] = {}
    for index, ms in fastest_path_ms(relaxed, usable).items():
        o = relaxed.options[index]
        key = (o.stage, relaxed.groups[o.group].node)
        fastest[key] = min(fastest.get(key, math.inf), ms)
    starts = [j for rates in relaxed.source_rates.values() for j, rate in rates.items() if rate > 0]
    ruled_out = []
    for (s, i), ms in sorted(fastest.items(), key=lambda kv: (kv[1], kv[0])):  # the nearest misses first
        bound = relaxed.stage_latency_bound(s)
        if bound is None or ms <= bound + 1e-9 or not math.isfinite(ms):
            continue
        links = min((relaxed.path_latency_ms(j, i, 0.0) for j in starts if relaxed.reachable(j, i)), default=0.0)
        ruled_out.append(f"stage {s} at {_site_label(relaxed, i)} (the fastest path through it takes {_fmt(ms)} ms"
                         + (f", {_fmt(links)} ms of it on the links from the sources" if links > 0 else "") + ")")
    if ruled_out:
        text += ": it rules out " + listed(ruled_out, at_most=3, ordered=True)
    return text


def _one_latency_bound(problem: Problem) -> bool:
    """Whether the Problem's latency bound is every sink's (one workflow's), not one per workflow."""
    return all(t.latency_bound_ms is None for t in problem.sinks)


def _latency_bounds(problem: Problem) -> str:
    """Several workflows' latency bounds at their sinks, e.g. ``latency bounds (vision/readings 30 ms)``."""
    bounded = [(t.stage, problem.sink_latency_bound(t)) for t in problem.sinks]
    return "latency bounds (" + listed([f"{s} {_fmt(b)} ms" for s, b in bounded if b is not None], ordered=True) + ")"


def _raw_mbps_below(problem: Problem, node_index: int) -> float:
    """Mbit/s of raw source data produced under one site of the node (its subtree, every source)."""
    total = 0.0
    for source, rates in problem.source_rates.items():
        kb = problem.source_payload_kb[source]
        for j, rate in rates.items():
            chain = problem.ancestors(j)
            if node_index in chain:  # sites of j under one site of node_index: the multiplicities between
                below = chain[:chain.index(node_index)]
                total += rate * kb * MBIT_PER_KB * math.prod(problem.nodes[n].multiplicity for n in below)
    return total


def _rates(problem: Problem) -> str:
    """The sources' traffic in all, e.g. ``cams 50 req/s``."""
    return listed([f"{source} {_fmt(sum(rate * problem.nodes[j].total for j, rate in rates.items()))} req/s"
                   for source, rates in problem.source_rates.items()])
