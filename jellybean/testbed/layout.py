"""The test bed's layout, computed from a Topology: pure, so it is tested without root.

Every site becomes a Linux network namespace with one address of its own (``10.213.0.<n>/32`` on
its loopback, where Ray's node listens). Every uplink becomes a veth pair between the child's and
the parent's namespaces (a ``/30``: the parent end ``10.214.<n>.1``, the child end ``.2``), and the
namespaces route to each other along the topology's tree, forwarding like routers: a camera's frames
for the cloud leave the camera on its own link, cross the hub (and its uplink), then the edge's.
So a byte between two sites crosses exactly the links the planner priced, in the same direction,
and each link's counters and shaping are those of one uplink (a flat bridge cannot do this: a
camera's frames to its hub would pass the hub's *downlink* shaping).

Each direction of a link with a ``bandwidth_mbps`` gets a token-bucket filter (``tc qdisc ... tbf``)
on the interface that sends that way: the child's end for ``up``, the parent's end for ``down``.
``netem`` is not available on these kernels, so propagation latency is not put on the wire; the data
plane's own link-latency emulation (``Pipeline(emulate_latency=True)``) can add it at the senders.

A site's CPU share is a cgroup quota: its instances' ``cpus`` times ``cpu_scale`` (so that a
topology that declares more cores than the machine has is scaled down to fit, every site in the same
proportion), or ``device_cpus`` for a site without instances (a camera's replay loop). Ray's node is
told the unscaled, whole number of cores so that the plan's actors fit as they would on the site.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from jellybean.spec.topology import Topology

NODE_NET = "10.213.0"
LINK_NET = "10.214"
#: How much queue a token bucket may hold before it drops, as time at the link's rate.
QUEUE_MS = 400
#: The smallest bucket: two full-size Ethernet frames.
MIN_BURST_BYTES = 3028
#: cgroup CPU period (us): short, so that a throttled site waits milliseconds, not a tenth of a second.
CPU_PERIOD_US = 10_000


@dataclass(frozen=True)
class Link:
    """One uplink as veth ends: the child's (sends ``up``) and the parent's (sends ``down``)."""

    child: str
    parent: str
    child_if: str
    parent_if: str
    child_address: str
    parent_address: str
    up_bits_per_s: float | None
    down_bits_per_s: float | None

    def interface(self, direction: str) -> tuple[str, str]:
        """(site, interface) whose transmit counter is this link's traffic in ``direction``."""
        return (self.child, self.child_if) if direction == "up" else (self.parent, self.parent_if)


@dataclass(frozen=True)
class SiteNet:
    name: str
    index: int
    namespace: str
    address: str
    parent: str | None
    cpu_quota: float  # cores (cgroup), after scaling
    ray_cpus: int  # what Ray's node advertises
    link: Link | None = None


@dataclass
class Layout:
    tag: str
    sites: dict[str, SiteNet]
    root: str
    cpu_scale: float
    routes: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # site -> [(destination, via)]

    @property
    def links(self) -> list[Link]:
        return [s.link for s in self.sites.values() if s.link is not None]

    def site(self, name: str) -> SiteNet:
        return self.sites[name]


def _ancestors(parent: dict[str, str | None], site: str) -> list[str]:
    out = []
    while parent[site] is not None:
        site = parent[site]  # type: ignore[assignment]
        out.append(site)
    return out


def layout(topology: Topology, *, tag: str, cores: float, device_cpus: float = 0.1) -> Layout:
    """Namespaces, addresses, links, routes and CPU quotas for ``topology`` on ``cores`` cores."""
    if not tag.isalnum() or len(tag) > 6:
        raise ValueError("the test bed's tag must be 1 to 6 letters or digits (interface names are short)")
    sites = topology.spec.sites
    roots = [s.name for s in sites if s.parent is None]
    if len(roots) != 1:
        raise ValueError(f"the test bed needs one root site, the topology has {len(roots)}: {', '.join(roots)}")
    if len(sites) > 250:
        raise ValueError("the test bed addresses at most 250 sites")
    declared = {s.name: sum((inst.cpus or 1.0) * inst.limit for inst in s.instances) for s in sites}
    wanted = sum(c if c > 0 else device_cpus for c in declared.values())
    scale = min(1.0, cores / wanted) if wanted > 0 else 1.0
    index = {s.name: n + 1 for n, s in enumerate(sites)}
    parent = {s.name: s.parent for s in sites}
    nets: dict[str, SiteNet] = {}
    for s in sites:
        n = index[s.name]
        link = None
        if s.parent is not None:
            up, down = (s.uplink.up, s.uplink.down) if s.uplink else (None, None)
            link = Link(
                child=s.name, parent=s.parent, child_if=f"jb{tag}{n}u", parent_if=f"jb{tag}{n}d",
                child_address=f"{LINK_NET}.{n}.2", parent_address=f"{LINK_NET}.{n}.1",
                up_bits_per_s=up.bandwidth_mbps * 1e6 if up and up.bandwidth_mbps else None,
                down_bits_per_s=down.bandwidth_mbps * 1e6 if down and down.bandwidth_mbps else None)
        quota = (declared[s.name] if declared[s.name] > 0 else device_cpus) * scale
        nets[s.name] = SiteNet(name=s.name, index=n, namespace=f"jbtb-{tag}-{s.name}", address=f"{NODE_NET}.{n}",
                               parent=s.parent, cpu_quota=quota, ray_cpus=math.ceil(declared[s.name] - 1e-9),
                               link=link)
    out = Layout(tag=tag, sites=nets, root=roots[0], cpu_scale=scale)
    # Routes: to a site below, via the child on the path to it; to anything else, up (default route).
    for s in sites:
        routes: list[tuple[str, str]] = []
        for other in sites:
            if other.name == s.name:
                continue
            chain = [other.name, *_ancestors(parent, other.name)]
            if s.name in chain:
                child = chain[chain.index(s.name) - 1]
                routes.append((nets[other.name].address + "/32", nets[child].link.child_address))  # type: ignore[union-attr]
        if s.parent is not None:
            routes.append(("default", nets[s.name].link.parent_address))  # type: ignore[union-attr]
        out.routes[s.name] = routes
    return out


def burst_bytes(bits_per_s: float) -> int:
    """A bucket of 4 ms at the rate (a timer tick's worth, so the rate holds), at least two frames."""
    return max(MIN_BURST_BYTES, int(bits_per_s / 8 * 0.004))


def setup_commands(lay: Layout) -> list[list[str]]:
    """The ``ip``/``tc`` commands that build the network, in order (namespaces, links, routes, shaping)."""
    cmds: list[list[str]] = []
    for s in lay.sites.values():
        ns = s.namespace
        cmds += [["ip", "netns", "add", ns],
                 ["ip", "-n", ns, "link", "set", "lo", "up"],
                 ["ip", "-n", ns, "addr", "add", f"{s.address}/32", "dev", "lo"],
                 ["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"]]
    for link in lay.links:
        child, parent = lay.sites[link.child], lay.sites[link.parent]
        cmds += [["ip", "link", "add", link.child_if, "netns", child.namespace, "type", "veth",
                  "peer", "name", link.parent_if, "netns", parent.namespace],
                 ["ip", "-n", child.namespace, "addr", "add", f"{link.child_address}/30", "dev", link.child_if],
                 ["ip", "-n", parent.namespace, "addr", "add", f"{link.parent_address}/30", "dev", link.parent_if],
                 ["ip", "-n", child.namespace, "link", "set", link.child_if, "up"],
                 ["ip", "-n", parent.namespace, "link", "set", link.parent_if, "up"]]
        for ns, dev, rate in ((child.namespace, link.child_if, link.up_bits_per_s),
                              (parent.namespace, link.parent_if, link.down_bits_per_s)):
            if rate is not None:
                cmds.append(["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{int(rate)}bit",
                             "burst", str(burst_bytes(rate)), "latency", f"{QUEUE_MS}ms"])
    for name, routes in lay.routes.items():
        s = lay.sites[name]
        for destination, via in routes:
            cmds.append(["ip", "-n", s.namespace, "route", "add", destination, "via", via, "src", s.address])
    return cmds


def shape_commands(lay: Layout, site: str, direction: str, bits_per_s: float | None) -> list[list[str]]:
    """Re-shape one direction of a site's uplink at run time (a link that degrades): ``None`` lifts it."""
    link = lay.sites[site].link
    if link is None:
        raise ValueError(f"site {site!r} has no uplink")
    owner, dev = link.interface(direction)
    ns = lay.sites[owner].namespace
    if bits_per_s is None:
        return [["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"]]
    return [["tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{int(bits_per_s)}bit",
             "burst", str(burst_bytes(bits_per_s)), "latency", f"{QUEUE_MS}ms"]]

