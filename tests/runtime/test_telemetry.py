"""Telemetry without Ray: which uplinks a message crosses, and how the actors' reports (cumulative
counters and distributions) become Prometheus series."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from jellybean.optimizer import plan as make_plan
from jellybean.runtime.deployment import build_deployment
from jellybean.runtime.flow import LATENCY_BOUNDS_MS, Sketch
from jellybean.runtime.metrics import Metrics
from jellybean.runtime.telemetry import Telemetry
from jellybean.spec import load_bundle

DIGITS = Path(__file__).resolve().parents[2] / "workflows" / "digits"


@pytest.fixture
def telemetry():
    bundle = load_bundle([DIGITS])
    plan = make_plan(bundle, baselines=False)
    deployment = build_deployment(bundle, plan, stateful=lambda loader: "aggregator" in loader)
    telemetry = Telemetry(deployment, plan, Metrics())
    actors = {"cameras@cam-1": SimpleNamespace(key="cameras@cam-1", site="cam-1")}
    pipeline = SimpleNamespace(bundle=bundle, actors=actors, links_down=set(), replicas={},
                               ledger=SimpleNamespace(in_flight=0, completed=0, correct=0, accuracy_percent=None),
                               sink_ledgers={"aggregate": SimpleNamespace(accuracy_percent=90.0)})
    telemetry.started(pipeline)
    return telemetry, pipeline


def test_a_message_crosses_the_uplinks_between_its_sites(telemetry) -> None:
    t, _ = telemetry
    assert t.path("cam-1", "hub") == [("cam-1", "up")]
    assert t.path("cam-1", "cloud") == [("cam-1", "up"), ("hub", "up")]
    assert t.path("cloud", "cam-2") == [("hub", "down"), ("cam-2", "down")]
    assert t.path("cam-1", "cam-2") == [("cam-1", "up"), ("cam-2", "down")]
    assert t.path("hub", "hub") == []


def test_reports_move_counters_by_their_difference(telemetry) -> None:
    t, pipeline = telemetry
    value = t.metrics.registry.get_sample_value
    hub = {"workflow": "digits", "site": "hub", "tier": "hub", "direction": "up"}
    cam = {**hub, "site": "cam-1", "tier": "device"}

    latency = Sketch(LATENCY_BOUNDS_MS)

    def report(size: int, sent: int) -> dict:
        while latency.count < sent:
            latency.add(5.0)
        return {"kind": "source", "key": "cameras@cam-1", "source": "cameras", "site": "cam-1", "sent": sent,
                "completed": sent, "failed": 0, "correct": sent, "shed": 0, "latency": latency.state(),
                "link_bytes": {"cloud": size}, "link_messages": {"cloud": sent},
                "sinks": {"aggregate": {"sent": sent, "completed": sent - 1, "failed": 1, "correct": sent - 2}}}

    t.update(pipeline, [report(1000, 10)])
    assert value("jellybean_link_bytes_total", cam) == 1000 and value("jellybean_link_bytes_total", hub) == 1000
    t.update(pipeline, [report(1500, 12)])  # cumulative: the counters move by the difference
    assert value("jellybean_link_bytes_total", hub) == 1500 and value("jellybean_link_messages_total", hub) == 12
    sent = {"workflow": "digits", "source": "cameras", "site": "cam-1", "tier": "device"}
    assert value("jellybean_frames_sent_total", sent) == 12
    at_sink = {"workflow": "digits", "sink": "aggregate"}
    assert value("jellybean_sink_frames_total", {**at_sink, "outcome": "completed"}) == 11
    assert value("jellybean_sink_frames_total", {**at_sink, "outcome": "failed"}) == 1
    assert value("jellybean_sink_frames_correct_total", at_sink) == 10
    assert value("jellybean_sink_accuracy_measured_percent", at_sink) == 90.0
    assert value("jellybean_sink_accuracy_target_percent", at_sink) == 95.0
    e2e = {"workflow": "digits"}
    assert value("jellybean_end_to_end_latency_seconds_count", e2e) == 12  # the sketch's gain, once
    assert value("jellybean_end_to_end_latency_seconds_bucket", {**e2e, "le": "0.005"}) == 12
    assert value("jellybean_end_to_end_latency_seconds_bucket", {**e2e, "le": "0.002"}) == 0
    assert value("jellybean_end_to_end_latency_seconds_sum", e2e) == pytest.approx(12 * 0.005)
    assert value("jellybean_link_planned_bytes_per_second", cam) > 0  # the plan's figure, beside it


def test_bucketed_counts_add_up_as_single_observations_would() -> None:
    """observe_counts writes prometheus_client's internals: if a new version changes them, this fails."""
    from jellybean.runtime.metrics import observe_counts

    values = [0.0001, 0.0007, 0.003, 0.003, 0.04, 0.9, 42.0]
    one, many = Metrics(), Metrics()
    for v in values:
        one.end_to_end_latency.labels("w").observe(v)
    sketch = Sketch(LATENCY_BOUNDS_MS)
    for v in values:
        sketch.add(v * 1000.0)
    observe_counts(many.end_to_end_latency.labels("w"), sketch.state()["coarse"], sketch.state()["sum"] / 1000.0)
    samples = lambda m: {(s.name, tuple(sorted(s.labels.items()))): s.value  # noqa: E731
                         for family in m.registry.collect() if family.name == "jellybean_end_to_end_latency_seconds"
                         for s in family.samples if not s.name.endswith("_created")}
    got, want = samples(many), samples(one)
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key])
