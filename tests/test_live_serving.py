"""digits-live served by a real controller on its embedded Ray, fed and read through the CLI's own
clients: `status` shows every ingest and stream URL, `jellybean send` posts `.npy` frames (one with
`--wait`, answered with its result), `jellybean results` reads them back from the stream with
offsets (counted from 0). Also: digits-live's zoo and topology are the digits workflow's own."""

from __future__ import annotations

import io
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from jellybean.runtime.state import read_controller_info
from tests.observability.test_live_prometheus import STOP_SIGNAL, jellybean, stop, wait_for

pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[1]
LIVE = ROOT / "workflows" / "digits-live"


def test_digits_live_shares_the_digits_zoo_and_topology() -> None:
    for name in ("zoo.yaml", "topology.yaml"):
        assert (LIVE / name).read_bytes() == (ROOT / "workflows" / "digits" / name).read_bytes(), name


def test_send_and_results_through_a_running_controller(digits_zoo: Path, tmp_path: Path) -> None:
    from jellybean.zoo.datasets import load_dataset

    state = tmp_path / "state"
    env = {**os.environ, "RAY_ADDRESS": "", "JELLYBEAN_HOME": str(tmp_path / "home")}
    env.pop("JELLYBEAN_TOKEN", None)
    env.pop("JELLYBEAN_DATA_TOKEN", None)
    controller = subprocess.Popen(
        jellybean("up", "--state-dir", str(state), "--port", "0", "--metrics-port", "0", "--cache", str(digits_zoo),
                  "--log-level", "warning"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    client = ["--state-dir", str(state)]

    def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(jellybean(*args, *client), capture_output=True, text=True, env=env, timeout=timeout)

    frames = load_dataset("digits-frames")
    files = []
    for n in range(3):
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(frames[n]["image"], dtype=np.float32))
        path = tmp_path / f"frame-{n}.npy"
        path.write_bytes(buffer.getvalue())
        files.append(path)
    applied = False
    try:
        deadline = time.monotonic() + 180
        wait_for("the controller", lambda: read_controller_info(state) is not None, deadline, controller)
        apply = cli("apply", "-f", str(LIVE), "--wait", "150", timeout=170)
        assert apply.returncode == 0, apply.stdout + apply.stderr
        applied = True

        status = cli("status", "digits-live", "--format", "json")
        assert status.returncode == 0, status.stderr
        endpoints = {(e["kind"], e["site"]): e for e in json.loads(status.stdout)["endpoints"]}
        assert {("ingest", "cam-1"), ("ingest", "cam-2"), ("stream", "cloud")} <= set(endpoints)
        assert endpoints[("ingest", "cam-1")]["url"].endswith("/v1/ingest/digits-live/cameras")
        table = cli("status", "digits-live")
        assert endpoints[("stream", "cloud")]["url"] in table.stdout

        sent = cli("send", "digits-live", "--site", "cam-1", "--wait", "30", str(files[0]))
        assert sent.returncode == 0, sent.stdout + sent.stderr
        answer = json.loads(sent.stdout.splitlines()[0])
        assert answer["state"] == "completed" and answer["result"]["source"] == "cameras"
        assert answer["result"]["site"] == "cam-1" and answer["result"]["frame_id"] == answer["frame_id"]
        more = cli("send", "digits-live", "--site", "cam-2", str(files[1]), str(files[2]))
        assert more.returncode == 0, more.stdout + more.stderr
        accepted = [json.loads(line)["frame_id"] for line in more.stdout.splitlines() if line.strip()]
        assert len(accepted) == 2

        wanted = {answer["frame_id"], *accepted}
        seen: dict[str, dict] = {}

        def all_read() -> bool:
            done = cli("results", "digits-live")
            assert done.returncode == 0, done.stderr
            for line in done.stdout.splitlines():
                if line.strip():
                    result = json.loads(line)
                    seen[result["frame_id"]] = result
            return wanted <= set(seen)

        wait_for("the three results in the stream", all_read, time.monotonic() + 60, controller)
        for frame_id in wanted:
            r = seen[frame_id]
            assert r["completed_at"] >= r["received_at"] and isinstance(r["reading"], list)
        assert seen[answer["frame_id"]]["reading"] == answer["result"]["reading"]
        later = cli("results", "digits-live", "--after", "1")  # offsets count from 0: only the third
        assert later.returncode == 0 and len([ln for ln in later.stdout.splitlines() if ln.strip()]) == 1
    finally:
        if applied and controller.poll() is None:
            cli("delete", "digits-live", "--wait", "30", timeout=60)
        err = stop(controller, 60, STOP_SIGNAL)
    assert controller.returncode == 0, err
    assert "Traceback" not in err, err
