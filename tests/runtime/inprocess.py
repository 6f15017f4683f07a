"""The data plane on the in-process backend: the real hosts, workers, routing and ledger, with fake
runners instead of models and no Ray. Frames are handed to a source directly and their ends awaited,
so the tests wait on outcomes, never on the clock."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from pathlib import Path

from jellybean.optimizer import plan as make_plan
from jellybean.runtime.dataplane import Pipeline
from jellybean.runtime.deployment import Deployment, ReplicaPlan
from jellybean.runtime.replicas import InProcessBackend
from jellybean.spec import load_bundle

ROOT = Path(__file__).resolve().parents[2]
DIGITS_LIVE = ROOT / "workflows" / "digits-live"
_PLANS: dict = {}


def live():
    if "live" not in _PLANS:
        bundle = load_bundle([DIGITS_LIVE])
        _PLANS["live"] = (bundle, make_plan(bundle, baselines=False))
    return _PLANS["live"]


class Gate:
    """Holds a runner until opened (set), to keep messages in a replica's hands."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.open.set()
        self.entered = threading.Event()


class Detect:
    def __init__(self, gate: Gate | None = None) -> None:
        self.gate = gate

    def __call__(self, batch: list[dict]) -> list[list[dict]]:
        return [[{"index": k, "count": m.get("digits", 2), "crop": k, "poison": m.get("poison", False)}
                 for k in range(m.get("digits", 2))] for m in batch]


class Classify:
    def __init__(self, gate: Gate | None = None, fail_on: int | None = None) -> None:
        self.gate = gate
        self.fail_on = fail_on
        self.seen = 0

    def __call__(self, batch: list[dict]) -> list[list[dict]]:
        if self.gate is not None:
            self.gate.entered.set()
            self.gate.open.wait(30)
        self.seen += len(batch)
        if any(m.get("poison") for m in batch):
            raise ValueError("a poisoned crop")
        return [[{"index": m["index"], "count": m["count"], "digit": m["index"]}] for m in batch]


class Join:
    stateful = True

    def __init__(self) -> None:
        self.parts: dict = {}
        self.seen = 0

    def __call__(self, batch: list[dict]) -> list[list[dict]]:
        out = []
        for m in batch:
            self.seen += 1
            got = self.parts.setdefault(m["frame_id"], {})
            got[m["index"]] = m["digit"]
            if len(got) == m["count"]:
                del self.parts[m["frame_id"]]
                out.append([{"reading": [got[k] for k in sorted(got)]}])
            else:
                out.append([])
        return out


class Runners:
    """Fake runners per loader name; every one made is kept (per replica key) for the assertions."""

    def __init__(self, *, gate: Gate | None = None) -> None:
        self.gate = gate
        self.made: dict[str, list] = {}

    def __call__(self, spec: dict) -> list:
        made = []
        for loader in (ref["runner"] for ref in spec["runners_of"]):
            if "detector" in loader:
                made.append(Detect())
            elif "aggregator" in loader:
                made.append(Join())
            else:
                made.append(Classify(self.gate))
        self.made[spec["key"]] = made
        return made


def stateful(loader: str) -> bool:
    return "aggregator" in loader


def pipeline(*, runners: Runners | None = None, fuse: bool = False, bundle=None, plan=None,
             **options) -> tuple[Pipeline, InProcessBackend, Runners]:
    """A pipeline of digits-live on the in-process backend (not started). Unfused by default, so that
    each stage is an actor of its own."""
    default_bundle, default_plan = live()
    runners = runners or Runners()
    backend = InProcessBackend(runners=runners)
    options.setdefault("report_interval_s", 3600.0)  # the tests poll themselves
    built = Pipeline(bundle or default_bundle, plan or default_plan, backend=backend, fuse=fuse, stateful=stateful,
                     data_token="test-data-token", **options)
    return built, backend, runners


def split(deployment: Deployment, stage: str, weights: list[float]) -> Deployment:
    """The deployment with ``stage``'s one replica split into several, with these traffic shares (and
    its CPUs shared equally)."""
    (one,) = [r for r in deployment.replicas if r.head.stage == stage]
    total = sum(weights)
    parts = [ReplicaPlan((dataclasses.replace(one.head, key=f"{one.key}-{i}", weight=one.head.weight * w / total,
                                              num_cpus=one.head.num_cpus / len(weights)),), one.stateful)
             for i, w in enumerate(weights)]
    return dataclasses.replace(deployment, replicas=tuple(r for r in deployment.replicas if r is not one) + tuple(parts))


def run(backend: InProcessBackend, coroutine, timeout_s: float = 30.0):
    return asyncio.run_coroutine_threadsafe(coroutine, backend.loop).result(timeout_s)


def inject(p: Pipeline, frames: list[dict], *, site: str = "cam-1", source: str = "cameras", reply: bool = False):
    """Hand ``frames`` to a source (as its endpoint would); returns (ids, future of their ends)."""
    host = p.actors[f"{source}@{site}"].handle.host
    admitted = run(p.backend, host.source.admit([dict(f) for f in frames], reply=reply))
    assert admitted is not None, "the source has no room for that many frames at once"
    return admitted


def ends(p: Pipeline, pending, timeout_s: float = 30.0) -> dict:
    """Wait for the ends of frames injected with :func:`inject`."""
    _ids, future = pending

    async def wait():
        return await asyncio.wait_for(asyncio.shield(future), timeout_s)

    return run(p.backend, wait(), timeout_s + 5)


def eventually(check, timeout_s: float = 10.0, p: Pipeline | None = None) -> None:
    """Wait until ``check()`` holds (reading the actors' reports first when ``p`` is given), at most
    ``timeout_s``: a wait on a condition, with a deadline, never a fixed delay."""
    tick = threading.Event()
    deadline = time.monotonic() + timeout_s
    while True:
        if p is not None:
            p.poll()
        if check():
            return
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {check}"
        tick.wait(0.01)


def host(p: Pipeline, key: str):
    return p.actors[key].handle.host
