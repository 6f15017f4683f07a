"""The data plane on a real local Ray: the digits plan deployed as actors that hand frames to each
other, every frame accounted, metrics that agree with the ledger, and the behaviours that need real
processes (an actor killed by Ray, CPU pinning, replay at the planned rate, overload shed)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from jellybean.optimizer import plan as make_plan
from jellybean.runtime.dataplane import Pipeline
from jellybean.runtime.metrics import Metrics
from jellybean.runtime.replicas import ReplicaState
from jellybean.spec import load_bundle
from tests.runtime.inprocess import eventually, split

DIGITS = Path(__file__).resolve().parents[2] / "workflows" / "digits"


@pytest.fixture(scope="module")
def digits():
    bundle = load_bundle([DIGITS])
    return bundle, make_plan(bundle, baselines=False)


def test_digits_served_end_to_end(ray_local, digits, digits_zoo) -> None:
    bundle, plan = digits
    metrics = Metrics()
    pipeline = Pipeline(bundle, plan, cache_dir=digits_zoo, pin_cpus=True, metrics=metrics, report_interval_s=0.2)
    before = os.sched_getaffinity(0)
    pipeline.start()
    layout = pipeline.cpu_layout
    if len(before) >= 2:  # the topology's two 1-core instances fit: each gets a core of its own
        assert layout.pinned, layout.reason
        given = [tuple(cores) for cores in layout.instances.values()]
        assert len(given) == 2 and len(set(given)) == 2
        for replica in pipeline.replicas.values():
            assert os.sched_getaffinity(replica.info["pid"]) == set(layout.instances[replica.plan.head.instance_key])
        for actor in pipeline.actors.values():
            if actor.kind != "replica":
                assert os.sched_getaffinity(actor.info["pid"]) == set(layout.driver)
    else:
        assert not layout.pinned and "need 2 cores" in layout.reason
    # The served rate in steady state (after the start-up's backlog has cleared) is the planned one.
    eventually(lambda: pipeline.ledger.completed >= 100, 30, p=pipeline)
    start, done = time.monotonic(), pipeline.ledger.completed
    eventually(lambda: pipeline.ledger.completed >= done + 300, 30, p=pipeline)
    steady = (pipeline.ledger.completed - done) / (time.monotonic() - start)
    assert steady == pytest.approx(80.0, rel=0.15)
    summary = pipeline.stop(drain=True)
    assert os.sched_getaffinity(0) == before  # the test process gets its cores back
    assert summary.cpu_pinning["pinned"] == layout.pinned
    frames = summary.frames
    assert frames.lost == 0 and frames.failed == 0 and frames.completed == frames.sent >= 300
    # Measured on the frames that flowed, against the profile measured on 2,000 held-out frames.
    assert summary.measured.accuracy == pytest.approx(plan.accuracy, abs=3.0)
    # Between the first and the last result, the start-up's backlog included.
    assert summary.measured.throughput_per_s == pytest.approx(summary.predicted.throughput_per_s, rel=0.3)
    assert summary.measured.latency_ms_p50 > 0 and summary.measured.latency_ms_p99 >= summary.measured.latency_ms_p50
    stages = {(s.stage, s.site): s for s in summary.stages}
    for a in plan.assignments:
        row = stages[(a.stage, a.site)]
        assert row.replicas_alive == row.replicas_planned
        assert row.rate_measured_per_s > 0
        assert 1 <= row.mean_batch_size <= a.batch_size
    assert pipeline.status()["state"] == "stopped"
    assert_metrics_agree(metrics, summary, pipeline, plan)


def assert_metrics_agree(metrics: Metrics, summary, pipeline: Pipeline, plan) -> None:
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
    # The bytes the actors sent, on the links between their sites: every camera's frames crossed its
    # uplink; the hub's predictions crossed the hub's; nothing went down the tiers.
    sent_by = {}
    for actor in pipeline.actors.values():
        for site, size in actor.report.get("link_bytes", {}).items():
            sent_by[(actor.site, site)] = sent_by.get((actor.site, site), 0) + size
    cam = {**wf, "site": "cam-1", "tier": "device", "direction": "up"}
    assert value("jellybean_link_bytes_total", cam) == sent_by[("cam-1", "hub")] > 0
    hub = {**wf, "site": "hub", "tier": "hub", "direction": "up"}
    assert value("jellybean_link_bytes_total", hub) == sent_by[("hub", "cloud")] > 0
    assert not value("jellybean_link_bytes_total", {**hub, "direction": "down"})
    assert value("jellybean_link_messages_total", hub) == value(
        "jellybean_stage_outputs_total", {**wf, "stage": "classify", "variant": plan.models["classify"], "site": "hub",
                                          "tier": "hub", "instance": "hub-cpu-0"})
    assert value("jellybean_instance_busy_seconds_total", {**wf, "site": "hub", "tier": "hub",
                                                           "instance": "hub-cpu-0"}) > 0
    assert value("jellybean_plan_info", {**wf, "status": plan.solver.status, "strategy": plan.strategy}) == 1
    assert value("jellybean_plan_cost_dollars_per_hour", {**wf, "tier": "hub", "kind": "compute"}) == pytest.approx(
        plan.cost.by_tier["hub"].compute_per_hour)
    assert value("jellybean_accuracy_measured_percent", wf) == pytest.approx(summary.measured.accuracy)


def test_an_actor_killed_by_ray_is_routed_around(ray_local, digits, digits_zoo) -> None:
    bundle, plan = digits
    pipeline = Pipeline(bundle, plan, cache_dir=digits_zoo, fuse=False, report_interval_s=0.2)
    pipeline.deployment = split(pipeline.deployment, "classify", [1.0, 1.0])
    pipeline.start()
    eventually(lambda: pipeline.ledger.completed > 50, 30, p=pipeline)
    victim = next(a for a in pipeline.replicas.values() if a.plan.head.stage == "classify")
    ray_local.kill(victim.handle)
    eventually(lambda: victim.state == ReplicaState.DEAD, 30, p=pipeline)
    done = pipeline.ledger.completed
    eventually(lambda: pipeline.ledger.completed > done + 100, 30, p=pipeline)
    assert pipeline.status()["state"] == "degraded"
    summary = pipeline.stop(drain=True)
    assert summary.frames.lost == 0 and summary.frames.failed == 0, summary.failures
    assert summary.frames.completed == summary.frames.sent


def test_overload_is_shed_at_the_sources_explicitly_and_counted(ray_local, digits, digits_zoo) -> None:
    bundle, plan = digits
    flood = bundle.workflow.model_copy(deep=True)
    for source in flood.spec.sources:
        source.rate_per_s = 100_000.0  # far beyond what the hub can serve
    bundle_flood = type(bundle)(flood, bundle.zoo, bundle.topology, bundle.sources)
    metrics = Metrics()
    pipeline = Pipeline(bundle_flood, plan, cache_dir=digits_zoo, overload="shed", shed_after_ms=5.0,
                        metrics=metrics, report_interval_s=0.2)
    pipeline.start()
    eventually(lambda: pipeline.shed > 0 and pipeline.ledger.completed > 1000, 60, p=pipeline)
    summary = pipeline.stop(drain=True)
    frames = summary.frames
    assert frames.lost == 0
    shed = sum(n for reason, n in summary.failures.items() if reason.startswith("shed at the source"))
    assert shed == pipeline.shed == frames.failed  # every failure is a shed frame, with its reason
    counted = sum(metrics.registry.get_sample_value(
        "jellybean_frames_shed_total", {"workflow": "digits", "source": "cameras", "site": s, "tier": "device"})
        for s in ("cam-1", "cam-2"))
    assert counted == shed


def test_backpressure_paces_the_sources_and_loses_nothing(ray_local, digits, digits_zoo) -> None:
    """Sources far faster than the hub: they send only as fast as the pipeline takes frames."""
    bundle, plan = digits
    fast = bundle.workflow.model_copy(deep=True)
    fast.spec.sources[0].rate_per_s = 100_000.0
    bundle_fast = type(bundle)(fast, bundle.zoo, bundle.topology, bundle.sources)
    pipeline = Pipeline(bundle_fast, plan, cache_dir=digits_zoo, max_in_flight=64, report_interval_s=0.2)
    pipeline.start()
    peak = 0

    def watch() -> bool:
        nonlocal peak
        peak = max(peak, max(a.report.get("in_flight", 0) for a in pipeline.actors.values() if a.kind == "source"))
        return pipeline.ledger.completed > 2000

    eventually(watch, 60, p=pipeline)
    summary = pipeline.stop(drain=True)
    assert 0 < peak <= 64  # no source ever had more in flight than its room
    assert summary.frames.lost == 0 and summary.frames.failed == 0 and summary.frames.completed == summary.frames.sent


def test_two_sinks_served_end_to_end(ray_local, digits_zoo, tmp_path: Path) -> None:
    """workflows/two-sinks on real Ray with the digits models, its cameras replayed: every frame ends
    at its sink, each output gets its own sinks' results, and accuracy is measured per sink, near
    what the plan predicts for each."""
    bundle = load_bundle([Path(__file__).resolve().parents[2] / "workflows" / "two-sinks"])
    replayed = bundle.workflow.model_copy(deep=True)
    for source in replayed.spec.sources:
        source.ingest, source.payload, source.replay = None, None, "digits-frames"
    bundle = type(bundle)(replayed, bundle.zoo, bundle.topology, bundle.sources)
    plan = make_plan(bundle, baselines=False)
    pipeline = Pipeline(bundle, plan, cache_dir=digits_zoo, output_dir=tmp_path, report_interval_s=0.2)
    pipeline.start()
    eventually(lambda: all(view.completed >= 150 for view in pipeline.sink_ledgers.values()), 60, p=pipeline)
    summary = pipeline.stop(drain=True)
    assert summary.frames.lost == 0 and summary.frames.failed == 0, summary.failures
    sinks = {s.sink: s for s in summary.sinks}
    assert list(sinks) == ["readings", "meter-readings"]
    assert sum(s.frames.completed for s in sinks.values()) == summary.frames.completed == summary.frames.sent
    predicted = {s.stage: s.accuracy for s in plan.sinks}
    for name, row in sinks.items():
        assert row.accuracy_predicted == predicted[name]
        assert row.accuracy_measured is not None and abs(row.accuracy_measured - predicted[name]) < 8, row
    import json

    billing = [json.loads(line) for line in (tmp_path / "two-sinks" / "billing.jsonl").read_text().splitlines()]
    assert len(billing) == sinks["meter-readings"].frames.completed
    assert {r["sink"] for r in billing} == {"meter-readings"}
