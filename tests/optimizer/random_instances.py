"""Small random planning instances (documents built in memory) for property and brute-force tests."""

from __future__ import annotations

import random

from jellybean.spec.bundle import Bundle, cross_check
from jellybean.spec.loader import SourceMap
from jellybean.spec.topology import Topology
from jellybean.spec.workflow import Workflow
from jellybean.spec.zoo import ModelZoo

META = {"apiVersion": "jellybean.io/v1alpha1"}


def make_bundle(zoo: dict, topology: dict, workflow: dict, *, names: tuple[str, str, str] = ("w", "z", "t")) -> Bundle:
    """A Bundle of in-memory documents, cross-checked; ``names``: the Workflow's, ModelZoo's and Topology's."""
    workflow_name, zoo_name, topology_name = names
    bundle = Bundle(
        Workflow.model_validate({**META, "kind": "Workflow", "metadata": {"name": workflow_name}, "spec": workflow}),
        ModelZoo.model_validate({**META, "kind": "ModelZoo", "metadata": {"name": zoo_name}, "spec": zoo}),
        Topology.model_validate({**META, "kind": "Topology", "metadata": {"name": topology_name}, "spec": topology}),
        {k: SourceMap("<memory>") for k in ("Workflow", "ModelZoo", "Topology")},
    )
    assert not cross_check(bundle)
    return bundle


def _variant_maker(rng: random.Random, profiles):
    """A variant document: its profiles drawn first, then accuracy, output size and memory."""

    def variant(name: str, acc_lo: float, acc_hi: float) -> dict:
        drawn = profiles()
        return {"name": name, "accuracy": round(rng.uniform(acc_lo, acc_hi), 2),
                "output_kb": round(rng.uniform(0.5, 30), 2), "memory_mb": rng.choice([100, 300, 600]),
                "profiles": drawn}

    return variant


def _two_tasks(rng: random.Random, profiles) -> list[dict]:
    """Task t1 with two variants (the second more accurate), t2 with one or two."""
    variant = _variant_maker(rng, profiles)
    return [
        {"name": "t1", "variants": [variant("t1a", 60, 80), variant("t1b", 80, 95)]},
        {"name": "t2", "variants": [variant("t2a", 70, 99)] + ([variant("t2b", 85, 99)] if rng.random() < 0.5 else [])},
    ]


def _profiles_maker(rng: random.Random, hardware: list[str]):
    """Latency profiles on each of ``hardware``: a batch-1 latency (the gpu 0.1-0.5 x the cpu's) and,
    half the time, a batch of 4."""

    def profiles() -> list[dict]:
        base = rng.uniform(5, 60)
        out = []
        for hw in hardware:
            speed = 1.0 if hw == "cpu" else rng.uniform(0.1, 0.5)
            lat1 = base * speed
            lat = {1: round(lat1, 3)}
            if rng.random() < 0.5:
                lat[4] = round(lat1 * rng.uniform(2.0, 4.5), 3)
            out.append({"hardware": hw, "latency_ms": lat})
        return out

    return profiles


def _topology(rng: random.Random, hardware: list[str], sharing: str, max_instances: int) -> tuple[dict, list[str]]:
    """A cloud and one or two hubs under it (at most ``max_instances`` instances in all); the hubs'
    names (where the sources are)."""
    hubs = rng.choice([1, 2])
    budget = max_instances
    sites = []
    cloud_limit = 1 if budget <= 3 else 2
    budget -= cloud_limit
    sites.append({"name": "cloud", "tier": "cloud", "instances": [
        {"name": "vm", "hardware": rng.choice(hardware), "price_per_hour": round(rng.uniform(0.5, 3), 3),
         "max_count": cloud_limit}]})
    for k in range(hubs):
        count = 1 if budget >= 1 else 0
        budget -= count
        bandwidth = rng.choice([None, None, 5.0, 20.0, 100.0])
        up = {"cost_per_gb": round(rng.uniform(0.0, 0.2), 3)}
        if bandwidth is not None:
            up["bandwidth_mbps"] = bandwidth
        sites.append({
            "name": f"hub{k}", "tier": "hub", "parent": "cloud",
            "uplink": {"up": up, "down": {"cost_per_gb": 1.0}},
            "instances": ([{"name": "box", "hardware": "cpu", "price_per_hour": round(rng.uniform(0.01, 0.3), 3),
                            "count": count, "memory_mb": rng.choice([400, 800, 2000])}] if count else []),
        })
    topology = {"sites": sites, "sharing": sharing, "max_utilization": rng.choice([0.7, 0.9, 1.0]),
                "max_link_utilization": rng.choice([0.6, 1.0])}
    return topology, [f"hub{k}" for k in range(hubs)]


def random_bundle(seed: int, *, sharing: str, max_instances: int = 4, join: bool | None = None,
                  carbon: bool = False) -> Bundle:
    """A small random instance; ``carbon``: with each site's grid intensity (sometimes a day's series)
    and each instance group's idle and busy power, drawn from their own generator so that the rest of
    the instance is the one the same seed gives without them."""
    rng = random.Random(seed)
    hardware = ["cpu", "gpu"]
    join = rng.random() < 0.3 if join is None else join

    profiles = _profiles_maker(rng, hardware)
    tasks = _two_tasks(rng, profiles)
    variant = _variant_maker(rng, profiles)
    if join:
        tasks.append({"name": "t3", "variants": [variant("t3a", 90, 99)]})
    zoo = {"tasks": tasks}

    topology, cam_sites = _topology(rng, hardware, sharing, max_instances)
    sources = [{"name": "cams", "rate_per_s": round(rng.uniform(2, 40), 2),
                "payload_kb": round(rng.uniform(5, 120), 1), "sites": cam_sites}]
    stages = [
        {"name": "s1", "task": "t1", "inputs": ["cams"]},
        {"name": "s2", "task": "t2", "inputs": [
            {"from": "s1", "ratio": round(rng.uniform(0.5, 3), 2),
             "ratio_by_variant": {"t1b": round(rng.uniform(0.5, 3), 2)}}]},
    ]
    if join:
        sources.append({"name": "mics", "rate_per_s": 1.0, "payload_kb": round(rng.uniform(1, 20), 1),
                        "sites": cam_sites})
        stages.append({"name": "s3", "task": "t3", "inputs": ["s2", "mics"]})
        # The join pairs one s2 result with one microphone request: rates must agree.
        stages[1]["inputs"][0] = {"from": "s1", "ratio": 1.0}
        stages[0]["inputs"] = [{"from": "cams", "ratio": 1.0}]
        sources[0]["rate_per_s"] = 1.0
    workflow = {"sources": sources, "stages": stages, "slo": {"accuracy": round(rng.uniform(40, 75), 1)}}
    if carbon:
        add_carbon(topology, random.Random(1_000_003 * seed + 17))
    return make_bundle(zoo, topology, workflow)


#: Per tier, the range of grid intensities drawn (gCO2/kWh): the cloud's grid cleaner than the hubs',
#: whose instances are cheaper, so that the least-carbon plan is seldom the cheapest.
INTENSITY_RANGE = {"cloud": (20.0, 250.0), "hub": (150.0, 900.0)}


def add_carbon(topology: dict, rng: random.Random) -> None:
    """Random carbon figures, one draw per tier (the hubs' grid alike, so that hubs identical without
    them stay identical): an intensity in :data:`INTENSITY_RANGE` (a third of the tiers a two- or
    three-step day series instead), and per instance group name idle 2-60 W and busy up to 8x that."""
    intensity: dict[str, object] = {}
    power: dict[str, dict] = {}
    for site in topology["sites"]:
        low, high = INTENSITY_RANGE[site["tier"]]
        if site["tier"] not in intensity:
            if rng.random() < 1 / 3:
                steps = sorted(rng.sample(range(24), rng.choice([2, 3])))
                intensity[site["tier"]] = [{"from": f"{h:02d}:00", "g_per_kwh": round(rng.uniform(low, high), 1)}
                                           for h in steps]
            else:
                intensity[site["tier"]] = round(rng.uniform(low, high), 1)
        site["carbon_intensity_g_per_kwh"] = intensity[site["tier"]]
        for group in site["instances"]:
            if group["name"] not in power:
                idle = round(rng.uniform(2, 60), 1)
                power[group["name"]] = {"idle": idle, "busy": round(idle * rng.uniform(1.0, 8.0), 1)}
            group["power_w"] = dict(power[group["name"]])


def random_pooled_bundle(seed: int, *, sharing: str) -> Bundle:
    """Small instances whose instance groups pool (:func:`jellybean.optimizer.milp.instance_pools`):
    at the cloud two groups of one price, at a hub two boxes of one price, each pair on hardware
    whose speeds differ by up to +-15% per variant (four instances in all, for brute force), with
    cameras at the hub sending about one to two boxes' worth of requests, so that how many of each
    pool serve which stage matters."""
    rng = random.Random(1000 + seed)
    families = {"gpu": ["gpu", "gpu2"], "cpu": ["cpu", "cpu2"]}

    def profiles() -> list[dict]:
        base = rng.uniform(5, 60)
        out = []
        for family, members in families.items():
            lat1 = base * (1.0 if family == "cpu" else rng.uniform(0.1, 0.5))
            batch = rng.uniform(2.0, 4.5) if rng.random() < 0.5 else None
            for hw in members:
                jitter = rng.uniform(0.85, 1.15)
                lat = {1: round(lat1 * jitter, 3)}
                if batch is not None:
                    lat[4] = round(lat1 * jitter * batch, 3)
                out.append({"hardware": hw, "latency_ms": lat})
        return out

    tasks = _two_tasks(rng, profiles)
    box_speed = 1000.0 / tasks[0]["variants"][0]["profiles"][2]["latency_ms"][1]  # t1a on a box, batch 1
    vm_price = round(rng.uniform(0.5, 3), 3)
    box_price = round(rng.uniform(0.01, 0.3), 3)
    bandwidth = rng.choice([None, None, 20.0, 100.0])
    up = {"cost_per_gb": round(rng.uniform(0.0, 0.2), 3)}
    if bandwidth is not None:
        up["bandwidth_mbps"] = bandwidth
    sites = [
        {"name": "cloud", "tier": "cloud", "instances": [
            {"name": f"vm-{hw}", "hardware": hw, "price_per_hour": vm_price, "max_count": 1}
            for hw in families["gpu"]]},
        {"name": "hub0", "tier": "hub", "parent": "cloud", "uplink": {"up": up, "down": {"cost_per_gb": 1.0}},
         "instances": [{"name": f"box-{hw}", "hardware": hw, "price_per_hour": box_price, "count": 1,
                        "memory_mb": rng.choice([400, 800, 2000])} for hw in families["cpu"]]},
    ]
    topology = {"sites": sites, "sharing": sharing, "max_utilization": rng.choice([0.7, 0.9, 1.0])}
    sources = [{"name": "cams", "rate_per_s": round(box_speed * rng.uniform(0.6, 2.0), 2),
                "payload_kb": round(rng.uniform(5, 120), 1), "sites": ["hub0"]}]
    stages = [
        {"name": "s1", "task": "t1", "inputs": ["cams"]},
        {"name": "s2", "task": "t2", "inputs": [
            {"from": "s1", "ratio": round(rng.uniform(0.3, 1.5), 2),
             "ratio_by_variant": {"t1b": round(rng.uniform(0.3, 1.5), 2)}}]},
    ]
    workflow = {"sources": sources, "stages": stages, "slo": {"accuracy": round(rng.uniform(40, 75), 1)}}
    return make_bundle({"tasks": tasks}, topology, workflow)


def random_sinks_bundle(seed: int, *, sharing: str, max_instances: int = 4) -> Bundle:
    """A workflow with two sinks, each with its own accuracy target, and perhaps a stage minimum.

    Two shapes: a *fork*, ``cams -> s1 -> s2`` and ``s1 -> s3`` (both sinks depend on s1's
    variant), or two chains *apart*, ``cams -> s1 -> s2`` and ``mics -> s3``. One sink may take the
    default target (``slo.accuracy``), the other its own (``slo.sinks``); with probability 0.6 one
    stage gets a ``min_accuracy`` between its variants' accuracies, ruling some out."""
    rng = random.Random(10_000 + seed)
    hardware = ["cpu", "gpu"]

    variant = _variant_maker(rng, _profiles_maker(rng, hardware))
    tasks = [
        {"name": "t1", "variants": [variant("t1a", 60, 80), variant("t1b", 80, 95)]},
        {"name": "t2", "variants": [variant("t2a", 70, 99)] + ([variant("t2b", 85, 99)] if rng.random() < 0.5 else [])},
        {"name": "t3", "variants": [variant("t3a", 60, 85), variant("t3b", 85, 99)]},
    ]
    topology, cam_sites = _topology(rng, hardware, sharing, max_instances)
    fork = rng.random() < 0.5
    sources = [{"name": "cams", "rate_per_s": round(rng.uniform(1, 10), 2),
                "payload_kb": round(rng.uniform(5, 120), 1), "sites": cam_sites}]
    stages = [
        {"name": "s1", "task": "t1", "inputs": ["cams"]},
        {"name": "s2", "task": "t2", "inputs": [
            {"from": "s1", "ratio": round(rng.uniform(0.5, 2), 2), "ratio_by_variant": {"t1b": round(rng.uniform(0.5, 2), 2)}}]},
    ]
    if fork:
        stages.append({"name": "s3", "task": "t3", "inputs": [{"from": "s1", "ratio": round(rng.uniform(0.2, 1.5), 2)}]})
    else:
        sources.append({"name": "mics", "kind": "microphone", "rate_per_s": round(rng.uniform(1, 10), 2),
                        "payload_kb": round(rng.uniform(1, 40), 1), "sites": [rng.choice(cam_sites)]})
        stages.append({"name": "s3", "task": "t3", "inputs": ["mics"]})
    if rng.random() < 0.6:
        k = rng.randrange(len(stages))
        accuracies = sorted(v["accuracy"] for v in tasks[k]["variants"])
        stages[k]["min_accuracy"] = round(rng.uniform(accuracies[0], accuracies[-1]), 2)
    slo: dict = {"sinks": [{"stage": "s3", "accuracy": round(rng.uniform(50, 85), 1)}]}
    if rng.random() < 0.5:
        slo["accuracy"] = round(rng.uniform(40, 75), 1)  # s2's, as the default
    else:
        slo["sinks"].insert(0, {"stage": "s2", "accuracy": round(rng.uniform(40, 75), 1)})
    workflow = {"sources": sources, "stages": stages, "slo": slo}
    return make_bundle({"tasks": tasks}, topology, workflow)


def random_joint_bundles(seed: int, *, sharing: str, max_instances: int = 4, carbon: bool = False) -> list[Bundle]:
    """Two workflows on one small random topology, each with a zoo of its own: ``vision``
    (``cams -> s1 -> s2``, zoo ``zv``) and ``audio`` (``mics -> s1``, zoo ``za``, whose task is named
    ``t1`` like vision's first one but has other variants: the zoos must not mix). Their sources are
    at the same hubs, so they compete for the hubs' instances and uplinks. ``carbon``: with carbon
    figures (:func:`add_carbon`, from their own generator)."""
    rng = random.Random(20_000 + seed)
    hardware = ["cpu", "gpu"]
    profiles = _profiles_maker(rng, hardware)
    vision_zoo = {"tasks": _two_tasks(rng, profiles)}
    variant = _variant_maker(rng, profiles)
    audio_zoo = {"tasks": [{"name": "t1", "variants": [variant("k1", 60, 80), variant("k2", 80, 97)]}]}
    topology, hubs = _topology(rng, hardware, sharing, max_instances)
    vision = {
        "sources": [{"name": "cams", "rate_per_s": round(rng.uniform(2, 30), 2),
                     "payload_kb": round(rng.uniform(5, 120), 1), "sites": hubs}],
        "stages": [{"name": "s1", "task": "t1", "inputs": ["cams"]},
                   {"name": "s2", "task": "t2", "inputs": [
                       {"from": "s1", "ratio": round(rng.uniform(0.5, 2), 2),
                        "ratio_by_variant": {"t1b": round(rng.uniform(0.5, 2), 2)}}]}],
        "slo": {"accuracy": round(rng.uniform(40, 75), 1)},
    }
    audio = {
        "sources": [{"name": "mics", "kind": "microphone", "rate_per_s": round(rng.uniform(2, 30), 2),
                     "payload_kb": round(rng.uniform(5, 120), 1), "sites": [rng.choice(hubs)]}],
        "stages": [{"name": "s1", "task": "t1", "inputs": ["mics"]}],
        "slo": {"accuracy": round(rng.uniform(55, 90), 1)},
    }
    if carbon:
        add_carbon(topology, random.Random(3_000_017 * seed + 5))
    return [make_bundle(vision_zoo, topology, vision, names=("vision", "zv", "t")),
            make_bundle(audio_zoo, topology, audio, names=("audio", "za", "t"))]
