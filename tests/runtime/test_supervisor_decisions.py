"""The supervisor's decisions, without Ray: which sites are down, the degraded topology, hysteresis,
and a re-plan whose replicas cannot start being tried again after a backoff (on the in-process
backend). Its behaviour on a real multi-node Ray is in test_supervisor.py."""

from __future__ import annotations

from pathlib import Path

from jellybean.optimizer import plan as make_plan
from jellybean.runtime.supervisor import Hysteresis, Supervisor, sites_down, with_rates, without_sites
from jellybean.spec import load_bundle

ROOT = Path(__file__).resolve().parents[2]
DRILLS = [ROOT / "workflows" / "digits" / "zoo.yaml", ROOT / "bench" / "drills"]


def test_a_site_is_down_when_no_live_node_advertises_it() -> None:
    nodes = [{"Alive": True, "Resources": {"CPU": 2.0, "site:cloud": 1000.0}},
             {"Alive": False, "Resources": {"CPU": 1.0, "site:hub": 1000.0}}]
    assert sites_down(nodes, ["cloud", "hub"]) == {"hub"}
    nodes.append({"Alive": True, "Resources": {"site:hub": 1000.0}})
    assert sites_down(nodes, ["cloud", "hub"]) == set()


def test_a_down_site_keeps_its_links_and_loses_its_instances() -> None:
    bundle = load_bundle(DRILLS)
    degraded = without_sites(bundle.topology, {"hub"})
    by_name = {s.name: s for s in degraded.spec.sites}
    assert by_name["hub"].instances == [] and by_name["hub"].uplink is not None
    assert by_name["cloud"].instances and bundle.topology.spec.sites[1].instances  # the original is untouched
    plan = make_plan(with_rates(bundle, {}, degraded), baselines=False)
    assert plan.feasible and {a.site for a in plan.assignments} == {"cloud"}
    busier = with_rates(bundle, {"cameras": 35.0})
    assert busier.workflow.spec.sources[0].rate_per_s == 35.0 and bundle.workflow.spec.sources[0].rate_per_s == 20.0


def test_hysteresis_acts_only_after_the_ratio_stays_out_of_band() -> None:
    h = Hysteresis(tolerance=0.25, up_delay_s=3.0, down_delay_s=10.0)
    assert h.observe(2.0, 0.0) is None
    assert h.observe(2.0, 2.9) is None
    assert h.observe(2.0, 3.0) == "up"
    assert h.observe(2.0, 3.1) is None  # acted: the condition must hold again
    # Oscillating around the threshold never acts.
    for k in range(40):
        assert h.observe(1.3 if k % 2 else 1.1, 10.0 + k) is None
    # Quieter load waits longer than busier load.
    assert h.observe(0.5, 100.0) is None
    assert h.observe(0.5, 105.0) is None
    assert h.observe(0.5, 110.0) == "down"
    assert h.observe(1.0, 111.0) is None


def test_a_site_change_whose_replicas_cannot_start_is_tried_again_after_a_backoff() -> None:
    """On a loaded cluster the new plan's replicas may not start in time: the change is not forgotten
    (the supervisor would otherwise believe the site handled and never re-plan), it is re-planned after
    1 s, then 2 s... until it deploys."""
    from jellybean.runtime.deployment import ServingError
    from tests.runtime.inprocess import InProcessBackend, Runners

    bundle = load_bundle(DRILLS)
    plan = make_plan(bundle, baselines=False)
    alive = {"hub": True}

    def nodes() -> list[dict]:
        return [{"Alive": True, "Resources": {"site:cloud": 1000.0}},
                {"Alive": alive["hub"], "Resources": {"site:hub": 1000.0}}]

    backend = InProcessBackend(runners=Runners())
    supervisor = Supervisor(bundle, plan, nodes=nodes, backend=backend)
    tries: list[set[str]] = []

    def reconfigure(new_plan, new_bundle=None, *, timeout_s=0.0):
        tries.append({a.site for a in new_plan.assignments})
        if len(tries) < 3:
            raise ServingError("1 actor(s) of drills could not start within 15 s")
        supervisor.pipeline.plan = new_plan
        return {"kept": [], "started": ["detect/cloud"]}

    supervisor.pipeline.reconfigure = reconfigure
    try:
        assert supervisor.check(now=100.0) is None  # all well
        alive["hub"] = False
        assert supervisor.check(now=101.0) == "site-down" and supervisor.down == set()  # failed: not taken as done
        assert supervisor.check(now=101.5) is None  # backing off (1 s)
        assert supervisor.check(now=102.0) == "site-down" and supervisor.down == set()  # failed again: 2 s
        assert supervisor.check(now=103.5) is None
        assert supervisor.check(now=104.0) == "site-down" and supervisor.down == {"hub"}
        assert tries == [{"cloud"}] * 3
        assert [e.ok for e in supervisor.events] == [False, False, True]
        assert supervisor.check(now=105.0) is None  # nothing changed since
    finally:
        backend.close()
