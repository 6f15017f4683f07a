"""The digits plan served with Ray Serve, the way a team would build it without Jellybean: one
deployment per placement of the plan (its site as a Ray resource), ``@serve.batch`` at the plan's
batch sizes, and an ingress deployment that, for each frame (one request per frame), calls the
detector, then the classifier once per crop (concurrently), then the aggregator once with the
frame's labels, through ``DeploymentHandle`` calls.

:func:`serve_max` saturates it from the driver (``in_flight`` requests outstanding at all times) for
``seconds`` and reports frames/s and the per-hop overhead: a handle call's round trip less the time
the called deployment spent on it (batch wait and model included), p50 and p99, as Jellybean's
``hop_overhead_ms`` is measured (a call's round trip less the peer's handling).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path


def serve_max(bundle, plan, cache: Path, seconds: float, *, in_flight: int = 256) -> dict:
    import numpy as np
    import ray
    from ray import serve

    from jellybean.runtime.deployment import site_resource, site_resources
    from jellybean.zoo.datasets import load_dataset

    stage_task = {s.name: s.task for s in bundle.workflow.spec.stages}
    placed = {a.stage: a for a in plan.assignments}
    loaders = {a.stage: bundle.zoo.spec.task(stage_task[a.stage]).variant(a.variant).runner for a in plan.assignments}
    order = [s.name for s in bundle.workflow.spec.stages]
    if len(order) != 3:
        raise ValueError("the Ray Serve baseline is written for the digits workflow (detect, classify, aggregate)")

    def options(stage: str) -> dict:
        return {"num_cpus": 0, "resources": {site_resource(placed[stage].site): 0.001}}

    @serve.deployment(max_ongoing_requests=1024)
    class Stage:
        def __init__(self, loader: str, cache_dir: str, batch_size: int) -> None:
            from jellybean.zoo.registry import load_runner

            self.runner = load_runner(loader, Path(cache_dir), threads=1)
            self.run.set_max_batch_size(batch_size)

        @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
        async def run(self, items: list) -> list:
            started = time.perf_counter()
            flat = [m for item in items for m in (item if isinstance(item, list) else [item])]
            produced = self.runner(flat)
            out, k = [], 0
            for item in items:
                n = len(item) if isinstance(item, list) else 1
                out.append([m for p in produced[k:k + n] for m in p])
                k += n
            ms = (time.perf_counter() - started) * 1000.0
            return [(o, ms) for o in out]

        async def __call__(self, item) -> tuple:
            entered = time.perf_counter()
            result, _model_ms = await self.run(item)
            return result, (time.perf_counter() - entered) * 1000.0

    @serve.deployment(max_ongoing_requests=4096)
    class Ingress:
        def __init__(self, detect, classify, aggregate) -> None:
            self.detect, self.classify, self.aggregate = detect, classify, aggregate
            self.hops_ms: list[float] = []

        async def _call(self, handle, item):
            started = time.perf_counter()
            result, handled_ms = await handle.remote(item)
            if len(self.hops_ms) < 200_000:
                self.hops_ms.append((time.perf_counter() - started) * 1000.0 - handled_ms)
            return result

        async def __call__(self, frame: dict) -> list:
            crops = await self._call(self.detect, frame)
            labels = await asyncio.gather(*(self._call(self.classify, c) for c in crops))
            return await self._call(self.aggregate, [m for part in labels for m in part])

        async def hops(self) -> list[float]:
            out, self.hops_ms = self.hops_ms, []
            return out

    stages = {s: Stage.options(name=s, ray_actor_options=options(s)).bind(loaders[s], str(cache), placed[s].batch_size)
              for s in order}
    app = Ingress.options(ray_actor_options=options(order[0])).bind(*(stages[s] for s in order))
    ray.init(num_cpus=2, resources=site_resources(bundle.topology), include_dashboard=False, log_to_driver=False)
    try:
        handle = serve.run(app, name="digits-serve", route_prefix=None)
        frames = load_dataset(bundle.workflow.spec.sources[0].replay_dataset)
        done = [0]
        correct = [0]

        async def drive() -> tuple[float, list[float]]:
            position = [0]

            async def one_worker() -> None:
                while time.perf_counter() < deadline:
                    frame = dict(frames[position[0] % len(frames)])
                    frame["frame_id"] = position[0]
                    position[0] += 1
                    readings = await handle.remote(frame)
                    if time.perf_counter() < deadline:
                        done[0] += 1
                        correct[0] += sum(bool(r.get("correct")) for r in readings)

            # warm-up (model loading, first batches), then the measured window
            warm = time.perf_counter() + 3.0
            while time.perf_counter() < warm:
                await handle.remote(dict(frames[0], frame_id=-1))
            await handle.hops.remote()
            started = time.perf_counter()
            deadline = started + seconds
            await asyncio.gather(*(one_worker() for _ in range(in_flight)))
            elapsed = time.perf_counter() - started
            return elapsed, await handle.hops.remote()

        elapsed, hop_list = asyncio.run(drive())
        hops = np.asarray(hop_list)
        serve.shutdown()
    finally:
        ray.shutdown()
    return {"frames_per_s": done[0] / elapsed, "accuracy": 100.0 * correct[0] / max(1, done[0]), "frames": done[0],
            "in_flight": in_flight, "handle_calls_per_frame": round(len(hops) / max(1, done[0]), 2),
            "hop_overhead_ms_p50": float(np.percentile(hops, 50)) if len(hops) else None,
            "hop_overhead_ms_p99": float(np.percentile(hops, 99)) if len(hops) else None}

