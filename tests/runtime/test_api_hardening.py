"""The API under hostile but authenticated load, over real HTTP on 127.0.0.1 (uvicorn in a thread, the
parse in its child process): per-request budgets, a parse that starves no route, a bounded queue of
applies, a body limit that holds for chunked requests, and a damaged store that still lists."""

from __future__ import annotations

import http.client
import json
import select
import socket
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from jellybean.runtime import api
from jellybean.runtime.api import ApiServer, create_app
from jellybean.runtime.controller import Controller
from jellybean.runtime.state import StateStore
from jellybean.spec import loader
from tests.runtime.test_api import AUTH, TOKEN, payload
from tests.runtime.test_controller import VEHICLES, VQA, Recorder, files_of, sites_of
from tests.spec.test_loader import billion_laughs


def make_controller(state: Path) -> Controller:
    return Controller(StateStore(state), pipeline_factory=Recorder().factory, site_resources=sites_of,
                      interval_s=0.05)


@pytest.fixture
def server(tmp_path: Path):
    controller = make_controller(tmp_path / "state")
    served = ApiServer(create_app(controller, TOKEN, max_body_bytes=256 * 1024), "127.0.0.1", 0).start()
    controller.start()
    yield served, controller
    served.stop()
    controller.stop()


def call(server: ApiServer, method: str, path: str, body: dict | None = None, *, timeout: float = 120.0,
         headers: dict | None = None) -> tuple[int, dict, float]:
    """One request; its status, JSON answer and seconds taken."""
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={**AUTH, **({"Content-Type": "application/json"} if data else {}),
                                                      **(headers or {})})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}"), time.perf_counter() - started
    finally:
        conn.close()


def test_ten_bombs_in_one_request_spend_one_budget(server) -> None:
    """Each bomb is far under the budget on its own; together they are refused, with the reason, at
    the file where the request's budget runs out, long before 10 s."""
    served, _ = server
    small = billion_laughs(levels=5, width=10)
    body = payload([(f"bomb-{i}.yaml", small) for i in range(10)])
    assert len(json.dumps(body)) < 256 * 1024
    status, answer, seconds = call(served, "POST", "/v1/apply", body)
    assert status == 422 and seconds < 10
    refused = [i for i in answer["issues"] if "values in one load (an alias bomb?)" in i["message"]]
    assert len(refused) == 1 and refused[0]["file"].startswith("bomb-")


def test_reads_answer_while_an_apply_is_parsed(tmp_path: Path) -> None:
    """A request within budget that takes seconds to parse leaves /healthz and the read routes
    answering within a second the whole time. (80,000 block mappings: composing one such document
    holds the GIL for more than a second in one stretch, so parsed in a thread of the API's process
    it stalls every route.)"""
    controller = make_controller(tmp_path / "state")
    controller.apply(files_of(VQA))
    slow = "x:\n" + "".join(f"  - name: s{i}\n    tier: hub\n    parent: cloud\n" for i in range(80_000))
    served = ApiServer(create_app(controller, TOKEN), "127.0.0.1", 0).start()
    controller.start()
    try:
        results: list[tuple[int, dict, float]] = []
        applying = threading.Thread(target=lambda: results.append(
            call(served, "POST", "/v1/apply", payload([("slow.yaml", slow)]))))
        applying.start()
        worst: dict[str, float] = {"/healthz": 0.0, "/v1/workflows": 0.0, "/v1/workflows/vqa-medium": 0.0}
        probes = 0
        deadline = time.monotonic() + 120
        while applying.is_alive() and time.monotonic() < deadline:
            for path in worst:
                status, _, seconds = call(served, "GET", path, timeout=10)
                assert status == 200
                worst[path] = max(worst[path], seconds)
            probes += 1
        applying.join(120)
        (status, answer, seconds), = results
        assert status == 422 and answer["issues"][0]["file"] == "slow.yaml"
        assert seconds > 1.0 and probes >= 3, "the parse was too quick to show anything"
        assert max(worst.values()) < 1.0, worst
    finally:
        served.stop()
        controller.stop()


def test_a_flood_of_applies_is_queued_boundedly_and_healthz_answers(server) -> None:
    served, _ = server
    bomb = payload([("bomb.yaml", billion_laughs())])
    with ThreadPoolExecutor(max_workers=40) as pool:
        floods = [pool.submit(call, served, "POST", "/v1/apply", bomb) for _ in range(40)]
        health = [call(served, "GET", "/healthz", timeout=10) for _ in range(10)]
        answers = [f.result() for f in floods]
    assert all(status == 200 and seconds < 1.0 for status, _, seconds in health), health
    statuses = {status for status, _, _ in answers}
    assert statuses <= {422, 429}, statuses
    for status, answer, _ in answers:
        if status == 429:
            assert "applies are already in progress" in answer["error"]
    assert call(served, "GET", "/v1/workflows")[0] == 200


def _chunked(server: ApiServer, chunks: int, chunk_bytes: int) -> tuple[int, bytes, int]:
    """POST /v1/apply with a chunked body (no Content-Length), sending a chunk at a time and stopping
    as soon as the server answers; the status, the answer and the chunks sent."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        sock.sendall(f"POST /v1/apply HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
                     "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b'{"files": [{"name": "a.yaml", "text": "' + b"x" * chunk_bytes
        sent = 0
        for _ in range(chunks):
            readable, _, _ = select.select([sock], [], [], 0.02)
            if readable:
                break
            sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            sent += 1
            chunk = b"x" * chunk_bytes
        else:
            sock.sendall(b"0\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < 10:
            part = sock.recv(65536)
            if not part:
                break
            answer += part
        status = int(answer.split(b" ", 2)[1])
        return status, answer.split(b"\r\n\r\n", 1)[1], sent
    finally:
        sock.close()


def test_a_chunked_body_over_the_limit_is_refused_as_it_streams(server) -> None:
    served, controller = server
    status, answer, sent = _chunked(served, chunks=400, chunk_bytes=64 * 1024)  # 25 MB offered, 256 KiB allowed
    assert status == 413 and b"request body over 262144 bytes" in answer
    assert sent < 100, "the server read far past its limit before answering"
    assert controller.store.counts()["submissions"] == 0
    # The same limit holds for a declared length, and a body under it passes.
    status, answer, _ = call(served, "POST", "/v1/apply", payload([("a.yaml", "x" * 300_000)]))
    assert status == 413
    assert call(served, "POST", "/v1/apply", payload(files_of(VQA)))[0] == 200


def test_the_default_body_limit_is_twice_the_request_budget() -> None:
    assert api.MAX_BODY_BYTES == 2 * loader.MAX_LOAD_BYTES


def test_a_damaged_revision_does_not_break_the_listing(tmp_path: Path) -> None:
    controller = make_controller(tmp_path / "state")
    controller.apply(files_of(VQA))
    controller.apply(files_of(VEHICLES))
    controller.store.close()
    with sqlite3.connect(tmp_path / "state" / "state.db") as conn:
        conn.execute("UPDATE revisions SET plan='{broken' WHERE workflow='vqa-medium'")
    controller = make_controller(tmp_path / "state")
    served = ApiServer(create_app(controller, TOKEN), "127.0.0.1", 0).start()
    try:
        status, listing, _ = call(served, "GET", "/v1/workflows")
        assert status == 200 and {w["name"]: w["phase"] for w in listing}["vqa-medium"] == "Failed"
        status, answer, _ = call(served, "GET", "/v1/workflows/vqa-medium/plan")
        assert status == 409 and "apply its documents again" in answer["error"]
        assert call(served, "GET", "/v1/workflows/vehicle-tracking/plan")[0] == 200
    finally:
        served.stop()
        controller.stop()
