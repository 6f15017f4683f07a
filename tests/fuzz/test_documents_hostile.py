"""Hostile documents, generated: every malformed or adversarial input is refused with issues that
name the file, the line and the field, with a hint; never a traceback, whether from the loader,
from bundle resolution or from the CLI (exit code 2).

The generators start from the committed workflows (vehicle-tracking, digits) and break them: a
key deleted, a value of the wrong type (negative, huge, tiny, NaN and infinite numbers, long and odd
strings, lists and mappings where a scalar belongs), unknown and duplicate keys, references renamed
to names that do not exist, cycles among stages and among sites, YAML tags, aliases, alias bombs and
deep nesting at a field, truncated texts and random bytes. Then random texts and random YAML
structures built from the documents' own field names. Every test is derandomized (CI reruns the
same examples) and bounded (the file runs in well under a minute on two cores).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import math
import re
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from jellybean.cli import main
from jellybean.spec import SpecError, load_documents, load_text, resolve
from jellybean.spec import loader
from jellybean.spec.common import API_VERSION, MAX_MAGNITUDE, MIN_MAGNITUDE
from jellybean.spec.errors import Issue, format_path
from tests.spec.test_documents import line_of
from tests.spec.test_loader import all_paths, get

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("vehicle-tracking", "digits")
FILES = {"ModelZoo": "zoo.yaml", "Topology": "topology.yaml", "Workflow": "workflow.yaml"}
#: The committed texts (comments, flow style and all), by (folder, kind), and the values they hold.
TEXTS = {(folder, kind): (ROOT / "workflows" / folder / name).read_text()
         for folder in FOLDERS for kind, name in FILES.items()}
VALUES = {key: loader.parse_yaml(text, "committed")[0][0] for key, text in TEXTS.items()}
MARK = "zz-mutant"
PROBE = "zz-line-probe"
MISSING = "no-such-name-zz"


def bounded(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


def dump(value: Any, **style: Any) -> str:
    options = {"sort_keys": False, "allow_unicode": True, "width": 1 << 30, **style}
    try:
        return yaml.dump(value, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), **options)
    except UnicodeEncodeError:  # a lone surrogate, which only the Python emitter escapes
        return yaml.dump(value, Dumper=yaml.SafeDumper, **options)


def name_of(folder: str, kind: str) -> str:
    return f"{folder}/{FILES[kind]}"


def folder_texts(folder: str, kind: str, text: str) -> dict[str, str]:
    """The folder's three files as a client would send them, ``kind``'s replaced by ``text``."""
    return {name_of(folder, k): text if k == kind else TEXTS[folder, k] for k in FILES}


_BREAKS = re.compile("\r\n|[\r\n\x85\u2028\u2029]")


def line_count(text: str) -> int:
    """Lines as YAML counts them (it breaks lines at NEL, LS and PS too)."""
    return len(_BREAKS.findall(text)) + 1


@functools.lru_cache(maxsize=16)
def holds_mappings(text: str) -> bool:
    """Whether the text is YAML whose documents are all mappings: then every problem is in a field."""
    try:
        values = loader.parse_yaml(text, "probe")
    except SpecError:
        return False
    return all(isinstance(value, dict) for value, _ in values)


def check_issue(issue: Issue, texts: dict[str, str], in_field: dict[str, bool]) -> None:
    """A clear error: a known file, a line in it, a field where the problem is in one, a hint."""
    assert issue.file in texts, issue
    assert isinstance(issue.line, int) and 1 <= issue.line <= line_count(texts[issue.file]), issue
    assert issue.message.strip(), issue
    # One line each, and nothing a terminal would act on (a key may hold any character, escapes too).
    assert f"{issue.path}: {issue.message} ({issue.hint})".isprintable(), issue
    assert issue.hint.strip(), f"no hint: {issue}"
    assert len(issue.message) < 2000, f"message echoes too much: {issue.message[:200]}..."
    if in_field[issue.file]:
        assert issue.path, f"no field: {issue}"
        assert not issue.path.endswith("[key]"), issue  # pydantic's marker, not the user's field


def refusal(texts: dict[str, str]) -> list[Issue]:
    """Load every text and resolve the workflow: [] when all is valid, else every issue (checked).
    Nothing but SpecError may escape."""
    issues: list[Issue] = []
    documents = []
    for file, text in texts.items():
        try:
            documents += committed(text, file) if text in COMMITTED else load_text(text, file)
        except SpecError as exc:
            assert exc.issues, "a SpecError without issues"
            issues += exc.issues
    if not issues and [d for d in documents if d.model.kind == "Workflow"]:
        try:
            resolve(documents)
        except SpecError as exc:
            assert exc.issues, "a SpecError without issues"
            issues += exc.issues
    in_field = {file: holds_mappings(text) for file, text in texts.items()}
    for issue in issues:
        check_issue(issue, texts, in_field)
    return issues


COMMITTED = set(TEXTS.values())


@functools.cache
def committed(text: str, file: str) -> tuple:
    """The documents of an unchanged committed file (loaded once: most examples change one file)."""
    return tuple(load_text(text, file))


def under(inner: str, outer: str) -> bool:
    """Whether field path ``inner`` is ``outer`` or inside it."""
    return inner == outer or not outer or (inner.startswith(outer) and inner[len(outer)] in ".[")


def related(issue: Issue, path: tuple) -> bool:
    target = format_path(path)
    return under(issue.path, target) or under(target, issue.path)


def key_line(doc: Any, path: tuple) -> int:
    """The line where the value at ``path`` is written in ``dump(doc)``: its key's (or list dash's) line."""
    if not path:
        return 1
    probe = copy.deepcopy(doc)
    get(probe, path[:-1])[path[-1]] = PROBE
    return line_of(dump(probe), PROBE)


def marked_lines(text: str) -> set[int]:
    return {number for number, line in enumerate(text.splitlines(), 1) if MARK in line}


# --------------------------------------------------------------------------------------------------
# structural mutations of the committed documents

#: Values that may or may not fit where they land: the document loads, or it is refused cleanly.
HOSTILE = [
    "", " ", "x" * 10_000, "\U0001f697\U0001f4a5", "\x00\x07\x1b\x7f", "\u202eevil", "\ufeff", "\ud800",
    "null", "~", "yes", "1e400", "-0", "0x10", "{a: 1}", "*alias", "&anchor x", "!!python/object:os.system",
    "- x", "a: b", "a" * 253, "a" * 254, "-x-", "x.y", "UPPER_case.9",
    -1, 0, -1.5, 1e308, -1e308, 5e-324, 10**30, 10**400, -(10**30), math.nan, math.inf, -math.inf,
    True, False, None, [], {},
]
#: Values that fit nowhere a scalar belongs (every leaf of these documents is a scalar field).
CONTAINERS = [{MARK: 1}, [MARK], {MARK: {"deeper": [1, {"x": None}]}}, [[MARK]], [{MARK: 2}], {MARK: [MARK]}]
wrong_values = st.one_of(st.sampled_from(HOSTILE), st.sampled_from(CONTAINERS), st.text(max_size=30),
                         st.integers(), st.floats(), st.lists(st.integers(), max_size=3))
documents = st.tuples(st.sampled_from(FOLDERS), st.sampled_from(list(FILES)))


@st.composite
def mutations(draw: st.DrawFn) -> tuple[str, str, Any, tuple, str, Any]:
    """One edit of a committed document: (folder, kind, edited value, where, how, what was put there)."""
    folder, kind = draw(documents)
    doc = copy.deepcopy(VALUES[folder, kind])
    paths = all_paths(doc)
    how = draw(st.sampled_from(["delete", "replace", "add-key"]))
    value: Any = None
    if how == "delete":
        path = draw(st.sampled_from([p for p in paths if p and isinstance(get(doc, p[:-1]), dict)]))
        del get(doc, path[:-1])[path[-1]]
    elif how == "replace":
        path = draw(st.sampled_from([p for p in paths if p and not (isinstance(get(doc, p), (dict, list))
                                                                    and get(doc, p))]))
        value = draw(wrong_values)
        get(doc, path[:-1])[path[-1]] = value
    else:
        parent = draw(st.sampled_from([p for p in paths if isinstance(get(doc, p), dict)]))
        path = parent + ("zz-unknown",)
        get(doc, parent)["zz-unknown"] = value = draw(st.sampled_from(["zz-value", 1, None, [MARK]]))
    return folder, kind, doc, path, how, value


def edit(folder: str, kind: str, path: tuple, how: str, value: Any = None) -> tuple:
    """One mutation, spelled out (for the regression examples)."""
    doc = copy.deepcopy(VALUES[folder, kind])
    parent = get(doc, path[:-1])
    if how == "delete":
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return folder, kind, doc, path, how, value


@bounded(250)
@given(mutations())
@example(edit("vehicle-tracking", "ModelZoo", ("metadata", "name"), "delete")).via(
    "a missing field was put on the line after its mapping's key")
@example(edit("digits", "Topology", ("kind",), "replace", "x" * 10_000)).via("the message quoted all 10,000 characters")
@example(edit("digits", "ModelZoo", ("spec", "tasks", 0, "variants", 0, "accuracy"), "replace", [MARK])).via(
    "no hint for 'Input should be a valid number'")
@example(edit("digits", "ModelZoo", ("spec", "tasks", 0, "variants", 0, "profiles", 0, "latency_ms", "zz-unknown"),
              "add-key", "zz-value")).via("a bad mapping key was reported at path `...latency_ms.zz-unknown.[key]`")
def test_a_broken_document_is_refused_where_it_is_broken(case: tuple) -> None:
    folder, kind, doc, path, how, value = case
    file, text = name_of(folder, kind), dump(doc)
    issues = refusal(folder_texts(folder, kind, text))
    event(f"{how}: {'refused' if issues else 'loads'}")
    if not issues:
        return  # an optional key deleted, or a value that happens to fit (a string where one belongs)
    mine = [i for i in issues if i.file == file and related(i, path)]
    if how == "delete":
        assert mine, (format_path(path), issues)
        # "Field required" is reported at the mapping the key is missing from.
        for issue in mine:
            if issue.path == format_path(path):
                assert issue.line == key_line(doc, path[:-1]), (issue, text)
    original = get(VALUES[folder, kind], path) if how == "replace" else None
    if how == "add-key" or (isinstance(value, (dict, list)) and value and not isinstance(original, (dict, list))):
        # A mapping or a list where a scalar belongs (or a key nothing knows): refused right there,
        # at the line of the key, or deeper at a line of what was put there.
        assert mine, (format_path(path), issues)
        expected = {key_line(doc, path)} | marked_lines(text)
        for issue in mine:
            assert issue.line in expected, (issue, expected, text)


# References renamed to names nothing defines: (kind, path pattern). `*` is every index.
REFERENCES = [
    ("Workflow", ("spec", "zoo")), ("Workflow", ("spec", "topology")),
    ("Workflow", ("spec", "stages", "*", "task")), ("Workflow", ("spec", "sources", "*", "sites", "*")),
    ("Workflow", ("spec", "stages", "*", "inputs", "*")), ("Workflow", ("spec", "stages", "*", "inputs", "*", "from")),
    ("Topology", ("spec", "sites", "*", "parent")), ("ModelZoo", ("spec", "accuracy_tables", "*", "tasks", "*")),
    ("ModelZoo", ("spec", "accuracy_tables", "*", "rows", "*", "variants", "*")),
]


def matches(path: tuple, pattern: tuple) -> bool:
    return len(path) == len(pattern) and all(p == "*" and isinstance(v, int) or p == v for v, p in zip(path, pattern))


@bounded(60)
@given(documents, st.data())
def test_a_reference_to_nothing_is_refused_at_the_reference(document: tuple[str, str], data: st.DataObject) -> None:
    folder, kind = document
    doc = copy.deepcopy(VALUES[folder, kind])
    candidates = [p for p in all_paths(doc) for k, pattern in REFERENCES
                  if k == kind and matches(p, pattern) and isinstance(get(doc, p), str)]
    if not candidates:
        return
    path = data.draw(st.sampled_from(candidates))
    get(doc, path[:-1])[path[-1]] = MISSING
    text = dump(doc)
    issues = refusal(folder_texts(folder, kind, text))
    assert issues, format_path(path)
    mine = [i for i in issues if i.file == name_of(folder, kind) and under(i.path, format_path(path))]
    assert mine, (format_path(path), issues)
    assert {i.line for i in mine} == {line_of(text, MISSING)}
    assert all(MISSING in i.message for i in mine)


@bounded(25)
@given(st.sampled_from(FOLDERS), st.data())
def test_a_cycle_among_stages_is_refused_at_the_input_that_closes_it(folder: str, data: st.DataObject) -> None:
    doc = copy.deepcopy(VALUES[folder, "Workflow"])
    stages = doc["spec"]["stages"]
    # The committed workflows are chains (each stage reads the one before), so reading from any stage
    # downstream closes a cycle through every stage between (or, from itself, a loop).
    first = data.draw(st.integers(0, len(stages) - 1))
    last = data.draw(st.integers(first, len(stages) - 1))
    stages[first]["inputs"].append(stages[last]["name"])
    where = ("spec", "stages", first, "inputs", len(stages[first]["inputs"]) - 1)
    text = dump(doc)
    issues = refusal(folder_texts(folder, "Workflow", text))
    assert [(i.path, i.line) for i in issues] == [(format_path((*where, "from")), key_line(doc, where))], issues
    names = [s["name"] for s in stages[first:last + 1]]
    assert issues[0].message.startswith(f"stages form a cycle: {' -> '.join(names + names[:1])};"
                                        if first < last else f"stage {names[0]!r} reads from itself"), issues


@bounded(25)
@given(st.sampled_from(FOLDERS), st.data())
def test_sites_whose_parents_loop_are_refused_at_a_parent(folder: str, data: st.DataObject) -> None:
    doc = copy.deepcopy(VALUES[folder, "Topology"])
    sites = doc["spec"]["sites"]
    tier = data.draw(st.sampled_from(sorted({s["tier"] for s in sites})))
    indices = [i for i, s in enumerate(sites) if s["tier"] == tier]
    ring = data.draw(st.lists(st.sampled_from(indices), min_size=1, max_size=4, unique=True))
    for here, there in zip(ring, ring[1:] + ring[:1]):  # a loop of parents within one tier
        sites[here]["parent"] = sites[there]["name"]
    text = dump(doc)
    issues = refusal(folder_texts(folder, "Topology", text))
    at = {format_path(("spec", "sites", i, "parent")): key_line(doc, ("spec", "sites", i, "parent")) for i in ring}
    assert [i for i in issues if "cycle" in i.message and at.get(i.path) == i.line], issues


# --------------------------------------------------------------------------------------------------
# hostile YAML at a field, and broken texts

#: YAML that must never be constructed: tags, aliases, bombs, odd keys, malformed scalars, deep
#: nesting. Each is refused at its own line.
BOMB = "[" + ", ".join([f"&a0 [{', '.join(['lol'] * 9)}]"]
                       + [f"&a{k} [{', '.join([f'*a{k - 1}'] * 9)}]" for k in range(1, 9)]) + "]"
LOCATED = [
    "!!python/object/apply:os.system ['true']", "!!python/name:os.system", "!!python/object:object {}",
    "!!binary aGVsbG8=", "!!set {a, b}", "!!omap [{a: 1}]", "!!timestamp 2001-12-14", "!local x", "!!int abc",
    "!!float x", "!!bool maybe", "&a [*a]", "*undefined", BOMB, "{a: 1, a: 2}", "{[a]: b}", "{<<: {a: 1}}",
    '"\\ud800"', "[" * 70 + "]" * 70, "{a: " * 70 + "1" + "}" * 70, "\x07", "9" * 5000,
]
#: Broken syntax: YAML finds out where it finds out (an unclosed quote at the end of the text).
SYNTAX = ["'unterminated", '"unterminated', "[1, 2", "{a: [}", "\t- tab", "a: b: c", "]", "- - -\n?"]


@bounded(100)
@given(documents, st.sampled_from(LOCATED + SYNTAX), st.data())
@example(("digits", "Workflow"), "\x07", None).via("a control character had no line")
def test_hostile_yaml_at_a_field_is_refused_at_its_line(document: tuple[str, str], injected: str,
                                                        data: st.DataObject | None) -> None:
    folder, kind = document
    doc = copy.deepcopy(VALUES[folder, kind])
    leaves = [p for p in all_paths(doc) if p and not isinstance(get(doc, p), (dict, list))]
    path = data.draw(st.sampled_from(leaves)) if data is not None else leaves[-1]
    get(doc, path[:-1])[path[-1]] = PROBE
    probed = dump(doc)
    line = line_of(probed, PROBE)
    text = probed.replace(PROBE, injected)
    with mock.patch.object(loader, "MAX_VALUES", 50_000):  # the bomb is refused at the same place, sooner
        issues = refusal(folder_texts(folder, kind, text))
    assert issues, injected
    mine = [i for i in issues if i.file == name_of(folder, kind)]
    assert mine
    if injected in LOCATED:
        assert any(i.line == line for i in mine), (line, mine)
    for issue in mine:
        assert not issue.path or related(issue, path), (issue, format_path(path))


@bounded(60)
@given(documents, st.data())
def test_a_duplicated_key_is_refused_at_the_second_one(document: tuple[str, str], data: st.DataObject) -> None:
    folder, kind = document
    lines = TEXTS[folder, kind].splitlines(keepends=True)
    keyed = [i for i, line in enumerate(lines) if re.match(r"^ *(- )?[A-Za-z_][\w/.-]*:( |$)", line)]
    index = data.draw(st.sampled_from(keyed))
    copied = re.sub(r"^( *)- ", r"\1  ", lines[index])  # the same key again, in the same mapping
    text = "".join(lines[: index + 1] + [copied] + lines[index + 1:])
    issues = refusal(folder_texts(folder, kind, text))
    key = copied.strip().split(":", 1)[0]
    assert [(i.line, i.message) for i in issues] == [(index + 2, f"duplicate key {key!r}")], issues
    assert issues[0].path.endswith(key)


@bounded(80)
@given(documents, st.data())
def test_a_truncated_document_loads_or_is_refused_cleanly(document: tuple[str, str], data: st.DataObject) -> None:
    folder, kind = document
    text = TEXTS[folder, kind]
    cut = data.draw(st.integers(0, len(text)))
    refusal(folder_texts(folder, kind, text[:cut]))


# --------------------------------------------------------------------------------------------------
# random texts and random YAML structures

characters = st.characters(codec=None, exclude_categories=())  # surrogates and control characters too
FIELD_NAMES = sorted({str(p[-1]) for value in VALUES.values() for p in all_paths(value) if p and isinstance(p[-1], str)})
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(characters, max_size=20),
                    st.sampled_from(["cloud", "edge", "hub", "device", "camera", "shared", "detect", MISSING]))
keys = st.one_of(st.sampled_from(FIELD_NAMES), st.text(characters, max_size=8), st.integers(-2, 20))
structures = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                           st.dictionaries(keys, inner, max_size=5)), max_leaves=25)
envelopes = st.fixed_dictionaries(
    {"apiVersion": st.one_of(st.just(API_VERSION), scalars),
     "kind": st.one_of(st.sampled_from(["ModelZoo", "Topology", "Workflow", "InferenceWorkflow"]), scalars),
     "metadata": st.one_of(st.fixed_dictionaries({"name": st.sampled_from(["x", "", "a b", MISSING])}), structures),
     "spec": structures})


@bounded(400)
@given(st.one_of(st.text(characters, max_size=400), st.text(st.sampled_from("{}[]:-,&*!|>'\"#%@`? \n\t~"), max_size=80)))
@example("a: \ud800\n").via("a lone surrogate crashed the C parser's encoder")
@example("a: 1\nb: \x07\n").via("a control character had no line")
def test_any_text_loads_or_is_refused_cleanly(text: str) -> None:
    refusal({"random.yaml": text})


@bounded(300)
@given(st.one_of(envelopes, structures), st.booleans())
@example({"apiVersion": API_VERSION, "kind": "Workflow", "metadata": {"name": "x"}, "spec": {"\x1b[2J": 1}},
         False).via("a terminal escape in a key was printed as it is")
def test_any_yaml_structure_loads_or_is_refused_cleanly(value: Any, flow: bool) -> None:
    try:
        text = dump(value, default_flow_style=flow)
    except yaml.YAMLError:
        return
    refusal({"random.yaml": text})


# --------------------------------------------------------------------------------------------------
# files and the CLI


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    assert "Traceback" not in out.getvalue() + err.getvalue()
    assert "internal error" not in err.getvalue(), err.getvalue()
    return code, out.getvalue(), err.getvalue()


def write(folder: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8", errors="surrogatepass")


def check_cli_refusal(code: int, err: str, root: Path, expected: list[Issue]) -> None:
    """Exit 2 and, under one header line, one line per issue, each naming the file and line."""
    assert code == 2, err
    header, *lines = err.split("\n")[:-1]
    assert header.startswith("error: ") and "in the input" in header, err
    assert sorted(lines) == sorted(f"  {issue}" for issue in expected), err
    for line in lines:
        assert re.match(rf"  {re.escape(str(root))}/\S+:\d+: ", line), line


@bounded(60)
@given(mutations())
def test_cli_validate_exits_2_with_located_issues(case: tuple) -> None:
    folder, kind, doc, _path, _how, _value = case
    text = dump(doc)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = folder_texts(folder, kind, text)
        write(root, files)
        expected = refusal({str(root / name): content for name, content in files.items()})
        code, _, err = cli("validate", "-f", str(root / folder))
        if expected:
            check_cli_refusal(code, err, root, expected)
        else:
            assert code == 0 and err == "", err


@bounded(100)
@given(st.one_of(st.binary(max_size=300), st.builds(lambda head, tail: head + tail, st.sampled_from(
    [TEXTS["digits", "Workflow"].encode(), b"\xef\xbb\xbf", b"a: 1\n", b""]), st.binary(min_size=1, max_size=50))))
@example(b"a: 1\nb: \x00\n").via("a NUL byte had no line")
def test_random_bytes_in_a_file_exit_2_or_load(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bytes.yaml"
        path.write_bytes(content)
        try:
            load_documents([path])
        except SpecError as exc:
            as_text = {str(path): content.decode("utf-8", errors="replace")}  # the same lines, if not the same text
            for issue in exc.issues:
                check_issue(issue, as_text, {str(path): False})
            code, _, err = cli("validate", "-f", str(path))
            assert code == 2 and f"{path}:" in err, err
        else:
            code, _, err = cli("validate", "-f", str(path))
            assert code in (0, 2), err  # documents that load may still not make a workflow


#: Numbers the planner must never see unchecked: each makes a field's value absurd, not its type.
#: A document's numbers are 0 or between 1e-9 and 1e9 in magnitude (jellybean.spec.common): the bounds
#: themselves must plan (or be found infeasible), never fail inside the solver.
NUMBERS = [math.nan, math.inf, -math.inf, 1e308, -1e308, 1e15, 10**30, 1e9, -1e9, 999_999_999, 5e-324, 1e-300, 1e-9,
           -1, 0]


def numeric_paths(doc: Any) -> list[tuple]:
    return [p for p in all_paths(doc) if p and isinstance(get(doc, p), (int, float)) and not isinstance(get(doc, p), bool)]


@st.composite
def absurd_numbers(draw: st.DrawFn) -> tuple[str, str, tuple, float]:
    """(folder, kind, path of a number in that document, the number to put there)."""
    folder, kind = draw(documents)
    return folder, kind, draw(st.sampled_from(numeric_paths(VALUES[folder, kind]))), draw(st.sampled_from(NUMBERS))


@bounded(40)
@given(absurd_numbers())
@example(("digits", "Workflow", ("spec", "slo", "accuracy"), math.nan)).via("NaN reached the solver (PulpError)")
@example(("digits", "Workflow", ("spec", "sources", 0, "rate_per_s"), 1e308)).via("an infinite bound (PulpError)")
@example(("vehicle-tracking", "ModelZoo", ("spec", "tasks", 1, "variants", 0, "accuracy_profile", 0, "inputs",
                                           "vehicle-detection"), 1e308)).via("HiGHS refused the model (IndexError)")
def test_cli_plan_never_fails_internally_on_absurd_numbers(case: tuple[str, str, tuple, float]) -> None:
    folder, kind, path, number = case
    doc = copy.deepcopy(VALUES[folder, kind])
    assert path in numeric_paths(doc)
    get(doc, path[:-1])[path[-1]] = number
    with tempfile.TemporaryDirectory() as tmp:
        write(Path(tmp), folder_texts(folder, kind, dump(doc)))
        code, _, err = cli("plan", "-f", str(Path(tmp) / folder), "--no-baselines", "--time-limit", "5",
                           "--format", "json")
    assert code in (0, 1, 2), err
    if not (number == 0 or MIN_MAGNITUDE <= abs(number) <= MAX_MAGNITUDE):  # also NaN and infinities
        assert code == 2, err  # refused as invalid input, before any planning
