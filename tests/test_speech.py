"""The speech workflow on Silero VAD's pretrained builds (the silero-vad wheel's ONNX files), put into
a model store the way a user puts theirs, validated, planned and served on a real (embedded) Ray by
`jellybean run`: the VAD at the hub, only speech on to the cloud, measured F1 near the profile's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
silero_vad = pytest.importorskip("silero_vad")

from jellybean.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT / "workflows" / "speech"
BUILDS = ["silero_vad.onnx", "silero_vad_16k_op15.onnx", "silero_vad_half.onnx", "silero_vad_op18_ifless.onnx"]


@pytest.fixture(scope="module")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("models")
    data = Path(silero_vad.__file__).parent / "data"
    assert main(["store", "add", "--model-store", str(store), "--to", "silero-vad", *(str(data / b) for b in BUILDS)]) == 0
    return store


def test_the_shipped_zoo_names_the_wheels_files_by_their_digests(model_store: Path) -> None:
    """The committed sha256s are those of the pinned wheel's files: validate loads every variant and
    checks its signature against the ONNX graph."""
    assert main(["validate", "-f", str(SPEECH), "--model-store", str(model_store)]) == 0


def test_speech_is_served_from_the_store_and_only_speech_reaches_the_cloud(model_store: Path, tmp_path: Path) -> None:
    # The speech dataset is synthesised with espeak-ng, which `make test` installs (apt-get); without
    # it the run fails saying so.
    env = {**os.environ, "RAY_ADDRESS": "", "JELLYBEAN_HOME": str(tmp_path / "home")}
    run = subprocess.run([str(Path(sys.executable).parent / "jellybean"), "run", "-f", str(SPEECH), "--model-store",
                          str(model_store), "--duration", "6", "--format", "json", "--state-dir", str(tmp_path / "state")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    frames = report["frames"]
    assert frames["lost"] == 0 and frames["failed"] == 0 and frames["completed"] == frames["sent"] > 100
    stages = {s["stage"]: s for s in report["stages"]}
    assert stages["vad"]["site"] == "hub" and stages["archive"]["site"] == "cloud"
    # The plan's VAD lets a share of chunks through (its measured fan-out); that share, not the raw
    # audio, is what reaches the cloud.
    through = stages["archive"]["rate_measured_per_s"] / stages["vad"]["rate_measured_per_s"]
    assert 0.05 < through < 0.6
    # Measured F1 over the served frames against the profile's (the replay starts at another offset
    # per microphone, and a few seconds are a sample, so the margin is wide).
    assert abs(report["measured"]["accuracy"] - report["predicted"]["accuracy"]) < 15.0
