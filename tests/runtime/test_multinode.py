"""Several Ray nodes, one per site, each advertising its site as a custom resource
(`ray.cluster_utils.Cluster`): every replica must run on the node of the site the plan named."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from jellybean.optimizer import plan as make_plan
from jellybean.runtime.dataplane import SITE_CAPACITY, Pipeline, site_resource
from jellybean.spec import load_bundle

ray = pytest.importorskip("ray")
pytest.importorskip("torch")

DIGITS = Path(__file__).resolve().parents[2] / "workflows" / "digits"


@pytest.fixture
def cluster(_ray_session):
    from ray.cluster_utils import Cluster

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
    pipeline = Pipeline(bundle, plan, cache_dir=digits_zoo)
    pipeline.start()
    time.sleep(3.0)
    summary = pipeline.stop(drain=True)
    for replica in pipeline.replicas.values():
        assert replica.node_id == cluster[replica.spec.site], replica.spec.key
    assert summary.frames.sent > 100
    assert summary.frames.lost == 0 and summary.frames.failed == 0
