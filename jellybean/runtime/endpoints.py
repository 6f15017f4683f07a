"""The HTTP endpoints served at the sites: ingest (frames in) and stream (results out), on aiohttp.

Each runs inside its actor's event loop, on a socket the actor binds (or receives already bound:
:mod:`jellybean.runtime.localray`). Every route but ``/healthz`` needs ``Authorization: Bearer
<data token>`` (401 otherwise; compared in constant time); the data token is not the controller's
API token, so a camera holds no right over the controller.

Ingest, served by the source actor of one (source, site)::

    POST /v1/ingest/{workflow}/{source}[?wait=SECONDS]

- one payload: its ``Content-Type`` says what it is (see :func:`jellybean.runtime.sources.decode_payload`);
- several (a camera that buffers): ``application/x-ndjson`` (one JSON payload per line) or
  ``multipart/mixed`` / ``multipart/form-data`` (each part with its own content type);
- ``202 {"frame_id": ...}`` (``{"frame_ids": [...]}`` for several); with ``wait`` a ``200`` carrying
  each frame's end (``{"frame_id", "state": "completed", "result": {...}}`` or ``"state": "failed",
  "reason"``) once it comes, or the 202 when it does not come in time; a frame that reaches several
  sinks ends when each has ended it, and its ``result`` is ``{"frame_id", "by_sink": {sink: result or
  null}}`` (null: that sink had nothing to report), its ``reason`` names the sink that failed it;
- ``429`` with ``Retry-After`` when the pipeline has no room (backpressure reaches the client);
  ``400`` a payload that does not decode or has the wrong dtype or shape, ``415`` an unsupported
  content type, ``413`` a body over ``MAX_REQUEST_BYTES``; a request with a bad payload admits none.

Stream, served by a stream output's actor::

    GET /v1/results/{workflow}/{output}?after=OFFSET[&limit=N][&wait=SECONDS]

NDJSON, one result per line with its ``offset``; ``X-Jellybean-Next-Offset`` is the ``after`` of the
next read, ``X-Jellybean-Skipped`` how many results left the buffer before this reader got them.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import socket
from typing import Any

from jellybean.runtime.outputs import StreamOutput
from jellybean.runtime.sources import FrameSource, PayloadError, decode_payload
from jellybean.runtime.worker import COMPLETED

MAX_REQUEST_BYTES = 64 * 1024 * 1024
MAX_PAYLOADS = 1000
MAX_WAIT_S = 60.0
#: How long an ingest request waits for room before answering 429.
ROOM_WAIT_S = 0.05


def _error(status: int, message: str, headers: dict | None = None) -> Any:
    from aiohttp import web

    return web.json_response({"error": message}, status=status, headers=headers)


def _authorized(request: Any, token: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def _wait_param(request: Any) -> float | None:
    raw = request.query.get("wait")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise PayloadError(f"wait={raw!r} is not a number of seconds") from None
    if not 0 <= value <= MAX_WAIT_S:
        raise PayloadError(f"wait must be between 0 and {MAX_WAIT_S:g} seconds")
    return value


async def _payloads(request: Any) -> list[tuple[bytes, str]]:
    """The request's payloads as (bytes, content type)."""
    kind = (request.content_type or "").lower()
    if kind.startswith("multipart/"):
        reader = await request.multipart()
        parts = []
        while True:
            part = await reader.next()
            if part is None:
                break
            if len(parts) >= MAX_PAYLOADS:
                raise PayloadError(f"more than {MAX_PAYLOADS} payloads in one request")
            data = await part.read(decode=False)
            parts.append((bytes(data), part.headers.get("Content-Type", "application/octet-stream")))
        return parts
    body = await request.read()
    if kind == "application/x-ndjson":
        lines = [line for line in body.split(b"\n") if line.strip()]
        if len(lines) > MAX_PAYLOADS:
            raise PayloadError(f"more than {MAX_PAYLOADS} payloads in one request")
        return [(line, "application/json") for line in lines]
    return [(body, request.headers.get("Content-Type", ""))]


def ingest_app(source: FrameSource, *, workflow: str, token: str, array: str, dtype: str | None,
               shape: tuple[int, ...] | None, accepting: dict) -> Any:
    """The ingest endpoint of one source at one site; ``accepting["open"]`` False answers 503."""
    from aiohttp import web

    async def ingest(request: web.Request) -> web.StreamResponse:
        if not _authorized(request, token):
            return _error(401, "missing or wrong bearer token (the data token)", {"WWW-Authenticate": "Bearer"})
        if request.match_info["workflow"] != workflow or request.match_info["source"] != source.source:
            return _error(404, f"this endpoint serves {workflow}/{source.source} at {source.site}")
        if not accepting.get("open", True):
            return _error(503, "the workflow is stopping or not started", {"Retry-After": "5"})
        try:
            wait = _wait_param(request)
            raw = await _payloads(request)
            if not raw:
                raise PayloadError("no payload in the request")
            frames = []
            for index, (data, content_type) in enumerate(raw):
                try:
                    frames.append(decode_payload(data, content_type, array=array, dtype=dtype, shape=shape))
                except PayloadError as exc:
                    prefix = f"payload {index}: " if len(raw) > 1 else ""
                    raise PayloadError(prefix + str(exc), unsupported=exc.unsupported) from None
        except PayloadError as exc:
            source.refused_bad += 1
            return _error(415 if exc.unsupported else 400, str(exc))
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"request body over {MAX_REQUEST_BYTES} bytes")
        if not await source.reserve(len(frames), ROOM_WAIT_S):
            source.refused_full += 1
            return _error(429, "the pipeline is full: retry later", {"Retry-After": "1"})
        ids, ends = await source.admit(frames, reply=wait is not None, reserved=True)
        single = len(ids) == 1
        accepted = {"frame_id": ids[0]} if single else {"frame_ids": ids}
        if wait is None:
            return web.json_response(accepted, status=202)
        try:
            answers = await asyncio.wait_for(asyncio.shield(ends), wait)
        except TimeoutError:
            return web.json_response({**accepted, "pending": True}, status=202)
        rows = []
        for frame_id in ids:
            state, detail = answers[frame_id]
            rows.append({"frame_id": frame_id, "state": state,
                         **({"result": detail} if state == COMPLETED else {"reason": detail})})
        return web.json_response(rows[0] if single else {"results": rows}, status=200)

    async def healthz(_request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app.router.add_post("/v1/ingest/{workflow}/{source}", ingest)
    app.router.add_get("/healthz", healthz)
    return app


def stream_app(stream: StreamOutput, *, workflow: str, output: str, token: str) -> Any:
    from aiohttp import web

    async def results(request: web.Request) -> web.StreamResponse:
        if not _authorized(request, token):
            return _error(401, "missing or wrong bearer token (the data token)", {"WWW-Authenticate": "Bearer"})
        if request.match_info["workflow"] != workflow or request.match_info["output"] != output:
            return _error(404, f"this endpoint serves {workflow}/{output}")
        try:
            after = int(request.query.get("after", "-1"))
            limit = min(10_000, max(1, int(request.query.get("limit", "1000"))))
            wait = _wait_param(request) or 0.0
        except (ValueError, PayloadError) as exc:
            return _error(400, str(exc))
        items, skipped = await stream.read(after, limit=limit, wait_s=wait)
        next_offset = items[-1]["offset"] if items else max(after, stream.first_offset - 1)
        body = b"".join(json.dumps(item).encode() + b"\n" for item in items)
        return web.Response(body=body, content_type="application/x-ndjson",
                            headers={"X-Jellybean-Next-Offset": str(next_offset), "X-Jellybean-Skipped": str(skipped)})

    async def healthz(_request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/v1/results/{workflow}/{output}", results)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(app: Any, sock: socket.socket) -> Any:
    """Serve ``app`` on the bound, listening ``sock`` in the running loop; returns the runner (cleanup())."""
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    return runner


def listening_socket(host: str, port: int = 0) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    sock.setblocking(False)
    return sock
