"""The CLI's human output: plain aligned text off a terminal (pipes, tests, CI: what scripts read),
rich tables on one, the same facts in both, and ``--format json`` the same bytes either way."""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path

import pytest

from jellybean.cli import main
from jellybean.cli.console import Heading, ProgressBar, Table, emit, plain
from jellybean.cli.workflows import workflow_blocks, workflows_blocks

ROOT = Path(__file__).resolve().parents[1]
VQA = ROOT / "workflows" / "vqa-medium"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal(io.StringIO):
    """A stream that says it is a terminal, as a person's would."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> Terminal:
    """A wide colour terminal, whatever the environment the tests run in says. (A test makes it its
    standard output itself: pytest's capture puts its own back between a fixture and the test.)"""
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", "400")
    return Terminal()


def assert_same_facts(plain_text: str, rich_text: str, *, timed: tuple[str, ...] = ("Solver:", "note:")) -> None:
    """Every line of the plain text, rules aside, is in the rich text with the same words in the same
    order (the spacing between them is the renderer's). Lines starting with ``timed`` say how long a
    solve took, which differs between two runs: their first word is looked for only."""
    text = ANSI.sub("", rich_text)
    for line in plain_text.splitlines():
        words = line.split()
        if not words or set(line.replace(" ", "")) == {"-"}:
            continue
        if line.lstrip().startswith(timed):
            words = words[:1]
        assert re.search(r"\s+".join(map(re.escape, words)), text), f"not in the terminal's output: {line!r}"


def test_a_table_off_a_terminal_is_aligned_plain_text() -> None:
    stream = io.StringIO()
    emit([Heading("Models"), Table(["STAGE", "VARIANT", "REQ/S"], [["detect", "yolo-s", 12.5], ["classify", None, 0.0]]),
          "", "done"], stream)
    assert stream.getvalue() == ("Models\n"
                                 "STAGE     VARIANT   REQ/S\n"
                                 "--------  -------  ------\n"
                                 "detect    yolo-s   12.500\n"
                                 "classify  -             0\n"
                                 "\n"
                                 "done\n")


def test_a_table_on_a_terminal_is_drawn_by_rich_with_the_same_cells(terminal: Terminal) -> None:
    blocks = [Heading("Models"), Table(["STAGE", "VARIANT", "REQ/S"], [["detect", "[bold]x[/]", 12.5]])]
    emit(blocks, terminal)
    out = terminal.getvalue()
    assert "\x1b[" in out and "─" in out  # styled, with rich's rule under the header
    assert "[bold]x[/]" in ANSI.sub("", out)  # a cell is text, never markup
    assert_same_facts(plain(blocks), out)


def test_plan_on_a_terminal_shows_what_the_plain_plan_shows(capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch, terminal: Terminal) -> None:
    assert main(["plan", "-f", str(VQA), "--exclusive-instances"]) == 0
    plain_out = capsys.readouterr().out
    assert "Placement" in plain_out and "Baselines" in plain_out
    monkeypatch.setattr(sys, "stdout", terminal)
    assert main(["plan", "-f", str(VQA), "--exclusive-instances"]) == 0
    rich_out = terminal.getvalue()
    assert rich_out != plain_out and "─" in rich_out
    assert_same_facts(plain_out, rich_out)


def test_json_is_the_same_bytes_on_a_terminal(monkeypatch: pytest.MonkeyPatch, terminal: Terminal) -> None:
    piped = io.StringIO()
    monkeypatch.setattr(sys, "stdout", piped)
    assert main(["plan", "-f", str(VQA), "--no-baselines", "--format", "json"]) == 0
    monkeypatch.setattr(sys, "stdout", terminal)
    assert main(["plan", "-f", str(VQA), "--no-baselines", "--format", "json"]) == 0
    on_terminal, piped_text = terminal.getvalue(), piped.getvalue()
    assert on_terminal == json.dumps(json.loads(on_terminal), indent=2) + "\n"  # no colour, no wrapping
    assert untimed(json.loads(on_terminal)) == untimed(json.loads(piped_text))


def untimed(value: object) -> object:
    """A JSON value without the seconds a solve took, and the solver's notes that say them (they
    differ between two runs)."""
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if "seconds" not in k and k != "notes"}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


STATUS = {
    "name": "vqa", "phase": "Running", "generation": 2, "running_generation": 2, "message": "",
    "last_failure": {"reason": "StartFailed", "at": 1_700_000_000.0, "attempts": 2, "message": "no CPUs at edge-1"},
    "plan": {"strategy": "optimal", "cost_per_hour": 7.5, "accuracy": 61.2, "accuracy_target": 56.0,
             "latency_ms_p90": 120.0},
    "stages": [{"stage": "detect", "site": "edge-1", "variant": "yolo-s", "variant_running": "yolo-s",
                "replicas_alive": 1, "replicas_planned": 2, "rate_planned_per_s": 30.0, "rate_measured_per_s": 28.5}],
    "frames": {"sent": 100, "completed": 97, "failed": 1, "in_flight": 2, "lost": 0},
    "throughput_per_s": 29.5, "accuracy_measured": 60.1,
    "endpoints": [{"kind": "ingest", "name": "cameras", "site": "edge-1", "url": "http://127.0.0.1:9000/ingest"}],
    "events": [{"at": 1_700_000_100.0, "event": "started", "detail": {"generation": 2}}],
}
ROW = {"name": "vqa", "phase": "Running", "generation": 2, "running_generation": 2, "cost_per_hour": 7.5,
       "accuracy": 61.2, "accuracy_measured": 60.1, "throughput_per_s": 29.5, "frames_lost": 0, "replicas_alive": 1,
       "replicas_planned": 2, "applied_at": 1_700_000_000.0, "message": "", "last_failure": None}


@pytest.mark.parametrize("blocks", [workflow_blocks(STATUS), workflows_blocks([ROW]), workflows_blocks([])],
                         ids=["one", "all", "none"])
def test_status_on_a_terminal_shows_what_the_plain_status_shows(blocks: list, terminal: Terminal) -> None:
    emit(blocks, terminal)
    assert_same_facts(plain(blocks), terminal.getvalue())


def test_status_plain_text_says_the_failure_the_frames_and_the_endpoints() -> None:
    text = plain(workflow_blocks(STATUS))
    assert text.startswith("Workflow vqa: Running (generation 2, running 2)")
    assert "attempt 2): no CPUs at edge-1" in text
    assert "Frames: sent 100, completed 97, failed 1, in flight 2, lost 0" in text
    assert "Measured: 29.5 frames/s, accuracy 60.10" in text
    assert "http://127.0.0.1:9000/ingest" in text


def test_progress_off_a_terminal_is_a_line_per_step_at_most_one_per_interval() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream)
    bar("train", 0.0)
    bar("train", 0.5)  # the same step: no new line
    bar("profile", 0.5)
    bar.close()
    assert stream.getvalue().splitlines() == [f"[{'.' * 30}]   0% train", f"[{'#' * 15}{'.' * 15}]  50% profile"]
    stream = io.StringIO()
    live = ProgressBar(stream, plain_every_s=3600)
    for k in range(10):
        live(f"sent {k}", k / 10)
    live("sent 10", 1.0)  # the end is always said
    assert stream.getvalue().splitlines() == [f"[{'.' * 30}]   0% sent 0", f"[{'#' * 30}] 100% sent 10"]


def test_progress_on_a_terminal_is_rich(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    stream = Terminal()
    bar = ProgressBar(stream)
    bar("train", 0.25)
    bar("train", 1.0)
    bar.close()
    out = ANSI.sub("", stream.getvalue())
    assert "train" in out and "100%" in out
