"""Telemetry without Ray: which uplinks a message crosses, and how the actors' reports (cumulative
counters, samples since the last report) become Prometheus series."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from jellybean.optimizer import plan as make_plan
from jellybean.runtime.deployment import build_deployment
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
                               ledger=SimpleNamespace(in_flight=0, completed=0, correct=0))
    telemetry.started(pipeline)
    return telemetry, pipeline


def test_a_message_crosses_the_uplinks_between_its_sites(telemetry) -> None:  # noqa: ANN001
    t, _ = telemetry
    assert t.path("cam-1", "hub") == [("cam-1", "up")]
    assert t.path("cam-1", "cloud") == [("cam-1", "up"), ("hub", "up")]
    assert t.path("cloud", "cam-2") == [("hub", "down"), ("cam-2", "down")]
    assert t.path("cam-1", "cam-2") == [("cam-1", "up"), ("cam-2", "down")]
    assert t.path("hub", "hub") == []


def test_reports_move_counters_by_their_difference(telemetry) -> None:  # noqa: ANN001
    t, pipeline = telemetry
    value = t.metrics.registry.get_sample_value
    hub = {"workflow": "digits", "site": "hub", "tier": "hub", "direction": "up"}
    cam = {**hub, "site": "cam-1", "tier": "device"}

    def report(size: int, sent: int) -> dict:
        return {"kind": "source", "key": "cameras@cam-1", "source": "cameras", "site": "cam-1", "sent": sent,
                "completed": sent, "failed": 0, "correct": sent, "shed": 0, "latencies_ms": [5.0],
                "link_bytes": {"cloud": size}, "link_messages": {"cloud": sent}}

    t.update(pipeline, [report(1000, 10)])
    assert value("jellybean_link_bytes_total", cam) == 1000 and value("jellybean_link_bytes_total", hub) == 1000
    t.update(pipeline, [report(1500, 12)])  # cumulative: the counters move by the difference
    assert value("jellybean_link_bytes_total", hub) == 1500 and value("jellybean_link_messages_total", hub) == 12
    sent = {"workflow": "digits", "source": "cameras", "site": "cam-1", "tier": "device"}
    assert value("jellybean_frames_sent_total", sent) == 12
    assert value("jellybean_end_to_end_latency_seconds_count", {"workflow": "digits"}) == 2  # samples: as they come
    assert value("jellybean_link_planned_bytes_per_second", cam) > 0  # the plan's figure, beside it
