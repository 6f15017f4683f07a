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
from pathlib import Path

import yaml

EXIT_OK = 0
EXIT_INFEASIBLE = 1
EXIT_INVALID = 2


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

    p = sub.add_parser("validate", help="check documents and the references between them")
    _add_files(p)

    p = sub.add_parser("plan", help="choose models and placement; show the plan beside every baseline")
    _add_files(p)
    p.add_argument("--workflow", help="the Workflow to plan when the files hold several")
    p.add_argument("--strategy", default="optimal", choices=STRATEGIES,
                   help="optimal (MILP, default) or a baseline: cloud-only, edge-first, two-stage, jellybean")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--exclusive-instances", action="store_true",
                      help="each instance serves at most one stage (JellyBean's semantics)")
    mode.add_argument("--shared-instances", action="store_true",
                      help="instances may host several stages (the default unless the Topology says otherwise)")
    p.add_argument("--format", default="table", choices=["table", "json", "yaml"])
    p.add_argument("--time-limit", type=float, default=60.0, metavar="SECONDS",
                   help="solver time limit; a plan found by then is reported with its gap (default 60)")
    p.add_argument("--solver", default="highs", choices=["highs", "cbc"], help="MILP solver (default HiGHS)")
    p.add_argument("--no-baselines", action="store_true", help="skip the baseline strategies")

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
    return parser


def cmd_validate(args: argparse.Namespace) -> int:
    from jellybean.spec.bundle import resolve
    from jellybean.spec.loader import load_documents

    documents = load_documents(args.files)
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
    from jellybean.cli.render import render_plan
    from jellybean.optimizer import plan as make_plan
    from jellybean.spec.bundle import load_bundle

    bundle = load_bundle(args.files, args.workflow)
    sharing = "exclusive" if args.exclusive_instances else "shared" if args.shared_instances else None
    if not args.time_limit > 0:  # also refuses nan
        raise UsageError("--time-limit must be positive")
    try:
        result = make_plan(bundle, strategy=args.strategy, sharing=sharing, baselines=not args.no_baselines,
                           time_limit_s=args.time_limit, solver=args.solver)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.format == "json":
        print(json.dumps(result.model_dump(mode="json", by_alias=True), indent=2))
    elif args.format == "yaml":
        print(yaml.safe_dump(result.model_dump(mode="json", by_alias=True), sort_keys=False), end="")
    else:
        print(render_plan(result))
    return EXIT_OK if result.feasible else EXIT_INFEASIBLE


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


COMMANDS = {"validate": cmd_validate, "plan": cmd_plan, "schema": cmd_schema, "generate": cmd_generate,
            "import": cmd_import}


def main(argv: list[str] | None = None) -> int:
    from jellybean.spec.errors import SpecError

    parser = build_parser()
    args = parser.parse_args(argv)
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
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no tracebacks for users
        if os.environ.get("JELLYBEAN_DEBUG"):
            raise
        print(f"internal error: {type(exc).__name__}: {exc} (please report it; JELLYBEAN_DEBUG=1 shows the "
              "traceback)", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
