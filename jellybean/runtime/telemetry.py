"""What one deployed pipeline tells Prometheus (the metrics themselves: :mod:`jellybean.runtime.metrics`).

The numbers come from the actors themselves: each replica, source and output keeps its own counters
and distributions (:class:`~jellybean.runtime.flow.Sketch`: constant size, whatever the traffic),
all cumulative, and the data plane's control side reads their reports every half second
(:meth:`jellybean.runtime.dataplane.Pipeline.poll`) and hands them here, so metrics keep working with
no process on the data path. Counters and histogram buckets move by the difference between two
reports of one actor.

Bytes per link: each actor counts the bytes it sent to each site (the serialised batches, as they
were handed to the transport) and this maps them onto the uplinks on the tree path between the
actor's site and that site (up from the sender to their lowest common ancestor, then down). The
plan's own figures (``jellybean_link_planned_bytes_per_second``) are priced from the documents'
message sizes; both are there to compare.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from jellybean.runtime.deployment import Deployment, ReplicaSpec
from jellybean.runtime.metrics import BATCH_BUCKETS, Metrics, observe_counts

if TYPE_CHECKING:
    from jellybean.optimizer.plan import Plan


class Telemetry:
    def __init__(self, deployment: Deployment, plan: Plan, metrics: Metrics) -> None:
        self.deployment = deployment
        self.plan = plan
        self.metrics = metrics
        self.workflow = deployment.workflow
        self._last: dict[tuple[str, str], float] = defaultdict(float)  # (actor, counter) -> last cumulative value
        self._paths: dict[tuple[str, str], list[tuple[str, str]]] = {}

    # --- labels ------------------------------------------------------------------------------------
    def labels(self, spec: ReplicaSpec) -> tuple[str, ...]:
        return (self.workflow, spec.stage, spec.variant, spec.site, spec.tier, spec.instance_label)

    def instance_labels(self, spec: ReplicaSpec) -> tuple[str, ...]:
        return (self.workflow, spec.site, spec.tier, spec.instance_label)

    def path(self, origin: str, destination: str) -> list[tuple[str, str]]:
        key = (origin, destination)
        found = self._paths.get(key)
        if found is None:
            found = self._paths[key] = self.deployment.path(origin, destination)
        return found

    def _delta(self, actor: str, counter: str, value: float) -> float:
        key = (actor, counter)
        delta = value - self._last[key]
        self._last[key] = value
        return max(0.0, delta)

    def _histogram(self, child: Any, actor: str, series: str, state: dict | None, scale: float = 1.0) -> None:
        """Move a histogram by what a sketch's state gained since the actor's last report (its exact
        per-bucket counts; ``scale`` converts its unit, ms, to the metric's, seconds)."""
        if not state:
            return
        counts = [self._delta(actor, f"{series}:{i}", n) for i, n in enumerate(state["coarse"])]
        observe_counts(child, counts, self._delta(actor, f"{series}:sum", state["sum"]) * scale)

    def _batch_sizes(self, child: Any, actor: str, series: str, sizes: dict) -> None:
        deltas: dict[int, float] = {}
        for size, n in sizes.items():
            delta = self._delta(actor, f"{series}:{size}", n)
            if delta:
                deltas[int(size)] = delta
        if deltas:
            bounds = BATCH_BUCKETS
            counts = [0.0] * (len(bounds) + 1)
            for size, n in deltas.items():
                counts[bisect.bisect_left(bounds, size)] += n
            observe_counts(child, counts, float(sum(size * n for size, n in deltas.items())))

    # --- the plan, when it is deployed or replaced ----------------------------------------------------------
    def started(self, pipeline: Any) -> None:
        m, d, wf = self.metrics, self.deployment, self.workflow
        for replica in d.replicas:
            for spec in replica.chain:
                labels = self.labels(spec)
                m.planned_rate.labels(*labels).set(spec.weight)
                for metric in (m.stage_requests, m.stage_outputs, m.stage_failed):
                    metric.labels(*labels)
            m.queue_capacity.labels(*self.labels(replica.head)).set(0)
            m.queue_depth.labels(*self.labels(replica.head)).set(0)
        instances: dict[tuple, list[ReplicaSpec]] = defaultdict(list)
        for spec in d.specs:
            instances[self.instance_labels(spec)].append(spec)
        for labels, specs in instances.items():
            m.instance_cpus.labels(*labels).set(specs[0].instance_cpus)
            m.instance_planned_utilization.labels(*labels).set(sum(s.utilization for s in specs))
            m.instance_busy_seconds.labels(*labels)
        groups: dict[tuple, int] = defaultdict(int)
        for spec in d.specs:
            groups[(spec.stage, spec.site, spec.tier)] += 1
        for (stage, site, tier), count in groups.items():
            m.replicas.labels(wf, stage, site, tier, "planned").set(count)
            m.replicas.labels(wf, stage, site, tier, "alive").set(count)
            m.stage_dropped.labels(wf, stage)
        for source in d.sources:
            m.frames_sent.labels(wf, source.source, source.site, source.tier)
            m.frames_shed.labels(wf, source.source, source.site, source.tier)
        for metric in (m.frames_completed, m.frames_correct, m.frames_failed):
            metric.labels(wf)
        for sink in d.sinks:
            for outcome in ("completed", "failed"):
                m.sink_frames.labels(wf, sink, outcome)
            m.sink_frames_correct.labels(wf, sink)
        m.frames_in_flight.labels(wf).set(0)
        m.held_messages.labels(wf).set(0)
        for output in d.outputs:
            for outcome in ("accepted", "delivered", "failed", "dropped"):
                m.output_results.labels(wf, output.name, output.site, outcome)
            m.output_backlog.labels(wf, output.name, output.site).set(0)
        self._describe_links(pipeline)
        self._describe_plan()

    def replace(self, deployment: Deployment, plan: Plan, pipeline: Any) -> None:
        """A re-plan: the new deployment's series (old series keep their last values)."""
        self.deployment, self.plan = deployment, plan
        self._paths = {}
        self.started(pipeline)

    def _describe_links(self, pipeline: Any) -> None:
        m, wf, d = self.metrics, self.workflow, self.deployment
        topology = {s.name: s for s in pipeline.bundle.topology.spec.sites}
        for site in topology.values():
            if site.parent is None or site.uplink is None:
                continue
            tier = d.tiers[site.name]
            for direction in ("up", "down"):
                link = getattr(site.uplink, direction)
                labels = (wf, site.name, tier, direction)
                if link.bandwidth_mbps is not None:
                    m.link_capacity_bytes_per_second.labels(*labels).set(link.bandwidth_mbps * 1e6 / 8.0)
                m.link_planned_bytes_per_second.labels(*labels).set(d.planned_link_bytes_per_s.get((site.name, direction),
                                                                                                   0.0))
                m.link_bytes.labels(*labels)
                m.link_messages.labels(*labels)
            m.link_up.labels(wf, site.name, tier).set(0.0 if site.name in pipeline.links_down else 1.0)
            m.link_buffered_messages.labels(wf, site.name, tier).set(0)

    def _describe_plan(self) -> None:
        m, wf, plan, d = self.metrics, self.workflow, self.plan, self.deployment
        if plan.cost is not None:
            for tier, cost in plan.cost.by_tier.items():
                m.plan_cost.labels(wf, tier, "compute").set(cost.compute_per_hour)
                m.plan_cost.labels(wf, tier, "network").set(cost.network_per_hour)
        if plan.accuracy is not None:
            m.accuracy_predicted.labels(wf).set(plan.accuracy)
        m.accuracy_target.labels(wf).set(plan.accuracy_target)
        for sink in plan.sinks:
            m.sink_accuracy_target.labels(wf, sink.stage).set(sink.accuracy_target)
            if sink.accuracy is not None:
                m.sink_accuracy_predicted.labels(wf, sink.stage).set(sink.accuracy)
        m.throughput_planned.labels(wf).set(d.planned_frames_per_s)
        if plan.latency_ms is not None:
            m.latency_predicted.labels(wf).set(plan.latency_ms / 1000.0)
        if plan.latency_bound_ms is not None:
            m.latency_target.labels(wf).set(plan.latency_bound_ms / 1000.0)
        m.plan_changes.labels(wf).inc()
        m.solve_seconds.labels(wf).observe(plan.solver.seconds)
        if plan.solver.gap is not None:
            m.plan_gap.labels(wf).set(plan.solver.gap)
        for sample in list(m.plan_info.collect()[0].samples):
            if sample.labels.get("workflow") == wf:
                m.plan_info.remove(wf, sample.labels["status"], sample.labels["strategy"])
        m.plan_info.labels(wf, plan.solver.status, plan.strategy).set(1)

    # --- every poll ---------------------------------------------------------------------------------------
    def update(self, pipeline: Any, reports: list[dict]) -> None:
        m, wf, d = self.metrics, self.workflow, self.deployment
        site_of = {a.key: a.site for a in pipeline.actors.values()}
        held = 0
        buffered: dict[str, int] = defaultdict(int)
        for report in reports:
            key, kind = report.get("key", ""), report.get("kind")
            site = site_of.get(key)
            held += report.get("held", 0)
            if site is not None:
                for destination, size in report.get("link_bytes", {}).items():
                    delta = self._delta(key, f"bytes:{destination}", size)
                    messages = self._delta(key, f"messages:{destination}", report["link_messages"].get(destination, 0))
                    for link, direction in self.path(site, destination):
                        labels = (wf, link, d.tiers.get(link, ""), direction)
                        m.link_bytes.labels(*labels).inc(delta)
                        m.link_messages.labels(*labels).inc(messages)
                for link, n in report.get("link_buffered", {}).items():
                    buffered[link] += n
            if kind == "replica":
                self._replica(pipeline, key, report)
            elif kind == "source":
                self._source(key, report)
            elif kind == "output":
                labels = (wf, report["output"], report["site"])
                for outcome in ("accepted", "delivered", "failed", "dropped"):
                    if report.get(outcome) is not None:
                        m.output_results.labels(*labels, outcome).inc(self._delta(key, outcome, report[outcome]))
                m.output_backlog.labels(*labels).set(report.get("backlog", 0))
        ledger = pipeline.ledger
        m.frames_in_flight.labels(wf).set(ledger.in_flight)
        m.held_messages.labels(wf).set(held)
        if ledger.accuracy_percent is not None:
            m.accuracy_measured.labels(wf).set(ledger.accuracy_percent)
        for sink, view in pipeline.sink_ledgers.items():
            if view.accuracy_percent is not None:
                m.sink_accuracy_measured.labels(wf, sink).set(view.accuracy_percent)
        for site, tier in d.tiers.items():
            if d.parent.get(site) is not None:
                m.link_up.labels(wf, site, tier).set(0.0 if site in pipeline.links_down else 1.0)
                m.link_buffered_messages.labels(wf, site, tier).set(buffered.get(site, 0))
        alive: dict[tuple, int] = defaultdict(int)
        for actor in pipeline.replicas.values():
            for spec in actor.plan.chain:
                alive[(spec.stage, spec.site, spec.tier)] += actor.state.value == "running"
        for (stage, site, tier), count in alive.items():
            m.replicas.labels(wf, stage, site, tier, "alive").set(count)

    def _replica(self, pipeline: Any, key: str, report: dict) -> None:
        m = self.metrics
        actor = pipeline.actors.get(key)
        if actor is None:
            return
        busy = 0.0
        for spec in actor.plan.chain:
            counts = report.get("stages", {}).get(spec.stage, {})
            labels = self.labels(spec)
            m.stage_requests.labels(*labels).inc(self._delta(key, f"requests:{spec.stage}", counts.get("requests", 0)))
            m.stage_outputs.labels(*labels).inc(self._delta(key, f"outputs:{spec.stage}", counts.get("outputs", 0)))
            m.stage_failed.labels(*labels).inc(self._delta(key, f"failed:{spec.stage}", counts.get("failed", 0)))
            busy += self._delta(key, f"busy:{spec.stage}", counts.get("busy_ms", 0.0))
            self._histogram(m.processing_seconds.labels(*labels), key, f"processing:{spec.stage}",
                            counts.get("processing_ms"), 1e-3)
            self._batch_sizes(m.batch_size.labels(*labels), key, f"batch:{spec.stage}", counts.get("batch_sizes", {}))
        head = self.labels(actor.plan.head)
        m.instance_busy_seconds.labels(*self.instance_labels(actor.plan.head)).inc(busy / 1000.0)
        m.queue_depth.labels(*head).set(report.get("queue_depth", 0))
        m.queue_capacity.labels(*head).set(report.get("queue_capacity", 0))
        self._histogram(m.hop_overhead_seconds.labels(*head), key, "hop", report.get("hop"), 1e-3)
        unroutable = self._delta(key, "unroutable", report.get("unroutable", 0))
        if unroutable:
            for stage in self.deployment.consumers.get(actor.plan.tail.stage, ()):
                m.stage_dropped.labels(self.workflow, stage).inc(unroutable)

    def _source(self, key: str, report: dict) -> None:
        m, wf = self.metrics, self.workflow
        site, source = report["site"], report["source"]
        tier = self.deployment.tiers.get(site, "")
        m.frames_sent.labels(wf, source, site, tier).inc(self._delta(key, "sent", report.get("sent", 0)))
        m.frames_shed.labels(wf, source, site, tier).inc(self._delta(key, "shed", report.get("shed", 0)))
        m.frames_completed.labels(wf).inc(self._delta(key, "completed", report.get("completed", 0)))
        m.frames_correct.labels(wf).inc(self._delta(key, "correct", report.get("correct", 0)))
        m.frames_failed.labels(wf).inc(self._delta(key, "failed", report.get("failed", 0)))
        for sink, counts in report.get("sinks", {}).items():
            for outcome in ("completed", "failed"):
                m.sink_frames.labels(wf, sink, outcome).inc(self._delta(key, f"{outcome}@{sink}", counts.get(outcome, 0)))
            m.sink_frames_correct.labels(wf, sink).inc(self._delta(key, f"correct@{sink}", counts.get("correct", 0)))
        self._histogram(m.end_to_end_latency.labels(wf), key, "latency", report.get("latency"), 1e-3)

    def replanned(self, reason: str, sites_down: int) -> None:
        self.metrics.replans.labels(self.workflow, reason).inc()
        self.metrics.sites_down.labels(self.workflow).set(sites_down)

    def stopped(self, pipeline: Any) -> None:
        """The moment's gauges go to zero; counters keep their totals."""
        m, wf = self.metrics, self.workflow
        m.frames_in_flight.labels(wf).set(0)
        for replica in self.deployment.replicas:
            m.queue_depth.labels(*self.labels(replica.head)).set(0)
