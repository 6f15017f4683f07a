"""Jellybean's Prometheus metrics: the one home of their names, labels, units and buckets.

Channel. The data plane's driver already sees every batch come back from its replica (the reply
carries how long each stage's model took and how many requests and batches it ran), every message it
routes, every queue and every frame's end. So the replicas report *through their replies* and the
driver's process exports everything on one ``/metrics`` endpoint (``jellybean run --metrics-port``,
``jellybean up --metrics-port``). We chose this over Ray's metrics export because that path needs
Ray's dashboard agent on every node and a scrape per node (with Ray's own names and labels), while
this one is exact (counted where frames are accounted), costs a few dictionary updates per batch,
and works identically on an embedded Ray and a cluster.

Conventions (https://prometheus.io/docs/practices/naming/): base units in names (``_seconds``,
``_bytes``, ``_ratio`` for 0..1, ``_percent`` where the zoo's unit is percent), counters end in
``_total``. Labels, where they apply: ``workflow``, ``stage``, ``variant``, ``site``, ``tier``,
``instance`` (an instance group's name and index, ``hub-cpu-0``). Every metric lives in a
:class:`Metrics` object's own registry, so several pipelines (or tests) never collide.

The dashboards (:mod:`jellybean.runtime.dashboards`) query these names; the live test runs every
panel's query against a real Prometheus scraping a running workflow.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from jellybean.runtime.flow import LATENCY_BOUNDS_MS

#: Labels of a stage's replica (its placement).
STAGE_LABELS = ("workflow", "stage", "variant", "site", "tier", "instance")

LATENCY_BUCKETS_S = tuple(ms / 1000.0 for ms in LATENCY_BOUNDS_MS)


def observe_counts(child: Histogram, counts: list[float], total: float) -> None:
    """Add to one histogram series what many observations added: ``counts[i]`` of them in bucket
    ``i`` (its buckets, then +Inf) summing to ``total``. prometheus_client observes one value at a
    time; the actors report their distributions already bucketed (their sketches), so this adds to
    the series' buckets and sum directly (its ``_buckets`` and ``_sum``, which ``observe`` itself
    increments; a test compares the two ways)."""
    buckets = child._buckets
    if len(counts) != len(buckets):
        raise ValueError(f"{len(counts)} bucket counts for a histogram of {len(buckets)} buckets")
    for bucket, n in zip(buckets, counts):
        if n:
            bucket.inc(n)
    child._sum.inc(total)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SOLVE_BUCKETS_S = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)


class Metrics:
    """Every metric Jellybean exports, registered in ``self.registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry

        # --- frames, end to end -------------------------------------------------------------------
        self.frames_sent = Counter(
            "jellybean_frames_sent_total", "Frames the sources sent into the workflow.",
            ("workflow", "source", "site", "tier"), registry=r)
        self.frames_completed = Counter(
            "jellybean_frames_completed_total", "Frames that reached the sink with a result.",
            ("workflow",), registry=r)
        self.frames_correct = Counter(
            "jellybean_frames_correct_total", "Completed frames whose result matched the ground truth.",
            ("workflow",), registry=r)
        self.frames_failed = Counter(
            "jellybean_frames_failed_total", "Frames that ended as a recorded failure.",
            ("workflow",), registry=r)
        self.frames_shed = Counter(
            "jellybean_frames_shed_total", "Frames a source dropped because the workflow could not take them "
            "(overload); each is also counted failed, with its reason.", ("workflow", "source", "site", "tier"),
            registry=r)
        self.held_messages = Gauge(
            "jellybean_held_messages", "Messages waiting for a replica of their stage (a re-plan under way).",
            ("workflow",), registry=r)
        self.frames_in_flight = Gauge(
            "jellybean_frames_in_flight", "Frames sent and not yet completed or failed.",
            ("workflow",), registry=r)
        self.sink_frames = Counter(
            "jellybean_sink_frames_total", "Frames a sink ended, by outcome: completed (its result, or none to give) "
            "or failed (with a reason); a frame that reaches several sinks ends at each.",
            ("workflow", "sink", "outcome"), registry=r)
        self.sink_frames_correct = Counter(
            "jellybean_sink_frames_correct_total", "Frames whose result at a sink matched the ground truth.",
            ("workflow", "sink"), registry=r)
        self.end_to_end_latency = Histogram(
            "jellybean_end_to_end_latency_seconds", "From a frame leaving its source to its result at the sink.",
            ("workflow",), buckets=LATENCY_BUCKETS_S, registry=r)

        # --- stages ------------------------------------------------------------------------------------
        self.stage_requests = Counter(
            "jellybean_stage_requests_total", "Requests (messages) a stage's replica took in.",
            STAGE_LABELS, registry=r)
        self.stage_outputs = Counter(
            "jellybean_stage_outputs_total", "Messages a stage's replica produced (fan-out included).",
            STAGE_LABELS, registry=r)
        self.stage_failed = Counter(
            "jellybean_stage_failed_total", "Requests that failed on a stage's replica (each try counts).",
            STAGE_LABELS, registry=r)
        self.stage_dropped = Counter(
            "jellybean_stage_dropped_total", "Requests a stage gave up on: no replica could take them, or "
            "they ran out of retries.", ("workflow", "stage"), registry=r)
        self.processing_seconds = Histogram(
            "jellybean_stage_processing_seconds", "Time a stage's model took for one batch, measured in the replica.",
            STAGE_LABELS, buckets=LATENCY_BUCKETS_S, registry=r)
        self.hop_overhead_seconds = Histogram(
            "jellybean_hop_overhead_seconds", "A batch call's round trip minus the replica's model time.",
            STAGE_LABELS, buckets=LATENCY_BUCKETS_S, registry=r)
        self.batch_size = Histogram(
            "jellybean_stage_batch_size", "Requests per batch a stage's model ran.",
            STAGE_LABELS, buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge(
            "jellybean_queue_depth", "Requests waiting in a replica's queue.", STAGE_LABELS, registry=r)
        self.queue_capacity = Gauge(
            "jellybean_queue_capacity", "Requests a replica's queue holds before backpressure.",
            STAGE_LABELS, registry=r)
        self.planned_rate = Gauge(
            "jellybean_stage_planned_requests_per_second", "Requests per second the plan gives a stage's replica.",
            STAGE_LABELS, registry=r)
        self.replicas = Gauge(
            "jellybean_stage_replicas", "Replicas of a stage at a site, by state (planned, alive).",
            ("workflow", "stage", "site", "tier", "state"), registry=r)

        # --- instances and links -----------------------------------------------------------------
        self.instance_busy_seconds = Counter(
            "jellybean_instance_busy_seconds_total", "Seconds an instance's models were busy (its replicas summed).",
            ("workflow", "site", "tier", "instance"), registry=r)
        self.instance_cpus = Gauge(
            "jellybean_instance_cpus", "CPU cores of an instance in use.", ("workflow", "site", "tier", "instance"),
            registry=r)
        self.instance_planned_utilization = Gauge(
            "jellybean_instance_planned_utilization_ratio", "Busy fraction the plan expects of an instance.",
            ("workflow", "site", "tier", "instance"), registry=r)
        self.link_bytes = Counter(
            "jellybean_link_bytes_total", "Bytes sent over a site's uplink, by direction: the serialised batches "
            "the actors sent to sites across the link, with the data transport's framing and TCP/IP headers "
            "(counted by the senders).",
            ("workflow", "site", "tier", "direction"), registry=r)
        self.link_messages = Counter(
            "jellybean_link_messages_total", "Messages sent over a site's uplink, by direction.",
            ("workflow", "site", "tier", "direction"), registry=r)
        self.link_up = Gauge(
            "jellybean_link_up", "1 while a site's uplink carries traffic, 0 while it is cut.",
            ("workflow", "site", "tier"), registry=r)
        self.link_buffered_messages = Gauge(
            "jellybean_link_buffered_messages", "Messages waiting for a cut uplink to return (bounded).",
            ("workflow", "site", "tier"), registry=r)
        self.link_planned_bytes_per_second = Gauge(
            "jellybean_link_planned_bytes_per_second", "Bytes per second the plan puts on a site's uplink.",
            ("workflow", "site", "tier", "direction"), registry=r)
        self.link_capacity_bytes_per_second = Gauge(
            "jellybean_link_capacity_bytes_per_second", "A site uplink's bandwidth, by direction.",
            ("workflow", "site", "tier", "direction"), registry=r)

        # --- outputs ------------------------------------------------------------------------------------
        self.output_results = Counter(
            "jellybean_output_results_total", "Results at an output, by outcome: accepted (in the output's hands), "
            "delivered (a webhook's receiver answered 2xx), failed (given up after retries), dropped (refused or "
            "evicted unread).", ("workflow", "output", "site", "outcome"), registry=r)
        self.output_backlog = Gauge(
            "jellybean_output_backlog", "Results an output holds, not yet delivered.", ("workflow", "output", "site"),
            registry=r)

        # --- the plan ------------------------------------------------------------------------------
        self.plan_cost = Gauge(
            "jellybean_plan_cost_dollars_per_hour", "The current plan's cost, by tier and kind (compute, network).",
            ("workflow", "tier", "kind"), registry=r)
        self.accuracy_predicted = Gauge(
            "jellybean_accuracy_predicted_percent", "End-to-end accuracy the plan predicts (the zoo's unit).",
            ("workflow",), registry=r)
        self.accuracy_target = Gauge(
            "jellybean_accuracy_target_percent", "The workflow's accuracy SLO.", ("workflow",), registry=r)
        self.accuracy_measured = Gauge(
            "jellybean_accuracy_measured_percent", "Accuracy measured on completed frames since the deployment started.",
            ("workflow",), registry=r)
        self.sink_accuracy_predicted = Gauge(
            "jellybean_sink_accuracy_predicted_percent", "End-to-end accuracy the plan predicts at each sink.",
            ("workflow", "sink"), registry=r)
        self.sink_accuracy_target = Gauge(
            "jellybean_sink_accuracy_target_percent", "Each sink's accuracy SLO.", ("workflow", "sink"), registry=r)
        self.sink_accuracy_measured = Gauge(
            "jellybean_sink_accuracy_measured_percent", "Accuracy measured at each sink since the deployment started.",
            ("workflow", "sink"), registry=r)
        self.throughput_planned = Gauge(
            "jellybean_planned_frames_per_second", "Frames per second the sources send, as planned.",
            ("workflow",), registry=r)
        self.latency_predicted = Gauge(
            "jellybean_latency_predicted_seconds", "End-to-end latency the plan predicts.", ("workflow",), registry=r)
        self.latency_target = Gauge(
            "jellybean_latency_target_seconds", "The workflow's latency SLO (absent when it has none).",
            ("workflow",), registry=r)
        self.plan_changes = Counter(
            "jellybean_plan_changes_total", "Plans deployed for a workflow (the first one included).",
            ("workflow",), registry=r)
        self.solve_seconds = Histogram(
            "jellybean_plan_solve_seconds", "Time the planner took.", ("workflow",), buckets=SOLVE_BUCKETS_S,
            registry=r)
        self.replans = Counter(
            "jellybean_replans_total", "Re-plans of a running workflow, by reason (site-down, site-up, load, "
            "replica-lost).", ("workflow", "reason"), registry=r)
        self.sites_down = Gauge(
            "jellybean_sites_down", "Sites a running workflow currently plans without (their nodes are gone).",
            ("workflow",), registry=r)
        self.plan_gap = Gauge(
            "jellybean_plan_gap_ratio", "The current plan's proven optimality gap (0 = optimal).",
            ("workflow",), registry=r)
        self.plan_info = Gauge(
            "jellybean_plan_info", "1 for the current plan, labelled by its status and strategy.",
            ("workflow", "status", "strategy"), registry=r)

        # --- the controller ------------------------------------------------------------------------
        self.reconcile_seconds = Histogram(
            "jellybean_controller_reconcile_duration_seconds", "One pass of the controller's reconcile loop.",
            buckets=LATENCY_BUCKETS_S + (30.0, 60.0), registry=r)
        self.reconcile_errors = Counter(
            "jellybean_controller_reconcile_errors_total", "Actions of the reconcile loop that failed.",
            ("workflow",), registry=r)
        self.workflows = Gauge(
            "jellybean_controller_workflows", "Workflows the controller (or the operator) holds, by state: their "
            "phase, lower-cased (pending, planned, starting, running, updating, degraded, blocked, failed, "
            "terminating).", ("state",), registry=r)
        self.applies = Counter(
            "jellybean_controller_applies_total", "Document submissions, by outcome.", ("outcome",), registry=r)

    def forget_workflow(self, workflow: str) -> None:
        """Remove every series labelled ``workflow=<workflow>``: a deleted workflow leaves ``/metrics``
        (Prometheus then marks its series stale instead of repeating the last values)."""
        for metric in vars(self).values():
            if isinstance(metric, (Counter, Gauge, Histogram)):
                try:
                    metric.remove_by_labels({"workflow": workflow})
                except ValueError:  # no such label (or no labels)
                    continue


def bind(metrics: Metrics, port: int, host: str = "127.0.0.1") -> tuple[Any, int]:
    """A server for ``metrics`` on ``http://host:port/metrics``, bound but not yet serving (so that
    its socket exists before the process leaves the machine's network namespace:
    :mod:`jellybean.runtime.localray`); :func:`start` serves it. Returns the server and its port."""
    from wsgiref.simple_server import make_server

    from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler, make_wsgi_app

    server = make_server(host, port, make_wsgi_app(metrics.registry), ThreadingWSGIServer,
                         handler_class=_SilentHandler)
    return server, server.server_address[1]


def start(server) -> None:  # noqa: ANN001 - the server :func:`bind` made
    """Serve a bound metrics server from a daemon thread (``server.shutdown()`` stops it)."""
    import threading

    threading.Thread(target=server.serve_forever, name="jellybean-metrics", daemon=True).start()


def serve(metrics: Metrics, port: int, host: str = "127.0.0.1") -> tuple[Any, int]:
    """Expose ``metrics`` on ``http://host:port/metrics`` from a background thread; returns the server
    (``.shutdown()`` stops it) and the bound port (0 picks a free one)."""
    server, bound = bind(metrics, port, host)
    start(server)
    return server, bound
