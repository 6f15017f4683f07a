"""Cost against the accuracy target: the sweep behaves as an optimal planner must, and plots."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from jellybean.optimizer.planner import OPTIMAL, STRATEGIES
from jellybean.spec.bundle import load_bundle
from jellybean.viz.pareto import LABELS, ParetoSweep, accuracy_grid, plot_pareto, sweep, with_accuracy_target
from tests.viz.pictures import png_size, svg_text

ROOT = Path(__file__).resolve().parents[2]
GAP = 1e-3  # the solves stop within 1e-4 of optimal; leave room for that


@pytest.fixture(scope="module")
def vehicle_sweep() -> ParetoSweep:
    bundle = load_bundle([ROOT / "workflows" / "vehicle-tracking"])
    return sweep(bundle, accuracy_grid(bundle, 4))


def test_grid_runs_from_the_cheapest_plan_to_the_best_accuracy(vehicle_sweep: ParetoSweep) -> None:
    targets = vehicle_sweep.targets
    assert len(targets) == 4 and targets == sorted(targets)
    # 40.14 is the best combination (yolov5x, osnet-ain-x1_0, graph-matcher); nothing reaches more.
    assert targets[-1] == pytest.approx(40.14)
    cheapest = vehicle_sweep.points[OPTIMAL][0]
    assert cheapest.accuracy == pytest.approx(targets[0])


def test_optimal_never_costs_more_than_a_baseline(vehicle_sweep: ParetoSweep) -> None:
    assert set(vehicle_sweep.points) == set(STRATEGIES)
    optimal = vehicle_sweep.points[OPTIMAL]
    assert all(p.feasible for p in optimal)  # every target up to the best reachable has a plan
    compared = 0
    for strategy, points in vehicle_sweep.points.items():
        assert [p.target for p in points] == vehicle_sweep.targets
        for best, other in zip(optimal, points):
            if other.feasible:
                assert other.accuracy >= other.target - 1e-6, (strategy, other.target)
                assert best.cost_per_hour <= other.cost_per_hour * (1 + GAP) + 1e-9, (strategy, other.target)
                compared += strategy != OPTIMAL
    assert compared >= 8


def test_optimal_cost_rises_with_the_target(vehicle_sweep: ParetoSweep) -> None:
    """A higher target only removes plans, so the optimal cost can only rise."""
    costs = [p.cost_per_hour for p in vehicle_sweep.points[OPTIMAL]]
    assert all(b >= a * (1 - GAP) for a, b in zip(costs, costs[1:]))
    assert costs[-1] > costs[0]


def test_sweep_leaves_the_bundle_alone() -> None:
    bundle = load_bundle([ROOT / "workflows" / "vqa-medium"])
    changed = with_accuracy_target(bundle, 57.5)
    assert changed.workflow.spec.slo.accuracy == 57.5
    assert bundle.workflow.spec.slo.accuracy == 56.0
    assert changed.workflow.spec.slo.accuracy_table == bundle.workflow.spec.slo.accuracy_table


def test_plot_has_a_curve_per_strategy(vehicle_sweep: ParetoSweep, tmp_path: Path) -> None:
    text = svg_text(plot_pareto(vehicle_sweep, tmp_path / "pareto.svg"))
    for strategy in STRATEGIES:
        assert LABELS[strategy] in text
    assert "cost against the accuracy target" in text
    width, height = png_size(plot_pareto(vehicle_sweep, tmp_path / "pareto.png"))
    assert width >= 600 and height >= 400
    with pytest.raises(ValueError, match=".svg or .png"):
        plot_pareto(vehicle_sweep, tmp_path / "pareto.jpg")


def test_json_record_is_plain_data(vehicle_sweep: ParetoSweep) -> None:
    record = vehicle_sweep.to_json()
    assert record["workflow"] == "vehicle-tracking" and record["sharing"] == "shared"
    first = record["points"][OPTIMAL][0]
    assert set(first) >= {"target", "feasible", "cost_per_hour", "accuracy", "models"}
    assert not any(isinstance(v, float) and math.isnan(v) for v in first.values())
