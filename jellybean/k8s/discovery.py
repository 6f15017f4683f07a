"""Topology discovery: a Topology document built from the cluster's Node objects.

A workflow whose ``spec.topology`` names no Topology resource gets one discovered from the Nodes
(plain dicts, exactly as the API server returns them):

- ``metadata.labels["jellybean.io/site"]`` puts a node in a site; nodes without it are ignored (and
  said so in :attr:`Discovery.warnings`). ``jellybean.io/tier`` (device, hub, edge, cloud) is the
  site's tier; every node of a site must agree.
- Site-level annotations (``jellybean.io/`` + the names of :data:`SITE_ANNOTATIONS`), on any node of
  the site (nodes that both set one must agree): ``parent`` (the parent site), ``uplink-up-mbps``,
  ``uplink-down-mbps``, ``uplink-mbps`` (both ways), ``uplink-latency-ms`` and ``uplink-cost-per-gb``
  (both ways; ``uplink-up-...``/``uplink-down-...`` override one direction).
- Node-level annotations (:data:`NODE_ANNOTATIONS`): ``hardware`` (default: the
  ``node.kubernetes.io/instance-type`` label, else a name made from the capacity: ``cpu-x86-8vcpu``,
  or the GPU product for GPU nodes), ``price-per-hour`` (default 0: owned and free, with a warning),
  ``max-count`` (elastic capacity, e.g. an autoscaled node group; default: a fixed ``count``) and
  ``memory-mb`` (default: ``status.allocatable.memory``; set it to the GPU's memory where the zoo's
  profiles count GPU memory). ``cpus`` comes from ``status.allocatable.cpu``.
- Nodes of a site with the same hardware, price and ``max-count`` form one instance group, with
  ``count`` = the number of such nodes and the smallest ``cpus``/``memory_mb`` among them.
- Cordoned (``spec.unschedulable``) and NotReady nodes are left out: the topology changes when a node
  goes away, so the operator re-plans the workflows that use it.

The result is validated by the Topology model itself; every problem is reported as an
:class:`~jellybean.spec.errors.Issue` that names the node and the label or annotation to fix.
"""

from __future__ import annotations

import difflib
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from pydantic import ValidationError

from jellybean.k8s.names import ANNOTATION_PREFIX, LABEL_SITE, LABEL_TIER
from jellybean.spec.common import Tier
from jellybean.spec.errors import Issue, SpecError
from jellybean.spec.loader import SourceMap, model_issues
from jellybean.spec.topology import Topology

LABEL_INSTANCE_TYPE = "node.kubernetes.io/instance-type"
LABEL_ARCH = "kubernetes.io/arch"
LABEL_GPU_PRODUCT = "nvidia.com/gpu.product"  # set by NVIDIA's GPU feature discovery
GPU_RESOURCES = ("nvidia.com/gpu", "amd.com/gpu")
ARCH_NAMES = {"amd64": "x86", "arm64": "arm"}

#: Site-level annotation (after the prefix) -> the Site field it sets.
SITE_ANNOTATIONS: dict[str, tuple] = {"parent": ("parent",)}
for _direction in ("", "up-", "down-"):
    for _suffix, _field in (("mbps", "bandwidth_mbps"), ("latency-ms", "latency_ms"), ("cost-per-gb", "cost_per_gb")):
        SITE_ANNOTATIONS[f"uplink-{_direction}{_suffix}"] = ("uplink", _direction.rstrip("-") or "both", _field)
#: Node-level annotations.
NODE_ANNOTATIONS = ("hardware", "price-per-hour", "max-count", "memory-mb")

_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")
_FACTORS = {None: 1, "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "k": 10**3, "M": 10**6,
            "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
            "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def parse_quantity(text: str | int | float) -> float:
    """A Kubernetes resource quantity (``"3500m"``, ``"4"``, ``"16318480Ki"``, ``"1e3"``) as a number."""
    match = _QUANTITY.match(str(text).strip())
    if match is None:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    try:
        return float(Decimal(match.group(1)) * _FACTORS[match.group(2)])
    except InvalidOperation:
        raise ValueError(f"not a Kubernetes quantity: {text!r}") from None


def node_name(node: Mapping) -> str:
    return str((node.get("metadata") or {}).get("name", "<unnamed>"))


def _labels(node: Mapping) -> dict:
    return (node.get("metadata") or {}).get("labels") or {}


def _annotations(node: Mapping) -> dict:
    return (node.get("metadata") or {}).get("annotations") or {}


def unusable_reason(node: Mapping) -> str | None:
    """Why a node cannot take work now (cordoned, NotReady), or None."""
    if (node.get("spec") or {}).get("unschedulable"):
        return "cordoned (spec.unschedulable)"
    conditions = (node.get("status") or {}).get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    if ready is None:
        return "NotReady (no Ready condition)"
    if ready.get("status") != "True":
        why = ready.get("reason") or ready.get("message") or ""
        return f"NotReady (Ready={ready.get('status')}{': ' + why if why else ''})"
    return None


def derived_hardware(node: Mapping) -> str:
    """A hardware name from the node's capacity: the GPU product for GPU nodes, else ``cpu-<arch>-<n>vcpu``."""
    labels = _labels(node)
    status = node.get("status") or {}
    capacity = status.get("capacity") or status.get("allocatable") or {}
    arch = ARCH_NAMES.get(labels.get(LABEL_ARCH, ""), labels.get(LABEL_ARCH) or "unknown")
    gpus = sum(parse_quantity(capacity[r]) for r in GPU_RESOURCES if r in capacity)
    if gpus > 0:
        product = re.sub(r"[^a-z0-9.]+", "-", labels.get(LABEL_GPU_PRODUCT, "gpu").lower()).strip("-") or "gpu"
        return product if gpus == 1 else f"{product}-x{gpus:g}"
    cpus = parse_quantity(capacity.get("cpu", "0"))
    return f"cpu-{arch}-{cpus:g}vcpu"


@dataclass(frozen=True)
class _Origin:
    """Where a field of the discovered document came from, to name it in an issue."""

    node: str
    where: str  # e.g. "metadata.annotations[jellybean.io/parent]"
    value: object = None


@dataclass
class Discovery:
    topology: Topology
    warnings: list[str] = field(default_factory=list)
    sites: dict[str, list[str]] = field(default_factory=dict)  # site -> its usable nodes
    excluded: dict[str, str] = field(default_factory=dict)  # node -> why it was left out


def _annotation_where(key: str) -> str:
    return f"metadata.annotations[{ANNOTATION_PREFIX}{key}]"


def discover_topology(nodes: Iterable[Mapping], name: str, *, labels: Mapping[str, str] | None = None) -> Discovery:
    """The Topology named ``name`` that the labelled, schedulable, Ready nodes describe. Raises
    :class:`SpecError` (every problem, each naming its node and label or annotation)."""
    warnings: list[str] = []
    excluded: dict[str, str] = {}
    by_site: dict[str, list[Mapping]] = defaultdict(list)
    unlabelled: list[str] = []
    for node in sorted(nodes, key=node_name):
        site = _labels(node).get(LABEL_SITE)
        if not site:
            unlabelled.append(node_name(node))
            continue
        reason = unusable_reason(node)
        if reason is not None:
            excluded[node_name(node)] = reason
            warnings.append(f"node {node_name(node)} (site {site}) left out: {reason}")
            continue
        by_site[site].append(node)
    if unlabelled:
        warnings.append(f"nodes without the {LABEL_SITE} label are ignored: {', '.join(unlabelled)}")
    if not by_site:
        raise SpecError([Issue("Nodes", None, f"metadata.labels[{LABEL_SITE}]",
                               f"no schedulable, Ready node carries the {LABEL_SITE} label"
                               + (f" ({len(excluded)} labelled nodes are cordoned or NotReady)" if excluded else ""),
                               f"label nodes: kubectl label node NAME {LABEL_SITE}=SITE {LABEL_TIER}=TIER")])
    issues: list[Issue] = []
    origins: dict[str, _Origin] = {}  # field path in the document -> where it came from
    sites: list[dict] = []
    for index, (site_name, members) in enumerate(sorted(by_site.items())):
        prefix = f"spec.sites[{index}]"
        site, site_origins = _site(site_name, members, issues, warnings)
        origins.update({f"{prefix}.{path}" if path else prefix: o for path, o in site_origins.items()})
        sites.append(site)
    for node in (n for members in by_site.values() for n in members):
        for key in _annotations(node):
            if key.startswith(ANNOTATION_PREFIX):
                suffix = key[len(ANNOTATION_PREFIX):]
                if suffix not in SITE_ANNOTATIONS and suffix not in NODE_ANNOTATIONS:
                    close = difflib.get_close_matches(suffix, [*SITE_ANNOTATIONS, *NODE_ANNOTATIONS], n=1)
                    warnings.append(f"node {node_name(node)}: unknown annotation {key} ignored"
                                    + (f" (did you mean {ANNOTATION_PREFIX}{close[0]}?)" if close else ""))
    known = {s["name"] for s in sites}
    for index, site in enumerate(sites):
        parent = site.get("parent")
        if parent is not None and parent not in known:
            origin = origins[f"spec.sites[{index}].parent"]
            issues.append(_issue(origin, f"site {site['name']!r} names parent site {parent!r}, which no schedulable, "
                                 "Ready node provides", f"sites found: {', '.join(sorted(known))}"))
    if issues:
        raise SpecError(issues)
    document = {"apiVersion": "jellybean.io/v1alpha1", "kind": "Topology",
                "metadata": {"name": name, "labels": dict(labels or {})}, "spec": {"sites": sites}}
    try:
        topology = Topology.model_validate(document)
    except ValidationError as exc:
        located: dict[tuple, Issue] = {}  # a symmetric annotation feeds both directions: report it once
        for issue in model_issues(exc, SourceMap("Nodes")):
            out = _locate(issue, origins)
            located.setdefault((out.file, out.path, issue.message), out)
        raise SpecError(list(located.values())) from None
    return Discovery(topology, warnings, {s: [node_name(n) for n in m] for s, m in sorted(by_site.items())}, excluded)


def _site_value(site: str, members: list[Mapping], key: str, where: str, issues: list[Issue]) -> tuple:
    """The one value that the site's nodes give ``key`` (a label when ``where`` says so), and its origin."""
    found: dict[str, list[str]] = defaultdict(list)
    for node in members:
        source = _labels(node) if where.startswith("metadata.labels") else _annotations(node)
        if key in source:
            found[str(source[key])].append(node_name(node))
    if not found:
        return None, _Origin(node_name(members[0]), where)
    if len(found) > 1:
        said = "; ".join(f"{', '.join(names)}: {value!r}" for value, names in sorted(found.items()))
        issues.append(Issue(f"Node/{node_name(members[0])}", None, where,
                            f"the nodes of site {site!r} disagree on {key} ({said})",
                            "give every node of a site the same value, or set it on one node only"))
    value, names = sorted(found.items())[0]
    return value, _Origin(names[0], where, value)


def _site(name: str, members: list[Mapping], issues: list[Issue], warnings: list[str]) -> tuple[dict, dict]:
    origins: dict[str, _Origin] = {"": _Origin(node_name(members[0]), f"metadata.labels[{LABEL_SITE}]", name),
                                   "name": _Origin(node_name(members[0]), f"metadata.labels[{LABEL_SITE}]", name)}
    tier, origins["tier"] = _site_value(name, members, LABEL_TIER, f"metadata.labels[{LABEL_TIER}]", issues)
    if tier is None:
        issues.append(_issue(origins["tier"], f"node of site {name!r} has no {LABEL_TIER} label",
                             f"label it with one of {', '.join(t.value for t in Tier)}"))
    site: dict = {"name": name, "tier": tier}
    uplink: dict[str, dict] = {"up": {}, "down": {}}
    # Symmetric annotations first, so that a direction's own annotation overrides them.
    for suffix in sorted(SITE_ANNOTATIONS, key=lambda s: s.startswith(("uplink-up-", "uplink-down-"))):
        target = SITE_ANNOTATIONS[suffix]
        value, origin = _site_value(name, members, ANNOTATION_PREFIX + suffix, _annotation_where(suffix), issues)
        if value is None:
            continue
        if target == ("parent",):
            site["parent"] = value
            origins["parent"] = origin
            continue
        _, direction, field_name = target
        for way in ("up", "down") if direction == "both" else (direction,):
            uplink[way][field_name] = value
            origins[f"uplink.{way}.{field_name}"] = origin
    if "parent" in site:
        site["uplink"] = uplink
    elif uplink["up"] or uplink["down"]:
        warnings.append(f"site {name}: uplink annotations ignored on a root site (no {ANNOTATION_PREFIX}parent)")
    site["instances"] = _instance_groups(name, members, origins, issues, warnings)
    return site, origins


def _instance_groups(site: str, members: list[Mapping], origins: dict[str, _Origin], issues: list[Issue],
                     warnings: list[str]) -> list[dict]:
    groups: dict[tuple, list[Mapping]] = defaultdict(list)
    hardware_origin: dict[str, _Origin] = {}
    for node in members:
        annotations, labels = _annotations(node), _labels(node)
        if ANNOTATION_PREFIX + "hardware" in annotations:
            hardware = str(annotations[ANNOTATION_PREFIX + "hardware"])
            origin = _Origin(node_name(node), _annotation_where("hardware"), hardware)
        elif labels.get(LABEL_INSTANCE_TYPE):
            hardware = str(labels[LABEL_INSTANCE_TYPE])
            origin = _Origin(node_name(node), f"metadata.labels[{LABEL_INSTANCE_TYPE}]", hardware)
        else:
            try:
                hardware = derived_hardware(node)
            except ValueError as exc:
                issues.append(Issue(f"Node/{node_name(node)}", None, "status.capacity", str(exc),
                                    f"set the {ANNOTATION_PREFIX}hardware annotation"))
                continue
            origin = _Origin(node_name(node), "status.capacity", hardware)
        hardware_origin.setdefault(hardware, origin)
        price = annotations.get(ANNOTATION_PREFIX + "price-per-hour")
        key = (hardware, price, annotations.get(ANNOTATION_PREFIX + "max-count"))
        groups[key].append(node)
    out: list[dict] = []
    used: set[str] = set()
    for j, ((hardware, price, max_count), nodes) in enumerate(sorted(groups.items(), key=lambda kv: str(kv[0]))):
        first = node_name(nodes[0])
        name = hardware if hardware not in used else f"{hardware}-{j + 1}"
        used.add(name)
        path = f"instances[{j}]"
        group: dict = {"name": name, "hardware": hardware}
        origins[f"{path}.name"] = origins[f"{path}.hardware"] = hardware_origin[hardware]
        if price is None:
            names = ", ".join(node_name(n) for n in nodes)
            warnings.append(f"site {site}: no {ANNOTATION_PREFIX}price-per-hour on {names}: priced at 0 (owned)")
            group["price_per_hour"] = 0.0
        else:
            group["price_per_hour"] = price
            origins[f"{path}.price_per_hour"] = _Origin(first, _annotation_where("price-per-hour"), price)
        if max_count is None:
            group["count"] = len(nodes)
        else:
            group["max_count"] = max_count
            origins[f"{path}.max_count"] = _Origin(first, _annotation_where("max-count"), max_count)
        cpus, memory = _smallest(nodes, "cpu", issues), None
        memory_origin = _Origin(first, "status.allocatable.memory")
        explicit = [n for n in nodes if ANNOTATION_PREFIX + "memory-mb" in _annotations(n)]
        if explicit:
            memory = _annotations(explicit[0])[ANNOTATION_PREFIX + "memory-mb"]
            memory_origin = _Origin(node_name(explicit[0]), _annotation_where("memory-mb"), memory)
        else:
            allocatable = _smallest(nodes, "memory", issues)
            memory = round(allocatable / 2**20, 1) if allocatable else None
        if cpus:
            group["cpus"] = cpus
            origins[f"{path}.cpus"] = _Origin(first, "status.allocatable.cpu", cpus)
        if memory is not None:
            group["memory_mb"] = memory
            origins[f"{path}.memory_mb"] = memory_origin
        out.append(group)
    return out


def _smallest(nodes: list[Mapping], resource: str, issues: list[Issue]) -> float | None:
    values = []
    for node in nodes:
        raw = ((node.get("status") or {}).get("allocatable") or {}).get(resource)
        if raw is None:
            continue
        try:
            values.append(parse_quantity(raw))
        except ValueError as exc:
            issues.append(Issue(f"Node/{node_name(node)}", None, f"status.allocatable.{resource}", str(exc), ""))
    return min(values) if values else None


def _issue(origin: _Origin, message: str, hint: str = "") -> Issue:
    return Issue(f"Node/{origin.node}", None, origin.where, message, hint)


def _locate(issue: Issue, origins: Mapping[str, _Origin]) -> Issue:
    """A validation issue on the discovered document, moved onto the node and annotation that caused it."""
    path = issue.path
    while path and path not in origins:
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
    origin = origins.get(path)
    if origin is None:
        return Issue("Nodes", None, issue.path, issue.message, issue.hint)
    value = f" = {origin.value!r}" if origin.value is not None else ""
    return Issue(f"Node/{origin.node}", None, origin.where,
                 f"{issue.message} (topology field {issue.path}{value})", issue.hint)
