"""What both dashboard tests need: every query of every dashboard, Grafana's variables substituted,
and the names and labels the metrics module exposes."""

from __future__ import annotations

import re
from collections.abc import Iterator

from jellybean.runtime.dashboards import VARIABLE_QUERIES, all_dashboards

#: Values for Grafana's variables: the digits workflow, every site, short windows (1 s scrapes).
VARIABLES = {"workflow": "digits", "site": ".*", "__rate_interval": "10s", "__interval": "5s", "__range": "1m"}
SITES = {"cloud", "hub", "cam-1", "cam-2"}


def substitute(expr: str, values: dict[str, str] = VARIABLES) -> str:
    """``expr`` with ``$name`` and ``${name}`` replaced; an unknown variable raises KeyError."""
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], expr)


def every_query() -> Iterator[tuple[str, str, str]]:
    """(dashboard title, panel title, expression) for every query of every panel."""
    for dashboard in all_dashboards():
        for panel in dashboard.panels:
            for query in panel.queries:
                yield dashboard.title, panel.title, query.expr


def variable_promql(name: str) -> tuple[str, str]:
    """A template variable's ``label_values(selector, label)`` as PromQL that has one series per
    value, and the label."""
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", VARIABLE_QUERIES[name])
    assert match, VARIABLE_QUERIES[name]
    selector, label = match.groups()
    return f"group by ({label}) ({selector})", label


def exposed_metrics() -> dict[str, tuple[str, ...]]:
    """Every series name a :class:`Metrics` exposes (counters ``_total``, histograms ``_bucket``,
    ``_sum`` and ``_count``) and its labels."""
    from jellybean.runtime.metrics import Metrics

    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    names: dict[str, tuple[str, ...]] = {}
    for metric in vars(Metrics()).values():
        kind = getattr(metric, "_type", None)
        if kind in suffixes:
            for suffix in suffixes[kind]:
                names[metric._name + suffix] = tuple(metric._labelnames) + (("le",) if suffix == "_bucket" else ())
    return names
