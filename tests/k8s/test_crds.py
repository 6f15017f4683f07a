"""The CustomResourceDefinitions (jellybean/k8s/crds.py, committed under helm/jellybean/crds/):
generated from the same pydantic models the CLI loads documents with, so both agree.

No API server runs here. What stands in for it:

* the committed files equal the generator's output now (``make crds`` regenerates them);
* every CRD passes ``kubernetes-validate --strict`` (the CRD object's own schema, for the oldest
  and the newest Kubernetes the chart supports), and its ``openAPIV3Schema`` obeys the API
  server's structural-schema rules (tests/k8s/k8s_schema.py, checked to find nothing wrong with
  KubeRay's CRDs, which API servers accept);
* every committed document (workflows/*/*.yaml), sent as kubectl sends it (JSON), validates against
  its CRD's schema with a JSON Schema validator, and the pydantic loader takes the same JSON form
  (the operator's input); malformed documents are refused by both;
* what the CRD schema cannot express (a stage input that is a name *or* a mapping, the pattern of
  map keys) is listed in a test of its own: those the operator refuses with the pydantic models.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from pathlib import Path
from typing import Any
from collections.abc import Callable

import kubernetes_validate
import pytest
import yaml

from jellybean.cli import main
from jellybean.k8s import crds
from jellybean.k8s.names import API_VERSION, GROUP, KINDS, SPEC_KIND, VERSION
from jellybean.spec.errors import SpecError
from jellybean.spec.loader import SourceMap, parse_document
from tests.k8s.k8s_schema import api_object, crd_schema, errors, structural_problems, validator

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "helm" / "jellybean" / "crds"
DOCUMENTS = sorted((ROOT / "workflows").glob("*/*.yaml"))
RECORDED = ROOT / "tests" / "k8s" / "recorded"
KUBERAY = Path(__file__).resolve().parent / "kuberay-v1.7.0"
#: The oldest Kubernetes the chart declares (Chart.yaml kubeVersion >=1.27; kubernetes-validate
#: bundles 1.25 onwards) and the newest kubernetes-validate knows.
KUBE_VERSIONS = ("1.27", kubernetes_validate.utils.latest_version())
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


@pytest.fixture(scope="module")
def validators() -> dict[str, Any]:
    return {kind: validator(crd_schema(crds.crd(kind))) for kind in KINDS}


@functools.cache
def _documents() -> tuple[tuple[str, dict[str, Any]], ...]:
    found = []
    for path in DOCUMENTS:
        for index, doc in enumerate(yaml.safe_load_all(path.read_text(encoding="utf-8"))):
            if doc is not None:
                found.append((f"{path.relative_to(ROOT)}#{index}", api_object(doc)))
    return tuple(found)


def documents() -> list[tuple[str, dict[str, Any]]]:
    """Every committed document as the API server receives it from kubectl (fresh copies)."""
    return copy.deepcopy(list(_documents()))


def load(doc: dict[str, Any]) -> Any:
    """The pydantic loader on a JSON object (what the operator reads from the API server)."""
    return parse_document(copy.deepcopy(doc), SourceMap("<api>"), 0).model


# --- the files -------------------------------------------------------------------------------------


def test_committed_crds_are_the_generators_output():
    committed = sorted(p.name for p in CRD_DIR.glob("*"))
    assert committed == sorted(crds.file_name(kind) for kind in KINDS), "run `make crds`"
    for kind in KINDS:
        assert (CRD_DIR / crds.file_name(kind)).read_text(encoding="utf-8") == crds.render(kind), (
            f"{crds.file_name(kind)} is stale: run `make crds`")


def test_cli_writes_the_crds(tmp_path, capsys):
    assert main(["crds", "--out", str(tmp_path / "out")]) == 0
    for kind in KINDS:
        assert (tmp_path / "out" / crds.file_name(kind)).read_text(encoding="utf-8") == crds.render(kind)
    assert capsys.readouterr().out.count("wrote ") == len(KINDS)


def test_cli_reports_an_unwritable_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["crds", "--out", str(blocker)]) == 2
    assert "cannot write the CRDs" in capsys.readouterr().err


# --- the CRDs as Kubernetes objects ----------------------------------------------------------------


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_crd_passes_kubernetes_validate_strict(kind, version):
    text = (CRD_DIR / crds.file_name(kind)).read_text(encoding="utf-8")
    (obj,) = [d for d in yaml.safe_load_all(text) if d]
    kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("kind", list(KINDS))
def test_crd_schema_is_structural(kind):
    assert structural_problems(crd_schema(crds.crd(kind))) == []


def test_the_structural_checker_finds_what_the_api_server_refuses():
    """The checker knows the rules: no complaint about KubeRay's CRDs (which API servers accept),
    a complaint about each thing Kubernetes refuses."""
    kuberay = yaml.load((KUBERAY / "ray.io_rayclusters.yaml").read_text(encoding="utf-8"), Loader=yaml.CSafeLoader)
    for version in kuberay["spec"]["versions"]:
        assert structural_problems(version["schema"]["openAPIV3Schema"]) == []
    bad = {
        "untyped field": {"type": "object", "properties": {"a": {"description": "no type"}}},
        "properties and additionalProperties": {"type": "object", "properties": {"a": {
            "type": "object", "properties": {"b": {"type": "string"}}, "additionalProperties": False}}},
        "$ref": {"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}},
        "type in anyOf": {"type": "object", "properties": {"a": {
            "x-kubernetes-preserve-unknown-fields": True, "anyOf": [{"type": "string"}, {"type": "object"}]}}},
        "nullable in anyOf": {"type": "object", "properties": {"a": {"type": "string", "anyOf": [{"nullable": True}]}}},
        "type null": {"type": "object", "properties": {"a": {"type": "null"}}},
        "patternProperties": {"type": "object", "properties": {"a": {
            "type": "object", "patternProperties": {"^x$": {"type": "string"}}}}},
        "array without items": {"type": "object", "properties": {"a": {"type": "array"}}},
        "numeric exclusiveMinimum": {"type": "object", "properties": {"a": {"type": "number", "exclusiveMinimum": 0}}},
        "metadata restricted": {"type": "object", "properties": {"metadata": {
            "type": "object", "properties": {"labels": {"type": "object"}}}}},
        "field only in a junctor": {"type": "object", "properties": {"a": {"type": "string"}},
                                    "anyOf": [{"properties": {"b": {"minLength": 1}}}]},
    }
    for name, schema in bad.items():
        assert structural_problems(schema), name


def test_names_and_columns():
    for kind, (plural, singular, short_names) in KINDS.items():
        crd = yaml.safe_load((CRD_DIR / crds.file_name(kind)).read_text(encoding="utf-8").split("---\n", 1)[1])
        spec = crd["spec"]
        assert crd["metadata"]["name"] == f"{plural}.{GROUP}"
        assert spec["group"] == GROUP and spec["scope"] == "Namespaced"
        assert spec["names"] == {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": singular,
                                 "shortNames": short_names, "categories": ["jellybean"]}
        (version,) = spec["versions"]
        assert (version["name"], version["served"], version["storage"]) == (VERSION, True, True)
        assert version["subresources"] == {"status": {}}
        assert f"{GROUP}/{VERSION}" == API_VERSION
        schema = version["schema"]["openAPIV3Schema"]
        assert schema["properties"]["metadata"] == {"type": "object"}, "metadata is the API server's"
        # Every printer column points at a field the schema declares.
        for column in version["additionalPrinterColumns"]:
            node = schema
            for part in column["jsonPath"].lstrip(".").split("."):
                if node is schema["properties"]["metadata"]:
                    break  # ObjectMeta: creationTimestamp is the API server's
                node = node["properties"][part]
    iwf = crds.crd("InferenceWorkflow")["spec"]["versions"][0]["additionalPrinterColumns"]
    shown = {c["name"]: c["jsonPath"] for c in iwf if not c.get("priority")}
    assert shown == {"Phase": ".status.phase", "Cost/h": ".status.costPerHour", "Accuracy": ".status.accuracy",
                     "Age": ".metadata.creationTimestamp"}


def test_conversion_rules():
    defs = {"Tier": {"enum": ["hub", "cloud"], "type": "string", "title": "Tier"}}
    node = {"type": "object", "title": "X", "additionalProperties": False, "properties": {
        "kind": {"const": "K", "default": "K", "type": "string"},
        "rate": {"exclusiveMinimum": 0, "type": "number"},
        "tier": {"anyOf": [{"$ref": "#/$defs/Tier"}, {"type": "null"}], "default": None, "description": "d"},
        "either": {"anyOf": [{"type": "string"}, {"type": "object", "properties": {"a": {"type": "string"}}}]},
        "by_name": {"type": "object", "patternProperties": {"^[a-z]+$": {"type": "number"}},
                    "propertyNames": {"maxLength": 9}},
        "by_batch": {"type": "object", "additionalProperties": {"type": "number"}},
    }}
    out = crds.structural(node, defs)
    assert "additionalProperties" not in out and "title" not in out
    props = out["properties"]
    assert props["kind"] == {"type": "string", "enum": ["K"]}
    assert props["rate"] == {"type": "number", "exclusiveMinimum": True, "minimum": 0}
    assert props["tier"] == {"type": "string", "nullable": True, "description": "d", "enum": ["hub", "cloud"]}
    assert props["either"]["x-kubernetes-preserve-unknown-fields"] is True and "type" not in props["either"]
    assert props["by_name"] == {"type": "object", "additionalProperties": {"type": "number"}}
    assert props["by_batch"] == {"type": "object", "additionalProperties": {"type": "number"}}
    with pytest.raises(crds.SchemaConversionError, match="uniqueItems"):
        crds.structural({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, {})
    with pytest.raises(crds.SchemaConversionError, match="recursive"):
        crds.structural({"$ref": "#/$defs/A"}, {"A": {"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}}})


# --- agreement with the CLI's models ---------------------------------------------------------------


def test_every_committed_document_is_a_custom_resource(validators):
    found = documents()
    assert {doc["kind"] for _, doc in found} == set(KINDS), "each kind appears in workflows/"
    for where, doc in found:
        assert doc["apiVersion"] == API_VERSION, where
        assert doc["kind"] in KINDS, f"{where}: kubectl needs kind {'/'.join(KINDS)}, not {doc['kind']}"
        assert DNS_SUBDOMAIN.match(doc["metadata"]["name"]) and len(doc["metadata"]["name"]) <= 253, (
            f"{where}: Kubernetes names are lowercase DNS subdomains")
        assert errors(validators[doc["kind"]], doc) == [], where
        model = load(doc)  # the operator's path: the JSON object, string-keyed maps and all
        assert model.kind == SPEC_KIND[doc["kind"]]


def recorded_objects() -> list[tuple[str, dict[str, Any]]]:
    """Jellybean objects among the recorded API objects the operator's tests replay."""
    found: list[tuple[str, dict[str, Any]]] = []

    def walk(value: Any, where: str) -> None:
        if isinstance(value, dict):
            if value.get("apiVersion") == API_VERSION and value.get("kind") in KINDS and "spec" in value:
                found.append((where, value))
                return
            for key, sub in value.items():
                walk(sub, f"{where}.{key}")
        elif isinstance(value, list):
            for index, sub in enumerate(value):
                walk(sub, f"{where}[{index}]")

    for path in sorted(RECORDED.glob("*.json")) if RECORDED.is_dir() else []:
        walk(json.loads(path.read_text(encoding="utf-8")), path.name)
    return found


def test_recorded_api_objects_fit_the_crds(validators):
    """The objects the operator's tests replay (recorded from an API server) are what these CRDs
    admit, status included."""
    objects = recorded_objects()
    assert {obj["kind"] for _, obj in objects} >= {"InferenceWorkflow", "ModelZoo", "Topology"}
    for where, obj in objects:
        assert errors(validators[obj["kind"]], obj) == [], where


def first(kind: str) -> dict[str, Any]:
    """The digits workflow's document of this kind, as the API server holds it."""
    for where, doc in documents():
        if where.startswith("workflows/digits/") and doc["kind"] == kind:
            return doc
    raise AssertionError(kind)


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def edit(doc: dict) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is _DELETE:
            del node[last]
        elif last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value
    return edit


_DELETE = object()

MALFORMED = {
    "unknown tier": ("Topology", _set("spec.sites.0.tier", "moon")),
    "negative price": ("Topology", _set("spec.sites.0.instances.0.price_per_hour", -1)),
    "zero bandwidth": ("Topology", _set("spec.sites.1.uplink.up.bandwidth_mbps", 0)),
    # Refused with strict field validation (kubectl's default since Kubernetes 1.27); a client that
    # asks for less has it pruned, never stored.
    "misspelled field": ("Topology", _set("spec.sites.0.tierr", "cloud")),
    "no sites": ("Topology", _set("spec.sites", [])),
    "no stages": ("InferenceWorkflow", _set("spec.stages", [])),
    "no slo": ("InferenceWorkflow", _set("spec.slo", _DELETE)),
    "rate is a word": ("InferenceWorkflow", _set("spec.sources.0.rate_per_s", "fast")),
    "name with a space": ("InferenceWorkflow", _set("spec.stages.0.name", "de tect")),
    "unknown source kind": ("InferenceWorkflow", _set("spec.sources.0.kind", "radar")),
    "unknown percentile": ("InferenceWorkflow", _set("spec.slo.latency_percentile", "p99")),
    "stage inputs not a list": ("InferenceWorkflow", _set("spec.stages.0.inputs", "cameras")),
    "variant without output size": ("ModelZoo", _set("spec.tasks.0.variants.0.output_kb", _DELETE)),
    "latency is a word": ("ModelZoo", _set("spec.tasks.0.variants.0.profiles.0.latency_ms.1", "slow")),
    "negative memory": ("ModelZoo", _set("spec.tasks.0.variants.0.memory_mb", -5)),
    "profiles not a list": ("ModelZoo", _set("spec.tasks.0.variants.0.profiles", {"hardware": "x"})),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_documents_are_refused_by_both(case, validators):
    kind, edit = MALFORMED[case]
    doc = first(kind)
    load(doc)  # the unedited document is fine
    edit(doc)
    with pytest.raises(SpecError):
        load(doc)
    assert errors(validators[kind], doc), f"{case}: the CRD schema accepted it"


ONLY_THE_OPERATOR = {
    # A stage input is a name or a mapping: a union Kubernetes cannot type (preserve-unknown-fields).
    "input mapping without from": ("InferenceWorkflow", _set("spec.stages.1.inputs.0", {"frm": "detect"})),
    "input name with a space": ("InferenceWorkflow", _set("spec.stages.0.inputs.0", "cam eras")),
    # Map keys: Kubernetes has no patternProperties or propertyNames.
    "batch size that is a word": ("ModelZoo", _set("spec.tasks.0.variants.0.profiles.0.latency_ms",
                                                   {"one": 0.2})),
    "ratio key with a space": ("InferenceWorkflow", _set("spec.stages.1.inputs.0.ratio_by_variant",
                                                         {"bad name": 2.0})),
}


@pytest.mark.parametrize("case", list(ONLY_THE_OPERATOR))
def test_what_only_the_operator_refuses(case, validators):
    """The CRD schema's known gaps, kept honest: the API server stores these, and the operator's
    pydantic validation refuses them (its status says why)."""
    kind, edit = ONLY_THE_OPERATOR[case]
    doc = first(kind)
    edit(doc)
    assert errors(validators[kind], doc) == []
    with pytest.raises(SpecError):
        load(doc)


def test_status_schema(validators):
    doc = first("InferenceWorkflow")
    doc["status"] = {
        "phase": "Deployed", "message": "serving", "observedGeneration": 3,
        "conditions": [{"type": "Deployed", "status": "True", "reason": "Serving", "message": "ok",
                        "lastTransitionTime": "2026-11-28T10:00:00Z", "observedGeneration": 3}],
        "plan": {"stages": {"detect": {"variant": "digits-detector-small", "sites": {"hub": 1}}}},
        "costPerHour": 0.12, "accuracy": None, "predictedAccuracy": 96.1, "predictedLatencyMs": 12.5,
        "rayAddress": "ray://jb-jellybean-ray-head-svc.jellybean.svc:10001", "somethingNewer": [1, 2],
    }
    assert errors(validators["InferenceWorkflow"], doc) == []
    doc["status"]["costPerHour"] = "cheap"
    doc["status"]["conditions"][0]["status"] = "Maybe"
    assert len(errors(validators["InferenceWorkflow"], doc)) == 2
