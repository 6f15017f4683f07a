"""The supervisor: keeps one running workflow served while the world changes under it.

A :class:`Supervisor` wraps a :class:`~jellybean.runtime.dataplane.Pipeline` (it has the same
start/stop/status/summary contract, so the controller and ``jellybean run`` use it in its place) and
checks, every ``interval_s`` and at once when the data plane raises its ``attention`` flag:

- **Sites.** A site is *down* when no live Ray node advertises its resource ``site:<name>``
  (:func:`sites_down`, from ``ray.nodes()``; a node that dies is reported at once). The workflow is
  re-planned on the remaining capacity (:func:`without_sites`: the down sites keep their links, since
  a dead compute node does not cut the network, but lose their instances) and the pipeline moves to
  the new plan in place (``Pipeline.reconfigure``): frames that were in flight on the dead replicas
  are retried, and messages that found no replica meanwhile were *held* (bounded, for ``hold_s``)
  and are routed again. When the site's node returns, the full topology is planned again, so the site
  is used again. A plan that cannot serve the degraded topology leaves held messages to expire as
  failed, with the reason.
- **Replicas.** A replica that dies on a node that is still alive is started again under the same
  plan.
- **Load.** Each source's offered rate is measured over ``window_s``. When it leaves the band
  ``[planned / (1 + tolerance), planned * (1 + tolerance)]`` and *stays* out for ``up_delay_s``
  (busier) or ``down_delay_s`` (quieter) the workflow is re-planned for the measured rates
  (:class:`Hysteresis`, the two delays of Ray Serve's autoscaler: react fast to more load, slowly to
  less, and never flap inside the band). The re-plan prefers plans that move little (the planner's
  churn penalty against the running plan). Load beyond what the new plan can take is shed at the
  sources, explicitly (the pipeline runs with ``overload="shed"``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from jellybean.optimizer.plan import Plan
from jellybean.runtime.dataplane import Pipeline
from jellybean.runtime.deployment import SITE_RESOURCE_PREFIX, ServingError
from jellybean.runtime.status import RunSummary
from jellybean.spec.bundle import Bundle
from jellybean.spec.topology import Topology

log = logging.getLogger(__name__)

Planner = Callable[[Bundle, Plan | None], Plan]


def sites_down(nodes: Iterable[dict], sites: Iterable[str]) -> set[str]:
    """The ``sites`` no live node advertises (``nodes`` as ``ray.nodes()`` returns them)."""
    alive: set[str] = set()
    for node in nodes:
        if node.get("Alive") or node.get("alive"):
            alive |= {k[len(SITE_RESOURCE_PREFIX):] for k in (node.get("Resources") or {})
                      if k.startswith(SITE_RESOURCE_PREFIX)}
    return {site for site in sites if site not in alive}


def without_sites(topology: Topology, down: set[str]) -> Topology:
    """``topology`` with the instances of the ``down`` sites removed; sites and links stay."""
    if not down:
        return topology
    degraded = topology.model_copy(deep=True)
    for site in degraded.spec.sites:
        if site.name in down:
            site.instances = []
    return degraded


def with_rates(bundle: Bundle, rates_per_s: dict[str, float], topology: Topology | None = None) -> Bundle:
    """``bundle`` with its sources' rates (per site) replaced and, optionally, another topology."""
    workflow = bundle.workflow
    if any(abs(s.rate_per_s - rates_per_s.get(s.name, s.rate_per_s)) > 1e-9 for s in workflow.spec.sources):
        workflow = workflow.model_copy(deep=True)
        for source in workflow.spec.sources:
            source.rate_per_s = rates_per_s.get(source.name, source.rate_per_s)
    return Bundle(workflow, bundle.zoo, topology or bundle.topology, bundle.sources)


@dataclass
class Hysteresis:
    """Decide when a measured/planned ratio has been out of band long enough to act.

    ``observe(ratio, now)`` returns ``"up"`` once the ratio has stayed above ``1 + tolerance`` for
    ``up_delay_s``, ``"down"`` once it has stayed below ``1 / (1 + tolerance)`` for ``down_delay_s``,
    else None. Re-entering the band, or crossing to the other side, restarts the clock, so a ratio
    that oscillates around a threshold never triggers (no flapping)."""

    tolerance: float = 0.25
    up_delay_s: float = 3.0
    down_delay_s: float = 15.0
    _side: str | None = None
    _since: float = 0.0

    def observe(self, ratio: float, now: float) -> str | None:
        side = "up" if ratio > 1.0 + self.tolerance else "down" if ratio < 1.0 / (1.0 + self.tolerance) else None
        if side != self._side:
            self._side, self._since = side, now
        if side is None:
            return None
        delay = self.up_delay_s if side == "up" else self.down_delay_s
        if now - self._since >= delay:
            self._since = now  # acted: the next decision needs the condition to hold again
            return side
        return None


@dataclass
class Event:
    at: float
    reason: str
    detail: str
    seconds: float = 0.0
    ok: bool = True


def default_planner(time_limit_s: float = 30.0) -> Planner:
    def planner(bundle: Bundle, previous: Plan | None) -> Plan:
        from jellybean.optimizer import plan

        return plan(bundle, baselines=False, time_limit_s=time_limit_s, previous=previous)

    return planner


class Supervisor:
    """A pipeline that re-plans itself (see the module docstring)."""

    def __init__(self, bundle: Bundle, plan: Plan, *, planner: Planner | None = None,
                 nodes: Callable[[], list[dict]] | None = None, interval_s: float = 1.0,
                 hysteresis: Hysteresis | None = None, window_s: float = 2.0, hold_s: float = 20.0,
                 overload: str = "shed", **pipeline_options: Any) -> None:
        self.base = bundle  # the workflow as submitted: full topology, planned rates
        self.planner = planner or default_planner()
        self.nodes = nodes
        self.interval_s = interval_s
        self.hysteresis = hysteresis or Hysteresis()
        self.window_s = window_s
        self.pipeline = Pipeline(bundle, plan, hold_s=hold_s, overload=overload, **pipeline_options)
        self.down: set[str] = set()
        self.planned_rates = {s.name: s.rate_per_s for s in bundle.workflow.spec.sources}
        self.events: list[Event] = []
        self._samples: list[tuple[float, dict[str, int]]] = []
        self.replica_grace_s = 1.0
        self.spawn_timeout_s = 30.0  # a replica's start (a process, torch, its model) on a loaded node
        self._lost_since: dict[str, float] = {}
        self._site_backoff_s = 0.0
        self._site_retry_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # --- the pipeline contract ------------------------------------------------------------------------
    @property
    def plan(self) -> Plan:
        return self.pipeline.plan

    def start(self) -> None:
        self.pipeline.start()
        self._thread = threading.Thread(target=self._loop, name="jellybean-supervisor", daemon=True)
        self._thread.start()

    def stop(self, *, drain: bool = True) -> RunSummary:
        self._stop.set()
        self.pipeline.attention.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        return self.pipeline.stop(drain=drain)

    def cancel(self) -> None:
        """Give up a start under way (``Pipeline.cancel``)."""
        self.pipeline.cancel()

    def release(self) -> RunSummary:
        """Stop supervising and hand the replicas over to the next controller (``Pipeline.release``)."""
        self._stop.set()
        self.pipeline.attention.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        return self.pipeline.release()

    def status(self) -> dict:
        status = self.pipeline.status()
        status["supervisor"] = {"sites_down": sorted(self.down), "planned_rates_per_s": dict(self.planned_rates),
                                "reconfigurations": self.pipeline.reconfigurations,
                                "held": self.pipeline.held, "shed": self.pipeline.shed,
                                "events": [e.__dict__ for e in self.events[-10:]]}
        return status

    def summary(self) -> RunSummary:
        return self.pipeline.summary()

    def __getattr__(self, name: str) -> Any:  # ledger, telemetry, set_source_rate, ... of the pipeline
        if name == "pipeline":
            raise AttributeError(name)
        return getattr(self.pipeline, name)

    # --- the loop --------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            self.pipeline.attention.wait(self.interval_s)
            self.pipeline.attention.clear()
            if self._stop.is_set():
                break
            try:
                self.check()
            except Exception:
                log.exception("supervisor check failed")

    def _node_list(self) -> list[dict]:
        if self.nodes is not None:
            return self.nodes()
        import ray

        return ray.nodes()

    def check(self, now: float | None = None) -> str | None:
        """One look at the world; returns the reason of the re-plan it made, if any."""
        with self._lock:
            now = time.monotonic() if now is None else now
            hosting = [s.name for s in self.base.topology.spec.sites if s.instances]
            down = sites_down(self._node_list(), hosting)
            if down != self.down:
                if now < self._site_retry_at:
                    return None
                reason = "site-down" if down - self.down else "site-up"
                previous, self.down = self.down, down
                if self._replan(reason, f"sites down: {', '.join(sorted(down)) or 'none'}"):
                    self._site_backoff_s = 0.0
                    self._site_retry_at = 0.0
                else:
                    # Not deployed (no plan, or its replicas could not start in time on a loaded
                    # cluster): the world is looked at again after a backoff (1, 2, 4 ... 30 s),
                    # and the change re-planned then, rather than forgotten.
                    self.down = previous
                    self._site_backoff_s = min(30.0, max(1.0, 2 * self._site_backoff_s))
                    self._site_retry_at = now + self._site_backoff_s
                    threading.Timer(self._site_backoff_s, self.pipeline.attention.set).start()
                return reason
            lost = {k for k in self.pipeline.dead if self.pipeline.replicas.get(k) is not None
                    and self.pipeline.replicas[k].spec.site not in self.down}
            self._lost_since = {k: self._lost_since.get(k, now) for k in lost}
            # A replica whose node is still alive after a grace period died alone: start it again. (Its
            # node's death, if that is what happened, shows in the node list within the grace.)
            if lost and now - min(self._lost_since.values()) >= self.replica_grace_s:
                self._replan("replica-lost", f"replicas lost: {', '.join(sorted(lost))}", same_plan=True)
                return "replica-lost"
            if lost:
                threading.Timer(self.replica_grace_s, self.pipeline.attention.set).start()
            return self._check_load(now)

    def _check_load(self, now: float) -> str | None:
        self._samples.append((now, dict(self.pipeline.generated)))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.pop(0)
        first_at, first = self._samples[0]
        if now - first_at < self.window_s * 0.5:
            return None
        per_site = {s.name: s.count_per_site * len(s.sites) for s in self.base.workflow.spec.sources}
        measured = {name: (self.pipeline.generated.get(name, 0) - first.get(name, 0)) / (now - first_at) / per_site[name]
                    for name in self.planned_rates}
        ratios = [measured[name] / planned for name, planned in self.planned_rates.items() if planned > 0]
        if not ratios:
            return None
        worst = max(ratios, key=lambda r: abs(r - 1.0) if r >= 1.0 else abs(1.0 / max(r, 1e-9) - 1.0))
        side = self.hysteresis.observe(worst, now)
        if side is None:
            return None
        previous = dict(self.planned_rates)
        self.planned_rates = {name: max(1e-3, rate) for name, rate in measured.items()}
        detail = ", ".join(f"{n}: {previous[n]:.1f} -> {self.planned_rates[n]:.1f}/s" for n in sorted(measured))
        if not self._replan("load", detail):
            self.planned_rates = previous
        self._samples = [(now, dict(self.pipeline.generated))]
        return "load"

    def _replan(self, reason: str, detail: str, *, same_plan: bool = False) -> bool:
        started = time.perf_counter()
        if same_plan:
            bundle, plan = self.pipeline.bundle, self.pipeline.plan
        else:
            bundle = with_rates(self.base, self.planned_rates, without_sites(self.base.topology, self.down))
            plan = self.planner(bundle, self.pipeline.plan)
        if not plan.feasible:
            self.events.append(Event(time.time(), reason, f"{detail}; no feasible plan: "
                                     + "; ".join(plan.explanation), time.perf_counter() - started, ok=False))
            log.warning("re-plan (%s) found no feasible plan: %s", reason, "; ".join(plan.explanation))
            return False
        try:
            moved = self.pipeline.reconfigure(plan, bundle, timeout_s=self.spawn_timeout_s)
        except ServingError as exc:
            self.events.append(Event(time.time(), reason, f"{detail}; {exc}", time.perf_counter() - started, ok=False))
            log.warning("re-plan (%s) could not be deployed: %s", reason, exc)
            return False
        seconds = time.perf_counter() - started
        self.events.append(Event(time.time(), reason, f"{detail}; kept {len(moved['kept'])}, started "
                                 f"{len(moved['started'])} replicas", seconds))
        if self.pipeline.telemetry is not None:
            self.pipeline.telemetry.replanned(reason, len(self.down))
        log.info("re-planned (%s) in %.2f s: %s", reason, seconds, detail)
        return True
