"""Where the benchmarks write: only a full run replaces the committed results in bench/results; a
quick (shorter, partial) run writes where ``--out`` says, or nowhere. The decision is a pure function
of the command line, tested here without running a drill."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def resilience():
    """bench/resilience.py as a module (it puts bench/ on sys.path for its `plan` import: undone after)."""
    path, had_plan = list(sys.path), "plan" in sys.modules
    spec = importlib.util.spec_from_file_location("bench_resilience", ROOT / "bench" / "resilience.py")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path[:] = path
        if not had_plan:
            sys.modules.pop("plan", None)  # bench/plan.py, imported as a top-level module


@pytest.mark.parametrize(("argv", "folder"), [
    ([], ROOT / "bench" / "results"),
    (["--format", "json"], ROOT / "bench" / "results"),
    (["--quick"], None),
    (["--quick", "--format", "json"], None),
    (["--quick", "--out", "/tmp/quick"], Path("/tmp/quick")),
    (["--out", "/tmp/full"], Path("/tmp/full")),
])
def test_only_a_full_run_writes_the_committed_results(resilience, argv: list[str], folder: Path | None) -> None:
    assert resilience.results_folder(resilience.arguments(argv)) == folder
