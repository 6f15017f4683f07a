"""Runtime benchmark: the deployed digits workflow against the same models called directly.

Measures, in one run on this machine:

1. data-plane efficiency: the most frames/s the deployed workflow serves (sources far faster than it
   can go, so backpressure sets the pace) divided by the frames/s of the same models at the same
   batch sizes called directly, one after another in a single process (no Ray, no queues, no
   copies), and divided by the same models called directly on the cores the deployment pins each
   site to, all sites at once (:class:`Direct`); in windows that alternate with the baselines'
   windows, so that each ratio compares one minute of the machine (:func:`paired`);
2. against Ray Serve: the plan's models as Ray Serve deployments (``bench/serve_baseline.py``),
   saturated the same way, frames/s and per-hop overhead;
3. per-hop overhead: a batch's round trip to its replica minus the time the replica spent on it (p50, p99);
4. the data path over the actors' own TCP connections against Ray actor calls (``transport="ray"``);
5. ingest: what one HTTP endpoint accepts, and ``?wait`` round trips (``bench/ingest.py``);
6. time from starting ``jellybean run`` (a fresh process, Ray start included) to the first result;
7. predicted against measured throughput, accuracy and latency p50 at the planned rate, and frames lost.

    python bench/runtime.py [--duration 30] [--rounds 10] [--window 2] [--out bench/results]

Results: ``bench/results/runtime.json`` and ``runtime.md``, with the machine noted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from plan import machine  # noqa: E402  (the same machine description as bench/plan.py)


def _direct_loop(runners: list, batches: list[int], items: list[dict], seconds: float) -> float:
    """Inputs/s of ``runners`` called one after the other at ``batches`` over ``items`` (cycled) for
    ``seconds``: no Ray, no queues, no copies between processes."""
    done, position, started = 0, 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        batch = [dict(m) for m in items[position:position + batches[0]]] or [dict(m) for m in items[:batches[0]]]
        position = (position + batches[0]) % max(1, len(items) - batches[0])
        for runner, size in zip(runners, batches):
            out = []
            for k in range(0, len(batch), size):
                for produced in runner(batch[k:k + size]):
                    out.extend(produced)
            batch = out
        done += batches[0]
    return done / (time.perf_counter() - started)


def _direct_server(conn, cache: str, loaders: list[str], batches: list[int], items: list[dict], core: int) -> None:
    """A process pinned to ``core`` that holds the runners and runs them directly whenever asked:
    ``(seconds, start_at)`` in, inputs/s out; None ends it (see :class:`Direct`)."""
    import torch

    from jellybean.zoo.registry import load_runner

    os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)
    runners = [load_runner(name, Path(cache), threads=1) for name in loaders]
    _direct_loop(runners, batches, items, 1.0)  # warm: first calls allocate
    conn.send("ready")
    while (job := conn.recv()) is not None:
        seconds, start_at = job
        time.sleep(max(0.0, start_at - time.time()))  # several servers start together (the placed baseline)
        conn.send(_direct_loop(runners, batches, items, seconds))


class Direct:
    """The plan's models called directly, at the plan's batch sizes, in processes of their own that
    wait (idle) between measurements, so that they can be measured in the same minute as the deployment:

    - ``one``: every stage, one after the other, in one process on the core the deployment gives the
      busiest site (the classic "bare models" baseline);
    - ``placed``: each site's stages in a process pinned to the core the deployment gives that site,
      all sites at once (what the models allow on those cores with every core busy).

    A site's rate in inputs/s becomes frames/s through its share of messages per frame (crops per
    frame for a site that starts at the classifier)."""

    def __init__(self, bundle, plan, cache: Path, site_cores: dict[str, int]) -> None:
        import multiprocessing

        from jellybean.zoo.datasets import load_dataset
        from jellybean.zoo.registry import load_runner

        stage_task = {s.name: s.task for s in bundle.workflow.spec.stages}
        order = [s.name for s in bundle.workflow.spec.stages]
        by_stage = {a.stage: a for a in plan.assignments}
        loader = {st: bundle.zoo.spec.task(stage_task[st]).variant(by_stage[st].variant).runner for st in order}
        self.sites = list(dict.fromkeys(by_stage[st].site for st in order))
        frames = [dict(f, frame_id=n) for n, f in enumerate(load_dataset(bundle.workflow.spec.sources[0].replay_dataset))]
        frames = frames[:2048]
        inputs, items = {}, frames  # each site's input messages, made once by running the stages before it
        for st in order:
            inputs.setdefault(by_stage[st].site, (items, len(items) / len(frames)))
            runner = load_runner(loader[st], cache, threads=1)
            items = [m for produced in runner(items) for m in produced]
        self.share = {site: inputs[site][1] for site in self.sites}
        busiest = self.sites[0]
        jobs = {"one": (order, frames, site_cores.get(busiest, 0))}
        for site in self.sites:
            stages = [st for st in order if by_stage[st].site == site]
            jobs[site] = (stages, inputs[site][0], site_cores.get(site, 0))
        context = multiprocessing.get_context("spawn")
        self.conns, self.procs, self.cores = {}, [], {}
        for name, (stages, messages, core) in jobs.items():
            parent, child = context.Pipe()
            proc = context.Process(target=_direct_server, daemon=True,
                                   args=(child, str(cache), [loader[st] for st in stages],
                                         [by_stage[st].batch_size for st in stages], messages, core))
            proc.start()
            self.conns[name], self.cores[name] = parent, core
            self.procs.append(proc)
        for conn in self.conns.values():
            assert conn.recv() == "ready"

    def one(self, seconds: float) -> float:
        self.conns["one"].send((seconds, time.time()))
        return self.conns["one"].recv()

    def placed(self, seconds: float) -> dict:
        start_at = time.time() + 0.2
        for site in self.sites:
            self.conns[site].send((seconds, start_at))
        per_site = {site: self.conns[site].recv() / self.share[site] for site in self.sites}
        return {"frames_per_s": min(per_site.values()), "per_site_frames_per_s": per_site}

    def close(self) -> None:
        for conn in self.conns.values():
            conn.send(None)
        for proc in self.procs:
            proc.join(timeout=10)


def _replica_cpu(pipeline) -> dict[str, tuple[float, float]]:
    """Per replica: (milliseconds its models ran, CPU seconds its process used), from its report."""
    out = {}
    for key, actor in pipeline.replicas.items():
        report = actor.report or {}
        if report.get("cpu_s") is not None:
            out[key] = (sum(s.get("busy_ms", 0.0) for s in report.get("stages", {}).values()), report["cpu_s"])
    return out


def _window(pipeline, seconds: float) -> tuple[float, dict[str, float]]:
    """Frames/s the pipeline completed over the next ``seconds`` (its sources' own ledgers), and the
    share of each replica's CPU time that went to its models over that time."""
    pipeline.poll()
    c0, t0, cpu0 = pipeline.ledger.completed, time.time(), _replica_cpu(pipeline)
    time.sleep(seconds)
    pipeline.poll()
    rate = (pipeline.ledger.completed - c0) / (time.time() - t0)
    shares = {}
    for key, (busy_ms, cpu_s) in _replica_cpu(pipeline).items():
        if key in cpu0 and cpu_s > cpu0[key][1]:
            shares[key] = (busy_ms - cpu0[key][0]) / 1000.0 / (cpu_s - cpu0[key][1])
    return rate, shares


def paired(bundle, plan, cache: Path, *, rounds: int, window_s: float, pin_cpus: bool = True,
           transport: str | None = None, direct: Direct | None = None, placed: bool = True) -> dict:
    """The deployed workflow saturated (sources far faster than it can go, so backpressure sets the
    pace), measured in windows of ``window_s`` that alternate with the direct baselines' windows
    (the sources paused meanwhile, the replicas idle), ``rounds`` times.

    Why paired windows. The two vCPUs of a cloud machine run at speeds that drift by 15-20% from one
    minute to the next (the direct baseline measured 8,821, 9,197 and 10,290 frames/s in three runs a
    few minutes apart): runs measured minutes apart compare the machine's moods, not the data plane.
    Adjacent windows share the machine's mood; each round's ratio is deployed / baseline, and the
    median of the rounds is reported, with every sample."""
    import ray

    from jellybean.runtime.dataplane import Pipeline
    from jellybean.runtime.deployment import site_resources

    saturated = bundle.workflow.model_copy(deep=True)
    for source in saturated.spec.sources:
        source.rate_per_s = 100_000.0
    fast = type(bundle)(saturated, bundle.zoo, bundle.topology, bundle.sources)
    ray.init(num_cpus=os.cpu_count() or 1, resources=site_resources(bundle.topology), include_dashboard=False,
             log_to_driver=False)
    samples: dict[str, list[float]] = {"deployed": [], "direct": [], "placed": []}
    try:
        pipeline = Pipeline(fast, plan, cache_dir=cache, pin_cpus=pin_cpus, transport=transport)
        pipeline.start()
        layout = pipeline.cpu_layout
        site_cores = ({key[0]: cores[0] for key, cores in layout.instances.items()}
                      if layout is not None and layout.pinned else {})
        if direct is None:
            direct = Direct(bundle, plan, cache, site_cores)
        time.sleep(3.0)  # warm: first batches, connections, the queues filled
        shares: dict[str, list[float]] = defaultdict(list)
        for _ in range(rounds):
            rate, share = _window(pipeline, window_s)
            samples["deployed"].append(rate)
            for key, value in share.items():
                shares[key].append(value)
            pipeline.pause_sources(True)
            time.sleep(0.3)  # what was in flight drains (a few hundred frames)
            samples["direct"].append(direct.one(window_s))
            if placed:
                samples["placed"].append(direct.placed(window_s)["frames_per_s"])
            pipeline.pause_sources(False)
            time.sleep(0.5)  # the queues fill again (sources far faster than the replicas)
        summary = pipeline.stop(drain=True)
    finally:
        ray.shutdown()
    ratios = [d / b for d, b in zip(samples["deployed"], samples["direct"])]
    ratios_placed = [d / b for d, b in zip(samples["deployed"], samples["placed"])]
    return {"samples_frames_per_s": {k: [round(v, 1) for v in vs] for k, vs in samples.items() if vs},
            "ratios": [round(r, 4) for r in ratios], "ratio": statistics.median(ratios),
            "ratios_placed": [round(r, 4) for r in ratios_placed],
            "ratio_placed": statistics.median(ratios_placed) if ratios_placed else None,
            "frames_per_s": statistics.median(samples["deployed"]),
            "direct_frames_per_s": statistics.median(samples["direct"]),
            "placed_frames_per_s": statistics.median(samples["placed"]) if samples["placed"] else None,
            "window_s": window_s, "site_cores": site_cores, "direct": direct,
            "models_share_of_cpu": {key: round(statistics.median(v), 4) for key, v in shares.items()},
            "accuracy": summary.measured.accuracy, "frames": summary.frames.model_dump(),
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
    serve, ingest, ray_calls = result["ray_serve"], result["ingest"], result["transport"]["ray"]
    p, me, f = run["predicted"], run["measured"], run["frames"]
    dep, unpinned = eff["pinned"], eff["unpinned"]
    lat_err = 100 * (p["latency_ms_p50"] / me["latency_ms_p50"] - 1)
    n = len(dep["ratios"])
    lines = [
        "# Runtime benchmark (digits workflow)", "",
        f"Measured {m['date']} on {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB RAM, Python {m['python']}. "
        "Command: `make bench-runtime` (`python bench/runtime.py`).", "",
        "| figure | target | measured |", "|---|---|---:|",
        f"| data-plane efficiency: deployed max frames/s / the same models called directly in one process "
        f"(median of {n} paired {dep['window_s']:g} s windows) | >= 90% | "
        f"{100 * dep['ratio']:.1f}% ({dep['frames_per_s']:.0f} / {dep['direct_frames_per_s']:.0f}) |",
        f"| deployed / the models called directly, each site's stages pinned to its core, all at once | | "
        f"{100 * dep['ratio_placed']:.1f}% ({dep['frames_per_s']:.0f} / {dep['placed_frames_per_s']:.0f}) |",
        f"| the same without CPU pinning (`--no-pin-cpus`) / direct in one process | | {100 * unpinned['ratio']:.1f}% "
        f"({unpinned['frames_per_s']:.0f} / {unpinned['direct_frames_per_s']:.0f}) |",
        f"| against Ray Serve (saturated, one request per frame, handles between deployments) | >= 5x | "
        f"{dep['frames_per_s'] / serve['frames_per_s']:.1f}x ({dep['frames_per_s']:.0f} / {serve['frames_per_s']:.0f} frames/s) |",
        f"| per-hop overhead p50, saturated: Jellybean / Ray Serve | Jellybean <= Ray Serve | "
        f"{dep['hop_overhead_ms_p50']:.3f} / {serve['hop_overhead_ms_p50']:.3f} ms |",
        f"| per-hop overhead p50 / p99 at the planned rate | p50 < 2 ms | {me['hop_overhead_ms_p50']:.3f} / "
        f"{me['hop_overhead_ms_p99']:.3f} ms |",
        f"| transport: actors' own TCP connections / Ray actor calls (saturated; each as a share of direct) | | "
        f"{dep['frames_per_s']:.0f} ({100 * dep['ratio']:.0f}%) / {ray_calls['frames_per_s']:.0f} "
        f"({100 * ray_calls['ratio']:.0f}%) frames/s |",
        f"| ingest: frames/s one endpoint accepts, one `.npy` per request ({ingest['connections']} clients) | | "
        f"{ingest['accepted_per_s']:.0f} |",
        f"| ingest: frames/s with 16 frames per request (NDJSON) | | {ingest['accepted_per_s_batched']:.0f} |",
        f"| ingest `?wait` round trip p50 / p99 (no-op model) | | {ingest['wait_ms_p50']:.2f} / {ingest['wait_ms_p99']:.2f} ms |",
        f"| latency p50 predicted / measured (at the planned rate) | within 15% | {p['latency_ms_p50']:.1f} / "
        f"{me['latency_ms_p50']:.1f} ms ({lat_err:+.1f}%) |",
        f"| `jellybean run` to first result (Ray start included) | < 20 s | "
        f"{run['time_from_command_to_first_result_s']:.2f} s |",
        f"| throughput predicted / measured | within 10% | {p['throughput_per_s']:.1f} / "
        f"{me['throughput_per_s']:.1f} frames/s ({100 * (me['throughput_per_s'] / p['throughput_per_s'] - 1):+.1f}%) |",
        f"| accuracy predicted / measured | within 1 point | {p['accuracy']:.2f} / {me['accuracy']:.2f} % |",
        f"| frames sent / completed / failed / lost | lost = 0 | {f['sent']} / {f['completed']} / {f['failed']} / "
        f"{f['lost']} |",
        "",
        "Efficiency: the deployed workflow, saturated, measured in windows that alternate with the direct "
        "baselines' windows (its sources paused meanwhile), so that each ratio compares the same minute of the "
        "machine (its two vCPUs drift by 15-20% from one minute to the next). "
        f"Frames/s per window: {dep['samples_frames_per_s']}; ratios to direct {dep['ratios']}, to placed "
        f"{dep['ratios_placed']}. Without pinning: {unpinned['samples_frames_per_s']}, ratios {unpinned['ratios']}. "
        f"Over Ray actor calls: {ray_calls['samples_frames_per_s']}, ratios {ray_calls['ratios']}.",
        f"Saturated run: mean batch per stage {dep['mean_batch']}; frames {dep['frames']}; "
        f"CPU pinning {dep['cpu_pinning']}.",
        f"Ray Serve: best of {[r['in_flight'] for r in serve['runs']]} requests in flight "
        f"({serve['in_flight']}); {serve['handle_calls_per_frame']} handle calls per frame; p99 hop "
        f"{serve['hop_overhead_ms_p99']:.1f} ms. Runs: "
        + "; ".join(f"{r['in_flight']} in flight: {r['frames_per_s']:.0f} frames/s, hop p50 {r['hop_overhead_ms_p50']:.1f} ms"
                    for r in serve["runs"]) + ".",
        "The direct baselines run the same runners at the same batch sizes with no Ray, no queues and no copies, "
        "in processes of their own that wait idle while the deployment is measured: every stage in one process "
        "on the core the deployment gives the busiest site; or each site's stages in a process pinned to the core "
        "the deployment gives that site, all sites at once (the models' own ceiling on those cores). "
        "The ingest clients share the machine's two cores with the endpoint.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of the `jellybean run` at the planned rate")
    parser.add_argument("--rounds", type=int, default=10, help="paired windows of the efficiency measurement")
    parser.add_argument("--window", type=float, default=2.0, help="seconds per window")
    parser.add_argument("--saturate", type=float, default=15.0, help="seconds per Ray Serve run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()

    from ingest import ingest_bench
    from serve_baseline import serve_max

    from jellybean.optimizer import plan as make_plan
    from jellybean.spec import load_bundle
    from jellybean.plugins import default_cache_dir
    from jellybean.zoo.build import build_zoo

    cache = default_cache_dir()
    build_zoo(cache)
    bundle = load_bundle([ROOT / "workflows" / "digits"])
    plan = make_plan(bundle, baselines=False)

    def log(name: str, value: dict) -> dict:
        print(f"{name}: {({k: v for k, v in value.items() if k != 'direct'})}", file=sys.stderr, flush=True)
        return value

    pinned = log("deployed, paired with direct", paired(bundle, plan, cache, rounds=args.rounds, window_s=args.window))
    direct = pinned.pop("direct")
    try:
        unpinned = log("deployed without CPU pinning", paired(
            bundle, plan, cache, rounds=max(2, args.rounds // 2), window_s=args.window, pin_cpus=False,
            direct=direct, placed=False))
        over_ray = log("deployed over Ray actor calls", paired(
            bundle, plan, cache, rounds=max(2, args.rounds // 2), window_s=args.window, transport="ray",
            direct=direct, placed=False))
    finally:
        direct.close()
    unpinned.pop("direct")
    over_ray.pop("direct")
    serve_runs = [log(f"Ray Serve, {n} in flight", serve_max(bundle, plan, cache, args.saturate, in_flight=n))
                  for n in (8, 32)]
    serve = {**max(serve_runs, key=lambda r: r["frames_per_s"]), "runs": serve_runs}
    ingest = log("ingest", ingest_bench(cache, 10.0))
    run = cli_run(args.duration)
    result = {"machine": machine(), "efficiency": {"pinned": pinned, "unpinned": unpinned},
              "transport": {"socket": {"frames_per_s": pinned["frames_per_s"], "ratio": pinned["ratio"]}, "ray": over_ray},
              "ray_serve": serve, "ingest": ingest, "run": run}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runtime.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "runtime.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
