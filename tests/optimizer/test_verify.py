"""The checker (jellybean.optimizer.evaluate.verify / check_solution) and the pricing only read a
Solution: flows they derive for a solution that gives none are returned, never written into it."""

from __future__ import annotations

import copy
import dataclasses

import pytest

from jellybean.optimizer.accuracy import choose_model
from jellybean.optimizer.evaluate import build_plan, check_solution, proportional_flows, verify
from jellybean.optimizer.milp import solve_milp
from jellybean.optimizer.plan import SolverStats
from jellybean.optimizer.problem import compile_problem
from tests.optimizer.random_instances import random_bundle


@pytest.fixture(scope="module")
def solved():
    problem = compile_problem(random_bundle(10, sharing="shared"), aggregate=False)  # traffic crosses sites
    accuracy = choose_model(problem)
    result = solve_milp(problem, accuracy, time_limit_s=30)
    assert result.solution is not None
    return problem, accuracy, result.solution


def test_verify_leaves_a_solution_without_flows_as_it_was(solved) -> None:
    problem, accuracy, solution = solved
    bare = dataclasses.replace(solution, flows_up=None, flows_down=None, notes=[])
    before = copy.deepcopy(bare)
    first = verify(problem, bare, accuracy)
    assert bare == before and bare.flows_up is None and bare.flows_down is None
    # Routed proportionally (JellyBean's semantics) this MILP placement sends data down the tiers:
    # found again on a second look, since nothing was written in between.
    assert first == verify(problem, bare, accuracy) == ["traffic flows down the tiers, which the topology does not allow"]
    assert verify(problem, solution, accuracy) == []  # on the MILP's own flows it is valid


def test_check_solution_returns_the_flows_it_checked(solved) -> None:
    problem, accuracy, solution = solved
    bare = dataclasses.replace(solution, flows_up=None, flows_down=None, notes=[])
    checked = check_solution(problem, bare, accuracy)
    assert checked.violations == verify(problem, bare, accuracy)
    assert (checked.flows_up, checked.flows_down) == proportional_flows(problem, bare)
    assert checked.flows_up  # the plan moves data between sites: the routing is not empty
    # A solution with flows of its own is checked on those, untouched.
    own = copy.deepcopy(solution)
    checked = check_solution(problem, own, accuracy)
    assert own == solution
    assert checked.flows_up == solution.flows_up and checked.flows_down == (solution.flows_down or {})


def test_a_violation_is_found_without_touching_the_solution(solved) -> None:
    problem, accuracy, solution = solved
    broken = copy.deepcopy(solution)
    broken.flows_up = {}  # the traffic goes nowhere
    before = copy.deepcopy(broken)
    assert any("msg/s arrive" in v for v in verify(problem, broken, accuracy))
    assert broken == before


def test_pricing_a_solution_leaves_it_as_it_was(solved) -> None:
    problem, accuracy, solution = solved
    bare = dataclasses.replace(solution, flows_up=None, flows_down=None, notes=[])
    before = copy.deepcopy(bare)
    stats = SolverStats(name="test", status="heuristic", gap=None, seconds=0.0)
    plan = build_plan(problem, bare, strategy="test", stats=stats, accuracy=accuracy)
    assert plan.feasible and plan.cost is not None
    assert bare == before
