"""The test bed's layout (pure): namespaces, veth links along the topology's tree, routes, shaping
and CPU quotas, computed from a Topology without root."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jellybean.spec import load_bundle
from jellybean.testbed import layout as lay_mod
from jellybean.testbed.layout import burst_bytes, layout, setup_commands, shape_commands
from jellybean.testbed.scenario import topology_yaml, write

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def topology(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scenario")
    return load_bundle(write(folder, ROOT / "workflows" / "digits" / "zoo.yaml", 2)).topology


def test_every_uplink_is_one_veth_pair_between_child_and_parent(topology) -> None:
    lay = layout(topology, tag="t1", cores=2)
    assert set(lay.sites) == {"cloud", "edge", "hub-1", "hub-2", "cam-1", "cam-2"}
    assert lay.root == "cloud"
    pairs = {(lk.child, lk.parent) for lk in lay.links}
    assert pairs == {("edge", "cloud"), ("hub-1", "edge"), ("hub-2", "edge"), ("cam-1", "hub-1"), ("cam-2", "hub-2")}
    names = [lk.child_if for lk in lay.links] + [lk.parent_if for lk in lay.links]
    assert len(set(names)) == len(names) and all(len(n) <= 15 for n in names)  # IFNAMSIZ
    hub = lay.site("hub-1").link
    assert hub.up_bits_per_s == 4e6 and hub.interface("up") == ("hub-1", hub.child_if)
    assert hub.interface("down") == ("edge", hub.parent_if)


def test_routes_follow_the_tree_so_bytes_cross_exactly_the_priced_links(topology) -> None:
    lay = layout(topology, tag="t1", cores=2)
    by_address = {s.address: s.name for s in lay.sites.values()}
    via_owner = {}
    for lk in lay.links:
        via_owner[lk.child_address] = lk.child
        via_owner[lk.parent_address] = lk.parent

    def path(src: str, dst: str) -> list[str]:
        """The sites a packet from src to dst visits, by following each namespace's routes."""
        at, seen = src, [src]
        target = lay.sites[dst].address + "/32"
        for _ in range(len(lay.sites)):
            if at == dst:
                return seen
            routes = dict(lay.routes[at])
            at = via_owner[routes.get(target, routes.get("default"))]
            seen.append(at)
        raise AssertionError(f"no route from {src} to {dst}: {seen}")

    assert path("cam-1", "cloud") == ["cam-1", "hub-1", "edge", "cloud"]
    assert path("cloud", "cam-2") == ["cloud", "edge", "hub-2", "cam-2"]
    assert path("cam-1", "cam-2") == ["cam-1", "hub-1", "edge", "hub-2", "cam-2"]
    assert len(by_address) == len(lay.sites)


def test_commands_shape_each_direction_on_its_sending_end(topology) -> None:
    lay = layout(topology, tag="t1", cores=2)
    cmds = setup_commands(lay)
    tbf = [c for c in cmds if c[:1] == ["tc"]]
    assert len(tbf) == 2 * len(lay.links)  # every link of this topology has a rate each way
    hub = lay.site("hub-1").link
    up = next(c for c in tbf if hub.child_if in c)
    assert up[2] == lay.site("hub-1").namespace and "4000000bit" in up
    # netns before links, links before routes
    kinds = [c[1] if c[0] == "ip" and c[1] in ("netns", "link") else c[0] for c in cmds]
    assert kinds.index("link") > max(i for i, k in enumerate(kinds) if k == "netns" and cmds[i][2] == "add")
    degrade = shape_commands(lay, "hub-1", "up", 1e6)
    assert degrade == [["tc", "-n", lay.site("hub-1").namespace, "qdisc", "replace", "dev", hub.child_if, "root",
                        "tbf", "rate", "1000000bit", "burst", str(burst_bytes(1e6)), "latency",
                        f"{lay_mod.QUEUE_MS}ms"]]
    assert shape_commands(lay, "hub-1", "up", None)[0][4] == "del"
    with pytest.raises(ValueError, match="no uplink"):
        shape_commands(lay, "cloud", "up", 1e6)


def test_a_bucket_holds_a_timer_tick_and_never_less_than_two_frames() -> None:
    assert burst_bytes(1e6) == lay_mod.MIN_BURST_BYTES
    assert burst_bytes(100e6) == int(100e6 / 8 * 0.004)


def test_cpu_quotas_scale_every_site_alike_to_fit_the_cores(topology) -> None:
    # cloud 1 + edge 1 + two hubs 1 each + two cameras at 0.25: 4.5 cores wanted
    lay = layout(topology, tag="t1", cores=2, device_cpus=0.25)
    assert lay.cpu_scale == pytest.approx(2 / 4.5)
    assert lay.site("hub-1").cpu_quota == pytest.approx(2 / 4.5)
    assert lay.site("cam-1").cpu_quota == pytest.approx(0.25 * 2 / 4.5)
    assert sum(s.cpu_quota for s in lay.sites.values()) == pytest.approx(2)
    assert lay.site("hub-1").ray_cpus == 1 and lay.site("cam-1").ray_cpus == 0
    roomy = layout(topology, tag="t1", cores=64, device_cpus=0.25)
    assert roomy.cpu_scale == 1.0


def test_bad_tags_and_forests_are_refused(topology) -> None:
    with pytest.raises(ValueError, match="tag"):
        layout(topology, tag="has-dash", cores=2)
    data = yaml.safe_load(topology_yaml(1))
    forest = topology.model_copy(deep=True)
    for site in forest.spec.sites:
        if site.name == "edge":
            site.parent, site.uplink = None, None
    assert data["kind"] == "Topology"
    with pytest.raises(ValueError, match="one root site"):
        layout(forest, tag="t1", cores=2)


def test_a_quota_under_a_tenth_of_a_core_lengthens_the_period_instead_of_growing() -> None:
    """The kernel takes no quota under 1 ms: with the 10 ms period a site declaring 1/16 of a core
    would get a tenth; the period grows so that the share is the one declared."""
    from jellybean.testbed.bed import MIN_QUOTA_US, quota_of

    assert quota_of(None)[1] is None
    for cores in (1.0, 0.8, 0.1, 0.0625, 0.05, 0.01):
        period_us, quota_us = quota_of(cores)
        assert quota_us is not None and quota_us >= MIN_QUOTA_US
        assert quota_us / period_us == pytest.approx(cores, rel=0.01)


def test_a_longer_period_keeps_the_share() -> None:
    from jellybean.testbed.bed import quota_of

    assert quota_of(0.1, 100_000) == (100_000, 10_000)
    assert quota_of(0.005, 100_000) == (200_000, 1_000)  # 1 ms is the least the kernel takes


def test_steady_cpus_holds_a_zero_latency_while_open_and_says_so(tmp_path: Path) -> None:
    """PM QoS reads the request as a 32-bit integer written to the device; the request holds while the
    file stays open. Without the device (or without the right to open it) the run goes on, saying so."""
    import sys

    from jellybean.testbed.bed import steady_cpus

    device = tmp_path / "cpu_dma_latency"
    device.write_bytes(b"")
    with steady_cpus(device) as how:
        assert "held off" in how
        assert device.read_bytes() == (0).to_bytes(4, sys.byteorder, signed=True)
    with steady_cpus(tmp_path / "absent") as how:
        assert "left as they are" in how
