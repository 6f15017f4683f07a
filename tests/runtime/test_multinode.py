"""Several Ray nodes, one per site, each advertising its site as a custom resource
(`ray.cluster_utils.Cluster`): every actor (replica, source, output) must run on the node of the site
the plan named, and frames flow from node to node."""

from __future__ import annotations

from pathlib import Path

import pytest

from jellybean.optimizer import plan as make_plan
from jellybean.runtime.dataplane import Pipeline
from jellybean.runtime.deployment import SITE_CAPACITY, site_resource
from jellybean.spec import load_bundle
from tests.runtime.inprocess import eventually

DIGITS = Path(__file__).resolve().parents[2] / "workflows" / "digits"


@pytest.fixture
def cluster(_ray_session):
    from ray.cluster_utils import Cluster

    ray = _ray_session
    if ray.is_initialized():
        ray.shutdown()  # the shared local instance gives way; `ray_local` restarts it when next needed
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    nodes = {}
    for site, cpus in (("hub", 1), ("cloud", 1), ("cam-1", 0), ("cam-2", 0)):
        nodes[site] = cluster.add_node(num_cpus=cpus, resources={site_resource(site): SITE_CAPACITY})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield {site: node.node_id for site, node in nodes.items()}
    ray.shutdown()
    cluster.shutdown()


def test_each_replica_runs_on_its_sites_node(cluster, digits_zoo) -> None:
    bundle = load_bundle([DIGITS])
    plan = make_plan(bundle, baselines=False)
    assert {a.site for a in plan.assignments} == {"hub", "cloud"}  # the plan really spans two nodes
    pipeline = Pipeline(bundle, plan, cache_dir=digits_zoo, report_interval_s=0.2)
    pipeline.start()
    eventually(lambda: pipeline.ledger.completed > 100, 30, p=pipeline)
    summary = pipeline.stop(drain=True)
    for actor in pipeline.actors.values():
        assert actor.info["node_id"] == cluster[actor.site], actor.key
    assert {a.kind for a in pipeline.actors.values()} == {"replica", "source"}
    assert summary.frames.lost == 0 and summary.frames.failed == 0 and summary.frames.completed == summary.frames.sent
