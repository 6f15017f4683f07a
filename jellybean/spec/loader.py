"""Loading documents from YAML safely, with every error pointing at a file, a line and a field.

Why not ``yaml.safe_load``: it loses line numbers, and it expands aliases without bound (an
"billion laughs" alias bomb takes memory exponential in the file's size) and recurses without
bound on deep nesting. Here the text is decoded strictly as UTF-8; one pass over libyaml's event
stream (:func:`_prescan`, iterative, before any node is composed) checks the nesting depth and
counts the values the text expands to, aliases included (an anchor's size is known when its node
ends, so an alias costs one addition); only the safe YAML tags are resolved; duplicate keys are
refused; and each value's line is recorded so that pydantic's errors can be reported where the user
wrote them.

Budgets hold per *load*, not per file: one :class:`Budget` (values after alias expansion, bytes of
text) is shared by every file of one call of :func:`load_documents` / :func:`load_texts`, so an API
request carrying 10,000 files gets the budget of one, and is refused as soon as it is spent.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from jellybean.spec.common import API_VERSION
from jellybean.spec.errors import Issue, Loc, LocatedValueError, SpecError, did_you_mean, format_path
from jellybean.spec.topology import Topology
from jellybean.spec.workflow import Workflow
from jellybean.spec.zoo import ModelZoo

#: libyaml's C parser when PyYAML was built with it (about 10x faster on city-scale files); the
#: safe constructor runs in Python either way.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_DEPTH = 64
#: Values (YAML nodes, mapping keys included, aliases expanded) one load may build: five times a
#: 10,000-camera city's documents (about 190,000).
MAX_VALUES = 1_000_000
#: Bytes of YAML text one load may parse, whatever the number of files.
MAX_LOAD_BYTES = MAX_FILE_BYTES

KINDS: dict[str, type[BaseModel]] = {"ModelZoo": ModelZoo, "Topology": Topology, "Workflow": Workflow}
#: Other names of a kind. ``InferenceWorkflow`` is the Workflow's name as a Kubernetes custom resource
#: (a bare ``Workflow`` kind is ambiguous in clusters that run other workflow engines), so the same
#: files work with ``jellybean`` and with ``kubectl apply``; both load as a Workflow.
KIND_ALIASES: dict[str, str] = {"InferenceWorkflow": "Workflow"}
YAML_SUFFIXES = (".yaml", ".yml")

_PLAIN_COLLECTION_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


@dataclass
class SourceMap:
    """Where each value of one document was written: field path -> 1-based line."""

    file: str
    lines: dict[Loc, int] = field(default_factory=dict)
    start_line: int = 1

    def line_for(self, loc: Loc) -> int:
        """The line of the deepest existing prefix of ``loc`` (pydantic adds union tags we skip)."""
        best = self.start_line
        path: Loc = ()
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


@dataclass
class Budget:
    """What one load may spend, shared by all its files: values built (after alias expansion) and
    bytes of text. ``None`` limits take the module's values at the time of the check."""

    max_values: int | None = None
    max_bytes: int | None = None
    values: int = 0
    bytes: int = 0

    def values_limit(self) -> int:
        return MAX_VALUES if self.max_values is None else self.max_values

    def bytes_limit(self) -> int:
        return MAX_LOAD_BYTES if self.max_bytes is None else self.max_bytes

    def spend_text(self, text: str, file: str) -> None:
        size = len(text)
        self.bytes += size
        limit = self.bytes_limit()
        if self.bytes > limit:
            raise SpecError([Issue(file, None, "", f"more than {limit} bytes of YAML in one load "
                                   f"({self.bytes} with this file)", "apply or validate fewer files at once")])


class _Frame:
    """One open collection during :func:`_prescan`."""

    __slots__ = ("mapping", "anchor", "start", "height", "key", "index", "expect_key", "in_value")

    def __init__(self, mapping: bool, anchor: str | None, start: int) -> None:
        self.mapping = mapping
        self.anchor = anchor
        self.start = start  # the budget's count when the collection opened: its size is count - start
        self.height = 0  # deepest nesting inside, aliases expanded
        self.key: Any = None  # the current mapping key (for the path in messages)
        self.index = -1  # the current sequence index
        self.expect_key = True  # a mapping's next node is a key
        self.in_value = False  # a mapping's latest node was a value (or is a collection still open)


def _frames_path(frames: list[_Frame]) -> Loc:
    path: list[Hashable] = []
    for frame in frames:
        if frame.mapping:
            if frame.in_value:
                path.append(frame.key)
        elif frame.index >= 0:
            path.append(frame.index)
    return tuple(path)


def _prescan(text: str, file: str, budget: Budget) -> None:
    """Depth and size of ``text`` once aliases are expanded, from the event stream alone (no node is
    built): refuses nesting deeper than ``MAX_DEPTH``, recursive aliases and more values than the
    budget has left, at the line where the limit is crossed. Linear in the number of events."""
    limit = budget.values_limit()
    frames: list[_Frame] = []
    sizes: dict[str, tuple[int, int]] = {}  # anchor -> (values, height) of its finished node

    def refuse(event: Any, message: str, hint: str, *, located: bool = True) -> SpecError:
        path = format_path(_frames_path(frames)) if located else ""
        return SpecError([Issue(file, event.start_mark.line + 1, path, message, hint)])

    def enter(event: Any) -> None:
        """A node starts at the current position: advance the parent's key/index bookkeeping."""
        if frames:
            top = frames[-1]
            if top.mapping:
                top.in_value = not top.expect_key
                top.expect_key = not top.expect_key
            else:
                top.index += 1

    def finished(event: Any, height: int) -> None:
        if frames:
            frames[-1].height = max(frames[-1].height, height)
        if len(frames) + height > MAX_DEPTH:
            raise refuse(event, f"nesting deeper than {MAX_DEPTH} levels once aliases are expanded "
                         "(a recursive alias?)", "expand anchors by hand")

    try:
        for event in yaml.parse(text, Loader=_LOADER):
            # type(event) is ..., not isinstance: exact and cheap on a city's events, and it narrows.
            if type(event) is yaml.ScalarEvent:
                key_position = bool(frames) and frames[-1].mapping and frames[-1].expect_key
                enter(event)
                if key_position:  # as the builder will construct it, for the path in messages
                    plain_int = event.implicit[0] and event.value.isdigit()
                    frames[-1].key = int(event.value) if plain_int else event.value
                budget.values += 1
                if event.anchor is not None:
                    sizes[event.anchor] = (1, 0)
            elif type(event) is yaml.AliasEvent:
                enter(event)
                if any(frame.anchor == event.anchor for frame in frames):
                    raise refuse(event, f"nesting deeper than {MAX_DEPTH} levels once aliases are expanded "
                                 "(a recursive alias?)", "expand anchors by hand")
                # An undefined alias: the composer says so. (An alias always names its anchor; the stubs
                # allow None on every node event.)
                values, height = sizes.get(event.anchor or "", (0, 0))
                budget.values += values
                finished(event, height)
            elif type(event) is yaml.SequenceStartEvent or type(event) is yaml.MappingStartEvent:
                enter(event)
                budget.values += 1
                frames.append(_Frame(type(event) is yaml.MappingStartEvent, event.anchor, budget.values - 1))
                if len(frames) > MAX_DEPTH:
                    raise refuse(event, f"nesting deeper than {MAX_DEPTH} levels",
                                 "Jellybean documents are shallow; this input is refused as hostile or broken",
                                 located=False)
            elif type(event) is yaml.SequenceEndEvent or type(event) is yaml.MappingEndEvent:
                frame = frames.pop()
                if frame.anchor is not None:
                    sizes[frame.anchor] = (budget.values - frame.start, frame.height + 1)
                finished(event, frame.height + 1)
            elif type(event) is yaml.DocumentStartEvent:
                sizes.clear()  # anchors are local to a document
            if budget.values > limit:
                raise refuse(event, f"more than {limit} values in one load (an alias bomb?)",
                             "expand anchors by hand, or split the documents over several applies")
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
        self.constructor = yaml.SafeLoader("")

    def build(self, root: yaml.Node, source: SourceMap) -> Any:
        # Iterative depth-first construction: no recursion, bounded work.
        result_holder: list[Any] = [None]
        stack: list[tuple[yaml.Node, Loc, Any, Any]] = [(root, (), result_holder, 0)]
        while stack:
            node, path, container, key = stack.pop()
            if len(path) > MAX_DEPTH:
                # The prescan bounds the expanded depth; this guards the builder on its own.
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

    def _scalar(self, node: yaml.Node, path: Loc) -> Any:
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


def parse_yaml(text: str, file: str, budget: Budget | None = None) -> list[tuple[Any, SourceMap]]:
    """Parse a (multi-document) YAML text into values with their source maps, spending ``budget``
    (a fresh one when None)."""
    budget = Budget() if budget is None else budget
    _check_encodable(text, file)
    budget.spend_text(text, file)
    _prescan(text, file, budget)
    builder = _Builder(file)
    documents: list[tuple[Any, SourceMap]] = []
    try:
        for node in yaml.compose_all(text, Loader=_LOADER):
            if _empty_document(node):
                continue
            source = SourceMap(file, start_line=node.start_mark.line + 1)
            documents.append((builder.build(node, source), source))
    except yaml.YAMLError as exc:
        raise SpecError([_yaml_issue(exc, file, text)]) from None
    return documents


_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


def _not_regular(mode: int) -> str:
    return next((what for test, what in _FILE_KINDS if test(mode)), "not a regular file")


def read_bounded(path: Path, *, limit: int | None = None, hint: str = "split it into several files") -> bytes:
    """A regular file's bytes, refusing more than ``limit`` (default ``MAX_FILE_BYTES``).

    Only regular files are read: a FIFO would block the open (or the read) forever and a device such
    as ``/dev/zero`` never ends. The file is opened non-blocking and checked with ``fstat`` on the
    open descriptor, so a path swapped for a FIFO between a check and the open cannot hang us; the
    read is capped at ``limit + 1`` bytes in case the file grows meanwhile."""
    display = str(path)
    limit = MAX_FILE_BYTES if limit is None else limit
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise SpecError([Issue(display, None, "", f"cannot read: {exc.strerror}", "check the path")]) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SpecError([Issue(display, None, "", f"not a regular file: {_not_regular(info.st_mode)}",
                                   "give a file or a folder of files")])
        if info.st_size > limit:
            raise SpecError([Issue(display, None, "", f"file is {info.st_size} bytes, more than {limit}", hint)])
        with os.fdopen(fd, "rb") as handle:
            fd = -1
            raw = handle.read(limit + 1)
    except OSError as exc:
        raise SpecError([Issue(display, None, "", f"cannot read: {exc.strerror}", "check the path")]) from None
    finally:
        if fd >= 0:
            os.close(fd)
    if len(raw) > limit:
        raise SpecError([Issue(display, None, "", f"file is more than {limit} bytes", hint)])
    return raw


def read_text(path: Path) -> str:
    display = str(path)
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
#: A value that is a number *or* a list (a site's carbon intensity: an average or a day's series):
#: pydantic tags each alternative's errors with these.
_NUMBER_TAGS = ("float", "constrained-float", "int", "constrained-int")


def _union_tag(part: object) -> bool:
    return isinstance(part, str) and (part in _NUMBER_TAGS or part.startswith("list["))


def model_issues(exc: ValidationError, source: SourceMap, allowed: dict[Loc, list[str]] | None = None,
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
        # A number or a list: keep the alternative of the shape written (a list: the series' errors).
        if loc and loc[-1] in _NUMBER_TAGS and isinstance(error.get("input"), list):
            continue
        if loc and _union_tag(loc[-1]) and str(loc[-1]).startswith("list[") and error["type"] == "list_type":
            continue
        clean: Loc = tuple(p for p in loc if isinstance(p, int)
                           or not (str(p).startswith("function-") or p in _STRING_TAGS or p == "StageInput" or _union_tag(p)))
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
        raise SpecError([Issue(source.file, line, "kind", f"unknown kind {_shown(kind)}"
                               f"{did_you_mean(kind, [*KINDS, *KIND_ALIASES])}",
                               f"use one of {', '.join([*KINDS, *KIND_ALIASES])}")])
    try:
        model = model_type.model_validate(value)
    except ValidationError as exc:
        raise SpecError(model_issues(exc, source, kind=kind)) from None
    return LoadedDocument(model, source, index)


def _expand(raw: str | os.PathLike[str]) -> list[Path]:
    path = Path(raw)
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.suffix in YAML_SUFFIXES and p.is_file())
        if not found:
            raise SpecError([Issue(str(path), None, "", "folder holds no .yaml or .yml files",
                                   "point -f at the documents' folder or files")])
        return found
    if path.exists():
        return [path]
    raise SpecError([Issue(str(path), None, "", "no such file or folder", "check the path")])


def expand_paths(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files named directly, plus every ``*.yaml``/``*.yml`` file inside named folders (sorted)."""
    return [file for raw in paths for file in _expand(raw)]


def _no_documents(name: str) -> Issue:
    return Issue(name, 1, "", f"no documents in {name}",
                 "add ModelZoo, Topology and Workflow documents (an empty input is refused, as `kubectl apply` does)")


def load_documents(paths: Sequence[str | os.PathLike[str]], *, budget: Budget | None = None) -> list[LoadedDocument]:
    """Load and validate every document in the given files and folders; report all errors at once.
    One budget covers all of them. A file named directly, or a folder, holding no document at all is
    an error ("no documents in FILE")."""
    budget = Budget() if budget is None else budget
    documents: list[LoadedDocument] = []
    issues: list[Issue] = []
    for raw in paths:
        texts: list[tuple[str, str]] = []
        try:
            for path in _expand(raw):
                texts.append((read_text(path), str(path)))
        except SpecError as exc:
            issues.extend(exc.issues)
            continue
        found, problems = _parse_all(texts, budget)
        issues.extend(problems)
        if not found and not problems:
            issues.append(_no_documents(str(raw)))
        documents.extend(found)
    if issues:
        raise SpecError(issues)
    return documents


def load_text(text: str, file: str = "<input>", *, budget: Budget | None = None) -> list[LoadedDocument]:
    """Like :func:`load_documents` for an in-memory text (used by tests and generators). An empty text
    gives no documents (not an error: callers decide)."""
    return load_texts([(file, text)], budget=budget)


def load_texts(files: list[tuple[str, str]], *, budget: Budget | None = None) -> list[LoadedDocument]:
    """Every document of several in-memory ``(name, text)`` files under one budget (an API request)."""
    documents, issues = _parse_all([(text, name) for name, text in files], Budget() if budget is None else budget)
    if issues:
        raise SpecError(issues)
    return documents


def _parse_all(texts: list[tuple[str, str]], budget: Budget) -> tuple[list[LoadedDocument], list[Issue]]:
    documents: list[LoadedDocument] = []
    issues: list[Issue] = []
    for text, file in texts:
        try:
            values = parse_yaml(text, file, budget)
        except SpecError as exc:
            issues.extend(exc.issues)
            if budget.values > budget.values_limit() or budget.bytes > budget.bytes_limit():
                break  # the load's budget is spent: the rest is not looked at
            continue
        for index, (value, source) in enumerate(values):
            try:
                documents.append(parse_document(value, source, index))
            except SpecError as exc:
                issues.extend(exc.issues)
    return documents, issues
