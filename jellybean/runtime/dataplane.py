"""The data plane's control side: a Plan becomes actors at their sites, wired to each other.

What runs where. :func:`~jellybean.runtime.deployment.build_deployment` says what the plan means
(replicas, sources, outputs, routes); :class:`Pipeline` creates one actor per replica (the stage's
runner, or a fused chain), per (source, site) (an ingest endpoint or a replay loop) and per output
and site, each pinned to its site by the Ray resource ``site:<name>``; then it gives every sender its
routing table (the replicas of the next stages it may reach, with the plan's shares) and starts the
sources. From then on frames go from actor to actor (:mod:`jellybean.runtime.worker`), over each
replica's and output's own port (:mod:`jellybean.runtime.wire`; Ray actor calls with
``transport="ray"``): this process is not on the data path. It reads the actors' reports every ``report_interval_s`` (the ledger of
every source, what each replica ran, the bytes each actor sent to each site) for status, metrics
and the supervisor, and changes the wiring when the world changes: a re-plan (:meth:`reconfigure`:
replicas the new plan keeps stay, new ones start first, the tables switch, replaced ones finish what
they hold), a dead actor, a cut uplink (:meth:`set_uplink`).

Replicas are Ray actors rather than Ray Serve deployments: the routing by plan shares and the frame
accounting need to live in our code anyway, and Serve's handles route through its own router and
make a Ray call per request (measured against it: ``bench/runtime.py``).

Every Ray call is behind a :class:`~jellybean.runtime.replicas.Backend`: :class:`RayBackend` in use,
:class:`~jellybean.runtime.replicas.InProcessBackend` in the tests.

On one machine, ``pin_cpus`` gives each planned instance cores of its own and puts the sources and
outputs on the cores left (:mod:`jellybean.runtime.affinity`); ``jellybean run`` turns it on. The
controller leaves it off, because several workflows deployed side by side would claim the same cores.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jellybean.optimizer.plan import Plan
from jellybean.runtime.affinity import CpuLayout, InstanceLoad, cpu_layout, pin_process, usable_cores
from jellybean.runtime.deployment import (
    Deployment, NoRoom, OutputPlan, ReplicaPlan, ReplicaSpec, ServingError, SourcePlan, build_deployment,
)
from jellybean.runtime.flow import Sketch, accuracy_percent
from jellybean.runtime.metrics import Metrics
from jellybean.runtime.replicas import ActorSpec, Backend, RayBackend, ReplicaState, is_death
from jellybean.runtime.status import (
    Endpoint, Frames, Measured, OutputStatus, PipelineStatus, Predicted, RunSummary, SinkStatus, StageStatus,
)
from jellybean.runtime.telemetry import Telemetry
from jellybean.spec.bundle import Bundle

__all__ = ["Pipeline", "ServingError", "local_cpus"]


@dataclass
class _Actor:
    kind: str  # replica | source | output
    key: str
    plan: Any  # ReplicaPlan | SourcePlan | OutputPlan
    handle: Any
    state: ReplicaState = ReplicaState.STARTING
    info: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    adopted: bool = False

    @property
    def site(self) -> str:
        return self.plan.site

    @property
    def alive(self) -> bool:
        return self.state in (ReplicaState.STARTING, ReplicaState.RUNNING, ReplicaState.DRAINING)

    @property
    def spec(self) -> ReplicaSpec:
        """A replica's head stage spec (the supervisor asks for its site)."""
        return self.plan.head


@dataclass
class LedgerView:
    """The frame totals: the sum of every source's ledger (each exact), plus the frames of sources
    whose actor died (counted failed, with the reason)."""

    sent: int = 0
    completed: int = 0
    failed: int = 0
    correct: int = 0
    in_flight: int = 0
    reasons: Counter = field(default_factory=Counter)
    judged: int = 0
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def accuracy_percent(self) -> float | None:
        return accuracy_percent(self)

    @property
    def lost(self) -> int:
        return self.sent - self.completed - self.failed - self.in_flight

    def add(self, report: dict, *, dead: bool) -> None:
        """Add one source's ledger (its report, or its report of one sink); a dead source's frames in
        flight are failed."""
        self.sent += report.get("sent", 0)
        self.completed += report.get("completed", 0)
        self.correct += report.get("correct", 0)
        self.judged += report.get("judged", 0)
        self.tp += report.get("tp", 0)
        self.fp += report.get("fp", 0)
        self.fn += report.get("fn", 0)
        self.failed += report.get("failed", 0) + (report.get("in_flight", 0) if dead else 0)
        self.in_flight += 0 if dead else report.get("in_flight", 0)


def wire_secret(data_token: str | None, workflow: str) -> str:
    """The data plane's shared secret (:mod:`jellybean.runtime.wire`): derived from the data token when
    there is one, so that a restarted controller's new actors and the detached replicas it adopts
    agree; random otherwise."""
    if data_token:
        return hmac.new(data_token.encode(), f"jellybean-wire/{workflow}".encode(), hashlib.sha256).hexdigest()
    return secrets.token_hex(32)


class Pipeline:
    """One deployed workflow. Ray must be initialised by the caller (``jellybean run``, the
    controller) unless another ``backend`` is given."""

    def __init__(self, bundle: Bundle, plan: Plan, *, backend: Backend | None = None, cache_dir: Path | None = None,
                 model_store: Path | None = None,
                 metrics: Metrics | None = None, pin_cpus: bool = False, overload: str = "backpressure",
                 shed_after_ms: float = 50.0, hold_s: float = 0.0, hold_capacity: int = 10_000,
                 frame_timeout_s: float = 120.0, drain_timeout_s: float = 30.0, detached: bool = False,
                 link_buffer_capacity: int = 10_000,
                 fuse: bool = True, window: int = 16, max_in_flight: int = 256, max_wait_ms: float | None = None,
                 data_token: str | None = None, bind_host: str = "127.0.0.1", advertise_host: str | None = None,
                 output_dir: Path | None = None, report_interval_s: float = 0.5, seed: int = 0,
                 stateful: Callable[[Any], bool] | None = None, threaded: bool = False, emulate_latency: bool = False,
                 transport: str | None = None) -> None:
        if overload not in ("backpressure", "shed"):
            raise ValueError(f"overload must be 'backpressure' or 'shed', not {overload!r}")
        self.bundle = bundle
        self.plan = plan
        self.backend = backend or RayBackend()
        #: The data path: ``socket`` (each replica and output listens on its node, :mod:`.wire`; the
        #: default on Ray), ``ray`` (actor calls) or the backend's own (``inprocess``).
        self.transport = transport or ("socket" if isinstance(self.backend, RayBackend) else self.backend.transport)
        if self.transport not in ("socket", "ray", "inprocess"):
            raise ValueError(f"transport must be 'socket', 'ray' or 'inprocess', not {self.transport!r}")
        self.wire_secret = wire_secret(data_token, plan.workflow)
        self._stateful = stateful
        self.fuse = fuse
        self.deployment: Deployment = build_deployment(bundle, plan, fuse=fuse, stateful=stateful)
        if cache_dir is None and isinstance(self.backend, RayBackend):
            from jellybean.plugins import default_cache_dir

            cache_dir = default_cache_dir()
        self.cache_dir = Path(cache_dir) if cache_dir else None
        #: Where artifact variants' files are read from (``--model-store``; :mod:`jellybean.artifacts`).
        if model_store is None and isinstance(self.backend, RayBackend):
            from jellybean.artifacts import default_model_store

            model_store = default_model_store()
        self.model_store = Path(model_store) if model_store else None
        self.pin_cpus = pin_cpus
        self.overload = overload
        if max_wait_ms is None:  # the batching wait the plan counted (Topology.batch_wait_ms)
            max_wait_ms = bundle.topology.spec.batch_wait_ms
        self.options = {"window": window, "max_wait_ms": max_wait_ms, "hold_s": hold_s, "hold_capacity": hold_capacity,
                        "max_in_flight": max_in_flight, "frame_timeout_s": frame_timeout_s, "overload": overload,
                        "shed_after_ms": shed_after_ms, "seed": seed, "threaded": threaded,
                        "link_buffer_capacity": link_buffer_capacity,
                        "link_batch_wait_ms": self.deployment.link_batch_wait_ms}
        self.drain_timeout_s = drain_timeout_s
        self.detached = detached
        self.data_token = data_token or ""
        self.bind_host = bind_host
        self.advertise_host = advertise_host
        self.output_dir = Path(output_dir) if output_dir else None
        self.report_interval_s = report_interval_s
        #: Sites that are processes of one machine: emulate the links' latency (their bandwidth is not
        #: emulated; the test bed shapes it for real, :mod:`bench.sites`).
        self.emulate_latency = emulate_latency
        self.actors: dict[str, _Actor] = {}  # replicas by their key, sources and outputs by theirs
        self.links_down: set[str] = set()
        self.dead: set[str] = set()  # replica keys whose actor died
        self.attention = threading.Event()  # set when something needs the supervisor (a death, a hold)
        self.reconfigurations = 0
        self.adopted: list[str] = []
        self.cpu_layout: CpuLayout | None = None
        self._driver_cores: list[int] | None = None
        self.telemetry = Telemetry(self.deployment, plan, metrics) if metrics is not None else None
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self._summary: RunSummary | None = None
        self._lock = threading.RLock()
        self._monitor: threading.Thread | None = None
        self._stop_monitor = threading.Event()
        self._cancelled = threading.Event()
        self._lost_sources: Counter = Counter()  # frames in flight at sources whose actor died
        #: Counts a previous run of the same workflow left (a controller restarted): added to the ledger.
        self.carried = LedgerView()
        self._rates: deque[tuple[float, int]] = deque(maxlen=64)  # (time, completed) for the recent throughput

    # --- what runs --------------------------------------------------------------------------------------
    @property
    def replicas(self) -> dict[str, _Actor]:
        return {k: a for k, a in self.actors.items() if a.kind == "replica" and a.state != ReplicaState.STOPPED}

    @property
    def specs(self) -> list[ReplicaSpec]:
        return self.deployment.specs

    def _sources(self) -> list[_Actor]:
        return [a for a in self.actors.values() if a.kind == "source"]

    def _outputs(self) -> list[_Actor]:
        return [a for a in self.actors.values() if a.kind == "output"]

    # --- lifecycle ---------------------------------------------------------------------------------------
    def start(self, *, timeout_s: float = 120.0) -> None:
        """Deploy, wire and start. Raises :class:`ServingError` (after removing what it created) when
        the actors cannot be placed or set up within ``timeout_s``."""
        deployment = self.deployment
        self._check_room()
        made = [self._create_output(o) for o in deployment.outputs]
        made += [self._create_replica(r) for r in deployment.replicas]
        made += [self._create_source(s) for s in deployment.sources]
        self._give_up_if_cancelled(made)
        self._setup(made, timeout_s)
        self._give_up_if_cancelled(made)
        if self.pin_cpus:
            self._pin()
        self._wire()
        self.started_at = time.time()
        if self.telemetry is not None:
            self.telemetry.started(self)
        for result, actor in zip(self.backend.call_all([(a.handle, "start", ()) for a in self._sources()], 30),
                                 self._sources()):
            if isinstance(result, Exception):
                self._kill(list(self.actors.values()))
                raise ServingError(f"source {actor.key} did not start: {type(result).__name__}: {result}")
        self._monitor = threading.Thread(target=self._watch, name="jellybean-dataplane", daemon=True)
        self._monitor.start()

    #: How long a start waits for CPUs that Ray is still releasing (actors just stopped) before NoRoom.
    room_wait_s = 10.0

    def _check_room(self) -> None:
        """Fail within :attr:`room_wait_s`, not after the setup timeout, when Ray has fewer CPUs free
        than the replicas ask for (all nodes together: a necessary condition). Adopted (detached)
        replicas hold theirs already."""
        probe = getattr(self.backend, "free_cpus", None)
        if probe is None or self.detached:
            return
        needed = sum(r.num_cpus for r in self.deployment.replicas)
        deadline = time.monotonic() + self.room_wait_s
        while True:
            free = probe()
            if free is None or needed <= free + 1e-6:
                return
            if time.monotonic() >= deadline or self._cancelled.wait(0.2):
                break
        raise NoRoom(f"{self.plan.workflow} needs {round(needed, 2):g} CPU(s) for its replicas and Ray has "
                     f"{round(free, 2):g} free (the pipelines running hold the rest)")

    def cancel(self) -> None:
        """Make a start under way give up now (the workflow was deleted): the actors made so far are
        killed, so the setup calls it waits on fail at once instead of at their timeout, and
        :meth:`start` raises :class:`ServingError` (``cancelled``)."""
        self._cancelled.set()
        with self._lock:
            actors = list(self.actors.values())
        self._kill(actors)

    def _give_up_if_cancelled(self, made: list[_Actor]) -> None:
        if self._cancelled.is_set():
            self._kill(made)
            for actor in made:
                self.actors.pop(actor.key, None)
            raise ServingError(f"the start of {self.plan.workflow} was cancelled")

    def _host_spec(self, extra: dict) -> dict:
        return {"workflow": self.deployment.workflow, "transport": self.transport, "wire_secret": self.wire_secret,
                "options": dict(self.options), **extra}

    def _data_handle(self, actor: _Actor) -> Any:
        """What a sender needs to reach ``actor`` on the data path: its address, or its handle."""
        if self.transport == "socket":
            from jellybean.runtime.wire import Address

            host, port = actor.info["data_address"]
            return Address(host, port)
        return actor.handle

    def _create_replica(self, replica: ReplicaPlan) -> _Actor:
        deployment = self.deployment
        spec = self._host_spec({
            "key": replica.key, "site": replica.site, "stages": [c.stage for c in replica.chain],
            "runners_of": [{"runner": c.runner, "artifact": c.artifact} for c in replica.chain], "batch_sizes": [c.batch_size for c in replica.chain],
            "threads": replica.threads, "consumers": {k: list(v) for k, v in deployment.consumers.items()},
            "sink": deployment.sink, "sinks_below": {k: list(v) for k, v in deployment.sinks_below.items()},
            "stateful": replica.stateful,
            "cache_dir": str(self.cache_dir) if self.cache_dir else None,
            "model_store": str(self.model_store) if self.model_store else None})
        spec["options"]["link_batch_messages"] = deployment.link_batch_of(replica.chain[-1].stage)
        name = replica.name(deployment.workflow) if self.detached else None
        handle = self.backend.adopt(name) if name else None
        actor = _Actor("replica", replica.key, replica, handle, adopted=handle is not None)
        if handle is None:
            actor.handle = self.backend.create(ActorSpec("replica", replica.site, spec, replica.num_cpus, name))
        else:
            self.adopted.append(replica.key)
        self.actors[replica.key] = actor
        return actor

    def _create_source(self, source: SourcePlan) -> _Actor:
        spec = self._host_spec({
            "source": source.source, "site": source.site, "mode": source.mode, "dataset": source.dataset,
            "rate_per_s": source.rate_per_s, "count": source.count, "array": source.array, "dtype": source.dtype,
            "shape": list(source.shape) if source.shape else None, "consumers": list(source.consumers),
            "sinks_below": {k: list(v) for k, v in self.deployment.sinks_below.items()},
            "token": self.data_token, "bind_host": self.bind_host, "advertise_host": self.advertise_host})
        spec["options"]["offset"] = len(self._sources())
        spec["options"]["link_batch_messages"] = self.deployment.link_batch_of(source.source)
        actor = _Actor("source", source.key, source, self.backend.create(ActorSpec("source", source.site, spec, 0.0)))
        self.actors[source.key] = actor
        return actor

    def _create_output(self, output: OutputPlan) -> _Actor:
        spec = self._host_spec({
            "name": output.name, "kind": output.kind, "site": output.site, "url": output.url,
            "token": self.data_token, "bind_host": self.bind_host, "advertise_host": self.advertise_host,
            "output_dir": str(self.output_dir) if self.output_dir else None})
        spec["options"] = {**spec["options"], **output.options}
        actor = _Actor("output", output.key, output, self.backend.create(ActorSpec("output", output.site, spec, 0.0)))
        self.actors[output.key] = actor
        return actor

    def _setup(self, actors: list[_Actor], timeout_s: float) -> None:
        results = self.backend.call_all([(a.handle, "info" if a.adopted else "setup", ()) for a in actors], timeout_s)
        failed = [(a, r) for a, r in zip(actors, results) if isinstance(r, Exception)]
        if failed:
            self._kill(actors)
            for actor in actors:
                self.actors.pop(actor.key, None)
            actor, exc = failed[0]
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise ServingError(f"{len(failed)} actor(s) of {self.plan.workflow} could not start within {timeout_s:g} s "
                               f"(first: {actor.kind} {actor.key}: {type(exc).__name__}: {first[:300]}); are the "
                               "sites' resources and CPUs available?")
        for actor, info in zip(actors, results):
            actor.info = info
            actor.state = ReplicaState.RUNNING

    def _table(self, actor: _Actor) -> dict:
        """The routing table of one sender: the replicas of the stages it feeds that it may reach."""
        deployment = self.deployment
        if actor.kind == "source":
            origin, stages = actor.site, actor.plan.consumers
        else:
            origin, stages = actor.site, deployment.consumers.get(actor.plan.tail.stage, ())
        table: dict[str, Any] = {"stages": {}, "outputs": [], "blocked": {},
                                 "gone": [self._data_handle(a) for a in self.actors.values()
                                          if self.transport == "socket" and a.state == ReplicaState.DEAD
                                          and a.kind == "replica" and "data_address" in a.info]}
        if actor.kind == "replica":
            table["batch_sizes"] = [c.batch_size for c in actor.plan.chain]
        for stage in stages:
            weights = deployment.route_weights(stage, origin, dead=self.dead, links_down=self.links_down)
            if not weights and self.links_down:
                beyond = deployment.route_weights(stage, origin, dead=self.dead)
                cut = [link for key in beyond for link, _ in deployment.path(origin, self.actors[key].site)
                       if link in self.links_down] if beyond else []
                if cut:
                    table["blocked"][stage] = cut[0]
            peers = []
            for key, weight in weights.items():
                target = self.actors.get(key)
                if target is None or target.state != ReplicaState.RUNNING:
                    continue
                peers.append({"key": key, "site": target.site, "weight": weight, "handle": self._data_handle(target),
                              "stateful": target.plan.stateful, "batch_size": target.plan.head.batch_size,
                              "delay_ms": deployment.delay_ms(origin, target.site) if self.emulate_latency else 0.0})
            table["stages"][stage] = peers
        if actor.kind == "replica" and actor.plan.tail.stage in deployment.sinks:
            for output in deployment.outputs_for(actor.site, actor.plan.tail.stage):
                target = self.actors.get(output.key)
                if target is not None and target.alive:
                    delay = deployment.delay_ms(actor.site, output.site) if self.emulate_latency else 0.0
                    table["outputs"].append({"key": output.key, "site": output.site, "handle": self._data_handle(target),
                                             "delay_ms": delay})
        return table

    def _wire(self) -> None:
        """Give every sender its routing table (after any change of what runs or what it can reach)."""
        senders = [a for a in self.actors.values() if a.kind in ("source", "replica") and a.alive]
        results = self.backend.call_all([(a.handle, "configure", (self._table(a),)) for a in senders], 30)
        for actor, result in zip(senders, results):
            if isinstance(result, Exception) and is_death(result):
                self._died(actor)

    def _died(self, actor: _Actor) -> None:
        if actor.state == ReplicaState.DEAD:
            return
        actor.state = ReplicaState.DEAD
        if actor.kind == "replica":
            self.dead.add(actor.key)
        elif actor.kind == "source":
            last = actor.report
            if last.get("in_flight"):
                self._lost_sources[f"lost with the source {actor.key} (its actor or node died)"] += last["in_flight"]
        self.attention.set()

    # --- watching --------------------------------------------------------------------------------------
    def _watch(self) -> None:
        while not self._stop_monitor.wait(self.report_interval_s):
            try:
                self.poll()
            except Exception:
                import logging

                logging.getLogger(__name__).exception("polling the actors failed")

    def poll(self) -> None:
        """Read every live actor's report once; note deaths; retire drained replicas."""
        with self._lock:
            live = [a for a in self.actors.values() if a.alive]
            results = self.backend.call_all([(a.handle, "report", ()) for a in live], 10)
            died = False
            for actor, result in zip(live, results):
                if isinstance(result, Exception):
                    if is_death(result):
                        self._died(actor)
                        died = True
                    continue
                actor.report = result
                if result.get("held"):
                    self.attention.set()
                if actor.state == ReplicaState.DRAINING and result.get("idle"):
                    self._kill([actor])
                    actor.state = ReplicaState.STOPPED
            if died and self.started_at is not None and self._summary is None:
                self._wire()  # a death is a routing change: the senders hear of it now, not at the next re-plan
            self._rates.append((time.time(), self.ledger.completed))
            if self.telemetry is not None:
                self.telemetry.update(self, [a.report for a in live if a.report])

    @property
    def ledger(self) -> LedgerView:
        carried = self.carried
        view = LedgerView(carried.sent, carried.completed, carried.failed, carried.correct, 0, Counter(carried.reasons),
                          carried.judged, carried.tp, carried.fp, carried.fn)
        for actor in self._sources():
            view.add(actor.report, dead=actor.state == ReplicaState.DEAD)
            view.reasons.update(actor.report.get("failures", {}))
        view.reasons.update(self._lost_sources)
        return view

    @property
    def sink_ledgers(self) -> dict[str, LedgerView]:
        """Per sink, in the workflow's order: the ends there of the frames of every source that reaches
        it (each source's ledger of the sink, or its own where it reaches that sink alone), the frames
        of a source whose actor died counted failed. Carried totals of an earlier pipeline are not."""
        views = {sink: LedgerView() for sink in self.deployment.sinks}
        for actor in self._sources():
            for sink, report in actor.report.get("sinks", {}).items():
                views.setdefault(sink, LedgerView()).add(report, dead=actor.state == ReplicaState.DEAD)
        return views

    def _sink_rows(self) -> list[SinkStatus]:
        predicted = {s.stage: s for s in self.plan.sinks}
        rows = []
        for sink, view in self.sink_ledgers.items():
            latencies = Sketch.merge(a.report.get("sinks", {}).get(sink, {}).get("latency") for a in self._sources())
            plan = predicted.get(sink)
            rows.append(SinkStatus(
                sink=sink, frames=Frames(sent=view.sent, completed=view.completed, failed=view.failed,
                                         in_flight=view.in_flight, lost=view.lost),
                accuracy_measured=view.accuracy_percent, accuracy_predicted=plan.accuracy if plan else None,
                accuracy_target=plan.accuracy_target if plan else None,
                latency_ms_p50=Sketch.quantile(latencies, 50)))
        return rows

    @property
    def generated(self) -> dict[str, int]:
        """Frames each source group produced (sent or shed), for the supervisor's load measurement."""
        out: dict[str, int] = defaultdict(int)
        for actor in self._sources():
            out[actor.plan.source] += actor.report.get("generated", 0)
        return dict(out)

    @property
    def held(self) -> int:
        return sum(a.report.get("held", 0) for a in self.actors.values() if a.alive)

    @property
    def link_buffers(self) -> dict[str, int]:
        """Messages waiting for each cut uplink (summed over the senders)."""
        out: dict[str, int] = defaultdict(int)
        for actor in self.actors.values():
            if actor.alive:
                for link, n in actor.report.get("link_buffered", {}).items():
                    out[link] += n
        return dict(out)

    @property
    def shed(self) -> int:
        return sum(a.report.get("shed", 0) for a in self._sources())

    @property
    def first_result_at(self) -> float | None:
        times = [a.report.get("first_completed_at") for a in self._sources() if a.report.get("first_completed_at")]
        return min(times) if times else None

    @property
    def last_result_sent_at(self) -> float | None:
        """When the latest completed frame entered its source (a re-plan has recovered once a frame
        sent after the failure comes out)."""
        times = [a.report.get("last_completed_sent_at") for a in self._sources() if a.report.get("last_completed_sent_at")]
        return max(times) if times else None

    @property
    def last_result_at(self) -> float | None:
        times = [a.report.get("last_completed_at") for a in self._sources() if a.report.get("last_completed_at")]
        return max(times) if times else None

    # --- changes -------------------------------------------------------------------------------------------
    def reconfigure(self, plan: Plan, bundle: Bundle | None = None, *, timeout_s: float = 120.0) -> dict:
        """Move the running pipeline to ``plan`` without stopping the flow or losing a frame.

        Replicas the new plan keeps unchanged (same stage chain, site, instance, model and batch size)
        stay, with the new shares; the others are started first, then every sender's routing table
        switches, and the replaced ones finish what they hold (they are stopped once idle). Raises
        :class:`ServingError` when the new replicas cannot start (the old plan keeps running then)."""
        with self._lock:
            bundle = bundle or self.bundle
            deployment = build_deployment(bundle, plan, fuse=self.fuse, stateful=self._stateful)
            current = {k: a for k, a in self.replicas.items() if a.state == ReplicaState.RUNNING}
            kept = {r.key: current[r.key] for r in deployment.replicas
                    if r.key in current and current[r.key].plan.shape == r.shape}
            old_deployment, self.deployment = self.deployment, deployment
            new_actors = []
            try:
                new_actors = [self._create_replica(r) for r in deployment.replicas if r.key not in kept]
                self._setup(new_actors, timeout_s)
            except ServingError:
                self.deployment = old_deployment
                raise
            for replica in deployment.replicas:
                if replica.key in kept:
                    kept[replica.key].plan = replica
            retiring = [a for k, a in current.items() if k not in kept]
            for actor in retiring:
                actor.state = ReplicaState.DRAINING
            self.plan, self.bundle = plan, bundle
            self.dead -= {a.key for a in new_actors}
            self._wire()
            self.reconfigurations += 1
            if self.pin_cpus:
                self._pin()
            if self.telemetry is not None:
                self.telemetry.replace(deployment, plan, self)
        return {"kept": sorted(kept), "started": sorted(a.key for a in new_actors)}

    def set_uplink(self, site: str, up: bool) -> None:
        """Mark ``site``'s uplink cut (``up=False``) or restored: senders stop routing across it (what
        must cross is held, bounded, for the hold time) and route across it again when it returns."""
        if self.deployment.parent.get(site) is None:
            raise ValueError(f"{site!r} is not a site with an uplink")
        with self._lock:
            (self.links_down.discard if up else self.links_down.add)(site)
            self._wire()

    def set_source_rate(self, source: str, rate_per_s: float) -> None:
        """Change how fast a replayed source group sends (per source), leaving the plan as it is."""
        actors = [a for a in self._sources() if a.plan.source == source]
        if not actors or not rate_per_s > 0:
            raise ValueError(f"unknown source {source!r} or non-positive rate")
        self.backend.call_all([(a.handle, "set_rate", (rate_per_s * a.plan.count,)) for a in actors], 10)

    def pause_sources(self, paused: bool = True, sites: Collection[str] | None = None) -> None:
        """Hold (or resume) the replayed sources, every one or those at ``sites``: no new frames while
        the pipeline stays deployed (what is in flight goes on). The test bed measures the links' idle
        traffic this way, and scaling by the number of sites sending."""
        chosen = [a for a in self._sources() if a.alive and (sites is None or a.site in sites)]
        self.backend.call_all([(a.handle, "pause", (paused,)) for a in chosen], 10)

    def restart_dead(self, timeout_s: float = 30.0) -> list[str]:
        """Start again, under the same plan, the replicas whose actor died."""
        with self._lock:
            dead = [a for a in self.actors.values() if a.kind == "replica" and a.state == ReplicaState.DEAD]
            made = [self._create_replica(a.plan) for a in dead]
            self._setup(made, timeout_s)
            self.dead -= {a.key for a in made}
            self._wire()
        return [a.key for a in made]

    # --- stopping --------------------------------------------------------------------------------------
    def stop(self, *, drain: bool = True, keep_replicas: bool = False) -> RunSummary:
        if self._summary is not None:
            return self._summary
        if self.started_at is None:  # never started, or a start that failed: just clean up
            self._kill(list(self.actors.values()))
            self._summary = self.summary()
            return self._summary
        sources = [a for a in self._sources() if a.alive]
        self.backend.call_all([(a.handle, "stop_sending", ()) for a in sources], 30)
        self.stopped_at = time.time()
        deadline = time.time() + (self.drain_timeout_s if drain else 0.0)
        while True:
            self.poll()
            if self.ledger.in_flight == 0 or time.time() >= deadline:
                break
            time.sleep(0.05)
        self.backend.call_all([(a.handle, "fail_in_flight", ("still in flight when the pipeline stopped (drain "
                                                             "timeout)",)) for a in sources if a.alive], 10)
        self._stop_monitor.set()
        if self._monitor is not None:
            self._monitor.join(10)
        self.poll()
        if self.telemetry is not None:
            self.telemetry.stopped(self)
        summary = self.summary()
        closing = [a for a in self.actors.values() if a.alive and a.kind in ("source", "output")]
        self.backend.call_all([(a.handle, "close", ()) for a in closing], 10)
        keep = [a for a in self.replicas.values()] if keep_replicas else []
        self._kill([a for a in self.actors.values() if a not in keep])
        for actor in self.actors.values():
            if actor.alive and actor not in keep:
                actor.state = ReplicaState.STOPPED
        self._unpin_driver()
        self._summary = summary
        return summary

    def release(self) -> RunSummary:
        """Stop the flow here (draining what is in flight) but leave detached replicas running for the
        next controller to adopt."""
        return self.stop(drain=True, keep_replicas=self.detached)

    def _kill(self, actors: list[_Actor]) -> None:
        for actor in actors:
            if actor.handle is not None:
                self.backend.kill(actor.handle)

    # --- CPU pinning ---------------------------------------------------------------------------------------
    def _pin(self) -> None:
        """Pin each instance's replicas to cores of their own, and the sources and outputs to the rest
        (:mod:`jellybean.runtime.affinity`), when every actor runs on this machine."""
        nodes = {a.info.get("node_id") for a in self.actors.values() if a.alive}
        if len(nodes) > 1:
            self.cpu_layout = CpuLayout(reason="actors run on several nodes: each node schedules its own cores")
            return
        loads: dict[tuple, InstanceLoad] = {}
        for spec in self.specs:
            known = loads.get(spec.instance_key)
            utilization = spec.utilization + (known.utilization if known else 0.0)
            loads[spec.instance_key] = InstanceLoad(spec.instance_key, spec.instance_cpus, utilization)
        cores = self._driver_cores or usable_cores()
        layout = cpu_layout(loads.values(), cores)
        self.cpu_layout = layout
        if not layout.pinned:
            return
        for actor in self.replicas.values():
            if actor.info.get("pid"):
                pin_process(layout.instances[actor.plan.head.instance_key], pid=actor.info["pid"])
        for actor in self.actors.values():
            if actor.kind in ("source", "output") and actor.info.get("pid"):
                pin_process(layout.driver, pid=actor.info["pid"])
        if self._driver_cores is None and pin_process(layout.driver):
            self._driver_cores = cores

    def _unpin_driver(self) -> None:
        if self._driver_cores is not None:
            pin_process(self._driver_cores)
            self._driver_cores = None

    def _pinning_report(self) -> dict:
        layout = self.cpu_layout
        if layout is None:
            return {"pinned": False, "reason": "not requested"}
        if not layout.pinned:
            return {"pinned": False, "reason": layout.reason}
        return {"pinned": True, "instances": {"/".join(map(str, key)): cores for key, cores in layout.instances.items()},
                "driver": layout.driver}

    # --- reporting ---------------------------------------------------------------------------------------
    def endpoints(self) -> list[Endpoint]:
        out = []
        for actor in self._sources():
            if actor.plan.mode == "http":
                out.append(Endpoint(kind="ingest", name=actor.plan.source, site=actor.site,
                                    url=actor.info.get("endpoint")))
        for actor in self._outputs():
            plan = actor.plan
            if plan.kind == "stream":
                out.append(Endpoint(kind="stream", name=plan.name, site=plan.site, url=actor.info.get("endpoint")))
            elif plan.kind == "webhook":
                out.append(Endpoint(kind="webhook", name=plan.name, site=plan.site, url=plan.url))
            else:
                out.append(Endpoint(kind="file", name=plan.name, site=plan.site,
                                    path=actor.report.get("path") or (str(self.output_dir / self.deployment.workflow /
                                                                          f"{plan.name}.jsonl") if self.output_dir else None)))
        return out

    def _stage_rows(self) -> list[StageStatus]:
        elapsed = max(1e-9, (self.stopped_at or time.time()) - (self.started_at or time.time()))
        grouped: dict[tuple[str, str, str], list[tuple[ReplicaSpec, _Actor]]] = defaultdict(list)
        for actor in self.replicas.values():
            for spec in actor.plan.chain:
                grouped[(spec.stage, spec.site, spec.variant)].append((spec, actor))
        rows = []
        for (stage, site, variant), members in grouped.items():
            counts = [a.report.get("stages", {}).get(stage, {}) for _, a in members]
            batches = sum(c.get("batches", 0) for c in counts)
            requests = sum(c.get("requests", 0) for c in counts)
            rows.append(StageStatus(
                stage=stage, site=site, variant=variant, replicas_planned=len(members),
                replicas_alive=sum(a.state == ReplicaState.RUNNING for _, a in members),
                rate_planned_per_s=sum(spec.weight for spec, _ in members), rate_measured_per_s=requests / elapsed,
                batches=batches, mean_batch_size=(requests / batches) if batches else None))
        order = {s: i for i, s in enumerate(self.deployment.stage_order)}
        return sorted(rows, key=lambda r: (order.get(r.stage, 0), r.site))

    def _output_rows(self) -> list[OutputStatus]:
        rows = []
        for actor in self._outputs():
            r = actor.report
            rows.append(OutputStatus(output=actor.plan.name, site=actor.site, kind=actor.plan.kind,
                                     accepted=r.get("accepted", 0), delivered=r.get("delivered"),
                                     failed=r.get("failed", 0), dropped=r.get("dropped", 0),
                                     backlog=r.get("backlog", 0), last_error=r.get("last_error", "")))
        return rows

    def _state(self) -> str:
        if self._summary is not None or self.started_at is None:
            return "stopped"
        alive_by_stage: dict[str, bool] = defaultdict(bool)
        for actor in self.replicas.values():
            alive_by_stage[actor.plan.head.stage] |= actor.state == ReplicaState.RUNNING
        if not all(alive_by_stage.values()) or any(a.state == ReplicaState.DEAD for a in self._sources()):
            return "failed"
        if any(a.state == ReplicaState.DEAD for a in self.actors.values()):
            return "degraded"
        return "running"

    def status(self) -> dict:
        ledger = self.ledger
        throughput = None
        if len(self._rates) >= 2 and self._rates[-1][0] > self._rates[0][0]:
            throughput = (self._rates[-1][1] - self._rates[0][1]) / (self._rates[-1][0] - self._rates[0][0])
        status = PipelineStatus(
            state=self._state(), stages=self._stage_rows(),
            frames=Frames(sent=ledger.sent, completed=ledger.completed, failed=ledger.failed,
                          in_flight=ledger.in_flight, lost=ledger.lost),
            failures=dict(ledger.reasons), endpoints=self.endpoints(), outputs=self._output_rows(),
            accuracy_measured=ledger.accuracy_percent, sinks=self._sink_rows(),
            throughput_per_s=throughput, held_messages=self.held, shed=self.shed)
        return status.model_dump()

    def distribution(self, series: str) -> dict:
        """A distribution over every actor that reports it (``latency``: the sources' end-to-end
        latencies; ``hop``: every sender's per-call overhead), from their latest reports, the dead
        ones' included (a sketch is cumulative)."""
        return Sketch.merge(a.report.get(series) for a in self.actors.values())

    def summary(self) -> RunSummary:
        ledger = self.ledger
        plan = self.plan
        started = self.started_at or time.time()
        end = self.last_result_at or time.time()
        duration = (self.stopped_at or time.time()) - started
        first = self.first_result_at or started
        if ledger.completed > 1 and end > first:
            served = (ledger.completed - 1) / (end - first)
        else:
            served = ledger.completed / max(1e-9, end - started)
        latencies, hops = self.distribution("latency"), self.distribution("hop")
        return RunSummary(
            workflow=plan.workflow, duration_s=duration,
            predicted=Predicted(throughput_per_s=self.deployment.planned_frames_per_s, accuracy=plan.accuracy,
                                latency_ms_p50=plan.latency_ms_expected, cost_per_hour=plan.cost.total_per_hour if plan.cost else None),
            measured=Measured(throughput_per_s=served,
                              accuracy=ledger.accuracy_percent,
                              latency_ms_p50=Sketch.quantile(latencies, 50),
                              latency_ms_p99=Sketch.quantile(latencies, 99),
                              hop_overhead_ms_p50=Sketch.quantile(hops, 50), hop_overhead_ms_p99=Sketch.quantile(hops, 99)),
            frames=Frames(sent=ledger.sent, completed=ledger.completed, failed=ledger.failed,
                          in_flight=ledger.in_flight, lost=ledger.lost),
            failures=dict(ledger.reasons), sinks=self._sink_rows(), stages=self._stage_rows(),
            endpoints=self.endpoints(), outputs=self._output_rows(),
            time_to_first_result_s=(self.first_result_at - started) if self.first_result_at else None,
            first_result_at_unix=self.first_result_at, cpu_pinning=self._pinning_report(),
            plan=plan.model_dump(mode="json", by_alias=True))


def local_cpus() -> int:
    return os.cpu_count() or 1
