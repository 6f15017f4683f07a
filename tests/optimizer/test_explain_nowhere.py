"""What binds, said better: a stage that can run nowhere says the first reason that holds (no
instance there, hardware none of its profiles name, with the closest name, memory, batch sizes no
profile has); misspelt names in documents get "did you mean"; lists are cut with "... and N more"."""

from __future__ import annotations

import pytest

from jellybean.optimizer import plan
from jellybean.spec import SpecError, load_bundle
from jellybean.spec.errors import listed

from .random_instances import make_bundle
from .test_problem import ZOO


def _topology(hardware: str = "gpu", memory_mb: float | None = None) -> dict:
    box = {"name": "box", "hardware": hardware, "price_per_hour": 1, "count": 2}
    if memory_mb is not None:
        box["memory_mb"] = memory_mb
    return {"sites": [{"name": "cloud", "tier": "cloud", "instances": [box]},
                      {"name": "cam", "tier": "device", "parent": "cloud"}]}


def _workflow(**stage) -> dict:
    return {"sources": [{"name": "cams", "rate_per_s": 1, "payload_kb": 10, "sites": ["cam"]}],
            "stages": [{"name": "detect", "task": "det", "inputs": ["cams"], **stage}], "slo": {"accuracy": 10}}


def _why(topology: dict, workflow: dict) -> str:
    result = plan(make_bundle(ZOO, topology, workflow), baselines=False)
    assert not result.feasible
    return " ".join(result.explanation)


def test_hardware_no_profile_names_gets_the_closest_name() -> None:
    why = _why(_topology("gpuu"), _workflow())
    assert "stage detect (task det) cannot run on any instance: its variants are profiled on cpu, gpu" in why
    assert "the instances it may use are gpuu; for 'gpuu', did you mean 'gpu'?" in why


def test_a_batch_size_no_profile_has_is_named_as_such() -> None:
    why = _why(_topology("cpu"), _workflow(batch_sizes=[16]))
    assert "the workflow allows batch sizes 16, which no profile of its variants on these instances has " \
           "(profiled batch sizes: 1, 4, 8)" in why


def test_memory_that_holds_no_variant_says_how_much_is_needed() -> None:
    zoo = {"tasks": [{"name": "det", "variants": [{**ZOO["tasks"][0]["variants"][0], "memory_mb": 900}]}]}
    result = plan(make_bundle(zoo, _topology("gpu", memory_mb=512), _workflow()), baselines=False)
    assert "no variant fits an instance's memory (the smallest, n, needs 900 MB; the largest instance it is " \
           "profiled on has 512 MB)" in " ".join(result.explanation)


def test_misspelt_names_in_documents_get_did_you_mean(tmp_path) -> None:
    (tmp_path / "docs.yaml").write_text("""\
apiVersion: jellybean.io/v1alpha1
kind: ModelZoo
metadata: {name: z}
spec:
  tasks:
  - name: detection
    variants: [{name: n, accuracy: 50, output_kb: 1, profiles: [{hardware: cpu, latency_ms: {1: 10}}]}]
---
apiVersion: jellybean.io/v1alpha1
kind: Topology
metadata: {name: t}
spec:
  sites:
  - {name: cloud, tier: cloud, instances: [{name: c, hardware: cpu, price_per_hour: 1, count: 1}]}
  - {name: camera-1, tier: device, parent: cloud}
---
apiVersion: jellybean.io/v1alpha1
kind: Workflow
metadata: {name: w}
spec:
  zoo: z
  topology: t
  sources: [{name: cams, rate_per_s: 1, payload_kb: 1, sites: [camera-l]}]
  stages: [{name: detect, task: detectoin, inputs: [cams]}]
  slo: {accuracy: 10}
""")
    with pytest.raises(SpecError) as caught:
        load_bundle([tmp_path / "docs.yaml"])
    text = str(caught.value)
    assert "unknown site 'camera-l'; did you mean 'camera-1'?" in text
    assert "unknown task 'detectoin'; did you mean 'detection'?" in text


def test_lists_are_cut_saying_how_many_more() -> None:
    assert listed([f"s{k:02d}" for k in range(12)]) == "s00, s01, s02, s03, s04, s05, s06, s07, ... and 4 more"
    assert listed([16, 4, 1, 8]) == "1, 4, 8, 16"
    assert listed([]) == "none"


def test_a_batch_size_no_profile_has_is_a_warning_where_others_are_profiled() -> None:
    result = plan(make_bundle(ZOO, _topology("cpu"), _workflow(batch_sizes=[1, 16, 32])), baselines=False)
    assert result.feasible
    assert "stage detect: batch sizes 16, 32 in no profile of its variants (profiled batch sizes: 1, 4, 8), so " \
           "never used" in result.warnings


def test_misspelt_strategy_solver_kind_and_table_variant_get_did_you_mean(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"unknown strategy 'optimall'; did you mean 'optimal'\?"):
        plan(make_bundle(ZOO, _topology("cpu"), _workflow()), strategy="optimall")
    with pytest.raises(ValueError, match=r"unknown solver 'higs'; did you mean 'highs'\?"):
        plan(make_bundle(ZOO, _topology("cpu"), _workflow()), solver="higs", baselines=False)
    (tmp_path / "zoo.yaml").write_text("""\
apiVersion: jellybean.io/v1alpha1
kind: ModelZo
metadata: {name: z}
spec: {tasks: []}
""")
    with pytest.raises(SpecError, match=r"unknown kind 'ModelZo'; did you mean 'ModelZoo'\?"):
        load_bundle([tmp_path / "zoo.yaml"])
    (tmp_path / "zoo.yaml").write_text("""\
apiVersion: jellybean.io/v1alpha1
kind: ModelZoo
metadata: {name: z}
spec:
  tasks:
  - name: det
    variants: [{name: small, accuracy: 50, output_kb: 1, profiles: [{hardware: cpu, latency_ms: {1: 10}}]}]
  accuracy_tables:
  - {name: e2e, tasks: [det], rows: [{variants: [smal], accuracy: 50}]}
""")
    with pytest.raises(SpecError, match=r"task 'det' has no variant 'smal'; did you mean 'small'\? "
                                        r"\(variants: small\)"):
        load_bundle([tmp_path / "zoo.yaml"])


def test_lists_of_sentences_keep_their_order_and_say_how_many_more() -> None:
    from jellybean.optimizer.planner import _first

    found = [f"violation {k}" for k in (5, 1, 4, 2, 3)]
    assert _first(found) == "violation 5; violation 1; violation 4; ... and 2 more"
    assert listed(["b", "a"], ordered=True) == "b, a"


def test_a_long_reason_in_the_baselines_table_is_cut_visibly_and_given_in_full() -> None:
    from jellybean.cli.render import WHY_NOT_WIDTH, render_baselines

    topology = _topology("gpu")
    topology["sites"][0]["instances"][0]["memory_mb"] = 512
    zoo = {"tasks": [{"name": "det", "variants": [{**ZOO["tasks"][0]["variants"][0], "memory_mb": 900}]}]}
    result = plan(make_bundle(zoo, topology, _workflow()))
    cloud_only = next(b for b in result.baselines if b.strategy == "cloud-only")
    assert len(cloud_only.reason) > WHY_NOT_WIDTH
    text = render_baselines(result)
    assert cloud_only.reason[:WHY_NOT_WIDTH - 3] + "..." in text
    assert f"Why not, in full:\n  cloud-only: {cloud_only.reason}" in text
