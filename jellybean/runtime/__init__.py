"""The runtime: deploys Plans on Ray and serves them (data plane), and the controller that keeps the
deployed state equal to the submitted documents (state store, HTTP API, reconcile loop)."""
