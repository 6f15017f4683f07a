"""Hostile and broken YAML is refused cleanly: a SpecError naming the file (and the line where it
applies), never another exception, never a hang, never code execution. Then a property test: for
any text and any mutation of a valid document, ``load_text`` succeeds or raises SpecError."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jellybean.spec import SpecError, load_documents, load_text, resolve
from jellybean.spec import loader
from jellybean.spec.errors import Issue
from tests.spec.test_documents import TOPOLOGY, WORKFLOW, ZOO, edit, line_of

FILE = "hostile.yaml"


def refused(text: str, file: str = FILE) -> list[Issue]:
    started = time.perf_counter()
    with pytest.raises(SpecError) as info:
        load_text(text, file)
    assert time.perf_counter() - started < 30, "took too long: the guards must bound the work"
    issues = info.value.issues
    assert issues
    for issue in issues:
        assert issue.file == file and issue.message
    return issues


def refused_file(path: Path) -> list[Issue]:
    with pytest.raises(SpecError) as info:
        load_documents([path])
    issues = info.value.issues
    assert issues
    for issue in issues:
        assert issue.file == str(path) and issue.message
    return issues


@pytest.fixture
def no_os_system(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if anything ever gets as far as running a command."""
    def boom(*args: Any, **kwargs: Any) -> int:
        raise AssertionError("os.system was called")
    monkeypatch.setattr(os, "system", boom)


# --- resource exhaustion --------------------------------------------------------------------


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    lines = ["a0: &a0 [" + ", ".join(['"lol"'] * width) + "]"]
    for level in range(1, levels):
        lines.append(f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused() -> None:
    text = billion_laughs()  # 9 ** 9 = 387 million strings once expanded
    assert len(text) < 1000
    issues = refused(text)
    assert len(issues) == 1
    assert "alias bomb" in issues[0].message
    assert issues[0].line is not None and 1 <= issues[0].line <= 9


def test_the_value_budget_holds_per_load_not_per_file() -> None:
    """Ten bombs that are each well under the budget spend it together: the load stops at the file
    where it runs out and looks at no file after it."""
    small = billion_laughs(levels=5, width=10)
    one = loader.Budget()
    loader.parse_yaml(small, "one.yaml", one)
    assert 100_000 < one.values < loader.MAX_VALUES // 5
    files = [(f"bomb-{i}.yaml", small) for i in range(10)]
    budget = loader.Budget()
    with pytest.raises(SpecError) as info:
        loader.load_texts(files, budget=budget)
    last = loader.MAX_VALUES // one.values  # the file that spends the budget; none after it is read
    assert {i.file for i in info.value.issues} == {f"bomb-{k}.yaml" for k in range(last + 1)}
    (issue,) = [i for i in info.value.issues if i.file == f"bomb-{last}.yaml"]
    assert "values in one load (an alias bomb?)" in issue.message and issue.path.startswith("a")
    assert loader.MAX_VALUES < budget.values <= loader.MAX_VALUES + one.values


def test_the_byte_budget_holds_per_load() -> None:
    budget = loader.Budget(max_bytes=len(ZOO) * 2)
    with pytest.raises(SpecError) as info:
        loader.load_texts([("a.yaml", ZOO), ("b.yaml", ZOO), ("c.yaml", ZOO)], budget=budget)
    (issue,) = info.value.issues
    assert issue.file == "c.yaml" and f"more than {len(ZOO) * 2} bytes of YAML in one load" in issue.message


def test_the_budget_is_counted_before_anything_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bomb is refused from the event stream alone: no node is composed, no value built."""
    def composed(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("composed before the budget was checked")
    monkeypatch.setattr(loader.yaml, "compose_all", composed)
    (issue,) = refused(billion_laughs())
    assert "alias bomb" in issue.message


def test_a_few_aliases_are_fine() -> None:
    text = edit(WORKFLOW, "    sites: [edge]\n", "    sites: &where [edge]\n  - name: cam2\n    rate_per_s: 1\n"
                "    payload_kb: 1\n    sites: *where\n")
    text = edit(text, "inputs: [cam]", "inputs: [cam, cam2]")
    (doc,) = load_text(text)
    assert doc.model.spec.sources[1].sites == ["edge"]


def test_alias_bomb_inside_a_document_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "MAX_VALUES", 10_000)  # the full-size guard is timed above; this is about where
    nested = billion_laughs().replace("\n", "\n  ").rstrip() + "\n"
    text = edit(WORKFLOW, "metadata:\n", "x-bomb:\n  " + nested + "metadata:\n")
    (issue,) = refused(text)
    assert "alias bomb" in issue.message and issue.path.startswith("x-bomb.a")


@pytest.mark.parametrize("text", ["a: &a [*a]\n", "a: &a {b: *a}\n", "- &x [1, [2, *x]]\n"],
                         ids=["list", "mapping", "nested"])
def test_recursive_alias_is_refused(text: str) -> None:
    (issue,) = refused(text)
    assert "nesting deeper than" in issue.message and issue.line == 1


def test_alias_nesting_past_the_depth_limit_is_refused() -> None:
    # Each alias nests the previous one: shallow tokens, deep values.
    lines = ["a0: &a0 [[[[[[[[[[1]]]]]]]]]]"]
    for level in range(1, 10):
        lines.append(f"a{level}: &a{level} [[[[[[[[[[*a{level - 1}]]]]]]]]]]")
    (issue,) = refused("\n".join(lines) + "\n")
    assert "nesting deeper than" in issue.message


@pytest.mark.parametrize("style", ["flow", "flow-unclosed", "block-mapping", "block-sequence"])
def test_deep_nesting_is_refused(style: str) -> None:
    depth = 10_000 if style.startswith("flow") else 2_000  # block styles: 4 MB of indentation, under the byte budget
    if style == "flow":
        text = "[" * depth + "]" * depth + "\n"
    elif style == "flow-unclosed":
        text = "a: " + "[" * depth + "\n"
    elif style == "block-mapping":
        text = "".join("  " * i + f"k{i}:\n" for i in range(depth)) + "  " * depth + "leaf\n"
    else:
        text = "".join("  " * i + "-\n" for i in range(depth)) + "  " * depth + "leaf\n"
    (issue,) = refused(text)
    if style.startswith("flow") and "exceeded maximum nesting depth" in issue.message:
        pass  # libyaml (CSafeLoader) stops deep flow collections itself, before our token check
    else:
        assert issue.message == f"nesting deeper than {loader.MAX_DEPTH} levels"
    assert issue.hint
    # The line where the limit is crossed.
    assert issue.line == (1 if style.startswith("flow") else loader.MAX_DEPTH + 1)


def test_nesting_at_the_limit_is_not_refused_for_depth() -> None:
    text = "a: " + "[" * (loader.MAX_DEPTH - 1) + "]" * (loader.MAX_DEPTH - 1) + "\n"
    issues = refused(text)  # no apiVersion, but parsed fine
    assert issues[0].path == "apiVersion"


def test_file_over_the_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "MAX_FILE_BYTES", 100)
    path = tmp_path / "big.yaml"
    path.write_text(ZOO)
    (issue,) = refused_file(path)
    assert issue.message == f"file is {len(ZOO)} bytes, more than 100"
    assert issue.line is None and issue.hint


def test_endless_device_is_refused() -> None:
    # Jellybean runs on Linux, where /dev/zero always exists: an endless file that reports size 0.
    (issue,) = refused_file(Path("/dev/zero"))
    assert issue.message == "not a regular file: a character device" and issue.hint


# --- tags: nothing but plain values ---------------------------------------------------------

PYTHON_TAGS = [
    '!!python/object/apply:os.system ["echo pwned"]\n',
    'x: !!python/object/apply:os.system ["echo pwned"]\n',
    "x: !!python/object/apply:os.system\n  args: [echo pwned]\n",
    "x: !!python/object/new:os.system [echo pwned]\n",
    "x: !!python/name:os.system\n",
    "x: !!python/module:os\n",
    "x: !!python/object:collections.OrderedDict {}\n",
    "x: !!python/tuple [1, 2]\n",
    "x: !!python/str abc\n",
    "x: !!python/bytes YWJj\n",
    "x: !!python/complex 1+2j\n",
]


@pytest.mark.parametrize("text", PYTHON_TAGS)
def test_python_tags_are_refused(text: str, no_os_system: None) -> None:
    (issue,) = refused(text)
    assert "python/" in issue.message
    assert issue.line == line_of(text, "!!python")
    assert issue.hint


def test_python_tag_inside_a_valid_document_is_refused(no_os_system: None) -> None:
    text = edit(WORKFLOW, "  name: wf\n", "  name: wf\n  labels: !!python/object/apply:os.system {args: [echo pwned]}\n")
    (issue,) = refused(text, "wf.yaml")
    assert issue.path == "metadata.labels"
    assert issue.line == line_of(text, "labels:")
    assert "python/object/apply:os.system" in issue.message


@pytest.mark.parametrize(("text", "tag"), [
    ("x: !!binary aGVsbG8=\n", "binary"),
    ("x: !!binary |\n  aGVsbG8=\n", "binary"),
    ("x: !!set {a: null}\n", "set"),
    ("x: !!omap [{a: 1}]\n", "omap"),
    ("x: !!pairs [{a: 1}]\n", "pairs"),
    ("x: 2001-12-14\n", "timestamp"),
    ("x: !!timestamp 2001-12-14t21:59:43.10-05:00\n", "timestamp"),
    ("x: !custom {a: 1}\n", "!custom"),
    ("x: !custom value\n", "!custom"),
    ("x: !!map abc\n", "map"),
    ("x: !!seq abc\n", "seq"),
])
def test_other_tags_are_refused(text: str, tag: str) -> None:
    (issue,) = refused(text)
    assert tag in issue.message
    assert issue.line == 1 and issue.path == "x"


@pytest.mark.parametrize("text", [
    "x: !!int abc\n", "x: !!int 0b\n", "x: !!float abc\n", "x: !!bool maybe\n", "x: !!timestamp foo\n",
    "x: " + "9" * 5000 + "\n",  # past Python's int-to-string digit limit
])
def test_malformed_scalars_are_refused(text: str) -> None:
    (issue,) = refused(text)
    assert issue.line == 1 and issue.path == "x"
    assert "invalid" in issue.message or "unsupported" in issue.message


def test_plain_tags_are_fine() -> None:
    (doc,) = load_text(edit(WORKFLOW, "rate_per_s: 10", "rate_per_s: !!float 10"))
    assert doc.model.spec.sources[0].rate_per_s == 10.0
    (doc,) = load_text(edit(WORKFLOW, "name: wf", "name: !!str wf"))
    assert doc.model.metadata.name == "wf"


# --- bytes ----------------------------------------------------------------------------------


def test_nul_bytes_in_a_file(tmp_path: Path) -> None:
    path = tmp_path / "nul.yaml"
    path.write_bytes(WORKFLOW.encode() + b"\x00\x00")
    (issue,) = refused_file(path)
    assert "NUL" in issue.message


def test_nul_in_text() -> None:
    (issue,) = refused("a: 1\nb: \x00\n")
    assert "invalid YAML" in issue.message and "#x0000" in issue.message


def test_non_utf8_bytes_in_a_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(WORKFLOW.replace("name: wf", "name: caf\u00e9").encode("latin-1"))
    (issue,) = refused_file(path)
    assert issue.message == "not valid UTF-8 text"
    assert issue.line == line_of(WORKFLOW, "name: wf")


def test_utf8_bom_and_crlf_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "windows.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + WORKFLOW.replace("\n", "\r\n").encode())
    (doc,) = load_documents([path])
    assert doc.model.metadata.name == "wf"


# --- structure ------------------------------------------------------------------------------


def test_duplicate_keys_are_refused() -> None:
    text = edit(WORKFLOW, "    payload_kb: 100\n", "    payload_kb: 100\n    rate_per_s: 20\n")
    (issue,) = refused(text)
    assert issue.message == "duplicate key 'rate_per_s'"
    assert issue.path == "spec.sources[0].rate_per_s"
    assert issue.line == line_of(text, "rate_per_s: 20")


def test_duplicate_top_level_key() -> None:
    (issue,) = refused("apiVersion: jellybean.io/v1alpha1\nkind: Workflow\nkind: Topology\n")
    assert (issue.line, issue.path, issue.message) == (3, "kind", "duplicate key 'kind'")


def test_merge_keys_are_refused() -> None:
    text = edit(TOPOLOGY, "  sites:\n", "  x-defaults: &d {hardware: cpu}\n  sites:\n")
    text = edit(text, "    - name: box\n      hardware: cpu\n", "    - name: box\n      <<: *d\n")
    (issue,) = refused(text)
    assert "merge keys" in issue.message
    assert issue.line == line_of(text, "<<:")
    assert issue.path == "spec.sites[1].instances[0]"


def test_complex_keys_are_refused() -> None:
    (issue,) = refused("? [a, b]\n: 1\n")
    assert "mapping keys must be plain scalars" in issue.message


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n", "null\n", "[]\n"])
def test_a_document_must_be_a_mapping(text: str) -> None:
    (issue,) = refused(text)
    assert issue.message == "a document must be a mapping" and issue.line == 1


def test_non_mapping_second_document_is_located() -> None:
    text = WORKFLOW + "---\n- a\n"
    (issue,) = refused(text)
    assert issue.message == "a document must be a mapping" and issue.line == line_of(text, "- a")


@pytest.mark.parametrize("version", ["v1", "jellybean.io/v1", "jellybean.io/v1beta1", "1"])
def test_wrong_api_version(version: str) -> None:
    text = edit(WORKFLOW, "apiVersion: jellybean.io/v1alpha1", f"apiVersion: {version}")
    (issue,) = refused(text)
    assert issue.path == "apiVersion" and issue.line == 1
    assert "unsupported apiVersion" in issue.message and "jellybean.io/v1alpha1" in issue.hint


def test_missing_api_version() -> None:
    text = edit(WORKFLOW, "apiVersion: jellybean.io/v1alpha1\n", "")
    (issue,) = refused(text)
    assert issue.path == "apiVersion" and issue.message == "unsupported apiVersion None"


@pytest.mark.parametrize("kind", ["Pod", "workflow", "[Workflow]", "null"])
def test_unknown_kind(kind: str) -> None:
    text = "\n" * 3 + edit(WORKFLOW, "kind: Workflow", f"kind: {kind}")
    (issue,) = refused(text)
    assert issue.path == "kind" and issue.line == 5
    assert "unknown kind" in issue.message and "ModelZoo, Topology, Workflow" in issue.hint


def test_invalid_yaml_syntax_is_located() -> None:
    text = edit(WORKFLOW, "    payload_kb: 100\n", "    payload_kb: [100\n")
    (issue,) = refused(text)
    assert issue.message.startswith("invalid YAML")
    assert issue.line is not None and issue.line >= line_of(text, "payload_kb")


def test_tab_indentation_is_located() -> None:
    (issue,) = refused("a:\n\tb: 1\n")
    assert issue.line == 2 and "invalid YAML" in issue.message


def test_errors_in_several_documents_of_one_file_are_all_reported() -> None:
    text = edit(ZOO, "{1: 10}", "{1: 0}") + "---\n" + edit(WORKFLOW, "kind: Workflow", "kind: Nope")
    issues = refused(text)
    assert [i.path for i in issues] == ["spec.tasks[0].variants[0].profiles[0].latency_ms", "kind"]
    assert issues[1].line == line_of(text, "kind: Nope")


# --- files and folders ----------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    (issue,) = refused_file(path)
    assert issue.message == "no such file or folder" and issue.line is None


def test_empty_folder(tmp_path: Path) -> None:
    (issue,) = refused_file(tmp_path)
    assert issue.message == "folder holds no .yaml or .yml files"


def test_folder_without_yaml_files(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# hi\n")
    (tmp_path / "zoo.json").write_text("{}")
    (issue,) = refused_file(tmp_path)
    assert "no .yaml or .yml files" in issue.message


@pytest.mark.parametrize("text", ["", "# nothing here\n", "---\n---\n"], ids=["empty", "comment", "separators"])
def test_a_file_without_documents_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    (issue,) = refused_file(path)
    assert issue.message == f"no documents in {path}" and issue.hint


def test_a_folder_without_documents_is_refused_but_an_empty_file_among_others_is_not(tmp_path: Path) -> None:
    (tmp_path / "empty.yaml").write_text("")
    (issue,) = refused_file(tmp_path)
    assert issue.message == f"no documents in {tmp_path}"
    (tmp_path / "zoo.yaml").write_text(ZOO)
    assert [d.model.kind for d in load_documents([tmp_path])] == ["ModelZoo"]


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """Opening a FIFO for reading blocks until a writer comes: `-f fifo` must be refused, not hang
    (a subprocess with a deadline, so a regression fails instead of hanging the suite)."""
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    done = subprocess.run([sys.executable, "-m", "jellybean", "validate", "-f", str(fifo)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"{fifo}: not a regular file: a FIFO (named pipe)" in done.stderr and "Traceback" not in done.stderr
    # In a folder, a FIFO is not a file to read: skipped like any other non-file.
    (tmp_path / "zoo.yaml").write_text(ZOO)
    assert [d.model.kind for d in load_documents([tmp_path])] == ["ModelZoo"]


def test_folder_is_searched_recursively_and_sorted(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "zoo.yml").write_text(ZOO)
    (tmp_path / "a.yaml").write_text(TOPOLOGY)
    (tmp_path / "c.yaml").write_text(WORKFLOW)
    (tmp_path / "notes.txt").write_text("not: yaml: at all: [")
    documents = load_documents([tmp_path])
    assert [Path(d.source.file).name for d in documents] == ["a.yaml", "zoo.yml", "c.yaml"]


# --- property: never anything but SpecError ------------------------------------------------

YAML_PIECES = [
    "{", "}", "[", "]", ":", ": ", "- ", ",", "&a ", "*a", "!!python/tuple ", "!!str ", "!!binary ",
    "!!int ", "!!float ", "!!bool ", "!!set ", "!!timestamp ", "!x ", "<<: ", "? ", "|", ">", "'", '"', "#",
    "%YAML 1.1\n", "---\n", "...\n", "\n", "\n  ", "\t", "~", "null", "true", "yes", "1", "-1", "0x1f", "1e9",
    ".inf", ".nan", "1:2", "2001-12-14", "apiVersion: jellybean.io/v1alpha1\n", "kind: Workflow\n",
    "kind: ModelZoo\n", "kind: Topology\n", "metadata:\n  name: x\n", "spec:\n", "  ", "a", "\u00e9", "\\",
    "\x85", "\ufeff", "\x07",
]

yaml_ish = st.one_of(
    st.text(max_size=300),
    st.lists(st.sampled_from(YAML_PIECES), max_size=60).map("".join),
    st.lists(st.one_of(st.sampled_from(YAML_PIECES), st.text(max_size=5)), max_size=40).map("".join),
)

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12),
                    st.sampled_from(["", "cam", "det", "cloud", "edge", "small", "-1", "0", "1e400"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3),
    st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), inner, max_size=3)), max_leaves=8)
UNKNOWN_KEYS = st.one_of(st.sampled_from(["rate_per_sec", "nmae", "from_", "form", "status", "x", "1", "<<"]),
                         st.text(min_size=1, max_size=10))

BASES = {"ModelZoo": yaml.safe_load(ZOO), "Topology": yaml.safe_load(TOPOLOGY), "Workflow": yaml.safe_load(WORKFLOW)}


def all_paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out += all_paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += all_paths(item, prefix + (index,))
    return out


def get(value: Any, path: tuple) -> Any:
    for part in path:
        value = value[part]
    return value


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, dict]:
    kind = draw(st.sampled_from(sorted(BASES)))
    doc = copy.deepcopy(BASES[kind])
    for _ in range(draw(st.integers(1, 4))):
        paths = all_paths(doc)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["delete", "replace", "insert", "duplicate"]))
        if not path:
            if op == "replace":
                doc = draw(values)
            continue
        parent = get(doc, path[:-1]) if isinstance(doc, (dict, list)) else None
        if parent is None:
            continue
        try:
            if op == "delete":
                del parent[path[-1]]
            elif op == "replace":
                parent[path[-1]] = draw(values)
            elif op == "insert":
                target = get(doc, path)
                if isinstance(target, dict):
                    target[draw(UNKNOWN_KEYS)] = draw(values)
                elif isinstance(target, list):
                    target.insert(draw(st.integers(0, len(target))), draw(values))
                else:
                    parent[path[-1]] = draw(values)
            else:  # duplicate a list entry (names repeated) or a value
                target = get(doc, path)
                if isinstance(parent, list):
                    parent.append(copy.deepcopy(target))
        except (KeyError, IndexError, TypeError):
            continue
    return kind, doc


def assert_clean(text: str, file: str = "prop.yaml") -> list:
    try:
        return load_text(text, file)
    except SpecError as exc:
        assert exc.issues, "SpecError without issues"
        for issue in exc.issues:
            assert issue.file == file
            assert isinstance(issue.message, str) and issue.message.strip()
            assert issue.line is None or (isinstance(issue.line, int) and issue.line >= 1)
            str(issue)
        return []


PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    derandomize=True)


@PROPERTY
@given(yaml_ish)
def test_arbitrary_text_loads_or_raises_spec_error(text: str) -> None:
    assert_clean(text)


@PROPERTY
@given(mutated())
def test_mutated_documents_load_or_raise_spec_error(case: tuple[str, Any]) -> None:
    kind, doc = case
    try:
        text = yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)
    except yaml.YAMLError:
        return
    documents = assert_clean(text)
    if documents:
        # What loads must also resolve against the other two documents, or fail cleanly.
        others = [load_text(t)[0] for k, t in (("ModelZoo", ZOO), ("Topology", TOPOLOGY), ("Workflow", WORKFLOW))
                  if k != kind]
        try:
            resolve(documents + others)
        except SpecError as exc:
            assert exc.issues and all(i.message for i in exc.issues)


@PROPERTY
@given(st.sampled_from([ZOO, TOPOLOGY, WORKFLOW]), st.data())
def test_text_edits_of_documents_load_or_raise_spec_error(base: str, data: st.DataObject) -> None:
    lines = base.splitlines(keepends=True)
    for _ in range(data.draw(st.integers(1, 3))):
        index = data.draw(st.integers(0, max(0, len(lines) - 1)))
        op = data.draw(st.sampled_from(["delete", "duplicate", "insert", "splice"]))
        if op == "delete" and lines:
            del lines[index]
        elif op == "duplicate" and lines:
            lines.insert(index, lines[index])
        elif op == "insert":
            lines.insert(index, data.draw(st.sampled_from(YAML_PIECES)) + data.draw(st.text(max_size=10)) + "\n")
        elif lines:
            line = lines[index]
            at = data.draw(st.integers(0, len(line)))
            lines[index] = line[:at] + data.draw(st.sampled_from(YAML_PIECES)) + line[at:]
    assert_clean("".join(lines))
