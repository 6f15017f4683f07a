"""The ``jellybean`` command: the one table of subcommands (:data:`COMMANDS`: each name once, with
its help, its arguments and its handler), the parser built from it, and the dispatch with the
errors every command shares (:func:`main`).

A user never sees a traceback for bad input; an unexpected internal error prints one line (set
``JELLYBEAN_DEBUG=1`` for the traceback). Exit codes: :mod:`jellybean.cli.common`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import jellybean.cli.data as data
import jellybean.cli.documents as documents
import jellybean.cli.operator as operator
import jellybean.cli.plan as plan
import jellybean.cli.profile as profile
import jellybean.cli.run as run
import jellybean.cli.up as up
import jellybean.cli.workflows as workflows
import jellybean.cli.zoo as zoo
from jellybean.cli.common import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK, UsageError


@dataclass(frozen=True)
class Command:
    """One subcommand: its one-line help, what declares its arguments, and what runs it (an exit code)."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


#: Every subcommand, in the order ``jellybean --help`` lists them. Tests replace an entry's ``run``.
COMMANDS: dict[str, Command] = {
    "validate": Command("check documents and the references between them, and that every variant can be served "
                        "(its runner registered, its artifact loadable)",
                        documents.add_validate_arguments, documents.cmd_validate),
    "plan": Command("choose models and placement; show the plan beside every baseline",
                    plan.add_arguments, plan.cmd_plan),
    "schema": Command("print the JSON Schema of the documents", documents.add_schema_arguments, documents.cmd_schema),
    "generate": Command("write example documents", documents.add_generate_arguments, documents.cmd_generate),
    "import": Command("convert another system's inputs into Jellybean documents",
                      documents.add_import_arguments, documents.cmd_import),
    "up": Command("start the controller: an HTTP API that keeps the applied workflows served on Ray",
                  up.add_arguments, up.cmd_up),
    "apply": Command("submit documents to the controller (same documents twice: no change)",
                     workflows.add_apply_arguments, workflows.cmd_apply),
    "status": Command("the controller's workflows: plan vs actual per stage and site",
                      workflows.add_status_arguments, workflows.cmd_status),
    "delete": Command("tear a workflow down", workflows.add_delete_arguments, workflows.cmd_delete),
    "send": Command("post payloads (files, or - for standard input) to a source's ingest endpoint",
                    data.add_send_arguments, data.cmd_send),
    "results": Command("read a workflow's results from a stream output", data.add_results_arguments, data.cmd_results),
    "run": Command("plan and serve a workflow on an embedded Ray for a while, then report",
                   run.add_arguments, run.cmd_run),
    "operator": Command("run the in-cluster operator: keep InferenceWorkflow resources planned, served on Ray and "
                        "reported in their status", operator.add_arguments, operator.cmd_operator),
    "zoo": Command("the built-in digits model zoo (real PyTorch models trained here)", zoo.add_arguments, zoo.cmd_zoo),
    "store": Command("the model store: put artifact files in it and print the `artifact:` lines that name them",
                     profile.add_store_arguments, profile.cmd_store),
    "split": Command("cut a torch-export model at layer boundaries into head and tail variants (profiled here) that "
                     "the planner can place on different sites", profile.add_split_arguments, profile.cmd_split),
    "profile": Command("measure variants of any format here and merge the measurements into their ModelZoo document "
                       "(-f); without -f, the built-in digits zoo", profile.add_arguments, profile.cmd_profile),
    "dashboards": Command("write the Grafana dashboards (JSON) for Jellybean's Prometheus metrics",
                          documents.add_dashboards_arguments, documents.cmd_dashboards),
    "crds": Command("write the Kubernetes CustomResourceDefinitions, generated from the document models",
                    documents.add_crds_arguments, documents.cmd_crds),
}


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command in :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="jellybean",
        description="Plan and serve ML inference workflows across tiered edge infrastructure.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, command in COMMANDS.items():
        command.add_arguments(sub.add_parser(name, help=command.help))
    return parser


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
    """Run ``jellybean ARGV...`` (default: the process's arguments); the exit code."""
    from jellybean.spec.errors import SpecError

    parser = build_parser()
    args = parse(parser, argv)
    try:
        return COMMANDS[args.command].run(args)
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
        return EXIT_INTERRUPTED
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
    return EXIT_INTERNAL
