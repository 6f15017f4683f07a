"""``jellybean operator``: the in-cluster operator (jellybean.k8s.operator) with its probes and metrics.
The ``kubernetes`` client is imported only here, when the command runs, so the rest of the CLI works
without it."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from jellybean.cli.common import EXIT_INFEASIBLE, EXIT_OK, UsageError, add_model_store_argument, check_port
from jellybean.cli.serve import (
    StopSignals, add_log_level_argument, add_metrics_arguments, configure_logging, listen, start_metrics, stop_metrics,
)
from jellybean.k8s.names import API_PORT, METRICS_PORT


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--namespace", metavar="NS",
                   help="namespace whose resources to watch (default: $POD_NAMESPACE, else the pod's own, "
                        "else default)")
    p.add_argument("--ray-address", metavar="ADDRESS", default=os.environ.get("RAY_ADDRESS") or None,
                   help="join this Ray cluster (its nodes advertise site:<name> resources; default $RAY_ADDRESS); "
                        "without it an embedded single-node Ray is started")
    p.add_argument("--no-discover-nodes", dest="discover_nodes", action="store_false",
                   help="never read Nodes (no site discovery): every workflow must name a Topology of the namespace")
    p.add_argument("--kubeconfig", metavar="PATH", help="use this kubeconfig instead of the in-cluster configuration")
    p.add_argument("--host", default="0.0.0.0",  # noqa: S104 - the kubelet probes the pod's address
                   help="address of /healthz and /readyz (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=API_PORT, help=f"port of /healthz and /readyz (default {API_PORT})")
    p.add_argument("--time-limit", type=float, default=60.0, metavar="SECONDS",
                   help="solver time limit for each plan (default 60)")
    p.add_argument("--resync", type=float, default=30.0, metavar="SECONDS",
                   help="look at every workflow again this often: pipeline health, retries (default 30)")
    p.add_argument("--peering", metavar="NAME", default=os.environ.get("JELLYBEAN_PEERING") or None,
                   help="coordinate with the other replicas of the operator through kopf's peering object NAME "
                        "(a KopfPeering resource must exist; only the replica of highest priority acts); "
                        "default: standalone")
    p.add_argument("--priority", type=int, default=0, help="this replica's peering priority (default 0)")
    p.add_argument("--cache", type=Path, metavar="DIR", help="model cache for the data plane (default: the zoo's)")
    add_model_store_argument(p)
    add_log_level_argument(p)
    add_metrics_arguments(p, port=METRICS_PORT, host="0.0.0.0")  # noqa: S104 - scraped from other pods


def cmd_operator(args: argparse.Namespace) -> int:
    check_port("--port", args.port)
    check_port("--metrics-port", args.metrics_port)
    if not args.time_limit > 0 or not args.resync > 0:
        raise UsageError("--time-limit and --resync must be positive")
    try:
        import kubernetes  # noqa: F401 - only to say clearly that it is missing

        import kopf  # noqa: F401 - the operator's framework

        from jellybean.k8s.operator import ClientKubeApi, ClusterConfigError, Operator, pod_namespace, run
        from jellybean.k8s.probes import create_app
        from jellybean.runtime.controller import RayCluster
    except ImportError as exc:
        print(f"error: `jellybean operator` needs kopf, the Kubernetes client and the runtime (pip install "
              f"'jellybean[k8s,runtime]'): {exc}", file=sys.stderr)
        return EXIT_INFEASIBLE
    try:
        api = ClientKubeApi.connect(args.kubeconfig)
    except ClusterConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INFEASIBLE
    configure_logging(args.log_level)
    namespace = args.namespace or pod_namespace() or "default"
    # Ray is joined (or started) at the first deployment: a Ray head that is not up yet shows in the
    # workflows' status (Blocked, retried with backoff), rather than as a crash-looping operator pod.
    cluster = RayCluster(args.ray_address)
    metrics, metrics_server = start_metrics(args)
    operator = Operator(api, namespace, cluster=cluster, ray_address=args.ray_address,
                        plan_time_limit_s=args.time_limit, cache_dir=args.cache, metrics=metrics,
                        model_store=args.model_store,
                        resync_s=args.resync, discover_nodes=args.discover_nodes)
    server = listen(create_app(operator, os.environ.get("JELLYBEAN_TOKEN") or None), args.host, args.port,
                    args.log_level)
    if server is None:
        stop_metrics(metrics_server)
        cluster.shutdown()
        return EXIT_INFEASIBLE
    with StopSignals() as signals:
        try:
            server.start()
            print(f"operator watching namespace {namespace} (Ray: {args.ray_address or 'embedded'}); probes at "
                  f"{server.url}/healthz and /readyz", file=sys.stderr)
            # kopf watches and handles the finalizers; returns once stopped, after stopping the pipelines
            # (the finalizers stay: the next operator redeploys).
            run(operator, signals.stop, login=api.connection, peering=args.peering, priority=args.priority)
        finally:
            server.stop()
            stop_metrics(metrics_server)
    return EXIT_OK
