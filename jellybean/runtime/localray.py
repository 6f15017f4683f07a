"""An embedded Ray that only this machine can reach, with a token only its owner can read.

Why a network namespace. Ray 2.x binds its GCS, raylet, worker and agent servers to every interface
(``0.0.0.0`` / ``::``), and turns a ``_node_ip_address`` of ``127.0.0.1`` into the machine's own
address (``services.resolve_ip_for_localhost``): no option of ``ray.init`` keeps them on loopback, and
some of them (the agents' metrics endpoints, which list actor names) need no token. So ``jellybean
run`` and ``jellybean up``, when they start Ray themselves, first move the process into a private
network namespace whose only interface is its own loopback (:func:`isolate_network`): Ray binds
what it likes there and nothing outside the machine, nor any other process on it, can reach it.
The sockets that must be reachable (the controller's API, the metrics endpoint) are bound *before*
the move and stay in the machine's namespace: a socket belongs to the namespace it was created in.
As root this is ``unshare(CLONE_NEWNET)``; otherwise an unprivileged user namespace is entered with
it (one's own uid and gid mapped to themselves), which the kernel allows only while the process has
a single thread, hence the call comes before any thread starts. Where neither is possible (not
Linux, user namespaces disabled) Ray runs as it always does and the reason is said in one line.
With ``--address`` nothing is isolated: the process joins a cluster over the network. The
endpoints the isolated actors serve (ingest, stream) and the connections they open (webhooks) go
through doors opened from outside: :func:`start_broker`.

The Ray token. Ray writes ``~/.ray/auth_token`` with the process's umask (0644 by default): any user
of the machine could read it and drive the cluster. :func:`private_ray_token` creates it 0600 in a
0700 folder before Ray looks for it, or tightens an existing one, unless ``RAY_AUTH_TOKEN`` (or
``RAY_AUTH_TOKEN_PATH``, which is then checked the same way) says where the token comes from.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import stat
import struct
import sys
from pathlib import Path

CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def _loopback_up() -> None:
    """``ip link set lo up`` in the current namespace (a new one starts with loopback down)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | _IFF_UP))


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as handle:
        handle.write(text)


def isolate_network() -> str | None:
    """Move this process into a private network namespace with only a loopback interface. Returns
    None when done, else why it could not be done (nothing changed then). Call it before any thread
    starts: as root only the calling thread moves (threads started later follow it), and an
    unprivileged process must be single-threaded to enter the user namespace it needs."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces are Linux's ({sys.platform} here)"
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        if code not in (errno.EPERM, errno.EACCES):
            return f"unshare(CLONE_NEWNET): {os.strerror(code)}"
        if _thread_count() > 1:
            return "an unprivileged process must enter its namespace before it starts threads"
        uid, gid = os.geteuid(), os.getegid()
        if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
            return (f"no private network namespace for this user ({os.strerror(ctypes.get_errno())}: unprivileged "
                    "user namespaces are disabled here)")
        try:
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", f"{uid} {uid} 1")
            _write("/proc/self/gid_map", f"{gid} {gid} 1")
        except OSError as exc:
            return f"cannot map this user into its namespace: {exc.strerror}"
    try:
        _loopback_up()
    except OSError as exc:
        return f"cannot bring up loopback in the private namespace: {exc.strerror}"
    return None


def _tighten(path: Path) -> None:
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
        raise OSError(errno.EINVAL, f"{path} is not a regular file")
    if info.st_uid == os.geteuid() and info.st_mode & 0o077:
        os.chmod(path, 0o600)


def private_ray_token(home: Path | None = None) -> Path | None:
    """Make sure the token Ray will use for a new local cluster is readable by its owner only.
    Returns the token file, or None when ``RAY_AUTH_TOKEN`` holds the token itself."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return None
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        path = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).expanduser()
        if path.exists():
            _tighten(path)
        return path
    folder = (home or Path.home()) / ".ray"
    folder.mkdir(mode=0o700, exist_ok=True)
    if os.lstat(folder).st_uid == os.geteuid():
        os.chmod(folder, stat.S_IMODE(os.lstat(folder).st_mode) & ~0o077)
    path = folder / "auth_token"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        _tighten(path)
        return path
    import secrets

    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(secrets.token_hex(32))
    return path


# --------------------------------------------------------------------------------------------------
# the doors: sockets in the machine's namespace, for actors inside the private one

#: Where actors find the socket broker (set for the embedded Ray's processes when it is isolated).
BROKER_ENV = "JELLYBEAN_SOCKET_BROKER"
#: Addresses the broker binds for an actor: loopback, and whatever the process was told to serve on.
_BINDABLE = {"127.0.0.1", "::1", "localhost"}


def start_broker(folder: Path, bind_hosts: set[str] | None = None):  # noqa: ANN201 - a subprocess.Popen
    """Start the socket broker *before* :func:`isolate_network`: a small process that stays in the
    machine's network namespace and, over a Unix socket in ``folder`` (0700, the socket 0600), binds
    listening sockets for the actors of the isolated Ray (ingest and stream endpoints) and opens
    connections for them (webhooks), handing the file descriptors over (``SCM_RIGHTS``). Only
    loopback and ``bind_hosts`` may be bound, ports 0 or 1024 and up; it exits with its parent."""
    import subprocess
    import time

    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / f"broker-{os.getpid()}.sock"
    if path.exists() or path.is_symlink():
        path.unlink()
    allowed = ",".join(sorted(_BINDABLE | set(bind_hosts or ())))
    process = subprocess.Popen([sys.executable, "-m", "jellybean.runtime.localray", str(path), allowed,
                                str(os.getpid())], stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the socket broker did not start")
        time.sleep(0.01)
    os.environ[BROKER_ENV] = str(path)
    return process


def _ask(request: dict) -> socket.socket | None:
    import json

    path = os.environ.get(BROKER_ENV)
    if not path:
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as channel:
        channel.settimeout(30)
        channel.connect(path)
        channel.sendall(json.dumps(request).encode() + b"\n")
        message, fds, _flags, _addr = socket.recv_fds(channel, 4096, 1)
        answer = json.loads(message.decode() or "{}")
        if not fds:
            raise OSError(answer.get("error", "the socket broker refused"))
    sock = socket.socket(fileno=fds[0])
    sock.setblocking(False)
    return sock


def bound_socket(host: str, port: int = 0) -> socket.socket | None:
    """A listening socket on ``host:port`` in the machine's network namespace, from the broker; None
    when there is no broker (not isolated: bind it here)."""
    return _ask({"op": "bind", "host": host, "port": port})


def connected_socket(host: str, port: int) -> socket.socket | None:
    """A TCP connection to ``host:port`` opened from the machine's namespace; None without a broker."""
    return _ask({"op": "connect", "host": host, "port": port})


def _serve_broker(path: str, allowed: set[str], parent: int) -> None:
    import json
    import select

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        server.bind(path)
    finally:
        os.umask(old)
    server.listen(64)
    while True:
        if os.getppid() != parent:
            break
        ready, _, _ = select.select([server], [], [], 1.0)
        if not ready:
            continue
        conn, _ = server.accept()
        with conn:
            try:
                conn.settimeout(10)
                request = json.loads(conn.recv(4096).decode())
                host, port = str(request["host"]), int(request["port"])
                if request.get("op") == "bind":
                    if host not in allowed or not (port == 0 or 1024 <= port <= 65535):
                        raise PermissionError(f"binding {host}:{port} is not allowed")
                    family = socket.AF_INET6 if ":" in host else socket.AF_INET
                    sock = socket.socket(family, socket.SOCK_STREAM)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.bind((host, port))
                    sock.listen(512)
                elif request.get("op") == "connect":
                    sock = socket.create_connection((host, port), timeout=10)
                else:
                    raise ValueError("unknown request")
                with sock:
                    socket.send_fds(conn, [json.dumps({"ok": True}).encode()], [sock.fileno()])
            except Exception as exc:  # noqa: BLE001 - the actor gets the reason
                try:
                    conn.sendall(json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode())
                except OSError:
                    pass
    server.close()
    try:
        os.unlink(path)
    except OSError:
        pass


if __name__ == "__main__":  # the socket broker: python -m jellybean.runtime.localray PATH ALLOWED PARENT
    _serve_broker(sys.argv[1], set(sys.argv[2].split(",")), int(sys.argv[3]))
