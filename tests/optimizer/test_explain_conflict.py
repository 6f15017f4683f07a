"""What binds, said better: when every limit can be met alone but not together, the explanation names
the smallest set of constraints that conflict, with their numbers (a deletion filter over constraint
families, then over their members: which stage, which site, which link).

The conflict is checked, on random instances, to be what it claims, by solves of problems relaxed
here independently of :func:`jellybean.optimizer.conflict.relax`: with every other constraint
dropped it admits no plan, and dropping any one of its members admits one."""

from __future__ import annotations

import dataclasses
import random

import pytest

from jellybean.optimizer import plan
from jellybean.optimizer.accuracy import choose_model
from jellybean.optimizer.conflict import Constraint, candidates, find_conflict
from jellybean.optimizer.explain import describe_conflict
from jellybean.optimizer.milp import solve_milp
from jellybean.optimizer.planner import run_strategy
from jellybean.optimizer.problem import Problem, compile_options, compile_problem, member_rate_bounds
from jellybean.spec.topology import LinkDirection

from .bruteforce import brute_force
from .random_instances import make_bundle, random_bundle
from .test_elastic_unserved import BLUR_TOPOLOGY, BLUR_WORKFLOW, BLUR_ZOO, variant

CAMS = [f"cam{k}" for k in range(10)]


def _city(hub_box: dict | None, uplink: dict | None = None) -> dict:
    """A cloud with GPUs, a hub (with ``hub_box``, behind ``uplink``), ten cameras under the hub;
    payloads alone on the links and no wait for company, so that the numbers below are the
    documents' (framing and the wait are tested on their own, tests/optimizer/test_framing.py)."""
    hub = {"name": "hub", "tier": "hub", "parent": "cloud", "instances": [hub_box] if hub_box else []}
    if uplink:
        hub["uplink"] = {"up": uplink}
    return {"message_framing": False, "link_batch_wait_ms": 0, "sites": [{"name": "cloud", "tier": "cloud",
                       "instances": [{"name": "g", "hardware": "gpu", "price_per_hour": 1, "max_count": 4}]},
                      hub, *({"name": cam, "tier": "device", "parent": "hub"} for cam in CAMS)]}


def _detect(**slo_and_placement) -> dict:
    """Ten cameras at 5 frames/s each (50 req/s), 100 KB a frame, into one detector."""
    stage = {"name": "detect", "task": "det", "inputs": ["cams"]}
    if "placement" in slo_and_placement:
        stage["placement"] = slo_and_placement.pop("placement")
    return {"sources": [{"name": "cams", "rate_per_s": 5, "payload_kb": 100, "sites": CAMS}],
            "stages": [stage], "slo": {"accuracy": 10, **slo_and_placement}}


def _why(zoo: dict, topology: dict, workflow: dict) -> list[str]:
    result = plan(make_bundle(zoo, topology, workflow), baselines=False)
    assert not result.feasible
    return result.explanation


# --- the example and three more ------------------------------------------------------------

def test_a_hub_too_small_for_any_detector_with_blur_pinned_to_it() -> None:
    """The hub's 512 MB holds no detector (the smallest needs 600 MB); the camera's Jetson holds one,
    but blur is pinned to the hub and its results may not flow down to the camera. Each alone is
    fine: the three together leave the detector nowhere."""
    why = _why(BLUR_ZOO, BLUR_TOPOLOGY, BLUR_WORKFLOW)
    assert why[0] == (
        "these 3 limits cannot all be met together; each can be met alone, and relaxing any one of them allows a "
        "plan: (1) data may not flow down the tiers (the topology's allow_downward_flows is false); (2) stage blur "
        "may run only at hub (its placement); (3) instances box at hub have 512 MB of memory: no variant of stage "
        "detect fits (the smallest, yolo-n, needs 600 MB)")
    assert "no plan satisfies every constraint" not in " ".join(why)


def test_accuracy_target_against_a_link_too_thin() -> None:
    """The hub runs only the small detector (60), the cloud's GPU the big one (80); the raw frames
    need 50 x 100 KB x 8192 bit/KB = 40.96 Mbit/s, the uplink has 10."""
    zoo = {"tasks": [{"name": "det", "variants": [variant("small", 60, 100, cpu={1: 10}),
                                                  variant("big", 80, 2000, gpu={1: 5})]}]}
    box = {"name": "box", "hardware": "cpu", "price_per_hour": 0.1, "count": 2}
    why = _why(zoo, _city(box, {"bandwidth_mbps": 10}), _detect(accuracy=75))
    assert why[0] == (
        "these 2 limits cannot all be met together at the sources' rates (cams 50 req/s); each can be met alone, "
        "and relaxing any one of them allows a plan: (1) uplink hub -> cloud carries at most 10 Mbps; the raw "
        "source data below it come at 40.96 Mbps; (2) accuracy target 75 (default composition: product of stage "
        "accuracies)")
    assert "uplink hub -> cloud needs 40.96 Mbps for raw source data, has 10" in why[1:]


def test_latency_bound_against_the_link_latency() -> None:
    """The cloud's GPU is fast (10 ms) but 45 ms away; the hub's one box is near but serves 26.67
    req/s at 80% (30 ms a frame), not 50."""
    zoo = {"tasks": [{"name": "det", "variants": [variant("n", 60, 100, cpu={1: 30}, gpu={1: 10})]}]}
    box = {"name": "box", "hardware": "cpu", "price_per_hour": 0.1, "count": 1}
    why = _why(zoo, _city(box, {"latency_ms": 45}), _detect(latency_ms=50))
    assert why[0] == (
        "these 2 limits cannot all be met together at the sources' rates (cams 50 req/s); each can be met alone, "
        "and relaxing any one of them allows a plan: (1) hub has 1 instance of box (cpu), serving at most "
        "1 x 26.67 = 26.67 req/s of stage detect (n at batch 1, max_utilization 0.8); (2) latency bound 50 ms (on "
        "the p90 latencies): it rules out stage detect at cloud (the fastest path through it takes 56 ms, 45 ms "
        "of it on the links from the sources)")
    assert "latency bound 50 ms unreachable: the fastest plan within the other limits takes 56 ms" in why[1:]


def test_capacity_of_a_tier_against_the_rate() -> None:
    """The detector may run only in the hub tier, whose two boxes serve 2 x 16 = 32 req/s (50 ms a
    frame, at 80%) of the 50 the cameras send."""
    zoo = {"tasks": [{"name": "det", "variants": [variant("n", 60, 100, cpu={1: 50}, gpu={1: 10})]}]}
    box = {"name": "box", "hardware": "cpu", "price_per_hour": 0.1, "count": 2}
    why = _why(zoo, _city(box), _detect(placement={"tiers": ["hub"]}))
    assert why[0] == (
        "these 2 limits cannot all be met together at the sources' rates (cams 50 req/s); each can be met alone, "
        "and relaxing any one of them allows a plan: (1) stage detect may run only at hub (its placement); (2) hub "
        "has 2 instances of box (cpu), serving at most 2 x 16 = 32 req/s of stage detect (n at batch 1, "
        "max_utilization 0.8)")
    assert "instances box at hub: the plan needs 4, the site has 2" in why[1:]


def test_batch_sizes_in_a_conflict_are_named_with_the_profiled_ones() -> None:
    """Batch 1 serves 1000/100 x 0.8 = 8 req/s per box, batch 8 serves 8000/300 x 0.8 = 21.33: the
    hub's two boxes serve the 30 req/s only at batch 8, which the workflow does not allow."""
    zoo = {"tasks": [{"name": "det", "variants": [variant("n", 60, 100, cpu={1: 100, 8: 300})]}]}
    box = {"name": "box", "hardware": "cpu", "price_per_hour": 0.1, "count": 2}
    workflow = _detect()
    workflow["sources"][0]["rate_per_s"] = 3
    workflow["stages"][0]["batch_sizes"] = [1]
    why = _why(zoo, _city(box), workflow)
    assert "(1) stage detect may use only batch sizes 1 (its batch_sizes; its variants are profiled at batch " \
           "sizes 1, 8); (2) hub has 2 instances of box (cpu), serving at most 2 x 8 = 16 req/s of stage detect " \
           "(n at batch 1, max_utilization 0.8)" in why[0], why


def test_one_limit_that_cannot_be_met_whatever_else_is_relaxed() -> None:
    """A bound below the fastest path anywhere (the hub's 30 ms plus nothing, the cloud's 10 ms plus
    45 ms away) is a conflict of one."""
    zoo = {"tasks": [{"name": "det", "variants": [variant("n", 60, 100, cpu={1: 30}, gpu={1: 10})]}]}
    box = {"name": "box", "hardware": "cpu", "price_per_hour": 0.1, "count": 4}
    why = _why(zoo, _city(box, {"latency_ms": 45}), _detect(latency_ms=20))
    assert why[0].startswith("this limit cannot be met, whatever else is relaxed: (1) latency bound 20 ms (on the "
                             "p90 latencies): it rules out stage detect at hub (the fastest path through it takes "
                             "31 ms), stage detect at cloud (the fastest path through it takes 56 ms, 45 ms of it on "
                             "the links from the sources)"), why


def test_a_baseline_restricted_to_the_cloud_says_so() -> None:
    """cloud-only keeps its restriction while it looks for the conflict, and says it."""
    zoo = {"tasks": [{"name": "det", "variants": [variant("n", 60, 100, cpu={1: 30}, gpu={1: 10})]}]}
    problem = compile_problem(make_bundle(zoo, _city(None, {"latency_ms": 45}), _detect(latency_ms=50)))
    result = run_strategy(problem, choose_model(problem), "cloud-only")
    assert not result.feasible
    assert result.explanation[0].startswith("this limit cannot be met within tiers cloud, whatever else is relaxed: "
                                            "(1) latency bound 50 ms"), result.explanation


# --- bounded, and irreducible --------------------------------------------------------------------


def _three_hubs() -> Problem:
    """Three hubs of 50 req/s of 100 KB frames each (40.96 Mbit/s), behind uplinks of 10, 11 and 12
    Mbit/s; the big detector (80) runs only in the cloud, the hubs' boxes run the small one (60)."""
    zoo = {"tasks": [{"name": "det", "variants": [variant("small", 60, 100, cpu={1: 10}),
                                                  variant("big", 80, 2000, gpu={1: 5})]}]}
    sites = [{"name": "cloud", "tier": "cloud",
              "instances": [{"name": "g", "hardware": "gpu", "price_per_hour": 1, "max_count": 8}]}]
    for k, mbps in enumerate([10, 11, 12]):
        sites += [{"name": f"hub{k}", "tier": "hub", "parent": "cloud", "uplink": {"up": {"bandwidth_mbps": mbps}},
                   "instances": [{"name": "box", "hardware": "cpu", "price_per_hour": 0.1, "count": 2}]},
                  {"name": f"cam{k}", "tier": "device", "parent": f"hub{k}"}]
    workflow = {"sources": [{"name": "cams", "rate_per_s": 50, "payload_kb": 100, "sites": ["cam0", "cam1", "cam2"]}],
                "stages": [{"name": "detect", "task": "det", "inputs": ["cams"]}], "slo": {"accuracy": 75}}
    return compile_problem(make_bundle(zoo, {"sites": sites}, workflow))


def test_a_family_is_narrowed_to_the_member_that_conflicts() -> None:
    """Any one hub's uplink is too thin for its raw frames: of the three links, one is named."""
    problem = _three_hubs()
    conflict = find_conflict(problem, choose_model(problem))
    hub2 = next(n.index for n in problem.nodes if n.name == "hub2")
    assert conflict.minimal and conflict.members == [Constraint("bandwidth", (hub2, "up")), Constraint("accuracy")]


def test_the_search_is_bounded_and_says_when_it_stopped_short() -> None:
    """Out of solves after the families (one each), the answer over families stands, the links are
    not narrowed, and the explanation says so; out of time at once, nothing is claimed smallest."""
    problem = _three_hubs()
    accuracy = choose_model(problem)
    families = candidates(problem)
    full = find_conflict(problem, accuracy)
    assert full.minimal and full.solves <= 2 * sum(len(f) for f in families)
    short = find_conflict(problem, accuracy, max_solves=len(families))
    assert short.solves == len(families) and not short.minimal and short.families_minimal
    assert short.unnarrowed == ["bandwidth"] and [c.family for c in short.members] == ["bandwidth"] * 3 + ["accuracy"]
    assert describe_conflict(problem, accuracy, short).startswith(
        "these 4 limits cannot all be met together at the sources' rates (cams 150 req/s); relaxing all of any one "
        "kind of them allows a plan (the search stopped at its limit of time or solves before narrowing the links' "
        "bandwidths to the fewest that conflict): (1) uplink hub0 -> cloud carries at most 10 Mbps")
    none = find_conflict(problem, accuracy, time_limit_s=0.0)
    assert none.solves == 0 and not none.minimal and not none.families_minimal
    assert "(the search for the smallest set stopped at its limit of time or solves: some may not be needed)" in \
        describe_conflict(problem, accuracy, none)


def test_many_instance_counts_are_said_together() -> None:
    """Twelve hubs of one box each, the detector pinned to the hub tier: the counts that conflict
    with the rate are said as one, with what they serve in all and the names cut."""
    zoo = {"tasks": [{"name": "det", "variants": [variant("n", 60, 100, cpu={1: 50})]}]}
    sites = [{"name": "cloud", "tier": "cloud"}]
    for k in range(12):  # prices differ, so that no two hubs are one class
        sites += [{"name": f"hub{k:02d}", "tier": "hub", "parent": "cloud",
                   "instances": [{"name": f"box{k:02d}", "hardware": "cpu", "price_per_hour": 0.1 + k / 100,
                                  "count": 1}]},
                  {"name": f"cam{k:02d}", "tier": "device", "parent": f"hub{k:02d}"}]
    workflow = {"sources": [{"name": "cams", "rate_per_s": 20, "payload_kb": 10,
                             "sites": [f"cam{k:02d}" for k in range(12)]}],
                "stages": [{"name": "detect", "task": "det", "inputs": ["cams"], "placement": {"tiers": ["hub"]}}],
                "slo": {"accuracy": 10}}
    why = _why(zoo, {"sites": sites}, workflow)
    assert "the counts of 12 instance groups at hub00, hub01, hub02, hub03, ... and 8 more (12 instances: box00, " \
           "box01, box02, box03, ... and 8 more), serving at most 192 req/s of stage detect in all, at " \
           "max_utilization 0.8" in why[0], why


def _relaxed_here(problem: Problem, dropped: set[Constraint]) -> Problem:
    """``problem`` without ``dropped``, written apart from conflict.relax: a dropped link's bandwidth
    gone from the topology, a dropped count made 10,000, every accuracy target made -1e9 and the
    stages' minimums gone."""
    has = {c.family for c in dropped}
    keys = {(c.family, c.key) for c in dropped}
    everywhere = set(range(len(problem.nodes)))
    stages = {s: dataclasses.replace(info, allowed_nodes=everywhere if ("placement", (s,)) in keys else
                                     info.allowed_nodes,
                                     batch_sizes=None if ("batch_sizes", (s,)) in keys else info.batch_sizes,
                                     min_accuracy=None if "accuracy" in has else info.min_accuracy)
              for s, info in problem.stages.items()}
    groups = [dataclasses.replace(g, memory_mb=None if ("memory", (g.index,)) in keys else g.memory_mb,
                                  limit=10_000 if ("instances", (g.index,)) in keys else g.limit)
              for g in problem.groups]

    def link(node, direction: str, current: LinkDirection | None) -> LinkDirection | None:
        if current is None or ("bandwidth", (node.index, direction)) not in keys:
            return current
        return LinkDirection(latency_ms=current.latency_ms, cost_per_gb=current.cost_per_gb)

    nodes = [dataclasses.replace(n, up=link(n, "up", n.up), down=link(n, "down", n.down)) for n in problem.nodes]
    options, by_stage = compile_options(problem.order, stages, groups, latency_bound=False, hop_ms=problem.hop_ms,
                                        batch_wait_ms=problem.batch_wait_ms)
    downward = problem.allow_downward or "downward" in has
    return dataclasses.replace(
        problem, stages=stages, groups=groups, nodes=nodes, options=options, options_by_stage=by_stage,
        allow_downward=downward, member_rate_bound=member_rate_bounds(nodes, problem.order, stages,
                                                                      problem.source_rates, downward),
        sinks=[dataclasses.replace(t, accuracy_target=-1e9) for t in problem.sinks] if "accuracy" in has
        else problem.sinks)


def _tightened(seed: int, sharing: str) -> Problem:
    """A small random instance with random limits made tight: the accuracy target, a hub's uplink,
    the hubs' memory and counts, a stage pinned to one site, a stage's batch sizes."""
    rng = random.Random(seed)
    problem = compile_problem(random_bundle(seed, sharing=sharing), aggregate=False)
    stages = dict(problem.stages)
    for s in problem.order:
        if rng.random() < 0.3:
            stages[s] = dataclasses.replace(stages[s], allowed_nodes={rng.randrange(len(problem.nodes))})
        if rng.random() < 0.3:
            stages[s] = dataclasses.replace(stages[s], batch_sizes=[1])
    groups = [dataclasses.replace(g, memory_mb=rng.choice([g.memory_mb, 250, 450]), limit=rng.choice([1, g.limit]))
              if problem.nodes[g.node].parent is not None else g for g in problem.groups]
    nodes = [dataclasses.replace(n, up=LinkDirection(bandwidth_mbps=rng.choice([0.5, 2.0, 8.0]),
                                                     cost_per_gb=n.up.cost_per_gb if n.up else 0.0))
             if n.parent is not None and rng.random() < 0.6 else n for n in problem.nodes]
    options, by_stage = compile_options(problem.order, stages, groups, latency_bound=False, hop_ms=problem.hop_ms,
                                        batch_wait_ms=problem.batch_wait_ms)
    best = max(v.accuracy for v in stages[problem.order[-1]].variants)
    return dataclasses.replace(problem, stages=stages, groups=groups, nodes=nodes, options=options,
                               options_by_stage=by_stage,
                               sinks=[dataclasses.replace(problem.sinks[0], accuracy_target=rng.uniform(0.4, 0.9) * best)])


def _admits_plan(problem: Problem, accuracy) -> bool:
    result = solve_milp(problem, accuracy, gap_rel=1.0)
    assert result.solution is not None or result.stats.status == "infeasible", result.stats.status
    return result.solution is not None


@pytest.mark.parametrize("sharing", ["exclusive", "shared"])
def test_the_conflict_admits_no_plan_and_dropping_any_member_admits_one(sharing: str) -> None:
    checked = 0
    for seed in range(40):
        problem = _tightened(seed, sharing)
        accuracy = choose_model(problem)
        if _admits_plan(problem, accuracy):
            continue
        if checked < 6 and sum(g.limit for g in problem.groups) <= 4:  # enumerated too (a few: it is slow)
            assert brute_force(problem, accuracy) == float("inf"), seed
        conflict = find_conflict(problem, accuracy)
        assert conflict.minimal and conflict.members, seed
        everything = {c for family in candidates(problem) for c in family}
        others = everything - set(conflict.members)
        assert not _admits_plan(_relaxed_here(problem, others), accuracy), (seed, conflict.members)
        for member in conflict.members:
            assert _admits_plan(_relaxed_here(problem, others | {member}), accuracy), (seed, member)
        checked += 1
    assert checked >= 8, f"only {checked} infeasible instances: tighten the generator"
