"""A city-scale variant of ``workflows/vehicle-tracking``: N cameras under hubs, edge DCs and a cloud.

The model zoo is the vehicle-tracking zoo, shipped as ``jellybean/data/vehicle-tracking-zoo.yaml``
(a copy of ``workflows/vehicle-tracking/zoo.yaml``; every number's source is in that file). The
topology is a tree::

    cloud (1 region, elastic T4 / V100 / CPU instances, quotas scaled with N)
      edc-01 .. edc-K   edge data centres, owned T4 and CPU slices, ~20-40 hubs each
        hub-0001 ..     street-cabinet hubs, 8/16/24/32 cameras each, one of three classes:
                        gpu (Jetson AGX Orin), cpu (8-vCPU mini server), bare (no compute)
          cam-00001 ..  one device site per camera; one camera in eight is a smart camera with a
                        Jetson Orin Nano 4GB, the others have no compute

The planner aggregates identical sibling sites, so the generator keeps the number of distinct
site shapes small: a hub's shape is (class, size), its cameras are laid out the same way in every
hub of that shape (smart cameras at positions 0, 8, 16, 24), and only the last hub may take an odd
size (the remainder that makes the camera count exact). Names are deterministic and zero-padded
(``cam-00001``, ``hub-0001``, ``edc-01``, ``cloud``); the random draws (hub sizes and classes)
come from ``random.Random(seed)`` alone, so a larger city with the same seed extends a smaller one.

All cameras are one kind (1080p H.264 at 10 fps), hence one Source group listing every camera
site: a second group feeding the same ``detect`` stage would make it a join (the spec pairs the
inputs of a multi-input stage one to one), which is not what independent cameras are.

Link and price figures repeat ``workflows/vehicle-tracking/topology.yaml``, where their sources are.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path


from jellybean.spec import (
    SLO,
    InstanceGroup,
    LinkDirection,
    ModelZoo,
    Site,
    Source,
    Stage,
    StageInput,
    Tier,
    Topology,
    TopologySpec,
    Uplink,
    Workflow,
    WorkflowSpec,
    load_text,
)
from jellybean.spec.common import Metadata
from jellybean.spec.workflow import Placement

ZOO_RESOURCE = "vehicle-tracking-zoo.yaml"

#: Cameras per hub and how often each size is drawn (mean ~17 cameras per hub).
HUB_SIZES = (8, 16, 24, 32)
HUB_SIZE_WEIGHTS = (0.25, 0.35, 0.25, 0.15)
#: Hub hardware classes and how often each is drawn.
HUB_CLASSES = ("gpu", "cpu", "bare")
HUB_CLASS_WEIGHTS = (0.4, 0.4, 0.2)
#: One smart camera (Jetson Orin Nano) per this many cameras of a hub, at positions 0, 8, 16, ...
SMART_EVERY = 8
#: At most this many hubs per edge DC; with more than 20 hubs every DC gets 20-40.
MAX_HUBS_PER_EDC = 40
#: Owned T4 (and CPU) slices of an edge DC: 16 per started block of this many cameras below it.
EDC_CAMERAS_PER_BLOCK = 256
EDC_SLICES_PER_BLOCK = 16

CAMERA_FPS = 10.0  # AI City Challenge 2021: most feeds 1080p at 10 fps
CAMERA_PAYLOAD_KB = 48.83  # 1080p H.264 at 4 Mbps / 10 fps
#: Vehicle crops per frame per detector, as in workflows/vehicle-tracking/workflow.yaml.
CROPS_PER_FRAME = {
    "yolov5n": 3.0, "yolov5s": 3.57, "yolov5s-int8": 3.52, "yolov5m": 3.95,
    "yolov5m-int8": 3.9, "yolov5l": 4.12, "yolov5x": 4.2,
}
SLO_ACCURACY = 33.0
SLO_LATENCY_MS = 1000.0


def _link(mbps: float, latency_ms: float, up_cost: float, down_cost: float | None = None) -> Uplink:
    return Uplink(
        up=LinkDirection(bandwidth_mbps=mbps, latency_ms=latency_ms, cost_per_gb=up_cost),
        down=LinkDirection(bandwidth_mbps=mbps, latency_ms=latency_ms,
                           cost_per_gb=up_cost if down_cost is None else down_cost),
    )


CAMERA_LINK = _link(100, 0.5, 0.0)  # PoE Ethernet to the hub cabinet, own access network
HUB_LINKS = {
    "gpu": _link(1000, 2.0, 0.01),  # 1 Gbps metro fibre
    "cpu": _link(200, 3.0, 0.02),  # 200 Mbps metro Ethernet
    "bare": _link(1000, 2.0, 0.01),  # ships raw video, so fibre
}
EDC_LINK = _link(10000, 10.0, 0.003, 0.09)  # transit up (cloud ingress free), AWS internet egress down


def _hub_instances(kind: str) -> list[InstanceGroup]:
    if kind == "gpu":
        return [InstanceGroup(name="agx-orin", hardware="jetson-agx-orin-64gb", price_per_hour=0.093,
                              count=1, memory_mb=32768, cpus=12)]
    if kind == "cpu":
        return [InstanceGroup(name="mini-server", hardware="cpu-x86-8vcpu", price_per_hour=0.054,
                              count=1, memory_mb=16384, cpus=8)]
    return []


def _smart_instances() -> list[InstanceGroup]:
    return [InstanceGroup(name="orin-nano", hardware="jetson-orin-nano-4gb", price_per_hour=0.0089,
                          count=1, memory_mb=1024, cpus=6)]


def _edc_instances(cameras_below: int) -> list[InstanceGroup]:
    slices = EDC_SLICES_PER_BLOCK * max(1, math.ceil(cameras_below / EDC_CAMERAS_PER_BLOCK))
    return [
        InstanceGroup(name="t4-server", hardware="t4", price_per_hour=0.29, count=slices,
                      memory_mb=16384, cpus=4),
        InstanceGroup(name="cpu-server", hardware="cpu-x86-8vcpu", price_per_hour=0.07, count=slices,
                      memory_mb=16384, cpus=8),
    ]


def _cloud_instances(cameras: int) -> list[InstanceGroup]:
    # Elastic quotas grow with the city so that the cloud can always absorb the whole load.
    return [
        InstanceGroup(name="g4dn-xlarge", hardware="t4", price_per_hour=0.526,
                      max_count=max(32, math.ceil(cameras / 5)), memory_mb=16384, cpus=4),
        InstanceGroup(name="p3-2xlarge", hardware="v100", price_per_hour=3.06,
                      max_count=max(16, math.ceil(cameras / 20)), memory_mb=16384, cpus=8),
        InstanceGroup(name="c5-2xlarge", hardware="cpu-x86-8vcpu", price_per_hour=0.34,
                      max_count=max(64, math.ceil(cameras / 5)), memory_mb=16384, cpus=8),
    ]


@dataclass(frozen=True)
class CityLayout:
    """The random part of a city: cameras per hub and each hub's class, in hub order."""

    hub_sizes: tuple[int, ...]
    hub_classes: tuple[str, ...]
    edc_hubs: tuple[int, ...]  # number of consecutive hubs under each edge DC


def layout(cameras: int, seed: int = 0) -> CityLayout:
    """Draw hub sizes and classes until ``cameras`` are placed; group hubs into edge DCs."""
    if isinstance(cameras, bool) or not isinstance(cameras, int) or cameras < 1:
        raise ValueError(f"cameras must be a positive integer, got {cameras!r}")
    rng = random.Random(seed)
    sizes: list[int] = []
    classes: list[str] = []
    remaining = cameras
    while remaining > 0:
        size = rng.choices(HUB_SIZES, weights=HUB_SIZE_WEIGHTS)[0]
        kind = rng.choices(HUB_CLASSES, weights=HUB_CLASS_WEIGHTS)[0]
        size = min(size, remaining)  # the last hub takes the remainder, so the count is exact
        sizes.append(size)
        classes.append(kind)
        remaining -= size
    hubs = len(sizes)
    edcs = math.ceil(hubs / MAX_HUBS_PER_EDC)
    base, extra = divmod(hubs, edcs)
    edc_hubs = tuple(base + (1 if i < extra else 0) for i in range(edcs))
    return CityLayout(tuple(sizes), tuple(classes), edc_hubs)


@lru_cache(maxsize=1)
def _zoo_text() -> str:
    return resources.files("jellybean").joinpath("data", ZOO_RESOURCE).read_text(encoding="utf-8")


def load_zoo() -> ModelZoo:
    """The vehicle-tracking zoo shipped with the package (a fresh copy each call)."""
    documents = load_text(_zoo_text(), file=f"jellybean/data/{ZOO_RESOURCE}")
    zoo = documents[0].model
    assert isinstance(zoo, ModelZoo)
    return zoo


def _width(count: int, minimum: int) -> int:
    return max(minimum, len(str(count)))


def generate_city(cameras: int, *, seed: int = 0) -> list[ModelZoo | Topology | Workflow]:
    """A vehicle-tracking bundle for a city of ``cameras`` cameras: [ModelZoo, Topology, Workflow].

    Deterministic for a given ``(cameras, seed)``.
    """
    plan = layout(cameras, seed)
    zoo = load_zoo()
    hub_count = len(plan.hub_sizes)
    cam_w, hub_w, edc_w = _width(cameras, 5), _width(hub_count, 4), _width(len(plan.edc_hubs), 2)

    cloud = Site(name="cloud", tier=Tier.cloud, instances=_cloud_instances(cameras),
                 labels={"provider": "aws", "region": "us-east-1"})
    edc_sites: list[Site] = []
    hub_sites: list[Site] = []
    camera_sites: list[Site] = []
    camera_names: list[str] = []
    hub_index = 0
    camera_index = 0
    for e, hubs_here in enumerate(plan.edc_hubs, start=1):
        edc_name = f"edc-{e:0{edc_w}d}"
        below = sum(plan.hub_sizes[hub_index:hub_index + hubs_here])
        edc_sites.append(Site(name=edc_name, tier=Tier.edge, parent="cloud", uplink=EDC_LINK.model_copy(deep=True),
                              instances=_edc_instances(below), labels={"kind": "metro-edge-dc"}))
        for _ in range(hubs_here):
            size, kind = plan.hub_sizes[hub_index], plan.hub_classes[hub_index]
            hub_index += 1
            hub_name = f"hub-{hub_index:0{hub_w}d}"
            hub_sites.append(Site(name=hub_name, tier=Tier.hub, parent=edc_name,
                                  uplink=HUB_LINKS[kind].model_copy(deep=True),
                                  instances=_hub_instances(kind), labels={"hub-class": kind}))
            for position in range(size):
                camera_index += 1
                smart = position % SMART_EVERY == 0
                cam_name = f"cam-{camera_index:0{cam_w}d}"
                camera_names.append(cam_name)
                camera_sites.append(Site(name=cam_name, tier=Tier.device, parent=hub_name,
                                         uplink=CAMERA_LINK.model_copy(deep=True),
                                         instances=_smart_instances() if smart else [],
                                         labels={"camera": "smart" if smart else "plain"}))
    assert camera_index == cameras

    topology_name = f"city-{cameras}-seed{seed}"
    topology = Topology(
        metadata=Metadata(name=topology_name, labels={"generator": "jellybean.generate.city"},
                          annotations={"cameras": str(cameras), "seed": str(seed), "hubs": str(hub_count),
                                       "edge-dcs": str(len(plan.edc_hubs))}),
        spec=TopologySpec(sites=[cloud, *edc_sites, *hub_sites, *camera_sites], sharing="shared",
                          max_utilization=0.8),
    )
    workflow = Workflow(
        metadata=Metadata(name=f"vehicle-tracking-city-{cameras}", labels={"generator": "jellybean.generate.city"},
                          annotations={"cameras": str(cameras), "seed": str(seed)}),
        spec=WorkflowSpec(
            zoo=zoo.metadata.name,
            topology=topology_name,
            sources=[Source(name="cameras", kind="camera", rate_per_s=CAMERA_FPS, payload_kb=CAMERA_PAYLOAD_KB,
                            sites=camera_names, count_per_site=1)],
            stages=[
                Stage(name="detect", task="vehicle-detection", inputs=["cameras"]),
                Stage(name="reid", task="reid", inputs=[StageInput(**{"from": "detect"}, ratio=3.6,
                                                                   ratio_by_variant=dict(CROPS_PER_FRAME))]),
                Stage(name="associate", task="cross-camera-association",
                      inputs=[StageInput(**{"from": "reid"}, ratio=1.0)],
                      placement=Placement(tiers=[Tier.edge, Tier.cloud])),
            ],
            slo=SLO(accuracy=SLO_ACCURACY, latency_ms=SLO_LATENCY_MS),
        ),
    )
    return [zoo, topology, workflow]


FILES = {"ModelZoo": "zoo.yaml", "Topology": "topology.yaml", "Workflow": "workflow.yaml"}


def _dump(document: ModelZoo | Topology | Workflow) -> str:
    from jellybean.spec.writer import dump_document

    return dump_document(document)


def write_city(cameras: int, out_dir: str | os.PathLike, seed: int = 0) -> list[Path]:
    """Generate a city and write zoo.yaml, topology.yaml and workflow.yaml into ``out_dir``."""
    documents = generate_city(cameras, seed=seed)
    plan = layout(cameras, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    header = (
        f"# Generated by jellybean.generate.city.write_city(cameras={cameras}, seed={seed}): "
        f"{cameras} cameras, {len(plan.hub_sizes)} hubs, {len(plan.edc_hubs)} edge DCs, 1 cloud region.\n"
        f"# Hub sizes drawn from {list(HUB_SIZES)} (weights {list(HUB_SIZE_WEIGHTS)}), hub classes from "
        f"{list(HUB_CLASSES)} (weights {list(HUB_CLASS_WEIGHTS)}), one smart camera per {SMART_EVERY}.\n"
        "# Sources of every figure: jellybean/data/vehicle-tracking-zoo.yaml and "
        "workflows/vehicle-tracking/topology.yaml. Do not edit; regenerate.\n"
    )
    written = []
    for document in documents:
        path = out / FILES[document.kind]
        path.write_text(header + _dump(document), encoding="utf-8")
        written.append(path)
    return written
