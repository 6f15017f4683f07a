"""The MILP against exhaustive enumeration on small random instances, in both sharing modes."""

from __future__ import annotations

import copy
import math

import pytest

from jellybean.optimizer.accuracy import choose_model
from jellybean.optimizer.evaluate import build_plan, verify
from jellybean.optimizer.milp import solve_milp
from jellybean.optimizer.planner import run_strategy
from jellybean.optimizer.problem import compile_problem
from jellybean.spec.bundle import Bundle

from .bruteforce import admissible, brute_force
from .random_instances import make_bundle, random_bundle, random_sinks_bundle

SEEDS = range(14)


@pytest.mark.parametrize("sharing", ["exclusive", "shared"])
@pytest.mark.parametrize("seed", SEEDS)
def test_milp_matches_brute_force(seed: int, sharing: str) -> None:
    bundle = random_bundle(seed, sharing=sharing)
    flat = compile_problem(bundle, aggregate=False)
    accuracy = choose_model(flat)
    expected = brute_force(flat, accuracy)
    result = solve_milp(flat, accuracy)
    if math.isinf(expected):
        assert result.solution is None, f"brute force finds no plan, the MILP found {result.stats.objective}"
        return
    assert result.solution is not None, f"brute force finds {expected:.4f} $/h, the MILP none ({result.stats.status})"
    assert result.stats.status == "optimal"
    plan = build_plan(flat, result.solution, strategy="optimal", stats=result.stats, accuracy=accuracy)
    assert plan.cost.total_per_hour == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert verify(flat, result.solution, accuracy) == []


def identical_hubs(seed: int, sharing: str) -> Bundle | None:
    """The random instance of ``seed`` with every hub a copy of the first (instances, uplink), so
    that the planner merges them into one class of identical sites; None when it has one hub."""
    bundle = random_bundle(seed, sharing=sharing)
    topology = bundle.topology.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    first, *others = [site for site in topology["sites"] if site["tier"] == "hub"]
    if not others:
        return None
    for hub in others:
        hub["instances"], hub["uplink"] = copy.deepcopy(first["instances"]), copy.deepcopy(first["uplink"])
    return make_bundle(bundle.zoo.spec.model_dump(mode="json", by_alias=True, exclude_none=True), topology,
                       bundle.workflow.spec.model_dump(mode="json", by_alias=True, exclude_none=True))


#: The first 14 seeds whose instance has two hubs (four of them infeasible at their accuracy target).
SYMMETRIC_SEEDS = [seed for seed in range(40) if identical_hubs(seed, "shared") is not None][:14]


@pytest.mark.parametrize("sharing", ["exclusive", "shared"])
@pytest.mark.parametrize("seed", SYMMETRIC_SEEDS)
def test_aggregated_plan_brackets_the_optimum(seed: int, sharing: str) -> None:
    """On instances with identical hubs, planned as one class of identical sites decided alike: the
    plan is feasible exactly when enumeration over every site finds one (a symmetric solve that says
    "infeasible" while a plan exists is a wrong answer to the user), costs at or above the optimum,
    and the reported lower bound is at or below it; a zero gap means the plan is optimal."""
    bundle = identical_hubs(seed, sharing)
    flat = compile_problem(bundle, aggregate=False)
    accuracy = choose_model(flat)
    expected = brute_force(flat, accuracy)
    problem = compile_problem(bundle)
    assert any(n.total > 1 for n in problem.nodes), "the hubs must be merged into one class"
    plan = run_strategy(problem, accuracy, "optimal")
    if math.isinf(expected):
        assert not plan.feasible
        return
    assert plan.feasible, f"brute force finds {expected:.4f} $/h, the symmetric solve none: {plan.explanation}"
    cost = plan.cost.total_per_hour
    assert cost >= expected - 1e-6
    assert plan.solver.bound is not None and plan.solver.bound <= expected + 1e-6
    if plan.solver.gap is not None and plan.solver.gap <= 1e-9:
        assert cost == pytest.approx(expected, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("sharing", ["exclusive", "shared"])
@pytest.mark.parametrize("seed", SEEDS)
def test_both_optimal_paths_agree_with_brute_force(seed: int, sharing: str) -> None:
    """Branch and bound over variant combinations (the default) and the joint MILP (used when the
    combinations are too many) find the same optimum as enumeration."""
    from jellybean.optimizer.planner import _optimal_by_combinations, _optimal_joint, admissible_combinations

    bundle = random_bundle(seed, sharing=sharing)
    flat = compile_problem(bundle, aggregate=False)
    accuracy = choose_model(flat)
    expected = brute_force(flat, accuracy)
    joint = _optimal_joint(flat, accuracy, time_limit_s=60, solver="highs", gap_rel=1e-7, explain_infeasible=False)
    combos = admissible_combinations(flat, accuracy)
    assert combos is not None
    if not combos:
        assert math.isinf(expected)
        return
    decomposed = _optimal_by_combinations(flat, accuracy, combos, time_limit_s=60, solver="highs", gap_rel=1e-7,
                                          explain_infeasible=False)
    for plan in (joint, decomposed):
        if math.isinf(expected):
            assert not plan.feasible
        else:
            assert plan.feasible and plan.solver.status == "optimal"
            assert plan.cost.total_per_hour == pytest.approx(expected, rel=1e-5, abs=1e-6)


# --- several sinks, stage minimums ------------------------------------------------------------------

SINK_SEEDS = range(12)


@pytest.mark.parametrize("sharing", ["exclusive", "shared"])
@pytest.mark.parametrize("seed", SINK_SEEDS)
def test_several_sinks_and_minimums_match_brute_force(seed: int, sharing: str) -> None:
    """Two sinks with targets of their own (a fork from one stage, or two chains apart) and perhaps a
    stage minimum: the MILP, the joint MILP and the decomposition over combinations all find
    enumeration's optimum, and its plan meets every sink's target and every minimum."""
    from jellybean.optimizer.planner import _optimal_by_combinations, _optimal_joint, admissible_combinations

    bundle = random_sinks_bundle(seed, sharing=sharing)
    flat = compile_problem(bundle, aggregate=False)
    assert len(flat.sinks) == 2
    accuracy = choose_model(flat)
    expected = brute_force(flat, accuracy)
    result = solve_milp(flat, accuracy)
    if math.isinf(expected):
        assert result.solution is None, f"brute force finds no plan, the MILP found {result.stats.objective}"
    else:
        assert result.solution is not None and result.stats.status == "optimal"
        plan = build_plan(flat, result.solution, strategy="optimal", stats=result.stats, accuracy=accuracy)
        assert plan.cost.total_per_hour == pytest.approx(expected, rel=1e-5, abs=1e-6)
        assert verify(flat, result.solution, accuracy) == []
        assert admissible(flat, accuracy, result.solution.models)
        assert [s.stage for s in plan.sinks] == ["s2", "s3"]
        for reported, target in zip(plan.sinks, flat.sinks):
            assert reported.accuracy_target == target.accuracy_target
            assert reported.accuracy >= target.accuracy_target - 1e-9
        for minimum in plan.stage_minimums:
            assert minimum.accuracy >= minimum.min_accuracy
    joint = _optimal_joint(flat, accuracy, time_limit_s=60, solver="highs", gap_rel=1e-7, explain_infeasible=False)
    combos = admissible_combinations(flat, accuracy)
    assert combos is not None
    assert all(admissible(flat, accuracy, c) for c in combos)
    plans = [joint]
    if combos:
        plans.append(_optimal_by_combinations(flat, accuracy, combos, time_limit_s=60, solver="highs", gap_rel=1e-7,
                                              explain_infeasible=False))
    for plan in plans:
        if math.isinf(expected):
            assert not plan.feasible
        else:
            assert plan.feasible and plan.solver.status == "optimal"
            assert plan.cost.total_per_hour == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_the_sink_instances_bind_somewhere() -> None:
    """The instances above test something: most have a plan, some do not, and the targets and
    minimums rule combinations out."""
    from jellybean.optimizer.accuracy import enumerate_combinations

    feasible, ruled_out, minimums, shapes = 0, 0, 0, set()
    for seed in SINK_SEEDS:
        bundle = random_sinks_bundle(seed, sharing="shared")
        shapes.add(len(bundle.workflow.spec.sources))  # 1: a fork from s1; 2: two chains apart
        flat = compile_problem(bundle, aggregate=False)
        accuracy = choose_model(flat)
        ruled_out += sum(not admissible(flat, accuracy, c) for c in enumerate_combinations(flat))
        minimums += any(info.min_accuracy is not None for info in flat.stages.values())
        feasible += not math.isinf(brute_force(flat, accuracy))
    assert ruled_out > 0 and minimums > 0 and shapes == {1, 2}
    assert len(SINK_SEEDS) // 2 <= feasible < len(SINK_SEEDS)
