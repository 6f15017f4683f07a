"""The chart grants exactly the rights the operator uses, derived from the operator's own requests.

The operator runs kopf and its real client code (``ClientKubeApi`` on the ``kubernetes`` package)
against an HTTP API server that replays the recorded objects (tests/k8s/kubeserver.py) through a
whole lifecycle: first sight (kopf's finalizer), planning with a Topology and with node discovery,
status patches, Events, a spec change, deletion through the finalizer and a watch that expires (410,
listed again). Every request is recorded as the attributes RBAC checks (group, resource, verb,
scope); the rendered chart's Roles must grant exactly those, in the watched namespace, and its
ClusterRole exactly those on Nodes, for the default values and for the others that change RBAC. A
right the code never uses, or a call the chart does not allow, fails the test. The discovery
documents kopf reads at start-up (``/api``, ``/apis``, ...) are public to every authenticated client
(``system:discovery``) and need no grant.
"""

from __future__ import annotations

import pytest

from jellybean.k8s.operator import NODE, WORKFLOW
from tests.k8s.test_chart import RELEASE, manifests, rbac, rules_of
from tests.k8s.test_chart import NAMESPACE as RELEASE_NAMESPACE
from tests.k8s.test_operator import NAMESPACE, NODES_WF, VT, seed, world_of

Rights = dict[tuple[str, str], set[str]]


def operator_rights(*, discover_nodes: bool) -> tuple[Rights, Rights, set[str]]:
    """What the operator asked of the API server in a whole lifecycle: (namespaced rights, cluster
    rights, namespaces it touched)."""
    with world_of(discover_nodes=discover_nodes) as world:
        seed(world, workflows=(VT, NODES_WF))
        world.start()
        world.phase(VT, "Running")
        world.phase(NODES_WF, "Running" if discover_nodes else "Failed")
        world.api.update_spec(WORKFLOW, VT, lambda spec: spec["slo"].update(accuracy=30.0))
        world.until(lambda: world.status().get("observedGeneration") == 2 and world.status()["phase"] == "Running",
                    "generation 2")
        for kind in (WORKFLOW, NODE):
            world.api.compact(kind)
        world.api.delete(WORKFLOW, VT)
        world.until(lambda: VT not in world.api.objects[WORKFLOW], "the deletion")
        world.stop()
        requests = [r for r in world.server.requests if not r.nonresource]
    namespaced: Rights = {}
    cluster: Rights = {}
    for request in requests:
        target = cluster if request.namespace is None else namespaced
        target.setdefault((request.group, request.resource), set()).add(request.verb)
    namespaces = {r.namespace for r in requests if r.namespace is not None}
    return namespaced, cluster, namespaces


@pytest.fixture(scope="module")
def used() -> dict[bool, tuple[Rights, Rights, set[str]]]:
    return {discover: operator_rights(discover_nodes=discover) for discover in (True, False)}


def test_the_lifecycle_exercises_every_call_of_the_operator(used) -> None:
    namespaced, cluster, namespaces = used[True]
    assert namespaces == {NAMESPACE}
    assert namespaced == {("jellybean.io", "inferenceworkflows"): {"list", "watch", "patch"},
                          ("jellybean.io", "inferenceworkflows/status"): {"patch"},
                          ("jellybean.io", "modelzoos"): {"list", "watch"},
                          ("jellybean.io", "topologies"): {"list", "watch"},
                          ("", "events"): {"create"}}
    assert cluster == {("", "nodes"): {"list", "watch"}}
    assert used[False][1] == {} and used[False][0] == namespaced  # discovery off: no call on Nodes


@pytest.mark.parametrize("scenario, watched, discover", [
    ("default", RELEASE_NAMESPACE, True),
    ("watch-release-namespace", RELEASE_NAMESPACE, True),
    ("watch-other-namespace", "edge-ai", True),
    ("watch-namespace-no-nodes", "edge-ai", False),
    ("external-ray", RELEASE_NAMESPACE, True),
])
def test_the_chart_grants_exactly_what_the_operator_uses(used, scenario: str, watched: str,
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
