"""The start-up that ``jellybean up``, ``jellybean operator`` and ``jellybean run`` share: their
metrics endpoint, the isolation of an embedded Ray, where served workflows' endpoints listen, the
log format, the HTTP server of the API or probes, and stopping on SIGINT/SIGTERM.

The order matters and is the same for each: sockets that must stay reachable (the API, the
metrics) are bound first, then the embedded Ray is isolated from the network
(:func:`isolate_embedded_ray`, before any thread starts), then the servers start.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from jellybean.cli.common import UsageError, check_port, model_store_of

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from jellybean.runtime.api import ApiServer
    from jellybean.runtime.metrics import Metrics

#: How often ``jellybean up`` installs its signal handlers again while it waits (see StopSignals.wait).
REINSTALL_EVERY_S = 0.5


def add_metrics_arguments(p: argparse.ArgumentParser, *, port: int | None = None, host: str = "127.0.0.1") -> None:
    """``--metrics-port`` (default: ``port``, None: off) and ``--metrics-host``."""
    p.add_argument("--metrics-port", type=int, default=port, metavar="PORT",
                   help="serve Prometheus metrics on http://HOST:PORT/metrics (0 picks a free port; default: "
                   f"{'off' if port is None else port})")
    p.add_argument("--metrics-host", default=host, metavar="HOST",
                   help=f"address the metrics endpoint listens on (default {host})")


def add_serving_arguments(p: argparse.ArgumentParser) -> None:
    """Where the ingest and stream endpoints of served workflows listen, and where file outputs go."""
    p.add_argument("--endpoint-host", metavar="HOST",
                   help="address the ingest and stream endpoints listen on (default 127.0.0.1 on an embedded Ray, "
                   "0.0.0.0 (each node's address) on a cluster joined with --address)")
    p.add_argument("--output-dir", type=Path, metavar="DIR",
                   help="folder of `file` outputs (default: outputs/ in the state directory)")
    p.add_argument("--no-link-latency", dest="link_latency", action="store_false",
                   help="on an embedded Ray (every site on this machine), do not add the topology's link latencies "
                   "to messages between sites (they are added by default, so that latency is as on the real links)")


def add_log_level_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def configure_logging(level: str) -> None:
    """The servers' log lines: time, level, logger, message, at ``--log-level``."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def bind_metrics(args: argparse.Namespace) -> tuple[Metrics | None, WSGIServer | None]:
    """The metrics registry and its HTTP server, bound but not serving yet, when ``--metrics-port`` was
    given, else (None, None); :func:`serve_metrics` serves it."""
    if args.metrics_port is None:
        return None, None
    check_port("--metrics-port", args.metrics_port)
    from jellybean.runtime.metrics import Metrics, bind

    metrics = Metrics()
    try:
        server, port = bind(metrics, args.metrics_port, args.metrics_host)
    except OSError as exc:
        raise UsageError(f"cannot serve metrics on {args.metrics_host}:{args.metrics_port}: "
                         f"{exc.strerror or exc}") from None
    print(f"metrics at http://{args.metrics_host}:{port}/metrics", file=sys.stderr)
    return metrics, server


def serve_metrics(server: WSGIServer | None) -> None:
    """Start serving a metrics server :func:`bind_metrics` bound (nothing when there is none)."""
    if server is not None:
        from jellybean.runtime.metrics import start

        start(server)


def start_metrics(args: argparse.Namespace) -> tuple[Metrics | None, WSGIServer | None]:
    """:func:`bind_metrics`, then serving at once (no embedded Ray to isolate first)."""
    metrics, server = bind_metrics(args)
    serve_metrics(server)
    return metrics, server


def stop_metrics(server: WSGIServer | None) -> None:
    if server is not None:
        server.shutdown()


def isolate_embedded_ray(state_dir: Path | None = None, endpoint_host: str = "127.0.0.1") -> None:
    """Keep the Ray this process will start off the network (:mod:`jellybean.runtime.localray`):
    called once the sockets that must be reachable are bound and before any thread starts. The
    socket broker is started first, so that the isolated actors can still serve their endpoints on
    ``endpoint_host`` of this machine."""
    from jellybean.runtime.localray import BROKER_ENV, isolate_network, start_broker

    broker = None
    if state_dir is not None:
        try:
            broker = start_broker(Path(state_dir) / "run", {endpoint_host})
        except (OSError, RuntimeError) as exc:
            print(f"warning: no socket broker ({exc}): ingest and stream endpoints of the embedded Ray will not be "
                  "reachable from this machine", file=sys.stderr)
    reason = isolate_network()
    if reason is not None:
        if broker is not None:  # not isolated: the actors bind their endpoints themselves
            broker.terminate()
            os.environ.pop(BROKER_ENV, None)
        print(f"warning: the embedded Ray will listen on every interface of this machine ({reason}); "
              "its servers need Ray's token, but put it behind a firewall or use --address", file=sys.stderr)


def serving_options(args: argparse.Namespace, state_dir: Path) -> dict[str, Any]:
    """The Pipeline's options for endpoints and outputs: the data token, the hosts, the output folder,
    the model store, and whether link latencies are emulated (an embedded Ray only)."""
    from jellybean.runtime.state import data_token

    embedded = not getattr(args, "address", None)
    host = args.endpoint_host or ("127.0.0.1" if embedded else "0.0.0.0")  # noqa: S104 - a cluster's nodes
    return {"data_token": data_token(state_dir), "bind_host": host, "model_store": model_store_of(args),
            "output_dir": args.output_dir or Path(state_dir) / "outputs",
            "emulate_latency": embedded and args.link_latency}


def listen(app: Any, host: str, port: int, log_level: str) -> ApiServer | None:
    """The HTTP server of ``app`` bound on ``host:port`` (not serving yet), or None when it cannot
    listen (said on stderr). uvicorn's own lines only at ``--log-level debug``."""
    from jellybean.runtime.api import ApiServer

    try:
        return ApiServer(app, host, port, log_level="info" if log_level == "debug" else "warning")
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return None


class StopSignals:
    """SIGINT and SIGTERM set :attr:`stop` while in the ``with`` block (the handlers before it come
    back after it). With ``second_interrupts``, a second signal raises KeyboardInterrupt: a user
    who presses Ctrl-C twice does not wait for the drain."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, *, second_interrupts: bool = False) -> None:
        self.stop = threading.Event()
        self.second_interrupts = second_interrupts
        self._previous: dict[int, Any] = {}

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.second_interrupts and self.stop.is_set():
            raise KeyboardInterrupt
        self.stop.set()

    def __enter__(self) -> StopSignals:
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in self.SIGNALS}
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def wait(self) -> None:
        """Block until a signal came. Ray's failure-signal handler takes SIGTERM over at the C level
        when Ray starts (in another thread, unseen by signal.getsignal); ours must win so that a TERM
        drains the pipelines instead of aborting the process, so it is installed again every
        :data:`REINSTALL_EVERY_S` seconds."""
        while not self.stop.wait(REINSTALL_EVERY_S):
            for sig in self.SIGNALS:
                signal.signal(sig, self._on_signal)
