"""End-to-end accuracy of a workflow as a function of the variant chosen for each stage.

A workflow may have several sinks (stages nothing consumes), each with a target of its own
(:class:`~jellybean.optimizer.problem.SinkTarget`). A sink's accuracy depends on the variants of
the sink and of the stages upstream of it (its ``stages``), and each sink has its own model, from
three sources tried in this order (the plan says which one each sink used):

1. **A measured end-to-end table** (``ModelZoo.spec.accuracy_tables``): the accuracy for each
   measured combination of variants. Used when the sink's SLO names it, or when it covers the sink:
   each of its tasks is run by exactly one of the sink's stages and every other of them has a single
   candidate variant. Combinations missing from the table are not allowed.
2. **Per-stage profiles** (JellyBean's form, ``Variant.accuracy_profile``): each sample says "with
   inputs at least this accurate, the output reaches ``output``". A stage's accuracy is the best
   sample output whose input requirements its inputs meet; source-fed stages have the variant's
   own ``accuracy``. Used when every variant of every one of the sink's stages fed by other stages
   has samples.
3. **Default composition**: errors compound independently along the DAG, so
   ``A_k = 100 * prod_{s in stages(k)} (a_s / 100)`` over the sink's stages, where ``a_s`` is the
   variant's own accuracy. In the MILP this is linear in logs:
   ``sum_{s in stages(k)} sum_v y[s,v] ln(a_v/100) >= ln(A_k/100)``.

Besides the sinks' targets, a stage may carry a minimum on its task's own metric
(``StageInfo.min_accuracy``): its variant's own ``accuracy`` must reach it. A combination of
variants is *admissible* when every sink meets its target and every stage its minimum
(:meth:`AccuracyModel.shortfalls`), the one test every strategy applies.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from jellybean.optimizer.problem import Problem, SinkTarget
from jellybean.spec.zoo import AccuracyTable

EPS = 1e-9


@dataclass
class SinkAccuracy:
    """The accuracy model of one sink."""

    sink: str
    kind: str  # "table" | "profiles" | "product"
    table: AccuracyTable | None
    table_stages: list[str]  # stage per table column
    description: str
    stages: list[str]  # the stages its accuracy depends on: the sink and those upstream

    def evaluate(self, problem: Problem, models: dict[str, str]) -> float | None:
        """The sink's accuracy under a variant assignment (which must name its stages); None when the
        table has no such row."""
        if self.kind == "table":
            assert self.table is not None
            wanted = [models[s] for s in self.table_stages]
            for row in self.table.rows:
                if row.variants == wanted:
                    return row.accuracy
            return None
        if self.kind == "product":
            value = 100.0
            for stage in self.stages:
                value *= max(problem.stages[stage].variant(models[stage]).accuracy, 0.0) / 100.0
            return value
        achieved: dict[str, float] = {}
        for stage in self.stages:
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
        result = achieved[self.sink]
        return None if result == -math.inf else result


@dataclass
class AccuracyModel:
    """The accuracy models of every sink (``sinks``, in the problem's order of sinks).

    ``kind``, ``table``, ``table_stages`` and :meth:`evaluate` are the first sink's (the only one of
    a workflow with one sink); :meth:`per_sink` gives each sink's accuracy and :meth:`shortfalls`
    whatever keeps an assignment from being admissible."""

    sinks: list[SinkAccuracy]

    @property
    def first(self) -> SinkAccuracy:
        return self.sinks[0]

    @property
    def kind(self) -> str:
        return self.first.kind

    @property
    def table(self) -> AccuracyTable | None:
        return self.first.table

    @property
    def table_stages(self) -> list[str]:
        return self.first.table_stages

    @property
    def description(self) -> str:
        """How accuracy is modelled: the first sink's way, and each other sink's, named, when they differ."""
        if len({m.description for m in self.sinks}) == 1:
            return self.first.description
        return "; ".join(f"{m.sink}: {m.description}" for m in self.sinks)

    def evaluate(self, problem: Problem, models: dict[str, str]) -> float | None:
        """The first sink's accuracy (the workflow's, with one sink); None when its table has no such row."""
        return self.first.evaluate(problem, models)

    def per_sink(self, problem: Problem, models: dict[str, str]) -> dict[str, float | None]:
        """Sink -> its accuracy under ``models`` (None: its table has no such row)."""
        return {m.sink: m.evaluate(problem, models) for m in self.sinks}

    def shortfalls(self, problem: Problem, models: dict[str, str], tol: float = EPS) -> list[str]:
        """Why ``models`` is not admissible, in words: each sink below its target (or outside its
        table) and each stage below its minimum; empty when it is admissible."""
        out = []
        several = len(problem.sinks) > 1
        for target, model in zip(problem.sinks, self.sinks):
            value = model.evaluate(problem, models)
            if value is None or value < target.accuracy_target - tol:
                at = f" at sink {target.stage}" if several else ""
                out.append(f"accuracy {value}{at} below target {target.accuracy_target}")
        for s in problem.order:
            info = problem.stages[s]
            if s in models and not info.meets_minimum(models[s], tol):
                out.append(f"stage {s} runs {models[s]} ({info.metric} {info.variant(models[s]).accuracy:g}), "
                           f"below its minimum {info.min_accuracy:g}")
        return out

    def admissible(self, problem: Problem, models: dict[str, str], tol: float = EPS) -> bool:
        """Every sink meets its target and every stage its minimum."""
        return not self.shortfalls(problem, models, tol)

    def ranking(self, problem: Problem, models: dict[str, str]) -> tuple[float, ...]:
        """Every sink's accuracy, in the sinks' order (-inf where unknown): what ties are broken by,
        higher first."""
        return tuple(-math.inf if (a := m.evaluate(problem, models)) is None else a for m in self.sinks)


def targets_text(problem: Problem) -> str:
    """The accuracy objectives in words, for messages: ``the accuracy target 56`` for one sink, else
    each sink's, and the stages' minimums where there are any."""
    if len(problem.sinks) == 1:
        text = f"the accuracy target {problem.accuracy_target}"
    else:
        text = "the accuracy targets (" + ", ".join(f"{t.stage} {t.accuracy_target:g}" for t in problem.sinks) + ")"
    minimums = [f"{s} {info.metric} >= {info.min_accuracy:g}" for s, info in problem.stages.items()
                if info.min_accuracy is not None]
    return text + (f" and the stages' minimums ({', '.join(minimums)})" if minimums else "")


def choose_model(problem: Problem) -> AccuracyModel:
    """Every sink's accuracy model (:func:`choose_sink_model`)."""
    return AccuracyModel([choose_sink_model(problem, target) for target in problem.sinks])


def choose_sink_model(problem: Problem, target: SinkTarget) -> SinkAccuracy:
    """A sink's accuracy model, in the order of the module docstring: the table its SLO names (an
    error if it does not cover the sink), else the first of the zoo's tables that covers it, else
    JellyBean's per-stage profiles where every one of its stages fed by stages has them, else the
    product over its stages."""
    mine = target.stages
    stages_by_task: dict[str, list[str]] = {}
    for name in mine:
        stages_by_task.setdefault(problem.stages[name].task, []).append(name)

    def covers(table: AccuracyTable) -> list[str] | None:
        columns = []
        for task in table.tasks:
            runners = stages_by_task.get(task, [])
            if len(runners) != 1:
                return None
            columns.append(runners[0])
        for name in mine:
            if name not in columns and len(problem.stages[name].variants) != 1:
                return None
        return columns

    def model(kind: str, table: AccuracyTable | None, columns: list[str], description: str) -> SinkAccuracy:
        return SinkAccuracy(target.stage, kind, table, columns, description, list(mine))

    if target.accuracy_table is not None:
        table = target.accuracy_table
        columns = covers(table)
        if columns is None:
            what = f"workflow {problem.name!r}" if len(problem.sinks) == 1 else f"sink {target.stage!r} of " \
                f"workflow {problem.name!r} (the sink and the stages upstream of it)"
            raise ValueError(
                f"accuracy table {table.name!r} does not cover {what}: each of its tasks "
                "must be run by exactly one stage and every other stage must have a single variant"
            )
        return model("table", table, columns, f"end-to-end table {table.name!r}")
    for table in problem.accuracy_tables:
        columns = covers(table)
        if columns is not None:
            return model("table", table, columns, f"end-to-end table {table.name!r}")
    fed = [problem.stages[n] for n in mine if any(not e.from_source for e in problem.stages[n].inputs)]
    if fed and all(v.accuracy_profile for info in fed for v in info.variants):
        return model("profiles", None, [], "per-stage accuracy profiles (JellyBean form)")
    return model("product", None, [], "default composition: product of stage accuracies")


def enumerate_combinations(problem: Problem, limit: int = 200_000) -> list[dict[str, str]] | None:
    """Every variant assignment (for brute force and small heuristics), or None when there are too many."""
    names = problem.order
    sizes = [len(problem.stages[n].variants) for n in names]
    if math.prod(sizes) > limit:
        return None
    return [dict(zip(names, combo)) for combo in itertools.product(
        *[[v.name for v in problem.stages[n].variants] for n in names])]
