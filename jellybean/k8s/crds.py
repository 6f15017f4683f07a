"""Kubernetes CustomResourceDefinitions for InferenceWorkflow, ModelZoo and Topology, generated from
the JSON Schema of the spec's pydantic models (:func:`jellybean.spec.schema.document_schema`): one
source of truth for the CLI, the controller's API and the cluster.

Kubernetes wants a *structural* OpenAPI v3 schema, a subset of JSON Schema (the rules are those of
``apiextensions-apiserver``'s ``ValidateStructural`` and its CRD validation), so the JSON Schema is
rewritten, node by node:

* ``$ref``/``$defs`` are inlined (Kubernetes allows neither); ``title``, ``$schema``, ``examples`` and
  ``default`` are dropped (defaults are the loader's business: the operator validates every object
  with the same pydantic models, so they apply there, and the stored object stays as written);
* ``const`` becomes a one-value ``enum``; numeric ``exclusiveMinimum``/``exclusiveMaximum``
  (draft 2020) become OpenAPI 3.0's ``minimum`` with ``exclusiveMinimum: true``;
* ``anyOf: [X, {type: null}]`` (an optional field) becomes X with ``nullable: true``;
* any other union (a stage input is a name *or* a mapping) cannot be typed structurally: it becomes
  ``x-kubernetes-preserve-unknown-fields: true`` and its form is checked by the operator;
* ``additionalProperties: false`` is dropped: Kubernetes forbids it beside ``properties``, and
  unknown fields are refused anyway by strict field validation (kubectl's default since 1.27) or,
  where a client asks for less, pruned before the object is stored;
* ``patternProperties`` (maps keyed by names) become ``additionalProperties`` and
  ``propertyNames`` is dropped: Kubernetes has neither, so the keys' pattern is the operator's to
  check. Maps keyed by integers (latency by batch size) are string-keyed in JSON and stay
  ``additionalProperties`` maps.

A keyword the rewrite does not know raises, so a model that grows a construct Kubernetes cannot
take fails ``jellybean crds`` (and the test that compares the committed CRDs) instead of producing
a CRD that an API server would refuse. ``metadata`` is left to Kubernetes (``type: object`` only);
Kubernetes' own rules for names (DNS subdomains: lowercase) apply on top of the spec's.

``jellybean crds --out helm/jellybean/crds`` (``make crds``) writes one file per kind; Helm installs
a chart's ``crds/`` before its templates and never upgrades or deletes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from jellybean.k8s.names import API_VERSION, GROUP, KINDS, SPEC_KIND, VERSION
from jellybean.spec.schema import document_schema

#: Keywords copied as they are (their values are scalars or lists of scalars).
_PLAIN = ("type", "description", "enum", "format", "pattern", "minLength", "maxLength", "minItems", "maxItems",
          "minimum", "maximum", "multipleOf", "minProperties", "maxProperties")
#: Keywords dropped: annotations Kubernetes ignores or forbids, or constraints it cannot express.
_DROPPED = ("title", "$schema", "examples", "default", "propertyNames")

_DESCRIPTIONS = {
    "InferenceWorkflow": "An inference workflow: sources, stages and their service-level objectives. The Jellybean "
                         "operator plans it against its ModelZoo and Topology (least cost meeting the SLOs) and "
                         "serves it on the Ray cluster.",
    "ModelZoo": "The model variants of each task with their measured latency, accuracy, output size and memory.",
    "Topology": "The sites of the tiered infrastructure (devices, hubs, edge data centres, cloud), their instances "
                "with prices, and the links between them.",
}


class SchemaConversionError(ValueError):
    """The JSON Schema holds a construct a structural Kubernetes schema cannot express."""


def _resolve(node: dict[str, Any], defs: dict[str, Any], seen: tuple[str, ...], where: str) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    prefix = "#/$defs/"
    if not ref.startswith(prefix) or ref[len(prefix):] not in defs:
        raise SchemaConversionError(f"{where}: unresolvable $ref {ref!r}")
    name = ref[len(prefix):]
    if name in seen:
        raise SchemaConversionError(f"{where}: recursive $ref {ref!r} (Kubernetes schemas cannot recurse)")
    # Siblings of $ref (pydantic puts a field's description there) win over the definition's.
    target = {**defs[name], **{k: v for k, v in node.items() if k != "$ref"}}
    return _resolve(target, defs, (*seen, name), where)


def structural(node: dict[str, Any], defs: dict[str, Any], where: str = "", seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """One JSON Schema (draft 2020-12) node as a structural OpenAPI v3 node (see the module docstring)."""
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        return structural(_resolve(node, defs, seen, where), defs, where, (*seen, name))
    out: dict[str, Any] = {}
    if "anyOf" in node:
        out.update(_union(node, defs, where, seen))
    for key, value in node.items():
        if key in ("anyOf", "$defs") or key in _DROPPED:
            continue
        if key in _PLAIN:
            out[key] = value
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            if isinstance(value, bool):
                out[key] = value
            else:
                out[bound] = value
                out[key] = True
        elif key == "properties":
            out["properties"] = {name: structural(sub, defs, f"{where}.{name}", seen) for name, sub in value.items()}
        elif key == "required":
            out["required"] = list(value)
        elif key == "items":
            if not isinstance(value, dict):
                raise SchemaConversionError(f"{where}: tuple items cannot be expressed")
            out["items"] = structural(value, defs, f"{where}[]", seen)
        elif key == "additionalProperties":
            if isinstance(value, dict):
                out["additionalProperties"] = structural(value, defs, f"{where}.*", seen)
            elif value is True and "properties" not in node:
                out["x-kubernetes-preserve-unknown-fields"] = True
            # False: see the module docstring (strict field validation, pruning).
        elif key == "patternProperties":
            schemas = list(value.values())
            if len(schemas) != 1:
                raise SchemaConversionError(f"{where}: several patternProperties cannot be expressed")
            out["additionalProperties"] = structural(schemas[0], defs, f"{where}.*", seen)
        else:
            raise SchemaConversionError(f"{where or '<root>'}: JSON Schema keyword {key!r} has no structural "
                                        "equivalent here; teach jellybean.k8s.crds to convert it")
    if "properties" in out and "additionalProperties" in out:
        raise SchemaConversionError(f"{where}: properties and additionalProperties together are not structural")
    if "properties" in out or "additionalProperties" in out:
        out.setdefault("type", "object")
    if "items" in out:
        out.setdefault("type", "array")
    if "type" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        raise SchemaConversionError(f"{where}: a node without a type is not structural")
    if out.get("type") == "null":
        raise SchemaConversionError(f"{where}: type null alone cannot be expressed")
    return _ordered(out)


_FIRST = ("type", "format", "nullable", "x-kubernetes-preserve-unknown-fields", "description")


def _ordered(node: dict[str, Any]) -> dict[str, Any]:
    """The node's keys in a fixed, readable order: its shape first, then its constraints."""
    first = [k for k in _FIRST if k in node]
    return {k: node[k] for k in [*first, *sorted(k for k in node if k not in _FIRST)]}


def _union(node: dict[str, Any], defs: dict[str, Any], where: str, seen: tuple[str, ...]) -> dict[str, Any]:
    branches = [b for b in node["anyOf"] if b != {"type": "null"}]
    nullable = len(branches) < len(node["anyOf"])
    if len(branches) == 1:
        converted = structural(branches[0], defs, where, seen)
        if nullable:
            converted["nullable"] = True
        return converted
    # Several shapes (a name or a mapping): not expressible structurally; the operator checks it.
    types = sorted({str(_resolve(b, defs, seen, where).get("type")) for b in branches})
    out: dict[str, Any] = {"x-kubernetes-preserve-unknown-fields": True}
    out["description"] = f"One of: {', '.join(types)} (checked by the operator, not by the API server)."
    if nullable:
        out["nullable"] = True
    return out


def _conditions() -> dict[str, Any]:
    return {
        "type": "array",
        "description": "The latest observations of the object's state (Planned, Deployed, Degraded).",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "required": ["type", "status"],
            "properties": {
                "type": {"type": "string", "maxLength": 316},
                "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                "reason": {"type": "string", "maxLength": 1024},
                "message": {"type": "string", "maxLength": 32768},
                "lastTransitionTime": {"type": "string", "format": "date-time"},
                "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
            },
        },
    }


def status_schema(kind: str) -> dict[str, Any]:
    """The schema of ``.status``, written by the operator through the status subresource. Unknown
    fields are kept (``x-kubernetes-preserve-unknown-fields``) so that an operator newer than the
    installed CRDs loses nothing."""
    properties: dict[str, Any] = {
        "phase": {"type": "string", "description": "Where the object is in its life (the controller's phases): "
                  "Pending, Planned, Starting, Running, Updating, Degraded, Blocked, Failed or Terminating (the "
                  "message and the conditions say why)."},
        "message": {"type": "string", "description": "A sentence on the phase, for people."},
        "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0,
                               "description": "The .metadata.generation this status describes."},
        "conditions": _conditions(),
    }
    if kind == "InferenceWorkflow":
        properties.update({
            "plan": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                     "description": "Summary of the current plan: chosen variants, placements and batch sizes."},
            "costPerHour": {"type": "number", "description": "Predicted cost of the current plan in $ per hour."},
            "accuracy": {"type": "number", "nullable": True,
                         "description": "Measured end-to-end accuracy while serving (null before any frame)."},
            "predictedAccuracy": {"type": "number", "description": "End-to-end accuracy the plan predicts."},
            "predictedLatencyMs": {"type": "number", "description": "End-to-end latency the plan predicts (ms)."},
            "throughputPerSecond": {"type": "number", "description": "Frames completed per second while serving."},
            "framesLost": {"type": "integer", "format": "int64", "minimum": 0,
                           "description": "Frames sent and never accounted for while serving (must stay 0)."},
            "lastFailure": {"type": "object", "description": "The last failure (kept after the workflow recovers).",
                            "properties": {
                                "reason": {"type": "string", "description": "DeployFailed, PlanError, ..."},
                                "message": {"type": "string"},
                                "time": {"type": "string", "format": "date-time"},
                                "attempts": {"type": "integer", "format": "int64", "minimum": 0}}},
            "rayAddress": {"type": "string", "description": "The Ray cluster the workflow is served on."},
            "lastPlanTime": {"type": "string", "format": "date-time", "description": "When it was last planned."},
        })
    return {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": properties}


def _printer_columns(kind: str) -> list[dict[str, Any]]:
    columns: list[dict[str, Any]] = []
    if kind == "InferenceWorkflow":
        columns = [
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Cost/h", "type": "number", "jsonPath": ".status.costPerHour",
             "description": "Predicted cost of the plan in $ per hour"},
            {"name": "Accuracy", "type": "number", "jsonPath": ".status.accuracy",
             "description": "Measured end-to-end accuracy"},
            {"name": "Predicted", "type": "number", "jsonPath": ".status.predictedAccuracy", "priority": 1,
             "description": "End-to-end accuracy the plan predicts"},
            {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
        ]
    else:
        columns = [{"name": "Phase", "type": "string", "jsonPath": ".status.phase"}]
    columns.append({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"})
    return columns


def open_api_schema(kind: str) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of one custom resource kind."""
    schema = document_schema(kind)
    defs = schema.get("$defs", {})
    spec = structural(schema["properties"]["spec"], defs, ".spec")
    return {
        "type": "object",
        "description": _DESCRIPTIONS[kind],
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": f"{API_VERSION}"},
            "kind": {"type": "string", "description": kind},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status_schema(kind),
        },
    }


def crd(kind: str) -> dict[str, Any]:
    """The CustomResourceDefinition (apiextensions.k8s.io/v1) of one kind of :data:`names.KINDS`."""
    if kind not in KINDS or kind not in SPEC_KIND:
        raise KeyError(f"unknown custom resource kind {kind!r}; one of {', '.join(KINDS)}")
    plural, singular, short_names = KINDS[kind]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/name": "jellybean", "app.kubernetes.io/part-of": "jellybean"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": list(short_names),
                "categories": ["jellybean"],
            },
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": _printer_columns(kind),
                "schema": {"openAPIV3Schema": open_api_schema(kind)},
            }],
        },
    }


def all_crds() -> dict[str, dict[str, Any]]:
    return {kind: crd(kind) for kind in KINDS}


def file_name(kind: str) -> str:
    """``<group>_<plural>.yaml``, the name controller-gen gives a CRD's file."""
    return f"{GROUP}_{KINDS[kind][0]}.yaml"


HEADER = ("# Generated by `jellybean crds` (jellybean/k8s/crds.py) from the spec's pydantic models; do not edit.\n"
          "# Regenerate with `make crds`; a test fails while this file differs from the generator's output.\n")


def render(kind: str) -> str:
    """One CRD as the YAML text committed under helm/jellybean/crds/."""
    body = yaml.safe_dump(crd(kind), sort_keys=False, width=120, allow_unicode=False)
    return HEADER + "---\n" + body


def write_crds(out: str | Path) -> list[Path]:
    """Write every CRD into the folder ``out`` (created); returns the files written."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind in KINDS:
        path = folder / file_name(kind)
        path.write_text(render(kind), encoding="utf-8")
        paths.append(path)
    return paths
