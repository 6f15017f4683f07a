"""The chart's NetworkPolicies, evaluated as the API server's network plugin would: who can reach the
operator's API and metrics ports and the Ray pods, for the default values and for values that open
or close them. The evaluator implements the NetworkPolicy rules the chart uses (podSelector and
namespaceSelector with matchLabels, named and numbered ports, ingress only) and refuses anything else,
so that a policy it cannot judge fails the test instead of passing it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.k8s.test_chart import NAMESPACE, RELEASE, manifests, of_kind, one

OTHER = "default"


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)  # name -> number


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"the evaluator only knows matchLabels: {selector}"
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def _namespace_labels(namespace: str) -> dict[str, str]:
    return {"kubernetes.io/metadata.name": namespace}  # set by the API server on every namespace


def _peer_allows(peer: dict[str, Any], policy_namespace: str, source: Pod) -> bool:
    assert set(peer) <= {"podSelector", "namespaceSelector"}, f"the evaluator does not know {peer}"
    if "namespaceSelector" in peer:
        if not _matches(peer["namespaceSelector"], _namespace_labels(source.namespace)):
            return False
    elif source.namespace != policy_namespace:
        return False
    return "podSelector" not in peer or _matches(peer["podSelector"], source.labels)


def _port_allows(rule_ports: list[dict[str, Any]] | None, target: Pod, port: int) -> bool:
    if not rule_ports:
        return True
    for entry in rule_ports:
        wanted = entry.get("port")
        number = target.ports.get(wanted) if isinstance(wanted, str) else wanted
        if entry.get("protocol", "TCP") == "TCP" and (wanted is None or number == port):
            return True
    return False


def allowed(docs: list[dict[str, Any]], source: Pod, target: Pod, port: int) -> bool:
    policies = [p for p in of_kind(docs, "NetworkPolicy") if p["metadata"]["namespace"] == target.namespace
                and _matches(p["spec"]["podSelector"], target.labels) and "Ingress" in p["spec"]["policyTypes"]]
    if not policies:
        return True  # no policy selects the pod: Kubernetes lets everything in
    for policy in policies:
        for rule in policy["spec"].get("ingress") or []:
            peers = rule.get("from")
            if _port_allows(rule.get("ports"), target, port) and (
                    not peers or any(_peer_allows(p, policy["metadata"]["namespace"], source) for p in peers)):
                return True
    return False


def operator_pod(docs: list[dict[str, Any]]) -> Pod:
    template = one(docs, "Deployment")["spec"]["template"]
    (container,) = template["spec"]["containers"]
    return Pod(NAMESPACE, template["metadata"]["labels"], {p["name"]: p["containerPort"] for p in container["ports"]})


def ray_pods(docs: list[dict[str, Any]]) -> list[Pod]:
    spec = one(docs, "RayCluster")["spec"]
    templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec.get("workerGroupSpecs", [])]
    # KubeRay adds labels of its own to the pods it makes from these templates; the policy must not need them.
    return [Pod(NAMESPACE, t["metadata"]["labels"]) for t in templates]


STRANGER_HERE = Pod(NAMESPACE, {"app": "something-else"})
STRANGER_ELSEWHERE = Pod(OTHER, {"app": "something-else"})
PROMETHEUS = Pod("monitoring", {"app.kubernetes.io/name": "prometheus"})
API, METRICS = 8470, 9464


def test_by_default_the_api_and_metrics_are_open_to_the_namespace_only() -> None:
    docs = manifests("default")
    operator = operator_pod(docs)
    for port in (API, METRICS):
        assert allowed(docs, STRANGER_HERE, operator, port)
        assert not allowed(docs, STRANGER_ELSEWHERE, operator, port)
        assert not allowed(docs, PROMETHEUS, operator, port)
    assert not allowed(docs, STRANGER_HERE, operator, 22)  # nothing else on the operator's pod


def test_ray_is_reachable_only_within_the_release() -> None:
    docs = manifests("default")
    operator = operator_pod(docs)
    operator_as_source = Pod(NAMESPACE, operator.labels)
    pods = ray_pods(docs)
    assert len(pods) >= 2
    other_release = Pod(NAMESPACE, {**pods[0].labels, "jellybean.io/release": "another"})
    for target in pods:
        for port in (6379, 10001, 8265, 52365, 8080):
            assert allowed(docs, operator_as_source, target, port)
            assert all(allowed(docs, Pod(NAMESPACE, peer.labels), target, port) for peer in pods)
            assert not allowed(docs, STRANGER_HERE, target, port)
            assert not allowed(docs, STRANGER_ELSEWHERE, target, port)
            assert not allowed(docs, other_release, target, port)


def test_values_name_who_may_scrape_and_call() -> None:
    docs = manifests("network-monitoring")
    operator = operator_pod(docs)
    assert allowed(docs, PROMETHEUS, operator, METRICS)
    assert not allowed(docs, STRANGER_HERE, operator, METRICS)
    for source in (STRANGER_HERE, STRANGER_ELSEWHERE, PROMETHEUS):  # api.from: [] closes the API
        assert not allowed(docs, source, operator, API)
    proxy = Pod(NAMESPACE, {"app": "ray-dashboard-proxy"})
    assert all(allowed(docs, proxy, target, 8265) for target in ray_pods(docs))


@pytest.mark.parametrize("scenario", ["no-network-policy"])
def test_policies_can_be_turned_off(scenario: str) -> None:
    assert of_kind(manifests(scenario), "NetworkPolicy") == []


def test_policies_are_on_and_named_for_the_release() -> None:
    names = sorted(p["metadata"]["name"] for p in of_kind(manifests("default"), "NetworkPolicy"))
    assert names == [f"{RELEASE}-jellybean-operator", f"{RELEASE}-jellybean-ray"]
    external = of_kind(manifests("external-ray"), "NetworkPolicy")
    assert [p["metadata"]["name"] for p in external] == [f"{RELEASE}-jellybean-operator"]
