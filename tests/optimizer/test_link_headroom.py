"""Links get headroom like instances: Topology.max_link_utilization caps the planned share of every
uplink (default 1.0), in the MILP, in the independent checker and in the explanation of infeasibility."""

from __future__ import annotations

from jellybean.optimizer import plan

from .random_instances import make_bundle
from .test_problem import ZOO

WORKFLOW = {"sources": [{"name": "cams", "rate_per_s": 5, "payload_kb": 100, "sites": ["cam"]}],
            "stages": [{"name": "detect", "task": "det", "inputs": ["cams"]}], "slo": {"accuracy": 10}}


def topology(headroom: float | None, hub_box: bool = True) -> dict:
    """Raw frames need 5 x 100 KB x 8192 bit/KB = 4.1 Mbit/s up the hub's 5 Mbit/s uplink: they fit a
    full link but not 80% of it (payloads alone: message framing is tested on its own). The hub's own
    box is dear (5 $/h), the cloud's GPU cheap (1 $/h)."""
    hub = {"name": "hub", "tier": "hub", "parent": "cloud", "uplink": {"up": {"bandwidth_mbps": 5, "cost_per_gb": 0.0}},
           "instances": [{"name": "box", "hardware": "cpu", "price_per_hour": 5, "count": 1}] if hub_box else []}
    spec = {"sites": [{"name": "cloud", "tier": "cloud",
                       "instances": [{"name": "g", "hardware": "gpu", "price_per_hour": 1, "max_count": 4}]},
                      hub, {"name": "cam", "tier": "device", "parent": "hub"}], "message_framing": False}
    if headroom is not None:
        spec["max_link_utilization"] = headroom
    return spec


def test_a_full_link_may_be_planned_by_default_and_headroom_keeps_it_below() -> None:
    full = plan(make_bundle(ZOO, topology(None), WORKFLOW), baselines=False)
    assert [(a.stage, a.site) for a in full.assignments] == [("detect", "cloud")]
    (up,) = [lk for lk in full.links if lk.direction == "up" and lk.from_ == "hub"]
    assert 4.0 < up.mbps < 5.0
    kept = plan(make_bundle(ZOO, topology(0.8), WORKFLOW), baselines=False)
    assert [(a.stage, a.site) for a in kept.assignments] == [("detect", "hub")]  # dearer, but within 4 Mbit/s
    assert all(lk.mbps <= 0.8 * 5 + 1e-9 for lk in kept.links if lk.from_ == "hub")


def test_without_a_way_round_the_limit_the_plan_says_which_link_and_its_usable_share() -> None:
    none = plan(make_bundle(ZOO, topology(0.8, hub_box=False), WORKFLOW), baselines=False)
    assert not none.feasible
    text = " ".join(none.explanation)
    assert "uplink hub -> cloud needs 4.1" in text and "usable (0.8 of 5, max_link_utilization)" in text, text
