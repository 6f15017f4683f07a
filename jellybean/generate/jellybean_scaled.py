"""JellyBean-format instances scaled up from one: every worker copied ``copies`` times, no two alike.

Why. JellyBean's published instances have a handful of workers; a real deployment has many of each
kind, and each machine measures a little differently. An instance where copies are exactly identical
lets a planner pool them (symmetry), which hides how it scales; jittered copies do not. This is the
instance family the planner's speed is held to (``make bench-plan``: against JellyBean's own optimizer).

From a JellyBean folder (``workers_specs.csv``, ``execution_profile*.csv``, ``workers_partition.json``,
the link files, ...), for copy ``c`` in ``1..copies`` of worker ``w``:

- the worker ``w-c<c>`` at ``w``'s price, in ``w``'s tier;
- every latency of ``w`` (mean, p50, p90 alike) multiplied by one factor drawn uniformly from
  ``[1 - jitter, 1 + jitter]`` per (stage, worker copy, variant), so that no two workers are identical;
- every link price of a pair (source or worker, worker) kept for each pair of copies;
- the sources' rates: copy ``c`` adds ``rate * u_c`` with ``u_c`` uniform in ``[0.6, 1.2]`` (one draw per
  copy, for all sources), so that the load grows with the cluster;
- everything else (graph, message sizes, ratios, accuracy) unchanged.

Seeded: the same arguments give the same files.
"""

from __future__ import annotations

import csv
import io
import json
import random
import shutil
from pathlib import Path

#: Files copied as they are (the workflow's shape, its accuracy, its message sizes).
UNCHANGED = ("logical_graph.csv", "message_sizes.csv", "throughput_normalization_ratios.csv",
             "accuracy_requirement.json", "accuracy_profiles.json", "nodes_accuracy_profiles.pkl", "LICENSE-jellybean")
PROFILES = ("execution_profile.csv", "execution_profile_p50.csv", "execution_profile_p90.csv")
RATE_SCALE = (0.6, 1.2)


def _rows(path: Path) -> list[list[str]]:
    return [row for row in csv.reader(io.StringIO(path.read_text())) if row]


def _write(path: Path, rows: list[list]) -> None:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    path.write_text(buffer.getvalue())


def copy_name(worker: str, copy: int) -> str:
    return f"{worker}-c{copy}"


def scale_instance(source: Path, out: Path, copies: int, *, jitter: float = 0.03, seed: int = 0) -> Path:
    """Write the scaled instance of ``source`` into ``out`` (see the module docstring); returns ``out``."""
    if copies < 1:
        raise ValueError(f"copies must be at least 1, not {copies}")
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    for name in UNCHANGED:
        if (source / name).exists():
            shutil.copyfile(source / name, out / name)
    _write(out / "workers_specs.csv", [[copy_name(w, c), price] for c in range(1, copies + 1)
                                       for w, price in _rows(source / "workers_specs.csv")])
    tiers = json.loads((source / "workers_partition.json").read_text())
    (out / "workers_partition.json").write_text(json.dumps(
        [[copy_name(w, c) for c in range(1, copies + 1) for w in tier] for tier in tiers], indent=2) + "\n")
    factors: dict[tuple[str, str, str], float] = {}
    for name in PROFILES:
        if not (source / name).exists():
            continue
        rows = []
        for c in range(1, copies + 1):
            for stage, worker, variant, latency_ms in _rows(source / name):
                key = (stage, copy_name(worker, c), variant)
                factor = factors.setdefault(key, rng.uniform(1 - jitter, 1 + jitter))
                rows.append([stage, key[1], variant, float(latency_ms) * factor])
        _write(out / name, rows)
    links = _rows(source / "workers_workers_link.csv")
    _write(out / "workers_workers_link.csv", [[copy_name(a, i), copy_name(b, j), price] for a, b, price in links
                                              for i in range(1, copies + 1) for j in range(1, copies + 1)])
    sources = _rows(source / "sources_workers_link.csv")
    _write(out / "sources_workers_link.csv", [[s, copy_name(w, c), price] for s, w, price in sources
                                              for c in range(1, copies + 1)])
    scale = sum(rng.uniform(*RATE_SCALE) for _ in range(copies))
    _write(out / "input_injection_rates.csv", [[s, round(float(rate) * scale, 3)]
                                               for s, rate in _rows(source / "input_injection_rates.csv")])
    return out
