r"""The optimal planner: one mixed-integer linear program that chooses variants and placement jointly.

Notation (all per *member* site of a node; a node groups ``M_i`` identical sibling sites, see
:mod:`jellybean.optimizer.problem`)

- ``S`` stages in topological order; ``V_s`` the variants of stage ``s``; ``E`` the workflow edges
  ``e = (u -> s)``, ``u`` a source group or a stage; ``rho_{e,v}`` requests of ``s`` per request of
  ``u`` when ``u`` runs variant ``v``.
- ``N`` nodes (site classes) forming a forest; ``M_i`` the number of sites in node ``i``; ``m_j`` the
  number of members of child ``j`` under one member of its parent.
- ``G`` instance groups; group ``g`` at node ``i(g)`` has ``L_g`` instances per site at
  ``p_g`` $/h each, and memory ``Mem_g``.
- ``O`` options ``o = (s, v, g, b)``: serving ``s`` with ``v`` on ``g`` at batch ``b``, one instance
  serving ``mu_o = b * 1000 / latency_ms`` requests/s at full load; ``h`` the utilisation cap.
- ``K`` commodities ``k = (e, c)``: messages on edge ``e`` whose upstream variants share one message
  size ``kb_k`` (a source edge has one, the payload).

Variables

- ``y_{s,v} in {0,1}``: stage ``s`` runs variant ``v``;  ``sum_v y_{s,v} = 1``.
- ``r_o >= 0``: requests/s served with option ``o``; ``r_o <= R_s y_{s,v}`` (``R_s`` bounds the
  stage's rate).
- exclusive mode: ``n_{g,s} in Z+``, instances of ``g`` dedicated to ``s``;
  shared mode: ``n_g in Z+``, instances of ``g`` in use, and, where ``g`` has a memory limit,
  ``z_{g,s,v} in {0,1}``: ``g`` hosts a replica of ``(s, v)``.
- ``up_{k,i}, down_{k,i} >= 0``: messages/s of ``k`` on node ``i``'s uplink (``down`` only when
  the topology allows flows down the tiers); ``q_{k,i} >= 0``: messages of ``k`` consumed at ``i``.

Constraints (each family is built by one function, called in this order by :func:`_build`:
:func:`_variant_choice`, :func:`_rates`, :func:`_capacity`, :func:`_flow_conservation`, :func:`_joins`,
:func:`_bandwidth`, :func:`_accuracy`, :func:`_latency`, :func:`_churn_terms`, :func:`_carbon`)

- Flow conservation on the tree, for every commodity and node:
  ``P_{k,i} + down_{k,i} + sum_{j in ch(i)} m_j up_{k,j} = q_{k,i} + up_{k,i} + sum_j m_j down_{k,j}``
  with production ``P_{k,i} = rho_e * rate of the sources at i`` for a source edge and
  ``sum_{v in c} rho_{e,v} sum_{o=(u,v,g,.), i(g)=i} r_o`` for a stage edge.
- Joins pair their inputs one to one: ``sum_c q_{(e,c),i} = lambda_{s,i} = sum_{o=(s,.,g,.), i(g)=i} r_o``
  for every input edge ``e`` of ``s``. Sources are fixed, so every request is served through the DAG.
- Capacity: exclusive ``sum_{o on g, stage s} r_o / mu_o <= h n_{g,s}``, ``sum_s n_{g,s} <= L_g``;
  shared ``sum_{o on g} r_o / mu_o <= h n_g <= h L_g``, memory ``sum_{s,v} Mem_v z_{g,s,v} <= Mem_g``
  with ``r_o <= R_s z_{g,s,v}``: every instance in use hosts a replica of each stage placed on its
  group and the load spreads evenly over them, so per-instance utilisation and memory both hold.
- Bandwidth: ``sum_k kb_k * 8192/10^6 * up_{k,i} <= u B^up_i`` (and likewise down), ``u`` the
  topology's ``max_link_utilization``.
- Accuracy (:mod:`jellybean.optimizer.accuracy`), for every sink ``k`` with target ``A_k``, in its
  own model, over its stages (itself and those upstream): a table picks one admissible row
  ``sum_r t_r = 1, y_{s,v} = sum_{r: r_s = v} t_r``; the product form is
  ``sum_{s in stages(k),v} y_{s,v} ln(a_v/100) >= ln(A_k/100)``; JellyBean's profiles pick one sample
  per stage, ``sum_k w_{s,k} = 1, w_{s,k} <= y_{s,v(k)}``, with certified accuracies
  ``alpha_s = sum_k w_{s,k} out_k``, ``alpha_u >= sum_k w_{s,k} req_{k,u}`` and ``alpha_k >= A_k``.
  A stage's minimum on its task's own metric: ``y_{s,v} = 0`` for every variant below it.
- Latency (only when the SLO bounds it): binaries ``x_{s,i}`` (stage ``s`` runs at ``i``) and
  ``w_o`` (option used), processing time ``P_{s,i} >= lat_o - BIG (1 - w_o)``, completion time
  ``T_{s,i} >= T_{u,j} + net_{j,i} + P_{s,i} - BIG (2 - x_{u,j} - x_{s,i})`` for every node ``j``
  whose data can reach ``i`` (``net`` = link latencies plus the transmission time of one message of
  the chosen variant's size), and ``T_{k,i} <= bound`` at every sink ``k``.
- Carbon (only when the objective or a budget uses it, :mod:`jellybean.optimizer.carbon`): with
  ``I_i`` gCO2/kWh at node ``i`` and an instance drawing ``idle_g + (busy_g - idle_g) u`` W,
  ``C = sum_g I_{i(g)} / 1000 (idle_g M_{i(g)} n_g + (busy_g - idle_g) M_{i(g)} sum_{o on g} r_o / mu_o)``
  gCO2/h, and ``C <= B`` for a carbon budget ``B``.

Objective: minimise $/hour
``cost = sum_g M_{i(g)} p_g n_g + sum_{k,i} M_i (up_{k,i} c^up_i + down_{k,i} c^down_i) kb_k 3600/1024^2``
(the default), or ``C`` gCO2/h (objective ``carbon``), or ``cost + pi C / 10^6`` $/h (objective
``cost+carbon``, carbon at ``pi`` $/tCO2).

Identical instances are one integer count, not one binary each: the aggregated model is exact
(any assignment of loads to individual identical instances maps to a count and back) and has none
of the symmetric optima that stall branch and bound. Identical *sites* are decided alike (the
symmetric restriction, a deployable plan); when any node has several members a second solve with
the counts made integral per node instead of per site (the merged relaxation) gives a lower bound,
and the reported gap is measured against it.

Near-identical instances (one node, one price, speeds a few percent apart: JellyBean's workers
copied and jittered) make branch and bound drown in near-symmetric choices (which of twenty near-equal
workers serves the detector?). :func:`solve_placement` plans them through the *count relaxation*:
each such pool gets an integer count of its instances per stage (exclusive mode) or in use (shared
mode), ``k_P = sum_{g in P} n_g``, while the per-instance counts ``n_g`` become continuous, every
per-instance limit kept. For fixed integral ``k_P`` the instances' constraints form a transportation
polytope, which is integral: the relaxation only convexifies which instances serve, a fraction of one
instance's jitter, so its bound is within hundredths of a percent of the optimum, and its branch and
bound branches on a handful of pool counts. The true problem with the pool counts fixed then gives a
plan (compute cost fixed, only which instance serves what is searched), usually within the gap.

With ``elastic=True`` every limit gets a penalised slack (bandwidth, instance counts, accuracy,
latency, and, unless ``unserved=False``, unserved source traffic): the solution then says which
limits bind and by how much, which is how infeasible problems are explained
(:mod:`jellybean.optimizer.explain`). With ``dropped`` (:class:`Dropped`) a solve leaves constraints
out, which is how the constraints that conflict are found (:mod:`jellybean.optimizer.conflict`).
"""

from __future__ import annotations

import functools
import hashlib
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal, TypedDict, Unpack, overload

import pulp

from jellybean.optimizer.accuracy import AccuracyModel, SinkAccuracy
from jellybean.optimizer.carbon import grams_per_hour, group_power_w, price_per_g
from jellybean.optimizer.plan import SolverStats
from jellybean.optimizer.problem import (
    KB_PER_GB,
    MBIT_PER_KB,
    SECONDS_PER_HOUR,
    Edge,
    Group,
    Option,
    Problem,
    SinkTarget,
    forward_times,
)
from jellybean.optimizer.solution import Solution
from jellybean.optimizer.solver import solve

SLACK_PENALTY = 1e6
EPS = 1e-7


@dataclass
class Commodity:
    edge: str
    src: str
    dst: str  # a stage, or ``output:NAME`` for results carried to a pinned output
    from_source: bool
    kb: float
    variants: list[str]  # upstream variants with this message size (empty for sources)
    ratio: float | None = None  # an output's results per request of the sink


@dataclass
class Slacks:
    """Violations found by an elastic solve, in user units."""

    bandwidth_mbps: dict[tuple[int, str], float] = field(default_factory=dict)  # (node, up|down)
    instances: dict[tuple[int, str | None], float] = field(default_factory=dict)
    accuracy: float = 0.0  # the first sink's (in its model's unit: log for the product form)
    accuracy_by_sink: dict[str, float] = field(default_factory=dict)  # every sink's
    latency_ms: float = 0.0
    unserved: dict[tuple[str, int], float] = field(default_factory=dict)  # (source, node) -> req/s
    carbon_g_per_hour: float = 0.0  # above the carbon budget


@dataclass(frozen=True)
class Dropped:
    """Constraints a solve leaves out, to learn which ones conflict
    (:mod:`jellybean.optimizer.conflict`): the bandwidth of these link directions ``(node, "up"|"down")``
    and the accuracy target (the accuracy model's own structure stays: a table still allows only its
    measured combinations). Leaving a constraint out only adds plans."""

    links: frozenset[tuple[int, str]] = frozenset()
    accuracy_target: bool = False


@dataclass
class MilpResult:
    """A solve's plan (None when none came back; with ``pooled``, a relaxation's, its counts fractions),
    its statistics, the elastic solve's violations, the variables' values by name (a later solve's
    ``start``) and each pool's integral count (:data:`PoolCounts`, when the model had pools)."""

    solution: Solution | None
    stats: SolverStats
    slacks: Slacks | None = None
    values: dict[str, float] | None = None
    pool_counts: PoolCounts | None = None
    #: Seconds spent building the model before the solver ran (outside the solver's own time limit).
    build_s: float = 0.0

    @property
    def objective(self) -> float:
        """The objective of the plan (every solve that returns a plan reports what it costs)."""
        if self.stats.objective is None:
            raise AssertionError(f"a solve ended {self.stats.status} with a plan but no objective")
        return self.stats.objective


def commodities(problem: Problem) -> list[Commodity]:
    out: list[Commodity] = []
    for s in problem.order:
        for edge in problem.stages[s].inputs:
            if edge.from_source:
                out.append(Commodity(edge.key, edge.src, s, True, problem.source_payload_kb[edge.src], []))
                continue
            by_kb: dict[float, list[str]] = {}
            for v in problem.stages[edge.src].variants:
                by_kb.setdefault(v.output_kb, []).append(v.name)
            for kb, names in by_kb.items():
                out.append(Commodity(edge.key, edge.src, s, False, kb, names))
    for output in problem.outputs:
        if output.kb is not None:
            out.append(Commodity(output.key, output.src, output.dst, False, output.kb,
                                 [v.name for v in problem.stages[output.src].variants], output.ratio))
            continue
        by_kb = {}
        for v in problem.stages[output.src].variants:
            by_kb.setdefault(v.output_kb, []).append(v.name)
        for kb, names in by_kb.items():
            out.append(Commodity(output.key, output.src, output.dst, False, kb, names, output.ratio))
    return out


#: HiGHS options for the count relaxation. It is solved for its bound and its pool counts, which its
#: branch and bound finds; the sub-MIP heuristics RINS and RENS cost a third to a half of its work
#: (LP iterations, on the JellyBean-scale instances of `make bench-plan`) and change neither.
RELAXATION_HIGHS_OPTIONS = {"mip_heuristic_run_rins": False, "mip_heuristic_run_rens": False}

#: Of :func:`solve_placement`'s time, the share the count relaxation may take: stopped by the time
#: limit, its incumbent's pool counts still lead to a plan, in the time it leaves.
RELAXATION_SHARE = 0.6

#: A pool's count: (the pool's instance groups, the stage they serve in exclusive mode or None in shared
#: mode) -> instances.
PoolCounts = dict[tuple[tuple[int, ...], str | None], int]


def solve_milp(
    problem: Problem,
    accuracy: AccuracyModel,
    *,
    solver: str = "highs",
    time_limit_s: float = 60.0,
    gap_rel: float = 1e-6,
    fixed_models: dict[str, str] | None = None,
    allowed_tiers: set[str] | None = None,
    relax_symmetry: bool = False,
    elastic: bool = False,
    threads: int | None = None,
    latency: bool = True,
    lp_only: bool = False,
    pooled: bool = False,
    pool_counts: PoolCounts | None = None,
    count_pools: bool = False,
    objective_target: float | None = None,
    start: dict[str, float] | None = None,
    dropped: Dropped = Dropped(),
    unserved: bool = True,
) -> MilpResult:
    """Solve the MILP (see the module docstring). ``latency=False`` drops the latency bound and
    ``lp_only`` drops integrality: both leave relaxations whose optimum is a valid lower bound.
    Pools of near-identical instances (:func:`instance_pools`; :func:`solve_placement` says why):
    ``pooled``, the count relaxation (a lower bound; its per-instance counts are fractions, so its
    solution is no plan: read :attr:`MilpResult.pool_counts`); ``pool_counts``, the true problem with
    each pool's counts fixed (a restriction: its plans are plans of the problem); ``count_pools``, the
    true problem with the pool counts as integer variables too (the same problem, branched on better).
    ``objective_target``: stop at the first plan that cheap (a bound proven elsewhere makes it good
    enough); ``start``: variable values (by name) offered to the solver as a first plan;
    ``dropped``: constraints left out (:class:`Dropped`); ``unserved``: with ``elastic``, whether the
    sources' traffic may go unserved (the last resort, when no violation of the other limits serves it)."""
    started = time.perf_counter()
    pooling = "relaxed" if pooled else "fixed" if pool_counts is not None else "counted" if count_pools else None
    model, handles = _build(problem, accuracy, fixed_models, allowed_tiers, relax_symmetry, elastic, latency,
                            pooling=pooling, pool_counts=pool_counts, dropped=dropped, unserved=unserved)
    build_s = time.perf_counter() - started
    outcome = solve(model, solver=solver, time_limit_s=max(0.01, time_limit_s - build_s), gap_rel=gap_rel,
                    threads=threads, lp_only=lp_only, objective_target=objective_target, start=start,
                    highs_options=RELAXATION_HIGHS_OPTIONS if pooled else None)
    stats, values = outcome.stats, outcome.values
    stats.seconds = time.perf_counter() - started
    stats.notes.append(f"model built in {build_s:.2f}s")
    if values is None:
        return MilpResult(None, stats, build_s=build_s)
    if handles.latency_redundant:
        stats.notes.append("latency bound cannot bind: no placement's worst path exceeds it")
    solution = _decode(problem, handles, values)
    slacks = _decode_slacks(handles, values) if elastic else None
    counts = {key: round(_val(values, var)) for key, var in handles.pools.items()} if handles.pools else None
    return MilpResult(solution, stats, slacks, values=values, pool_counts=counts, build_s=build_s)


# --------------------------------------------------------------------------------------------------
# model building


@dataclass
class _Handles:
    """The model's variables that decoding reads (:func:`_decode`, :func:`_decode_slacks`), filled in
    family by family as :func:`_build` adds them."""

    y: dict[tuple[str, str], pulp.LpVariable | float] = field(default_factory=dict)
    r: dict[int, pulp.LpVariable] = field(default_factory=dict)
    n: dict[tuple[int, str | None], pulp.LpVariable | pulp.LpAffineExpression] = field(default_factory=dict)
    up: dict[tuple[int, int], pulp.LpVariable] = field(default_factory=dict)  # (commodity index, node)
    down: dict[tuple[int, int], pulp.LpVariable] = field(default_factory=dict)
    comms: list[Commodity] = field(default_factory=list)
    relax: bool = False
    slack_bw: dict[tuple[int, str], pulp.LpVariable] = field(default_factory=dict)
    slack_n: dict[tuple[int, str | None], pulp.LpVariable] = field(default_factory=dict)
    slack_acc: dict[str, pulp.LpVariable] = field(default_factory=dict)  # sink -> its accuracy slack
    slack_lat: pulp.LpVariable | None = None
    # (source, node, commodity) -> requests/s of the source left unserved on the commodity's edge
    slack_unserved: dict[tuple[str, int, int], pulp.LpVariable] = field(default_factory=dict)
    slack_carbon: pulp.LpVariable | None = None
    acc_log: bool = False
    latency_redundant: bool = False
    pools: dict[tuple[tuple[int, ...], str | None], pulp.LpVariable] = field(default_factory=dict)
    fractional: set[int] = field(default_factory=set)  # groups whose counts the count relaxation relaxed


@dataclass
class _Model:
    """What every constraint family reads and adds to: the model, the problem, how this solve is
    restricted or relaxed, the options it may use, and the objective's terms, added to in a fixed
    order: ``cost_per_hour`` (instances and traffic, $/h) and ``penalties`` (the elastic solve's
    prices on violated limits, and the re-plan's churn, in the same $/h units); and, where the
    objective uses it, ``carbon_g_per_hour`` (what the instances in use emit, gCO2/h)."""

    lp: pulp.LpProblem
    problem: Problem
    usable: list[Option]
    relax: bool  # the merged relaxation: counts per class of identical sites, not per site
    elastic: bool  # every limit may be exceeded, at a price
    handles: _Handles
    dropped: Dropped = field(default_factory=Dropped)  # constraints this solve leaves out
    unserved: bool = True  # elastic: the sources' traffic may go unserved, at the highest price
    pooling: str | None = None  # pool counts: "relaxed", "fixed", "counted" (see solve_milp) or None
    cost_per_hour: list[pulp.LpAffineExpression] = field(default_factory=list)
    penalties: list[pulp.LpAffineExpression] = field(default_factory=list)
    carbon_g_per_hour: list[pulp.LpAffineExpression] = field(default_factory=list)

    @property
    def exclusive(self) -> bool:
        return self.problem.sharing == "exclusive"

    def members(self, g: Group) -> int:
        """Sites a count of group ``g`` stands for: 1 (counts per member site), or the class's ``M_i``
        in the merged relaxation (counts per class)."""
        return self.problem.nodes[g.node].total if self.relax else 1

    @cached_property
    def opts_by_stage(self) -> dict[str, list[Option]]:
        """Stage -> its usable options."""
        out: dict[str, list[Option]] = {s: [] for s in self.problem.order}
        for o in self.usable:
            out[o.stage].append(o)
        return out

    @cached_property
    def rate_at(self) -> dict[tuple[str, int], list[Option]]:
        """(stage, node) -> the usable options serving the stage there."""
        out: dict[tuple[str, int], list[Option]] = {}
        for o in self.usable:
            out.setdefault((o.stage, self.problem.groups[o.group].node), []).append(o)
        return out


def _build(
    problem: Problem,
    accuracy: AccuracyModel,
    fixed_models: dict[str, str] | None,
    allowed_tiers: set[str] | None,
    relax: bool,
    elastic: bool,
    latency: bool = True,
    pooling: str | None = None,
    pool_counts: PoolCounts | None = None,
    dropped: Dropped = Dropped(),
    unserved: bool = True,
) -> tuple[pulp.LpProblem, _Handles]:
    """The MILP of the module docstring, one constraint family at a time (in this order, which fixes
    the model's rows): variant choice, rates, instance counts and capacity (with the pools' counts),
    flow conservation, joins, bandwidth (with the network cost), accuracy, latency, the re-plan's
    churn and carbon; then the objective (:func:`_objective`). ``dropped``: the constraints left out
    (:class:`Dropped`)."""
    usable = usable_options(problem, fixed_models, allowed_tiers)
    if problem.latency_bound_ms is not None and not elastic and latency:
        usable = prune_by_latency(problem, usable)
    m = _Model(pulp.LpProblem("jellybean", pulp.LpMinimize), problem, usable, relax, elastic, _Handles(relax=relax),
               dropped=dropped, unserved=unserved, pooling=pooling if not relax and not elastic else None)
    _variant_choice(m, fixed_models)
    _rates(m)
    _capacity(m, pool_counts)
    m.handles.comms = commodities(problem)
    consumers = _consumer_nodes(m)
    cons = _flow_variables(m, consumers)
    _flow_conservation(m, cons)
    _joins(m, cons, consumers)
    _bandwidth(m)
    _accuracy(m, accuracy, fixed_models)
    if problem.latency_bound_ms is not None and latency:
        _latency(m, consumers)
    _churn_terms(m)
    _carbon(m)
    m.lp += _objective(m)
    return m.lp, m.handles


def _objective(m: _Model) -> pulp.LpAffineExpression:
    """What is minimised (:class:`jellybean.optimizer.carbon.Objective`): ``cost_per_hour`` ($/h, the
    default), the carbon (gCO2/h), or the cost plus the carbon at its price ($/h); plus the
    penalties (elastic slacks, churn) in every case."""
    objective = m.problem.objective
    if objective.kind == "carbon":
        main = pulp.lpSum(m.carbon_g_per_hour)
    elif objective.kind == "cost+carbon":
        main = pulp.lpSum(m.cost_per_hour) + price_per_g(objective.carbon_price_per_tonne or 0.0) * \
            pulp.lpSum(m.carbon_g_per_hour)
    else:
        main = pulp.lpSum(m.cost_per_hour)
    return main + pulp.lpSum(m.penalties)


def _variant_choice(m: _Model, fixed_models: dict[str, str] | None) -> None:
    """``y_{s,v} in {0,1}``, ``sum_v y_{s,v} = 1``: each stage runs one variant. A stage with one
    candidate, or whose variant is fixed, gets constants (1.0 / 0.0) instead of variables."""
    y = m.handles.y
    for s in m.problem.order:
        names = [v.name for v in m.problem.stages[s].variants]
        if fixed_models is not None:
            for v in names:
                y[(s, v)] = 1.0 if fixed_models[s] == v else 0.0
            continue
        if len(names) == 1:
            y[(s, names[0])] = 1.0
            continue
        for v in names:
            y[(s, v)] = m.lp.add_variable(f"y_{_id(s)}_{_id(v)}", cat="Binary")
        m.lp += pulp.lpSum(y[(s, v)] for v in names) == 1, f"one_variant_{_id(s)}"


def _rates(m: _Model) -> None:
    """``0 <= r_o <= B_{s,i}`` requests/s per member site (``B_{s,i}``: what can reach one site of
    node ``i``, :attr:`Problem.member_rate_bound`), and only on the chosen variant:
    ``r_o <= min(B_{s,i}, h L_g mu_o) y_{s,v}`` (the tighter of the traffic and the whole group's
    capacity, which strengthens the relaxation)."""
    problem, y = m.problem, m.handles.y
    h = problem.max_utilization
    for o in m.usable:
        node = problem.groups[o.group].node
        bound = problem.member_rate_bound.get((o.stage, node), problem.stages[o.stage].rate_bound_per_s)
        r = m.handles.r[o.index] = m.lp.add_variable(f"r_{o.index}", lowBound=0, upBound=bound)
        yv = y[(o.stage, o.variant)]
        if not isinstance(yv, float):
            tight = min(bound, h * problem.groups[o.group].limit * o.throughput_per_s)
            m.lp += _linear([(r, 1.0), (yv, -tight)]) <= 0, f"r_variant_{o.index}"
        elif yv == 0.0:
            r.upBound = 0


def _capacity(m: _Model, pool_counts: PoolCounts | None) -> None:
    """Instance counts and capacity, group by group (:func:`_exclusive_capacity` or
    :func:`_shared_capacity` and :func:`_shared_memory`; a pooled group's load in the count relaxation,
    :func:`_relaxed_counts`), with the merged relaxation's cuts (:func:`_class_fractions`) and the
    pools' counts (:func:`_pool_counts`) where asked for."""
    problem = m.problem
    on_group: dict[int, list[Option]] = {}
    for o in m.usable:
        on_group.setdefault(o.group, []).append(o)
    pools = instance_pools(problem, m.usable) if m.pooling else []
    if m.pooling == "relaxed":
        m.handles.fractional = {g for pool in pools for g in pool}
    for g_index, opts in on_group.items():
        g = problem.groups[g_index]
        extra = None
        if m.elastic:
            extra = m.lp.add_variable(f"slack_n_{g_index}", lowBound=0)
            m.penalties.append(SLACK_PENALTY * extra)
        phi = _class_fractions(m, g, opts)
        if g_index in m.handles.fractional:
            _relaxed_counts(m, g, opts)
        elif m.exclusive:
            _exclusive_capacity(m, g, opts, extra, phi)
        else:
            _shared_capacity(m, g, opts, extra, phi)
            for key in sorted({problem.count_key(o.stage) for o in opts}, key=lambda k: k or ""):
                _shared_memory(m, g, [o for o in opts if problem.count_key(o.stage) == key], key)
    for k, pool in enumerate(pools):
        _pool_counts(m, k, pool, pool_counts)


def _class_fractions(m: _Model, g: Group, opts: list[Option]) -> dict[str, pulp.LpVariable]:
    """The merged relaxation's cuts, for a class of ``M > 1`` sites: ``phi_{g,s} in [0,1]``, the
    fraction of the class's sites hosting stage ``s`` on ``g``, with
    ``sum_o r_o <= min(B_{s,i}, h L_g max mu_o) phi_{g,s}`` (no site serves more than reaches it or
    its instances can) and, by the capacity families, ``n >= M phi`` (each such site needs an
    instance). Valid for the class as a whole; this is what keeps the lower bound tight."""
    if not (m.relax and m.members(g) > 1):
        return {}
    problem = m.problem
    h = problem.max_utilization
    phi: dict[str, pulp.LpVariable] = {}
    for s in sorted({o.stage for o in opts}):
        s_opts = [o for o in opts if o.stage == s]
        var = m.lp.add_variable(f"phi_{g.index}_{_id(s)}", lowBound=0, upBound=1)
        per_site = min(problem.member_rate_bound.get((s, g.node), math.inf),
                       h * g.limit * max(o.throughput_per_s for o in s_opts))
        m.lp += pulp.lpSum(m.handles.r[o.index] for o in s_opts) <= per_site * var, f"phi_rate_{g.index}_{_id(s)}"
        phi[s] = var
    return phi


def _exclusive_capacity(m: _Model, g: Group, opts: list[Option], extra: pulp.LpVariable | None,
                        phi: dict[str, pulp.LpVariable]) -> None:
    """Exclusive mode: ``n_{g,s} in Z+`` instances of ``g`` dedicated to stage ``s``, with capacity
    ``M sum_{o on g, s} r_o / mu_o <= h n_{g,s}`` and the limit ``sum_s n_{g,s} <= M L_g`` (plus the
    elastic slack). Each count costs ``p_g`` $/h per instance at each of the node's sites. Per site,
    the :func:`_site_cut` too."""
    problem, r = m.problem, m.handles.r
    h = problem.max_utilization
    members = m.members(g)
    limit = g.limit * members
    stage_names = sorted({o.stage for o in opts})
    for s in stage_names:
        var = m.lp.add_variable(f"n_{g.index}_{_id(s)}", lowBound=0, upBound=None if m.elastic else limit,
                                cat="Integer")
        m.handles.n[(g.index, s)] = var
        m.lp += _linear([(r[o.index], members / o.throughput_per_s) for o in opts if o.stage == s]
                        + [(var, -h)]) <= 0, f"cap_{g.index}_{_id(s)}"
        if not m.relax:
            _site_cut(m, g, s, [o for o in opts if o.stage == s], var)
        if s in phi:
            m.lp += var >= members * phi[s], f"phi_count_{g.index}_{_id(s)}"
        m.cost_per_hour.append(g.price_per_hour * (1 if m.relax else problem.nodes[g.node].total) * var)
    total = pulp.lpSum(m.handles.n[(g.index, s)] for s in stage_names)
    m.lp += total <= limit + (extra if extra is not None else 0), f"count_{g.index}"
    if extra is not None:
        m.handles.slack_n[(g.index, None)] = extra


def _shared_capacity(m: _Model, g: Group, opts: list[Option], extra: pulp.LpVariable | None,
                     phi: dict[str, pulp.LpVariable]) -> None:
    """Shared mode: ``n_g in Z+`` instances of ``g`` in use, ``M sum_{o on g} r_o / mu_o <= h n_g``,
    ``n_g <= M L_g`` (a bound, or with the elastic slack a constraint); ``p_g`` $/h per instance at
    each site. Per stage on the group, the :func:`_site_cut` and the merged relaxation's ``n >= M phi``.
    Several workflows planned together keep their instances apart (:meth:`Problem.count_key`): one
    count ``n_{g,w}`` per workflow ``w`` on the group, each with its capacity row, and
    ``sum_w n_{g,w} <= M L_g``."""
    problem, r = m.problem, m.handles.r
    h = problem.max_utilization
    members = m.members(g)
    limit = g.limit * members
    keys = sorted({problem.count_key(o.stage) for o in opts}, key=lambda k: k or "")
    counts = []
    for key in keys:
        mine = [o for o in opts if problem.count_key(o.stage) == key]
        label = f"{g.index}" if key is None else f"{g.index}_{_id(key)}"
        var = m.lp.add_variable(f"n_{label}", lowBound=0, upBound=None if m.elastic else limit, cat="Integer")
        m.handles.n[(g.index, key)] = var
        m.lp += _linear([(r[o.index], members / o.throughput_per_s) for o in mine] + [(var, -h)]) <= 0, f"cap_{label}"
        if not m.relax:
            for s in sorted({o.stage for o in mine}):
                _site_cut(m, g, s, [o for o in mine if o.stage == s], var)
        for s, fraction in phi.items():
            if problem.count_key(s) == key:
                m.lp += var >= members * fraction, f"phi_count_{g.index}_{_id(s)}"
        m.cost_per_hour.append(g.price_per_hour * (1 if m.relax else problem.nodes[g.node].total) * var)
        counts.append(var)
    if extra is not None or len(counts) > 1:
        m.lp += pulp.lpSum(counts) <= limit + (extra if extra is not None else 0), f"count_{g.index}"
    if extra is not None:
        m.handles.slack_n[(g.index, None)] = extra


def _relaxed_counts(m: _Model, g: Group, opts: list[Option]) -> None:
    """A pooled group's load in the count relaxation (:func:`_pool_counts`), in instances: the
    instance-time it takes, ``t_{g,s} = sum_{o on g, s} r_o / (h mu_o)`` per stage (exclusive mode) or
    ``t_g = sum_{o on g} r_o / (h mu_o)`` (shared mode), expressions rather than variables, within the
    limit ``sum t <= L_g``. The pool pays for its integral count, which must cover them."""
    r, h = m.handles.r, m.problem.max_utilization
    key_of = m.problem.count_key
    for key in sorted({key_of(o.stage) for o in opts}, key=lambda k: k or ""):
        m.handles.n[(g.index, key)] = _linear([(r[o.index], 1.0 / (h * o.throughput_per_s))
                                               for o in opts if key_of(o.stage) == key])
    m.lp += _linear([(r[o.index], 1.0 / (h * o.throughput_per_s)) for o in opts]) <= g.limit, f"count_{g.index}"


def _pool_counts(m: _Model, k: int, pool: list[int], fixed: PoolCounts | None) -> None:
    """A pool's counts: ``k_{P,s} = sum_{g in P} n_{g,s} in Z+`` per stage (exclusive mode) or
    ``k_P = sum_{g in P} n_g`` (shared mode), valid in the true problem (a sum of integers).
    ``fixed``: each count set to its value (absent: 0), the true problem restricted to those counts.

    The count relaxation keeps only these integers: the pool pays ``p_P k`` and its instances'
    loads ``t`` (:func:`_relaxed_counts`) fit, ``sum_{g in P} t_{g,s} <= k_{P,s}`` and
    ``sum_s k_{P,s} <= sum_{g in P} L_g``. That is the projection of the true constraints with the
    per-instance counts made fractions, ``t_{g,s} <= n_{g,s}``, ``sum_s n_{g,s} <= L_g``,
    ``sum_g n_{g,s} = k_{P,s}`` (spare capacity spreads over the instances, a transportation
    problem). For integral ``k`` that polytope in ``n`` is a transportation polytope, whose vertices
    are integral: the relaxation's capacities are convex combinations of those of true assignments
    of ``k`` instances, at the same cost. Hence a bound within a fraction of one instance's jitter."""
    members = set(pool)
    keys = sorted({key[1] for key in m.handles.n if key[0] in members}, key=lambda s: (s is not None, s or ""))
    limit = sum(m.problem.groups[g].limit for g in pool)
    relaxed = m.pooling == "relaxed"
    counts = []
    for s in keys:
        label = f"pool_{k}" if s is None else f"pool_{k}_{_id(s)}"
        var = m.lp.add_variable(label, lowBound=0, upBound=limit, cat="Integer")
        if fixed is not None:
            var.lowBound = var.upBound = fixed.get((tuple(pool), s), 0)
        terms = [(m.handles.n[(g, s)], 1.0) for g in pool if (g, s) in m.handles.n]
        if relaxed:  # the loads are expressions: their terms
            terms = [term for count, _ in terms for term in count.items()]
        used = _linear(terms + [(var, -1.0)])
        if relaxed:
            m.lp += used <= 0, f"{label}_sum"
            m.cost_per_hour.append(m.problem.groups[pool[0]].price_per_hour * var)
            _pool_site_cuts(m, pool, s, var, label)
        else:
            m.lp += used == 0, f"{label}_sum"
        m.handles.pools[(tuple(pool), s)] = var
        counts.append(var)
    if relaxed and len(counts) > 1:
        m.lp += pulp.lpSum(counts) <= limit, f"pool_{k}_limit"


def _pool_site_cuts(m: _Model, pool: list[int], s: str | None, count: pulp.LpVariable, label: str) -> None:
    """The count relaxation's :func:`_site_cut`, for the pool: per stage ``t`` it serves,
    ``sum_{o on P, t} r_o <= B_{t,i} k`` (``B``: what reaches the node; any load needs ``k >= 1``),
    where ``B`` is below what the pool could serve (else it cannot bind)."""
    problem, r = m.problem, m.handles.r
    node = problem.groups[pool[0]].node
    members = set(pool)
    opts = [o for o in m.usable if o.group in members and problem.count_key(o.stage) == s]
    for t in sorted({o.stage for o in opts}):
        served = [o for o in opts if o.stage == t]
        reach = problem.member_rate_bound.get((t, node), math.inf)
        if math.isfinite(reach) and reach < sum(problem.max_utilization * problem.groups[o.group].limit
                                                * o.throughput_per_s for o in served):
            m.lp += _linear([(r[o.index], 1.0) for o in served] + [(count, -reach)]) <= 0, f"{label}_site_{_id(t)}"


def _shared_memory(m: _Model, g: Group, opts: list[Option], key: str | None = None) -> None:
    """Shared mode, where the models that could share ``g`` do not all fit its memory: ``z_{g,s,v}``
    says ``g`` hosts a replica of ``(s, v)``, with ``z <= y_{s,v}``, ``r_o <= R_s z_{g,s,v}`` and
    ``sum_{s,v} Mem_v z_{g,s,v} <= Mem_g``. Every instance in use hosts every model placed on its
    group (the load spreads evenly over them), so the memory of one instance must hold them all.
    ``opts``: those of one count (``key``, a workflow's when several are planned together: its
    instances host its models only)."""
    problem, y, r = m.problem, m.handles.y, m.handles.r
    hosted = sorted({(o.stage, o.variant) for o in opts})
    memories = {(s, v): problem.stages[s].variant(v).memory_mb for s, v in hosted}
    if g.memory_mb is None or sum(memories.values()) <= g.memory_mb + EPS:
        return
    cat = "Continuous" if m.relax and m.members(g) > 1 else "Binary"
    z = {}
    for s, v in hosted:
        z[(s, v)] = m.lp.add_variable(f"z_{g.index}_{_id(s)}_{_id(v)}", lowBound=0, upBound=1, cat=cat)
        m.lp += z[(s, v)] <= y[(s, v)], f"z_variant_{g.index}_{_id(s)}_{_id(v)}"
        for o in opts:
            if o.stage == s and o.variant == v:
                m.lp += r[o.index] <= problem.stages[s].rate_bound_per_s * z[(s, v)], f"z_rate_{o.index}"
    label = f"{g.index}" if key is None else f"{g.index}_{_id(key)}"
    m.lp += pulp.lpSum(memories[k] * z[k] for k in hosted) <= g.memory_mb, f"mem_{label}"


def _site_cut(m: _Model, g: Group, stage: str, opts: list[Option], count: pulp.LpVariable) -> None:
    """``sum r <= min(B, h L mu_max) * n``: valid because a stage served at all needs n >= 1 and never
    exceeds what reaches the site (B) or what the whole group could serve. Where a site's own traffic
    is below one instance's capacity (most hubs) it is much tighter than ``sum r / mu <= h n``, which
    lets the LP relaxation charge a fraction of an instance: it closes most of the root gap."""
    if not opts:
        return
    problem = m.problem
    reach = problem.member_rate_bound.get((stage, g.node), math.inf)
    most = min(reach, problem.max_utilization * g.limit * max(o.throughput_per_s for o in opts))
    if not math.isfinite(most) or most <= 0:
        return
    m.lp += _linear([(m.handles.r[o.index], 1.0) for o in opts] + [(count, -most)]) <= 0, \
        f"site_cut_{g.index}_{_id(stage)}"


def _consumer_nodes(m: _Model) -> dict[str, set[int]]:
    """Stage (or ``output:NAME``) -> the nodes where it may consume messages: where a usable option
    serves the stage, or the node an output is pinned to."""
    groups = m.problem.groups
    consumers: dict[str, set[int]] = {s: {groups[o.group].node for o in m.opts_by_stage[s]} for s in m.problem.order}
    for output in m.problem.outputs:
        consumers[output.dst] = {output.node}
    return consumers


def _flow_variables(m: _Model, consumers: dict[str, set[int]]) -> dict[tuple[int, int], pulp.LpVariable]:
    """``up_{k,i}, down_{k,i} >= 0`` messages/s of commodity ``k`` per member link of node ``i``, and
    ``q_{k,i} >= 0`` consumed at ``i``; returns ``q``. Only where they can be non-zero: ``up`` on a
    link whose subtree holds a producer of ``k``, ``down`` (when the topology allows flows down the
    tiers) on one whose subtree holds a consumer, ``q`` where ``k``'s consumer may run."""
    problem, groups = m.problem, m.problem.groups
    up, down = m.handles.up, m.handles.down
    cons: dict[tuple[int, int], pulp.LpVariable] = {}
    for k, c in enumerate(m.handles.comms):
        if c.from_source:
            producers = {i for i, rate in problem.source_rates[c.src].items() if rate > 0}
        else:
            producers = {groups[o.group].node for o in m.opts_by_stage[c.src] if o.variant in c.variants}
        below_producer = {a for i in producers for a in problem.ancestors(i)}
        below_consumer = {a for i in consumers[c.dst] for a in problem.ancestors(i)}
        for node in problem.nodes:
            if node.parent is None:
                continue
            if node.index in below_producer:
                up[(k, node.index)] = m.lp.add_variable(f"up_{k}_{node.index}", lowBound=0)
            if problem.allow_downward and node.index in below_consumer:
                down[(k, node.index)] = m.lp.add_variable(f"down_{k}_{node.index}", lowBound=0)
        for i in consumers[c.dst]:
            cons[(k, i)] = m.lp.add_variable(f"q_{k}_{i}", lowBound=0)
    return cons


def _flow_conservation(m: _Model, cons: dict[tuple[int, int], pulp.LpVariable]) -> None:
    """For every commodity ``k`` and node ``i`` (per member site):
    ``P_{k,i} + down_{k,i} + sum_{j in ch(i)} m_j up_{k,j} = q_{k,i} + up_{k,i} + sum_j m_j down_{k,j}``,
    with production ``P`` = the edge's ratio times the sources' rate at ``i`` for a source edge, and
    ``sum_{v in c} rho_{e,v} sum_{o=(u,v,g,.), i(g)=i} r_o`` for a stage edge (an output's ratio for
    results carried to a pinned output). Elastic (unless ``m.unserved`` is off): ``d_{k,i}`` requests/s of
    the source at ``i`` go unserved on edge ``k``, ``P = rho_e (rate_i - d_{k,i})``, at the highest price
    of all; the decoder reads them (:attr:`Slacks.unserved`)."""
    problem, r, up, down = m.problem, m.handles.r, m.handles.up, m.handles.down
    rate_at = m.rate_at
    for k, c in enumerate(m.handles.comms):
        for node in problem.nodes:
            i = node.index
            if c.from_source:
                produced = problem.source_rates[c.src].get(i, 0.0)
                edge = next(e for e in problem.stages[c.dst].inputs if e.key == c.edge)
                production = edge.ratio * produced
                if m.elastic and m.unserved and produced > 0:
                    drop = m.lp.add_variable(f"unserved_{k}_{i}", lowBound=0, upBound=produced)  # req/s of the source
                    m.handles.slack_unserved[(c.src, i, k)] = drop
                    m.penalties.append(SLACK_PENALTY * 10 * drop)
                    production = edge.ratio * (produced - drop)
            elif c.ratio is not None:  # results carried to a pinned output
                production = pulp.lpSum(c.ratio * r[o.index] for o in rate_at.get((c.src, i), [])
                                        if o.variant in c.variants)
            else:
                edge = next(e for e in problem.stages[c.dst].inputs if e.key == c.edge)
                production = pulp.lpSum(
                    edge.ratio_for(o.variant) * r[o.index]
                    for o in rate_at.get((c.src, i), []) if o.variant in c.variants
                )
            inflow: list[float | pulp.LpAffineExpression] = [production]
            outflow: list[pulp.LpAffineExpression] = []
            if (k, i) in down:
                inflow.append(down[(k, i)])
            if (k, i) in up:
                outflow.append(up[(k, i)])
            if (k, i) in cons:
                outflow.append(cons[(k, i)])
            for j in node.children:
                mult = problem.nodes[j].multiplicity
                if (k, j) in up:
                    inflow.append(mult * up[(k, j)])
                if (k, j) in down:
                    outflow.append(mult * down[(k, j)])
            if all(isinstance(t, (int, float)) and t == 0 for t in inflow) and not outflow:
                continue
            m.lp += pulp.lpSum(inflow) == pulp.lpSum(outflow), f"flow_{k}_{i}"


def _joins(m: _Model, cons: dict[tuple[int, int], pulp.LpVariable], consumers: dict[str, set[int]]) -> None:
    """Joins pair their inputs one to one: for every input edge ``e`` of stage ``s`` and node ``i``,
    ``sum_c q_{(e,c),i} = lambda_{s,i} = sum_{o=(s,.,g,.), i(g)=i} r_o`` (each input delivers exactly
    the stage's rate there; sources are fixed, so every request is served through the DAG)."""
    problem, r = m.problem, m.handles.r
    rate_at = m.rate_at
    for s in problem.order:
        for edge in problem.stages[s].inputs:
            ks = [k for k, c in enumerate(m.handles.comms) if c.edge == edge.key]
            for i in consumers[s]:
                stage_rate = pulp.lpSum(r[o.index] for o in rate_at.get((s, i), []))
                m.lp += pulp.lpSum(cons[(k, i)] for k in ks) == stage_rate, f"join_{_id(edge.key)}_{i}"


def _bandwidth(m: _Model) -> None:
    """Per link direction of node ``i``: the network cost ``M_i sum_k c_i kb_k 3600/1024^2 flow_{k,i}``
    $/h (GB/h times $/GB, over the node's sites) and the bandwidth
    ``sum_k kb_k 8192/10^6 flow_{k,i} <= u B_i`` Mbit/s, ``u`` the topology's
    ``max_link_utilization`` (elastic: plus a priced slack; left out for the links in ``m.dropped``)."""
    problem, comms = m.problem, m.handles.comms
    for node in problem.nodes:
        if node.parent is None:
            continue
        for direction, table, link in (("up", m.handles.up, node.up), ("down", m.handles.down, node.down)):
            terms = [(comms[k], var) for (k, i), var in table.items() if i == node.index]
            if not terms or link is None:
                continue
            if link.cost_per_gb > 0:
                m.cost_per_hour.append(pulp.lpSum(
                    node.total * link.cost_per_gb * c.kb * SECONDS_PER_HOUR / KB_PER_GB * var for c, var in terms))
            if link.bandwidth_mbps is not None and (node.index, direction) not in m.dropped.links:
                load = pulp.lpSum(c.kb * MBIT_PER_KB * var for c, var in terms)
                capacity_mbps = problem.max_link_utilization * link.bandwidth_mbps
                if m.elastic:
                    extra = m.lp.add_variable(f"slack_bw_{direction}_{node.index}", lowBound=0)
                    m.handles.slack_bw[(node.index, direction)] = extra
                    m.penalties.append(SLACK_PENALTY * extra / 1000.0)
                    m.lp += load <= capacity_mbps + extra, f"bw_{direction}_{node.index}"
                else:
                    m.lp += load <= capacity_mbps, f"bw_{direction}_{node.index}"


def _accuracy(m: _Model, accuracy: AccuracyModel, fixed_models: dict[str, str] | None) -> None:
    """Every sink's accuracy target, in the form of its accuracy model
    (:mod:`jellybean.optimizer.accuracy`): :func:`_accuracy_table`, :func:`_accuracy_product` or, on
    the certified accuracies of :func:`_profile_accuracies` (built once for every sink that uses
    them), ``alpha_k >= A_k``; then the stages' minimums (:func:`_stage_minimums`). Elastic: each
    sink's target may be missed, at a price (``slack_accuracy``, one per sink). Dropped
    (:class:`Dropped`): no target and no minimum, the models' structure only (a table's measured rows)."""
    problem = m.problem
    several = len(problem.sinks) > 1
    tags = {t.stage: f"_{_id(t.stage)}" if several else "" for t in problem.sinks}
    slacks: dict[str, pulp.LpVariable | None] = {t.stage: None for t in problem.sinks}
    if m.elastic and not m.dropped.accuracy_target:
        for target in problem.sinks:
            slack = slacks[target.stage] = m.lp.add_variable(f"slack_accuracy{tags[target.stage]}", lowBound=0)
            m.handles.slack_acc[target.stage] = slack
            m.penalties.append(SLACK_PENALTY * 100 * slack)
    profiled = [model for model in accuracy.sinks if model.kind == "profiles"]
    alpha = _profile_accuracies(m, {s for model in profiled for s in model.stages}) if profiled else {}
    zero_checked: set[str] = set()
    for target, model in zip(problem.sinks, accuracy.sinks):
        slack, tag = slacks[target.stage], tags[target.stage]
        if model.kind == "table":
            _accuracy_table(m, model, target, fixed_models, slack, tag)
        elif model.kind == "product":
            _accuracy_product(m, model, target, slack, tag, zero_checked)
        elif slack is not None:
            m.lp += alpha[target.stage] + slack >= target.accuracy_target, f"accuracy{tag}"
        elif not m.dropped.accuracy_target:
            m.lp += alpha[target.stage] >= target.accuracy_target, f"accuracy{tag}"
    _stage_minimums(m)


def _accuracy_table(m: _Model, model: SinkAccuracy, target: SinkTarget, fixed_models: dict[str, str] | None,
                    slack: pulp.LpVariable | None, tag: str) -> None:
    """A measured end-to-end table: pick one admissible row, ``t_r in {0,1}``, ``sum_r t_r = 1`` and
    ``y_{s,v} = sum_{r: r_s = v} t_r`` for each of the table's stages. Admissible: its variants are
    candidates, it meets the sink's target (elastic: ``sum_r acc_r t_r + slack >= A`` instead) and
    agrees with the fixed variants, if any."""
    assert model.table is not None
    problem, y, goal = m.problem, m.handles.y, target.accuracy_target
    allowed = {s: {v.name for v in problem.stages[s].variants} for s in model.table_stages}
    rows = [row for row in model.table.rows
            if all(v in allowed[s] for s, v in zip(model.table_stages, row.variants))]
    if not m.elastic and not m.dropped.accuracy_target:
        rows = [row for row in rows if row.accuracy >= goal - 1e-9]
    if fixed_models is not None:
        rows = [row for row in rows if all(fixed_models[s] == v for s, v in zip(model.table_stages, row.variants))]
    t = [m.lp.add_variable(f"t{tag}_{k}", cat="Binary") for k in range(len(rows))]
    m.lp += pulp.lpSum(t) == 1, f"one_table_row{tag}"
    for s in model.table_stages:
        for v in problem.stages[s].variants:
            picks = [t[k] for k, row in enumerate(rows) if row.variants[model.table_stages.index(s)] == v.name]
            m.lp += pulp.lpSum(picks) == y[(s, v.name)], f"table{tag}_{_id(s)}_{_id(v.name)}"
    if slack is not None:
        m.lp += pulp.lpSum(row.accuracy * t[k] for k, row in enumerate(rows)) + slack >= goal, f"accuracy{tag}"


def _accuracy_product(m: _Model, model: SinkAccuracy, target: SinkTarget, slack: pulp.LpVariable | None, tag: str,
                      zero_checked: set[str]) -> None:
    """Errors compound independently along the sink's stages: ``A_k = 100 prod_{s in stages(k)} a_s / 100``,
    linear in logs, ``sum_{s in stages(k), v} y_{s,v} ln(a_v/100) >= ln(A_k/100)``. A variant of
    accuracy 0 cannot be chosen (its log is -inf): ``y = 0``, or an infeasible row where it is fixed
    (once per stage, whichever sinks it feeds)."""
    problem, y, goal = m.problem, m.handles.y, target.accuracy_target
    if goal <= 0 or m.dropped.accuracy_target:
        return
    terms = []
    for s in model.stages:
        for v in problem.stages[s].variants:
            a = v.accuracy
            if a <= 0:
                if s not in zero_checked:
                    if isinstance(y[(s, v.name)], float):
                        if y[(s, v.name)] > 0 and not m.elastic:
                            m.lp += pulp.LpAffineExpression() >= 1, f"accuracy_zero_{_id(s)}"
                    else:
                        m.lp += y[(s, v.name)] == 0, f"accuracy_zero_{_id(s)}_{_id(v.name)}"
                continue
            terms.append(math.log(min(a, 100.0) / 100.0) * y[(s, v.name)])
        zero_checked.add(s)
    m.handles.acc_log = True
    rhs = math.log(min(goal, 100.0) / 100.0) if goal < 100 else 0.0
    if slack is not None:
        m.lp += pulp.lpSum(terms) + slack >= rhs, f"accuracy{tag}"
    else:
        m.lp += pulp.lpSum(terms) >= rhs, f"accuracy{tag}"


def _profile_accuracies(m: _Model, stages: set[str]) -> dict[str, pulp.LpAffineExpression]:
    """JellyBean's per-stage profiles, for ``stages`` (every stage a sink measured by them depends
    on): a stage fed by stages picks one sample, ``w_{s,k} in {0,1}``, ``sum_k w_{s,k} = 1``,
    ``w_{s,k} <= y_{s,v(k)}``; its certified accuracy is ``alpha_s = sum_k w_{s,k} out_k`` and its
    inputs must meet the sample's requirements, ``alpha_u >= sum_k w_{s,k} req_{k,u}`` (a requirement
    not stated: the upstream's lowest). A source-fed stage has ``alpha_s = sum_v a_v y_{s,v}``.
    Returns ``alpha``; the targets are ``alpha_k >= A_k`` (:func:`_accuracy`)."""
    problem, y = m.problem, m.handles.y
    alpha: dict[str, pulp.LpAffineExpression] = {}
    lowest: dict[str, float] = {}
    for s in problem.order:
        if s not in stages:
            continue
        info = problem.stages[s]
        upstream = [e.src for e in info.inputs if not e.from_source]
        if not upstream:
            alpha[s] = pulp.lpSum(v.accuracy * y[(s, v.name)] for v in info.variants)
            lowest[s] = min(v.accuracy for v in info.variants)
            continue
        samples = [(v, smp) for v in info.variants for smp in (v.accuracy_profile or [])]
        w = [m.lp.add_variable(f"w_{_id(s)}_{k}", cat="Binary") for k in range(len(samples))]
        m.lp += pulp.lpSum(w) == 1, f"one_sample_{_id(s)}"
        for v in info.variants:
            m.lp += pulp.lpSum(w[k] for k, (vv, _) in enumerate(samples) if vv.name == v.name) <= y[(s, v.name)], \
                f"sample_variant_{_id(s)}_{_id(v.name)}"
        alpha[s] = pulp.lpSum(smp.output * w[k] for k, (_, smp) in enumerate(samples))
        lowest[s] = min(smp.output for _, smp in samples)
        for u in upstream:
            task = problem.stages[u].task
            need = pulp.lpSum(smp.inputs.get(task, lowest[u]) * w[k] for k, (_, smp) in enumerate(samples))
            m.lp += alpha[u] >= need, f"sample_input_{_id(s)}_{_id(u)}"
    return alpha


def _stage_minimums(m: _Model) -> None:
    """A stage's minimum on its task's own metric (``StageInfo.min_accuracy``): ``y_{s,v} = 0`` for
    every variant below it, or an infeasible row where such a variant is fixed (left out of the
    elastic solve, whose caller checks minimums by enumeration first: an elastic model stays feasible).
    Dropped with the accuracy targets (:class:`Dropped`: they are the workflow's accuracy SLO too)."""
    problem, y = m.problem, m.handles.y
    if m.dropped.accuracy_target:
        return
    for s in problem.order:
        info = problem.stages[s]
        if info.min_accuracy is None:
            continue
        for v in info.variants:
            if info.meets_minimum(v.name):
                continue
            chosen = y[(s, v.name)]
            if isinstance(chosen, float):
                if chosen > 0 and not m.elastic:
                    m.lp += pulp.LpAffineExpression() >= 1, f"min_accuracy_{_id(s)}"
            else:
                m.lp += chosen == 0, f"min_accuracy_{_id(s)}_{_id(v.name)}"


def _latency(m: _Model, consumers: dict[str, set[int]]) -> None:
    """The latency bound, unless no placement at all can break it (then the rows would only slow the
    solver: ``latency_redundant``). Binaries ``x_{s,i}`` (stage ``s`` runs at ``i``) and ``w_o``
    (option used, ``r_o <= R_s w_o``, ``x_{s,i} >= w_o``), processing time
    ``P_{s,i} >= lat_o - BIG (1 - w_o)``, completion time
    ``T_{s,i} >= T_{u,j} + net_{j,i} + P_{s,i} - BIG (2 - x_{u,j} - x_{s,i})`` for every node ``j``
    whose data can reach ``i`` (``net``: the path's latency plus the transmission of one message of
    the chosen variant's size; from a source, the payload's), and ``T_{k,i} <= bound_k`` at every sink
    ``k`` (elastic: plus a priced slack). In the merged relaxation a class's 0/1 decisions become fractions.
    Several workflows planned together may bound their sinks differently, or not at all
    (:meth:`Problem.sink_latency_bound`): the stages of an unbounded one get no latency variables."""
    problem, y, r, comms = m.problem, m.handles.y, m.handles.r, m.handles.comms
    bound = problem.latency_bound_ms
    assert bound is not None
    elastic = m.elastic

    def cat(node: int) -> str:
        # Averaged over a class's members a 0/1 decision becomes a fraction; a lone site keeps it 0/1.
        return "Continuous" if m.relax and problem.nodes[node].total > 1 else "Binary"
    lat = _latency_of(problem)

    sink_bounds = {t.stage: problem.sink_latency_bound(t) for t in problem.sinks}
    worst = worst_case_latency_ms(problem, m.usable, lat, per_sink=True)
    if all(b is None or worst.get(sink, 0.0) <= b for sink, b in sink_bounds.items()):
        m.handles.latency_redundant = True
        return
    bound = max(b for b in sink_bounds.values() if b is not None)
    max_p = max((lat(o) for o in m.usable), default=0.0)
    max_net = 0.0
    for i in range(len(problem.nodes)):
        for j in range(len(problem.nodes)):
            if problem.reachable(j, i):
                biggest = max(c.kb for c in comms)
                max_net = max(max_net, problem.path_latency_ms(j, i, biggest))
    slack = None
    if elastic:
        slack = m.lp.add_variable("slack_latency", lowBound=0)
        m.handles.slack_lat = slack
        m.penalties.append(SLACK_PENALTY * slack / 100.0)
    big = bound + max_net + max_p + 1.0 + (10 * (max_net + max_p) * len(problem.order) if elastic else 0.0)
    x: dict[tuple[str, int], pulp.LpVariable] = {}
    P: dict[tuple[str, int], pulp.LpVariable] = {}  # noqa: N806 - the formulation's P and T
    T: dict[tuple[str, int], pulp.LpVariable] = {}  # noqa: N806
    lp = m.lp
    for (s, i), opts in m.rate_at.items():
        stage_bound = problem.stage_latency_bound(s)
        if stage_bound is None:  # it reaches only unbounded sinks (another workflow's)
            continue
        x[(s, i)] = lp.add_variable(f"x_{_id(s)}_{i}", lowBound=0, upBound=1, cat=cat(i))
        P[(s, i)] = lp.add_variable(f"P_{_id(s)}_{i}", lowBound=0)
        T[(s, i)] = lp.add_variable(f"T_{_id(s)}_{i}", lowBound=0, upBound=None if elastic else stage_bound)
        rate_bound = problem.stages[s].rate_bound_per_s
        for o in opts:
            w = lp.add_variable(f"use_{o.index}", lowBound=0, upBound=1, cat=cat(i))
            lp += r[o.index] <= rate_bound * w, f"use_rate_{o.index}"
            lp += x[(s, i)] >= w, f"use_site_{o.index}"
            lp += P[(s, i)] >= lat(o) - big * (1 - w), f"proc_{o.index}"
    for s in problem.order:
        info = problem.stages[s]
        for i in consumers[s]:
            if (s, i) not in x:
                continue
            for edge in info.inputs:
                if edge.from_source:
                    kb = problem.source_payload_kb[edge.src]
                    for j, rate in problem.source_rates[edge.src].items():
                        if rate <= 0 or not problem.reachable(j, i):
                            continue
                        net = problem.path_latency_ms(j, i, kb)
                        lp += T[(s, i)] >= net + P[(s, i)] - big * (1 - x[(s, i)]), f"lat_src_{_id(s)}_{i}_{j}"
                else:
                    u = edge.src
                    for j in consumers[u]:
                        if (u, j) not in x or not problem.reachable(j, i):
                            continue
                        prop = problem.path_latency_ms(j, i, 0.0)
                        transmit = pulp.lpSum(
                            (problem.path_latency_ms(j, i, v.output_kb) - prop) * y[(u, v.name)]
                            for v in problem.stages[u].variants
                        )
                        lp += T[(s, i)] >= T[(u, j)] + prop + transmit + P[(s, i)] - big * (2 - x[(u, j)] - x[(s, i)]), \
                            f"lat_{_id(u)}_{_id(s)}_{j}_{i}"
    for (s, i), t in T.items():
        if s in sink_bounds and sink_bounds[s] is not None:
            name = f"lat_bound_{i}" if len(sink_bounds) == 1 else f"lat_bound_{_id(s)}_{i}"
            if slack is not None:
                lp += t <= sink_bounds[s] + slack, name
            else:
                lp += t <= sink_bounds[s], name


def _churn_terms(m: _Model) -> None:
    """The re-plan's churn penalty (see :class:`jellybean.optimizer.problem.Churn`): ``c`` $/h per
    stage whose variant changes (``c (1 - y_{s,prev})``) and per instance started or stopped at each
    site, ``c M_i |sum_s n_{g,s} - prev_g|`` (``moved >= +-(n - prev)``). The count part is left out of
    the merged relaxation: dropping a non-negative term keeps its optimum a lower bound."""
    problem, y, n, lp = m.problem, m.handles.y, m.handles.n, m.lp
    churn = problem.churn
    if churn is None or churn.cost_per_change_per_hour <= 0:
        return
    weight = churn.cost_per_change_per_hour
    for s, previous in churn.variants.items():
        if s not in problem.stages:
            continue
        kept = y.get((s, previous), 0.0)
        if isinstance(kept, float):  # variants fixed (one combination): a constant, carried by a fixed
            # variable because the solver reports objectives without constant terms
            value = weight * (1.0 - kept)
            if value:
                m.penalties.append(lp.add_variable(f"churn_variant_{_id(s)}", lowBound=value, upBound=value))
        else:  # 1 - y[s, previous], written without a constant: sum_y = 1
            m.penalties.append(weight * pulp.lpSum(var for (stage, v), var in y.items()
                                                 if stage == s and v != previous))
    if m.relax:
        return
    # What is counted: each group's instances (one workflow), or each running workflow's on each group
    # (several planned together: a count's key is a stage in exclusive mode, the workflow in shared mode).
    owners: Sequence[str | None] = [None]
    counts_now: dict[tuple[int, str | None], float] = {(g, None): c for g, c in churn.counts.items()}
    if churn.counts_by_workflow is not None:
        owners = sorted({problem.workflow_of[s] for s in churn.variants if s in problem.workflow_of})
        counts_now = {(g, owner): c for (g, owner), c in churn.counts_by_workflow.items()}
    for g_index in range(len(problem.groups)):
        members = problem.nodes[problem.groups[g_index].node].total  # counts are per member site
        for owner in owners:
            running = counts_now.get((g_index, owner), 0.0)  # groups the running plan does not use: 0 instances
            counts = [var for (g, key), var in n.items() if g == g_index
                      and (owner is None or (key is not None and problem.workflow_of.get(key, key) == owner))]
            if not counts:
                if running > 0:
                    m.penalties.append(weight * members * running)  # the group can no longer be used
                continue
            label = f"{g_index}" if owner is None else f"{g_index}_{_id(owner)}"
            moved = lp.add_variable(f"churn_{label}", lowBound=0)
            total = pulp.lpSum(counts)
            lp += moved >= total - running, f"churn_up_{label}"
            lp += moved >= running - total, f"churn_down_{label}"
            m.penalties.append(weight * members * moved)


def _carbon(m: _Model) -> None:
    """The instances' emissions, only where the objective or a carbon budget uses them (the default
    model is left as it was, row for row). Per group ``g`` at node ``i`` with its counts ``n`` (per
    member site; per class in the merged relaxation) and load ``L = sum_{o on g} r_o / mu_o`` (per
    member site): ``I_i / 1000 (idle_g M n + (busy_g - idle_g) M L)`` gCO2/h
    (:func:`jellybean.optimizer.carbon.group_power_w`; ``M`` is 1 for a class count). A group or site
    without figures adds nothing (the planner refuses a carbon objective then). A budget ``B``:
    ``C <= B`` (elastic: plus a priced slack, in gCO2/h)."""
    problem = m.problem
    objective = problem.objective
    if not objective.uses_carbon:
        return
    load: dict[int, list[pulp.LpAffineExpression]] = {}
    for o in m.usable:
        load.setdefault(o.group, []).append(m.handles.r[o.index] * (1.0 / o.throughput_per_s))
    counts: dict[int, list[pulp.LpVariable | pulp.LpAffineExpression]] = {}
    for (g_index, _stage), var in m.handles.n.items():
        counts.setdefault(g_index, []).append(var)
    for g_index, busy in load.items():
        g = problem.groups[g_index]
        intensity = problem.nodes[g.node].carbon_intensity_g_per_kwh
        if not intensity or g.power_idle_w is None or g.power_busy_w is None:
            continue
        sites = problem.nodes[g.node].total
        instances = (1 if m.relax else sites) * pulp.lpSum(counts.get(g_index, []))
        power = group_power_w(g.power_idle_w, g.power_busy_w, instances, sites * pulp.lpSum(busy))
        m.carbon_g_per_hour.append(grams_per_hour(power, intensity))
    budget = objective.carbon_budget_g_per_hour
    if budget is None:
        return
    total = pulp.lpSum(m.carbon_g_per_hour)
    if m.elastic:
        slack = m.lp.add_variable("slack_carbon", lowBound=0)
        m.handles.slack_carbon = slack
        m.penalties.append(SLACK_PENALTY / 1000.0 * slack)
        m.lp += total <= budget + slack, "carbon_budget"
    else:
        m.lp += total <= budget, "carbon_budget"


def usable_options(problem: Problem, fixed_models: dict[str, str] | None, allowed_tiers: set[str] | None
                   ) -> list[Option]:
    """The options a solve may use: the fixed variants only, in the allowed tiers."""
    return [o for o in problem.options
            if (fixed_models is None or fixed_models.get(o.stage) == o.variant)
            and (allowed_tiers is None or problem.nodes[problem.groups[o.group].node].tier.value in allowed_tiers)]


def instance_pools(problem: Problem, usable: list[Option]) -> list[list[int]]:
    """Instance groups that one count may stand for: at one node, at one price (and alike in being
    elastic), each offering some usable option. Pools of two or more, in a fixed order.

    Why. JellyBean-style instances have many workers of one kind whose latencies differ by a few
    percent: no two are identical, so nothing aggregates, and branch and bound drowns in near-
    symmetric choices (which of ten near-equal workers serves the detector?) while its bound stays
    weak. The count relaxation (:func:`_pool_counts`) is valid for any grouping; one price per pool
    is what keeps it tight (the pool's cost is its price times its count)."""
    keyed: dict[tuple[int, float, bool], list[int]] = {}
    for g_index in sorted({o.group for o in usable}):
        g = problem.groups[g_index]
        keyed.setdefault((g.node, g.price_per_hour, g.elastic), []).append(g_index)
    return [members for members in keyed.values() if len(members) > 1]


def within_limits(problem: Problem, solution: Solution) -> bool:
    """Every group's instances in use, over its stages, whole and within its own limit."""
    used: dict[int, float] = {}
    for (g_index, _stage), count in solution.counts.items():
        if abs(count - round(count)) > 1e-6:
            return False
        used[g_index] = used.get(g_index, 0.0) + count
    return all(count <= problem.groups[g].limit + 1e-6 for g, count in used.items())


class PlacementOptions(TypedDict, total=False):
    """The options of :func:`solve_milp` that :func:`solve_placement` passes on as given (those of
    the count relaxation, the time limit and the gap it sets itself)."""

    solver: str
    fixed_models: dict[str, str] | None
    allowed_tiers: set[str] | None
    relax_symmetry: bool
    elastic: bool
    threads: int | None
    latency: bool
    lp_only: bool
    dropped: Dropped
    unserved: bool


def solve_placement(problem: Problem, accuracy: AccuracyModel, *, time_limit_s: float = 60.0, gap_rel: float = 1e-6,
                    **options: Unpack[PlacementOptions]) -> MilpResult:
    """:func:`solve_milp`, through the count relaxation first where pools of near-identical instances
    (:func:`instance_pools`) make branch and bound slow (no latency bound, one site per node, no churn).

    1. The count relaxation (``pooled``, :func:`_pool_counts`): a lower bound ``LB`` on the true
       problem, within hundredths of a percent of its optimum, in about a second; and each pool's count.
    2. The true problem with those counts fixed (``pool_counts``): the compute cost is fixed, so it
       only searches which instance serves what and how the traffic flows; stopped at HiGHS's
       objective target ``LB (1 + gap_rel)``. A plan there is proven within ``gap_rel``.
    3. Otherwise the true problem whole (with the pool counts as integers to branch on), started from
       the best plan so far, stopped at the same target or the time limit.

    The reported bound is the best bound of the true problem proven on the way (the relaxation's, or
    the whole problem's if higher), and the gap is measured against it. On JellyBean's workers copied
    10 and 20 times and jittered (`make bench-plan`) steps 1-2 prove the optimum to 0.01% in about a
    second, in both modes, where the true model had not closed 0.1% in a minute."""
    started = time.perf_counter()

    def left() -> float:
        return max(0.05, time_limit_s - (time.perf_counter() - started))

    # The count relaxation prices a pool's instances by its count, and which of them serves does not
    # change the cost; it would the carbon (each instance's power follows its own load), so pooling
    # serves the cost objective alone.
    applies = (problem.latency_bound_ms is None and problem.churn is None and not problem.objective.uses_carbon
               and all(node.total == 1 for node in problem.nodes) and not options.get("elastic")
               and not options.get("relax_symmetry") and not options.get("lp_only"))
    usable = usable_options(problem, options.get("fixed_models"), options.get("allowed_tiers"))
    pools = instance_pools(problem, usable) if applies else []
    if not pools:
        return solve_milp(problem, accuracy, time_limit_s=time_limit_s, gap_rel=gap_rel, **options)
    note = (f"{sum(len(p) for p in pools)} instance groups pooled into {len(pools)} (one node, one price), "
            "planned through the count relaxation")
    relaxed = solve_milp(problem, accuracy, time_limit_s=RELAXATION_SHARE * left(), pooled=True,
                         gap_rel=gap_rel / 10, **options)
    if relaxed.stats.status == "infeasible":  # a relaxation: the true problem is infeasible too
        relaxed.stats.notes.append(f"{note}, which is infeasible")
        return relaxed
    bound = relaxed.stats.bound if relaxed.pool_counts is not None else None
    target = bound * (1 + gap_rel) if bound is not None and bound > 0 else None
    tries = []
    best = None
    if relaxed.pool_counts is not None:
        best = solve_milp(problem, accuracy, time_limit_s=left(), gap_rel=gap_rel, pool_counts=relaxed.pool_counts,
                          objective_target=target, **options)
        tries.append("the true problem with its pool counts")
        if best.solution is None:
            best = None
    if best is None or not _proven(best.stats, bound, gap_rel):
        whole = solve_milp(problem, accuracy, time_limit_s=left(), gap_rel=gap_rel, count_pools=True,
                           objective_target=target, start=best.values if best is not None else None, **options)
        tries.append("the true problem whole")
        if whole.stats.status == "infeasible":
            return whole
        if whole.stats.bound is not None and whole.stats.status in ("optimal", "feasible"):
            bound = whole.stats.bound if bound is None else max(bound, whole.stats.bound)
        if whole.solution is not None and (best is None or whole.objective < best.objective):
            best = whole
        if best is None:
            whole.stats.notes.append(note)
            return whole
    stats = best.stats
    stats.notes.append(f"{note} (lower bound, {relaxed.stats.seconds:.2f}s), then {' and '.join(tries)}")
    stats.bound = bound  # a restricted problem's own bound is not one of the true problem: only these are
    if bound is not None and stats.objective is not None:
        stats.gap = _gap(stats.objective, bound)
        stats.status = "optimal" if stats.gap <= gap_rel + 1e-12 else "feasible"
    else:
        stats.gap, stats.status = None, "feasible"
    stats.seconds = time.perf_counter() - started
    return best


def _gap(objective: float, bound: float) -> float:
    """The relative gap of a plan costing ``objective`` to a lower ``bound``, ``(obj - bound) / obj``."""
    return max(0.0, (objective - bound) / objective) if objective > 0 else 0.0


def _proven(stats: SolverStats, bound: float | None, gap_rel: float) -> bool:
    return stats.objective is not None and bound is not None and _gap(stats.objective, bound) <= gap_rel + 1e-12


def _latency_of(problem: Problem) -> Callable[[Option], float]:
    """An option's latency for the bound: its profile's (p90 or mean) plus the runtime's overhead
    bound (the hop into it, and the longest wait for a batch to fill)."""
    use_p90 = problem.latency_percentile == "p90"
    return lambda o: (o.latency_ms_p90 if use_p90 else o.latency_ms) + o.overhead_ms


def prune_by_latency(problem: Problem, usable: list[Option]) -> list[Option]:
    """Drop options that break the latency bound on every path through them: the earliest the
    stage's input can arrive at the site, plus the option's own latency, plus the fastest way from
    there to the sink, already exceeds the bound (:func:`fastest_path_ms`). Exact (no feasible plan
    uses them); it shrinks the MILP and often lets :func:`worst_case_latency_ms` prove the remaining
    constraints redundant."""
    assert problem.latency_bound_ms is not None
    fastest = fastest_path_ms(problem, usable)
    bounds = {s: problem.stage_latency_bound(s) for s in problem.order}
    return [o for o in usable if (bound := bounds[o.stage]) is None or fastest[o.index] <= bound + 1e-9]


def fastest_path_ms(problem: Problem, usable: list[Option]) -> dict[int, float]:
    """Option index -> the fastest source-to-sink path through it, in ms (a lower bound on the
    latency of any plan that uses it): the earliest its stage's input can arrive at its site, plus
    its own latency (and the runtime's overhead bound), plus the fastest way from there to the sink."""
    lat = _latency_of(problem)
    groups = problem.groups
    fastest: dict[tuple[str, int], float] = {}
    for o in usable:
        key = (o.stage, groups[o.group].node)
        fastest[key] = min(fastest.get(key, math.inf), lat(o))
    done = forward_times(problem, fastest, lambda e: _message_kb(problem, e, min), choose=min)
    arrive = {key: t - fastest[key] for key, t in done.items()}
    consumers: dict[str, list[str]] = {s: [] for s in problem.order}
    for s in problem.order:
        for edge in problem.stages[s].inputs:
            if not edge.from_source:
                consumers[edge.src].append(s)
    tail: dict[tuple[str, int], float] = {}
    for s in reversed(problem.order):
        for (stage, i) in fastest:
            if stage != s:
                continue
            worst = 0.0
            for d in consumers[s]:
                kb = min(v.output_kb for v in problem.stages[s].variants)
                best = min((problem.path_latency_ms(i, k, kb) + p + tail[(d, k)]
                            for (dd, k), p in fastest.items() if dd == d and problem.reachable(i, k)),
                           default=math.inf)
                worst = max(worst, best)
            tail[(s, i)] = worst
    return {o.index: arrive[(o.stage, groups[o.group].node)] + lat(o) + tail[(o.stage, groups[o.group].node)]
            for o in usable}


@overload
def worst_case_latency_ms(problem: Problem, usable: list[Option], lat: Callable[[Option], float], *,
                          per_sink: Literal[False] = False) -> float: ...


@overload
def worst_case_latency_ms(problem: Problem, usable: list[Option], lat: Callable[[Option], float], *,
                          per_sink: Literal[True]) -> dict[str, float]: ...


def worst_case_latency_ms(problem: Problem, usable: list[Option], lat: Callable[[Option], float], *,
                          per_sink: bool = False) -> float | dict[str, float]:
    """The longest source-to-sink path over *every* possible placement and variant: the largest
    processing latency at each (stage, node) and the largest message on each hop, in ms; with
    ``per_sink``, sink -> its longest path (a sink no usable option serves is left out)."""
    groups = problem.groups
    proc: dict[tuple[str, int], float] = {}
    for o in usable:
        key = (o.stage, groups[o.group].node)
        proc[key] = max(proc.get(key, 0.0), lat(o))
    finish = forward_times(problem, proc, lambda e: _message_kb(problem, e, max), choose=max)
    sinks = set(problem.sink_names)
    if per_sink:
        out: dict[str, float] = {}
        for (s, _), t in finish.items():
            if s in sinks:
                out[s] = max(out.get(s, 0.0), t)
        return out
    return max((t for (s, _), t in finish.items() if s in sinks), default=0.0)


def _message_kb(problem: Problem, edge: Edge, pick: Callable[[Iterable[float]], float]) -> float:
    """Size of one message on ``edge``: the payload, or the smallest/largest output of its variants."""
    if edge.from_source:
        return problem.source_payload_kb[edge.src]
    return pick(v.output_kb for v in problem.stages[edge.src].variants)


@functools.cache
def _id(text: str) -> str:
    """``text`` as a part of a variable's or row's name: its letters and digits, ``_`` for the rest,
    and, where something was replaced, 8 hex digits of its hash, so that names that differ only
    there (``a-b`` and ``a_b``; ``vision/detect`` and ``vision_detect``, several workflows planned
    together) stay apart: the solver's values are read back by name, and a repeated row name is refused."""
    plain = "".join(ch if ch.isalnum() else "_" for ch in text)
    if plain == text:
        return plain
    return f"{plain}_{hashlib.blake2s(text.encode('utf-8'), digest_size=4).hexdigest()}"


def _linear(terms: list[tuple[pulp.LpVariable, float]]) -> pulp.LpAffineExpression:
    """``sum coefficient * variable`` over (variable, coefficient) pairs, each variable once, built in
    one step: PuLP's operators copy the expression at every term, which dominated building large
    models (a repeated variable would keep only its last coefficient: callers list each once)."""
    return pulp.LpAffineExpression(terms)


# --------------------------------------------------------------------------------------------------
# decoding


def _val(values: dict[str, float], var: float | pulp.LpVariable | pulp.LpAffineExpression) -> float:
    if isinstance(var, (int, float)):
        return float(var)
    if isinstance(var, pulp.LpAffineExpression):  # the count relaxation's counts
        value: float = var.constant + sum(coefficient * values.get(v.name, 0.0) for v, coefficient in var.items())
        return value
    return values.get(var.name, 0.0)


def _decode(problem: Problem, handles: _Handles, values: dict[str, float]) -> Solution:
    models: dict[str, str] = {}
    for s in problem.order:
        best = max(problem.stages[s].variants, key=lambda v: _val(values, handles.y[(s, v.name)]))
        models[s] = best.name
    rates = {o: max(0.0, _val(values, var)) for o, var in handles.r.items() if _val(values, var) > EPS}
    counts: dict[tuple[int, str | None], float] = {}
    for key, var in handles.n.items():
        count: float = round(_val(values, var))
        if key[0] in handles.fractional:  # the count relaxation's: a fraction, not a plan
            count = _val(values, var)
        if handles.relax:
            count = _val(values, var) / problem.nodes[problem.groups[key[0]].node].total
        if count > EPS:
            counts[key] = count
    flows_up: dict[tuple[str, int], float] = {}
    flows_down: dict[tuple[str, int], float] = {}
    for (k, i), var in handles.up.items():
        value = _val(values, var)
        if value > EPS:
            flow_key = (handles.comms[k].edge, i)
            flows_up[flow_key] = flows_up.get(flow_key, 0.0) + value
    for (k, i), var in handles.down.items():
        value = _val(values, var)
        if value > EPS:
            flow_key = (handles.comms[k].edge, i)
            flows_down[flow_key] = flows_down.get(flow_key, 0.0) + value
    return Solution(models, rates, counts, flows_up, flows_down)


def _decode_slacks(handles: _Handles, values: dict[str, float]) -> Slacks:
    slacks = Slacks()
    for link, var in handles.slack_bw.items():
        if _val(values, var) > 1e-6:
            slacks.bandwidth_mbps[link] = _val(values, var)
    for count_key, var in handles.slack_n.items():
        if _val(values, var) > 1e-6:
            slacks.instances[count_key] = _val(values, var)
    for sink, var in handles.slack_acc.items():
        slacks.accuracy_by_sink[sink] = _val(values, var)
    if handles.slack_acc:
        slacks.accuracy = next(iter(slacks.accuracy_by_sink.values()))
    if handles.slack_lat is not None:
        slacks.latency_ms = _val(values, handles.slack_lat)
    if handles.slack_carbon is not None:
        slacks.carbon_g_per_hour = _val(values, handles.slack_carbon)
    for (source, node, _k), var in handles.slack_unserved.items():
        # A source feeding several stages has one slack per edge: it is unserved on the one served least.
        if _val(values, var) > 1e-6:
            slacks.unserved[(source, node)] = max(slacks.unserved.get((source, node), 0.0), _val(values, var))
    return slacks
