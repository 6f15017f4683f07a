"""``jellybean run``: the one-shot path. Start an embedded Ray, plan, deploy, stream for a while with
a live progress line, drain, print predicted against measured, stop."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jellybean.cli.common import (
    EXIT_INFEASIBLE, EXIT_OK, UsageError, add_model_store_argument, model_store_of, positive,
)
from jellybean.cli.console import Block, ProgressBar, Table, emit, plain
from jellybean.cli.serve import (
    add_metrics_arguments, add_serving_arguments, bind_metrics, isolate_embedded_ray, serve_metrics, serving_options,
    stop_metrics,
)

if TYPE_CHECKING:
    from jellybean.runtime.metrics import Metrics
    from jellybean.runtime.status import RunSummary
    from jellybean.runtime.supervisor import Supervisor
    from jellybean.spec.bundle import Bundle

#: How often the live view is redrawn, and how often a plain line is written when stderr is no terminal.
REDRAW_EVERY_S = 0.25
PLAIN_LINE_EVERY_S = 5.0


def add_arguments(p: argparse.ArgumentParser) -> None:
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
    add_metrics_arguments(p)
    add_serving_arguments(p)


def _progress(bar: ProgressBar, pipeline: Supervisor, started_s: float, duration_s: float) -> None:
    """The live view of a run: time elapsed of ``duration_s`` and the frames' ledger."""
    ledger = pipeline.ledger
    elapsed_s = time.time() - started_s
    bar(f"{elapsed_s:5.1f}s  sent {ledger.sent}  completed {ledger.completed}  failed {ledger.failed}  "
        f"in flight {ledger.in_flight}", elapsed_s / duration_s if duration_s > 0 else 1.0)


def cmd_run(args: argparse.Namespace) -> int:
    from jellybean.artifacts import ModelStore
    from jellybean.plugins import unservable
    from jellybean.runtime.state import StateError, default_state_dir, ensure_state_dir
    from jellybean.spec.bundle import load_bundle

    positive("--duration", args.duration)
    bundle = load_bundle(args.files, args.workflow)
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
    serve_metrics(metrics_server)
    try:
        return _serve(args, bundle, metrics, serving)
    finally:
        stop_metrics(metrics_server)


def _serve(args: argparse.Namespace, bundle: Bundle, metrics: Metrics | None, serving: dict[str, Any]) -> int:
    from jellybean.optimizer import plan as make_plan

    started = time.time()
    plan = make_plan(bundle, strategy=args.strategy, baselines=False)
    if not plan.feasible:
        print("No feasible plan:", file=sys.stderr)
        for reason in plan.explanation:
            print(f"  - {reason}", file=sys.stderr)
        return EXIT_INFEASIBLE

    from jellybean.runtime.controller import RayCluster
    from jellybean.runtime.deployment import ServingError, site_resources
    from jellybean.runtime.supervisor import Supervisor
    from jellybean.plugins import default_cache_dir
    from jellybean.zoo.build import build_zoo

    cache = args.cache or default_cache_dir()
    from jellybean.plugins import prepare, runners_of

    used = runners_of(bundle)
    if any(name.startswith("digits-") for name in used):  # the digits models: trained once, with progress
        bar = ProgressBar()
        try:
            build_zoo(cache, progress=lambda what, fraction: bar(f"building zoo: {what}", fraction))
        finally:
            bar.close()
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
        live = ProgressBar(plain_every_s=PLAIN_LINE_EVERY_S)
        try:
            while time.time() < until:
                _progress(live, pipeline, pipeline.started_at or time.time(), args.duration)
                time.sleep(REDRAW_EVERY_S)
            _progress(live, pipeline, pipeline.started_at or time.time(), args.duration)
        finally:
            live.close()
        print("draining...", file=sys.stderr)
        summary = pipeline.stop(drain=True)
    finally:
        cluster.shutdown()
    summary.time_to_first_result_s = (
        (pipeline.first_result_at - started) if pipeline.first_result_at else None)
    if args.format == "json":
        print(json.dumps(summary.model_dump(mode="json"), indent=2))
    else:
        emit(summary_blocks(summary))
    return EXIT_OK if summary.frames.lost == 0 else EXIT_INFEASIBLE


def render_summary(summary: RunSummary) -> str:
    """:func:`summary_blocks` as plain text."""
    return plain(summary_blocks(summary))


def summary_blocks(summary: RunSummary) -> list[Block]:
    """A run's report: predicted against measured, each sink's accuracy, frames, each stage's
    replicas and rates, CPU pinning and the time to the first result."""
    p, m, f = summary.predicted, summary.measured, summary.frames
    lines: list[Block] = [f"Workflow {summary.workflow}: ran {summary.duration_s:.1f} s", ""]
    lines.append(Table(["", "PREDICTED", "MEASURED"], [
        ["throughput (frames/s)", p.throughput_per_s, m.throughput_per_s],
        ["accuracy (%)", p.accuracy, m.accuracy],
        ["latency p50 (ms)", p.latency_ms_p50, m.latency_ms_p50],
        ["latency p99 (ms)", None, m.latency_ms_p99],
        ["cost ($/h)", p.cost_per_hour, None],
    ], right={1, 2}))
    if len(summary.sinks) > 1:
        lines += ["", Table(["SINK", "PREDICTED ACCURACY", "MEASURED ACCURACY", "TARGET", "COMPLETED", "FAILED",
                             "LATENCY P50 (MS)"],
                            [[s.sink, s.accuracy_predicted, s.accuracy_measured, s.accuracy_target, s.frames.completed,
                              s.frames.failed, s.latency_ms_p50] for s in summary.sinks], right={1, 2, 3, 4, 5, 6})]
    lines += ["", f"Frames: sent {f.sent}, completed {f.completed}, failed {f.failed}, lost {f.lost}"]
    for reason, n in summary.failures.items():
        lines.append(f"  failed: {n} x {reason}")
    lines += ["", Table(["STAGE", "SITE", "VARIANT", "REPLICAS", "PLANNED REQ/S", "MEASURED REQ/S", "MEAN BATCH"],
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
    return lines
