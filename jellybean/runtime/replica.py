"""The replica: a Ray actor holding one variant's runner, pinned to its site by the caller."""

from __future__ import annotations

import os
import time
from pathlib import Path

import ray


@ray.remote(max_restarts=0)
class StageReplica:
    """Runs batches through a registered loader's runner. Built from names only (a loader name, a
    cache directory), never from code or paths in user documents."""

    def __init__(self, loader: str, cache_dir: str, threads: int) -> None:
        from jellybean.zoo.registry import load_runner

        self.runner = load_runner(loader, Path(cache_dir), threads=threads)
        self.loader = loader

    def info(self) -> dict:
        return {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "stateful": bool(getattr(self.runner, "stateful", False)), "loader": self.loader}

    def process(self, payloads: list[dict]) -> tuple[list[list[dict]], float]:
        """Outputs per input (fan-out lists) and the milliseconds the model itself took."""
        started = time.perf_counter()
        outputs = self.runner(payloads)
        return outputs, (time.perf_counter() - started) * 1000.0
