"""End-to-end accuracy of a workflow as a function of the variant chosen for each stage.

Three sources, tried in this order, and the plan says which one it used:

1. **A measured end-to-end table** (``ModelZoo.spec.accuracy_tables``): the workflow's accuracy for
   each measured combination of variants. Used when the SLO names it, or when it covers the
   workflow: each of its tasks is run by exactly one stage and every other stage has a single
   candidate variant. Combinations missing from the table are not allowed.
2. **Per-stage profiles** (JellyBean's form, ``Variant.accuracy_profile``): each sample says "with
   inputs at least this accurate, the output reaches ``output``". A stage's accuracy is the best
   sample output whose input requirements its inputs meet; source-fed stages have the variant's
   own ``accuracy``. Used when every variant of every stage fed by other stages has samples.
3. **Default composition**: errors compound independently along the DAG, so
   ``A = 100 * prod_s (a_s / 100)`` over all stages, where ``a_s`` is the variant's own accuracy.
   In the MILP this is linear in logs: ``sum_s sum_v y[s,v] ln(a_v/100) >= ln(A_target/100)``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from jellybean.optimizer.problem import Problem
from jellybean.spec.zoo import AccuracyTable

EPS = 1e-9


@dataclass
class AccuracyModel:
    kind: str  # "table" | "profiles" | "product"
    table: AccuracyTable | None
    table_stages: list[str]  # stage per table column
    description: str

    def evaluate(self, problem: Problem, models: dict[str, str]) -> float | None:
        """Accuracy of a complete variant assignment; None when the table has no such row."""
        if self.kind == "table":
            assert self.table is not None
            wanted = [models[s] for s in self.table_stages]
            for row in self.table.rows:
                if row.variants == wanted:
                    return row.accuracy
            return None
        if self.kind == "product":
            value = 100.0
            for stage, variant in models.items():
                value *= max(problem.stages[stage].variant(variant).accuracy, 0.0) / 100.0
            return value
        achieved: dict[str, float] = {}
        for stage in problem.order:
            info = problem.stages[stage]
            variant = info.variant(models[stage])
            upstream = [e.src for e in info.inputs if not e.from_source]
            if not upstream:
                achieved[stage] = variant.accuracy
                continue
            best = -math.inf
            for sample in variant.accuracy_profile or []:
                ok = all(
                    achieved[u] + EPS >= sample.inputs[problem.stages[u].task]
                    for u in upstream
                    if problem.stages[u].task in sample.inputs
                )
                if ok:
                    best = max(best, sample.output)
            achieved[stage] = best
        result = achieved[problem.sink]
        return None if result == -math.inf else result


def choose_model(problem: Problem) -> AccuracyModel:
    """The workflow's accuracy model, in the order of the module docstring: the table the SLO names
    (an error if it does not cover the workflow), else the first of the zoo's tables that covers it,
    else JellyBean's per-stage profiles where every stage fed by stages has them, else the product."""
    stages_by_task: dict[str, list[str]] = {}
    for name, info in problem.stages.items():
        stages_by_task.setdefault(info.task, []).append(name)

    def covers(table: AccuracyTable) -> list[str] | None:
        columns = []
        for task in table.tasks:
            runners = stages_by_task.get(task, [])
            if len(runners) != 1:
                return None
            columns.append(runners[0])
        for name, info in problem.stages.items():
            if name not in columns and len(info.variants) != 1:
                return None
        return columns

    if problem.accuracy_table is not None:
        table = problem.accuracy_table
        columns = covers(table)
        if columns is None:
            raise ValueError(
                f"accuracy table {table.name!r} does not cover workflow {problem.name!r}: each of its tasks "
                "must be run by exactly one stage and every other stage must have a single variant"
            )
        return AccuracyModel("table", table, columns, f"end-to-end table {table.name!r}")
    for table in problem.accuracy_tables:
        columns = covers(table)
        if columns is not None:
            return AccuracyModel("table", table, columns, f"end-to-end table {table.name!r}")
    profiled = True
    for info in problem.stages.values():
        if any(not e.from_source for e in info.inputs):
            if any(not v.accuracy_profile for v in info.variants):
                profiled = False
    if profiled and any(any(not e.from_source for e in i.inputs) for i in problem.stages.values()):
        return AccuracyModel("profiles", None, [], "per-stage accuracy profiles (JellyBean form)")
    return AccuracyModel("product", None, [], "default composition: product of stage accuracies")


def enumerate_combinations(problem: Problem, limit: int = 200_000) -> list[dict[str, str]] | None:
    """Every variant assignment (for brute force and small heuristics), or None when there are too many."""
    names = problem.order
    sizes = [len(problem.stages[n].variants) for n in names]
    if math.prod(sizes) > limit:
        return None
    return [dict(zip(names, combo)) for combo in itertools.product(
        *[[v.name for v in problem.stages[n].variants] for n in names])]
