"""``jellybean plan``: choose models and placement for one workflow, or several together, and show
the plan beside every baseline (tables, JSON or YAML; ``--render`` also draws it)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import time as time_of_day
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from jellybean.cli.common import (
    EXIT_INFEASIBLE, EXIT_OK, UsageError, add_files, add_model_store_argument, positive,
)
from jellybean.cli.console import emit

if TYPE_CHECKING:
    from jellybean.optimizer.carbon import Objective
    from jellybean.optimizer.plan import Plan
    from jellybean.spec.topology import Topology

#: The carbon price and budget accepted (upper bounds: beyond them a number is a typo, not a policy).
MAX_CARBON_PRICE_PER_TONNE = 1e9
MAX_CARBON_BUDGET_G_PER_HOUR = 1e12


def add_arguments(p: argparse.ArgumentParser) -> None:
    from jellybean.optimizer.planner import STRATEGIES

    add_files(p)
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


def cmd_plan(args: argparse.Namespace) -> int:
    """``jellybean plan``: one workflow's plan, as ever; with several workflows in the files (and no
    ``--workflow``, or several), their joint plan (:func:`jellybean.optimizer.joint.plan_jointly`):
    JSON/YAML ``{"feasible", "workflows", "total", "joint", "explanation", "warnings"}``."""
    started = time.perf_counter()  # --time-limit is for the whole run: loading the documents counts
    from jellybean.cli.render import joint_plan_blocks, plan_blocks
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
    positive("--time-limit", args.time_limit)
    objective, carbon_at = carbon_options(args)
    options: dict[str, Any] = dict(strategy=args.strategy, sharing=sharing, baselines=not args.no_baselines,
                                   time_limit_s=args.time_limit, solver=args.solver, objective=objective,
                                   carbon_at=carbon_at, started=started)
    try:
        if len(bundles) > 1:  # several workflows: planned together, and one after another for the comparison
            from jellybean.optimizer.joint import plan_jointly

            joint = plan_jointly(bundles, **options)
            result: Any = joint
            picture, blocks = joint.combined, lambda: joint_plan_blocks(joint)
        else:
            single = make_plan(bundles[0], **options)
            result = single
            picture, blocks = single, lambda: plan_blocks(single)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.format == "json":
        print(json.dumps(result.model_dump(mode="json", by_alias=True), indent=2))
    elif args.format == "yaml":
        print(yaml.safe_dump(result.model_dump(mode="json", by_alias=True), sort_keys=False), end="")
    else:
        emit(blocks())
    if args.render is not None:
        _render_picture(picture, bundles[0].topology, args.render)
    return EXIT_OK if result.feasible else EXIT_INFEASIBLE


def carbon_options(args: argparse.Namespace) -> tuple[Objective, time_of_day | None]:
    """``plan``'s carbon flags, checked: the Objective and the time of day intensities are read at."""
    import math
    import re

    from jellybean.optimizer.carbon import Objective

    price, budget = args.carbon_price, args.carbon_budget
    if args.objective == "cost+carbon" and price is None:
        raise UsageError("--objective cost+carbon needs --carbon-price USD_PER_TONNE (the $ one tonne of CO2 costs)")
    if price is not None and args.objective != "cost+carbon":
        raise UsageError(f"--carbon-price is used only with --objective cost+carbon (not {args.objective}); "
                         "for a limit on carbon use --carbon-budget")
    if price is not None and not (math.isfinite(price) and 0 <= price <= MAX_CARBON_PRICE_PER_TONNE):
        raise UsageError(f"--carbon-price must be a number from 0 to 1e9 ($ per tonne CO2), not {price:g}")
    if budget is not None and not (math.isfinite(budget) and 0 <= budget <= MAX_CARBON_BUDGET_G_PER_HOUR):
        raise UsageError(f"--carbon-budget must be a number from 0 to 1e12 (gCO2 per hour), not {budget:g}")
    at = None
    if args.at is not None:
        try:
            if not re.fullmatch(r"[0-9]{2}:[0-9]{2}", args.at):
                raise ValueError
            at = time_of_day(int(args.at[:2]), int(args.at[3:]))
        except ValueError:
            raise UsageError(f"--at must be a UTC time of day HH:MM (00:00 to 23:59), not {args.at!r}") from None
    try:
        return Objective(args.objective, price, budget), at
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _render_picture(result: Plan | None, topology: Topology, path: Path) -> None:
    """``plan --render``: the picture beside the printed plan; an infeasible plan has none (said on stderr)."""
    from jellybean.viz.plan_render import render_plan as draw_plan

    sys.stdout.flush()
    if result is None or not result.feasible:
        print(f"error: no feasible plan, so there is no picture to draw; {path} not written", file=sys.stderr)
        return
    try:
        draw_plan(result, topology, path)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    print(f"plan picture written to {path}", file=sys.stderr)
