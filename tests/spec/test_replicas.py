"""Identical sites without copy-paste: `replicas: N` (names `<name>-01`.. or `replica_names`), their
children copied under each copy, a Workflow naming the replicated site for all its copies, and the
plan the same as for the sites written out one by one."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from jellybean.optimizer import plan
from jellybean.spec import SpecError, load_bundle
from jellybean.spec.topology import TopologySpec

ZOO = """\
apiVersion: jellybean.io/v1alpha1
kind: ModelZoo
metadata: {name: z}
spec:
  tasks:
  - name: det
    variants: [{name: n, accuracy: 50, output_kb: 2, profiles: [{hardware: cpu, latency_ms: {1: 20}}]}]
"""
WORKFLOW = """\
apiVersion: jellybean.io/v1alpha1
kind: Workflow
metadata: {name: w}
spec:
  zoo: z
  topology: t
  sources: [{name: cams, rate_per_s: 10, payload_kb: 50, sites: [SITES]}]
  stages: [{name: detect, task: det, inputs: [cams]}]
  slo: {accuracy: 10}
"""
CLOUD = {"name": "cloud", "tier": "cloud",
         "instances": [{"name": "c", "hardware": "cpu", "price_per_hour": 1.0, "max_count": 50}]}
STORE = {"tier": "hub", "parent": "cloud", "uplink": {"up": {"cost_per_gb": 0.1}},
         "instances": [{"name": "box", "hardware": "cpu", "price_per_hour": 0.2, "count": 1}]}


def _write(tmp_path: Path, sites: list[dict], source_sites: str) -> list[Path]:
    topology = {"apiVersion": "jellybean.io/v1alpha1", "kind": "Topology", "metadata": {"name": "t"},
                "spec": {"sites": sites}}
    (tmp_path / "zoo.yaml").write_text(ZOO)
    (tmp_path / "topology.yaml").write_text(yaml.safe_dump(topology, sort_keys=False))
    (tmp_path / "workflow.yaml").write_text(WORKFLOW.replace("SITES", source_sites))
    return [tmp_path / n for n in ("zoo.yaml", "topology.yaml", "workflow.yaml")]


def test_copies_are_named_and_children_follow_their_parent() -> None:
    spec = TopologySpec.model_validate({"sites": [CLOUD, {"name": "store", **STORE, "replicas": 12},
                                                  {"name": "cam", "tier": "device", "parent": "store", "replicas": 2}]})
    names = [(s.name, s.parent) for s in spec.sites]
    assert names[1:3] == [("store-01", "cloud"), ("store-02", "cloud")] and ("store-12", "cloud") in names
    assert ("cam-store-07-1", "store-07") in names and ("cam-store-07-2", "store-07") in names
    assert len(spec.sites) == 1 + 12 + 24
    assert spec.replica_sets()["store"][-1] == "store-12" and len(spec.replica_sets()["cam"]) == 24
    named = TopologySpec.model_validate({"sites": [CLOUD, {"name": "s", **STORE, "replicas": 3,
                                                           "replica_names": "shop{i:03d}"}]})
    assert [s.name for s in named.sites] == ["cloud", "shop001", "shop002", "shop003"]


def test_a_replicated_site_plans_as_the_sites_written_out(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    short = load_bundle(_write(tmp_path / "a", [
        CLOUD, {"name": "store", **STORE, "replicas": 40},
        {"name": "cam", "tier": "device", "parent": "store"}], "cam"))
    assert sorted(short.workflow.spec.sources[0].sites)[:2] == ["cam-store-01", "cam-store-02"]
    assert len(short.workflow.spec.sources[0].sites) == 40
    written = [CLOUD]
    for k in range(1, 41):
        written += [{"name": f"store-{k:02d}", **STORE},
                    {"name": f"cam-store-{k:02d}", "tier": "device", "parent": f"store-{k:02d}"}]
    (tmp_path / "b").mkdir()
    long = load_bundle(_write(tmp_path / "b", written, ", ".join(f"cam-store-{k:02d}" for k in range(1, 41))))
    a, b = plan(short, baselines=False), plan(long, baselines=False)
    assert a.feasible and a.cost.total_per_hour == pytest.approx(b.cost.total_per_hour)
    assert sorted((x.stage, x.site) for x in a.assignments) == sorted((x.stage, x.site) for x in b.assignments)


def test_mistakes_in_replicas_are_named(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"the pattern must contain `\{i\}`"):
        load_bundle(_write(tmp_path, [CLOUD, {"name": "store", **STORE, "replicas": 2, "replica_names": "shop"}],
                           "store"))
    with pytest.raises(SpecError, match=r"unknown parent 'stor'; did you mean 'store'\?"):
        load_bundle(_write(tmp_path, [CLOUD, {"name": "store", **STORE, "replicas": 2},
                                      {"name": "cam", "tier": "device", "parent": "stor"}], "cam"))
