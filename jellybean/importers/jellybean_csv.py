"""Import a JellyBean optimizer-input folder as a ModelZoo, a Topology and a Workflow.

JellyBean (Wu et al., "Serving and Optimizing Machine Learning Workflows on Heterogeneous
Infrastructures", PVLDB 16(3) 2022; public prototype libertyeagle/JellyBean) reads a folder of
header-less CSV files, two JSON files and a pickled accuracy profile. This module maps them onto
Jellybean's documents:

===================================== ==========================================================
JellyBean file                        Jellybean document
===================================== ==========================================================
``workers_partition.json``            tiers, low to high: 2 -> edge, cloud; 3 -> hub, edge, cloud;
                                      4 -> device, hub, edge, cloud. One site per tier, named
                                      after it, whose parent is the next tier's site.
``workers_specs.csv``                 one ``InstanceGroup`` per worker (name = hardware = the
(``workers_numbers.csv``)             worker's name, ``count: 1`` or the worker type's number).
``workers_workers_link.csv``,         each non-root site's uplink: ``up.cost_per_gb`` =
``sources_workers_link.csv``          scaling x price(this tier -> next tier), ``down`` = scaling
                                      x price(next tier -> this tier); pairs not listed cost 0.
``execution_profile.csv``             one ``Task`` per operator, one ``Variant`` per model variant,
(``execution_profile_p90.csv``)       a batch-1 latency profile per worker (mean, and p90).
``message_sizes.csv``                 ``Variant.output_kb`` and ``Source.payload_kb``.
accuracy profile (JSON or pickle)     ``Variant.accuracy`` / ``accuracy_profile`` / ``cost_proxy``
                                      and the end-to-end ``AccuracyTable``.
``logical_graph.csv``,                ``Workflow`` stages and their inputs with ``ratio``.
``throughput_normalization_ratios``
``input_injection_rates.csv``         ``Workflow`` sources, attached to the lowest tier's site.
``accuracy_requirement.json``         the SLO's accuracy.
===================================== ==========================================================

Units: latencies in ms, message sizes in KB (1024 bytes), prices in $/hour, link prices in $/GB
with GB = KB x 1024 x 1024 after JellyBean's ``COMM_COST_SCALING_FACTOR`` (0.1 in the published
configuration). The topology is exclusive (a worker serves one stage), fully utilisable
(capacity = 1000 / latency_ms with one request at a time) and forbids downward flows, as
JellyBean's optimizer does.

Inputs are untrusted: every file is size-capped and CSV rows are checked one by one. The
accuracy-profile pickle is read by an unpickler that imports nothing: the only globals it resolves
are the three classes that JellyBean's own ``nodes_accuracy_profiles.pkl`` names
(``beam_search.EndToEndAccuracyProfile``, ``OperatorAccuracyProfile`` and ``AccSample``), each to an
inert stand-in defined here that only stores the data ``NEWOBJ`` / ``BUILD`` give it and refuses to
be called (so a ``REDUCE`` under their name runs nothing); every other global (``os.system``,
``builtins.eval``, ...), persistent ids and extension codes are refused by name. Users of their
prototype can thus import the folder as it is on their disk, and loading it cannot run code; the
stand-ins are then converted to the structure of ``accuracy_profiles.json``, with cycles, depth and
size bounded. Problems raise :class:`jellybean.spec.SpecError` naming the file and line;
inconsistencies that the documents cannot express exactly (unequal link prices within a tier pair,
message sizes that depend on the consumer's variant) become warnings.
"""

from __future__ import annotations

import csv
from array import array
import io
import json
import math
import pickle
import reprlib
import warnings as _warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn
from collections.abc import Iterable, Sequence

from pydantic import BaseModel, ValidationError

from jellybean.spec.common import NAME_RE, Tier
from jellybean.spec.errors import Issue, SpecError, format_path
from jellybean.spec.loader import read_bounded
from jellybean.spec.topology import Topology
from jellybean.spec.workflow import Workflow
from jellybean.spec.writer import dump_document
from jellybean.spec.zoo import ModelZoo

#: JellyBean's published configuration multiplies every link price by this factor.
COMM_COST_SCALING_FACTOR = 0.1
#: Largest input file read (CSV, JSON or pickle).
MAX_FILE_BYTES = 64 * 1024 * 1024
#: Largest accuracy profile accepted, counted as a tree (shared references count each time).
MAX_PROFILE_VALUES = 2_000_000
#: Deepest nesting of an accuracy profile (JellyBean's are about 6 levels deep).
MAX_PROFILE_DEPTH = 64

TIER_NAMES: dict[int, tuple[Tier, ...]] = {
    2: (Tier.edge, Tier.cloud),
    3: (Tier.hub, Tier.edge, Tier.cloud),
    4: (Tier.device, Tier.hub, Tier.edge, Tier.cloud),
}

ACCURACY_JSON = "accuracy_profiles.json"
PICKLE_SUFFIXES = (".pkl", ".pickle")
DEFAULT_VARIANT = "default"

_FILENAMES = {"ModelZoo": "zoo.yaml", "Topology": "topology.yaml", "Workflow": "workflow.yaml"}
_HEADERS = {
    "ModelZoo": (
        "Units: latency_ms / latency_ms_p90 in milliseconds per request, keyed by batch size (JellyBean\n"
        "profiles batch size 1 only: one request at a time); output_kb in KB (1024 bytes) that one\n"
        "downstream request receives; accuracy and accuracy_profile in JellyBean's own accuracy units;\n"
        "cost_proxy as JellyBean's model-selection search ranks variants."
    ),
    "Topology": (
        "Units: price_per_hour in $/hour per worker; cost_per_gb in $ per GB, GB = KB x 1024 x 1024,\n"
        "= JellyBean's link price x COMM_COST_SCALING_FACTOR (0.1 in their published configuration).\n"
        "Each worker is an instance group of its own (hardware = worker name, count 1); exclusive\n"
        "sharing and max_utilization 1.0 reproduce JellyBean's capacity of 1000 / latency_ms req/s;\n"
        "message_framing false prices payload bytes alone, as JellyBean does."
    ),
    "Workflow": (
        "Units: rate_per_s in requests/second; payload_kb in KB (1024 bytes); ratio = requests of a\n"
        "stage per request of its input; slo.accuracy in the zoo's accuracy units (end-to-end table)."
    ),
}


class JellyBeanImportWarning(UserWarning):
    """Something the documents cannot express exactly; the importer chose the conservative value."""


# --------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    display = str(path)
    if not path.exists():
        raise SpecError([Issue(display, None, "", "missing file",
                               "a JellyBean optimizer-input folder needs this file")])
    if not path.is_file():
        raise SpecError([Issue(display, None, "", "not a regular file", "give a file")])
    return read_bounded(path, limit=MAX_FILE_BYTES,
                        hint="JellyBean inputs are small; this file is refused as hostile or broken")


def _read_text(path: Path) -> str:
    raw = _read_bytes(path)
    if b"\x00" in raw:
        raise SpecError([Issue(str(path), None, "", "binary content (NUL bytes)", "give a text file")])
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpecError([Issue(str(path), line, "", "not valid UTF-8 text", "save the file as UTF-8")]) from None


def _read_json(path: Path) -> Any:
    text = _read_text(path)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError([Issue(str(path), exc.lineno, "", f"invalid JSON: {exc.msg}",
                               "fix the JSON syntax at that line")]) from None
    except RecursionError:
        raise SpecError([Issue(str(path), None, "", "JSON nested too deeply",
                               "refused as hostile or broken")]) from None
    _check_plain(value, str(path))
    return value


@dataclass
class _Row:
    file: str
    line: int
    fields: list[str]

    def issue(self, message: str, hint: str = "", path: str = "") -> Issue:
        return Issue(self.file, self.line, path, message, hint)


def _read_csv(path: Path, columns: Sequence[str], issues: list[Issue]) -> list[_Row]:
    """Header-less CSV rows of exactly ``len(columns)`` fields (trailing empty fields tolerated)."""
    try:
        text = _read_text(path)
    except SpecError as exc:
        issues.extend(exc.issues)
        return []
    rows: list[_Row] = []
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        for fields in reader:
            stripped = [f.strip() for f in fields]
            while stripped and stripped[-1] == "":
                stripped.pop()  # a stray trailing comma, as JellyBean's pandas reader tolerates
            if not stripped:
                continue
            row = _Row(str(path), reader.line_num, stripped)
            if len(stripped) != len(columns):
                issues.append(row.issue(
                    f"expected {len(columns)} fields ({','.join(columns)}), found {len(stripped)}",
                    "JellyBean's CSV files have no header; fix or remove this row"))
                continue
            if any(f == "" for f in stripped):
                empty = columns[stripped.index("")]
                issues.append(row.issue(f"empty field `{empty}`", "fill it in", empty))
                continue
            rows.append(row)
    except csv.Error as exc:
        issues.append(Issue(str(path), reader.line_num or None, "", f"invalid CSV: {exc}", "fix the row"))
    return rows


def _number(row: _Row, index: int, column: str, issues: list[Issue], *, minimum: float | None = 0.0,
            strict: bool = False) -> float | None:
    text = row.fields[index]
    try:
        value = float(text)
    except ValueError:
        issues.append(row.issue(f"`{column}` is {text!r}, not a number", "give a number", column))
        return None
    if not math.isfinite(value):
        issues.append(row.issue(f"`{column}` is {text!r}, not a finite number", "give a finite number", column))
        return None
    if minimum is not None and (value <= minimum if strict else value < minimum):
        relation = ">" if strict else ">="
        issues.append(row.issue(f"`{column}` is {text}, must be {relation} {minimum:g}", "fix the value", column))
        return None
    return value


# --------------------------------------------------------------------------------------------
# The accuracy profile: JSON, or a pickle read without executing anything
# --------------------------------------------------------------------------------------------


class _StandInMeta(type):
    """The metaclass of the stand-ins: calling a stand-in class is refused.

    A pickle instantiates a class in one of two ways. ``NEWOBJ`` / ``NEWOBJ_EX`` (what ``pickle.dump``
    writes for dataclasses and namedtuples at protocols 2 to 5, and all that JellyBean's file uses)
    call ``cls.__new__(cls, *args)`` directly, which a stand-in defines as storing its arguments.
    ``REDUCE``, and ``INST`` / ``OBJ`` with arguments, call the class object itself, which goes
    through this ``__call__``: refused. So their class name wrapping a ``REDUCE`` reaches no
    constructor, and no ``__init__`` ever runs.
    """

    origin: str

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise pickle.UnpicklingError(f"refused call of {cls.origin} (a REDUCE, or INST/OBJ with arguments); "
                                     "JellyBean's pickles build it with NEWOBJ, which is read")


class _StandIn(metaclass=_StandInMeta):
    """An inert stand-in for one of JellyBean's profile classes: a holder of the attributes its pickle sets.

    It has no behaviour: ``__new__`` stores the positional arguments ``NEWOBJ`` passes (a namedtuple's
    fields, named by ``NEW_ARGS``) and ``__setstate__`` the attribute dict ``BUILD`` passes (a
    dataclass's fields, which must be among ``FIELDS``), both in ``fields``. Anything else (keyword
    arguments, the wrong number of arguments, a state that is not a dict of known attributes) is
    refused while unpickling. JellyBean's ``beam_search`` module is never imported and none of its code
    runs; :func:`_plain_profile` turns the stand-ins into the plain structure of ``accuracy_profiles.json``.
    """

    __slots__ = ("fields",)
    origin = "?"
    #: attributes ``BUILD`` may set: the dataclass's fields, all required; () for a namedtuple.
    FIELDS: tuple[str, ...] = ()
    #: positional arguments ``NEWOBJ`` passes: the namedtuple's fields; () for a dataclass.
    NEW_ARGS: tuple[str, ...] = ()

    fields: dict[str, Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> _StandIn:
        if kwargs:
            raise pickle.UnpicklingError(f"refused keyword arguments to {cls.origin}")
        if len(args) != len(cls.NEW_ARGS):
            raise pickle.UnpicklingError(f"refused {cls.origin} built from {len(args)} arguments "
                                         f"(JellyBean's has {len(cls.NEW_ARGS)})")
        self = object.__new__(cls)
        self.fields = dict(zip(cls.NEW_ARGS, args))
        return self

    def __setstate__(self, state: Any) -> None:
        origin = type(self).origin
        if not self.FIELDS:
            raise pickle.UnpicklingError(f"refused state for {origin}, which has none (a namedtuple)")
        if type(state) is not dict:
            raise pickle.UnpicklingError(f"refused state of {origin}: a {type(state).__name__}, "
                                         "not a dict of its attributes")
        for key in state:
            if key not in self.FIELDS:
                raise pickle.UnpicklingError(f"refused attribute {reprlib.repr(key)} of {origin} "
                                             f"(its fields are {', '.join(self.FIELDS)})")
        self.fields.update(state)


class _EndToEndAccuracyProfile(_StandIn):
    """``beam_search.EndToEndAccuracyProfile``: a dataclass (operators, acc_profile: {variants tuple: accuracy})."""

    __slots__ = ()
    origin = "beam_search.EndToEndAccuracyProfile"
    FIELDS = ("operators", "acc_profile")


class _OperatorAccuracyProfile(_StandIn):
    """``beam_search.OperatorAccuracyProfile``: a dataclass (op_name, inputs, acc_profile: {variant:
    [AccSample]}, cost_profile: {variant: cost}, weight: the factor of its costs in their search)."""

    __slots__ = ()
    origin = "beam_search.OperatorAccuracyProfile"
    FIELDS = ("op_name", "inputs", "acc_profile", "cost_profile", "weight")


class _AccSample(_StandIn):
    """``beam_search.AccSample``: a namedtuple (inputs_acc, output_acc), pickled as NEWOBJ with both."""

    __slots__ = ()
    origin = "beam_search.AccSample"
    NEW_ARGS = ("inputs_acc", "output_acc")


class _RefusingUnpickler(pickle.Unpickler):
    """An unpickler whose only globals are JellyBean's three profile classes, each an inert stand-in.

    Plain containers (dicts, lists, tuples, strings, numbers, booleans, None) are built by pickle
    opcodes of their own at every protocol (0 to 5) and need no global. Every ``GLOBAL``,
    ``STACK_GLOBAL`` or extension-registry lookup (the only ways a pickle reaches a callable for
    ``REDUCE``, ``NEWOBJ``, ``INST`` or ``OBJ``) ends in :meth:`find_class`, which imports nothing:
    it answers the stand-in of an allowlisted name and refuses any other (``os.system``,
    ``builtins.eval``, ``copyreg._reconstructor``, numpy, ...) by name. The stand-ins themselves
    refuse being called (see :class:`_StandInMeta`), so the only code a pickle can reach is their
    ``__new__`` and ``__setstate__``, which store data. Persistent ids are refused too.

    The allowlist is exactly what the JellyBean authors' published ``nodes_accuracy_profiles.pkl``
    (protocol 4) names; protocols 0 and 1 of their classes would need ``copyreg._reconstructor``,
    which stays refused.
    """

    #: (module, name) -> its stand-in. Widening it is a visible, reviewed change.
    ALLOWED_GLOBALS: Mapping[tuple[str, str], type[_StandIn]] = MappingProxyType({
        ("beam_search", cls.origin.partition(".")[2]): cls
        for cls in (_EndToEndAccuracyProfile, _OperatorAccuracyProfile, _AccSample)
    })

    def find_class(self, module: str, name: str) -> Any:
        standin = self.ALLOWED_GLOBALS.get((module, name))
        if standin is None:
            raise pickle.UnpicklingError(f"refused global {_short(module)}.{_short(name)}")
        return standin

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused persistent id")


def _short(text: str) -> str:
    """A name from a hostile file, fit for a one-line message."""
    text = text if len(text) <= 100 else text[:100] + "..."
    return text if text.isprintable() else repr(text)


_PICKLE_HINT = ("an accuracy-profile pickle may hold only dicts, lists, tuples, strings, numbers, None and "
                "JellyBean's beam_search.EndToEndAccuracyProfile, OperatorAccuracyProfile and AccSample; "
                "or give accuracy_profiles.json")


def safe_unpickle(path: Path) -> Any:
    """Load an accuracy-profile pickle without running anything; return its plain structure.

    The pickle may hold plain data (dicts, lists, tuples, str, int, float, bool, None) and instances
    of JellyBean's ``beam_search.EndToEndAccuracyProfile``, ``OperatorAccuracyProfile`` and
    ``AccSample``, which is how their prototype writes ``nodes_accuracy_profiles.pkl``. Those three
    are rebuilt as inert stand-ins (their module is never imported) and converted by
    :func:`_plain_profile` into the structure of ``accuracy_profiles.json``; any other global (a
    class, a function such as ``os.system``) is refused before it is imported, as is calling one of
    theirs through ``REDUCE``, so nothing in the file runs. The file is capped at 64 MB, cycles are
    refused, and the result is checked to be plain data of bounded size and depth. Raises
    :class:`SpecError` naming the file on any problem.
    """
    path = Path(path)
    file = str(path)
    raw = _read_bytes(path)
    try:
        value = _RefusingUnpickler(io.BytesIO(raw)).load()
    except pickle.UnpicklingError as exc:
        message = str(exc)
        if message.startswith("refused"):
            raise SpecError([Issue(file, None, "", f"unsafe pickle: {message}", _PICKLE_HINT)]) from None
        raise SpecError([Issue(file, None, "", f"invalid pickle: {message}", _PICKLE_HINT)]) from None
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt input: EOFError, ValueError, MemoryError, ...
        if isinstance(exc, ValueError) and str(exc).startswith("unregistered extension code"):
            raise SpecError([Issue(file, None, "", f"unsafe pickle: refused extension code ({exc})",
                                   _PICKLE_HINT)]) from None
        raise SpecError([Issue(file, None, "", f"invalid pickle: {type(exc).__name__}: {exc}",
                               _PICKLE_HINT)]) from None
    plain = _plain_profile(value, file)
    _check_plain(plain, file)
    return plain


def _plain_profile(value: Any, file: str) -> Any:
    """The unpickled ``value`` as plain data, its stand-ins turned into ``accuracy_profiles.json``'s terms.

    ``AccSample(inputs_acc, output_acc)`` -> ``{"inputs_accuracy", "output_accuracy"}``;
    ``OperatorAccuracyProfile`` -> ``{"operator": op_name, "inputs", "variants": acc_profile,
    "cost_proxy": {variant: weight x cost}}`` (the cost their search ranks by);
    ``EndToEndAccuracyProfile`` -> ``{"operators", "rows": [{"variants": list(key), "accuracy"}]}``;
    and JellyBean's top level, ``{"end_to_end_profile", "per_operator_profiles"}`` or a list of
    operator profiles, -> ``{"end_to_end", "per_operator"}``. What is missing or of the wrong type is
    left for :func:`_parse_profiles` to report, except what this walk must refuse itself.

    The walk is recursive but bounded: an object already converted is reused (so shared references
    cost nothing twice), an object met again while it is still being converted is a cycle (refused
    at once, naming where), more than ``MAX_PROFILE_DEPTH`` containers deep is refused, and so is a
    walk of more than ``MAX_PROFILE_VALUES`` references. :func:`_check_plain` then bounds the result
    counted as a tree.
    """
    done: dict[int, Any] = {}  # id -> converted (each object converted once)
    entered: dict[int, int] = {}  # id of an object being converted -> len(path) when entered
    path: list[Any] = []
    visits = 0

    def fail(message: str, hint: str = "refused as hostile or broken") -> NoReturn:
        text = format_path(tuple(path))
        raise SpecError([Issue(file, None, text if len(text) <= 120 else text[:100] + "...", message, hint)])

    def enter(obj: Any) -> None:
        start = entered.get(id(obj))
        if start is not None:
            back = format_path(tuple(path[:start])) or "the top level"
            fail(f"a cycle: this value is the one at {back[:100]}, which contains it")
        if len(entered) >= MAX_PROFILE_DEPTH:
            fail(f"nested deeper than {MAX_PROFILE_DEPTH} levels")
        entered[id(obj)] = len(path)

    def child(key: Any, obj: Any) -> Any:
        path.append(key)
        result = convert(obj)
        path.pop()
        return result

    def convert(obj: Any) -> Any:
        nonlocal visits
        visits += 1
        if visits > MAX_PROFILE_VALUES:
            fail(f"more than {MAX_PROFILE_VALUES} values (shared references?)")
        if isinstance(obj, _PLAIN_SCALARS):
            return obj
        if id(obj) in done:
            return done[id(obj)]
        kind = type(obj)
        if isinstance(obj, _StandInMeta):
            fail(f"the class {obj.origin} itself, not an instance of it", _PICKLE_HINT)
        if kind not in (dict, list, tuple) and not isinstance(obj, _StandIn):
            fail(f"unsupported value of type {kind.__name__}", _PICKLE_HINT)
        enter(obj)
        result: Any
        if kind is dict:
            result = {}
            for key, sub in obj.items():
                if not isinstance(key, str):
                    fail(f"mapping key {reprlib.repr(key)} of type {type(key).__name__} is not a string",
                         "use string keys")
                result[key] = child(key, sub)
        elif kind is list or kind is tuple:
            result = [child(i, sub) for i, sub in enumerate(obj)]
            result = tuple(result) if kind is tuple else result
        else:
            result = standin(obj)
        del entered[id(obj)]
        done[id(obj)] = result
        return result

    def standin(obj: _StandIn) -> dict[str, Any]:
        fields = obj.fields
        if isinstance(obj, _AccSample):
            return {"inputs_accuracy": child("inputs_acc", fields["inputs_acc"]),
                    "output_accuracy": child("output_acc", fields["output_acc"])}
        missing = [name for name in obj.FIELDS if name not in fields]
        if missing:
            fail(f"{obj.origin} without {', '.join(missing)}", "JellyBean's pickles set every field")
        if isinstance(obj, _OperatorAccuracyProfile):
            weight = fields["weight"]
            if not _is_number(weight):
                path.append("weight")
                fail(f"weight {reprlib.repr(weight)} is not a finite number", "JellyBean's weights are numbers")
            costs = child("cost_profile", fields["cost_profile"])
            if isinstance(costs, dict):
                costs = {v: weight * c if _is_number(c) else c for v, c in costs.items()}
            return {"operator": child("op_name", fields["op_name"]), "inputs": child("inputs", fields["inputs"]),
                    "variants": child("acc_profile", fields["acc_profile"]), "cost_proxy": costs}
        # EndToEndAccuracyProfile: its acc_profile is keyed by tuples of variant names.
        operators = child("operators", fields["operators"])
        table = fields["acc_profile"]
        path.append("acc_profile")
        if type(table) is not dict:
            fail(f"a {type(table).__name__}, not a mapping (variant, ...) -> accuracy")
        enter(table)
        rows = []
        for key, accuracy in table.items():
            if type(key) is not tuple or not all(isinstance(x, str) for x in key):
                fail(f"key {reprlib.repr(key)} is not a tuple of variant names")
            rows.append({"variants": list(key), "accuracy": child(key, accuracy)})
        del entered[id(table)]
        path.pop()
        return {"operators": operators, "rows": rows}

    result = convert(value)
    if isinstance(result, dict) and ("per_operator_profiles" in result or "end_to_end_profile" in result):
        extra = sorted(set(result) - {"per_operator_profiles", "end_to_end_profile"})
        if extra:
            fail(f"unknown keys beside JellyBean's per_operator_profiles and end_to_end_profile: "
                 f"{', '.join(extra)}", "see JellyBean's beam_search.MLDataflowGraph")
        layout = {"per_operator": result.get("per_operator_profiles")}
        if result.get("end_to_end_profile") is not None:
            layout["end_to_end"] = result["end_to_end_profile"]
        return layout
    if isinstance(value, (list, tuple)) and value and all(isinstance(x, _OperatorAccuracyProfile) for x in value):
        return {"per_operator": result}  # MLDataflowGraph also takes a bare list of operator profiles
    return result


_PLAIN_SCALARS = (str, int, float, bool, type(None))


def _check_plain(value: Any, file: str) -> None:
    """Plain JSON-like data only, at most ``MAX_PROFILE_VALUES`` values counted as a tree and at most
    ``MAX_PROFILE_DEPTH`` levels deep.

    Linear in the values visited: each visit costs O(1) (the path of a value is kept as a link to
    its parent's entry and spelt out only for the message), so a list nested 200,000 deep is refused
    at level ``MAX_PROFILE_DEPTH`` and a cycle (a list holding itself: a 9-byte pickle) at the same
    depth. Counting every visit (not distinct objects) bounds the work of everything that later walks
    the structure, even when a pickle shares one list many times. (A pickle's cycles are refused
    earlier, where they are met, by :func:`_plain_profile`; this check stays the bound on the result.)
    """
    # visit -> its parent visit and its key or index there: paths are spelt out only for a message.
    parents = array("q", [-1])
    keys: list[Any] = [None]

    def path_of(visit: int) -> str:
        parts: list[Any] = []
        while visit > 0:
            parts.append(keys[visit])
            visit = parents[visit]
        text = format_path(tuple(reversed(parts)))
        return text if len(text) <= 120 else text[:100] + "..."

    stack: list[tuple[Any, int, int]] = [(value, 0, 0)]  # (item, its visit, its depth)
    while stack:
        item, visit, depth = stack.pop()
        if depth > MAX_PROFILE_DEPTH:
            raise SpecError([Issue(file, None, path_of(visit), f"nested deeper than {MAX_PROFILE_DEPTH} levels "
                                   "(a cycle?)", "refused as hostile or broken")])
        if isinstance(item, dict):
            children: Iterable[tuple[Any, Any]] = item.items()
            for key, _ in item.items():
                if not isinstance(key, str):
                    raise SpecError([Issue(file, None, path_of(visit),
                                           f"mapping key {key!r:.80} of type {type(key).__name__} is not a string",
                                           "use string keys")])
        elif isinstance(item, (list, tuple)):
            children = enumerate(item)
        elif isinstance(item, _PLAIN_SCALARS):
            continue
        else:
            raise SpecError([Issue(file, None, path_of(visit), f"unsupported value of type {type(item).__name__}",
                                   "only dicts, lists, tuples, strings, numbers and None are accepted")])
        for key, sub in children:
            if len(keys) >= MAX_PROFILE_VALUES:
                raise SpecError([Issue(file, None, path_of(visit),
                                       f"more than {MAX_PROFILE_VALUES} values (shared references?)",
                                       "refused as hostile or broken")])
            parents.append(visit)
            keys.append(key)
            stack.append((sub, len(keys) - 1, depth + 1))


def load_accuracy_profiles(folder: Path) -> tuple[Any, Path]:
    """The folder's accuracy profile as plain data, and the file it came from.

    ``accuracy_profiles.json`` when present; otherwise the one ``*.pkl`` / ``*.pickle`` file, read
    with :func:`safe_unpickle` (plain data, or JellyBean's own pickled profile classes, converted). The
    structure is ``{"per_operator": [...], "end_to_end": {...}}`` as
    in the reference folder's JSON (see :func:`import_jellybean`).
    """
    folder = Path(folder)
    json_path = folder / ACCURACY_JSON
    if json_path.exists():
        return _read_json(json_path), json_path
    try:
        pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
    except OSError as exc:
        raise SpecError([Issue(str(folder), None, "", f"cannot list: {exc.strerror}", "check the path")]) from None
    if not pickles:
        raise SpecError([Issue(str(json_path), None, "", "missing file (and no *.pkl / *.pickle accuracy profile)",
                               "give the accuracy profile as accuracy_profiles.json or a pickle of the same data")])
    if len(pickles) > 1:
        raise SpecError([Issue(str(folder), None, "", "several pickles: " + ", ".join(p.name for p in pickles),
                               "keep only the accuracy profile's pickle in the folder")])
    return safe_unpickle(pickles[0]), pickles[0]


@dataclass
class _OperatorProfile:
    operator: str
    inputs: list[str]
    samples: dict[str, list[tuple[list[float], float]]]  # variant -> [(inputs' accuracies, output)]
    cost_proxy: dict[str, float]


@dataclass
class _EndToEnd:
    operators: list[str]
    rows: list[tuple[list[str], float]]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _parse_profiles(data: Any, file: str, issues: list[Issue]) -> tuple[dict[str, _OperatorProfile], _EndToEnd | None]:
    def bad(path: tuple, message: str, hint: str = "see the reference folder's accuracy_profiles.json") -> None:
        issues.append(Issue(file, None, format_path(path), message, hint))

    if not isinstance(data, dict):
        bad((), "the accuracy profile must be a mapping with `per_operator` (and optionally `end_to_end`)")
        return {}, None
    unknown = sorted(set(data) - {"per_operator", "end_to_end"})
    if unknown:
        bad((), f"unknown keys: {', '.join(unknown)}")
    operators: dict[str, _OperatorProfile] = {}
    per_operator = data.get("per_operator")
    if not isinstance(per_operator, (list, tuple)):
        bad(("per_operator",), "missing or not a list")
        per_operator = []
    for i, entry in enumerate(per_operator):
        where = ("per_operator", i)
        if not isinstance(entry, dict):
            bad(where, "must be a mapping with operator, inputs, variants, cost_proxy")
            continue
        extra = sorted(set(entry) - {"operator", "inputs", "variants", "cost_proxy"})
        if extra:
            bad(where, f"unknown keys: {', '.join(extra)}")
        op = entry.get("operator")
        if not isinstance(op, str):
            bad(where + ("operator",), "missing or not a string")
            continue
        if op in operators:
            bad(where + ("operator",), f"operator {op!r} is profiled twice")
            continue
        inputs = entry.get("inputs")
        if inputs is None:
            inputs = []
        if not isinstance(inputs, (list, tuple)) or not all(isinstance(x, str) for x in inputs):
            bad(where + ("inputs",), "must be a list of operator names or null")
            continue
        variants = entry.get("variants")
        if not isinstance(variants, dict) or not variants:
            bad(where + ("variants",), "missing or not a non-empty mapping variant -> samples")
            continue
        samples: dict[str, list[tuple[list[float], float]]] = {}
        for variant, variant_samples in variants.items():
            vwhere = where + ("variants", variant)
            if not isinstance(variant_samples, (list, tuple)) or not variant_samples:
                bad(vwhere, "must be a non-empty list of samples")
                continue
            parsed: list[tuple[list[float], float]] = []
            for j, sample in enumerate(variant_samples):
                if isinstance(sample, dict):
                    ins, out = sample.get("inputs_accuracy"), sample.get("output_accuracy")
                    extra = sorted(set(sample) - {"inputs_accuracy", "output_accuracy"})
                    if extra:
                        bad(vwhere + (j,), f"unknown keys: {', '.join(extra)}")
                elif isinstance(sample, (list, tuple)) and len(sample) == 2:
                    ins, out = sample
                else:
                    bad(vwhere + (j,), "a sample is {inputs_accuracy: [...], output_accuracy: x}")
                    continue
                if ins is None:
                    ins = []
                if not isinstance(ins, (list, tuple)) or not all(_is_number(x) for x in ins):
                    bad(vwhere + (j, "inputs_accuracy"), "must be a list of finite numbers")
                    continue
                if len(ins) != len(inputs):
                    bad(vwhere + (j, "inputs_accuracy"),
                        f"has {len(ins)} values but the operator has {len(inputs)} inputs ({', '.join(inputs)})",
                        "give one accuracy per input, in the order of `inputs`")
                    continue
                if not _is_number(out):
                    bad(vwhere + (j, "output_accuracy"), "missing or not a finite number")
                    continue
                parsed.append(([float(x) for x in ins], float(out)))
            if parsed:
                samples[variant] = parsed
        cost_proxy: dict[str, float] = {}
        raw_costs = entry.get("cost_proxy") or {}
        if not isinstance(raw_costs, dict):
            bad(where + ("cost_proxy",), "must be a mapping variant -> cost")
            raw_costs = {}
        for variant, cost in raw_costs.items():
            if not _is_number(cost) or cost < 0:
                bad(where + ("cost_proxy", variant), "must be a finite number >= 0")
                continue
            cost_proxy[variant] = float(cost)
        operators[op] = _OperatorProfile(op, list(inputs), samples, cost_proxy)

    end_to_end = None
    raw_e2e = data.get("end_to_end")
    if raw_e2e is not None:
        where = ("end_to_end",)
        ops = raw_e2e.get("operators") if isinstance(raw_e2e, dict) else None
        rows = raw_e2e.get("rows") if isinstance(raw_e2e, dict) else None
        if not isinstance(ops, (list, tuple)) or not ops or not all(isinstance(x, str) for x in ops):
            bad(where + ("operators",), "must be a non-empty list of operator names")
        elif not isinstance(rows, (list, tuple)) or not rows:
            bad(where + ("rows",), "must be a non-empty list of {variants: [...], accuracy: x}")
        else:
            parsed_rows: list[tuple[list[str], float]] = []
            for j, row in enumerate(rows):
                variants_ = row.get("variants") if isinstance(row, dict) else None
                accuracy = row.get("accuracy") if isinstance(row, dict) else None
                if (not isinstance(variants_, (list, tuple)) or len(variants_) != len(ops)
                        or not all(isinstance(x, str) for x in variants_)):
                    bad(where + ("rows", j, "variants"), f"must list {len(ops)} variant names, one per operator")
                    continue
                if not _is_number(accuracy):
                    bad(where + ("rows", j, "accuracy"), "missing or not a finite number")
                    continue
                parsed_rows.append((list(variants_), float(accuracy)))
            end_to_end = _EndToEnd(list(ops), parsed_rows)
    return operators, end_to_end


# --------------------------------------------------------------------------------------------
# The importer
# --------------------------------------------------------------------------------------------


def _source_kind(name: str) -> str:
    lowered = name.lower()
    if any(word in lowered for word in ("image", "video", "camera")):
        return "camera"
    if any(word in lowered for word in ("speech", "audio")):
        return "microphone"
    return "sensor"


def _fmt(value: float) -> str:
    return f"{value:g}"


@dataclass
class _Importer:
    folder: Path
    name: str
    scaling: float
    issues: list[Issue] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def path(self, filename: str) -> Path:
        return self.folder / filename

    def optional(self, filename: str) -> bool:
        return self.path(filename).exists()

    def fail_if_issues(self) -> None:
        if self.issues:
            raise SpecError(list(self.issues))

    # -- infrastructure ------------------------------------------------------------------------

    def read_workers(self) -> None:
        self.worker_price: dict[str, float] = {}
        self.worker_line: dict[str, int] = {}
        for row in _read_csv(self.path("workers_specs.csv"), ("worker", "price_per_hour"), self.issues):
            worker = row.fields[0]
            if worker in self.worker_price:
                self.issues.append(row.issue(f"worker {worker!r} is listed twice (first at line "
                                             f"{self.worker_line[worker]})", "keep one row"))
                continue
            price = _number(row, 1, "price_per_hour", self.issues)
            if price is not None:
                self.worker_price[worker] = price
                self.worker_line[worker] = row.line
        self.worker_count: dict[str, int] = {}
        if self.optional("workers_numbers.csv"):
            for row in _read_csv(self.path("workers_numbers.csv"), ("worker_type", "number"), self.issues):
                number = _number(row, 1, "number", self.issues)
                if number is None:
                    continue
                if number != int(number):
                    self.issues.append(row.issue(f"`number` is {row.fields[1]}, not a whole number",
                                                 "give a whole number", "number"))
                    continue
                if row.fields[0] not in self.worker_price:
                    self.issues.append(row.issue(f"unknown worker type {row.fields[0]!r}",
                                                 "list it in workers_specs.csv"))
                    continue
                self.worker_count[row.fields[0]] = int(number)

        partition_path = self.path("workers_partition.json")
        self.tiers: list[list[str]] = []
        try:
            partition = _read_json(partition_path)
        except SpecError as exc:
            self.issues.extend(exc.issues)
            return
        file = str(partition_path)
        if (not isinstance(partition, list)
                or not all(isinstance(t, list) and all(isinstance(w, str) for w in t) for t in partition)):
            self.issues.append(Issue(file, 1, "", "must be a list of tiers, each a list of worker names",
                                     'e.g. [["cpu-1", "cpu-2"], ["gpu-1"]], lowest tier first'))
            return
        if len(partition) not in TIER_NAMES:
            self.issues.append(Issue(file, 1, "", f"{len(partition)} tiers; the importer maps 2, 3 or 4 tiers",
                                     "2 -> edge, cloud; 3 -> hub, edge, cloud; 4 -> device, hub, edge, cloud"))
            return
        seen: dict[str, int] = {}
        for index, tier in enumerate(partition):
            for worker in tier:
                if worker in seen:
                    self.issues.append(Issue(file, None, format_path((index,)),
                                             f"worker {worker!r} is in tiers {seen[worker]} and {index}",
                                             "put each worker in one tier"))
                elif worker not in self.worker_price:
                    self.issues.append(Issue(file, None, format_path((index,)),
                                             f"worker {worker!r} has no price in workers_specs.csv",
                                             "add it to workers_specs.csv"))
                seen.setdefault(worker, index)
        unplaced = [w for w in self.worker_price if w not in seen]
        if unplaced:
            self.warnings.append(f"workers_specs.csv: workers in no tier of workers_partition.json are ignored: "
                                 f"{', '.join(unplaced)}")
        self.tiers = [list(t) for t in partition]
        self.tier_names = TIER_NAMES[len(partition)]
        self.tier_of = {w: i for i, t in enumerate(self.tiers) for w in t}

    def read_links(self) -> None:
        self.link_price: dict[tuple[str, str], float] = {}  # (from, to) -> unscaled price
        for filename, first in (("workers_workers_link.csv", "worker_a"), ("sources_workers_link.csv", "source")):
            if not self.optional(filename):
                continue
            second = "worker_b" if first == "worker_a" else "worker"
            for row in _read_csv(self.path(filename), (first, second, "price"), self.issues):
                a, b = row.fields[0], row.fields[1]
                known_a = a in self.sources if first == "source" else a in self.tier_of
                if not known_a:
                    what = "source operator (input_injection_rates.csv)" if first == "source" else "worker in a tier"
                    self.issues.append(row.issue(f"{a!r} is not a {what}", "fix the name", first))
                    continue
                if b not in self.tier_of:
                    self.issues.append(row.issue(f"{b!r} is not a worker in a tier", "fix the name", second))
                    continue
                price = _number(row, 2, "price", self.issues)
                if price is None:
                    continue
                if (a, b) in self.link_price and self.link_price[(a, b)] != price:
                    self.issues.append(row.issue(f"pair {a} -> {b} is priced twice", "keep one row"))
                    continue
                self.link_price[(a, b)] = price

    def _tier_members(self, tier: int) -> list[str]:
        members = list(self.tiers[tier])
        if tier == 0:
            members = list(self.sources) + members  # sources sit in the lowest tier
        return members

    def _pair_prices(self, src_tier: int, dst_tier: int) -> list[float]:
        return [self.link_price.get((a, b), 0.0)
                for a in self._tier_members(src_tier) for b in self.tiers[dst_tier] if a != b]

    def link_costs(self) -> list[tuple[float, float]]:
        """Unscaled (up, down) price of the link from tier i to tier i + 1, for each i."""
        links: list[tuple[float, float]] = []
        names = self.tier_names
        for i in range(len(self.tiers) - 1):
            chosen = []
            for src, dst in ((i, i + 1), (i + 1, i)):
                prices = self._pair_prices(src, dst)
                price = max(prices, default=0.0)
                if len(set(prices)) > 1:
                    self.warnings.append(
                        f"link prices from tier {src} ({names[src].value}) to tier {dst} ({names[dst].value}) are "
                        f"not all equal (from {_fmt(min(prices))} to {_fmt(max(prices))}, unlisted pairs count 0); "
                        f"the {names[i].value} uplink uses the maximum, {_fmt(price)} x {_fmt(self.scaling)} "
                        f"= ${_fmt(price * self.scaling)}/GB")
                chosen.append(price)
            links.append((chosen[0], chosen[1]))
        # What the tree cannot express: priced traffic inside a tier, and pairs two or more tiers
        # apart whose price is not the sum of the links in between.
        for i in range(len(self.tiers)):
            for j in range(len(self.tiers)):
                prices = self._pair_prices(i, j)
                if i == j:
                    expected = 0.0
                elif abs(i - j) == 1:
                    continue
                elif i < j:
                    expected = sum(links[k][0] for k in range(i, j))
                else:
                    expected = sum(links[k][1] for k in range(j, i))
                off = [p for p in prices if not math.isclose(p, expected, rel_tol=1e-9, abs_tol=1e-12)]
                if off:
                    what = "inside tier" if i == j else "from tier"
                    target = f" {i} ({names[i].value})" if i == j else \
                        f" {i} ({names[i].value}) to tier {j} ({names[j].value})"
                    self.warnings.append(
                        f"link prices {what}{target}: {len(off)} of {len(prices)} pairs are not "
                        f"{_fmt(expected)} (the price along the tree of sites); the topology charges {_fmt(expected)}")
        return links

    # -- the workflow graph -----------------------------------------------------------------------

    def read_graph(self) -> None:
        self.edges: list[tuple[str, str]] = []
        self.nodes: list[str] = []
        for row in _read_csv(self.path("logical_graph.csv"), ("u", "v"), self.issues):
            u, v = row.fields
            if u == v:
                self.issues.append(row.issue(f"operator {u!r} reads from itself", "remove the row"))
                continue
            if (u, v) in self.edges:
                self.warnings.append(f"logical_graph.csv:{row.line}: edge {u} -> {v} is listed twice; kept once")
                continue
            self.edges.append((u, v))
            for node in (u, v):
                if node not in self.nodes:
                    self.nodes.append(node)
        self.sources: dict[str, float] = {}
        for row in _read_csv(self.path("input_injection_rates.csv"), ("operator", "rate_per_s"), self.issues):
            op = row.fields[0]
            rate = _number(row, 1, "rate_per_s", self.issues, strict=True)
            if rate is None:
                continue
            if op in self.sources:
                self.issues.append(row.issue(f"source {op!r} is listed twice", "keep one row"))
            elif op not in self.nodes:
                self.issues.append(row.issue(f"source {op!r} is not in logical_graph.csv",
                                             "add its edges to logical_graph.csv"))
            elif any(v == op for _, v in self.edges):
                self.issues.append(row.issue(f"source {op!r} has inputs in logical_graph.csv",
                                             "a source operator cannot read from another operator"))
            else:
                self.sources[op] = rate
        if not self.sources and not self.issues:
            self.issues.append(Issue(str(self.path("input_injection_rates.csv")), None, "", "no sources",
                                     "list each source operator and its rate"))
        # Stages in a topological order, stable by first appearance.
        stages = [n for n in self.nodes if n not in self.sources]
        preds = {n: [u for u, v in self.edges if v == n] for n in stages}
        order: list[str] = []
        done = set(self.sources)
        while len(order) < len(stages):
            ready = [n for n in stages if n not in done and all(p in done for p in preds[n])]
            if not ready:
                cycle = [n for n in stages if n not in done]
                self.issues.append(Issue(str(self.path("logical_graph.csv")), None, "",
                                         f"operators form a cycle: {', '.join(cycle)}", "the graph must be a DAG"))
                break
            order.append(ready[0])
            done.add(ready[0])
        self.stages = order
        self.preds = preds

    def read_ratios(self) -> None:
        self.ratio: dict[tuple[str, str], float] = {}
        self.ratio_by_variant: dict[tuple[str, str], dict[str, float]] = {}
        filename = "throughput_normalization_ratios.csv"
        if self.optional(filename):
            for row in _read_csv(self.path(filename), ("u", "v", "ratio"), self.issues):
                edge = (row.fields[0], row.fields[1])
                ratio = _number(row, 2, "ratio", self.issues, strict=True)
                if ratio is None:
                    continue
                if edge not in self.edges:
                    self.warnings.append(f"{filename}:{row.line}: {edge[0]} -> {edge[1]} is not an edge of "
                                         "logical_graph.csv; ignored")
                    continue
                self.ratio[edge] = ratio
        per_variant = "throughput_normalization_ratios_per_variant.csv"
        if self.optional(per_variant):
            # JellyBean replaces the per-edge ratios by these when the file exists.
            self.ratio = {}
            grouped: dict[tuple[str, str], dict[str, list[float]]] = {}
            for row in _read_csv(self.path(per_variant), ("u", "v", "u_variant", "v_variant", "ratio"), self.issues):
                edge = (row.fields[0], row.fields[1])
                ratio = _number(row, 4, "ratio", self.issues, strict=True)
                if ratio is None:
                    continue
                if edge not in self.edges:
                    self.warnings.append(f"{per_variant}:{row.line}: {edge[0]} -> {edge[1]} is not an edge; ignored")
                    continue
                grouped.setdefault(edge, {}).setdefault(row.fields[2], []).append(ratio)
            for edge, by_variant in grouped.items():
                flat = {}
                for variant, values in by_variant.items():
                    if len(set(values)) > 1:
                        self.warnings.append(f"{per_variant}: ratio of {edge[0]} -> {edge[1]} for {variant} depends "
                                             f"on {edge[1]}'s variant; using the maximum {_fmt(max(values))}")
                    flat[variant] = max(values)
                if len(set(flat.values())) == 1 or edge[0] in self.sources or set(flat) == {DEFAULT_VARIANT}:
                    self.ratio[edge] = max(flat.values())
                else:
                    self.ratio[edge] = flat.get(DEFAULT_VARIANT, 1.0)
                    self.ratio_by_variant[edge] = {v: r for v, r in flat.items() if v != DEFAULT_VARIANT}
        missing = [e for e in self.edges if e not in self.ratio and e not in self.ratio_by_variant]
        if missing and (self.optional(filename) or self.optional(per_variant)):
            self.warnings.append("no throughput normalization ratio for " +
                                 ", ".join(f"{u} -> {v}" for u, v in missing) + "; using 1.0")

    # -- profiles ---------------------------------------------------------------------------------

    def _read_latencies(self, filename: str) -> dict[str, dict[str, dict[str, float]]]:
        """operator -> variant -> worker -> latency_ms, in order of appearance."""
        table: dict[str, dict[str, dict[str, float]]] = {}
        lines: dict[tuple[str, str, str], int] = {}
        for row in _read_csv(self.path(filename), ("operator", "worker", "variant", "latency_ms"), self.issues):
            op, worker, variant = row.fields[:3]
            latency = _number(row, 3, "latency_ms", self.issues, strict=True)
            if latency is None:
                continue
            if worker not in self.tier_of:
                self.issues.append(row.issue(f"{worker!r} is not a worker in a tier", "fix the name", "worker"))
                continue
            key = (op, variant, worker)
            if key in lines:
                self.issues.append(row.issue(f"{op} / {variant} on {worker} is listed twice (first at line "
                                             f"{lines[key]})", "keep one row"))
                continue
            lines[key] = row.line
            table.setdefault(op, {}).setdefault(variant, {})[worker] = latency
        return table

    def read_profiles(self) -> None:
        self.latency = self._read_latencies("execution_profile.csv")
        self.latency_p90: dict[str, dict[str, dict[str, float]]] = {}
        if self.optional("execution_profile_p90.csv"):
            self.latency_p90 = self._read_latencies("execution_profile_p90.csv")
            extra = [(op, v, w) for op, vs in self.latency_p90.items() for v, ws in vs.items() for w in ws
                     if w not in self.latency.get(op, {}).get(v, {})]
            if extra:
                self.warnings.append(f"execution_profile_p90.csv: {len(extra)} rows have no mean in "
                                     f"execution_profile.csv and are ignored (first: {' / '.join(extra[0])})")
        unused = [op for op in self.latency if op not in self.stages]
        if unused:
            self.warnings.append(f"execution_profile.csv: operators not in logical_graph.csv are ignored: "
                                 f"{', '.join(unused)}")

        self.message: dict[tuple[str, str], dict[tuple[str, str], tuple[float, int]]] = {}
        filename = "message_sizes.csv"
        for row in _read_csv(self.path(filename), ("u", "v", "u_variant", "v_variant", "size_kb"), self.issues):
            u, v, uvar, vvar = row.fields[:4]
            size = _number(row, 4, "size_kb", self.issues)
            if size is None:
                continue
            if (u, v) not in self.edges:
                self.warnings.append(f"{filename}:{row.line}: {u} -> {v} is not an edge of logical_graph.csv; ignored")
                continue
            entry = self.message.setdefault((u, v), {})
            if (uvar, vvar) in entry:
                self.issues.append(row.issue(f"{u} ({uvar}) -> {v} ({vvar}) is listed twice (first at line "
                                             f"{entry[(uvar, vvar)][1]})", "keep one row"))
                continue
            entry[(uvar, vvar)] = (size, row.line)

        try:
            data, profile_path = load_accuracy_profiles(self.folder)
        except SpecError as exc:
            self.issues.extend(exc.issues)
            self.op_profiles, self.end_to_end, self.profile_file = {}, None, str(self.path(ACCURACY_JSON))
            return
        self.profile_file = str(profile_path)
        self.op_profiles, self.end_to_end = _parse_profiles(data, self.profile_file, self.issues)

        requirement_path = self.path("accuracy_requirement.json")
        self.sink_required: str | None = None
        self.threshold: float | None = None
        try:
            requirement = _read_json(requirement_path)
        except SpecError as exc:
            self.issues.extend(exc.issues)
            return
        if not isinstance(requirement, dict) or not _is_number(requirement.get("threshold")):
            self.issues.append(Issue(str(requirement_path), 1, "threshold",
                                     "must be a mapping with a numeric `threshold` (and the `sink`)",
                                     '{"sink": "VQA", "threshold": 56.0}'))
            return
        self.threshold = float(requirement["threshold"])
        sink = requirement.get("sink")
        self.sink_required = sink if isinstance(sink, str) else None

    def output_kb(self, op: str, variant: str) -> float | None:
        """KB one downstream request receives from ``op`` running ``variant`` (max over consumers)."""
        sizes: list[float] = []
        for u, v in self.edges:
            if u != op:
                continue
            rows = self.message.get((u, v), {})
            candidates = {vvar: size for (uvar, vvar), (size, _) in rows.items() if uvar == variant}
            if not candidates:
                candidates = {vvar: size for (uvar, vvar), (size, _) in rows.items() if uvar == DEFAULT_VARIANT}
            if not candidates and op in self.sources:
                candidates = {vvar: size for (_, vvar), (size, _) in rows.items()}
            if not candidates:
                self.issues.append(Issue(str(self.path("message_sizes.csv")), None, "",
                                         f"no message size for {u} -> {v} with u_variant {variant!r} or "
                                         f"{DEFAULT_VARIANT!r}", f"add a row `{u},{v},{variant},default,<KB>`"))
                return None
            if len(set(candidates.values())) > 1:
                self.warnings.append(f"message_sizes.csv: {u} ({variant}) -> {v} depends on {v}'s variant "
                                     f"({', '.join(f'{k}: {_fmt(s)}' for k, s in candidates.items())}); "
                                     f"using the maximum {_fmt(max(candidates.values()))} KB")
            sizes.append(max(candidates.values()))
        if len(set(sizes)) > 1:
            self.warnings.append(f"message_sizes.csv: {op} ({variant}) sends different sizes to its consumers "
                                 f"({', '.join(_fmt(s) for s in sizes)} KB); using the maximum {_fmt(max(sizes))} KB")
        return max(sizes, default=0.0)

    # -- documents ----------------------------------------------------------------------------------

    def zoo_data(self) -> dict[str, Any]:
        tasks = []
        profile_file = self.profile_file
        for op in self.stages:
            variants_latency = self.latency.get(op)
            if not variants_latency:
                self.issues.append(Issue(str(self.path("execution_profile.csv")), None, "",
                                         f"operator {op!r} has no rows", "profile each of its variants"))
                continue
            accuracy = self.op_profiles.get(op)
            if accuracy is None:
                self.issues.append(Issue(profile_file, None, "per_operator",
                                         f"operator {op!r} has no accuracy profile", "add its entry"))
                continue
            stage_inputs = [u for u in self.preds[op] if u not in self.sources]
            if sorted(accuracy.inputs) != sorted(stage_inputs):
                declared = ", ".join(accuracy.inputs) or "none"
                self.warnings.append(f"{Path(profile_file).name}: {op}'s profile inputs ({declared}) differ "
                                     f"from its operator inputs in logical_graph.csv "
                                     f"({', '.join(stage_inputs) or 'none'})")
            unprofiled = [v for v in accuracy.samples if v not in variants_latency]
            if unprofiled:
                self.warnings.append(f"{Path(profile_file).name}: {op} variants without latency profiles are "
                                     f"ignored: {', '.join(unprofiled)}")
            variants = []
            for variant, by_worker in variants_latency.items():
                samples = accuracy.samples.get(variant)
                if not samples:
                    self.issues.append(Issue(profile_file, None, f"per_operator.{op}.variants",
                                             f"variant {variant!r} of {op!r} has no accuracy samples",
                                             "add its samples"))
                    continue
                size = self.output_kb(op, variant)
                if size is None:
                    continue
                profiles = []
                for worker, mean in by_worker.items():
                    profile: dict[str, Any] = {"hardware": worker, "latency_ms": {1: mean}}
                    p90 = self.latency_p90.get(op, {}).get(variant, {}).get(worker)
                    if p90 is not None:
                        profile["latency_ms_p90"] = {1: p90}
                    profiles.append(profile)
                entry: dict[str, Any] = {
                    "name": variant,
                    "accuracy": max(out for _, out in samples),
                    "output_kb": size,
                }
                if variant in accuracy.cost_proxy:
                    entry["cost_proxy"] = accuracy.cost_proxy[variant]
                entry["profiles"] = profiles
                entry["accuracy_profile"] = [
                    {"inputs": dict(zip(accuracy.inputs, ins)), "output": out} for ins, out in samples
                ]
                variants.append(entry)
            tasks.append({"name": op, "variants": variants})
        tables = []
        if self.end_to_end is not None:
            unknown = [op for op in self.end_to_end.operators if op not in self.stages]
            if unknown:
                self.issues.append(Issue(profile_file, None, "end_to_end.operators",
                                         f"not stages of the workflow: {', '.join(unknown)}", "fix the names"))
            else:
                tables.append({
                    "name": self.table_name,
                    "tasks": list(self.end_to_end.operators),
                    "rows": [{"variants": variants, "accuracy": acc} for variants, acc in self.end_to_end.rows],
                })
        spec: dict[str, Any] = {"tasks": tasks}
        if tables:
            spec["accuracy_tables"] = tables
        return {"metadata": {"name": self.name}, "spec": spec}

    def topology_data(self) -> dict[str, Any]:
        links = self.link_costs()
        sites = []
        for index, workers in enumerate(self.tiers):
            tier = self.tier_names[index]
            site: dict[str, Any] = {"name": tier.value, "tier": tier.value}
            if index + 1 < len(self.tiers):
                up, down = links[index]
                site["parent"] = self.tier_names[index + 1].value
                site["uplink"] = {"up": {"cost_per_gb": self.scaling * up},
                                  "down": {"cost_per_gb": self.scaling * down}}
            site["instances"] = [
                {"name": w, "hardware": w, "price_per_hour": self.worker_price.get(w, 0.0),
                 "count": self.worker_count.get(w, 1)}
                for w in workers
            ]
            sites.append(site)
        return {"metadata": {"name": self.name},
                "spec": {"sites": sites, "sharing": "exclusive", "max_utilization": 1.0,
                         "allow_downward_flows": False, "message_framing": False}}

    def workflow_data(self) -> dict[str, Any]:
        lowest = self.tier_names[0].value
        sources = []
        for op, rate in self.sources.items():
            payload = self.output_kb(op, DEFAULT_VARIANT)
            if payload is None:
                continue
            if payload <= 0:
                self.issues.append(Issue(str(self.path("message_sizes.csv")), None, "",
                                         f"source {op!r} sends {payload:g} KB per request", "give a size > 0"))
                continue
            sources.append({"name": op, "kind": _source_kind(op), "rate_per_s": rate, "payload_kb": payload,
                            "sites": [lowest], "count_per_site": 1})
        stages = []
        for op in self.stages:
            inputs = []
            for u in self.preds[op]:
                entry: dict[str, Any] = {"from": u, "ratio": self.ratio.get((u, op), 1.0)}
                if (u, op) in self.ratio_by_variant:
                    entry["ratio_by_variant"] = self.ratio_by_variant[(u, op)]
                inputs.append(entry)
            stages.append({"name": op, "task": op, "inputs": inputs})
        consumed = {u for u, _ in self.edges}
        sinks = [op for op in self.stages if op not in consumed]
        if self.sink_required is not None and sinks and self.sink_required not in sinks:
            self.issues.append(Issue(str(self.path("accuracy_requirement.json")), None, "sink",
                                     f"sink {self.sink_required!r} is not the workflow's sink ({', '.join(sinks)})",
                                     "name the operator nothing reads from"))
        slo: dict[str, Any] = {"accuracy": self.threshold}
        if self.end_to_end is not None:
            slo["accuracy_table"] = self.table_name
        return {"metadata": {"name": self.name},
                "spec": {"zoo": self.name, "topology": self.name, "sources": sources, "stages": stages, "slo": slo}}

    @property
    def table_name(self) -> str:
        return f"{self.name}-end-to-end"

    def validate(self, model_type: type[BaseModel], kind: str, data: dict[str, Any]) -> BaseModel | None:
        try:
            return model_type.model_validate({"apiVersion": "jellybean.io/v1alpha1", "kind": kind, **data})
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                message = error["msg"].removeprefix("Value error, ")
                self.issues.append(Issue(str(self.folder), None, f"{kind}.{format_path(tuple(error['loc']))}",
                                         f"imported {kind} is invalid: {message}",
                                         "check the folder's names (or pass name=) and values"))
            return None


def import_jellybean(
    folder: Path,
    *,
    name: str | None = None,
    comm_cost_scaling: float = COMM_COST_SCALING_FACTOR,
    warnings: list[str] | None = None,
) -> list[BaseModel]:
    """Read a JellyBean optimizer-input folder; return ``[ModelZoo, Topology, Workflow]``.

    ``name`` names all three documents (default: the folder's name); the workflow's ``spec.zoo``
    and ``spec.topology`` name the other two and its SLO names the end-to-end accuracy table
    ``<name>-end-to-end``. ``comm_cost_scaling`` is JellyBean's ``COMM_COST_SCALING_FACTOR``, by
    which every link price is multiplied to give $/GB.

    The accuracy profile is ``accuracy_profiles.json`` or, failing that, a ``*.pkl`` / ``*.pickle``
    file: JellyBean's own ``nodes_accuracy_profiles.pkl`` (their ``beam_search`` profile classes, read
    as inert stand-ins, see :func:`safe_unpickle`) or a pickle of the same plain structure::

        {"per_operator": [{"operator": str, "inputs": [str] | None,
                           "variants": {variant: [{"inputs_accuracy": [float], "output_accuracy": float}]},
                           "cost_proxy": {variant: float}}],
         "end_to_end": {"operators": [str], "rows": [{"variants": [str], "accuracy": float}]}}

    Inconsistencies that the documents cannot express exactly become warnings: appended to
    ``warnings`` when a list is given, otherwise emitted as :class:`JellyBeanImportWarning`.
    Missing files and bad rows raise :class:`SpecError` with every issue found.
    """
    folder = Path(folder)
    if not (isinstance(comm_cost_scaling, (int, float)) and math.isfinite(comm_cost_scaling)
            and comm_cost_scaling >= 0):
        raise ValueError(f"comm_cost_scaling must be a finite number >= 0, not {comm_cost_scaling!r}")
    if not folder.is_dir():
        raise SpecError([Issue(str(folder), None, "", "no such folder",
                               "give a JellyBean optimizer-input folder (workers_specs.csv, logical_graph.csv, ...)")])
    doc_name = name if name is not None else folder.resolve().name
    if not NAME_RE.match(doc_name) or len(doc_name) > 240:
        raise SpecError([Issue(str(folder), None, "metadata.name", f"{doc_name!r} is not a valid document name",
                               "pass name= (letters, digits, '-', '.', '_'; starting and ending with a letter "
                               "or digit)")])
    importer = _Importer(folder, doc_name, float(comm_cost_scaling))
    importer.read_workers()
    importer.read_graph()
    importer.fail_if_issues()
    importer.read_links()
    importer.read_ratios()
    importer.read_profiles()
    importer.fail_if_issues()
    zoo_data = importer.zoo_data()
    topology_data = importer.topology_data()
    workflow_data = importer.workflow_data()
    importer.fail_if_issues()
    documents = [
        importer.validate(ModelZoo, "ModelZoo", zoo_data),
        importer.validate(Topology, "Topology", topology_data),
        importer.validate(Workflow, "Workflow", workflow_data),
    ]
    importer.fail_if_issues()
    if warnings is not None:
        warnings.extend(importer.warnings)
    else:
        for message in importer.warnings:
            _warnings.warn(message, JellyBeanImportWarning, stacklevel=2)
    return [doc for doc in documents if doc is not None]


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _comment(text: str) -> str:
    lines = text.strip("\n").splitlines()
    return "".join((line if line.startswith("#") else ("# " + line).rstrip()) + "\n" for line in lines)


def write_documents(docs: Iterable[BaseModel], out_dir: Path, *, preamble: str = "") -> list[Path]:
    """Write the documents as ``zoo.yaml``, ``topology.yaml`` and ``workflow.yaml`` in ``out_dir``.

    Each file starts with ``preamble`` (as comment lines, if given), then a header saying it was
    imported from a JellyBean optimizer-input folder and giving the units, then the document as
    written by the one document writer (:func:`jellybean.spec.writer.dump_document`: field order,
    latency tables on one line). Returns the paths written.
    """
    out_dir = Path(out_dir)
    by_kind: dict[str, BaseModel] = {}
    for doc in docs:
        kind = getattr(doc, "kind", None)
        if kind not in _FILENAMES:
            raise ValueError(f"cannot write a document of kind {kind!r}; expected {', '.join(_FILENAMES)}")
        if kind in by_kind:
            raise ValueError(f"two {kind} documents; write_documents writes one of each kind")
        by_kind[kind] = doc
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for kind, filename in _FILENAMES.items():
        doc = by_kind.get(kind)
        if doc is None:
            continue
        body = dump_document(doc)
        header = _comment(
            f"{kind} {doc.metadata.name!r}, imported from a JellyBean optimizer-input folder by\n"  # type: ignore[attr-defined]
            "jellybean.importers.jellybean_csv (import_jellybean, then write_documents).\n" + _HEADERS[kind]
        )
        text = (_comment(preamble) + "#\n" if preamble.strip() else "") + header + body
        path = out_dir / filename
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
