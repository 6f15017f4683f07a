"""What a deployed workflow reports, typed once: ``jellybean run``, the controller's API and the
operator all read these models (the summary of a run is a :class:`RunSummary`; a running pipeline's
state is a :class:`PipelineStatus`; a workflow's, as the controller and the operator see it, a
:class:`WorkflowStatus`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from jellybean.optimizer.plan import SinkResult
from jellybean.runtime.reconcile import Phase

PipelineState = Literal["starting", "running", "degraded", "failed", "stopped"]


class Frames(BaseModel):
    sent: int = 0
    completed: int = 0
    failed: int = 0
    in_flight: int = 0
    lost: int = Field(default=0, description="Sent, and neither completed, failed nor in flight: must stay 0.")


class SinkStatus(BaseModel):
    """One sink's frames (of the sources that reach it) and its accuracy: measured on the frames that
    carry a ground truth, against what the plan predicts and the target."""

    sink: str
    frames: Frames = Frames()
    accuracy_measured: float | None = None
    accuracy_predicted: float | None = None
    accuracy_target: float | None = None
    latency_ms_p50: float | None = Field(default=None, description="From a frame leaving its source to its end here.")


class StageStatus(BaseModel):
    stage: str
    site: str
    variant: str
    replicas_planned: int
    replicas_alive: int
    rate_planned_per_s: float
    rate_measured_per_s: float
    batches: int
    mean_batch_size: float | None


class Endpoint(BaseModel):
    """Where data enters or results leave: an ingest URL per (source, site), an output's stream URL,
    webhook receiver or file."""

    kind: Literal["ingest", "stream", "webhook", "file"]
    name: str = Field(description="The source or the output.")
    site: str
    url: str | None = None
    path: str | None = None


class OutputStatus(BaseModel):
    output: str
    site: str
    kind: str
    accepted: int = 0
    delivered: int | None = None
    failed: int = 0
    dropped: int = 0
    backlog: int = 0
    last_error: str = ""


class PipelineStatus(BaseModel):
    state: PipelineState
    stages: list[StageStatus] = []
    frames: Frames = Frames()
    failures: dict[str, int] = {}
    endpoints: list[Endpoint] = []
    outputs: list[OutputStatus] = []
    accuracy_measured: float | None = None
    sinks: list[SinkStatus] = Field(default_factory=list, description="Every sink's frames and measured accuracy.")
    throughput_per_s: float | None = Field(default=None, description="Frames completed per second, recently.")
    held_messages: int = 0
    shed: int = 0
    supervisor: dict | None = None


class Predicted(BaseModel):
    throughput_per_s: float
    accuracy: float | None
    latency_ms_p50: float | None
    cost_per_hour: float | None


class Measured(BaseModel):
    throughput_per_s: float
    accuracy: float | None
    latency_ms_p50: float | None
    latency_ms_p99: float | None
    hop_overhead_ms_p50: float | None = None
    hop_overhead_ms_p99: float | None = None


class RunSummary(BaseModel):
    workflow: str
    duration_s: float
    predicted: Predicted
    measured: Measured
    frames: Frames
    failures: dict[str, int] = {}
    sinks: list[SinkStatus] = []
    stages: list[StageStatus] = []
    endpoints: list[Endpoint] = []
    outputs: list[OutputStatus] = []
    time_to_first_result_s: float | None = None
    first_result_at_unix: float | None = None
    #: Which cores each instance and the rest were given (see jellybean.runtime.affinity).
    cpu_pinning: dict = {}
    plan: dict = {}


# --------------------------------------------------------------------------------------------------
# a workflow's status: one model for `jellybean status`, the controller's HTTP API and the operator's
# custom-resource status (jellybean.k8s.operator renders it as the CRD's fields and conditions)


class StageRow(BaseModel):
    stage: str | None
    site: str | None
    variant: str | None = Field(description="The planned variant.")
    variant_running: str | None = None
    replicas_planned: int
    replicas_alive: int
    rate_planned_per_s: float
    rate_measured_per_s: float | None = None


class PlanSummary(BaseModel):
    strategy: str | None = None
    sharing: str | None = None
    cost_per_hour: float | None = None
    accuracy: float | None = None
    accuracy_target: float | None = None
    latency_ms_p90: float | None = None
    models: dict[str, str] = Field(default_factory=dict)
    sinks: list[SinkResult] = Field(default_factory=list, description="Every sink's predicted accuracy and target.")


class EventOut(BaseModel):
    id: int
    at: float
    workflow: str | None
    event: str
    detail: dict[str, Any]


class LastFailure(BaseModel):
    """The workflow's last failure (kept after it recovers, until the workflow is deleted)."""

    reason: str = Field(description="`DeployFailed` (its pipeline did not start), `PlanError`, `Infeasible`, "
                        "`NotServable`, `InvalidSpec`, ... (the operator's condition reasons).")
    message: str
    at: float | None = Field(default=None, description="When (unix time).")
    attempts: int | None = Field(default=None, description="Failed attempts of that version in a row.")
    retry_in_s: float | None = Field(default=None, description="Seconds until the next try; None when it runs "
                                     "now or waits for a change.")


class WorkflowStatus(BaseModel):
    name: str
    phase: Phase
    message: str = ""
    generation: int | None
    digest: str | None
    running_generation: int | None
    running_digest: str | None
    zoo: str | None
    topology: str | None
    applied_at: float | None
    started_at: float | None
    plan: PlanSummary | None
    stages: list[StageRow]
    frames: dict[str, int] | None = Field(description="`sent`, `completed`, `failed`, `in_flight`, `lost` (running "
                                          "only).")
    endpoints: list[Endpoint] = Field(default_factory=list, description="Where data enters (an ingest URL per source "
                                      "and site) and results leave (stream URLs, webhooks, files).")
    outputs: list[OutputStatus] = Field(default_factory=list, description="Results at each output: accepted, "
                                        "delivered, failed, dropped, backlog.")
    accuracy_measured: float | None = Field(default=None, description="On the completed frames that carry a ground truth.")
    sinks: list[SinkStatus] = Field(default_factory=list, description="Every sink's frames and measured accuracy "
                                    "(running only).")
    throughput_per_s: float | None = Field(default=None, description="Frames completed per second, recently.")
    frames_lost: int | None = Field(default=None, description="Frames sent and never accounted for (running only; "
                                    "must stay 0).")
    last_failure: LastFailure | None = None
    events: list[EventOut] = Field(default_factory=list)


class WorkflowSummary(BaseModel):
    name: str
    phase: Phase
    message: str = ""
    generation: int | None
    running_generation: int | None
    cost_per_hour: float | None
    accuracy: float | None = Field(description="Predicted by the plan.")
    replicas_alive: int
    replicas_planned: int
    applied_at: float | None
    accuracy_measured: float | None = None
    throughput_per_s: float | None = None
    frames_lost: int | None = None
    last_failure: LastFailure | None = None
