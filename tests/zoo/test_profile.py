from __future__ import annotations

from pathlib import Path

import pytest

from jellybean.spec.loader import load_documents
from jellybean.spec.zoo import ModelZoo
from jellybean.zoo import digits
from jellybean.zoo.profile import END_TO_END, crops_per_frame, dump_zoo, profile_zoo, replica_peak_rss_mb, write_zoo
from jellybean.zoo.registry import LOADERS

DETECTORS = [n for n, s in LOADERS.items() if s.task == "digit-detection"]
CLASSIFIERS = [n for n, s in LOADERS.items() if s.task == "digit-classification"]

TOPOLOGY_AND_WORKFLOW = """
apiVersion: jellybean.io/v1alpha1
kind: Topology
metadata: {name: lab}
spec:
  sites:
    - name: cloud
      tier: cloud
      instances:
        - {name: vm, hardware: local-cpu-1t, price_per_hour: 0.05, max_count: 64}
    - name: hub
      tier: hub
      parent: cloud
      uplink:
        up: {bandwidth_mbps: 100, latency_ms: 2, cost_per_gb: 0.02}
        down: {bandwidth_mbps: 100, latency_ms: 2, cost_per_gb: 0.02}
      instances:
        - {name: box, hardware: local-cpu-1t, price_per_hour: 0.01, count: 2}
---
apiVersion: jellybean.io/v1alpha1
kind: Workflow
metadata: {name: digits}
spec:
  zoo: digits
  topology: lab
  sources:
    - {name: cameras, kind: camera, rate_per_s: 200, payload_kb: 1.6, sites: [hub]}
  stages:
    - {name: detect, task: digit-detection, inputs: [cameras]}
    - name: classify
      task: digit-classification
      inputs: [{from: detect, ratio: 2.5, ratio_by_variant: RATIOS}]
    - {name: aggregate, task: reading-aggregation, inputs: [classify]}
  slo: {accuracy: TARGET}
"""


@pytest.fixture(scope="module")
def profiled(quick_zoo: Path) -> ModelZoo:
    return profile_zoo(quick_zoo, repeats=3, eval_frames=60, batch_sizes=(1, 4), memory="estimate")


def test_profile_document(profiled: ModelZoo) -> None:
    doc = ModelZoo.model_validate(profiled.model_dump())  # validates again
    assert doc.metadata.name == "digits"
    assert [t.name for t in doc.spec.tasks] == ["digit-detection", "digit-classification", "reading-aggregation"]
    for task in doc.spec.tasks:
        for variant in task.variants:
            assert variant.loader == variant.name and LOADERS[variant.name].task == task.name
            assert variant.precision == LOADERS[variant.name].precision
            (profile,) = variant.profiles
            assert profile.hardware == "local-cpu-1t"
            assert set(profile.latency_ms) == set(profile.latency_ms_p50) == set(profile.latency_ms_p90) == {1, 4}
            assert 0 <= variant.accuracy <= 100 and variant.output_kb > 0 and variant.memory_mb >= 0
    assert doc.spec.task("reading-aggregation").variants[0].accuracy == 100
    assert doc.spec.task("digit-classification").variant("digits-classifier-cnn-large-int8").precision == "int8"
    (table,) = doc.spec.accuracy_tables
    assert table.name == END_TO_END and table.tasks == ["digit-detection", "digit-classification"]
    assert sorted(tuple(r.variants) for r in table.rows) == sorted((d, c) for d in DETECTORS for c in CLASSIFIERS)
    ratios = crops_per_frame(doc)
    assert set(ratios) == set(DETECTORS) and all(0 < r <= 4 for r in ratios.values())
    # a detector's crop message carries an 8 x 8 float32 image; a prediction is a few numbers
    crop_kb = doc.spec.task("digit-detection").variants[0].output_kb
    assert crop_kb > doc.spec.task("digit-classification").variants[0].output_kb


def test_written_zoo_loads_back(profiled: ModelZoo, tmp_path: Path) -> None:
    path = write_zoo(profiled, tmp_path / "zoo.yaml", command="pytest")
    text = path.read_text()
    assert text.startswith("# The digits zoo") and "# Command: pytest" in text and "local-cpu-1t" in text
    (loaded,) = load_documents([path])
    assert loaded.model == profiled
    assert dump_zoo(profiled, command="pytest") == text


def test_planner_plans_with_the_profiled_zoo(profiled: ModelZoo, tmp_path: Path) -> None:
    from jellybean.optimizer import plan
    from jellybean.spec.bundle import load_bundle

    rows = profiled.spec.accuracy_tables[0].rows
    target = sorted(r.accuracy for r in rows)[len(rows) // 2]  # the better half of the combinations qualify
    ratios = "{" + ", ".join(f"{k}: {v}" for k, v in crops_per_frame(profiled).items()) + "}"
    write_zoo(profiled, tmp_path / "zoo.yaml")
    (tmp_path / "rest.yaml").write_text(TOPOLOGY_AND_WORKFLOW.replace("RATIOS", ratios)
                                        .replace("TARGET", str(target)))
    result = plan(load_bundle([tmp_path]), baselines=False, time_limit_s=30)
    assert result.feasible, result.explanation
    assert END_TO_END in result.accuracy_method
    assert result.accuracy >= target - 1e-6
    chosen = (result.models["detect"], result.models["classify"])
    assert next(r.accuracy for r in rows if tuple(r.variants) == chosen) == pytest.approx(result.accuracy)
    assert result.models["aggregate"] == "digits-aggregator"


def test_replica_memory_is_measured_in_a_fresh_process(quick_zoo: Path) -> None:
    frames = digits.frames("test", 4)
    detector = replica_peak_rss_mb("digits-detector-tiny", quick_zoo, frames)
    prediction = [{"frame_id": 0, "index": 0, "count": 1, "digit": 1, "truth": [1], "sent_at": 0.0}]
    aggregator = replica_peak_rss_mb("digits-aggregator", quick_zoo, prediction)
    assert 5 < aggregator < detector < 4096  # the aggregator's replica never loads torch


def test_profile_rejects_bad_arguments(quick_zoo: Path) -> None:
    with pytest.raises(ValueError):
        profile_zoo(quick_zoo, batch_sizes=(0,), repeats=1, eval_frames=1)
    with pytest.raises(ValueError):
        profile_zoo(quick_zoo, repeats=1, eval_frames=1, memory="guess")
