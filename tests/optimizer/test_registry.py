"""Strategies come from a registry (jellybean.optimizer.planner.REGISTRY, register_strategy): the
names, their order, the dispatch of run_strategy and plan, and the refusals."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from jellybean.cli import build_parser
from jellybean.optimizer import plan
from jellybean.optimizer.accuracy import choose_model
from jellybean.optimizer.evaluate import build_plan
from jellybean.optimizer.plan import SolverStats
from jellybean.optimizer.planner import REGISTRY, STRATEGIES, StrategyOptions, register_strategy, run_strategy
from jellybean.optimizer.problem import compile_problem
from tests.optimizer.random_instances import random_bundle

NAME = "nothing-at-all"


@pytest.fixture
def calls() -> Iterator[list[StrategyOptions]]:
    """A strategy registered for one test (and taken out again): it plans nothing and records how it
    was called."""
    seen: list[StrategyOptions] = []

    @register_strategy(NAME)
    def _nothing(problem, accuracy, options):
        seen.append(options)
        stats = SolverStats(name="test", status="infeasible", gap=None, seconds=0.0)
        return build_plan(problem, None, strategy=NAME, stats=stats, accuracy=accuracy,
                          explanation=["this strategy plans nothing"])

    try:
        yield seen
    finally:
        REGISTRY.pop(NAME)
        STRATEGIES.remove(NAME)


def test_the_registry_holds_the_public_strategies_in_order() -> None:
    assert STRATEGIES == list(REGISTRY) == ["optimal", "cloud-only", "edge-first", "two-stage", "jellybean"]
    parser = build_parser()  # the CLI's --strategy choices are the registry's names
    for name in STRATEGIES:
        assert parser.parse_args(["plan", "-f", "x", "--strategy", name]).strategy == name
    with pytest.raises(SystemExit):
        parser.parse_args(["plan", "-f", "x", "--strategy", "greedy"])


def test_run_strategy_calls_the_registered_function(calls: list[StrategyOptions]) -> None:
    problem = compile_problem(random_bundle(1, sharing="shared"))
    result = run_strategy(problem, choose_model(problem), NAME, time_limit_s=7.0, solver="cbc", gap_rel=1e-3,
                          explain_infeasible=False)
    assert result.strategy == NAME and not result.feasible
    assert result.explanation == ["this strategy plans nothing"]
    (options,) = calls
    assert (options.time_limit_s, options.solver, options.gap_rel, options.explain_infeasible) == (7.0, "cbc", 1e-3,
                                                                                                    False)


def test_plan_runs_a_registered_strategy_as_a_baseline_and_as_the_main_one(calls: list[StrategyOptions]) -> None:
    bundle = random_bundle(1, sharing="shared")
    main = plan(bundle)
    assert main.feasible and main.strategy == "optimal"
    assert [b.strategy for b in main.baselines] == ["cloud-only", "edge-first", "two-stage", "jellybean", NAME]
    (mine,) = [b for b in main.baselines if b.strategy == NAME]
    assert not mine.feasible and mine.reason == "this strategy plans nothing"
    alone = plan(bundle, strategy=NAME, baselines=False)
    assert alone.strategy == NAME and not alone.feasible
    assert len(calls) == 2


def test_a_name_is_registered_once() -> None:
    with pytest.raises(ValueError, match="strategy 'optimal' is registered already"):
        register_strategy("optimal")(lambda problem, accuracy, options: None)
    assert STRATEGIES.count("optimal") == 1


def test_an_unknown_strategy_is_refused_with_the_choices() -> None:
    bundle = random_bundle(1, sharing="shared")
    with pytest.raises(ValueError, match=r"unknown strategy 'greedy'; choose one of optimal, cloud-only, "):
        plan(bundle, strategy="greedy")
    problem = compile_problem(bundle)
    with pytest.raises(ValueError, match=r"unknown strategy 'greedy'; choose one of optimal, "):
        run_strategy(problem, choose_model(problem), "greedy")
