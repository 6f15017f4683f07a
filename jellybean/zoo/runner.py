"""Runners: what one replica of a stage executes, batch in, fan-out lists out.

A runner is a callable ``runner(payloads: list[dict]) -> list[list[dict]]``: for each input payload,
in order, the list of output payloads it produces (zero, one or several: fan-out). Every output
copies ``frame_id``, ``truth`` and ``sent_at`` from its input, so ground truth and the source's
timestamp travel to the end of the workflow. Runners are built inside the process that uses them
(a Ray actor) by :func:`jellybean.zoo.registry.load_runner` from (loader name, cache dir, threads);
nothing of them is pickled.

Messages (numpy arrays are float32):

- frame (source)   ``{"frame_id", "image": (8, 48), "truth": list[int], "sent_at"}``
- detector -> crop ``{"frame_id", "index": k, "count": n, "image": (8, 8), "truth", "sent_at"}``, one
  per digit found, k = 0..n-1 left to right; when none is found exactly one message with
  ``"count": 0, "index": 0, "image": None`` so that the frame still reaches the aggregator.
- classifier -> prediction ``{"frame_id", "index", "count", "digit": int | None, "truth", "sent_at"}``,
  exactly one per crop (``digit`` is None for the count == 0 sentinel).
- aggregator -> reading ``{"frame_id", "reading": list[int], "truth", "correct": bool, "sent_at"}``,
  exactly once per frame, when all ``count`` predictions of the frame have arrived (1 for count 0).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING
from collections.abc import Callable

import numpy as np

from jellybean.zoo.digits import DIGIT, MAX_START, crop

if TYPE_CHECKING:  # torch is imported where a model runs, so an aggregator replica never loads it
    import torch

Runner = Callable[[list[dict]], list[list[dict]]]

#: Keys every output copies from its input.
PASSTHROUGH = ("frame_id", "truth", "sent_at")
#: Detection: a column is a digit's start when its probability is at least this and it is the
#: highest within SUPPRESS columns (two digit boxes start at least 9 columns apart).
THRESHOLD = 0.5
SUPPRESS = DIGIT
#: The aggregator keeps at most this many incomplete frames; beyond it the oldest is dropped.
MAX_PENDING_FRAMES = 100_000


def _carry(payload: dict) -> dict:
    return {key: payload.get(key) for key in PASSTHROUGH}


def pick_starts(probabilities: np.ndarray, threshold: float = THRESHOLD, suppress: int = SUPPRESS) -> list[int]:
    """Greedy non-maximum suppression over one frame's per-column start probabilities: the most
    probable column above ``threshold`` wins, columns within ``suppress`` of it are dropped, repeat.
    Returns the chosen start columns left to right (only columns 0..40 can start a box)."""
    p = probabilities[:MAX_START + 1]
    order = np.argsort(-p, kind="stable")
    chosen: list[int] = []
    for column in order:
        if p[column] < threshold:
            break
        if all(abs(int(column) - c) > suppress for c in chosen):
            chosen.append(int(column))
    return sorted(chosen)


class DetectorRunner:
    """Finds the digits of each frame (one forward pass per batch) and cuts an 8 x 8 crop for each."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval()

    def starts(self, payloads: list[dict]) -> list[list[int]]:
        if not payloads:
            return []
        import torch

        batch = torch.from_numpy(np.stack([np.asarray(p["image"], dtype=np.float32) for p in payloads]))
        with torch.inference_mode():
            probabilities = torch.sigmoid(self.model(batch)).numpy()
        return [pick_starts(row) for row in probabilities]

    def __call__(self, payloads: list[dict]) -> list[list[dict]]:
        outputs: list[list[dict]] = []
        for payload, starts in zip(payloads, self.starts(payloads)):
            carried = _carry(payload)
            if not starts:
                outputs.append([{**carried, "index": 0, "count": 0, "image": None}])
                continue
            image = np.asarray(payload["image"], dtype=np.float32)
            outputs.append([{**carried, "index": k, "count": len(starts), "image": crop(image, s)}
                            for k, s in enumerate(starts)])
        return outputs


class ClassifierRunner:
    """Reads the digit of each crop; the whole batch goes through the model in one forward pass."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval()

    def digits(self, images: list[np.ndarray]) -> list[int]:
        if not images:
            return []
        import torch

        batch = torch.from_numpy(np.stack([np.asarray(i, dtype=np.float32) for i in images]))
        with torch.inference_mode():
            return self.model(batch).argmax(dim=1).tolist()

    def __call__(self, payloads: list[dict]) -> list[list[dict]]:
        present = [i for i, p in enumerate(payloads) if p.get("image") is not None]
        found = dict(zip(present, self.digits([payloads[i]["image"] for i in present])))
        return [[{**_carry(p), "index": p.get("index", 0), "count": p.get("count", 0), "digit": found.get(i)}]
                for i, p in enumerate(payloads)]


class AggregatorRunner:
    """Joins a frame's predictions by ``frame_id`` and emits its reading once all have arrived.

    Stateful: predictions wait in a buffer until the frame has ``count`` of them (one when
    ``count`` is 0), in any order and interleaved with other frames'; then one reading is emitted
    and the frame leaves the buffer. A repeated ``index`` replaces the earlier prediction. The
    buffer holds at most ``max_pending`` incomplete frames: past that, the frame that has waited
    longest is dropped (counted in ``dropped``), so a lost crop cannot grow memory without bound.
    All predictions of one frame must reach the same replica, and ``frame_id`` must be unique
    among the frames in flight.
    """

    #: Tells the data plane to route by frame id (all parts of a frame to one replica).
    stateful = True

    def __init__(self, max_pending: int = MAX_PENDING_FRAMES) -> None:
        self.max_pending = max_pending
        self.pending: OrderedDict[object, dict[int, int | None]] = OrderedDict()
        self.dropped = 0

    def __call__(self, payloads: list[dict]) -> list[list[dict]]:
        outputs: list[list[dict]] = []
        for payload in payloads:
            frame_id = payload.get("frame_id")
            expected = max(int(payload.get("count") or 0), 1)
            got = self.pending.get(frame_id)
            if got is None:
                got = self.pending[frame_id] = {}
                while len(self.pending) > self.max_pending:
                    self.pending.popitem(last=False)
                    self.dropped += 1
            got[int(payload.get("index") or 0)] = payload.get("digit")
            if len(got) < expected:
                outputs.append([])
                continue
            del self.pending[frame_id]
            reading = [got[k] for k in sorted(got) if got[k] is not None]
            truth = payload.get("truth")
            outputs.append([{"frame_id": frame_id, "reading": reading, "truth": truth,
                             "correct": truth is not None and reading == list(truth),
                             "sent_at": payload.get("sent_at")}])
        return outputs
