"""Every dashboard query against a real Prometheus scraping a real controller serving the digits
workflow: each must be valid PromQL and return data.

Prometheus (the binary on PATH; `make test` installs Debian's package) scrapes `jellybean up
--metrics-port` every second; the digits workflow is applied through the CLI, and once Prometheus
holds about ten seconds of completed frames every panel's every expression runs as an instant query
with the Grafana variables substituted. All failures are reported together.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from jellybean.runtime.dashboards import VARIABLE_QUERIES
from jellybean.runtime.state import read_controller_info
from tests.observability.queries import SITES, VARIABLES, every_query, substitute, variable_promql

pytest.importorskip("ray")
pytest.importorskip("prometheus_client")

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "workflows" / "digits"
#: Seconds of scraped, completed frames to wait for before querying (rates use 10 s windows).
DATA_S = 10
#: How the test stops the controller: as Kubernetes and systemd do. (Ray's failure-signal handler
#: takes SIGTERM over when the controller starts its embedded Ray; `jellybean up` takes it back, so a
#: TERM drains and exits 0 instead of aborting.)
STOP_SIGNAL = signal.SIGTERM


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree(root: int) -> set[int]:
    """``root`` and every process below it."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8") as handle:
                    parents[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    tree, grown = {root}, True
    while grown:
        grown = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grown = True
    return tree


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def listening(root: int) -> set[tuple[str, int]]:
    """The TCP sockets that ``root``'s process tree listens on in this test's network namespace."""
    inodes: set[str] = set()
    for pid in _tree(root):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                    address, port = fields[1].split(":")
                    found.add((_address(address), int(port, 16)))
    return found


def jellybean(*args: str) -> list[str]:
    exe = Path(sys.executable).parent / "jellybean"
    return [str(exe) if exe.exists() else sys.executable, *([] if exe.exists() else ["-m", "jellybean"]), *args]


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(self, path: str, **params: str) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with self.opener.open(self.url + path + query, timeout=10) as response:
                return json.loads(response.read().decode())
        except urllib.error.HTTPError as exc:  # a bad query answers 400 with an error body
            return json.loads(exc.read().decode())

    def query(self, expr: str) -> dict:
        return self.get("/api/v1/query", query=expr)

    def ready(self) -> bool:
        try:
            with self.opener.open(self.url + "/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False


def wait_for(what: str, condition, deadline: float, *procs: subprocess.Popen) -> None:
    while not condition():
        for proc in procs:
            assert proc.poll() is None, f"{proc.args[0]} exited while waiting for {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def stop(proc: subprocess.Popen, timeout: float, sig: int = signal.SIGTERM) -> str:
    """``sig``, then SIGKILL after ``timeout``; returns what it wrote to stderr."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err or ""


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[Prometheus, int]]:
    """A Prometheus scraping 127.0.0.1:<port> every second; yields it and the port to serve metrics on."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: `make test` installs Debian's prometheus package"
    metrics_port, web_port = free_port(), free_port()
    config = tmp_path / "prometheus.yml"
    # honor_labels: Jellybean's own `instance` label (hub-cpu-0) must win over the target's.
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "jellybean", "honor_labels": True,
                            "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}]}]}))
    proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{web_port}", "--log.level=warn"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    server = Prometheus(f"http://127.0.0.1:{web_port}")
    try:
        wait_for("Prometheus to be ready", server.ready, time.monotonic() + 30, proc)
        yield server, metrics_port
    finally:
        stop(proc, 10)


def test_every_panel_query_returns_data(prometheus, digits_zoo: Path, tmp_path: Path) -> None:
    server, metrics_port = prometheus
    state = tmp_path / "state"
    env = {**os.environ, "RAY_ADDRESS": "", "JELLYBEAN_HOME": str(tmp_path / "home")}
    env.pop("JELLYBEAN_TOKEN", None)
    controller = subprocess.Popen(
        jellybean("up", "--state-dir", str(state), "--port", "0", "--metrics-port", str(metrics_port),
                  "--cache", str(digits_zoo), "--log-level", "warning"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    client = ["--state-dir", str(state)]
    applied = False
    try:
        deadline = time.monotonic() + 120
        wait_for("the controller", lambda: read_controller_info(state) is not None, deadline, controller)
        apply = subprocess.run(jellybean("apply", "-f", str(DIGITS), *client), capture_output=True, text=True,
                               env=env, timeout=120)
        assert apply.returncode == 0, apply.stdout + apply.stderr
        applied = True
        serving = (f'count_over_time((sum by (workflow) (jellybean_frames_completed_total{{workflow="digits"}}) > 0)'
                   f"[30s:1s]) >= {DATA_S}")
        wait_for(f"{DATA_S} s of completed frames in Prometheus",
                 lambda: bool(server.query(serving).get("data", {}).get("result")), deadline, controller)

        # While it serves on its embedded Ray, the controller's whole process tree listens on this
        # machine's network only at the API and the metrics port, on loopback; Ray's servers live in
        # the private network namespace (jellybean.runtime.localray); Ray's token is the owner's alone.
        api_port = int(read_controller_info(state)["url"].rsplit(":", 1)[1])
        assert listening(controller.pid) == {("127.0.0.1", api_port), ("127.0.0.1", metrics_port)}
        if not os.environ.get("RAY_AUTH_TOKEN") and not os.environ.get("RAY_AUTH_TOKEN_PATH"):
            assert (Path.home() / ".ray" / "auth_token").stat().st_mode & 0o077 == 0

        failures, nan_only = [], []
        for dashboard, panel, expr in every_query():
            answer = server.query(substitute(expr))
            where = f"{dashboard} / {panel}: {expr}"
            if answer.get("status") != "success":
                failures.append(f"{where}\n    invalid: {answer.get('errorType')}: {answer.get('error')}")
            elif not answer["data"]["result"]:
                failures.append(f"{where}\n    no data")
            elif all(math.isnan(float(r["value"][1])) for r in answer["data"]["result"]):
                nan_only.append(where)
        for name in VARIABLE_QUERIES:
            expr, label = variable_promql(name)
            answer = server.query(substitute(expr))
            values = {r["metric"].get(label) for r in answer.get("data", {}).get("result", [])}
            wanted = {"workflow": {VARIABLES["workflow"]}, "site": SITES}[name]
            if not wanted <= values:
                failures.append(f"variable {name}: {VARIABLE_QUERIES[name]} gives {sorted(values)}, not {sorted(wanted)}")
        if nan_only:
            print("only NaN (valid, but nothing happened in the window):\n  " + "\n  ".join(nan_only))
        assert not failures, f"{len(failures)} dashboard queries failed:\n" + "\n".join(failures)
    finally:
        if applied and controller.poll() is None:
            subprocess.run(jellybean("delete", "digits", "--wait", "30", *client), capture_output=True, env=env,
                           timeout=60)
        err = stop(controller, 60, STOP_SIGNAL)
    assert controller.returncode == 0, err
    assert "Traceback" not in err, err
