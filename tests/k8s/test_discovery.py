"""Topology discovery from recorded Node objects (tests/k8s/recorded/nodes.json: a kubeadm control
plane and nine labelled nodes across the four tiers, kubelet-style capacity, allocatable and
conditions; node-events.json: a node going NotReady, one added, one deleted)."""

from __future__ import annotations

import copy

import pytest

from jellybean.k8s.discovery import (
    derived_hardware, discover_topology, parse_quantity, unusable_reason,
)
from jellybean.runtime.state import digest_of, document_body
from jellybean.spec.errors import SpecError
from tests.k8s.fakekube import recorded

J = "jellybean.io/"


@pytest.fixture
def nodes() -> list[dict]:
    return recorded("nodes.json")["items"]


def by_name(nodes: list[dict], name: str) -> dict:
    return next(n for n in nodes if n["metadata"]["name"] == name)


def issues_of(nodes: list[dict]) -> list[str]:
    with pytest.raises(SpecError) as caught:
        discover_topology(nodes, "cluster")
    return [str(i) for i in caught.value.issues]


@pytest.mark.parametrize(("text", "value"), [
    ("4", 4.0), ("3500m", 3.5), ("7910m", 7.91), ("16318480Ki", 16318480 * 1024.0), ("512Mi", 512 * 2**20),
    ("2Gi", 2 * 2**30), ("1e3", 1000.0), ("1.5G", 1.5e9), ("100k", 1e5), ("250u", 2.5e-4), (8, 8.0),
])
def test_parse_quantity(text, value) -> None:
    assert parse_quantity(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "lots", "4 cores", "1Zi", "--1"])
def test_parse_quantity_refuses_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="quantity"):
        parse_quantity(text)


def test_recorded_nodes_become_sites_tiers_uplinks_and_instance_groups(nodes: list[dict]) -> None:
    found = discover_topology(nodes, "cluster")
    topo = found.topology
    assert topo.metadata.name == "cluster"
    sites = {s.name: s for s in topo.spec.sites}
    assert {name: s.tier.value for name, s in sites.items()} == {
        "cloud": "cloud", "edc": "edge", "hub-1": "hub", "hub-2": "hub", "cam-01": "device", "cam-02": "device"}
    assert {name: s.parent for name, s in sites.items()} == {
        "cloud": None, "edc": "cloud", "hub-1": "edc", "hub-2": "edc", "cam-01": "hub-1", "cam-02": "hub-2"}
    # The cloud's two g4dn nodes form one elastic group (max-count), the c5 node another.
    cloud = {g.name: g for g in sites["cloud"].instances}
    assert cloud["t4"].max_count == 8 and cloud["t4"].count is None and cloud["t4"].price_per_hour == 0.526
    assert cloud["t4"].cpus == pytest.approx(3.92)  # allocatable 3920m
    assert cloud["t4"].memory_mb == 16384  # the memory-mb annotation (GPU memory) wins over allocatable
    assert cloud["cpu-x86-8vcpu"].memory_mb == pytest.approx(15318472 / 1024, abs=0.1)  # allocatable Ki -> MiB
    # Two identical edge nodes: one group of count 2. Uplink annotations on one node serve the site;
    # the per-direction cost overrides the symmetric defaults.
    (edc,) = sites["edc"].instances
    assert (edc.hardware, edc.count, edc.price_per_hour, edc.cpus) == ("t4", 2, 0.29, pytest.approx(15.82))
    up, down = sites["edc"].uplink.up, sites["edc"].uplink.down
    assert (up.bandwidth_mbps, up.latency_ms, up.cost_per_gb) == (10000, 10, 0.003)
    assert (down.bandwidth_mbps, down.latency_ms, down.cost_per_gb) == (10000, 10, 0.09)
    # No hardware annotation and no instance-type label: named from the capacity (the zoo's name).
    assert [g.hardware for g in sites["hub-2"].instances] == ["cpu-x86-8vcpu"]
    assert found.sites["edc"] == ["edc-t4-1", "edc-t4-2"]
    assert found.warnings == ["nodes without the jellybean.io/site label are ignored: k8s-control-1"]
    assert found.excluded == {}


def test_not_ready_and_cordoned_nodes_are_left_out(nodes: list[dict]) -> None:
    not_ready = recorded("node-events.json")["not_ready"][0]["object"]
    assert unusable_reason(not_ready) == "NotReady (Ready=Unknown: NodeStatusUnknown)"
    nodes = [not_ready if n["metadata"]["name"] == "edc-t4-2" else n for n in nodes]
    cordoned = by_name(nodes, "cloud-c5-a")
    cordoned["spec"]["unschedulable"] = True
    found = discover_topology(nodes, "cluster")
    sites = {s.name: s for s in found.topology.spec.sites}
    assert sites["edc"].instances[0].count == 1
    assert [g.name for g in sites["cloud"].instances] == ["t4"]
    assert found.excluded == {"cloud-c5-a": "cordoned (spec.unschedulable)",
                              "edc-t4-2": "NotReady (Ready=Unknown: NodeStatusUnknown)"}
    assert any("edc-t4-2 (site edc) left out" in w for w in found.warnings)


def test_a_heartbeat_changes_nothing_and_a_lost_node_changes_the_topology(nodes: list[dict]) -> None:
    def digest(items: list[dict]) -> str:
        return digest_of(document_body(discover_topology(items, "cluster").topology))

    events = recorded("node-events.json")
    before = digest(nodes)
    heartbeat = events["heartbeat"][0]["object"]
    assert digest([heartbeat if n["metadata"]["name"] == "edc-t4-1" else n for n in nodes]) == before
    assert digest([n for n in nodes if n["metadata"]["name"] != "edc-t4-2"]) != before
    added = discover_topology(nodes + [events["added"][0]["object"]], "cluster")
    assert "cam-03" in {s.name for s in added.topology.spec.sites}


def test_an_unknown_parent_names_the_node_and_its_annotation(nodes: list[dict]) -> None:
    # hub-2's only node is deleted: cam-02 now names a parent no node provides.
    issues = issues_of([n for n in nodes if n["metadata"]["name"] != "hub-2-mini"])
    assert issues == ["Node/cam-02-nano: metadata.annotations[jellybean.io/parent]: site 'cam-02' names parent site "
                      "'hub-2', which no schedulable, Ready node provides (sites found: cam-01, cam-02, cloud, edc, "
                      "hub-1)"]


@pytest.mark.parametrize(("annotation", "value", "expected"), [
    ("uplink-up-mbps", "-5", "greater than 0"),
    ("uplink-latency-ms", "fast", "valid number"),
    ("price-per-hour", "cheap", "valid number"),
    ("max-count", "2.5", "valid integer"),
])
def test_a_bad_annotation_names_the_node_and_the_annotation(nodes: list[dict], annotation: str, value: str,
                                                            expected: str) -> None:
    node = by_name(nodes, "edc-t4-1" if annotation.startswith("uplink") else "cloud-g4dn-a")
    node["metadata"]["annotations"][J + annotation] = value
    (issue,) = issues_of(nodes)
    assert issue.startswith(f"Node/{node['metadata']['name']}: metadata.annotations[jellybean.io/{annotation}]: ")
    assert expected in issue and repr(value) in issue


def test_tier_labels_are_checked(nodes: list[dict]) -> None:
    by_name(nodes, "hub-1-orin")["metadata"]["labels"][J + "tier"] = "gpu"
    (issue,) = issues_of(copy.deepcopy(nodes))
    assert issue.startswith("Node/hub-1-orin: metadata.labels[jellybean.io/tier]: Input should be 'device', 'hub'")
    del by_name(nodes, "hub-1-orin")["metadata"]["labels"][J + "tier"]
    (issue,) = issues_of(nodes)
    assert issue == ("Node/hub-1-orin: metadata.labels[jellybean.io/tier]: node of site 'hub-1' has no "
                     "jellybean.io/tier label (label it with one of device, hub, edge, cloud)")


def test_nodes_of_one_site_must_agree(nodes: list[dict]) -> None:
    by_name(nodes, "edc-t4-2")["metadata"]["annotations"][J + "parent"] = "hub-1"
    (issue,) = issues_of(nodes)
    assert "the nodes of site 'edc' disagree on jellybean.io/parent" in issue
    assert "edc-t4-1: 'cloud'" in issue and "edc-t4-2: 'hub-1'" in issue


def test_different_prices_make_different_groups_and_typos_are_warned(nodes: list[dict]) -> None:
    by_name(nodes, "edc-t4-2")["metadata"]["annotations"][J + "price-per-hour"] = "0.31"
    by_name(nodes, "edc-t4-2")["metadata"]["annotations"][J + "uplink-up-mpbs"] = "10"
    found = discover_topology(nodes, "cluster")
    edc = next(s for s in found.topology.spec.sites if s.name == "edc")
    assert [(g.name, g.count, g.price_per_hour) for g in edc.instances] == [("t4", 1, 0.29), ("t4-2", 1, 0.31)]
    assert ("node edc-t4-2: unknown annotation jellybean.io/uplink-up-mpbs ignored (did you mean "
            "jellybean.io/uplink-up-mbps?)") in found.warnings


def test_missing_price_is_free_with_a_warning_and_hardware_falls_back(nodes: list[dict]) -> None:
    node = by_name(nodes, "cloud-c5-a")
    del node["metadata"]["annotations"][J + "hardware"]
    del node["metadata"]["annotations"][J + "price-per-hour"]
    found = discover_topology(nodes, "cluster")
    cloud = {g.name: g for g in next(s for s in found.topology.spec.sites if s.name == "cloud").instances}
    assert cloud["c5.2xlarge"].price_per_hour == 0  # the instance-type label names the hardware
    assert any("no jellybean.io/price-per-hour on cloud-c5-a" in w for w in found.warnings)
    gpu = copy.deepcopy(by_name(nodes, "edc-t4-1"))
    assert derived_hardware(gpu) == "tesla-t4"
    gpu["status"]["capacity"]["nvidia.com/gpu"] = "4"
    assert derived_hardware(gpu) == "tesla-t4-x4"
    assert derived_hardware(by_name(nodes, "cam-01-nano")) == "cpu-arm-6vcpu"


def test_no_labelled_node_is_a_clear_error(nodes: list[dict]) -> None:
    (issue,) = issues_of([by_name(nodes, "k8s-control-1")])
    assert issue.startswith("Nodes: metadata.labels[jellybean.io/site]: no schedulable, Ready node carries the "
                            "jellybean.io/site label (label nodes: kubectl label node NAME jellybean.io/site=SITE")
