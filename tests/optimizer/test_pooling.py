"""Near-identical instances pooled (jellybean.optimizer.milp.solve_placement): on JellyBean instances
scaled up with jittered copies (jellybean.generate.jellybean_scaled), every placement it returns costs
what the true MILP's proven optimum costs, keeps every instance within its limit, and passes the
independent checker; the pooled bound never exceeds the true optimum. And the planner keeps to its
time limit as a whole: baselines reached after it are reported as not run."""

from __future__ import annotations

from pathlib import Path

import pytest

from jellybean.generate.jellybean_scaled import scale_instance
from jellybean.importers.jellybean_csv import import_jellybean, write_documents
from jellybean.optimizer import plan
from jellybean.optimizer.accuracy import choose_model
from jellybean.optimizer.evaluate import verify
from jellybean.optimizer.milp import instance_pools, solve_milp, solve_placement, within_limits
from jellybean.optimizer.planner import admissible_combinations
from jellybean.optimizer.problem import compile_problem
from jellybean.spec import load_bundle

VQA_DATA = Path(__file__).resolve().parents[1] / "data" / "jellybean-vqa-medium"


def _scaled(tmp_path: Path, copies: int, seed: int):  # noqa: ANN202 - a Bundle
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


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pooled_placements_cost_the_true_optimum(tmp_path: Path, seed: int) -> None:
    problem = compile_problem(_scaled(tmp_path, 3, seed), sharing="exclusive")
    accuracy = choose_model(problem)
    for models in admissible_combinations(problem, accuracy):
        usable = [o for o in problem.options if models[o.stage] == o.variant]
        assert instance_pools(problem, usable)  # copies of one worker pool together
        true = solve_milp(problem, accuracy, fixed_models=models, gap_rel=1e-9, time_limit_s=120)
        pooled_bound = solve_milp(problem, accuracy, fixed_models=models, gap_rel=1e-9, time_limit_s=120, pooled=True)
        fast = solve_placement(problem, accuracy, fixed_models=models, gap_rel=1e-6, time_limit_s=120)
        assert true.stats.status == "optimal" and fast.stats.status == "optimal"
        assert pooled_bound.stats.objective <= true.stats.objective * (1 + 1e-9)  # a relaxation
        assert fast.stats.objective == pytest.approx(true.stats.objective, rel=2e-6)
        assert fast.stats.bound <= true.stats.objective * (1 + 1e-9)
        assert within_limits(problem, fast.solution)
        assert verify(problem, fast.solution, accuracy) == []


def test_the_time_limit_holds_for_the_whole_run_baselines_included(tmp_path: Path) -> None:
    bundle = _scaled(tmp_path, 3, 0)
    hurried = plan(bundle, sharing="exclusive", time_limit_s=1e-3)
    assert not hurried.feasible or hurried.solver.gap is not None
    assert hurried.baselines and all(not b.feasible and "time limit of 0.001 s was spent" in b.reason
                                     for b in hurried.baselines)
    relaxed = plan(bundle, sharing="exclusive", time_limit_s=60)
    assert relaxed.feasible and relaxed.solver.status == "optimal"
    assert all(b.reason == "" or "time limit" not in b.reason for b in relaxed.baselines)
