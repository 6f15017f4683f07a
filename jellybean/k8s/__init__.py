"""Jellybean on Kubernetes: custom resource definitions generated from the spec's pydantic models,
the in-cluster operator (watch, plan, deploy, status, finalizer) and topology discovery from Nodes."""
