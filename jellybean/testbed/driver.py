"""The test bed's driver: deploys a workflow on the test bed's Ray cluster from inside the root
site's namespace, and answers the orchestrator's commands, one JSON object per line each way.

Run as ``python -m jellybean.testbed.driver CONFIG.json`` by :class:`DriverClient` (it is a separate
process because it must live in the root site's namespace, where the Ray head is, while the
orchestrator reads every namespace's counters from outside). The driver is what ``jellybean run``
is on a cluster: it deploys, pushes routing tables and reads telemetry; no frame passes through it.

Commands (``{"cmd": ...}``) and their replies:

- ``start``: wait for every site's node, plan, deploy, start. Reply: the plan's placements, planned
  link bytes/s and frames/s, and where each actor runs.
- ``pause`` (``paused``: bool): hold or resume the replayed sources.
- ``snapshot``: read every actor's report now. Reply: the time, the link bytes from our metrics
  (``jellybean_link_bytes_total`` by link and direction), the ledger, the link backlogs.
- ``wait_idle`` (``timeout_s``): until no frame is in flight.
- ``stop``: drain and stop. Reply: the run's summary. The driver then exits.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

#: Every command's reply carries ``ok``; a failed one carries ``error`` (one line).


def wait_for_nodes(ray: Any, sites: list[str], timeout_s: float = 120.0) -> dict[str, str]:
    """Until a live node offers each site's resource; returns site -> node id."""
    from jellybean.runtime.deployment import site_resource
    from jellybean.runtime.supervisor import sites_down

    deadline = time.monotonic() + timeout_s
    waiter = threading.Event()
    while True:
        nodes = ray.nodes()
        missing = sites_down(nodes, sites)
        if not missing:
            return {site: node["NodeID"] for site in sites for node in nodes
                    if node.get("Alive") and site_resource(site) in (node.get("Resources") or {})}
        if time.monotonic() > deadline:
            raise TimeoutError(f"no node offers site {', '.join(sorted(missing))} after {timeout_s:.0f} s")
        waiter.wait(0.25)


def link_bytes(registry: Any) -> dict[str, float]:
    """``site/direction`` -> bytes, from ``jellybean_link_bytes_total``."""
    out: dict[str, float] = {}
    for family in registry.collect():
        if family.name == "jellybean_link_bytes":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    out[f"{sample.labels['site']}/{sample.labels['direction']}"] = sample.value
    return out


class Driver:
    def __init__(self, config: dict) -> None:
        self.config = config
        self.pipeline: Any = None
        self.metrics: Any = None

    def start(self) -> dict:
        import ray

        from jellybean.optimizer import plan as make_plan
        from jellybean.runtime.dataplane import Pipeline
        from jellybean.runtime.metrics import Metrics
        from jellybean.spec import load_bundle

        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
        bundle = load_bundle([Path(p) for p in self.config["documents"]])
        nodes = wait_for_nodes(ray, [s.name for s in bundle.topology.spec.sites],
                               self.config.get("nodes_timeout_s", 120.0))
        plan = make_plan(bundle, baselines=False)
        if plan.solver.status not in ("optimal", "feasible"):
            return {"ok": False, "error": f"no plan: {plan.solver.status}: {' '.join(plan.explanation)}"}
        self.metrics = Metrics()
        served = bundle
        if self.config.get("saturate"):
            # The plan's placement, sources far faster than it can go: backpressure sets the pace, so
            # what completes is the deployment's capacity (bench/sites.py's scaling).
            fast = bundle.workflow.model_copy(deep=True)
            for source in fast.spec.sources:
                source.rate_per_s = 100_000.0
            served = type(bundle)(fast, bundle.zoo, bundle.topology, bundle.sources)
        self.pipeline = Pipeline(served, plan, cache_dir=Path(self.config["cache_dir"]), metrics=self.metrics,
                                 bind_host="0.0.0.0",  # noqa: S104 - inside the site's own namespace
                                 **self.config.get("options", {}))
        self.pipeline.start(timeout_s=self.config.get("start_timeout_s", 300.0))
        d = self.pipeline.deployment
        where = {a.key: {"site": a.site, "node_id": a.info.get("node_id"), "node_ip": a.info.get("node_ip")}
                 for a in self.pipeline.actors.values()}
        return {"ok": True, "nodes": nodes, "actors": where,
                "planned_link_bytes_per_s": {f"{s}/{direction}": v
                                             for (s, direction), v in d.planned_link_bytes_per_s.items()},
                "planned_frames_per_s": d.planned_frames_per_s,
                "assignments": [{"stage": a.stage, "variant": a.variant, "site": a.site, "sites": a.sites or [a.site],
                                 "batch_size": a.batch_size}
                                for a in plan.assignments],
                "cost_per_hour": plan.cost.total_per_hour if plan.cost else None}

    def pause(self, paused: bool = True, sites: list[str] | None = None) -> dict:
        self.pipeline.pause_sources(paused, sites)
        return {"ok": True}

    def snapshot(self) -> dict:
        self.pipeline.poll()
        ledger = self.pipeline.ledger
        return {"ok": True, "t": time.time(), "link_bytes": link_bytes(self.metrics.registry),
                "frames": {"sent": ledger.sent, "completed": ledger.completed, "failed": ledger.failed,
                           "in_flight": ledger.in_flight},
                "link_buffered": self.pipeline.link_buffers, "shed": self.pipeline.shed}

    def wait_idle(self, timeout_s: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout_s
        waiter = threading.Event()
        while time.monotonic() < deadline:
            self.pipeline.poll()
            if self.pipeline.ledger.in_flight == 0:
                return {"ok": True}
            waiter.wait(0.1)
        return {"ok": False, "error": f"frames still in flight after {timeout_s:.0f} s"}

    def stop(self) -> dict:
        summary = self.pipeline.stop(drain=True)
        return {"ok": True, "summary": summary.model_dump(mode="json")}


def main(argv: list[str]) -> int:
    config = json.loads(Path(argv[0]).read_text())
    driver = Driver(config)
    out = sys.stdout
    sys.stdout = sys.stderr  # only replies on the real stdout
    for line in sys.stdin:
        try:
            request = json.loads(line)
            command = request.pop("cmd")
            reply = getattr(driver, command)(**request)
        except Exception as exc:  # noqa: BLE001 - the orchestrator gets it in words and decides
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
            command = None
        out.write(json.dumps(reply) + "\n")
        out.flush()
        if command == "stop":
            break
    return 0


class DriverClient:
    """The orchestrator's end: starts the driver in the bed's root site and sends it commands."""

    def __init__(self, bed: Any, config: dict) -> None:
        import subprocess

        assert bed.folder is not None
        path = bed.folder / "driver.json"
        path.write_text(json.dumps(config))
        self.log = open(bed.folder / "driver.log", "wb")  # noqa: SIM115 - closed in close()
        self.process = bed.popen(bed.layout.root, [sys.executable, "-m", "jellybean.testbed.driver", str(path)],
                                 cgroup="driver", stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, bufsize=0,
                                 env={**bed.env(), "PYTHONPATH": os.pathsep.join(sys.path)})
        self._buffer = b""

    def call(self, cmd: str, timeout_s: float = 600.0, **kwargs: Any) -> dict:
        """Send one command and wait (at most ``timeout_s``) for its reply line."""
        import selectors

        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write((json.dumps({"cmd": cmd, **kwargs}) + "\n").encode())
        self.process.stdin.flush()
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not selector.select(left):
                    raise RuntimeError(f"the test bed's driver did not answer {cmd!r} within {timeout_s:.0f} s")
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"the test bed's driver exited (code {self.process.wait(10)}) during {cmd!r}")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"the test bed's driver: {cmd}: {reply.get('error')}")
        return reply

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self.log.close()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
