"""Frames of handwritten digits, built from scikit-learn's bundled ``load_digits`` (no download).

A *frame* is what the digits workflow's camera emits: an 8 x 48 grey image holding 1 to 4 of the
1,797 8 x 8 digit images side by side, each at a random column offset with at least one blank
column between two digits, plus light Gaussian noise. The digits, left to right, travel with the
frame as ``truth`` so that the end of the pipeline can tell whether it read the frame right.

The 1,797 images are split once, by a fixed permutation, into a train part (70%, 1,258 images)
and a test part (30%, 539 images); frames of the two splits never share a digit image. Frames are
deterministic for ``(split, n, seed)``.

Payload of one frame (the workflow's source message)::

    {"frame_id": int, "image": np.ndarray float32 (8, 48) in [0, 1], "truth": list[int], "sent_at": 0.0}
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

#: Geometry: digit images are DIGIT x DIGIT, frames HEIGHT x WIDTH.
DIGIT = 8
HEIGHT = 8
WIDTH = 48
MAX_DIGITS = 4
#: Blank columns at least between two digits' 8-column boxes.
MIN_GAP = 1
#: Largest start column of a digit box (its last column is the frame's last).
MAX_START = WIDTH - DIGIT
#: Standard deviation of the additive Gaussian noise (pixel values are in [0, 1]).
NOISE = 0.05
#: Share of the images in the train split.
TRAIN_SHARE = 0.7
_SPLIT_SEED = 20221104  # fixed: the split never changes between runs or machines
_SPLITS = {"train": 1, "test": 2}


@lru_cache(maxsize=1)
def _dataset() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)  # 0..16 -> 0..1
    images.setflags(write=False)
    labels = data.target.astype(np.int64)
    labels.setflags(write=False)
    return images, labels


@lru_cache(maxsize=2)
def split_indices(split: str) -> np.ndarray:
    """Indices into ``load_digits`` of the images of ``split`` ("train" or "test"); disjoint."""
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    images, _ = _dataset()
    order = np.random.default_rng(_SPLIT_SEED).permutation(len(images))
    cut = int(round(TRAIN_SHARE * len(images)))
    chosen = order[:cut] if split == "train" else order[cut:]
    chosen = np.sort(chosen)
    chosen.setflags(write=False)
    return chosen


def digit_images(split: str) -> tuple[np.ndarray, np.ndarray]:
    """The (images (N, 8, 8) float32 in [0, 1], labels (N,)) of ``split``."""
    images, labels = _dataset()
    idx = split_indices(split)
    return images[idx], labels[idx]


def frames_with_starts(split: str, n: int, *, seed: int = 0) -> tuple[list[dict], list[list[int]]]:
    """:func:`frames` and, for each frame, the start column of each of its digits (left to right)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, not {n}")
    images, labels = digit_images(split)
    rng = np.random.default_rng([seed, _SPLITS[split]])
    payloads: list[dict] = []
    starts_all: list[list[int]] = []
    for frame_id in range(n):
        k = int(rng.integers(1, MAX_DIGITS + 1))
        picks = rng.integers(0, len(images), size=k)
        # Spread the free columns over the k + 1 gaps (before, between, after the digits).
        slack = WIDTH - k * DIGIT - (k - 1) * MIN_GAP
        cuts = np.sort(rng.integers(0, slack + 1, size=k))
        starts = [int(cuts[i]) + i * (DIGIT + MIN_GAP) for i in range(k)]
        image = np.zeros((HEIGHT, WIDTH), dtype=np.float32)
        for start, pick in zip(starts, picks):
            image[:, start:start + DIGIT] = images[pick]
        image += rng.normal(0.0, NOISE, size=image.shape).astype(np.float32)
        np.clip(image, 0.0, 1.0, out=image)
        payloads.append({"frame_id": frame_id, "image": image, "truth": [int(labels[p]) for p in picks],
                         "sent_at": 0.0})
        starts_all.append(starts)
    return payloads, starts_all


def frames(split: str, n: int, *, seed: int = 0) -> list[dict]:
    """``n`` frame payloads of ``split`` ("train" or "test"); deterministic for (split, n, seed),
    ``frame_id`` = index. Each holds 1 to 4 digits at non-overlapping column offsets."""
    return frames_with_starts(split, n, seed=seed)[0]


def crop(image: np.ndarray, start: int) -> np.ndarray:
    """The 8 x 8 window of a frame starting at column ``start`` (clipped into the frame)."""
    start = min(max(int(start), 0), MAX_START)
    return np.ascontiguousarray(image[:, start:start + DIGIT], dtype=np.float32)
