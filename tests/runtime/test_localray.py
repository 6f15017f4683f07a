"""Keeping an embedded Ray off the network, and its token private (jellybean.runtime.localray)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from jellybean.runtime.localray import private_ray_token

#: In a child process (isolation is for good): bind a socket, isolate, then report what it sees.
CHILD = textwrap.dedent("""
    import json, socket, sys
    from jellybean.runtime.localray import isolate_network
    before = socket.create_server(("127.0.0.1", 0))
    reason = isolate_network()
    after = socket.create_server(("0.0.0.0", 0))
    print(json.dumps({"reason": reason, "interfaces": sorted(name for _, name in socket.if_nameindex()),
                      "before": before.getsockname()[1], "after": after.getsockname()[1]}), flush=True)
    before.settimeout(30)
    connection, _ = before.accept()  # the parent connects from the machine's namespace
    connection.sendall(b"through")
    connection.close()
    sys.stdin.readline()
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="network namespaces are Linux's")
def test_isolation_leaves_only_loopback_and_keeps_sockets_bound_before() -> None:
    import json

    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        report = json.loads(child.stdout.readline())
        assert report["reason"] is None, report
        assert report["interfaces"] == ["lo"]
        with socket.create_connection(("127.0.0.1", report["before"]), timeout=10) as sock:
            assert sock.recv(16) == b"through"
        # What it bound after the move, even on 0.0.0.0, is not here.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", report["after"]), timeout=2).close()
    finally:
        child.kill()
        child.wait(30)


def test_the_ray_token_is_created_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    path = private_ray_token(tmp_path)
    assert path == tmp_path / ".ray" / "auth_token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(path.read_text()) == 64
    token = path.read_text()
    path.chmod(0o644)  # as Ray itself writes it
    path.parent.chmod(0o755)
    assert private_ray_token(tmp_path) == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_text() == token  # an existing token is kept: clusters already started use it


def test_a_token_named_by_the_environment_is_tightened_or_left_alone(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    named = tmp_path / "my-token"
    named.write_text("abc")
    named.chmod(0o644)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(named))
    assert private_ray_token(tmp_path) == named and stat.S_IMODE(named.stat().st_mode) == 0o600
    assert not (tmp_path / ".ray").exists()
    monkeypatch.setenv("RAY_AUTH_TOKEN", "inline")
    assert private_ray_token(tmp_path) is None


def test_a_token_file_that_is_a_symlink_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    (tmp_path / ".ray").mkdir(mode=0o700)
    (tmp_path / "elsewhere").write_text("x")
    os.symlink(tmp_path / "elsewhere", tmp_path / ".ray" / "auth_token")
    with pytest.raises(OSError, match="not a regular file"):
        private_ray_token(tmp_path)
