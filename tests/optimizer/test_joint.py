"""Several workflows planned together (jellybean.optimizer.joint): the joint plan is the brute-force
optimum of the combined problem and claims no capacity twice (checked by ``verify``), splits into
each workflow's own valid plan, is never dearer than planning the workflows one after another and
cheaper where sharing matters; each workflow keeps its own zoo and latency bound; running workflows
are kept in place (their capacity taken) or re-planned with churn penalties."""

from __future__ import annotations

import math

import pytest

from jellybean.optimizer.accuracy import choose_model
from jellybean.optimizer.capacity import capacity_left
from jellybean.optimizer.carbon import Objective
from jellybean.optimizer.evaluate import build_plan, verify
from jellybean.optimizer.joint import compile_joint, joint_name, plan_jointly, split
from jellybean.optimizer.planner import plan, run_strategy
from jellybean.optimizer.problem import compile_problem

from .bruteforce import brute_force
from .random_instances import make_bundle, random_joint_bundles

SEEDS = range(10)


@pytest.mark.parametrize("sharing", ["exclusive", "shared"])
@pytest.mark.parametrize("seed", SEEDS)
def test_joint_plan_is_the_brute_force_optimum_of_the_combined_problem(seed: int, sharing: str) -> None:
    """Two workflows (each with its own zoo, both with a stage named s1) on one topology: the
    optimal strategy on the joint problem finds enumeration's optimum; its solution passes every
    check of the joint problem (no group's instances counted twice: per workflow and in all within
    its limit; links within their bandwidth for both workflows' traffic); split per workflow, each
    part is a valid plan of that workflow's own problem, and the parts add up to the whole."""
    bundles = random_joint_bundles(seed, sharing=sharing)
    joint = compile_joint(bundles, aggregate=False)
    problem = joint.problem
    assert problem.order == ["vision/s1", "vision/s2", "audio/s1"]
    assert [t.stage for t in problem.sinks] == ["vision/s2", "audio/s1"]
    expected = brute_force(problem, joint.accuracy)
    result = run_strategy(problem, joint.accuracy, "optimal", gap_rel=1e-9)
    if math.isinf(expected):
        assert not result.feasible, f"brute force finds no plan, the joint one costs {result.cost}"
        return
    assert result.feasible, f"brute force finds {expected:.4f} $/h, the joint plan none: {result.explanation}"
    assert result.cost.total_per_hour == pytest.approx(expected, rel=1e-5, abs=1e-6)
    solution = result.solution
    assert verify(problem, solution, joint.accuracy) == []
    if sharing == "shared":  # an instance serves one workflow: counts are kept per workflow
        assert {key for _g, key in solution.counts} <= {"vision", "audio"}
    parts = split(joint, solution)
    total = 0.0
    for name, part in joint.parts.items():
        assert verify(part, parts[name], joint.part_accuracy[name]) == []
        piece = build_plan(part, parts[name], strategy="optimal", stats=result.solver, accuracy=joint.part_accuracy[name])
        assert piece.workflow == name and set(piece.models) == set(part.order)
        total += piece.cost.total_per_hour
    assert total == pytest.approx(result.cost.total_per_hour, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("sharing", ["exclusive", "shared"])
@pytest.mark.parametrize("seed", SEEDS)
def test_joint_is_never_dearer_than_one_after_another(seed: int, sharing: str) -> None:
    """plan_jointly's own comparison: the workflows planned in turn, each on what the ones before
    leave (capacity_left), cost at least the joint plan (both proven optimal here); the comparison is
    what planning them by hand gives; and the joint plan is feasible whenever they are."""
    bundles = random_joint_bundles(seed, sharing=sharing)
    result = plan_jointly(bundles, baselines=False, gap_rel=1e-9)
    sequential = result.joint.sequential
    assert sequential is not None and sequential.order == ["vision", "audio"]
    first = plan(bundles[0], baselines=False, gap_rel=1e-9)
    if not first.feasible:
        assert not sequential.feasible and sequential.reason.startswith("vision has no plan:")
    else:
        second = plan(bundles[1].__class__(bundles[1].workflow, bundles[1].zoo,
                                           capacity_left(bundles[1].topology, [first]), bundles[1].sources),
                      baselines=False, gap_rel=1e-9)
        assert sequential.feasible == second.feasible
        if second.feasible:
            assert sequential.by_workflow == pytest.approx({"vision": first.cost.total_per_hour,
                                                            "audio": second.cost.total_per_hour})
    if sequential.feasible:
        assert result.feasible
        assert result.total.cost.total_per_hour <= sequential.cost.total_per_hour * (1 + 1e-7) + 1e-9
        assert sequential.saving >= -1e-7 * sequential.objective_value
    if result.feasible:
        assert result.total.cost_by_workflow.keys() == {"vision", "audio"}
        assert sum(result.total.cost_by_workflow.values()) == pytest.approx(result.total.cost.total_per_hour)


@pytest.mark.parametrize("sharing", ["exclusive", "shared"])
@pytest.mark.parametrize("seed", range(6))
def test_least_carbon_together_is_the_brute_force_optimum(seed: int, sharing: str) -> None:
    """Objective carbon, for both workflows together: the least gCO2/h enumeration finds (each
    instance in use at idle + (busy - idle) x utilisation, its site's intensity)."""
    bundles = random_joint_bundles(seed, sharing=sharing, carbon=True)
    joint = compile_joint(bundles, aggregate=False)
    joint.problem.objective = Objective("carbon")
    expected = brute_force(joint.problem, joint.accuracy, cost_weight=0.0, carbon_weight=1.0)
    result = run_strategy(joint.problem, joint.accuracy, "optimal", gap_rel=1e-9)
    if math.isinf(expected):
        assert not result.feasible
        return
    assert result.feasible and result.carbon.total_g_per_hour == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert verify(joint.problem, result.solution, joint.accuracy) == []


def test_the_random_instances_make_sharing_matter() -> None:
    """The instances above are not all trivial: most have a joint plan, and on several the joint
    plan is strictly cheaper than one after another, or one after another finds none."""
    feasible, cheaper = 0, 0
    for sharing in ("exclusive", "shared"):
        for seed in SEEDS:
            result = plan_jointly(random_joint_bundles(seed, sharing=sharing), baselines=False)
            sequential = result.joint.sequential
            feasible += result.feasible
            cheaper += result.feasible and (not sequential.feasible or sequential.saving > 1e-3)
    assert feasible >= 12 and cheaper >= 8, (feasible, cheaper)


# --- a store where sharing matters ---------------------------------------------------------------


def variant(name: str, accuracy: float, latency_ms: float, output_kb: float = 0.5, memory_mb: float = 100) -> dict:
    return {"name": name, "accuracy": accuracy, "output_kb": output_kb, "memory_mb": memory_mb,
            "profiles": [{"hardware": "cpu", "latency_ms": {1: latency_ms}}]}


ZOO = {"tasks": [{"name": "detect", "variants": [variant("det", 90, 20)]},
                 {"name": "kws", "variants": [variant("kws", 90, 20)]}]}


def store(*, boxes: int = 1, uplink_mbps: float | None = None, sharing: str = "shared") -> dict:
    """A cloud ($1/h instances) and one store hub with ``boxes`` cheap boxes ($0.1/h), behind an
    uplink that costs $0.5/GB."""
    up: dict = {"cost_per_gb": 0.5}
    if uplink_mbps is not None:
        up["bandwidth_mbps"] = uplink_mbps
    return {"message_framing": False, "link_batch_wait_ms": 0, "sharing": sharing, "sites": [
        {"name": "cloud", "tier": "cloud", "instances": [{"name": "vm", "hardware": "cpu", "price_per_hour": 1.0,
                                                          "max_count": 10}]},
        {"name": "store", "tier": "hub", "parent": "cloud", "uplink": {"up": up},
         "instances": [{"name": "box", "hardware": "cpu", "price_per_hour": 0.1, "count": boxes}] if boxes else []}]}


def workflow(stage: str, task: str, source: str, payload_kb: float, **slo: float) -> dict:
    return {"sources": [{"name": source, "rate_per_s": 20, "payload_kb": payload_kb, "sites": ["store"]}],
            "stages": [{"name": stage, "task": task, "inputs": [source]}], "slo": {"accuracy": 80, **slo}}


def two(topology: dict, vision: dict | None = None, audio: dict | None = None) -> list:
    """vision (small frames, 2 KB) first, audio (large chunks, 200 KB) second."""
    return [make_bundle(ZOO, topology, vision or workflow("detect", "detect", "cams", 2.0), names=("vision", "z", "t")),
            make_bundle(ZOO, topology, audio or workflow("kws", "kws", "mics", 200.0), names=("audio", "z", "t"))]


@pytest.mark.parametrize("sharing", ["shared", "exclusive"])
def test_sharing_the_one_box_goes_where_it_saves_most(sharing: str) -> None:
    """One box at the store, one workflow's worth: planned in turn, vision (first) takes it and
    audio's 200 KB chunks cross the paid uplink; together, audio gets the box and vision's 2 KB
    frames go up instead. Each workflow alone would take the box."""
    bundles = two(store(sharing=sharing))
    result = plan_jointly(bundles, baselines=False)
    assert result.feasible
    vision, audio = result.workflows
    assert [(a.stage, a.site) for a in vision.assignments] == [("detect", "cloud")]
    assert [(a.stage, a.site) for a in audio.assignments] == [("kws", "store")]
    sequential = result.joint.sequential
    assert sequential.feasible
    assert result.total.cost.total_per_hour < sequential.cost.total_per_hour - 0.1
    assert sequential.saving == pytest.approx(sequential.cost.total_per_hour - result.total.cost.total_per_hour)
    assert sequential.saving_pct == pytest.approx(100 * sequential.saving / sequential.cost.total_per_hour)
    # Traffic: audio's chunks never leave the store; vision's frames do: 20/s x 2 KB.
    gb = 20 * 2.0 * 3600 / 1024 ** 2
    assert vision.cost.network_per_hour == pytest.approx(gb * 0.5)
    assert audio.cost.network_per_hour == pytest.approx(0.0)
    # The box serves audio alone: its one instance, whatever the mode.
    (box,) = [row for row in result.total.instances if row.site == "store"]
    assert (box.count, box.stages) == (1, ["audio/kws"])
    # Planned in the other order, one after another finds the joint plan.
    other = plan_jointly(list(reversed(bundles)), baselines=False)
    assert other.joint.sequential.saving == 0.0
    assert other.total.cost.total_per_hour == pytest.approx(result.total.cost.total_per_hour)


def test_a_link_carries_every_workflows_traffic_within_its_bandwidth() -> None:
    """No compute at the store: both workflows' raw data go up (vision 0.33 Mbps, audio 0.25). On a
    0.7 Mbps uplink they fit together: the link's row carries both, its Mbit/s the sum of each
    workflow plan's. On 0.5 Mbps each fits alone but not both: no joint plan, and the explanation
    names the uplink; one after another, the second finds none."""
    vision, audio = workflow("detect", "detect", "cams", 2.0), workflow("kws", "kws", "mics", 1.5)
    result = plan_jointly(two(store(boxes=0, uplink_mbps=0.7), vision, audio), baselines=False)
    assert result.feasible
    (link,) = [row for row in result.total.links if row.from_ == "store"]
    assert link.carries == ["audio/mics->audio/kws", "vision/cams->vision/detect"]
    each = [row.mbps for p in result.workflows for row in p.links if row.from_ == "store"]
    assert link.mbps == pytest.approx(sum(each)) and link.mbps == pytest.approx(20 * 3.5 * 8192 / 1e6)
    assert link.utilization == pytest.approx(link.mbps / 0.7)
    thin = plan_jointly(two(store(boxes=0, uplink_mbps=0.5), vision, audio), baselines=False)
    assert not thin.feasible and all(not p.feasible for p in thin.workflows)
    assert any("uplink of store" in reason or "uplink store -> cloud" in reason for reason in thin.explanation), \
        thin.explanation
    assert thin.workflows[0].explanation == thin.explanation
    assert not thin.joint.sequential.feasible
    assert thin.joint.sequential.reason.startswith("audio has no plan on what vision leaves")


def test_one_after_another_can_find_no_plan_where_together_does() -> None:
    """The uplink (2 Mbps) cannot carry audio's raw chunks (33 Mbps): audio must run at the store.
    Vision first takes the one box, and audio then has no plan; together both run."""
    bundles = two(store(uplink_mbps=2.0))
    result = plan_jointly(bundles, baselines=False)
    assert result.feasible
    sequential = result.joint.sequential
    assert not sequential.feasible
    assert sequential.reason.startswith("audio has no plan on what vision leaves:")
    assert sequential.by_workflow["audio"] is None and sequential.by_workflow["vision"] is not None
    assert sequential.saving is None


def test_each_workflow_keeps_its_own_latency_bound() -> None:
    """vision bounds latency at 30 ms (its detector takes 20 ms, the uplink 15 ms each way: it must
    run at the store); audio has no bound, and the plan may send it anywhere. The joint problem bounds
    each sink by its own workflow's bound only."""
    topology = store(boxes=2)
    topology["sites"][1]["uplink"]["up"]["latency_ms"] = 15.0
    vision = workflow("detect", "detect", "cams", 2.0, latency_ms=30)
    vision["slo"]["latency_percentile"] = "mean"
    bundles = two(topology, vision=vision, audio=workflow("kws", "kws", "mics", 0.1))
    joint = compile_joint(bundles)
    assert [(t.stage, joint.problem.sink_latency_bound(t)) for t in joint.problem.sinks] == [
        ("vision/detect", 30.0), ("audio/kws", None)]
    result = plan_jointly(bundles, baselines=False)
    vision_plan, audio_plan = result.workflows
    assert vision_plan.latency_bound_ms == 30 and audio_plan.latency_bound_ms is None
    assert vision_plan.latency_ms <= 30
    assert [a.site for a in vision_plan.assignments] == ["store"]
    assert verify(joint.problem, result.combined.solution, joint.accuracy) == []
    # A bound on audio too, of 30 ms: still feasible (both at the store), and checked for each.
    audio = workflow("kws", "kws", "mics", 0.1, latency_ms=30)
    audio["slo"]["latency_percentile"] = "mean"
    both = plan_jointly(two(topology, vision=vision, audio=audio), baselines=False)
    assert both.feasible and all(p.latency_ms <= 30 for p in both.workflows)


def test_latency_bounds_on_different_percentiles_are_refused() -> None:
    vision = workflow("detect", "detect", "cams", 2.0, latency_ms=30)
    audio = workflow("kws", "kws", "mics", 2.0, latency_ms=30)
    audio["slo"]["latency_percentile"] = "mean"
    with pytest.raises(ValueError, match="check their latency bounds on one percentile; vision on p90, audio on mean"):
        plan_jointly(two(store(), vision=vision, audio=audio))


def test_each_workflow_keeps_its_own_zoo() -> None:
    """Two zoos with a task of one name: each workflow's sink is measured by its own zoo's table."""
    zoo_a = {"tasks": [{"name": "detect", "variants": [variant("a1", 80, 10), variant("a2", 95, 30)]}],
             "accuracy_tables": [{"name": "a-e2e", "tasks": ["detect"], "rows": [
                 {"variants": ["a1"], "accuracy": 70}, {"variants": ["a2"], "accuracy": 91}]}]}
    zoo_b = {"tasks": [{"name": "detect", "variants": [variant("b1", 85, 10), variant("b2", 96, 30)]}]}
    wf = workflow("detect", "detect", "cams", 2.0)
    bundles = [make_bundle(zoo_a, store(), wf, names=("a", "za", "t")),
               make_bundle(zoo_b, store(), workflow("detect", "detect", "mics", 2.0), names=("b", "zb", "t"))]
    result = plan_jointly(bundles, baselines=False, sequential=False)
    a, b = result.workflows
    assert a.accuracy_method == "end-to-end table 'a-e2e'" and a.models == {"detect": "a2"} and a.accuracy == 91
    assert b.accuracy_method.startswith("default composition") and b.models == {"detect": "b1"}
    assert result.joint.sequential is None


def test_a_workflow_planned_with_ample_room_plans_as_alone() -> None:
    """Nothing to share (ten boxes, an unlimited uplink): each workflow's part of the joint plan is
    the plan it gets alone: same variants, same cost, same assignments."""
    bundles = two(store(boxes=10))
    result = plan_jointly(bundles, baselines=False)
    for bundle, joint_plan in zip(bundles, result.workflows):
        alone = plan(bundle, baselines=False)
        assert joint_plan.models == alone.models
        assert joint_plan.cost.total_per_hour == pytest.approx(alone.cost.total_per_hour)
        assert [(a.stage, a.site, a.instance, a.rate_per_s) for a in joint_plan.assignments] == \
            [(a.stage, a.site, a.instance, a.rate_per_s) for a in alone.assignments]
        assert joint_plan.workflow == bundle.name and joint_plan.sinks[0].stage == bundle.workflow.spec.sink
    assert result.joint.sequential.saving == 0.0


def test_running_workflows_are_kept_in_place() -> None:
    """``running``: a plan kept as it runs; the others are planned on what it leaves (capacity_left),
    exactly as one after another would plan them."""
    bundles = two(store())
    vision = plan(bundles[0], baselines=False)
    assert [a.site for a in vision.assignments] == ["store"]  # it took the box
    result = plan_jointly([bundles[1]], running=[vision], baselines=False)
    (audio,) = result.workflows
    assert result.joint.running == ["vision"]
    assert [a.site for a in audio.assignments] == ["cloud"]
    assert audio.cost.total_per_hour == pytest.approx(result.total.cost.total_per_hour)
    alone = plan(bundles[1].__class__(bundles[1].workflow, bundles[1].zoo, capacity_left(bundles[1].topology, [vision]),
                                      bundles[1].sources), baselines=False)
    assert audio.cost.total_per_hour == pytest.approx(alone.cost.total_per_hour)


def test_previous_plans_stay_unless_moving_pays() -> None:
    """``previous``: re-planning running workflows with the others. vision runs on the box; with a
    churn price above what moving saves it stays and audio goes to the cloud; with none, the joint
    optimum moves vision off the box."""
    bundles = two(store())
    vision = plan(bundles[0], baselines=False)
    audio = plan(bundles[1].__class__(bundles[1].workflow, bundles[1].zoo, capacity_left(bundles[1].topology, [vision]),
                                      bundles[1].sources), baselines=False)
    previous = {"vision": vision, "audio": audio}
    moving_saves = vision.cost.total_per_hour + audio.cost.total_per_hour - \
        plan_jointly(bundles, baselines=False, sequential=False).total.cost.total_per_hour
    assert moving_saves > 0.1
    # Moving costs 4 changes (an instance stopped and one started, per workflow): priced above the saving.
    kept = plan_jointly(bundles, baselines=False, sequential=False, previous=previous,
                        churn_cost_per_change_per_hour=moving_saves)
    assert [a.site for p in kept.workflows for a in p.assignments] == ["store", "cloud"]
    moved = plan_jointly(bundles, baselines=False, sequential=False, previous=previous,
                         churn_cost_per_change_per_hour=moving_saves / 10)
    assert [a.site for p in moved.workflows for a in p.assignments] == ["cloud", "store"]
    # The reported cost never includes the penalty.
    assert moved.total.cost.total_per_hour == pytest.approx(vision.cost.total_per_hour + audio.cost.total_per_hour
                                                            - moving_saves)


def test_names_in_the_joint_problem() -> None:
    bundles = two(store())
    joint = compile_joint(bundles)
    assert joint_name("vision", "detect") == "vision/detect"
    assert joint.problem.workflow_of == {"vision/detect": "vision", "audio/kws": "audio"}
    assert set(joint.problem.source_rates) == {"vision/cams", "audio/mics"}
    assert joint.problem.name == "vision+audio"
    # Each part is its workflow's own Problem, on the classes of sites of both.
    alone = compile_problem(bundles[0])
    assert joint.parts["vision"].order == alone.order and joint.parts["vision"].name == "vision"
    assert [m.sink for m in choose_model(joint.parts["vision"]).sinks] == ["detect"]
    assert [m.sink for m in joint.accuracy.sinks] == ["vision/detect", "audio/kws"]


def test_plannable_together_needs_one_topology_and_distinct_names() -> None:
    bundles = two(store())
    other = make_bundle(ZOO, store(), workflow("kws", "kws", "mics", 2.0), names=("audio", "z", "t2"))
    with pytest.raises(ValueError, match="share one Topology; these use t, t2"):
        plan_jointly([bundles[0], other])
    with pytest.raises(ValueError, match="distinct names; repeated: vision"):
        plan_jointly([bundles[0], bundles[0]])
    with pytest.raises(ValueError, match="no workflow to plan"):
        plan_jointly([])


def test_a_latency_bound_out_of_reach_is_said_for_its_workflow() -> None:
    """vision's bound of 10 ms is below its detector's 20 ms anywhere: no joint plan, and the
    explanation names vision's sink and its bound (audio has none)."""
    vision = workflow("detect", "detect", "cams", 2.0, latency_ms=10)
    vision["slo"]["latency_percentile"] = "mean"
    result = plan_jointly(two(store(boxes=2), vision=vision), baselines=False, sequential=False)
    assert not result.feasible
    assert any("latency bounds (vision/detect 10 ms)" in reason for reason in result.explanation), result.explanation


def test_outputs_pinned_to_sites_are_each_workflows() -> None:
    """Each workflow's results delivered to a site: the joint plan carries each to its output (named
    ``workflow/output``), and each workflow's part carries its own, in its own names. Audio runs at
    the store (the box) and its alerts go up to the cloud; vision runs in the cloud, where its
    dashboard is."""
    vision, audio = workflow("detect", "detect", "cams", 2.0), workflow("kws", "kws", "mics", 200.0)
    vision["outputs"] = [{"name": "dashboard", "kind": "stream", "site": "cloud"}]
    audio["outputs"] = [{"name": "alerts", "kind": "stream", "site": "cloud", "result_kb": 4.0}]
    bundles = two(store(), vision, audio)
    joint = compile_joint(bundles)
    assert [o.key for o in joint.problem.outputs] == ["vision/detect->output:vision/dashboard",
                                                      "audio/kws->output:audio/alerts"]
    result = plan_jointly(bundles, baselines=False, sequential=False)
    assert result.feasible
    solution = result.combined.solution
    assert verify(joint.problem, solution, joint.accuracy) == []
    for name, part in split(joint, solution).items():
        assert verify(joint.parts[name], part, joint.part_accuracy[name]) == []
    vision_plan, audio_plan = result.workflows
    assert [a.site for a in audio_plan.assignments] == ["store"]
    (alerts,) = audio_plan.links
    assert alerts.carries == ["kws->output:alerts"] and alerts.gb_per_hour == pytest.approx(20 * 4.0 * 3600 / 1024 ** 2)
    (up,) = [row for row in result.total.links if row.from_ == "store"]
    assert up.carries == ["audio/kws->output:audio/alerts", "vision/cams->vision/detect"]


def test_what_is_kept_in_memory_is_no_part_of_a_plans_value() -> None:
    """A plan keeps the Solution it was priced from (and a joint plan its combined plan) in memory,
    for splitting and drawing; neither is serialised nor compared: read back from JSON, both are equal
    (the controller stores plans as JSON and compares them)."""
    result = plan_jointly(two(store()), baselines=False)
    assert result.combined is not None and result.combined.solution is not None
    back = type(result).model_validate(result.model_dump(mode="json", by_alias=True))
    assert back.combined is None and back == result
    (single,) = [p for p in result.workflows if p.workflow == "vision"]
    again = type(single).model_validate_json(single.model_dump_json(by_alias=True))
    assert again.solution is None and again == single and single.solution is not None
    assert "solution" not in single.model_dump() and "combined" not in result.model_dump()
