"""Jellybean's Grafana dashboards, as code: small panel definitions and the JSON Grafana imports.

Four dashboards (``jellybean dashboards --out DIR`` writes them; ``helm/jellybean/dashboards/`` holds
the committed copies, kept equal to this module by a test):

- **Overview**: SLOs met, throughput, accuracy and end-to-end latency against the plan, cost by tier;
- **Stages**: per stage and site, traffic in and out against the plan, failures, latency, batches,
  queues, replicas, hop overhead, and the instances' utilisation against the plan;
- **Network**: bytes and messages on each site's uplink per direction against the plan and capacity;
- **Controller**: the reconcile loop, the planner (solve time, gap, the current plan), workflows by
  state, applies by outcome.

Every expression names only metrics of :mod:`jellybean.runtime.metrics` (a test checks it, and the
live test runs each one against a Prometheus scraping a running controller). Each dashboard has a
``datasource`` variable (any Prometheus), ``workflow`` and a multi-select ``site``; rates use
``$__rate_interval``.

Scrape Jellybean with ``honor_labels: true``: its metrics carry an ``instance`` label of their own
(an instance group's name and index, ``hub-cpu-0``) that Prometheus would otherwise rename to
``exported_instance``.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

SCHEMA_VERSION = 39
TAGS = ("jellybean",)
PANEL_TYPES = ("timeseries", "stat", "gauge", "bargauge", "table")
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRID_WIDTH = 24

#: Label filters of the template variables, for metrics with a ``workflow`` (and a ``site``) label.
WF = 'workflow="$workflow"'
WF_SITE = 'workflow="$workflow", site=~"$site"'
RATE = "[$__rate_interval]"

#: Grafana units.
FRAMES_PER_S = "suffix: frames/s"
PERCENT = "percent"
RATIO = "percentunit"
SECONDS = "s"
BYTES_PER_S = "Bps"
REQ_PER_S = "reqps"
DOLLARS_PER_HOUR = "currencyUSD"

SLO_MAPPINGS = ((0, "missed", "red"), (1, "met", "green"))
UTILISATION_THRESHOLDS = ((0.8, "orange"), (1.0, "red"))


@dataclass(frozen=True)
class Query:
    """One PromQL expression of a panel and its legend (Grafana's ``{{label}}`` format)."""

    expr: str
    legend: str = ""
    instant: bool = False  # one value at the end of the range (tables)


@dataclass(frozen=True)
class GridPos:
    x: int
    y: int
    w: int
    h: int


@dataclass(frozen=True)
class Panel:
    title: str
    queries: tuple[Query, ...]
    grid: GridPos
    unit: str = "short"
    type: str = "timeseries"
    description: str = ""
    min: float | None = None
    max: float | None = None
    mappings: tuple[tuple[int, str, str], ...] = ()  # value, text, colour
    thresholds: tuple[tuple[float, str], ...] = ()  # from value on, colour (green below the first)
    stack: bool = False

    def __post_init__(self) -> None:
        if self.type not in PANEL_TYPES:
            raise ValueError(f"panel {self.title!r}: type {self.type!r} is not one of {PANEL_TYPES}")
        if not self.queries:
            raise ValueError(f"panel {self.title!r} has no query")


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...]

    @property
    def file_name(self) -> str:
        return f"{self.uid}.json"


@dataclass
class Flow:
    """Places panels left to right, starting a new row where one does not fit (Grafana's 24 columns)."""

    x: int = 0
    y: int = 0
    row_height: int = 0

    def at(self, w: int, h: int) -> GridPos:
        if self.x + w > GRID_WIDTH:
            self.newline()
        pos = GridPos(self.x, self.y, w, h)
        self.x += w
        self.row_height = max(self.row_height, h)
        return pos

    def newline(self) -> None:
        self.x, self.y, self.row_height = 0, self.y + self.row_height, 0


# --- PromQL helpers --------------------------------------------------------------------------------


def sel(metric: str, labels: str = WF) -> str:
    """``metric{labels}`` (the bare name without labels)."""
    return f"{metric}{{{labels}}}" if labels else metric


def agg(inner: str, by: str = "", fn: str = "sum") -> str:
    """``fn by (by) (inner)``, or ``fn(inner)`` without ``by``."""
    return f"{fn} by ({by}) ({inner})" if by else f"{fn}({inner})"


def rate(metric: str, labels: str = WF, by: str = "") -> str:
    """``sum by (by) (rate(metric{labels}[$__rate_interval]))``."""
    return agg(f"rate({sel(metric, labels)}{RATE})", by)


def quantile(q: float, histogram: str, labels: str = WF, by: str = "") -> str:
    """The ``q`` quantile of a histogram over ``$__rate_interval``, per ``by``."""
    return f"histogram_quantile({q}, {rate(histogram + '_bucket', labels, f'{by}, le' if by else 'le')})"


def quantiles(histogram: str, labels: str, by: str, legend: str,
              qs: tuple[float, ...] = (0.5, 0.99)) -> tuple[Query, ...]:
    return tuple(Query(quantile(q, histogram, labels, by), f"{legend} p{round(q * 100)}".strip()) for q in qs)


def ratio_of_rates(numerator: str, denominator: str, labels: str = WF, by: str = "") -> str:
    return f"{rate(numerator, labels, by)} / {rate(denominator, labels, by)}"


def total(metric: str, labels: str = WF, by: str = "", fn: str = "sum") -> str:
    return agg(sel(metric, labels), by, fn)


def ratio_of_totals(numerator: str, denominator: str, labels: str = WF) -> str:
    return f"{total(numerator, labels)} / {total(denominator, labels)}"


def increase_in_range(metric: str, labels: str = WF, by: str = "") -> str:
    """How much a counter grew in the dashboard's time range."""
    return agg(f"increase({sel(metric, labels)}[$__range])", by)


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_METRIC = re.compile(r"\bjellybean_[A-Za-z0-9_]+")
_SELECTOR = re.compile(r"\b([A-Za-z_:][A-Za-z0-9_:]*)\s*[{\[]")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (Jellybean's all start ``jellybean_``); a selector of
    any other name is returned too, so that a check against the registry catches it."""
    code = _STRING.sub('""', expr)
    return set(_METRIC.findall(code)) | set(_SELECTOR.findall(code))


# --- the dashboards -------------------------------------------------------------------------------

_BUILDERS: list[Callable[[], Dashboard]] = []


def registered(uid: str, title: str, description: str) -> Callable[[Callable[[Flow], tuple[Panel, ...]]],
                                                                    Callable[[], Dashboard]]:
    """Registers a function that lays its panels out on a :class:`Flow` as the dashboard ``uid``."""

    def register(panels: Callable[[Flow], tuple[Panel, ...]]) -> Callable[[], Dashboard]:
        @functools.wraps(panels)
        def build() -> Dashboard:
            return Dashboard(uid, title, description, panels(Flow()))

        _BUILDERS.append(build)
        return build

    return register


def _slo_stat(title: str, expr: str, grid: GridPos, description: str) -> Panel:
    return Panel(title, (Query(expr, "met"),), grid, type="stat", description=description, mappings=SLO_MAPPINGS)


def _workflow_exists() -> str:
    """1 for the selected workflow while it has a plan (keeps its ``workflow`` label)."""
    return f"group by (workflow) ({sel('jellybean_planned_frames_per_second')})"


@registered("jellybean-overview", "Jellybean / Overview",
           "A workflow's SLOs, throughput, accuracy, latency and cost against its plan.")
def overview(f: Flow) -> tuple[Panel, ...]:
    completed = rate("jellybean_frames_completed_total")
    windowed_accuracy = "100 * " + ratio_of_rates("jellybean_frames_correct_total", "jellybean_frames_completed_total",
                                                  by="workflow")
    e2e = "jellybean_end_to_end_latency_seconds"
    p90_vs_target = (f"({quantile(0.9, e2e, by='workflow')} <= bool on (workflow) "
                     f"{total('jellybean_latency_target_seconds', by='workflow', fn='max')})")
    return (
        _slo_stat("Accuracy SLO met", f"{total('jellybean_accuracy_measured_percent', by='workflow', fn='max')} "
                  f">= bool on (workflow) {total('jellybean_accuracy_target_percent', by='workflow', fn='max')}",
                  f.at(4, 4), "1 while the accuracy measured since the deployment started meets the target."),
        _slo_stat("Latency SLO met", f"{p90_vs_target} or on (workflow) {_workflow_exists()}", f.at(4, 4),
                  "1 while the end-to-end p90 latency is within the workflow's bound (1 when it has none)."),
        Panel("Throughput", (Query(completed, "completed"),), f.at(4, 4), unit=FRAMES_PER_S, type="stat"),
        Panel("Frames failed", (Query(increase_in_range("jellybean_frames_failed_total"), "failed"),),
              f.at(4, 4), type="stat", description="In the dashboard's time range.", thresholds=((1, "red"),)),
        Panel("Frames in flight", (Query(total("jellybean_frames_in_flight"), "in flight"),), f.at(4, 4),
              type="stat"),
        Panel("Plan cost", (Query(total("jellybean_plan_cost_dollars_per_hour"), "$/h"),), f.at(4, 4),
              unit=DOLLARS_PER_HOUR, type="stat", description="Dollars per hour, compute and network."),
        Panel("Throughput vs plan", (
            Query(completed, "completed"),
            Query(total("jellybean_planned_frames_per_second"), "planned"),
            Query(rate("jellybean_frames_sent_total"), "sent"),
            Query(rate("jellybean_frames_failed_total"), "failed"),
        ), f.at(12, 8), unit=FRAMES_PER_S, min=0),
        Panel("Accuracy vs target", (
            Query(windowed_accuracy, "measured ($__rate_interval window)"),
            Query(total("jellybean_accuracy_measured_percent", fn="max"), "measured (since deployment)"),
            Query(total("jellybean_accuracy_predicted_percent", fn="max"), "predicted"),
            Query(total("jellybean_accuracy_target_percent", fn="max"), "target"),
        ), f.at(12, 8), unit=PERCENT, description="In the zoo's unit (%)."),
        Panel("End-to-end latency", (
            *quantiles(e2e, WF, "", "", (0.5, 0.9, 0.99)),
            Query(total("jellybean_latency_predicted_seconds", fn="max"), "predicted"),
        ), f.at(12, 8), unit=SECONDS, min=0, description="From a frame leaving its source to its result at the sink."),
        Panel("Cost by tier", (Query(total("jellybean_plan_cost_dollars_per_hour", by="tier"), "{{tier}}"),),
              f.at(6, 8), unit=DOLLARS_PER_HOUR, type="bargauge", description="The current plan, dollars per hour."),
        Panel("Cost by kind", (Query(total("jellybean_plan_cost_dollars_per_hour", by="kind"), "{{kind}}"),),
              f.at(6, 8), unit=DOLLARS_PER_HOUR, type="bargauge", description="The current plan, dollars per hour."),
        Panel("Frames sent by site", (Query(rate("jellybean_frames_sent_total", WF_SITE, "site"), "{{site}}"),),
              f.at(12, 8), unit=FRAMES_PER_S, min=0, stack=True),
        Panel("Frames in flight over time", (Query(total("jellybean_frames_in_flight"), "in flight"),), f.at(12, 8),
              min=0,
              description="Sent and not yet completed or failed: grows when the workflow falls behind."),
    )


@registered("jellybean-stages", "Jellybean / Stages",
           "Per stage and site: traffic against the plan, failures, latency, batches, queues, replicas and the "
           "instances' utilisation.")
def stages(f: Flow) -> tuple[Panel, ...]:
    by = "stage, site"
    legend = "{{stage}} @ {{site}}"
    return (
        Panel("Requests in vs plan", (
            Query(rate("jellybean_stage_requests_total", WF_SITE, by), legend),
            Query(total("jellybean_stage_planned_requests_per_second", WF_SITE, by), f"{legend} planned"),
        ), f.at(12, 8), unit=REQ_PER_S, min=0),
        Panel("Requests out", (Query(rate("jellybean_stage_outputs_total", WF_SITE, by), legend),), f.at(12, 8),
              unit=REQ_PER_S, min=0, description="Messages a stage produced (fan-out included)."),
        Panel("Failures and drops", (
            Query(rate("jellybean_stage_failed_total", WF_SITE, by), f"{legend} failed"),
            Query(rate("jellybean_stage_dropped_total", WF, "stage"), "{{stage}} dropped"),
        ), f.at(12, 8), unit=REQ_PER_S, min=0,
            description="Failed tries on a replica, and requests given up on (no replica, or out of retries)."),
        Panel("Processing latency", quantiles("jellybean_stage_processing_seconds", WF_SITE, by, legend),
              f.at(12, 8), unit=SECONDS, min=0, description="A batch's model time, measured in the replica."),
        Panel("Batch size", (
            Query(ratio_of_rates("jellybean_stage_batch_size_sum", "jellybean_stage_batch_size_count", WF_SITE, by),
                  f"{legend} mean"),
            Query(quantile(0.99, "jellybean_stage_batch_size", WF_SITE, by), f"{legend} p99"),
        ), f.at(12, 8), min=0),
        Panel("Queue depth vs capacity", (
            Query(total("jellybean_queue_depth", WF_SITE, "stage, instance"), "{{stage}} @ {{instance}}"),
            Query(total("jellybean_queue_capacity", WF_SITE, "stage, instance"), "{{stage}} @ {{instance}} capacity"),
        ), f.at(12, 8), min=0,
            description="Requests waiting per replica; at capacity, backpressure reaches the sources."),
        Panel("Replicas planned vs alive", (
            Query(total("jellybean_stage_replicas", WF_SITE, "stage, site, state"), f"{legend} {{{{state}}}}"),
        ), f.at(12, 8), min=0),
        Panel("Hop overhead", quantiles("jellybean_hop_overhead_seconds", WF_SITE, by, legend), f.at(12, 8),
              unit=SECONDS, min=0, description="A batch call's round trip minus the replica's model time."),
        Panel("Instance utilisation vs plan", (
            Query(f"{rate('jellybean_instance_busy_seconds_total', WF_SITE, 'instance')} / "
                  f"{total('jellybean_instance_cpus', WF_SITE, 'instance')}", "{{instance}}"),
            Query(total("jellybean_instance_planned_utilization_ratio", WF_SITE, "instance", "max"),
                  "{{instance}} planned"),
        ), f.at(12, 8), unit=RATIO, min=0, thresholds=UTILISATION_THRESHOLDS,
            description="Busy core-seconds per second over the instance's cores, against the plan."),
        Panel("Placement", (
            Query(total("jellybean_stage_planned_requests_per_second", WF_SITE, "stage, variant, site, tier, instance"),
                  instant=True),
        ), f.at(12, 8), unit=REQ_PER_S, type="table",
            description="Each replica's variant and instance, and its planned req/s."),
    )


@registered("jellybean-network", "Jellybean / Network",
           "Bytes and messages on each site's uplink against the plan and the link's capacity.")
def network(f: Flow) -> tuple[Panel, ...]:
    by = "site, direction"
    legend = "{{site}} {{direction}}"
    sent = rate("jellybean_link_bytes_total", WF_SITE, by)
    capacity = total("jellybean_link_capacity_bytes_per_second", WF_SITE, by)
    planned = total("jellybean_link_planned_bytes_per_second", WF_SITE, by)
    return (
        Panel("Link traffic vs plan and capacity", (
            Query(sent, legend),
            Query(planned, f"{legend} planned"),
            Query(capacity, f"{legend} capacity"),
        ), f.at(24, 9), unit=BYTES_PER_S, min=0, description="Each site's uplink, by direction."),
        Panel("Link utilisation", (
            Query(f"{sent} / {capacity}", legend),
            Query(f"{planned} / {capacity}", f"{legend} planned"),
        ), f.at(12, 8), unit=RATIO, min=0, thresholds=UTILISATION_THRESHOLDS),
        Panel("Link utilisation now", (Query(f"{sent} / {capacity}", legend),), f.at(12, 8), unit=RATIO,
              type="bargauge", min=0, max=1, thresholds=UTILISATION_THRESHOLDS),
        Panel("Messages per link", (Query(rate("jellybean_link_messages_total", WF_SITE, by), legend),), f.at(12, 8),
              unit="mps", min=0),
        Panel("Bytes per message", (
            Query(f"{sent} / {rate('jellybean_link_messages_total', WF_SITE, by)}", legend),
        ), f.at(12, 8), unit="decbytes", min=0),
    )


@registered("jellybean-controller", "Jellybean / Controller",
           "The controller's reconcile loop and planner: durations, errors, re-plans, solver time and gap, "
           "workflows by state, applies by outcome.")
def controller(f: Flow) -> tuple[Panel, ...]:
    reconcile = "jellybean_controller_reconcile_duration_seconds"
    solve = "jellybean_plan_solve_seconds"
    return (
        Panel("Plans deployed", (Query(total("jellybean_plan_changes_total"), "plans"),), f.at(4, 4), type="stat",
              description="Plans deployed for the workflow since the controller started (the first one included)."),
        Panel("Optimality gap", (Query(total("jellybean_plan_gap_ratio", fn="max"), "gap"),), f.at(4, 4), unit=RATIO,
              type="stat", thresholds=((0.01, "orange"), (0.05, "red"))),
        Panel("Solver time (mean)", (Query(ratio_of_totals(solve + "_sum", solve + "_count"), "mean"),), f.at(4, 4),
              unit=SECONDS, type="stat", description="Since the controller started."),
        Panel("Solver time (p99)", (Query(f"histogram_quantile(0.99, {total(solve + '_bucket', by='le')})", "p99"),),
              f.at(4, 4), unit=SECONDS, type="stat",
              description="Since the controller started (plans are rare: a window would mostly hold none)."),
        Panel("Reconcile errors", (
            Query(increase_in_range("jellybean_controller_reconcile_errors_total"), "errors"),
        ), f.at(4, 4), type="stat", thresholds=((1, "red"),), description="In the dashboard's time range."),
        Panel("Reconcile p99", (Query(quantile(0.99, reconcile, ""), "p99"),), f.at(4, 4), unit=SECONDS, type="gauge",
              min=0, max=1, thresholds=((0.5, "orange"), (1.0, "red"))),
        Panel("Reconcile duration", quantiles(reconcile, "", "", ""), f.at(12, 8), unit=SECONDS, min=0),
        Panel("Reconcile passes and errors", (
            Query(rate(reconcile + "_count", ""), "passes"),
            Query(rate("jellybean_controller_reconcile_errors_total", by="workflow"), "errors {{workflow}}"),
        ), f.at(12, 8), unit="ops", min=0),
        Panel("Workflows by state", (Query(total("jellybean_controller_workflows", "", "state"), "{{state}}"),),
              f.at(8, 8), type="bargauge", description="All the controller's workflows."),
        Panel("Applies by outcome", (
            Query(increase_in_range("jellybean_controller_applies_total", "", "outcome"), "{{outcome}}"),
        ), f.at(8, 8), type="bargauge", description="Document submissions in the dashboard's time range."),
        Panel("Plans over time", (Query(total("jellybean_plan_changes_total", by="workflow"), "{{workflow}}"),),
              f.at(8, 8), min=0, description="Steps up at each re-plan."),
        Panel("Current plan", (
            Query(f"{total('jellybean_plan_info', by='workflow, status, strategy', fn='max')} == 1", instant=True),
        ), f.at(24, 5), type="table", description="The deployed plan's solver status and strategy."),
    )


def all_dashboards() -> list[Dashboard]:
    return [build() for build in _BUILDERS]


# --- Grafana JSON ---------------------------------------------------------------------------------


#: The template variables' queries (the live test runs them too).
VARIABLE_QUERIES = {
    "workflow": "label_values(jellybean_planned_frames_per_second, workflow)",
    "site": 'label_values({__name__=~"jellybean_.+", workflow="$workflow"}, site)',
}


def _variables() -> list[dict]:
    def query_variable(name: str, label: str, query: str, multi: bool) -> dict:
        variable = {"name": name, "label": label, "type": "query", "datasource": DATASOURCE,
                    "query": {"query": query, "refId": f"{name}-variable"}, "definition": query,
                    "refresh": 2, "sort": 1, "regex": "", "hide": 0, "multi": multi, "includeAll": multi,
                    "current": {}, "options": []}
        if multi:
            variable["allValue"] = ".*"
        return variable

    return [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus", "regex": "",
         "hide": 0, "refresh": 1, "current": {}, "options": []},
        query_variable("workflow", "Workflow", VARIABLE_QUERIES["workflow"], False),
        query_variable("site", "Site", VARIABLE_QUERIES["site"], True),
    ]


def _field_defaults(panel: Panel) -> dict:
    defaults: dict = {"unit": panel.unit, "color": {"mode": "palette-classic" if panel.type == "timeseries" else
                                                     "thresholds"},
                      "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}] + [
                          {"color": colour, "value": value} for value, colour in panel.thresholds]}}
    if panel.min is not None:
        defaults["min"] = panel.min
    if panel.max is not None:
        defaults["max"] = panel.max
    if panel.mappings:
        defaults["mappings"] = [{"type": "value", "options": {
            str(value): {"text": text, "color": colour, "index": i}
            for i, (value, text, colour) in enumerate(panel.mappings)}}]
        defaults["thresholds"]["steps"] = [{"color": "red", "value": None}, {"color": "green", "value": 1}]
    if panel.type == "timeseries":
        defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 20 if panel.stack else 10,
                              "showPoints": "never", "spanNulls": False,
                              "stacking": {"mode": "normal" if panel.stack else "none", "group": "A"},
                              "thresholdsStyle": {"mode": "dashed" if panel.thresholds else "off"}}
    return defaults


def _options(panel: Panel) -> dict:
    reduce = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False}}
    if panel.type == "timeseries":
        return {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                "tooltip": {"mode": "multi", "sort": "desc"}}
    if panel.type == "stat":
        return {**reduce, "colorMode": "background" if panel.mappings or panel.thresholds else "value",
                "graphMode": "none" if panel.mappings else "area", "justifyMode": "auto", "orientation": "auto",
                "textMode": "value"}
    if panel.type == "gauge":
        return {**reduce, "showThresholdLabels": False, "showThresholdMarkers": True}
    if panel.type == "bargauge":
        return {**reduce, "displayMode": "gradient", "orientation": "horizontal", "showUnfilled": True}
    return {"showHeader": True, "cellHeight": "sm"}


def _target(query: Query, ref: int) -> dict:
    return {"refId": chr(ord("A") + ref), "datasource": DATASOURCE, "editorMode": "code", "expr": query.expr,
            "legendFormat": query.legend or "__auto", "range": not query.instant, "instant": query.instant,
            "format": "table" if query.instant else "time_series"}


def panel_json(panel: Panel, panel_id: int) -> dict:
    data = {"id": panel_id, "type": panel.type, "title": panel.title, "description": panel.description,
            "datasource": DATASOURCE, "gridPos": asdict(panel.grid),
            "targets": [_target(q, i) for i, q in enumerate(panel.queries)],
            "fieldConfig": {"defaults": _field_defaults(panel), "overrides": []}, "options": _options(panel)}
    if panel.type == "table":
        data["transformations"] = [{"id": "organize", "options": {"excludeByName": {"Time": True}}}]
    return data


def dashboard_json(dashboard: Dashboard) -> dict:
    return {
        "uid": dashboard.uid, "title": dashboard.title, "description": dashboard.description, "tags": list(TAGS),
        "schemaVersion": SCHEMA_VERSION, "version": 1, "editable": True, "graphTooltip": 1, "timezone": "browser",
        "time": {"from": "now-30m", "to": "now"}, "refresh": "10s", "fiscalYearStartMonth": 0, "liveNow": False,
        "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                  "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                                  "name": "Annotations & Alerts", "type": "dashboard"}]},
        "links": [{"title": "Jellybean", "type": "dashboards", "tags": list(TAGS), "asDropdown": True,
                   "includeVars": True, "keepTime": True, "icon": "external link", "targetBlank": False,
                   "tooltip": "", "url": ""}],
        "templating": {"list": _variables()},
        "panels": [panel_json(panel, i) for i, panel in enumerate(dashboard.panels, start=1)],
    }


def render(dashboard: Dashboard) -> str:
    """The dashboard's JSON as the committed files hold it."""
    return json.dumps(dashboard_json(dashboard), indent=2) + "\n"


def write_dashboards(out: Path) -> list[Path]:
    """Write every dashboard to ``out/<uid>.json``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for dashboard in all_dashboards():
        path = out / dashboard.file_name
        path.write_text(render(dashboard))
        paths.append(path)
    return paths
