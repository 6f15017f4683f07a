"""Outputs: a webhook that retries a receiver failing now and then (real HTTP on 127.0.0.1) and
counts what it gives up on, a JSONL file rotated by size, a stream that counts what it evicts."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from jellybean.runtime.outputs import FileOutput, StreamOutput, WebhookOutput


class Receiver:
    """A webhook receiver on 127.0.0.1 that answers 500 to every ``fail_every``-th POST."""

    def __init__(self, fail_every: int = 0, *, workflow: str = "wf", output: str = "hook") -> None:
        self.fail_every = fail_every
        self.problems: list[str] = []
        self.posts = 0
        self.results: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.posts += 1
                if outer.fail_every and outer.posts % outer.fail_every == 0:
                    self.send_response(500)
                    self.end_headers()
                    return
                outer.results.extend(body["results"])
                if (body["workflow"], body["output"]) != (workflow, output):
                    outer.problems.append(f"{body['workflow']}/{body['output']}")
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def results(n: int, start: int = 0) -> list[dict]:
    return [{"frame_id": f"f{i}", "reading": [i]} for i in range(start, start + n)]


async def settle(output: WebhookOutput, done, timeout_s: float = 20.0) -> None:
    async def wait() -> None:
        while not done():
            output.settled.clear()
            await output.settled.wait()  # the next batch that ends

    await asyncio.wait_for(wait(), timeout_s)


def test_a_webhook_retries_a_failing_receiver_and_delivers_everything_once() -> None:
    receiver = Receiver(fail_every=3)

    async def main() -> WebhookOutput:
        hook = WebhookOutput(receiver.url, workflow="wf", name="hook", batch_max=7, flush_ms=5,
                             backoff_initial_s=0.01, backoff_max_s=0.05)
        for k in range(10):
            hook.accept(results(10, start=10 * k))
        await settle(hook, lambda: hook.delivered == 100)
        await hook.close()
        return hook

    try:
        hook = asyncio.run(main())
    finally:
        receiver.close()
    assert sorted(r["frame_id"] for r in receiver.results) == sorted(f"f{i}" for i in range(100))
    report = hook.report()
    assert report["retries"] > 0 and report["failed"] == 0 and report["backlog"] == 0
    assert report["last_error"] == "HTTP 500"


def test_a_receiver_that_never_answers_gets_its_results_counted_failed() -> None:
    async def main() -> WebhookOutput:
        hook = WebhookOutput("http://127.0.0.1:9/nowhere", workflow="wf", name="hook", flush_ms=1, give_up_s=0.2,
                             backoff_initial_s=0.01, backoff_max_s=0.02)
        hook.accept(results(5))
        await settle(hook, lambda: hook.failed == 5)
        await hook.close()
        return hook

    hook = asyncio.run(main())
    report = hook.report()
    assert report["delivered"] == 0 and report["failed"] == 5 and report["retries"] > 0
    assert "Connect" in report["last_error"] or "refused" in report["last_error"].lower()


def test_a_webhook_backlog_is_bounded_and_what_it_refuses_is_counted() -> None:
    async def main() -> WebhookOutput:
        hook = WebhookOutput("http://127.0.0.1:9/x", workflow="wf", name="hook", max_backlog=10, give_up_s=60)
        hook.accept(results(25))
        report = hook.report()
        await hook.close()
        return report

    report = asyncio.run(main())
    assert report["accepted"] == 10 and report["dropped"] == 15


def test_a_file_output_rotates_by_size_and_keeps_so_many(tmp_path: Path) -> None:
    async def main() -> FileOutput:
        out = FileOutput(tmp_path / "wf" / "readings.jsonl", rotate_mb=1 / 1024, keep=2)  # 1 kB
        for k in range(20):
            out.accept(results(5, start=5 * k))
        await out.close()
        return out

    out = asyncio.run(main())
    files = sorted(p.name for p in (tmp_path / "wf").iterdir())
    assert files == ["readings.jsonl", "readings.jsonl.1", "readings.jsonl.2"]
    assert out.rotations > 2
    newest = [json.loads(line) for line in (tmp_path / "wf" / "readings.jsonl").read_text().splitlines()]
    assert newest and newest[-1]["frame_id"] == "f99"
    assert (tmp_path / "wf").stat().st_mode & 0o077 == 0


def test_a_stream_counts_what_it_evicts_unread() -> None:
    async def main() -> tuple[StreamOutput, list, int]:
        stream = StreamOutput(retain=10)
        stream.accept(results(5))
        items, skipped = await stream.read(-1, limit=3)
        stream.accept(results(20, start=5))
        later, later_skipped = await stream.read(items[-1]["offset"])
        return stream, later, later_skipped

    stream, later, skipped = asyncio.run(main())
    assert stream.report()["dropped"] == 12  # 25 in, 10 kept, 3 had been read
    assert skipped == 12 and later[0]["offset"] == 15 and len(later) == 10


@pytest.mark.parametrize("wait_s", [0.0, 0.2])
def test_a_stream_read_past_the_end_waits_at_most_wait(wait_s: float) -> None:
    async def main() -> list:
        stream = StreamOutput()
        items, _ = await stream.read(-1, wait_s=wait_s)
        return items

    assert asyncio.run(main()) == []


def test_a_running_pipeline_delivers_every_result_to_a_webhook_that_fails_now_and_then() -> None:
    """digits-live with a webhook output next to its stream, on the in-process backend: every frame's
    result reaches the receiver exactly once although every third POST fails, and the output's
    status counts the retries."""
    from jellybean.spec.workflow import Output
    from tests.runtime.inprocess import ends, eventually, inject, live, pipeline

    receiver = Receiver(fail_every=3, workflow="digits-live", output="hook")
    bundle, plan = live()
    workflow = bundle.workflow.model_copy(deep=True)
    workflow.spec.outputs.append(Output(name="hook", kind="webhook", url=receiver.url, batch_max=5, flush_ms=5))
    p, backend, _runners = pipeline(bundle=type(bundle)(workflow, bundle.zoo, bundle.topology, bundle.sources), plan=plan)
    try:
        p.start()
        answers = ends(p, inject(p, [{"image": i, "digits": 2} for i in range(30)]))
        assert all(state == "completed" for state, _ in answers.values())

        def hook() -> dict:
            return next(row for row in p.status()["outputs"] if row["output"] == "hook")

        eventually(lambda: hook()["delivered"] == 30, timeout_s=30, p=p)
        assert sorted(r["frame_id"] for r in receiver.results) == sorted(answers)  # each once
        assert receiver.problems == [] and receiver.posts > len(receiver.results) / 5
        assert hook()["failed"] == 0 and hook()["backlog"] == 0 and hook()["last_error"] == "HTTP 500"
    finally:
        p.stop(drain=False)
        backend.close()
        receiver.close()
