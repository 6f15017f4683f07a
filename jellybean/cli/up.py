"""``jellybean up``: the controller, an HTTP API that keeps the applied workflows served on Ray
(``apply``, ``status`` and ``delete`` are its clients, :mod:`jellybean.cli.workflows`)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from jellybean.cli.common import EXIT_INFEASIBLE, EXIT_OK, add_model_store_argument, check_port, positive
from jellybean.cli.serve import (
    StopSignals, add_log_level_argument, add_metrics_arguments, add_serving_arguments, bind_metrics,
    configure_logging, isolate_embedded_ray, listen, serve_metrics, serving_options, stop_metrics,
)

#: Addresses that keep the API (and its bearer token) on this machine.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", type=Path, metavar="DIR",
                   help="documents, plans, history and the API token (default $JELLYBEAN_HOME or ~/.jellybean)")
    p.add_argument("--address", metavar="RAY_ADDRESS",
                   help="join this Ray cluster (its nodes advertise site:<name> resources) instead of an embedded one")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8470, help="port to listen on (default 8470; 0 picks a free one)")
    p.add_argument("--time-limit", type=float, default=60.0, metavar="SECONDS",
                   help="solver time limit for each plan (default 60)")
    p.add_argument("--cache", type=Path, metavar="DIR", help="model cache for the data plane (default: the zoo's)")
    add_model_store_argument(p)
    add_log_level_argument(p)
    p.add_argument("--docs", action="store_true",
                   help="serve Swagger UI at /docs (its files from the swagger-ui-bundle package, never a CDN)")
    add_metrics_arguments(p)
    add_serving_arguments(p)


def _running_elsewhere(state_dir: Path) -> str | None:
    """The error when another live controller serves ``state_dir`` (one that died without cleaning
    up does not count)."""
    from jellybean.runtime.state import read_controller_info

    previous = read_controller_info(state_dir)
    if not previous or not isinstance(previous.get("pid"), int) or previous["pid"] == os.getpid():
        return None
    try:
        os.kill(previous["pid"], 0)
    except OSError:
        return None  # a controller that did not clean up after itself
    return f"a controller (pid {previous['pid']}) already serves {state_dir} at {previous.get('url')}; stop it first"


def cmd_up(args: argparse.Namespace) -> int:
    try:
        from jellybean.runtime.api import create_app
    except ImportError as exc:
        print(f"error: `jellybean up` needs the runtime extra (pip install 'jellybean[runtime]'): {exc}",
              file=sys.stderr)
        return EXIT_INFEASIBLE
    from jellybean.runtime.controller import Controller, RayCluster
    from jellybean.runtime.state import (
        StateError, StateStore, default_state_dir, ensure_state_dir, new_token, remove_controller_info,
        write_controller_info, write_token,
    )

    positive("--time-limit", args.time_limit)
    check_port("--port", args.port)
    configure_logging(args.log_level)
    try:
        state_dir = ensure_state_dir(args.state_dir or default_state_dir())
        elsewhere = _running_elsewhere(state_dir)
        if elsewhere is not None:
            print(f"error: {elsewhere}", file=sys.stderr)
            return EXIT_INFEASIBLE
        store = StateStore(state_dir)
    except StateError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INFEASIBLE
    damage = store.damage_summary()
    if damage:
        print(f"warning: {damage}", file=sys.stderr)
    cluster = RayCluster(args.address)
    metrics, metrics_server = bind_metrics(args)
    serving = serving_options(args, state_dir)
    controller = Controller(store, cluster=cluster, plan_time_limit_s=args.time_limit, cache_dir=args.cache,
                            metrics=metrics, serving=serving)
    if args.address:
        try:
            cluster.start({})
        except Exception as exc:  # noqa: BLE001 - Ray says what is wrong; the user needs one line
            print(f"error: cannot join the Ray cluster at {args.address}: {exc}", file=sys.stderr)
            return EXIT_INFEASIBLE
    token = new_token()
    write_token(state_dir, token)
    try:
        app = create_app(controller, token, docs=args.docs)
    except RuntimeError as exc:  # --docs without its package
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INFEASIBLE
    server = listen(app, args.host, args.port, args.log_level)
    if server is None:
        cluster.shutdown()
        return EXIT_INFEASIBLE
    if args.host not in LOOPBACK_HOSTS:
        print(f"warning: serving plain HTTP on {args.host}: the bearer token crosses the network unencrypted; "
              "put a TLS proxy in front", file=sys.stderr)
    if not args.address:
        isolate_embedded_ray(state_dir, serving["bind_host"])  # the API's and the metrics' sockets are bound:
        # they stay reachable
    serve_metrics(metrics_server)
    with StopSignals(second_interrupts=True) as signals:
        try:
            server.start()
            write_controller_info(state_dir, {"url": server.url, "pid": os.getpid(), "started_at": time.time(),
                                              "ray": args.address or "embedded"})
            controller.start()
            stored = len(store.desired())
            where = f"{server.url}/docs" if args.docs else f"{server.url}/openapi.json; --docs serves Swagger UI"
            print(f"controller at {server.url} (OpenAPI: {where}); state in {state_dir}; "
                  f"token in {state_dir / 'token'}", file=sys.stderr)
            if stored:
                print(f"redeploying {stored} stored workflow{'s' if stored != 1 else ''}", file=sys.stderr)
            print("Ctrl-C stops the controller (pipelines are drained; `jellybean up` again redeploys them)",
                  file=sys.stderr)
            signals.wait()
            print("stopping: draining pipelines...", file=sys.stderr)
        finally:
            server.stop()
            controller.stop(drain=True)
            stop_metrics(metrics_server)
            remove_controller_info(state_dir, os.getpid())
            store.close()
    return EXIT_OK

