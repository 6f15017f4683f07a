"""Fusion, site by site: which consecutive stages run inside one replica, and that fusing changes no
route. Pure: the Deployment of real plans of the test bed's scenario, no Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from jellybean.optimizer import plan as make_plan
from jellybean.runtime.deployment import Deployment, build_deployment
from jellybean.spec import load_bundle
from jellybean.testbed.scenario import write

ZOO = Path(__file__).resolve().parents[2] / "workflows" / "digits" / "zoo.yaml"
PINNED = {"detect": ["digits-detector-small"], "classify": ["digits-classifier-cnn-large-int8"]}


def _stateful(runner: str) -> bool:
    return "aggregator" in runner  # the join by frame id


def deployments(tmp_path: Path, hubs: int, *, hub_memory_mb: int) -> tuple[Deployment, Deployment]:
    """The fused and the unfused Deployment of one plan of the scenario."""
    documents = write(tmp_path / f"{hubs}-{hub_memory_mb}", ZOO, hubs, rate_per_s=60.0, variants=PINNED,
                      hub_cpus=0.125, hub_memory_mb=hub_memory_mb, hub_uplink_mbps=20.0,
                      edge_uplink_mbps=20.0 * hubs)
    bundle = load_bundle(documents)
    plan = make_plan(bundle, baselines=False)
    return (build_deployment(bundle, plan, stateful=_stateful),
            build_deployment(bundle, plan, fuse=False, stateful=_stateful))


def chains(deployment: Deployment) -> list[list[str]]:
    return sorted([f"{c.stage}@{c.site}" for c in r.chain] for r in deployment.replicas)


@pytest.mark.parametrize("hubs", [1, 2, 4])
def test_a_pipeline_copied_at_every_hub_fuses_at_every_hub(tmp_path: Path, hubs: int) -> None:
    """Each hub holds the whole pipeline: its detector and classifier share a process, however many
    hubs there are (the join stays apart: it keeps state)."""
    fused, _ = deployments(tmp_path, hubs, hub_memory_mb=512)
    expected = [[f"aggregate@hub-{k}"] for k in range(1, hubs + 1)]
    expected += [[f"detect@hub-{k}", f"classify@hub-{k}"] for k in range(1, hubs + 1)]
    assert chains(fused) == sorted(expected)


def test_a_replica_fed_by_several_sites_is_not_fused(tmp_path: Path) -> None:
    """Hubs with room for the detector only: the edge's classifier hears from both hubs, so neither
    hub's detector may take it into its process."""
    fused, unfused = deployments(tmp_path, 2, hub_memory_mb=256)
    assert chains(fused) == chains(unfused)
    assert any(c == ["classify@edge"] for c in chains(fused))


@pytest.mark.parametrize(("hubs", "hub_memory_mb"), [(1, 512), (4, 512), (2, 256), (1, 256)])
def test_fusing_changes_no_route(tmp_path: Path, hubs: int, hub_memory_mb: int) -> None:
    """Every replica absorbed into a chain is, in the unfused deployment, the only replica of its stage
    its predecessor's site reaches, and its predecessor is the only replica that reaches it."""
    fused, unfused = deployments(tmp_path, hubs, hub_memory_mb=hub_memory_mb)
    assert sorted(s.key for s in fused.specs) == sorted(s.key for s in unfused.specs)
    for replica in fused.replicas:
        for before, after in zip(replica.chain, replica.chain[1:]):
            assert set(unfused.route_weights(after.stage, before.site)) == {after.key}
            feeders = [r.key for r in unfused.heads_of(before.stage)
                       if after.key in unfused.route_weights(after.stage, r.site)]
            assert feeders == [before.key]
