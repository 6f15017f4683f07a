"""The chart grants exactly the rights the operator uses, derived from the operator's own requests.

The operator runs its real client code (``ClientKubeApi`` on the ``kubernetes`` package) against an
HTTP API server that replays the recorded objects (tests/k8s/kubeserver.py) through a whole
lifecycle: first sight (a finalizer patch that meets a 409 and is read again), planning with a
Topology and with node discovery, status patches, a spec change, deletion through the finalizer and
a watch that expires (410, listed again). Every request is recorded as the attributes RBAC checks
(group, resource, verb, scope); the rendered chart's Roles must grant exactly those, in the watched
namespace, and its ClusterRole exactly those on Nodes, for the default values and for the others
that change RBAC. A right the code never uses, or a call the chart does not allow, fails the test.
"""

from __future__ import annotations

import pytest

pytest.importorskip("kubernetes")

from kubernetes import client  # noqa: E402

from jellybean.k8s.operator import NODE, WORKFLOW, ClientKubeApi, Operator  # noqa: E402
from tests.k8s.fakekube import NAMESPACE, FakeKubeApi, recorded  # noqa: E402
from tests.k8s.kubeserver import KubeServer  # noqa: E402
from tests.k8s.test_chart import RELEASE, manifests, rbac, rules_of  # noqa: E402
from tests.k8s.test_operator import NODES_WF, VT, Clock, Pipelines, plan_of  # noqa: E402
from tests.k8s.test_chart import NAMESPACE as RELEASE_NAMESPACE  # noqa: E402

Rights = dict[tuple[str, str], set[str]]


def operator_rights(*, discover_nodes: bool) -> tuple[Rights, Rights, set[str]]:
    """What the operator asked of the API server in a whole lifecycle: (namespaced rights, cluster
    rights, namespaces it touched)."""
    fake = FakeKubeApi()
    fake.load("ModelZoo", recorded("modelzoo-vehicle-tracking.json"))
    fake.load("Topology", recorded("topology-vehicle-tracking-city-block.json"))
    for node in recorded("nodes.json")["items"]:
        fake.load(NODE, node)
    for name in (VT, NODES_WF):
        fake.load(WORKFLOW, recorded(f"inferenceworkflow-{name}.json"))
    fake.conflicts = 1  # the first finalizer patch meets a 409: the operator reads the object again
    clock = Clock()
    with KubeServer(fake) as server:
        configuration = client.Configuration(host=server.url)
        configuration.api_key = {"authorization": "Bearer fake-service-account-token"}
        api = ClientKubeApi(client.ApiClient(configuration))
        operator = Operator(api, NAMESPACE, pipeline_factory=Pipelines().factory, planner=plan_of, clock=clock,
                            now=clock.stamp, ray_address="ray://ray-head:10001", watch_timeout_s=1,
                            discover_nodes=discover_nodes)
        operator.step()
        assert operator.deployed.keys() == ({VT, NODES_WF} if discover_nodes else {VT})
        fake.update_spec(WORKFLOW, VT, lambda spec: spec["slo"].update(accuracy=30.0))
        operator.step()
        fake.delete(WORKFLOW, VT)
        operator.step()
        assert VT not in fake.objects[WORKFLOW] and VT not in operator.deployed
        for kind in (WORKFLOW, NODE):
            fake.compact(kind)
        operator.step()
        operator.shutdown(drain=False)
    namespaced: Rights = {}
    cluster: Rights = {}
    for request in server.requests:
        target = cluster if request.namespace is None else namespaced
        target.setdefault((request.group, request.resource), set()).add(request.verb)
    namespaces = {r.namespace for r in server.requests if r.namespace is not None}
    return namespaced, cluster, namespaces


@pytest.fixture(scope="module")
def used() -> dict[bool, tuple[Rights, Rights, set[str]]]:
    return {discover: operator_rights(discover_nodes=discover) for discover in (True, False)}


def test_the_lifecycle_exercises_every_call_of_the_operator(used) -> None:  # noqa: ANN001
    namespaced, cluster, namespaces = used[True]
    assert namespaces == {NAMESPACE}
    assert namespaced == {("jellybean.io", "inferenceworkflows"): {"get", "list", "watch", "patch"},
                          ("jellybean.io", "inferenceworkflows/status"): {"patch"},
                          ("jellybean.io", "modelzoos"): {"list", "watch"},
                          ("jellybean.io", "topologies"): {"list", "watch"}}
    assert cluster == {("", "nodes"): {"list", "watch"}}
    assert used[False][1] == {} and used[False][0] == namespaced  # discovery off: no call on Nodes


@pytest.mark.parametrize("scenario, watched, discover", [
    ("default", RELEASE_NAMESPACE, True),
    ("watch-release-namespace", RELEASE_NAMESPACE, True),
    ("watch-other-namespace", "edge-ai", True),
    ("watch-namespace-no-nodes", "edge-ai", False),
    ("external-ray", RELEASE_NAMESPACE, True),
])
def test_the_chart_grants_exactly_what_the_operator_uses(used, scenario: str, watched: str,  # noqa: ANN001
                                                        discover: bool) -> None:
    namespaced, cluster, _ = used[discover]
    roles = rbac(manifests(scenario))
    by_namespace = {r["metadata"]["namespace"]: rules_of([r]) for r in roles.get("Role", [])}
    assert by_namespace == {watched: namespaced}, scenario
    assert rules_of(roles.get("ClusterRole", [])) == cluster, scenario
    subject = [{"kind": "ServiceAccount", "name": f"{RELEASE}-jellybean", "namespace": RELEASE_NAMESPACE}]
    bound = {(b["metadata"].get("namespace"), b["roleRef"]["kind"], b["roleRef"]["name"])
             for kind in ("RoleBinding", "ClusterRoleBinding") for b in roles.get(kind, [])}
    made = {(r["metadata"].get("namespace"), kind, r["metadata"]["name"])
            for kind in ("Role", "ClusterRole") for r in roles.get(kind, [])}
    assert bound == made
    for kind in ("RoleBinding", "ClusterRoleBinding"):
        for binding in roles.get(kind, []):
            assert binding["subjects"] == subject
