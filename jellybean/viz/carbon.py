"""Cost against carbon: the cost-carbon Pareto front of a workflow, and its picture.

The two ends are the cheapest plan (objective cost) and the least-carbon plan (objective carbon:
the least carbon, then the cheapest plan within it). Between them the carbon budget is swept over an
even grid and the cheapest plan within each budget found (``--carbon-budget``): the front is that
cost, a step function of the budget that never rises as the budget grows. Sweeping the budget
rather than a carbon price finds every plan on the front, those a price never selects (the non-convex
steps) included. Between two plans of the front, the extra cost per tonne avoided
(``(cost_b - cost_a) / (carbon_a - carbon_b) x 10^6`` $/tCO2) is the price at which the greener
one pays. The baselines' plans (each planned for cost) are drawn beside the front for comparison.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

from jellybean.optimizer.accuracy import choose_model
from jellybean.optimizer.carbon import G_PER_TONNE, Objective
from jellybean.optimizer.plan import Plan
from jellybean.optimizer.planner import OPTIMAL, STRATEGIES, run_strategy
from jellybean.optimizer.problem import compile_problem
from jellybean.spec.bundle import Bundle
from jellybean.spec.errors import listed
from jellybean.viz.figure import new_figure
from jellybean.viz.pareto import GAP_REL, LABELS, STYLES, finish_cost_figure

#: The first budget sits this share above the least carbon, so that the solver's tolerances do not
#: make the least-carbon plan itself look infeasible.
FLOOR_REL = 1e-6


@dataclass
class FrontPoint:
    """The cheapest plan within one carbon budget (None where none exists)."""

    budget_g_per_hour: float | None
    feasible: bool
    cost_per_hour: float | None
    carbon_g_per_hour: float | None
    compute_per_hour: float | None = None
    network_per_hour: float | None = None
    models: dict[str, str] = field(default_factory=dict)
    #: Instances in use, ``tier/site/instance x count`` (each row's first site).
    instances: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class CarbonFront:
    workflow: str
    sharing: str
    cheapest: FrontPoint  # objective cost
    least_carbon: FrontPoint  # objective carbon
    points: list[FrontPoint] = field(default_factory=list)  # one per budget, in increasing budget
    baselines: dict[str, FrontPoint] = field(default_factory=dict)  # other strategies, planned for cost
    seconds: float = 0.0

    def plans(self) -> list[FrontPoint]:
        """The front: the plans found that no other beats on both counts, from the least carbon to the
        cheapest. A plan found within a budget is the cheapest there (to the solver's gap), but may
        emit more than needed at its cost; one that costs no less (within the gap) than a greener
        plan is dominated, and left out."""
        found = sorted((p for p in [self.least_carbon, *self.points, self.cheapest] if p.feasible),
                       key=lambda p: (p.carbon_g_per_hour, p.cost_per_hour))
        front: list[FrontPoint] = []
        for p in found:
            if not front or p.cost_per_hour < front[-1].cost_per_hour * (1 - GAP_REL) - 1e-9:
                front.append(p)
        return front

    def abatement_per_tonne(self) -> list[float]:
        """Between consecutive plans of the front (least carbon first): the extra $ per tonne of CO2
        avoided by taking the greener one, ``(cost_a - cost_b) / (carbon_b - carbon_a) x 10^6``."""
        plans = self.plans()
        return [(a.cost_per_hour - b.cost_per_hour) / (b.carbon_g_per_hour - a.carbon_g_per_hour) * G_PER_TONNE
                for a, b in zip(plans, plans[1:]) if b.carbon_g_per_hour > a.carbon_g_per_hour]

    def to_json(self) -> dict:
        record = dataclasses.asdict(self)
        record["front"] = [dataclasses.asdict(p) for p in self.plans()]
        record["abatement_usd_per_tonne"] = self.abatement_per_tonne()
        return record


def _point(plan: Plan, budget: float | None, seconds: float) -> FrontPoint:
    if not plan.feasible or plan.cost is None or plan.carbon is None:
        return FrontPoint(budget, False, None, None, seconds=seconds)
    instances = [f"{row.tier}/{row.site}/{row.instance} x {row.count}" + (f" (x{len(row.sites)} sites)" if row.sites else "")
                 for row in plan.instances]
    return FrontPoint(budget, True, plan.cost.total_per_hour, plan.carbon.total_g_per_hour, plan.cost.compute_per_hour,
                      plan.cost.network_per_hour, dict(plan.models), instances, seconds)


def carbon_front(bundle: Bundle, points: int = 12, *, sharing: str | None = None, time_limit_s: float = 60.0,
                 baselines: bool = True) -> CarbonFront:
    """The front of ``bundle`` (its Topology must give every instance's ``power_w`` and every site's
    intensity): both ends, ``points`` budgets evenly from the least carbon to the cheapest plan's
    carbon, and, with ``baselines``, every other strategy's plan for cost."""
    if points < 2:
        raise ValueError("a front needs at least 2 budgets")
    started = time.perf_counter()
    problem = compile_problem(bundle, sharing=sharing)
    missing = problem.missing_carbon_data()
    if missing:
        raise ValueError(f"workflow {bundle.name!r}: no carbon figures for {listed(missing, at_most=5)}")
    accuracy = choose_model(problem)

    def planned(objective: Objective, strategy: str = OPTIMAL) -> FrontPoint:
        begun = time.perf_counter()
        plan = run_strategy(dataclasses.replace(problem, objective=objective), accuracy, strategy,
                            time_limit_s=time_limit_s, gap_rel=GAP_REL, explain_infeasible=False)
        return _point(plan, objective.carbon_budget_g_per_hour, time.perf_counter() - begun)

    cheapest = planned(Objective("cost"))
    least = planned(Objective("carbon"))
    front = CarbonFront(bundle.name, sharing or bundle.topology.spec.sharing, cheapest, least)
    if cheapest.feasible and least.feasible:
        low, high = least.carbon_g_per_hour * (1 + FLOOR_REL), cheapest.carbon_g_per_hour
        for k in range(points):
            front.points.append(planned(Objective("cost", carbon_budget_g_per_hour=low + (high - low) * k / (points - 1))))
    if baselines:
        for strategy in STRATEGIES:
            if strategy != OPTIMAL:
                front.baselines[strategy] = planned(Objective("cost"), strategy)
    front.seconds = time.perf_counter() - started
    return front


def plot_carbon_front(front: CarbonFront, path: str | Path) -> Path:
    """Cost ($/h) against carbon (gCO2/h): the front as the cheapest cost within each carbon level (a
    staircase: a plan holds from its carbon up to the next greener plan's), its plans as points, the
    range of $/tCO2 its steps cost, and the baselines' plans for cost as labelled markers."""
    figure = new_figure(8.0, 5.4)
    ax = figure.add_subplot(1, 1, 1)
    plans = front.plans()
    if plans:
        xs, ys = [], []
        for k, p in enumerate(plans):
            xs.append(p.carbon_g_per_hour)
            ys.append(p.cost_per_hour)
            if k + 1 < len(plans):
                xs.append(plans[k + 1].carbon_g_per_hour)
                ys.append(p.cost_per_hour)
        style = STYLES.get(OPTIMAL, {})
        ax.plot(xs, ys, color=style.get("color", "#1a1a1a"), lw=2.0, zorder=4,
                label=f"{LABELS.get(OPTIMAL, OPTIMAL)}: cheapest plan within each carbon budget")
        ax.plot([p.carbon_g_per_hour for p in plans], [p.cost_per_hour for p in plans], ls="none", marker="o", ms=6,
                color=style.get("color", "#1a1a1a"), zorder=5)
        least, cheapest = plans[0], plans[-1]
        ax.annotate(f"least carbon: {least.carbon_g_per_hour:.1f} gCO2/h, \\${least.cost_per_hour:.3f}/h",
                    (least.carbon_g_per_hour, least.cost_per_hour), xytext=(8, 4), textcoords="offset points",
                    fontsize=8)
        ax.annotate(f"cheapest: {cheapest.carbon_g_per_hour:.1f} gCO2/h, \\${cheapest.cost_per_hour:.3f}/h",
                    (cheapest.carbon_g_per_hour, cheapest.cost_per_hour), xytext=(8, -12), textcoords="offset points",
                    fontsize=8)
        if len(plans) > 1:
            saved = 100 * (1 - least.carbon_g_per_hour / cheapest.carbon_g_per_hour)
            extra = 100 * (least.cost_per_hour / cheapest.cost_per_hour - 1)
            prices = front.abatement_per_tonne()
            ax.text(0.99, 0.03, f"{len(plans)} plans on the front; the greenest emits {saved:.0f}% less for {extra:.0f}% "
                    f"more \\$/h;\neach step greener costs \\${min(prices):,.0f} to \\${max(prices):,.0f} per tonne of CO2 "
                    "avoided", transform=ax.transAxes, ha="right", va="bottom", fontsize=8, color="#444444")
    for strategy, p in front.baselines.items():
        if not p.feasible:
            continue
        style = {k: v for k, v in STYLES.get(strategy, {}).items() if k in ("color", "marker")}
        ax.plot([p.carbon_g_per_hour], [p.cost_per_hour], ls="none", ms=7, label=f"{LABELS.get(strategy, strategy)} "
                "(planned for cost)", **style)
    return finish_cost_figure(
        figure, ax, path, xlabel="carbon, gCO2/h (instances in use: idle + (busy - idle) x utilisation, at each site's grid)",
        title=f"{front.workflow}: the cost-carbon front ({front.sharing} instances)", legend_columns=2)
