"""The ``jellybean`` command.

Exit codes: 0 success; 1 the problem is valid but has no feasible plan; 2 invalid input (the
message names the file, line and field). A user never sees a traceback for bad input; an
unexpected internal error prints one line (set ``JELLYBEAN_DEBUG=1`` for the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import yaml

EXIT_OK = 0
EXIT_INFEASIBLE = 1
EXIT_INVALID = 2
#: `apply --wait`: a changed workflow does not run its new version in time (failed, blocked, still starting).
EXIT_NOT_RUNNING = 3


class UsageError(Exception):
    """Bad arguments or input; printed as one line, exit 2."""


def _add_files(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", "--filename", dest="files", action="append", required=True, metavar="PATH",
                        help="a YAML file or a folder of them; repeat for several")


def build_parser() -> argparse.ArgumentParser:
    from jellybean.optimizer.planner import STRATEGIES

    parser = argparse.ArgumentParser(
        prog="jellybean",
        description="Plan and serve ML inference workflows across tiered edge infrastructure.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("validate", help="check documents and the references between them, and that every "
                       "variant can be served (its runner registered, its artifact loadable)")
    _add_files(p)
    add_model_store_argument(p)

    p = sub.add_parser("plan", help="choose models and placement; show the plan beside every baseline")
    _add_files(p)
    add_model_store_argument(p, checked="when given, the workflow's artifacts are proved loadable first")
    p.add_argument("--workflow", action="append", metavar="NAME",
                   help="plan this Workflow only, when the files hold several (repeat to plan several of them "
                   "together; default: every Workflow given, planned together on their one Topology)")
    p.add_argument("--strategy", default="optimal", choices=STRATEGIES,
                   help="optimal (MILP, default) or a baseline: cloud-only, edge-first, two-stage, jellybean")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--exclusive-instances", action="store_true",
                      help="each instance serves at most one stage (JellyBean's semantics)")
    mode.add_argument("--shared-instances", action="store_true",
                      help="instances may host several stages (the default unless the Topology says otherwise)")
    p.add_argument("--format", default="table", choices=["table", "json", "yaml"])
    p.add_argument("--time-limit", type=float, default=60.0, metavar="SECONDS",
                   help="wall-clock limit for the whole run, baselines included; a plan found by then is "
                        "reported with the gap it reached (default 60)")
    p.add_argument("--solver", default="highs", choices=["highs", "cbc"], help="MILP solver (default HiGHS)")
    p.add_argument("--no-baselines", action="store_true", help="skip the baseline strategies")
    p.add_argument("--render", type=Path, metavar="FILE",
                   help="also draw the plan to FILE (.svg or .png): tiers, sites, stages and link flows")
    p.add_argument("--objective", default="cost", choices=["cost", "carbon", "cost+carbon"],
                   help="what to minimise: cost ($/h, default), carbon (gCO2/h, then cost), or cost+carbon (cost "
                        "plus the carbon at --carbon-price); carbon needs the Topology's power_w and "
                        "carbon_intensity_g_per_kwh")
    p.add_argument("--carbon-price", type=float, metavar="USD_PER_TONNE",
                   help="$ per tonne CO2, for --objective cost+carbon")
    p.add_argument("--carbon-budget", type=float, metavar="G_PER_HOUR",
                   help="emit at most this many gCO2 per hour (a constraint, with any objective)")
    p.add_argument("--at", metavar="HH:MM",
                   help="UTC time of day at which sites' carbon-intensity series are read (default: each series' "
                        "daily mean)")

    p = sub.add_parser("schema", help="print the JSON Schema of the documents")
    p.add_argument("--kind", choices=["ModelZoo", "Topology", "Workflow"], help="one kind only")

    p = sub.add_parser("generate", help="write example documents")
    gen = p.add_subparsers(dest="what", metavar="WHAT")
    gen.required = True
    city = gen.add_parser("city", help="a city-scale vehicle-tracking deployment")
    city.add_argument("--cameras", type=int, required=True)
    city.add_argument("--out", required=True, type=Path)
    city.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("import", help="convert another system's inputs into Jellybean documents")
    imp = p.add_subparsers(dest="source", metavar="SOURCE")
    imp.required = True
    jb = imp.add_parser("jellybean", help="a JellyBean optimizer-input folder (CSV + accuracy profiles)")
    jb.add_argument("folder", type=Path)
    jb.add_argument("--out", required=True, type=Path)
    jb.add_argument("--name", help="document names (default: the folder's name)")
    _add_controller_parsers(sub)
    from jellybean.cli.run import add_run_parser

    add_run_parser(sub)
    from jellybean.cli.operator import add_operator_parser

    add_operator_parser(sub)
    _add_zoo_parsers(sub)
    p = sub.add_parser("dashboards", help="write the Grafana dashboards (JSON) for Jellybean's Prometheus metrics")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the JSON files (created)")
    p = sub.add_parser("crds", help="write the Kubernetes CustomResourceDefinitions, generated from the document models")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the YAML files (created)")
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from jellybean.cli.run import cmd_run as run

    return run(args)


def cmd_validate(args: argparse.Namespace) -> int:
    from jellybean.spec.bundle import resolve
    from jellybean.spec.errors import SpecError
    from jellybean.spec.loader import load_documents
    from jellybean.plugins import workflow_issues, zoo_issues

    from jellybean.artifacts import ModelStore

    documents = load_documents(args.files)
    issues = []
    store = ModelStore(model_store_of(args))
    for doc in documents:
        if doc.model.kind == "ModelZoo":
            issues += zoo_issues(doc.model, doc.source, store)
        elif doc.model.kind == "Workflow":
            issues += workflow_issues(doc.model, doc.source)
    if issues:
        raise SpecError(issues)
    for doc in documents:
        spec = doc.model.spec
        detail = ""
        if doc.model.kind == "ModelZoo":
            detail = f"{len(spec.tasks)} tasks, {sum(len(t.variants) for t in spec.tasks)} variants"
        elif doc.model.kind == "Topology":
            detail = f"{len(spec.sites)} sites, {sum(len(s.instances) for s in spec.sites)} instance groups"
        else:
            detail = f"{len(spec.sources)} source groups, {len(spec.stages)} stages"
        print(f"ok  {doc.model.kind} {doc.model.metadata.name} ({detail})  {doc.source.file}:{doc.source.start_line}")
    for doc in documents:
        if doc.model.kind == "Workflow":
            resolve(documents, doc.model.metadata.name)
            print(f"ok  workflow {doc.model.metadata.name}: references resolve")
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    """``jellybean plan``: one workflow's plan, as ever; with several workflows in the files (and no
    ``--workflow``, or several), their joint plan (:func:`jellybean.optimizer.joint.plan_jointly`):
    JSON/YAML ``{"feasible", "workflows", "total", "joint", "explanation", "warnings"}``."""
    started = time.perf_counter()  # --time-limit is for the whole run: loading the documents counts
    from jellybean.cli.render import render_plan
    from jellybean.optimizer import plan as make_plan
    from jellybean.spec.bundle import load_bundles

    if args.render is not None:
        from jellybean.viz.figure import check_picture_path

        try:
            check_picture_path(args.render)
        except ValueError as exc:
            raise UsageError(f"--render: {exc}") from None
    bundles = load_bundles(args.files, args.workflow)
    if getattr(args, "model_store", None) is not None:  # asked for: the workflows' artifacts, proved loadable
        from jellybean.artifacts import ModelStore
        from jellybean.plugins import unservable
        from jellybean.spec.errors import SpecError

        store = ModelStore(args.model_store)
        problems = [issue for bundle in bundles for issue in unservable(bundle, store)]
        if problems:
            raise SpecError(problems)
    sharing = "exclusive" if args.exclusive_instances else "shared" if args.shared_instances else None
    if not args.time_limit > 0:  # also refuses nan
        raise UsageError("--time-limit must be positive")
    objective, carbon_at = _carbon_options(args)
    options = dict(strategy=args.strategy, sharing=sharing, baselines=not args.no_baselines,
                   time_limit_s=args.time_limit, solver=args.solver, objective=objective, carbon_at=carbon_at,
                   started=started)
    try:
        if len(bundles) > 1:  # several workflows: planned together, and one after another for the comparison
            from jellybean.cli.render import render_joint_plan
            from jellybean.optimizer.joint import plan_jointly

            result = plan_jointly(bundles, **options)
            text, picture = render_joint_plan, result.combined
        else:
            result = make_plan(bundles[0], **options)
            text, picture = render_plan, result
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.format == "json":
        print(json.dumps(result.model_dump(mode="json", by_alias=True), indent=2))
    elif args.format == "yaml":
        print(yaml.safe_dump(result.model_dump(mode="json", by_alias=True), sort_keys=False), end="")
    else:
        print(text(result))
    if args.render is not None:
        _render_picture(picture, bundles[0].topology, args.render)
    return EXIT_OK if result.feasible else EXIT_INFEASIBLE


def _carbon_options(args: argparse.Namespace):  # noqa: ANN202 - (Objective, datetime.time | None)
    """``plan``'s carbon flags, checked: the Objective and the time of day intensities are read at."""
    import math
    import re
    from datetime import time

    from jellybean.optimizer.carbon import Objective

    price, budget = args.carbon_price, args.carbon_budget
    if args.objective == "cost+carbon" and price is None:
        raise UsageError("--objective cost+carbon needs --carbon-price USD_PER_TONNE (the $ one tonne of CO2 costs)")
    if price is not None and args.objective != "cost+carbon":
        raise UsageError(f"--carbon-price is used only with --objective cost+carbon (not {args.objective}); "
                         "for a limit on carbon use --carbon-budget")
    if price is not None and not (math.isfinite(price) and 0 <= price <= 1e9):
        raise UsageError(f"--carbon-price must be a number from 0 to 1e9 ($ per tonne CO2), not {price:g}")
    if budget is not None and not (math.isfinite(budget) and 0 <= budget <= 1e12):
        raise UsageError(f"--carbon-budget must be a number from 0 to 1e12 (gCO2 per hour), not {budget:g}")
    at = None
    if args.at is not None:
        try:
            if not re.fullmatch(r"[0-9]{2}:[0-9]{2}", args.at):
                raise ValueError
            at = time(int(args.at[:2]), int(args.at[3:]))
        except ValueError:
            raise UsageError(f"--at must be a UTC time of day HH:MM (00:00 to 23:59), not {args.at!r}") from None
    try:
        return Objective(args.objective, price, budget), at
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _render_picture(result, topology, path: Path) -> None:  # noqa: ANN001 - a Plan and its Topology
    """``plan --render``: the picture beside the printed plan; an infeasible plan has none (said on stderr)."""
    from jellybean.viz.plan_render import render_plan as draw_plan

    sys.stdout.flush()
    if not result.feasible:
        print(f"error: no feasible plan, so there is no picture to draw; {path} not written", file=sys.stderr)
        return
    try:
        draw_plan(result, topology, path)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    print(f"plan picture written to {path}", file=sys.stderr)


def cmd_schema(args: argparse.Namespace) -> int:
    from jellybean.spec.schema import all_schemas, document_schema

    data = document_schema(args.kind) if args.kind else all_schemas()
    print(json.dumps(data, indent=2))
    return EXIT_OK


def cmd_generate(args: argparse.Namespace) -> int:
    from jellybean.generate.city import write_city

    if args.cameras < 1:
        raise UsageError("--cameras must be at least 1")
    paths = write_city(args.cameras, args.out, seed=args.seed)
    for path in paths or []:
        print(f"wrote {path}")
    print(f"next: jellybean plan -f {args.out}")
    return EXIT_OK


def cmd_import(args: argparse.Namespace) -> int:
    from jellybean.importers import import_jellybean, write_documents

    warnings: list[str] = []
    documents = import_jellybean(args.folder, name=args.name, warnings=warnings)
    for path in write_documents(documents, args.out):
        print(f"wrote {path}")
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"next: jellybean plan -f {args.out} --exclusive-instances")
    return EXIT_OK


# --- the controller: `up` serves it; `apply`, `status`, `delete` are its clients -------------------


def _add_controller_parsers(sub) -> None:  # noqa: ANN001 - argparse's private subparsers type
    p = sub.add_parser("up", help="start the controller: an HTTP API that keeps the applied workflows served on Ray")
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
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--docs", action="store_true",
                   help="serve Swagger UI at /docs (its files from the swagger-ui-bundle package, never a CDN)")
    add_metrics_arguments(p)
    add_serving_arguments(p)

    def controller(p: argparse.ArgumentParser, state_dir_help: str) -> None:
        p.add_argument("--controller", metavar="URL",
                       help="the controller's URL (default: the one `jellybean up` recorded in the state directory)")
        p.add_argument("--state-dir", type=Path, metavar="DIR", help=state_dir_help)

    def client(p: argparse.ArgumentParser) -> None:
        controller(p, "where `jellybean up` wrote controller.json and the token "
                   "(default $JELLYBEAN_HOME or ~/.jellybean; JELLYBEAN_TOKEN overrides the token)")
        p.add_argument("--format", default="table", choices=["table", "json"])

    p = sub.add_parser("apply", help="submit documents to the controller (same documents twice: no change)")
    _add_files(p)
    client(p)
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait up to this long for the changed workflows to run (default: return at once)")

    p = sub.add_parser("status", help="the controller's workflows: plan vs actual per stage and site")
    p.add_argument("name", nargs="?", metavar="NAME", help="one workflow (default: a line for each)")
    client(p)

    p = sub.add_parser("delete", help="tear a workflow down")
    p.add_argument("name", metavar="NAME")
    client(p)
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="wait up to this long for its pipeline to stop")

    from jellybean.cli.data import add_data_parsers

    def data_client(p: argparse.ArgumentParser) -> None:
        controller(p, "where the controller (or `jellybean run`) keeps the data token (default $JELLYBEAN_HOME "
                   "or ~/.jellybean; JELLYBEAN_DATA_TOKEN overrides it)")

    add_data_parsers(sub, data_client)


class _ControllerError(Exception):
    """The controller is unreachable or refused the request: printed as one line, exit 1."""


def _controller_endpoint(args: argparse.Namespace) -> tuple[str, str]:
    """The controller's URL and the API token, from the options, JELLYBEAN_TOKEN or the state directory."""
    from jellybean.runtime.state import CONTROLLER_NAME, TOKEN_NAME, default_state_dir, read_controller_info, read_token

    state_dir = Path(args.state_dir).expanduser() if args.state_dir else default_state_dir()
    url = args.controller
    if url is None:
        info = read_controller_info(state_dir) or {}
        url = info.get("url")
        if not isinstance(url, str):
            raise _ControllerError(f"no controller recorded in {state_dir / CONTROLLER_NAME}: start one with "
                                   "`jellybean up` (or pass --controller URL)")
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"--controller must be an http:// or https:// URL, not {url!r}")
    token = os.environ.get("JELLYBEAN_TOKEN") or read_token(state_dir)
    if not token:
        raise _ControllerError(f"no API token in {state_dir / TOKEN_NAME}: point --state-dir at the controller's "
                               "state directory or set JELLYBEAN_TOKEN")
    return url.rstrip("/"), token


def _no_redirects():  # noqa: ANN202 - a urllib handler
    """A handler that never follows a redirect: the request carries the bearer token."""
    import urllib.request

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201, PLR0913
            return None

    return NoRedirect()


def _call(url: str, token: str, method: str, path: str, body: dict | None = None, *,
          timeout: float = 120.0) -> dict | list:
    """One API call with urllib (no proxy, no redirects); API errors become exceptions with the
    controller's words: SpecError (422, exit 2) or _ControllerError (exit 1)."""
    import urllib.error
    import urllib.request

    from jellybean.spec.errors import Issue, SpecError

    data = json.dumps(body, ensure_ascii=False).encode("utf-8") if body is not None else None
    request = urllib.request.Request(url + path, data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Accept": "application/json",
        **({"Content-Type": "application/json"} if data is not None else {})})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _no_redirects())
    try:
        with opener.open(request, timeout=timeout) as response:
            return json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read().decode("utf-8"))
        except (ValueError, OSError):
            error = {}
        if not isinstance(error, dict):
            error = {}
        message = error.get("error") or f"HTTP {exc.code} {exc.reason}"
        if exc.code == 422 and error.get("issues"):
            raise SpecError([Issue(i.get("file", "<request>"), i.get("line"), i.get("path", ""), i.get("message", ""),
                                   i.get("hint", "")) for i in error["issues"]]) from None
        if exc.code == 409 and error.get("rejections"):
            lines = [message]
            for rejection in error["rejections"]:
                for reason in rejection.get("explanation") or []:
                    lines.append(f"  {rejection.get('workflow')} ({rejection.get('reason')}): {reason}")
            raise _ControllerError("\n".join(lines)) from None
        if exc.code == 401:
            raise _ControllerError(f"the controller at {url} refused the token: {message}") from None
        raise _ControllerError(message) from None
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise _ControllerError(f"no controller at {url}: start one with `jellybean up` ({reason})") from None
    except ValueError:
        raise _ControllerError(f"the service at {url} did not answer as a Jellybean controller") from None


def _client_command(run) -> int:  # noqa: ANN001 - a callable returning an exit code
    try:
        return run()
    except _ControllerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INFEASIBLE


def _when(timestamp: float | None) -> str:
    import time

    return "-" if timestamp is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def add_metrics_arguments(p: argparse.ArgumentParser, *, port: int | None = None, host: str = "127.0.0.1") -> None:
    p.add_argument("--metrics-port", type=int, default=port, metavar="PORT",
                   help="serve Prometheus metrics on http://HOST:PORT/metrics (0 picks a free port; default: "
                   f"{'off' if port is None else port})")
    p.add_argument("--metrics-host", default=host, metavar="HOST",
                   help=f"address the metrics endpoint listens on (default {host})")


def bind_metrics(args: argparse.Namespace):
    """The metrics registry and its HTTP server, bound but not serving yet, when ``--metrics-port`` was
    given, else (None, None); :func:`jellybean.runtime.metrics.start` serves it."""
    if args.metrics_port is None:
        return None, None
    if not 0 <= args.metrics_port <= 65535:
        raise UsageError("--metrics-port must be between 0 and 65535")
    from jellybean.runtime.metrics import Metrics, bind

    metrics = Metrics()
    try:
        server, port = bind(metrics, args.metrics_port, args.metrics_host)
    except OSError as exc:
        raise UsageError(f"cannot serve metrics on {args.metrics_host}:{args.metrics_port}: "
                         f"{exc.strerror or exc}") from None
    print(f"metrics at http://{args.metrics_host}:{port}/metrics", file=sys.stderr)
    return metrics, server


def start_metrics(args: argparse.Namespace):
    """:func:`bind_metrics`, then serving at once."""
    metrics, server = bind_metrics(args)
    if server is not None:
        from jellybean.runtime.metrics import start

        start(server)
    return metrics, server


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


def add_model_store_argument(p: argparse.ArgumentParser, checked: str = "") -> None:
    p.add_argument("--model-store", type=Path, metavar="DIR",
                   help="the directory artifact variants' `uri`s are inside (nothing outside it is read; default "
                   "$JELLYBEAN_MODEL_STORE, else $JELLYBEAN_HOME/models or ~/.cache/jellybean/models)"
                   + (f"; {checked}" if checked else ""))


def model_store_of(args: argparse.Namespace) -> Path:
    from jellybean.artifacts import default_model_store

    store = getattr(args, "model_store", None)
    return store if store is not None else default_model_store()


def serving_options(args: argparse.Namespace, state_dir: Path) -> dict:
    """The Pipeline's options for endpoints and outputs: the data token, the hosts, the output folder,
    the model store."""
    from jellybean.runtime.state import data_token

    embedded = not getattr(args, "address", None)
    host = args.endpoint_host or ("127.0.0.1" if embedded else "0.0.0.0")
    return {"data_token": data_token(state_dir), "bind_host": host, "model_store": model_store_of(args),
            "output_dir": args.output_dir or Path(state_dir) / "outputs",
            "emulate_latency": embedded and args.link_latency}


def cmd_up(args: argparse.Namespace) -> int:
    import logging
    import signal
    import threading
    import time

    try:
        from jellybean.runtime.api import ApiServer, create_app
    except ImportError as exc:
        print(f"error: `jellybean up` needs the runtime extra (pip install 'jellybean[runtime]'): {exc}",
              file=sys.stderr)
        return EXIT_INFEASIBLE
    from jellybean.runtime.controller import Controller, RayCluster
    from jellybean.runtime.state import (
        StateError, StateStore, default_state_dir, ensure_state_dir, new_token, read_controller_info,
        remove_controller_info, write_controller_info, write_token,
    )

    if not args.time_limit > 0:
        raise UsageError("--time-limit must be positive")
    if not 0 <= args.port <= 65535:
        raise UsageError("--port must be between 0 and 65535")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        state_dir = ensure_state_dir(args.state_dir or default_state_dir())
        previous = read_controller_info(state_dir)
        if previous and isinstance(previous.get("pid"), int) and previous["pid"] != os.getpid():
            try:
                os.kill(previous["pid"], 0)
            except OSError:
                pass  # a controller that did not clean up after itself
            else:
                print(f"error: a controller (pid {previous['pid']}) already serves {state_dir} at "
                      f"{previous.get('url')}; stop it first", file=sys.stderr)
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
    controller = Controller(store, cluster=cluster, plan_time_limit_s=args.time_limit, cache_dir=args.cache,
                            metrics=metrics, serving=serving_options(args, state_dir))
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
    try:
        server = ApiServer(app, args.host, args.port, log_level="info" if args.log_level == "debug" else "warning")
    except OSError as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        cluster.shutdown()
        return EXIT_INFEASIBLE
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving plain HTTP on {args.host}: the bearer token crosses the network unencrypted; "
              "put a TLS proxy in front", file=sys.stderr)
    if not args.address:
        isolate_embedded_ray(state_dir, serving_options(args, state_dir)["bind_host"])  # the API's and the
        # metrics' sockets are bound: they stay reachable
    if metrics_server is not None:
        from jellybean.runtime.metrics import start as serve_metrics

        serve_metrics(metrics_server)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
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
        while not stop.wait(0.5):
            # Ray's failure-signal handler takes SIGTERM over at the C level when Ray starts (in the
            # reconcile thread, unseen by signal.getsignal); ours must win so that a TERM drains the
            # pipelines instead of aborting the process, so it is installed again every half second.
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, on_signal)
        print("stopping: draining pipelines...", file=sys.stderr)
    finally:
        server.stop()
        controller.stop(drain=True)
        if metrics_server is not None:
            metrics_server.shutdown()
        remove_controller_info(state_dir, os.getpid())
        store.close()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return EXIT_OK


def cmd_apply(args: argparse.Namespace) -> int:
    from jellybean.spec.loader import MAX_LOAD_BYTES, expand_paths, read_text

    if not 0 <= args.wait <= 600:
        raise UsageError("--wait must be between 0 and 600 seconds")
    files = [{"name": str(path), "text": read_text(path)} for path in expand_paths(args.files)]
    total = sum(len(f["text"]) for f in files)
    if total > MAX_LOAD_BYTES:
        raise UsageError(f"the files hold {total} bytes of YAML, more than one apply takes ({MAX_LOAD_BYTES}): "
                         "apply them in parts")

    def run() -> int:
        url, token = _controller_endpoint(args)
        query = f"?wait={args.wait:g}" if args.wait > 0 else ""
        result = _call(url, token, "POST", "/v1/apply" + query, {"files": files}, timeout=300.0 + args.wait)
        if args.format == "json":
            print(json.dumps(result, indent=2))
            return EXIT_NOT_RUNNING if result.get("running") is False else EXIT_OK
        for doc in result["documents"]:
            print(f"{doc['kind']} {doc['name']}: {doc['action']}")
        for wf in result["workflows"]:
            line = f"workflow {wf['name']}: {wf['action']}, generation {wf['generation']}"
            if wf["action"] != "unchanged":
                cost = "-" if wf.get("cost_per_hour") is None else f"${wf['cost_per_hour']:.3f}/h"
                accuracy = "-" if wf.get("accuracy") is None else f"{wf['accuracy']:.2f}"
                line += f", plan {cost}, accuracy {accuracy} ({wf.get('reason') or 'changed'})"
            print(line)
        if not result["changed"]:
            print("nothing changed")
        if result.get("running") is False:
            what = "not all running" if result.get("settled") else f"not all running after {args.wait:g} s"
            print(f"{what}: see `jellybean status`")
            for wf in result.get("not_running") or []:
                print(f"  {wf['name']}: {wf['phase']}" + (f": {wf['message']}" if wf.get("message") else ""))
            return EXIT_NOT_RUNNING
        return EXIT_OK

    return _client_command(run)


def _why(status: dict) -> str:
    """A workflow's message, or else its last failure (kept after it recovered)."""
    if status.get("message"):
        return status["message"]
    failure = status.get("last_failure")
    return f"last failure ({_when(failure.get('at'))}): {failure['message']}" if failure else ""


def _render_workflow(status: dict) -> str:
    from jellybean.cli.render import table

    gen = status.get("generation")
    running = status.get("running_generation")
    lines = [f"Workflow {status['name']}: {status['phase']} (generation {gen if gen is not None else '-'}, "
             f"running {running if running is not None else '-'})"]
    if status.get("message"):
        lines.append(f"  {status['message']}")
    failure = status.get("last_failure")
    if failure:
        lines.append(f"Last failure ({failure['reason']}, {_when(failure.get('at'))}"
                     + (f", attempt {failure['attempts']}" if failure.get("attempts") else "") + f"): {failure['message']}")
    plan = status.get("plan")
    if plan:
        cost = "-" if plan.get("cost_per_hour") is None else f"${plan['cost_per_hour']:.3f}/h"
        accuracy = "-" if plan.get("accuracy") is None else f"{plan['accuracy']:.2f}"
        p90 = "" if plan.get("latency_ms_p90") is None else f", latency p90 {plan['latency_ms_p90']:.1f} ms"
        lines.append(f"Plan: {plan.get('strategy')}, {cost}, accuracy {accuracy} "
                     f"(target {plan.get('accuracy_target')}){p90}")
    lines.append("")
    lines.append(table(
        ["STAGE", "SITE", "VARIANT", "RUNNING", "REPLICAS ALIVE/PLANNED", "PLANNED REQ/S", "MEASURED REQ/S"],
        [[r["stage"], r["site"], r["variant"], r.get("variant_running"),
          f"{r['replicas_alive']}/{r['replicas_planned']}", r["rate_planned_per_s"], r.get("rate_measured_per_s")]
         for r in status.get("stages", [])], right={4, 5, 6}))
    frames = status.get("frames")
    if frames:
        lines.append("")
        lines.append(f"Frames: sent {frames.get('sent', 0)}, completed {frames.get('completed', 0)}, "
                     f"failed {frames.get('failed', 0)}, in flight {frames.get('in_flight', 0)}, lost {frames.get('lost', 0)}")
        measured = []
        if status.get("throughput_per_s") is not None:
            measured.append(f"{status['throughput_per_s']:.1f} frames/s")
        if status.get("accuracy_measured") is not None:
            measured.append(f"accuracy {status['accuracy_measured']:.2f}")
        if measured:
            lines.append("Measured: " + ", ".join(measured))
        sinks = status.get("sinks") or []
        if len(sinks) > 1:
            lines.append(table(["SINK", "COMPLETED", "FAILED", "ACCURACY", "PREDICTED", "TARGET"],
                               [[s["sink"], s["frames"]["completed"], s["frames"]["failed"], s.get("accuracy_measured"),
                                 s.get("accuracy_predicted"), s.get("accuracy_target")] for s in sinks],
                               right={1, 2, 3, 4, 5}))
    endpoints = status.get("endpoints") or []
    if endpoints:
        lines += ["", table(["ENDPOINT", "NAME", "SITE", "WHERE"],
                            [[e["kind"], e["name"], e["site"], e.get("url") or e.get("path") or "-"] for e in endpoints])]
    events = status.get("events") or []
    if events:
        lines += ["", "Events"]
        for event in events:
            detail = event.get("detail") or {}
            words = ", ".join(f"{k} {detail[k]}" for k in ("generation", "reason", "message") if detail.get(k))
            lines.append(f"  {_when(event.get('at'))}  {event['event']}" + (f"  {words}" if words else ""))
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    from jellybean.cli.render import table

    def run() -> int:
        url, token = _controller_endpoint(args)
        if args.name:
            status = _call(url, token, "GET", f"/v1/workflows/{quote(args.name, safe='')}")
            print(json.dumps(status, indent=2) if args.format == "json" else _render_workflow(status))
            return EXIT_OK
        workflows = _call(url, token, "GET", "/v1/workflows")
        if args.format == "json":
            print(json.dumps(workflows, indent=2))
        elif not workflows:
            print("no workflows (submit some with `jellybean apply -f PATH`)")
        else:
            print(table(["NAME", "PHASE", "GENERATION", "RUNNING", "$/H", "ACCURACY", "MEASURED", "FRAMES/S", "LOST",
                         "REPLICAS", "APPLIED", "MESSAGE"],
                        [[w["name"], w["phase"], w["generation"], w["running_generation"], w["cost_per_hour"],
                          w["accuracy"], w.get("accuracy_measured"), w.get("throughput_per_s"), w.get("frames_lost"),
                          f"{w['replicas_alive']}/{w['replicas_planned']}", _when(w["applied_at"]),
                          _why(w)[:100]] for w in workflows], right={2, 3, 4, 5, 6, 7, 8, 9}))
        return EXIT_OK

    return _client_command(run)


def cmd_delete(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    if not 0 <= args.wait <= 600:
        raise UsageError("--wait must be between 0 and 600 seconds")

    def run() -> int:
        url, token = _controller_endpoint(args)
        query = f"?wait={args.wait:g}" if args.wait > 0 else ""
        result = _call(url, token, "DELETE", f"/v1/workflows/{quote(args.name, safe='')}{query}",
                       timeout=60.0 + args.wait)
        if args.format == "json":
            print(json.dumps(result, indent=2))
        else:
            stopped = {True: ", pipeline stopped", False: f", still stopping after {args.wait:g} s"}.get(
                result.get("settled"), "")
            print(f"workflow {result['name']}: deleted{stopped}")
        return EXIT_OK

    return _client_command(run)


# ---- the digits zoo: `jellybean zoo build|list`, `jellybean profile` -------------------------------


def _add_zoo_parsers(sub) -> None:  # noqa: ANN001 - argparse's private subparsers type
    p = sub.add_parser("zoo", help="the built-in digits model zoo (real PyTorch models trained here)")
    zoo = p.add_subparsers(dest="zoo_command", metavar="ACTION")
    zoo.required = True
    zb = zoo.add_parser("build", help="train and cache the zoo's weights (skips what is cached)")
    zb.add_argument("--cache", type=Path, metavar="DIR",
                    help="weights cache (default $JELLYBEAN_HOME/zoo or ~/.cache/jellybean/zoo)")
    zb.add_argument("--force", action="store_true", help="retrain every model even if cached")
    zoo.add_parser("list", help="the registered model loaders")

    from jellybean.cli.profile import add_split_parser, add_store_parser

    add_store_parser(sub)
    add_split_parser(sub)
    p = sub.add_parser("profile", help="measure variants of any format here and merge the measurements into "
                       "their ModelZoo document (-f); without -f, the built-in digits zoo")
    p.add_argument("-f", "--filename", dest="files", action="append", type=Path, metavar="ZOO",
                   help="the zoo file whose variants are profiled and which the measurements are merged into")
    p.add_argument("--variant", action="append", metavar="NAME", help="only this variant (repeatable)")
    p.add_argument("--batch-sizes", default="1,2,4,8,16", metavar="LIST", help="batch sizes (default 1,2,4,8,16)")
    p.add_argument("--dataset", metavar="NAME", help="a registered dataset to feed the variants and, when "
                   "labelled, measure accuracy and fan-out on (default: zero inputs of the signature)")
    p.add_argument("--as", dest="label_as", metavar="NAME", help="file the measurements under this hardware "
                   "name, whatever kind it says")
    p.add_argument("--fan-out-into", type=Path, metavar="WORKFLOW",
                   help="write the measured fan-out ratios into this Workflow file (ratio_by_variant)")
    add_model_store_argument(p)
    p.add_argument("--cache", type=Path, metavar="DIR",
                   help="weights cache, built first if needed (default $JELLYBEAN_HOME/zoo or ~/.cache/jellybean/zoo)")
    p.add_argument("--out", type=Path, metavar="FILE", help="write the YAML here (default: standard output)")
    p.add_argument("--hardware", help="hardware name of the profiles (default: this machine's, local-cpu-1t "
                   "with one thread)")
    p.add_argument("--threads", type=int, default=1, metavar="N", help="torch threads (default 1)")
    p.add_argument("--repeats", type=int, default=100, metavar="N", help="timed calls per batch size (default 100)")
    p.add_argument("--frames", type=int, default=1000, metavar="N",
                   help="held-out frames for the accuracy measurements (default 1000)")


class _ProgressBar:
    """A one-line progress bar on stderr (redrawn in place on a terminal, one line per step otherwise)."""

    def __init__(self, width: int = 30) -> None:
        self.width = width
        self.tty = sys.stderr.isatty()
        self.last = ""

    def __call__(self, message: str, fraction: float) -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        filled = int(round(fraction * self.width))
        line = f"[{'#' * filled}{'.' * (self.width - filled)}] {fraction * 100:3.0f}% {message}"[:119]
        if self.tty:
            print(f"\r{line:<{len(self.last)}}", end="", file=sys.stderr, flush=True)
            self.last = line
        elif message != self.last:
            print(line, file=sys.stderr, flush=True)
            self.last = message

    def close(self) -> None:
        if self.tty and self.last:
            print(file=sys.stderr, flush=True)
        self.last = ""


def _zoo_cache(args: argparse.Namespace) -> Path:
    from jellybean.plugins import default_cache_dir

    return args.cache if args.cache is not None else default_cache_dir()


def _build_zoo(cache: Path, force: bool) -> float:
    import time

    from jellybean.zoo.build import build_zoo

    bar = _ProgressBar()
    started = time.perf_counter()
    try:
        build_zoo(cache, force=force, progress=bar)
    except OSError as exc:
        raise UsageError(f"cannot write the zoo cache {cache}: {exc}") from None
    finally:
        bar.close()
    return time.perf_counter() - started


def cmd_zoo(args: argparse.Namespace) -> int:
    from jellybean.plugins import describe_runner, runner_names

    if args.zoo_command == "list":  # every runner an installed package registers (jellybean.plugins)
        rows = [("RUNNER", "TASK", "PACKAGE", "DESCRIPTION")]
        for name in runner_names():
            d = describe_runner(name)
            rows.append((name, d["task"] or "-", d["package"] or "-",
                         d["description"] + (" (stateful: a join)" if d["stateful"] else "")))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for row in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3])
        return EXIT_OK
    cache = _zoo_cache(args)
    seconds = _build_zoo(cache, args.force)
    print(f"zoo ready in {cache} ({seconds:.1f} s)")
    return EXIT_OK


def cmd_profile(args: argparse.Namespace) -> int:
    from jellybean.spec.common import NAME_RE
    from jellybean.zoo.build import is_built
    from jellybean.zoo.profile import dump_zoo, profile_zoo

    for flag, value in (("--threads", args.threads), ("--repeats", args.repeats)):
        if value < 1:
            raise UsageError(f"{flag} must be at least 1")
    if args.files:
        from jellybean.cli.profile import cmd_profile_zoo

        return cmd_profile_zoo(args)
    args.hardware = args.label_as or args.hardware or "local-cpu-1t"

    if not NAME_RE.match(args.hardware):
        raise UsageError(f"--hardware {args.hardware!r} is not a valid name (letters, digits, '.', '-', '_')")
    if args.frames < 1:
        raise UsageError("--frames must be at least 1")
    cache = _zoo_cache(args)
    if not is_built(cache):
        _build_zoo(cache, False)
    command = (f"jellybean profile --hardware {args.hardware} --threads {args.threads} --repeats {args.repeats} "
               f"--frames {args.frames}" + (f" --out {args.out}" if args.out else ""))
    bar = _ProgressBar()
    try:
        doc = profile_zoo(cache, hardware=args.hardware, threads=args.threads, repeats=args.repeats,
                          eval_frames=args.frames, progress=bar)
    finally:
        bar.close()
    text = dump_zoo(doc, command=command)
    if args.out is None:
        print(text, end="")
    else:
        try:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text)
        except OSError as exc:
            raise UsageError(f"cannot write {args.out}: {exc}") from None
        print(f"wrote {args.out}", file=sys.stderr)
    return EXIT_OK


COMMANDS = {"run": cmd_run, "validate": cmd_validate, "plan": cmd_plan, "schema": cmd_schema, "generate": cmd_generate,
            "import": cmd_import, "up": cmd_up, "apply": cmd_apply, "status": cmd_status, "delete": cmd_delete}
def cmd_store(args: argparse.Namespace) -> int:
    from jellybean.cli.profile import cmd_store as store

    return store(args)


def cmd_split(args: argparse.Namespace) -> int:
    from jellybean.cli.profile import cmd_split as split

    return split(args)


COMMANDS.update({"zoo": cmd_zoo, "profile": cmd_profile, "store": cmd_store, "split": cmd_split})


def cmd_operator(args: argparse.Namespace) -> int:
    from jellybean.cli.operator import cmd_operator as run

    return run(args)


COMMANDS["operator"] = cmd_operator


def _write_generated(what: str, write, out: Path) -> int:  # noqa: ANN001 - write(folder) -> paths
    """``dashboards`` and ``crds``: write generated files into a folder, say which."""
    try:
        paths = write(out)
    except OSError as exc:
        raise UsageError(f"cannot write {what} to {out}: {exc}") from None
    for path in paths:
        print(f"wrote {path}")
    return EXIT_OK


def cmd_dashboards(args: argparse.Namespace) -> int:
    from jellybean.runtime.dashboards import write_dashboards

    return _write_generated("the dashboards", write_dashboards, args.out)


def cmd_crds(args: argparse.Namespace) -> int:
    from jellybean.k8s.crds import write_crds

    return _write_generated("the CRDs", write_crds, args.out)


def cmd_send(args: argparse.Namespace) -> int:
    from jellybean.cli.data import cmd_send as send

    return send(args)


def cmd_results(args: argparse.Namespace) -> int:
    from jellybean.cli.data import cmd_results as results

    return results(args)


COMMANDS["send"] = cmd_send
COMMANDS["results"] = cmd_results
COMMANDS["dashboards"] = cmd_dashboards
COMMANDS["crds"] = cmd_crds


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, except that ``send``'s payload files may come after its options
    (``send digits-live --site cam-1 frame.npy``): argparse hands the files to no positional once
    an option has come between them and the workflow's name."""
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "command", None) == "send" and all(e == "-" or not e.startswith("-") for e in extra):
        args.payloads = [*args.payloads, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    from jellybean.spec.errors import SpecError

    parser = build_parser()
    args = parse(parser, argv)
    try:
        return COMMANDS[args.command](args)
    except SpecError as exc:
        print(f"error: {len(exc.issues)} problem{'s' if len(exc.issues) != 1 else ''} in the input:", file=sys.stderr)
        for issue in exc.issues:
            print(f"  {issue}", file=sys.stderr)
        return EXIT_INVALID
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except ImportError as exc:
        # A part whose extra is not installed (jellybean.extras): the user's install, said as such.
        from jellybean.extras import missing_extra

        missing = missing_extra(exc, f"jellybean {args.command}")
        if missing is not None:
            print(f"error: {missing}", file=sys.stderr)
            return EXIT_INVALID
        return _internal_error(exc)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no tracebacks for users
        return _internal_error(exc)


def _internal_error(exc: Exception) -> int:
    """A bug: one line for the user (no traceback), the traceback with JELLYBEAN_DEBUG=1."""
    if os.environ.get("JELLYBEAN_DEBUG"):
        raise exc
    print(f"internal error: {type(exc).__name__}: {exc} (please report it; JELLYBEAN_DEBUG=1 shows the "
          "traceback)", file=sys.stderr)
    return 3


if __name__ == "__main__":
    sys.exit(main())
