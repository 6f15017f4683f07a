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
from jellybean.runtime.metrics import Metrics
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
    metrics = Metrics()
    pipeline = Pipeline(bundle, plan, cache_dir=digits_zoo, pin_cpus=True, metrics=metrics)
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
    assert_metrics_agree(metrics, summary, bundle, plan)


def assert_metrics_agree(metrics: Metrics, summary, bundle, plan) -> None:  # noqa: ANN001
    """What Prometheus would scrape agrees with the run's own accounting and with the plan."""
    value = metrics.registry.get_sample_value
    wf = {"workflow": "digits"}
    frames = summary.frames
    assert value("jellybean_frames_completed_total", wf) == frames.completed
    assert value("jellybean_frames_failed_total", wf) == frames.failed
    sent = sum(value("jellybean_frames_sent_total", {**wf, "source": "cameras", "site": s, "tier": "device"})
               for s in ("cam-1", "cam-2"))
    assert sent == frames.sent
    assert value("jellybean_frames_correct_total", wf) == round(frames.completed * summary.measured.accuracy / 100)
    assert value("jellybean_end_to_end_latency_seconds_count", wf) == frames.completed
    by_stage = {row.stage: row for row in summary.stages}
    for a in plan.assignments:
        labels = {**wf, "stage": a.stage, "variant": a.variant, "site": a.site, "tier": a.tier,
                  "instance": f"{a.instance}-0"}
        requests = value("jellybean_stage_requests_total", labels)
        row = by_stage[a.stage]
        assert requests == pytest.approx(row.mean_batch_size * row.batches)
        assert value("jellybean_stage_processing_seconds_count", labels) == by_stage[a.stage].batches
        assert value("jellybean_stage_batch_size_sum", labels) == requests
        assert value("jellybean_stage_planned_requests_per_second", labels) == pytest.approx(a.rate_per_s)
    # Every frame crossed its camera's uplink at the source's declared size; every prediction the
    # hub's uplink at the classifier's output size (the aggregator runs in the cloud).
    cam = {**wf, "site": "cam-1", "tier": "device", "direction": "up"}
    payload_bytes = bundle.workflow.spec.sources[0].payload_kb * 1024
    assert value("jellybean_link_bytes_total", cam) == pytest.approx(value("jellybean_link_messages_total", cam)
                                                                     * payload_bytes)
    hub = {**wf, "site": "hub", "tier": "hub", "direction": "up"}
    classify = next(a for a in plan.assignments if a.stage == "classify")
    assert value("jellybean_link_messages_total", hub) == value(
        "jellybean_stage_outputs_total", {**wf, "stage": "classify", "variant": classify.variant, "site": "hub",
                                          "tier": "hub", "instance": "hub-cpu-0"})
    assert value("jellybean_instance_busy_seconds_total", {**wf, "site": "hub", "tier": "hub",
                                                           "instance": "hub-cpu-0"}) > 0
    assert value("jellybean_plan_info", {**wf, "status": plan.solver.status, "strategy": plan.strategy}) == 1
    assert value("jellybean_plan_cost_dollars_per_hour", {**wf, "tier": "hub", "kind": "compute"}) == pytest.approx(
        plan.cost.by_tier["hub"].compute_per_hour)
    assert value("jellybean_accuracy_measured_percent", wf) == pytest.approx(summary.measured.accuracy)


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


def test_a_hub_cut_off_from_the_cloud_keeps_serving_and_buffers_what_must_go_up(ray_local, digits,
                                                                                 digits_zoo) -> None:
    bundle, plan = digits
    pipeline = Pipeline(bundle, plan, cache_dir=digits_zoo, link_buffer_capacity=100_000)
    pipeline.start()
    time.sleep(1.0)
    pipeline.set_uplink("hub", False)
    time.sleep(0.5)
    completed, detected = pipeline.ledger.completed, pipeline.status()["stages"]
    time.sleep(2.0)
    # Edge autonomy: the hub's stages keep running, the cloud's aggregator gets nothing meanwhile.
    requests = {row["stage"]: row for row in pipeline.status()["stages"]}
    assert requests["detect"]["rate_measured_per_s"] > 0
    assert pipeline.ledger.completed == completed
    assert len(pipeline.link_buffers["hub"]) > 100
    pipeline.set_uplink("hub", True)
    time.sleep(1.5)
    summary = pipeline.stop(drain=True)
    assert not pipeline.link_buffers.get("hub")
    assert summary.frames.lost == 0 and summary.frames.failed == 0, summary.failures
    assert summary.frames.completed == summary.frames.sent
    assert detected  # the status had rows while cut off


def test_a_full_uplink_buffer_fails_frames_with_the_reason_and_loses_none(ray_local, digits, digits_zoo) -> None:
    bundle, plan = digits
    pipeline = Pipeline(bundle, plan, cache_dir=digits_zoo, link_buffer_capacity=50)
    pipeline.start()
    time.sleep(0.5)
    pipeline.set_uplink("hub", False)
    time.sleep(2.0)
    pipeline.set_uplink("hub", True)
    time.sleep(1.0)
    summary = pipeline.stop(drain=True)
    assert summary.frames.lost == 0
    assert summary.frames.failed > 0
    assert all("uplink of hub is down" in reason or "in flight" in reason for reason in summary.failures)


def test_overload_is_shed_at_the_sources_explicitly_and_counted(ray_local, digits, digits_zoo) -> None:
    bundle, plan = digits
    flood = bundle.workflow.model_copy(deep=True)
    for source in flood.spec.sources:
        source.rate_per_s = 100_000.0  # far beyond what the hub can serve
    bundle_flood = type(bundle)(flood, bundle.zoo, bundle.topology, bundle.sources)
    metrics = Metrics()
    pipeline = Pipeline(bundle_flood, plan, cache_dir=digits_zoo, overload="shed", shed_after_ms=5.0,
                        metrics=metrics)
    summary = stream(pipeline, 3.0)
    frames = summary.frames
    assert pipeline.shed > 0 and frames.lost == 0
    shed = sum(n for reason, n in summary.failures.items() if reason.startswith("shed at the source"))
    assert shed == pipeline.shed == frames.failed  # every failure is a shed frame, with its reason
    counted = sum(metrics.registry.get_sample_value(
        "jellybean_frames_shed_total", {"workflow": "digits", "source": "cameras", "site": s, "tier": "device"})
        for s in ("cam-1", "cam-2"))
    assert counted == shed
    assert frames.completed > 1000  # what could be served was served
