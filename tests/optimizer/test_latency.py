"""The end-to-end latency bound, on an instance small enough to check by hand."""

from __future__ import annotations

import pytest

from jellybean.optimizer.accuracy import choose_model
from jellybean.optimizer.planner import run_strategy
from jellybean.optimizer.problem import compile_problem

from .random_instances import make_bundle

ZOO = {"tasks": [
    {"name": "det", "variants": [{"name": "n", "accuracy": 50, "output_kb": 2, "profiles": [
        {"hardware": "cpu", "latency_ms": {1: 100}, "latency_ms_p90": {1: 130}},
        {"hardware": "gpu", "latency_ms": {1: 10}, "latency_ms_p90": {1: 12}}]}]},
    {"name": "cls", "variants": [{"name": "c", "accuracy": 90, "output_kb": 1, "profiles": [
        {"hardware": "cpu", "latency_ms": {1: 5}}, {"hardware": "gpu", "latency_ms": {1: 1}}]}]},
]}
#: No runtime overhead here (hops, batching waits, link batching and framing are checked in their own
#: tests): the numbers below are the profiles' and the link's alone.
TOPOLOGY = {"hop_latency_ms": 0, "batch_wait_ms": 0, "link_batch_wait_ms": 0, "message_framing": False, "sites": [
    {"name": "cloud", "tier": "cloud", "instances": [{"name": "g", "hardware": "gpu", "price_per_hour": 3, "max_count": 4}]},
    {"name": "hub", "tier": "hub", "parent": "cloud",
     "uplink": {"up": {"bandwidth_mbps": 100, "latency_ms": 20, "cost_per_gb": 0.01}},
     "instances": [{"name": "box", "hardware": "cpu", "price_per_hour": 0.1, "count": 4}]},
]}


def plan_with(bound: float | None, percentile: str = "mean", topology: dict | None = None, zoo: dict | None = None,
              rate: float = 5):
    slo = {"accuracy": 10, "latency_percentile": percentile}
    if bound is not None:
        slo["latency_ms"] = bound
    wf = {"sources": [{"name": "cams", "rate_per_s": rate, "payload_kb": 100, "sites": ["hub"]}],
          "stages": [{"name": "detect", "task": "det", "inputs": ["cams"]},
                     {"name": "classify", "task": "cls", "inputs": ["detect"]}],
          "slo": slo}
    problem = compile_problem(make_bundle(zoo or ZOO, topology or TOPOLOGY, wf))
    return run_strategy(problem, choose_model(problem), "optimal")


def test_without_bound_everything_stays_at_the_cheap_hub() -> None:
    plan = plan_with(None)
    assert {a.site for a in plan.assignments} == {"hub"}
    assert plan.latency_ms == pytest.approx(105.0)
    assert plan.latency_ms_p90 == pytest.approx(135.0)


def test_bound_moves_detection_to_the_cloud() -> None:
    plan = plan_with(50)
    assert plan.feasible
    assert {a.stage: a.site for a in plan.assignments} == {"detect": "cloud", "classify": "cloud"}
    # 20 ms link + 100 KB at 100 Mbps (8.192 ms) + 10 ms detection + 1 ms classification.
    assert plan.latency_ms == pytest.approx(20 + 8.192 + 10 + 1)
    assert plan.latency_ms <= 50


def test_p90_bound_uses_p90_profiles() -> None:
    # Mean path on the cloud is 39.19 ms, p90 is 41.19 ms: a 40 ms bound holds on the mean only.
    assert plan_with(40, "mean").feasible
    plan = plan_with(40, "p90")
    assert not plan.feasible
    assert any("latency bound 40 ms unreachable" in r and "41.19" in r for r in plan.explanation), plan.explanation


def test_unreachable_bound_is_explained_with_numbers() -> None:
    plan = plan_with(30)
    assert not plan.feasible
    assert any("latency bound 30 ms unreachable" in r and "39.19" in r for r in plan.explanation), plan.explanation


def test_the_runtime_overhead_counts_in_bounds_and_in_the_expected_latency() -> None:
    """With a hop cost and a batching wait: every stage pays the hop in the bound, a batched one the
    whole wait too; the expected latency counts the batches that really form at the planned rate,
    the wait for them and M/D/1 queueing, and no hop between stages the runtime fuses."""
    zoo = {"tasks": [
        {"name": "det", "variants": [{"name": "n", "accuracy": 50, "output_kb": 2, "profiles": [
            {"hardware": "cpu", "latency_ms": {1: 10, 8: 40}}, {"hardware": "gpu", "latency_ms": {1: 10}}]}]},
        {"name": "cls", "variants": [{"name": "c", "accuracy": 90, "output_kb": 1, "profiles": [
            {"hardware": "cpu", "latency_ms": {1: 5}}, {"hardware": "gpu", "latency_ms": {1: 5}}]}]},
    ]}
    topology = {**TOPOLOGY, "hop_latency_ms": 1.5, "batch_wait_ms": 4.0}
    plan = plan_with(None, topology=topology, zoo=zoo, rate=50)
    assert {a.site for a in plan.assignments} == {"hub"}
    (detect,) = [a for a in plan.assignments if a.stage == "detect"]
    assert detect.batch_size == 8  # the throughput-best batch, when no bound asks for less
    # Bound form: 40 + 1.5 + 4 (detect, batched) + 5 + 1.5 (classify).
    assert plan.latency_ms == pytest.approx(40 + 1.5 + 4 + 5 + 1.5)
    # Expected: 50 frames/s on one replica wait 4 ms for 1 + 50 * 0.004 = 1.2 frames (< 1.5: the whole
    # wait), which take 10 + 30 * 0.2 / 7 ms; queueing at rho = 50 * S / 1.2 / 1000; classify is fused.
    service = 10 + (40 - 10) * 0.2 / 7
    rho = 50 * service / 1000 / 1.2
    expected = service + 4.0 + rho / (2 * (1 - rho)) * service + 1.5
    classify_rho = 50 * 5 / 1000
    expected += 5 + classify_rho / (2 * (1 - classify_rho)) * 5
    assert plan.latency_ms_expected == pytest.approx(expected)
