"""The documents users write: ModelZoo, Topology, Workflow (pydantic), and their safe YAML loading."""

from jellybean.spec.bundle import Bundle, load_bundle, load_bundles, resolve, resolve_all
from jellybean.spec.common import API_VERSION, TIER_ORDER, Tier
from jellybean.spec.errors import Issue, SpecError
from jellybean.spec.loader import load_documents, load_text
from jellybean.spec.topology import InstanceGroup, LinkDirection, Site, Topology, TopologySpec, Uplink
from jellybean.spec.workflow import SLO, Source, Stage, StageInput, Workflow, WorkflowSpec
from jellybean.spec.zoo import AccuracySample, AccuracyTable, LatencyProfile, ModelZoo, Task, Variant

__all__ = [
    "API_VERSION", "TIER_ORDER", "AccuracySample", "AccuracyTable", "Bundle", "InstanceGroup", "Issue",
    "LatencyProfile", "LinkDirection", "ModelZoo", "SLO", "Site", "Source", "SpecError", "Stage", "StageInput",
    "Task", "Tier", "Topology", "TopologySpec", "Uplink", "Variant", "Workflow", "WorkflowSpec",
    "load_bundle", "load_bundles", "load_documents", "load_text", "resolve", "resolve_all",
]
