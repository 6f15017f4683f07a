"""Loading documents from YAML safely, with every error pointing at a file, a line and a field.

Why not ``yaml.safe_load``: it loses line numbers, and it expands aliases without bound (an
"billion laughs" alias bomb takes memory exponential in the file's size) and recurses without
bound on deep nesting. Here the text is decoded strictly as UTF-8, its nesting depth is checked on
the token stream (iteratively) before composing, only the safe YAML tags are resolved, the
number of values constructed is capped (which defeats alias bombs), duplicate keys are refused, and
each value's line is recorded so that pydantic's errors can be reported where the user wrote them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from jellybean.spec.common import API_VERSION
from jellybean.spec.errors import Issue, LocatedValueError, SpecError, format_path
from jellybean.spec.topology import Topology
from jellybean.spec.workflow import Workflow
from jellybean.spec.zoo import ModelZoo

#: libyaml's C parser when PyYAML was built with it (about 10x faster on city-scale files); the
#: safe constructor runs in Python either way.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_DEPTH = 64
MAX_VALUES = 2_000_000

KINDS: dict[str, type[BaseModel]] = {"ModelZoo": ModelZoo, "Topology": Topology, "Workflow": Workflow}
#: Other names of a kind. ``InferenceWorkflow`` is the Workflow's name as a Kubernetes custom resource
#: (a bare ``Workflow`` kind is ambiguous in clusters that run other workflow engines), so the same
#: files work with ``jellybean`` and with ``kubectl apply``; both load as a Workflow.
KIND_ALIASES: dict[str, str] = {"InferenceWorkflow": "Workflow"}
YAML_SUFFIXES = (".yaml", ".yml")

_OPENERS = (
    yaml.BlockMappingStartToken,
    yaml.BlockSequenceStartToken,
    yaml.FlowMappingStartToken,
    yaml.FlowSequenceStartToken,
)
_CLOSERS = (yaml.BlockEndToken, yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken)
_PLAIN_COLLECTION_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


@dataclass
class SourceMap:
    """Where each value of one document was written: field path -> 1-based line."""

    file: str
    lines: dict[tuple, int] = field(default_factory=dict)
    start_line: int = 1

    def line_for(self, loc: tuple) -> int:
        """The line of the deepest existing prefix of ``loc`` (pydantic adds union tags we skip)."""
        best = self.start_line
        path: tuple = ()
        for part in loc:
            candidate = path + (part,)
            if candidate in self.lines:
                path = candidate
                best = self.lines[path]
        return best


@dataclass
class LoadedDocument:
    model: Any
    source: SourceMap
    index: int  # position of the document in its file


_YAML_BREAKS = re.compile("\r\n|[\r\n\x85\u2028\u2029]")


def _line_at(text: str, index: int) -> int:
    """1-based line of ``text[index]``, counting line breaks as YAML does (NEL, LS and PS too)."""
    return len(_YAML_BREAKS.findall(text, 0, index)) + 1


def _check_encodable(text: str, file: str) -> None:
    """A ``str`` may hold lone surrogates (JSON's ``\\ud800`` carries one), which no parser can read."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SpecError([Issue(file, _line_at(text, exc.start), "", "not valid Unicode text (a lone surrogate)",
                               "save the text as UTF-8")]) from None


def _check_depth(text: str, file: str) -> None:
    depth = 0
    try:
        for token in yaml.scan(text, Loader=_LOADER):
            if isinstance(token, _OPENERS):
                depth += 1
                if depth > MAX_DEPTH:
                    raise SpecError(
                        [Issue(file, token.start_mark.line + 1, "", f"nesting deeper than {MAX_DEPTH} levels",
                               "Jellybean documents are shallow; this input is refused as hostile or broken")]
                    )
            elif isinstance(token, _CLOSERS):
                depth -= 1
    except yaml.YAMLError as exc:
        raise SpecError([_yaml_issue(exc, file, text)]) from None


def _yaml_issue(exc: yaml.YAMLError, file: str, text: str) -> Issue:
    if isinstance(exc, yaml.reader.ReaderError):
        # A character YAML does not allow (a control character): located by its position, which
        # libyaml counts in bytes of the UTF-8 text and PyYAML in characters.
        position = exc.position
        if _LOADER is not yaml.SafeLoader:
            position = len(text.encode("utf-8")[:position].decode("utf-8", errors="ignore"))
        character = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return Issue(file, _line_at(text, position), "", f"invalid YAML: unacceptable character #x{character:04x}: "
                     f"{exc.reason}", "remove the character, or write it as an escape in a double-quoted string")
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    # libyaml puts an unexpected end of a text without a final newline on the line after it.
    line = min(mark.line + 1, _line_at(text, len(text))) if mark is not None else None
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    message = f"invalid YAML: {problem}" + (f" ({context})" if context else "")
    return Issue(file, line, "", message, "fix the YAML syntax at that line")


class _Builder:
    """Turns composed YAML nodes into plain Python values, recording each value's line."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.count = 0
        self.constructor = yaml.SafeLoader("")

    def build(self, root: yaml.Node, source: SourceMap) -> Any:
        # Iterative depth-first construction: no recursion, bounded work.
        result_holder: list[Any] = [None]
        stack: list[tuple[yaml.Node, tuple, Any, Any]] = [(root, (), result_holder, 0)]
        while stack:
            node, path, container, key = stack.pop()
            self.count += 1
            if self.count > MAX_VALUES:
                raise SpecError([Issue(self.file, node.start_mark.line + 1, format_path(path),
                                       f"more than {MAX_VALUES} values (an alias bomb?)",
                                       "expand anchors by hand or split the document")])
            if len(path) > MAX_DEPTH:
                # The token stream was shallow, so aliases nest (or refer to themselves): refuse
                # before the paths (and the memory they take) grow without bound.
                raise SpecError([Issue(self.file, node.start_mark.line + 1, "",
                                       f"nesting deeper than {MAX_DEPTH} levels once aliases are expanded "
                                       "(a recursive alias?)", "expand anchors by hand")])
            source.lines.setdefault(path, node.start_mark.line + 1)
            if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_COLLECTION_TAGS:
                # Tags on collections (!!python/object/apply:..., !!set, !!omap, local tags) are never
                # constructed here; refuse them rather than silently reading a plain mapping or list.
                raise SpecError([Issue(self.file, node.start_mark.line + 1, format_path(path),
                                       f"unsupported YAML tag {node.tag}",
                                       "only plain mappings, lists, strings, numbers, booleans and null are accepted")])
            if isinstance(node, yaml.MappingNode):
                value: Any = {}
                for key_node, value_node in node.value:
                    if not isinstance(key_node, yaml.ScalarNode):
                        raise SpecError([Issue(self.file, key_node.start_mark.line + 1, format_path(path),
                                               "mapping keys must be plain scalars", "use a string key")])
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        raise SpecError([Issue(self.file, key_node.start_mark.line + 1, format_path(path),
                                               "merge keys (<<) are not supported", "write the fields out")])
                    map_key = self._scalar(key_node, path)
                    if map_key in value:
                        raise SpecError([Issue(self.file, key_node.start_mark.line + 1,
                                               format_path(path + (map_key,)), f"duplicate key {map_key!r}",
                                               "keep one of the two entries")])
                    value[map_key] = None
                    # A field is where its name is written: for a block collection that is the line
                    # above the collection's first entry.
                    source.lines.setdefault(path + (map_key,), key_node.start_mark.line + 1)
                    stack.append((value_node, path + (map_key,), value, map_key))
            elif isinstance(node, yaml.SequenceNode):
                value = [None] * len(node.value)
                for index in range(len(node.value) - 1, -1, -1):
                    stack.append((node.value[index], path + (index,), value, index))
            else:
                value = self._scalar(node, path)
            container[key] = value
        return result_holder[0]

    def _scalar(self, node: yaml.Node, path: tuple) -> Any:
        try:
            value = self.constructor.construct_object(node, deep=False)
        except yaml.YAMLError as exc:
            raise SpecError([Issue(self.file, node.start_mark.line + 1, format_path(path),
                                   f"unsupported YAML value: {getattr(exc, 'problem', exc)}",
                                   "only plain strings, numbers, booleans and null are accepted")]) from None
        except Exception as exc:  # noqa: BLE001 - any failure here is a bad value, not a bug
            # PyYAML's constructors trust the tag: `!!int abc` (ValueError), `!!int ''` (IndexError),
            # `!!bool maybe` (KeyError), `!!timestamp x` (AttributeError) and integers past Python's
            # 4300-digit limit raise these instead of a YAMLError.
            raise SpecError([Issue(self.file, node.start_mark.line + 1, format_path(path),
                                   f"invalid {node.tag.rsplit(':', 1)[-1]} value {node.value[:40]!r} "
                                   f"({type(exc).__name__})",
                                   "only plain strings, numbers, booleans and null are accepted")]) from None
        if not (value is None or isinstance(value, (str, int, float, bool))):
            raise SpecError([Issue(self.file, node.start_mark.line + 1, format_path(path),
                                   f"unsupported YAML value of type {type(value).__name__} ({node.tag})",
                                   "only plain strings, numbers, booleans and null are accepted")])
        return value


def _empty_document(node: yaml.Node) -> bool:
    """An empty document (a trailing ``---``, as between concatenated manifests): skipped."""
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null" and node.value == ""


def parse_yaml(text: str, file: str) -> list[tuple[Any, SourceMap]]:
    """Parse a (multi-document) YAML text into values with their source maps."""
    _check_encodable(text, file)
    _check_depth(text, file)
    builder = _Builder(file)
    documents: list[tuple[Any, SourceMap]] = []
    try:
        for node in yaml.compose_all(text, Loader=_LOADER):
            if node is None or _empty_document(node):
                continue
            source = SourceMap(file, start_line=node.start_mark.line + 1)
            documents.append((builder.build(node, source), source))
    except yaml.YAMLError as exc:
        raise SpecError([_yaml_issue(exc, file, text)]) from None
    return documents


def read_bounded(path: Path, *, limit: int | None = None, hint: str = "split it into several files") -> bytes:
    """A file's bytes, refusing more than ``limit`` (default ``MAX_FILE_BYTES``). Bounded even where
    the size lies: a device or a pipe (``-f /dev/zero``) reports size 0 but may never end."""
    display = str(path)
    limit = MAX_FILE_BYTES if limit is None else limit
    try:
        with path.open("rb") as handle:
            raw = handle.read(limit + 1)
    except OSError as exc:
        raise SpecError([Issue(display, None, "", f"cannot read: {exc.strerror}", "check the path")]) from None
    if len(raw) > limit:
        raise SpecError([Issue(display, None, "", f"file is more than {limit} bytes", hint)])
    return raw


def read_text(path: Path) -> str:
    display = str(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise SpecError([Issue(display, None, "", f"cannot read: {exc.strerror}", "check the path")]) from None
    if size > MAX_FILE_BYTES:
        raise SpecError([Issue(display, None, "", f"file is {size} bytes, more than {MAX_FILE_BYTES}",
                               "split it into several files")])
    raw = read_bounded(path)
    if b"\x00" in raw:
        line = raw[: raw.index(b"\x00")].count(b"\n") + 1
        raise SpecError([Issue(display, line, "", "binary content (NUL bytes)", "give a YAML text file")])
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpecError([Issue(display, line, "", "not valid UTF-8 text", "save the file as UTF-8")]) from None


_HINTS = {
    "missing": "add this field",
    "extra_forbidden": "remove it or check its spelling",
    "literal_error": "use one of the values listed",
    "string_pattern_mismatch": "use letters, digits, '-', '.' or '_', starting and ending with a letter or digit",
    "float_parsing": "give a number",
    "int_parsing": "give a whole number",
    "greater_than": "give a larger value",
    "greater_than_equal": "give a larger value",
    "less_than_equal": "give a smaller value",
    "too_short": "add at least one entry",
    "dict_type": "give a mapping (key: value)",
    "list_type": "give a list (- item)",
    "string_type": "give a string",
    "bool_type": "give true or false",
    "bool_parsing": "give true or false",
    "float_type": "give a number",
    "int_type": "give a whole number",
    "int_from_float": "give a whole number",
    "int_parsing_size": "give a smaller whole number",
    "finite_number": "give a finite number, not .nan or .inf",
    "less_than": "give a smaller value",
    "string_too_long": "give a shorter value",
    "too_long": "give fewer entries",
    "enum": "use one of the values listed",
    "model_type": "give a mapping (key: value)",
    "model_attributes_type": "give a mapping (key: value)",
}


_STRING_TAGS = ("str", "constrained-str")


def model_issues(exc: ValidationError, source: SourceMap, allowed: dict[tuple, list[str]] | None = None,
                 kind: str | None = None) -> list[Issue]:
    fallback = (f"`jellybean schema --kind {kind}` describes every field" if kind
                else "check the field's type and limits")
    issues = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        # A stage input is a name *or* a mapping: pydantic reports each alternative, tagged in the
        # location. Keep the alternative the user evidently meant (the shape of what they wrote).
        if loc and loc[-1] in _STRING_TAGS and isinstance(error.get("input"), dict):
            continue
        if loc and loc[-1] == "StageInput" and error["type"] == "model_type" and isinstance(error.get("input"), str):
            continue
        clean = tuple(p for p in loc if isinstance(p, int)
                      or not (str(p).startswith("function-") or p in _STRING_TAGS or p == "StageInput"))
        located = (error.get("ctx") or {}).get("error")
        if isinstance(located, LocatedValueError):
            clean = clean + tuple(located.loc)
        message = error["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, "):]
        if clean and clean[-1] == "[key]":  # pydantic's marker for a bad key of a mapping
            clean = clean[:-1]
            message = f"key {clean[-1]!r}: {message}" if clean else message
        hint = _HINTS.get(error["type"]) or getattr(located, "hint", "") or fallback
        issues.append(Issue(source.file, source.line_for(clean), format_path(clean), message, hint))
    # Unions (an input given as a name or a mapping) produce one error per alternative; keep one
    # per location so the user sees each problem once.
    unique: dict[tuple[int | None, str], Issue] = {}
    for issue in issues:
        unique.setdefault((issue.line, issue.path), issue)
    return list(unique.values())


def _shown(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut short: a message quotes what the user wrote, not 10,000 characters of it."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 20]}... ({len(text)} characters)"


def parse_document(value: Any, source: SourceMap, index: int) -> LoadedDocument:
    if not isinstance(value, dict):
        raise SpecError([Issue(source.file, source.start_line, "", "a document must be a mapping",
                               "start with `apiVersion: jellybean.io/v1alpha1` and `kind:`")])
    api_version = value.get("apiVersion")
    if api_version != API_VERSION:
        line = source.lines.get(("apiVersion",), source.start_line)
        raise SpecError([Issue(source.file, line, "apiVersion", f"unsupported apiVersion {_shown(api_version)}",
                               f"use `apiVersion: {API_VERSION}`")])
    kind = value.get("kind")
    if isinstance(kind, str) and kind in KIND_ALIASES:
        kind = KIND_ALIASES[kind]
        value = {**value, "kind": kind}
    model_type = KINDS.get(kind) if isinstance(kind, str) else None
    if model_type is None:
        line = source.lines.get(("kind",), source.start_line)
        raise SpecError([Issue(source.file, line, "kind", f"unknown kind {_shown(kind)}",
                               f"use one of {', '.join([*KINDS, *KIND_ALIASES])}")])
    try:
        model = model_type.model_validate(value)
    except ValidationError as exc:
        raise SpecError(model_issues(exc, source, kind=kind)) from None
    return LoadedDocument(model, source, index)


def expand_paths(paths: list[str | os.PathLike]) -> list[Path]:
    """Files named directly, plus every ``*.yaml``/``*.yml`` file inside named folders (sorted)."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in YAML_SUFFIXES and p.is_file())
            if not found:
                raise SpecError([Issue(str(path), None, "", "folder holds no .yaml or .yml files",
                                       "point -f at the documents' folder or files")])
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise SpecError([Issue(str(path), None, "", "no such file or folder", "check the path")])
    return files


def load_documents(paths: list[str | os.PathLike]) -> list[LoadedDocument]:
    """Load and validate every document in the given files and folders; report all errors at once."""
    texts: list[tuple[str, str]] = []
    issues: list[Issue] = []
    for path in expand_paths(paths):
        try:
            texts.append((read_text(path), str(path)))
        except SpecError as exc:
            issues.extend(exc.issues)
    return _parse_all(texts, issues)


def load_text(text: str, file: str = "<input>") -> list[LoadedDocument]:
    """Like :func:`load_documents` for an in-memory text (used by the API and tests)."""
    return _parse_all([(text, file)], [])


def _parse_all(texts: list[tuple[str, str]], issues: list[Issue]) -> list[LoadedDocument]:
    documents: list[LoadedDocument] = []
    for text, file in texts:
        try:
            values = parse_yaml(text, file)
        except SpecError as exc:
            issues.extend(exc.issues)
            continue
        for index, (value, source) in enumerate(values):
            try:
                documents.append(parse_document(value, source, index))
            except SpecError as exc:
                issues.extend(exc.issues)
    if issues:
        raise SpecError(issues)
    return documents
