"""The Helm chart (helm/jellybean), rendered with Helm's own engine (helm-python-sdk binds Helm's Go
SDK: no helm binary, no cluster) for the default values and several others, then checked the way
an API server would:

* every rendered manifest of a built-in kind passes ``kubernetes-validate --strict`` for the oldest
  Kubernetes the chart declares and the newest kubernetes-validate knows; none is skipped;
* the RayCluster is validated against KubeRay v1.7.0's CRD schema (vendored in
  tests/k8s/kuberay-v1.7.0, strict: an unknown field is an error), and each of its pod templates is
  also validated by kubernetes-validate as a PodTemplate;
* the ServiceMonitor (monitoring.coreos.com/v1) is validated against a minimal schema written here
  from the Prometheus Operator's API reference: only the fields the chart uses, each with its type,
  unknown fields refused. The Prometheus Operator's full CRD is not vendored (not in the project's
  reference material), so a field it would refuse for reasons beyond these is not caught;
* ``helm lint --strict`` finds nothing above info, and values.schema.json refuses bad values;
* security: non-root, read-only root filesystem, no privilege escalation, all capabilities dropped,
  requests and limits, probes, the API token from a Secret, no wildcard in any RBAC rule.

``lookup`` returns nothing when rendering offline, so that the generated tokens survive upgrades
(the chart reads the existing Secret back) is not exercised here.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import re
import shlex
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from helm_python.errors import HelmError, HelmRenderError, HelmValuesError

from jellybean.k8s.names import API_PORT, KINDS, LABEL_SITE, LABEL_TIER, METRICS_PORT
from jellybean.runtime.deployment import SITE_CAPACITY, SITE_RESOURCE_PREFIX
from tests.k8s.k8s_schema import crd_schema, errors, validator

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "jellybean"
KUBERAY_CRD = Path(__file__).resolve().parent / "kuberay-v1.7.0" / "ray.io_rayclusters.yaml"
RELEASE, NAMESPACE = "jb", "jellybean"
KUBE_VERSIONS = ("1.27", kubernetes_validate.utils.latest_version())
CRD_KINDS = {("ray.io/v1", "RayCluster"), ("monitoring.coreos.com/v1", "ServiceMonitor")}

SITES = [
    {"name": "cloud", "tier": "cloud", "replicas": 2, "cpu": "4", "memory": "8Gi"},
    {"name": "edc", "tier": "edge", "replicas": 1, "cpu": 2, "memory": "4Gi",
     "tolerations": [{"key": "jellybean.io/edge", "operator": "Exists", "effect": "NoSchedule"}]},
    {"name": "hub-1", "tier": "hub", "replicas": 1, "cpu": "1500m", "memory": "2Gi",
     "nodeSelector": {"kubernetes.io/arch": "arm64"},
     "tolerations": [{"key": "jellybean.io/hub", "operator": "Equal", "value": "hub-1", "effect": "NoExecute",
                      "tolerationSeconds": 300}]},
    {"name": "cam-01", "tier": "device", "replicas": 0, "cpu": "0.5", "memory": "512Mi"},
]

SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "service-monitor": {"serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}}},
    "existing-secret": {"auth": {"existingSecret": "my-api-token", "secretKey": "api-token"}},
    "four-sites": {"sites": SITES, "ray": {"siteCapacity": 500, "head": {
        "cpu": "2", "memory": "4Gi", "nodeSelector": {LABEL_TIER: "cloud"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ray", "effect": "NoSchedule"}]}}},
    "no-dashboards": {"dashboards": {"enabled": False}},
    "watch-release-namespace": {"operator": {"watchNamespace": NAMESPACE}},
    "watch-other-namespace": {"operator": {"watchNamespace": "edge-ai"}},
    "watch-namespace-no-nodes": {"operator": {"watchNamespace": "edge-ai", "discoverNodes": False}},
    "external-ray": {"ray": {"create": False, "address": "ray://ray-head.ray.svc:10001",
                             "auth": {"enabled": True, "existingSecret": "ray-token"}}},
    "no-ray-auth": {"ray": {"auth": {"enabled": False}}},
    "network-monitoring": {"networkPolicy": {"metrics": {"from": [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "monitoring"}}}]}, "api": {"from": []},
        "ray": {"from": [{"podSelector": {"matchLabels": {"app": "ray-dashboard-proxy"}}}]}}},
    "no-network-policy": {"networkPolicy": {"enabled": False}},
    "model-store": {"modelStore": {"claimName": "models", "mountPath": "/srv/models"}},
    "overrides": {"fullnameOverride": "jellybean", "imagePullSecrets": [{"name": "registry"}],
                  "image": {"repository": "registry.example.com/jellybean", "tag": "0.1.0-rc1"},
                  "ray": {"image": {"repository": "registry.example.com/jellybean-ray", "tag": "0.1.0-rc2",
                                    "pullPolicy": "Always"}},
                  "operator": {"extraArgs": ["--log-level=debug"], "extraEnv": [{"name": "X", "value": "1"}],
                               "tolerations": [{"key": "infra", "operator": "Exists"}],
                               "podAnnotations": {"example.com/owner": "ml"}},
                  "dashboards": {"namespace": "monitoring", "annotations": {"grafana_folder": "Jellybean"}},
                  "serviceMonitor": {"enabled": True}},
}

#: ServiceMonitor (monitoring.coreos.com/v1): the fields the chart writes, typed as in the
#: Prometheus Operator's API reference; anything else is refused.
SERVICE_MONITOR = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"enum": ["monitoring.coreos.com/v1"]}, "kind": {"enum": ["ServiceMonitor"]},
        "metadata": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string"}, "namespace": {"type": "string"},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}}}},
        "spec": {"type": "object", "required": ["selector", "endpoints"], "additionalProperties": False, "properties": {
            "selector": {"type": "object", "additionalProperties": False, "properties": {
                "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}}},
            "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}},
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["port"], "properties": {
                    "port": {"type": "string"}, "path": {"type": "string"},
                    "scheme": {"enum": ["http", "https"]}, "honorLabels": {"type": "boolean"},
                    "interval": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?"
                                                              "(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                    "scrapeTimeout": {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?"
                                                                   "(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                }}},
        }},
    },
}


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(name: str) -> tuple[tuple[dict[str, Any], ...], str]:
    """The manifests and the NOTES of one scenario, as `helm install` would render them."""
    with helm.Chart.load(CHART) as loaded:
        out = loaded.render(copy.deepcopy(SCENARIOS[name]), name=RELEASE, namespace=NAMESPACE, is_install=True)
    notes = out.pop("jellybean/templates/NOTES.txt", "")
    return tuple(doc for text in out.values() for doc in yaml.safe_load_all(text) if doc), notes


_rendered = functools.cache(render)


def manifests(name: str) -> list[dict[str, Any]]:
    return copy.deepcopy(list(_rendered(name)[0]))


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = of_kind(docs, kind)
    return found


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


@functools.cache
def kuberay_validator():
    crd = yaml.load(KUBERAY_CRD.read_text(encoding="utf-8"), Loader=yaml.CSafeLoader)
    return validator(crd_schema(crd, "v1"))


@functools.cache
def _kubernetes_validated(text: str, version: str) -> None:
    kubernetes_validate.validate(json.loads(text), version, strict=True)


def kubernetes_validated(obj: dict[str, Any]) -> None:
    for version in KUBE_VERSIONS:  # identical manifests across scenarios are validated once
        _kubernetes_validated(json.dumps(obj, sort_keys=True), version)


def pod_specs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    specs = [d["spec"]["template"]["spec"] for d in of_kind(docs, "Deployment")]
    for cluster in of_kind(docs, "RayCluster"):
        specs.append(cluster["spec"]["headGroupSpec"]["template"]["spec"])
        specs.extend(group["template"]["spec"] for group in cluster["spec"].get("workerGroupSpecs", []))
    return specs


# --- rendering, linting, values --------------------------------------------------------------------


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_manifest_validates(scenario):
    docs = manifests(scenario)
    assert docs
    for doc in docs:
        where = f"{scenario}: {doc['kind']}/{doc['metadata']['name']}"
        assert doc["metadata"].get("namespace") or doc["kind"] in ("ClusterRole", "ClusterRoleBinding"), where
        if doc["kind"] == "RayCluster":
            assert doc["apiVersion"] == "ray.io/v1"
            assert errors(kuberay_validator(), doc) == [], where
            spec = doc["spec"]
            templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec.get("workerGroupSpecs", [])]
            for index, template in enumerate(templates):
                kubernetes_validated({"apiVersion": "v1", "kind": "PodTemplate",
                                      "metadata": {"name": f"ray-{index}"}, "template": template})
        elif doc["kind"] == "ServiceMonitor":
            import jsonschema

            jsonschema.Draft7Validator(SERVICE_MONITOR).validate(doc)
        else:
            assert (doc["apiVersion"], doc["kind"]) not in CRD_KINDS
            kubernetes_validated(doc)


def test_crds_ship_with_the_chart(chart):
    """Helm's loader sees the three CRDs under crds/ (installed before the templates)."""
    shipped = {yaml.safe_load(c["data"].split("---\n", 1)[1])["spec"]["names"]["kind"] for c in chart.crds}
    assert shipped == set(KINDS)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_lint_is_clean(scenario):
    report = helm.lint(CHART, copy.deepcopy(SCENARIOS[scenario]), strict=True, namespace=NAMESPACE,
                       kube_version="v1.27.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


BAD_VALUES = {
    "unknown key": {"replicas": 2},
    "misspelled nested key": {"operator": {"watchNamespaces": "x"}},
    "site name with capitals": {"sites": [{"name": "Hub_1", "tier": "hub", "replicas": 1, "cpu": 1, "memory": "1Gi"}]},
    "unknown tier": {"sites": [{"name": "hub", "tier": "moon", "replicas": 1, "cpu": 1, "memory": "1Gi"}]},
    "site without memory": {"sites": [{"name": "hub", "tier": "hub", "replicas": 1, "cpu": 1}]},
    "negative replicas": {"sites": [{"name": "hub", "tier": "hub", "replicas": -1, "cpu": 1, "memory": "1Gi"}]},
    "cpu is a word": {"operator": {"resources": {"requests": {"cpu": "lots", "memory": "1Gi"}}}},
    "no limits": {"operator": {"resources": {"limits": None}}},
    "port out of range": {"service": {"apiPort": 70000}},
    "external ray without address": {"ray": {"create": False}},
    "boolean as a word": {"serviceMonitor": {"enabled": "yes"}},
    "pull policy": {"image": {"pullPolicy": "Sometimes"}},
    "namespace with capitals": {"operator": {"watchNamespace": "Edge"}},
    "ray 3": {"ray": {"version": "3.0.0"}},
    "bad toleration operator": {"sites": [{"name": "hub", "tier": "hub", "replicas": 1, "cpu": 1, "memory": "1Gi",
                                           "tolerations": [{"key": "a", "operator": "Maybe"}]}]},
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_values_are_refused(case, chart):
    values = BAD_VALUES[case]
    with pytest.raises(HelmValuesError):
        chart.validate_schema(values)
    with pytest.raises(HelmError):  # what `helm install` does: the schema first, nothing rendered
        chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def test_default_values_pass_the_schema(chart):
    chart.validate_schema({})
    chart.validate_schema(copy.deepcopy(SCENARIOS["overrides"]))


def test_a_site_listed_twice_is_refused(chart):
    twice = {"sites": [SITES[0], SITES[0]]}
    with pytest.raises(HelmRenderError, match="listed twice"):
        chart.render(twice, name=RELEASE, namespace=NAMESPACE, is_install=True)


# --- security --------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_pods_are_locked_down(scenario):
    docs = manifests(scenario)
    assert not of_kind(docs, "PersistentVolumeClaim")
    for spec in pod_specs(docs):
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert "fsGroup" in spec["securityContext"]
        # No host paths, and no claims but the model store's, which is mounted read-only.
        assert not any("hostPath" in v for v in spec.get("volumes", []))
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["name"] == "model-store" and volume["persistentVolumeClaim"]["readOnly"] is True
        assert not spec.get("hostNetwork") and not spec.get("hostPID")
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False and context["privileged"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["runAsNonRoot"] is True
            for bound in ("requests", "limits"):
                assert set(container["resources"][bound]) >= {"cpu", "memory"}, (scenario, container["name"], bound)


def test_operator_pod():
    docs = manifests("default")
    deployment = one(docs, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert spec["securityContext"]["runAsUser"] == 10001 and spec["securityContext"]["fsGroup"] == 10001
    container = operator_container(docs)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # The only writable place is an emptyDir on /tmp; state lives in the cluster.
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert [v["name"] for v in spec["volumes"]] == ["tmp"] and "emptyDir" in spec["volumes"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"api": API_PORT, "metrics": METRICS_PORT}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", "/healthz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "api"}, probe
    service = one(docs, "Service")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"api": API_PORT, "metrics": METRICS_PORT}
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())


@pytest.mark.parametrize("scenario", ["default", "existing-secret"])
def test_the_api_token_comes_from_a_secret(scenario):
    docs = manifests(scenario)
    env = {e["name"]: e for e in operator_container(docs)["env"]}
    ref = env["JELLYBEAN_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert "value" not in env["JELLYBEAN_TOKEN"]
    secrets = {s["metadata"]["name"]: s for s in of_kind(docs, "Secret")}
    if scenario == "existing-secret":
        assert ref == {"name": "my-api-token", "key": "api-token"}
        assert "my-api-token" not in secrets
    else:
        token = base64.b64decode(secrets[ref["name"]]["data"][ref["key"]]).decode()
        assert re.fullmatch(r"[A-Za-z0-9]{48}", token)
        again = one([s for s in render(scenario)[0] if s["kind"] == "Secret" and s["metadata"]["name"] == ref["name"]],
                    "Secret")
        assert again["data"][ref["key"]] != secrets[ref["name"]]["data"][ref["key"]], "random per install"


def test_operator_arguments():
    args = operator_container(manifests("default"))["args"]
    assert args[0] == "operator"
    assert f"--port={API_PORT}" in args and f"--metrics-port={METRICS_PORT}" in args
    assert "--host=0.0.0.0" in args and "--metrics-host=0.0.0.0" in args
    assert f"--ray-address=ray://{RELEASE}-jellybean-ray-head-svc.{NAMESPACE}.svc:10001" in args
    assert f"--namespace={NAMESPACE}" in args, "default: the release's namespace"
    assert "--namespace=edge-ai" in operator_container(manifests("watch-other-namespace"))["args"]
    external = operator_container(manifests("external-ray"))
    assert "--ray-address=ray://ray-head.ray.svc:10001" in external["args"]
    assert {"name": "X", "value": "1"} in operator_container(manifests("overrides"))["env"]
    assert operator_container(manifests("overrides"))["args"][-1] == "--log-level=debug"


# --- RBAC ------------------------------------------------------------------------------------------


def rbac(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    return {d["kind"]: of_kind(docs, d["kind"]) for d in docs if d["kind"] in
            ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_rbac_has_no_wildcards(scenario):
    for kind, objs in rbac(manifests(scenario)).items():
        for obj in objs:
            text = json.dumps(obj.get("rules", []))
            assert "*" not in text, f"{scenario}: {kind}/{obj['metadata']['name']}"


def rules_of(objs: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    granted: dict[tuple[str, str], set[str]] = {}
    for obj in objs:
        for rule in obj["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


def test_rbac_is_namespaced_but_for_nodes():
    """The operator watches one namespace (the release's by default): a Role there; reading Nodes is
    the only cluster-wide right, and there is none with discovery off. Which verbs on which resources:
    tests/k8s/test_rbac.py derives them from the operator's own requests."""
    def but_secrets(name: str) -> list[dict[str, Any]]:  # their tokens are random
        return [d for d in manifests(name) if d["kind"] != "Secret"]

    assert but_secrets("watch-release-namespace") == but_secrets("default")
    roles = rbac(manifests("default"))
    (role,) = roles["Role"]
    assert role["metadata"]["namespace"] == NAMESPACE
    (nodes,) = roles["ClusterRole"]
    assert set(rules_of([nodes])) == {("", "nodes")}
    roles = rbac(manifests("watch-other-namespace"))
    assert [r["metadata"]["namespace"] for r in roles["Role"]] == ["edge-ai"]
    roles = rbac(manifests("watch-namespace-no-nodes"))
    assert "ClusterRole" not in roles and "ClusterRoleBinding" not in roles
    assert "--no-discover-nodes" in operator_container(manifests("watch-namespace-no-nodes"))["args"]
    assert "--no-discover-nodes" not in operator_container(manifests("default"))["args"]


# --- the Ray cluster -------------------------------------------------------------------------------


def ray_resources(param: str) -> dict[str, float]:
    """rayStartParams.resources as `ray start --resources=<value>` gets it from the shell (KubeRay puts
    the value into the command line as it is) and as KubeRay parses it (trims quotes, reads JSON)."""
    (word,) = shlex.split(param)
    assert json.loads(param.strip("'\"` ")) == json.loads(word)
    return json.loads(word)


@pytest.mark.parametrize("scenario", ["default", "four-sites"])
def test_one_worker_group_per_site(scenario):
    values = SCENARIOS[scenario].get("sites") or yaml.safe_load((CHART / "values.yaml").read_text())["sites"]
    capacity = SCENARIOS[scenario].get("ray", {}).get("siteCapacity", SITE_CAPACITY)
    cluster = one(manifests(scenario), "RayCluster")
    groups = cluster["spec"]["workerGroupSpecs"]
    assert [g["groupName"] for g in groups] == [s["name"] for s in values]
    for group, site in zip(groups, values):
        assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == site["replicas"]
        assert ray_resources(group["rayStartParams"]["resources"]) == {f"{SITE_RESOURCE_PREFIX}{site['name']}": capacity}
        pod = group["template"]["spec"]
        assert pod["nodeSelector"] == {**(site.get("nodeSelector") or {}), LABEL_TIER: site["tier"],
                                       LABEL_SITE: site["name"]}
        assert pod.get("tolerations", []) == site.get("tolerations", [])
        assert pod["automountServiceAccountToken"] is False
        (container,) = pod["containers"]
        assert container["resources"]["limits"] == {"cpu": str(site["cpu"]), "memory": site["memory"]}
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0", "replicas run on site workers, not the head"
    assert "resources" not in head["rayStartParams"]


def test_ray_token_authentication():
    docs = manifests("default")
    cluster = one(docs, "RayCluster")
    auth = cluster["spec"]["authOptions"]
    assert auth["mode"] == "token"
    secret = [s for s in of_kind(docs, "Secret") if s["metadata"]["name"] == auth["secretName"]]
    assert len(secret) == 1 and set(secret[0]["data"]) == {"auth_token"}
    env = {e["name"]: e for e in operator_container(docs)["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": auth["secretName"], "key": "auth_token"}

    external = manifests("external-ray")
    assert not of_kind(external, "RayCluster")
    env = {e["name"]: e for e in operator_container(external)["env"]}
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "ray-token", "key": "auth_token"}

    off = manifests("no-ray-auth")
    assert "authOptions" not in one(off, "RayCluster")["spec"]
    assert not {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} & {e["name"] for e in operator_container(off)["env"]}


def ray_pods(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    spec = one(docs, "RayCluster")["spec"]
    return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]


def test_every_pod_runs_the_image_the_dockerfile_builds_by_default():
    """By default the operator and every Ray pod run the image the repository's Dockerfile builds
    (`make image`: jellybean:<appVersion>), whose Ray is the RayCluster's rayVersion; the values
    name another image for each."""
    from dockerfile_parse import DockerfileParser

    dockerfile = DockerfileParser(path=str(ROOT / "Dockerfile"))
    labels = dockerfile.labels
    built = f"{labels['org.opencontainers.image.title']}:{labels['org.opencontainers.image.version']}"
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))["appVersion"]
    assert built == f"jellybean:{app_version}"
    docs = manifests("default")
    assert operator_container(docs)["image"] == built
    for pod in ray_pods(docs):
        (container,) = pod["spec"]["containers"]
        assert container["image"] == built
    assert one(docs, "RayCluster")["spec"]["rayVersion"] == dockerfile.args["RAY_VERSION"] == labels["io.ray.version"]

    docs = manifests("overrides")
    assert operator_container(docs)["image"] == "registry.example.com/jellybean:0.1.0-rc1"
    for pod in ray_pods(docs):
        (container,) = pod["spec"]["containers"]
        assert container["image"] == "registry.example.com/jellybean-ray:0.1.0-rc2"


# --- monitoring ------------------------------------------------------------------------------------


def test_service_monitor():
    assert not of_kind(manifests("default"), "ServiceMonitor"), "off by default"
    docs = manifests("service-monitor")
    monitor, service = one(docs, "ServiceMonitor"), one(docs, "Service")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert all(service["metadata"]["labels"].get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]} and endpoint["path"] == "/metrics"


def test_dashboards():
    files = sorted(p.name for p in (CHART / "dashboards").glob("*.json"))
    assert files, "helm/jellybean/dashboards holds the Grafana dashboards (`make dashboards`)"
    maps = of_kind(manifests("default"), "ConfigMap")
    assert sorted(k for m in maps for k in m["data"]) == files
    for config_map in maps:
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((name, text),) = config_map["data"].items()
        assert json.loads(text) == json.loads((CHART / "dashboards" / name).read_text(encoding="utf-8"))
    assert not of_kind(manifests("no-dashboards"), "ConfigMap")
    for config_map in of_kind(manifests("overrides"), "ConfigMap"):
        assert config_map["metadata"]["namespace"] == "monitoring"
        assert config_map["metadata"]["annotations"] == {"grafana_folder": "Jellybean"}


def test_notes_say_what_to_do_next():
    notes = _rendered("default")[1]
    for expected in ("kubectl apply -n jellybean -f workflows/digits/", "kubectl get iwf",
                     f"port-forward svc/{RELEASE}-jellybean {API_PORT} {METRICS_PORT}", "grafana_dashboard",
                     "kubectl delete crd inferenceworkflows.jellybean.io"):
        assert expected in notes, expected


def test_the_model_store_is_mounted_read_only_where_artifacts_are_read():
    """The operator proves artifacts loadable and the Ray pods' replicas load them: both mount the
    store at the same path, read-only, and are told where it is; without a claim, nothing is mounted."""
    docs = manifests("model-store")
    pods = [("operator", one(docs, "Deployment")["spec"]["template"]["spec"])]
    cluster = one(docs, "RayCluster")
    pods.append(("head", cluster["spec"]["headGroupSpec"]["template"]["spec"]))
    pods += [(g["groupName"], g["template"]["spec"]) for g in cluster["spec"]["workerGroupSpecs"]]
    for name, pod in pods:
        volume = next(v for v in pod["volumes"] if v["name"] == "model-store")
        assert volume["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}, name
        (container,) = pod["containers"]
        mount = next(m for m in container["volumeMounts"] if m["name"] == "model-store")
        assert mount == {"name": "model-store", "mountPath": "/srv/models", "readOnly": True}, name
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env["JELLYBEAN_MODEL_STORE"] == "/srv/models", name
    for pod in pod_specs(manifests("default")):
        assert all(v["name"] != "model-store" for v in pod.get("volumes", []))
