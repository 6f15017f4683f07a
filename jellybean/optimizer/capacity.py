"""What running workflows leave of a topology: the capacity a new (or changed) workflow is planned
against. Pure: a Topology and Plans in, a Topology out; no Ray, no I/O.

Instances. A plan's ``instances`` rows say how many instances of a group it keeps busy at each site
(``count``, a whole number: an instance in use is not shared with another workflow). The group's
``count`` (owned) or ``max_count`` (elastic bound), whichever it gives, loses that many, never below 0.

Links. A plan's ``links`` rows say how many Mbit/s it puts on each uplink, per direction. The
planner lets a flow use at most ``max_link_utilization`` x ``bandwidth_mbps``; so that what is left
for the new workflow is exactly that share minus what runs,

    usable' = u B' = u B - used   =>   B' = B - used / u,

with ``u`` the topology's ``max_link_utilization``. A link used to the full keeps a token bandwidth
(:data:`NO_BANDWIDTH_MBPS`, a tiny positive number: the schema asks for ``> 0`` and latency is
computed per message as size / bandwidth), on which any planned flow is infeasible or prohibitively
slow, so the planner routes around it.

Sites are matched by name, so a plan made against another Topology document that names the same
sites (the embedded Ray merges sites by name too) counts as well; rows at sites this topology lacks
are ignored. The result is a deep copy (the input is never changed); it is not validated again: the
expanded site copies are kept as they are.
"""

from __future__ import annotations

from collections.abc import Iterable

from jellybean.optimizer.plan import Plan
from jellybean.spec.topology import LinkDirection, Topology

#: What a fully used link keeps, Mbit/s: positive (the schema's rule), and useless for any flow.
NO_BANDWIDTH_MBPS = 1e-6


def instances_in_use(plans: Iterable[Plan]) -> dict[tuple[str, str], int]:
    """(site, instance group) -> instances the plans keep in use there, summed over the plans."""
    used: dict[tuple[str, str], int] = {}
    for plan in plans:
        for row in plan.instances:
            for site in row.sites or [row.site]:
                used[(site, row.instance)] = used.get((site, row.instance), 0) + int(row.count)
    return used


def link_mbps_in_use(plans: Iterable[Plan]) -> dict[tuple[str, str], float]:
    """(child site, "up"|"down") -> Mbit/s the plans put on that site's uplink, summed."""
    used: dict[tuple[str, str], float] = {}
    for plan in plans:
        for row in plan.links:
            child = row.from_ if row.direction == "up" else row.to
            for site in row.sites or [child]:
                used[(site, row.direction)] = used.get((site, row.direction), 0.0) + float(row.mbps)
    return used


def _less(bound: int | None, used: int) -> int | None:
    return None if bound is None else max(0, bound - used)


def _narrowed(direction: LinkDirection, used_mbps: float, utilization: float) -> LinkDirection:
    if direction.bandwidth_mbps is None or used_mbps <= 0:
        return direction
    left = direction.bandwidth_mbps - used_mbps / utilization
    return direction.model_copy(update={"bandwidth_mbps": max(NO_BANDWIDTH_MBPS, left)})


def capacity_left(topology: Topology, plans: Iterable[Plan]) -> Topology:
    """``topology`` with what ``plans`` use taken away: instances in use removed from each group's
    ``count``/``max_count``, link bandwidth in use subtracted (module docstring: the maths)."""
    plans = [p for p in plans if p.feasible]
    instances = instances_in_use(plans)
    links = link_mbps_in_use(plans)
    if not instances and not links:
        return topology.model_copy(deep=True)
    out = topology.model_copy(deep=True)
    utilization = out.spec.max_link_utilization
    sites = []
    for site in out.spec.sites:
        groups = [group.model_copy(update={"count": _less(group.count, instances[(site.name, group.name)]),
                                           "max_count": _less(group.max_count, instances[(site.name, group.name)])})
                  if (site.name, group.name) in instances else group for group in site.instances]
        uplink = site.uplink
        if uplink is not None and ((site.name, "up") in links or (site.name, "down") in links):
            uplink = uplink.model_copy(update={
                "up": _narrowed(uplink.up, links.get((site.name, "up"), 0.0), utilization),
                "down": _narrowed(uplink.down, links.get((site.name, "down"), 0.0), utilization)})
        sites.append(site.model_copy(update={"instances": groups, "uplink": uplink}))
    # model_copy does not validate again: the expanded copies (and what the spec remembers of them) stay.
    return out.model_copy(update={"spec": out.spec.model_copy(update={"sites": sites})})


def shortfalls(plan: Plan, topology: Topology) -> list[str]:
    """Where ``plan`` needs more than ``topology`` has (instances per group, Mbit/s per uplink within
    ``max_link_utilization``), in words; empty when it fits. Used to decide whether a new version can
    start beside the old one (``capacity_left`` of everything else, the old version included)."""
    by_site = {site.name: site for site in topology.spec.sites}
    out: list[str] = []
    for (site_name, group_name), needed in sorted(instances_in_use([plan]).items()):
        site = by_site.get(site_name)
        group = next((g for g in site.instances if g.name == group_name), None) if site else None
        if group is None:
            out.append(f"{group_name}@{site_name}: not in the topology")
            continue
        bound = group.count if group.count is not None else group.max_count
        if bound is not None and needed > bound:
            out.append(f"{group_name}@{site_name}: needs {needed} instance(s), {bound} free")
    utilization = topology.spec.max_link_utilization
    for (site_name, direction), mbps in sorted(link_mbps_in_use([plan]).items()):
        site = by_site.get(site_name)
        link = getattr(site.uplink, direction) if site is not None and site.uplink is not None else None
        if link is not None and link.bandwidth_mbps is not None:
            usable = utilization * link.bandwidth_mbps
            if mbps > usable + 1e-9:
                out.append(f"uplink of {site_name} ({direction}): needs {mbps:.3g} Mbit/s, {max(0.0, usable):.3g} free")
    return out
