"""What the commands of the CLI share: the exit codes, the user's error, and the options several
commands declare alike (``-f``, ``--model-store``).

Every module of ``jellybean.cli`` imports these from here, never from the package itself, so that
the package's ``__init__`` (which builds the command table from the modules) is never imported back
by them (tests/test_cli_structure.py checks it).

Exit codes (a public contract): 0 success; 1 the problem is valid but has no feasible plan (or a
controller or endpoint refused or could not be reached, or a run lost frames); 2 invalid input, a
user mistake (the message names the file, line and field); 3 ``apply --wait``: not everything runs
in time, and also an internal error, said in one line; 130 interrupted.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

EXIT_OK = 0
EXIT_INFEASIBLE = 1
EXIT_INVALID = 2
#: `apply --wait`: a changed workflow does not run its new version in time (failed, blocked, still starting).
EXIT_NOT_RUNNING = 3
#: A bug: one line for the user, the traceback with JELLYBEAN_DEBUG=1.
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Bad arguments or input; printed as one line, exit 2."""


def add_files(parser: argparse.ArgumentParser) -> None:
    """``-f/--filename``: the documents a command reads, files or folders, repeatable."""
    parser.add_argument("-f", "--filename", dest="files", action="append", required=True, metavar="PATH",
                        help="a YAML file or a folder of them; repeat for several")


def add_model_store_argument(p: argparse.ArgumentParser, checked: str = "") -> None:
    """``--model-store``: the one directory artifacts are read from (nothing outside it is)."""
    p.add_argument("--model-store", type=Path, metavar="DIR",
                   help="the directory artifact variants' `uri`s are inside (nothing outside it is read; default "
                   "$JELLYBEAN_MODEL_STORE, else $JELLYBEAN_HOME/models or ~/.cache/jellybean/models)"
                   + (f"; {checked}" if checked else ""))


def model_store_of(args: argparse.Namespace) -> Path:
    """``--model-store``, else the default store (:func:`jellybean.artifacts.default_model_store`)."""
    from jellybean.artifacts import default_model_store

    store = getattr(args, "model_store", None)
    return store if store is not None else default_model_store()


def positive(option: str, value: float) -> None:
    """Refuse a value that is not positive (nan included), naming the option."""
    if not value > 0:
        raise UsageError(f"{option} must be positive")


def check_port(option: str, port: int | None) -> None:
    """Refuse a TCP port outside 0..65535 (0: the system picks a free one); None: not asked for."""
    if port is not None and not 0 <= port <= 65535:
        raise UsageError(f"{option} must be between 0 and 65535")


def local_time(timestamp_s: float | None) -> str:
    """A Unix time (seconds) as local date and time, or '-' for none."""
    return "-" if timestamp_s is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp_s))
