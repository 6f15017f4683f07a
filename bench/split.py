"""The split demo, measured: `jellybean split` on AlexNet (jellybean.split.alexnet), the plans with and
without the cut on workflows/split/ (a hub with 128 MB for models behind a paid uplink), and the split
plan served on an embedded Ray by `jellybean run` (the camera replaying `noise-images`).

    python bench/split.py [--model-store DIR] [--duration 15] [--out bench/results] [--build build/split]

Results: ``bench/results/split.json`` and ``split.md``, with the machine noted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from plan import machine  # noqa: E402

from jellybean.artifacts import default_model_store, sha256_file  # noqa: E402
from jellybean.split import export_alexnet  # noqa: E402

SPLIT = ROOT / "workflows" / "split"
JELLYBEAN = str(Path(sys.executable).parent / "jellybean")


def run(*args: str, capture: bool = False) -> str:
    done = subprocess.run([JELLYBEAN, *args], text=True, capture_output=capture, check=False)
    if done.returncode != 0:
        raise SystemExit(f"jellybean {' '.join(args)} failed ({done.returncode}): {(done.stderr or '')[-2000:]}")
    return done.stdout or ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-store", type=Path, default=default_model_store())
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--build", type=Path, default=ROOT / "build" / "split")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    store, build = args.model_store, args.build
    build.mkdir(parents=True, exist_ok=True)
    export_alexnet(store / "demo" / "alexnet.pt2")
    zoo = (SPLIT / "zoo.yaml").read_text()
    committed = zoo.split("sha256: ")[1].split("}")[0]
    built = sha256_file(store / "demo" / "alexnet.pt2")
    (build / "zoo-whole.yaml").write_text(zoo.replace(committed, built))
    for name in ("topology.yaml", "workflow.yaml"):
        (build / name).write_text((SPLIT / name).read_text())
    ms = ["--model-store", str(store)]
    run("profile", "-f", str(build / "zoo-whole.yaml"), *ms, "--batch-sizes", "1,2,4,8", "--repeats", "30",
        "--out", str(build / "zoo-whole.yaml"))
    run("split", "-f", str(build / "zoo-whole.yaml"), "--variant", "alexnet", *ms, "--max-cuts", "2",
        "--out", str(build / "zoo-split.yaml"), "--workflow", str(build / "workflow.yaml"), "--stage", "classify",
        "--out-workflow", str(build / "workflow-split.yaml"))
    whole = json.loads(run("plan", "-f", str(build / "zoo-whole.yaml"), "-f", str(build / "topology.yaml"), "-f",
                           str(build / "workflow.yaml"), "--no-baselines", "--format", "json", capture=True))
    split = json.loads(run("plan", "-f", str(build / "zoo-split.yaml"), "-f", str(build / "topology.yaml"), "-f",
                           str(build / "workflow-split.yaml"), "--no-baselines", "--format", "json", capture=True))
    served = json.loads(run("run", "-f", str(build / "zoo-split.yaml"), "-f", str(build / "topology.yaml"), "-f",
                            str(build / "workflow-split.yaml"), *ms, "--duration", str(args.duration), "--format", "json",
                            capture=True))
    result = {
        "machine": machine(), "sha256_built": built, "sha256_committed": committed,
        "plan_unsplit": {"cost": whole["cost"], "assignments": [(a["stage"], a["variant"], a["site"]) for a in whole["assignments"]]},
        "plan_split": {"cost": split["cost"], "assignments": [(a["stage"], a["variant"], a["site"]) for a in split["assignments"]]},
        "served": {"frames": served["frames"], "predicted": served["predicted"], "measured": served["measured"],
                   "stages": [(s["stage"], s["site"], s["variant"], round(s["rate_measured_per_s"], 2)) for s in served["stages"]]},
        "command": "python bench/split.py",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "split.json").write_text(json.dumps(result, indent=2) + "\n")
    u, s_ = result["plan_unsplit"], result["plan_split"]
    m, f = served["measured"], served["frames"]
    lines = ["# A network split across tiers", "", f"Machine: {result['machine']}. `{result['command']}`.", "",
             "| plan | placement | compute $/h | network $/h | total $/h |", "|---|---|---|---|---|",
             f"| unsplit (best of all here / all there) | {u['assignments']} | {u['cost']['compute_per_hour']:.4f} | "
             f"{u['cost']['network_per_hour']:.4f} | {u['cost']['total_per_hour']:.4f} |",
             f"| split (`jellybean split`) | {s_['assignments']} | {s_['cost']['compute_per_hour']:.4f} | "
             f"{s_['cost']['network_per_hour']:.4f} | {s_['cost']['total_per_hour']:.4f} |", "",
             f"Split / unsplit cost: {s_['cost']['total_per_hour'] / u['cost']['total_per_hour']:.3f}.", "",
             f"Served ({args.duration:g} s, `jellybean run`, embedded Ray): frames sent {f['sent']}, completed "
             f"{f['completed']}, failed {f['failed']}, lost {f['lost']}; throughput {m['throughput_per_s']:.1f} "
             f"frames/s (planned {served['predicted']['throughput_per_s']:.1f}); latency p50 {m['latency_ms_p50']:.1f} ms; "
             f"stages {result['served']['stages']}.", "",
             "That head then tail computes the whole network's outputs is checked by `jellybean split` on every "
             "cut (rtol 1e-4) and, served, by tests/test_split.py (results equal to the network called directly)."]
    (args.out / "split.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
