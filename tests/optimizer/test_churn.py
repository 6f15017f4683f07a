"""Re-planning a running workflow: the churn penalty makes plans that move little win near-ties,
and a move is made only when it saves more than it costs."""

from __future__ import annotations

from pathlib import Path

import pytest

from jellybean.optimizer import plan
from jellybean.optimizer.plan import Plan
from jellybean.spec import load_bundle
from jellybean.spec.bundle import Bundle

VEHICLES = Path(__file__).resolve().parents[2] / "workflows" / "vehicle-tracking"


def with_target(bundle: Bundle, accuracy: float) -> Bundle:
    workflow = bundle.workflow.model_copy(deep=True)
    workflow.spec.slo.accuracy = accuracy
    return Bundle(workflow, bundle.zoo, bundle.topology, bundle.sources)


def moves(new: Plan, old: Plan) -> float:
    """What the penalty counts: stages whose variant changed, plus instances started or stopped."""
    changed = sum(new.models[s] != old.models.get(s) for s in new.models)
    def counts(p: Plan) -> dict:
        return {(site, row.instance): row.count for row in p.instances for site in (row.sites or [row.site])}
    a, b = counts(new), counts(old)
    return changed + sum(abs(a.get(k, 0) - b.get(k, 0)) for k in set(a) | set(b))


@pytest.fixture(scope="module")
def running_and_cheaper():
    bundle = load_bundle([VEHICLES])
    running = plan(bundle, baselines=False)
    relaxed = with_target(bundle, 20.0)  # a lower target: a much cheaper plan exists
    cheapest = plan(relaxed, baselines=False)
    assert cheapest.cost.total_per_hour < running.cost.total_per_hour - 0.5
    return relaxed, running, cheapest


def test_an_unchanged_problem_keeps_the_running_plan_at_no_penalty() -> None:
    bundle = load_bundle([VEHICLES])
    running = plan(bundle, baselines=False)
    again = plan(bundle, baselines=False, previous=running, churn_cost_per_change_per_hour=1.0)
    assert again.models == running.models and moves(again, running) == 0
    assert again.cost.total_per_hour == pytest.approx(running.cost.total_per_hour)


def test_a_cheap_move_is_made_and_a_dear_one_is_not(running_and_cheaper) -> None:
    relaxed, running, cheapest = running_and_cheaper
    saving = running.cost.total_per_hour - cheapest.cost.total_per_hour
    cheap = plan(relaxed, baselines=False, previous=running, churn_cost_per_change_per_hour=1e-4)
    assert cheap.cost.total_per_hour == pytest.approx(cheapest.cost.total_per_hour, rel=1e-6)
    dear = plan(relaxed, baselines=False, previous=running, churn_cost_per_change_per_hour=10 * saving)
    assert dear.models == running.models and moves(dear, running) == 0  # no move pays for itself
    assert dear.cost.total_per_hour == pytest.approx(running.cost.total_per_hour, rel=1e-6)


@pytest.mark.parametrize("weight", [0.01, 0.05, 0.2])
def test_the_penalised_objective_is_minimal_among_the_candidates(running_and_cheaper, weight: float) -> None:
    """Against the candidates we know (the running plan, the unpenalised optimum), the chosen plan's
    cost plus its moves' penalty is never worse: the penalty is optimised, not just added."""
    relaxed, running, cheapest = running_and_cheaper
    chosen = plan(relaxed, baselines=False, previous=running, churn_cost_per_change_per_hour=weight)
    def objective(p: Plan) -> float:
        return p.cost.total_per_hour + weight * moves(p, running)
    assert objective(chosen) <= objective(running) + 1e-6
    assert objective(chosen) <= objective(cheapest) + 1e-6
    assert chosen.solver.objective == pytest.approx(objective(chosen), rel=1e-6, abs=1e-6)
