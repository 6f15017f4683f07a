"""Where frames enter: a replay loop or an HTTP ingest endpoint, at the source's own site.

Both are a :class:`FrameSource`: it gives each frame its id and identity (``source``, ``site``,
``received_at``), hands it to the replicas of the stages that read the source (through a
:class:`~jellybean.runtime.worker.Forwarder`), and keeps the **ledger** of its frames: a frame is
sent, then ends exactly once, completed (its result reached the outputs) or failed (with the
reason), as its outcome comes back through the hops (:mod:`jellybean.runtime.worker`). At most
``max_in_flight`` frames are in flight at once: a replay loop that finds no room waits (or, with
``shed``, drops the frame explicitly, recorded as failed), and the ingest endpoint answers 429.

Payloads (:func:`decode_payload`) become one named array: ``application/x-npy`` (a ``.npy`` file,
never a pickle), ``image/png`` and ``image/jpeg`` (Pillow; grey or RGB, uint8, or float32 in [0, 1]
when the source asks for float32), ``audio/wav`` (PCM; float32 in [-1, 1] when asked) and
``application/json`` (an array of numbers, or an object whose field of the source's array name is
one, plus extra scalar fields). A payload that does not decode, or has another dtype or shape than
the source declares, is refused with the reason before anything else sees it.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections import Counter
from itertools import count
from typing import Any

import numpy as np

from jellybean.runtime.flow import Ledger
from jellybean.runtime.worker import COMPLETED, FAILED, PENDING, Forwarder, merged, scoped

CONTENT_TYPES = ("application/x-npy", "image/png", "image/jpeg", "audio/wav", "application/json")
#: The largest array one payload may decode to (a 4K RGB float32 image is 99 MB; this is 64 MiB).
MAX_ARRAY_BYTES = 64 * 1024 * 1024


class PayloadError(ValueError):
    """A payload that cannot be a frame of this source: said in words (HTTP 400, or 415 when
    ``unsupported``)."""

    def __init__(self, message: str, *, unsupported: bool = False) -> None:
        super().__init__(message)
        self.unsupported = unsupported


def _image(data: bytes, kind: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = 64_000_000  # a decompression bomb is refused, not decoded
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != kind.upper():
                raise PayloadError(f"not a {kind.upper()} image (it is {image.format or 'unknown'})")
            if image.mode not in ("L", "RGB"):
                image = image.convert("RGB")
            return np.asarray(image)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise PayloadError(f"not a readable {kind.upper()} image: {exc}") from None


def _wav(data: bytes) -> np.ndarray:
    import wave

    try:
        with wave.open(io.BytesIO(data)) as reader:
            width, channels, frames = reader.getsampwidth(), reader.getnchannels(), reader.getnframes()
            if width not in (1, 2, 4):
                raise PayloadError(f"WAV samples of {width} bytes are not supported (8, 16 or 32-bit PCM)")
            if frames * channels * width > MAX_ARRAY_BYTES:
                raise PayloadError("WAV payload too long")
            raw = reader.readframes(frames)
    except (wave.Error, EOFError) as exc:
        raise PayloadError(f"not a readable WAV file: {exc}") from None
    dtype = {1: np.uint8, 2: np.int16, 4: np.int32}[width]
    samples = np.frombuffer(raw, dtype=dtype)
    return samples.reshape(-1, channels) if channels > 1 else samples


def _npy(data: bytes) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise PayloadError(f"not a .npy array: {exc}") from None
    if not isinstance(array, np.ndarray):
        raise PayloadError("a .npy payload holds one array, not an archive")
    return array


def _convert(array: np.ndarray, dtype: str | None) -> np.ndarray:
    if dtype is None or array.dtype == np.dtype(dtype):
        return array
    if dtype.startswith("float") and array.dtype == np.uint8:
        return (array.astype(dtype) / 255.0).astype(dtype)
    if dtype.startswith("float") and array.dtype in (np.int16, np.int32):
        return (array.astype(dtype) / float(np.iinfo(array.dtype).max)).astype(dtype)
    if np.can_cast(array.dtype, dtype, casting="same_kind"):
        return array.astype(dtype)
    raise PayloadError(f"dtype {array.dtype} cannot become {dtype}")


def decode_payload(data: bytes, content_type: str, *, array: str, dtype: str | None = None,
                   shape: tuple[int, ...] | None = None) -> dict:
    """The message fields one payload decodes to (``{array: ndarray, ...}``), checked against the
    source's declared dtype and shape. Raises :class:`PayloadError`."""
    kind = content_type.split(";", 1)[0].strip().lower()
    fields: dict[str, Any] = {}
    if kind == "application/x-npy":
        value = _npy(data)
    elif kind == "image/png":
        value = _image(data, "png")
    elif kind == "image/jpeg":
        value = _image(data, "jpeg")
    elif kind in ("audio/wav", "audio/x-wav", "audio/wave"):
        value = _wav(data)
    elif kind == "application/json":
        try:
            document = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PayloadError(f"invalid JSON: {exc}") from None
        if isinstance(document, dict):
            if array not in document:
                raise PayloadError(f"a JSON object needs the field {array!r} (the array)")
            for key, item in document.items():
                if key != array:
                    if key in ("frame_id", "source", "site", "received_at", "reply", "truth", "sent_at"):
                        raise PayloadError(f"field {key!r} is set by the runtime")
                    if not (item is None or isinstance(item, (str, int, float, bool))):
                        raise PayloadError(f"field {key!r}: only scalar extra fields are accepted")
                    fields[key] = item
            document = document[array]
        try:
            value = np.asarray(document, dtype=dtype or None)
        except (ValueError, TypeError) as exc:
            raise PayloadError(f"JSON array of numbers expected: {exc}") from None
        if value.dtype == object:
            raise PayloadError("JSON array of numbers expected (ragged or mixed)")
    else:
        raise PayloadError(f"unsupported content type {kind or '(none)'!r}: send one of {', '.join(CONTENT_TYPES)}",
                           unsupported=True)
    if value.nbytes > MAX_ARRAY_BYTES:
        raise PayloadError(f"array of {value.nbytes} bytes, more than {MAX_ARRAY_BYTES}")
    value = _convert(value, dtype)
    if shape is not None and (
            value.ndim != len(shape) or any(want != -1 and got != want for got, want in zip(value.shape, shape))):
            expected = "x".join("*" if n == -1 else str(n) for n in shape)
            raise PayloadError(f"shape {'x'.join(map(str, value.shape))}, expected {expected}")
    fields[array] = np.ascontiguousarray(value)
    return fields


class FrameSource:
    """The frames of one source group at one site, and their ledger."""

    def __init__(self, source: str, site: str, forwarder: Forwarder, consumers: tuple[str, ...], *,
                 max_in_flight: int = 256, frame_timeout_s: float = 120.0,
                 sinks_below: dict[str, tuple[str, ...]] | None = None) -> None:
        self.source = source
        self.site = site
        self.forwarder = forwarder
        self.consumers = consumers
        self.ledger = Ledger()
        #: The sinks this source's frames reach (from ``sinks_below``: stage -> the sinks downstream of
        #: it). Where they reach several, a frame ends when each has ended it, and each sink keeps a
        #: ledger of its own (:attr:`sink_ledgers`): per sink, a frame completed (its result, or none:
        #: the models found nothing to report) or failed, with the reason.
        reached = sorted({sink for stage in consumers for sink in (sinks_below or {}).get(stage, ())})
        several = len({sink for sinks in (sinks_below or {}).values() for sink in sinks}) > 1
        self.sinks_below = sinks_below if several else None
        self.sinks: tuple[str, ...] = tuple(reached)
        self.sink_ledgers: dict[str, Ledger] = {sink: Ledger() for sink in reached} if len(reached) > 1 else {}
        self.capacity = max_in_flight
        self.taken = 0  # frames admitted and not yet ended
        self._freed = asyncio.Event()
        self.frame_timeout_s = frame_timeout_s
        self._ids = count()
        self.generated = 0
        self.shed = 0
        self.refused_full = 0  # ingest requests answered 429
        self.refused_bad = 0  # ingest requests answered 400 or 415
        self.stopping = False
        self.tasks: set[asyncio.Task] = set()
        self.failures: Counter = Counter()
        self.first_completed_at: float | None = None
        self.last_completed_at: float | None = None
        self.last_completed_sent_at: float | None = None

    def frame_id(self) -> str:
        return f"{self.source}@{self.site}#{next(self._ids)}"

    async def reserve(self, n: int = 1, wait_s: float | None = None) -> bool:
        """Room for ``n`` more frames in flight, waiting at most ``wait_s`` (None: as long as it
        takes); all or nothing, so a request of several payloads is admitted whole or refused."""
        if n > self.capacity:
            return False
        deadline = None if wait_s is None else time.monotonic() + wait_s
        while self.taken + n > self.capacity:
            self._freed.clear()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._freed.wait(), remaining)
            except TimeoutError:
                return False
        self.taken += n
        return True

    async def admit(self, fields: list[dict], *, reply: bool = False, wait_s: float | None = None,
                    reserved: bool = False) -> tuple[list[str], asyncio.Future] | None:
        """Hand frames over, together: their ids and a future of their ends (``{frame id: (state,
        detail)}``). Waits for room at most ``wait_s`` (None: as long as it takes) unless the room
        was ``reserved``; None when there was no room in time."""
        if not reserved and not await self.reserve(len(fields), wait_s):
            return None
        now = time.time()
        frames = []
        for item in fields:
            frame = dict(item)
            frame_id = self.frame_id()
            frame.update(frame_id=frame_id, source=self.source, site=self.site, received_at=now, sent_at=now)
            if reply:
                frame["reply"] = True
            self.sent(frame_id, at=now)
            frames.append(frame)
        self.generated += len(frames)
        parts = [self.forwarder.send(stage, frames if n == 0 else [dict(f) for f in frames])
                 for n, stage in enumerate(self.consumers)]
        if self.sinks_below is not None:  # several sinks: each part's ends concern the sinks below its stage
            parts = [scoped(part, self.sinks_below[stage]) for part, stage in zip(parts, self.consumers)]
        ends = asyncio.get_running_loop().create_future()
        merged(parts).add_done_callback(lambda done: self._ended(frames, now, done, ends))
        return [f["frame_id"] for f in frames], ends

    def _ended(self, frames: list[dict], sent_at: float, done: asyncio.Future, ends: asyncio.Future) -> None:
        """The frames' ends, from their merged outcome, into the ledger (and each sink's)."""
        outcome = done.result()["ends"] if not done.cancelled() else {}
        answers = {}
        for frame in frames:
            frame_id = frame["frame_id"]
            end = outcome.get(frame_id)
            if self.sink_ledgers:
                answers[frame_id] = self._ended_at_sinks(frame, sent_at, end)
                continue
            state, detail, verdict, latency_ms, detection = _judged(end, frame.get("truth"))
            if state == COMPLETED:
                self._completed(frame_id, sent_at, verdict, latency_ms, detection)
            else:
                self.fail(frame_id, detail)
            answers[frame_id] = (state, detail)
        self.taken -= len(frames)
        self._freed.set()
        if not ends.done():
            ends.set_result(answers)

    def _ended_at_sinks(self, frame: dict, sent_at: float, end: list | None) -> tuple[str, Any]:
        """A frame that reached several sinks ends once each has ended it: completed when none failed
        it (its latency is the last sink's; it is right when every sink that judged it was), else
        failed with the first failure's reason, naming the sink. Each sink's ledger takes the frame's
        end there. A waiting client gets ``{"frame_id", "by_sink": {sink: result or None}}``."""
        frame_id, truth = frame["frame_id"], frame.get("truth")
        per_sink = end[4] if end is not None and len(end) > 4 else {}
        verdicts, latencies, results, failure = [], [], {}, None
        for sink in self.sinks:
            state, detail, verdict, latency_ms, detection = _judged(per_sink.get(sink), truth)
            ledger = self.sink_ledgers[sink]
            if state == COMPLETED:
                ledger.complete(frame_id, correct=verdict, latency_ms=latency_ms if latency_ms is not None else
                                (time.time() - sent_at) * 1000.0, detection=detection)
                verdicts.append(verdict)
                latencies.append(latency_ms)
                results[sink] = detail
            else:
                ledger.fail(frame_id, detail)
                failure = failure or f"at sink {sink}: {detail}"
        if failure is not None:
            self.fail(frame_id, failure)
            return FAILED, failure
        judged = [v for v in verdicts if v is not None]
        known = [t for t in latencies if t is not None]
        self._completed(frame_id, sent_at, all(judged) if judged else None, max(known) if known else None)
        return COMPLETED, {"frame_id": frame_id, "by_sink": results} if frame.get("reply") else None

    def sent(self, frame_id: str, at: float | None = None) -> None:
        """A frame enters the ledger (and each sink's)."""
        self.ledger.send(frame_id, at=at)
        for ledger in self.sink_ledgers.values():
            ledger.send(frame_id, at=at)

    def _completed(self, frame_id: str, sent_at: float, correct: bool | None, latency_ms: float | None = None,
                   detection: tuple[bool, bool] | None = None) -> None:
        """A frame that ended with its result; ``latency_ms`` is source to result, as the sink measured
        it (the time its end took to come back here is not part of it)."""
        now = time.time()
        if latency_ms is None:
            latency_ms = (now - sent_at) * 1000.0
        if self.ledger.complete(frame_id, correct=correct, latency_ms=latency_ms, detection=detection):
            if self.first_completed_at is None:
                self.first_completed_at = now
            self.last_completed_at = now
            self.last_completed_sent_at = sent_at

    def fail(self, frame_id: str, reason: str) -> bool:
        for ledger in self.sink_ledgers.values():  # each sink that has not ended the frame yet
            ledger.fail(frame_id, reason)
        if self.ledger.fail(frame_id, reason):
            self.failures[reason] += 1
            return True
        return False

    def expire(self, now: float | None = None) -> int:
        """Fail frames in flight longer than ``frame_timeout_s`` (their end may never come)."""
        now = time.time() if now is None else now
        old = self.ledger.older_than(now - self.frame_timeout_s)
        for frame_id in old:
            self.fail(frame_id, f"in flight for more than {self.frame_timeout_s:g} s")
        return len(old)

    def report(self) -> dict:
        ledger = self.ledger
        return {"source": self.source, "site": self.site, "sent": ledger.sent, "completed": ledger.completed,
                "failed": ledger.failed, "correct": ledger.correct, "judged": ledger.judged, "tp": ledger.tp,
                "fp": ledger.fp, "fn": ledger.fn, "in_flight": ledger.in_flight,
                "generated": self.generated, "shed": self.shed, "failures": dict(ledger.reasons),
                "refused_full": self.refused_full, "refused_bad": self.refused_bad,
                "latency": ledger.latency_ms.state(), "first_completed_at": self.first_completed_at,
                "last_completed_at": self.last_completed_at, "last_completed_sent_at": self.last_completed_sent_at,
                "sinks": {sink: _ledger_counts(self.sink_ledgers.get(sink, ledger)) for sink in self.sinks}}


def _ledger_counts(ledger: Ledger) -> dict:
    """What a sink's ledger reports: its frames' ends, right answers and latencies."""
    return {"sent": ledger.sent, "completed": ledger.completed, "failed": ledger.failed, "correct": ledger.correct,
            "judged": ledger.judged, "tp": ledger.tp, "fp": ledger.fp, "fn": ledger.fn, "in_flight": ledger.in_flight,
            "latency": ledger.latency_ms.state()}


def _judged(end: list | None, truth: Any) -> tuple[str, Any, bool | None, float | None, tuple[bool, bool] | None]:
    """How a frame ended (at its sink, or at one of its sinks): ``(state, detail, verdict, latency_ms,
    detection)``, ``detail`` the result (completed) or the reason (failed). A result carries the
    sink's verdict where the frame had a truth (a yes/no one: it said yes). No end at all: the models
    produced no result for it (a detector found nothing, a VAD heard no speech), so it ended, right
    exactly when its truth says there was nothing to find."""
    yes_no = isinstance(truth, (bool, np.bool_))
    if end is not None and end[0] == COMPLETED:
        verdict = None if truth is None else bool(end[2]) if end[2] is not None else bool(truth) if yes_no else False
        return COMPLETED, end[1], verdict, end[3], (True, bool(truth)) if yes_no else None
    if end is not None and end[0] == FAILED:
        return FAILED, str(end[1]), None, None, None
    if end is not None and end[0] == PENDING:
        return FAILED, "a join held parts of the frame and never completed it (its other parts were lost)", None, None, None
    verdict = None if truth is None else not bool(truth) if yes_no else False
    return COMPLETED, None, verdict, None, (False, bool(truth)) if yes_no else None


class ReplayLoop:
    """Replays a dataset's frames at ``rate_per_s`` (changeable) into a :class:`FrameSource`.

    Overload: with ``backpressure`` a frame that finds no room waits, and the loop sends fewer frames
    (right for measuring capacity); with ``shed`` it waits at most ``shed_after_s`` and then drops the
    frame *explicitly*: recorded as failed with the reason and counted as shed, as a camera that
    cannot be served would (right for serving). A loop that falls behind does not burst to catch up."""

    def __init__(self, frames: list[dict], source: FrameSource, rate_per_s: float, *, overload: str = "backpressure",
                 shed_after_s: float = 0.05, offset: int = 0, burst: int = 64) -> None:
        self.frames = frames
        self.burst = burst
        self.source = source
        self.rate_per_s = rate_per_s
        self.overload = overload
        self.shed_after_s = shed_after_s
        self.position = offset * 7919 % max(1, len(frames))
        self.paused = False
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        """Frames are due at ``rate_per_s``; those due together (a rate beyond what one wake-up per
        frame can keep) go in one hand-over of at most ``burst``."""
        next_at = time.monotonic()
        source = self.source
        while not source.stopping:
            if self.paused or self.rate_per_s <= 0:
                await asyncio.sleep(0.05)
                next_at = time.monotonic()
                continue
            interval = 1.0 / self.rate_per_s
            now = time.monotonic()
            if next_at > now:
                await asyncio.sleep(next_at - now)
                now = time.monotonic()
            if source.stopping:
                break
            due = min(self.burst, max(1, int((now - next_at) / interval) + 1))
            frames = []
            for _ in range(due):
                frame = self.frames[self.position % len(self.frames)]
                frames.append({k: v for k, v in frame.items() if k not in ("frame_id", "sent_at")})
                self.position += 1
            if self.overload == "shed":
                if await source.admit(frames, wait_s=self.shed_after_s) is None:
                    for _ in frames:
                        source.generated += 1
                        source.shed += 1
                        frame_id = source.frame_id()
                        source.sent(frame_id)
                        source.fail(frame_id, f"shed at the source: no room within {self.shed_after_s * 1000:g} ms "
                                              "(overload)")
            else:
                await source.admit(frames)
            # A loop that fell behind (backpressure) does not burst to catch up: it sends at the rate it can.
            next_at = max(next_at + due * interval, time.monotonic() - interval)

    async def stop(self) -> None:
        self.source.stopping = True
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001, S110 - stopping
                pass
