"""Compilation: symmetry classes, options, rate bounds."""

from __future__ import annotations

from jellybean.optimizer.problem import compile_problem, gb_per_hour, mbps

from .random_instances import make_bundle

ZOO = {"tasks": [{"name": "det", "variants": [
    {"name": "n", "accuracy": 50, "output_kb": 4, "profiles": [
        {"hardware": "cpu", "latency_ms": {1: 100, 4: 200, 8: 500}},
        {"hardware": "gpu", "latency_ms": {1: 10}}]}]}]}


def city(hubs: int, cams_per_hub: int, odd_hub: bool = False) -> dict:
    sites = [{"name": "cloud", "tier": "cloud",
              "instances": [{"name": "g", "hardware": "gpu", "price_per_hour": 1, "max_count": 100}]}]
    for h in range(hubs):
        box = {"name": "box", "hardware": "cpu", "price_per_hour": 0.1, "count": 2 if (odd_hub and h == 0) else 1}
        sites.append({"name": f"hub{h}", "tier": "hub", "parent": "cloud", "instances": [box],
                      "uplink": {"up": {"bandwidth_mbps": 100, "cost_per_gb": 0.01}}})
        for c in range(cams_per_hub):
            sites.append({"name": f"cam{h}-{c}", "tier": "device", "parent": f"hub{h}"})
    return {"sites": sites}


def workflow(hubs: int, cams_per_hub: int) -> dict:
    cams = [f"cam{h}-{c}" for h in range(hubs) for c in range(cams_per_hub)]
    return {"sources": [{"name": "cams", "rate_per_s": 5, "payload_kb": 100, "sites": cams}],
            "stages": [{"name": "detect", "task": "det", "inputs": ["cams"]}], "slo": {"accuracy": 10}}


def test_identical_sites_collapse_into_classes() -> None:
    problem = compile_problem(make_bundle(ZOO, city(4, 3), workflow(4, 3)))
    assert len(problem.nodes) == 3  # cloud, one hub class, one camera class
    hub = next(n for n in problem.nodes if n.tier.value == "hub")
    cam = next(n for n in problem.nodes if n.tier.value == "device")
    assert hub.total == 4 and hub.multiplicity == 4
    assert cam.total == 12 and cam.multiplicity == 3
    assert sorted(cam.members)[:2] == ["cam0-0", "cam0-1"]
    # The source rate is per member site.
    assert problem.source_rates["cams"] == {cam.index: 5.0}


def test_a_different_site_is_its_own_class() -> None:
    problem = compile_problem(make_bundle(ZOO, city(4, 3, odd_hub=True), workflow(4, 3)))
    hubs = sorted(n.total for n in problem.nodes if n.tier.value == "hub")
    assert hubs == [1, 3]


def test_without_aggregation_every_site_is_a_node() -> None:
    problem = compile_problem(make_bundle(ZOO, city(2, 2), workflow(2, 2)), aggregate=False)
    assert len(problem.nodes) == 1 + 2 + 4
    assert all(n.total == 1 for n in problem.nodes)


def test_options_keep_best_batch_without_latency_bound() -> None:
    problem = compile_problem(make_bundle(ZOO, city(1, 1), workflow(1, 1)))
    cpu = [o for o in problem.options if problem.groups[o.group].hardware == "cpu"]
    assert len(cpu) == 1
    assert cpu[0].batch == 4  # 4 * 1000 / 200 = 20/s beats 10/s (b=1) and 16/s (b=8)
    assert cpu[0].throughput_per_s == 20.0


def test_options_keep_pareto_batches_with_latency_bound() -> None:
    wf = workflow(1, 1)
    wf["slo"]["latency_ms"] = 1000
    problem = compile_problem(make_bundle(ZOO, city(1, 1), wf))
    cpu = sorted(o.batch for o in problem.options if problem.groups[o.group].hardware == "cpu")
    assert cpu == [1, 4]  # batch 8 is slower and gives less throughput than batch 4


def test_member_rate_bound_is_the_subtree_traffic() -> None:
    problem = compile_problem(make_bundle(ZOO, city(4, 3), workflow(4, 3)))
    hub = next(n for n in problem.nodes if n.tier.value == "hub")
    cloud = next(n for n in problem.nodes if n.tier.value == "cloud")
    assert problem.member_rate_bound[("detect", hub.index)] == 15.0
    assert problem.member_rate_bound[("detect", cloud.index)] == 60.0
    assert problem.stages["detect"].rate_bound_per_s == 60.0


def test_units() -> None:
    # 1 msg/s of 1024 KB for an hour is 3600 MB = 3.515625 GB; 1 KB/s is 8192 bit/s.
    assert gb_per_hour(1, 1024) == 3600 / 1024
    assert mbps(1000, 1) == 8.192


def test_paths_follow_the_tree() -> None:
    problem = compile_problem(make_bundle(ZOO, city(2, 1), workflow(2, 1)), aggregate=False)
    index = {n.name: n.index for n in problem.nodes}
    ups, downs = problem.path(index["cam0-0"], index["hub1"])
    assert [problem.nodes[i].name for i in ups] == ["cam0-0", "hub0"]
    assert [problem.nodes[i].name for i in downs] == ["hub1"]
    assert not problem.reachable(index["cam0-0"], index["hub1"])  # would flow down
    assert problem.reachable(index["cam0-0"], index["cloud"])
