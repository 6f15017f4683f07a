"""Where results go: a stream clients read, a webhook that receives them, or a JSONL file.

Each output lives in an actor at the site where the results are delivered (its own ``site``, or each
site where the sink runs) and takes results from the sink's replicas with ``deliver``. A result is
*accepted* once it is in the output's hands (the sink then reports its frame completed); what
happens after is the output's own accounting, never silent:

- :class:`StreamOutput` keeps the last ``retain`` results, each with an ``offset`` (0, 1, ...), for
  ``GET ...?after=OFFSET`` (NDJSON; with ``wait`` the request waits for the next result). Results
  that fall out of the buffer before anyone read them are counted as ``dropped``.
- :class:`WebhookOutput` POSTs batches (at most ``batch_max`` results, none older than ``flush_ms``)
  as ``{"workflow", "output", "results": [...]}``; a batch that fails (a connection error, or any
  status but 2xx) is retried with exponential backoff (0.5 s doubling to 30 s) for ``give_up_s``, then
  its results are counted as ``failed``; a backlog over ``max_backlog`` results is refused
  (``dropped``) rather than held without bound. ``delivered``, ``retries`` and the backlog are counted.
- :class:`FileOutput` appends JSONL and rotates the file at ``rotate_mb`` (``name.jsonl.1`` is the
  newest rotated file), keeping ``keep`` of them.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any


class StreamOutput:
    def __init__(self, retain: int = 100_000) -> None:
        self.retain = retain
        self.buffer: deque[dict] = deque()
        self.next_offset = 0
        self.dropped = 0  # fell out of the buffer unread
        self.read_until = -1  # the highest offset a reader has been given
        self._arrived = asyncio.Event()

    @property
    def first_offset(self) -> int:
        return self.next_offset - len(self.buffer)

    def accept(self, results: list[dict]) -> None:
        for result in results:
            self.buffer.append({**result, "offset": self.next_offset})
            self.next_offset += 1
        while len(self.buffer) > self.retain:
            gone = self.buffer.popleft()
            if gone["offset"] > self.read_until:
                self.dropped += 1
        self._arrived.set()
        self._arrived = asyncio.Event()

    async def read(self, after: int, *, limit: int = 1000, wait_s: float = 0.0) -> tuple[list[dict], int]:
        """Results with an offset above ``after`` (at most ``limit``), waiting up to ``wait_s`` for the
        first; and how many were skipped because they left the buffer."""
        deadline = time.monotonic() + wait_s
        while self.next_offset - 1 <= after and time.monotonic() < deadline:
            event = self._arrived
            try:
                await asyncio.wait_for(event.wait(), deadline - time.monotonic())
            except TimeoutError:
                break
        start = max(after + 1, self.first_offset)
        skipped = max(0, self.first_offset - (after + 1))
        index = start - self.first_offset
        items = [self.buffer[i] for i in range(index, min(len(self.buffer), index + limit))]
        if items:
            self.read_until = max(self.read_until, items[-1]["offset"])
        return items, skipped

    def report(self) -> dict:
        return {"accepted": self.next_offset, "dropped": self.dropped, "buffered": len(self.buffer),
                "next_offset": self.next_offset}


Post = Callable[[str, bytes], Awaitable[int]]  # (url, body) -> HTTP status


async def default_post(session_holder: dict) -> Post:
    """POST with aiohttp; from inside the isolated embedded Ray, over a connection the socket broker
    opens outside it (:mod:`jellybean.runtime.localray`)."""
    from jellybean.runtime.localray import BROKER_ENV

    if os.environ.get(BROKER_ENV):
        return brokered_post
    return await aiohttp_post(session_holder)


async def brokered_post(url: str, body: bytes) -> int:
    """One HTTP/1.1 POST on a connection opened by the broker (no keep-alive); the status code."""
    import ssl
    from urllib.parse import urlsplit

    from jellybean.runtime.localray import connected_socket

    parts = urlsplit(url)
    secure = parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    sock = await asyncio.get_running_loop().run_in_executor(None, connected_socket, parts.hostname, port)
    context = ssl.create_default_context() if secure else None
    reader, writer = await asyncio.open_connection(sock=sock, ssl=context,
                                                   server_hostname=parts.hostname if secure else None)
    try:
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = (f"POST {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nUser-Agent: jellybean-webhook\r\nConnection: close\r\n\r\n")
        writer.write(head.encode("latin-1") + body)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 30)
        return int(status_line.split()[1])
    finally:
        writer.close()


async def aiohttp_post(session_holder: dict) -> Post:
    import aiohttp

    session = session_holder.get("session")
    if session is None:
        session = session_holder["session"] = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=30), headers={"Content-Type": "application/json",
                                                               "User-Agent": "jellybean-webhook"})

    async def post(url: str, body: bytes) -> int:
        async with session.post(url, data=body) as response:
            await response.read()
            return response.status

    return post


class WebhookOutput:
    def __init__(self, url: str, *, workflow: str, name: str, batch_max: int = 100, flush_ms: float = 200.0,
                 give_up_s: float = 300.0, max_backlog: int = 100_000, post: Post | None = None,
                 backoff_initial_s: float = 0.5, backoff_max_s: float = 30.0) -> None:
        self.url = url
        self.workflow = workflow
        self.name = name
        self.batch_max = batch_max
        self.flush_s = flush_ms / 1000.0
        self.give_up_s = give_up_s
        self.max_backlog = max_backlog
        self.post = post
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.queue: deque[dict] = deque()
        self.accepted = self.delivered = self.failed = self.dropped = self.retries = self.posts = 0
        self.last_error = ""
        self._arrived = asyncio.Event()
        self.settled = asyncio.Event()  # set each time a batch ends, delivered or failed
        self._session: dict = {}
        self.task = asyncio.ensure_future(self._run())

    def accept(self, results: list[dict]) -> None:
        room = self.max_backlog - len(self.queue)
        taken = results[:max(0, room)]
        self.dropped += len(results) - len(taken)
        self.queue.extend(taken)
        self.accepted += len(taken)
        self._arrived.set()

    async def _run(self) -> None:
        if self.post is None:
            self.post = await default_post(self._session)
        while True:
            if not self.queue:
                self._arrived.clear()
                await self._arrived.wait()
            oldest = time.monotonic()
            while len(self.queue) < self.batch_max and time.monotonic() - oldest < self.flush_s:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), self.flush_s - (time.monotonic() - oldest))
                except TimeoutError:
                    break
            batch = [self.queue.popleft() for _ in range(min(self.batch_max, len(self.queue)))]
            if batch:
                await self._send(batch)

    async def _send(self, batch: list[dict]) -> None:
        body = json.dumps({"workflow": self.workflow, "output": self.name, "results": batch}).encode("utf-8")
        started = time.monotonic()
        delay = self.backoff_initial_s
        while True:
            self.posts += 1
            try:
                status = await self.post(self.url, body)
                if 200 <= status < 300:
                    self.delivered += len(batch)
                    self.settled.set()
                    return
                self.last_error = f"HTTP {status}"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure is retried, then counted
                self.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
            if time.monotonic() - started + delay > self.give_up_s:
                self.failed += len(batch)
                self.settled.set()
                return
            self.retries += 1
            await asyncio.sleep(delay)
            delay = min(self.backoff_max_s, delay * 2)

    def report(self) -> dict:
        return {"accepted": self.accepted, "delivered": self.delivered, "failed": self.failed,
                "dropped": self.dropped, "retries": self.retries, "backlog": len(self.queue),
                "last_error": self.last_error}

    async def close(self) -> None:
        self.task.cancel()
        session = self._session.get("session")
        if session is not None:
            await session.close()


class FileOutput:
    def __init__(self, path: Path, *, rotate_mb: float = 64.0, keep: int = 5) -> None:
        self.path = Path(path)
        self.rotate_bytes = int(rotate_mb * 1024 * 1024)
        self.keep = keep
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.accepted = 0
        self.rotations = 0
        self._handle = self._open()

    def _open(self):  # noqa: ANN202 - a binary file
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        return os.fdopen(fd, "ab")

    def accept(self, results: list[dict]) -> None:
        data = b"".join(json.dumps(r).encode("utf-8") + b"\n" for r in results)
        self._handle.write(data)
        self._handle.flush()
        self.accepted += len(results)
        if self._handle.tell() >= self.rotate_bytes:
            self._rotate()

    def _rotate(self) -> None:
        self._handle.close()
        oldest = self.path.with_name(f"{self.path.name}.{self.keep}")
        if oldest.exists():
            oldest.unlink()
        for index in range(self.keep - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{index + 1}"))
        self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        self.rotations += 1
        self._handle = self._open()

    def report(self) -> dict:
        return {"accepted": self.accepted, "rotations": self.rotations, "path": str(self.path)}

    async def close(self) -> None:
        self._handle.close()


def make_output(kind: str, *, workflow: str, name: str, url: str | None, options: dict, output_dir: Path | None,
                post: Post | None = None) -> Any:
    if kind == "stream":
        return StreamOutput(retain=int(options.get("retain", 100_000)))
    if kind == "webhook":
        return WebhookOutput(url or "", workflow=workflow, name=name, batch_max=int(options.get("batch_max", 100)),
                             flush_ms=float(options.get("flush_ms", 200.0)),
                             give_up_s=float(options.get("give_up_s", 300.0)), post=post)
    if kind == "file":
        if output_dir is None:
            raise ValueError("a file output needs an output directory")
        return FileOutput(Path(output_dir) / workflow / f"{name}.jsonl", rotate_mb=float(options.get("rotate_mb", 64.0)),
                          keep=int(options.get("keep", 5)))
    raise ValueError(f"unknown output kind {kind!r}")
