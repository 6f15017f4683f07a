"""The one door to the MILP/LP solvers: every model the optimizer builds is solved through :func:`solve`.

Why one module. Three things must hold for every solve and are easy to get wrong in several places:

- *HiGHS stays silent.* HiGHS prints a banner to the process's stdout (fd 1, from C++) the first
  time a solver is constructed, whatever ``output_flag`` says; that would corrupt
  ``jellybean plan --format json``. :func:`silence_highs_banner` constructs the first one with fd 1
  pointed at /dev/null.
- *A fallback is said, never silent.* HiGHS (through ``highspy``) is the default; when it is asked
  for and cannot be imported, the model is solved with CBC (bundled with PuLP) and the outcome says
  so: :attr:`Outcome.fallback` holds the reason and the same sentence is added to
  ``SolverStats.notes`` (which the plan shows), and ``SolverStats.name`` names the solver that ran.
- *One reading of the result.* A solver's status is mapped onto the plan's vocabulary
  (``optimal``, ``feasible`` = a plan found but not proven optimal, ``infeasible``, ``time-limit``),
  with the objective, the best bound and the relative gap ``(objective - bound) / objective`` where
  the solver proves one.

Pure apart from the solver call itself: no I/O of its own beyond the banner's fd juggling.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import pulp

from jellybean.optimizer.plan import SolverStats
from jellybean.spec.errors import did_you_mean

SOLVERS = ("highs", "cbc")


@dataclass
class Outcome:
    """What a solve gave: statistics (status, objective, bound, gap, size), the variables' values by
    name (None when no solution came back), and, when the requested solver could not run, why and
    which ran instead."""

    stats: SolverStats
    values: dict[str, float] | None
    fallback: str | None = None


def solve(
    model: pulp.LpProblem,
    *,
    solver: str = "highs",
    time_limit_s: float | None = None,
    gap_rel: float | None = None,
    threads: int | None = None,
    lp_only: bool = False,
    objective_target: float | None = None,
    start: dict[str, float] | None = None,
    highs_options: Mapping[str, object] | None = None,
) -> Outcome:
    """Solve ``model`` with ``solver`` (``highs`` or ``cbc``) within ``time_limit_s`` seconds of wall
    clock, stopping at a relative gap of ``gap_rel``; ``lp_only`` drops integrality (the LP
    relaxation, whose optimum is a lower bound); ``objective_target`` stops HiGHS at the first plan at
    least that cheap (CBC has no such option and simply solves on); ``start``: values of the model's
    variables, by name, offered to HiGHS as a first plan (those of another model's variables are
    ignored; HiGHS completes or discards it; CBC ignores it); ``highs_options``: further HiGHS
    options by name (CBC ignores them). ``None``: the solver's default.

    HiGHS asked for but not importable: CBC runs instead, stated in :attr:`Outcome.fallback` and in
    the stats' notes."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}{did_you_mean(solver, SOLVERS)}; "
                         f"choose one of {', '.join(SOLVERS)}")
    n_vars = len(model.variables())
    n_cons = model.numConstraints()
    fallback = None
    if solver == "highs":
        try:
            import highspy  # noqa: F401

            stats, values = _run_highs(model, time_limit_s, gap_rel, threads, n_vars, n_cons, lp_only,
                                       objective_target, start, highs_options)
            return Outcome(stats, values)
        except ImportError as exc:
            fallback = f"HiGHS was asked for but cannot be loaded ({exc}); solved with CBC instead"
    if lp_only:
        for var in model.variables():
            if var.cat != "Continuous":
                var.cat = "Continuous"
    stats, values = _run_cbc(model, time_limit_s, gap_rel, n_vars, n_cons)
    if fallback is not None:
        stats.notes.append(fallback)
    return Outcome(stats, values, fallback)


def solver_name(solver: str) -> str:
    """The name a solve with ``solver`` reports (``HiGHS`` or ``CBC``), the fallback included."""
    if solver == "highs":
        try:
            import highspy  # noqa: F401

            return "HiGHS"
        except ImportError:
            return "CBC"
    return "CBC"


_BANNER_SHOWN = False


def silence_highs_banner() -> None:
    """HiGHS prints its banner to the process's stdout (fd 1, from C++) the first time a solver is
    constructed, regardless of ``output_flag``; that would corrupt ``plan --format json``. Construct
    the first instance with fd 1 pointed at /dev/null; later ones print nothing."""
    global _BANNER_SHOWN
    if _BANNER_SHOWN:
        return
    import os
    import sys

    import highspy

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    _BANNER_SHOWN = True


def _run_highs(model: pulp.LpProblem, time_limit_s: float | None, gap_rel: float | None, threads: int | None,
               n_vars: int, n_cons: int, lp_only: bool = False, objective_target: float | None = None,
               start: dict[str, float] | None = None, highs_options: Mapping[str, object] | None = None
               ) -> tuple[SolverStats, dict[str, float] | None]:
    import highspy

    silence_highs_banner()
    extra = dict(highs_options or {})
    if objective_target is not None:
        extra["objective_target"] = objective_target
    cmd = _Highs(start if start and not lp_only else None, mip=not lp_only, msg=False, timeLimit=time_limit_s,
                 gapRel=gap_rel, threads=threads, **extra)
    model.solve(cmd)
    highs = model.solverModel
    status = highs.getModelStatus()
    info = highs.getInfo()
    has_solution = info.primal_solution_status == 2  # kSolutionStatusFeasible
    ms = highspy.HighsModelStatus
    if status == ms.kOptimal:
        label = "optimal"
    elif status in (ms.kInfeasible, ms.kUnboundedOrInfeasible):
        label = "infeasible"
    elif status == ms.kTimeLimit:
        label = "feasible" if has_solution else "time-limit"
    elif status == ms.kObjectiveTarget:  # stopped at the target: a plan that good, its gap judged by the caller
        label = "feasible"
    else:
        label = highs.modelStatusToString(status).lower()
    gap = None
    bound = None
    objective = None
    if has_solution:
        objective = info.objective_function_value
        mip = not lp_only and any(v.cat == "Integer" for v in model.variables())
        if mip:
            bound = info.mip_dual_bound
            gap = max(0.0, info.mip_gap) if math.isfinite(info.mip_gap) else None
        else:
            bound, gap = objective, 0.0
    stats = SolverStats(name="HiGHS", status=label, gap=gap, seconds=0.0, objective=objective, bound=bound,
                        variables=n_vars, constraints=n_cons)
    if not has_solution or label == "infeasible":
        return stats, None
    values = list(highs.getSolution().col_value)
    return stats, {v.name: values[v.index] for v in model.variables()}


class _Highs(pulp.HiGHS):
    """PuLP's HiGHS interface, plus a first plan: ``start`` (values by variable name) handed to
    ``Highs.setSolution`` once the model is built (PuLP has no warm start for HiGHS)."""

    def __init__(self, start: dict[str, float] | None, **options: object) -> None:
        super().__init__(**options)
        self.start = start

    def callSolver(self, lp: pulp.LpProblem) -> None:  # noqa: N802 - PuLP's method name
        if self.start:
            import numpy as np

            known = [(v.index, self.start[v.name]) for v in lp.variables() if v.name in self.start]
            if known:
                index, value = zip(*known)
                lp.solverModel.setSolution(len(known), np.array(index, dtype=np.int32),
                                           np.array(value, dtype=np.float64))
        super().callSolver(lp)


def _run_cbc(model: pulp.LpProblem, time_limit_s: float | None, gap_rel: float | None, n_vars: int, n_cons: int
             ) -> tuple[SolverStats, dict[str, float] | None]:
    cmd = pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s, gapRel=gap_rel)
    model.solve(cmd)
    status = pulp.LpStatus[model.status]
    label = {"Optimal": "optimal", "Infeasible": "infeasible", "Not Solved": "time-limit",
             "Unbounded": "unbounded", "Undefined": "infeasible"}.get(status, status.lower())
    has_solution = label == "optimal" or model.sol_status in (pulp.LpSolutionIntegerFeasible, pulp.LpSolutionOptimal)
    if label != "optimal" and has_solution:
        label = "feasible"
    objective = pulp.value(model.objective) if has_solution else None
    stats = SolverStats(name="CBC", status=label, gap=(0.0 if label == "optimal" else None), seconds=0.0,
                        objective=objective, bound=objective if label == "optimal" else None,
                        variables=n_vars, constraints=n_cons)
    if not has_solution:
        return stats, None
    return stats, {v.name: (v.varValue or 0.0) for v in model.variables()}
