"""The test bed's verdict (pure): planned bytes are an upper bound (each message priced as sent
alone), batches carry less down to a floor, and our own counts sit between the interface's total and
its total less idle."""

from __future__ import annotations

import time

import numpy as np

from jellybean.runtime.worker import META, dumps, pack_messages
from jellybean.testbed.measure import PACKED_FLOOR, judge


def _result(wire: int, ours: int, planned: int = 1000, idle: int = 200) -> dict:
    link = {"link": "hub-1", "direction": "up", "planned_bytes": planned, "interface_bytes": wire + idle,
            "idle_bytes": idle, "jellybean_bytes": ours}
    return {"links": [link], "frames": {"lost": 0}, "throughput_per_s": {"planned": 10.0, "measured": 10.0}}


def test_a_link_may_carry_less_than_planned_down_to_the_floor_but_not_more() -> None:
    assert judge(_result(1000, 1000)) == []
    assert judge(_result(600, 600)) == []  # batches packed tighter than messages alone
    assert judge(_result(1150, 1150))[0].startswith("hub-1/up: interface bytes less idle 1150")
    low = int(PACKED_FLOOR * 1000) - 10
    assert judge(_result(low, low))[0].startswith(f"hub-1/up: interface bytes less idle {low}")


def test_our_counts_lie_between_the_interface_less_idle_and_its_total() -> None:
    assert judge(_result(800, 950)) == []  # above less-idle, below the total (idle is an estimate)
    assert judge(_result(800, 1050)) == []  # read a moment apart from the interface's counter
    assert "our metrics 1200" in judge(_result(800, 1200))[0]  # more than the interface carried at all
    assert "our metrics 600" in judge(_result(800, 600))[0]


def test_the_floor_holds_for_the_digits_messages_packed_in_a_full_batch() -> None:
    """The densest packing the runtime makes (a full coalesced batch of 64) of a crop and of a label,
    with every field the runtime's messages carry, stays above the floor."""
    meta = {key: None for key in META}
    for extra in ({"index": 0, "count": 3, "image": np.ones((8, 8), np.float32)}, {"index": 0, "count": 3, "digit": 7}):
        messages = [{**meta, "frame_id": f"cam-1:{i}", "source": "cameras", "site": "cam-1", "truth": [1, 2, 3],
                     "received_at": time.time(), "sent_at": time.time(), **extra} for i in range(64)]
        alone = len(dumps(messages[0]))
        assert PACKED_FLOOR < len(pack_messages(messages)) / 64 / alone < 1
