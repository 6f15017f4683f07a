"""The test bed's verdict (pure): a link carries what the plan priced, within the tolerance either
way, and our own counts sit between the interface's total and its total less idle."""

from __future__ import annotations

from jellybean.testbed.measure import judge


def _result(wire: int, ours: int, planned: int = 1000, idle: int = 200) -> dict:
    link = {"link": "hub-1", "direction": "up", "planned_bytes": planned, "interface_bytes": wire + idle,
            "idle_bytes": idle, "jellybean_bytes": ours}
    return {"links": [link], "frames": {"lost": 0}, "throughput_per_s": {"planned": 10.0, "measured": 10.0}}


def test_a_link_carries_what_was_planned_within_the_tolerance_either_way() -> None:
    assert judge(_result(1000, 1000)) == []
    assert judge(_result(905, 905)) == [] and judge(_result(1095, 1095)) == []
    assert judge(_result(1150, 1150))[0].startswith("hub-1/up: interface bytes less idle 1150")
    assert judge(_result(850, 850))[0].startswith("hub-1/up: interface bytes less idle 850")


def test_our_counts_lie_between_the_interface_less_idle_and_its_total() -> None:
    assert judge(_result(1000, 1150)) == []  # above less-idle, below the total (idle is an estimate)
    assert judge(_result(1000, 1250)) == []  # read a moment apart from the interface's counter
    assert "our metrics 1400" in judge(_result(1000, 1400))[0]  # more than the interface carried at all
    assert "our metrics 850" in judge(_result(1000, 850))[0]


def test_lost_frames_and_missed_throughput_are_problems() -> None:
    result = _result(1000, 1000)
    result["frames"]["lost"] = 2
    result["throughput_per_s"]["measured"] = 8.5
    assert judge(result) == ["2 frames lost", "throughput 8.5 vs planned 10.0"]
