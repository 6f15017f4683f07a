"""What one deployed pipeline tells Prometheus (the metrics themselves: :mod:`jellybean.runtime.metrics`).

The driver's event loop calls these hooks: per batch (a reply from a replica carries, per stage of
its chain, requests, batches, outputs and each batch's size and model time), per frame at the sink,
and per message only to add to plain counters that a periodic flush hands to Prometheus (a message
costs a dictionary update, not a locked metric update). Gauges that describe the moment (queue depth,
frames in flight, replicas alive, measured accuracy) are read when Prometheus scrapes.

Bytes per link: a message routed from site ``a`` to a replica at site ``b`` crosses the uplinks on
the tree path between them (up from ``a`` to their lowest common ancestor, then down to ``b``), each
counted with the message's declared size: the source's ``payload_kb`` for frames, the producing
variant's ``output_kb`` for stage outputs (1 KB = 1024 bytes, as the planner counts). These are the
sizes the plan priced, so measured and planned bytes compare like for like.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from jellybean.runtime.metrics import Metrics
from jellybean.runtime.routing import uplinks_between

if TYPE_CHECKING:
    from jellybean.runtime.dataplane import Pipeline, ReplicaSpec, _Replica

KB = 1024.0


class Telemetry:
    def __init__(self, pipeline: Pipeline, metrics: Metrics) -> None:
        self.pipeline = pipeline
        self.metrics = metrics
        bundle = pipeline.bundle
        self.workflow = bundle.workflow.metadata.name
        sites = bundle.topology.spec.sites
        self.tier = {s.name: str(getattr(s.tier, "value", s.tier)) for s in sites}
        self.parent = {s.name: s.parent for s in sites}
        stage_task = {s.name: s.task for s in bundle.workflow.spec.stages}
        zoo = bundle.zoo.spec
        self.output_bytes: dict[str, float] = {}
        for spec in pipeline.specs:
            variant = zoo.task(stage_task[spec.stage]).variant(spec.variant)
            self.output_bytes[spec.stage] = float(variant.output_kb) * KB
        self.source_bytes = {s.name: float(s.payload_kb) * KB for s in bundle.workflow.spec.sources}
        self._paths: dict[tuple[str, str], list[tuple[str, str]]] = {}
        self._links: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])  # messages, bytes
        self._sent: dict[tuple[str, str], int] = defaultdict(int)

    # --- labels ------------------------------------------------------------------------------------
    def labels(self, spec: ReplicaSpec) -> tuple[str, ...]:
        return (self.workflow, spec.stage, spec.variant, spec.site, spec.tier, spec.instance_label)

    def instance_labels(self, spec: ReplicaSpec) -> tuple[str, ...]:
        return (self.workflow, spec.site, spec.tier, spec.instance_label)

    def path(self, origin: str, destination: str) -> list[tuple[str, str]]:
        """The uplinks (child site, direction) a message from ``origin`` to ``destination`` crosses."""
        key = (origin, destination)
        found = self._paths.get(key)
        if found is None:
            found = self._paths[key] = uplinks_between(self.parent, origin, destination)
        return found

    # --- start / stop ------------------------------------------------------------------------------------
    def started(self) -> None:
        """Describe the plan and hook the gauges read at scrape time (queues exist by now)."""
        m, pipeline, plan, wf = self.metrics, self.pipeline, self.pipeline.plan, self.workflow
        for replica in pipeline.replicas.values():
            for spec in replica.chain:
                labels = self.labels(spec)
                m.planned_rate.labels(*labels).set(spec.weight)
                for metric in (m.stage_requests, m.stage_outputs, m.stage_failed):
                    metric.labels(*labels)  # present from the start, at zero
            head = self.labels(replica.spec)
            queue = replica.queue
            m.queue_depth.labels(*head).set_function(lambda q=queue: q.qsize() if q is not None else 0)
            m.queue_capacity.labels(*head).set(queue.maxsize if queue is not None else 0)
        instances: dict[tuple, list[ReplicaSpec]] = defaultdict(list)
        for spec in pipeline.specs:
            instances[self.instance_labels(spec)].append(spec)
        for labels, specs in instances.items():
            m.instance_cpus.labels(*labels).set(specs[0].instance_cpus)
            m.instance_planned_utilization.labels(*labels).set(sum(s.utilization for s in specs))
            m.instance_busy_seconds.labels(*labels)
        groups: dict[tuple, list[str]] = defaultdict(list)
        for key, replica in pipeline.replicas.items():
            for spec in replica.chain:
                groups[(spec.stage, spec.site, spec.tier)].append(key)
        for (stage, site, tier), keys in groups.items():
            m.replicas.labels(wf, stage, site, tier, "planned").set(len(keys))
            m.replicas.labels(wf, stage, site, tier, "alive").set_function(
                lambda keys=keys: sum(pipeline.replicas[k].alive for k in keys))
            m.stage_dropped.labels(wf, stage)
        for source in pipeline.bundle.workflow.spec.sources:
            for site in source.sites:
                m.frames_sent.labels(wf, source.name, site, self.tier.get(site, ""))
        ledger = pipeline.ledger
        for metric in (m.frames_completed, m.frames_correct, m.frames_failed):
            metric.labels(wf)
        m.frames_in_flight.labels(wf).set_function(lambda: ledger.in_flight)
        m.held_messages.labels(wf).set_function(lambda: len(pipeline.held))
        for source in pipeline.bundle.workflow.spec.sources:
            for site in source.sites:
                m.frames_shed.labels(wf, source.name, site, self.tier.get(site, ""))
        m.accuracy_measured.labels(wf).set_function(
            lambda: 100.0 * ledger.correct / ledger.completed if ledger.completed else float("nan"))
        self._describe_links()
        self._describe_plan()

    def _describe_links(self) -> None:
        m, wf = self.metrics, self.workflow
        topology = {s.name: s for s in self.pipeline.bundle.topology.spec.sites}
        for site in topology.values():
            if site.parent is None or site.uplink is None:
                continue
            for direction in ("up", "down"):
                link = getattr(site.uplink, direction)
                labels = (wf, site.name, self.tier[site.name], direction)
                if link.bandwidth_mbps is not None:  # unlimited links have no capacity series
                    m.link_capacity_bytes_per_second.labels(*labels).set(link.bandwidth_mbps * 1e6 / 8.0)
                m.link_planned_bytes_per_second.labels(*labels).set(0.0)
                m.link_bytes.labels(*labels)
                m.link_messages.labels(*labels)
            pipeline = self.pipeline
            m.link_up.labels(wf, site.name, self.tier[site.name]).set_function(
                lambda name=site.name: 0.0 if name in pipeline.links_down else 1.0)
            m.link_buffered_messages.labels(wf, site.name, self.tier[site.name]).set_function(
                lambda name=site.name: len(pipeline.link_buffers.get(name, ())))
        for flow in self.pipeline.plan.links:
            child = flow.from_ if flow.direction == "up" else flow.to
            for site in flow.sites or [child]:
                m.link_planned_bytes_per_second.labels(wf, site, self.tier.get(site, flow.tier), flow.direction).set(
                    flow.mbps * 1e6 / 8.0)

    def _describe_plan(self) -> None:
        m, wf, plan = self.metrics, self.workflow, self.pipeline.plan
        workflow = self.pipeline.bundle.workflow.spec
        if plan.cost is not None:
            for tier, cost in plan.cost.by_tier.items():
                m.plan_cost.labels(wf, tier, "compute").set(cost.compute_per_hour)
                m.plan_cost.labels(wf, tier, "network").set(cost.network_per_hour)
        if plan.accuracy is not None:
            m.accuracy_predicted.labels(wf).set(plan.accuracy)
        m.accuracy_target.labels(wf).set(plan.accuracy_target)
        m.throughput_planned.labels(wf).set(sum(s.rate_per_s * s.count_per_site * len(s.sites)
                                                for s in workflow.sources))
        if plan.latency_ms is not None:
            m.latency_predicted.labels(wf).set(plan.latency_ms / 1000.0)
        if workflow.slo.latency_ms is not None:
            m.latency_target.labels(wf).set(workflow.slo.latency_ms / 1000.0)
        m.plan_changes.labels(wf).inc()
        m.solve_seconds.labels(wf).observe(plan.solver.seconds)
        if plan.solver.gap is not None:
            m.plan_gap.labels(wf).set(plan.solver.gap)
        for sample in list(m.plan_info.collect()[0].samples):
            if sample.labels.get("workflow") == wf:
                m.plan_info.remove(wf, sample.labels["status"], sample.labels["strategy"])
        m.plan_info.labels(wf, plan.solver.status, plan.strategy).set(1)

    def stopped(self) -> None:
        """Final flush; the moment's gauges keep their last value (the pipeline is gone)."""
        self.flush()
        m, ledger, wf = self.metrics, self.pipeline.ledger, self.workflow
        m.frames_in_flight.labels(wf).set(0)
        if ledger.completed:
            m.accuracy_measured.labels(wf).set(100.0 * ledger.correct / ledger.completed)
        for replica in self.pipeline.replicas.values():
            m.queue_depth.labels(*self.labels(replica.spec)).set(0)

    # --- hot path ------------------------------------------------------------------------------------
    def frame_sent(self, source: str, site: str) -> None:
        self._sent[(source, site)] += 1

    def frame_shed(self, source: str, site: str) -> None:
        self.metrics.frames_shed.labels(self.workflow, source, site, self.tier.get(site, "")).inc()

    def replanned(self, reason: str, sites_down: int) -> None:
        self.metrics.replans.labels(self.workflow, reason).inc()
        self.metrics.sites_down.labels(self.workflow).set(sites_down)

    def routed(self, origin: str, destination: str, size_bytes: float) -> None:
        if origin == destination:
            return
        for link in self.path(origin, destination):
            counts = self._links[link]
            counts[0] += 1
            counts[1] += size_bytes

    def flush(self) -> None:
        """Hand the per-message counts to Prometheus (called periodically from the driver's loop)."""
        m, wf = self.metrics, self.workflow
        sent, self._sent = self._sent, defaultdict(int)
        for (source, site), n in sent.items():
            m.frames_sent.labels(wf, source, site, self.tier.get(site, "")).inc(n)
        links, self._links = self._links, defaultdict(lambda: [0, 0.0])
        for (site, direction), (messages, size) in links.items():
            labels = (wf, site, self.tier.get(site, ""), direction)
            m.link_messages.labels(*labels).inc(messages)
            m.link_bytes.labels(*labels).inc(size)

    def batch_done(self, replica: _Replica, report: list, model_ms: float, overhead_ms: float) -> None:
        m = self.metrics
        m.hop_overhead_seconds.labels(*self.labels(replica.spec)).observe(overhead_ms / 1000.0)
        m.instance_busy_seconds.labels(*self.instance_labels(replica.spec)).inc(model_ms / 1000.0)
        for spec, (requests, _batches, outputs, timings) in zip(replica.chain, report):
            labels = self.labels(spec)
            m.stage_requests.labels(*labels).inc(requests)
            m.stage_outputs.labels(*labels).inc(outputs)
            processing, batch = m.processing_seconds.labels(*labels), m.batch_size.labels(*labels)
            for size, ms in timings:
                processing.observe(ms / 1000.0)
                batch.observe(size)

    def batch_failed(self, replica: _Replica, requests: int) -> None:
        self.metrics.stage_failed.labels(*self.labels(replica.spec)).inc(requests)

    def dropped(self, stage: str, requests: int = 1) -> None:
        self.metrics.stage_dropped.labels(self.workflow, stage).inc(requests)

    def frame_completed(self, correct: bool, latency_ms: float) -> None:
        m, wf = self.metrics, self.workflow
        m.frames_completed.labels(wf).inc()
        if correct:
            m.frames_correct.labels(wf).inc()
        m.end_to_end_latency.labels(wf).observe(latency_ms / 1000.0)

    def frame_failed(self) -> None:
        self.metrics.frames_failed.labels(self.workflow).inc()
