"""What a deployed workflow reports, typed once: ``jellybean run``, the controller's API and the
operator all read these models (the summary of a run is a :class:`RunSummary`; a running pipeline's
state is a :class:`PipelineStatus`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

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
