"""JSON Schema of the documents, generated from the same pydantic models the loader validates with
(one source of truth for the CLI, the controller's API and the Kubernetes CRDs)."""

from __future__ import annotations

from typing import Any

from jellybean.spec.loader import KIND_ALIASES, KINDS


def document_schema(kind: str) -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of one kind of document (an alias such as ``InferenceWorkflow``
    names its kind's schema, which accepts every name of the kind)."""
    kind = KIND_ALIASES.get(kind, kind)
    model = KINDS[kind]
    schema = model.model_json_schema(by_alias=True)
    names = [kind, *sorted(alias for alias, target in KIND_ALIASES.items() if target == kind)]
    if len(names) > 1:
        schema["properties"]["kind"] = {"enum": names, "type": "string", "default": kind, "title": "Kind"}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    # The loader refuses a document without them, so the schema must too (pydantic marks fields
    # with defaults optional).
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
    schema.setdefault("title", kind)
    return schema


def all_schemas() -> dict[str, dict[str, Any]]:
    return {kind: document_schema(kind) for kind in KINDS}
