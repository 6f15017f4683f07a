"""What each actor of a deployed workflow is: a replica, a source or an output, as plain classes.

:mod:`jellybean.runtime.replicas` makes them Ray actors (``ray.remote(ReplicaHost)``) or runs them in
this process (the tests' backend); nothing here imports Ray. Each host builds its objects in
``setup`` (called once, on the actor's own event loop), then takes calls: ``configure`` (a routing
table from the control plane), ``push``/``deliver`` (the data path, from its peers), ``report``
(telemetry and the ledger, read by the control plane: it is never on the data path) and the few
controls of its kind. Runners and datasets are built from registered *names* only (a loader, a
dataset), never from code or paths in user documents.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from pathlib import Path
from typing import Any

from jellybean.runtime.wire import DELIVER, PUSH
from jellybean.runtime.worker import Forwarder, Peer, StageWorker, dumps, loads, unpack_messages


def transport_for(kind: str, secret: str = "") -> Any:
    """The data path to peers: ``socket`` (our own connections, :mod:`jellybean.runtime.wire`),
    ``ray`` (actor calls) or ``inprocess`` (the tests' backend, direct calls)."""
    if kind == "socket":
        from jellybean.runtime.wire import SocketTransport

        return SocketTransport(secret)
    if kind == "ray":
        from jellybean.runtime.replicas import RayTransport

        return RayTransport()
    from jellybean.runtime.replicas import InProcessTransport

    return InProcessTransport()


async def _listen(host: Any, spec: dict, kind: int) -> dict:
    """For the socket transport: take calls (``kind``: PUSH or DELIVER) on a port of this node;
    returns the info to add."""
    if spec.get("transport") != "socket":
        return {}
    from jellybean.runtime.wire import WireServer

    host.wire = WireServer({kind: host.deliver if kind == DELIVER else host.push_messages}, spec.get("wire_secret", ""))
    address = await host.wire.start(spec.get("data_host") or _node()["node_ip"])
    return {"data_address": [address.host, address.port]}


#: Allocations (less deallocations) between young-generation collections in an actor's own process;
#: CPython's default is 700. See :func:`settle_heap`.
GC_YOUNG_THRESHOLD = 20_000


def settle_heap() -> None:
    """Keep the cyclic garbage collector off the data path of an actor that has its own process.

    Why. Everything a host builds in ``setup`` (the models, Ray's and torch's modules, the routing
    objects) lives as long as the process, and CPython's collector walks it again and again: every
    batch allocates hundreds of message dicts, so the young generation fills (700 objects by default)
    several times per batch and every tenth young collection promotes into an older one, and the
    oldest walks every object in the process. Measured with ``bench/runtime.py``: 5.8% of the hub
    replica's core went to 340 collections per 5 s (0.85 ms each) at 8,200 frames/s. Messages are
    plain trees freed by reference counting, so they almost never need the collector at all.

    What. ``gc.freeze()`` moves everything alive after ``setup`` into the permanent generation
    (never walked again), and the young generation's threshold goes to :data:`GC_YOUNG_THRESHOLD`:
    cycles are still collected, a few times a minute instead of hundreds of times a second (the hub
    replica then served 9,470 frames/s, with no collection in 5 s). Only in an actor's own process
    (``own_process`` in its spec): the in-process backend's hosts share the caller's interpreter,
    whose collector is not theirs to tune."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def _node() -> dict:
    import sys

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():  # never starts a Ray (the in-process backend has none)
        context = ray.get_runtime_context()
        return {"node_id": context.get_node_id(), "node_ip": ray.util.get_node_ip_address()}
    return {"node_id": "local", "node_ip": "127.0.0.1"}


def _peers(table: dict) -> dict[str, list[Peer]]:
    return {stage: [Peer(p["key"], p["site"], p["weight"], p["handle"], p.get("stateful", False),
                         p.get("batch_size", 1), p.get("delay_ms", 0.0)) for p in peers]
            for stage, peers in table.get("stages", {}).items()}


def _forwarder(transport: str, options: dict, secret: str = "", site: str | None = None) -> Forwarder:
    return Forwarder(transport_for(transport, secret), window=options.get("window", 16), coalesce=options.get("coalesce", 64),
                     max_wait_s=options.get("max_wait_ms", 2.0) / 1000.0, hold_s=options.get("hold_s", 0.0),
                     hold_capacity=options.get("hold_capacity", 10_000),
                     link_buffer_capacity=options.get("link_buffer_capacity", 10_000), site=site,
                     link_messages=options.get("link_batch_messages", 8),
                     link_wait_s=options.get("link_batch_wait_ms", 0.0) / 1000.0)


def _forwarder_report(forwarder: Forwarder) -> dict:
    links = forwarder.links
    return {"link_messages": dict(links.messages), "link_bytes": forwarder.link_bytes(), "hop": forwarder.hop_ms.state(),
            "held": forwarder.held_messages, "link_buffered": dict(forwarder.link_buffered), "dead_peers": sorted(forwarder.dead), "unroutable": forwarder.unroutable}


class _Housekeeping:
    """Held messages and old frames expire on their own loop, not on the control plane's say."""

    async def _housekeep(self, every_s: float = 0.2) -> None:
        while True:
            await asyncio.sleep(every_s)
            self.forwarder.expire_held()
            source = getattr(self, "source", None)
            if source is not None:
                source.expire()


class ReplicaHost(_Housekeeping):
    def __init__(self, spec: dict) -> None:
        #: {"key", "site", "stages", "runners_of", "batch_sizes", "threads", "consumers", "sink", "sinks_below",
        #:  "stateful", "cache_dir", "transport", "options", "runners" (in-process only)}
        self.spec = spec
        self.worker: StageWorker | None = None
        self.outputs: list[Peer] = []

    async def setup(self) -> dict:
        spec = self.spec
        runners = spec.get("runners")
        if runners is None:
            from jellybean.plugins import build_runner

            runners = [build_runner(ref, cache_dir=spec.get("cache_dir"), model_store=spec.get("model_store"),
                                    threads=spec["threads"]) for ref in spec["runners_of"]]
        stateful = spec.get("stateful", any(bool(getattr(r, "stateful", False)) for r in runners))
        options = spec.get("options", {})
        self.forwarder = _forwarder(spec.get("transport", "ray"), options, spec.get("wire_secret", ""), spec.get("site"))
        self.transport = self.forwarder.transport
        self.worker = StageWorker(spec["stages"], spec["batch_sizes"], runners, self.forwarder,
                                  consumers={k: tuple(v) for k, v in spec["consumers"].items()}, sink=spec["sink"],
                                  sinks_below={k: tuple(v) for k, v in spec.get("sinks_below", {}).items()},
                                  stateful=stateful, max_wait_s=options.get("max_wait_ms", 2.0) / 1000.0,
                                  max_forwarding=options.get("max_forwarding", 8), deliver=self._deliver,
                                  threaded=options.get("threaded", False))
        self._keeper = asyncio.ensure_future(self._housekeep())
        self.listening = await _listen(self, spec, PUSH)
        if spec.get("own_process"):
            settle_heap()
        return {**_node(), "pid": os.getpid(), "stateful": stateful, "key": spec["key"], "site": spec["site"],
                **self.listening}

    async def configure(self, table: dict) -> None:
        self.forwarder.configure(_peers(table), table.get("blocked"), gone=table.get("gone", ()))
        if table.get("batch_sizes"):  # a re-plan that kept this replica may change its batch sizes
            self.worker.batch_sizes = list(table["batch_sizes"])
        self.outputs = [Peer(o["key"], o["site"], 1.0, o["handle"], delay_ms=o.get("delay_ms", 0.0))
                        for o in table.get("outputs", [])]

    async def _deliver(self, results: list[dict]) -> None:
        if not self.outputs:
            return
        blob = dumps(results)
        for output in self.outputs:
            self.forwarder.count_sent(output.handle, output.site, len(results), len(blob))
            if output.delay_ms > 0:
                await asyncio.sleep(output.delay_ms / 1000.0)
            await self.transport.deliver(output.handle, blob)

    async def push(self, blob: bytes) -> dict:
        """A batch from a peer over Ray or in this process (:func:`jellybean.codec.pack_messages`)."""
        return await self.worker.push(unpack_messages(blob))

    async def push_messages(self, messages: list[dict]) -> dict:
        """A batch from a peer over our own connection, already decoded (:mod:`jellybean.runtime.wire`)."""
        return await self.worker.push(messages)

    async def report(self) -> dict:
        # The process's CPU seconds, where the process is the replica's own: busy_ms over cpu_s is the
        # share of its CPU that went to its models (the rest is the data plane's).
        cpu_s = time.process_time() if self.spec.get("own_process") else None
        return {"kind": "replica", "key": self.spec["key"], **self.worker.report(), **_forwarder_report(self.forwarder),
                "idle": self.worker.idle and self.forwarder.in_flight == 0, "cpu_s": cpu_s, "at": time.time()}

    async def info(self) -> dict:
        return {**_node(), "pid": os.getpid(), "key": self.spec["key"], **getattr(self, "listening", {})}

    async def close(self) -> None:
        wire = getattr(self, "wire", None)
        if wire is not None:
            wire.close()


class SourceHost(_Housekeeping):
    def __init__(self, spec: dict) -> None:
        #: {"workflow", "source", "site", "mode", "dataset", "rate_per_s", "count", "array", "dtype", "shape",
        #:  "consumers", "sinks_below", "transport", "options", "token", "bind_host", "port", "frames" (in-process
        #:  only)}
        self.spec = spec
        self.loops: list = []
        self.endpoint: str | None = None
        self.accepting = {"open": False}
        self._runner = None

    async def setup(self) -> dict:
        from jellybean.runtime.sources import FrameSource, ReplayLoop

        spec, options = self.spec, self.spec.get("options", {})
        self.forwarder = _forwarder(spec.get("transport", "ray"), options, spec.get("wire_secret", ""), spec.get("site"))
        self.source = FrameSource(spec["source"], spec["site"], self.forwarder, tuple(spec["consumers"]),
                                  max_in_flight=options.get("max_in_flight", 256),
                                  frame_timeout_s=options.get("frame_timeout_s", 120.0),
                                  sinks_below={k: tuple(v) for k, v in spec.get("sinks_below", {}).items()})
        if spec["mode"] == "replay":
            frames = spec.get("frames")
            if frames is None:
                from jellybean.plugins import load_dataset

                frames = load_dataset(spec["dataset"], seed=options.get("seed", 0))
            per_source = spec["rate_per_s"] / max(1, spec["count"])
            self.loops = [ReplayLoop(frames, self.source, per_source, overload=options.get("overload", "backpressure"),
                                     shed_after_s=options.get("shed_after_ms", 50.0) / 1000.0,
                                     offset=options.get("offset", 0) + k) for k in range(spec["count"])]
        else:
            from jellybean.runtime.endpoints import ingest_app, listening_socket, serve
            from jellybean.runtime.localray import bound_socket

            sock = bound_socket(spec.get("bind_host", "127.0.0.1"), spec.get("port", 0)) or listening_socket(
                spec.get("bind_host", "127.0.0.1"), spec.get("port", 0))
            app = ingest_app(self.source, workflow=spec["workflow"], token=spec["token"], array=spec["array"],
                             dtype=spec.get("dtype"), shape=tuple(spec["shape"]) if spec.get("shape") else None,
                             accepting=self.accepting)
            self._runner = await serve(app, sock)
            host = spec.get("advertise_host") or _advertised(spec.get("bind_host", "127.0.0.1"))
            port = sock.getsockname()[1]
            self.endpoint = (f"http://{host}:{port}/v1/ingest/{spec['workflow']}/{spec['source']}")
        self._keeper = asyncio.ensure_future(self._housekeep())
        if spec.get("own_process"):
            settle_heap()
        return {**_node(), "pid": os.getpid(), "key": f"{spec['source']}@{spec['site']}", "endpoint": self.endpoint}

    async def configure(self, table: dict) -> None:
        self.forwarder.configure(_peers(table), table.get("blocked"), gone=table.get("gone", ()))

    async def start(self) -> None:
        self.accepting["open"] = True
        for loop in self.loops:
            loop.start()

    async def set_rate(self, rate_per_s: float) -> None:
        for loop in self.loops:
            loop.rate_per_s = rate_per_s / max(1, len(self.loops))

    async def pause(self, paused: bool) -> None:
        for loop in self.loops:
            loop.paused = paused

    async def stop_sending(self) -> None:
        """No new frames (replay loops end, the endpoint answers 503); what is in flight goes on."""
        self.accepting["open"] = False
        self.source.stopping = True
        for loop in self.loops:
            await loop.stop()

    async def fail_in_flight(self, reason: str) -> int:
        failed = 0
        for frame_id in list(self.source.ledger._open):
            failed += self.source.fail(frame_id, reason)
        return failed

    async def report(self) -> dict:
        return {"kind": "source", "key": f"{self.spec['source']}@{self.spec['site']}", **self.source.report(),
                **_forwarder_report(self.forwarder), "endpoint": self.endpoint, "at": time.time()}

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class OutputHost:
    def __init__(self, spec: dict) -> None:
        #: {"workflow", "name", "kind", "site", "url", "options", "token", "bind_host", "port", "output_dir", "post"}
        self.spec = spec
        self.endpoint: str | None = None
        self._runner = None

    async def setup(self) -> dict:
        from jellybean.runtime.outputs import make_output

        spec = self.spec
        output_dir = Path(spec["output_dir"]) if spec.get("output_dir") else None
        self.output = make_output(spec["kind"], workflow=spec["workflow"], name=spec["name"], url=spec.get("url"),
                                  options=spec.get("options", {}), output_dir=output_dir, post=spec.get("post"))
        if spec["kind"] == "stream":
            from jellybean.runtime.endpoints import listening_socket, serve, stream_app
            from jellybean.runtime.localray import bound_socket

            sock = bound_socket(spec.get("bind_host", "127.0.0.1"), spec.get("port", 0)) or listening_socket(
                spec.get("bind_host", "127.0.0.1"), spec.get("port", 0))
            self._runner = await serve(stream_app(self.output, workflow=spec["workflow"], output=spec["name"],
                                                  token=spec["token"]), sock)
            host = spec.get("advertise_host") or _advertised(spec.get("bind_host", "127.0.0.1"))
            self.endpoint = f"http://{host}:{sock.getsockname()[1]}/v1/results/{spec['workflow']}/{spec['name']}"
        self.listening = await _listen(self, spec, DELIVER)
        if spec.get("own_process"):
            settle_heap()
        return {**_node(), "pid": os.getpid(), "key": f"{spec['name']}@{spec['site']}", "endpoint": self.endpoint,
                **self.listening}

    async def deliver(self, blob: bytes) -> dict:
        self.output.accept(loads(blob))
        return {}

    async def report(self) -> dict:
        return {"kind": "output", "key": f"{self.spec['name']}@{self.spec['site']}", "output": self.spec["name"],
                "site": self.spec["site"], "type": self.spec["kind"], **self.output.report(),
                "endpoint": self.endpoint, "at": time.time()}

    async def close(self) -> None:
        wire = getattr(self, "wire", None)
        if wire is not None:
            wire.close()
        if self._runner is not None:
            await self._runner.cleanup()
        closer = getattr(self.output, "close", None)
        if closer is not None:
            await closer()


def _advertised(bind_host: str) -> str:
    """The address clients use for an endpoint bound at ``bind_host``: the node's own address when it
    listens on every interface."""
    if bind_host not in ("0.0.0.0", "::", ""):  # noqa: S104 - recognising, not binding
        return bind_host
    return _node()["node_ip"]
