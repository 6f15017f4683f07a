"""Several sinks, each with its own accuracy target and model, and stage minimums on a task's own
metric: every strategy meets each target and minimum, the joint MILP agrees with the decomposition
over admissible combinations (which reads the accuracy models directly), the plan reports each sink,
and what cannot be met is said per sink or per stage. (The MILP is checked against brute force with
several sinks and minimums in test_milp_bruteforce.py.)"""

from __future__ import annotations

import copy

import pytest

from jellybean.optimizer import plan as make_plan
from jellybean.optimizer.accuracy import choose_model, enumerate_combinations
from jellybean.optimizer.evaluate import verify
from jellybean.optimizer.planner import _optimal_by_combinations, _optimal_joint, admissible_combinations, run_strategy
from jellybean.optimizer.problem import compile_problem

from .random_instances import make_bundle


def variant(name: str, accuracy: float, latency_ms: float, output_kb: float = 1.0) -> dict:
    return {"name": name, "accuracy": accuracy, "output_kb": output_kb,
            "profiles": [{"hardware": "cpu", "latency_ms": {1: latency_ms}}]}


# A store: cameras -> detect -> classify ("vision"), microphones -> vad -> keywords ("keywords").
ZOO = {
    "tasks": [
        {"name": "detect", "metric": "mAP", "variants": [variant("d-small", 40, 10), variant("d-big", 48, 40)]},
        {"name": "classify", "variants": [variant("c1", 90, 5), variant("c2", 97, 20)]},
        {"name": "vad", "variants": [variant("v1", 95, 2)]},
        {"name": "kws", "variants": [variant("k1", 80, 5), variant("k2", 92, 30)]},
    ],
    # Vision is measured end to end: the table covers detect + classify, and nothing else.
    "accuracy_tables": [{"name": "vision-e2e", "tasks": ["detect", "classify"], "rows": [
        {"variants": ["d-small", "c1"], "accuracy": 60}, {"variants": ["d-small", "c2"], "accuracy": 66},
        {"variants": ["d-big", "c1"], "accuracy": 72}, {"variants": ["d-big", "c2"], "accuracy": 80}]}],
}
# Payload bytes alone on the links (no framing), so that the flows below are the documents' sizes.
TOPOLOGY = {"message_framing": False, "link_batch_wait_ms": 0, "sites": [
    {"name": "cloud", "tier": "cloud", "instances": [{"name": "vm", "hardware": "cpu", "price_per_hour": 1.0,
                                                      "max_count": 40}]},
    {"name": "store", "tier": "hub", "parent": "cloud", "uplink": {"up": {"cost_per_gb": 0.1}},
     "instances": [{"name": "box", "hardware": "cpu", "price_per_hour": 0.2, "count": 2}]},
]}


def workflow(vision: float, keywords: float, *, min_detect: float | None = None, outputs: list | None = None) -> dict:
    detect = {"name": "detect", "task": "detect", "inputs": ["cams"]}
    if min_detect is not None:
        detect["min_accuracy"] = min_detect
    return {
        "sources": [{"name": "cams", "rate_per_s": 40, "payload_kb": 50, "sites": ["store"]},
                    {"name": "mics", "kind": "microphone", "rate_per_s": 40, "payload_kb": 20, "sites": ["store"]}],
        "stages": [detect, {"name": "vision", "task": "classify", "inputs": ["detect"]},
                   {"name": "vad", "task": "vad", "inputs": ["mics"]},
                   {"name": "keywords", "task": "kws", "inputs": ["vad"]}],
        "slo": {"sinks": [{"stage": "vision", "accuracy": vision}, {"stage": "keywords", "accuracy": keywords}]},
        "outputs": outputs or [],
    }


def problem_of(vision: float, keywords: float, **options):
    return compile_problem(make_bundle(ZOO, TOPOLOGY, workflow(vision, keywords, **options)))


def test_each_sink_has_the_model_that_covers_it() -> None:
    problem = problem_of(70, 85)
    assert [(t.stage, t.accuracy_target, t.stages) for t in problem.sinks] == [
        ("vision", 70, ["detect", "vision"]), ("keywords", 85, ["vad", "keywords"])]
    model = choose_model(problem)
    assert [(m.sink, m.kind) for m in model.sinks] == [("vision", "table"), ("keywords", "product")]
    assert model.description == ("vision: end-to-end table 'vision-e2e'; keywords: default composition: product of "
                                 "stage accuracies")
    models = {"detect": "d-big", "vision": "c1", "vad": "v1", "keywords": "k2"}
    # The product multiplies the keywords chain only, never the vision stages.
    assert model.per_sink(problem, models) == pytest.approx({"vision": 72, "keywords": 95 * 0.92})
    assert model.shortfalls(problem, models) == []
    assert model.shortfalls(problem, {**models, "keywords": "k1"}) == ["accuracy 76.0 at sink keywords below target 85.0"]


def test_each_sink_meets_its_own_target_and_no_more() -> None:
    """Vision 70 needs the big detector (the table's 72 row) but not the big classifier; keywords 85
    needs k2 (0.95 x 0.92 = 87.4; k1 gives 76). Lowering one sink's target changes its chain only."""
    plan = make_plan(make_bundle(ZOO, TOPOLOGY, workflow(70, 85)))
    assert plan.feasible, plan.explanation
    assert plan.models == {"detect": "d-big", "vision": "c1", "vad": "v1", "keywords": "k2"}
    assert [(s.stage, s.accuracy, s.accuracy_target) for s in plan.sinks] == [
        ("vision", 72, 70), ("keywords", pytest.approx(87.4), 85)]
    assert plan.accuracy == 72 and plan.accuracy_target == 70  # the first sink's, as before
    assert plan.sinks[0].accuracy_method == "end-to-end table 'vision-e2e'"
    assert all(s.latency_ms is not None and s.latency_ms <= plan.latency_ms for s in plan.sinks)
    assert max(s.latency_ms for s in plan.sinks) == plan.latency_ms
    for baseline in plan.baselines:
        if baseline.feasible:
            assert baseline.accuracy_by_sink["vision"] >= 70 and baseline.accuracy_by_sink["keywords"] >= 85
    lower = make_plan(make_bundle(ZOO, TOPOLOGY, workflow(70, 75)), baselines=False)
    assert lower.models == {**plan.models, "keywords": "k1"}
    assert lower.cost.total_per_hour < plan.cost.total_per_hour


@pytest.mark.parametrize("strategy", ["optimal", "cloud-only", "two-stage", "edge-first", "jellybean"])
def test_every_strategy_meets_each_sink_and_minimum(strategy: str) -> None:
    problem = problem_of(60, 85, min_detect=45)
    accuracy = choose_model(problem)
    plan = run_strategy(problem, accuracy, strategy)
    assert plan.feasible, plan.explanation
    assert plan.models["detect"] == "d-big"  # the minimum rules d-small out, though vision's 60 would not
    assert plan.models["keywords"] == "k2"
    assert [(m.stage, m.metric, m.min_accuracy, m.variant, m.accuracy) for m in plan.stage_minimums] == [
        ("detect", "mAP", 45, "d-big", 48)]


def test_a_minimum_costs_what_it_rules_out() -> None:
    free = make_plan(make_bundle(ZOO, TOPOLOGY, workflow(60, 85)), baselines=False)
    assert free.models["detect"] == "d-small" and free.stage_minimums == []
    bound = make_plan(make_bundle(ZOO, TOPOLOGY, workflow(60, 85, min_detect=45)), baselines=False)
    assert bound.models["detect"] == "d-big"
    assert bound.cost.total_per_hour > free.cost.total_per_hour


@pytest.mark.parametrize(("vision", "keywords", "min_detect"),
                         [(60, 70, None), (70, 85, None), (79, 85, None), (60, 85, 45), (66, 80, 41), (81, 70, None),
                          (60, 88, None)])
def test_the_joint_milp_agrees_with_enumerating_the_combinations(vision: float, keywords: float,
                                                                 min_detect: float | None) -> None:
    """The joint MILP encodes each sink's table or product, and the minimums, as rows; the
    decomposition enumerates the admissible combinations with the models themselves: they agree."""
    problem = problem_of(vision, keywords, min_detect=min_detect)
    accuracy = choose_model(problem)
    combos = admissible_combinations(problem, accuracy)
    assert combos == [c for c in enumerate_combinations(problem) if accuracy.admissible(problem, c)]
    joint = _optimal_joint(problem, accuracy, time_limit_s=30, solver="highs", gap_rel=1e-7, explain_infeasible=False)
    if not combos:
        assert not joint.feasible
        return
    decomposed = _optimal_by_combinations(problem, accuracy, combos, time_limit_s=30, solver="highs", gap_rel=1e-7,
                                          explain_infeasible=False)
    assert joint.feasible and decomposed.feasible
    assert joint.cost.total_per_hour == pytest.approx(decomposed.cost.total_per_hour, rel=1e-6)
    assert accuracy.admissible(problem, joint.models)


def test_two_sinks_sharing_a_stage_with_profiles() -> None:
    """Per-stage profiles (JellyBean's form) for one sink and the product for another, both fed by
    the same detector: the certified accuracies are built once, each sink's target holds, and the
    joint MILP agrees with enumeration."""
    zoo = copy.deepcopy(ZOO)
    zoo["accuracy_tables"] = []
    for v, samples in zip(zoo["tasks"][1]["variants"], ([(44, 55), (48, 62)], [(44, 60), (48, 70)])):
        v["accuracy_profile"] = [{"inputs": {"detect": need}, "output": out} for need, out in samples]
    wf = {
        "sources": [{"name": "cams", "rate_per_s": 30, "payload_kb": 50, "sites": ["store"]}],
        "stages": [{"name": "detect", "task": "detect", "inputs": ["cams"]},
                   {"name": "vision", "task": "classify", "inputs": ["detect"]},
                   {"name": "count", "task": "kws", "inputs": ["detect"]}],
        "slo": {"accuracy": 35, "sinks": [{"stage": "vision", "accuracy": 62}]},
    }
    problem = compile_problem(make_bundle(zoo, TOPOLOGY, wf))
    accuracy = choose_model(problem)
    assert [(m.sink, m.kind) for m in accuracy.sinks] == [("vision", "profiles"), ("count", "product")]
    combos = admissible_combinations(problem, accuracy)
    # vision 62 needs d-big (48) with c1, or d-big with c2; count: 0.48 x 0.80 = 38.4 >= 35 either way.
    assert {(c["detect"], c["vision"]) for c in combos} == {("d-big", "c1"), ("d-big", "c2")}
    joint = _optimal_joint(problem, accuracy, time_limit_s=30, solver="highs", gap_rel=1e-7, explain_infeasible=False)
    decomposed = _optimal_by_combinations(problem, accuracy, combos, time_limit_s=30, solver="highs", gap_rel=1e-7,
                                          explain_infeasible=False)
    assert joint.models == decomposed.models == {"detect": "d-big", "vision": "c1", "count": "k1"}
    assert [s.accuracy for s in joint.sinks] == [62, pytest.approx(48 * 0.8)]


def test_an_output_carries_the_results_of_its_sinks_only() -> None:
    """An output pinned to the cloud carrying keywords only is one priced flow, from the keywords
    stage; one carrying every sink has a flow per sink."""
    outputs = [{"name": "alerts", "kind": "webhook", "url": "https://example.com/a", "site": "cloud",
                "sinks": ["keywords"], "result_kb": 4},
               {"name": "all", "kind": "stream", "site": "cloud", "result_kb": 2}]
    bundle = make_bundle(ZOO, TOPOLOGY, workflow(60, 75, outputs=outputs))
    problem = compile_problem(bundle)
    assert [(o.key, o.kb) for o in problem.outputs] == [("keywords->output:alerts", 4), ("vision->output:all", 2),
                                                        ("keywords->output:all", 2)]
    plan = make_plan(bundle, baselines=False)
    assert plan.feasible and {a.site for a in plan.assignments} == {"store"}
    (link,) = plan.links
    assert link.carries == ["keywords->output:alerts", "keywords->output:all", "vision->output:all"]
    # 40 results/s of each sink: 4 KB to alerts, 2 + 2 KB to all.
    assert link.gb_per_hour == pytest.approx(40 * (4 + 2 + 2) * 3600 / 1024 ** 2)


def test_what_cannot_be_met_is_said_per_sink_and_per_stage() -> None:
    plan = make_plan(make_bundle(ZOO, TOPOLOGY, workflow(60, 90)), baselines=False)
    assert not plan.feasible
    assert plan.explanation == ["accuracy target 90 at sink keywords unreachable: the best combination reaches 87.4 "
                                "(vad=v1, keywords=k2; default composition: product of stage accuracies)"]
    assert [(s.stage, s.accuracy, s.accuracy_target) for s in plan.sinks] == [("vision", None, 60),
                                                                              ("keywords", None, 90)]
    plan = make_plan(make_bundle(ZOO, TOPOLOGY, workflow(60, 85, min_detect=50)), baselines=False)
    assert not plan.feasible
    assert plan.explanation == ["stage detect: no variant reaches its min_accuracy 50 (mAP); the most accurate, "
                                "d-big, has 48"]
    # A minimum that rules out what a sink's target needs: the best within the minimum is named.
    plan = make_plan(make_bundle(ZOO, TOPOLOGY, workflow(75, 75, min_detect=30)), baselines=True)
    assert plan.feasible  # d-big with c2 reaches 80
    plan = make_plan(make_bundle(ZOO, TOPOLOGY, workflow(81, 75, min_detect=41)), baselines=False)
    assert plan.explanation == ["accuracy target 81 at sink vision unreachable: the best combination with every "
                                "stage at its min_accuracy reaches 80 (detect=d-big, vision=c2; end-to-end table "
                                "'vision-e2e')"]


def test_a_plan_verified_against_each_sink_and_minimum() -> None:
    problem = problem_of(70, 85, min_detect=45)
    accuracy = choose_model(problem)
    plan_models = run_strategy(problem, accuracy, "optimal").models
    from jellybean.optimizer.milp import solve_milp

    solution = solve_milp(problem, accuracy, fixed_models=plan_models).solution
    assert verify(problem, solution, accuracy) == []
    worse = copy.deepcopy(solution)
    worse.models["keywords"] = "k1"
    worse.models["detect"] = "d-small"
    problems = verify(problem, worse, accuracy)
    assert "accuracy 76.0 at sink keywords below target 85.0" in problems
    assert "stage detect runs d-small (mAP 40), below its minimum 45" in problems
