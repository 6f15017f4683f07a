"""Datasets the runtime's sources replay, by registered name (documents never name files)."""

from __future__ import annotations

from collections.abc import Callable

from jellybean.zoo.digits import frames

#: Frames replayed per source before they repeat: held-out (test split) frames only, so measured
#: accuracy is accuracy on data the models never trained on.
REPLAY_FRAMES = 2000

DATASETS: dict[str, Callable[[int], list[dict]]] = {
    "digits-frames": lambda seed: frames("test", REPLAY_FRAMES, seed=seed),
}


class UnknownDataset(KeyError):
    def __str__(self) -> str:
        return f"unknown dataset {self.args[0]!r}; registered: {', '.join(sorted(DATASETS))}"


def load_dataset(name: str, *, seed: int = 0) -> list[dict]:
    if name not in DATASETS:
        raise UnknownDataset(name)
    return DATASETS[name](seed)
