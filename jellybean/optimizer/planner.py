"""``plan(bundle) -> Plan``: run a strategy, and every baseline beside it, through one code path.

Strategies come from a registry (:data:`REGISTRY`, filled by the :func:`register_strategy`
decorator): each is a function ``(problem, accuracy, options) -> Plan`` registered under its public
name, and :func:`run_strategy` looks it up. The registration order is the order of :data:`STRATEGIES`: the
order ``plan`` runs the baselines in and reports them, and the CLI's ``--strategy`` choices.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import time as time_of_day
from typing import Unpack

from jellybean.optimizer.accuracy import AccuracyModel, choose_model, enumerate_combinations
from jellybean.optimizer.baselines import NoPlan, edge_first, select_by_cost_proxy
from jellybean.optimizer.carbon import Objective
from jellybean.optimizer.evaluate import build_plan, verify
from jellybean.optimizer.explain import explain
from jellybean.optimizer.milp import MilpResult, PlacementOptions, solve_milp, solve_placement
from jellybean.optimizer.plan import BaselineResult, Plan, SolverStats
from jellybean.optimizer.problem import Churn, Problem, compile_problem
from jellybean.optimizer.solution import Solution
from jellybean.optimizer.solver import solver_name
from jellybean.spec.bundle import Bundle
from jellybean.spec.errors import did_you_mean, listed
from jellybean.spec.topology import Sharing

OPTIMAL = "optimal"
#: Of ``time_limit_s``, the share the chosen strategy may take when baselines run beside it; the
#: baselines share what it leaves, so that the whole run keeps to the limit.
MAIN_SHARE = 0.75


class Placements:
    """Placement MILPs solved during one ``plan`` call, by (fixed variants, allowed tiers): the
    two-stage baseline often fixes exactly the variants the optimal plan chose, and solving the same
    problem twice would double the run. Each caller gets its own copy (callers amend the stats).
    Likewise JellyBean's heuristic plan (:meth:`heuristic`): the optimal strategy's incumbent and the
    ``jellybean`` baseline."""

    def __init__(self) -> None:
        self._solved: dict[tuple[object, ...], MilpResult] = {}
        self._heuristic: tuple[Solution | None, str, float] | None = None
        #: The slowest model build seen in this call (seconds): what starting another solve costs
        #: before the solver's own time limit applies.
        self.slowest_build_s = 0.0

    @property
    def heuristic_known(self) -> bool:
        """Whether :meth:`heuristic` has run in this ``plan`` call (then it costs nothing)."""
        return self._heuristic is not None

    def heuristic(self, problem: Problem, accuracy: AccuracyModel) -> tuple[Solution | None, str, float]:
        """JellyBean's heuristic plan of ``problem``, checked: (the solution or None, why none, the
        seconds it took), computed once per ``plan`` call."""
        if self._heuristic is None:
            from jellybean.optimizer.jellybean_heuristic import jellybean_heuristic

            started = time.perf_counter()
            try:
                solution, reason = jellybean_heuristic(problem, accuracy), ""
            except NoPlan as exc:
                solution, reason = None, str(exc)
            if solution is not None:
                violations = verify(problem, solution, accuracy)
                if violations:
                    solution, reason = None, "heuristic plan violates: " + _first(violations)
            self._heuristic = (solution, reason, time.perf_counter() - started)
        return self._heuristic

    def solve(self, problem: Problem, accuracy: AccuracyModel, *, time_limit_s: float, gap_rel: float,
              **options: Unpack[PlacementOptions]) -> MilpResult:
        fixed, tiers = options.get("fixed_models"), options.get("allowed_tiers")
        key = (tuple(sorted(fixed.items())) if fixed else None, tuple(sorted(tiers)) if tiers else None,
               options.get("solver"), gap_rel, problem.objective)
        known = self._solved.get(key)
        if known is None or (known.stats.status not in ("optimal", "infeasible")):
            known = solve_placement(problem, accuracy, time_limit_s=time_limit_s, gap_rel=gap_rel, **options)
            self._solved[key] = known
        return copy.deepcopy(known)


def plan(
    bundle: Bundle,
    *,
    strategy: str = OPTIMAL,
    sharing: Sharing | None = None,
    baselines: bool = True,
    time_limit_s: float = 60.0,
    solver: str = "highs",
    gap_rel: float = 1e-4,
    previous: Plan | None = None,
    churn_cost_per_change_per_hour: float | None = None,
    objective: Objective | None = None,
    carbon_at: time_of_day | None = None,
    started: float | None = None,
) -> Plan:
    """Plan ``bundle`` with ``strategy``; with ``baselines``, also run every other strategy and
    report its cost and the saving of the chosen plan against it.

    ``previous``: the plan running now, when re-planning. Each change of a stage's variant and each
    instance started or stopped then costs ``churn_cost_per_change_per_hour`` in the objective
    (default: 2% of the running plan's cost per hour), so plans that move little win near-ties and a
    move must pay for itself (:class:`jellybean.optimizer.problem.Churn`).

    ``time_limit_s`` is wall-clock for the whole call: the chosen strategy gets ``MAIN_SHARE`` of it
    when baselines run, each baseline an equal share of what is left, and a baseline reached after
    the limit is reported as not run. A plan found by the limit says the gap it reached. ``started``:
    when the run began (a ``time.perf_counter()`` reading, e.g. before the documents were loaded), if
    before this call; the limit counts from there.

    ``objective``: what is minimised and the carbon budget kept to (default: cost, no budget;
    :mod:`jellybean.optimizer.carbon`); one that uses carbon needs ``power_w`` on every instance group
    and ``carbon_intensity_g_per_kwh`` on every site with instances (a ValueError names what lacks
    them). ``carbon_at``: the UTC time of day at which sites' intensity series are read (default:
    each series' daily mean)."""
    if strategy not in REGISTRY:
        raise _unknown(strategy)
    now = time.perf_counter()
    deadline = (now if started is None else min(started, now)) + time_limit_s  # wall clock, for the whole run
    problem = compile_problem(bundle, sharing=sharing, carbon_at=carbon_at)
    problem.objective = objective or Objective()
    _check_carbon_data(problem)
    if previous is not None and previous.feasible:
        problem.churn = churn_of(problem, previous, churn_cost_per_change_per_hour)
    accuracy = choose_model(problem)
    return plan_problem(problem, accuracy, strategy=strategy, baselines=baselines, deadline=deadline,
                        time_limit_s=time_limit_s, solver=solver, gap_rel=gap_rel)


def plan_problem(problem: Problem, accuracy: AccuracyModel, *, strategy: str, baselines: bool, deadline: float,
                 time_limit_s: float, solver: str, gap_rel: float) -> Plan:
    """:func:`plan` once the Problem is compiled: ``strategy``, then (with ``baselines``) every other
    strategy, by ``deadline`` (a ``time.perf_counter()`` reading; ``time_limit_s`` is what the
    messages call the limit). Several workflows planned together come here too
    (:func:`jellybean.optimizer.joint.plan_jointly`)."""
    if strategy not in REGISTRY:
        raise _unknown(strategy)
    placements = Placements()
    left_s = max(1e-3, deadline - time.perf_counter())
    main = run_strategy(problem, accuracy, strategy, time_limit_s=left_s * (MAIN_SHARE if baselines else 1.0),
                        solver=solver, gap_rel=gap_rel, placements=placements)
    if baselines:
        results = []
        others = [other for other in REGISTRY if other != strategy]
        for k, other in enumerate(others):
            begun = time.perf_counter()
            left = deadline - begun
            if left <= 0.05 and not (other == "jellybean" and placements.heuristic_known):  # that one is free
                results.append(BaselineResult(strategy=other, feasible=False, cost=None, accuracy=None, seconds=0.0,
                                              reason=f"not run: the time limit of {time_limit_s:g} s was spent"))
                continue
            # Explaining costs an extra (elastic) solve: worth it for site-sized problems only.
            other_plan = run_strategy(problem, accuracy, other, time_limit_s=max(left, 1e-3) / (len(others) - k),
                                      solver=solver, gap_rel=gap_rel, explain_infeasible=len(problem.nodes) <= 50,
                                      placements=placements)
            results.append(_baseline(main, other_plan, time.perf_counter() - begun))
        main.baselines = results
    if problem.objective.uses_carbon:
        main.solver.notes.append(f"objective: {problem.objective.describe()}; sites' intensity: {problem.carbon_at}")
    return main


def _check_carbon_data(problem: Problem) -> None:
    """A carbon objective or budget needs every group's figures (a ValueError names the missing ones);
    otherwise, figures given for some groups only are a warning (the plan's carbon counts the rest as 0)."""
    missing = problem.missing_carbon_data()
    if not missing:
        return
    if problem.objective.uses_carbon:
        raise ValueError(f"{problem.objective.describe()} needs the power of every instance group and the carbon "
                         f"intensity of every site with instances; missing for {listed(missing, at_most=5)}: give "
                         "`power_w: {idle: W, busy: W}` and the site's `carbon_intensity_g_per_kwh` in the Topology "
                         "(0 where an instance really emits nothing)")
    if len(missing) < len(problem.groups):
        problem.warnings.append(f"carbon counts only instances with `power_w` at sites with "
                                f"`carbon_intensity_g_per_kwh`; not counted: {listed(missing, at_most=5)}")


def churn_of(problem: Problem, previous: Plan, cost_per_change_per_hour: float | None) -> Churn:
    """The running plan in the problem's terms: variants per stage, instances per group and member."""
    if cost_per_change_per_hour is None:
        cost_per_change_per_hour = 0.02 * (previous.cost.total_per_hour if previous.cost else 0.0)
    where = {}
    for g in problem.groups:
        for site in problem.nodes[g.node].members:
            where[(site, g.name)] = g.index
    counts: dict[int, float] = {}
    for row in previous.instances:
        for site in row.sites or [row.site]:
            g_index = where.get((site, row.instance))
            if g_index is not None:
                counts[g_index] = float(row.count)
    return Churn(dict(previous.models), counts, cost_per_change_per_hour)


def _baseline(main: Plan, other: Plan, seconds: float) -> BaselineResult:
    saving = None
    if main.cost and other.cost and other.cost.total_per_hour > 0:
        saving = 100.0 * (other.cost.total_per_hour - main.cost.total_per_hour) / other.cost.total_per_hour
    return BaselineResult(
        strategy=other.strategy, feasible=other.feasible, cost=other.cost, accuracy=other.accuracy,
        accuracy_by_sink={s.stage: s.accuracy for s in other.sinks}, models=other.models, saving_pct=saving,
        reason="; ".join(other.explanation), seconds=seconds,
        carbon_g_per_hour=other.carbon.total_g_per_hour if other.carbon else None,
    )


@dataclass(frozen=True)
class StrategyOptions:
    """How one strategy runs: its share of the time limit (wall clock, seconds), the MILP solver and
    relative gap, whether an infeasible outcome is explained (an extra elastic solve), and the
    placement MILPs already solved in this ``plan`` call (:class:`Placements`)."""

    time_limit_s: float
    solver: str
    gap_rel: float
    explain_infeasible: bool
    placements: Placements


#: A strategy: the Problem and its accuracy model in, a Plan out (feasible or saying why not).
Strategy = Callable[[Problem, AccuracyModel, StrategyOptions], Plan]

#: Strategy name -> the function that plans with it, in registration order (:func:`register_strategy`).
REGISTRY: dict[str, Strategy] = {}
#: The registry's names, in registration order: kept by :func:`register_strategy`; read it, do not edit it.
STRATEGIES: list[str] = []


def register_strategy(name: str) -> Callable[[Strategy], Strategy]:
    """Register the decorated function as the strategy ``name`` (a public name: the CLI's
    ``--strategy`` and the ``strategy`` field of plans and baselines). A name is registered once."""

    def register(run: Strategy) -> Strategy:
        if name in REGISTRY:
            raise ValueError(f"strategy {name!r} is registered already (by {REGISTRY[name].__qualname__})")
        REGISTRY[name] = run
        STRATEGIES.append(name)
        return run

    return register


def _unknown(name: str) -> ValueError:
    return ValueError(f"unknown strategy {name!r}{did_you_mean(name, REGISTRY)}; choose one of {', '.join(REGISTRY)}")


def run_strategy(
    problem: Problem,
    accuracy: AccuracyModel,
    strategy: str,
    *,
    time_limit_s: float = 60.0,
    solver: str = "highs",
    gap_rel: float = 1e-6,
    explain_infeasible: bool = True,
    placements: Placements | None = None,
) -> Plan:
    """Plan ``problem`` with the registered strategy named ``strategy`` (objective carbon: in two
    steps, :func:`_least_carbon_then_cost`)."""
    run = REGISTRY.get(strategy)
    if run is None:
        raise _unknown(strategy)
    options = StrategyOptions(time_limit_s, solver, gap_rel, explain_infeasible, placements or Placements())
    if problem.objective.kind == "carbon":
        return _least_carbon_then_cost(run, problem, accuracy, options)
    return run(problem, accuracy, options)


#: Objective carbon's second step keeps the carbon within this share (and these gCO2/h) of the first
#: step's: the solver's tolerances, not a trade of carbon for cost.
CARBON_TIE_REL = 1e-6
CARBON_TIE_ABS = 1e-6


def _least_carbon_then_cost(run: Strategy, problem: Problem, accuracy: AccuracyModel, options: StrategyOptions
                            ) -> Plan:
    """Objective carbon, lexicographically: the least carbon ``C*`` (half the time limit), then the
    cheapest plan emitting at most ``C*`` (what is left): carbon ties are common (traffic on paid
    links emits nothing here; equally efficient instances differ in price), and a carbon-only
    optimum would pick among them at random. A strategy that does not read the objective (a
    heuristic) is run once. If the second step finds no plan in time, the first step's plan stands."""
    started = time.perf_counter()
    first = run(problem, accuracy, dataclasses.replace(options, time_limit_s=options.time_limit_s / 2))
    if not first.feasible or first.carbon is None or first.solver.status == "heuristic":
        return first
    least = first.carbon.total_g_per_hour
    budget = least * (1 + CARBON_TIE_REL) + CARBON_TIE_ABS
    if problem.objective.carbon_budget_g_per_hour is not None:
        budget = min(budget, max(least, problem.objective.carbon_budget_g_per_hour))
    cheapest = dataclasses.replace(problem, objective=Objective("cost", carbon_budget_g_per_hour=budget))
    left = max(0.1, options.time_limit_s - (time.perf_counter() - started))
    second = run(cheapest, accuracy, dataclasses.replace(options, time_limit_s=left, explain_infeasible=False))
    gap = "unknown" if first.solver.gap is None else f"{100 * first.solver.gap:.3f}%"
    step = f"least carbon {least:.6g} gCO2/h ({first.solver.status}, gap {gap})"
    if not second.feasible or second.carbon is None:
        first.solver.notes.append(f"{step}; no cheaper plan within it was found in the time left")
        return first
    # Reported as the carbon objective's plan: its objective and budget are the user's, not the step's.
    second.objective = "carbon"
    second.carbon.budget_g_per_hour = problem.objective.carbon_budget_g_per_hour
    second.solver.notes.insert(0, f"{step}; then the cheapest plan within {budget:.6g} gCO2/h (the gap below is "
                                  "this step's, in $/h)")
    second.solver.seconds = time.perf_counter() - started
    return second


@register_strategy(OPTIMAL)
def _run_optimal(problem: Problem, accuracy: AccuracyModel, options: StrategyOptions) -> Plan:
    """The proven optimum (to the gap), by :func:`_optimal`."""
    return _optimal(problem, accuracy, time_limit_s=options.time_limit_s, solver=options.solver,
                    gap_rel=options.gap_rel, explain_infeasible=options.explain_infeasible,
                    placements=options.placements)


@register_strategy("cloud-only")
def _run_cloud_only(problem: Problem, accuracy: AccuracyModel, options: StrategyOptions) -> Plan:
    """Every stage in the cloud tier, variants and placement there chosen optimally (the MILP
    restricted to cloud sites): what a team without edge capacity would do."""
    started = time.perf_counter()
    result = options.placements.solve(problem, accuracy, allowed_tiers={"cloud"}, time_limit_s=options.time_limit_s,
                                      solver=options.solver, gap_rel=options.gap_rel)
    reasons = []
    if result.solution is None:
        reasons = _why_none(problem, accuracy, result.stats, explain_infeasible=options.explain_infeasible,
                            time_limit_s=options.time_limit_s, started=started, solver=options.solver,
                            allowed_tiers={"cloud"})
    return build_plan(problem, result.solution, strategy="cloud-only", stats=result.stats, accuracy=accuracy,
                      explanation=reasons)


@register_strategy("edge-first")
def _run_edge_first(problem: Problem, accuracy: AccuracyModel, options: StrategyOptions) -> Plan:
    """The two-stage variants placed greedily as close to the data as capacity allows
    (:func:`jellybean.optimizer.baselines.edge_first`), checked before it is priced."""
    started = time.perf_counter()
    try:
        models = select_by_cost_proxy(problem, accuracy)
        solution = edge_first(problem, models)
    except NoPlan as exc:
        return _failed(problem, accuracy, "edge-first", str(exc), started)
    stats = SolverStats(name="greedy", status="heuristic", gap=None, seconds=time.perf_counter() - started,
                        notes=list(solution.notes))  # e.g. the routing LP's solver fallback
    violations = verify(problem, solution, accuracy)
    if violations:
        return _failed(problem, accuracy, "edge-first", "greedy placement violates: " + _first(violations),
                       started)
    return build_plan(problem, solution, strategy="edge-first", stats=stats, accuracy=accuracy)


@register_strategy("two-stage")
def _run_two_stage(problem: Problem, accuracy: AccuracyModel, options: StrategyOptions) -> Plan:
    """Variants first, by cost proxy alone (:func:`jellybean.optimizer.baselines.select_by_cost_proxy`),
    then placed optimally: model selection and placement decoupled, as in prior serving systems."""
    started = time.perf_counter()
    try:
        models = select_by_cost_proxy(problem, accuracy)
    except NoPlan as exc:
        return _failed(problem, accuracy, "two-stage", str(exc), started)
    result = options.placements.solve(problem, accuracy, fixed_models=models, time_limit_s=options.time_limit_s,
                                      solver=options.solver, gap_rel=options.gap_rel)
    reasons = []
    if result.solution is None:
        reasons = [f"the cost-proxy models ({', '.join(f'{s}={v}' for s, v in models.items())}) cannot be placed"]
        reasons += _why_none(problem, accuracy, result.stats, explain_infeasible=options.explain_infeasible,
                             time_limit_s=options.time_limit_s, started=started, solver=options.solver,
                             fixed_models=models)
    return build_plan(problem, result.solution, strategy="two-stage", stats=result.stats, accuracy=accuracy,
                      explanation=reasons)


@register_strategy("jellybean")
def _run_jellybean(problem: Problem, accuracy: AccuracyModel, options: StrategyOptions) -> Plan:
    """JellyBean's published heuristic (:mod:`jellybean.optimizer.jellybean_heuristic`), checked
    before it is priced (computed once per ``plan`` call, :meth:`Placements.heuristic`)."""
    solution, reason, seconds = options.placements.heuristic(problem, accuracy)
    if solution is None:
        stats = SolverStats(name="jellybean", status="infeasible", gap=None, seconds=seconds)
        return build_plan(problem, None, strategy="jellybean", stats=stats, accuracy=accuracy, explanation=[reason])
    stats = SolverStats(name="jellybean-heuristic", status="heuristic", gap=None, seconds=seconds)
    return build_plan(problem, solution, strategy="jellybean", stats=stats, accuracy=accuracy)


#: The least time (s) an explanation of infeasibility gets, even when the strategy's proof took all
#: of its share: a proof found at the time limit is still explained, a little past it.
EXPLAIN_FLOOR_S = 0.5


def _why_none(problem: Problem, accuracy: AccuracyModel, stats: SolverStats, *, explain_infeasible: bool,
              time_limit_s: float, started: float, solver: str, allowed_tiers: set[str] | None = None,
              fixed_models: dict[str, str] | None = None) -> list[str]:
    """Why no plan came back: a proof of infeasibility is explained (:func:`explain`, in what is left
    of the strategy's ``time_limit_s`` since ``started``, at least :data:`EXPLAIN_FLOOR_S`); a time
    limit is said as such. ``allowed_tiers``, ``fixed_models``: the strategy's own restrictions."""
    if stats.status != "infeasible":
        return [f"no plan found within the time limit of {time_limit_s:g} s (solver status {stats.status}); "
                "raise --time-limit"]
    if not explain_infeasible:
        return ["infeasible"]
    left = time_limit_s - (time.perf_counter() - started)
    return explain(problem, accuracy, time_limit_s=max(EXPLAIN_FLOOR_S, left), solver=solver,
                   allowed_tiers=allowed_tiers, fixed_models=fixed_models)


def _first(violations: list[str]) -> str:
    """The first three violations a check found, and how many more (never cut silently)."""
    return listed(violations, at_most=3, ordered=True, sep="; ")


def _failed(problem: Problem, accuracy: AccuracyModel, strategy: str, reason: str, started: float) -> Plan:
    stats = SolverStats(name=strategy, status="infeasible", gap=None, seconds=time.perf_counter() - started)
    return build_plan(problem, None, strategy=strategy, stats=stats, accuracy=accuracy, explanation=[reason])


#: Up to this many admissible variant combinations, the optimal plan is found by decomposition.
COMBINATION_LIMIT = 64


def admissible_combinations(problem: Problem, accuracy: AccuracyModel, limit: int = COMBINATION_LIMIT
                            ) -> list[dict[str, str]] | None:
    """Variant assignments that meet every sink's accuracy target and every stage's minimum, or None
    when there are too many to enumerate."""
    combos = enumerate_combinations(problem, limit=50_000)
    if combos is None:
        return None
    good = [c for c in combos if accuracy.admissible(problem, c)]
    return good if len(good) <= limit else None


def _optimal(problem: Problem, accuracy: AccuracyModel, *, time_limit_s: float, solver: str, gap_rel: float,
             explain_infeasible: bool, placements: Placements) -> Plan:
    """The MILP's plan (:func:`_optimal_by_combinations`, or :func:`_optimal_joint` when the variant
    combinations are too many), never costlier than JellyBean's heuristic plan (:func:`_at_least_as_good`)."""
    started = time.perf_counter()
    combos = admissible_combinations(problem, accuracy)
    if combos:
        found = _optimal_by_combinations(problem, accuracy, combos, time_limit_s=time_limit_s, solver=solver,
                                         gap_rel=gap_rel, explain_infeasible=explain_infeasible,
                                         placements=placements)
    else:
        found = _optimal_joint(problem, accuracy, time_limit_s=time_limit_s, solver=solver, gap_rel=gap_rel,
                               explain_infeasible=explain_infeasible)
    return _at_least_as_good(problem, accuracy, found, placements, gap_rel, started, started + time_limit_s)


#: Seconds the LP relaxation may take to bound the heuristic's plan when the time limit left no bound.
HEURISTIC_BOUND_S = 0.5


def _at_least_as_good(problem: Problem, accuracy: AccuracyModel, found: Plan, placements: Placements,
                      gap_rel: float, started: float, deadline: float) -> Plan:
    """``found``, or JellyBean's heuristic plan (checked) where that is cheaper: a MILP stopped by the
    time limit may hold a worse plan, or none, and one proven within the gap may still cost up to the
    gap more. The bound the MILP proved still bounds the optimum, so the heuristic plan's gap is
    measured against it. Only for the cost objective (the heuristic knows neither carbon nor a carbon
    budget), not when re-planning (nor churn: the MILP's plan is the cheapest with churn priced in),
    nor where the MILP proved that no plan exists."""
    if problem.objective.uses_carbon or problem.churn is not None or found.solver.status == "infeasible":
        return found
    solution, _reason, _seconds = placements.heuristic(problem, accuracy)
    if solution is None:
        return found
    stats = found.solver.model_copy(deep=True)
    candidate = build_plan(problem, solution, strategy=OPTIMAL, stats=stats, accuracy=accuracy)
    assert candidate.cost is not None, "a plan built from a solution is priced"
    cost = candidate.cost.total_per_hour
    if found.feasible and found.cost is not None and found.cost.total_per_hour <= cost:
        return found
    # Stopped before any bound: the LP relaxation's, briefly (HEURISTIC_BOUND_S of solving), unless
    # building its model would overrun the limit by more than that (a build seen in this run was slow).
    build_fits = time.perf_counter() + 2.0 * placements.slowest_build_s <= deadline + HEURISTIC_BOUND_S
    if stats.bound is None and build_fits:
        relaxed = solve_milp(problem, accuracy, relax_symmetry=True, latency=False, lp_only=True,
                             time_limit_s=HEURISTIC_BOUND_S)
        stats.bound = relaxed.stats.bound if relaxed.stats.status == "optimal" else None
    stats.objective = cost
    stats.gap = max(0.0, (cost - stats.bound) / cost) if stats.bound is not None and cost > 0 else None
    stats.status = "optimal" if stats.gap is not None and stats.gap <= max(gap_rel, 1e-9) else "feasible"
    stats.notes.append("JellyBean's heuristic plan is cheaper than any the solver found within the time "
                       "limit: that plan" + (", its gap to the solver's lower bound" if stats.bound is not None
                                             else "; no lower bound was reached, so its gap is unknown"))
    stats.seconds = time.perf_counter() - started
    return build_plan(problem, solution, strategy=OPTIMAL, stats=stats, accuracy=accuracy)


def _optimal_by_combinations(problem: Problem, accuracy: AccuracyModel, combos: list[dict[str, str]], *,
                             time_limit_s: float, solver: str, gap_rel: float, explain_infeasible: bool,
                             placements: Placements | None = None) -> Plan:
    """Branch and bound over the admissible variant combinations.

    With the variants fixed the placement MILP is small and its relaxation tight; the joint model's
    relaxation is weak precisely because it may mix variants fractionally to average the accuracy.
    So each combination is first bounded by a linear relaxation (integrality dropped, identical sites
    pooled, the latency bound dropped: each only lowers the cost, so the bound is valid for the true
    problem). Combinations are then taken in increasing order of bound: the bound is tightened by the
    merged relaxation MILP, and if it still can beat the best plan, the symmetric placement is solved.
    The search stops when the next bound cannot beat the best plan; the global lower bound is the
    least bound of any combination, and the gap is measured against it.
    """
    started = time.perf_counter()
    placements = placements or Placements()
    aggregated = any(n.total > 1 for n in problem.nodes)
    has_latency = problem.latency_bound_ms is not None

    def remaining() -> float:
        return time_limit_s - (time.perf_counter() - started)

    # A solve costs its model's build and PuLP's hand-over to HiGHS before and after HiGHS's own time
    # limit applies: one started with less time left than that overruns the limit by it (seconds at
    # city scale). So a solve starts only with more time left than twice the slowest build seen.
    def may_start() -> bool:
        return remaining() > max(0.05, 2.0 * placements.slowest_build_s)

    def seen(result: MilpResult) -> MilpResult:
        placements.slowest_build_s = max(placements.slowest_build_s, result.build_s)
        return result

    bounds: dict[int, float] = {}
    unknown = 0  # combinations left without a plan or a proof that none beats the best
    unbounded = 0  # of those, the ones without even a bound: then nothing bounds the optimum
    for k, models in enumerate(combos):
        if not may_start():
            unknown += 1
            unbounded += 1
            continue
        relaxed = seen(solve_milp(problem, accuracy, fixed_models=models, relax_symmetry=True, solver=solver,
                             gap_rel=gap_rel, time_limit_s=remaining(), latency=False, lp_only=True))
        if relaxed.stats.status == "infeasible":
            continue
        if relaxed.stats.bound is None:
            unknown += 1
            unbounded += 1
            continue
        bounds[k] = relaxed.stats.bound
    best: MilpResult | None = None
    unplaced = 0
    counts = {"tightened": 0, "placed": 0, "pruned": 0}
    for k in sorted(bounds, key=lambda i: (bounds[i], i)):
        models = combos[k]
        cutoff = None if best is None else best.objective * (1 - gap_rel) - 1e-9
        if cutoff is not None and bounds[k] >= cutoff:
            counts["pruned"] += 1
            continue
        if not may_start():
            unknown += 1
            continue
        exact_bound = not aggregated and not has_latency
        if not exact_bound:
            relaxed = seen(solve_milp(problem, accuracy, fixed_models=models, relax_symmetry=True, solver=solver,
                                      gap_rel=gap_rel, time_limit_s=remaining(), latency=False))
            counts["tightened"] += 1
            if relaxed.stats.status == "infeasible":
                del bounds[k]
                continue
            if relaxed.stats.bound is not None:
                bounds[k] = max(bounds[k], relaxed.stats.bound)
            if cutoff is not None and bounds[k] >= cutoff:
                counts["pruned"] += 1
                continue
            if not may_start():
                unknown += 1
                continue
        result = seen(placements.solve(problem, accuracy, fixed_models=models, solver=solver, gap_rel=gap_rel,
                                       time_limit_s=max(remaining(), 0.1)))
        counts["placed"] += 1
        if exact_bound:
            if result.stats.status == "infeasible":
                del bounds[k]
            elif result.stats.bound is not None:
                bounds[k] = max(bounds[k], result.stats.bound)
        if result.solution is None and result.stats.status != "infeasible":
            unplaced += 1  # stopped by the time limit: not a proof that the combination has no plan
        if result.solution is not None and (best is None or result.objective < best.objective):
            best = result
    if best is None:
        status = "time-limit" if unknown or unplaced else "infeasible"
        stats = SolverStats(name=solver_name(solver), status=status, gap=None,
                            seconds=time.perf_counter() - started)
        if status == "time-limit" and not unbounded and bounds:
            stats.bound = min(bounds.values())  # every combination bounded: a bound on the optimum
        reasons = _why_none(problem, accuracy, stats, explain_infeasible=explain_infeasible, time_limit_s=time_limit_s,
                            started=started, solver=solver)
        stats.seconds = time.perf_counter() - started
        return build_plan(problem, None, strategy=OPTIMAL, stats=stats, accuracy=accuracy, explanation=reasons)
    stats, objective = best.stats, best.objective
    lower = min(bounds.values())
    stats.bound = lower
    if unbounded:  # a combination never bounded might hold a cheaper plan
        stats.bound = None
        stats.gap = None
    else:
        stats.gap = max(0.0, (objective - lower) / objective) if objective > 0 else 0.0
    stats.status = "optimal" if stats.gap is not None and stats.gap <= max(gap_rel, 1e-9) else "feasible"
    stats.notes = [n for n in stats.notes if not n.startswith("model built")]
    if aggregated:
        sites = sum(n.total for n in problem.nodes)
        stats.notes.append(f"{sites} sites planned as {len(problem.nodes)} classes of identical sites; the lower "
                           "bound pools identical sites (merged relaxation)")
    stats.notes.append(
        f"branch and bound over {len(combos)} admissible variant combinations: {len(bounds)} feasible, "
        f"{counts['tightened']} bounds tightened, {counts['placed']} placed, {counts['pruned']} pruned"
        + (f", {unknown} not reached before the time limit" if unknown else ""))
    stats.seconds = time.perf_counter() - started
    return build_plan(problem, best.solution, strategy=OPTIMAL, stats=stats, accuracy=accuracy)


def _optimal_joint(problem: Problem, accuracy: AccuracyModel, *, time_limit_s: float, solver: str, gap_rel: float,
                   explain_infeasible: bool) -> Plan:
    """One MILP over variants and placement together (used when combinations are too many)."""
    started = time.perf_counter()
    result = solve_placement(problem, accuracy, time_limit_s=time_limit_s, solver=solver, gap_rel=gap_rel)
    stats = result.stats
    if result.solution is None:
        reasons = _why_none(problem, accuracy, stats, explain_infeasible=explain_infeasible, time_limit_s=time_limit_s,
                            started=started, solver=solver)
        stats.seconds = time.perf_counter() - started
        return build_plan(problem, None, strategy=OPTIMAL, stats=stats, accuracy=accuracy, explanation=reasons)
    aggregated = [n for n in problem.nodes if n.total > 1]
    if aggregated and stats.objective is not None:
        sites = sum(n.total for n in problem.nodes)
        stats.notes.append(f"{sites} sites planned as {len(problem.nodes)} classes of identical sites")
        remaining = max(1.0, time_limit_s - (time.perf_counter() - started))
        relaxed = solve_milp(problem, accuracy, time_limit_s=remaining, solver=solver, gap_rel=gap_rel,
                             relax_symmetry=True)
        bound = relaxed.stats.bound if relaxed.stats.bound is not None else None
        if relaxed.stats.status == "infeasible":
            bound = None
        if bound is not None:
            lower = min(bound, stats.bound if stats.bound is not None else bound)
            gap = max(0.0, (stats.objective - lower) / stats.objective) if stats.objective > 0 else 0.0
            stats.bound = lower
            stats.gap = max(gap, stats.gap or 0.0)
            stats.notes.append(f"lower bound {lower:.4f} {problem.objective.unit} from the merged relaxation "
                               f"({relaxed.stats.status}, {relaxed.stats.seconds:.2f}s)")
            if stats.status == "optimal" and stats.gap > max(gap_rel, 1e-9):
                stats.status = "feasible"
        else:
            stats.gap = None
            stats.notes.append("no lower bound from the merged relaxation: gap unknown")
            stats.status = "feasible"
    stats.seconds = time.perf_counter() - started
    return build_plan(problem, result.solution, strategy=OPTIMAL, stats=stats, accuracy=accuracy)
