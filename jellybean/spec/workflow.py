"""The ``Workflow`` document: sources, a DAG of stages, and the service-level objective.

Rates propagate along edges: a stage fed by input ``u`` with ``ratio`` r receives r requests per
request of ``u`` (r may depend on ``u``'s chosen variant through ``ratio_by_variant``, e.g. vehicle
crops per frame depend on the detector). Each request of a stage receives one message from each
of its inputs, so a stage with several inputs (a join) pairs them one to one: the rates arriving
on all of its inputs must agree, and the stage's rate is that common rate.

The SLO names an end-to-end accuracy target at the workflow's sink (the stage nothing consumes),
in the zoo's unit, and optionally a bound on the end-to-end latency in milliseconds.

Data in and out. A source's frames arrive over HTTP at an ingest endpoint served at each of its
sites (``ingest: http``, the default) or are replayed from a registered dataset (``replay: NAME``,
for demos and benchmarks). A payload decodes to one named array (``payload``: its name, and the
dtype and shape it must have, so that a malformed payload is refused at the endpoint). The sink's
results go to the workflow's ``outputs``: a ``stream`` (NDJSON, read with long polling), a
``webhook`` (batched POSTs, retried) or a ``file`` (JSONL, rotated). An output served where the sink
runs moves no data; one pinned to another ``site`` receives its results over the tree's links, and
the planner prices that flow (``ratio`` results per request of the sink, ``result_kb`` each).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from jellybean.spec.common import API_VERSION, Metadata, Name, StrictModel, Tier
from jellybean.spec.errors import LocatedValueError, did_you_mean, listed


#: The array a payload decodes to, by the kind of source, when ``payload.name`` is not given.
DEFAULT_ARRAY = {"camera": "image", "microphone": "audio", "sensor": "data"}
DTYPES = ("float32", "float64", "float16", "uint8", "int8", "int16", "int32", "int64", "bool")


class Payload(StrictModel):
    """What one payload of the source is once decoded: one named array (``.npy``, PNG/JPEG images,
    WAV audio, or JSON numbers). With ``dtype`` and ``shape`` the ingest endpoint refuses payloads that
    differ (400) instead of handing a replica something its model cannot take."""

    name: Name | None = Field(default=None, description="Field of the message the array goes to (default by the "
                              "source's kind: image, audio or data).")
    dtype: Literal[DTYPES] | None = Field(default=None, description="Element type the array must have (images and "
                                          "audio are converted: uint8 or int16 samples become float32 in [0, 1] / "
                                          "[-1, 1] when float32 is asked).")
    shape: list[int] | None = Field(default=None, min_length=1, max_length=8,
                                    description="Shape the array must have; -1 for any length on an axis.")

    @field_validator("shape")
    @classmethod
    def _axes(cls, shape: list[int] | None) -> list[int] | None:
        if shape is not None and any(n == 0 or n < -1 for n in shape):
            raise ValueError("every axis is a positive length, or -1 for any")
        return shape


class Source(StrictModel):
    """A group of identical data sources (cameras, microphones), ``count_per_site`` at each listed site."""

    name: Name
    kind: Literal["camera", "microphone", "sensor"] = "camera"
    rate_per_s: float = Field(gt=0, description="Requests (frames, utterances) per second from one source.")
    payload_kb: float = Field(gt=0, description="Size of one request in KB (1024 bytes), as the data plane carries "
                              "it: the payload plus the runtime's frame id, source, site and timestamps (about 60 "
                              "bytes). The planner adds the links' framing (Topology.message_framing).")
    sites: list[Name] = Field(min_length=1, description="Sites the sources are attached to.")
    count_per_site: int = Field(default=1, ge=1, description="Sources of this group at each listed site.")
    ingest: Literal["http"] | None = Field(
        default=None, description="How frames arrive: `http`, an ingest endpoint at each of the source's sites (the "
        "default unless `replay` is given).")
    replay: Name | None = Field(
        default=None, description="Registered dataset the runtime replays at `rate_per_s` instead (demos, benchmarks; "
        "e.g. digits-frames).")
    dataset: Name | None = Field(default=None, description="The older name of `replay` (still read).")
    payload: Payload | None = Field(default=None, description="What a payload decodes to, for `ingest: http`.")

    @model_validator(mode="after")
    def _one_way_in(self) -> "Source":
        if self.replay is not None and self.dataset is not None:
            raise LocatedValueError(("dataset",), "`dataset` is the older name of `replay`: give one of them",
                                    "keep `replay`")
        if self.ingest is not None and self.replay_dataset is not None:
            field = "replay" if self.replay is not None else "dataset"
            raise LocatedValueError((field,), "a source is either ingested over HTTP or replayed, not both",
                                    "remove `ingest` or the dataset")
        return self

    @property
    def replay_dataset(self) -> str | None:
        """The dataset replayed for this source (``replay``, or its older name ``dataset``), or None."""
        return self.replay if self.replay is not None else self.dataset

    @property
    def mode(self) -> Literal["http", "replay"]:
        return "replay" if self.replay_dataset is not None else "http"

    @property
    def array_name(self) -> str:
        """The message field a decoded payload goes to."""
        return (self.payload.name if self.payload and self.payload.name else None) or DEFAULT_ARRAY[self.kind]


class Output(StrictModel):
    """Where the sink's results go. Each result carries ``frame_id``, ``source``, ``site``,
    ``received_at``, ``completed_at`` and the sink's output fields."""

    name: Name
    kind: Literal["stream", "webhook", "file"] = Field(
        description="`stream`: NDJSON at an endpoint (GET ...?after=OFFSET, long polling); `webhook`: POSTed to "
        "`url` in batches, retried with backoff; `file`: JSONL, rotated by size.")
    site: Name | None = Field(
        default=None, description="Site the results are delivered at. Default: wherever the sink runs (no result "
        "crosses a link); a site elsewhere receives them over the tree's links, priced in the plan.")
    url: str | None = Field(default=None, max_length=2048, description="The receiver, for `webhook` (http:// or https://).")
    ratio: float = Field(default=1.0, gt=0, description="Results per request of the sink (for pricing a pinned output).")
    result_kb: float | None = Field(default=None, gt=0, description="Size of one result in KB (default: the sink "
                                    "variant's `output_kb`).")
    batch_max: int = Field(default=100, ge=1, le=10_000, description="`webhook`: results per POST at most.")
    flush_ms: float = Field(default=200.0, gt=0, description="`webhook`: longest a result waits for its POST.")
    give_up_s: float = Field(default=300.0, gt=0, description="`webhook`: how long a batch is retried (backoff) "
                             "before its results are counted as failed deliveries.")
    rotate_mb: float = Field(default=64.0, gt=0, description="`file`: size at which the file is rotated.")
    keep: int = Field(default=5, ge=1, le=1000, description="`file`: rotated files kept.")
    retain: int = Field(default=100_000, ge=1, le=10_000_000, description="`stream`: results kept for readers.")

    @model_validator(mode="after")
    def _fields_of_the_kind(self) -> "Output":
        if self.kind == "webhook":
            if self.url is None:
                raise LocatedValueError(("url",), "a webhook output needs `url`", "give the receiver's http(s) URL")
            if not self.url.startswith(("http://", "https://")) or len(self.url.split("://", 1)[1]) < 1:
                raise LocatedValueError(("url",), f"not an http:// or https:// URL: {self.url[:80]!r}",
                                        "give the receiver's http(s) URL")
        elif self.url is not None:
            raise LocatedValueError(("url",), f"`url` is for webhook outputs, not {self.kind}", "remove it")
        return self


class StageInput(StrictModel):
    from_: Name = Field(alias="from", description="A source group or a stage.")
    ratio: float = Field(default=1.0, gt=0, description="Requests of this stage per request of the input.")
    ratio_by_variant: dict[Name, float] = Field(
        default_factory=dict, description="Ratio per variant of the input stage, overriding `ratio`."
    )


class Placement(StrictModel):
    tiers: list[Tier] | None = Field(default=None, description="Tiers the stage may run in.")
    sites: list[Name] | None = Field(default=None, description="Sites the stage may run at.")


class Stage(StrictModel):
    name: Name
    task: Name = Field(description="A task of the ModelZoo.")
    inputs: list[StageInput | Name] = Field(min_length=1)
    variants: list[Name] | None = Field(default=None, description="Restrict the variants considered.")
    batch_sizes: list[int] | None = Field(default=None, description="Restrict the batch sizes considered.")
    placement: Placement | None = None

    def input_specs(self) -> list[StageInput]:
        return [i if isinstance(i, StageInput) else StageInput(**{"from": i}) for i in self.inputs]


class SLO(StrictModel):
    accuracy: float = Field(description="End-to-end accuracy target at the sink, in the zoo's unit.")
    latency_ms: float | None = Field(default=None, gt=0, description="Bound on the end-to-end latency (worst path).")
    latency_percentile: Literal["mean", "p90"] = Field(
        default="p90", description="Profile the latency bound is checked on (p90 falls back to the mean where not profiled)."
    )
    accuracy_table: Name | None = Field(
        default=None, description="Name of the zoo's end-to-end accuracy table to use (default: any that covers the stages)."
    )


class WorkflowSpec(StrictModel):
    zoo: Name | None = Field(default=None, description="ModelZoo to use (default: the only one given).")
    topology: Name | None = Field(default=None, description="Topology to use (default: the only one given).")
    sources: list[Source] = Field(min_length=1)
    stages: list[Stage] = Field(min_length=1)
    slo: SLO
    outputs: list[Output] = Field(default_factory=list, description="Where the sink's results go (none: they are "
                                  "counted and dropped).")

    @model_validator(mode="after")
    def _dag(self) -> "WorkflowSpec":
        names: dict[str, str] = {}
        for i, source in enumerate(self.sources):
            if source.name in names:
                raise LocatedValueError(("sources", i, "name"), f"name {source.name!r} is used twice")
            names[source.name] = "source"
        for i, stage in enumerate(self.stages):
            if stage.name in names:
                raise LocatedValueError(("stages", i, "name"),
                                        f"name {stage.name!r} is used twice (sources and stages share one namespace)")
            names[stage.name] = "stage"
        stage_names = {s.name for s in self.stages}
        for i, stage in enumerate(self.stages):
            for j, inp in enumerate(stage.input_specs()):
                where = ("stages", i, "inputs", j, "from")
                if inp.from_ not in names:
                    raise LocatedValueError(where, f"stage {stage.name!r} reads from unknown input {inp.from_!r}"
                                            f"{did_you_mean(inp.from_, names)}",
                                            f"sources and stages: {listed(names)}")
                if inp.from_ == stage.name:
                    raise LocatedValueError(where, f"stage {stage.name!r} reads from itself")
                if inp.ratio_by_variant and inp.from_ not in stage_names:
                    raise LocatedValueError(
                        ("stages", i, "inputs", j, "ratio_by_variant"),
                        f"stage {stage.name!r}: `ratio_by_variant` applies to stage inputs, but {inp.from_!r} is a source")
        order = topological_order(self)
        if order is None:
            i, j, cycle = _closing_input(self)
            raise LocatedValueError(("stages", i, "inputs", j, "from"),
                                    f"stages form a cycle: {' -> '.join(cycle)}; a workflow must be a DAG",
                                    "remove the input that closes the loop")
        consumed = {i.from_ for s in self.stages for i in s.input_specs()}
        sinks = [s.name for s in self.stages if s.name not in consumed]
        if len(sinks) != 1:
            raise LocatedValueError(
                ("stages",),
                f"a workflow needs exactly one sink stage (one that no stage reads from); found {len(sinks)}: "
                f"{', '.join(sinks)}")
        seen_outputs: set[str] = set()
        for i, output in enumerate(self.outputs):
            if output.name in seen_outputs:
                raise LocatedValueError(("outputs", i, "name"), f"output name {output.name!r} is used twice")
            seen_outputs.add(output.name)
        for i, source in enumerate(self.sources):
            if source.name not in consumed:
                unused = [s.name for s in self.sources if s.name not in consumed]
                raise LocatedValueError(("sources", i), f"sources not read by any stage: {', '.join(unused)}")
        return self

    @property
    def sink(self) -> str:
        consumed = {i.from_ for s in self.stages for i in s.input_specs()}
        return next(s.name for s in self.stages if s.name not in consumed)


def topological_order(spec: WorkflowSpec) -> list[str] | None:
    """Stages in topological order (Kahn's algorithm, stable by declaration), or None on a cycle."""
    stage_names = [s.name for s in spec.stages]
    deps = {s.name: {i.from_ for i in s.input_specs() if i.from_ in set(stage_names)} for s in spec.stages}
    order: list[str] = []
    done: set[str] = set()
    while len(order) < len(stage_names):
        ready = [n for n in stage_names if n not in done and deps[n] <= done]
        if not ready:
            return None
        order.append(ready[0])
        done.add(ready[0])
    return order


def _closing_input(spec: WorkflowSpec) -> tuple[int, int, list[str]]:
    """An input that closes a cycle: (stage index, input index, the stages around the cycle in the
    direction data flows). Walks downstream from the stages declared first, so the input reported is
    the one that reads from a stage declared further down (usually the one added by mistake)."""
    consumers: dict[str, list[tuple[int, int]]] = {s.name: [] for s in spec.stages}
    for i, stage in enumerate(spec.stages):
        for j, inp in enumerate(stage.input_specs()):
            if inp.from_ in consumers:
                consumers[inp.from_].append((i, j))
    state: dict[str, int] = {}  # 1 = on the current walk, 2 = leads to no cycle
    for root in spec.stages:
        if root.name in state:
            continue
        walk, pending = [root.name], [iter(consumers[root.name])]
        state[root.name] = 1
        while pending:
            step = next(pending[-1], None)
            if step is None:
                state[walk.pop()] = 2
                pending.pop()
                continue
            name = spec.stages[step[0]].name
            if state.get(name) == 1:
                return step[0], step[1], walk[walk.index(name):] + [name]
            if name not in state:
                state[name] = 1
                walk.append(name)
                pending.append(iter(consumers[name]))
    raise AssertionError("topological_order found a cycle that the walk did not")


class Workflow(StrictModel):
    apiVersion: Literal["jellybean.io/v1alpha1"] = API_VERSION
    kind: Literal["Workflow"] = "Workflow"
    metadata: Metadata
    spec: WorkflowSpec
