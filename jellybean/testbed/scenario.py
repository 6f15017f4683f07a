"""The test bed's workflow: the digits models across real tiers, with as many hubs as asked.

``hubs`` street hubs, each with one camera (a device site) below it, under one edge data centre,
under one cloud region. A hub holds one model (the detector: 256 MB), the edge DC the classifier,
the cloud whatever is left, so the plan spans every tier and every uplink carries frames: raw frames
camera -> hub, crops hub -> edge, labels edge -> cloud. The readings are delivered at the cloud (a
``stream`` output pinned there: the edge's results that must reach it are a priced flow).

Link rates are chosen so that the plan needs about half of each uplink at ``rate_per_s`` per camera,
and so that the frames' bytes dwarf Ray's own control traffic (each node's heartbeats to the head).
"""

from __future__ import annotations

from pathlib import Path

CAMERA_RATE_PER_S = 150.0
PAYLOAD_KB = 1.563  # one 8 x 48 float32 frame with its truth, as the data plane carries it


def topology_yaml(hubs: int, *, hub_uplink_mbps: float = 4.0, edge_uplink_mbps: float | None = None,
                  camera_uplink_mbps: float = 20.0, hub_cpus: float = 1.0,
                  hub_memory_mb: int = 256) -> str:
    """The test bed's Topology document with ``hubs`` hubs (see the module docstring). A hub's
    ``hub_memory_mb`` decides what fits there: 256 MB holds the detector only; 512 MB the whole
    pipeline (detector, classifier, aggregator), so the plan keeps each camera's frames at its hub."""
    if edge_uplink_mbps is None:
        edge_uplink_mbps = 1.5 * hubs
    lines = [
        "apiVersion: jellybean.io/v1alpha1",
        "kind: Topology",
        "metadata: {name: testbed}",
        "spec:",
        "  sharing: shared",
        "  max_utilization: 0.8",
        "  hop_latency_ms: 3.0",
        "  sites:",
        "    - name: cloud",
        "      tier: cloud",
        "      instances:",
        "        - {name: cloud-cpu, hardware: local-cpu-1t, price_per_hour: 0.10, max_count: 1, memory_mb: 4096, cpus: 1}",
        "    - name: edge",
        "      tier: edge",
        "      parent: cloud",
        "      uplink:",
        f"        up: {{bandwidth_mbps: {edge_uplink_mbps}, latency_ms: 10, cost_per_gb: 0.20}}",
        f"        down: {{bandwidth_mbps: {edge_uplink_mbps}, latency_ms: 10, cost_per_gb: 0.20}}",
        "      instances:",
        "        - {name: edge-cpu, hardware: local-cpu-1t, price_per_hour: 0.05, count: 1, memory_mb: 256, cpus: 1}",
    ]
    for k in range(1, hubs + 1):
        lines += [
            f"    - name: hub-{k}",
            "      tier: hub",
            "      parent: edge",
            "      uplink:",
            f"        up: {{bandwidth_mbps: {hub_uplink_mbps}, latency_ms: 5, cost_per_gb: 0.05}}",
            f"        down: {{bandwidth_mbps: {hub_uplink_mbps}, latency_ms: 5, cost_per_gb: 0.05}}",
            "      instances:",
            f"        - {{name: hub-cpu, hardware: local-cpu-1t, price_per_hour: 0.01, count: 1, memory_mb: {hub_memory_mb}, "
            f"cpus: {hub_cpus}}}",
            f"    - name: cam-{k}",
            "      tier: device",
            f"      parent: hub-{k}",
            f"      uplink: {{up: {{bandwidth_mbps: {camera_uplink_mbps}, latency_ms: 1}}, "
            f"down: {{bandwidth_mbps: {camera_uplink_mbps}, latency_ms: 1}}}}",
        ]
    return "\n".join(lines) + "\n"


def workflow_yaml(hubs: int, *, rate_per_s: float = CAMERA_RATE_PER_S,
                  variants: dict[str, list[str]] | None = None) -> str:
    """The test bed's workflow over ``hubs`` cameras; ``variants`` restricts stages to the named variants
    (a benchmark comparing runs keeps the models the same in each, where the planner finds ties)."""
    cams = ", ".join(f"cam-{k}" for k in range(1, hubs + 1))
    only = {stage: f"\n      variants: [{', '.join(names)}]" for stage, names in (variants or {}).items()}
    return f"""apiVersion: jellybean.io/v1alpha1
kind: InferenceWorkflow
metadata: {{name: sites}}
spec:
  zoo: digits
  topology: testbed
  sources:
    - name: cameras
      kind: camera
      replay: digits-frames
      rate_per_s: {rate_per_s}
      payload_kb: {PAYLOAD_KB}
      sites: [{cams}]
  stages:
    - name: detect{only.get('detect', '')}
      task: digit-detection
      inputs: [cameras]
    - name: classify{only.get('classify', '')}
      task: digit-classification
      inputs:
        - from: detect
          ratio: 2.557
          ratio_by_variant: {{digits-detector-tiny: 2.398, digits-detector-small: 2.529, digits-detector-large: 2.554}}
    - name: aggregate{only.get('aggregate', '')}
      task: reading-aggregation
      inputs: [classify]
  outputs:
    - name: readings
      kind: stream
      site: cloud
      ratio: 0.391           # one reading per frame, the sink's requests are its 2.557 crops
  slo:
    accuracy: 95.0
"""


def write(folder: Path, zoo: Path, hubs: int, *, rate_per_s: float = CAMERA_RATE_PER_S,
          variants: dict[str, list[str]] | None = None, **topology: float) -> list[Path]:
    """The scenario's documents in ``folder``, with ``zoo`` (the digits zoo: workflows/digits/zoo.yaml)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "topology.yaml").write_text(topology_yaml(hubs, **topology))
    (folder / "workflow.yaml").write_text(workflow_yaml(hubs, rate_per_s=rate_per_s, variants=variants))
    return [zoo, folder / "topology.yaml", folder / "workflow.yaml"]
