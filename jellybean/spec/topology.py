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

Carbon (for ``jellybean plan --objective carbon | cost+carbon`` and ``--carbon-budget``, and the plan's
gCO2/h report): a site's ``carbon_intensity_g_per_kwh`` (its grid's gCO2 per kWh: one yearly average,
or a day's series of steps in UTC) and an instance group's ``power_w`` (``idle`` and ``busy`` watts
of one instance). The planner models one instance in use as drawing
``idle + (busy - idle) x utilisation`` W (the planner's carbon module says how it uses them).
"""

from __future__ import annotations

import re
from datetime import time
from typing import Annotated, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from jellybean.spec.common import API_VERSION, Metadata, Name, StrictModel, Tier, first_repeat
from jellybean.spec.errors import LocatedValueError, did_you_mean


class LinkDirection(StrictModel):
    bandwidth_mbps: float | None = Field(default=None, gt=0, description="Capacity in Mbit/s; omit for unlimited.")
    latency_ms: float = Field(default=0.0, ge=0, description="One-way propagation latency in ms.")
    cost_per_gb: float = Field(default=0.0, ge=0, description="Price in $ per GB (1024^3 bytes) sent this way.")


class Uplink(StrictModel):
    up: LinkDirection = Field(default_factory=LinkDirection, description="Towards the parent site.")
    down: LinkDirection = Field(default_factory=LinkDirection, description="From the parent site.")


class PowerDraw(StrictModel):
    """What one instance draws, in W (at the wall; include your site's cooling share, its PUE, if
    you want it counted). Between the two the planner interpolates linearly in the utilisation."""

    idle: float = Field(ge=0, description="W drawn by one instance in use with nothing to do (powered, models loaded).")
    busy: float = Field(ge=0, description="W drawn by one instance at full load (100% utilisation).")

    @model_validator(mode="after")
    def _busy_at_least_idle(self) -> PowerDraw:
        if self.busy < self.idle:
            raise LocatedValueError(("busy",), f"busy power {self.busy:g} W is below idle power {self.idle:g} W",
                                    "`busy` is the draw at full load, `idle` with nothing to do")
        return self


_HH_MM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
MINUTES_PER_DAY = 24 * 60


class IntensityStep(StrictModel):
    """One step of a site's daily carbon-intensity series: ``g_per_kwh`` holds from ``from`` (UTC)
    until the next step's ``from`` (the last step's until the first one's, the next day)."""

    from_: str = Field(alias="from", description="UTC time of day the value starts to hold, `HH:MM` (00:00-23:59).")
    g_per_kwh: float = Field(ge=0, description="Grid carbon intensity from then on, gCO2 per kWh.")

    @field_validator("from_", mode="before")
    @classmethod
    def _sexagesimal(cls, value: object) -> object:
        """YAML 1.1 reads an unquoted ``12:30`` as the base-60 integer 750, which is the minutes after
        midnight: take it back as the time it was written as."""
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MINUTES_PER_DAY:
            return f"{value // 60:02d}:{value % 60:02d}"
        return value

    @field_validator("from_")
    @classmethod
    def _time_of_day(cls, value: str) -> str:
        if not _HH_MM.match(value):
            raise LocatedValueError((), f"{value!r} is not a time of day `HH:MM` between 00:00 and 23:59 (UTC)",
                                    'quote it and give two digits each, e.g. "06:30"')
        return value

    @property
    def minute(self) -> int:
        """Minutes after midnight UTC."""
        hours, minutes = self.from_.split(":")
        return int(hours) * 60 + int(minutes)


def intensity_g_per_kwh(value: float | list[IntensityStep] | None, at: time | None = None) -> float | None:
    """A site's carbon intensity for planning, gCO2/kWh: the number itself; for a daily series, the
    value in force at ``at`` (a UTC time of day), or, without ``at``, the series' mean over the day,
    each step weighted by how long it holds (a plan that runs around the clock emits at that mean).
    None: the site gives none."""
    if value is None or isinstance(value, (int, float)):
        return value
    steps = sorted(value, key=lambda step: step.minute)
    if at is not None:
        minute = at.hour * 60 + at.minute
        current = [step for step in steps if step.minute <= minute]
        return (current[-1] if current else steps[-1]).g_per_kwh
    total = 0.0
    for k, step in enumerate(steps):
        end = steps[k + 1].minute if k + 1 < len(steps) else steps[0].minute + MINUTES_PER_DAY
        total += step.g_per_kwh * (end - step.minute)
    return total / MINUTES_PER_DAY


class InstanceGroup(StrictModel):
    name: Name = Field(description="Instance (group) name, unique within its site.")
    hardware: Name = Field(description="Hardware type, matched against the zoo's latency profiles.")
    price_per_hour: float = Field(ge=0, description="$ per hour for one instance while it is used.")
    count: int | None = Field(default=None, ge=0, description="Number of owned instances.")
    max_count: int | None = Field(default=None, ge=0, description="Upper bound on elastic instances.")
    memory_mb: float | None = Field(default=None, gt=0, description="Memory per instance in MB; omit for unlimited.")
    cpus: float | None = Field(default=None, gt=0, description="CPU cores per instance (informational; used by the runtime).")
    power_w: PowerDraw | None = Field(default=None, description="Power of one instance in W, `idle` and `busy`: "
                                      "an instance in use draws idle + (busy - idle) x its planned utilisation "
                                      "(unused instances count as off). Needed for the plan's gCO2/h and the carbon "
                                      "objectives; omit when unknown.")

    @model_validator(mode="after")
    def _count_or_max(self) -> InstanceGroup:
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
    carbon_intensity_g_per_kwh: Annotated[float, Field(ge=0)] | list[IntensityStep] | None = Field(
        default=None, description="The site's grid carbon intensity, gCO2 per kWh: a number (a yearly or other "
        "average), or a day's series of steps `[{from: \"HH:MM\", g_per_kwh: N}, ...]` in UTC, each holding until "
        "the next (the last until the first, the next day). The planner uses a series' mean over the day (each step "
        "weighted by how long it holds), or, with `jellybean plan --at HH:MM`, the value in force then. Needed for "
        "the plan's gCO2/h and the carbon objectives; omit when unknown.")
    replicas: int | None = Field(default=None, ge=1, le=100_000, description="This many identical sites "
                                 "(`<name>-01` .. `<name>-N`, or `replica_names`); children are copied under each.")
    replica_names: str | None = Field(default=None, description="The copies' names: a pattern with `{name}` and "
                                      "`{i}` (from 1; a format spec such as `{i:03d}` is allowed).")

    @model_validator(mode="after")
    def _replica_names(self) -> Site:
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

    @field_validator("carbon_intensity_g_per_kwh")
    @classmethod
    def _series_in_order(cls, value: float | list[IntensityStep] | None) -> float | list[IntensityStep] | None:
        if isinstance(value, list):
            if not value:
                raise LocatedValueError((), "an empty series", 'give a number, or at least one step '
                                        '`{from: "00:00", g_per_kwh: N}`')
            for k in range(1, len(value)):
                if value[k].minute <= value[k - 1].minute:
                    raise LocatedValueError((k, "from"), f"step {value[k].from_} does not come after the step before "
                                            f"it ({value[k - 1].from_})", "list the steps in time order, each once")
        return value

    def carbon_intensity(self, at: time | None = None) -> float | None:
        """This site's intensity for planning, gCO2/kWh (:func:`intensity_g_per_kwh`)."""
        return intensity_g_per_kwh(self.carbon_intensity_g_per_kwh, at)

    def copy_names(self) -> list[str]:
        """The names of this site's copies (itself alone when not replicated)."""
        if self.replicas is None:
            return [self.name]
        width = len(str(self.replicas))
        pattern = self.replica_names or "{name}-{i:0" + str(width) + "d}"
        return [pattern.format(name=self.name, i=i) for i in range(1, self.replicas + 1)]

    @model_validator(mode="after")
    def _uplink_iff_parent(self) -> Site:
        if self.parent is None and self.uplink is not None:
            raise ValueError("a root site (no `parent`) cannot have an `uplink`")
        if self.parent is not None and self.uplink is None:
            self.uplink = Uplink()
        i = first_repeat([inst.name for inst in self.instances])
        if i is not None:
            raise LocatedValueError(("instances", i, "name"),
                                    f"instance names must be unique within a site; repeated: {self.instances[i].name}")
        return self


#: How instances are shared between stages (:attr:`TopologySpec.sharing`).
Sharing = Literal["shared", "exclusive"]


class TopologySpec(StrictModel):
    sites: list[Site] = Field(min_length=1)
    sharing: Sharing = Field(
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
    def _tree(self) -> TopologySpec:
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
