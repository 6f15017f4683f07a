"""Messages priced as they travel on links (:mod:`jellybean.optimizer.framing`): each message's bytes,
TCP/IP's headers, its share of its send's framing; and the wait for company counted in latency."""

from __future__ import annotations

import pytest

from jellybean.optimizer import plan
from jellybean.optimizer.framing import SEND_FRAMING_BYTES, Framing

from .random_instances import make_bundle

ZOO = {"tasks": [{"name": "det", "variants": [{"name": "d", "accuracy": 90, "output_kb": 1,
                                               "profiles": [{"hardware": "gpu", "latency_ms": {1: 1}}]}]}]}
WORKFLOW = {"sources": [{"name": "cams", "rate_per_s": 10, "payload_kb": 100, "sites": ["hub"]}],
            "stages": [{"name": "detect", "task": "det", "inputs": ["cams"]}], "slo": {"accuracy": 50}}


def topology(**spec) -> dict:  # noqa: ANN003
    """A hub with cameras and nothing to compute on: the frames must go up its uplink to the cloud."""
    return {"hop_latency_ms": 0, "batch_wait_ms": 0, **spec, "sites": [
        {"name": "cloud", "tier": "cloud", "instances": [{"name": "g", "hardware": "gpu", "price_per_hour": 1, "max_count": 2}]},
        {"name": "hub", "tier": "hub", "parent": "cloud",
         "uplink": {"up": {"latency_ms": 5, "cost_per_gb": 0.5}}}]}


def _uplink(result):  # noqa: ANN001, ANN202
    return next(link for link in result.links if link.from_ == "hub")


def test_a_message_costs_its_bytes_tcp_headers_and_a_share_of_its_send() -> None:
    framing = Framing(messages_per_send=8)
    assert framing.wire_kb(72 / 1024) * 1024 == pytest.approx(72 * (1 + 66 / 1448) + SEND_FRAMING_BYTES / 8)
    assert Framing(messages_per_send=1).wire_kb(1.0) > framing.wire_kb(1.0) > 1.0
    assert Framing(enabled=False).wire_kb(1.0) == 1.0


@pytest.mark.parametrize("spec, per_send", [({}, 8), ({"link_batch_messages": 4}, 4),
                                            ({"link_batch_wait_ms": 0}, 1)])
def test_the_plan_prices_the_uplink_at_the_framed_size(spec: dict, per_send: int) -> None:
    result = plan(make_bundle(ZOO, topology(**spec), WORKFLOW), baselines=False)
    wire_kb = Framing(messages_per_send=per_send).wire_kb(100)
    assert _uplink(result).gb_per_hour == pytest.approx(10 * wire_kb * 3600 / 1024 ** 2)
    assert result.cost.network_per_hour == pytest.approx(10 * wire_kb * 3600 / 1024 ** 2 * 0.5)


def test_payloads_alone_when_framing_is_off() -> None:
    result = plan(make_bundle(ZOO, topology(message_framing=False), WORKFLOW), baselines=False)
    assert _uplink(result).gb_per_hour == pytest.approx(10 * 100 * 3600 / 1024 ** 2)


def test_the_wait_for_company_counts_in_the_latency_whole_for_bounds_half_expected() -> None:
    waits = {}
    for wait_ms in (0.0, 10.0):
        result = plan(make_bundle(ZOO, topology(link_batch_wait_ms=wait_ms, message_framing=False), WORKFLOW),
                      baselines=False)
        waits[wait_ms] = (result.latency_ms, result.latency_ms_expected)
    assert waits[10.0][0] - waits[0.0][0] == pytest.approx(10.0)
    assert waits[10.0][1] - waits[0.0][1] == pytest.approx(5.0)
