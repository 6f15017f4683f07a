"""Ingest and stream endpoints over real HTTP on 127.0.0.1: digits-live on the in-process backend, with
fake runners. Payloads in, one or several per request; results back with ``wait``; the stream read
with offsets and long polling; bad payloads, missing tokens, a full pipeline (429) and a body too
large (413) refused with their reasons, and none of them ever reaching a replica."""

from __future__ import annotations

import http.client
import io
import json
import threading
import urllib.parse

import numpy as np
import pytest

from tests.runtime.inprocess import Gate, Runners, eventually, host, pipeline
from tests.runtime.test_sources import FRAME, npy, png

pytest.importorskip("aiohttp")

TOKEN = "test-data-token"


@pytest.fixture
def live():
    made = []

    def make(**options):
        p, backend, runners = pipeline(**options)
        p.start()
        made.append((p, backend))
        endpoints = {(e.kind, e.site): e.url for e in p.endpoints()}
        return p, runners, endpoints

    yield make
    for p, backend in made:
        p.stop(drain=False)
        backend.close()


def request(url: str, method: str = "GET", body: bytes | None = None, *, content_type: str | None = None,
            token: str | None = TOKEN, query: str = "", timeout: float = 30.0) -> tuple[int, dict, bytes]:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if content_type:
        headers["Content-Type"] = content_type
    try:
        conn.request(method, parts.path + (f"?{query}" if query else ""), body=body, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_every_source_site_has_its_ingest_endpoint_and_the_sink_its_stream(live) -> None:
    _p, _runners, endpoints = live()
    assert set(endpoints) == {("ingest", "cam-1"), ("ingest", "cam-2"), ("stream", "cloud")}
    assert endpoints[("ingest", "cam-1")].startswith("http://127.0.0.1:")
    assert endpoints[("ingest", "cam-1")].endswith("/v1/ingest/digits-live/cameras")
    assert endpoints[("stream", "cloud")].endswith("/v1/results/digits-live/readings")
    status, _, body = request(endpoints[("ingest", "cam-1")].split("/v1/")[0] + "/healthz", token=None)
    assert status == 200 and json.loads(body) == {"status": "ok"}


def test_a_payload_in_a_result_out(live) -> None:
    p, _runners, endpoints = live()
    ingest, stream = endpoints[("ingest", "cam-1")], endpoints[("stream", "cloud")]
    status, _, body = request(ingest, "POST", npy(FRAME), content_type="application/x-npy")
    assert status == 202 and json.loads(body)["frame_id"] == "cameras@cam-1#0"
    status, _, body = request(ingest, "POST", npy(FRAME), content_type="application/x-npy", query="wait=10")
    answer = json.loads(body)
    assert status == 200 and answer["state"] == "completed"
    result = answer["result"]
    assert result["frame_id"] == answer["frame_id"] and result["source"] == "cameras" and result["site"] == "cam-1"
    assert result["completed_at"] >= result["received_at"] and result["reading"] == [0, 1]
    eventually(lambda: host(p, "readings@cloud").output.next_offset == 2)
    status, headers, body = request(stream, query="after=-1")
    lines = [json.loads(line) for line in body.decode().splitlines()]
    assert status == 200 and [r["offset"] for r in lines] == [0, 1]
    assert headers["X-Jellybean-Next-Offset"] == "1" and headers["X-Jellybean-Skipped"] == "0"
    assert {r["frame_id"] for r in lines} == {"cameras@cam-1#0", "cameras@cam-1#1"}


def test_several_payloads_in_one_request(live) -> None:
    _p, _runners, endpoints = live()
    ingest = endpoints[("ingest", "cam-2")]
    ndjson = b"\n".join(json.dumps(FRAME.tolist()).encode() for _ in range(3))
    status, _, body = request(ingest, "POST", ndjson, content_type="application/x-ndjson", query="wait=10")
    answer = json.loads(body)
    assert status == 200 and [r["state"] for r in answer["results"]] == ["completed"] * 3
    boundary = "jellybean-test-boundary"
    grey = (FRAME * 255).astype(np.uint8)
    parts = [(npy(FRAME), "application/x-npy"), (png(grey), "image/png")]
    body = io.BytesIO()
    for data, kind in parts:
        body.write(f"--{boundary}\r\nContent-Type: {kind}\r\n\r\n".encode() + data + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    status, _, answer = request(ingest, "POST", body.getvalue(), content_type=f"multipart/mixed; boundary={boundary}")
    assert status == 202 and len(json.loads(answer)["frame_ids"]) == 2


@pytest.mark.parametrize("body, content_type, status, message", [
    (b"garbage", "application/x-npy", 400, "not a .npy array"),
    (npy(FRAME[:4]), "application/x-npy", 400, "shape 4x48, expected 8x48"),
    (npy(FRAME.astype(np.complex64)), "application/x-npy", 400, "cannot become float32"),
    (b"hello", "text/plain", 415, "unsupported content type"),
    (b"", "application/x-npy", 400, "not a .npy array"),
], ids=["not-npy", "shape", "dtype", "type", "empty"])
def test_a_bad_payload_is_refused_with_the_reason_and_reaches_no_replica(live, body, content_type, status,
                                                                         message) -> None:
    p, runners, endpoints = live()
    got, _, answer = request(endpoints[("ingest", "cam-1")], "POST", body, content_type=content_type)
    assert got == status and message in json.loads(answer)["error"]
    p.poll()
    assert p.ledger.sent == 0
    assert all(not a.report.get("stages", {}).get(s, {}).get("requests") for a in p.replicas.values()
               for s in ("detect", "classify", "aggregate"))


def test_a_bad_payload_among_good_ones_admits_none(live) -> None:
    p, _runners, endpoints = live()
    ndjson = json.dumps(FRAME.tolist()).encode() + b"\n" + json.dumps([[1.0]]).encode()
    status, _, answer = request(endpoints[("ingest", "cam-1")], "POST", ndjson, content_type="application/x-ndjson")
    assert status == 400 and json.loads(answer)["error"].startswith("payload 1: shape 1x1")
    p.poll()
    assert p.ledger.sent == 0


def test_the_data_token_is_required(live) -> None:
    _p, _runners, endpoints = live()
    for url, method in ((endpoints[("ingest", "cam-1")], "POST"), (endpoints[("stream", "cloud")], "GET")):
        for token in (None, "wrong"):
            status, headers, _ = request(url, method, npy(FRAME) if method == "POST" else None,
                                         content_type="application/x-npy", token=token)
            assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
    status, _, _ = request(endpoints[("ingest", "cam-1")].replace("/cameras", "/mics"), "POST", npy(FRAME),
                           content_type="application/x-npy")
    assert status == 404


def test_a_full_pipeline_answers_429_and_takes_frames_again_when_there_is_room(live) -> None:
    gate = Gate()
    _p, _runners, endpoints = live(runners=Runners(gate=gate), threaded=True, max_in_flight=4)
    ingest = endpoints[("ingest", "cam-1")]
    gate.open.clear()
    codes = [request(ingest, "POST", npy(FRAME), content_type="application/x-npy")[0] for _ in range(4)]
    assert codes == [202] * 4
    status, headers, body = request(ingest, "POST", npy(FRAME), content_type="application/x-npy")
    assert status == 429 and headers["Retry-After"] == "1" and "full" in json.loads(body)["error"]
    gate.open.set()
    status, _, body = request(ingest, "POST", npy(FRAME), content_type="application/x-npy", query="wait=10")
    assert status == 200 and json.loads(body)["state"] == "completed"


def test_a_body_over_the_limit_is_refused(live, monkeypatch: pytest.MonkeyPatch) -> None:
    from jellybean.runtime import endpoints as module

    monkeypatch.setattr(module, "MAX_REQUEST_BYTES", 100_000)
    _p, _runners, urls = live()
    status, _, _ = request(urls[("ingest", "cam-1")], "POST", b"x" * 200_000, content_type="application/x-npy")
    assert status == 413


def test_the_stream_long_polls_for_the_next_result(live) -> None:
    p, _runners, endpoints = live()
    stream, ingest = endpoints[("stream", "cloud")], endpoints[("ingest", "cam-1")]
    got: dict = {}

    def read() -> None:
        got["answer"] = request(stream, query="after=-1&wait=20")

    reader = threading.Thread(target=read)
    reader.start()
    eventually(lambda: reader.is_alive())
    request(ingest, "POST", npy(FRAME), content_type="application/x-npy")
    reader.join(30)
    status, headers, body = got["answer"]
    assert status == 200 and json.loads(body.decode().splitlines()[0])["offset"] == 0
    # Nothing new: a read without waiting answers at once, empty, with the same next offset.
    status, headers, body = request(stream, query=f"after={headers['X-Jellybean-Next-Offset']}")
    assert status == 200 and body == b"" and headers["X-Jellybean-Next-Offset"] == "0"
