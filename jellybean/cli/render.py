"""A plan as people read it, in the spirit of ``sky launch --dryrun``: its models, placement, instances,
links, cost, carbon, accuracy and baselines, as blocks (:mod:`jellybean.cli.console`) that are plain
text off a terminal and rich tables on one; ``render_*`` give the plain text."""

from __future__ import annotations

from collections.abc import Sequence

from jellybean.cli.console import Block, Heading, Table, plain
from jellybean.optimizer.plan import BaselineResult, InstanceUse, JointPlan, LinkFlow, Plan, SolverStats


def _site(site: str, sites: list[str]) -> str:
    return f"{site} (x{len(sites)})" if len(sites) > 1 else site


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _solver_lines(s: SolverStats) -> list[str]:
    gap = "unknown" if s.gap is None else f"{100 * s.gap:.3f}%"
    lines = [f"Solver: {s.name}, status {s.status}, gap {gap}, {s.seconds:.2f} s"
             + (f", {s.variables} variables, {s.constraints} constraints" if s.variables else "")]
    return lines + [f"  note: {note}" for note in s.notes]


def render_plan(plan: Plan, *, header: bool = True) -> str:
    """:func:`plan_blocks` as plain text."""
    return plain(plan_blocks(plan, header=header))


def plan_blocks(plan: Plan, *, header: bool = True) -> list[Block]:
    """One workflow's plan; ``header=False`` leaves out its first lines (workflow, strategy, solver),
    for a workflow shown within a joint plan (:func:`joint_plan_blocks`), which says them once."""
    out: list[Block] = []
    objective = "" if plan.objective == "cost" else f", objective {plan.objective}"
    if header:
        out.append(Heading(f"Workflow {plan.workflow}: strategy {plan.strategy}, {plan.sharing} instances{objective}"))
        out.extend(_solver_lines(plan.solver))
    if not plan.feasible:
        out.append("")
        out.append(Heading("No feasible plan:"))
        for reason in plan.explanation:
            out.append(f"  - {reason}")
        if plan.baselines:
            out.append("")
            out.extend(baselines_blocks(plan))
        return out
    assert plan.cost is not None
    if header:
        out.append("")
    out.append(Heading("Models"))
    out.append(Table(["STAGE", "VARIANT", "REQ/S"],
                     [[st, v, plan.rate_per_s.get(st, 0.0)] for st, v in plan.models.items()]))
    out.append("")
    out.append(Heading("Placement"))
    rows = [[a.tier, _site(a.site, a.sites), a.instance, a.hardware, a.stage, a.variant, a.batch_size,
             a.rate_per_s, a.instances, _pct(a.utilization)] for a in plan.assignments]
    out.append(Table(["TIER", "SITE", "INSTANCE", "HARDWARE", "STAGE", "VARIANT", "BATCH", "REQ/S", "INSTANCES",
                      "UTIL"], rows, right={6, 7, 8, 9}))
    out.append("")
    out.append(Heading("Instances in use"))
    out.append(_instances_table(plan.instances))
    out.append("")
    out.append(Heading("Egress plan"))
    out.append(_links_table(plan.links))
    out.append("")
    out.append(Heading("Cost ($/hour)"))
    rows = [[tier, c.compute_per_hour, c.network_per_hour, c.compute_per_hour + c.network_per_hour]
            for tier, c in plan.cost.by_tier.items()]
    rows.append(["total", plan.cost.compute_per_hour, plan.cost.network_per_hour, plan.cost.total_per_hour])
    out.append(Table(["TIER", "COMPUTE", "NETWORK", "TOTAL"], rows))
    if plan.carbon is not None:
        out.append("")
        out.extend(carbon_blocks(plan))
    out.append("")
    out.extend(accuracy_blocks(plan))
    lat = "-" if plan.latency_ms is None else f"{plan.latency_ms:.1f} ms"
    p90 = "-" if plan.latency_ms_p90 is None else f"{plan.latency_ms_p90:.1f} ms"
    bound = "" if plan.latency_bound_ms is None else f"; bound {plan.latency_bound_ms:g} ms"
    out.append(f"Latency (worst path): {lat} mean, {p90} p90{bound}")
    if plan.baselines:
        out.append("")
        out.extend(baselines_blocks(plan))
    for warning in plan.warnings:
        out.append(f"warning: {warning}")
    return out


def _instances_table(instances: Sequence[InstanceUse]) -> Block:
    rows = [[i.tier, _site(i.site, i.sites), i.instance, f"{i.count}/{i.available}", i.price_per_hour,
             i.cost_per_hour, _pct(i.utilization), ", ".join(i.stages)] for i in instances]
    return Table(["TIER", "SITE", "INSTANCE", "USED/HAS", "$/H EACH", "$/H", "UTIL", "STAGES"], rows,
                 right={3, 4, 5, 6})


def _links_table(links: Sequence[LinkFlow]) -> Block:
    if not links:
        return "  (no traffic leaves any site)"
    rows = [[f"{link.from_} -> {link.to}" + (f" (x{len(link.sites)})" if len(link.sites) > 1 else ""),
             link.gb_per_hour, link.mbps, link.capacity_mbps if link.capacity_mbps is not None else "unlimited",
             _pct(link.utilization), link.cost_per_hour, ", ".join(link.carries)] for link in links]
    return Table(["LINK", "GB/H", "MBPS", "CAPACITY", "UTIL", "$/H", "CARRIES"], rows, right={1, 2, 3, 4, 5})


def render_joint_plan(joint: JointPlan) -> str:
    """:func:`joint_plan_blocks` as plain text."""
    return plain(joint_plan_blocks(joint))


def joint_plan_blocks(joint: JointPlan) -> list[Block]:
    """Several workflows planned together: the solve once, each workflow's plan (as one workflow's,
    without its header), what they use in all (cost per workflow, instances, links), the comparison
    with planning them one after another, and the baselines planning them together."""
    j = joint.joint
    objective = "" if j.objective == "cost" else f", objective {j.objective}"
    out: list[Block] = [Heading(f"Workflows {', '.join(j.workflows)} planned together on topology {j.topology}: "
                                f"strategy {j.strategy}, {j.sharing} instances{objective}")]
    if j.running:
        out.append(f"Kept as they run (their instances and bandwidth taken first): {', '.join(j.running)}")
    out.extend(_solver_lines(j.solver))
    if not joint.feasible:
        out += ["", Heading("No feasible joint plan:")] + [f"  - {reason}" for reason in joint.explanation]
        out += _sequential_lines(joint)
        if j.baselines:
            out += ["", *_baselines_blocks(j.baselines, j.strategy, "planning them together", carbon=False)]
        return out
    for plan in joint.workflows:
        out += ["", Heading(f"=== Workflow {plan.workflow} ==="), *plan_blocks(plan, header=False)]
    total = joint.total
    assert total.cost is not None
    out += ["", Heading("=== All workflows ==="), Heading("Cost ($/hour)")]
    carbon = total.carbon is not None
    rows = [[p.workflow, p.cost.compute_per_hour, p.cost.network_per_hour, p.cost.total_per_hour,
             *([p.carbon.total_g_per_hour if p.carbon else None] if carbon else [])]
            for p in joint.workflows if p.cost is not None]
    rows.append(["total", total.cost.compute_per_hour, total.cost.network_per_hour, total.cost.total_per_hour,
                 *([total.carbon.total_g_per_hour] if total.carbon is not None else [])])
    out.append(Table(["WORKFLOW", "COMPUTE", "NETWORK", "TOTAL", *(["GCO2/H"] if carbon else [])], rows))
    out += ["", Heading("Instances in use (every workflow's; an instance serves one workflow)"),
            _instances_table(total.instances)]
    out += ["", Heading("Links (every workflow's traffic)"), _links_table(total.links)]
    out += _sequential_lines(joint)
    if j.baselines:
        out += ["", *_baselines_blocks(j.baselines, j.strategy, "planning them together", carbon=carbon)]
    for warning in joint.warnings:
        out.append(f"warning: {warning}")
    return out


def _sequential_lines(joint: JointPlan) -> list[str]:
    """The comparison with planning the workflows one after another, in words."""
    seq = joint.joint.sequential
    if seq is None:
        return []
    order = ", then ".join(seq.order)
    head = f"One after another ({order}, each on what the ones before leave)"
    if not seq.feasible:
        return ["", f"{head}: no plan: {seq.reason}"]
    unit = {"cost": "$/h", "carbon": "gCO2/h", "cost+carbon": "$/h with carbon priced"}[joint.joint.objective]
    each = ", ".join(f"{name} {'-' if cost is None else f'${cost:.4f}/h'}" for name, cost in seq.by_workflow.items())
    lines = ["", f"{head}: {seq.objective_value:.4f} {unit} ({each})"]
    if seq.saving is not None:
        pct = "" if seq.saving_pct is None else f" ({seq.saving_pct:.1f}%)"
        if seq.saving == 0:
            lines.append("Planned together: the same")
        elif seq.saving > 0:
            lines.append(f"Planned together: {seq.saving:.4f} {unit} less{pct}")
        else:
            lines.append(f"Planned together: {-seq.saving:.4f} {unit} more{pct}, within the solver's gap")
    return lines


#: The widest reason shown in the baselines' table; a longer one is cut there with "..." and given
#: in full below the table (never cut silently).
WHY_NOT_WIDTH = 100


def render_carbon(plan: Plan) -> str:
    """:func:`carbon_blocks` as plain text."""
    return plain(carbon_blocks(plan))


def carbon_blocks(plan: Plan) -> list[Block]:
    """The Carbon section: average draw and gCO2/h per tier and in total, and how they were counted."""
    carbon = plan.carbon
    assert carbon is not None
    rows = [[tier, c.power_w, c.g_per_hour] for tier, c in carbon.by_tier.items()]
    rows.append(["total", carbon.power_w, carbon.total_g_per_hour])
    lines: list[Block] = [
        Heading(f"Carbon (instances in use at idle + (busy - idle) x utilisation; sites' intensity: {carbon.intensity})"),
        Table(["TIER", "POWER W", "GCO2/H"], rows)]
    if carbon.price_per_tonne is not None:
        lines.append(f"Carbon priced at ${carbon.price_per_tonne:g}/tCO2: ${carbon.cost_per_hour:.4f}/h "
                     "(in the objective, not in the cost above)")
    if carbon.budget_g_per_hour is not None:
        lines.append(f"Carbon budget: {carbon.budget_g_per_hour:g} gCO2/h")
    if carbon.uncounted:
        lines.append(f"Not counted (no power_w or site intensity): {', '.join(carbon.uncounted)}")
    return lines


def accuracy_blocks(plan: Plan) -> list[Block]:
    """The accuracy line (one sink), or a table of every sink's accuracy, target, worst-path latency
    and model; then the stages' minimums on their tasks' own metrics, where there are any."""
    out: list[Block] = []
    if len(plan.sinks) > 1:
        out.append(Heading("Accuracy by sink"))
        out.append(Table(["SINK", "ACCURACY", "TARGET", "LATENCY MS", "P90 MS", "HOW"],
                         [[s.stage, s.accuracy, s.accuracy_target, s.latency_ms, s.latency_ms_p90, s.accuracy_method]
                          for s in plan.sinks], right={1, 2, 3, 4}))
    else:
        acc = "-" if plan.accuracy is None else f"{plan.accuracy:.2f}"
        out.append(f"Accuracy: {acc} (target {plan.accuracy_target:g}; {plan.accuracy_method})")
    if plan.stage_minimums:
        out.append("")
        out.append(Heading("Stage minimums (on the task's own metric)"))
        out.append(Table(["STAGE", "METRIC", "MINIMUM", "VARIANT", "ITS ACCURACY"],
                         [[m.stage, m.metric, m.min_accuracy, m.variant, m.accuracy] for m in plan.stage_minimums],
                         right={2, 4}))
    return out


def _baseline_accuracy(b: BaselineResult) -> object:
    """The first sink's accuracy, or every sink's (``a / b``, in the sinks' order) when there are several."""
    if len(b.accuracy_by_sink) > 1:
        return " / ".join("-" if a is None else f"{a:.2f}" for a in b.accuracy_by_sink.values())
    return b.accuracy


def render_baselines(plan: Plan) -> str:
    """:func:`baselines_blocks` as plain text."""
    return plain(baselines_blocks(plan))


def baselines_blocks(plan: Plan) -> list[Block]:
    """The baselines' table: each strategy's cost, accuracy and the plan's saving against it, or why it
    has no plan."""
    return _baselines_blocks(plan.baselines, plan.strategy, "", carbon=plan.carbon is not None)


def _baselines_blocks(baselines: Sequence[BaselineResult], strategy: str, what: str, *,
                      carbon: bool) -> list[Block]:
    """A baselines' table (``what``: which planning they are baselines of), then the reasons cut short
    in it, in full."""
    rows: list[list[object]] = []
    in_full: list[str] = []
    for b in baselines:
        if b.feasible and b.cost:
            saving = "-" if b.saving_pct is None else f"{b.saving_pct:.1f}%"
            rows.append([b.strategy, "yes", b.cost.compute_per_hour, b.cost.network_per_hour, b.cost.total_per_hour,
                         *([b.carbon_g_per_hour] if carbon else []), _baseline_accuracy(b), saving, ""])
        else:
            reason = b.reason
            if len(reason) > WHY_NOT_WIDTH:
                reason = reason[:WHY_NOT_WIDTH - 3] + "..."
                in_full.append(f"  {b.strategy}: {b.reason}")
            rows.append([b.strategy, "no", None, None, None, *([None] if carbon else []), None, "-", reason])
    headers = ["STRATEGY", "FEASIBLE", "COMPUTE $/H", "NETWORK $/H", "TOTAL $/H", *(["GCO2/H"] if carbon else []),
               "ACCURACY", "SAVING", "WHY NOT"]
    out: list[Block] = [Heading(f"Baselines{f' {what}' if what else ''} (saving of {strategy} against each)"),
                        Table(headers, rows, right=set(range(2, len(headers) - 1)))]
    if in_full:
        out += ["", Heading("Why not, in full:"), *in_full]
    return out
