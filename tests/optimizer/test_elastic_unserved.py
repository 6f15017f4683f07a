"""The elastic solve's unserved traffic: where no violation of bandwidth, instance counts, accuracy
or latency serves a source's requests, they may go unserved, at the highest price; the decoder reads
those slacks (once a refactor found that they were priced but never decoded, so the explanation
could never say it), and the explanation says how many requests/s from where cannot be served."""

from __future__ import annotations

import pytest

from jellybean.optimizer.accuracy import choose_model
from jellybean.optimizer.explain import explain
from jellybean.optimizer.milp import solve_milp
from jellybean.optimizer.problem import compile_problem

from .random_instances import make_bundle


def variant(name: str, accuracy: float, memory_mb: float, **latency_ms: dict) -> dict:
    """A variant of 1 KB outputs, profiled at ``hardware={batch: ms}``."""
    return {"name": name, "accuracy": accuracy, "output_kb": 1, "memory_mb": memory_mb,
            "profiles": [{"hardware": hw, "latency_ms": lat} for hw, lat in latency_ms.items()]}


BLUR_ZOO = {"tasks": [
    {"name": "blur", "variants": [variant("gauss", 100, 100, cpu={1: 5}, jetson={1: 5})]},
    {"name": "det", "variants": [variant("yolo-n", 60, 600, cpu={1: 50}, jetson={1: 20}),
                                 variant("yolo-m", 70, 1500, cpu={1: 120}, jetson={1: 40})]}]}
BLUR_TOPOLOGY = {"sites": [
    {"name": "cloud", "tier": "cloud"},
    {"name": "hub", "tier": "hub", "parent": "cloud",
     "instances": [{"name": "box", "hardware": "cpu", "price_per_hour": 0.1, "count": 2, "memory_mb": 512}]},
    {"name": "cam", "tier": "device", "parent": "hub",
     "instances": [{"name": "jet", "hardware": "jetson", "price_per_hour": 0.05, "count": 1, "memory_mb": 8000}]}]}
BLUR_WORKFLOW = {"sources": [{"name": "cams", "rate_per_s": 5, "payload_kb": 100, "sites": ["cam"]}],
                 "stages": [{"name": "blur", "task": "blur", "inputs": ["cams"], "placement": {"sites": ["hub"]}},
                            {"name": "detect", "task": "det", "inputs": ["blur"]}],
                 "slo": {"accuracy": 50}}


def test_unserved_traffic_is_decoded_and_said() -> None:
    """Before, the slacks of unserved traffic were priced but never decoded, so the explanation could
    not say it. Blur's results cannot reach any detector: however far bandwidth, counts, accuracy or
    latency were exceeded, the camera's 5 req/s cannot be served."""
    problem = compile_problem(make_bundle(BLUR_ZOO, BLUR_TOPOLOGY, BLUR_WORKFLOW))
    accuracy = choose_model(problem)
    served = solve_milp(problem, accuracy, elastic=True, unserved=False)
    assert served.solution is None and served.stats.status == "infeasible"
    result = solve_milp(problem, accuracy, elastic=True)
    cam = next(n.index for n in problem.nodes if n.name == "cam")
    assert result.slacks is not None and result.slacks.unserved == {("cams", cam): pytest.approx(5.0)}
    why = explain(problem, accuracy)
    assert "5 req/s from cams at cam cannot be served, however far bandwidth, instance counts, accuracy and " \
           "latency were exceeded: its data reaches no instances for every stage" in why


def test_unserved_traffic_of_a_source_feeding_two_stages_is_counted_once() -> None:
    """A source feeding two stages has one slack per edge; the source's unserved rate is the larger,
    not their sum."""
    workflow = {"sources": [{"name": "cams", "rate_per_s": 5, "payload_kb": 100, "sites": ["cam"]}],
                "stages": [{"name": "blur", "task": "blur", "inputs": ["cams"], "placement": {"sites": ["hub"]}},
                           {"name": "detect", "task": "det", "inputs": ["blur", "cams"]}],
                "slo": {"accuracy": 50}}
    problem = compile_problem(make_bundle(BLUR_ZOO, BLUR_TOPOLOGY, workflow))
    result = solve_milp(problem, choose_model(problem), elastic=True)
    cam = next(n.index for n in problem.nodes if n.name == "cam")
    assert result.slacks is not None and result.slacks.unserved == {("cams", cam): pytest.approx(5.0)}


def test_a_source_served_past_the_limits_is_not_unserved() -> None:
    """Where exceeding a limit serves the traffic (the hub's one box serves 16 of the 50 req/s it
    must), the elastic solve does so rather than drop it, and that solve is tried first."""
    zoo = {"tasks": [{"name": "det", "variants": [variant("n", 60, 100, cpu={1: 50})]}]}
    topology = {"sites": [{"name": "hub", "tier": "hub", "instances": [
        {"name": "box", "hardware": "cpu", "price_per_hour": 0.1, "count": 1}]},
        {"name": "cam", "tier": "device", "parent": "hub"}]}
    workflow = {"sources": [{"name": "cams", "rate_per_s": 50, "payload_kb": 10, "sites": ["cam"]}],
                "stages": [{"name": "detect", "task": "det", "inputs": ["cams"]}], "slo": {"accuracy": 10}}
    problem = compile_problem(make_bundle(zoo, topology, workflow))
    accuracy = choose_model(problem)
    for unserved in (True, False):
        result = solve_milp(problem, accuracy, elastic=True, unserved=unserved)
        assert result.slacks is not None and not result.slacks.unserved
        assert result.slacks.instances == {(0, None): pytest.approx(3.0)}  # 50 / (0.8 x 20) -> 4 boxes
    assert "instances box at hub: the plan needs 4, the site has 1" in explain(problem, accuracy)
