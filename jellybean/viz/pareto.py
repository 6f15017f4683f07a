"""Cost against the accuracy target: what each strategy pays for each level of accuracy.

One plan shows the saving at one target; the sweep shows whether it holds across targets. The
workflow's accuracy SLO is swept over a grid from the accuracy of the cheapest plan (below it every
target costs the same) to the best accuracy any variant combination reaches, and at each target
the optimal planner and every baseline plan the same compiled problem. An optimal planner can never
cost more than a baseline where both are feasible, so the curves double as a check of the planner.

The sweep changes a copy of the loaded Bundle's SLO (no files, no processes) and runs the
strategies without explaining infeasibility, so a 12-target sweep of a site-sized workflow takes
seconds.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from jellybean.optimizer.accuracy import choose_model, enumerate_combinations
from jellybean.optimizer.planner import OPTIMAL, STRATEGIES, run_strategy
from jellybean.optimizer.problem import compile_problem
from jellybean.spec.bundle import Bundle
from jellybean.viz.figure import new_figure, save_figure

#: The relative optimality gap of every solve, as ``jellybean plan`` uses it.
GAP_REL = 1e-4

LABELS = {OPTIMAL: "optimal (Jellybean MILP)", "cloud-only": "cloud-only", "two-stage": "two-stage",
          "edge-first": "edge-first", "jellybean": "JellyBean heuristic"}
STYLES = {OPTIMAL: dict(color="#1a1a1a", lw=2.6, marker="o", ms=5, zorder=5),
          "cloud-only": dict(color="#1f5fa8", lw=1.4, marker="s", ms=5, ls="--"),
          "two-stage": dict(color="#2e8b3a", lw=1.4, marker="^", ms=6, ls="--"),
          "edge-first": dict(color="#c8581a", lw=1.4, marker="v", ms=6, ls="-."),
          "jellybean": dict(color="#8a3fa0", lw=1.4, marker="D", ms=4.5, ls=":")}


@dataclass
class SweepPoint:
    """One strategy's plan at one accuracy target (costs None when it found no plan)."""

    target: float
    feasible: bool
    cost_per_hour: float | None
    compute_per_hour: float | None
    network_per_hour: float | None
    accuracy: float | None
    models: dict[str, str]
    seconds: float


@dataclass
class ParetoSweep:
    workflow: str
    sharing: str
    slo_accuracy: float
    targets: list[float]
    points: dict[str, list[SweepPoint]] = field(default_factory=dict)  # strategy -> one point per target
    seconds: float = 0.0

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def with_accuracy_target(bundle: Bundle, target: float) -> Bundle:
    """A copy of ``bundle`` whose workflow asks for accuracy ``target``; the original is untouched."""
    workflow = bundle.workflow
    slo = workflow.spec.slo.model_copy(update={"accuracy": target})
    spec = workflow.spec.model_copy(update={"slo": slo})
    return dataclasses.replace(bundle, workflow=workflow.model_copy(update={"spec": spec}))


def accuracy_range(bundle: Bundle, *, sharing: str | None = None, time_limit_s: float = 60.0) -> tuple[float, float]:
    """(accuracy of the cheapest plan, best accuracy of any variant combination): the targets worth sweeping."""
    problem = compile_problem(bundle, sharing=sharing)
    model = choose_model(problem)
    combos = enumerate_combinations(problem)
    if combos is None:
        raise ValueError(f"workflow {bundle.name!r} has too many variant combinations to find its accuracy range")
    reachable = [a for a in (model.evaluate(problem, c) for c in combos) if a is not None]
    if not reachable:
        raise ValueError(f"no variant combination of workflow {bundle.name!r} has a known accuracy")
    lowest, best = min(reachable), max(reachable)
    cheapest = _plan_at(bundle, lowest, [OPTIMAL], sharing=sharing, time_limit_s=time_limit_s)[OPTIMAL]
    return (cheapest.accuracy if cheapest.accuracy is not None else lowest), best


def accuracy_grid(bundle: Bundle, points: int = 12, *, sharing: str | None = None,
                  time_limit_s: float = 60.0) -> list[float]:
    """``points`` evenly spaced targets from the cheapest plan's accuracy to the best reachable."""
    if points < 2:
        raise ValueError("a sweep needs at least 2 points")
    low, high = accuracy_range(bundle, sharing=sharing, time_limit_s=time_limit_s)
    return [low + (high - low) * k / (points - 1) for k in range(points)]


def sweep(bundle: Bundle, targets: list[float], *, strategies: list[str] | None = None, sharing: str | None = None,
          time_limit_s: float = 60.0) -> ParetoSweep:
    """Plan ``bundle`` at every target with every strategy (default: the optimal one and each baseline)."""
    strategies = list(strategies or STRATEGIES)
    started = time.perf_counter()
    result = ParetoSweep(bundle.name, sharing or bundle.topology.spec.sharing, bundle.workflow.spec.slo.accuracy,
                         list(targets), {s: [] for s in strategies})
    for target in targets:
        for strategy, point in _plan_at(bundle, target, strategies, sharing=sharing,
                                        time_limit_s=time_limit_s).items():
            result.points[strategy].append(point)
    result.seconds = time.perf_counter() - started
    return result


def _plan_at(bundle: Bundle, target: float, strategies: list[str], *, sharing: str | None,
             time_limit_s: float) -> dict[str, SweepPoint]:
    """Each strategy's plan at one target, all from one compiled problem."""
    problem = compile_problem(with_accuracy_target(bundle, target), sharing=sharing)
    model = choose_model(problem)
    points = {}
    for strategy in strategies:
        started = time.perf_counter()
        plan = run_strategy(problem, model, strategy, time_limit_s=time_limit_s, gap_rel=GAP_REL,
                            explain_infeasible=False)
        cost = plan.cost
        points[strategy] = SweepPoint(
            target=target, feasible=plan.feasible, cost_per_hour=cost.total_per_hour if cost else None,
            compute_per_hour=cost.compute_per_hour if cost else None,
            network_per_hour=cost.network_per_hour if cost else None, accuracy=plan.accuracy,
            models=dict(plan.models), seconds=time.perf_counter() - started)
    return points


def plot_pareto(result: ParetoSweep, path: str | Path) -> Path:
    """Cost ($/h) against the accuracy target, a curve per strategy; a strategy's infeasible
    targets are gaps in its curve, and the legend says at how many targets it found a plan."""
    figure = new_figure(8.0, 5.4)
    ax = figure.add_subplot(1, 1, 1)
    for strategy, points in result.points.items():
        costs = [p.cost_per_hour if p.feasible and p.cost_per_hour is not None else math.nan for p in points]
        feasible = sum(not math.isnan(c) for c in costs)
        label = LABELS.get(strategy, strategy)
        if feasible < len(points):
            label += f" (plan at {feasible} of {len(points)} targets)"
        ax.plot([p.target for p in points], costs, label=label, **STYLES.get(strategy, {}))
    ax.axvline(result.slo_accuracy, color="#888888", lw=1, ls=":")
    ax.annotate(f"workflow's SLO {result.slo_accuracy:g}", (result.slo_accuracy, 0.0),
                xycoords=("data", "axes fraction"), xytext=(4, 6), textcoords="offset points", fontsize=8,
                color="#555555")
    return finish_cost_figure(figure, ax, path, xlabel="accuracy target (end-to-end, in the zoo's unit)",
                              title=f"{result.workflow}: cost against the accuracy target ({result.sharing} instances)",
                              legend_columns=3)


def finish_cost_figure(figure, ax, path: str | Path, *, xlabel: str, title: str,  # noqa: ANN001 - matplotlib's
                       legend_columns: int) -> Path:
    """The benchmark pictures' common frame, cost ($/h) upwards from 0: labels, title, a light grid,
    the legend below the axes; then the figure written to ``path``."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel("cost, $/h (compute + network)")
    ax.set_title(title, fontsize=11)
    ax.set_ylim(bottom=0)
    ax.grid(True, color="#e5e5e5", lw=0.6)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=legend_columns, frameon=False)
    figure.tight_layout()
    return save_figure(figure, path)
