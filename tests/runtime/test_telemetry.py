"""Telemetry without Ray: which uplinks a message crosses, and what the plan says before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from jellybean.optimizer import plan as make_plan
from jellybean.runtime.dataplane import Pipeline
from jellybean.runtime.metrics import Metrics
from jellybean.spec import load_bundle

DIGITS = Path(__file__).resolve().parents[2] / "workflows" / "digits"


@pytest.fixture(scope="module")
def telemetry():
    bundle = load_bundle([DIGITS])
    pipeline = Pipeline(bundle, make_plan(bundle, baselines=False), metrics=Metrics())
    return pipeline.telemetry


def test_a_message_crosses_the_uplinks_between_its_sites(telemetry) -> None:
    assert telemetry.path("cam-1", "hub") == [("cam-1", "up")]
    assert telemetry.path("cam-1", "cloud") == [("cam-1", "up"), ("hub", "up")]
    assert telemetry.path("cloud", "cam-2") == [("hub", "down"), ("cam-2", "down")]
    assert telemetry.path("cam-1", "cam-2") == [("cam-1", "up"), ("cam-2", "down")]
    assert telemetry.path("hub", "hub") == []


def test_routed_bytes_reach_every_link_on_the_path_after_a_flush(telemetry) -> None:
    value = telemetry.metrics.registry.get_sample_value
    labels = {"workflow": "digits", "site": "hub", "tier": "hub", "direction": "up"}
    before = value("jellybean_link_bytes_total", labels) or 0.0
    telemetry.routed("cam-1", "cloud", 100.0)
    telemetry.routed("hub", "hub", 100.0)  # stays on the site: no link
    assert (value("jellybean_link_bytes_total", labels) or 0.0) == before  # not flushed yet
    telemetry.flush()
    assert value("jellybean_link_bytes_total", labels) == before + 100.0
    assert value("jellybean_link_bytes_total", {**labels, "site": "cam-1", "tier": "device"}) >= 100.0
