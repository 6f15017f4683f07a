"""Runners and datasets come from installed packages' entry points (jellybean.plugins): a package
installed into a temporary environment registers a runner and a dataset, and validation, the
replica host and the dataset lookup find them by name, as they find the digits plugin."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from jellybean import plugins
from jellybean.runtime.hosts import ReplicaHost
from jellybean.runtime.worker import COMPLETED, pack_messages

PACKAGE = '''
def doubler(*, cache_dir, threads=1):
    def run(messages):
        return [[{"y": 2 * m["x"]}] for m in messages]
    return run

def joiner(*, cache_dir, threads=1):
    return lambda messages: [[] for _ in messages]
joiner.stateful = True
joiner.task = "joining"

def numbers(seed):
    return [{"x": seed + k} for k in range(3)]
'''

ENTRY_POINTS = '''[jellybean.runners]
test-doubler = my_runners:doubler
test-joiner = my_runners:joiner

[jellybean.datasets]
test-numbers = my_runners:numbers
'''


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``my_runners`` installed into a directory on sys.path, with its distribution metadata (what
    pip writes: a .dist-info holding METADATA and entry_points.txt)."""
    (tmp_path / "my_runners.py").write_text(PACKAGE)
    info = tmp_path / "my_runners-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-runners\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins._group.cache_clear()
    plugins._load.cache_clear()
    yield tmp_path
    sys.modules.pop("my_runners", None)
    plugins._group.cache_clear()
    plugins._load.cache_clear()


def test_an_installed_package_registers_runners_and_datasets(installed: Path) -> None:
    assert {"test-doubler", "test-joiner", "digits-detector-small"} <= set(plugins.runner_names())
    assert plugins.load_runner("test-doubler", installed)([{"x": 3}]) == [[{"y": 6}]]
    assert plugins.is_stateful("test-joiner") and not plugins.is_stateful("test-doubler")
    assert plugins.describe_runner("test-joiner")["package"] == "my-runners"
    assert plugins.load_dataset("test-numbers", seed=10) == [{"x": 10}, {"x": 11}, {"x": 12}]


def test_an_unregistered_name_says_what_is_registered_and_what_was_meant(installed: Path) -> None:
    with pytest.raises(plugins.UnknownPlugin) as info:
        plugins.load_runner("test-dubler", installed)
    assert "did you mean 'test-doubler'?" in str(info.value) and f"... and {len(plugins.runner_names()) - 8} more)" in str(info.value)
    with pytest.raises(plugins.UnknownPlugin, match="unknown dataset 'nope'"):
        plugins.load_dataset("nope")
    assert not plugins.is_stateful("nope")


def test_a_replica_host_serves_a_plugin_runner_by_name(installed: Path) -> None:
    spec = {"key": "double/0", "site": "hub", "stages": ["double"], "runners_of": [{"runner": "test-doubler", "artifact": None}], "batch_sizes": [4],
            "threads": 1, "consumers": {}, "sink": "double", "cache_dir": str(installed), "transport": "inprocess"}

    async def serve() -> dict:
        host = ReplicaHost(spec)
        await host.setup()
        outcome = await host.push(pack_messages([{"frame_id": f"f{k}", "x": k} for k in range(3)]))
        await host.close()
        return outcome

    outcome = asyncio.run(serve())
    assert {fid: end[0] for fid, end in outcome["ends"].items()} == {"f0": COMPLETED, "f1": COMPLETED, "f2": COMPLETED}


def test_lists_are_cut_with_a_count_never_silently() -> None:
    assert plugins.listed([f"n{k}" for k in range(10)], at_most=3) == "n0, n1, n2, ... and 7 more"
    assert plugins.listed([]) == "none"


def test_a_package_pip_installs_into_a_fresh_target_and_jellybean_serves_its_runner(tmp_path: Path) -> None:
    """The real installation path: a project with ``[project.entry-points."jellybean.runners"]`` in its
    pyproject.toml, built and installed by pip (no index, no network) into an empty target directory;
    a separate `jellybean` process with that directory on its path lists the runner, validates a zoo
    that names it, and refuses a misspelling of it."""
    import os
    import subprocess

    project = tmp_path / "project"
    (project / "my_runners").mkdir(parents=True)
    (project / "my_runners" / "__init__.py").write_text(PACKAGE)
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "my-runners"\nversion = "1.0"\n\n'
        '[project.entry-points."jellybean.runners"]\ntest-doubler = "my_runners:doubler"\n')
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                          "--no-build-isolation", "--disable-pip-version-check", "--target", str(target), str(project)],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    assert any(p.name.startswith("my_runners-1.0") and p.suffix == ".dist-info" for p in target.iterdir())
    env = {**os.environ, "PYTHONPATH": str(target)}
    jellybean = str(Path(sys.executable).parent / "jellybean")
    listed = subprocess.run([jellybean, "zoo", "list"], capture_output=True, text=True, env=env, timeout=120)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith("test-doubler"))
    assert "my-runners" in row
    zoo = tmp_path / "zoo.yaml"
    variant = ("apiVersion: jellybean.io/v1alpha1\nkind: ModelZoo\nmetadata: {name: mine}\nspec:\n  tasks:\n"
               "  - name: doubling\n    variants:\n    - {name: d, accuracy: 1, output_kb: 1, runner: %s,\n"
               "       profiles: [{hardware: local-cpu-1t, latency_ms: {1: 1.0}}]}\n")
    zoo.write_text(variant % "test-doubler")
    ok = subprocess.run([jellybean, "validate", "-f", str(zoo)], capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    zoo.write_text(variant % "test-dubler")
    bad = subprocess.run([jellybean, "validate", "-f", str(zoo)], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "did you mean 'test-doubler'?" in bad.stderr
