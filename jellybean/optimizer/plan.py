"""The Plan: the contract between the planner and everything after it.

A pydantic model, serialised as the ``jellybean plan --format json`` output, stored by the
controller and shown in a custom resource's status. Its JSON shape is public (see README).
"""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from jellybean.optimizer.carbon import ObjectiveKind
from jellybean.optimizer.solution import Solution
from jellybean.spec.topology import Sharing


#: A link's direction: ``up`` towards the parent site (the cloud), ``down`` from it.
Direction = Literal["up", "down"]


class _Out(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid")


_T = TypeVar("_T")


class _Beside(Generic[_T]):
    """A value kept beside a model in memory and never part of it: not serialised, and equal to any
    other, so that a Plan made here equals the same Plan read back from its JSON."""

    __slots__ = ("value",)

    def __init__(self, value: _T | None = None) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return True

    __hash__ = None  # type: ignore[assignment]


class Assignment(_Out):
    """One stage served by one instance group at one site (or one class of identical sites)."""

    stage: str
    variant: str
    tier: str
    site: str = Field(description="The site (the first of `sites` when identical sites share this row).")
    sites: list[str] = Field(default_factory=list, description="All identical sites this row applies to, each alike.")
    instance: str = Field(description="The instance group's name at the site.")
    hardware: str
    batch_size: int
    rate_per_s: float = Field(description="Requests per second served at each site of the row.")
    instances: float = Field(description="Instances of the group serving the stage at each site "
                             "(shared mode: instances the stage's replicas spread over).")
    utilization: float = Field(description="Busy fraction of those instances due to this stage.")
    latency_ms: float = Field(description="Profiled latency of one batch.")


class InstanceUse(_Out):
    """An instance group's planned use, per site of the row."""

    tier: str
    site: str
    sites: list[str] = Field(default_factory=list)
    instance: str
    hardware: str
    count: int = Field(description="Instances in use at each site.")
    available: int = Field(description="Instances the group has (`count` or `max_count`) at each site.")
    price_per_hour: float
    cost_per_hour: float = Field(description="Total over all sites of the row.")
    utilization: float
    stages: list[str]
    power_w: float | None = Field(default=None, description="Average draw of one instance in use, W: idle + (busy - "
                                  "idle) x utilization (None: the topology gives no `power_w` or site intensity).")
    carbon_g_per_hour: float | None = Field(default=None, description="gCO2 per hour, total over all sites of the row.")


class LinkFlow(_Out):
    """Traffic on one direction of one uplink (per site of the row), and its price (total)."""

    from_: str = Field(alias="from")
    to: str
    direction: Direction
    sites: list[str] = Field(default_factory=list, description="Identical child sites this row applies to.")
    gb_per_hour: float = Field(description="GB (1024^3 bytes) per hour on each link of the row.")
    mbps: float
    capacity_mbps: float | None
    utilization: float | None
    cost_per_hour: float = Field(description="Total over all links of the row.")
    tier: str = Field(description="Tier of the child site owning the uplink.")
    carries: list[str] = Field(default_factory=list, description="Workflow edges on the link (`u->v`).")


class TierCost(_Out):
    compute_per_hour: float = 0.0
    network_per_hour: float = 0.0


class Cost(_Out):
    compute_per_hour: float
    network_per_hour: float
    total_per_hour: float
    by_tier: dict[str, TierCost] = Field(default_factory=dict)


class TierCarbon(_Out):
    power_w: float = Field(default=0.0, description="Average draw of the tier's instances in use, W.")
    g_per_hour: float = Field(default=0.0, description="gCO2 per hour.")


class Carbon(_Out):
    """What the plan's instances emit (:mod:`jellybean.optimizer.carbon`): each instance in use draws
    idle + (busy - idle) x its utilisation, W, at its site's grid intensity, gCO2/kWh."""

    total_g_per_hour: float = Field(description="gCO2 per hour, all instances in use.")
    power_w: float = Field(description="Average draw of all instances in use, W.")
    by_tier: dict[str, TierCarbon] = Field(default_factory=dict)
    intensity: str = Field(default="daily mean", description="How sites' intensity series were read: their daily "
                           "mean, or `at HH:MM UTC` (`jellybean plan --at`).")
    uncounted: list[str] = Field(default_factory=list, description="Instances in use without `power_w` or at a site "
                                 "without `carbon_intensity_g_per_kwh` (`site/instance`), counted as 0.")
    price_per_tonne: float | None = Field(default=None, description="$ per tonne CO2 (objective cost+carbon).")
    cost_per_hour: float | None = Field(default=None, description="The carbon at that price, $/h (not in `cost`).")
    budget_g_per_hour: float | None = Field(default=None, description="The carbon budget kept to, gCO2/h.")


class SolverStats(_Out):
    name: str = Field(description="`HiGHS`, `CBC` or the heuristic's name.")
    status: str = Field(description="`optimal`, `feasible` (time limit reached, gap > 0), `infeasible`, `heuristic`.")
    gap: float | None = Field(description="Relative optimality gap (0 = proven optimal); None when unknown.")
    seconds: float
    objective: float | None = None
    bound: float | None = None
    variables: int = 0
    constraints: int = 0
    notes: list[str] = Field(default_factory=list)


class SinkResult(_Out):
    """One sink (a stage no stage reads from): its end-to-end accuracy and worst-path latency."""

    stage: str
    accuracy: float | None = Field(default=None, description="Predicted end-to-end accuracy at the sink.")
    accuracy_target: float
    accuracy_method: str = Field(default="", description="How the sink's accuracy is modelled.")
    latency_ms: float | None = Field(default=None, description="Worst path from a source to the sink (as `latency_ms`).")
    latency_ms_p90: float | None = None


class StageMinimum(_Out):
    """A stage's minimum accuracy on its task's own metric (the workflow's `min_accuracy`), and what the
    plan's variant has."""

    stage: str
    metric: str = Field(description="The task's metric (the zoo's `metric`, e.g. mAP).")
    min_accuracy: float
    variant: str | None = None
    accuracy: float | None = Field(default=None, description="The chosen variant's own accuracy on the metric.")


class BaselineResult(_Out):
    strategy: str
    feasible: bool
    cost: Cost | None
    accuracy: float | None
    accuracy_by_sink: dict[str, float | None] = Field(default_factory=dict, description="Each sink's accuracy.")
    models: dict[str, str] = Field(default_factory=dict)
    saving_pct: float | None = Field(default=None, description="How much cheaper the main plan is, in % of this cost.")
    carbon_g_per_hour: float | None = Field(default=None, description="What this plan emits, gCO2/h (when known).")
    reason: str = ""
    seconds: float = 0.0


class Plan(_Out):
    workflow: str
    strategy: str
    sharing: Sharing
    feasible: bool
    models: dict[str, str] = Field(default_factory=dict, description="Chosen variant per stage.")
    assignments: list[Assignment] = Field(default_factory=list)
    instances: list[InstanceUse] = Field(default_factory=list)
    links: list[LinkFlow] = Field(default_factory=list)
    cost: Cost | None = None
    accuracy: float | None = Field(default=None, description="Predicted end-to-end accuracy at the sink (with several "
                                   "sinks, the first's; `sinks` has each).")
    accuracy_target: float = Field(description="The sink's accuracy target (with several sinks, the first's).")
    accuracy_method: str = ""
    sinks: list[SinkResult] = Field(default_factory=list, description="Every sink, in the workflow's order: its "
                                    "accuracy, target and worst-path latency.")
    stage_minimums: list[StageMinimum] = Field(default_factory=list, description="Every stage with a `min_accuracy`.")
    latency_ms: float | None = Field(default=None, description="Worst-path end-to-end latency (mean profiles, plus "
                                     "the runtime's hop and batching-wait bounds), over every sink.")
    latency_ms_p90: float | None = Field(default=None, description="Worst path with p90 profiles where known.")
    latency_ms_expected: float | None = Field(
        default=None, description="Expected end-to-end latency under the planned load (batches as they form, their "
        "wait, queueing, the runtime's hops): the prediction a measured median compares with.")
    latency_bound_ms: float | None = None
    rate_per_s: dict[str, float] = Field(default_factory=dict, description="Total request rate per stage.")
    solver: SolverStats
    baselines: list[BaselineResult] = Field(default_factory=list)
    explanation: list[str] = Field(default_factory=list, description="Why the problem is infeasible, in words.")
    warnings: list[str] = Field(default_factory=list)
    objective: ObjectiveKind = Field(
        default="cost", description="What was minimised: $/h, gCO2/h (then $/h), or $/h with carbon priced.")
    carbon: Carbon | None = Field(default=None, description="gCO2/h in total and per tier; None when the topology "
                                  "gives no power and carbon-intensity figures.")
    #: The decisions this plan was priced from (:attr:`solution`), kept beside it in memory.
    _solution: _Beside[Solution] = PrivateAttr(default_factory=_Beside)

    @property
    def solution(self) -> Solution | None:
        """The decisions this plan was priced from (a ``jellybean.optimizer.solution.Solution``), when
        it was made in this process and is feasible: several workflows' joint plan is split from it.
        Never serialised, and no part of the plan's value (a plan read back from JSON equals it)."""
        return self._solution.value

    def keep_solution(self, solution: Solution) -> None:
        self._solution = _Beside(solution)


# --- several workflows planned together (jellybean.optimizer.joint) ------------------------------


class JointTotal(_Out):
    """What the workflows planned together use in all: their plans summed. Stages are named
    ``workflow/stage`` here (in ``instances[].stages`` and ``links[].carries``)."""

    cost: Cost | None = None
    carbon: Carbon | None = None
    cost_by_workflow: dict[str, float] = Field(default_factory=dict, description="Each workflow's $/h (they add "
                                               "up to `cost.total_per_hour`).")
    instances: list[InstanceUse] = Field(default_factory=list, description="Each instance group in use, every "
                                         "workflow's instances counted (an instance serves one workflow).")
    links: list[LinkFlow] = Field(default_factory=list, description="Every workflow's traffic on each link, with "
                                  "its utilisation of the link's bandwidth.")


class SequentialComparison(_Out):
    """The same workflows planned one after another, in ``order``, each on what the ones before it
    leave of the topology (``capacity_left``): what the controller does when they are applied one by
    one. The joint plan is never dearer, up to the solvers' gaps."""

    order: list[str]
    feasible: bool
    cost: Cost | None = None
    carbon_g_per_hour: float | None = None
    by_workflow: dict[str, float | None] = Field(default_factory=dict, description="Each workflow's $/h "
                                                 "(None: it got no plan).")
    objective_value: float | None = Field(default=None, description="Their total in the objective's unit ($/h, "
                                          "gCO2/h, or $/h with carbon priced).")
    saving: float | None = Field(default=None, description="How much less the joint plan's objective is, in its "
                                 "unit (negative: the joint plan is dearer, within the solver's gap).")
    saving_pct: float | None = Field(default=None, description="`saving` in % of the sequential plans' objective.")
    reason: str = Field(default="", description="Why the sequential plans are not all there.")
    seconds: float = 0.0


class JointSummary(_Out):
    """How the workflows were planned together."""

    workflows: list[str]
    topology: str
    strategy: str
    sharing: Sharing
    objective: ObjectiveKind = "cost"
    solver: SolverStats
    baselines: list[BaselineResult] = Field(default_factory=list, description="Every other strategy, planning the "
                                            "same workflows together.")
    sequential: SequentialComparison | None = Field(default=None, description="Planning them one after another "
                                                    "instead (None: not asked for).")
    running: list[str] = Field(default_factory=list, description="Workflows kept as they run: what they use was "
                               "taken from the topology first.")


class JointPlan(_Out):
    """Several workflows planned together on one topology: one Plan per workflow (each deployable
    alone, as a single workflow's), what they use in all, and how the joint plan was found and
    compares with planning them one after another. The JSON of ``jellybean plan`` with several
    workflows."""

    feasible: bool
    workflows: list[Plan]
    total: JointTotal
    joint: JointSummary
    explanation: list[str] = Field(default_factory=list, description="Why no joint plan exists, in words.")
    warnings: list[str] = Field(default_factory=list)
    #: The joint plan as one Plan over every workflow (:attr:`combined`), kept beside it in memory.
    _combined: _Beside[Plan] = PrivateAttr(default_factory=_Beside)

    @property
    def combined(self) -> Plan | None:
        """The joint plan as one Plan over every workflow (stages named ``workflow/stage``): what a
        picture of the whole topology draws; when it was made in this process (never serialised, and
        no part of the value)."""
        return self._combined.value

    def keep_combined(self, combined: Plan) -> None:
        self._combined = _Beside(combined)
