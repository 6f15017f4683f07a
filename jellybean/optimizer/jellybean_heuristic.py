"""The ``jellybean`` baseline: a re-implementation of the heuristic optimizer published with JellyBean
(PVLDB 16(3) 2022; prototype libertyeagle/JellyBean, folder ``optimizer/``, run with the
configuration of its VQA example: beam search ``BEST_K = 10``, worker assignment strategy
``multiple-tiers`` with ``greedy`` per-tier allocation, ``MAX_NUM_ASSIGN_ORDERS = 10``,
``BEST_K_ASSIGNMENTS = 10``). See ``shared/reference/jellybean-algorithm.md``.

The algorithm
-------------
1. **Model selection.** A beam search over the stages in reverse topological order (sink first)
   with back-propagated accuracy requirements. A state holds the variants chosen so far and the
   minimum accuracy required of each stage not yet assigned; it starts as ``{sink: target}`` (with
   several sinks, every sink with its own target; a stage's ``min_accuracy``, which JellyBean does
   not have, rules out the variants below it). A
   stage with requirement ``a`` may take each variant whose best profiled output reaches ``a``;
   for each sample of that variant with ``output >= a`` (in order of output, then input
   accuracies), the sample's input accuracies become requirements of the corresponding upstream
   stages (combined by ``max`` with any requirement already there, for shared ancestors). Samples
   come from ``Variant.accuracy_profile``, keyed by the input stage's *task*; a stage fed only by
   sources has one sample per variant, ``Variant.accuracy``. After each stage the ``beam_width``
   states with the lowest summed ``Variant.default_cost_proxy()`` are kept, ties broken by the
   requirement tuple (over the stages in topological order). The beam search runs whenever every
   variant of every stage fed by another stage has samples, whatever ``accuracy.kind`` is (the VQA
   zoo has both an end-to-end table and per-stage samples: JellyBean searches the samples).
   Without samples (``accuracy.kind`` "table" or "product", no profiles in the zoo) the search
   cannot run; its result is then taken to be what it converges to when it has the exact
   end-to-end accuracy: the ``beam_width`` combinations of lowest summed cost proxy that meet the
   target (:func:`jellybean.optimizer.accuracy.enumerate_combinations`, ties to higher accuracy).
   Either way a candidate must still meet the target under the ``accuracy`` model passed in.

2. **Worker assignment**, for each candidate model assignment. Workers are single instances: the
   ``k``-th instance of an instance group at a node is one worker. Members of a node are
   identical sites and are decided alike (the Solution is per member site), so a worker stands for
   that instance at *every* member of its node: its capacity and price are the single instance's
   times the node's member count, and rates and traffic are handled as totals over the class, then
   divided back per member in the Solution. (With one member per node, as in JellyBean's inputs,
   this is exactly their per-worker model.) A worker's capacity for a stage is
   ``max_utilization x`` the throughput of the best option (batch size) for (stage, chosen variant,
   its group); JellyBean's vqa-medium has ``max_utilization`` 1.0 and batch 1, i.e. 1000/latency.

   Stages are placed one at a time along up to ``orders`` topological orders (enumerated
   deterministically, preferring the workflow's own order), keeping a beam of the ``beam_width``
   cheapest partial placements (compute + communication so far) at each step (JellyBean's
   ``BEST_K_ASSIGNMENTS``, 10 like ``BEST_K``; then the best ``beam_width`` over all orders are
   priced). A stage's rate is
   its primary input's rate times the edge ratio (sources: their total rate). Its tier may not be
   below the highest tier of its inputs (a source sits at its site's tier; a placed stage at the
   highest tier of its workers). For each upper tier bound from there to the top, the candidates
   are the unassigned workers with tiers in ``[inputs' tier, bound]``; if one worker in the lowest
   tier among them can carry the whole rate, the one with the lowest price + cost of pulling the
   stage's inputs to it is taken (ties to lower capacity); otherwise the candidates are sorted by
   (price + cost of pulling its capacity's worth of inputs) / capacity and taken in turn, the last
   one with a partial share, switching after each pick to "the cheapest single worker in the
   lowest remaining tier that can carry the rest" as soon as one exists. Each bound yields one
   extension of the state (identical extensions from different bounds are kept, as JellyBean does).
   The cost of pulling inputs to a worker at node ``j``: for each input edge, the messages
   (per request of the stage, of the producer's size) coming from where they are produced (source
   sites, or the upstream stage's workers in proportion to their shares), priced along the tree
   path by each link's ``cost_per_gb`` ($/h = msg/s x KB x 3600 / 1024^2 x $/GB).

3. **Choice.** The (model assignment, placement) pair of the lowest total cost wins, ties (within
   ``numpy.allclose`` tolerance, as JellyBean compares) to higher accuracy. The cost of a complete
   placement is the one :func:`jellybean.optimizer.evaluate.build_plan` reports: used instances x
   price plus the traffic routed in proportion to where each stage runs.

   On ``workflows/vqa-medium`` (exclusive) this reproduces JellyBean's published output:
   ResNet-18 + wav2vec2-large, accuracy 56.59, $6.242/h compute + $1.267/h communication =
   $7.509/h (the optimal plan costs $7.485/h).

Deviations, and why
-------------------
- *Tiers in a tree.* JellyBean has a flat list of tiers and a price per worker pair; here sites
  form a tree. Tier rank is the site's tier; besides the tier rule, a worker is a candidate only
  if every producer of the stage's inputs can reach it without crossing a link downward (unless the
  topology allows downward flows), since in a tree two sites of the same tier need not be
  connected upwards. With JellyBean's own inputs (one site per tier) this adds nothing. Because a
  stage's input is split across all of its workers in proportion to their shares, a stage whose
  input is produced at several different sites can then only run where all of them send upward
  (typically at their common ancestor or above).
- *Infeasible beam states are dropped.* JellyBean aborts the whole model search (returns None,
  which its driver then fails on) when any one state has a stage no variant can satisfy; here only
  that state is dropped.
- *The pull cost of the last worker.* When the greedy switches to "one worker carries the rest",
  JellyBean prices the pull of source inputs for the remaining rate but of stage inputs for the
  stage's full rate (it computes the remaining share and then does not use it); here both use the
  remaining rate, as the reference description reads ("the lowest price + cost of pulling the
  stage's inputs to it"). It only reorders equally-tiered candidates for that last share.
- *Joins.* JellyBean takes a stage's rate as the minimum over its inputs; here it is the primary
  input's rate, as everywhere in the planner (a valid workflow's joined inputs agree anyway).
- *Sharing.* JellyBean has no instance sharing: a worker serves one stage. In ``shared`` mode this
  still holds (counts are reported as ``(group, None)``); the plan is a valid shared plan, just not
  one that exploits sharing.
- *What JellyBean does not model* is not modelled here either: latency bounds (the
  highest-throughput batch size is used), link bandwidth limits, and memory beyond the options the
  Problem already filtered. Such plans may then fail :func:`~jellybean.optimizer.evaluate.verify`.
- *Flows are filled in.* The returned Solution carries ``flows_up``/``flows_down`` as
  :func:`~jellybean.optimizer.evaluate.route_proportionally` computes them (each stage's input split
  across the consumer's sites by their shares: JellyBean's semantics) rather than ``None``, so that
  the Solution itself says where its traffic goes. :func:`~jellybean.optimizer.evaluate.verify` and
  :func:`~jellybean.optimizer.evaluate.build_plan` would compute the same routing from ``None``
  (without writing it into the Solution); the costs are the same either way.
- *Scale.* Instances of a group are identical, so the greedy handles a group's instances in bulk
  rather than one by one (same result). For large problems (more than 2,000 workers) each elastic
  group is expanded to at most the number of instances the stages could ever use on it (the sum
  over stages of ceil(stage rate / capacity)); this bound is never binding, so it does not change
  the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from jellybean.optimizer.accuracy import AccuracyModel, enumerate_combinations, targets_text
from jellybean.optimizer.baselines import NoPlan
from jellybean.optimizer.evaluate import build_plan, route_proportionally
from jellybean.optimizer.plan import SolverStats
from jellybean.optimizer.problem import KB_PER_GB, SECONDS_PER_HOUR, Problem
from jellybean.optimizer.solution import Solution
from jellybean.spec.topology import LinkDirection

__all__ = ["jellybean_heuristic", "select_models", "topological_orders"]

EPS = 1e-9
LARGE_WORKER_COUNT = 2000
_GB_PER_HOUR_PER_KB_S = SECONDS_PER_HOUR / KB_PER_GB  # GB/h for 1 KB/s


# ---------------------------------------------------------------------------------------------
# Stage 1: model selection
# ---------------------------------------------------------------------------------------------
def _has_samples(problem: Problem) -> bool:
    """Every variant of every stage fed by another stage has per-stage samples, and such a stage exists."""
    fed = [info for info in problem.stages.values() if any(not e.from_source for e in info.inputs)]
    return bool(fed) and all(v.accuracy_profile for info in fed for v in info.variants)


def _proxy(problem: Problem, models: dict[str, str]) -> float:
    return sum(problem.stages[s].variant(v).default_cost_proxy() for s, v in models.items())


def _beam_search_models(problem: Problem, beam_width: int) -> list[dict[str, str]]:
    """JellyBean's model-selection beam search over per-stage accuracy samples."""
    # Reverse topological order: a stage is reached after every stage it feeds has set its requirement
    # (a workflow with one sink starts there, as JellyBean does).
    order = list(reversed(problem.order))
    # A state: (models, requirements); each sink starts with its target.
    states: list[tuple[dict[str, str], dict[str, float]]] = [({}, {t.stage: t.accuracy_target for t in problem.sinks})]
    for stage in order:
        info = problem.stages[stage]
        upstream = [e.src for e in info.inputs if not e.from_source]
        extended: list[tuple[dict[str, str], dict[str, float]]] = []
        for models, reqs in states:
            need = reqs.get(stage, -math.inf)
            for variant in info.variants:
                if not info.meets_minimum(variant.name):
                    continue  # below the stage's minimum on its own metric (not in JellyBean: its extension)
                if upstream:
                    samples = [(sample.output, tuple(sample.inputs.get(problem.stages[u].task, -math.inf)
                                                     for u in upstream))
                               for sample in variant.accuracy_profile or []]
                else:
                    samples = [(variant.accuracy, ())]
                if not samples or max(out for out, _ in samples) < need:
                    continue
                for _out, inputs in sorted(s for s in samples if s[0] >= need):
                    new_reqs = {k: v for k, v in reqs.items() if k != stage}
                    for u, value in zip(upstream, inputs):
                        if value == -math.inf:
                            continue
                        new_reqs[u] = max(new_reqs.get(u, -math.inf), value)
                    new_models = dict(models)
                    new_models[stage] = variant.name
                    extended.append((new_models, new_reqs))
        if not extended:
            return []

        def key(state: tuple[dict[str, str], dict[str, float]]) -> tuple[float, tuple[float, ...]]:
            models, reqs = state
            return (_proxy(problem, models), tuple(reqs.get(s, -math.inf) for s in problem.order))

        extended.sort(key=key)
        states = extended[:beam_width]
    return [models for models, _ in states]


def _enumerated_models(problem: Problem, accuracy: AccuracyModel, beam_width: int) -> list[dict[str, str]]:
    combos = enumerate_combinations(problem)
    if combos is None:
        raise NoPlan("too many variant combinations to enumerate, and the zoo has no per-stage accuracy "
                     "profiles for JellyBean's model search")
    scored = []
    for index, models in enumerate(combos):
        if not accuracy.admissible(problem, models, EPS):
            continue
        scored.append((_proxy(problem, models), tuple(-a for a in accuracy.ranking(problem, models)), index, models))
    scored.sort(key=lambda t: t[:3])
    return [t[3] for t in scored[:beam_width]]


def select_models(problem: Problem, accuracy: AccuracyModel, beam_width: int = 10) -> list[dict[str, str]]:
    """Candidate model assignments, cheapest by cost proxy first, each meeting the target under ``accuracy``."""
    if _has_samples(problem):
        found = _beam_search_models(problem, beam_width)
    else:
        found = _enumerated_models(problem, accuracy, beam_width)
    out: list[dict[str, str]] = []
    for models in found:
        if models in out or not accuracy.admissible(problem, models, EPS):
            continue
        out.append(models)
    return out


# ---------------------------------------------------------------------------------------------
# Stage 2: worker assignment
# ---------------------------------------------------------------------------------------------
def topological_orders(problem: Problem, limit: int) -> list[list[str]]:
    """Up to ``limit`` distinct topological orders of the stages, in lexicographic order of the
    workflow's own order (so the first is ``problem.order``)."""
    preds = {s: {e.src for e in problem.stages[s].inputs if not e.from_source} for s in problem.order}
    out: list[list[str]] = []
    prefix: list[str] = []
    placed: set[str] = set()

    def walk() -> None:
        if len(out) >= limit:
            return
        if len(prefix) == len(problem.order):
            out.append(list(prefix))
            return
        for s in problem.order:
            if s in placed or not preds[s] <= placed:
                continue
            prefix.append(s)
            placed.add(s)
            walk()
            placed.discard(s)
            prefix.pop()
            if len(out) >= limit:
                return

    walk()
    return out


@dataclass
class _Worker:
    """A group's instances as candidates for one stage: ``count`` identical workers."""

    group: int
    node: int
    tier: int
    order: int  # position in the worker listing (JellyBean's worker index order)
    capacity: float  # requests/s over the class (all member sites)
    price: float  # $/h over the class
    option: int


@dataclass
class _State:
    cost: float = 0.0
    compute: float = 0.0
    used: dict[int, int] = field(default_factory=dict)  # group -> instances used (per member)
    # stage -> list of (group, total rate); a group appears once per instance it lends
    shares: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    tiers: dict[str, int] = field(default_factory=dict)
    options: dict[str, dict[int, int]] = field(default_factory=dict)  # stage -> group -> option

    def extend(self) -> _State:
        return _State(self.cost, self.compute, dict(self.used), dict(self.shares), dict(self.tiers),
                      dict(self.options))


def _cost_per_gb(link: LinkDirection | None) -> float:
    """$/GB on one direction of a site's uplink (none: the cloud's own, free)."""
    return link.cost_per_gb if link else 0.0


class _Placer:
    """The greedy worker assignment for one model assignment."""

    def __init__(self, problem: Problem, models: dict[str, str], beam_width: int) -> None:
        self.p = problem
        self.models = {s: models[s] for s in problem.order}
        self.k = beam_width
        nodes = problem.nodes
        self.tier_of = {n.index: n.tier.rank for n in nodes}
        self.tier_bounds = sorted(set(self.tier_of.values()))
        self._path_cost: dict[tuple[int, int], float | None] = {}
        self._reach: dict[tuple[int, int], bool] = {}
        # Listing order of workers: by tier, then node, then group (JellyBean lists workers tier by tier).
        listing = sorted(problem.groups, key=lambda g: (self.tier_of[g.node], g.node, g.index))
        self.listing_pos = {g.index: k for k, g in enumerate(listing)}
        # Stage rates (totals) and message sizes per input edge.
        self.rate: dict[str, float] = {}
        for s in problem.order:
            edge = problem.stages[s].inputs[0]
            if edge.from_source:
                total = sum(r * nodes[i].total for i, r in problem.source_rates[edge.src].items())
                self.rate[s] = edge.ratio * total
            else:
                self.rate[s] = edge.ratio_for(models[edge.src]) * self.rate[edge.src]
        self.kb: dict[str, float] = {}
        for s in problem.order:
            for edge in problem.stages[s].inputs:
                if edge.from_source:
                    self.kb[edge.key] = problem.source_payload_kb[edge.src]
                else:
                    self.kb[edge.key] = problem.stages[edge.src].variant(models[edge.src]).output_kb
        # Candidate workers per stage.
        h = problem.max_utilization
        self.workers: dict[str, list[_Worker]] = {}
        for s in problem.order:
            best: dict[int, int] = {}
            for o_index in problem.options_by_stage[s]:
                o = problem.options[o_index]
                if o.variant != models[s]:
                    continue
                if o.group not in best or o.throughput_per_s > problem.options[best[o.group]].throughput_per_s:
                    best[o.group] = o_index
            ws = []
            for g_index, o_index in best.items():
                g = problem.groups[g_index]
                members = nodes[g.node].total
                ws.append(_Worker(g_index, g.node, self.tier_of[g.node], self.listing_pos[g_index],
                                  h * problem.options[o_index].throughput_per_s * members,
                                  g.price_per_hour * members, o_index))
            ws.sort(key=lambda w: w.order)
            self.workers[s] = ws
        # Instances per group (capped for large problems, never bindingly).
        self.limit = {g.index: g.limit for g in problem.groups}
        if sum(self.limit.values()) > LARGE_WORKER_COUNT:
            for g in problem.groups:
                if not g.elastic:
                    continue
                need = 0
                for s in problem.order:
                    for w in self.workers[s]:
                        if w.group == g.index and w.capacity > 0:
                            need += math.ceil(self.rate[s] / w.capacity - EPS)
                self.limit[g.index] = min(g.limit, need)

    # --- network helpers ----------------------------------------------------------------------
    def path_cost(self, a: int, b: int) -> float | None:
        """$/GB along the tree path from node a to node b; None when b is unreachable from a."""
        key = (a, b)
        if key not in self._path_cost:
            route = self.p.path(a, b)
            if route is None or (route[1] and not self.p.allow_downward):
                self._path_cost[key] = None
            else:
                nodes = self.p.nodes
                cost = sum(_cost_per_gb(nodes[n].up) for n in route[0])
                cost += sum(_cost_per_gb(nodes[n].down) for n in route[1])
                self._path_cost[key] = cost
        return self._path_cost[key]

    def pull_cost(self, producers: list[tuple[str, dict[int, float]]], node: int) -> float | None:
        """$/h per msg/s of the stage's rate to bring every input (:meth:`producers`) to ``node``;
        None when some producer cannot reach it."""
        cost = 0.0
        for key, fractions in producers:
            for i, frac in fractions.items():
                c = self.path_cost(i, node)
                if c is None:
                    return None
                cost += frac * self.kb[key] * _GB_PER_HOUR_PER_KB_S * c
        return cost

    def producers(self, state: _State, stage: str) -> list[tuple[str, dict[int, float]]]:
        """For each input edge of ``stage``: its key and the fraction of its messages produced at each node."""
        out = []
        for edge in self.p.stages[stage].inputs:
            per_node: dict[int, float] = {}
            if edge.from_source:
                for i, r in self.p.source_rates[edge.src].items():
                    if r > 0:
                        per_node[i] = per_node.get(i, 0.0) + r * self.p.nodes[i].total
            else:
                for g, share in state.shares[edge.src]:
                    node = self.p.groups[g].node
                    per_node[node] = per_node.get(node, 0.0) + share
            total = sum(per_node.values())
            out.append((edge.key, {i: v / total for i, v in per_node.items()} if total > 0 else {}))
        return out

    def input_tier(self, state: _State, stage: str) -> int:
        tiers = []
        for edge in self.p.stages[stage].inputs:
            if edge.from_source:
                tiers += [self.tier_of[i] for i, r in self.p.source_rates[edge.src].items() if r > 0]
            else:
                tiers.append(state.tiers[edge.src])
        return max(tiers, default=min(self.tier_bounds))

    # --- one stage ----------------------------------------------------------------------------
    def place(self, state: _State, stage: str) -> list[_State]:
        rate = self.rate[stage]
        low = self.input_tier(state, stage)
        producers = self.producers(state, stage)
        # Per-unit-rate pull cost at each candidate node ($/h per msg/s); None when unreachable.
        pull: dict[int, float | None] = {}
        for w in self.workers[stage]:
            if w.node in pull:
                continue
            pull[w.node] = self.pull_cost(producers, w.node)
        free = [(w, self.limit[w.group] - state.used.get(w.group, 0)) for w in self.workers[stage]]
        free = [(w, n) for w, n in free if n > 0 and pull[w.node] is not None and w.capacity > 0]
        out = []
        for bound in self.tier_bounds:
            if bound < low:
                continue
            candidates = [(w, n) for w, n in free if low <= w.tier <= bound]
            picks = _greedy(rate, candidates, pull)
            if picks is None:
                continue
            new = state.extend()
            compute = 0.0
            network = 0.0
            shares = []
            new.options[stage] = {}
            for w, share in picks:
                new.used[w.group] = new.used.get(w.group, 0) + 1
                compute += w.price
                network += share * pull[w.node]  # type: ignore[operator]
                shares.append((w.group, share))
                new.options[stage][w.group] = w.option
            new.shares[stage] = shares
            new.tiers[stage] = max((w.tier for w, _ in picks), default=low)
            new.compute += compute
            new.cost += compute + network
            out.append(new)
        return out

    def run(self, orders: list[list[str]]) -> list[_State]:
        finals: list[_State] = []
        for order in orders:
            states = [_State()]
            for stage in order:
                extended: list[_State] = []
                for state in states:
                    extended.extend(self.place(state, stage))
                extended.sort(key=lambda st: st.cost)
                states = extended[: self.k]
                if not states:
                    break
            finals.extend(states)
            finals.sort(key=lambda st: st.cost)
            finals = finals[: self.k]
        return finals

    def solution(self, state: _State) -> Solution:
        rates: dict[int, float] = {}
        counts: dict[tuple[int, str | None], float] = {}
        for stage, shares in state.shares.items():
            for g, share in shares:
                members = self.p.nodes[self.p.groups[g].node].total
                option = state.options[stage][g]
                rates[option] = rates.get(option, 0.0) + share / members
                key = (g, self.p.count_key(stage))
                counts[key] = counts.get(key, 0.0) + 1
        return Solution(models=dict(self.models), rates=rates, counts=counts)


def _greedy(rate: float, candidates: list[tuple[_Worker, int]],
            pull: dict[int, float | None]) -> list[tuple[_Worker, float]] | None:
    """JellyBean's greedy fill of ``rate`` from ``candidates`` (worker class, instances free);
    returns one (worker, share) per instance used, or None when the rate cannot be covered."""
    tol = EPS * max(1.0, rate)
    if rate <= tol:
        return []
    if not candidates:
        return None
    counts = {id(w): n for w, n in candidates}

    def c_of(w: _Worker) -> float:
        return pull[w.node]  # type: ignore[return-value]

    def single(entries: list[_Worker], remaining: float) -> list[_Worker]:
        """Workers of the lowest tier among ``entries`` that carry ``remaining`` alone, cheapest first."""
        lowest = min(w.tier for w in entries)
        able = [w for w in entries if w.tier == lowest and w.capacity > remaining]
        return sorted(able, key=lambda w: (w.price + remaining * c_of(w), w.capacity, w.order))

    workers = [w for w, _ in candidates]
    lowest = min(w.tier for w in workers)
    able = [w for w in workers if w.tier == lowest and w.capacity >= rate]
    if able:
        best = min(able, key=lambda w: (w.price + rate * c_of(w), w.capacity, w.order))
        return [(best, rate)]
    queue = sorted(workers, key=lambda w: ((w.price + w.capacity * c_of(w)) / w.capacity,
                                           w.price + w.capacity * c_of(w), w.order))

    def lowest_tier_max_capacity(entries: list[_Worker]) -> float:
        if not entries:
            return math.inf
        lowest = min(w.tier for w in entries)
        return max(w.capacity for w in entries if w.tier == lowest)

    top = lowest_tier_max_capacity(queue)
    picks: list[tuple[_Worker, float]] = []
    remaining = rate
    while remaining > tol:
        if not queue:
            return None
        w = queue[0]
        n = counts[id(w)]
        # Several identical instances in a row while no single worker can carry the rest.
        if n > 1 and remaining > w.capacity:
            floor = max(top, tol)
            bulk = min(n - 1, int((remaining - floor) // w.capacity)) if remaining >= floor else 0
            if bulk > 0:
                picks.extend([(w, w.capacity)] * bulk)
                remaining -= bulk * w.capacity
                n -= bulk
                counts[id(w)] = n
        share = min(w.capacity, remaining)
        picks.append((w, share))
        remaining -= share
        counts[id(w)] = n - 1
        if n - 1 == 0:
            queue.pop(0)
            top = lowest_tier_max_capacity(queue)
        if remaining > tol and queue and top > remaining:
            last = single(queue, remaining)[0]
            picks.append((last, remaining))
            remaining = 0.0
    return picks


# ---------------------------------------------------------------------------------------------
# Stage 3: choose
# ---------------------------------------------------------------------------------------------
def _close(a: float, b: float) -> bool:
    """numpy.allclose's scalar test, as JellyBean compares costs."""
    return abs(a - b) <= 1e-8 + 1e-5 * abs(b)


def jellybean_heuristic(problem: Problem, accuracy: AccuracyModel, *, beam_width: int = 10,
                        orders: int = 10) -> Solution:
    """JellyBean's published heuristic: beam-searched model assignments, each placed by the greedy
    tier-by-tier worker assignment; the cheapest pair wins. Raises NoPlan when nothing is found."""
    candidates = select_models(problem, accuracy, beam_width)
    if not candidates:
        raise NoPlan(f"JellyBean's model search found no variant combination reaching {targets_text(problem)}")
    stage_orders = topological_orders(problem, max(1, orders))
    stats = SolverStats(name="jellybean-heuristic", status="heuristic", gap=None, seconds=0)
    best: tuple[float, tuple[float, ...], Solution] | None = None
    for models in candidates:
        placer = _Placer(problem, models, beam_width)
        value = accuracy.ranking(problem, models)
        for state in placer.run(stage_orders):
            solution = placer.solution(state)
            # build_plan prices the traffic routed proportionally, as JellyBean does.
            plan = build_plan(problem, solution, strategy="jellybean", stats=stats, accuracy=accuracy)
            assert plan.cost is not None
            cost = plan.cost.total_per_hour
            if best is None or cost < best[0] or (_close(cost, best[0]) and value > best[1]):
                best = (cost, value, solution)
    if best is None:
        raise NoPlan(f"JellyBean's greedy worker assignment could not place any of the {len(candidates)} model "
                     "assignments its search found (not enough capacity at or above the inputs' tiers)")
    solution = best[2]
    if solution.flows_up is None:
        route_proportionally(problem, solution)
    solution.notes.append(f"jellybean heuristic: {len(candidates)} model assignments, up to {len(stage_orders)} "
                          f"stage orders, beam {beam_width}")
    return solution
