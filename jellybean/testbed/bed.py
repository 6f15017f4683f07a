"""The test bed's effects: build the namespaces, links, shaping and CPU quotas of a
:func:`~jellybean.testbed.layout.layout`, start one Ray node per site inside them, read the links'
counters, and take it all down again, failures included.

Needs root, ``ip`` and ``tc`` (iproute2), and a cgroup CPU controller (v1 or v2; without one the
sites run unthrottled and :attr:`Testbed.cpu_reason` says so). Nothing outside the namespaces it
creates is touched except its own cgroup folders and a temporary folder: the root namespace gets no
address, so traffic can only flow between the sites.

Teardown (:meth:`Testbed.down`, also on ``__exit__`` and at interpreter exit) kills every process in
the sites' cgroups (a Ray node's raylet, its workers and anything they started: a process cannot
leave its cgroup), then the processes it started itself, deletes the namespaces (which removes the
veth pairs and their queues) and the cgroup folders, and removes the temporary folder. Each step runs
even when an earlier one failed; :func:`stale` and :func:`clean` find and remove what a killed run
left behind.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

from jellybean.runtime.deployment import SITE_CAPACITY, site_resource
from jellybean.spec.topology import Topology
from jellybean.testbed.layout import CPU_PERIOD_US, Layout, layout, setup_commands, shape_commands

CGROUP_ROOT = Path("/sys/fs/cgroup")
RAY_PORT = 6379
OBJECT_STORE_BYTES = 100 * 1024 * 1024  # per node: Ray's default (30% of memory) times ten nodes is too much
_OWNER_FILE = "owner"


class TestbedError(RuntimeError):
    """The test bed cannot be built here (not root, no iproute2, a command failed): in words."""


def _run(cmd: list[str], timeout_s: float = 20.0) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TestbedError(f"{' '.join(cmd)}: {exc}") from exc
    if done.returncode != 0:
        raise TestbedError(f"{' '.join(cmd)}: {done.stderr.strip() or done.stdout.strip() or done.returncode}")
    return done.stdout


def unavailable() -> str | None:
    """Why a test bed cannot be built on this machine, or None when it can."""
    if os.geteuid() != 0:
        return "the test bed needs root (network namespaces, tc, cgroups)"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"the test bed needs `{tool}` (iproute2)"
    return None


# --- CPU quotas ------------------------------------------------------------------------------------------

#: The smallest CPU quota the kernel takes (us).
MIN_QUOTA_US = 1000


def quota_of(cores: float | None, period_us: int = CPU_PERIOD_US) -> tuple[int, int | None]:
    """``(period, quota)`` in microseconds for a cap of ``cores`` (quota None: no cap) over periods of
    ``period_us``. The kernel refuses quotas under 1 ms, so below that the period grows instead (1/16
    of a core at 10 ms is 1 ms every 16 ms): flooring the quota would give the site more than it
    declared, silently."""
    if cores is None:
        return period_us, None
    period_us = max(period_us, math.ceil(MIN_QUOTA_US / cores))
    return period_us, max(MIN_QUOTA_US, round(cores * period_us))


#: The kernel's PM QoS interface: while a process holds it open with a latency of 0, no CPU enters an
#: idle state that takes time to leave.
CPU_DMA_LATENCY = Path("/dev/cpu_dma_latency")


@contextlib.contextmanager
def steady_cpus(device: Path = CPU_DMA_LATENCY):  # noqa: ANN201 - a context manager of str
    """Keep the CPUs out of their idle states while measuring; yields what was done, in words.

    Why: on a virtual machine whose idle vCPUs halt (the ``haltpoll`` idle driver here), a site that
    sleeps most of each quota period wakes onto a halted vCPU, so the same work costs more CPU time
    on a quiet machine than on a busy one: one hub served 125-166 frames/s with nothing else running
    and 182 with three unrelated busy loops beside it. A scaling run compares a quiet machine (one
    hub) with a busy one (four), so without this, one hub's baseline is the slow one and four hubs
    look better than linear. Writing 0 to ``/dev/cpu_dma_latency`` (held while the file stays open,
    the way ``tuned``'s latency-performance profile does it) keeps every run at the same speed."""
    try:
        fd = os.open(device, os.O_WRONLY)
    except OSError as exc:
        yield f"CPU idle states left as they are ({device}: {exc.strerror or exc})"
        return
    try:
        os.write(fd, (0).to_bytes(4, sys.byteorder, signed=True))
        yield f"CPU idle states held off (PM QoS latency 0 through {device})"
    finally:
        os.close(fd)


class Cgroups:
    """One cgroup per site under ``jellybean-testbed-<tag>``, with a CPU quota (v2 ``cpu.max`` or v1
    ``cpu.cfs_quota_us``). ``reason`` says why there are none (the sites then run unthrottled)."""

    def __init__(self, tag: str) -> None:
        self.base: Path | None = None
        self.version = 0
        self.reason: str | None = None
        name = f"jellybean-testbed-{tag}"
        if (CGROUP_ROOT / "cgroup.controllers").exists():
            self.version, self.base = 2, CGROUP_ROOT / name
        elif (CGROUP_ROOT / "cpu" / "cpu.cfs_quota_us").exists():
            self.version, self.base = 1, CGROUP_ROOT / "cpu" / name
        else:
            self.reason = "no cgroup CPU controller here"
            return
        try:
            if self.version == 2:
                controllers = (CGROUP_ROOT / "cgroup.controllers").read_text().split()
                if "cpu" not in controllers:
                    raise OSError("the cpu controller is not enabled")
                (CGROUP_ROOT / "cgroup.subtree_control").write_text("+cpu")
            self.base.mkdir(exist_ok=True)
            if self.version == 2:
                (self.base / "cgroup.subtree_control").write_text("+cpu")
        except OSError as exc:
            self.reason, self.base = f"cannot create cgroups under {CGROUP_ROOT}: {exc}", None

    def create(self, site: str) -> Path | None:
        if self.base is None:
            return None
        path = self.base / site
        path.mkdir(exist_ok=True)
        return path

    def limit(self, path: Path | None, cores: float | None, period_us: int = CPU_PERIOD_US) -> None:
        """Cap the group at ``cores`` (None: no cap) over periods of ``period_us``."""
        if path is None:
            return
        period_us, quota_us = quota_of(cores, period_us)
        if self.version == 2:
            (path / "cpu.max").write_text(f"{'max' if quota_us is None else quota_us} {period_us}")
        else:
            (path / "cpu.cfs_period_us").write_text(str(period_us))
            (path / "cpu.cfs_quota_us").write_text("-1" if quota_us is None else str(quota_us))


    @staticmethod
    def pids(path: Path) -> list[int]:
        try:
            return [int(p) for p in (path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def remove(self) -> list[str]:
        """Kill every process in every site cgroup, then remove the folders. Returns what failed."""
        problems: list[str] = []
        if self.base is None or not self.base.exists():
            return problems
        for path in [p for p in self.base.iterdir() if p.is_dir()]:
            for _ in range(50):  # bounded: processes may fork while being killed
                pids = self.pids(path)
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                threading.Event().wait(0.05)
            try:
                path.rmdir()
            except OSError as exc:
                problems.append(f"{path}: {exc}")
        try:
            self.base.rmdir()
        except OSError as exc:
            problems.append(f"{self.base}: {exc}")
        return problems


def _joiner(path: Path | None) -> Callable[[], None] | None:
    if path is None:
        return None
    procs = str(path / "cgroup.procs")

    def join() -> None:  # runs in the child between fork and exec
        with open(procs, "w") as f:
            f.write(str(os.getpid()))

    return join


# --- the bed ---------------------------------------------------------------------------------------------
@dataclass
class Counter:
    """Bytes a link carried in one direction (the sending interface's ``tx_bytes``) and what its
    token bucket dropped."""

    tx_bytes: int
    drops: int = 0


@dataclass
class Testbed:
    """A running test bed for ``topology``. Use as a context manager; see the module docstring."""

    __test__ = False  # not a pytest test class, whatever its name

    topology: Topology
    cores: float | None = None  # the cores the sites share (default: this process's)
    device_cpus: float = 0.1
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    keep_logs: bool = False
    #: The quotas' period (:data:`CPU_PERIOD_US` by default: short, so that a throttled site waits
    #: milliseconds). A throughput measurement uses the kernel's and Kubernetes' 100 ms instead: at
    #: a tenth of a core a 10 ms period leaves a 1 ms quota, under the scheduler's 5 ms bandwidth
    #: slice, and the throttling timers of many small sites then cost more than the sites' own work.
    cpu_period_us: int = CPU_PERIOD_US

    def __post_init__(self) -> None:
        cores = self.cores if self.cores is not None else len(os.sched_getaffinity(0))
        self.layout: Layout = layout(self.topology, tag=self.tag, cores=cores, device_cpus=self.device_cpus)
        self.token = secrets.token_hex(32)
        self.folder: Path | None = None
        self.cgroups: Cgroups | None = None
        self.groups: dict[str, Path | None] = {}
        self.processes: list[subprocess.Popen] = []
        self.nodes: dict[str, subprocess.Popen] = {}
        self._built = False
        self._down = False

    # -- lifecycle
    def __enter__(self) -> Testbed:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> None:
        """Build the network and the cgroups. On any failure, whatever was built is removed."""
        why = unavailable()
        if why:
            raise TestbedError(why)
        atexit.register(self.down)
        try:
            self.folder = Path(tempfile.mkdtemp(prefix=f"jbtb-{self.tag}-", dir="/tmp"))
            (self.folder / _OWNER_FILE).write_text(str(os.getpid()))
            self._built = True
            for cmd in setup_commands(self.layout):
                _run(cmd)
            self.cgroups = Cgroups(self.tag)
            for site in [*self.layout.sites, "driver"]:
                self.groups[site] = self.cgroups.create(site)
        except BaseException:
            self.down()
            raise

    def limit_cpus(self, on: bool = True) -> None:
        """Cap every site at its CPU quota (or lift the caps). Separate from :meth:`up` because Ray's
        nodes and the replicas' processes start far slower under a fraction of a core (their agents
        must register within Ray's timeouts): the bed starts uncapped and caps before measuring."""
        assert self.cgroups is not None
        for site in self.layout.sites.values():
            self.cgroups.limit(self.groups.get(site.name), site.cpu_quota if on else None, self.cpu_period_us)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time each site's processes used so far, by site: its cgroup's ``usage_usec`` under v2;
        under v1 (whose ``cpu`` hierarchy keeps no usage) the user and system time of the processes
        now in the group, from ``/proc`` (a process that exited meanwhile is missed). Empty without
        cgroups."""
        out: dict[str, float] = {}
        tick = os.sysconf("SC_CLK_TCK")
        for site, path in self.groups.items():
            if path is None or site == "driver" or self.cgroups is None:
                continue
            try:
                if self.cgroups.version == 2:
                    stat = dict(line.split() for line in (path / "cpu.stat").read_text().splitlines())
                    out[site] = int(stat["usage_usec"]) / 1e6
                    continue
            except (OSError, KeyError, ValueError):
                continue
            total = 0
            for pid in Cgroups.pids(path):
                try:
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue  # gone meanwhile
                total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
            out[site] = total / tick
        return out

    @property
    def cpu_reason(self) -> str | None:
        return self.cgroups.reason if self.cgroups else "not built"

    @property
    def head_address(self) -> str:
        return f"{self.layout.site(self.layout.root).address}:{RAY_PORT}"

    def env(self) -> dict[str, str]:
        """The environment of every Ray process and driver: token authentication on, with our token."""
        env = dict(os.environ)
        env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_ADDRESS": self.head_address})
        env.pop("RAY_AUTH_TOKEN_PATH", None)
        return env

    def popen(self, site: str, argv: list[str], *, cgroup: str | None = None, **kwargs) -> subprocess.Popen:  # noqa: ANN003
        """Start ``argv`` inside ``site``'s namespace (and ``cgroup``'s quota: the site's own by default)."""
        ns = self.layout.site(site).namespace
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], env=kwargs.pop("env", self.env()),
                                preexec_fn=_joiner(self.groups.get(cgroup or site)), process_group=0, **kwargs)
        self.processes.append(proc)
        return proc

    def start_ray(self) -> None:
        """One Ray node per site: the head at the root site, a worker at every other, each offering
        its site's resource and its instances' cores. Returns once every ``ray start`` runs; the
        driver waits for the nodes to register (:func:`jellybean.testbed.driver.wait_for_nodes`)."""
        assert self.folder is not None
        ray = str(Path(sys.executable).parent / "ray")
        logs = self.folder / "logs"
        logs.mkdir(exist_ok=True)
        order = [self.layout.root] + [s for s in self.layout.sites if s != self.layout.root]
        for name in order:
            site = self.layout.site(name)
            argv = [ray, "start", "--block", "--node-ip-address", site.address, "--num-cpus", str(site.ray_cpus),
                    "--resources", json.dumps({site_resource(name): SITE_CAPACITY}),
                    "--object-store-memory", str(OBJECT_STORE_BYTES), "--disable-usage-stats"]
            # Each node its own temporary folder: nodes of one machine that share one pick the same
            # socket names when they start together ("bind: Address already in use").
            argv += ["--temp-dir", str(self.folder / "ray" / str(site.index))]
            if name == self.layout.root:
                argv += ["--head", "--port", str(RAY_PORT), "--include-dashboard", "false"]
            else:
                argv += ["--address", self.head_address]
            log = open(logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the bed
            self.nodes[name] = self.popen(name, argv, stdout=log, stderr=subprocess.STDOUT)
            log.close()
            if name == self.layout.root:
                self._wait_for_head()

    def _wait_for_head(self, timeout_s: float = 60.0) -> None:
        """Until the head's GCS accepts connections (from inside the root site's namespace)."""
        ns = self.layout.site(self.layout.root).namespace
        host, port = self.head_address.split(":")
        probe = ("import socket,sys\ns=socket.socket();s.settimeout(0.5)\n"
                 f"sys.exit(0 if s.connect_ex(({host!r},{port}))==0 else 1)")
        waiter = threading.Event()
        for _ in range(int(timeout_s / 0.25)):
            if self.nodes[self.layout.root].poll() is not None:
                raise TestbedError(f"the Ray head exited: {self.log_tail(self.layout.root)}")
            if subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", probe], check=False,
                              capture_output=True).returncode == 0:
                return
            waiter.wait(0.25)
        raise TestbedError(f"the Ray head did not listen within {timeout_s:.0f} s: {self.log_tail(self.layout.root)}")

    def log_tail(self, site: str, chars: int = 2000) -> str:
        if self.folder is None:
            return ""
        path = self.folder / "logs" / f"{site}.log"
        try:
            return path.read_bytes()[-chars:].decode("utf-8", "replace")
        except OSError:
            return ""

    def dead_nodes(self) -> list[str]:
        return [name for name, proc in self.nodes.items() if proc.poll() is not None]

    # -- measuring and changing the links
    def counters(self) -> dict[tuple[str, str], Counter]:
        """Per (child site, up|down): the sending interface's ``tx_bytes`` (read inside its own
        namespace from ``/sys/class/net``) and the token bucket's drops."""
        by_ns: dict[str, list[tuple[tuple[str, str], str]]] = {}
        for link in self.layout.links:
            for direction in ("up", "down"):
                owner, dev = link.interface(direction)
                by_ns.setdefault(self.layout.site(owner).namespace, []).append(((link.child, direction), dev))
        out: dict[tuple[str, str], Counter] = {}
        for ns, items in by_ns.items():
            paths = [f"/sys/class/net/{dev}/statistics/tx_bytes" for _, dev in items]
            values = _run(["ip", "netns", "exec", ns, "cat", *paths]).split()
            stats = {q.get("dev"): q for q in json.loads(_run(["tc", "-n", ns, "-s", "-j", "qdisc", "show"]) or "[]")}
            for (key, dev), value in zip(items, values):
                out[key] = Counter(tx_bytes=int(value), drops=int(stats.get(dev, {}).get("drops", 0)))
        return out

    def shape(self, site: str, direction: str, bandwidth_mbps: float | None) -> None:
        """Change one direction of a site's uplink now (``None``: unlimited)."""
        for cmd in shape_commands(self.layout, site, direction, None if bandwidth_mbps is None else bandwidth_mbps * 1e6):
            _run(cmd)

    # -- teardown
    def down(self) -> list[str]:
        """Remove everything (see the module docstring). Returns what could not be removed."""
        if self._down or not self._built:
            return []
        self._down = True
        problems: list[str] = []
        if self.cgroups is not None:
            problems += self.cgroups.remove()
        for proc in self.processes:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        for site in self.layout.sites.values():
            done = subprocess.run(["ip", "netns", "del", site.namespace], capture_output=True, text=True, check=False)
            if done.returncode != 0 and "No such file" not in done.stderr:
                problems.append(f"netns {site.namespace}: {done.stderr.strip()}")
        if self.folder is not None and not self.keep_logs:
            shutil.rmtree(self.folder, ignore_errors=True)
        with contextlib.suppress(Exception):
            atexit.unregister(self.down)
        return problems


def stale() -> list[str]:
    """Tags of test beds whose owner process is gone (a run that was killed)."""
    tags = set()
    for folder in Path("/tmp").glob("jbtb-*-*"):
        try:
            owner = int((folder / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        if not Path(f"/proc/{owner}").exists():
            tags.add(folder.name.split("-")[1])
    for line in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith("jbtb-"):
            tag = name.split("-")[1]
            owners = [f for f in Path("/tmp").glob(f"jbtb-{tag}-*") if (f / _OWNER_FILE).exists()]
            if not any(Path(f"/proc/{(f / _OWNER_FILE).read_text().strip()}").exists() for f in owners):
                tags.add(tag)
    return sorted(tags)


def clean(tag: str) -> None:
    """Remove what a killed test bed ``tag`` left: its processes, namespaces, cgroups and folder."""
    Cgroups(tag).remove()
    for line in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(f"jbtb-{tag}-"):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    for folder in Path("/tmp").glob(f"jbtb-{tag}-*"):
        shutil.rmtree(folder, ignore_errors=True)
