"""The dashboards as code: their queries name only metrics the metrics module defines, filter by the
template variables, parse as PromQL (promtool), and the committed JSON is what the code generates."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from jellybean.cli import main
from jellybean.runtime.dashboards import (
    GRID_WIDTH, PANEL_TYPES, VARIABLE_QUERIES, all_dashboards, dashboard_json, metric_names, render,
)
from tests.observability.queries import every_query, exposed_metrics, substitute, variable_promql

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "helm" / "jellybean" / "dashboards"
SELECTOR = re.compile(r"\b(jellybean_\w+)(\{[^}]*\})?")


def test_at_least_the_four_dashboards_with_stable_uids() -> None:
    uids = [d.uid for d in all_dashboards()]
    assert uids == ["jellybean-overview", "jellybean-stages", "jellybean-network", "jellybean-controller"]
    assert [d.uid for d in all_dashboards()] == uids  # stable across calls


def test_every_expression_names_only_defined_metrics() -> None:
    defined = exposed_metrics()
    problems = []
    for dashboard, panel, expr in every_query():
        names = metric_names(expr)
        if not names:
            problems.append(f"{dashboard} / {panel}: no metric in {expr}")
        problems += [f"{dashboard} / {panel}: {name} is not defined in Metrics()" for name in names - defined.keys()]
    assert not problems, "\n".join(problems)


def test_metric_names_sees_every_selector() -> None:
    assert metric_names('sum(rate(jellybean_a_total{x="jellybean_b"}[1m])) / up') == {"jellybean_a_total"}
    assert metric_names('rate(node_cpu{mode="idle"}[1m])') == {"node_cpu"}


def test_selectors_filter_by_the_template_variables() -> None:
    """Every metric with a workflow label is filtered by $workflow; on the per-site dashboards every
    metric with a site label is filtered by $site."""
    labels = exposed_metrics()
    per_site = {"Jellybean / Stages", "Jellybean / Network"}
    problems = []
    for dashboard, panel, expr in every_query():
        for name, matchers in SELECTOR.findall(expr):
            if "workflow" in labels[name] and 'workflow="$workflow"' not in matchers:
                problems.append(f"{dashboard} / {panel}: {name}{matchers} is not filtered by $workflow")
            if dashboard in per_site and "site" in labels[name] and 'site=~"$site"' not in matchers:
                problems.append(f"{dashboard} / {panel}: {name}{matchers} is not filtered by $site")
        if "[" in expr and "$__rate_interval" not in expr and "$__range" not in expr:
            problems.append(f"{dashboard} / {panel}: a fixed range in {expr}")
    assert not problems, "\n".join(problems)


def test_groupings_and_legends_use_labels_the_metrics_have() -> None:
    labels = exposed_metrics()
    problems = []
    for dashboard in all_dashboards():
        for panel in dashboard.panels:
            for query in panel.queries:
                known = {label for name in metric_names(query.expr) for label in labels[name]}
                grouped = {label.strip() for group in re.findall(r"\b(?:by|on) \(([^)]*)\)", query.expr)
                           for label in group.split(",")}
                problems += [f"{dashboard.title} / {panel.title}: no metric has {label!r}: {query.expr}"
                             for label in grouped - known]
                legend = set(re.findall(r"\{\{(\w+)\}\}", query.legend))
                problems += [f"{dashboard.title} / {panel.title}: legend {label!r} is aggregated away: {query.expr}"
                             for label in legend - grouped]
    assert not problems, "\n".join(problems)


def test_grafana_json_shape() -> None:
    for dashboard in all_dashboards():
        data = dashboard_json(dashboard)
        assert data["uid"] == dashboard.uid and data["tags"] == ["jellybean"] and 36 <= data["schemaVersion"] <= 41
        variables = {v["name"]: v for v in data["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        assert variables["workflow"]["type"] == "query" and not variables["workflow"]["multi"]
        assert variables["workflow"]["definition"] == VARIABLE_QUERIES["workflow"]
        site = variables["site"]
        assert site["multi"] and site["includeAll"] and site["allValue"] == ".*"
        assert site["query"]["query"] == VARIABLE_QUERIES["site"] and "$workflow" in site["definition"]
        ids, cells = set(), set()
        for panel in data["panels"]:
            assert panel["type"] in PANEL_TYPES and panel["id"] not in ids
            ids.add(panel["id"])
            assert panel["datasource"]["uid"] == "${datasource}"
            assert panel["targets"] and all(t["expr"] and t["datasource"]["uid"] == "${datasource}"
                                            for t in panel["targets"])
            assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
            pos = panel["gridPos"]
            assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= GRID_WIDTH, panel["title"]
            covered = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
            assert not covered & cells, f"{panel['title']} overlaps another panel"
            cells |= covered


def test_expressions_parse_as_promql(tmp_path: Path) -> None:
    """promtool (installed with Prometheus) checks every query, variables substituted, as a rule."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make test` installs Debian's prometheus package"
    exprs = [substitute(expr) for _, _, expr in every_query()] + [
        substitute(variable_promql(name)[0]) for name in VARIABLE_QUERIES]
    rules = {"groups": [{"name": "dashboards", "rules": [
        {"record": f"jellybean:dashboard_query:{i}", "expr": expr} for i, expr in enumerate(exprs)]}]}
    path = tmp_path / "rules.json"  # JSON is YAML
    path.write_text(json.dumps(rules))
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in proc.stdout + proc.stderr


def test_committed_dashboards_are_what_the_code_generates() -> None:
    committed = sorted(p.name for p in COMMITTED.glob("*.json"))
    assert committed == sorted(d.file_name for d in all_dashboards()), "run `make dashboards`"
    for dashboard in all_dashboards():
        assert (COMMITTED / dashboard.file_name).read_text() == render(dashboard), (
            f"{dashboard.file_name} is stale: run `make dashboards`")


def test_cli_writes_one_file_per_dashboard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboards", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    for dashboard in all_dashboards():
        path = tmp_path / "out" / dashboard.file_name
        assert f"wrote {path}" in out
        assert json.loads(path.read_text())["uid"] == dashboard.uid
