"""``jellybean zoo build|list``: the built-in digits model zoo (real PyTorch models trained here) and
the model loaders every installed plugin registers."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from jellybean.cli.common import EXIT_OK, UsageError
from jellybean.cli.console import ProgressBar, Table, emit


def add_cache_argument(p: argparse.ArgumentParser, what: str = "weights cache") -> None:
    p.add_argument("--cache", type=Path, metavar="DIR",
                   help=f"{what} (default $JELLYBEAN_HOME/zoo or ~/.cache/jellybean/zoo)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    zoo = p.add_subparsers(dest="zoo_command", metavar="ACTION")
    zoo.required = True
    zb = zoo.add_parser("build", help="train and cache the zoo's weights (skips what is cached)")
    add_cache_argument(zb)
    zb.add_argument("--force", action="store_true", help="retrain every model even if cached")
    zoo.add_parser("list", help="the registered model loaders")


def zoo_cache(args: argparse.Namespace) -> Path:
    """``--cache``, else the default weights cache."""
    from jellybean.plugins import default_cache_dir

    return args.cache if args.cache is not None else default_cache_dir()


def build_zoo(cache: Path, force: bool) -> float:
    """Train what is not cached yet (everything with ``force``), with a progress bar; the seconds it took."""
    from jellybean.zoo.build import build_zoo as build

    bar = ProgressBar()
    started_s = time.perf_counter()
    try:
        build(cache, force=force, progress=bar)
    except OSError as exc:
        raise UsageError(f"cannot write the zoo cache {cache}: {exc}") from None
    finally:
        bar.close()
    return time.perf_counter() - started_s


def cmd_zoo(args: argparse.Namespace) -> int:
    from jellybean.plugins import describe_runner, runner_names

    if args.zoo_command == "list":  # every runner an installed package registers (jellybean.plugins)
        rows = []
        for name in runner_names():
            d = describe_runner(name)
            rows.append((name, d["task"] or "-", d["package"] or "-",
                         d["description"] + (" (stateful: a join)" if d["stateful"] else "")))
        emit([Table(["RUNNER", "TASK", "PACKAGE", "DESCRIPTION"], rows, right=set(), rule=False)])
        return EXIT_OK
    cache = zoo_cache(args)
    seconds = build_zoo(cache, args.force)
    print(f"zoo ready in {cache} ({seconds:.1f} s)")
    return EXIT_OK
