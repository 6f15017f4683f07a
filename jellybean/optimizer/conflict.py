"""Which constraints conflict: the smallest set of them that admits no plan, found by a deletion filter.

When no plan exists although each limit can be met alone, the useful answer names the limits that
cannot be met *together*: a set of constraints that admits no plan while dropping any one of them
admits one, an irreducible infeasible subset (IIS). :func:`find_conflict` finds one over the
constraints a user can change (:data:`FAMILIES`); the facts they are judged against stay: the
sources' rates, the site tree and its link latencies, the zoo's profiles, the variants a stage may
use, and the strategy's own restriction (cloud-only's tiers, two-stage's variants).

Dropping a constraint (:func:`relax`), family by family:

- ``placement`` of a stage (its tiers and sites), ``batch_sizes`` the workflow allows a stage, the
  ``memory`` of an instance group: the options are compiled again without it
  (:func:`jellybean.optimizer.problem.compile_options`), which also drops the shared mode's
  memory row of that group;
- ``downward``: data may flow down the tiers (the topology's ``allow_downward_flows``), the rate
  bounds recomputed for it;
- ``output``: the results are no longer carried to the site the output is pinned to;
- ``instances`` of a group (its ``count`` / ``max_count``): the limit raised to what the traffic
  could ever need there, ``sum_s ceil(R_s / (h mu_min))`` over the stages it can serve (``R_s`` the
  stage's whole rate bound, ``mu_min`` its slowest option there), so it cannot bind;
- ``bandwidth`` of a link direction, the ``accuracy`` target: their rows are left out of the MILP
  (:class:`jellybean.optimizer.milp.Dropped`); the ``latency`` bound: ``latency=False``.

Each only adds plans (monotone), which is what makes the filter sound.

The filter, over blocks (a QuickXplain-like halving of the classic deletion filter): the blocks are
first the families, whole, in the order of :data:`FAMILIES`; each is tested by solving the problem
without it and without everything removed so far. Still no plan: the block is not needed, and is
removed. A plan: the family is kept. Then each kept family is narrowed: its halves are tested in
turn, a block that is needed is split again, down to single constraints. Every removal is proven
(HiGHS proves the rest infeasible), so what is kept admits no plan; a kept constraint was needed
beside a superset of what is kept at the end, so dropping it from the final set admits a plan too:
the result is irreducible. It costs one solve per family, plus about ``2 log2(n)`` per kept
constraint among the ``n`` of its family (``2n`` where all of a family is needed, as when a tier's
every instance is at capacity). A solve that ends without a verdict (the time limit, or
:data:`MAX_SOLVES`) keeps its block: the conflict is then not proven smallest
(:attr:`Conflict.minimal`), though the answer over whole families, found first, usually is
(:attr:`Conflict.families_minimal`).

Which IIS is found, where there are several, follows the order: the families tested last are kept
when either would do. The SLO (accuracy, latency) is tested last, the workflow's and topology's
policies (downward flows, outputs, batch sizes, placement) first: the answer says what the SLO
conflicts with.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from jellybean.optimizer.accuracy import AccuracyModel
from jellybean.optimizer.milp import Dropped, solve_milp
from jellybean.optimizer.problem import Group, Problem, compile_options, member_rate_bounds
from jellybean.spec.zoo import Variant

#: The constraint families, in the order the filter tests them (see the module docstring).
FAMILIES = ("downward", "output", "batch_sizes", "placement", "memory", "instances", "bandwidth", "latency",
            "accuracy")
#: At most this many feasibility solves per conflict; past it the rest is kept, unproven.
MAX_SOLVES = 60


@dataclass(frozen=True, order=True)
class Constraint:
    """One constraint a user can change: its ``family`` (one of :data:`FAMILIES`) and which one,
    ``key``: ``(stage,)`` for placement and batch sizes, ``(group index,)`` for memory and
    instances, ``(node index, "up" | "down")`` for a link's bandwidth, ``(output name,)`` for an
    output; ``()`` for the downward flows, the latency bound and the accuracy target."""

    family: str
    key: tuple[Any, ...] = ()  # its shape is the family's (above)


@dataclass
class Conflict:
    """What :func:`find_conflict` found: ``members`` admit no plan, and (when ``minimal``) dropping
    any one of them admits one. ``families_minimal``: dropping all of any one family's members
    admits a plan (proven first, so it holds even where the search stopped before narrowing a family
    to its fewest members: those families are ``unnarrowed``). ``relaxed`` is the problem with every
    other candidate constraint dropped, the setting in which the members conflict (its options,
    counts and links are what the explanation quotes); ``solves`` feasibility solves were run."""

    members: list[Constraint]
    relaxed: Problem
    minimal: bool
    solves: int
    families_minimal: bool = True
    unnarrowed: list[str] = field(default_factory=list)


def candidates(problem: Problem, allowed_tiers: set[str] | None = None) -> list[list[Constraint]]:
    """The constraints that can bind, per family in the order of :data:`FAMILIES` (families with none
    left out): downward flows where the tree has links; each output; each stage's batch sizes and
    placement where it restricts; the memory of each group too small for a variant profiled on its
    hardware (or, shared, for all of them together); each group's count; each link direction with a
    bandwidth; the latency bound if any; the accuracy target. Groups outside ``allowed_tiers`` are
    left out: the strategy uses none of them."""
    nodes, stages = problem.nodes, problem.stages
    everywhere = set(range(len(nodes)))
    groups = [g for g in problem.groups
              if allowed_tiers is None or nodes[g.node].tier.value in allowed_tiers]

    def profiled(g: Group) -> list[Variant]:
        return [v for s in problem.order for v in stages[s].variants if v.profile_for(g.hardware) is not None]

    def memory_binds(g: Group) -> bool:
        if g.memory_mb is None:
            return False
        sizes = [v.memory_mb for v in profiled(g)]
        return any(size > g.memory_mb for size in sizes) or (problem.sharing == "shared" and sum(sizes) > g.memory_mb)

    families = {
        "downward": [Constraint("downward")] if not problem.allow_downward and len(nodes) > 1 else [],
        "output": [Constraint("output", (o.name,)) for o in problem.outputs],
        "batch_sizes": [Constraint("batch_sizes", (s,)) for s in problem.order if stages[s].batch_sizes is not None],
        "placement": [Constraint("placement", (s,)) for s in problem.order if stages[s].allowed_nodes != everywhere],
        "memory": [Constraint("memory", (g.index,)) for g in groups if memory_binds(g)],
        "instances": [Constraint("instances", (g.index,)) for g in groups if profiled(g)],
        "bandwidth": [Constraint("bandwidth", (n.index, direction)) for n in nodes if n.parent is not None
                      for direction, link in (("up", n.up), ("down", n.down))
                      if link is not None and link.bandwidth_mbps is not None],
        "latency": [Constraint("latency")] if problem.latency_bound_ms is not None else [],
        "accuracy": [Constraint("accuracy")],
    }
    return [families[f] for f in FAMILIES if families[f]]


def relax(problem: Problem, dropped: Collection[Constraint]) -> tuple[Problem, Dropped, bool]:
    """``problem`` without the ``dropped`` constraints (see the module docstring): the relaxed
    problem, what the MILP leaves out (:class:`Dropped`), and whether the latency bound stays."""
    keys = {f: {c.key[0] for c in dropped if c.family == f and c.key} for f in FAMILIES}
    families = {c.family for c in dropped}
    changes: dict[str, Any] = {}  # Problem's fields to replace, of their several types
    stages, groups = problem.stages, problem.groups
    if keys["placement"] or keys["batch_sizes"]:
        everywhere = set(range(len(problem.nodes)))
        stages = {name: dataclasses.replace(
            info, allowed_nodes=everywhere if name in keys["placement"] else info.allowed_nodes,
            batch_sizes=None if name in keys["batch_sizes"] else info.batch_sizes) for name, info in stages.items()}
    if keys["memory"]:
        groups = [dataclasses.replace(g, memory_mb=None) if g.index in keys["memory"] else g for g in groups]
    if stages is not problem.stages or groups is not problem.groups:
        options, by_stage = compile_options(problem.order, stages, groups,
                                            latency_bound=problem.latency_bound_ms is not None,
                                            hop_ms=problem.hop_ms, batch_wait_ms=problem.batch_wait_ms)
        changes.update(stages=stages, groups=groups, options=options, options_by_stage=by_stage)
    if "downward" in families:
        changes.update(allow_downward=True, member_rate_bound=member_rate_bounds(
            problem.nodes, problem.order, stages, problem.source_rates, True))
    if keys["output"]:
        changes.update(outputs=[o for o in problem.outputs if o.name not in keys["output"]])
    relaxed = dataclasses.replace(problem, **changes) if changes else problem
    if keys["instances"]:
        relaxed = dataclasses.replace(relaxed, groups=[
            dataclasses.replace(g, limit=max(g.limit, enough_instances(relaxed, g.index)))
            if g.index in keys["instances"] else g for g in relaxed.groups])
    links = frozenset((node, direction) for c in dropped if c.family == "bandwidth" for node, direction in [c.key])
    return relaxed, Dropped(links=links, accuracy_target="accuracy" in families), "latency" not in families


def enough_instances(problem: Problem, group: int) -> int:
    """Instances of ``group`` per site that no plan can need more of: every stage it can serve at
    its whole rate bound on its slowest option there, ``sum_s ceil(R_s / (h mu_min))``."""
    slowest: dict[str, float] = {}
    for o in problem.options:
        if o.group == group:
            slowest[o.stage] = min(slowest.get(o.stage, math.inf), o.throughput_per_s)
    h = problem.max_utilization
    return sum(math.ceil(problem.stages[s].rate_bound_per_s / (h * mu) - 1e-9) for s, mu in slowest.items()) + 1


def find_conflict(problem: Problem, accuracy: AccuracyModel, *, allowed_tiers: set[str] | None = None,
                  fixed_models: dict[str, str] | None = None, time_limit_s: float = 30.0, solver: str = "highs",
                  max_solves: int = MAX_SOLVES) -> Conflict:
    """An irreducible set of constraints that admits no plan (see the module docstring), for a
    ``problem`` that has none, within ``time_limit_s`` (wall clock) and ``max_solves`` solves.
    ``allowed_tiers`` and ``fixed_models``: the strategy's restriction, kept throughout."""
    deadline = time.perf_counter() + time_limit_s
    removed: set[Constraint] = set()
    solves = 0

    def admits_plan(block: list[Constraint]) -> bool | None:
        """Whether the problem without ``removed`` and ``block`` has a plan (None: no verdict in time)."""
        nonlocal solves
        left = deadline - time.perf_counter()
        if solves >= max_solves or left <= 0.05:
            return None
        relaxed, dropped, latency = relax(problem, removed | set(block))
        result = solve_milp(relaxed, accuracy, solver=solver, time_limit_s=max(0.05, left / 2), gap_rel=1.0,
                            fixed_models=fixed_models, allowed_tiers=allowed_tiers, latency=latency, dropped=dropped)
        solves += 1
        if result.solution is None and result.stats.status == "infeasible":
            return False
        return True if result.solution is not None else None

    # Families first, whole: the answer over families is proven before any time goes to narrowing one.
    families, families_minimal = [], True
    for family in candidates(problem, allowed_tiers):
        verdict = admits_plan(family)
        if verdict is False:
            removed.update(family)  # proven: the rest admits no plan without this family
        else:
            families.append(family)
            families_minimal = families_minimal and verdict is True
    # Then each kept family narrowed to its members, by halving.
    kept: list[Constraint] = []
    minimal, unnarrowed = families_minimal, []
    for family in families:
        queue: deque[list[Constraint]] = deque([family[:len(family) // 2], family[len(family) // 2:]]) \
            if len(family) > 1 else deque()
        if len(family) == 1:
            kept.extend(family)
        while queue:
            block = queue.popleft()
            verdict = admits_plan(block)
            if verdict is False:
                removed.update(block)
            elif len(block) == 1 or verdict is None:
                kept.extend(block)
                if verdict is None:
                    minimal = False
                    if family[0].family not in unnarrowed:
                        unnarrowed.append(family[0].family)
            else:
                queue.appendleft(block[len(block) // 2:])
                queue.appendleft(block[:len(block) // 2])
    kept.sort(key=lambda c: (FAMILIES.index(c.family), c.key))
    return Conflict(kept, relax(problem, removed)[0], minimal, solves, families_minimal, unnarrowed)
