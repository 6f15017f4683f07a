"""A runner or a dataset that is not registered is a user mistake: refused at validate, at run before
anything starts, and at apply (409), named with what is registered, never as an internal error."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from jellybean.cli import main
from jellybean.runtime.controller import Controller, Rejected, _message, default_servability_check
from jellybean.runtime.state import StateStore
from jellybean.plugins import dataset_names, runner_names
from jellybean.spec.errors import did_you_mean, listed
from tests.runtime.test_controller import Recorder, files_of, sites_of

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "workflows" / "digits"


@pytest.fixture
def unregistered(tmp_path: Path) -> Path:
    folder = tmp_path / "digits"
    shutil.copytree(DIGITS, folder)
    zoo = (folder / "zoo.yaml").read_text()
    assert "runner: digits-detector-tiny" in zoo
    (folder / "zoo.yaml").write_text(zoo.replace("runner: digits-detector-tiny", "runner: my-detector", 1))
    workflow = (folder / "workflow.yaml").read_text()
    assert "replay: digits-frames" in workflow
    (folder / "workflow.yaml").write_text(workflow.replace("replay: digits-frames", "replay: my-frames", 1))
    return folder


def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), start=1) if needle in line)


@pytest.mark.parametrize("command", [["validate"], ["run", "--duration", "1"]])
def test_validate_and_run_refuse_unregistered_names_at_their_lines(unregistered: Path, command: list[str],
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "-f", str(unregistered)]) == 2
    err = capsys.readouterr().err
    assert "internal error" not in err and "Traceback" not in err
    zoo, workflow = unregistered / "zoo.yaml", unregistered / "workflow.yaml"
    assert (f"{zoo}:{line_of(zoo, 'my-detector')}: spec.tasks[0].variants[0].runner: variant 'digits-detector-tiny': "
            f"unknown runner 'my-detector'{did_you_mean('my-detector', runner_names())} (registered: {listed(runner_names())})") in err
    assert (f"{workflow}:{line_of(workflow, 'my-frames')}: spec.sources[0].replay: unknown dataset 'my-frames'"
            f"{did_you_mean('my-frames', dataset_names())} (registered: {listed(dataset_names())})") in err


def test_apply_refuses_them_with_409_and_stores_nothing(unregistered: Path, tmp_path: Path) -> None:
    controller = Controller(StateStore(tmp_path / "state"), pipeline_factory=Recorder().factory,
                            site_resources=sites_of, check_servable=default_servability_check)
    with pytest.raises(Rejected) as info:
        controller.apply(files_of(unregistered))
    (rejection,) = info.value.rejections
    assert rejection.reason == "not-servable"
    (reason,) = rejection.explanation
    assert "unknown runner 'my-detector'" in reason and "unknown dataset 'my-frames'" in reason
    assert "digits-detector-tiny" in reason  # what is registered
    assert controller.store.counts()["submissions"] == 0
    assert controller.apply(files_of(DIGITS)).changed  # the registered names are accepted


def test_messages_carry_no_terminal_codes() -> None:
    assert _message(RuntimeError("\x1b[31mcould not start\x1b[0m within 120 s")) == \
        "RuntimeError: could not start within 120 s"
