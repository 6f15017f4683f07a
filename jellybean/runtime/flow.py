"""Flow control for the data plane: dynamic batching, bounded queues, retries and the frame ledger.

These are the decisions, kept free of Ray so they can be tested on their own:

- :func:`collect_batch` takes what is queued for a replica, up to the plan's batch size, waiting at
  most ``max_wait_s`` for the batch to fill once the first request is there (dynamic batching: a
  busy stage runs full batches, a quiet one does not make requests wait for company).
- Queues are bounded (:func:`queue_capacity`): when a replica's queue is full, whoever routes to it
  waits, so pressure propagates stage by stage back to the sources, which then slow down instead of
  piling frames up in memory.
- :class:`RetryPolicy` says whether a request that failed on one replica is tried on another.
- :class:`Ledger` accounts for every frame: it ends completed or failed with a reason, and
  ``lost = sent - completed - failed`` must be zero after a drain.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from collections.abc import Hashable, Iterable

from jellybean.artifacts import f1_percent

#: The end-to-end, processing and hop histograms' buckets (ms), as exported (jellybean.runtime.metrics).
LATENCY_BOUNDS_MS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0)
#: Sketch buckets grow by this ratio: a quantile read from a sketch is within ±2% of the true one.
SKETCH_RATIO = 1.04
_LOG_RATIO = math.log(SKETCH_RATIO)
#: Values at or below this (ms) share the first bucket.
SKETCH_FLOOR = 0.001


class Sketch:
    """The distribution of a series of values (milliseconds) in constant space, cumulative since the
    actor started, so that its state can be reported as often as the control plane likes at a size
    that does not grow with the traffic (a report that carried every sample would put the frame rate
    onto every uplink, on top of the frames).

    Two views: log buckets of ratio :data:`SKETCH_RATIO` (``fine``: bucket ``i`` holds values in
    ``(FLOOR * r**(i-1), FLOOR * r**i]``; quantiles from it are within ±2%), and exact counts per
    ``bounds`` (``coarse``: the Prometheus histogram's buckets, ``le`` each bound, then +Inf), with the
    count and the sum. :meth:`merge` adds states; :meth:`quantile` reads one."""

    def __init__(self, bounds: tuple[float, ...] = ()) -> None:
        self.bounds = tuple(bounds)
        self.fine: dict[int, int] = {}
        self.coarse = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.total = 0.0

    def add(self, value: float) -> None:
        index = 0 if value <= SKETCH_FLOOR else math.ceil(math.log(value / SKETCH_FLOOR) / _LOG_RATIO)
        self.fine[index] = self.fine.get(index, 0) + 1
        self.coarse[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.total += value

    def state(self) -> dict:
        return {"n": self.count, "sum": self.total, "fine": dict(self.fine), "coarse": list(self.coarse)}

    @staticmethod
    def merge(states: Iterable[dict]) -> dict:
        fine: dict[int, int] = {}
        count, total, coarse = 0, 0.0, None
        for state in states:
            if not state:
                continue
            count += state["n"]
            total += state["sum"]
            for index, n in state["fine"].items():
                fine[index] = fine.get(index, 0) + n
            coarse = list(state["coarse"]) if coarse is None else [a + b for a, b in zip(coarse, state["coarse"])]
        return {"n": count, "sum": total, "fine": fine, "coarse": coarse or []}

    @staticmethod
    def quantile(state: dict | None, q: float) -> float | None:
        """The ``q``-th percentile (0..100) of a state: the geometric middle of the bucket that holds it."""
        if not state or not state["n"]:
            return None
        rank = max(1, math.ceil(state["n"] * q / 100.0))
        seen = 0
        for index in sorted(state["fine"]):
            seen += state["fine"][index]
            if seen >= rank:
                if index == 0:
                    return SKETCH_FLOOR
                return SKETCH_FLOOR * SKETCH_RATIO ** (index - 0.5)
        return None


def queue_capacity(batch_size: int, *, batches: int = 4) -> int:
    """Requests a replica's queue holds: a few batches, enough to keep it busy, small enough to bound memory."""
    return max(2, batches * max(1, batch_size))


async def collect_batch(queue: asyncio.Queue, max_batch: int, max_wait_s: float, into: list | None = None) -> list:
    """Wait for one item, then take up to ``max_batch`` in all, waiting at most ``max_wait_s`` more.
    Items are appended to ``into`` (a new list by default) as they are taken, so a caller cancelled
    midway still knows what it had taken."""
    batch = [] if into is None else into
    batch.append(await queue.get())
    deadline = time.monotonic() + max_wait_s
    while len(batch) < max_batch:
        try:
            batch.append(queue.get_nowait())
            continue
        except asyncio.QueueEmpty:
            pass
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            batch.append(await asyncio.wait_for(queue.get(), remaining))
        except TimeoutError:
            break
    return batch


@dataclass
class RetryPolicy:
    max_attempts: int = 3

    def retry(self, attempts: int) -> bool:
        """After ``attempts`` failed tries, try again (on another replica)?"""
        return attempts < self.max_attempts


def accuracy_percent(counts) -> float | None:  # noqa: ANN001 - a Ledger or a LedgerView
    """Measured accuracy, in percent, in the metric the frames' truths call for: F1 = 2 TP / (2 TP +
    FP + FN) for yes/no truths (a detector that lets through what it should: what the profiler's F1
    is), else the share of judged frames answered right. None before any frame was judged."""
    if counts.tp + counts.fp + counts.fn:
        return f1_percent(counts.tp, counts.fp, counts.fn)
    return 100.0 * counts.correct / counts.judged if counts.judged else None


@dataclass
class Ledger:
    """Every frame sent ends exactly once: completed (with its result) or failed (with a reason)."""

    sent: int = 0
    completed: int = 0
    failed: int = 0
    correct: int = 0
    #: Completions with a verdict (the frame had a ground truth), and, for yes/no truths (is there
    #: speech?), the confusion counts that F1 is computed from.
    judged: int = 0
    tp: int = 0
    fp: int = 0
    fn: int = 0
    reasons: Counter = field(default_factory=Counter)
    latency_ms: Sketch = field(default_factory=lambda: Sketch(LATENCY_BOUNDS_MS))
    _open: dict = field(default_factory=dict)  # frame id -> when it was sent, in sending order

    def send(self, frame_id: Hashable, at: float | None = None) -> None:
        self.sent += 1
        self._open[frame_id] = time.time() if at is None else at

    def withdraw(self, frame_id: Hashable) -> None:
        """A frame that never entered the pipeline (its source stopped while waiting for room)."""
        if frame_id in self._open:
            del self._open[frame_id]
            self.sent -= 1

    def older_than(self, sent_before: float) -> list:
        """Frames still open that were sent before ``sent_before`` (oldest first)."""
        out = []
        for frame_id, sent_at in self._open.items():
            if sent_at >= sent_before:
                break
            out.append(frame_id)
        return out

    def complete(self, frame_id: Hashable, *, correct: bool | None, latency_ms: float,
                 detection: tuple[bool, bool] | None = None) -> bool:
        """A frame that ended with its result. ``correct`` is None without a ground truth;
        ``detection`` is ``(predicted, truth)`` for a yes/no truth."""
        if frame_id not in self._open:
            return False  # a duplicate (a retried request that had in fact succeeded): ignored
        del self._open[frame_id]
        self.completed += 1
        if correct is not None:
            self.judged += 1
            self.correct += bool(correct)
        if detection is not None:
            predicted, truth = detection
            self.tp += predicted and truth
            self.fp += predicted and not truth
            self.fn += truth and not predicted
        self.latency_ms.add(latency_ms)
        return True

    @property
    def accuracy_percent(self) -> float | None:
        return accuracy_percent(self)

    def fail(self, frame_id: Hashable, reason: str) -> bool:
        if frame_id not in self._open:
            return False
        del self._open[frame_id]
        self.failed += 1
        self.reasons[reason] += 1
        return True

    @property
    def in_flight(self) -> int:
        return len(self._open)

    @property
    def lost(self) -> int:
        return self.sent - self.completed - self.failed


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
