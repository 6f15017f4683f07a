"""Sites benchmark: the digits workflow served across emulated sites, each a Ray node in its own
network namespace behind a ``tc``-shaped uplink (:mod:`jellybean.testbed`).

Measures, in one run on this machine (as root):

1. **links** (``--quick`` does only this, on two hubs): per uplink and direction, the bytes the plan
   priced, the bytes the sending interface counted, the bytes our metrics counted, and Ray's own idle
   traffic; frames sent/completed/failed/lost; planned against measured throughput;
2. **degraded link**: one hub's uplink re-shaped to half of what the plan sends over it for a while,
   then restored: the backlog (frames in flight, messages buffered for the link) stays bounded and
   counted, and every frame still ends;
3. **refused link**: a camera uplink shaped below what its frames need is refused by the planner,
   with the reason;
4. **scaling**: 1, 2 and 4 hubs, each with its own camera, saturated (sources far faster than the
   deployment, backpressure sets the pace), each site at the same share of the cores it declares in
   every run: aggregate throughput against 1-hub throughput times the number of hubs.

    python bench/sites.py [--quick] [--format json|markdown] [--out DIR]

The full run writes ``bench/results/sites.json`` and ``sites.md``; a quick run writes nothing unless
``--out`` is given (a quick run never overwrites the committed full results).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from plan import machine  # noqa: E402  (the same machine description as bench/plan.py)

ZOO = ROOT / "workflows" / "digits" / "zoo.yaml"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def links(folder: Path, cache: Path, *, hubs: int, window_s: float, degrade: bool, rate_per_s: float) -> dict:
    from jellybean.testbed.measure import judge, measure_links
    from jellybean.testbed.scenario import write

    documents = write(folder / f"hubs-{hubs}", ZOO, hubs, rate_per_s=rate_per_s)
    spec = {"site": "hub-1", "direction": "up", "fraction": 0.5, "seconds": 8.0} if degrade else None
    result = measure_links(documents, cache, window_s=window_s, degrade=spec, log=_log)
    result["problems"] = judge(result)
    return result


def refused(folder: Path) -> dict:
    """Plan the scenario with the camera uplink at a third of what its frames need."""
    from jellybean.optimizer import plan as make_plan
    from jellybean.spec import load_bundle
    from jellybean.testbed.scenario import CAMERA_RATE_PER_S, PAYLOAD_KB, write

    documents = write(folder / "refused", ZOO, 1, camera_uplink_mbps=0.7)
    result = make_plan(load_bundle(documents), baselines=False)
    return {"camera_uplink_mbps": 0.7, "needed_mbps": round(PAYLOAD_KB * 1e3 * 8 * CAMERA_RATE_PER_S / 1e6, 2),
            "status": result.solver.status, "message": " ".join(result.explanation),
            "refused": result.solver.status not in ("optimal", "feasible")}


#: Scaling: every site runs at this share of the cores it declares (the same in every run, so a hub
#: has the same quota with 1, 2 or 4 of them); hubs declare a fraction of a core, so that the hubs
#: (one per camera) are the bottleneck and the edge DC and the cloud, shared by all, have room. On
#: two cores that holds up to two hubs: a hub serves about 500 frames/s on its tenth of a core, and
#: the edge's classifier costs 2.7 times a hub's detector per frame, so four hubs ask more than the
#: edge's 0.8 core gives (1,384 frames/s, the edge at 0.91 of its quota). Smaller hubs do not help:
#: at 1/16 of a core a replica's fixed costs (Ray's threads, reports) take most of its quota and the
#: hubs served 238 frames/s alone, 138 each with four.
SCALING_CPU_SCALE = 0.8
SCALING_HUB_CPUS = 0.125
SCALING_DEVICE_CPUS = 0.125
#: Uplinks wide enough that no link, only the hubs' CPU, limits (per hub; the edge's carries every hub's).
SCALING_UPLINK_MBPS = 20.0


def scaling(folder: Path, cache: Path, *, window_s: float) -> dict:
    """1, 2 and 4 hubs, each with its own camera, saturated: aggregate frames/s against one hub's
    times the number of hubs. Each site's quota is the same share of what it declares in every run
    (``cores`` follows the topology), and each site's CPU use is reported as a share of its quota."""
    from jellybean.testbed.measure import measure_throughput
    from jellybean.testbed.scenario import write

    runs = {}
    for hubs in (1, 2, 4):
        _log(f"scaling: {hubs} hub(s), saturated")
        documents = write(folder / f"scaling-{hubs}", ZOO, hubs, rate_per_s=60.0, hub_cpus=SCALING_HUB_CPUS,
                          hub_uplink_mbps=SCALING_UPLINK_MBPS, edge_uplink_mbps=SCALING_UPLINK_MBPS * hubs)
        declared = 2.0 + hubs * (SCALING_HUB_CPUS + SCALING_DEVICE_CPUS)  # edge + cloud, and each hub with its camera
        runs[hubs] = measure_throughput(documents, cache, cores=SCALING_CPU_SCALE * declared, window_s=window_s,
                                        device_cpus=SCALING_DEVICE_CPUS, log=_log)
    one = runs[1]["completed_per_s"]
    return {"cpu_scale": SCALING_CPU_SCALE, "hub_cpus": SCALING_HUB_CPUS,
            "runs": {str(h): v for h, v in runs.items()},
            "vs_linear": {str(h): round(v["completed_per_s"] / (h * one), 3) if one else None
                          for h, v in runs.items()}}


def markdown(result: dict) -> str:
    out = ["# Sites benchmark", "", f"Machine: {result['machine']}", "",
           "Command: `python bench/sites.py" + (" --quick" if result["quick"] else "") + "`", "",
           "## Links (two hubs)", "",
           "| link | direction | shaped Mbit/s | planned B | interface B | idle B | interface - idle vs planned "
           "| ours B | ours vs interface - idle |", "|---|---|---|---|---|---|---|---|---|"]
    for lk in result["links"]:
        wire = lk["interface_bytes"] - lk["idle_bytes"]
        ratio = f"{wire / lk['planned_bytes']:.3f}" if lk["planned_bytes"] else "-"
        ours = f"{lk['jellybean_bytes'] / wire:.3f}" if lk["planned_bytes"] and wire > 0 else "-"
        out.append(f"| {lk['link']} | {lk['direction']} | {lk['bandwidth_mbps']} | {lk['planned_bytes']} | "
                   f"{lk['interface_bytes']} | {lk['idle_bytes']} | {ratio} | {lk['jellybean_bytes']} | {ours} |")
    r = result
    out += ["", f"Window {r['window_s']} s. Throughput: planned {r['throughput_per_s']['planned']:.1f}, measured "
            f"{r['throughput_per_s']['measured']:.1f} frames/s. Frames: {r['frames']}.",
            f"Problems: {r['problems'] or 'none'}.", ""]
    if "degraded" in r:
        d = r["degraded"]
        out += ["## Degraded link", "",
                f"{d['link']} {d['direction']} shaped to {d['shaped_mbps']} Mbit/s (the plan sends "
                f"{d['planned_mbps']}) for {d['seconds']} s: peak {d['peak_in_flight']} frames in flight, "
                f"peak {d['peak_link_buffered']} messages buffered for links, {d['shed']} shed; "
                f"{d['completed_per_s_during']} frames/s during, {d['completed_per_s_after']} after; "
                f"{d['in_flight_after']} in flight once restored.", ""]
    if "refused" in result:
        f = result["refused"]
        out += ["## Under-shaped link", "", f"Camera uplink {f['camera_uplink_mbps']} Mbit/s where the frames need "
                f"{f['needed_mbps']}: planner status `{f['status']}`: {f['message']}", ""]
    if "scaling" in result:
        s = result["scaling"]
        out += ["## Scaling (saturated)", "",
                f"Sources far faster than the deployment can go; every site at {s['cpu_scale']} of the cores it "
                f"declares (hubs declare {s['hub_cpus']}), the same in every run. CPU busy: each site's use over the "
                "window as a share of its quota.", "",
                "| hubs | frames/s | vs linear | hubs' CPU busy | edge / cloud CPU busy | lost |", "|---|---|---|---|---|---|"]
        for h, run in s["runs"].items():
            busy = run["cpu_busy_of_quota"]
            hubs_busy = ", ".join(f"{busy[k]:.2f}" for k in sorted(busy) if k.startswith("hub-"))
            out.append(f"| {h} | {run['completed_per_s']:.1f} | {s['vs_linear'][h]} | {hubs_busy} | "
                       f"{busy.get('edge', 0):.2f} / {busy.get('cloud', 0):.2f} | {run['frames']['lost']} |")
        out.append("")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the two-hub link measurement only (about 1 minute)")
    parser.add_argument("--format", choices=["json", "markdown"], default="markdown")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write sites.json and sites.md (default: bench/results for a full run, "
                             "nowhere for a quick one)")
    parser.add_argument("--window", type=float, default=None, help="seconds of the serving window")
    args = parser.parse_args()

    from jellybean.testbed.bed import unavailable
    from jellybean.plugins import default_cache_dir

    why = unavailable()
    if why:
        print(f"bench/sites.py: the test bed cannot run here: {why}", file=sys.stderr)
        return 2
    cache = default_cache_dir()
    window = args.window or (15.0 if args.quick else 30.0)
    result: dict = {"machine": machine(), "quick": args.quick}
    with tempfile.TemporaryDirectory(prefix="jb-sites-") as tmp:
        folder = Path(tmp)
        # the two-hub measurement's keys (links, idle_baseline_bytes_per_s, frames, throughput_per_s, ...)
        # are the result's own
        result.update(links(folder, cache, hubs=2, window_s=window, degrade=not args.quick, rate_per_s=150.0))
        if not args.quick:
            result["refused"] = refused(folder)
            result["scaling"] = scaling(folder, cache, window_s=15.0)
    out = args.out or (None if args.quick else ROOT / "bench" / "results")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "sites.json").write_text(json.dumps(result, indent=1) + "\n")
        (out / "sites.md").write_text(markdown(result))
    print(json.dumps(result, indent=1) if args.format == "json" else markdown(result))
    return 0 if not result["problems"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
