"""The data path inside every actor: receive, batch, run, route, send, acknowledge. No Ray here.

Every replica, source and output actor hosts these objects on its own asyncio loop; the actors
themselves (:mod:`jellybean.runtime.actors`) are thin. Messages go from actor to actor directly: no
driver is on the path. What the engine needs of the world is a :class:`Transport` (send a batch to a
peer and await its outcome; tell a peer's death from other failures), so the same code runs on Ray
and, in the tests, on an in-process fake (:mod:`jellybean.runtime.replicas`).

The protocol, per hop. A sender hands a *batch* of messages to one replica of the next stage with
``push``; the call returns the batch's **outcome** once the receiver has run its models on every
message of the batch and the outputs have been pushed on in turn (recursively, to the sink and on to
the outputs): ``{"completed": [frame ids], "failed": [[frame id, reason], ...], "pending": [frame
ids], "results": {frame id: result}, "handler_ms": ...}``. So custody of a message stays with its
sender until everything downstream of it is done, which gives three properties:

- **No frame vanishes.** A replica that dies takes nothing with it: its senders' calls fail, and they
  route the batch again to another replica of the stage (the plan's other shares, or the ones a
  re-plan starts; meanwhile bounded *held* messages wait for a route). What cannot be routed ends
  as failed *with a reason*, in the outcome. Every frame's end reaches its source, whose ledger
  (:class:`~jellybean.runtime.flow.Ledger`) is the one place frames are counted: sent, completed,
  failed; a source's ledger is exact, and the totals are their sums.
- **Backpressure is end to end.** Each sender keeps at most ``window`` batches outstanding per peer;
  a receiver whose queue is full leaves its callers' calls open; their windows fill, their own
  queues fill, and so on back to the ingest endpoint (429) or the replay loop (which slows down, or
  sheds explicitly).
- **A waiting client gets its result** (``POST ...?wait=``): results of frames marked ``reply`` travel
  back in the outcomes; no other result ever travels down the tiers.

A join (a stateful runner: a frame's parts meet at one replica, routed by frame id) reports the parts
it holds as ``pending``; the part that completes the frame carries ``completed``.

Several sinks. Where a workflow ends in several sinks, a frame may reach more than one, and its
outcome says how it ended at each (:func:`mark`): a sink's replica names itself in the ends it
marks, and a sender names, in the ends of what it sent to a stage, the sinks below that stage
(:func:`scope`). The source then ends the frame once every sink it reaches has: completed if none
failed it (:mod:`jellybean.runtime.sources`). A workflow with one sink pays nothing for this.

Batching happens twice, both dynamic (:func:`~jellybean.runtime.flow.collect_batch`: whatever is
there, up to the size, waiting at most ``max_wait_s`` for company): a sender coalesces messages for
one peer into one call (calls cost about a millisecond), and a replica forms its model's batches from
everything its callers pushed.
"""

from __future__ import annotations

import asyncio
import math
import pickle
import time
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from collections.abc import Iterable


from jellybean.codec import pack_messages, unpack_messages  # noqa: F401 - re-exported: the data plane's batches
from jellybean.runtime.flow import LATENCY_BOUNDS_MS, RetryPolicy, Sketch, queue_capacity
from jellybean.runtime.routing import AffinityRouter, WeightedRouter

#: Message fields every runner's outputs inherit from their input (the frame's identity and timing).
META = ("frame_id", "source", "site", "received_at", "sent_at", "reply", "truth", "correct")
#: Fields of a message that are the runtime's, not a model's (left out of results).
INTERNAL = {"reply", "truth", "sent_at"}


def dumps(value: Any) -> bytes:
    return pickle.dumps(value, protocol=5)


def loads(blob: bytes) -> Any:
    return pickle.loads(blob)  # noqa: S301 - blobs only ever come from our own actors


COMPLETED, FAILED, PENDING = "completed", "failed", "pending"
_RANK = {PENDING: 1, FAILED: 2, COMPLETED: 3}


def new_outcome() -> dict:
    return {"ends": {}}


def mark(outcome: dict, frame_id: Any, state: str, detail: Any = None, correct: bool = False,
         latency_ms: float | None = None, sinks: dict | None = None) -> dict:
    """Record ``state`` for ``frame_id`` unless the outcome already holds a stronger one. A completed
    frame also says whether its result was right (``correct``: frames that carry their ground truth)
    and how long it took from its source to its result (``latency_ms``, measured at the sink), so
    accuracy and latency are measured at the sources without sending results back.

    Several sinks. A frame may reach several sinks, and it ends at each: ``sinks`` holds its ends per
    sink, ``{sink: [state, detail, correct, latency_ms]}``, kept as a fifth element of the frame's
    entry, each sink's by the same rank (the frame-level four stay the strongest of all). An end that
    names no sink (a model error, no route: it concerns every sink downstream of where it happened)
    joins an entry that has per-sink ends under the key None, until :func:`scope` says which sinks it
    concerns. A workflow with one sink never has per-sink ends: its entries stay four elements."""
    ends = outcome["ends"]
    known = ends.get(frame_id)
    if sinks is None and (known is None or len(known) == 4):
        if known is None or _RANK[state] > _RANK[known[0]]:
            ends[frame_id] = [state, detail, correct, latency_ms]
        return outcome
    per_sink = {} if known is None else dict(known[4]) if len(known) > 4 else {None: known[:4]}
    for sink, end in (sinks if sinks is not None else {None: [state, detail, correct, latency_ms]}).items():
        have = per_sink.get(sink)
        if have is None or _RANK[end[0]] > _RANK[have[0]]:
            per_sink[sink] = end
    top = known[:4] if known is not None else None
    if top is None or _RANK[state] > _RANK[top[0]]:
        top = [state, detail, correct, latency_ms]
    ends[frame_id] = [*top, per_sink]
    return outcome


def scope(outcome: dict, sinks: tuple[str, ...]) -> dict:
    """``outcome`` (of messages sent to one stage) with every end that names no sink made an end at
    each of ``sinks``, the sinks downstream of that stage: what happened to a message on its way there
    happened on its way to each of them. A new outcome; ``outcome`` is left as it was."""
    out = new_outcome()
    for frame_id, end in outcome["ends"].items():
        per_sink = dict(end[4]) if len(end) > 4 else {None: end[:4]}
        unnamed = per_sink.pop(None, None)
        if unnamed is not None:
            for sink in sinks:
                have = per_sink.get(sink)
                if have is None or _RANK[unnamed[0]] > _RANK[have[0]]:
                    per_sink[sink] = unnamed
        out["ends"][frame_id] = [*end[:4], per_sink]
    return out


def scoped(future: asyncio.Future, sinks: tuple[str, ...]) -> asyncio.Future:
    """A future of ``future``'s outcome passed through :func:`scope`."""
    result = asyncio.get_running_loop().create_future()
    future.add_done_callback(lambda done: _settle(result, scope(done.result(), sinks)) if not done.cancelled()
                             else result.cancel())
    return result


def merge_into(total: dict, part: dict, only: Any = None) -> dict:
    """Merge ``part``'s ends into ``total`` (only ``only``'s, when given)."""
    ends = part.get("ends", {})
    if only is not None:
        end = ends.get(only)
        if end is not None:
            mark(total, only, *end)
        return total
    for frame_id, end in ends.items():
        mark(total, frame_id, *end)
    return total


def failure(frame_id: Any, reason: str) -> dict:
    return mark(new_outcome(), frame_id, FAILED, reason)


def to_jsonable(value: Any) -> Any:
    """numpy arrays and scalars to lists and numbers, recursively (results are JSON)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def result_of(message: dict, completed_at: float, sink: str | None = None) -> dict:
    """What an output receives for one frame: its identity and timing, the sink that made it
    (``sink``), the sink model's outputs under ``outputs`` (name -> nested lists), and, as before
    ``outputs`` existed, the same fields at the top level too (readers of the first results' shape
    keep working)."""
    out = {"frame_id": message.get("frame_id"), "source": message.get("source"), "site": message.get("site"),
           "received_at": message.get("received_at"), "completed_at": completed_at}
    if sink is not None:
        out["sink"] = sink
    produced = {}
    for key, value in message.items():
        if key not in out and key not in INTERNAL:
            value = to_jsonable(value)
            out[key] = value
            if key != "correct":
                produced[key] = value
    out["outputs"] = produced
    if message.get("truth") is None:
        out.pop("correct", None)  # nothing to be right about without a ground truth
    return out


class Transport(Protocol):
    """How an actor reaches its peers: the one place that knows what a peer handle is."""

    async def push(self, handle: Any, messages: list[dict], sent: Callable[[int], None]) -> dict:
        """Send a batch to a replica and await its outcome; ``sent(payload_bytes)`` is called once the
        batch is encoded (:mod:`jellybean.codec`), with its size."""
        ...

    async def deliver(self, handle: Any, blob: bytes) -> dict: ...

    def is_death(self, exc: BaseException) -> bool: ...

    def wire_bytes(self, payload_bytes: int) -> int:
        """What sending ``payload_bytes`` costs on a link, framing included (as far as it is known)."""
        ...

    def sent_bytes(self) -> dict[Any, int] | None:
        """Bytes on the wire to each peer handle so far, where the transport can measure them."""
        ...

    def forget(self, handle: Any) -> None:
        """The control plane says this peer is dead: fail the calls waiting on it now (they are routed
        again), whatever its connection still looks like (a killed process can linger)."""
        ...


@dataclass
class Peer:
    key: str
    site: str
    weight: float
    handle: Any
    stateful: bool = False
    batch_size: int = 1
    delay_ms: float = 0.0  # emulated one-way latency of the links to it (sites on one machine)


@dataclass
class LinkCounts:
    """Bytes and messages this actor sent to each site (the control plane maps them onto uplinks)."""

    messages: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    bytes: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class NoRoute(Exception):
    """No live replica of a stage is reachable now."""


def _settle(future: asyncio.Future, outcome: dict) -> None:
    if not future.done():
        future.set_result(outcome)


def merged(futures: list[asyncio.Future]) -> asyncio.Future:
    """One future of the outcomes of ``futures``, merged (no task: a callback counts them down)."""
    loop = asyncio.get_running_loop()
    if len(futures) == 1:
        return futures[0]
    result = loop.create_future()
    total = new_outcome()
    if not futures:
        result.set_result(total)
        return result
    left = [len(futures)]

    def done(future: asyncio.Future) -> None:
        merge_into(total, future.result())
        left[0] -= 1
        if left[0] == 0:
            _settle(result, total)

    for future in futures:
        future.add_done_callback(done)
    return result


# --------------------------------------------------------------------------------------------------
# sending


@dataclass
class _Unit:
    """Messages for one stage that travel together, and the future of their outcome."""

    stage: str
    messages: list[dict]
    done: asyncio.Future
    attempts: int = 0
    excluded: set = field(default_factory=set)
    at: float = 0.0  # when it reached its channel (loop time): a link batch waits from its oldest unit

    def split(self, count: int) -> tuple[_Unit, _Unit]:
        """The first ``count`` messages and the rest, as two units whose outcomes settle this one's."""
        loop = asyncio.get_running_loop()
        head = _Unit(self.stage, self.messages[:count], loop.create_future(), self.attempts, set(self.excluded), self.at)
        tail = _Unit(self.stage, self.messages[count:], loop.create_future(), self.attempts, set(self.excluded), self.at)
        merged([head.done, tail.done]).add_done_callback(lambda f, u=self: _settle(u.done, f.result()))
        return head, tail


class _Channel:
    """Everything on its way to one peer: units waiting, a coalescing sender, a window of
    outstanding calls. The queue needs no bound of its own: what can be in it is bounded by its
    callers (a replica's ``max_forwarding`` batches, a source's room).

    A peer on *another site* is reached over an uplink, where each send costs framing of its own
    (our header, the batch's, TCP/IP's per segment: about a hundred bytes) that the plan prices at
    ``link_messages`` messages per send (:meth:`jellybean.optimizer.framing.Framing.per_send`): so a
    send there waits until ``link_messages`` messages are queued or its oldest has waited
    ``link_wait_s``, and carries at most ``link_messages`` (a larger unit, such as a batch's outputs
    arriving at once, is split, its outcome merged). The bytes a link carries are then those the plan
    priced. A backlog (two sends' worth queued, or every call of the window outstanding: the peer or
    the link cannot keep up) leaves in one send of whatever is queued, up to ``coalesce``: fewer bytes
    than priced (a send's own headers, 57 bytes, are paid once instead of per ``link_messages``), and
    no more calls than the backlog needs. Saturated, that is most of what a replica's data plane costs:
    the digits hub sent its crops' readings to the cloud in sends of 4 and spent 19% of its CPU
    outside its models; in sends of what was queued, 15%. A message that fills a segment alone (``link_messages`` 1) waits for
    nobody. A peer on the same site gets whatever is queued, at once."""

    def __init__(self, peer: Peer, owner: Forwarder) -> None:
        self.peer = peer
        self.owner = owner
        self.units: deque[_Unit] = deque()
        self.arrived = asyncio.Event()
        self.window = asyncio.Semaphore(owner.window)
        self.calls: set[asyncio.Task] = set()
        self.remote = (owner.link_wait_s > 0 and owner.link_messages > 1 and owner.site is not None
                       and peer.site != owner.site)
        self.limit = owner.link_messages if self.remote else owner.coalesce
        self.task = asyncio.ensure_future(self._run())

    def put(self, unit: _Unit) -> None:
        unit.at = asyncio.get_running_loop().time()
        self.units.append(unit)
        self.arrived.set()

    @property
    def queued(self) -> int:
        return sum(len(u.messages) for u in self.units)

    async def _company(self, wait_s: float, until: float | None = None) -> None:
        """Wait for more units, at most ``wait_s`` (or until loop time ``until``)."""
        loop = asyncio.get_running_loop()
        remaining = wait_s if until is None else until - loop.time()
        if remaining <= 0:
            return
        self.arrived.clear()
        try:
            await asyncio.wait_for(self.arrived.wait(), remaining)
        except TimeoutError:
            pass

    async def _run(self) -> None:
        owner = self.owner
        loop = asyncio.get_running_loop()
        while True:
            while not self.units:
                self.arrived.clear()
                await self.arrived.wait()
            limit = self.limit
            if self.remote:
                until = self.units[0].at + owner.link_wait_s
                while self.units and self.queued < self.limit and loop.time() < until:
                    await self._company(0.0, until)
                if self.window.locked() or self.queued >= 2 * self.limit:  # a backlog leaves at once
                    limit = owner.coalesce
                await self.window.acquire()
            else:
                await self.window.acquire()
                if owner.max_wait_s > 0 and self.queued < self.limit and len(self.calls) > 0:
                    # Calls are outstanding anyway: wait a moment for company before the next one.
                    await self._company(owner.max_wait_s)
            taken: list[_Unit] = []
            count = 0
            while self.units and count < limit:
                unit = self.units[0]
                room = limit - count
                if len(unit.messages) > room:
                    if taken and not self.remote:
                        break  # the same site: whole units only, the next call takes it
                    if self.remote:
                        head, tail = unit.split(room)
                        self.units[0] = tail
                        unit = head
                    else:
                        self.units.popleft()
                else:
                    self.units.popleft()
                taken.append(unit)
                count += len(unit.messages)
            if not taken:
                self.window.release()
                continue
            call = asyncio.ensure_future(self._call(taken))
            self.calls.add(call)
            call.add_done_callback(self.calls.discard)

    async def _call(self, units: list[_Unit]) -> None:
        owner = self.owner
        try:
            messages = [m for u in units for m in u.messages]
            site = self.peer.site

            def sent(payload_bytes: int) -> None:
                owner.count_sent(self.peer.handle, site, len(messages), payload_bytes)

            started = time.perf_counter()
            try:
                if self.peer.delay_ms > 0:  # the links' propagation delay, emulated (the window stays taken)
                    await asyncio.sleep(self.peer.delay_ms / 1000.0)
                outcome = await owner.transport.push(self.peer.handle, messages, sent)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed call is routed again
                if owner.transport.is_death(exc):
                    owner.peer_died(self.peer.key)
                reason = f"{type(exc).__name__} on {self.peer.key}"
                for unit in units:
                    unit.attempts += 1
                    unit.excluded.add(self.peer.key)
                    owner.resend(unit, reason)
                return
            elapsed = (time.perf_counter() - started) * 1000.0 - self.peer.delay_ms
            owner.hop_ms.add(max(0.0, elapsed - outcome.get("handler_ms", 0.0)))
            for unit in units:
                _settle(unit.done, outcome)
        finally:
            self.window.release()

    def close(self) -> list[_Unit]:
        """Stop sending; the units still waiting are returned (to be routed elsewhere)."""
        self.task.cancel()
        left = list(self.units)
        self.units.clear()
        return left


class Forwarder:
    """Routes messages to the replicas of the next stages, by the plan's shares, and sends them.

    ``send(stage, messages)`` returns a future of the messages' outcome (which may hold other
    frames too: a caller picks out its own). Routing: :class:`WeightedRouter` (smooth weighted round
    robin; deterministic, exact over every prefix) or, for a stateful stage, :class:`AffinityRouter`
    (rendezvous hashing of the frame id: every part of a frame, from any sender, meets at one replica).
    A call that fails is routed again, excluding the replica that failed, up to ``retry``; a dead
    replica leaves the routes at once. With no route, messages are *held* (at most ``hold_capacity``,
    for ``hold_s``) until a new routing table arrives, else they fail with the reason."""

    def __init__(self, transport: Transport, *, window: int = 16, coalesce: int = 64, max_wait_s: float = 0.002,
                 retry: RetryPolicy | None = None, hold_s: float = 0.0, hold_capacity: int = 10_000,
                 link_buffer_capacity: int = 10_000, site: str | None = None, link_messages: int = 8,
                 link_wait_s: float = 0.0) -> None:
        self.transport = transport
        #: This actor's site, and how sends to peers on other sites batch (see :class:`_Channel`).
        self.site = site
        self.link_messages = max(1, link_messages)
        self.link_wait_s = link_wait_s
        #: stage -> the cut uplink behind which its replicas are: messages wait for the link, bounded.
        self.blocked: dict[str, str] = {}
        self.link_buffer_capacity = link_buffer_capacity
        self.link_buffered: dict[str, int] = defaultdict(int)
        self.window = window
        self.coalesce = coalesce
        self.max_wait_s = max_wait_s
        self.retry = retry or RetryPolicy()
        self.hold_s = hold_s
        self.hold_capacity = hold_capacity
        self.peers: dict[str, dict[str, Peer]] = {}  # stage -> key -> peer
        self.routers: dict[str, Any] = {}
        self.channels: dict[str, _Channel] = {}
        self.dead: set[str] = set()
        self.held: deque[tuple[float, _Unit]] = deque()
        self.held_messages = 0
        self.links = LinkCounts()
        self.measured = transport.sent_bytes() is not None  # the kernel counts this transport's bytes
        self.handle_sites: dict[Any, str] = {}  # peer handle -> its site, for the measured counts
        self.hop_ms = Sketch(LATENCY_BOUNDS_MS)  # a call's round trip less the peer's handling
        self.unroutable = 0  # messages that failed for want of a route
        self.on_death: Callable[[str], None] | None = None

    # --- configuration --------------------------------------------------------------------------------
    def count_sent(self, handle: Any, site: str, messages: int, payload_bytes: int) -> None:
        """A call to ``handle`` (at ``site``) carried ``messages`` in ``payload_bytes``."""
        self.links.messages[site] += messages
        self.links.bytes[site] += self.transport.wire_bytes(payload_bytes)
        if self.measured:
            self.handle_sites[handle] = site

    def link_bytes(self) -> dict[str, int]:
        """Bytes sent to each site so far: the kernel's count of what this actor's connections put on
        the wire where the transport measures it (headers, ACKs and retransmissions included), else
        the transport's estimate of each call's bytes."""
        counts = self.transport.sent_bytes() if self.measured else None
        if counts is None:
            return dict(self.links.bytes)
        out: dict[str, int] = defaultdict(int)
        for handle, sent in counts.items():
            site = self.handle_sites.get(handle)
            if site is not None:
                out[site] += sent
        return dict(out)

    def configure(self, stages: dict[str, list[Peer]], blocked: dict[str, str] | None = None,
                  gone: Iterable[Any] = ()) -> None:
        """A new routing table (a re-plan, a death, a cut or restored uplink). Channels to replicas no
        longer listed are closed and their messages routed again; held messages are retried; calls
        waiting on a peer in ``gone`` (handles the control plane knows dead) fail now, and are routed
        again, instead of waiting for a connection that a lingering process may keep open.
        ``blocked`` names, per stage, the cut uplink its replicas are behind: messages for it wait
        (at most ``link_buffer_capacity`` per link) until a table without the cut arrives."""
        wanted = {p.key for peers in stages.values() for p in peers}
        self.peers = {stage: {p.key: p for p in peers} for stage, peers in stages.items()}
        self.blocked = dict(blocked or {})
        self.link_buffered = defaultdict(int)
        self.routers = {}
        self.dead -= wanted  # a replica listed again (a restart under the same key) is alive
        for handle in gone:
            self.transport.forget(handle)
        moved: list[_Unit] = []
        for key in list(self.channels):
            if key not in wanted:
                moved += self.channels.pop(key).close()
        while self.held:
            moved.append(self.held.popleft()[1])
        self.held_messages = 0
        for unit in moved:
            unit.excluded.clear()
            self._route(unit)

    def _router(self, stage: str):  # noqa: ANN202 - a router or None
        router = self.routers.get(stage)
        if router is None:
            peers = self.peers.get(stage, {})
            weights = {k: p.weight for k, p in peers.items() if k not in self.dead}
            if not weights:
                return None
            stateful = any(p.stateful for p in peers.values())
            router = AffinityRouter(weights) if stateful else WeightedRouter(weights)
            self.routers[stage] = router
        return router

    def peer_died(self, key: str) -> None:
        if key in self.dead:
            return
        self.dead.add(key)
        for router in self.routers.values():
            router.remove(key)
        channel = self.channels.pop(key, None)
        if channel is not None:
            for unit in channel.close():
                unit.excluded.add(key)
                self._route(unit)
        if self.on_death is not None:
            self.on_death(key)

    # --- sending ------------------------------------------------------------------------------------
    def send(self, stage: str, messages: list[dict]) -> asyncio.Future:
        unit = _Unit(stage, messages, asyncio.get_running_loop().create_future())
        self._route(unit)
        return unit.done

    def resend(self, unit: _Unit, reason: str) -> None:
        if not self.retry.retry(unit.attempts):
            self._fail(unit, f"stage {unit.stage}: {reason}")
            return
        self._route(unit)

    def _route(self, unit: _Unit) -> None:
        router = self._router(unit.stage)
        if router is None:
            self._no_route(unit)
            return
        if len(router.weights) == 1 and not unit.excluded:  # the common case: one replica, one unit
            self._enqueue(next(iter(router.weights)), unit)
            return
        groups: dict[str | None, list[dict]] = defaultdict(list)
        if isinstance(router, AffinityRouter):
            for message in unit.messages:
                groups[router.pick(message.get("frame_id"), exclude=unit.excluded)].append(message)
        else:
            for message in unit.messages:
                groups[router.pick(exclude=unit.excluded)].append(message)
        if len(groups) == 1 and None not in groups:
            self._enqueue(next(iter(groups)), unit)
            return
        parts = []
        for choice, messages in groups.items():
            part = _Unit(unit.stage, messages, asyncio.get_running_loop().create_future(), unit.attempts,
                         set(unit.excluded))
            if choice is None:
                self._no_route(part)
            else:
                self._enqueue(choice, part)
            parts.append(part.done)
        merged(parts).add_done_callback(lambda f, u=unit: _settle(u.done, f.result()))

    def _enqueue(self, key: str, unit: _Unit) -> None:
        channel = self.channels.get(key)
        if channel is None:
            channel = self.channels[key] = _Channel(self.peers[unit.stage][key], self)
        channel.put(unit)

    def _no_route(self, unit: _Unit) -> None:
        link = self.blocked.get(unit.stage)
        if link is not None:
            if self.link_buffered[link] + len(unit.messages) <= self.link_buffer_capacity:
                self.held.append((math.inf, unit))
                self.held_messages += len(unit.messages)
                self.link_buffered[link] += len(unit.messages)
                return
            self._fail(unit, f"uplink of {link} is down and its buffer ({self.link_buffer_capacity} messages) is full")
            return
        if self.hold_s > 0 and self.held_messages + len(unit.messages) <= self.hold_capacity:
            self.held.append((time.monotonic() + self.hold_s, unit))
            self.held_messages += len(unit.messages)
            return
        self.unroutable += len(unit.messages)
        self._fail(unit, f"no live replica of stage {unit.stage} reachable from here")

    def _fail(self, unit: _Unit, reason: str) -> None:
        outcome = new_outcome()
        for message in unit.messages:
            mark(outcome, message.get("frame_id"), FAILED, reason)
        _settle(unit.done, outcome)

    def expire_held(self, now: float | None = None) -> int:
        """Fail held messages whose time is up; how many."""
        now = time.monotonic() if now is None else now
        expired = 0
        keep: deque[tuple[float, _Unit]] = deque()
        while self.held:
            deadline, unit = self.held.popleft()
            if deadline > now:
                keep.append((deadline, unit))
                continue
            self.held_messages -= len(unit.messages)
            self._fail(unit, f"no live replica of stage {unit.stage} for {self.hold_s:g} s (no re-plan could serve it)")
            expired += len(unit.messages)
        self.held = keep
        return expired

    @property
    def in_flight(self) -> int:
        return sum(c.queued + len(c.calls) for c in self.channels.values()) + self.held_messages

    async def close(self) -> None:
        for channel in list(self.channels.values()):
            for unit in channel.close():
                self._fail(unit, "the sender stopped")
            for call in list(channel.calls):
                call.cancel()
        self.channels.clear()


# --------------------------------------------------------------------------------------------------
# a replica


Runner = Callable[[list[dict]], list[list[dict]]]


@dataclass
class StageCounts:
    requests: int = 0
    batches: int = 0
    outputs: int = 0
    failed: int = 0
    busy_ms: float = 0.0
    processing_ms: Sketch = field(default_factory=lambda: Sketch(LATENCY_BOUNDS_MS))
    batch_sizes: dict = field(default_factory=dict)  # size -> batches run at that size


def _sinks_of(sinks_below: dict[str, tuple[str, ...]] | None) -> frozenset[str]:
    """The sinks of a workflow, from its map of the sinks downstream of each stage."""
    return frozenset(sink for sinks in (sinks_below or {}).values() for sink in sinks)


class StageWorker:
    """One replica: its runners (a fused chain), its inbound queue, its batches, its outputs.

    ``push(messages)`` is what a sender calls; it returns the outcome of the messages once they are
    done (see the module docstring). The loop takes what senders pushed (whole pushes, at least the
    first stage's batch size when there is that much, waiting at most ``max_wait_s`` for company),
    runs the chain's models over it in batches of each stage's size, and sends the outputs on; at most
    ``max_forwarding`` of those sends are outstanding at once, so a slow downstream slows this
    replica instead of piling its outputs up in memory. A full inbound queue (``capacity`` messages)
    keeps its callers waiting: that is the backpressure a sender feels."""

    def __init__(self, stages: list[str], batch_sizes: list[int], runners: list[Runner], forwarder: Forwarder, *,
                 consumers: dict[str, tuple[str, ...]], sink: str, stateful: bool = False, max_wait_s: float = 0.002,
                 max_forwarding: int = 8, deliver: Callable[[list[dict]], Any] | None = None,
                 threaded: bool = False, capacity: int | None = None, max_take: int = 64,
                 sinks_below: dict[str, tuple[str, ...]] | None = None) -> None:
        self.stages = stages
        self.batch_sizes = batch_sizes
        self.runners = runners
        self.forwarder = forwarder
        self.consumers = consumers
        self.sink = sink
        #: stage -> the sinks downstream of it (itself, for a sink), for a workflow with several sinks:
        #: ends are then kept per sink (:func:`mark`). None or one sink: the workflow's only sink, ``sink``.
        self.sinks_below = sinks_below if sinks_below and len(_sinks_of(sinks_below)) > 1 else None
        self.sinks = _sinks_of(self.sinks_below) if self.sinks_below else frozenset([sink])
        self.stateful = stateful
        self.max_wait_s = max_wait_s
        self.deliver = deliver
        self.threaded = threaded
        self.counts = {stage: StageCounts() for stage in stages}
        self.capacity = capacity or queue_capacity(max(batch_sizes[0], max_take))
        self.max_take = max(max_take, batch_sizes[0])
        self.inbound: deque[tuple[list[dict], asyncio.Future]] = deque()
        self.queued = 0
        self.arrived = asyncio.Event()
        self.space = asyncio.Event()
        self.forwarding = asyncio.Semaphore(max_forwarding)
        self.completed_recently: OrderedDict = OrderedDict()  # frame ids completed at the sink (dedupe)
        #: A join's frames whose parts met, with how each ended downstream: a part sent again (its
        #: first outcome was lost with a replica that died after passing it on) gets that end instead
        #: of waiting in the join for parts that will never come again.
        self.joined_recently: OrderedDict = OrderedDict()
        self.completed = 0
        self.busy = 0  # batches taken and not yet done
        self.task = asyncio.ensure_future(self._run())

    async def push(self, messages: list[dict]) -> dict:
        started = time.perf_counter()
        while self.queued >= self.capacity:
            self.space.clear()
            await self.space.wait()
        future = asyncio.get_running_loop().create_future()
        self.inbound.append((messages, future))
        self.queued += len(messages)
        self.arrived.set()
        outcome = await future
        return {"ends": outcome["ends"], "handler_ms": (time.perf_counter() - started) * 1000.0}

    async def _run(self) -> None:
        while True:
            while not self.inbound:
                self.arrived.clear()
                await self.arrived.wait()
            if self.queued < self.batch_sizes[0] and self.max_wait_s > 0:
                self.arrived.clear()
                try:
                    await asyncio.wait_for(self.arrived.wait(), self.max_wait_s)
                except TimeoutError:
                    pass
            entries = self._take()
            taken = sum(len(batch) for batch, _ in entries)
            self.queued -= taken
            self.space.set()
            messages = entries[0][0] if len(entries) == 1 else [m for batch, _ in entries for m in batch]
            if self.stateful and self.joined_recently:
                messages = [m for m in messages if m.get("frame_id") not in self.joined_recently]
            self.busy += 1
            if self.threaded:
                outputs, error = await asyncio.get_running_loop().run_in_executor(None, self._run_chain, messages)
            else:
                outputs, error = self._run_chain(messages)
            if error is not None:
                for batch, future in entries:
                    outcome = new_outcome()
                    for message in batch:
                        mark(outcome, message.get("frame_id"), FAILED, error)
                    _settle(future, outcome)
                self.busy -= 1
                continue
            await self.forwarding.acquire()
            task = asyncio.ensure_future(self._forward(entries, messages, outputs))
            task.add_done_callback(self._forwarded)

    def _take(self) -> list[tuple[list[dict], asyncio.Future]]:
        """The pushes to run now: whole batches of the first stage when that much is queued.

        Why whole batches. A model's cost per message falls steeply with the batch (the digits
        detector: 153 us per frame at 2, 33 at 16; the classifier 210 and 45 us), so a take of 50
        frames run as 16+16+16+2 costs 14% more than 50 frames in full batches. So the take is the
        largest multiple of the batch size that is queued (at most ``max_take``); a push that straddles
        the end is split, its rest left first in line, and its caller's outcome is the merge of both
        parts. With less than one batch queued (after ``max_wait_s``), everything queued is taken."""
        size = max(1, self.batch_sizes[0])
        limit = min(self.queued, self.max_take)
        if limit >= size:
            limit -= limit % size
        entries: list[tuple[list[dict], asyncio.Future]] = []
        taken = 0
        while self.inbound and taken < limit:
            batch, future = self.inbound[0]
            if taken + len(batch) <= limit:
                entries.append(self.inbound.popleft())
                taken += len(batch)
                continue
            cut = limit - taken
            loop = asyncio.get_running_loop()
            head, rest = loop.create_future(), loop.create_future()
            merged([head, rest]).add_done_callback(
                lambda done, future=future: _settle(future, done.result()) if not done.cancelled() else None)
            self.inbound[0] = (batch[cut:], rest)
            entries.append((batch[:cut], head))
            taken += cut
        return entries

    def _forwarded(self, task: asyncio.Task) -> None:
        self.forwarding.release()
        self.busy -= 1
        if not task.cancelled() and task.exception() is not None:  # never expected: fail, never lose
            import logging

            logging.getLogger(__name__).error("forwarding failed: %r", task.exception())

    def _run_chain(self, payloads: list[dict]) -> tuple[list[list[dict]], str | None]:
        """The chain's runners over the messages: the last stage's outputs per message, or an error."""
        outputs: list[list[dict]] = [[p] for p in payloads]
        for stage, runner, batch_size in zip(self.stages, self.runners, self.batch_sizes):
            flat: list[dict] = []
            owner: list[int] = []
            for index, produced in enumerate(outputs):
                flat.extend(produced)
                owner.extend([index] * len(produced))
            following: list[list[dict]] = [[] for _ in outputs]
            counts = self.counts[stage]
            for start in range(0, len(flat), max(1, batch_size)):
                chunk = flat[start:start + batch_size]
                began = time.perf_counter()
                try:
                    produced_all = runner(chunk)
                except Exception as exc:  # noqa: BLE001 - a model that fails fails its batch, with the reason
                    counts.failed += len(chunk)
                    return [], f"stage {stage}: {type(exc).__name__}: {str(exc)[:200]}"
                ms = (time.perf_counter() - began) * 1000.0
                counts.requests += len(chunk)
                counts.batches += 1
                counts.busy_ms += ms
                counts.processing_ms.add(ms)
                counts.batch_sizes[len(chunk)] = counts.batch_sizes.get(len(chunk), 0) + 1
                for offset, produced in enumerate(produced_all):
                    # The runtime's fields travel with every output its runner left them off (one
                    # dict merge per output, at C speed: this loop runs for every message).
                    source = chunk[offset]
                    carried = {key: source[key] for key in META if key in source}
                    following[owner[start + offset]].extend([{**carried, **out} for out in produced])
                    counts.outputs += len(produced)
            outputs = following
        return outputs, None

    async def _forward(self, entries: list[tuple[list[dict], asyncio.Future]], messages: list[dict],
                       outputs: list[list[dict]]) -> None:
        tail = self.stages[-1]
        own = new_outcome()
        sends: list[asyncio.Future] = []
        if self.stateful:
            for message, produced in zip(messages, outputs):
                if not produced:
                    mark(own, message.get("frame_id"), PENDING)  # a join holds the part for the frame's others
            for batch, _future in entries:
                for message in batch:
                    end = self.joined_recently.get(message.get("frame_id"))
                    if end is not None:  # a part sent again, of a frame that met already: its end
                        mark(own, message.get("frame_id"), *end)
        if tail in self.sinks:
            several = self.sinks_below is not None
            results: list[dict] = []
            now = time.time()
            for produced in outputs:
                for out in produced:
                    frame_id = out.get("frame_id")
                    known = self.completed_recently.get(frame_id)
                    if known is not None:
                        # A frame sent again (its first outcome was lost with a replica that died after
                        # the sink had it): it did complete, once; its result is not delivered twice.
                        mark(own, frame_id, COMPLETED, None, *known,
                             sinks={tail: [COMPLETED, None, *known]} if several else None)
                        continue
                    latency = (now - out["received_at"]) * 1000.0 if out.get("received_at") else None
                    correct = out.get("correct")  # None: no ground truth, nothing to judge
                    correct = None if correct is None else bool(correct)
                    self.completed_recently[frame_id] = (correct, latency)
                    if len(self.completed_recently) > 100_000:
                        self.completed_recently.popitem(last=False)
                    self.completed += 1
                    result = result_of(out, now, tail)
                    results.append(result)
                    detail = result if out.get("reply") else None
                    mark(own, frame_id, COMPLETED, detail, correct, latency,
                         sinks={tail: [COMPLETED, detail, correct, latency]} if several else None)
            if results and self.deliver is not None:
                try:
                    await self.deliver(results)
                except Exception as exc:  # noqa: BLE001 - an output that cannot take results fails them
                    reason = f"output: {type(exc).__name__}: {str(exc)[:200]}"
                    failed = [FAILED, reason, False, None]
                    for frame_id, end in list(own["ends"].items()):
                        if end[0] == COMPLETED:
                            own["ends"][frame_id] = [*failed, {tail: failed}] if several else failed
        else:
            flat = [out for produced in outputs for out in produced]
            if flat:
                for n, consumer in enumerate(self.consumers.get(tail, ())):
                    sent = self.forwarder.send(consumer, flat if n == 0 else [dict(m) for m in flat])
                    sends.append(sent if self.sinks_below is None else scoped(sent, self.sinks_below[consumer]))
        downstream = await merged(sends) if sends else new_outcome()
        ends, mine = downstream["ends"], own["ends"]
        if self.stateful:
            self._remember_joined(messages, outputs, ends, mine)
        for batch, future in entries:
            outcome = new_outcome()
            for message in batch:
                frame_id = message.get("frame_id")
                end = ends.get(frame_id)
                if end is not None:
                    mark(outcome, frame_id, *end)
                end = mine.get(frame_id)
                if end is not None:
                    mark(outcome, frame_id, *end)
            _settle(future, outcome)

    def _remember_joined(self, messages: list[dict], outputs: list[list[dict]], ends: dict, mine: dict) -> None:
        """Record how each frame whose parts met here ended (downstream, or here at a sink), bounded
        like ``completed_recently``."""
        for message, produced in zip(messages, outputs):
            if not produced:
                continue
            frame_id = message.get("frame_id")
            end = new_outcome()
            for known in (ends.get(frame_id), mine.get(frame_id)):
                if known is not None:
                    mark(end, frame_id, *known)
            final = end["ends"].get(frame_id)
            if final is not None and final[0] != PENDING:
                self.joined_recently[frame_id] = final
                if len(self.joined_recently) > 100_000:
                    self.joined_recently.popitem(last=False)

    def report(self) -> dict:
        out = {}
        for stage, counts in self.counts.items():
            out[stage] = {"requests": counts.requests, "batches": counts.batches, "outputs": counts.outputs,
                          "failed": counts.failed, "busy_ms": counts.busy_ms,
                          "processing_ms": counts.processing_ms.state(), "batch_sizes": dict(counts.batch_sizes)}
        return {"stages": out, "queue_depth": self.queued, "queue_capacity": self.capacity,
                "busy": self.busy, "completed": self.completed}

    @property
    def idle(self) -> bool:
        return not self.inbound and self.busy == 0

    async def close(self) -> None:
        self.task.cancel()
        while self.inbound:
            batch, future = self.inbound.popleft()
            outcome = new_outcome()
            for message in batch:
                mark(outcome, message.get("frame_id"), FAILED, "the replica stopped")
            _settle(future, outcome)
