"""Batching, backpressure, retries and the frame ledger, without Ray."""

from __future__ import annotations

import asyncio
import time

import pytest

from jellybean.runtime.flow import Ledger, RetryPolicy, Sketch, collect_batch, percentile, queue_capacity


def run(coro):
    return asyncio.new_event_loop().run_until_complete(coro)


def test_a_full_queue_gives_a_full_batch_without_waiting() -> None:
    async def go():
        q: asyncio.Queue = asyncio.Queue()
        for i in range(10):
            q.put_nowait(i)
        started = time.monotonic()
        batch = await collect_batch(q, 4, 1.0)
        return batch, time.monotonic() - started, q.qsize()

    batch, waited, left = run(go())
    assert batch == [0, 1, 2, 3] and left == 6 and waited < 0.1


def test_a_quiet_queue_sends_a_partial_batch_after_the_wait() -> None:
    async def go():
        q: asyncio.Queue = asyncio.Queue()
        q.put_nowait("only")
        started = time.monotonic()
        batch = await collect_batch(q, 8, 0.05)
        return batch, time.monotonic() - started

    batch, waited = run(go())
    assert batch == ["only"] and 0.04 <= waited < 0.5


def test_late_arrivals_join_the_batch_within_the_wait() -> None:
    async def go():
        q: asyncio.Queue = asyncio.Queue()
        q.put_nowait(1)

        async def later():
            await asyncio.sleep(0.01)
            q.put_nowait(2)

        asyncio.ensure_future(later())
        return await collect_batch(q, 8, 0.2)

    assert run(go()) == [1, 2]


def test_a_replicas_queue_holds_a_few_batches() -> None:
    """The bound a replica's queue gets: four batches (room for the next while one runs), at least two.
    That a full queue holds its senders back is the worker's behaviour, tested on it
    (test_worker.py::test_backpressure_reaches_the_source) and on Ray (test_dataplane.py)."""
    assert queue_capacity(2) == 8 and queue_capacity(16) == 64
    assert queue_capacity(3, batches=2) == 6
    assert queue_capacity(0) == queue_capacity(1) == 4  # a batch of at least one
    assert queue_capacity(1, batches=1) == 2  # never fewer than two


def test_retry_policy() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert policy.retry(1) and policy.retry(2) and not policy.retry(3)


def test_ledger_ends_every_frame_exactly_once() -> None:
    ledger = Ledger()
    for f in range(5):
        ledger.send(f)
    assert ledger.complete(0, correct=True, latency_ms=3.0)
    assert not ledger.complete(0, correct=True, latency_ms=3.0)  # a duplicate is ignored
    assert ledger.fail(1, "stage x: boom")
    assert not ledger.complete(1, correct=True, latency_ms=1.0)  # a failed frame stays failed
    assert ledger.complete(2, correct=False, latency_ms=5.0)
    assert (ledger.sent, ledger.completed, ledger.failed, ledger.in_flight, ledger.lost) == (5, 2, 1, 2, 2)
    assert ledger.correct == 1 and ledger.reasons == {"stage x: boom": 1}


def test_percentile() -> None:
    assert percentile([], 50) is None
    assert percentile([1, 2, 3, 4], 50) == pytest.approx(2.5)
    assert percentile(list(range(101)), 99) == pytest.approx(99)


def test_a_withdrawn_frame_was_never_sent() -> None:
    ledger = Ledger()
    ledger.send(1)
    ledger.send(2)
    ledger.withdraw(2)
    ledger.withdraw(99)  # unknown: nothing happens
    assert (ledger.sent, ledger.in_flight, ledger.lost) == (1, 1, 1)


def test_a_sketch_reads_quantiles_within_two_percent_in_constant_space() -> None:
    import random

    rng = random.Random(7)
    values = [rng.lognormvariate(1.0, 1.2) for _ in range(20_000)]
    halves = [Sketch((1.0, 10.0)), Sketch((1.0, 10.0))]
    for i, v in enumerate(values):
        halves[i % 2].add(v)
    state = Sketch.merge(h.state() for h in halves)
    assert state["n"] == len(values) and state["sum"] == pytest.approx(sum(values))
    assert state["coarse"] == [sum(v <= 1.0 for v in values), sum(1.0 < v <= 10.0 for v in values),
                               sum(v > 10.0 for v in values)]
    for q in (1, 50, 90, 99, 99.9):
        assert Sketch.quantile(state, q) == pytest.approx(percentile(values, q), rel=0.02)
    assert len(state["fine"]) < 400  # buckets, not samples
    assert Sketch.quantile(Sketch().state(), 50) is None
