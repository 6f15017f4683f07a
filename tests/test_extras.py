"""A part whose extra is not installed says which extra to install: a user's error (exit 2, one
line), not a traceback. Packages are made missing the way Python blocks an import (``None`` in
sys.modules), so the real import machinery raises the real ModuleNotFoundError."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from jellybean.cli import COMMANDS, main
from jellybean.extras import MissingExtra, missing_extra, require

ROOT = Path(__file__).resolve().parents[1]
VEHICLES = ROOT / "workflows" / "vehicle-tracking"


def block(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    """Make ``package`` (and every module of it) unimportable for this test."""
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, package, None)


def test_plan_render_without_matplotlib_names_the_viz_extra_before_planning(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    block(monkeypatch, "matplotlib")
    picture = tmp_path / "plan.svg"
    code = main(["plan", "-f", str(VEHICLES), "--no-baselines", "--render", str(picture)])
    out, err = capsys.readouterr()
    assert code == 2
    assert err.strip() == ("error: drawing a picture needs matplotlib, which Jellybean's 'viz' extra installs: "
                           "pip install 'jellybean[viz]'")
    assert out == "" and not picture.exists()  # refused before any work


def test_plan_without_render_needs_no_matplotlib(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    block(monkeypatch, "matplotlib")
    assert main(["plan", "-f", str(VEHICLES), "--no-baselines", "--format", "json"]) == 0
    assert '"feasible": true' in capsys.readouterr().out


def test_drawing_from_the_library_raises_missing_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from jellybean.optimizer import plan as make_plan
    from jellybean.spec import load_bundle
    from jellybean.viz.plan_render import layout_plan, render_plan

    bundle = load_bundle([VEHICLES])
    result = make_plan(bundle, baselines=False)
    block(monkeypatch, "matplotlib")
    assert layout_plan(result, bundle.topology).boxes  # the layout is pure data: no matplotlib needed
    with pytest.raises(MissingExtra) as raised:
        render_plan(result, bundle.topology, tmp_path / "plan.png")
    assert (raised.value.module, raised.value.distribution, raised.value.extra) == ("matplotlib", "matplotlib", "viz")
    assert isinstance(raised.value, ImportError)  # callers that go on without pictures catch ImportError


def test_any_command_missing_a_runtime_package_names_the_runtime_extra(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Whatever command imports a package of an extra that is missing, main says which extra."""
    def needs_torch(args) -> int:
        import torch.nn  # noqa: F401

        return 0

    block(monkeypatch, "torch")
    monkeypatch.setitem(COMMANDS, "plan", dataclasses.replace(COMMANDS["plan"], run=needs_torch))
    assert main(["plan", "-f", str(VEHICLES)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("error: jellybean plan needs torch, which Jellybean's 'runtime' extra installs: "
                           "pip install 'jellybean[runtime]'")


def test_an_import_error_that_is_a_bug_stays_an_internal_error(monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    def broken(args) -> int:
        import jellybean.no_such_module  # noqa: F401

        return 0

    monkeypatch.setitem(COMMANDS, "plan", dataclasses.replace(COMMANDS["plan"], run=broken))
    monkeypatch.delenv("JELLYBEAN_DEBUG", raising=False)
    assert main(["plan", "-f", str(VEHICLES)]) == 3
    assert capsys.readouterr().err.startswith("internal error: ModuleNotFoundError: No module named 'jellybean.no_such")


def test_missing_extra_tells_a_missing_package_from_a_missing_module_of_an_installed_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # yaml is installed: a module missing inside it is a broken or mismatched install, not an extra.
    assert missing_extra(ModuleNotFoundError("No module named 'yaml.nothing'", name="yaml.nothing")) is None
    assert missing_extra(ModuleNotFoundError("No module named 'left_pad'", name="left_pad")) is None
    assert missing_extra(ImportError("cannot import name 'x' from 'yaml'", name="yaml")) is None
    block(monkeypatch, "kubernetes")
    missing = missing_extra(ModuleNotFoundError(name="kubernetes.client"), "jellybean operator")
    assert str(missing) == ("jellybean operator needs kubernetes, which Jellybean's 'k8s' extra installs: "
                            "pip install 'jellybean[k8s]'")
    with pytest.raises(MissingExtra, match=r"pip install 'jellybean\[k8s\]'"):
        require("kubernetes.client", "the operator")
    block(monkeypatch, "yaml")
    assert "every Jellybean install brings" in str(missing_extra(ModuleNotFoundError(name="yaml")))


def test_require_returns_the_module_when_it_is_installed() -> None:
    import yaml

    assert require("yaml", "reading documents") is yaml
