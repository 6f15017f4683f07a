"""capacity_left: what running workflows leave of a topology, checked by hand on small cases and,
on the digits topology, by planning two workflows one after the other: the second is planned on what
the first leaves, and together they never use more than there is."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from jellybean.optimizer import plan
from jellybean.optimizer.capacity import NO_BANDWIDTH_MBPS, capacity_left, instances_in_use, link_mbps_in_use, shortfalls
from jellybean.spec.bundle import resolve
from jellybean.spec.loader import load_documents, load_text

ROOT = Path(__file__).resolve().parents[2]

TOPOLOGY = """
apiVersion: jellybean.io/v1alpha1
kind: Topology
metadata: {name: t}
spec:
  max_link_utilization: 0.5
  sites:
    - name: cloud
      tier: cloud
      instances:
        - {name: vm, hardware: cpu, price_per_hour: 1.0, max_count: 4}
    - name: hub
      tier: hub
      parent: cloud
      replicas: 2
      uplink: {up: {bandwidth_mbps: 10}, down: {bandwidth_mbps: 8}}
      instances:
        - {name: box, hardware: cpu, price_per_hour: 0.1, count: 2}
"""


def _topology():
    return load_text(TOPOLOGY, "t.yaml")[0].model


def _plan(instances: list[dict], links: list[dict]):
    from jellybean.optimizer.plan import InstanceUse, LinkFlow, Plan, SolverStats

    rows = [InstanceUse(tier="hub", hardware="cpu", price_per_hour=0.1, cost_per_hour=0.1, available=2,
                        utilization=0.5, stages=["s"], **row) for row in instances]
    flows = [LinkFlow(gb_per_hour=1.0, capacity_mbps=None, utilization=None, cost_per_hour=0.0, tier="hub", **row)
             for row in links]
    return Plan(workflow="w", strategy="optimal", sharing="shared", feasible=True, instances=rows, links=flows,
                accuracy_target=0.0, solver=SolverStats(name="HiGHS", status="optimal", gap=0.0, seconds=0.0))


def test_instances_in_use_are_removed_per_site_copy_from_count_or_max_count() -> None:
    topology = _topology()
    used = _plan([{"site": "hub-1", "sites": ["hub-1", "hub-2"], "instance": "box", "count": 1},
                  {"site": "cloud", "instance": "vm", "count": 3}], [])
    other = _plan([{"site": "hub-2", "instance": "box", "count": 1}], [])
    left = capacity_left(topology, [used, other])
    groups = {(s.name, g.name): g for s in left.spec.sites for g in s.instances}
    assert groups[("hub-1", "box")].count == 1
    assert groups[("hub-2", "box")].count == 0  # 2 - 1 - 1
    assert groups[("cloud", "vm")].max_count == 1 and groups[("cloud", "vm")].count is None
    # The input is untouched.
    assert {(s.name, g.name): g.count for s in topology.spec.sites for g in s.instances}[("hub-2", "box")] == 2
    assert instances_in_use([used, other])[("hub-2", "box")] == 2


def test_link_bandwidth_in_use_is_subtracted_within_the_link_headroom() -> None:
    topology = _topology()
    used = _plan([], [{"from": "hub-1", "to": "cloud", "direction": "up", "mbps": 2.0},
                      {"from": "cloud", "to": "hub-2", "direction": "down", "mbps": 4.0}])
    left = capacity_left(topology, [used])
    links = {s.name: s.uplink for s in left.spec.sites if s.uplink is not None}
    # usable was 0.5 x 10 = 5 Mbit/s; 2 in use leave 3 usable: B' = 10 - 2/0.5 = 6.
    assert links["hub-1"].up.bandwidth_mbps == pytest.approx(6.0)
    assert 0.5 * links["hub-1"].up.bandwidth_mbps == pytest.approx(5.0 - 2.0)
    assert links["hub-1"].down.bandwidth_mbps == 8.0
    # 4 Mbit/s down on hub-2 is all of its usable 0.5 x 8: a token bandwidth is left.
    assert links["hub-2"].down.bandwidth_mbps == NO_BANDWIDTH_MBPS
    assert links["hub-2"].up.bandwidth_mbps == 10.0
    assert link_mbps_in_use([used]) == {("hub-1", "up"): 2.0, ("hub-2", "down"): 4.0}


def test_shortfalls_name_what_does_not_fit() -> None:
    topology = _topology()
    wants = _plan([{"site": "hub-1", "instance": "box", "count": 2}],
                  [{"from": "hub-1", "to": "cloud", "direction": "up", "mbps": 4.0}])
    assert shortfalls(wants, topology) == []
    taken = capacity_left(topology, [_plan([{"site": "hub-1", "instance": "box", "count": 1}],
                                           [{"from": "hub-1", "to": "cloud", "direction": "up", "mbps": 2.0}])])
    assert shortfalls(wants, taken) == ["box@hub-1: needs 2 instance(s), 1 free",
                                        "uplink of hub-1 (up): needs 4 Mbit/s, 3 free"]


def test_a_second_workflow_is_planned_on_what_the_first_leaves() -> None:
    """The digits workflow twice on one topology: the second plan avoids the hub box the first one holds,
    and the two together stay within every group's bound and every link's usable bandwidth."""
    documents = load_documents([ROOT / "workflows" / "digits"])
    bundle = resolve(documents, "digits")
    first = plan(bundle, baselines=False, time_limit_s=30)
    assert first.feasible
    left = capacity_left(bundle.topology, [first])
    second = plan(dataclasses.replace(bundle, topology=left), baselines=False, time_limit_s=30)
    groups = {(s.name, g.name): g for s in bundle.topology.spec.sites for g in s.instances}
    together = instances_in_use([first, second] if second.feasible else [first])
    for (site, name), count in together.items():
        group = groups[(site, name)]
        bound = group.count if group.count is not None else group.max_count
        assert bound is None or count <= bound, (site, name, count, bound)
    if second.feasible:
        assert shortfalls(second, left) == []
    else:  # the digits topology is one small machine: the second one may not fit at all, and says why
        assert second.explanation
    # The first plan alone does not fit beside itself.
    assert shortfalls(first, left)
