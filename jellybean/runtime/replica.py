"""The replica: a Ray actor holding one variant's runner (or a fused chain of them), pinned to its
site by the caller."""

from __future__ import annotations

import os
import time
from pathlib import Path

import ray


@ray.remote(max_restarts=0)
class StageReplica:
    """Runs batches through registered loaders' runners. Built from names only (loader names, a
    cache directory), never from code or paths in user documents.

    A *fused* replica holds the runners of consecutive stages placed on the same instance: the
    outputs of one feed the next inside the process, in batches of that stage's size, and only the
    last stage's outputs go back to the router. It saves a Ray round trip and the router's work per
    intermediate message (see :func:`jellybean.runtime.dataplane.plan_fusion`)."""

    def __init__(self, loaders: list[str], cache_dir: str, threads: int, batch_sizes: list[int]) -> None:
        from jellybean.zoo.registry import load_runner

        self.runners = [load_runner(name, Path(cache_dir), threads=threads) for name in loaders]
        self.loaders = list(loaders)
        self.batch_sizes = list(batch_sizes)

    def info(self) -> dict:
        return {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "stateful": any(bool(getattr(r, "stateful", False)) for r in self.runners),
                "loaders": self.loaders}

    def process(self, payloads: list[dict]) -> tuple[list[list[dict]], float, list[tuple[int, int, int, list]]]:
        """Outputs per input (fan-out lists, of the chain's last stage), the milliseconds the models
        took, and per stage of the chain ``(requests, batches, outputs, [(batch size, ms), ...])``: the
        replica's report, which the driver turns into metrics (no other channel is needed)."""
        started = time.perf_counter()
        outputs = self.runners[0](payloads)
        first_ms = (time.perf_counter() - started) * 1000.0
        report = [(len(payloads), 1, sum(len(o) for o in outputs), [(len(payloads), first_ms)])]
        for runner, batch_size in zip(self.runners[1:], self.batch_sizes[1:]):
            flat: list[dict] = []
            owner: list[int] = []
            for index, produced in enumerate(outputs):
                flat.extend(produced)
                owner.extend([index] * len(produced))
            following: list[list[dict]] = [[] for _ in outputs]
            timings: list[tuple[int, float]] = []
            produced_count = 0
            for start in range(0, len(flat), max(1, batch_size)):
                chunk = flat[start:start + batch_size]
                chunk_started = time.perf_counter()
                for offset, produced in enumerate(runner(chunk)):
                    following[owner[start + offset]].extend(produced)
                    produced_count += len(produced)
                timings.append((len(chunk), (time.perf_counter() - chunk_started) * 1000.0))
            report.append((len(flat), len(timings), produced_count, timings))
            outputs = following
        return outputs, (time.perf_counter() - started) * 1000.0, report
