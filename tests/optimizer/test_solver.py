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
