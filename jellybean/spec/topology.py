"""The ``Topology`` document: sites in tiers, arranged as a tree by ``parent``, with their instances.

Each non-root site has one uplink to its parent, described in both directions (``up`` towards the
parent, ``down`` from it) by ``bandwidth_mbps`` (10^6 bit/s; omitted = unlimited), ``latency_ms``
and ``cost_per_gb`` (GB = 1024^3 bytes, as in JellyBean). Data between two sites travels along the
unique tree path between them and pays every link it crosses, in that link's direction.

Instances are groups of identical machines at a site: a hardware type (matched against the zoo's
profiles), a ``price_per_hour`` (0 for owned hardware is fine), and either a fixed ``count`` (owned
machines that exist whether used or not; only used ones are charged, as JellyBean does) or a
``max_count`` (elastic capacity, rented per instance-hour).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from jellybean.spec.common import API_VERSION, Metadata, Name, StrictModel, Tier, first_repeat
from jellybean.spec.errors import LocatedValueError


class LinkDirection(StrictModel):
    bandwidth_mbps: float | None = Field(default=None, gt=0, description="Capacity in Mbit/s; omit for unlimited.")
    latency_ms: float = Field(default=0.0, ge=0, description="One-way propagation latency in ms.")
    cost_per_gb: float = Field(default=0.0, ge=0, description="Price in $ per GB (1024^3 bytes) sent this way.")


class Uplink(StrictModel):
    up: LinkDirection = Field(default_factory=LinkDirection, description="Towards the parent site.")
    down: LinkDirection = Field(default_factory=LinkDirection, description="From the parent site.")


class InstanceGroup(StrictModel):
    name: Name = Field(description="Instance (group) name, unique within its site.")
    hardware: Name = Field(description="Hardware type, matched against the zoo's latency profiles.")
    price_per_hour: float = Field(ge=0, description="$ per hour for one instance while it is used.")
    count: int | None = Field(default=None, ge=0, description="Number of owned instances.")
    max_count: int | None = Field(default=None, ge=0, description="Upper bound on elastic instances.")
    memory_mb: float | None = Field(default=None, gt=0, description="Memory per instance in MB; omit for unlimited.")
    cpus: float | None = Field(default=None, gt=0, description="CPU cores per instance (informational; used by the runtime).")

    @model_validator(mode="after")
    def _count_or_max(self) -> "InstanceGroup":
        if (self.count is None) == (self.max_count is None):
            raise ValueError("give exactly one of `count` (owned instances) or `max_count` (elastic capacity)")
        return self

    @property
    def limit(self) -> int:
        return self.count if self.count is not None else self.max_count  # type: ignore[return-value]

    @property
    def elastic(self) -> bool:
        return self.max_count is not None


class Site(StrictModel):
    name: Name
    tier: Tier
    parent: Name | None = Field(default=None, description="Parent site; omit for a root (usually the cloud).")
    uplink: Uplink | None = Field(default=None, description="The link to the parent; required when `parent` is set.")
    instances: list[InstanceGroup] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _uplink_iff_parent(self) -> "Site":
        if self.parent is None and self.uplink is not None:
            raise ValueError("a root site (no `parent`) cannot have an `uplink`")
        if self.parent is not None and self.uplink is None:
            self.uplink = Uplink()
        i = first_repeat([inst.name for inst in self.instances])
        if i is not None:
            raise LocatedValueError(("instances", i, "name"),
                                    f"instance names must be unique within a site; repeated: {self.instances[i].name}")
        return self


class TopologySpec(StrictModel):
    sites: list[Site] = Field(min_length=1)
    sharing: Literal["shared", "exclusive"] = Field(
        default="shared",
        description="`shared`: an instance may host several stages whose summed utilisation and memory fit; "
        "`exclusive`: each instance serves at most one stage (JellyBean's semantics).",
    )
    hop_latency_ms: float = Field(
        default=1.0, ge=0, description="What the runtime adds per hop (a call from one actor to the next: "
        "serialisation, the call, its acknowledgement), for the plan's latency; `python bench/runtime.py` measures it.")
    batch_wait_ms: float = Field(
        default=2.0, ge=0, description="Longest a replica waits for a batch to fill once a request is there (dynamic "
        "batching); the runtime uses it, and the plan's latency counts the wait.")
    max_utilization: float = Field(
        default=0.8, gt=0, le=1, description="Headroom: the highest planned utilisation of any instance."
    )
    allow_downward_flows: bool = Field(
        default=False, description="Allow data to travel down the tiers (towards devices)."
    )

    @model_validator(mode="after")
    def _tree(self) -> "TopologySpec":
        by_name: dict[str, Site] = {}
        index: dict[str, int] = {}
        for i, site in enumerate(self.sites):
            if site.name in by_name:
                raise LocatedValueError(("sites", i, "name"), f"site {site.name!r} is defined twice")
            by_name[site.name] = site
            index[site.name] = i
        for i, site in enumerate(self.sites):
            if site.parent is None:
                continue
            parent = by_name.get(site.parent)
            if parent is None:
                raise LocatedValueError(("sites", i, "parent"), f"site {site.name!r} names unknown parent {site.parent!r}")
            if parent.tier.rank < site.tier.rank:
                raise LocatedValueError(
                    ("sites", i, "parent"),
                    f"site {site.name!r} ({site.tier.value}) has parent {parent.name!r} in a lower tier "
                    f"({parent.tier.value}); parents must be in the same or a higher tier")
        # Cycle check in O(n): colour each site once while walking up its parent chain.
        state: dict[str, int] = {}  # 1 = on the current walk, 2 = known to reach a root
        for site in self.sites:
            walk = []
            cursor: Site | None = site
            while cursor is not None and state.get(cursor.name) != 2:
                if state.get(cursor.name) == 1:
                    raise LocatedValueError(("sites", index[cursor.name], "parent"),
                                            f"sites form a cycle through {cursor.name!r}; `parent` must form a tree",
                                            "one site (the root, usually the cloud) has no `parent`")
                state[cursor.name] = 1
                walk.append(cursor.name)
                cursor = by_name[cursor.parent] if cursor.parent is not None else None
            for name in walk:
                state[name] = 2
        return self

    def site(self, name: str) -> Site | None:
        return next((s for s in self.sites if s.name == name), None)


class Topology(StrictModel):
    apiVersion: Literal["jellybean.io/v1alpha1"] = API_VERSION
    kind: Literal["Topology"] = "Topology"
    metadata: Metadata
    spec: TopologySpec
