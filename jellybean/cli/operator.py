"""``jellybean operator``: the in-cluster operator (jellybean.k8s.operator) with its probes and metrics.
The ``kubernetes`` client is imported only here, when the command runs, so the rest of the CLI works
without it."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from jellybean.k8s.names import API_PORT, METRICS_PORT


def add_operator_parser(sub) -> None:  # noqa: ANN001 - argparse's private subparsers type
    from jellybean.cli import add_metrics_arguments, add_model_store_argument

    p = sub.add_parser("operator", help="run the in-cluster operator: keep InferenceWorkflow resources planned, "
                                        "served on Ray and reported in their status")
    p.add_argument("--namespace", metavar="NS",
                   help="namespace whose resources to watch (default: $POD_NAMESPACE, else the pod's own, "
                        "else default)")
    p.add_argument("--ray-address", metavar="ADDRESS", default=os.environ.get("RAY_ADDRESS") or None,
                   help="join this Ray cluster (its nodes advertise site:<name> resources; default $RAY_ADDRESS); "
                        "without it an embedded single-node Ray is started")
    p.add_argument("--no-discover-nodes", dest="discover_nodes", action="store_false",
                   help="never read Nodes (no site discovery): every workflow must name a Topology of the namespace")
    p.add_argument("--kubeconfig", metavar="PATH", help="use this kubeconfig instead of the in-cluster configuration")
    p.add_argument("--host", default="0.0.0.0", help="address of /healthz and /readyz (default 0.0.0.0)")
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
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    add_metrics_arguments(p, port=METRICS_PORT, host="0.0.0.0")


def cmd_operator(args: argparse.Namespace) -> int:
    from jellybean.cli import EXIT_INFEASIBLE, EXIT_OK, UsageError, start_metrics

    for option, port in (("--port", args.port), ("--metrics-port", args.metrics_port)):
        if port is not None and not 0 <= port <= 65535:
            raise UsageError(f"{option} must be between 0 and 65535")
    if not args.time_limit > 0 or not args.resync > 0:
        raise UsageError("--time-limit and --resync must be positive")
    try:
        import kubernetes  # noqa: F401 - only to say clearly that it is missing

        import kopf  # noqa: F401 - the operator's framework

        from jellybean.k8s.operator import ClientKubeApi, ClusterConfigError, Operator, pod_namespace, run
        from jellybean.k8s.probes import create_app
        from jellybean.runtime.api import ApiServer
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
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    namespace = args.namespace or pod_namespace() or "default"
    # Ray is joined (or started) at the first deployment: a Ray head that is not up yet shows in the
    # workflows' status (Blocked, retried with backoff), rather than as a crash-looping operator pod.
    cluster = RayCluster(args.ray_address)
    metrics, metrics_server = start_metrics(args)
    operator = Operator(api, namespace, cluster=cluster, ray_address=args.ray_address,
                        plan_time_limit_s=args.time_limit, cache_dir=args.cache, metrics=metrics,
                        model_store=args.model_store,
                        resync_s=args.resync, discover_nodes=args.discover_nodes)
    try:
        server = ApiServer(create_app(operator, os.environ.get("JELLYBEAN_TOKEN") or None), args.host, args.port,
                           log_level="info" if args.log_level == "debug" else "warning")
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        cluster.shutdown()
        return EXIT_INFEASIBLE
    stop = threading.Event()
    handlers = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        print(f"operator watching namespace {namespace} (Ray: {args.ray_address or 'embedded'}); probes at "
              f"{server.url}/healthz and /readyz", file=sys.stderr)
        # kopf watches and handles the finalizers; returns once stopped, after stopping the pipelines
        # (the finalizers stay: the next operator redeploys).
        run(operator, stop, login=api.connection, peering=args.peering, priority=args.priority)
    finally:
        server.stop()
        if metrics_server is not None:
            metrics_server.shutdown()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return EXIT_OK
