"""The data path between actors: each replica and output listens on a TCP port of its own node, and
its senders keep one connection to it, on which calls and their replies are multiplexed.

Why not Ray actor calls. Measured on the test bed (:mod:`jellybean.testbed`, ``bench/sites.py``) and
in ``bench/runtime.py``: a Ray actor call carries about 600 bytes of task specification on top of its
argument (function descriptor, ids, the caller's address...), which on a thin uplink is more than a
batch of labels itself, and which no plan priced; and its submission and execution cost the hub's
core a seventh of its time (the core worker's io threads and the hand-over to the actor's event loop)
at 4,500 frames/s. A message here costs a 9-byte header: bytes on a link are the messages the
plan priced plus TCP/IP's own headers, and a hop is a write and a read on a socket that is already
open. Ray still places, starts, watches and kills every actor, and carries the control plane
(routing tables, reports); ``transport="ray"`` keeps the actor-call path (it needs no port).
Ray's compiled graphs and channels were not used: they fix a static graph with one reader per
channel and need ``ray.dag`` teardown to change it, while a plan's routes change on every re-plan,
death or cut uplink, and frames fan out by weighted shares.

Frames on a connection. After connecting, the client sends ``MAGIC`` and the pipeline's data-plane
secret (a random value the control plane hands every actor in its spec; a connection without it is
closed before anything is read). Then each request and each reply is a header ``!IBI`` (payload
length, kind, call id) and the payload: ``PUSH`` (a batch for a replica) or ``DELIVER`` (results for
an output), answered by ``OK`` (the pickled outcome) or ``ERROR`` (the exception, in words). A
``PUSH`` payload is a batch in :mod:`jellybean.codec`'s columns, its schemas said once per connection:
the connection's encoder runs as the request is written and its decoder as it is read, so both see
the batches in the same order. Requests run concurrently on the receiver, as they did as actor
calls; replies come back as each finishes.

Failure. When a connection breaks (the peer's process died, its node went away), every call waiting
on it fails with :class:`PeerGone`, which the sender treats as the peer's death (its units are routed
to other replicas, as with Ray's ``ActorDiedError``); a reply that says ``ERROR`` is a failed call to a
live peer (retried elsewhere). Flow control is TCP's: a sender awaits ``drain`` when the socket's
buffer is full, so a slow link or a slow peer slows its senders, and their windows, and the sources.
"""

from __future__ import annotations

import asyncio
import hmac
import socket
import struct
from dataclasses import dataclass
from typing import Any
from collections.abc import Awaitable, Callable

from jellybean.codec import Decoder, Encoder
from jellybean.optimizer.framing import SEGMENT_HEADER_BYTES, SEGMENT_PAYLOAD_BYTES
from jellybean.runtime.worker import dumps, loads

MAGIC = b"JBW1"
HEADER = struct.Struct("!IBI")  # payload length, kind, call id
PUSH, DELIVER, OK, ERROR = 1, 2, 3, 4
#: Largest payload accepted on a connection (a batch of messages, or its outcome).
MAX_PAYLOAD_BYTES = 256 * 1024 * 1024


def wire_bytes(payload_bytes: int) -> int:
    """Bytes one request of ``payload_bytes`` puts on the sending interface: our header, the payload,
    and each TCP segment's headers, ``h + n + 66 * ceil((h + n) / 1448)``. An estimate: segments are
    counted as if each request were sent alone (asyncio sets ``TCP_NODELAY``, so a request that finds
    the socket idle is), and the replies and ACKs coming back are the other direction's."""
    framed = HEADER.size + payload_bytes
    return framed + SEGMENT_HEADER_BYTES * -(-framed // SEGMENT_PAYLOAD_BYTES)
CONNECT_TIMEOUT_S = 10.0
HELLO_TIMEOUT_S = 10.0


class PeerGone(ConnectionError):
    """The connection to a peer broke or could not be made: the peer is treated as dead."""


class RemoteError(Exception):
    """The peer is alive and its handler raised (in words)."""


@dataclass(frozen=True)
class Address:
    """Where a replica or output takes calls."""

    host: str
    port: int


_TCP_INFO_BYTES = 232  # struct tcp_info up to tcpi_snd_wnd (Linux 5.4 and later)
_SEGS_OUT = struct.Struct("=I")  # tcpi_segs_out, at byte 136
_BYTES_SENT = struct.Struct("=Q")  # tcpi_bytes_sent, at byte 200 (Linux 4.19 and later)


def tcp_sent_bytes(sock: socket.socket | None) -> int | None:
    """What the kernel put on the wire for this connection so far: ``tcpi_bytes_sent`` (payload, with
    retransmissions) plus ``SEGMENT_HEADER_BYTES`` per segment sent (``tcpi_segs_out``, ACKs
    included). ``None`` where ``TCP_INFO`` does not say (not Linux, an older kernel)."""
    if sock is None or not hasattr(socket, "TCP_INFO"):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_BYTES)
    except (OSError, ValueError):  # ValueError: the socket was closed under us (its descriptor is -1)
        return None
    if len(info) < 208:
        return None
    return _BYTES_SENT.unpack_from(info, 200)[0] + SEGMENT_HEADER_BYTES * _SEGS_OUT.unpack_from(info, 136)[0]


def _hello(secret: str) -> bytes:
    token = secret.encode()
    return MAGIC + struct.pack("!H", len(token)) + token


class _Connection:
    """One client connection: calls out, replies matched to them by id."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: Address) -> None:
        self.reader, self.writer, self.address = reader, writer, address
        self.pending: dict[int, asyncio.Future] = {}
        self.next_id = 0
        self.closed: str | None = None
        self.sock = writer.get_extra_info("socket")
        self.sent_bytes: int | None = 0  # the kernel's count, refreshed by sent() and on closing
        self.encoder = Encoder()  # batches' schemas, said once on this connection
        self.task = asyncio.ensure_future(self._read())

    def sent(self) -> int | None:
        """The kernel's count while the socket is open; the last one read once it is gone (asyncio
        closes a socket whose peer went away before this connection's reader hears of it)."""
        if self.closed is None and self.sock is not None and self.sock.fileno() >= 0:
            self.sent_bytes = tcp_sent_bytes(self.sock)
        return self.sent_bytes

    async def push(self, messages: list[dict], sent: Callable[[int], None]) -> dict:
        """A batch for a replica, encoded now (in the order of the writes: see the module docstring)."""
        if self.closed is not None:
            raise PeerGone(self.closed)
        blob = self.encoder.encode(messages)
        sent(len(blob))
        return await self.call(PUSH, blob)

    async def call(self, kind: int, blob: bytes) -> dict:
        if self.closed is not None:
            raise PeerGone(self.closed)
        if len(blob) > MAX_PAYLOAD_BYTES:
            raise RemoteError(f"a message of {len(blob)} bytes is over the {MAX_PAYLOAD_BYTES}-byte limit")
        self.next_id = (self.next_id + 1) & 0xFFFFFFFF
        call_id = self.next_id
        future = asyncio.get_running_loop().create_future()
        self.pending[call_id] = future
        try:
            # One write: a header on its own would leave as a segment of its own (TCP_NODELAY).
            self.writer.write(HEADER.pack(len(blob), kind, call_id) + blob)
            await self.writer.drain()
        except (ConnectionError, OSError, RuntimeError) as exc:
            self._close(f"sending to {self.address.host}:{self.address.port}: {type(exc).__name__}: {exc}")
        return await future

    async def _read(self) -> None:
        reason = "closed by the peer"
        try:
            while True:
                length, kind, call_id = HEADER.unpack(await self.reader.readexactly(HEADER.size))
                if length > MAX_PAYLOAD_BYTES:
                    reason = f"a reply of {length} bytes is over the limit"
                    break
                payload = await self.reader.readexactly(length)
                future = self.pending.pop(call_id, None)
                if future is None or future.done():
                    continue
                if kind == OK:
                    future.set_result(loads(payload))
                else:
                    future.set_exception(RemoteError(payload.decode("utf-8", "replace")))
        except asyncio.CancelledError:
            reason = "closed"
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self._close(f"connection to {self.address.host}:{self.address.port} lost ({reason})")

    def _close(self, reason: str) -> None:
        if self.closed is not None:
            return
        self.sent()  # never raises: the waiting calls below must hear of the loss whatever happens
        self.closed = reason
        for future in self.pending.values():
            if not future.done():
                future.set_exception(PeerGone(reason))
        self.pending.clear()
        self.writer.close()

    def close(self, reason: str = "closed") -> None:
        self.task.cancel()
        self._close(reason)


class SocketTransport:
    """The sender's end: one connection per peer address, opened on first use."""

    def __init__(self, secret: str) -> None:
        self.hello = _hello(secret)
        self.connections: dict[Address, _Connection] = {}
        self._opening: dict[Address, asyncio.Future] = {}
        self._retired: dict[Address, int] = {}  # bytes sent on connections that have closed

    async def _connection(self, address: Address) -> _Connection:
        conn = self.connections.get(address)
        if conn is not None and conn.closed is None:
            return conn
        opening = self._opening.get(address)
        if opening is not None:
            return await asyncio.shield(opening)
        future = asyncio.get_running_loop().create_future()
        self._opening[address] = future
        try:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(address.host, address.port),
                                                        CONNECT_TIMEOUT_S)
            except (TimeoutError, OSError) as exc:
                raise PeerGone(f"cannot connect to {address.host}:{address.port}: {type(exc).__name__}: {exc}") from exc
            writer.write(self.hello)
            conn = _Connection(reader, writer, address)
            old = self.connections.get(address)
            if old is not None:
                self._retired[address] = self._retired.get(address, 0) + (old.sent() or 0)
            self.connections[address] = conn
            future.set_result(conn)
            return conn
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters get it through shield
            raise
        finally:
            self._opening.pop(address, None)

    async def push(self, handle: Address, messages: list[dict], sent: Callable[[int], None]) -> dict:
        return await (await self._connection(handle)).push(messages, sent)

    async def deliver(self, handle: Address, blob: bytes) -> dict:
        return await (await self._connection(handle)).call(DELIVER, blob)

    def wire_bytes(self, payload_bytes: int) -> int:
        return wire_bytes(payload_bytes)

    def forget(self, handle: Address) -> None:
        conn = self.connections.get(handle)
        if conn is not None and conn.closed is None:
            conn.close(f"the peer at {handle.host}:{handle.port} is dead (said the control plane)")

    def sent_bytes(self) -> dict[Address, int] | None:
        """Bytes on the wire to each peer so far, as the kernel counted them (:func:`tcp_sent_bytes`);
        ``None`` where the kernel does not say."""
        out = dict(self._retired)
        for address, conn in self.connections.items():
            sent = conn.sent()
            if sent is None:
                return None
            out[address] = out.get(address, 0) + sent
        return out

    def is_death(self, exc: BaseException) -> bool:
        return isinstance(exc, PeerGone)

    def close(self) -> None:
        for conn in self.connections.values():
            conn.close()
        self.connections.clear()


class WireServer:
    """The receiver's end: a listening socket whose requests go to ``handlers[PUSH]`` (a coroutine
    function of the decoded messages) or ``handlers[DELIVER]`` (of the payload). Plain functions, not
    the host's methods: Ray wraps an actor class's methods for tracing, a cost on every call for
    nothing here."""

    def __init__(self, handlers: dict[int, Callable[[Any], Awaitable[dict]]], secret: str) -> None:
        self.handlers = handlers
        self.secret = secret.encode()
        self.server: asyncio.base_events.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.refused = 0  # connections closed for a wrong or missing secret

    async def start(self, bind_host: str, port: int = 0) -> Address:
        self.server = await asyncio.start_server(self._serve, bind_host, port)
        sock = self.server.sockets[0]
        return Address(bind_host, sock.getsockname()[1])

    async def _hello(self, reader: asyncio.StreamReader) -> bool:
        try:
            head = await asyncio.wait_for(reader.readexactly(len(MAGIC) + 2), HELLO_TIMEOUT_S)
            if head[:len(MAGIC)] != MAGIC:
                return False
            (length,) = struct.unpack("!H", head[len(MAGIC):])
            token = await asyncio.wait_for(reader.readexactly(length), HELLO_TIMEOUT_S)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError):
            return False
        return hmac.compare_digest(token, self.secret)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not await self._hello(reader):
            self.refused += 1
            writer.close()
            return
        self.writers.add(writer)
        tasks: set[asyncio.Task] = set()
        decoder = Decoder()
        try:
            while True:
                length, kind, call_id = HEADER.unpack(await reader.readexactly(HEADER.size))
                if length > MAX_PAYLOAD_BYTES or kind not in self.handlers:
                    break
                payload: Any = await reader.readexactly(length)
                if kind == PUSH:
                    try:
                        payload = decoder.decode(payload)  # here, in order: a batch may say a schema the next ones use
                    except Exception:  # noqa: BLE001 - not a batch of ours: the connection is not ours either
                        break
                task = asyncio.ensure_future(self._answer(writer, kind, call_id, payload))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, kind: int, call_id: int, payload: Any) -> None:
        try:
            reply, status = dumps(await self.handlers[kind](payload)), OK
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the sender gets it in words and routes again
            reply, status = f"{type(exc).__name__}: {exc}".encode("utf-8", "replace")[:4096], ERROR
        if writer.is_closing():
            return
        writer.write(HEADER.pack(len(reply), status, call_id) + reply)
        try:
            await writer.drain()
        except (ConnectionError, OSError):
            pass

    def close(self) -> None:
        """Stop listening and drop every connection (its senders see the peer gone at once)."""
        if self.server is not None:
            self.server.close()
        for writer in list(self.writers):
            transport = writer.transport
            if transport is not None:
                transport.abort()
        self.writers.clear()
