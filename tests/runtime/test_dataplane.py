"""The data plane on a real local Ray: the digits plan deployed, frames streamed, every frame accounted."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path

import pytest

from jellybean.optimizer import plan as make_plan
from jellybean.runtime.dataplane import Pipeline, ServingError, replica_specs
from jellybean.spec import load_bundle

pytest.importorskip("ray")
pytest.importorskip("torch")

DIGITS = Path(__file__).resolve().parents[2] / "workflows" / "digits"


@pytest.fixture(scope="module")
def digits():
    bundle = load_bundle([DIGITS])
    return bundle, make_plan(bundle, baselines=False)


def test_replicas_follow_the_plan(digits) -> None:
    bundle, plan = digits
    specs = replica_specs(bundle, plan)
    assert {(s.stage, s.site) for s in specs} == {(a.stage, a.site) for a in plan.assignments}
    for a in plan.assignments:
        mine = [s for s in specs if s.stage == a.stage and s.site == a.site]
        assert len(mine) == max(1, math.ceil(a.instances - 1e-9))
        assert sum(s.weight for s in mine) == pytest.approx(a.rate_per_s)
        assert all(s.batch_size == a.batch_size and s.loader for s in mine)
    # The CPU shares of the stages sharing an instance add up to the instance's cores.
    by_instance: dict[tuple[str, str], float] = {}
    for s in specs:
        by_instance[(s.site, s.instance)] = by_instance.get((s.site, s.instance), 0.0) + s.num_cpus
    for value in by_instance.values():
        assert value == pytest.approx(1.0, abs=0.01)


def test_a_variant_without_loader_cannot_be_served() -> None:
    bundle = load_bundle(["workflows/vqa-medium"])
    with pytest.raises(ServingError, match="names no `loader`"):
        replica_specs(bundle, make_plan(bundle, baselines=False))


def split_in_two(pipeline: Pipeline, stage: str) -> None:
    """Replace the stage's single replica by two that share its CPUs and traffic."""
    one = next(s for s in pipeline.specs if s.stage == stage)
    half = dataclasses.replace(one, num_cpus=one.num_cpus / 2, weight=one.weight / 2)
    pipeline.specs = [s for s in pipeline.specs if s is not one] + [
        dataclasses.replace(half, key=one.key + "-a"), dataclasses.replace(half, key=one.key + "-b")]


def stream(pipeline: Pipeline, seconds: float):
    pipeline.start()
    time.sleep(seconds)
    return pipeline.stop(drain=True)


def test_digits_served_end_to_end(ray_local, digits, digits_zoo) -> None:
    bundle, plan = digits
    pipeline = Pipeline(bundle, plan, cache_dir=digits_zoo, pin_cpus=True)
    before = os.sched_getaffinity(0)
    pipeline.start()
    layout = pipeline.cpu_layout
    if len(before) >= 2:  # the topology's two 1-core instances fit: each gets a core of its own
        assert layout.pinned, layout.reason
        given = [tuple(cores) for cores in layout.instances.values()]
        assert len(given) == 2 and len(set(given)) == 2
        for replica in pipeline.replicas.values():
            assert os.sched_getaffinity(replica.pid) == set(layout.instances[replica.spec.instance_key])
        assert os.sched_getaffinity(0) == set(layout.driver)
    else:
        assert not layout.pinned and "need 2 cores" in layout.reason
    time.sleep(5.0)
    summary = pipeline.stop(drain=True)
    assert os.sched_getaffinity(0) == before  # the test process gets its cores back
    assert summary.cpu_pinning["pinned"] == layout.pinned
    frames = summary.frames
    assert frames.sent >= 300  # 2 cameras x 40 frames/s x 5 s, less start-up
    assert frames.lost == 0 and frames.failed == 0 and frames.completed == frames.sent
    # Measured on the frames that flowed, against the profile measured on 2,000 held-out frames.
    assert summary.measured.accuracy == pytest.approx(plan.accuracy, abs=3.0)
    assert summary.measured.throughput_per_s == pytest.approx(summary.predicted.throughput_per_s, rel=0.15)
    assert summary.measured.latency_ms_p50 > 0 and summary.measured.latency_ms_p99 >= summary.measured.latency_ms_p50
    stages = {(s.stage, s.site): s for s in summary.stages}
    for a in plan.assignments:
        row = stages[(a.stage, a.site)]
        assert row.replicas_alive == row.replicas_planned
        assert row.rate_measured_per_s > 0
        assert 1 <= row.mean_batch_size <= a.batch_size
    assert pipeline.status()["state"] == "stopped"


def test_a_replica_dies_and_its_frames_are_retried_elsewhere(ray_local, digits, digits_zoo) -> None:
    bundle, plan = digits
    pipeline = Pipeline(bundle, plan, cache_dir=digits_zoo)
    split_in_two(pipeline, "classify")  # two replicas of the classifier, so that one can fail
    pipeline.start()
    time.sleep(1.5)
    victim = next(r for r in pipeline.replicas.values() if r.spec.stage == "classify")
    ray_local.kill(victim.actor)
    time.sleep(2.5)
    assert pipeline.status()["state"] == "degraded"
    summary = pipeline.stop(drain=True)
    assert summary.frames.lost == 0
    assert summary.frames.completed + summary.frames.failed == summary.frames.sent
    # The survivor took over: the frames after the failure completed, none is missing.
    assert summary.frames.failed == 0, summary.failures
    assert not victim.alive


def test_backpressure_slows_the_sources_instead_of_losing_frames(ray_local, digits, digits_zoo) -> None:
    """Ten times the planned rate: sources fall behind, queues stay bounded, every frame is served."""
    bundle, plan = digits
    fast = bundle.workflow.model_copy(deep=True)
    fast.spec.sources[0].rate_per_s = 4000.0
    bundle_fast = type(bundle)(fast, bundle.zoo, bundle.topology, bundle.sources)
    pipeline = Pipeline(bundle_fast, plan, cache_dir=digits_zoo)
    pipeline.start()
    peak_queued = 0
    for _ in range(20):
        time.sleep(0.1)
        peak_queued = max(peak_queued, sum(r.queue.qsize() for r in pipeline.replicas.values()))
    summary = pipeline.stop(drain=True)
    capacity = sum(r.queue.maxsize for r in pipeline.replicas.values())
    assert peak_queued <= capacity
    assert summary.frames.sent < 4000 * 2 * 2  # the sources were held back
    assert summary.frames.lost == 0 and summary.frames.failed == 0


def test_a_stateful_join_gets_all_of_a_frame_on_one_replica(ray_local, digits, digits_zoo) -> None:
    """Two aggregator replicas: crops are routed by frame id, so every frame still completes."""
    bundle, plan = digits
    pipeline = Pipeline(bundle, plan, cache_dir=digits_zoo)
    split_in_two(pipeline, "aggregate")
    summary = stream(pipeline, 3.0)
    joins = [r for r in pipeline.replicas.values() if r.spec.stage == "aggregate"]
    assert all(r.stateful and r.requests["aggregate"] > 0 for r in joins)
    assert summary.frames.sent > 100
    assert summary.frames.lost == 0 and summary.frames.failed == 0 and summary.frames.completed == summary.frames.sent


def test_fusion_joins_co_located_stateless_stages_only(digits) -> None:
    from jellybean.runtime.dataplane import plan_fusion
    from jellybean.zoo.registry import is_stateful

    bundle, plan = digits
    specs = replica_specs(bundle, plan)
    order = ["detect", "classify", "aggregate"]
    consumers = {"detect": ["classify"], "classify": ["aggregate"]}
    inputs = {"detect": 1, "classify": 1, "aggregate": 1}
    chains = plan_fusion(specs, order, consumers, inputs, is_stateful)
    assert [[s.stage for s in chain] for chain in chains.values()] == [["detect", "classify"]]
    # A stateful stage is never fused, even onto the same instance.
    same_place = [dataclasses.replace(s, site="hub", instance="hub-cpu") for s in specs]
    chains = plan_fusion(same_place, order, consumers, inputs, is_stateful)
    assert [[s.stage for s in chain] for chain in chains.values()] == [["detect", "classify"]]
    everything = plan_fusion(same_place, order, consumers, inputs, lambda loader: False)
    assert [[s.stage for s in chain] for chain in everything.values()] == [["detect", "classify", "aggregate"]]
    # Two replicas of a stage: routing by shares is needed, so no fusion.
    one = next(s for s in specs if s.stage == "classify")
    doubled = [s for s in specs if s is not one] + [dataclasses.replace(one, key="a"), dataclasses.replace(one, key="b")]
    assert plan_fusion(doubled, order, consumers, inputs, is_stateful) == {}
