"""The data path without Ray: frames go source -> replica -> replica -> output on the in-process
backend, with fake runners, and every frame ends exactly once. Routing by shares, joins by frame id,
retries after a death, holds and re-plans, cut uplinks, backpressure and model errors; the tests wait
on the frames' outcomes, never on the clock."""

from __future__ import annotations

from collections import Counter

import pytest

from jellybean.runtime.replicas import ReplicaState
from jellybean.runtime.worker import (COMPLETED, FAILED, PENDING, mark, merge_into, new_outcome)
from tests.runtime.inprocess import Gate, Runners, ends, eventually, host, inject, live, pipeline, split

FRAMES = [{"image": i, "digits": 1 + i % 3} for i in range(60)]


@pytest.fixture(params=["inprocess", "socket"])
def served(request):
    """Pipelines on the in-process backend, their actors calling each other directly or over their
    own sockets on 127.0.0.1 (the data path Ray deployments use, :mod:`jellybean.runtime.wire`)."""
    made = []

    def make(**options):
        options.setdefault("transport", request.param)
        p, backend, runners = pipeline(**options)
        made.append((p, backend))
        return p, backend, runners

    yield make
    for p, backend in made:
        p.stop(drain=False)
        backend.close()


# --- outcomes -------------------------------------------------------------------------------------------


def test_a_frame_ends_completed_over_failed_over_pending() -> None:
    outcome = new_outcome()
    mark(outcome, "a", PENDING)
    mark(outcome, "a", FAILED, "boom")
    assert outcome["ends"]["a"][:2] == [FAILED, "boom"]
    mark(outcome, "a", COMPLETED, None, True)
    mark(outcome, "a", FAILED, "later")
    assert outcome["ends"]["a"] == [COMPLETED, None, True, None]
    total = new_outcome()
    merge_into(total, outcome, only="b")
    assert total["ends"] == {}
    merge_into(total, outcome, only="a")
    assert total["ends"] == {"a": [COMPLETED, None, True, None]}


# --- the flow -------------------------------------------------------------------------------------------


def test_frames_go_actor_to_actor_and_every_one_ends(served) -> None:
    p, backend, runners = served()
    p.start()
    answers = ends(p, inject(p, FRAMES))
    assert Counter(state for state, _ in answers.values()) == {COMPLETED: len(FRAMES)}
    p.poll()
    ledger = p.ledger
    assert (ledger.sent, ledger.completed, ledger.failed, ledger.in_flight, ledger.lost) == (60, 60, 0, 0, 0)
    # The stream output got every reading, once, in the frame's own words.
    stream = host(p, "readings@cloud").output
    assert stream.next_offset == 60
    results = {r["frame_id"]: r for r in stream.buffer}
    assert set(results) == set(answers)
    first = results["cameras@cam-1#0"]
    assert first["source"] == "cameras" and first["site"] == "cam-1" and first["reading"] == [0]
    assert first["completed_at"] >= first["received_at"]
    # Each actor sent only where the plan says: the camera to the hub, the hub's stages to the next
    # stage's site, the sink to its output; nothing was sent down the tiers.
    sent_to = {key: set(a.report.get("link_bytes", {})) for key, a in p.actors.items() if a.report}
    assert sent_to["cameras@cam-1"] == {"hub"}
    for key, sites in sent_to.items():
        for site in sites:
            assert site in p.deployment.reach[p.actors[key].site]
    # Crops per frame: what the detector emitted is what the classifier took.
    stages = {row["stage"]: row for row in p.status()["stages"]}
    assert stages["classify"]["rate_measured_per_s"] > 0


def test_a_waiting_client_gets_its_result_back(served) -> None:
    p, _backend, _runners = served()
    p.start()
    answers = ends(p, inject(p, FRAMES[:3], reply=True))
    for frame_id, (state, result) in answers.items():
        assert state == COMPLETED and result["frame_id"] == frame_id and result["reading"]
    # Without asking, no result travels back: the outcome only says how the frame ended.
    answers = ends(p, inject(p, FRAMES[:3]))
    assert all(result is None for _, result in answers.values())


def test_routing_follows_the_plan_shares_exactly(served) -> None:
    p, _backend, runners = served(max_in_flight=1000)
    p.deployment = split(p.deployment, "classify", [1.0, 3.0])
    p.start()
    frames = [{"image": i, "digits": 1} for i in range(400)]
    answers = ends(p, inject(p, frames))
    assert all(state == COMPLETED for state, _ in answers.values())
    seen = {key: made[0].seen for key, made in runners.made.items() if key.startswith("classify")}
    assert sorted(seen.values()) == [100, 300]  # smooth weighted round robin is exact over the prefix


def test_a_join_gets_all_parts_of_a_frame_on_one_replica(served) -> None:
    p, _backend, runners = served()
    p.deployment = split(p.deployment, "aggregate", [1.0, 1.0])
    p.start()
    frames = [{"image": i, "digits": 3} for i in range(200)]
    answers = ends(p, inject(p, frames))
    assert Counter(state for state, _ in answers.values()) == {COMPLETED: 200}
    joins = [made[0] for key, made in runners.made.items() if key.startswith("aggregate")]
    assert all(j.seen > 0 for j in joins) and sum(j.seen for j in joins) == 600
    assert all(not j.parts for j in joins)  # no frame left half-joined anywhere


def test_a_part_sent_again_after_its_frame_met_gets_the_frame_s_end(served) -> None:
    """A classifier that dies after passing a part on, before its outcome reached its sender, makes
    the sender send that part again: the join must answer it with how the frame ended, not hold it
    for parts that will never come again (the frame would end failed at its source, "a join held
    parts of the frame and never completed it")."""
    from tests.runtime.inprocess import run

    p, _backend, runners = served()
    p.start()
    key = next(k for k in p.actors if k.startswith("aggregate"))
    join = runners.made[key][0]
    part = {"frame_id": "cameras@cam-1#x", "source": "cameras", "site": "cam-1", "count": 2}
    first = run(p.backend, host(p, key).push_messages([{**part, "index": 0, "digit": 4}]))
    assert first["ends"]["cameras@cam-1#x"][0] == PENDING
    met = run(p.backend, host(p, key).push_messages([{**part, "index": 1, "digit": 2}]))
    assert met["ends"]["cameras@cam-1#x"][0] == COMPLETED
    again = run(p.backend, host(p, key).push_messages([{**part, "index": 1, "digit": 2}]))
    assert again["ends"]["cameras@cam-1#x"][0] == COMPLETED
    assert join.seen == 2 and not join.parts  # the join never saw the part again; nothing held
    assert host(p, "readings@cloud").output.next_offset == 1  # one result, delivered once


def test_a_replica_that_dies_holding_messages_is_routed_around(served) -> None:
    gate = Gate()
    p, backend, runners = served(runners=Runners(gate=gate), threaded=True)
    p.deployment = split(p.deployment, "classify", [1.0, 1.0])
    p.start()
    gate.open.clear()
    pending = inject(p, [{"image": i, "digits": 2} for i in range(40)])
    assert gate.entered.wait(10)
    victim = next(a for k, a in p.actors.items() if k.startswith("classify"))
    backend.kill(victim.handle)
    gate.open.set()
    answers = ends(p, pending)
    assert Counter(state for state, _ in answers.values()) == {COMPLETED: 40}
    p.poll()
    assert victim.state == ReplicaState.DEAD and victim.key in p.dead
    assert p.status()["state"] == "degraded" and p.ledger.failed == 0


def test_with_no_replica_left_messages_are_held_until_a_replica_returns(served) -> None:
    p, backend, _runners = served(hold_s=60.0)
    p.start()
    join = p.actors[next(k for k in p.actors if k.startswith("aggregate"))]
    backend.kill(join.handle)
    pending = inject(p, FRAMES[:10])
    eventually(lambda: p.held > 0, p=p)
    assert join.state == ReplicaState.DEAD and p.attention.is_set()
    assert p.restart_dead() == [join.key]
    answers = ends(p, pending)
    assert Counter(state for state, _ in answers.values()) == {COMPLETED: 10}


def test_with_no_replica_and_no_hold_frames_fail_with_the_reason(served) -> None:
    p, backend, _runners = served(hold_s=0.0)
    p.start()
    backend.kill(p.actors[next(k for k in p.actors if k.startswith("aggregate"))].handle)
    answers = ends(p, inject(p, FRAMES[:5]))
    for state, reason in answers.values():
        assert state == FAILED and "no live replica of stage aggregate" in reason
    p.poll()
    assert p.ledger.failed == 5 and p.ledger.lost == 0
    assert all("no live replica of stage aggregate" in r for r in p.ledger.reasons)


def test_a_model_error_fails_its_frames_and_the_replica_goes_on(served) -> None:
    p, _backend, _runners = served()
    p.start()
    answers = ends(p, inject(p, [{"image": 0, "digits": 1}]))
    assert [s for s, _ in answers.values()] == [COMPLETED]
    poisoned = ends(p, inject(p, [{"image": 1, "digits": 1, "poison": True}]))
    (state, reason), = poisoned.values()
    assert state == FAILED and "stage classify: ValueError: a poisoned crop" in reason
    again = ends(p, inject(p, [{"image": 2, "digits": 1}]))
    assert [s for s, _ in again.values()] == [COMPLETED]


def test_a_replan_keeps_what_it_can_and_loses_nothing(served) -> None:
    gate = Gate()
    p, _backend, _runners = served(runners=Runners(gate=gate), threaded=True)
    bundle, plan = live()
    p.start()
    gate.open.clear()
    pending = inject(p, [{"image": i, "digits": 2} for i in range(30)])
    assert gate.entered.wait(10)
    before = set(p.replicas)
    moved = p.reconfigure(plan, bundle)  # the same plan: every replica stays
    assert set(moved["kept"]) == before and moved["started"] == []
    gate.open.set()
    assert Counter(s for s, _ in ends(p, pending).values()) == {COMPLETED: 30}
    assert p.reconfigurations == 1


def test_a_cut_uplink_buffers_what_must_cross_and_delivers_it_when_back(served) -> None:
    p, _backend, runners = served()
    p.start()
    p.set_uplink("hub", False)
    pending = inject(p, FRAMES[:20])
    # The hub keeps serving what it can reach; what must go up waits for the link.
    eventually(lambda: p.link_buffers.get("hub", 0) > 0, p=p)
    assert not pending[1].done()
    detect = next(made[0] for key, made in runners.made.items() if key.startswith("classify"))
    assert detect.seen > 0
    p.set_uplink("hub", True)
    assert Counter(s for s, _ in ends(p, pending).values()) == {COMPLETED: 20}
    p.poll()
    assert not p.link_buffers.get("hub")


def test_a_full_link_buffer_fails_frames_with_the_reason(served) -> None:
    p, _backend, _runners = served(link_buffer_capacity=5)
    p.start()
    p.set_uplink("hub", False)
    pending = inject(p, [{"image": i, "digits": 1} for i in range(20)])
    # The hub takes whole batches (16 of the 20): they do not fit the 5-message buffer and fail; the
    # other 4 wait in it. One push's frames share one outcome, so the source hears once the 4 are through.
    eventually(lambda: p.link_buffers.get("hub", 0) > 0, p=p)
    p.set_uplink("hub", True)
    answers = ends(p, pending)
    failed = [reason for state, reason in answers.values() if state == FAILED]
    assert len(failed) == 16 and all("uplink of hub is down and its buffer (5 messages) is full" in r for r in failed)
    assert Counter(state for state, _ in answers.values())[COMPLETED] == 4
    p.poll()
    assert p.ledger.lost == 0 and p.ledger.sent == 20


def test_backpressure_reaches_the_source(served) -> None:
    """With the classifier held, frames pile up only to the source's room: the next ones find none."""
    gate = Gate()
    p, backend, _runners = served(runners=Runners(gate=gate), threaded=True, max_in_flight=32)
    p.start()
    gate.open.clear()
    pending = inject(p, [{"image": i, "digits": 1} for i in range(32)])
    source = host(p, "cameras@cam-1").source
    from tests.runtime.inprocess import run

    assert run(backend, source.reserve(1, wait_s=0.05)) is False  # no room: an endpoint answers 429
    replica = host(p, next(k for k in p.actors if k.startswith("classify"))).worker
    assert replica.queued <= replica.capacity
    gate.open.set()
    assert Counter(s for s, _ in ends(p, pending).values()) == {COMPLETED: 32}
    assert run(backend, source.reserve(1, wait_s=1.0)) is True


def test_stopping_drains_and_fails_what_is_left_with_the_reason(served) -> None:
    gate = Gate()
    p, _backend, _runners = served(runners=Runners(gate=gate), threaded=True, drain_timeout_s=0.2)
    p.start()
    gate.open.clear()
    inject(p, FRAMES[:5])
    summary = p.stop(drain=True)
    gate.open.set()
    assert summary.frames.sent == 5 and summary.frames.lost == 0
    assert summary.frames.failed == 5
    assert all("still in flight when the pipeline stopped" in r for r in summary.failures)


# --- the collector in an actor's own process ------------------------------------------------------------


def test_an_actor_in_its_own_process_freezes_what_setup_built_and_collects_rarely() -> None:
    import subprocess
    import sys

    code = ("import gc; from jellybean.runtime.hosts import GC_YOUNG_THRESHOLD, settle_heap; "
            "kept = [dict(n=n) for n in range(1000)]; settle_heap(); "
            "print(gc.get_threshold()[0] == GC_YOUNG_THRESHOLD, gc.get_freeze_count() >= 1000)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", "True"], out.stderr[-2000:]


def test_hosts_in_the_callers_process_leave_its_collector_alone(served) -> None:
    import gc

    before = (gc.get_threshold(), gc.get_freeze_count())
    p, _backend, _runners = served()
    p.start()
    assert Counter(s for s, _ in ends(p, inject(p, FRAMES[:4])).values()) == {COMPLETED: 4}
    assert (gc.get_threshold(), gc.get_freeze_count()) == before


# --- taking whole batches -------------------------------------------------------------------------------


def test_a_replica_runs_whole_batches_and_a_split_push_gets_one_outcome() -> None:
    import asyncio

    from jellybean.runtime.worker import StageWorker

    sizes: list[int] = []

    def runner(batch: list[dict]) -> list[list[dict]]:
        sizes.append(len(batch))
        return [[{"out": m["n"]}] for m in batch]

    async def scenario() -> list[dict]:
        worker = StageWorker(["s"], [4], [runner], None, consumers={}, sink="s", max_wait_s=0.001)  # type: ignore[arg-type]
        pushes = [[{"frame_id": f"{p}-{k}", "n": k} for k in range(3)] for p in range(3)]
        outcomes = await asyncio.gather(*(worker.push(batch) for batch in pushes))
        await worker.close()
        return outcomes

    outcomes = asyncio.run(scenario())
    assert sizes == [4, 4, 1]  # 9 queued: two whole batches (the third push split 2 + 1), then the rest
    for p, outcome in enumerate(outcomes):
        assert {fid: end[0] for fid, end in outcome["ends"].items()} == {f"{p}-{k}": COMPLETED for k in range(3)}


def test_sources_pause_and_resume_by_site() -> None:
    """The test bed's scaling windows pause the cameras of some sites and leave the others sending."""
    bundle, plan = live()
    replayed = bundle.workflow.model_copy(deep=True)
    for source in replayed.spec.sources:
        source.ingest, source.payload, source.replay = None, None, "digits-frames"
    bundle = type(bundle)(replayed, bundle.zoo, bundle.topology, bundle.sources)
    p, backend, _ = pipeline(bundle=bundle, plan=plan)
    try:
        p.start()
        loops = {site: host(p, f"cameras@{site}").loops for site in ("cam-1", "cam-2")}
        assert loops["cam-1"] and loops["cam-2"]

        def paused() -> dict[str, bool]:
            return {site: all(loop.paused for loop in each) for site, each in loops.items()}

        p.pause_sources(True, sites=["cam-2"])
        assert paused() == {"cam-1": False, "cam-2": True}
        p.pause_sources(True, sites=[])
        assert paused() == {"cam-1": False, "cam-2": True}
        p.pause_sources(True)
        assert paused() == {"cam-1": True, "cam-2": True}
        p.pause_sources(False, sites=["cam-1"])
        assert paused() == {"cam-1": False, "cam-2": True}
    finally:
        p.stop(drain=False)
        backend.close()
