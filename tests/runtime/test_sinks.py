"""A workflow with several sinks, served on the in-process backend (fake runners, no Ray, no sleeps):
every frame ends once each sink its source reaches has ended it (with a result, or a failure and
its reason: none vanishes), each output gets the results of its own sinks, each result names its
sink, and accuracy is measured per sink. Both shapes: two chains apart (workflows/two-sinks) and a
fork, where one camera frame reaches two sinks."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from jellybean.optimizer import plan as make_plan
from jellybean.runtime.deployment import build_deployment
from jellybean.runtime.worker import COMPLETED, FAILED, new_outcome, mark, scope
from jellybean.spec import load_bundle
from jellybean.spec.bundle import resolve
from jellybean.spec.loader import load_texts
from tests.runtime.inprocess import DIGITS_LIVE, ROOT, Join, Runners, ends, host, inject, stateful
from tests.runtime.test_worker import served  # noqa: F401 - the fixture, both transports

TWO_SINKS = ROOT / "workflows" / "two-sinks"


@pytest.fixture
def serve(served, tmp_path: Path):  # noqa: F811 - pytest passes the imported fixture
    """``served`` (test_worker's: the in-process backend, its actors calling each other directly or
    over their own sockets) for a bundle, with its plan and a folder for file outputs."""

    def make(bundle, **options):
        return served(bundle=bundle, plan=make_plan(bundle, baselines=False), output_dir=tmp_path / "out", **options)

    return make


class JudgingJoin(Join):
    """The aggregator, judging its reading against the frame's truth (as the real one does)."""

    def __call__(self, batch: list[dict]) -> list[list[dict]]:
        out = super().__call__(batch)
        for message, produced in zip(batch, out):
            for result in produced:
                result["correct"] = result["reading"] == list(message["truth"])
        return out


class JudgingRunners(Runners):
    def __call__(self, spec: dict) -> list:
        made = [JudgingJoin() if isinstance(r, Join) else r for r in super().__call__(spec)]
        self.made[spec["key"]] = made
        return made


def fork_bundle():
    """digits-live with a second sink: `spot` classifies every crop the detector finds (each digit on
    its own), beside `classify -> aggregate` reading the whole frame. One camera frame reaches both."""
    texts = [(str(path), path.read_text()) for path in sorted(DIGITS_LIVE.glob("*.yaml"))]
    texts = [(name, text.replace("  outputs:\n", "    - name: spot\n      task: digit-classification\n"
                                 "      inputs:\n        - {from: detect, ratio: 2.557}\n  outputs:\n")
              .replace("    accuracy: 95.0\n", "    accuracy: 95.0\n    sinks:\n      - {stage: spot, accuracy: 90}\n"))
             for name, text in texts]
    bundle = resolve(load_texts(texts))
    assert bundle.workflow.spec.sinks == ["aggregate", "spot"]
    return bundle


def stream_results(p) -> Counter:
    """Results at every stream output actor, by the sink that made them."""
    return Counter(r["sink"] for key, actor in p.actors.items() if actor.kind == "output"
                   for r in host(p, key).output.buffer)


def test_the_deployment_knows_the_sinks_each_stage_reaches() -> None:
    bundle = fork_bundle()
    d = build_deployment(bundle, make_plan(bundle, baselines=False), stateful=stateful)
    assert d.sinks == ("aggregate", "spot") and d.sink == "aggregate"
    assert d.sinks_below == {"detect": ("aggregate", "spot"), "classify": ("aggregate",), "aggregate": ("aggregate",),
                             "spot": ("spot",)}
    assert {o.sinks for o in d.outputs} == {("aggregate", "spot")}
    two = load_bundle([TWO_SINKS])
    d = build_deployment(two, make_plan(two, baselines=False), stateful=stateful)
    assert {(o.name, o.sinks) for o in d.outputs} == {("shop", ("readings",)), ("billing", ("meter-readings",)),
                                                      ("everything", ("readings", "meter-readings"))}
    (shop,) = [o for o in d.outputs if o.name == "shop"]
    assert [o.name for o in d.outputs_for(shop.site, "readings")] == ["shop", "everything"]
    assert [o.name for o in d.outputs_for(shop.site, "meter-readings")] == ["billing", "everything"]


def test_ends_are_kept_per_sink_and_scoped_to_the_sinks_below() -> None:
    """An end that names no sink (a model error on the way) concerns every sink below where it
    happened; per sink, a result outranks a failure as it does for the whole frame."""
    outcome = mark(new_outcome(), "f", FAILED, "model error")
    assert scope(outcome, ("a", "b"))["ends"]["f"][4] == {"a": [FAILED, "model error", False, None],
                                                         "b": [FAILED, "model error", False, None]}
    mark(outcome, "f", COMPLETED, None, True, 5.0, sinks={"a": [COMPLETED, None, True, 5.0]})
    end = outcome["ends"]["f"]
    assert end[:4] == [COMPLETED, None, True, 5.0] and set(end[4]) == {None, "a"}
    scoped = scope(outcome, ("a", "b"))["ends"]["f"][4]
    assert scoped == {"a": [COMPLETED, None, True, 5.0], "b": [FAILED, "model error", False, None]}
    assert set(outcome["ends"]["f"][4]) == {None, "a"}  # scope leaves the outcome it read as it was


def test_two_chains_in_one_store_every_frame_ends_at_its_sink(serve) -> None:
    p, _backend, _runners = serve(load_bundle([TWO_SINKS]))
    p.start()
    tills = inject(p, [{"image": i, "digits": 1 + i % 3, "truth": [0] * (1 + i % 3)} for i in range(30)],
                   source="tills", site="cam-1")
    meters = inject(p, [{"image": i, "digits": 2, "truth": [9, 9]} for i in range(20)], source="meters", site="cam-2")
    assert Counter(state for state, _ in ends(p, tills).values()) == {COMPLETED: 30}
    assert Counter(state for state, _ in ends(p, meters).values()) == {COMPLETED: 20}
    p.poll()
    ledger = p.ledger
    assert (ledger.sent, ledger.completed, ledger.failed, ledger.in_flight, ledger.lost) == (50, 50, 0, 0, 0)
    sinks = {row["sink"]: row for row in p.status()["sinks"]}
    assert list(sinks) == ["readings", "meter-readings"]
    assert sinks["readings"]["frames"]["completed"] == 30 and sinks["meter-readings"]["frames"]["completed"] == 20
    assert sinks["readings"]["accuracy_target"] == 95.0 and sinks["meter-readings"]["accuracy_target"] == 98.0
    # Each output has its own sinks' results, each naming its sink; `everything` has both.
    by_output = {}
    for key, actor in p.actors.items():
        if actor.kind == "output" and actor.plan.kind == "stream":
            by_output[actor.plan.name] = Counter(r["sink"] for r in host(p, key).output.buffer)
    assert by_output == {"shop": {"readings": 30}, "everything": {"readings": 30, "meter-readings": 20}}
    lines = (p.output_dir / "two-sinks" / "billing.jsonl").read_text().splitlines()
    assert Counter(json.loads(line)["sink"] for line in lines) == {"meter-readings": 20}


def test_a_frame_that_reaches_two_sinks_ends_when_both_have_ended_it(serve) -> None:
    p, _backend, _runners = serve(fork_bundle())
    p.start()
    frames = [{"image": i, "digits": 1 + i % 3} for i in range(30)] + [{"image": 99, "digits": 0}]
    answers = ends(p, inject(p, frames, reply=True))
    assert Counter(state for state, _ in answers.values()) == {COMPLETED: 31}
    first = answers["cameras@cam-1#0"][1]
    assert set(first["by_sink"]) == {"aggregate", "spot"}
    assert first["by_sink"]["aggregate"]["sink"] == "aggregate" and first["by_sink"]["spot"]["sink"] == "spot"
    # A frame with nothing to find ends at both sinks with no result.
    assert answers["cameras@cam-1#30"][1]["by_sink"] == {"aggregate": None, "spot": None}
    p.poll()
    assert (p.ledger.sent, p.ledger.completed, p.ledger.failed, p.ledger.lost) == (31, 31, 0, 0)
    sinks = {row["sink"]: row["frames"] for row in p.status()["sinks"]}
    assert sinks["aggregate"]["completed"] == sinks["spot"]["completed"] == 31
    # The stream, served where each sink runs, has results of both sinks for every frame with digits,
    # each at the site of the sink that made it.
    where = {spec.stage: spec.site for spec in p.specs}
    found: dict[str, set] = {"aggregate": set(), "spot": set()}
    for key, actor in p.actors.items():
        if actor.kind == "output":
            for result in host(p, key).output.buffer:
                assert where[result["sink"]] == actor.site
                found[result["sink"]].add(result["frame_id"])
    assert found["aggregate"] == found["spot"] == {f"cameras@cam-1#{i}" for i in range(30)}


def test_a_failure_at_one_sink_fails_the_frame_with_that_sinks_reason(serve) -> None:
    """The spot classifier's replica is gone (and nothing holds its messages): each frame's reading
    still completes at `aggregate`, and the frame fails, saying which sink failed it and why; each
    sink's own ledger says what happened there."""
    p, backend, _runners = serve(fork_bundle(), hold_s=0.0)
    p.start()
    backend.kill(p.actors[next(k for k in p.actors if k.startswith("spot/"))].handle)
    answers = ends(p, inject(p, [{"image": i, "digits": 2} for i in range(10)]))
    for state, reason in answers.values():
        assert state == FAILED and reason.startswith("at sink spot: ") and "no live replica of stage spot" in reason
    p.poll()
    assert (p.ledger.sent, p.ledger.failed, p.ledger.lost) == (10, 10, 0)
    sinks = {row["sink"]: row["frames"] for row in p.status()["sinks"]}
    assert (sinks["aggregate"]["completed"], sinks["aggregate"]["failed"]) == (10, 0)
    assert (sinks["spot"]["completed"], sinks["spot"]["failed"]) == (0, 10)
    assert stream_results(p) == {"aggregate": 10}


def test_accuracy_is_measured_per_sink(serve) -> None:
    """The fake classifier answers each crop's index, so a frame whose truth is [0, 1] is read right
    and one whose truth is [5, 5] wrong at the reading sink; its verdicts are its own."""
    p, _backend, _runners = serve(load_bundle([TWO_SINKS]), runners=JudgingRunners())
    p.start()
    right = [{"image": i, "digits": 2, "truth": [0, 1]} for i in range(6)]
    wrong = [{"image": i, "digits": 2, "truth": [5, 5]} for i in range(2)]
    ends(p, inject(p, right + wrong, source="tills", site="cam-1"))
    ends(p, inject(p, right[:4], source="meters", site="cam-2"))
    p.poll()
    sinks = {row["sink"]: row for row in p.status()["sinks"]}
    assert sinks["readings"]["accuracy_measured"] == pytest.approx(75.0)
    assert sinks["meter-readings"]["accuracy_measured"] == pytest.approx(100.0)
    assert p.status()["accuracy_measured"] == pytest.approx(100 * 10 / 12)


def test_a_run_summary_shows_each_sink(serve) -> None:
    from jellybean.cli.run import render_summary

    p, _backend, _runners = serve(load_bundle([TWO_SINKS]), runners=JudgingRunners())
    p.start()
    ends(p, inject(p, [{"image": i, "digits": 2, "truth": [0, 1]} for i in range(4)], source="tills", site="cam-1"))
    summary = p.stop(drain=True)
    assert [(s.sink, s.frames.completed, s.frames.sent) for s in summary.sinks] == [("readings", 4, 4),
                                                                                  ("meter-readings", 0, 0)]
    lines = render_summary(summary).splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("SINK "))
    row = lines[header + 2].split()
    assert row[0] == "readings" and row[2:6] == ["100.0", "95.000", "4", "0"]
