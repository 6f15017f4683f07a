"""Carbon as a second objective: the power and carbon arithmetic by hand, the plan's report, and the
MILP against exhaustive enumeration (tests/optimizer/bruteforce.py, which writes the carbon out on
its own) with objective carbon, cost+carbon, and a carbon budget, in both sharing modes."""

from __future__ import annotations

import dataclasses
import math
import re
from datetime import time

import pytest

from jellybean.optimizer import plan
from jellybean.optimizer.accuracy import choose_model
from jellybean.optimizer.carbon import Objective, grams_per_hour, group_power_w, instance_power_w, price_per_g
from jellybean.optimizer.evaluate import build_plan, carbon_g_per_hour, verify
from jellybean.optimizer.milp import solve_milp, solve_placement
from jellybean.optimizer.plan import SolverStats
from jellybean.optimizer.planner import run_strategy
from jellybean.optimizer.problem import compile_problem
from jellybean.spec.topology import IntensityStep, intensity_g_per_kwh

from .bruteforce import brute_force
from .random_instances import make_bundle, random_bundle

SEEDS = range(14)
#: $ per tonne CO2 for the cost+carbon tests: high enough that carbon moves the optimum on these
#: small instances (a few $/h, tens of gCO2/h).
PRICE_PER_TONNE = 20_000.0


# --- the arithmetic ---------------------------------------------------------------------------------


def test_an_instance_draws_idle_plus_its_share_of_the_busy_extra() -> None:
    assert instance_power_w(10.0, 70.0, 0.0) == 10.0
    assert instance_power_w(10.0, 70.0, 1.0) == 70.0
    assert instance_power_w(10.0, 70.0, 0.25) == pytest.approx(25.0)


def test_watts_at_an_intensity_make_grams_per_hour() -> None:
    # 100 W for an hour is 0.1 kWh; at 400 gCO2/kWh that is 40 g.
    assert grams_per_hour(100.0, 400.0) == pytest.approx(40.0)
    assert grams_per_hour(0.0, 400.0) == 0.0


def test_a_group_draws_the_sum_over_its_instances() -> None:
    # Three instances at 20%, 50% and 80% busy: 1.5 busy instance-equivalents.
    each = sum(instance_power_w(10.0, 70.0, u) for u in (0.2, 0.5, 0.8))
    assert group_power_w(10.0, 70.0, 3, 1.5) == pytest.approx(each) == pytest.approx(30.0 + 60.0 * 1.5)


def test_a_carbon_price_per_tonne_is_a_millionth_per_gram() -> None:
    assert price_per_g(100.0) == pytest.approx(1e-4)


def test_a_day_series_is_read_as_its_time_weighted_mean_or_at_a_time() -> None:
    steps = [IntensityStep.model_validate({"from": "06:00", "g_per_kwh": 300}),
             IntensityStep.model_validate({"from": "18:00", "g_per_kwh": 100})]
    assert intensity_g_per_kwh(steps) == pytest.approx(200.0)  # 12 h each
    assert intensity_g_per_kwh(steps, time(6, 0)) == 300.0
    assert intensity_g_per_kwh(steps, time(17, 59)) == 300.0
    assert intensity_g_per_kwh(steps, time(18, 0)) == 100.0
    assert intensity_g_per_kwh(steps, time(3, 0)) == 100.0  # the last step holds past midnight
    uneven = [IntensityStep.model_validate({"from": "00:00", "g_per_kwh": 480}),
              IntensityStep.model_validate({"from": "20:00", "g_per_kwh": 0})]
    assert intensity_g_per_kwh(uneven) == pytest.approx(480 * 20 / 24)
    assert intensity_g_per_kwh(250.0, time(3, 0)) == 250.0
    assert intensity_g_per_kwh(None) is None


@pytest.mark.parametrize("kind, price, budget, message", [
    ("carbon", 10.0, None, r"used only by objective cost\+carbon"),
    ("cost+carbon", None, None, "needs a carbon price"),
    ("cost+carbon", -1.0, None, "finite number from 0"),
    ("cost", None, math.nan, "finite number from 0"),
    ("greenest", None, None, "unknown objective"),
])
def test_an_objective_refuses_what_it_cannot_mean(kind: str, price, budget, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Objective(kind, price, budget)


def test_the_default_objective_leaves_carbon_out_of_the_model() -> None:
    bundle = random_bundle(3, sharing="shared", carbon=True)
    problem = compile_problem(bundle, aggregate=False)
    accuracy = choose_model(problem)
    plain = solve_milp(problem, accuracy)
    priced = solve_milp(dataclasses.replace(problem, objective=Objective("cost+carbon", 0.0)), accuracy)
    assert "carbon_budget" not in str(plain.stats.notes)
    assert priced.stats.constraints == plain.stats.constraints  # carbon adds no row unless budgeted
    budgeted = solve_milp(dataclasses.replace(problem, objective=Objective("cost", carbon_budget_g_per_hour=1e6)),
                          accuracy)
    assert budgeted.stats.constraints == plain.stats.constraints + 1
    assert plain.stats.objective == pytest.approx(priced.stats.objective) == pytest.approx(budgeted.stats.objective)


# --- the plan's report ------------------------------------------------------------------------------


def _check_report(problem, result_plan) -> None:
    """The plan's carbon, recomputed from its own instance rows by hand: each row's instances at idle
    + (busy - idle) x utilisation, at the site's intensity, over the row's sites."""
    by_name = {(problem.nodes[g.node].name, g.name): g for g in problem.groups}
    total = 0.0
    tiers: dict[str, float] = {}
    for row in result_plan.instances:
        g = by_name[(row.site, row.instance)]
        node = problem.nodes[g.node]
        watts = g.power_idle_w + (g.power_busy_w - g.power_idle_w) * row.utilization
        assert row.power_w == pytest.approx(watts)
        sites = max(1, len(row.sites))
        grams = watts * row.count * sites * node.carbon_intensity_g_per_kwh / 1000.0
        assert row.carbon_g_per_hour == pytest.approx(grams)
        total += grams
        tiers[row.tier] = tiers.get(row.tier, 0.0) + grams
    assert result_plan.carbon.total_g_per_hour == pytest.approx(total)
    assert {t: c.g_per_hour for t, c in result_plan.carbon.by_tier.items()} == pytest.approx(tiers)


@pytest.mark.parametrize("sharing", ["exclusive", "shared"])
@pytest.mark.parametrize("seed", [1, 3, 5, 11])
def test_the_plan_reports_what_its_instances_emit(seed: int, sharing: str) -> None:
    bundle = random_bundle(seed, sharing=sharing, carbon=True)
    problem = compile_problem(bundle)
    result_plan = run_strategy(problem, choose_model(problem), "optimal")
    assert result_plan.feasible and result_plan.carbon is not None
    assert result_plan.carbon.intensity == "daily mean" and not result_plan.carbon.uncounted
    _check_report(problem, result_plan)


def test_without_carbon_figures_the_plan_reports_none_and_a_carbon_objective_is_refused() -> None:
    bundle = random_bundle(3, sharing="shared")
    assert plan(bundle, baselines=False).carbon is None
    with pytest.raises(ValueError, match=r"needs the power of every instance group .* missing for cloud/vm"):
        plan(bundle, baselines=False, objective=Objective("carbon"))


def test_figures_for_some_groups_only_are_counted_and_the_rest_named() -> None:
    bundle = random_bundle(3, sharing="shared", carbon=True)
    for site in bundle.topology.spec.sites:
        if site.tier.value == "hub":
            site.carbon_intensity_g_per_kwh = None
    result = plan(bundle, baselines=False)
    assert any("not counted" in w and "hub0/box" in w for w in result.warnings)
    used_hubs = [row for row in result.instances if row.tier == "hub"]
    assert all(row.carbon_g_per_hour is None for row in used_hubs)
    assert sorted(result.carbon.uncounted) == sorted(f"{row.site}/{row.instance}" for row in used_hubs)
    with pytest.raises(ValueError, match="hub0/box"):
        plan(bundle, baselines=False, objective=Objective("cost", carbon_budget_g_per_hour=100.0))


def _twin_hubs(seed: int, sharing: str):
    """The random instance with its second hub made a copy of its first (None: it has one hub), so
    that the two are planned as one class of identical sites."""
    bundle = random_bundle(seed, sharing=sharing, carbon=True)
    sites = bundle.topology.spec.sites
    if len(sites) < 3:
        return None
    sites[2] = sites[1].model_copy(update={"name": sites[2].name}, deep=True)
    return bundle


def test_sites_on_different_grids_are_not_planned_as_one_class() -> None:
    bundle = _twin_hubs(0, "shared")
    assert len(compile_problem(bundle).nodes) == 2
    bundle.topology.spec.sites[2].carbon_intensity_g_per_kwh = 999.0
    assert len(compile_problem(bundle).nodes) == 3
    bundle = _twin_hubs(0, "shared")
    bundle.topology.spec.sites[2].instances[0].power_w.busy += 1
    assert len(compile_problem(bundle).nodes) == 3


def test_a_series_is_read_at_the_time_asked() -> None:
    bundle = random_bundle(1, sharing="shared", carbon=True)
    for site in bundle.topology.spec.sites:
        site.carbon_intensity_g_per_kwh = [IntensityStep.model_validate({"from": "00:00", "g_per_kwh": 100}),
                                           IntensityStep.model_validate({"from": "12:00", "g_per_kwh": 500})]
    night = plan(bundle, baselines=False, carbon_at=time(3, 0))
    noon = plan(bundle, baselines=False, carbon_at=time(12, 0))
    mean = plan(bundle, baselines=False)
    assert night.carbon.intensity == "at 03:00 UTC" and mean.carbon.intensity == "daily mean"
    assert noon.carbon.total_g_per_hour == pytest.approx(5 * night.carbon.total_g_per_hour)
    assert mean.carbon.total_g_per_hour == pytest.approx(3 * night.carbon.total_g_per_hour)


def test_verify_finds_a_plan_over_its_budget() -> None:
    bundle = random_bundle(3, sharing="shared", carbon=True)
    problem = compile_problem(bundle, aggregate=False)
    accuracy = choose_model(problem)
    solution = solve_milp(problem, accuracy).solution
    emitted = carbon_g_per_hour(problem, solution)
    tight = dataclasses.replace(problem, objective=Objective("cost", carbon_budget_g_per_hour=emitted * 0.9))
    assert verify(problem, solution, accuracy) == []
    assert any("above the budget" in v for v in verify(tight, solution, accuracy))
    stats = SolverStats(name="test", status="optimal", gap=0.0, seconds=0.0)
    assert build_plan(tight, solution, strategy="optimal", stats=stats, accuracy=accuracy).carbon.budget_g_per_hour \
        == pytest.approx(emitted * 0.9)


# --- against brute force ----------------------------------------------------------------------------


def _flat(seed: int, sharing: str):
    flat = compile_problem(random_bundle(seed, sharing=sharing, carbon=True), aggregate=False)
    return flat, choose_model(flat)


def _with(problem, objective: Objective):
    return dataclasses.replace(problem, objective=objective)


@pytest.mark.parametrize("sharing", ["exclusive", "shared"])
@pytest.mark.parametrize("seed", SEEDS)
def test_least_carbon_then_least_cost_matches_brute_force(seed: int, sharing: str) -> None:
    flat, accuracy = _flat(seed, sharing)
    least = brute_force(flat, accuracy, cost_weight=0.0, carbon_weight=1.0)
    result = run_strategy(_with(flat, Objective("carbon")), accuracy, "optimal", gap_rel=1e-7)
    if math.isinf(least):
        assert not result.feasible
        return
    cheapest = brute_force(flat, accuracy, carbon_budget=least * (1 + 1e-6) + 1e-6)
    assert result.feasible and result.objective == "carbon"
    assert result.carbon.total_g_per_hour == pytest.approx(least, rel=1e-5, abs=1e-6)
    assert result.cost.total_per_hour == pytest.approx(cheapest, rel=1e-5, abs=1e-6)
    assert "least carbon" in result.solver.notes[0]


@pytest.mark.parametrize("sharing", ["exclusive", "shared"])
@pytest.mark.parametrize("seed", SEEDS)
def test_cost_plus_priced_carbon_matches_brute_force(seed: int, sharing: str) -> None:
    flat, accuracy = _flat(seed, sharing)
    weight = PRICE_PER_TONNE / 1e6
    expected = brute_force(flat, accuracy, carbon_weight=weight)
    problem = _with(flat, Objective("cost+carbon", PRICE_PER_TONNE))
    result = solve_milp(problem, accuracy)
    decomposed = run_strategy(problem, accuracy, "optimal", gap_rel=1e-7)
    if math.isinf(expected):
        assert result.solution is None and not decomposed.feasible
        return
    assert result.stats.status == "optimal"
    assert result.stats.objective == pytest.approx(expected, rel=1e-5, abs=1e-6)
    stats = SolverStats(name="test", status="optimal", gap=0.0, seconds=0.0)
    priced = build_plan(problem, result.solution, strategy="optimal", stats=stats, accuracy=accuracy)
    for p in (priced, decomposed):
        assert p.cost.total_per_hour + p.carbon.cost_per_hour == pytest.approx(expected, rel=1e-5, abs=1e-6)
        assert p.carbon.cost_per_hour == pytest.approx(weight * p.carbon.total_g_per_hour)
    assert verify(problem, result.solution, accuracy) == []


@pytest.mark.parametrize("sharing", ["exclusive", "shared"])
@pytest.mark.parametrize("seed", SEEDS)
def test_a_carbon_budget_matches_brute_force(seed: int, sharing: str) -> None:
    """The budget half way from the least carbon to what the cheapest plan emits (so that it binds
    where they differ): the cheapest plan within it, as enumeration finds it; below the least carbon,
    no plan, and the explanation names the budget and the least carbon reachable."""
    flat, accuracy = _flat(seed, sharing)
    least = brute_force(flat, accuracy, cost_weight=0.0, carbon_weight=1.0)
    if math.isinf(least):
        return
    cheapest = run_strategy(flat, accuracy, "optimal", gap_rel=1e-7)
    budget = max(least * (1 + 1e-4), (least + cheapest.carbon.total_g_per_hour) / 2)
    expected = brute_force(flat, accuracy, carbon_budget=budget)
    problem = _with(flat, Objective("cost", carbon_budget_g_per_hour=budget))
    for result in (run_strategy(problem, accuracy, "optimal", gap_rel=1e-7), run_strategy(problem, accuracy, "cloud-only")):
        if result.strategy == "optimal":
            assert result.feasible and result.cost.total_per_hour == pytest.approx(expected, rel=1e-5, abs=1e-6)
        if result.feasible:
            assert result.carbon.total_g_per_hour <= budget * (1 + 1e-6)
            assert result.cost.total_per_hour >= expected - 1e-6
    joint = solve_milp(problem, accuracy)
    assert joint.stats.objective == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert verify(problem, joint.solution, accuracy) == []
    below = _with(flat, Objective("cost", carbon_budget_g_per_hour=least * 0.9))
    refused = run_strategy(below, accuracy, "optimal")
    assert not refused.feasible and len(refused.explanation) == 1
    said = re.fullmatch(r"carbon budget ([0-9.]+) gCO2/h \(--carbon-budget\) unreachable: the least carbon any plan "
                        r"reaches within the other limits is ([0-9.]+) gCO2/h", refused.explanation[0])
    assert said, refused.explanation
    assert float(said[1]) == pytest.approx(least * 0.9, abs=0.006)
    assert float(said[2]) == pytest.approx(least, abs=0.006)


@pytest.mark.parametrize("sharing", ["exclusive", "shared"])
@pytest.mark.parametrize("seed", SEEDS)
def test_identical_sites_bracket_the_carbon_priced_optimum(seed: int, sharing: str) -> None:
    """Identical sites decided alike, with carbon priced: the plan is at or above the optimum and the
    merged relaxation's bound (its carbon counted per class) at or below it."""
    bundle = _twin_hubs(seed, sharing)
    if bundle is None:
        return
    assert len(compile_problem(bundle).nodes) == 2
    flat = compile_problem(bundle, aggregate=False)
    accuracy = choose_model(flat)
    weight = PRICE_PER_TONNE / 1e6
    expected = brute_force(flat, accuracy, carbon_weight=weight)
    problem = _with(compile_problem(bundle), Objective("cost+carbon", PRICE_PER_TONNE))
    result = run_strategy(problem, accuracy, "optimal")
    if math.isinf(expected) or not result.feasible:
        assert not result.feasible
        return
    assert result.cost.total_per_hour + result.carbon.cost_per_hour >= expected - 1e-6
    assert result.solver.bound is not None and result.solver.bound <= expected + 1e-6


def test_pooling_near_identical_instances_is_left_to_the_cost_objective() -> None:
    """Two instance groups alike but for speed and power: pooling (which may hand a load to the
    other group at the same cost, not the same carbon) applies to the cost objective only; with
    carbon the plan is enumeration's."""
    variant = {"name": "a", "accuracy": 90, "output_kb": 1, "memory_mb": 100,
               "profiles": [{"hardware": "fast", "latency_ms": {1: 10.0}}, {"hardware": "slow", "latency_ms": {1: 12.0}}]}
    zoo = {"tasks": [{"name": "t", "variants": [variant]}]}
    groups = [{"name": "fast", "hardware": "fast", "price_per_hour": 1.0, "count": 2, "power_w": {"idle": 50, "busy": 300}},
              {"name": "slow", "hardware": "slow", "price_per_hour": 1.0, "count": 2, "power_w": {"idle": 5, "busy": 40}}]
    topology = {"sharing": "exclusive", "sites": [{"name": "dc", "tier": "cloud", "instances": groups,
                                                   "carbon_intensity_g_per_kwh": 400}]}
    workflow = {"sources": [{"name": "cams", "rate_per_s": 120, "payload_kb": 1, "sites": ["dc"]}],
                "stages": [{"name": "s", "task": "t", "inputs": ["cams"]}], "slo": {"accuracy": 50}}
    flat = compile_problem(make_bundle(zoo, topology, workflow), aggregate=False)
    accuracy = choose_model(flat)
    pooled_cost = solve_placement(flat, accuracy)
    assert any("pooled" in note for note in pooled_cost.stats.notes)
    problem = _with(flat, Objective("carbon"))
    least = solve_placement(problem, accuracy)
    assert not any("pooled" in note for note in least.stats.notes)
    assert least.stats.objective == pytest.approx(brute_force(flat, accuracy, cost_weight=0.0, carbon_weight=1.0))
