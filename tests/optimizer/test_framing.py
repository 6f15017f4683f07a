"""Messages priced as they travel on links (:mod:`jellybean.optimizer.framing`): each message's bytes,
TCP/IP's headers, its share of its send's framing; and the wait for company counted in latency."""

from __future__ import annotations

import pytest

from jellybean.optimizer import plan
from jellybean.optimizer.framing import SEND_FRAMING_BYTES, Framing

from .random_instances import make_bundle

ZOO = {"tasks": [{"name": "det", "variants": [{"name": "d", "accuracy": 90, "output_kb": 1,
                                               "profiles": [{"hardware": "gpu", "latency_ms": {1: 1}}]}]}]}
def workflow(payload_kb: float) -> dict:
    return {"sources": [{"name": "cams", "rate_per_s": 10, "payload_kb": payload_kb, "sites": ["hub"]}],
            "stages": [{"name": "detect", "task": "det", "inputs": ["cams"]}], "slo": {"accuracy": 50}}


def topology(**spec) -> dict:
    """A hub with cameras and nothing to compute on: the frames must go up its uplink to the cloud."""
    return {"hop_latency_ms": 0, "batch_wait_ms": 0, **spec, "sites": [
        {"name": "cloud", "tier": "cloud", "instances": [{"name": "g", "hardware": "gpu", "price_per_hour": 1, "max_count": 2}]},
        {"name": "hub", "tier": "hub", "parent": "cloud",
         "uplink": {"up": {"latency_ms": 5, "cost_per_gb": 0.5}}}]}


def _uplink(result):
    return next(link for link in result.links if link.from_ == "hub")


def test_a_message_costs_its_bytes_tcp_headers_and_a_share_of_its_send() -> None:
    framing = Framing(messages_per_send=8)
    assert framing.per_send(72 / 1024) == 8 and framing.per_send(330 / 1024) == 4 and framing.per_send(1.6) == 1
    assert framing.wire_kb(72 / 1024) * 1024 == pytest.approx(72 * (1 + 66 / 1448) + SEND_FRAMING_BYTES / 8)
    assert framing.wire_kb(1.6) * 1024 == pytest.approx(1.6 * 1024 * (1 + 66 / 1448) + SEND_FRAMING_BYTES)
    assert Framing(wait_ms=0).per_send(72 / 1024) == 1  # nothing waits: every message may leave alone
    assert Framing(enabled=False).wire_kb(1.0) == 1.0


def test_only_messages_that_share_a_segment_wait_for_company() -> None:
    framing = Framing(messages_per_send=8, wait_ms=10.0)
    assert framing.wait_bound_ms(72 / 1024) == 10.0 and framing.wait_bound_ms(1.6) == 0.0
    # 100 labels/s: the window closes at T (7 more would take 70 ms), with 1 more in it on average:
    # half the labels open a window and wait all of it, the median
    assert framing.expected_wait_ms(72 / 1024, 100.0) == pytest.approx(10.0)
    # 10,000 labels/s: 7 more come in 0.7 ms, which closes the window; 1 in 8 waits it all, the
    # others less, uniformly: the median is 0.7 x 8 / 14
    assert framing.expected_wait_ms(72 / 1024, 10_000.0) == pytest.approx(0.7 * 8 / 14)


@pytest.mark.parametrize("spec, payload_kb, per_send", [({}, 0.1, 8), ({"link_batch_messages": 4}, 0.1, 4),
                                                        ({"link_batch_wait_ms": 0}, 0.1, 1), ({}, 100, 1)])
def test_the_plan_prices_the_uplink_at_the_framed_size(spec: dict, payload_kb: float, per_send: int) -> None:
    result = plan(make_bundle(ZOO, topology(**spec), workflow(payload_kb)), baselines=False)
    assert Framing(**({"wait_ms": 0} if spec.get("link_batch_wait_ms") == 0 else {}),
                   messages_per_send=spec.get("link_batch_messages", 8)).per_send(payload_kb) == per_send
    wire_kb = (payload_kb * 1024 * (1 + 66 / 1448) + SEND_FRAMING_BYTES / per_send) / 1024
    assert _uplink(result).gb_per_hour == pytest.approx(10 * wire_kb * 3600 / 1024 ** 2)
    assert result.cost.network_per_hour == pytest.approx(10 * wire_kb * 3600 / 1024 ** 2 * 0.5)


def test_payloads_alone_when_framing_is_off() -> None:
    result = plan(make_bundle(ZOO, topology(message_framing=False), workflow(100)), baselines=False)
    assert _uplink(result).gb_per_hour == pytest.approx(10 * 100 * 3600 / 1024 ** 2)


def test_the_wait_for_company_counts_in_the_latency_whole_for_bounds_mean_expected() -> None:
    """Small messages (0.1 KB) wait for company: the bound counts the whole wait, the expected time
    the mean at the source's 10 messages/s; a big one (100 KB) leaves at once."""
    latency = {}
    for payload_kb in (0.1, 100):
        for wait_ms in (0.0, 10.0):
            result = plan(make_bundle(ZOO, topology(link_batch_wait_ms=wait_ms, message_framing=False),
                                      workflow(payload_kb)), baselines=False)
            latency[(payload_kb, wait_ms)] = (result.latency_ms, result.latency_ms_expected)
    small = [b - a for a, b in zip(latency[(0.1, 0.0)], latency[(0.1, 10.0)])]
    assert small == pytest.approx([10.0, Framing(wait_ms=10.0).expected_wait_ms(0.1, 10.0, 1.0)])
    assert latency[(100, 10.0)] == pytest.approx(latency[(100, 0.0)])


def test_a_burst_waits_as_one_and_a_burst_that_fills_a_send_not_at_all() -> None:
    framing = Framing(messages_per_send=8, wait_ms=10.0)
    label = 72 / 1024
    # 200 labels/s in bursts of 2.5 (one frame's crops): 80 bursts/s; 8 labels take 2.2 more bursts
    # (27.5 ms) so the window closes at 10 ms, with 0.8 more bursts in it: most wait all of it
    assert framing.expected_wait_ms(label, 200.0, 2.5) == pytest.approx(10.0)
    assert framing.expected_wait_ms(label, 2000.0, 2.5) == pytest.approx(2.75 * 3.2 / 4.4)  # 2.2 more in 2.75 ms
    assert framing.expected_wait_ms(label, 200.0, 8.0) == 0.0
