from __future__ import annotations

from pathlib import Path

import pytest

from jellybean.cli import main
from jellybean.plugins import runner_names


def test_zoo_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["RUNNER", "TASK", "PACKAGE"]
    for name in runner_names():
        assert any(line.startswith(name + " ") and "jellybean" in line for line in out.splitlines())


def test_zoo_build_uses_the_cache(quick_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from jellybean.zoo import build

    calls = []
    monkeypatch.setattr(build, "build_zoo", lambda cache, **kw: calls.append((cache, kw)) or {})
    assert main(["zoo", "build", "--cache", str(tmp_path)]) == 0
    assert calls == [(tmp_path, {"force": False, "progress": calls[0][1]["progress"]})]
    assert str(tmp_path) in capsys.readouterr().out


@pytest.mark.parametrize("args", [["--threads", "0"], ["--repeats", "0"], ["--frames", "-1"], ["--hardware", "a b"]])
def test_profile_rejects_bad_arguments(args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "--cache", str(tmp_path), *args]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_profile_writes_yaml(quick_zoo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole command on the quick zoo (marked built), with few repeats and frames."""
    from jellybean.zoo import build, profile

    monkeypatch.setattr(build, "is_built", lambda cache, **kw: True)
    real = profile.profile_zoo
    monkeypatch.setattr(profile, "profile_zoo", lambda cache, **kw: real(cache, **{**kw, "memory": "estimate",
                                                                                   "batch_sizes": (1, 2)}))
    out = tmp_path / "zoo.yaml"
    assert main(["profile", "--cache", str(quick_zoo), "--out", str(out), "--repeats", "2", "--frames", "20"]) == 0
    text = out.read_text()
    assert "# Command: jellybean profile --hardware local-cpu-1t --threads 1 --repeats 2 --frames 20" in text
    assert "kind: ModelZoo" in text and "digits-end-to-end" in text
    assert "100%" in capsys.readouterr().err
