"""The ``Topology`` document: sites in tiers, arranged as a tree by ``parent``, with their instances.

Each non-root site has one uplink to its parent, described in both directions (``up`` towards the
parent, ``down`` from it) by ``bandwidth_mbps`` (10^6 bit/s; omitted = unlimited), ``latency_ms``
and ``cost_per_gb`` (GB = 1024^3 bytes, as in JellyBean). Data between two sites travels along the
unique tree path between them and pays every link it crosses, in that link's direction.

Instances are groups of identical machines at a site: a hardware type (matched against the zoo's
profiles), a ``price_per_hour`` (0 for owned hardware is fine), and either a fixed ``count`` (owned
machines that exist whether used or not; only used ones are charged, as JellyBean does) or a
``max_count`` (elastic capacity, rented per instance-hour).

Identical sites without copy-paste: a site with ``replicas: N`` stands for ``N`` sites named
``<name>-01`` .. ``<name>-N`` (zero-padded to N's digits), or by ``replica_names`` (a pattern with
``{name}`` and ``{i}``, e.g. ``"{name}{i:03d}"``, ``i`` counting from 1). A site whose ``parent`` is
replicated is replicated with it: one copy under each copy of the parent, named after the parent's
copy (``cam`` under ``store-07`` is ``cam-store-07``; with its own ``replicas: 2``,
``cam-store-07-1`` and ``cam-store-07-2``). A Workflow may name the replicated site
(``sites: [cam]``) for all its copies. The planner pools identical sites into one class anyway;
this is the way to say there are forty.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PrivateAttr, model_validator

from jellybean.spec.common import API_VERSION, Metadata, Name, StrictModel, Tier, first_repeat
from jellybean.spec.errors import LocatedValueError, did_you_mean


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
    replicas: int | None = Field(default=None, ge=1, le=100_000, description="This many identical sites "
                                 "(`<name>-01` .. `<name>-N`, or `replica_names`); children are copied under each.")
    replica_names: str | None = Field(default=None, description="The copies' names: a pattern with `{name}` and "
                                      "`{i}` (from 1; a format spec such as `{i:03d}` is allowed).")

    @model_validator(mode="after")
    def _replica_names(self) -> "Site":
        if self.replica_names is not None:
            if self.replicas is None:
                raise LocatedValueError(("replica_names",), "`replica_names` needs `replicas`")
            if "{i" not in self.replica_names:
                raise LocatedValueError(("replica_names",), "the pattern must contain `{i}`, or the copies "
                                        "would share one name", 'e.g. "{name}-{i:03d}"')
            try:
                self.replica_names.format(name=self.name, i=1)
            except (KeyError, IndexError, ValueError) as exc:
                raise LocatedValueError(("replica_names",), f"not a pattern of `{{name}}` and `{{i}}`: {exc}",
                                        'e.g. "{name}-{i:03d}"') from None
        return self

    def copy_names(self) -> list[str]:
        """The names of this site's copies (itself alone when not replicated)."""
        if self.replicas is None:
            return [self.name]
        width = len(str(self.replicas))
        pattern = self.replica_names or "{name}-{i:0" + str(width) + "d}"
        return [pattern.format(name=self.name, i=i) for i in range(1, self.replicas + 1)]

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
    link_batch_messages: int = Field(
        default=8, ge=1, le=1024, description="Messages bound for another site leave together, this many to a send "
        "(or fewer once `link_batch_wait_ms` has passed): each send costs about a hundred bytes of framing on the "
        "link (headers, TCP/IP's, ACKs), which the plan prices per message as a share of this many.")
    link_batch_wait_ms: float = Field(
        default=10.0, ge=0, le=10_000, description="Longest a message bound for another site waits for "
        "`link_batch_messages - 1` others to share its send; the plan's latency counts the wait. 0: every send leaves "
        "at once, and the plan prices each message's framing as if it travelled alone.")
    message_framing: bool = Field(
        default=True, description="Price each message as it travels on a link: its bytes, TCP/IP's headers per "
        "segment, and its share of its send's framing (see `link_batch_messages`). false: payload bytes alone "
        "(JellyBean's cost model; set by `jellybean import jellybean` so that costs compare with theirs).")
    max_utilization: float = Field(
        default=0.8, gt=0, le=1, description="Headroom: the highest planned utilisation of any instance."
    )
    max_link_utilization: float = Field(
        default=1.0, gt=0, le=1, description="Headroom on links: the highest planned share of any uplink's "
        "`bandwidth_mbps`, each direction. Default 1.0 (a link may be planned full, as before this field); "
        "0.8 leaves a fifth for bursts, TCP's headers and ACKs (about 5% of a full segment) and control traffic.")
    allow_downward_flows: bool = Field(
        default=False, description="Allow data to travel down the tiers (towards devices)."
    )

    @model_validator(mode="after")
    def _tree(self) -> "TopologySpec":
        self._expand_replicas()
        origin = self._origin
        by_name: dict[str, Site] = {}
        index: dict[str, int] = {}
        for i, site in enumerate(self.sites):
            if site.name in by_name:
                raise LocatedValueError(("sites", origin[i], "name"), f"site {site.name!r} is defined twice")
            by_name[site.name] = site
            index[site.name] = i
        for i, site in enumerate(self.sites):
            if site.parent is None:
                continue
            parent = by_name.get(site.parent)
            if parent is None:
                raise LocatedValueError(("sites", origin[i], "parent"),
                                        f"site {site.name!r} names unknown parent {site.parent!r}"
                                        f"{did_you_mean(site.parent, [*self._replica_sets, *by_name])}")
            if parent.tier.rank < site.tier.rank:
                raise LocatedValueError(
                    ("sites", origin[i], "parent"),
                    f"site {site.name!r} ({site.tier.value}) has parent {parent.name!r} in a lower tier "
                    f"({parent.tier.value}); parents must be in the same or a higher tier")
        # Cycle check in O(n): colour each site once while walking up its parent chain.
        state: dict[str, int] = {}  # 1 = on the current walk, 2 = known to reach a root
        for site in self.sites:
            walk = []
            cursor: Site | None = site
            while cursor is not None and state.get(cursor.name) != 2:
                if state.get(cursor.name) == 1:
                    raise LocatedValueError(("sites", origin[index[cursor.name]], "parent"),
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

    _origin: list[int] = PrivateAttr(default_factory=list)
    _replica_sets: dict[str, list[str]] = PrivateAttr(default_factory=dict)

    def replica_sets(self) -> dict[str, list[str]]:
        """Each replicated site's name -> the names of its copies (a Workflow may name either)."""
        return dict(self._replica_sets)

    def _expand_replicas(self) -> None:
        """Replace every replicated site (and, with it, its descendants) by its copies, in document
        order, remembering which document entry each came from (``_origin``, for error locations)."""
        if self._replica_sets:  # already expanded (a model copy validated again)
            return
        if all(site.replicas is None for site in self.sites):
            self._origin = list(range(len(self.sites)))
            return
        documented = list(self.sites)
        named = {site.name for site in documented}
        children: dict[str, list[int]] = {}
        for k, site in enumerate(documented):
            if site.parent is not None:
                children.setdefault(site.parent, []).append(k)
        copies: dict[int, list[tuple[str, str | None]]] = {}  # entry -> [(name, parent name)]

        def place(k: int, parent_copy: str | None) -> None:
            """Entry ``k``'s copies under ``parent_copy``, then their children (a walk down from the
            roots: sites on a cycle are never reached, keep their entry, and the tree check reports them)."""
            site = documented[k]
            under = site if parent_copy is None or parent_copy == site.parent else \
                site.model_copy(update={"name": f"{site.name}-{parent_copy}"})
            for name in under.copy_names():
                copies.setdefault(k, []).append((name, parent_copy if parent_copy is not None else site.parent))
                for c in children.get(site.name, []):
                    place(c, name)

        for k, site in enumerate(documented):
            if site.parent is None or site.parent not in named:
                place(k, None)
        expanded: list[Site] = []
        origin: list[int] = []
        for k, site in enumerate(documented):
            for name, parent in copies.get(k, [(site.name, site.parent)]):
                expanded.append(site.model_copy(update={"name": name, "parent": parent, "replicas": None,
                                                        "replica_names": None}, deep=True))
                origin.append(k)
        self.sites = expanded
        self._origin = origin
        self._replica_sets = {site.name: [name for name, _ in copies.get(k, [])]
                              for k, site in enumerate(documented)
                              if len(copies.get(k, [])) > 1 or site.replicas is not None}


class Topology(StrictModel):
    apiVersion: Literal["jellybean.io/v1alpha1"] = API_VERSION
    kind: Literal["Topology"] = "Topology"
    metadata: Metadata
    spec: TopologySpec
