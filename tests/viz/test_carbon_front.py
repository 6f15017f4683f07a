"""The cost-carbon front of vehicle-tracking (whose Topology cites its carbon figures): it runs from
the least-carbon plan to the cheapest, every plan keeps to its budget, cost falls as carbon rises, and
it plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jellybean.optimizer.planner import OPTIMAL
from jellybean.spec.bundle import load_bundle
from jellybean.viz.carbon import CarbonFront, carbon_front, plot_carbon_front
from jellybean.viz.pareto import LABELS
from tests.optimizer.random_instances import random_bundle
from tests.viz.pictures import png_size, svg_text

ROOT = Path(__file__).resolve().parents[2]
GAP = 1e-3  # the solves stop within 1e-4 of optimal; leave room for that


@pytest.fixture(scope="module")
def front() -> CarbonFront:
    return carbon_front(load_bundle([ROOT / "workflows" / "vehicle-tracking"]), 4)


def test_the_front_runs_from_the_least_carbon_to_the_cheapest(front: CarbonFront) -> None:
    assert front.cheapest.feasible and front.least_carbon.feasible
    assert front.least_carbon.carbon_g_per_hour < front.cheapest.carbon_g_per_hour
    assert front.least_carbon.cost_per_hour > front.cheapest.cost_per_hour
    plans = front.plans()
    assert plans[0] is front.least_carbon
    assert plans[-1].cost_per_hour == pytest.approx(front.cheapest.cost_per_hour, rel=GAP)
    budgets = [p.budget_g_per_hour for p in front.points]
    assert budgets == sorted(budgets) and len(budgets) == 4
    assert budgets[0] == pytest.approx(front.least_carbon.carbon_g_per_hour)
    assert budgets[-1] == pytest.approx(front.cheapest.carbon_g_per_hour)


def test_each_plan_keeps_to_its_budget_and_a_larger_budget_never_costs_more(front: CarbonFront) -> None:
    assert all(p.feasible for p in front.points)
    for p in front.points:
        assert p.carbon_g_per_hour <= p.budget_g_per_hour * (1 + 1e-6)
        assert p.cost_per_hour >= front.cheapest.cost_per_hour * (1 - GAP)
    costs = [p.cost_per_hour for p in front.points]
    assert all(b <= a * (1 + GAP) for a, b in zip(costs, costs[1:]))
    plans = front.plans()
    assert all(b.carbon_g_per_hour > a.carbon_g_per_hour and b.cost_per_hour < a.cost_per_hour
               for a, b in zip(plans, plans[1:]))
    assert all(price > 0 for price in front.abatement_per_tonne())
    assert len(front.abatement_per_tonne()) == len(plans) - 1


def test_baselines_are_planned_for_cost_beside_it(front: CarbonFront) -> None:
    assert OPTIMAL not in front.baselines and "jellybean" in front.baselines
    for p in front.baselines.values():
        if p.feasible:  # no baseline is cheaper than the cheapest plan
            assert p.cost_per_hour >= front.cheapest.cost_per_hour * (1 - GAP)


def test_plot_and_record(front: CarbonFront, tmp_path: Path) -> None:
    text = svg_text(plot_carbon_front(front, tmp_path / "front.svg"))
    assert "the cost-carbon front" in text and "least carbon" in text and "cheapest" in text
    assert LABELS["jellybean"] in text
    width, height = png_size(plot_carbon_front(front, tmp_path / "front.png"))
    assert width >= 600 and height >= 400
    record = json.loads(json.dumps(front.to_json()))
    assert record["workflow"] == "vehicle-tracking" and len(record["front"]) == len(front.plans())
    assert set(record["front"][0]) >= {"cost_per_hour", "carbon_g_per_hour", "models", "instances"}


def test_a_topology_without_carbon_figures_is_refused() -> None:
    with pytest.raises(ValueError, match="no carbon figures for cloud/vm"):
        carbon_front(random_bundle(3, sharing="shared"), 3)
