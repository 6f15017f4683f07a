"""The names Jellybean uses in a Kubernetes cluster: one home for the API group, kinds, labels and
ports that the chart (helm/jellybean), the CRD generator and the operator share."""

from __future__ import annotations

GROUP = "jellybean.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

#: Custom resource kind -> (plural, singular, short names). ``InferenceWorkflow`` loads as the
#: spec's Workflow (see jellybean.spec.loader.KIND_ALIASES).
KINDS: dict[str, tuple[str, str, list[str]]] = {
    "InferenceWorkflow": ("inferenceworkflows", "inferenceworkflow", ["iwf"]),
    "ModelZoo": ("modelzoos", "modelzoo", ["mz"]),
    "Topology": ("topologies", "topology", ["topo"]),
}
#: The spec kind each custom resource kind holds.
SPEC_KIND = {"InferenceWorkflow": "Workflow", "ModelZoo": "ModelZoo", "Topology": "Topology"}

#: Finalizer the operator puts on an InferenceWorkflow so deletion tears its deployment down first.
FINALIZER = f"{GROUP}/teardown"

#: Node labels and annotations read by topology discovery and used by the chart's nodeSelectors.
LABEL_TIER = f"{GROUP}/tier"
LABEL_SITE = f"{GROUP}/site"
ANNOTATION_PREFIX = f"{GROUP}/"

#: Ports of the operator's container.
API_PORT = 8470
METRICS_PORT = 9464
