"""The JSON Schema of the documents: generated from the loader's pydantic models, a valid draft
2020-12 schema, accepting the committed documents and refusing bad ones."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from jellybean.spec.schema import all_schemas, document_schema
from tests.spec.test_documents import TOPOLOGY, WORKFLOW, WORKFLOWS, ZOO

jsonschema = pytest.importorskip("jsonschema")

KINDS = ["ModelZoo", "Topology", "Workflow"]
VQA = WORKFLOWS / "vqa-medium"


def validator(kind: str) -> Any:
    schema = document_schema(kind)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def as_json(document: Any) -> Any:
    """What the controller's API (or kubectl) would hold: JSON, so mapping keys become strings."""
    return json.loads(json.dumps(document))


def errors(kind: str, document: Any) -> list[str]:
    return [e.message for e in validator(kind).iter_errors(document)]


def documents_in(folder: Path) -> list[dict]:
    out = []
    for path in sorted(folder.glob("*.yaml")):
        out += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return out


def test_all_schemas_has_the_three_kinds() -> None:
    schemas = all_schemas()
    assert sorted(schemas) == KINDS
    for kind, schema in schemas.items():
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["title"] == kind
        assert schema["type"] == "object"
        assert {"metadata", "spec"} <= set(schema["required"])
        kind_schema = schema["properties"]["kind"]
        assert kind_schema.get("const") == kind or kind_schema["enum"][0] == kind
        assert schema["properties"]["apiVersion"]["const"] == "jellybean.io/v1alpha1"
        jsonschema.Draft202012Validator.check_schema(schema)
        json.dumps(schema)  # serialisable as is


def test_a_workflow_may_be_called_inferenceworkflow_as_its_custom_resource_is() -> None:
    assert document_schema("InferenceWorkflow") == document_schema("Workflow")
    assert document_schema("Workflow")["properties"]["kind"]["enum"] == ["Workflow", "InferenceWorkflow"]


def test_stage_inputs_use_the_yaml_name_from() -> None:
    defs = document_schema("Workflow")["$defs"]
    assert "from" in defs["StageInput"]["properties"] and "from_" not in defs["StageInput"]["properties"]
    assert defs["StageInput"]["required"] == ["from"]


@pytest.mark.parametrize("document", documents_in(VQA), ids=lambda d: d["kind"])
def test_vqa_medium_documents_satisfy_their_schema(document: dict) -> None:
    assert errors(document["kind"], document) == []
    assert errors(document["kind"], as_json(document)) == []


def test_every_committed_workflow_satisfies_the_schema() -> None:
    folders = [p for p in WORKFLOWS.iterdir() if p.is_dir()]
    assert VQA in folders
    for folder in folders:
        for document in documents_in(folder):
            assert errors(document["kind"], as_json(document)) == [], f"{folder.name}: {document['kind']}"


@pytest.mark.parametrize("text", [ZOO, TOPOLOGY, WORKFLOW], ids=KINDS)
def test_the_inline_templates_satisfy_the_schema(text: str) -> None:
    document = yaml.safe_load(text)
    assert errors(document["kind"], as_json(document)) == []


def _zoo() -> dict:
    return as_json(yaml.safe_load((VQA / "zoo.yaml").read_text()))


def _topology() -> dict:
    return as_json(yaml.safe_load((VQA / "topology.yaml").read_text()))


def _workflow() -> dict:
    return as_json(yaml.safe_load((VQA / "workflow.yaml").read_text()))


def _set(document: dict, path: tuple, value: Any) -> dict:
    document = copy.deepcopy(document)
    target = document
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return document


def _delete(document: dict, path: tuple) -> dict:
    document = copy.deepcopy(document)
    target = document
    for part in path[:-1]:
        target = target[part]
    del target[path[-1]]
    return document


BAD = [
    ("typo rate_per_sec", "Workflow", lambda: _set(_delete(_workflow(), ("spec", "sources", 0, "rate_per_s")),
                                                 ("spec", "sources", 0, "rate_per_sec"), 40.0)),
    ("unknown key", "Topology", lambda: _set(_topology(), ("spec", "sites", 0, "gpus"), 1)),
    ("missing spec", "ModelZoo", lambda: _delete(_zoo(), ("spec",))),
    ("wrong kind", "Workflow", lambda: _set(_workflow(), ("kind",), "Topology")),
    ("wrong apiVersion", "Workflow", lambda: _set(_workflow(), ("apiVersion",), "jellybean.io/v2")),
    ("unknown tier", "Topology", lambda: _set(_topology(), ("spec", "sites", 0, "tier"), "fog")),
    ("negative price", "Topology",
     lambda: _set(_topology(), ("spec", "sites", 0, "instances", 0, "price_per_hour"), -1)),
    ("string for a number", "Workflow", lambda: _set(_workflow(), ("spec", "sources", 0, "payload_kb"), "big")),
    ("bad name", "Workflow", lambda: _set(_workflow(), ("metadata", "name"), "not a name!")),
    ("no stages", "Workflow", lambda: _set(_workflow(), ("spec", "stages"), [])),
    ("input without from", "Workflow", lambda: _set(_workflow(), ("spec", "stages", 0, "inputs", 0), {"ratio": 1})),
    ("sharing value", "Topology", lambda: _set(_topology(), ("spec", "sharing"), "partial")),
    ("utilization above one", "Topology", lambda: _set(_topology(), ("spec", "max_utilization"), 1.5)),
    ("latency not a number", "ModelZoo",
     lambda: _set(_zoo(), ("spec", "tasks", 0, "variants", 0, "profiles", 0, "latency_ms"), {"1": "fast"})),
    ("not a mapping", "ModelZoo", lambda: ["apiVersion", "kind"]),
]


@pytest.mark.parametrize(("kind", "make"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_documents_fail_the_schema(kind: str, make: Any) -> None:
    assert errors(kind, make())


def test_schema_errors_point_at_the_field() -> None:
    bad = _set(_delete(_workflow(), ("spec", "sources", 0, "rate_per_s")), ("spec", "sources", 0, "rate_per_sec"), 1)
    found = list(validator("Workflow").iter_errors(bad))
    paths = {tuple(e.absolute_path) for e in found}
    assert ("spec", "sources", 0) in paths
    messages = " ".join(e.message for e in found)
    assert "rate_per_sec" in messages and "rate_per_s" in messages


def test_schema_requires_the_envelope_like_the_loader() -> None:
    import jsonschema

    from jellybean.spec.schema import all_schemas

    for schema in all_schemas().values():
        assert {"apiVersion", "kind", "metadata", "spec"} <= set(schema["required"])
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"metadata": {"name": "x"}, "spec": {}}, schema)
