"""Runtime benchmark: the deployed digits workflow against the same models called directly.

Measures, in one run on this machine:

1. data-plane efficiency: the most frames/s the deployed workflow serves (sources far faster than it
   can go, so backpressure sets the pace) divided by the frames/s of the same models at the same
   batch sizes called one after another in a single process (no Ray, no queues, no copies);
2. per-hop overhead: a batch's round trip to its replica minus the time the model took (p50, p99);
3. time from starting ``jellybean run`` (a fresh process, Ray start included) to the first result;
4. predicted against measured throughput and accuracy at the planned rate, and frames lost.

    python bench/runtime.py [--duration 30] [--out bench/results]

Results: ``bench/results/runtime.json`` and ``runtime.md``, with the machine noted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from plan import machine  # noqa: E402  (the same machine description as bench/plan.py)


def direct_throughput(bundle, plan, cache: Path, seconds: float) -> dict:
    """Frames/s of the plan's models at the plan's batch sizes, called in this process."""
    import torch

    from jellybean.zoo.datasets import load_dataset
    from jellybean.zoo.registry import load_runner

    torch.set_num_threads(1)
    stage_task = {s.name: s.task for s in bundle.workflow.spec.stages}
    order = [s.name for s in bundle.workflow.spec.stages]
    runners, batch = {}, {}
    for a in plan.assignments:
        variant = bundle.zoo.spec.task(stage_task[a.stage]).variant(a.variant)
        runners[a.stage] = load_runner(variant.loader, cache, threads=1)
        batch[a.stage] = a.batch_size
    frames = load_dataset(bundle.workflow.spec.sources[0].replay_dataset)
    done = correct = 0
    position = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        items = []
        for _ in range(batch[order[0]]):
            frame = dict(frames[position % len(frames)])
            frame["frame_id"] = position
            position += 1
            items.append(frame)
        for stage in order:
            outputs = []
            for k in range(0, len(items), batch[stage]):
                for produced in runners[stage](items[k:k + batch[stage]]):
                    outputs.extend(produced)
            items = outputs
        done += len(items)
        correct += sum(bool(m.get("correct")) for m in items)
    elapsed = time.perf_counter() - started
    return {"frames_per_s": done / elapsed, "accuracy": 100.0 * correct / max(1, done), "frames": done}


def deployed_max(bundle, plan, cache: Path, seconds: float, *, pin_cpus: bool = True) -> dict:
    import ray

    from jellybean.runtime.dataplane import Pipeline, site_resources

    saturated = bundle.workflow.model_copy(deep=True)
    for source in saturated.spec.sources:
        source.rate_per_s = 100_000.0  # far beyond capacity: backpressure paces the sources
    fast = type(bundle)(saturated, bundle.zoo, bundle.topology, bundle.sources)
    ray.init(num_cpus=os.cpu_count() or 1, resources=site_resources(bundle.topology), include_dashboard=False,
             log_to_driver=False)
    try:
        pipeline = Pipeline(fast, plan, cache_dir=cache, pin_cpus=pin_cpus)
        pipeline.start()
        time.sleep(seconds)
        summary = pipeline.stop(drain=True)
    finally:
        ray.shutdown()
    return {"frames_per_s": summary.measured.throughput_per_s, "accuracy": summary.measured.accuracy,
            "frames": summary.frames.model_dump(),
            "mean_batch": {f"{s.stage}@{s.site}": s.mean_batch_size for s in summary.stages},
            "hop_overhead_ms_p50": summary.measured.hop_overhead_ms_p50,
            "hop_overhead_ms_p99": summary.measured.hop_overhead_ms_p99,
            "cpu_pinning": summary.cpu_pinning}


def cli_run(duration: float) -> dict:
    """A whole `jellybean run` in a fresh process, timed from the moment it is started."""
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "jellybean", "run", "-f", "workflows/digits", "--duration",
                           str(duration), "--format", "json"], capture_output=True, text=True, cwd=ROOT)
    if proc.returncode not in (0, 1):
        raise RuntimeError(proc.stderr[-3000:])
    summary = json.loads(proc.stdout)
    summary["time_from_command_to_first_result_s"] = summary["first_result_at_unix"] - started
    summary.pop("plan", None)
    return summary


def markdown(result: dict) -> str:
    m = result["machine"]
    eff = result["efficiency"]
    run = result["run"]
    p, me, f = run["predicted"], run["measured"], run["frames"]
    lines = [
        "# Runtime benchmark (digits workflow)", "",
        f"Measured {m['date']} on {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB RAM, Python {m['python']}. "
        "Command: `make bench-runtime` (`python bench/runtime.py`).", "",
        "| figure | target | measured |", "|---|---|---:|",
        f"| data-plane efficiency (deployed max frames/s / direct in-process frames/s) | >= 80% | "
        f"{100 * eff['ratio']:.1f}% ({eff['deployed']['frames_per_s']:.0f} / {eff['direct']['frames_per_s']:.0f}) |",
        f"| the same without CPU pinning (`--no-pin-cpus`) | | {100 * eff['ratio_unpinned']:.1f}% "
        f"({eff['unpinned']['frames_per_s']:.0f} / {eff['direct']['frames_per_s']:.0f}) |",
        f"| per-hop overhead p50 | < 2 ms | {run['measured']['hop_overhead_ms_p50']:.3f} ms |",
        f"| per-hop overhead p99 | | {run['measured']['hop_overhead_ms_p99']:.3f} ms |",
        f"| `jellybean run` to first result (Ray start included) | < 20 s | "
        f"{run['time_from_command_to_first_result_s']:.2f} s |",
        f"| throughput predicted / measured | within 10% | {p['throughput_per_s']:.1f} / "
        f"{me['throughput_per_s']:.1f} frames/s ({100 * (me['throughput_per_s'] / p['throughput_per_s'] - 1):+.1f}%) |",
        f"| accuracy predicted / measured | within 1 point | {p['accuracy']:.2f} / {me['accuracy']:.2f} % |",
        f"| frames sent / completed / failed / lost | lost = 0 | {f['sent']} / {f['completed']} / {f['failed']} / "
        f"{f['lost']} |",
        f"| latency p50 / p99 (measured; predicted p50 {p['latency_ms_p50']:.1f} ms) | | "
        f"{me['latency_ms_p50']:.1f} / {me['latency_ms_p99']:.1f} ms |",
        "",
        f"Saturated run: mean batch per stage {eff['deployed']['mean_batch']}; frames {eff['deployed']['frames']}; "
        f"CPU pinning {eff['deployed']['cpu_pinning']}.",
        "The direct baseline runs the same runners at the same batch sizes in one process, one stage after the "
        "other; the deployed workflow adds Ray calls, queues, routing and accounting per frame.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--saturate", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    from jellybean.optimizer import plan as make_plan
    from jellybean.spec import load_bundle
    from jellybean.zoo.build import build_zoo, default_cache_dir

    cache = default_cache_dir()
    build_zoo(cache)
    bundle = load_bundle([ROOT / "workflows" / "digits"])
    plan = make_plan(bundle, baselines=False)
    direct = direct_throughput(bundle, plan, cache, args.saturate)
    print(f"direct: {direct}", file=sys.stderr)
    deployed = deployed_max(bundle, plan, cache, args.saturate)
    print(f"deployed: {deployed}", file=sys.stderr)
    unpinned = deployed_max(bundle, plan, cache, args.saturate, pin_cpus=False)
    print(f"deployed without CPU pinning: {unpinned}", file=sys.stderr)
    run = cli_run(args.duration)
    result = {"machine": machine(), "efficiency": {"direct": direct, "deployed": deployed,
                                                  "ratio": deployed["frames_per_s"] / direct["frames_per_s"],
                                                  "unpinned": unpinned,
                                                  "ratio_unpinned": unpinned["frames_per_s"] / direct["frames_per_s"]},
              "run": run}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runtime.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "runtime.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
