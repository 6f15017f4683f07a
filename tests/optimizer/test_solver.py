"""The solver adapter (jellybean.optimizer.solver): one reading of a solve's outcome, and a fallback
from HiGHS to CBC that is stated in the result (and so in the plan), never silent."""

from __future__ import annotations

import sys

import pulp
import pytest

from jellybean.optimizer import plan
from jellybean.optimizer.accuracy import choose_model
from jellybean.optimizer.planner import run_strategy
from jellybean.optimizer.problem import compile_problem
from jellybean.optimizer.solver import solve, solver_name
from tests.optimizer.random_instances import random_bundle


def _knapsack() -> pulp.LpProblem:
    """max 5a + 4b + 3c s.t. 2a + 3b + c <= 5, binaries: optimum a = b = 1 (9; a = c = 1 gives 8), as a minimum."""
    lp = pulp.LpProblem("knapsack", pulp.LpMinimize)
    a, b, c = (lp.add_variable(name, cat="Binary") for name in "abc")
    lp += 2 * a + 3 * b + c <= 5, "weight"
    lp += -(5 * a + 4 * b + 3 * c)
    return lp


@pytest.fixture
def no_highs(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import highspy`` fails, as on a machine without it."""
    monkeypatch.setitem(sys.modules, "highspy", None)


def test_highs_solves_and_reports_no_fallback() -> None:
    outcome = solve(_knapsack(), time_limit_s=10, gap_rel=1e-9)
    assert outcome.fallback is None
    assert outcome.stats.name == "HiGHS" and outcome.stats.status == "optimal"
    assert outcome.stats.objective == pytest.approx(-9.0)
    assert outcome.values is not None and [round(outcome.values[v]) for v in "abc"] == [1, 1, 0]
    assert (outcome.stats.variables, outcome.stats.constraints) == (3, 1)
    assert not any("CBC" in note for note in outcome.stats.notes)


def test_without_highs_cbc_solves_and_the_outcome_says_so(no_highs: None) -> None:
    outcome = solve(_knapsack(), solver="highs", time_limit_s=10, gap_rel=1e-9)
    assert outcome.stats.name == "CBC" and outcome.stats.status == "optimal"
    assert outcome.stats.objective == pytest.approx(-9.0)
    assert outcome.fallback is not None and "HiGHS" in outcome.fallback and "CBC" in outcome.fallback
    assert outcome.fallback in outcome.stats.notes
    assert solver_name("highs") == "CBC"


def test_cbc_asked_for_is_no_fallback() -> None:
    outcome = solve(_knapsack(), solver="cbc", time_limit_s=10)
    assert outcome.stats.name == "CBC" and outcome.fallback is None
    assert outcome.stats.objective == pytest.approx(-9.0)


def test_an_unknown_solver_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown solver 'gurobi'"):
        solve(_knapsack(), solver="gurobi")


def test_the_plan_states_the_fallback_and_costs_the_same(no_highs: None, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = random_bundle(1, sharing="shared")
    fallback = plan(bundle, baselines=False)
    assert fallback.solver.name == "CBC"
    assert any("solved with CBC instead" in note for note in fallback.solver.notes)
    monkeypatch.undo()  # HiGHS back
    native = plan(bundle, baselines=False)
    assert native.solver.name == "HiGHS" and not any("CBC" in note for note in native.solver.notes)
    assert fallback.cost.total_per_hour == pytest.approx(native.cost.total_per_hour, rel=1e-6)


def test_the_routing_lp_of_edge_first_states_its_fallback(no_highs: None) -> None:
    problem = compile_problem(random_bundle(1, sharing="shared"))
    result = run_strategy(problem, choose_model(problem), "edge-first")
    assert result.feasible
    assert any(note.startswith("routing: ") and "CBC" in note for note in result.solver.notes)


def _cover() -> pulp.LpProblem:
    """Pick items (near-equal weights, costs rising by index) covering 17.5, or pay 10 per missing unit."""
    model = pulp.LpProblem("cover", pulp.LpMinimize)
    picks = [pulp.LpVariable(f"x{i}", cat="Binary") for i in range(30)]
    short = pulp.LpVariable("short", lowBound=0)
    model += pulp.lpSum((1 + 0.001 * i) * x for i, x in enumerate(picks)) + 10 * short
    model += pulp.lpSum((1 + 0.01 * ((7 * i) % 13)) * x for i, x in enumerate(picks)) + short >= 17.5
    return model


def test_a_start_is_offered_to_highs_completed_and_kept() -> None:
    """The first eighteen items, given without the shortfall variable: HiGHS completes the start (no
    shortfall) and, told to stop at the first plan under a generous target, returns exactly it."""
    start = {f"x{i}": 1.0 for i in range(18)}
    started = solve(_cover(), time_limit_s=10, gap_rel=1e-9, start=start, objective_target=1e9)
    assert started.stats.status == "feasible"  # stopped at the target, by the start
    assert started.stats.objective == pytest.approx(sum(1 + 0.001 * i for i in range(18)))
    assert started.values is not None and all(started.values[f"x{i}"] > 0.5 for i in range(18))
    optimal = solve(_cover(), time_limit_s=10, gap_rel=1e-9)
    assert optimal.stats.status == "optimal" and optimal.stats.objective < started.stats.objective


def test_a_start_naming_no_variable_of_the_model_is_ignored() -> None:
    outcome = solve(_cover(), time_limit_s=10, gap_rel=1e-9, start={"not_a_variable": 3.0})
    assert outcome.stats.status == "optimal"
