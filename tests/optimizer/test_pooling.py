"""Pools of near-identical instances (jellybean.optimizer.milp.solve_placement, the count relaxation):
the relaxation's bound never exceeds the true optimum, the restriction to its pool counts never
undercuts it, and the plans solve_placement returns cost the true optimum, keep every instance whole
and within its limit, and pass the independent checker. Checked against brute force on small random
instances with pools (both sharing modes), and against the true MILP's proven optimum on JellyBean
instances scaled up with jittered copies (jellybean.generate.jellybean_scaled). And the planner keeps to
its time limit as a whole: baselines reached after it are reported as not run."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from jellybean.generate.jellybean_scaled import scale_instance
from jellybean.importers.jellybean_csv import import_jellybean, write_documents
from jellybean.optimizer import plan
from jellybean.optimizer.accuracy import choose_model
from jellybean.optimizer.evaluate import build_plan, verify
from jellybean.optimizer.milp import instance_pools, solve_milp, solve_placement, usable_options, within_limits
from jellybean.optimizer.planner import Placements, admissible_combinations, run_strategy
from jellybean.optimizer.problem import compile_problem
from jellybean.spec import load_bundle

from .bruteforce import brute_force
from .random_instances import random_pooled_bundle

VQA_DATA = Path(__file__).resolve().parents[1] / "data" / "jellybean-vqa-medium"


def _scaled(tmp_path: Path, copies: int, seed: int):
    folder = scale_instance(VQA_DATA, tmp_path / f"jb{copies}-{seed}", copies, seed=seed)
    docs = write_documents(import_jellybean(folder, name=f"vqa{copies}"), tmp_path / f"docs{copies}-{seed}")
    return load_bundle(docs)


def test_the_scaled_instance_has_no_two_workers_alike_and_load_grows_with_it(tmp_path: Path) -> None:
    bundle = _scaled(tmp_path, 3, 0)
    problem = compile_problem(bundle, sharing="exclusive")
    assert len(problem.groups) == 27
    speeds = [tuple(round(o.throughput_per_s, 9) for o in problem.options if o.group == g.index) for g in problem.groups]
    assert len(set(speeds)) == 27  # jittered: nothing aggregates
    rates = {s.name: s.rate_per_s for s in bundle.workflow.spec.sources}
    assert all(3 * 0.6 * 40 <= r <= 3 * 1.2 * 40 for r in rates.values())


@pytest.mark.parametrize("sharing", ["exclusive", "shared"])
@pytest.mark.parametrize("seed", range(16))
def test_pooled_planning_matches_brute_force(seed: int, sharing: str) -> None:
    flat = compile_problem(random_pooled_bundle(seed, sharing=sharing), aggregate=False)
    accuracy = choose_model(flat)
    assert [len(p) for p in instance_pools(flat, usable_options(flat, None, None))] == [2, 2]
    expected = brute_force(flat, accuracy)
    relaxed = solve_milp(flat, accuracy, pooled=True, gap_rel=1e-9)
    fast = solve_placement(flat, accuracy, gap_rel=1e-7)
    planned = run_strategy(flat, accuracy, "optimal", gap_rel=1e-7)
    if math.isinf(expected):
        assert relaxed.stats.status == "infeasible" or relaxed.solution is None
        assert fast.solution is None and not planned.feasible
        return
    assert relaxed.stats.objective <= expected * (1 + 1e-7) + 1e-9  # a relaxation
    restricted = solve_milp(flat, accuracy, pool_counts=relaxed.pool_counts, gap_rel=1e-9)
    if restricted.solution is not None:  # a restriction: its plans are plans
        assert restricted.stats.objective >= expected * (1 - 1e-7) - 1e-9
        assert within_limits(flat, restricted.solution)
    assert fast.stats.status == "optimal"
    assert fast.stats.bound <= expected * (1 + 1e-7) + 1e-9
    assert within_limits(flat, fast.solution)
    assert verify(flat, fast.solution, accuracy) == []
    cost = build_plan(flat, fast.solution, strategy="optimal", stats=fast.stats, accuracy=accuracy)
    assert cost.cost.total_per_hour == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert planned.solver.status == "optimal"
    assert planned.cost.total_per_hour == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("sharing", ["exclusive", "shared"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pooled_placements_cost_the_true_optimum(tmp_path: Path, seed: int, sharing: str) -> None:
    problem = compile_problem(_scaled(tmp_path, 2, seed), sharing=sharing)
    accuracy = choose_model(problem)
    for models in admissible_combinations(problem, accuracy):
        assert instance_pools(problem, usable_options(problem, models, None))
        true = solve_milp(problem, accuracy, fixed_models=models, gap_rel=1e-9, time_limit_s=120)
        relaxed = solve_milp(problem, accuracy, fixed_models=models, gap_rel=1e-9, time_limit_s=120, pooled=True)
        fast = solve_placement(problem, accuracy, fixed_models=models, gap_rel=1e-6, time_limit_s=120)
        assert true.stats.status == "optimal" and fast.stats.status == "optimal"
        assert relaxed.stats.objective <= true.stats.objective * (1 + 1e-9)  # a relaxation
        assert fast.stats.objective == pytest.approx(true.stats.objective, rel=2e-6)
        assert fast.stats.bound <= true.stats.objective * (1 + 1e-9)
        assert within_limits(problem, fast.solution)
        assert verify(problem, fast.solution, accuracy) == []


@pytest.mark.parametrize("sharing", ["exclusive", "shared"])
def test_the_time_limit_holds_for_the_whole_run_baselines_included(tmp_path: Path, sharing: str) -> None:
    """Out of time at once, the plan is JellyBean's heuristic plan (found for the optimal strategy,
    so its baseline is reported too), bounded by the LP relaxation; every other baseline is reported
    as not run. With time, the optimum, every baseline run, none costlier than it."""
    bundle = _scaled(tmp_path, 3, 0)
    hurried = plan(bundle, sharing=sharing, time_limit_s=1e-3)
    assert hurried.feasible and hurried.solver.gap is not None and hurried.solver.bound is not None
    assert any("heuristic plan is cheaper" in note for note in hurried.solver.notes)
    by_name = {b.strategy: b for b in hurried.baselines}
    assert by_name["jellybean"].feasible and by_name["jellybean"].cost == hurried.cost
    assert all(not b.feasible and "time limit of 0.001 s was spent" in b.reason
               for name, b in by_name.items() if name != "jellybean")
    relaxed = plan(bundle, sharing=sharing, time_limit_s=60)
    assert relaxed.feasible and relaxed.solver.status == "optimal"
    assert all(b.reason == "" or "time limit" not in b.reason for b in relaxed.baselines)
    assert all(relaxed.cost.total_per_hour <= b.cost.total_per_hour for b in relaxed.baselines if b.feasible)
    assert relaxed.solver.bound <= relaxed.cost.total_per_hour <= hurried.cost.total_per_hour


def test_no_solve_starts_that_its_model_build_would_carry_past_the_limit(tmp_path: Path) -> None:
    """A model's build and hand-over to HiGHS run outside the solver's own time limit, so the branch and
    bound starts a solve only with more time left than twice the slowest build seen in the run. With
    builds known to take 100 s and 5 s to go, none starts: the heuristic's plan comes back at once,
    and without a bound its gap is unknown (said, not guessed); with builds known to be quick the
    same limit reaches the optimum."""
    bundle = _scaled(tmp_path, 2, 0)
    problem = compile_problem(bundle, sharing="exclusive")
    accuracy = choose_model(problem)
    slow = Placements()
    slow.slowest_build_s = 100.0
    began = time.perf_counter()
    hurried = run_strategy(problem, accuracy, "optimal", time_limit_s=5, placements=slow)
    assert time.perf_counter() - began < 5
    assert hurried.feasible and hurried.solver.gap is None and hurried.solver.bound is None
    assert any("no lower bound was reached" in note for note in hurried.solver.notes)
    quick = run_strategy(problem, accuracy, "optimal", time_limit_s=30, placements=Placements())
    assert quick.solver.status == "optimal" and quick.solver.bound is not None
    assert quick.cost.total_per_hour <= hurried.cost.total_per_hour
    assert quick.solver.bound <= quick.cost.total_per_hour * (1 + 1e-9)


def test_the_limit_counts_from_when_the_run_began(tmp_path: Path) -> None:
    """``started`` (the CLI passes when it began, before loading the documents): a run that began 10 s
    ago with a 5 s limit has no time left, and says so with the limit the user gave."""
    bundle = _scaled(tmp_path, 2, 0)
    late = plan(bundle, sharing="exclusive", time_limit_s=5, started=time.perf_counter() - 10)
    assert late.feasible and any("heuristic plan is cheaper" in note for note in late.solver.notes)
    assert all("time limit of 5 s was spent" in b.reason for b in late.baselines if b.strategy != "jellybean")


def test_a_placement_stopped_by_the_time_limit_is_no_proof_of_infeasibility(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every placement MILP stops without a plan (as at a time limit): the optimal strategy reports
    JellyBean's plan with the combinations' LP bound, not 'infeasible'."""
    from jellybean.optimizer import planner
    from jellybean.optimizer.milp import MilpResult
    from jellybean.optimizer.plan import SolverStats

    def stopped(self, problem, accuracy, **options):
        return MilpResult(None, SolverStats(name="HiGHS", status="time-limit", gap=None, seconds=0.0))

    monkeypatch.setattr(planner.Placements, "solve", stopped)
    problem = compile_problem(_scaled(tmp_path, 2, 1), sharing="shared")
    accuracy = choose_model(problem)
    result = run_strategy(problem, accuracy, "optimal")
    heuristic = run_strategy(problem, accuracy, "jellybean")
    assert result.feasible and result.solver.status == "feasible"
    assert result.cost.total_per_hour == pytest.approx(heuristic.cost.total_per_hour)
    assert 0 < result.solver.bound < result.cost.total_per_hour and result.solver.gap > 0
