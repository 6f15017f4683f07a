"""``jellybean run``: the one-shot path. Start an embedded Ray, plan, deploy, stream for a while with
a live progress line, drain, print predicted against measured, stop."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def add_run_parser(sub) -> None:
    from jellybean.cli import add_model_store_argument

    p = sub.add_parser("run", help="plan and serve a workflow on an embedded Ray for a while, then report")
    p.add_argument("-f", "--filename", dest="files", action="append", required=True, metavar="PATH")
    p.add_argument("--workflow", help="the Workflow to run when the files hold several")
    p.add_argument("--duration", type=float, default=20.0, metavar="SECONDS", help="how long the sources send")
    p.add_argument("--format", default="table", choices=["table", "json"])
    p.add_argument("--cache", type=Path, help="model cache (default $JELLYBEAN_HOME/zoo or ~/.cache/jellybean/zoo)")
    add_model_store_argument(p)
    p.add_argument("--strategy", default="optimal")
    p.add_argument("--address", help="join this Ray cluster instead of starting an embedded one")
    p.add_argument("--no-pin-cpus", dest="pin_cpus", action="store_false",
                   help="on one machine, let the OS move replicas across cores instead of giving each planned "
                        "instance cores of its own")
    p.add_argument("--state-dir", type=Path, metavar="DIR",
                   help="where the data token (for the ingest and stream endpoints) is kept (default $JELLYBEAN_HOME "
                   "or ~/.jellybean)")
    from jellybean.cli import add_metrics_arguments, add_serving_arguments

    add_metrics_arguments(p)
    add_serving_arguments(p)


def _progress(pipeline, started: float, duration: float) -> None:
    ledger = pipeline.ledger
    elapsed = time.time() - started
    width = 24
    done = min(1.0, elapsed / duration) if duration > 0 else 1.0
    bar = "#" * int(done * width) + "-" * (width - int(done * width))
    sys.stderr.write(f"\r[{bar}] {elapsed:5.1f}s  sent {ledger.sent}  completed {ledger.completed}  "
                     f"failed {ledger.failed}  in flight {ledger.in_flight}   ")
    sys.stderr.flush()


def cmd_run(args: argparse.Namespace) -> int:
    from jellybean.cli import UsageError, bind_metrics, isolate_embedded_ray, serving_options
    from jellybean.runtime.state import StateError, default_state_dir, ensure_state_dir
    from jellybean.optimizer import plan as make_plan
    from jellybean.spec.bundle import load_bundle

    if not args.duration > 0:
        raise UsageError("--duration must be positive")
    bundle = load_bundle(args.files, args.workflow)
    from jellybean.artifacts import ModelStore
    from jellybean.cli import model_store_of
    from jellybean.plugins import unservable

    problems = unservable(bundle, ModelStore(model_store_of(args)))
    if problems:
        from jellybean.spec.errors import SpecError

        raise SpecError(problems)
    try:
        state_dir = ensure_state_dir(args.state_dir or default_state_dir())
    except StateError as exc:
        raise UsageError(str(exc)) from None
    serving = serving_options(args, state_dir)
    metrics, metrics_server = bind_metrics(args)
    if not args.address:
        # Before the planner's and Ray's threads; the metrics socket stays reachable.
        isolate_embedded_ray(state_dir, serving["bind_host"])
    if metrics_server is not None:
        from jellybean.runtime.metrics import start as serve_metrics

        serve_metrics(metrics_server)
    try:
        return _serve(args, bundle, make_plan, metrics, serving)
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()


def _serve(args: argparse.Namespace, bundle, make_plan, metrics, serving: dict) -> int:  # noqa: ANN001
    from jellybean.cli import UsageError

    started = time.time()
    plan = make_plan(bundle, strategy=args.strategy, baselines=False)
    if not plan.feasible:
        print("No feasible plan:", file=sys.stderr)
        for reason in plan.explanation:
            print(f"  - {reason}", file=sys.stderr)
        return 1

    from jellybean.runtime.controller import RayCluster
    from jellybean.runtime.deployment import ServingError, site_resources
    from jellybean.runtime.supervisor import Supervisor
    from jellybean.plugins import default_cache_dir
    from jellybean.zoo.build import build_zoo

    cache = args.cache or default_cache_dir()
    from jellybean.plugins import prepare, runners_of

    used = runners_of(bundle)
    if any(name.startswith("digits-") for name in used):  # the digits models: trained once, with progress
        build_zoo(cache, progress=lambda what, frac: sys.stderr.write(f"\rbuilding zoo: {what} {100 * frac:3.0f}%   "))
        sys.stderr.write("\n")
    prepare(cache, used)  # the hooks of the plugins whose runners the workflow may use
    cluster = RayCluster(args.address, namespace=None)
    cluster.start(site_resources(bundle.topology))
    try:
        try:
            pipeline = Supervisor(bundle, plan, cache_dir=cache, pin_cpus=args.pin_cpus, metrics=metrics, **serving)
            pipeline.start()
        except ServingError as exc:
            raise UsageError(str(exc)) from None
        for endpoint in pipeline.endpoints():
            where = endpoint.url or endpoint.path
            print(f"{endpoint.kind} {endpoint.name} at {endpoint.site}: {where}", file=sys.stderr)
        until = time.time() + args.duration
        while time.time() < until:
            _progress(pipeline, pipeline.started_at or time.time(), args.duration)
            time.sleep(0.25)
        sys.stderr.write("\ndraining...\n")
        summary = pipeline.stop(drain=True)
    finally:
        cluster.shutdown()
    summary.time_to_first_result_s = (
        (pipeline.first_result_at - started) if pipeline.first_result_at else None)
    if args.format == "json":
        print(json.dumps(summary.model_dump(mode="json"), indent=2))
    else:
        print(render_summary(summary))
    return 0 if summary.frames.lost == 0 else 1


def render_summary(summary) -> str:
    from jellybean.cli.render import table

    p, m, f = summary.predicted, summary.measured, summary.frames
    lines = [f"Workflow {summary.workflow}: ran {summary.duration_s:.1f} s", ""]
    lines.append(table(["", "PREDICTED", "MEASURED"], [
        ["throughput (frames/s)", p.throughput_per_s, m.throughput_per_s],
        ["accuracy (%)", p.accuracy, m.accuracy],
        ["latency p50 (ms)", p.latency_ms_p50, m.latency_ms_p50],
        ["latency p99 (ms)", None, m.latency_ms_p99],
        ["cost ($/h)", p.cost_per_hour, None],
    ], right={1, 2}))
    if len(summary.sinks) > 1:
        lines += ["", table(["SINK", "PREDICTED ACCURACY", "MEASURED ACCURACY", "TARGET", "COMPLETED", "FAILED",
                             "LATENCY P50 (MS)"],
                            [[s.sink, s.accuracy_predicted, s.accuracy_measured, s.accuracy_target, s.frames.completed,
                              s.frames.failed, s.latency_ms_p50] for s in summary.sinks], right={1, 2, 3, 4, 5, 6})]
    lines += ["", f"Frames: sent {f.sent}, completed {f.completed}, failed {f.failed}, lost {f.lost}"]
    for reason, n in summary.failures.items():
        lines.append(f"  failed: {n} x {reason}")
    lines += ["", table(["STAGE", "SITE", "VARIANT", "REPLICAS", "PLANNED REQ/S", "MEASURED REQ/S", "MEAN BATCH"],
                        [[s.stage, s.site, s.variant, f"{s.replicas_alive}/{s.replicas_planned}",
                          s.rate_planned_per_s, s.rate_measured_per_s, s.mean_batch_size] for s in summary.stages],
                        right={3, 4, 5, 6})]
    if summary.cpu_pinning:
        pinning = summary.cpu_pinning
        if pinning.get("pinned"):
            cores = ", ".join(f"{k} -> {v}" for k, v in pinning["instances"].items())
            lines.append(f"\nCPU pinning: {cores}; data plane -> {pinning['driver']}")
        else:
            lines.append(f"\nCPU pinning off: {pinning.get('reason')}")
    if summary.time_to_first_result_s is not None:
        lines.append(f"\nTime from start to first result: {summary.time_to_first_result_s:.2f} s")
    return "\n".join(lines)
