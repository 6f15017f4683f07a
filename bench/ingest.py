"""Ingest benchmark: what one HTTP ingest endpoint accepts, on local Ray, with a no-op model behind it.

The workflow is digits-live cut down to one camera site and one stage, the reading aggregator (no
model: a frame without crops becomes an empty reading at once), so that the endpoint, the source's
ledger, one hop and the stream output are what is measured. Clients run in this process on the same
two cores (aiohttp, keep-alive connections), so the figures are what endpoint and clients reach
together.

- ``accepted_per_s``: ``202`` replies per second with ``connections`` clients each posting one
  ``.npy`` frame per request, as fast as answers come;
- ``accepted_per_s_batched``: the same with 16 frames per request (``application/x-ndjson``);
- ``wait``: one client, one frame at a time, ``?wait=5``: the round trip to the frame's result
  (p50, p99), at light load.
"""

from __future__ import annotations

import asyncio
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

WORKFLOW = """apiVersion: jellybean.io/v1alpha1
kind: InferenceWorkflow
metadata: {name: ingest-bench}
spec:
  zoo: digits
  topology: digits-local
  sources:
    - name: cameras
      kind: camera
      ingest: http
      rate_per_s: 2000
      payload_kb: 1.555
      payload: {name: image, dtype: float32, shape: [8, 48]}
      sites: [cam-1]
  stages:
    - name: aggregate
      task: reading-aggregation
      inputs: [cameras]
  outputs:
    - name: readings
      kind: stream
  slo:
    accuracy: 0.0
"""


def ingest_bench(cache: Path, seconds: float = 10.0, *, connections: int = 16) -> dict:
    import aiohttp
    import ray

    from jellybean.optimizer import plan as make_plan
    from jellybean.runtime.dataplane import Pipeline
    from jellybean.runtime.deployment import site_resources
    from jellybean.spec import load_bundle

    token = "bench-ingest-token"  # noqa: S105 - a throwaway controller's token
    with tempfile.TemporaryDirectory(prefix="jb-ingest-") as tmp:
        (Path(tmp) / "workflow.yaml").write_text(WORKFLOW)
        live = ROOT / "workflows" / "digits-live"
        bundle = load_bundle([live / "zoo.yaml", live / "topology.yaml", Path(tmp) / "workflow.yaml"])
        plan = make_plan(bundle, baselines=False)
        ray.init(num_cpus=2, resources=site_resources(bundle.topology), include_dashboard=False, log_to_driver=False)
        try:
            pipeline = Pipeline(bundle, plan, cache_dir=cache, data_token=token, max_in_flight=1024)
            pipeline.start()
            url = next(e.url for e in pipeline.endpoints() if e.kind == "ingest")
            frame = io.BytesIO()
            np.save(frame, np.zeros((8, 48), np.float32))
            body = frame.getvalue()
            line = json.dumps({"image": np.zeros((8, 48)).tolist()})
            batch = ("\n".join([line] * 16) + "\n").encode()
            headers = {"Authorization": f"Bearer {token}"}

            async def hammer(payload: bytes, content_type: str, per_request: int) -> dict:
                counts = {"accepted": 0, "refused": 0}
                deadline = time.perf_counter() + seconds
                async with aiohttp.ClientSession(headers=headers) as session:
                    async def client() -> None:
                        while time.perf_counter() < deadline:
                            async with session.post(url, data=payload, headers={"Content-Type": content_type}) as r:
                                await r.read()
                                if r.status == 202:
                                    counts["accepted"] += per_request
                                elif r.status == 429:
                                    counts["refused"] += per_request
                                    await asyncio.sleep(float(r.headers.get("Retry-After", "0.01")) / 100)
                                else:
                                    raise RuntimeError(f"ingest answered {r.status}: {(await r.text())[:200]}")
                    started = time.perf_counter()
                    await asyncio.gather(*(client() for _ in range(connections)))
                    elapsed = time.perf_counter() - started
                return {"per_s": counts["accepted"] / elapsed, "refused_429": counts["refused"]}

            async def waits(n: int) -> list[float]:
                out = []
                async with aiohttp.ClientSession(headers=headers) as session:
                    for _ in range(n):
                        started = time.perf_counter()
                        async with session.post(url, params={"wait": "5"}, data=body,
                                                headers={"Content-Type": "application/x-npy"}) as r:
                            answer = await r.json()
                            if r.status != 200 or answer.get("state") != "completed":
                                raise RuntimeError(f"?wait answered {r.status}: {answer}")
                        out.append((time.perf_counter() - started) * 1000.0)
                return out

            single = asyncio.run(hammer(body, "application/x-npy", 1))
            batched = asyncio.run(hammer(batch, "application/x-ndjson", 16))
            asyncio.run(waits(20))  # warm
            rtt = np.asarray(asyncio.run(waits(400)))
            summary = pipeline.stop(drain=True)
        finally:
            ray.shutdown()
    return {"connections": connections, "accepted_per_s": round(single["per_s"], 1),
            "refused_429": single["refused_429"],
            "accepted_per_s_batched": round(batched["per_s"], 1), "frames_per_request_batched": 16,
            "wait_ms_p50": round(float(np.percentile(rtt, 50)), 3), "wait_ms_p99": round(float(np.percentile(rtt, 99)), 3),
            "frames": summary.frames.model_dump()}


if __name__ == "__main__":
    from jellybean.plugins import default_cache_dir

    print(json.dumps(ingest_bench(default_cache_dir(), 8.0), indent=1))
