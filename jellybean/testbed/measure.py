"""Serve a workflow on the test bed and compare what the links carried with what the plan priced.

:func:`measure_links` builds a :class:`~jellybean.testbed.bed.Testbed` for the bundle's topology,
deploys the workflow through the driver, and measures three windows:

1. **idle**: sources paused, nothing in flight, the pipeline deployed: what every link carries with
   no frames (Ray's heartbeats and object-directory traffic, our telemetry): ``idle_baseline_bytes_per_s``;
2. **serving**: sources at the planned rate, after a warm-up: each link direction's bytes from the
   sending interface's counter (``interface_bytes``), from our metrics (``jellybean_bytes``: the
   serialised batches the actors sent over it) and from the plan (``planned_bytes``: its GB/h over
   the window), and the frames completed;
3. optionally **degraded**: one uplink re-shaped below what the plan needs for a while, then restored:
   the backlog (frames in flight, bounded by the sources' ``max_in_flight``; frames the replay sources
   could not send on time) is reported, and the frames must still all end.

Then it stops the pipeline (draining) and reports the ledger: ``frames`` {sent, completed, failed, lost}.

What the plan priced is what a link carries: each message as the data plane encodes it (its fields
and the runtime's, :mod:`jellybean.codec`), each send's framing shared by the messages the send
carries (``link_batch_messages``, which the senders keep to), and TCP/IP's headers per segment
(:mod:`jellybean.optimizer.framing`). The reverse direction carries the ACKs and the replies (the
frames' outcomes), which the plan does not price. :func:`judge` subtracts the idle baseline and checks
the bounds, on every link direction the plan sends frames over.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from jellybean.spec import load_bundle
from jellybean.testbed.bed import Testbed
from jellybean.testbed.driver import DriverClient
from jellybean.testbed.layout import CPU_PERIOD_US

MB = 1e6
#: Ray's nodes report to the head in bursts (about 30 KB per node every 5 s here, measured with
#: :meth:`Testbed.counters` once a second on an idle cluster): the idle and serving windows are whole
#: multiples of this period, so that each holds the same number of bursts per second.
RAY_REPORT_PERIOD_S = 5.0


def _whole_periods(seconds: float) -> float:
    return max(1, round(seconds / RAY_REPORT_PERIOD_S)) * RAY_REPORT_PERIOD_S


def _pause(seconds: float) -> None:
    threading.Event().wait(seconds)


def _delta(after: dict, before: dict) -> dict:
    return {k: after[k] - before.get(k, 0) for k in after}


def measure_links(documents: list[Path], cache_dir: Path, *, cores: float | None = None, warmup_s: float = 8.0,
                  idle_s: float = 10.0, window_s: float = 20.0, degrade: dict | None = None,
                  options: dict | None = None, device_cpus: float = 0.25, log=print) -> dict:  # noqa: ANN001
    """Deploy ``documents`` on a test bed and measure (see the module docstring). ``degrade``:
    ``{"site": ..., "direction": "up", "fraction": 0.5, "seconds": 8}`` re-shapes that link to
    ``fraction`` of what the plan sends over it."""
    bundle = load_bundle(documents)
    idle_s, window_s = _whole_periods(idle_s), _whole_periods(window_s)
    t0 = time.monotonic()
    result: dict[str, Any] = {}
    with Testbed(bundle.topology, cores=cores, device_cpus=device_cpus) as bed:
        lay = bed.layout
        result["testbed"] = {
            "sites": {s.name: {"namespace": s.namespace, "address": s.address, "cpu_quota": round(s.cpu_quota, 3)}
                      for s in lay.sites.values()},
            "cpu_scale": round(lay.cpu_scale, 3), "cpu_quotas": bed.cpu_reason or "cgroup",
            "link_latency": "not on the wire (no netem here); emulated by the senders" if (options or {}).get(
                "emulate_latency") else "not emulated"}
        bed.start_ray()
        log(f"test bed up: {len(lay.sites)} sites, Ray nodes starting ({time.monotonic() - t0:.1f} s)")
        client = DriverClient(bed, {"documents": [str(p) for p in documents], "cache_dir": str(cache_dir),
                                    "options": options or {}})
        try:
            started = client.call("start", timeout_s=600)
            log(f"deployed: {started['assignments']} ({time.monotonic() - t0:.1f} s)")
            result["plan"] = {k: started[k] for k in ("assignments", "planned_frames_per_s", "cost_per_hour",
                                                      "planned_link_bytes_per_s")}
            misplaced = [key for key, where in started["actors"].items()
                         if where["node_id"] != started["nodes"].get(where["site"])]
            result["actors"] = {"count": len(started["actors"]), "misplaced": misplaced}
            bed.limit_cpus()
            _pause(warmup_s)

            # 1. idle
            client.call("pause", paused=True)
            client.call("wait_idle", timeout_s=60)
            _pause(1.0)
            c0, s0 = bed.counters(), client.call("snapshot")
            _pause(idle_s)
            c1, s1 = bed.counters(), client.call("snapshot")
            idle_span = s1["t"] - s0["t"]
            idle = {k: (c1[k].tx_bytes - c0[k].tx_bytes) / idle_span for k in c1}
            client.call("pause", paused=False)
            log(f"idle baseline measured over {idle_span:.1f} s")
            _pause(min(warmup_s, 4.0))

            # 2. serving
            c2, s2 = bed.counters(), client.call("snapshot")
            _pause(window_s)
            c3, s3 = bed.counters(), client.call("snapshot")
            span = s3["t"] - s2["t"]
            ours = _delta(s3["link_bytes"], s2["link_bytes"])
            planned = started["planned_link_bytes_per_s"]
            links = []
            for (site, direction), after in sorted(c3.items()):
                key = f"{site}/{direction}"
                link = next(lk for lk in lay.links if lk.child == site)
                bits = link.up_bits_per_s if direction == "up" else link.down_bits_per_s
                links.append({
                    "link": site, "direction": direction,
                    "bandwidth_mbps": None if bits is None else bits / MB,
                    "planned_bytes": round(planned.get(key, 0.0) * span),
                    "interface_bytes": after.tx_bytes - c2[(site, direction)].tx_bytes,
                    "jellybean_bytes": round(ours.get(key, 0.0)),
                    "idle_bytes": round(idle[(site, direction)] * span),
                    "drops": after.drops - c2[(site, direction)].drops})
            completed = s3["frames"]["completed"] - s2["frames"]["completed"]
            result.update(window_s=round(span, 2), links=links,
                          idle_baseline_bytes_per_s={f"{s}/{d}": round(v, 1) for (s, d), v in sorted(idle.items())},
                          throughput_per_s={"planned": started["planned_frames_per_s"],
                                            "measured": round(completed / span, 2)})
            log(f"serving window {span:.1f} s: {completed / span:.1f} frames/s")

            # 3. degraded (optional)
            if degrade:
                result["degraded"] = _degrade(bed, client, degrade, planned, bundle)

            summary = client.call("stop", timeout_s=300)["summary"]
            frames = summary["frames"]
            result["frames"] = {k: frames[k] for k in ("sent", "completed", "failed", "lost")}
            result["failures"] = summary.get("failures", {})
        except BaseException:
            _log_tails(bed, log)
            raise
        finally:
            client.close()
        result["seconds"] = round(time.monotonic() - t0, 1)
    return result


def _log_tails(bed: Testbed, log) -> None:  # noqa: ANN001
    """What the sites' Ray nodes and the driver said last, for a failed measurement."""
    for site in bed.layout.sites:
        tail = bed.log_tail(site, 600)
        if "Error" in tail or "error" in tail:
            log(f"--- {site} ---\n{tail}")
    if bed.folder is not None:
        log((bed.folder / "driver.log").read_text(errors="replace")[-4000:])


def measure_scaling(documents: list[Path], cache_dir: Path, *, cores: float, sending: list[list[str]],
                    settle_s: float = 4.0, window_s: float = 10.0, warmup_s: float = 8.0, device_cpus: float = 0.25,
                    cpu_period_us: int = CPU_PERIOD_US, log=print) -> dict:  # noqa: ANN001
    """One deployment on one test bed, saturated, measured in windows each with only the sources at
    ``sending[i]``'s sites sending (the others paused): frames/s completed and each site's CPU use as
    a share of its quota, per window.

    Why one bed and not one per count of sites: this machine's speed drifts by tens of percent over
    minutes (other tenants of its host), more than the effect measured. Windows of a few seconds,
    in an order that alternates the counts, all on the same processes and the same plan, see the
    same machine; only the number of sites sending changes. ``settle_s`` after each switch lets the
    paused sites' frames in flight end and the new ones fill their queues before counting."""
    bundle = load_bundle(documents)
    every = sorted({site for source in bundle.workflow.spec.sources for site in source.sites})
    t0 = time.monotonic()
    windows = []
    with Testbed(bundle.topology, cores=cores, device_cpus=device_cpus, cpu_period_us=cpu_period_us) as bed:
        quotas = {s.name: s.cpu_quota for s in bed.layout.sites.values()}
        bed.start_ray()
        client = DriverClient(bed, {"documents": [str(p) for p in documents], "cache_dir": str(cache_dir),
                                    "saturate": True})
        try:
            started = client.call("start", timeout_s=600)
            log(f"deployed, saturating: {started['assignments']} ({time.monotonic() - t0:.1f} s)")
            bed.limit_cpus()
            _pause(warmup_s)
            for sites in sending:
                client.call("pause", paused=True, sites=sorted(set(every) - set(sites)))
                client.call("pause", paused=False, sites=sorted(sites))
                _pause(settle_s)
                cpu0, s0 = bed.cpu_seconds(), client.call("snapshot")
                _pause(window_s)
                cpu1, s1 = bed.cpu_seconds(), client.call("snapshot")
                span = s1["t"] - s0["t"]
                windows.append({
                    "sending": sorted(sites), "window_s": round(span, 2),
                    "completed_per_s": round((s1["frames"]["completed"] - s0["frames"]["completed"]) / span, 1),
                    "cpu_busy_of_quota": {site: round((cpu1[site] - cpu0.get(site, 0.0)) / span / quotas[site], 3)
                                          for site in cpu1 if quotas.get(site)}})
                log(f"  {len(sites)} sending: {windows[-1]['completed_per_s']} frames/s")
            client.call("pause", paused=False)
            summary = client.call("stop", timeout_s=300)["summary"]
        except BaseException:
            _log_tails(bed, log)
            raise
        finally:
            client.close()
    frames = summary["frames"]
    return {"windows": windows, "cpu_quota": {k: round(v, 3) for k, v in quotas.items()},
            "frames": {k: frames[k] for k in ("sent", "completed", "failed", "lost")},
            "placement": started["assignments"], "cpu_period_us": cpu_period_us,
            "seconds": round(time.monotonic() - t0, 1)}


def _degrade(bed: Testbed, client: DriverClient, degrade: dict, planned: dict, bundle: Any) -> dict:
    """Shape one uplink below the plan's need, watch the backlog, restore it, let it drain."""
    site, direction = degrade["site"], degrade.get("direction", "up")
    need = planned.get(f"{site}/{direction}", 0.0) * 8 / MB
    rate = max(0.05, need * degrade.get("fraction", 0.5))
    topology = {s.name: s for s in bundle.topology.spec.sites}
    original = getattr(topology[site].uplink, direction).bandwidth_mbps
    before = client.call("snapshot")
    bed.shape(site, direction, rate)
    peak_in_flight, peak_buffered = 0, 0
    end = time.monotonic() + degrade.get("seconds", 8.0)
    while time.monotonic() < end:
        _pause(0.5)
        snap = client.call("snapshot")
        peak_in_flight = max(peak_in_flight, snap["frames"]["in_flight"])
        peak_buffered = max(peak_buffered, sum(snap["link_buffered"].values()))
    during = client.call("snapshot")
    bed.shape(site, direction, original)
    _pause(degrade.get("recover_s", 6.0))
    after = client.call("snapshot")
    span = during["t"] - before["t"]
    return {"link": site, "direction": direction, "planned_mbps": round(need, 4), "shaped_mbps": round(rate, 4),
            "seconds": round(span, 1), "peak_in_flight": peak_in_flight, "peak_link_buffered": peak_buffered,
            "in_flight_after": after["frames"]["in_flight"],
            "completed_per_s_during": round((during["frames"]["completed"] - before["frames"]["completed"]) / span, 1),
            "completed_per_s_after": round((after["frames"]["completed"] - during["frames"]["completed"])
                                           / (after["t"] - during["t"]), 1),
            "shed": after["shed"] - before["shed"]}


def judge(result: dict, *, tolerance: float = 0.10) -> list[str]:
    """What misses the targets: on every link direction the plan sends over, interface bytes minus
    the idle baseline within ``tolerance`` of planned (the plan prices each message as it travels,
    its send's framing and TCP/IP's headers included: :mod:`jellybean.optimizer.framing`); our
    metrics (the kernel's count of our connections' bytes) within ``tolerance`` above the
    interface's total (the two are read a moment apart) and at least ``1 - tolerance`` of the
    interface's less idle (the idle baseline is an estimate: Ray's bursts vary from one window to the
    next, so "ours" is bounded on both sides rather than held to a difference of two counters); no
    frame lost; measured throughput within ``tolerance`` of planned."""
    problems = []
    for link in result["links"]:
        name = f"{link['link']}/{link['direction']}"
        if link["planned_bytes"] <= 0:
            continue
        wire = link["interface_bytes"] - link["idle_bytes"]
        if abs(wire - link["planned_bytes"]) > tolerance * link["planned_bytes"]:
            problems.append(f"{name}: interface bytes less idle {wire} vs planned {link['planned_bytes']} "
                            f"(expected within {tolerance:.0%} of it)")
        if not (1 - tolerance) * wire <= link["jellybean_bytes"] <= (1 + tolerance) * link["interface_bytes"]:
            problems.append(f"{name}: our metrics {link['jellybean_bytes']} vs interface {link['interface_bytes']}, "
                            f"less idle {wire}")
    if result["frames"]["lost"]:
        problems.append(f"{result['frames']['lost']} frames lost")
    t = result["throughput_per_s"]
    if abs(t["measured"] - t["planned"]) > tolerance * t["planned"]:
        problems.append(f"throughput {t['measured']} vs planned {t['planned']}")
    if result.get("actors", {}).get("misplaced"):
        problems.append(f"actors off their sites' nodes: {result['actors']['misplaced']}")
    return problems
