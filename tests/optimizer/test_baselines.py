"""The baseline strategies: valid plans, never cheaper than the optimum, each with its own rule."""

from __future__ import annotations

import pytest

from jellybean.optimizer.accuracy import choose_model, enumerate_combinations
from jellybean.optimizer.baselines import NoPlan, edge_first, select_by_cost_proxy
from jellybean.optimizer.evaluate import verify
from jellybean.optimizer.planner import STRATEGIES, plan, run_strategy
from jellybean.optimizer.problem import compile_problem
from jellybean.spec import load_bundle

from .random_instances import make_bundle, random_bundle

BASELINES = [s for s in STRATEGIES if s != "optimal"]


@pytest.mark.parametrize("sharing", ["exclusive", "shared"])
@pytest.mark.parametrize("seed", range(10))
def test_baselines_are_valid_and_never_beat_the_optimum(seed: int, sharing: str) -> None:
    problem = compile_problem(random_bundle(seed, sharing=sharing), aggregate=False)
    accuracy = choose_model(problem)
    best = run_strategy(problem, accuracy, "optimal", gap_rel=1e-7)
    for strategy in BASELINES:
        result = run_strategy(problem, accuracy, strategy)
        assert result.strategy == strategy
        if not result.feasible:
            assert result.explanation, f"{strategy} gives no reason"
            continue
        assert best.feasible, f"{strategy} found a plan where the optimum found none"
        assert result.cost.total_per_hour >= best.cost.total_per_hour - 1e-6
        assert result.accuracy >= problem.accuracy_target - 1e-9
        if strategy == "cloud-only":
            assert {a.tier for a in result.assignments} == {"cloud"}


def test_two_stage_picks_the_cheapest_proxy_combination() -> None:
    problem = compile_problem(load_bundle(["workflows/vehicle-tracking"]))
    accuracy = choose_model(problem)
    models = select_by_cost_proxy(problem, accuracy)
    proxy = lambda m: sum(problem.stages[s].variant(v).default_cost_proxy() for s, v in m.items())  # noqa: E731
    admissible = [m for m in enumerate_combinations(problem)
                  if (a := accuracy.evaluate(problem, m)) is not None and a >= problem.accuracy_target]
    assert proxy(models) == min(proxy(m) for m in admissible)
    result = run_strategy(problem, accuracy, "two-stage")
    assert result.models == models


def test_two_stage_reports_an_unreachable_target() -> None:
    problem = compile_problem(load_bundle(["workflows/vehicle-tracking"]))
    problem.accuracy_target = 99.0
    with pytest.raises(NoPlan, match="accuracy target 99"):
        select_by_cost_proxy(problem, choose_model(problem))


ZOO = {"tasks": [{"name": "det", "variants": [
    {"name": "n", "accuracy": 50, "output_kb": 2, "profiles": [
        {"hardware": "cpu", "latency_ms": {1: 100}}, {"hardware": "gpu", "latency_ms": {1: 10}}]}]}]}


def edge_topology(box_count: int) -> dict:
    return {"sites": [
        {"name": "cloud", "tier": "cloud",
         "instances": [{"name": "g", "hardware": "gpu", "price_per_hour": 0.01, "max_count": 10}]},
        {"name": "hub", "tier": "hub", "parent": "cloud", "uplink": {"up": {"cost_per_gb": 0.0}},
         "instances": [{"name": "box", "hardware": "cpu", "price_per_hour": 1.0, "count": box_count}]},
    ], "max_utilization": 1.0}


def workflow(rate: float) -> dict:
    return {"sources": [{"name": "cams", "rate_per_s": rate, "payload_kb": 10, "sites": ["hub"]}],
            "stages": [{"name": "detect", "task": "det", "inputs": ["cams"]}], "slo": {"accuracy": 10}}


def test_edge_first_fills_the_lowest_tier_then_goes_up() -> None:
    # The hub's box serves 10/s; 25/s arrive: 10 stay at the hub although the cloud is far cheaper.
    problem = compile_problem(make_bundle(ZOO, edge_topology(1), workflow(25)))
    accuracy = choose_model(problem)
    solution = edge_first(problem, {"detect": "n"})
    assert verify(problem, solution, accuracy) == []
    by_site = {}
    for o_index, rate in solution.rates.items():
        node = problem.nodes[problem.groups[problem.options[o_index].group].node]
        by_site[node.name] = by_site.get(node.name, 0.0) + rate
    assert by_site == pytest.approx({"hub": 10.0, "cloud": 15.0})
    optimal = run_strategy(problem, accuracy, "optimal")
    assert {a.site for a in optimal.assignments} == {"cloud"}
    assert run_strategy(problem, accuracy, "edge-first").cost.total_per_hour > optimal.cost.total_per_hour


def test_plan_reports_every_baseline_with_its_saving() -> None:
    result = plan(load_bundle(["workflows/vqa-medium"]))
    assert [b.strategy for b in result.baselines] == BASELINES
    for b in result.baselines:
        assert b.feasible
        expected = 100 * (b.cost.total_per_hour - result.cost.total_per_hour) / b.cost.total_per_hour
        assert b.saving_pct == pytest.approx(expected)
        assert b.saving_pct >= -1e-9
    jellybean = next(b for b in result.baselines if b.strategy == "jellybean")
    assert jellybean.cost.total_per_hour == pytest.approx(7.509, abs=5e-4)
