"""Planner benchmark: cost per strategy, and solve time / gap / memory at city scale.

Every figure comes from a whole ``jellybean plan ... --format json`` run in a fresh process (what a
user runs), timed from outside, with the child's peak resident memory from ``getrusage``. Results go
to ``bench/results/plan.json`` and ``bench/results/plan.md`` with the machine they were measured on.

Then cost against the accuracy target: each workflow's SLO swept over a grid, every strategy planned
at every target, in this process (``jellybean.viz.pareto``): ``bench/results/pareto.json`` and a
picture per workflow, ``bench/results/pareto-<workflow>.png`` (and ``.svg``).

Then cost against carbon for vehicle-tracking (``jellybean.viz.carbon``; its Topology cites every
grid intensity and power figure): the cheapest and the least-carbon plans, and the cheapest plan
within each of ``--carbon-points`` carbon budgets between them, beside the baselines' plans:
``bench/results/pareto-carbon.json`` and ``bench/results/pareto-carbon-vehicle-tracking.png``
(and ``.svg``).

Then JellyBean-scale instances (``jellybean.generate.jellybean_scaled``: vqa-medium's nine workers
copied 10 and 20 times, each latency jittered by up to +-3%, rates scaled 0.6-1.2 x 40 per copy; three
seeds), imported and planned in both modes, whole runs with baselines at the default time limit; with
``--jellybean DIR`` (a checkout of libertyeagle/JellyBean, MIT) their own optimizer
(``optimizer/main.py`` with their published VQA config) is timed on the same folders, whole process,
with ``--jellybean-python`` (an interpreter with their dependencies: yacs, pandas, networkx, scipy,
scikit-learn, tqdm).

    python bench/plan.py [--cameras 10,100,1000,10000] [--out bench/results] [--pareto-points 12]
                         [--jellybean DIR --jellybean-python PYTHON] [--copies 10,20] [--seeds 0,1,2]
    python bench/plan.py --pareto-only    # the accuracy sweeps alone (about 12 s)
    python bench/plan.py --carbon-only    # the cost-carbon front alone (about 30 s)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


_CHILD = (
    "import resource, sys\n"
    "from jellybean.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "sys.stderr.write(f'\\nPEAK_RSS_KB={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}\\n')\n"
    "sys.exit(code)\n"
)


def run_plan(args: list[str]) -> tuple[dict, float, float, int]:
    """Run ``jellybean plan`` in a fresh process; return (plan JSON, wall seconds, its peak RSS MB, exit code)."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, "plan", *args, "--format", "json"],
                          capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - started
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"jellybean plan {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    peak_kb = int(proc.stderr.rsplit("PEAK_RSS_KB=", 1)[1].split()[0])
    return json.loads(proc.stdout), wall, peak_kb / 1024.0, proc.returncode


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    import highspy  # noqa: F401
    import pulp

    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": mem_gb, "python": platform.python_version(),
            "platform": platform.platform(), "pulp": pulp.__version__,
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def strategies(name: str, path: str, extra: list[str]) -> dict:
    plan, wall, _, code = run_plan(["-f", path, *extra])
    rows = [{"strategy": plan["strategy"], "feasible": plan["feasible"], "cost": plan["cost"],
             "accuracy": plan["accuracy"], "models": plan["models"], "saving_pct": None}]
    for b in plan["baselines"]:
        rows.append({"strategy": b["strategy"], "feasible": b["feasible"], "cost": b["cost"],
                     "accuracy": b["accuracy"], "models": b["models"], "saving_pct": b["saving_pct"],
                     "reason": b.get("reason", "")})
    return {"workflow": name, "args": extra, "wall_s": wall, "solver": plan["solver"], "strategies": rows}


def city(cameras: int, workdir: Path, time_limit: float) -> dict:
    out = workdir / f"city-{cameras}"
    gen = subprocess.run([sys.executable, "-m", "jellybean", "generate", "city", "--cameras", str(cameras),
                          "--out", str(out)], capture_output=True, text=True, cwd=ROOT)
    if gen.returncode != 0:
        raise RuntimeError(gen.stderr)
    plan, wall, peak_mb, code = run_plan(["-f", str(out), "--no-baselines", "--time-limit", str(time_limit)])
    return {"cameras": cameras, "wall_s": wall, "peak_rss_mb": peak_mb, "feasible": plan["feasible"],
            "status": plan["solver"]["status"], "gap": plan["solver"]["gap"],
            "solver_s": plan["solver"]["seconds"], "variables": plan["solver"]["variables"],
            "constraints": plan["solver"]["constraints"], "notes": plan["solver"]["notes"],
            "cost_per_hour": plan["cost"]["total_per_hour"] if plan["cost"] else None,
            "accuracy": plan["accuracy"], "models": plan["models"]}


def scaled(copies: int, seed: int, workdir: Path, jellybean: Path | None, jellybean_python: str) -> dict:
    """One scaled instance: our whole `jellybean plan` in both modes, and JellyBean's optimizer."""
    sys.path.insert(0, str(ROOT))
    from jellybean.generate.jellybean_scaled import scale_instance

    folder = scale_instance(ROOT / "tests" / "data" / "jellybean-vqa-medium", workdir / f"jb{copies}-{seed}",
                            copies, seed=seed)
    docs = workdir / f"docs{copies}-{seed}"
    done = subprocess.run([sys.executable, "-m", "jellybean", "import", "jellybean", str(folder), "--out", str(docs),
                           "--name", f"vqa-x{copies}"], capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    row: dict = {"copies": copies, "seed": seed, "workers": 9 * copies}
    for mode in ("exclusive", "shared"):
        plan, wall, _, _ = run_plan(["-f", str(docs), f"--{mode}-instances"])
        heuristic = next((b for b in plan["baselines"] if b["strategy"] == "jellybean"), None)
        row[mode] = {"wall_s": wall, "status": plan["solver"]["status"], "gap": plan["solver"]["gap"],
                     "cost_per_hour": plan["cost"]["total_per_hour"] if plan["cost"] else None,
                     "jellybean_strategy_per_hour": heuristic["cost"]["total_per_hour"]
                     if heuristic and heuristic["cost"] else None,
                     "notes": plan["solver"]["notes"]}
    if jellybean is not None:
        started = time.perf_counter()
        theirs = subprocess.run([jellybean_python, "main.py", "--inputs", str(folder), "--config",
                                 str(jellybean / "VQA" / "examples" / "optimizer_inputs" / "config.yaml")],
                                capture_output=True, text=True, cwd=jellybean / "optimizer")
        wall = time.perf_counter() - started
        out = theirs.stdout
        result = json.loads(out[out.index("{"):]) if theirs.returncode == 0 and "{" in out else {}
        row["jellybean_optimizer"] = {"wall_s": wall, "exit": theirs.returncode,
                                      "cost_per_hour": (result["compute_cost"] + result["communication_cost"])
                                      if result else None}
    return row


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = ["# Planner benchmark", "",
             f"Measured {m['date']} on {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB RAM, Python {m['python']}, "
             f"PuLP {m['pulp']} with HiGHS. Command: `make bench-plan` (`python bench/plan.py`). Every figure is a "
             "whole `jellybean plan ... --format json` run in a fresh process.", ""]
    for wf in result["workflows"]:
        s = wf["solver"]
        lines += [f"## {wf['workflow']} ({' '.join(wf['args']) or 'default settings'})", "",
                  f"Optimal plan: solver {s['name']} {s['status']}, gap "
                  f"{'unknown' if s['gap'] is None else format(100 * s['gap'], '.3f') + '%'}, solve {s['seconds']:.3f} s; "
                  f"whole run {wf['wall_s']:.2f} s.", "",
                  "| strategy | feasible | compute $/h | network $/h | total $/h | accuracy | saving of optimal |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for row in wf["strategies"]:
            c = row["cost"]
            if c:
                saving = "-" if row["saving_pct"] is None else f"{row['saving_pct']:.1f}%"
                lines.append(f"| {row['strategy']} | yes | {c['compute_per_hour']:.3f} | {c['network_per_hour']:.3f} | "
                             f"{c['total_per_hour']:.3f} | {row['accuracy']:.2f} | {saving} |")
            else:
                lines.append(f"| {row['strategy']} | no ({row.get('reason', '')[:80]}) | | | | | |")
        lines.append("")
    lines += ["## City scale (`jellybean generate city --cameras N`, then `jellybean plan --no-baselines`)", "",
              "| cameras | whole run s | solver s | status | gap | peak RSS MB | variables | constraints | $/h |",
              "|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for c in result["city"]:
        gap = "-" if c["gap"] is None else f"{100 * c['gap']:.3f}%"
        cost = "-" if c["cost_per_hour"] is None else f"{c['cost_per_hour']:.2f}"
        lines.append(f"| {c['cameras']} | {c['wall_s']:.2f} | {c['solver_s']:.2f} | {c['status']} | {gap} | "
                     f"{c['peak_rss_mb']:.0f} | {c['variables']} | {c['constraints']} | {cost} |")
    lines += ["", "The gap is measured against the lower bound of the merged relaxation (identical sites pooled), "
              "so it bounds the distance to the true optimum, not just to the symmetric one.", ""]
    if result.get("scaled"):
        lines += ["", "## JellyBean-scale instances (vqa-medium's workers copied and jittered +-3%)", "",
                  "Whole `jellybean plan` runs with baselines at the default `--time-limit 60`; JellyBean's optimizer "
                  "(`optimizer/main.py`, their VQA config) on the same folders, whole process.", "",
                  "| workers | seed | mode | ours s | status | gap | ours $/h | `jellybean` strategy $/h | JellyBean's optimizer s | their $/h | ours / theirs time |",
                  "|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|"]
        for row in result["scaled"]:
            theirs = row.get("jellybean_optimizer") or {}
            for mode in ("exclusive", "shared"):
                r = row[mode]
                ratio = f"{r['wall_s'] / theirs['wall_s']:.2f}" if theirs.get("wall_s") else "-"
                gap = f"{100 * r['gap']:.3f}%" if r["gap"] is not None else "-"
                their_cost = f"{theirs['cost_per_hour']:.3f}" if theirs.get("cost_per_hour") else "-"
                their_s = f"{theirs['wall_s']:.2f}" if theirs.get("wall_s") else "-"
                lines.append(f"| {row['workers']} | {row['seed']} | {mode} | {r['wall_s']:.2f} | {r['status']} | {gap} | "
                             f"{r['cost_per_hour']:.3f} | {r['jellybean_strategy_per_hour']:.3f} | {their_s} | {their_cost} | {ratio} |")

    return "\n".join(lines)


#: The workflows whose cost is swept against the accuracy target (each with its topology's sharing mode).
PARETO_WORKFLOWS = ["vqa-medium", "vehicle-tracking"]


def pareto(out: Path, points: int, time_limit: float) -> dict:
    """Sweep each workflow's accuracy target; write pareto.json and the pictures; return the record."""
    from jellybean.spec.bundle import load_bundle
    from jellybean.viz.pareto import accuracy_grid, plot_pareto, sweep

    started = time.perf_counter()
    record = {"machine": machine(), "points": points, "workflows": []}
    out.mkdir(parents=True, exist_ok=True)
    for name in PARETO_WORKFLOWS:
        bundle = load_bundle([ROOT / "workflows" / name])
        first = time.perf_counter()
        targets = accuracy_grid(bundle, points, time_limit_s=time_limit)
        result = sweep(bundle, targets, time_limit_s=time_limit)
        seconds = time.perf_counter() - first
        for suffix in (".png", ".svg"):
            plot_pareto(result, out / f"pareto-{name}{suffix}")
        record["workflows"].append({**result.to_json(), "wall_s": seconds})
        print(f"pareto {name}: {len(targets)} targets x {len(result.points)} strategies in {seconds:.1f} s",
              file=sys.stderr)
    record["wall_s"] = time.perf_counter() - started
    (out / "pareto.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


#: The workflows whose cost-carbon front is drawn.
CARBON_WORKFLOWS = ["vehicle-tracking"]


def carbon(out: Path, points: int, time_limit: float) -> dict:
    """Each workflow's cost-carbon front: pareto-carbon.json and a picture per workflow."""
    from jellybean.spec.bundle import load_bundle
    from jellybean.viz.carbon import carbon_front, plot_carbon_front

    started = time.perf_counter()
    record = {"machine": machine(), "points": points, "workflows": []}
    out.mkdir(parents=True, exist_ok=True)
    for name in CARBON_WORKFLOWS:
        front = carbon_front(load_bundle([ROOT / "workflows" / name]), points, time_limit_s=time_limit)
        for suffix in (".png", ".svg"):
            plot_carbon_front(front, out / f"pareto-carbon-{name}{suffix}")
        record["workflows"].append(front.to_json())
        plans = front.plans()
        print(f"carbon front {name}: {len(plans)} plans from {plans[0].carbon_g_per_hour:.1f} gCO2/h at "
              f"${plans[0].cost_per_hour:.3f}/h to {plans[-1].carbon_g_per_hour:.1f} gCO2/h at "
              f"${plans[-1].cost_per_hour:.3f}/h, in {front.seconds:.1f} s", file=sys.stderr)
        for p in plans:
            print(f"  {p.carbon_g_per_hour:8.2f} gCO2/h  ${p.cost_per_hour:.4f}/h  {', '.join(p.instances)}",
                  file=sys.stderr)
    record["wall_s"] = time.perf_counter() - started
    (out / "pareto-carbon.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", default="10,100,1000,10000")
    parser.add_argument("--time-limit", type=float, default=55.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--pareto-points", type=int, default=12, metavar="N",
                        help="accuracy targets per workflow in the cost-against-accuracy sweep (default 12)")
    parser.add_argument("--pareto-only", action="store_true",
                        help="only the cost-against-accuracy sweep (pareto.json and its pictures)")
    parser.add_argument("--carbon-points", type=int, default=12, metavar="N",
                        help="carbon budgets swept between the least-carbon and the cheapest plan (default 12)")
    parser.add_argument("--carbon-only", action="store_true",
                        help="only the cost-carbon front (pareto-carbon.json and its pictures)")
    parser.add_argument("--jellybean", type=Path, metavar="DIR",
                        help="a checkout of libertyeagle/JellyBean: time its optimizer on the scaled instances")
    parser.add_argument("--jellybean-python", default=sys.executable, metavar="PYTHON",
                        help="the interpreter that runs JellyBean's optimizer (with its dependencies)")
    parser.add_argument("--copies", default="10,20", help="copies of vqa-medium's workers per scaled instance")
    parser.add_argument("--seeds", default="0,1,2", help="jitter seeds per number of copies")
    args = parser.parse_args()
    if args.pareto_only:
        pareto(args.out, args.pareto_points, args.time_limit)
        return
    if args.carbon_only:
        carbon(args.out, args.carbon_points, args.time_limit)
        return
    result = {"machine": machine(), "workflows": [], "city": []}
    result["workflows"].append(strategies("vqa-medium", "workflows/vqa-medium", ["--exclusive-instances"]))
    result["workflows"].append(strategies("vqa-medium", "workflows/vqa-medium", ["--shared-instances"]))
    result["workflows"].append(strategies("vehicle-tracking", "workflows/vehicle-tracking", []))
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(x) for x in args.cameras.split(",") if x]:
            row = city(n, Path(tmp), args.time_limit)
            print(f"city {n}: {row['wall_s']:.2f}s status {row['status']} gap {row['gap']}", file=sys.stderr)
            result["city"].append(row)
        result["scaled"] = []
        for copies in [int(x) for x in args.copies.split(",") if x]:
            for seed in [int(x) for x in args.seeds.split(",") if x]:
                row = scaled(copies, seed, Path(tmp), args.jellybean, args.jellybean_python)
                print(f"scaled x{copies} seed {seed}: ours {row['exclusive']['wall_s']:.2f}s / {row['shared']['wall_s']:.2f}s"
                      + (f", theirs {row['jellybean_optimizer']['wall_s']:.2f}s" if 'jellybean_optimizer' in row else ""),
                      file=sys.stderr)
                result["scaled"].append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "plan.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "plan.md").write_text(markdown(result))
    print(markdown(result))
    pareto(args.out, args.pareto_points, args.time_limit)
    carbon(args.out, args.carbon_points, args.time_limit)


if __name__ == "__main__":
    main()
