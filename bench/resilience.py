"""Resilience drills on a local multi-node Ray cluster (``ray.cluster_utils.Cluster``, one node per
site with compute: the cloud's node also carries the cameras' site resources, the hub has its own).

1. ``site_failure``: the drills workflow (bench/drills) serves with detection and classification on
   the hub; the hub's node is removed; the supervisor re-plans on the cloud and the frames in flight
   are retried. ``recovery_s``: from the node's removal until a frame sent after it has come out of
   the new plan. Then the node returns and the plan uses the hub again.
2. ``load_spike``: the cameras send twice the planned rate; the supervisor re-plans (hysteresis
   delays) for the measured rate; then a burst far beyond capacity is shed at the sources, explicitly
   (counted as failed, with the reason). ``peak_rss_mb``: the most resident memory of the driver plus
   every replica process, sampled every 0.2 s.
3. ``controller_restart``: a controller joined to the cluster serves two workflows; it shuts down
   (the replicas, detached, stay) and a new controller on the same state directory adopts them.

    python bench/resilience.py [--quick] [--format json|markdown] [--out DIR]

Targets: recovery under 10 s, zero frames lost, every workflow kept. ``--quick`` takes under 5 minutes.

The full run writes ``bench/results/resilience.json`` and ``resilience.md``; a quick run prints its
results and writes them only where ``--out`` says (:func:`results_folder`): a quick run never
overwrites the committed full results.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from plan import machine  # noqa: E402  (the same machine description as the other benchmarks)

DRILLS = [ROOT / "workflows" / "digits" / "zoo.yaml", ROOT / "bench" / "drills"]
DIGITS = [ROOT / "workflows" / "digits"]
#: Where a full run's results are committed.
RESULTS = ROOT / "bench" / "results"


def results_folder(args: argparse.Namespace) -> Path | None:
    """Where a run writes resilience.json and .md: ``--out`` when given; else bench/results for a
    full run (every drill at full length) and nowhere for a quick one, whose shorter phases would
    replace the committed figures with ones not comparable to them."""
    if args.out is not None:
        return args.out
    return None if args.quick else RESULTS


def wait_until(condition, timeout_s: float) -> bool:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@contextmanager
def drill_cluster(cloud_cpus: int, hub_cpus: int, *, connect: bool = True):
    """A cluster whose head node is the cloud (and carries the cameras' site resources) and whose
    second node is the hub; this process joins it unless ``connect`` is False. Yields (cluster, hub
    node); everything is shut down on the way out."""
    import ray
    from ray.cluster_utils import Cluster

    from jellybean.runtime.deployment import SITE_CAPACITY, site_resource

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": cloud_cpus, "resources": {site_resource(s): SITE_CAPACITY for s in ("cloud", "cam-1", "cam-2")}})
    try:
        hub = cluster.add_node(num_cpus=hub_cpus, resources={site_resource("hub"): SITE_CAPACITY})
        cluster.wait_for_nodes()
        if connect:
            ray.init(address=cluster.address, log_to_driver=False)
        yield cluster, hub
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def frames_of(summary) -> dict:
    f = summary.frames
    return {"frames_sent": f.sent, "frames_completed": f.completed, "frames_failed": f.failed, "frames_lost": f.lost}


def site_failure(cache: Path, quick: bool) -> dict:
    from jellybean.optimizer import plan as make_plan
    from jellybean.runtime.deployment import SITE_CAPACITY, site_resource
    from jellybean.runtime.supervisor import Supervisor
    from jellybean.spec import load_bundle

    with drill_cluster(cloud_cpus=2, hub_cpus=1) as (cluster, hub):
        bundle = load_bundle(DRILLS)
        plan = make_plan(bundle, baselines=False)
        supervisor = Supervisor(bundle, plan, cache_dir=cache)
        supervisor.start()
        wait_until(lambda: supervisor.ledger.completed > 50, 60)
        time.sleep(1.0 if quick else 5.0)
        failed_at = time.time()
        cluster.remove_node(hub)
        recovered = wait_until(lambda: (supervisor.pipeline.last_result_sent_at or 0) > failed_at, 60)
        recovery_s = time.time() - failed_at if recovered else None
        sites_after_failure = sorted({a.site for a in supervisor.plan.assignments})
        time.sleep(2.0 if quick else 10.0)
        cluster.add_node(num_cpus=1, resources={site_resource("hub"): SITE_CAPACITY})
        returned = wait_until(lambda: "hub" in {a.site for a in supervisor.plan.assignments}, 60)
        time.sleep(2.0 if quick else 5.0)
        summary = supervisor.stop(drain=True)
        return {"recovery_s": recovery_s, **frames_of(summary), "failures": dict(summary.failures),
                "sites_before": sorted({a.site for a in plan.assignments}), "sites_after_failure": sites_after_failure,
                "hub_used_again": returned,
                "events": [{"reason": e.reason, "seconds": round(e.seconds, 3), "ok": e.ok, "detail": e.detail}
                           for e in supervisor.events]}


class RssSampler:
    """Peak resident memory of this process plus every replica process, sampled in the background."""

    def __init__(self, pids) -> None:
        self.pids = pids
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss_mb(pid: int) -> float:
        try:
            with open(f"/proc/{pid}/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            return 0.0
        return 0.0

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            total = self.rss_mb(os.getpid()) + sum(self.rss_mb(pid) for pid in self.pids())
            self.peak_mb = max(self.peak_mb, total)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def load_spike(cache: Path, quick: bool) -> dict:
    from jellybean.optimizer import plan as make_plan
    from jellybean.runtime.metrics import Metrics
    from jellybean.runtime.supervisor import Hysteresis, Supervisor
    from jellybean.spec import load_bundle

    with drill_cluster(cloud_cpus=2, hub_cpus=1):
        bundle = load_bundle(DRILLS)
        plan = make_plan(bundle, baselines=False)
        metrics = Metrics()
        supervisor = Supervisor(bundle, plan, cache_dir=cache, metrics=metrics,
                                hysteresis=Hysteresis(tolerance=0.25, up_delay_s=2.0, down_delay_s=6.0))
        planned = supervisor.planned_rates["cameras"]
        supervisor.start()
        with RssSampler(lambda: [a.info["pid"] for a in supervisor.pipeline.actors.values() if a.info.get("pid")]) as rss:
            wait_until(lambda: supervisor.ledger.completed > 50, 60)
            time.sleep(2.0 if quick else 5.0)
            supervisor.set_source_rate("cameras", 2 * planned)  # rush hour: twice the planned rate
            replanned_up = wait_until(lambda: supervisor.planned_rates["cameras"] > 1.5 * planned, 30)
            rate_after_spike = supervisor.planned_rates["cameras"]
            time.sleep(3.0 if quick else 10.0)
            supervisor.set_source_rate("cameras", 100_000.0)  # as fast as the sources go: beyond capacity
            time.sleep(3.0 if quick else 6.0)
            supervisor.set_source_rate("cameras", planned)
            replanned_down = wait_until(lambda: supervisor.planned_rates["cameras"] < 1.5 * planned, 40)
            time.sleep(2.0)
        summary = supervisor.stop(drain=True)
        shed = sum(v for k, v in summary.failures.items() if k.startswith("shed"))
        value = metrics.registry.get_sample_value
        shed_metric = sum(value("jellybean_frames_shed_total", {"workflow": "drills", "source": "cameras",
                                                                 "site": s, "tier": "device"}) or 0
                          for s in ("cam-1", "cam-2"))
        return {**frames_of(summary), "frames_shed": shed, "frames_shed_metric": shed_metric,
                "peak_rss_mb": round(rss.peak_mb, 1), "planned_rate_per_camera": planned,
                "replanned_for_spike": replanned_up, "planned_rate_after_spike": round(rate_after_spike, 2),
                "replanned_after_spike": replanned_down,
                "events": [{"reason": e.reason, "seconds": round(e.seconds, 3), "ok": e.ok, "detail": e.detail}
                           for e in supervisor.events],
                "other_failures": {k: v for k, v in summary.failures.items() if not k.startswith("shed")}}


def controller_restart(cache: Path, quick: bool) -> dict:
    from jellybean.runtime.controller import Controller, RayCluster
    from jellybean.runtime.state import StateStore

    state = Path(tempfile.mkdtemp(prefix="jellybean-drill-"))

    def texts(paths: list[Path]) -> list[tuple[str, str]]:
        return [(str(p), p.read_text()) for p in paths]

    with drill_cluster(cloud_cpus=4, hub_cpus=2, connect=False) as (cluster, _hub), _removed(state):
        first = Controller(StateStore(state), cluster=RayCluster(cluster.address), cache_dir=cache)
        first.apply(texts(sorted(DIGITS[0].glob("*.yaml"))))
        first.apply(texts([DRILLS[0], *sorted(DRILLS[1].glob("*.yaml"))]))  # the same zoo, unchanged
        first.start()
        names = sorted(first.store.desired())
        running = wait_until(lambda: all(first.workflow_status(n)["phase"] == "Running" for n in names), 120)
        time.sleep(2.0 if quick else 8.0)
        before = {n: first.workflow_status(n)["frames"] for n in names}
        first.stop(drain=True)  # a shutdown: replicas stay for the next controller
        first.store.close()
        second = Controller(StateStore(state), cluster=RayCluster(cluster.address), cache_dir=cache)
        second.start()
        started = time.time()
        back = wait_until(lambda: all(second.workflow_status(n)["phase"] == "Running" for n in second.store.desired()),
                          120)
        resumed_s = time.time() - started
        time.sleep(2.0)
        after = {n: second.workflow_status(n)["frames"] for n in sorted(second.store.desired())}
        adopted = {n: len(getattr(d.pipeline, "adopted", [])) for n, d in second.executor.running.items()}
        replicas = {n: len(d.pipeline.replicas) for n, d in second.executor.running.items()}
        second.stop(drain=True)
        return {"workflows_before": len(names) if running else 0, "workflows_after": len(after) if back else 0,
                "replicas_adopted": adopted, "replicas": replicas, "resumed_s": round(resumed_s, 2),
                "frames_before_restart": before, "frames_after_restart": after,
                "counters_kept": all(after[n]["sent"] >= before[n]["sent"] for n in before if n in after)}


@contextmanager
def _removed(folder: Path):
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def markdown(result: dict) -> str:
    m, sf, ls, cr = result["machine"], result["site_failure"], result["load_spike"], result["controller_restart"]
    rows = [
        ("site failure: recovery", "< 10 s", f"{sf['recovery_s']:.2f} s" if sf["recovery_s"] is not None else "none"),
        ("site failure: frames sent / completed / failed / lost", "lost = 0",
         f"{sf['frames_sent']} / {sf['frames_completed']} / {sf['frames_failed']} / {sf['frames_lost']}"),
        ("site failure: sites in use before / after / hub used again", "",
         f"{', '.join(sf['sites_before'])} / {', '.join(sf['sites_after_failure'])} / {sf['hub_used_again']}"),
        ("load spike: frames sent / completed / failed / lost", "lost = 0",
         f"{ls['frames_sent']} / {ls['frames_completed']} / {ls['frames_failed']} / {ls['frames_lost']}"),
        ("load spike: shed explicitly (ledger / metric)", "", f"{ls['frames_shed']} / {ls['frames_shed_metric']:.0f}"),
        ("load spike: re-planned for 2x / planned rate per camera after", "",
         f"{ls['replanned_for_spike']} / {ls['planned_rate_after_spike']}"),
        ("load spike: peak RSS, driver + replicas", "bounded", f"{ls['peak_rss_mb']} MB"),
        ("controller restart: workflows before / after", "all kept",
         f"{cr['workflows_before']} / {cr['workflows_after']}"),
        ("controller restart: replicas adopted / running", "", f"{cr['replicas_adopted']} / {cr['replicas']}"),
        ("controller restart: counters kept", "", str(cr["counters_kept"])),
    ]
    lines = ["# Resilience drills", "",
             f"Measured {m['date']} on {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB RAM, Python {m['python']}. "
             f"Command: `python bench/resilience.py{' --quick' if result['quick'] else ''}` "
             f"({result['seconds']:.0f} s).", "",
             "| drill | target | measured |", "|---|---|---:|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines += ["", "Re-plans: site failure " + "; ".join(f"{e['reason']} ({e['seconds']} s)" for e in sf["events"])
              + "; load spike " + "; ".join(f"{e['reason']} ({e['seconds']} s): {e['detail']}" for e in ls["events"]), ""]
    return "\n".join(lines)


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter phases (under 5 minutes)")
    parser.add_argument("--format", choices=["json", "markdown"], default="markdown")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write resilience.json and resilience.md (default: bench/results for a full "
                             "run, nowhere for a quick one)")
    return parser.parse_args(argv)


def main() -> None:
    args = arguments()

    import logging

    logging.basicConfig(level=logging.WARNING)
    from jellybean.plugins import default_cache_dir
    from jellybean.zoo.build import build_zoo

    cache = default_cache_dir()
    build_zoo(cache)
    started = time.time()
    result = {"machine": machine(), "quick": args.quick}
    result["site_failure"] = site_failure(cache, args.quick)
    result["load_spike"] = load_spike(cache, args.quick)
    result["controller_restart"] = controller_restart(cache, args.quick)
    result["seconds"] = time.time() - started
    sf, ls, cr = result["site_failure"], result["load_spike"], result["controller_restart"]
    result["targets_met"] = {
        "recovery_under_10_s": sf["recovery_s"] is not None and sf["recovery_s"] < 10,
        "zero_frames_lost": sf["frames_lost"] == 0 and ls["frames_lost"] == 0,
        "every_workflow_kept": cr["workflows_after"] == cr["workflows_before"] > 0,
    }
    out = results_folder(args)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "resilience.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        (out / "resilience.md").write_text(markdown(result))
    print(json.dumps(result, indent=2, default=str) if args.format == "json" else markdown(result))


if __name__ == "__main__":
    main()
