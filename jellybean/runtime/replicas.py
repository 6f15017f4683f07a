"""Every Ray call of the data plane's control side behind one small interface, and a fake of it.

The control plane (:class:`jellybean.runtime.dataplane.Pipeline`) creates actors, calls their control
methods and kills them through a :class:`Backend`; the actors reach each other through a
:class:`~jellybean.runtime.worker.Transport`. :class:`RayBackend` and :class:`RayTransport` are the
only code that touches Ray's actor API. :class:`InProcessBackend` runs the very same hosts
(:mod:`jellybean.runtime.hosts`) in this process, on one event loop, with calls made directly and
deaths simulated (``kill``), so routing, retries, re-planning and the ledger are tested without Ray
and without sleeps.

An actor's life (:class:`ReplicaState`): ``STARTING`` (created, loading its models) -> ``RUNNING``
-> ``DRAINING`` (a re-plan replaced it: no new messages are routed to it; it finishes what it holds)
-> ``STOPPED``; or ``DEAD`` at any point (its process or node died).
"""

from __future__ import annotations

import asyncio
import enum
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from jellybean.codec import pack_messages
from jellybean.runtime.deployment import SITE_SLOT, site_resource

#: Ray namespace of detached (adoptable) actors.
ACTOR_NAMESPACE = "jellybean"
_DEATHS = {"RayActorError", "ActorDiedError", "ActorUnavailableError", "ActorGone", "WorkerCrashedError"}


class ReplicaState(str, enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"
    DEAD = "dead"


class ActorGone(Exception):
    """The in-process backend's actor death."""


def is_death(exc: BaseException) -> bool:
    return type(exc).__name__ in _DEATHS


@dataclass(frozen=True)
class ActorSpec:
    """What to create: a host class (``replica``, ``source`` or ``output``) at a site."""

    kind: str
    site: str
    spec: dict
    num_cpus: float = 0.0
    name: str | None = None  # a detached, adoptable actor's name


class Backend(Protocol):
    transport: str  # what the hosts use to reach each other: "ray" | "inprocess"

    def create(self, actor: ActorSpec) -> Any: ...

    def adopt(self, name: str) -> Any | None: ...

    def call(self, handle: Any, method: str, *args: Any, timeout_s: float | None = None) -> Any: ...

    def call_all(self, calls: list[tuple[Any, str, tuple]], timeout_s: float | None = None) -> list[Any]:
        """Each call's result, or the exception it raised (never raises itself)."""

    def kill(self, handle: Any) -> None: ...


# --------------------------------------------------------------------------------------------------
# Ray


class RayTransport:
    async def push(self, handle: Any, messages: list[dict], sent: Callable[[int], None]) -> dict:
        blob = pack_messages(messages)
        sent(len(blob))
        return await handle.push.remote(blob)

    async def deliver(self, handle: Any, blob: bytes) -> dict:
        return await handle.deliver.remote(blob)

    def is_death(self, exc: BaseException) -> bool:
        return is_death(exc)

    def wire_bytes(self, payload_bytes: int) -> int:
        return payload_bytes  # Ray's own framing (its task specification) is not known here

    def sent_bytes(self) -> None:
        return None

    def forget(self, handle: Any) -> None:
        pass  # calls to a dead actor fail on their own (ActorDiedError, or the fake's death event)


_RAY_CLASSES: dict[str, Any] = {}


def _ray_class(kind: str) -> Any:
    if kind not in _RAY_CLASSES:
        import ray

        from jellybean.runtime.hosts import OutputHost, ReplicaHost, SourceHost

        host = {"replica": ReplicaHost, "source": SourceHost, "output": OutputHost}[kind]
        # No task events: every batch is an actor task, and Ray would report each one's state changes
        # to the head (CPU on the hot path, and bytes on every uplink the plan did not price), as
        # Ray Serve turns them off for its replicas.
        _RAY_CLASSES[kind] = ray.remote(max_restarts=0, max_concurrency=1000, enable_task_events=False)(host)
    return _RAY_CLASSES[kind]


class RayBackend:
    transport = "ray"

    def create(self, actor: ActorSpec) -> Any:
        options: dict[str, Any] = {"num_cpus": actor.num_cpus, "resources": {site_resource(actor.site): SITE_SLOT}}
        if actor.name:
            options.update(name=actor.name, lifetime="detached", namespace=ACTOR_NAMESPACE)
        # An actor has a process of its own: its host may tune that process (hosts.settle_heap).
        return _ray_class(actor.kind).options(**options).remote({**actor.spec, "own_process": True})

    def adopt(self, name: str) -> Any | None:
        import ray

        try:
            handle = ray.get_actor(name, namespace=ACTOR_NAMESPACE)
            ray.get(handle.info.remote(), timeout=10)
            return handle
        except Exception:  # noqa: BLE001 - no such actor, or one that no longer answers
            return None

    def call(self, handle: Any, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        import ray

        return ray.get(getattr(handle, method).remote(*args), timeout=timeout_s)

    def call_all(self, calls: list[tuple[Any, str, tuple]], timeout_s: float | None = None) -> list[Any]:
        import ray

        refs = [getattr(handle, method).remote(*args) for handle, method, args in calls]
        out: list[Any] = []
        # One deadline for all the calls: waiting ``timeout_s`` for each in turn made a start whose
        # actors cannot be placed wait that long once per actor.
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for ref in refs:
            try:
                out.append(ray.get(ref, timeout=None if deadline is None else max(0.0, deadline - time.monotonic())))
            except Exception as exc:  # noqa: BLE001 - returned, for the caller to judge
                out.append(exc)
        return out

    def free_cpus(self) -> float | None:
        """CPUs free in the Ray cluster now (all nodes together)."""
        import ray

        return float(ray.available_resources().get("CPU", 0.0))

    def kill(self, handle: Any) -> None:
        import ray

        try:
            ray.kill(handle)
        except Exception:  # noqa: BLE001, S110 - already dead is fine
            pass


# --------------------------------------------------------------------------------------------------
# in this process


@dataclass(eq=False)
class InProcessHandle:
    host: Any
    site: str
    alive: bool = True
    calls: int = field(default=0)
    died: asyncio.Event | None = None  # set (on the backend's loop) when the actor is killed


class InProcessTransport:
    async def push(self, handle: InProcessHandle, messages: list[dict], sent: Callable[[int], None]) -> dict:
        """The call, or ActorGone as soon as the actor dies (what it held dies with it, as in Ray). The
        batch is encoded and decoded as on a wire (a replica never sees its sender's objects)."""
        if not handle.alive:
            raise ActorGone(f"actor at {handle.site} is gone")
        blob = pack_messages(messages)
        sent(len(blob))
        handle.calls += 1
        if handle.died is None:
            handle.died = asyncio.Event()
        call = asyncio.ensure_future(handle.host.push(blob))
        death = asyncio.ensure_future(handle.died.wait())
        done, _ = await asyncio.wait({call, death}, return_when=asyncio.FIRST_COMPLETED)
        if call in done and handle.alive:
            death.cancel()
            return call.result()
        call.cancel()
        death.cancel()
        raise ActorGone(f"actor at {handle.site} died")

    async def deliver(self, handle: InProcessHandle, blob: bytes) -> dict:
        if not handle.alive:
            raise ActorGone(f"output at {handle.site} is gone")
        return await handle.host.deliver(blob)

    def is_death(self, exc: BaseException) -> bool:
        return is_death(exc)

    def wire_bytes(self, payload_bytes: int) -> int:
        return payload_bytes  # in process: nothing crosses a wire

    def sent_bytes(self) -> None:
        return None

    def forget(self, handle: Any) -> None:
        pass  # calls to a dead actor fail on their own (ActorDiedError, or the fake's death event)


class InProcessBackend:
    """The hosts in this process, on one event loop in a thread of its own. Runners and datasets are
    given directly (``spec["runners"]``, ``spec["frames"]``), so no model, dataset or Ray is needed."""

    transport = "inprocess"

    def __init__(self, *, runners: Callable[[dict], list] | None = None,
                 frames: Callable[[dict], list[dict]] | None = None) -> None:
        self.runners = runners
        self.frames = frames
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="inprocess-backend", daemon=True)
        self.thread.start()
        self.handles: list[InProcessHandle] = []
        self.named: dict[str, InProcessHandle] = {}

    def _run(self, coroutine: Any) -> Future:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def create(self, actor: ActorSpec) -> InProcessHandle:
        from jellybean.runtime.hosts import OutputHost, ReplicaHost, SourceHost

        spec = dict(actor.spec)
        if actor.kind == "replica" and self.runners is not None:
            spec["runners"] = self.runners(spec)
        if actor.kind == "source" and spec.get("mode") == "replay" and self.frames is not None:
            spec["frames"] = self.frames(spec)
        host = {"replica": ReplicaHost, "source": SourceHost, "output": OutputHost}[actor.kind](spec)
        handle = InProcessHandle(host, actor.site)
        self.handles.append(handle)
        if actor.name:
            self.named[actor.name] = handle
        return handle

    def adopt(self, name: str) -> InProcessHandle | None:
        handle = self.named.get(name)
        return handle if handle is not None and handle.alive else None

    async def _call(self, handle: InProcessHandle, method: str, args: tuple) -> Any:
        if not handle.alive:
            raise ActorGone(f"actor at {handle.site} is gone")
        return await getattr(handle.host, method)(*args)

    def call(self, handle: InProcessHandle, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        return self._run(self._call(handle, method, args)).result(timeout_s)

    def call_all(self, calls: list[tuple[Any, str, tuple]], timeout_s: float | None = None) -> list[Any]:
        futures = [self._run(self._call(handle, method, args)) for handle, method, args in calls]
        out: list[Any] = []
        for future in futures:
            try:
                out.append(future.result(timeout_s))
            except Exception as exc:  # noqa: BLE001 - returned, for the caller to judge
                out.append(exc)
        return out

    def kill(self, handle: InProcessHandle) -> None:
        """The actor dies: its calls fail from now on (its senders route their batches elsewhere)."""
        handle.alive = False

        def die() -> None:
            if handle.died is None:
                handle.died = asyncio.Event()
            handle.died.set()
            worker = getattr(handle.host, "worker", None)
            if worker is not None:
                worker.task.cancel()
            wire = getattr(handle.host, "wire", None)  # its port closes with it, as a process's would
            if wire is not None:
                wire.close()
            forwarder = getattr(handle.host, "forwarder", None)
            if forwarder is not None and hasattr(forwarder.transport, "close"):
                forwarder.transport.close()

        self.loop.call_soon_threadsafe(die)

    def close(self) -> None:
        """Cancel whatever still runs on the loop, then stop it."""
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self._run(cancel_all()).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
