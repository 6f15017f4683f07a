"""What an API server would say about schemas and objects, for tests that have none.

* :func:`structural_problems` checks a CRD's ``openAPIV3Schema`` against the rules the API server
  applies when a CRD is created (``apiextensions-apiserver``: ``ValidateStructural`` and
  ``ValidateCustomResourceDefinitionOpenAPISchema``): every field and array item typed (unless it
  preserves unknown fields or is int-or-string), no ``$ref``/``definitions``/``patternProperties``/
  ``dependencies``/``additionalItems``/``id``, no ``type: null``, ``items`` a single schema,
  ``additionalProperties`` never beside ``properties`` nor at the root, nothing but value
  validations inside ``anyOf``/``allOf``/``oneOf``/``not`` (no type, description, default,
  nullable, additionalProperties, x-kubernetes-*) and every field named there also named outside,
  ``metadata`` at the root restricted to name/generateName, ``uniqueItems`` never true,
  ``x-kubernetes-preserve-unknown-fields`` only true, list-map keys required scalars.
* :func:`json_schema` turns such a schema into JSON Schema draft 4 (OpenAPI 3.0's dialect: boolean
  ``exclusiveMinimum``) that validates the way the API server does: ``nullable`` admits null,
  ``x-kubernetes-preserve-unknown-fields`` keeps unknown fields, and (``strict``) an unknown field
  is an error wherever fields are listed, as with strict field validation (kubectl's default since
  Kubernetes 1.27; a client asking for less gets the field pruned instead, never stored).
* :func:`api_object` is a YAML document as the API server receives it from kubectl: JSON, so
  mapping keys are strings (``{1: 0.5}`` arrives as ``{"1": 0.5}``).
"""

from __future__ import annotations

from typing import Any

import jsonschema

_FORBIDDEN = {"$ref": "$ref is not supported", "definitions": "definitions is not supported",
              "$defs": "definitions are not supported", "patternProperties": "patternProperties is not supported",
              "dependencies": "dependencies is not supported", "additionalItems": "additionalItems is not supported",
              "id": "id is not supported", "$schema": "$schema is not supported", "const": "const is not supported",
              "propertyNames": "propertyNames is not supported", "if": "if is not supported"}
_NOT_IN_JUNCTORS = ("type", "description", "default", "nullable", "additionalProperties", "title", "externalDocs",
                    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-embedded-resource",
                    "x-kubernetes-int-or-string", "x-kubernetes-list-map-keys", "x-kubernetes-list-type",
                    "x-kubernetes-map-type", "x-kubernetes-validations")
_JUNCTORS = ("anyOf", "allOf", "oneOf")
_INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]


def structural_problems(schema: dict[str, Any]) -> list[str]:
    """Why the API server would refuse this ``openAPIV3Schema`` (empty: it would take it)."""
    problems: list[str] = []
    _check(schema, "", "root", problems)
    return problems


def _check(node: Any, path: str, level: str, problems: list[str]) -> None:
    if not isinstance(node, dict):
        problems.append(f"{path or '<root>'}: a schema must be an object")
        return
    where = path or "<root>"
    for key, why in _FORBIDDEN.items():
        if key in node:
            problems.append(f"{where}.{key}: {why}")
    if node.get("type") == "null":
        problems.append(f"{where}.type: type cannot be set to null, use nullable")
    if node.get("uniqueItems") is True:
        problems.append(f"{where}.uniqueItems: cannot be set to true")
    if node.get("x-kubernetes-preserve-unknown-fields") is False:
        problems.append(f"{where}.x-kubernetes-preserve-unknown-fields: must be true or undefined")
    if "exclusiveMinimum" in node and not isinstance(node["exclusiveMinimum"], bool):
        problems.append(f"{where}.exclusiveMinimum: must be a boolean in OpenAPI v3.0")
    if "exclusiveMaximum" in node and not isinstance(node["exclusiveMaximum"], bool):
        problems.append(f"{where}.exclusiveMaximum: must be a boolean in OpenAPI v3.0")
    untyped_ok = node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string")
    if not node.get("type") and not untyped_ok:
        problems.append(f"{where}.type: must not be empty ({level})")
    if level == "root" and node.get("type") not in (None, "object"):
        problems.append(f"{where}.type: must be object at the root")
    if "additionalProperties" in node:
        if level == "root":
            problems.append(f"{where}.additionalProperties: must not be used at the root")
        if node.get("properties"):
            problems.append(f"{where}.additionalProperties: additionalProperties and properties are mutual exclusive")
        if isinstance(node["additionalProperties"], dict):
            _check(node["additionalProperties"], f"{where}.additionalProperties", "field", problems)
    if "items" in node:
        if isinstance(node["items"], list):
            problems.append(f"{where}.items: must be a schema object and not an array")
        else:
            _check(node["items"], f"{where}.items", "item", problems)
    elif node.get("type") == "array":
        problems.append(f"{where}.items: must be specified")
    for name, sub in (node.get("properties") or {}).items():
        _check(sub, f"{where}.properties[{name}]", "field", problems)
    if level == "root" and "metadata" in (node.get("properties") or {}):
        meta = node["properties"]["metadata"]
        extra = set(meta) - {"type", "properties", "description"}
        named = set(meta.get("properties") or {}) - {"name", "generateName"}
        if meta.get("type") != "object" or extra or named:
            problems.append(f"{where}.properties[metadata]: must not specify anything other than name and generateName")
    if level == "root":
        for key in ("apiVersion", "kind"):
            sub = (node.get("properties") or {}).get(key)
            if sub is not None and sub.get("type") != "string":
                problems.append(f"{where}.properties[{key}].type: must be string")
    _check_list_map(node, where, problems)
    outside = set(node.get("properties") or {})
    for junctor in _JUNCTORS:
        branches = node.get(junctor) or []
        if junctor == "anyOf" and node.get("x-kubernetes-int-or-string") and branches == _INT_OR_STRING:
            continue
        for index, branch in enumerate(branches):
            _check_nested(branch, f"{where}.{junctor}[{index}]", outside, problems)
    if "not" in node:
        _check_nested(node["not"], f"{where}.not", outside, problems)


def _check_nested(node: dict[str, Any], where: str, outside: set[str], problems: list[str]) -> None:
    for key in _NOT_IN_JUNCTORS:
        if key in node:
            problems.append(f"{where}.{key}: must be undefined to be structural")
    for name in node.get("properties") or {}:
        if name == "metadata":
            problems.append(f"{where}.properties[metadata]: must not be specified in a nested context")
        if name not in outside:
            problems.append(f"{where}.properties[{name}]: must be specified outside the junctor as well")
    for junctor in _JUNCTORS:
        for index, branch in enumerate(node.get(junctor) or []):
            _check_nested(branch, f"{where}.{junctor}[{index}]", outside, problems)


def _check_list_map(node: dict[str, Any], where: str, problems: list[str]) -> None:
    list_type = node.get("x-kubernetes-list-type")
    if list_type is None:
        return
    if node.get("type") != "array":
        problems.append(f"{where}.type: must be array if x-kubernetes-list-type is specified")
    if list_type not in ("atomic", "set", "map"):
        problems.append(f"{where}.x-kubernetes-list-type: must be atomic, set or map")
    if list_type == "map":
        item = node.get("items") or {}
        keys = node.get("x-kubernetes-list-map-keys") or []
        if not keys:
            problems.append(f"{where}.x-kubernetes-list-map-keys: must not be empty if x-kubernetes-list-type is map")
        for key in keys:
            prop = (item.get("properties") or {}).get(key)
            if prop is None:
                problems.append(f"{where}.x-kubernetes-list-map-keys: {key} is not an item property")
            elif key not in (item.get("required") or []) and "default" not in prop:
                problems.append(f"{where}.items.properties[{key}]: a list-map key must be required or defaulted")
            elif prop.get("type") in ("array", "object") or prop.get("nullable"):
                problems.append(f"{where}.items.properties[{key}]: a list-map key must be a non-nullable scalar")


def json_schema(node: dict[str, Any], *, strict: bool = True, root: bool = True) -> dict[str, Any]:
    """An OpenAPI v3 (structural) schema as JSON Schema draft 4, validating as the API server does."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "description", "format", "default", "example",
                                                      "externalDocs", "title"):
            continue
        if key == "properties":
            out[key] = {}
            for name, sub in value.items():
                if root and name == "metadata":
                    # ObjectMeta is validated by the API server's own code, not by the CRD schema.
                    out[key][name] = {"type": "object"}
                else:
                    out[key][name] = json_schema(sub, strict=strict, root=False)
        elif key == "additionalProperties" and isinstance(value, dict) or key in ("items", "not"):
            out[key] = json_schema(value, strict=strict, root=False)
        elif key in _JUNCTORS:
            out[key] = [json_schema(branch, strict=strict, root=False) for branch in value]
        else:
            out[key] = value
    if node.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
        for junctor in _JUNCTORS:
            if junctor in out:
                out[junctor] = [*out[junctor], {"type": "null"}]
    if (strict and "properties" in node and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def validator(openapi: dict[str, Any], *, strict: bool = True) -> jsonschema.Draft4Validator:
    schema = json_schema(openapi, strict=strict)
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def errors(openapi_validator: jsonschema.Draft4Validator, obj: Any) -> list[str]:
    """Every complaint, as ``path: message`` lines (empty: the object is valid)."""
    return sorted(f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
                  for error in openapi_validator.iter_errors(obj))


def api_object(value: Any) -> Any:
    """A YAML value as JSON, the way kubectl sends it (sigs.k8s.io/yaml): keys become strings."""
    if isinstance(value, dict):
        return {_json_key(k): api_object(v) for k, v in value.items()}
    if isinstance(value, list):
        return [api_object(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"{type(value).__name__} is not JSON")


def _json_key(key: Any) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, (int, float, str)):
        return str(key)
    raise TypeError(f"mapping key {key!r} is not a scalar")


def crd_schema(crd: dict[str, Any], version: str | None = None) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of a CRD's version (default: its storage version)."""
    versions = crd["spec"]["versions"]
    chosen = [v for v in versions if (v["name"] == version if version else v.get("storage"))]
    assert len(chosen) == 1, f"{crd['metadata']['name']}: no single version {version or '(storage)'}"
    return chosen[0]["schema"]["openAPIV3Schema"]
