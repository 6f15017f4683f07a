"""Plain-text tables for the terminal, in the spirit of ``sky launch --dryrun``."""

from __future__ import annotations

from collections.abc import Sequence

from jellybean.optimizer.plan import JointPlan, Plan


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, right: set[int] | None = None) -> str:
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = right if right is not None else {
        i for i in range(len(headers)) if rows and all(_is_number(row[i]) for row in rows)}
    lines = []
    for k, row in enumerate(cells):
        parts = [c.rjust(widths[i]) if i in numeric else c.ljust(widths[i]) for i, c in enumerate(row)]
        lines.append("  ".join(parts).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.1f}"
        if abs(value) >= 1:
            return f"{value:.3f}"
        return f"{value:.4f}"
    return str(value)


def _site(site: str, sites: list[str]) -> str:
    return f"{site} (x{len(sites)})" if len(sites) > 1 else site


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _solver_lines(s) -> list[str]:  # noqa: ANN001 - SolverStats
    gap = "unknown" if s.gap is None else f"{100 * s.gap:.3f}%"
    lines = [f"Solver: {s.name}, status {s.status}, gap {gap}, {s.seconds:.2f} s"
             + (f", {s.variables} variables, {s.constraints} constraints" if s.variables else "")]
    return lines + [f"  note: {note}" for note in s.notes]


def render_plan(plan: Plan, *, header: bool = True) -> str:
    """One workflow's plan; ``header=False`` leaves out its first lines (workflow, strategy, solver),
    for a workflow shown within a joint plan (:func:`render_joint_plan`), which says them once."""
    out: list[str] = []
    objective = "" if plan.objective == "cost" else f", objective {plan.objective}"
    if header:
        out.append(f"Workflow {plan.workflow}: strategy {plan.strategy}, {plan.sharing} instances{objective}")
        out.extend(_solver_lines(plan.solver))
    if not plan.feasible:
        out.append("")
        out.append("No feasible plan:")
        for reason in plan.explanation:
            out.append(f"  - {reason}")
        if plan.baselines:
            out.append("")
            out.append(render_baselines(plan))
        return "\n".join(out)
    assert plan.cost is not None
    if header:
        out.append("")
    out.append("Models")
    out.append(table(["STAGE", "VARIANT", "REQ/S"],
                     [[st, v, plan.rate_per_s.get(st, 0.0)] for st, v in plan.models.items()]))
    out.append("")
    out.append("Placement")
    rows = [[a.tier, _site(a.site, a.sites), a.instance, a.hardware, a.stage, a.variant, a.batch_size,
             a.rate_per_s, a.instances, _pct(a.utilization)] for a in plan.assignments]
    out.append(table(["TIER", "SITE", "INSTANCE", "HARDWARE", "STAGE", "VARIANT", "BATCH", "REQ/S", "INSTANCES",
                      "UTIL"], rows, right={6, 7, 8, 9}))
    out.append("")
    out.append("Instances in use")
    out.append(_instances_table(plan.instances))
    out.append("")
    out.append("Egress plan")
    out.append(_links_table(plan.links))
    out.append("")
    out.append("Cost ($/hour)")
    rows = [[tier, c.compute_per_hour, c.network_per_hour, c.compute_per_hour + c.network_per_hour]
            for tier, c in plan.cost.by_tier.items()]
    rows.append(["total", plan.cost.compute_per_hour, plan.cost.network_per_hour, plan.cost.total_per_hour])
    out.append(table(["TIER", "COMPUTE", "NETWORK", "TOTAL"], rows))
    if plan.carbon is not None:
        out.append("")
        out.append(render_carbon(plan))
    out.append("")
    out.extend(render_accuracy(plan))
    lat = "-" if plan.latency_ms is None else f"{plan.latency_ms:.1f} ms"
    p90 = "-" if plan.latency_ms_p90 is None else f"{plan.latency_ms_p90:.1f} ms"
    bound = "" if plan.latency_bound_ms is None else f"; bound {plan.latency_bound_ms:g} ms"
    out.append(f"Latency (worst path): {lat} mean, {p90} p90{bound}")
    if plan.baselines:
        out.append("")
        out.append(render_baselines(plan))
    for warning in plan.warnings:
        out.append(f"warning: {warning}")
    return "\n".join(out)


def _instances_table(instances) -> str:  # noqa: ANN001 - InstanceUse rows
    rows = [[i.tier, _site(i.site, i.sites), i.instance, f"{i.count}/{i.available}", i.price_per_hour,
             i.cost_per_hour, _pct(i.utilization), ", ".join(i.stages)] for i in instances]
    return table(["TIER", "SITE", "INSTANCE", "USED/HAS", "$/H EACH", "$/H", "UTIL", "STAGES"], rows,
                 right={3, 4, 5, 6})


def _links_table(links) -> str:  # noqa: ANN001 - LinkFlow rows
    if not links:
        return "  (no traffic leaves any site)"
    rows = [[f"{l.from_} -> {l.to}" + (f" (x{len(l.sites)})" if len(l.sites) > 1 else ""), l.gb_per_hour,
             l.mbps, l.capacity_mbps if l.capacity_mbps is not None else "unlimited", _pct(l.utilization),
             l.cost_per_hour, ", ".join(l.carries)] for l in links]
    return table(["LINK", "GB/H", "MBPS", "CAPACITY", "UTIL", "$/H", "CARRIES"], rows, right={1, 2, 3, 4, 5})


def render_joint_plan(joint: JointPlan) -> str:
    """Several workflows planned together: the solve once, each workflow's plan (as one workflow's,
    without its header), what they use in all (cost per workflow, instances, links), the comparison
    with planning them one after another, and the baselines planning them together."""
    j = joint.joint
    objective = "" if j.objective == "cost" else f", objective {j.objective}"
    out = [(f"Workflows {', '.join(j.workflows)} planned together on topology {j.topology}: strategy {j.strategy}, "
            f"{j.sharing} instances{objective}")]
    if j.running:
        out.append(f"Kept as they run (their instances and bandwidth taken first): {', '.join(j.running)}")
    out.extend(_solver_lines(j.solver))
    if not joint.feasible:
        out += ["", "No feasible joint plan:"] + [f"  - {reason}" for reason in joint.explanation]
        out += _sequential_lines(joint)
        if j.baselines:
            out += ["", _baselines_table(j.baselines, j.strategy, "planning them together", carbon=False)]
        return "\n".join(out)
    for plan in joint.workflows:
        out += ["", f"=== Workflow {plan.workflow} ===", render_plan(plan, header=False)]
    total = joint.total
    assert total.cost is not None
    out += ["", "=== All workflows ===", "Cost ($/hour)"]
    carbon = total.carbon is not None
    rows = [[p.workflow, p.cost.compute_per_hour, p.cost.network_per_hour, p.cost.total_per_hour,
             *([p.carbon.total_g_per_hour if p.carbon else None] if carbon else [])]
            for p in joint.workflows if p.cost is not None]
    rows.append(["total", total.cost.compute_per_hour, total.cost.network_per_hour, total.cost.total_per_hour,
                 *([total.carbon.total_g_per_hour] if carbon else [])])
    out.append(table(["WORKFLOW", "COMPUTE", "NETWORK", "TOTAL", *(["GCO2/H"] if carbon else [])], rows))
    out += ["", "Instances in use (every workflow's; an instance serves one workflow)", _instances_table(total.instances)]
    out += ["", "Links (every workflow's traffic)", _links_table(total.links)]
    out += _sequential_lines(joint)
    if j.baselines:
        out += ["", _baselines_table(j.baselines, j.strategy, "planning them together", carbon=carbon)]
    for warning in joint.warnings:
        out.append(f"warning: {warning}")
    return "\n".join(out)


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
    """The Carbon section: average draw and gCO2/h per tier and in total, and how they were counted."""
    carbon = plan.carbon
    assert carbon is not None
    rows = [[tier, c.power_w, c.g_per_hour] for tier, c in carbon.by_tier.items()]
    rows.append(["total", carbon.power_w, carbon.total_g_per_hour])
    lines = [f"Carbon (instances in use at idle + (busy - idle) x utilisation; sites' intensity: {carbon.intensity})",
             table(["TIER", "POWER W", "GCO2/H"], rows)]
    if carbon.price_per_tonne is not None:
        lines.append(f"Carbon priced at ${carbon.price_per_tonne:g}/tCO2: ${carbon.cost_per_hour:.4f}/h "
                     "(in the objective, not in the cost above)")
    if carbon.budget_g_per_hour is not None:
        lines.append(f"Carbon budget: {carbon.budget_g_per_hour:g} gCO2/h")
    if carbon.uncounted:
        lines.append(f"Not counted (no power_w or site intensity): {', '.join(carbon.uncounted)}")
    return "\n".join(lines)


def render_accuracy(plan: Plan) -> list[str]:
    """The accuracy line (one sink), or a table of every sink's accuracy, target, worst-path latency
    and model; then the stages' minimums on their tasks' own metrics, where there are any."""
    out = []
    if len(plan.sinks) > 1:
        out.append("Accuracy by sink")
        out.append(table(["SINK", "ACCURACY", "TARGET", "LATENCY MS", "P90 MS", "HOW"],
                         [[s.stage, s.accuracy, s.accuracy_target, s.latency_ms, s.latency_ms_p90, s.accuracy_method]
                          for s in plan.sinks], right={1, 2, 3, 4}))
    else:
        acc = "-" if plan.accuracy is None else f"{plan.accuracy:.2f}"
        out.append(f"Accuracy: {acc} (target {plan.accuracy_target:g}; {plan.accuracy_method})")
    if plan.stage_minimums:
        out.append("")
        out.append("Stage minimums (on the task's own metric)")
        out.append(table(["STAGE", "METRIC", "MINIMUM", "VARIANT", "ITS ACCURACY"],
                         [[m.stage, m.metric, m.min_accuracy, m.variant, m.accuracy] for m in plan.stage_minimums],
                         right={2, 4}))
    return out


def _baseline_accuracy(b) -> object:  # noqa: ANN001 - a BaselineResult
    """The first sink's accuracy, or every sink's (``a / b``, in the sinks' order) when there are several."""
    if len(b.accuracy_by_sink) > 1:
        return " / ".join("-" if a is None else f"{a:.2f}" for a in b.accuracy_by_sink.values())
    return b.accuracy


def render_baselines(plan: Plan) -> str:
    return _baselines_table(plan.baselines, plan.strategy, "", carbon=plan.carbon is not None)


def _baselines_table(baselines, strategy: str, what: str, *, carbon: bool) -> str:  # noqa: ANN001 - BaselineResults
    rows, in_full = [], []
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
    header = f"Baselines{f' {what}' if what else ''} (saving of {strategy} against each)"
    headers = ["STRATEGY", "FEASIBLE", "COMPUTE $/H", "NETWORK $/H", "TOTAL $/H", *(["GCO2/H"] if carbon else []),
               "ACCURACY", "SAVING", "WHY NOT"]
    text = header + "\n" + table(headers, rows, right=set(range(2, len(headers) - 1)))
    if in_full:
        text += "\n\nWhy not, in full:\n" + "\n".join(in_full)
    return text
