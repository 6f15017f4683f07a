"""Several workflows planned together on one topology: they share its instances and links, and no
capacity is claimed twice.

How. Each workflow is compiled as it would be alone (:func:`compile_problem`), except that the
classes of identical sites are the topology's classes for *all* of them (two sites stay apart when
any workflow tells them apart: its sources or pins), so that every workflow's Problem has the same
nodes and instance groups. The Problems are then merged into one (:func:`merge`) whose stages,
sources and outputs are named ``workflow/name`` (a ``/`` is in no document's name, so nothing
collides) and whose sinks are every workflow's sinks with their targets: the machinery of several
sinks does the rest (a target row per sink, each sink's accuracy model: the one its own workflow's
zoo gives it, so several zoos may be planned together). One solve; the solution is split back into
one Solution per workflow (:func:`split`), each priced and reported as that workflow's own Plan, the
very Plan its workflow's Problem would report, and deployable alone.

What is shared, and how. Links carry every workflow's traffic within one bandwidth
(``max_link_utilization`` of it in all), and instance groups' limits hold for all workflows
together. An instance serves *one* workflow (:meth:`Problem.count_key`: in shared mode the counts
are kept per workflow and group, ``sum_w n_{g,w} <= L_g``), as the runtime deploys each workflow
apart and counts what running ones use in whole instances (``capacity_left``). Latency bounds are
each workflow's own, at its sinks (:attr:`SinkTarget.latency_bound_ms`). The objective (cost,
carbon, or both) and a carbon budget are for all the workflows together.

Why never dearer than one after another. Planning the workflows in turn, each on what the ones
before leave (``capacity_left``: their instances in use removed, their Mbit/s taken from each link
as ``B - used / u``), gives plans whose union is a plan of the joint Problem: instance counts add up
within the limits, flows within ``u B``, and every latency is no longer (a link's full bandwidth
transmits faster). So the joint optimum costs at most their sum; the plan found is within the
solver's gap of that optimum. :func:`plan_jointly` plans them that way too, and says how much the
joint plan saves.

Running workflows (the controller's case). ``running``: plans kept as they are: the topology is
what they leave (``capacity_left``) before anything is planned. ``previous``: workflows that run
now and are planned again with the others, each of whose changes (a variant, an instance of its own
started or stopped) costs the churn penalty (:class:`Churn`, per workflow: an instance one workflow
frees and another takes is a stop and a start), so the running ones move only where that pays.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import time as time_of_day

from jellybean.optimizer.accuracy import AccuracyModel, SinkAccuracy, choose_model
from jellybean.optimizer.capacity import capacity_left
from jellybean.optimizer.carbon import Objective
from jellybean.optimizer.evaluate import build_plan
from jellybean.optimizer.plan import (
    Cost,
    JointPlan,
    JointSummary,
    JointTotal,
    Plan,
    SequentialComparison,
    TierCost,
)
from jellybean.optimizer.planner import (
    OPTIMAL,
    _check_carbon_data,
    churn_of,
    plan,
    plan_problem,
)
from jellybean.optimizer.problem import (
    Churn,
    Edge,
    Option,
    OutputEdge,
    Problem,
    SinkTarget,
    StageInfo,
    SymmetryClasses,
    compile_problem,
    pinned_sites,
    sources_per_site,
    symmetry_classes,
)
from jellybean.optimizer.solution import Solution
from jellybean.spec.bundle import Bundle
from jellybean.spec.errors import listed
from jellybean.spec.topology import Sharing

#: Between a workflow's name and a stage's, source's or output's in the joint Problem.
SEPARATOR = "/"
#: Of the time limit, the share the joint plan (and its baselines) may take when the workflows are
#: also planned one after another; the sequential plans share the rest.
JOINT_SHARE = 0.7


def joint_name(workflow: str, name: str) -> str:
    """``name`` (a stage, source or output of ``workflow``) in the joint Problem."""
    return f"{workflow}{SEPARATOR}{name}"


@dataclass
class JointProblem:
    """The merged Problem and what splits its solutions: each workflow's own Problem (on the shared
    classes of sites), its accuracy model, and where its options start in the merged list."""

    problem: Problem
    accuracy: AccuracyModel
    parts: dict[str, Problem]
    part_accuracy: dict[str, AccuracyModel]
    offsets: dict[str, int]


def shared_classes(bundles: Sequence[Bundle], *, aggregate: bool = True, carbon_at: time_of_day | None = None
                   ) -> SymmetryClasses:
    """The topology's classes of identical sites for every workflow at once: a site's sources and
    pins are those of all the workflows (named ``workflow/name``), so two sites are alike only when
    every workflow treats them alike."""
    sources_at: dict[str, dict[str, int]] = {}
    pinned: dict[str, tuple[str, ...]] = {}
    for bundle in bundles:
        wf = bundle.workflow.spec
        for site, groups in sources_per_site(wf).items():
            at = sources_at.setdefault(site, {})
            for name, count in groups.items():
                at[joint_name(bundle.name, name)] = count
        for site, pins in pinned_sites(wf).items():
            pinned[site] = pinned.get(site, ()) + tuple(joint_name(bundle.name, p) for p in pins)
    return symmetry_classes(bundles[0].topology.spec, sources_at, pinned, aggregate=aggregate, carbon_at=carbon_at)


def check_plannable_together(bundles: Sequence[Bundle]) -> None:
    """What joint planning needs of the documents, as ValueErrors in words (the spec layer's
    :func:`jellybean.spec.bundle.resolve_all` locates the same mistakes in the files): at least one
    workflow, unique names, one Topology, and one latency percentile among the bounded workflows."""
    if not bundles:
        raise ValueError("no workflow to plan")
    names = [b.name for b in bundles]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"workflows planned together need distinct names; repeated: {listed(repeated)}")
    topologies = {b.topology.metadata.name for b in bundles}
    if len(topologies) > 1:
        raise ValueError(f"workflows planned together share one Topology; these use {listed(sorted(topologies))}")
    bounded = {b.name: b.workflow.spec.slo.latency_percentile for b in bundles
               if b.workflow.spec.slo.latency_ms is not None}
    if len(set(bounded.values())) > 1:
        said = ", ".join(f"{name} on {pct}" for name, pct in bounded.items())
        raise ValueError(f"workflows planned together check their latency bounds on one percentile; {said}: give "
                         "them one `slo.latency_percentile`")


def compile_joint(bundles: Sequence[Bundle], *, sharing: Sharing | None = None, aggregate: bool = True,
                  carbon_at: time_of_day | None = None) -> JointProblem:
    """The joint Problem of ``bundles`` (module docstring): each workflow compiled on the shared
    classes of sites (:func:`shared_classes`), with its own accuracy model, then merged (:func:`merge`)."""
    check_plannable_together(bundles)
    classes = shared_classes(bundles, aggregate=aggregate, carbon_at=carbon_at)
    parts = {b.name: compile_problem(b, sharing=sharing, aggregate=aggregate, carbon_at=carbon_at, classes=classes)
             for b in bundles}
    accuracies = {name: choose_model(part) for name, part in parts.items()}
    problem, accuracy, offsets = merge(parts, accuracies)
    return JointProblem(problem, accuracy, parts, accuracies, offsets)


def merge(parts: Mapping[str, Problem], accuracies: Mapping[str, AccuracyModel]
          ) -> tuple[Problem, AccuracyModel, dict[str, int]]:
    """One Problem for workflows compiled on the same nodes and groups (``parts``, by workflow):
    every stage, source, output and sink named ``workflow/name``, the options concatenated (returned:
    where each workflow's start), each sink with its workflow's target, accuracy model and latency
    bound; the topology's settings are the first part's (all parts share them)."""
    first = next(iter(parts.values()))
    bounds = {name: part.latency_bound_ms for name, part in parts.items()}
    finite = [b for b in bounds.values() if b is not None]
    bounded_percentiles = [part.latency_percentile for part in parts.values() if part.latency_bound_ms is not None]
    stages: dict[str, StageInfo] = {}
    order: list[str] = []
    sinks: list[SinkTarget] = []
    options: list[Option] = []
    by_stage: dict[str, list[int]] = {}
    source_rates: dict[str, dict[int, float]] = {}
    payload: dict[str, float] = {}
    outputs: list[OutputEdge] = []
    member_bound: dict[tuple[str, int], float] = {}
    message_kb: dict[float, float] = {}
    workflow_of: dict[str, str] = {}
    warnings: list[str] = []
    models: list[SinkAccuracy] = []
    offsets: dict[str, int] = {}
    for wf, part in parts.items():
        def named(name: str, wf: str = wf) -> str:
            return joint_name(wf, name)

        offsets[wf] = len(options)
        for s in part.order:
            info = part.stages[s]
            stages[named(s)] = dataclasses.replace(info, name=named(s), inputs=[
                Edge(named(e.src), named(e.dst), e.from_source, e.ratio, dict(e.ratio_by_variant)) for e in info.inputs])
            order.append(named(s))
            workflow_of[named(s)] = wf
            by_stage[named(s)] = [offsets[wf] + i for i in part.options_by_stage[s]]
        for target in part.sinks:
            own = math.inf if part.latency_bound_ms is None else part.latency_bound_ms
            sinks.append(dataclasses.replace(target, stage=named(target.stage), stages=[named(s) for s in target.stages],
                                             latency_bound_ms=own if finite else None))
        options += [dataclasses.replace(o, index=offsets[wf] + o.index, stage=named(o.stage)) for o in part.options]
        source_rates.update({named(src): dict(rates) for src, rates in part.source_rates.items()})
        payload.update({named(src): kb for src, kb in part.source_payload_kb.items()})
        outputs += [dataclasses.replace(o, name=named(o.name), src=named(o.src)) for o in part.outputs]
        member_bound.update({(named(s), node): b for (s, node), b in part.member_rate_bound.items()})
        message_kb.update(part.message_kb)
        warnings += [f"workflow {wf}: {w}" for w in part.warnings]
        models += [SinkAccuracy(named(m.sink), m.kind, m.table, [named(s) for s in m.table_stages], m.description,
                                [named(s) for s in m.stages]) for m in accuracies[wf].sinks]
    problem = dataclasses.replace(
        first, name="+".join(parts), stages=stages, order=order, sinks=sinks, options=options,
        options_by_stage=by_stage, source_rates=source_rates, source_payload_kb=payload, warnings=warnings,
        outputs=outputs, member_rate_bound=member_bound, message_kb=message_kb, churn=None,
        latency_bound_ms=max(finite) if finite else None,
        latency_percentile=bounded_percentiles[0] if bounded_percentiles else first.latency_percentile,
        # Each sink's accuracy model is its own workflow's (AccuracyModel above): no zoo's table is
        # matched against another workflow's stages.
        accuracy_tables=[], workflow_of=workflow_of)
    return problem, AccuracyModel(models), offsets


def edge_names(wf: str, part: Problem) -> dict[str, str]:
    """The joint Problem's key of each edge of workflow ``wf`` (its stages' inputs and its outputs'
    flows) -> the key in the workflow's own Problem."""
    out = {}
    for s in part.order:
        for e in part.stages[s].inputs:
            out[Edge(joint_name(wf, e.src), joint_name(wf, e.dst), e.from_source, e.ratio, {}).key] = e.key
    for o in part.outputs:
        out[dataclasses.replace(o, name=joint_name(wf, o.name), src=joint_name(wf, o.src)).key] = o.key
    return out


def split(joint: JointProblem, solution: Solution) -> dict[str, Solution]:
    """A joint solution as one Solution per workflow, in the workflow's own Problem's terms: its
    variants, its options' rates, its instance counts, its flows. They add up to the joint solution
    (every cost and load is a sum over counts, rates and flows)."""
    out = {}
    for wf, part in joint.parts.items():
        offset, prefix = joint.offsets[wf], joint_name(wf, "")
        rates = {i - offset: r for i, r in solution.rates.items() if offset <= i < offset + len(part.options)}
        counts: dict[tuple[int, str | None], float] = {}
        for (g, key), count in solution.counts.items():
            if key == wf:  # shared mode: the workflow's instances of the group
                counts[(g, None)] = count
            elif key is not None and key.startswith(prefix):  # exclusive mode: one of its stages'
                counts[(g, key[len(prefix):])] = count
        names = edge_names(wf, part)

        def flows(on: dict[tuple[str, int], float] | None, names: dict[str, str] = names
                  ) -> dict[tuple[str, int], float] | None:
            if on is None:
                return None
            return {(names[k], node): v for (k, node), v in on.items() if k in names}

        out[wf] = Solution(models={s: solution.models[joint_name(wf, s)] for s in part.order}, rates=rates,
                           counts=counts, flows_up=flows(solution.flows_up), flows_down=flows(solution.flows_down),
                           notes=list(solution.notes))
    return out


def joint_churn(joint: JointProblem, previous: Mapping[str, Plan], cost_per_change_per_hour: float | None) -> Churn | None:
    """The churn penalty of re-planning the workflows of ``previous`` (name -> the plan it runs) with
    the others: each one's variants and its own instances per group (:attr:`Churn.counts_by_workflow`);
    the penalty per change defaults to 2% of what the running plans cost per hour."""
    running = {wf: p for wf, p in previous.items() if wf in joint.parts and p.feasible}
    if not running:
        return None
    if cost_per_change_per_hour is None:
        cost_per_change_per_hour = 0.02 * sum(p.cost.total_per_hour for p in running.values() if p.cost)
    variants: dict[str, str] = {}
    counts: dict[tuple[int, str], float] = {}
    for wf, before in running.items():
        churn = churn_of(joint.parts[wf], before, cost_per_change_per_hour)
        variants.update({joint_name(wf, s): v for s, v in churn.variants.items() if s in joint.parts[wf].stages})
        counts.update({(g, wf): c for g, c in churn.counts.items()})
    return Churn(variants, {}, cost_per_change_per_hour, counts_by_workflow=counts)


def plan_jointly(
    bundles: Sequence[Bundle],
    *,
    strategy: str = OPTIMAL,
    sharing: Sharing | None = None,
    baselines: bool = True,
    sequential: bool = True,
    time_limit_s: float = 60.0,
    solver: str = "highs",
    gap_rel: float = 1e-4,
    objective: Objective | None = None,
    carbon_at: time_of_day | None = None,
    started: float | None = None,
    running: Sequence[Plan] = (),
    previous: Mapping[str, Plan] | None = None,
    churn_cost_per_change_per_hour: float | None = None,
) -> JointPlan:
    """Plan ``bundles`` (workflows on one Topology, each with its zoo) together: one solve of the
    joint Problem (module docstring) with ``strategy``, every other strategy beside it (with
    ``baselines``), and, with ``sequential``, the same workflows planned one after another in the
    given order, each on what the ones before leave, for the saving. Pure: documents and plans in,
    a :class:`JointPlan` out.

    ``time_limit_s`` is wall clock for the whole call (from ``started``, a ``time.perf_counter()``
    reading, when given): the joint plan gets :data:`JOINT_SHARE` of it when the sequential plans
    come too. ``objective``, ``carbon_at``, ``solver``, ``gap_rel``: as :func:`plan`'s (a carbon
    budget is for all the workflows together). ``running``: plans of other workflows kept as they
    are (the topology is what they leave, ``capacity_left``). ``previous``: workflow name -> the plan
    it runs now, for those of ``bundles`` being planned again: their changes pay
    ``churn_cost_per_change_per_hour`` (:func:`joint_churn`)."""
    now = time.perf_counter()
    deadline = (now if started is None else min(started, now)) + time_limit_s
    check_plannable_together(bundles)
    topology = bundles[0].topology
    if running:
        topology = capacity_left(topology, running)
        bundles = [dataclasses.replace(b, topology=topology) for b in bundles]
    objective = objective or Objective()
    joint = compile_joint(bundles, sharing=sharing, carbon_at=carbon_at)
    problem = joint.problem
    problem.objective = objective
    _check_carbon_data(problem)
    if previous:
        problem.churn = joint_churn(joint, previous, churn_cost_per_change_per_hour)
    together = sequential and len(bundles) > 1
    left = max(1e-3, deadline - time.perf_counter())
    combined = plan_problem(problem, joint.accuracy, strategy=strategy, baselines=baselines,
                            deadline=time.perf_counter() + left * (JOINT_SHARE if together else 1.0),
                            time_limit_s=time_limit_s, solver=solver, gap_rel=gap_rel)
    plans = _workflow_plans(joint, combined, strategy)
    comparison = None
    if together:
        comparison = plan_one_after_another(bundles, strategy=strategy, sharing=sharing, deadline=deadline,
                                            time_limit_s=time_limit_s, solver=solver, gap_rel=gap_rel,
                                            objective=objective, carbon_at=carbon_at)
        _saving(comparison, combined, objective)
    result = JointPlan(
        feasible=combined.feasible, workflows=plans,
        total=JointTotal(cost=combined.cost, carbon=combined.carbon,
                         cost_by_workflow={p.workflow: p.cost.total_per_hour for p in plans if p.cost is not None},
                         instances=combined.instances, links=combined.links),
        joint=JointSummary(workflows=[b.name for b in bundles], topology=topology.metadata.name, strategy=strategy,
                           sharing=problem.sharing, objective=objective.kind, solver=combined.solver,
                           baselines=combined.baselines, sequential=comparison,
                           running=sorted({p.workflow for p in running})),
        explanation=combined.explanation, warnings=combined.warnings)
    result.keep_combined(combined)
    return result


def _workflow_plans(joint: JointProblem, combined: Plan, strategy: str) -> list[Plan]:
    """Each workflow's Plan: its part of the joint solution, priced on its own Problem (the same
    code as a single workflow's plan), with the joint solve's statistics and a note naming the others."""
    names = list(joint.parts)
    solution = combined.solution
    pieces = split(joint, solution) if solution is not None else {}
    plans = []
    for wf, part in joint.parts.items():
        stats = combined.solver.model_copy(deep=True)
        others = [n for n in names if n != wf]
        if others:
            stats.notes.append(f"planned together with {listed(others)}: the solver's figures are the joint plan's")
        plans.append(build_plan(part, pieces.get(wf), strategy=strategy, stats=stats, accuracy=joint.part_accuracy[wf],
                                explanation=combined.explanation))
    return plans


def plan_one_after_another(bundles: Sequence[Bundle], *, strategy: str, sharing: Sharing | None, deadline: float,
                           time_limit_s: float, solver: str, gap_rel: float, objective: Objective,
                           carbon_at: time_of_day | None) -> SequentialComparison:
    """The workflows planned in the given order, each alone (:func:`plan`, no baselines) on what the
    ones before leave (``capacity_left``) and, with a carbon budget, within what they leave of it;
    each gets an equal share of the time left before ``deadline``."""
    started = time.perf_counter()
    order = [b.name for b in bundles]
    done: list[Plan] = []
    by_workflow: dict[str, float | None] = {name: None for name in order}

    def stopped(reason: str) -> SequentialComparison:
        return SequentialComparison(order=order, feasible=False, by_workflow=by_workflow, reason=reason,
                                    seconds=time.perf_counter() - started)

    for k, bundle in enumerate(bundles):
        left = deadline - time.perf_counter()
        if left <= 0.05:
            return stopped(f"not finished: the time limit of {time_limit_s:g} s was spent before {bundle.name}")
        mine = objective
        if objective.carbon_budget_g_per_hour is not None:
            emitted = sum(p.carbon.total_g_per_hour for p in done if p.carbon is not None)
            mine = dataclasses.replace(objective, carbon_budget_g_per_hour=max(
                0.0, objective.carbon_budget_g_per_hour - emitted))
        alone = plan(dataclasses.replace(bundle, topology=capacity_left(bundle.topology, done)), strategy=strategy,
                     sharing=sharing, baselines=False, time_limit_s=left / (len(bundles) - k), solver=solver,
                     gap_rel=gap_rel, objective=mine, carbon_at=carbon_at)
        if not alone.feasible:
            after = f" on what {listed([p.workflow for p in done], ordered=True)} leave{'s' if len(done) == 1 else ''}" \
                if done else ""
            why = listed(alone.explanation, at_most=3, ordered=True, sep="; ") if alone.explanation else "no plan"
            return stopped(f"{bundle.name} has no plan{after}: {why}")
        done.append(alone)
        by_workflow[bundle.name] = alone.cost.total_per_hour if alone.cost else None
    cost = _sum_costs([p.cost for p in done if p.cost is not None])  # every feasible plan is priced
    carbons = [p.carbon.total_g_per_hour for p in done if p.carbon is not None]
    carbon = sum(carbons) if len(carbons) == len(done) else None
    return SequentialComparison(order=order, feasible=True, cost=cost, carbon_g_per_hour=carbon,
                                by_workflow=by_workflow, objective_value=sum(objective_value(p) for p in done),
                                seconds=time.perf_counter() - started)


def objective_value(result: Plan) -> float:
    """A feasible plan's value in its objective's unit: $/h, gCO2/h, or $/h with its carbon priced."""
    assert result.cost is not None
    if result.objective == "carbon":
        return result.carbon.total_g_per_hour if result.carbon is not None else 0.0
    if result.objective == "cost+carbon" and result.carbon is not None and result.carbon.cost_per_hour is not None:
        return result.cost.total_per_hour + result.carbon.cost_per_hour
    return result.cost.total_per_hour


def _saving(comparison: SequentialComparison, combined: Plan, objective: Objective) -> None:
    if not (comparison.feasible and combined.feasible and comparison.objective_value is not None):
        return
    joint_value = objective_value(combined)
    comparison.saving = comparison.objective_value - joint_value
    if abs(comparison.saving) <= 1e-9 * max(1.0, comparison.objective_value):  # the same plan, summed in another order
        comparison.saving = 0.0
    if comparison.objective_value > 0:
        comparison.saving_pct = 100.0 * comparison.saving / comparison.objective_value


def _sum_costs(costs: list[Cost]) -> Cost:
    """Costs added up, tier by tier."""
    by_tier: dict[str, TierCost] = {}
    for cost in costs:
        for tier, c in cost.by_tier.items():
            mine = by_tier.setdefault(tier, TierCost())
            mine.compute_per_hour += c.compute_per_hour
            mine.network_per_hour += c.network_per_hour
    compute = sum(c.compute_per_hour for c in costs)
    network = sum(c.network_per_hour for c in costs)
    tiers = ["device", "hub", "edge", "cloud"]
    return Cost(compute_per_hour=compute, network_per_hour=network, total_per_hour=compute + network,
                by_tier={t: by_tier[t] for t in tiers if t in by_tier})


__all__ = ["SEPARATOR", "JointProblem", "compile_joint", "joint_name", "merge", "plan_jointly", "plan_one_after_another",
           "shared_classes", "split"]
