"""The metrics' dashboards: their queries against the metrics module, and against a real Prometheus."""
