"""A picture of a Plan: tiers as bands, sites as boxes, stages in their instance groups, link flows.

``jellybean plan --render FILE`` calls :func:`render_plan`. The picture answers what the tables of
``jellybean plan`` answer, at a glance: where each stage runs (site, instance group, variant, and
its *share*, the fraction of the stage's requests served there), how busy each instance group is,
and how much data crosses each uplink of the site tree (GB/h, and the fraction of the link's
capacity it takes).

Identical sites share one row of the plan (``sites`` lists them) and are drawn once, as a stack
labelled ``×N``. A tier never gets more than ``max_boxes_per_tier`` boxes: the site classes that
matter most (placement first, then traffic) are drawn and the rest fold into one ``+N more sites``
box that carries their traffic, so a 1,000-camera city stays readable and renders in about a
second. :func:`layout_plan` computes the whole picture as data (pure, no matplotlib) and
:func:`draw_layout` draws it; tests and callers can check the layout without rasterising.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from jellybean.optimizer.plan import Assignment, InstanceUse, LinkFlow, Plan
from jellybean.spec.common import Tier
from jellybean.spec.topology import InstanceGroup, Topology
from jellybean.viz.figure import new_figure, save_figure, text_width_in

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Default cap on the boxes drawn in one tier (the last one may be the ``+N more sites`` box).
MAX_BOXES_PER_TIER = 6

# Sizes in points (text) and inches (geometry); every coordinate of the picture is in inches.
TITLE_PT, SUBTITLE_PT, BOX_TITLE_PT, LINE_PT, LABEL_PT, TIER_PT = 12.0, 8.0, 9.0, 7.5, 7.0, 11.0
LINE_IN, BOX_TITLE_IN, LABEL_LINE_IN = 0.16, 0.21, 0.15
LEFT_IN, PAD_IN, GAP_X_IN, HEADER_IN = 0.75, 0.25, 0.35, 0.95
ARROW_UP_X_IN, ARROW_DOWN_X_IN, LABEL_X_IN = 0.2, 0.32, 0.45
MIN_BOX_WIDTH_IN = 2.4
BOLD = 1.15  # bold text is this much wider
STACK_IN = 0.1

TIER_COLOURS = {"cloud": "#eaf1fb", "edge": "#eaf6ea", "hub": "#fdf5e6", "device": "#f3f3f3"}
FLOW_COLOURS = {"up": "#1f5fa8", "down": "#c8581a"}
LINE_COLOURS = {"idle": "#888888", "note": "#888888", "members": "#666666", "stage": "#0b5d1e"}
ARROWS = {"up": "\u2191", "down": "\u2193"}
TIMES = "\u00d7"
ELLIPSIS = "\u2026"


@dataclass
class SiteBox:
    """One box: a site, a class of identical sites (``×N``), or the tier's folded ``+N more sites``."""

    key: str
    tier: str
    title: str
    members: list[str]
    lines: list[tuple[str, str]]  # (text, kind): kind is "members", "group", "stage", "idle" or "note"
    placed: bool
    more: bool = False
    uplink_label: list[tuple[str, str]] = field(default_factory=list)  # (text, direction)
    left_in: float = 0.0
    top_in: float = 0.0
    width_in: float = 0.0
    height_in: float = 0.0


@dataclass
class Flow:
    """Traffic from a child box to its parent box (``up``), back (``down``), or an idle tree edge (``tree``)."""

    child: str
    parent: str
    direction: str
    gb_per_hour: float  # total over every link the arrow stands for


@dataclass
class TierBand:
    tier: str
    boxes: list[str]  # box keys, left to right
    bottom_in: float = 0.0
    top_in: float = 0.0


@dataclass
class PlanLayout:
    title: str
    subtitle: list[str]
    bands: list[TierBand]  # top (cloud) to bottom (device)
    boxes: dict[str, SiteBox]
    flows: list[Flow]
    width_in: float = 0.0
    height_in: float = 0.0


def render_plan(plan: Plan, topology: Topology, path: str | Path, *,
                max_boxes_per_tier: int = MAX_BOXES_PER_TIER) -> Path:
    """Draw ``plan`` (made for ``topology``) to ``path`` (.svg or .png); ValueError when the plan is
    infeasible (there is no placement to draw) or does not belong to the topology."""
    layout = layout_plan(plan, topology, max_boxes_per_tier=max_boxes_per_tier)
    return save_figure(draw_layout(layout), path)


# --- layout: pure data ---------------------------------------------------------------------------


def layout_plan(plan: Plan, topology: Topology, *, max_boxes_per_tier: int = MAX_BOXES_PER_TIER) -> PlanLayout:
    """Everything the picture shows, placed in inches; no matplotlib needed."""
    if not plan.feasible or plan.cost is None:
        raise ValueError(f"the plan for {plan.workflow} is infeasible: there is no placement to draw")
    if max_boxes_per_tier < 2:
        raise ValueError("max_boxes_per_tier must be at least 2 (one site and the '+N more sites' box)")
    sites = {s.name: s for s in topology.spec.sites}
    order = _tree_order(topology)
    classes = _site_classes(plan)
    for rep in classes:
        if rep not in sites:
            raise ValueError(f"the plan names site {rep!r}, which topology {topology.metadata.name!r} does not have")
    owner = {m: rep for rep, members in classes.items() for m in members}
    instances = _group_by(plan.instances, lambda r: r.site)
    assignments = _group_by(plan.assignments, lambda r: r.site)
    uplinks = _group_by(plan.links, _child_of)

    boxes: dict[str, SiteBox] = {}
    box_of: dict[str, str] = {}  # site -> the key of the box it is drawn in

    def weight(rep: str) -> tuple:
        """Which classes a full tier draws: placement first, then those whose parent is drawn (tiers
        are laid out top down, so arrows meet a box), then compute cost and traffic."""
        parent = sites[rep].parent
        parent_drawn = parent is None or not box_of.get(parent, "+more:").startswith("+more:")
        compute = sum(i.cost_per_hour for i in instances.get(rep, []))
        traffic = sum(link.gb_per_hour * _count(link.sites) for link in uplinks.get(rep, []))
        return (rep not in instances, not parent_drawn, -compute, -traffic, order.get(rep, math.inf))

    bands: list[TierBand] = []
    tiers = sorted({s.tier for s in sites.values()}, key=lambda t: -t.rank)
    for tier in tiers:
        # Sites in no row of the plan (no compute, no traffic) stand as classes of their own.
        reps = [rep for rep in classes if sites[rep].tier == tier]
        reps += [name for name, s in sites.items() if s.tier == tier and name not in owner]
        kept = reps if len(reps) <= max_boxes_per_tier else sorted(reps, key=weight)[:max_boxes_per_tier - 1]
        band = TierBand(tier.value, [])
        for rep in sorted(kept, key=lambda rep: order.get(rep, math.inf)):
            members = classes.get(rep, [rep])
            boxes[rep] = _class_box(plan, rep, members, tier, sites[rep].instances, instances.get(rep, []),
                                    assignments.get(rep, []))
            band.boxes.append(rep)
            box_of.update((member, rep) for member in members)
        folded = [rep for rep in reps if rep not in kept]
        if folded:
            key = f"+more:{tier.value}"
            members = [m for rep in folded for m in classes.get(rep, [rep])]
            boxes[key] = _more_box(plan, key, tier, members, [r for rep in folded for r in instances.get(rep, [])])
            band.boxes.append(key)
            box_of.update((member, key) for member in members)
        bands.append(band)
    flows = _flows(plan, topology, boxes, box_of)
    for key, box in boxes.items():
        box.uplink_label = _uplink_label(box, [link for link in plan.links if box_of.get(_child_of(link)) == key
                                               and box_of.get(_parent_of(link)) != key])
    cost = plan.cost
    accuracy = "-" if plan.accuracy is None else f"{plan.accuracy:.2f}"
    accuracy = f"accuracy {accuracy} (target {plan.accuracy_target:g})"
    if len(plan.sinks) > 1:
        accuracy = "accuracy " + ", ".join(
            f"{s.stage} {'-' if s.accuracy is None else f'{s.accuracy:.2f}'} (target {s.accuracy_target:g})"
            for s in plan.sinks)
    title = (f"{plan.workflow}: ${cost.total_per_hour:.3f}/h (compute ${cost.compute_per_hour:.3f} + network "
             f"${cost.network_per_hour:.3f}), {accuracy}")
    subtitle = [f"strategy {plan.strategy}, {plan.sharing} instances; models: "
                + ", ".join(f"{stage} = {variant}" for stage, variant in plan.models.items()),
                f"share: the fraction of a stage's requests served there; {ARROWS['up']} {ARROWS['down']} traffic per "
                f"uplink (GB/h) and the fraction of the link's capacity it takes; {TIMES}N: N identical sites"]
    layout = PlanLayout(title, subtitle, bands, boxes, flows)
    _place(layout)
    return layout


def _site_classes(plan: Plan) -> dict[str, list[str]]:
    """Representative site -> the identical sites its rows stand for, from every row of the plan."""
    classes: dict[str, list[str]] = {}
    for row in [*plan.instances, *plan.assignments]:
        classes.setdefault(row.site, list(row.sites) or [row.site])
    for link in plan.links:
        classes.setdefault(_child_of(link), list(link.sites) or [_child_of(link)])
    known = {m for members in classes.values() for m in members}
    for link in plan.links:
        parent = _parent_of(link)
        if parent not in known:  # a parent with neither compute nor an uplink of its own (a root)
            classes[parent] = [parent]
            known.add(parent)
    return classes


def _tree_order(topology: Topology) -> dict[str, int]:
    """Depth-first position of each site in the site tree, so that siblings sit side by side."""
    children: dict[str | None, list[str]] = {}
    for site in topology.spec.sites:
        children.setdefault(site.parent, []).append(site.name)
    order: dict[str, int] = {}
    stack = list(reversed(children.get(None, [])))
    while stack:
        name = stack.pop()
        order[name] = len(order)
        stack.extend(reversed(children.get(name, [])))
    return order


def _group_by(rows: list, key) -> dict[str, list]:  # noqa: ANN001 - rows of any plan table
    grouped: dict[str, list] = {}
    for row in rows:
        grouped.setdefault(key(row), []).append(row)
    return grouped


def _child_of(link: LinkFlow) -> str:
    return link.from_ if link.direction == "up" else link.to


def _parent_of(link: LinkFlow) -> str:
    return link.to if link.direction == "up" else link.from_


def _count(sites: list[str]) -> int:
    """Sites a plan row stands for: its ``sites``, or the one it names when that list is empty."""
    return max(1, len(sites))


def _pct(fraction: float | None) -> str:
    if fraction is None:
        return "-"
    return "<0.1%" if 0 < fraction < 0.0005 else f"{100 * fraction:.1f}%"


def _amount(value: float) -> str:
    """A quantity with three significant figures or so, without scientific notation."""
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _member_line(members: list[str]) -> str:
    shown = ", ".join(members[:3])
    return f"{shown}, {ELLIPSIS} ({len(members)} sites)" if len(members) > 3 else shown


def _class_box(plan: Plan, rep: str, members: list[str], tier: Tier, groups: list[InstanceGroup],
               used: list[InstanceUse], placed: list[Assignment]) -> SiteBox:
    """A site (class): each instance group in use with its stages, then the idle groups."""
    lines: list[tuple[str, str]] = []
    if len(members) > 1:
        lines.append((_member_line(members), "members"))
    each = " each" if len(members) > 1 else ""
    for use in used:
        hardware = "" if use.hardware == use.instance else f" ({use.hardware})"
        lines.append((f"{use.instance}{hardware}: {use.count}/{use.available} used, {_pct(use.utilization)} busy",
                      "group"))
        for a in (a for a in placed if a.instance == use.instance):
            total = plan.rate_per_s.get(a.stage, 0.0)
            share = f"share {_pct(a.rate_per_s / total)}{each}" if total > 0 else "share -"
            lines.append((f"{a.stage}: {a.variant}, {share}", "stage"))
    in_use = {u.instance for u in used}
    for group in groups:
        if group.name not in in_use:
            lines.append((f"{group.name}: 0/{group.limit} used (idle)", "idle"))
    if not groups:
        lines.append(("no compute here", "note"))
    title = rep if len(members) == 1 else f"{rep} {TIMES}{len(members)}"
    return SiteBox(rep, tier.value, title, list(members), lines, placed=bool(used))


def _more_box(plan: Plan, key: str, tier: Tier, members: list[str], used: list[InstanceUse]) -> SiteBox:
    """The tier's folded sites: how many, a few names, and what compute they carry in all."""
    lines = [(_member_line(members), "members")]
    if used:
        sites = sum({u.site: _count(u.sites) for u in used}.values())
        stages = [stage for stage in plan.models if any(stage in u.stages for u in used)]
        cost = sum(u.cost_per_hour for u in used)
        lines.append((f"{', '.join(stages)} at {sites} of them, ${cost:.2f}/h", "group"))
    else:
        lines.append(("no placement", "note"))
    return SiteBox(key, tier.value, f"+{len(members)} more sites", members, lines, placed=bool(used), more=True)


def _flows(plan: Plan, topology: Topology, boxes: dict[str, SiteBox], box_of: dict[str, str]) -> list[Flow]:
    """One arrow per (child box, parent box, direction), carrying the traffic of all its links;
    an idle tree edge (dotted) for each drawn site whose uplink carries nothing."""
    totals: dict[tuple[str, str, str], float] = {}
    for link in plan.links:
        child, parent = box_of.get(_child_of(link)), box_of.get(_parent_of(link))
        if child is None or parent is None or child == parent:
            continue
        key = (child, parent, link.direction)
        totals[key] = totals.get(key, 0.0) + link.gb_per_hour * _count(link.sites)
    flows = [Flow(c, p, d, gb) for (c, p, d), gb in totals.items()]
    with_traffic = {f.child for f in flows}
    for key, box in boxes.items():
        site = topology.spec.site(key)
        if box.more or key in with_traffic or site is None or site.parent is None:
            continue
        parent = box_of.get(site.parent)
        if parent is not None and parent != key:
            flows.append(Flow(key, parent, "tree", 0.0))
    return flows


def _uplink_label(box: SiteBox, links: list[LinkFlow]) -> list[tuple[str, str]]:
    """The traffic on a box's uplink(s), a line per direction: per link for a site (class), summed
    over the folded links for a ``+N more`` box."""
    label = []
    for direction in ("up", "down"):
        rows = [link for link in links if link.direction == direction]
        if not rows:
            continue
        arrow = ARROWS[direction]
        if not box.more and len(rows) == 1:
            row = rows[0]
            each = " each" if len(row.sites) > 1 else ""
            room = (f"{_pct(row.utilization)} of {row.capacity_mbps:,.0f} Mbps" if row.capacity_mbps
                    else "no capacity limit")
            label.append((f"{arrow} {_amount(row.gb_per_hour)} GB/h{each}, {room}", direction))
            continue
        count = sum(_count(r.sites) for r in rows)
        total = sum(r.gb_per_hour * _count(r.sites) for r in rows)
        utils = [r.utilization for r in rows if r.utilization is not None]
        room = f"at most {_pct(max(utils))} of capacity" if utils else "no capacity limit"
        label.append((f"{arrow} {_amount(total)} GB/h over {count} links, {room}", direction))
    return label


def _place(layout: PlanLayout) -> None:
    """Sizes and positions in inches: one box width for all, bands stacked from the top."""
    texts = [(box.title, BOX_TITLE_PT * BOLD, 0.3) for box in layout.boxes.values()]
    texts += [(text, LINE_PT * (BOLD if kind == "group" else 1.0), 0.3 if kind == "stage" else 0.2)
              for box in layout.boxes.values() for text, kind in box.lines]
    texts += [(text, LABEL_PT, LABEL_X_IN + 0.1) for box in layout.boxes.values() for text, _ in box.uplink_label]
    box_width = max([MIN_BOX_WIDTH_IN] + [text_width_in(t, pt) + margin for t, pt, margin in texts])
    widest = max(len(band.boxes) for band in layout.bands)
    headings = [(layout.title, TITLE_PT)] + [(line, SUBTITLE_PT) for line in layout.subtitle]
    layout.width_in = max(LEFT_IN + widest * (box_width + GAP_X_IN) + PAD_IN,
                          max(text_width_in(t, pt) for t, pt in headings) + 2 * PAD_IN)
    for box in layout.boxes.values():
        box.width_in = box_width
        box.height_in = 0.12 + BOX_TITLE_IN + LINE_IN * len(box.lines) + 0.08
    heights = []
    for band in layout.bands:
        members = [layout.boxes[k] for k in band.boxes]
        labels = max((len(b.uplink_label) for b in members), default=0)
        has_parent = any(f.child in band.boxes for f in layout.flows)
        label_in = LABEL_LINE_IN * labels + (0.45 if has_parent else 0.2) + max(map(_stack_in, members), default=0.0)
        heights.append((label_in, max((b.height_in for b in members), default=0.5) + 0.25))
    layout.height_in = HEADER_IN + sum(a + b for a, b in heights) + 0.1
    top = layout.height_in - HEADER_IN
    for band, (label_in, boxes_in) in zip(layout.bands, heights):
        band.top_in, band.bottom_in = top, top - label_in - boxes_in
        row_width = len(band.boxes) * box_width + (len(band.boxes) - 1) * GAP_X_IN
        left = LEFT_IN + (layout.width_in - LEFT_IN - PAD_IN - row_width) / 2
        for k, key in enumerate(band.boxes):
            box = layout.boxes[key]
            box.left_in = left + k * (box_width + GAP_X_IN)
            box.top_in = top - label_in
        top = band.bottom_in


# --- drawing -------------------------------------------------------------------------------------


def _stack_in(box: SiteBox) -> float:
    """How far the stack of a ×N box rises above its front box (0 for a single site)."""
    return STACK_IN if len(box.members) > 1 and not box.more else 0.0


def draw_layout(layout: PlanLayout) -> Figure:
    """The layout as a matplotlib figure, one axes spanning it in inches."""
    figure = new_figure(layout.width_in, layout.height_in)  # first: says which extra when matplotlib is missing
    from matplotlib.patches import FancyBboxPatch, Rectangle

    ax = figure.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, layout.width_in)
    ax.set_ylim(0, layout.height_in)
    ax.axis("off")
    ax.text(PAD_IN, layout.height_in - 0.3, layout.title, fontsize=TITLE_PT, fontweight="bold", va="center")
    for k, line in enumerate(layout.subtitle):
        ax.text(PAD_IN, layout.height_in - 0.55 - 0.17 * k, line, fontsize=SUBTITLE_PT, color="#444444", va="center")
    for band in layout.bands:
        ax.add_patch(Rectangle((0, band.bottom_in), layout.width_in, band.top_in - band.bottom_in,
                               facecolor=TIER_COLOURS.get(band.tier, "#f5f5f5"), edgecolor="#cccccc", lw=0.6))
        ax.text(0.3, (band.top_in + band.bottom_in) / 2, band.tier, rotation=90, fontsize=TIER_PT,
                fontweight="bold", color="#555555", ha="center", va="center")
    for box in layout.boxes.values():
        bottom = box.top_in - box.height_in
        if _stack_in(box):  # identical sites stand behind the first
            for shift in (STACK_IN, STACK_IN / 2):
                ax.add_patch(FancyBboxPatch((box.left_in + shift, bottom + shift), box.width_in, box.height_in,
                                            boxstyle="round,pad=0,rounding_size=0.06", facecolor="#ffffff",
                                            edgecolor="#888888", lw=0.6))
        ax.add_patch(FancyBboxPatch((box.left_in, bottom), box.width_in, box.height_in,
                                    boxstyle="round,pad=0,rounding_size=0.06",
                                    facecolor="#ffffff" if box.placed else "#f8f8f8",
                                    edgecolor="#333333" if box.placed else "#999999",
                                    lw=1.1 if box.placed else 0.7, linestyle="--" if box.more else "-"))
        ax.text(box.left_in + 0.12, box.top_in - 0.12 - BOX_TITLE_IN / 2, box.title, fontsize=BOX_TITLE_PT,
                fontweight="bold", va="center")
        for k, (text, kind) in enumerate(box.lines):
            y = box.top_in - 0.12 - BOX_TITLE_IN - LINE_IN * (k + 0.5)
            indent = 0.3 if kind == "stage" else 0.12
            colour = LINE_COLOURS.get(kind, "#222222")
            ax.text(box.left_in + indent, y, text, fontsize=LINE_PT, color=colour, va="center",
                    fontweight="bold" if kind == "group" else "normal")
        for k, (text, direction) in enumerate(reversed(box.uplink_label)):
            ax.text(box.left_in + LABEL_X_IN, box.top_in + _stack_in(box) + 0.1 + LABEL_LINE_IN * (k + 0.5), text,
                    fontsize=LABEL_PT,
                    color=FLOW_COLOURS[direction], va="center")
    _draw_flows(ax, layout)
    return figure


def _draw_flows(ax, layout: PlanLayout) -> None:  # noqa: ANN001 - a matplotlib Axes
    """Each flow leaves its child box straight up past the label, then runs to its own point on the
    parent box's lower edge (points spread along the edge so that arrows do not pile up)."""
    landing: dict[str, list[Flow]] = {}
    for flow in layout.flows:
        landing.setdefault(flow.parent, []).append(flow)
    heaviest = max((f.gb_per_hour for f in layout.flows), default=0.0) or 1.0
    for parent_key, flows in landing.items():
        parent = layout.boxes[parent_key]
        flows.sort(key=lambda f: (layout.boxes[f.child].left_in, f.direction))
        for k, flow in enumerate(flows):
            child = layout.boxes[flow.child]
            px = parent.left_in + parent.width_in * (k + 1) / (len(flows) + 1)
            py = parent.top_in - parent.height_in
            if child.tier == parent.tier:  # a parent in the same tier: across, side to side
                py = parent.top_in - parent.height_in / 2
                px = parent.left_in if parent.left_in > child.left_in else parent.left_in + parent.width_in
            cx = child.left_in + (ARROW_DOWN_X_IN if flow.direction == "down" else ARROW_UP_X_IN)
            cy = child.top_in + _stack_in(child)
            bend = cy + LABEL_LINE_IN * len(child.uplink_label) + 0.2
            if flow.direction == "tree":
                ax.plot([cx, cx, px], [cy, bend, py], color="#999999", lw=0.7, linestyle=":")
                continue
            colour = FLOW_COLOURS[flow.direction]
            width = 0.8 + 2.2 * math.sqrt(flow.gb_per_hour / heaviest)
            alpha = 0.45 if child.more else 1.0  # a folded box's many arrows stay in the background
            style = dict(arrowstyle="-|>", color=colour, lw=width, mutation_scale=10, shrinkA=0, shrinkB=0, alpha=alpha)
            if flow.direction == "up":
                ax.plot([cx, cx], [cy, bend], color=colour, lw=width, solid_capstyle="butt", alpha=alpha)
                ax.annotate("", xy=(px, py), xytext=(cx, bend), arrowprops=style)
            else:
                ax.plot([px, cx], [py, bend], color=colour, lw=width, solid_capstyle="butt", alpha=alpha)
                ax.annotate("", xy=(cx, cy), xytext=(cx, bend), arrowprops=style)
