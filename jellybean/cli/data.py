"""``jellybean send`` and ``jellybean results``: the CLI's clients of the data endpoints.

``send`` posts payload files (or standard input) to a source's ingest endpoint at a site, and
``results`` reads an output's stream (``--follow`` keeps reading, long polling). The endpoint comes
from the controller (the workflow's status lists every one) or from ``--url`` (what ``jellybean run``
printed); the data token from ``JELLYBEAN_DATA_TOKEN`` or the state directory's ``data-token``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from jellybean.cli.client import (
    ControllerError, add_controller_arguments, call, client_command, controller_endpoint, state_dir_of,
)
from jellybean.cli.common import EXIT_INFEASIBLE, EXIT_OK, UsageError

CONTENT_TYPES = {".npy": "application/x-npy", ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                 ".wav": "audio/wav", ".json": "application/json", ".ndjson": "application/x-ndjson"}
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024


def _add_data_client_arguments(p: argparse.ArgumentParser) -> None:
    add_controller_arguments(p, "where the controller (or `jellybean run`) keeps the data token (default "
                             "$JELLYBEAN_HOME or ~/.jellybean; JELLYBEAN_DATA_TOKEN overrides it)")


def add_send_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="WORKFLOW")
    p.add_argument("payloads", nargs="*", metavar="FILE", help="payload files (.npy, .png, .jpg, .wav, .json, "
                   ".ndjson), or - to read one from standard input (give --content-type)")
    p.add_argument("--source", help="the source group (default: the workflow's only ingested one)")
    p.add_argument("--site", help="the site the payloads come from (default: the source's only site)")
    p.add_argument("--url", help="the ingest URL itself (e.g. as `jellybean run` printed it); no controller is asked")
    p.add_argument("--content-type", help="the payloads' type (default: from each file's extension)")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait up to this long for each frame's result (default: return once accepted)")
    p.add_argument("--retries", type=int, default=5, metavar="N", help="retries of a payload answered 429 (default 5)")
    _add_data_client_arguments(p)


def add_results_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="WORKFLOW")
    p.add_argument("--output", help="the stream output (default: the workflow's only one)")
    p.add_argument("--site", help="the site of the stream (default: its only one)")
    p.add_argument("--url", help="the stream URL itself (as `jellybean run` printed it); no controller is asked")
    p.add_argument("--after", type=int, default=-1, metavar="OFFSET", help="read results after this offset (default: all)")
    p.add_argument("--limit", type=int, default=1000, metavar="N", help="results per read (default 1000)")
    p.add_argument("--follow", action="store_true", help="keep reading as results arrive (Ctrl-C stops)")
    _add_data_client_arguments(p)


class _DataError(Exception):
    """A refused request or no endpoint: one line, exit 1."""


def _data_token(args: argparse.Namespace) -> str:
    from jellybean.runtime.state import DATA_TOKEN_NAME, read_token

    token = os.environ.get("JELLYBEAN_DATA_TOKEN")
    if token:
        return token
    state_dir = state_dir_of(args)
    token = read_token(state_dir, DATA_TOKEN_NAME)
    if not token:
        raise _DataError(f"no data token in {state_dir / DATA_TOKEN_NAME}: point --state-dir at the controller's (or "
                         "`jellybean run`'s) state directory, or set JELLYBEAN_DATA_TOKEN")
    return token


def _endpoint(args: argparse.Namespace, kind: str, name: str | None) -> str:
    """The URL of the workflow's ``kind`` endpoint named ``name`` at ``--site``, from the controller."""
    from urllib.parse import quote

    if args.url:
        return str(args.url)
    url, token = controller_endpoint(args)
    status = call(url, token, "GET", f"/v1/workflows/{quote(args.name, safe='')}")
    found = [e for e in status.get("endpoints") or [] if e.get("kind") == kind and e.get("url")]
    if name is not None:
        found = [e for e in found if e.get("name") == name]
    if args.site is not None:
        found = [e for e in found if e.get("site") == args.site]
    if not found:
        raise _DataError(f"workflow {args.name} has no {kind} endpoint"
                         + (f" for {name}" if name else "") + (f" at {args.site}" if args.site else "")
                         + f" (its phase: {status.get('phase')}; `jellybean status {args.name}` lists its endpoints)")
    names = sorted({(e["name"], e["site"]) for e in found})
    if len(names) > 1:
        listed = ", ".join(f"{n} at {s}" for n, s in names)
        raise _DataError(f"several {kind} endpoints ({listed}): choose one with "
                         + ("--source" if kind == "ingest" else "--output") + " and --site")
    return found[0]["url"]


def _request(url: str, token: str, *, data: bytes | None = None, content_type: str | None = None,
             timeout: float = 90.0) -> tuple[int, dict, bytes]:
    import urllib.error
    import urllib.request

    headers = {"Authorization": f"Bearer {token}"}
    if content_type:
        headers["Content-Type"] = content_type
    if not url.startswith(("http://", "https://")):  # never file: or another scheme urllib would open
        raise UsageError(f"the endpoint URL must be http:// or https://, not {url!r}")
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked just above
        url, data=data, method="POST" if data is not None else "GET", headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()
    except (urllib.error.URLError, OSError) as exc:
        raise _DataError(f"no endpoint at {url} ({getattr(exc, 'reason', exc)})") from None


def _payloads(args: argparse.Namespace) -> list[tuple[str, bytes, str]]:
    from jellybean.spec.loader import read_bounded
    from jellybean.spec.errors import SpecError

    out = []
    for name in args.payloads or ["-"]:
        if name == "-":
            if not args.content_type:
                raise _DataError("reading a payload from standard input needs --content-type")
            data = sys.stdin.buffer.read(MAX_PAYLOAD_BYTES + 1)
            if len(data) > MAX_PAYLOAD_BYTES:
                raise _DataError(f"standard input holds more than {MAX_PAYLOAD_BYTES} bytes")
            out.append(("<stdin>", data, args.content_type))
            continue
        path = Path(name)
        kind = args.content_type or CONTENT_TYPES.get(path.suffix.lower())
        if kind is None:
            raise _DataError(f"{path}: unknown payload type {path.suffix!r}: give --content-type (one of "
                             f"{', '.join(sorted(set(CONTENT_TYPES.values())))})")
        try:
            data = read_bounded(path, limit=MAX_PAYLOAD_BYTES, hint="send a smaller payload")
        except SpecError as exc:
            raise _DataError(str(exc.issues[0])) from None
        out.append((str(path), data, kind))
    return out


def _post(url: str, token: str, data: bytes, content_type: str, *, retries: int, timeout_s: float) -> tuple[int, bytes]:
    """POST one payload; a 429 (the source's queue is full) is retried ``retries`` times, after the
    Retry-After the endpoint asks for (at most 30 s). The last answer's status and body."""
    for _ in range(retries):
        status, headers, body = _request(url, token, data=data, content_type=content_type, timeout=timeout_s)
        if status != 429:
            return status, body
        time.sleep(min(30.0, float(headers.get("Retry-After", "1") or 1)))
    status, _headers, body = _request(url, token, data=data, content_type=content_type, timeout=timeout_s)
    return status, body


def cmd_send(args: argparse.Namespace) -> int:
    if not 0 <= args.wait <= 60:
        raise UsageError("--wait must be between 0 and 60 seconds")
    if args.retries < 0:
        raise UsageError("--retries must be at least 0")

    def run() -> int:
        try:
            payloads = _payloads(args)
            url = _endpoint(args, "ingest", args.source)
            token = _data_token(args)
            query = f"?wait={args.wait:g}" if args.wait > 0 else ""
            for name, data, kind in payloads:
                status, body = _post(url + query, token, data, kind, retries=args.retries, timeout_s=args.wait + 60)
                answer = _json(body)
                if status not in (200, 202):
                    raise _DataError(f"{name}: HTTP {status}: {answer.get('error', body[:200].decode(errors='replace'))}")
                print(json.dumps({"payload": name, **answer}))
        except (_DataError, ControllerError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_INFEASIBLE
        return EXIT_OK

    return client_command(run)


def _json(body: bytes) -> dict:
    try:
        value = json.loads(body or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {"value": value}


def cmd_results(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 10_000:
        raise UsageError("--limit must be between 1 and 10000")

    def run() -> int:
        try:
            url = _endpoint(args, "stream", args.output)
            token = _data_token(args)
            after = args.after
            while True:
                wait = 30 if args.follow else 0
                status, headers, body = _request(f"{url}?after={after}&limit={args.limit}&wait={wait}", token,
                                                 timeout=wait + 30)
                if status != 200:
                    raise _DataError(f"HTTP {status}: {_json(body).get('error', '')}")
                skipped = int(headers.get("X-Jellybean-Skipped", "0") or 0)
                if skipped:
                    print(f"warning: {skipped} results left the stream's buffer before they were read", file=sys.stderr)
                sys.stdout.write(body.decode("utf-8"))
                sys.stdout.flush()
                after = int(headers.get("X-Jellybean-Next-Offset", after))
                if not args.follow:
                    return EXIT_OK
        except (_DataError, ControllerError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_INFEASIBLE

    return client_command(run)
