"""Accuracy composition: table, JellyBean per-stage profiles, and the default product."""

from __future__ import annotations

import copy
import math

import pytest

from jellybean.optimizer.accuracy import choose_model
from jellybean.optimizer.planner import run_strategy
from jellybean.optimizer.problem import compile_problem
from jellybean.spec import load_bundle

from .random_instances import make_bundle


@pytest.fixture(scope="module")
def vqa():
    return load_bundle(["workflows/vqa-medium"])


def without_table(bundle):
    changed = copy.deepcopy(bundle)
    changed.zoo.spec.accuracy_tables = []
    changed.workflow.spec.slo.accuracy_table = None
    return changed


def test_vqa_uses_its_end_to_end_table(vqa) -> None:
    problem = compile_problem(vqa)
    model = choose_model(problem)
    assert model.kind == "table"
    models = {"ExtractImageFeature": "resnet18", "SpeechRecognition": "wav2vec2-large-960h-lv60-self",
              "VQA": "default"}
    assert model.evaluate(problem, models) == 56.59


def test_profiles_reproduce_the_table(vqa) -> None:
    """JellyBean's per-stage samples hold the table's data: the same optimal plan on vqa-medium."""
    table_problem = compile_problem(vqa)
    table_model = choose_model(table_problem)
    problem = compile_problem(without_table(vqa))
    model = choose_model(problem)
    assert model.kind == "profiles"
    image = problem.stages["ExtractImageFeature"].variants
    speech = problem.stages["SpeechRecognition"].variants

    def combo(i, s):
        return {"ExtractImageFeature": i.name, "SpeechRecognition": s.name, "VQA": "default"}

    # A sample promises its output to any inputs at least as accurate (JellyBean's monotone reading),
    # so a combination reaches the best table row among those it dominates.
    for i in image:
        for s in speech:
            dominated = [table_model.evaluate(table_problem, combo(i2, s2)) for i2 in image for s2 in speech
                         if i2.accuracy <= i.accuracy and s2.accuracy <= s.accuracy]
            assert model.evaluate(problem, combo(i, s)) == max(dominated)
    a = run_strategy(table_problem, table_model, "optimal")
    b = run_strategy(problem, model, "optimal")
    assert a.models == b.models
    assert a.cost.total_per_hour == pytest.approx(b.cost.total_per_hour)
    assert b.accuracy_method.startswith("per-stage")


@pytest.mark.parametrize("target", [54.0, 55.5, 56.0, 57.0, 58.0, 58.3])
def test_every_target_is_met_exactly_as_enumeration_says(vqa, target: float) -> None:
    for bundle in (vqa, without_table(vqa)):
        changed = copy.deepcopy(bundle)
        changed.workflow.spec.slo.accuracy = target
        problem = compile_problem(changed)
        model = choose_model(problem)
        plan = run_strategy(problem, model, "optimal")
        assert plan.feasible
        assert plan.accuracy >= target


def test_product_composition() -> None:
    zoo = {"tasks": [
        {"name": "a", "variants": [
            {"name": "a1", "accuracy": 90, "output_kb": 1, "profiles": [{"hardware": "cpu", "latency_ms": {1: 10}}]},
            {"name": "a2", "accuracy": 99, "output_kb": 1, "profiles": [{"hardware": "cpu", "latency_ms": {1: 50}}]}]},
        {"name": "b", "variants": [
            {"name": "b1", "accuracy": 80, "output_kb": 1, "profiles": [{"hardware": "cpu", "latency_ms": {1: 10}}]},
            {"name": "b2", "accuracy": 95, "output_kb": 1, "profiles": [{"hardware": "cpu", "latency_ms": {1: 50}}]}]},
    ]}
    topology = {"sites": [{"name": "c", "tier": "cloud",
                           "instances": [{"name": "vm", "hardware": "cpu", "price_per_hour": 1, "max_count": 20}]}]}

    def wf(target: float) -> dict:
        return {"sources": [{"name": "s", "rate_per_s": 10, "payload_kb": 1, "sites": ["c"]}],
                "stages": [{"name": "A", "task": "a", "inputs": ["s"]}, {"name": "B", "task": "b", "inputs": ["A"]}],
                "slo": {"accuracy": target}}

    problem = compile_problem(make_bundle(zoo, topology, wf(80)))
    model = choose_model(problem)
    assert model.kind == "product"
    assert model.evaluate(problem, {"A": "a2", "B": "b2"}) == pytest.approx(100 * 0.99 * 0.95)
    # 0.9 * 0.95 = 85.5 and 0.99 * 0.8 = 79.2: a target of 80 needs b2; a1 is the cheap way to get it.
    plan = run_strategy(problem, model, "optimal")
    assert plan.models == {"A": "a1", "B": "b2"}
    assert plan.accuracy == pytest.approx(85.5)
    problem = compile_problem(make_bundle(zoo, topology, wf(94)))
    plan = run_strategy(problem, choose_model(problem), "optimal")
    assert plan.models == {"A": "a2", "B": "b2"}
    problem = compile_problem(make_bundle(zoo, topology, wf(95)))
    plan = run_strategy(problem, choose_model(problem), "optimal")
    assert not plan.feasible
    assert any("accuracy target 95 unreachable" in r and "94.05" in r for r in plan.explanation)
    assert math.isclose(100 * 0.99 * 0.95, 94.05)


def test_the_problem_carries_the_tables_not_the_documents(vqa) -> None:
    """The accuracy tables are compiled into the Problem (the named one resolved), which holds no
    bundle: the accuracy model is chosen from the Problem alone."""
    problem = compile_problem(vqa)
    assert not hasattr(problem, "bundle")
    assert [t.name for t in problem.accuracy_tables] == [t.name for t in vqa.zoo.spec.accuracy_tables]
    assert problem.accuracy_table is not None and problem.accuracy_table.name == "vqa-medium-end-to-end"
    assert choose_model(problem).description == "end-to-end table 'vqa-medium-end-to-end'"
    # Named by the SLO but not covering the workflow (its stage has a second candidate): refused, by name.
    problem.stages["VQA"].variants = problem.stages["VQA"].variants * 2
    with pytest.raises(ValueError, match="'vqa-medium-end-to-end' does not cover workflow"):
        choose_model(problem)
    # Not named: a table that does not cover the workflow is passed over for the next model.
    problem.accuracy_table = None
    assert choose_model(problem).kind != "table"
    unnamed = compile_problem(without_table(vqa))
    assert unnamed.accuracy_tables == [] and unnamed.accuracy_table is None
