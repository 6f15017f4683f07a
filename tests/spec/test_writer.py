"""The one document writer: every document Jellybean writes loads back as the same model, in one style."""

from __future__ import annotations

from pathlib import Path

import yaml

from jellybean.spec.loader import load_documents, load_text
from jellybean.spec.writer import dump_document, dump_documents

ROOT = Path(__file__).resolve().parents[2]


def test_committed_documents_load_back_as_written() -> None:
    for folder in ("digits", "vehicle-tracking", "vqa-medium", "speech"):
        for doc in load_documents([ROOT / "workflows" / folder]):
            text = dump_document(doc.model)
            (again,) = load_text(text, f"{folder}.yaml")
            assert again.model == doc.model, (folder, doc.model.kind)


def test_the_style() -> None:
    text = dump_document({"spec": {"sites": ["cam-1", "cam-2"], "many": [f"cam-{i}" for i in range(17)],
                                   "latency_ms": {"1": 0.2, "4": 0.5}, "labels": {"1": "one"},
                                   "rows": [{"a": 1}]}}, header="# a header\n")
    assert text.startswith("# a header\nspec:\n")
    assert "  sites: [cam-1, cam-2]\n" in text  # a short list of scalars: one line
    assert "  many:\n  - cam-0\n" in text  # a long one: a block
    assert "  latency_ms: {1: 0.2, 4: 0.5}\n" in text  # whole-number keys of a table: numbers, one line
    assert "  labels:\n    '1': one\n" in text  # not a table of numbers: the key stays a string
    assert yaml.safe_load(text)["spec"]["latency_ms"] == {1: 0.2, 4: 0.5}


def test_several_documents_are_separated() -> None:
    text = dump_documents([{"kind": "A"}, {"kind": "B"}])
    assert [d["kind"] for d in yaml.safe_load_all(text)] == ["A", "B"] and "\n---\n" in text
