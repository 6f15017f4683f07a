"""Results that must leave a site are priced like any flow: an output pinned to a site receives the
sink's results over the tree's links, and every strategy pays (and routes, and checks) them."""

from __future__ import annotations

import pytest

from jellybean.optimizer import plan as make_plan
from jellybean.optimizer.evaluate import verify
from jellybean.optimizer.problem import compile_problem

from .random_instances import make_bundle

ZOO = {"tasks": [
    {"name": "det", "variants": [{"name": "n", "accuracy": 50, "output_kb": 4, "profiles": [
        {"hardware": "cpu", "latency_ms": {1: 10}}, {"hardware": "gpu", "latency_ms": {1: 2}}]}]},
    {"name": "cls", "variants": [{"name": "c", "accuracy": 90, "output_kb": 2, "profiles": [
        {"hardware": "cpu", "latency_ms": {1: 5}}, {"hardware": "gpu", "latency_ms": {1: 1}}]}]},
]}


def topology(up_cost: float = 0.5, up_mbps: float | None = None) -> dict:
    """Payloads alone on the links (message framing is tested on its own)."""
    return {"message_framing": False, "sites": [
        {"name": "cloud", "tier": "cloud", "instances": [{"name": "g", "hardware": "gpu", "price_per_hour": 5.0,
                                                          "max_count": 4}]},
        {"name": "hub", "tier": "hub", "parent": "cloud",
         "uplink": {"up": {"cost_per_gb": up_cost, **({"bandwidth_mbps": up_mbps} if up_mbps else {})}},
         "instances": [{"name": "box", "hardware": "cpu", "price_per_hour": 0.1, "count": 4}]},
    ]}


def workflow(outputs: list[dict]) -> dict:
    return {"sources": [{"name": "cams", "rate_per_s": 10, "payload_kb": 100, "sites": ["hub"]}],
            "stages": [{"name": "detect", "task": "det", "inputs": ["cams"]},
                       {"name": "classify", "task": "cls", "inputs": ["detect"]}],
            "slo": {"accuracy": 10}, "outputs": outputs}


def test_an_output_where_the_sink_runs_moves_nothing() -> None:
    bundle = make_bundle(ZOO, topology(), workflow([{"name": "readings", "kind": "stream"}]))
    plan = make_plan(bundle, baselines=False)
    assert {a.site for a in plan.assignments} == {"hub"}
    assert plan.links == [] and plan.cost.network_per_hour == 0


@pytest.mark.parametrize("strategy", ["optimal", "edge-first", "two-stage", "jellybean"])
def test_results_carried_to_a_pinned_output_are_priced(strategy: str) -> None:
    bundle = make_bundle(ZOO, topology(), workflow([
        {"name": "hook", "kind": "webhook", "url": "https://example.com/x", "site": "cloud", "result_kb": 8,
         "ratio": 0.5}]))
    plan = make_plan(bundle, strategy=strategy, baselines=False)
    assert plan.feasible, plan.explanation
    assert {a.site for a in plan.assignments} == {"hub"}  # the sink stays where the data is cheap to process
    (link,) = plan.links
    assert link.from_ == "hub" and link.to == "cloud" and link.carries == ["classify->output:hook"]
    # 10 frames/s -> 10 classifications/s -> 5 results/s of 8 KB.
    gb_per_hour = 5 * 8 * 3600 / 1024 ** 2
    assert link.gb_per_hour == pytest.approx(gb_per_hour)
    assert plan.cost.network_per_hour == pytest.approx(gb_per_hour * 0.5)
    problem = compile_problem(bundle)
    assert [o.key for o in problem.outputs] == ["classify->output:hook"]


def test_the_results_size_defaults_to_the_sink_variants_output() -> None:
    bundle = make_bundle(ZOO, topology(), workflow([{"name": "hook", "kind": "file", "site": "cloud"}]))
    (link,) = make_plan(bundle, baselines=False).links
    assert link.gb_per_hour == pytest.approx(10 * 2 * 3600 / 1024 ** 2)


def test_an_uplink_too_thin_for_the_results_moves_the_sink_next_to_its_output() -> None:
    # 10 results/s of 64 KB need 5.24 Mbps; the uplink has 1: classifying in the cloud ships the
    # detections (0.33 Mbps) instead, and the results stay where they are delivered.
    bundle = make_bundle(ZOO, topology(up_mbps=1.0), workflow([
        {"name": "hook", "kind": "webhook", "url": "http://example.com/x", "site": "cloud", "result_kb": 64}]))
    plan = make_plan(bundle, baselines=False)
    assert plan.feasible
    assert {a.stage: a.site for a in plan.assignments} == {"detect": "hub", "classify": "cloud"}
    (link,) = plan.links
    assert link.carries == ["detect->classify"] and link.mbps <= 1.0


def test_a_pinned_output_keeps_its_site_out_of_a_class_of_identical_ones() -> None:
    topo = {**topology(), "allow_downward_flows": True}
    topo["sites"].append({**topo["sites"][1], "name": "hub-2"})
    wf = workflow([{"name": "hook", "kind": "stream", "site": "hub-2"}])
    wf["sources"][0]["sites"] = ["hub", "hub-2"]
    problem = compile_problem(make_bundle(ZOO, topo, wf))
    hubs = [n for n in problem.nodes if n.tier.value == "hub"]
    assert sorted(n.name for n in hubs) == ["hub", "hub-2"] and all(n.total == 1 for n in hubs)
    plan = make_plan(make_bundle(ZOO, topo, wf), baselines=False)
    assert plan.feasible
    # The first hub's results travel up and down again to the output; the second hub's stay.
    carried = {(link.from_, link.to) for link in plan.links if "classify->output:hook" in link.carries}
    assert carried == {("hub", "cloud"), ("cloud", "hub-2")}


def test_verify_checks_the_output_flows() -> None:
    from jellybean.optimizer.accuracy import choose_model
    from jellybean.optimizer.planner import run_strategy

    bundle = make_bundle(ZOO, topology(), workflow([{"name": "hook", "kind": "file", "site": "cloud"}]))
    problem = compile_problem(bundle)
    accuracy = choose_model(problem)
    plan = run_strategy(problem, accuracy, "optimal")
    assert plan.feasible
    from jellybean.optimizer.milp import solve_milp

    solution = solve_milp(problem, accuracy).solution
    assert verify(problem, solution, accuracy) == []
    solution.flows_up = {}  # the results go nowhere: flagged
    assert any("output edge classify->output:hook" in p for p in verify(problem, solution, accuracy))
