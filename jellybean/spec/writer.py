"""The one writer of documents as YAML: every document Jellybean writes (a profiled zoo, an imported
or generated workflow, zoo and topology, `jellybean profile -f`'s merged file) goes through
:func:`dump_documents`, so they all read alike and load back as written.

The style: block mappings and sequences in field order, except a list of at most 16 scalars (a
source's sites, a stage's inputs) and a table keyed by whole numbers (latency per batch size), which
read better on one line: ``sites: [cam-1, cam-2]``, ``latency_ms: {1: 0.2, 4: 0.5}``. A model is
written as ``model_dump(mode="json", by_alias=True, exclude_none=True)``; a table of numbers whose
keys are all whole numbers written as strings (JSON's only keys: batch sizes) gets its numbers back as
keys, as the schema reads them. Unicode is kept; lines wrap at 120 characters. PyYAML's libyaml emitter is used where it exists
(the same text, faster: a 10,000-camera city is megabytes).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import yaml
from pydantic import BaseModel

#: Lists of at most this many scalars are written on one line.
FLAT_LIST_MAX = 16
_WHOLE = re.compile(r"^(0|[1-9][0-9]*)$")


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    """Block style, except short lists of scalars and tables keyed by whole numbers."""


def _list(dumper: yaml.SafeDumper, value: list[Any]) -> yaml.Node:
    flat = len(value) <= FLAT_LIST_MAX and all(isinstance(v, (int, float, str, bool)) or v is None for v in value)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", value, flow_style=flat)


def _dict(dumper: yaml.SafeDumper, value: dict[Any, Any]) -> yaml.Node:
    table = bool(value) and all(isinstance(k, int) and not isinstance(k, bool) and isinstance(v, (int, float))
                                for k, v in value.items())
    return dumper.represent_mapping("tag:yaml.org,2002:map", value, flow_style=table)


_Dumper.add_representer(list, _list)
_Dumper.add_representer(dict, _dict)


def plain(document: BaseModel | Mapping[str, Any]) -> Any:
    """What is written of ``document``: a model's JSON form (None left out), whole-number keys as numbers."""
    data = document.model_dump(mode="json", by_alias=True, exclude_none=True) if isinstance(document, BaseModel) \
        else document
    return _numbers_as_keys(data)


def _numbers_as_keys(value: Any) -> Any:
    if isinstance(value, Mapping):
        keys = list(value)
        whole = bool(keys) and all(isinstance(k, str) and _WHOLE.match(k) and isinstance(v, (int, float))
                                   and not isinstance(v, bool) for k, v in value.items())
        return {(int(k) if whole else k): _numbers_as_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers_as_keys(v) for v in value]
    return value


def dump_documents(documents: Iterable[BaseModel | Mapping[str, Any]], *, header: str = "") -> str:
    """The documents as one YAML text (several are separated by ``---``), after ``header`` (comment
    lines, written as given)."""
    body = yaml.dump_all([plain(d) for d in documents], Dumper=_Dumper, sort_keys=False, allow_unicode=True,
                         width=120)
    return header + body


def dump_document(document: BaseModel | Mapping[str, Any], *, header: str = "") -> str:
    """One document as YAML (:func:`dump_documents`)."""
    return dump_documents([document], header=header)
