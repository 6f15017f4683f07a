"""The ``Workflow`` document: sources, a DAG of stages, and the service-level objective.

Rates propagate along edges: a stage fed by input ``u`` with ``ratio`` r receives r requests per
request of ``u`` (r may depend on ``u``'s chosen variant through ``ratio_by_variant``, e.g. vehicle
crops per frame depend on the detector). Each request of a stage receives one message from each
of its inputs, so a stage with several inputs (a join) pairs them one to one: the rates arriving
on all of its inputs must agree, and the stage's rate is that common rate.

A *sink* is a stage no stage reads from. A workflow may have several (cameras -> vision and
microphones -> keywords, in one store), each with an end-to-end accuracy target of its own, in the
zoo's unit: ``slo.sinks`` gives a sink its own target (and, optionally, the end-to-end table it is
measured by); ``slo.accuracy`` is the target of every sink ``slo.sinks`` does not list (of the only
sink, in a workflow with one). A sink's end-to-end accuracy depends on the variants of the sink and
of every stage upstream of it, and on nothing else. The SLO may also bound the end-to-end latency in
milliseconds (every sink's worst path). A stage may carry ``min_accuracy``: the lowest accuracy its
variant may have on its task's own metric (a detector's mAP >= 45), which is often what users mean,
rather than one product of unrelated metrics; it is checked on the variant's own ``accuracy``.

Data in and out. A source's frames arrive over HTTP at an ingest endpoint served at each of its
sites (``ingest: http``, the default) or are replayed from a registered dataset (``replay: NAME``,
for demos and benchmarks). A payload decodes to one named array (``payload``: its name, and the
dtype and shape it must have, so that a malformed payload is refused at the endpoint). The sinks'
results go to the workflow's ``outputs``: a ``stream`` (NDJSON, read with long polling), a
``webhook`` (batched POSTs, retried) or a ``file`` (JSONL, rotated). An output carries the results of
the sinks it names (``sinks``; default: every sink's), each result saying which sink made it. An
output served where its sinks run moves no data; one pinned to another ``site`` receives their
results over the tree's links, and the planner prices that flow (``ratio`` results per request of
each sink, ``result_kb`` each).
"""

from __future__ import annotations

import heapq
from typing import Literal, get_args

from pydantic import Field, field_validator, model_validator

from jellybean.spec.common import API_VERSION, Metadata, Name, StrictModel, Tier, first_repeat
from jellybean.spec.errors import Loc, LocatedValueError, did_you_mean, listed


#: The array a payload decodes to, by the kind of source, when ``payload.name`` is not given.
DEFAULT_ARRAY = {"camera": "image", "microphone": "audio", "sensor": "data"}
PayloadDtype = Literal["float32", "float64", "float16", "uint8", "int8", "int16", "int32", "int64", "bool"]
DTYPES: tuple[str, ...] = get_args(PayloadDtype)


class Payload(StrictModel):
    """What one payload of the source is once decoded: one named array (``.npy``, PNG/JPEG images,
    WAV audio, or JSON numbers). With ``dtype`` and ``shape`` the ingest endpoint refuses payloads that
    differ (400) instead of handing a replica something its model cannot take."""

    name: Name | None = Field(default=None, description="Field of the message the array goes to (default by the "
                              "source's kind: image, audio or data).")
    dtype: PayloadDtype | None = Field(default=None, description="Element type the array must have (images and "
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
    def _one_way_in(self) -> Source:
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
    """Where sinks' results go. Each result carries ``frame_id``, ``source``, ``site``, ``sink`` (the
    stage that made it), ``received_at``, ``completed_at`` and the sink's output fields."""

    name: Name
    kind: Literal["stream", "webhook", "file"] = Field(
        description="`stream`: NDJSON at an endpoint (GET ...?after=OFFSET, long polling); `webhook`: POSTed to "
        "`url` in batches, retried with backoff; `file`: JSONL, rotated by size.")
    sinks: list[Name] | None = Field(
        default=None, min_length=1, description="The sinks (stages no stage reads from) whose results this output "
        "receives. Default: every sink's. Each result names its sink in its `sink` field.")
    site: Name | None = Field(
        default=None, description="Site the results are delivered at. Default: wherever its sinks run (no result "
        "crosses a link); a site elsewhere receives them over the tree's links, priced in the plan.")
    url: str | None = Field(default=None, max_length=2048, description="The receiver, for `webhook` (http:// or https://).")
    ratio: float = Field(default=1.0, gt=0, description="Results per request of each of its sinks (for pricing a "
                         "pinned output).")
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
    def _fields_of_the_kind(self) -> Output:
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
    min_accuracy: float | None = Field(
        default=None, description="Lowest accuracy the stage's variant may have on its task's own metric (the zoo "
        "task's `metric`, e.g. a detector's mAP), in the zoo's unit: only variants at least this accurate are "
        "chosen. Unlike the end-to-end targets of `slo`, it reads the variant's own `accuracy`.")

    def input_specs(self) -> list[StageInput]:
        return [i if isinstance(i, StageInput) else StageInput(from_=i) for i in self.inputs]


class SinkObjective(StrictModel):
    """One sink's end-to-end accuracy target (a sink: a stage no stage reads from)."""

    stage: Name = Field(description="The sink.")
    accuracy: float = Field(description="End-to-end accuracy target at this sink, in the zoo's unit.")
    accuracy_table: Name | None = Field(
        default=None, description="Name of the zoo's end-to-end accuracy table this sink is measured by (default: "
        "any that covers the sink and the stages upstream of it).")


class SLO(StrictModel):
    accuracy: float | None = Field(
        default=None, description="End-to-end accuracy target at the sink, in the zoo's unit. With several sinks: "
        "the target of every sink that `sinks` does not list (needed unless `sinks` lists every sink).")
    latency_ms: float | None = Field(default=None, gt=0, description="Bound on the end-to-end latency (worst path).")
    latency_percentile: Literal["mean", "p90"] = Field(
        default="p90", description="Profile the latency bound is checked on (p90 falls back to the mean where not profiled)."
    )
    accuracy_table: Name | None = Field(
        default=None, description="Name of the zoo's end-to-end accuracy table to use (default: any that covers the "
        "stages), for every sink that `sinks` does not list."
    )
    sinks: list[SinkObjective] = Field(
        default_factory=list, description="Sinks with a target of their own (a workflow may have several sinks, e.g. "
        "cameras -> vision and microphones -> keywords); the others take `accuracy` and `accuracy_table`.")


class WorkflowSpec(StrictModel):
    zoo: Name | None = Field(default=None, description="ModelZoo to use (default: the only one given).")
    topology: Name | None = Field(default=None, description="Topology to use (default: the only one given).")
    sources: list[Source] = Field(min_length=1)
    stages: list[Stage] = Field(min_length=1)
    slo: SLO
    outputs: list[Output] = Field(default_factory=list, description="Where the sinks' results go (none: they are "
                                  "counted and dropped).")

    @model_validator(mode="after")
    def _dag(self) -> WorkflowSpec:
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
        self._check_objectives(consumed)
        seen_outputs: set[str] = set()
        for i, output in enumerate(self.outputs):
            if output.name in seen_outputs:
                raise LocatedValueError(("outputs", i, "name"), f"output name {output.name!r} is used twice")
            seen_outputs.add(output.name)
            for j, sink in enumerate(output.sinks or []):
                if sink not in stage_names or sink in consumed:
                    self._not_a_sink(sink, consumed, ("outputs", i, "sinks", j), f"output {output.name!r}")
            sinks = output.sinks or []
            repeat = first_repeat(sinks)
            if repeat is not None:
                raise LocatedValueError(("outputs", i, "sinks", repeat),
                                        f"output {output.name!r} lists sink {sinks[repeat]!r} twice", "keep one")
        for i, source in enumerate(self.sources):
            if source.name not in consumed:
                unused = [s.name for s in self.sources if s.name not in consumed]
                raise LocatedValueError(("sources", i), f"sources not read by any stage: {', '.join(unused)}")
        return self

    def _not_a_sink(self, name: str, consumed: set[str], loc: Loc, what: str) -> None:
        """Refuse ``name`` (named by ``what`` at ``loc``), which is not a sink (a stage that no stage
        reads from): an unknown stage, or one that is read from. (Called on the error only: a long
        list of references costs one set lookup each.)"""
        stages = [s.name for s in self.stages]
        sinks = [s for s in stages if s not in consumed]
        if name not in stages:
            raise LocatedValueError(loc, f"{what} names unknown stage {name!r}{did_you_mean(name, sinks or stages)}",
                                    f"sinks: {listed(sinks)}")
        if name in consumed:
            readers = [s.name for s in self.stages if any(i.from_ == name for i in s.input_specs())]
            raise LocatedValueError(loc, f"{what} names stage {name!r}, which is not a sink ({listed(readers)} "
                                    "read from it)", f"name a stage no stage reads from: {listed(sinks)}")

    def _check_objectives(self, consumed: set[str]) -> None:
        """Every ``slo.sinks`` entry names a sink, once; every sink has a target (its own, or ``slo.accuracy``)."""
        named: set[str] = set()
        stage_names = {s.name for s in self.stages}
        for i, objective in enumerate(self.slo.sinks):
            if objective.stage not in stage_names or objective.stage in consumed:
                self._not_a_sink(objective.stage, consumed, ("slo", "sinks", i, "stage"), "`slo.sinks`")
            if objective.stage in named:
                raise LocatedValueError(("slo", "sinks", i, "stage"), f"sink {objective.stage!r} has two targets "
                                        "in `slo.sinks`", "keep one entry per sink")
            named.add(objective.stage)
        if self.slo.accuracy is None:
            missing = [s for s in self.sinks if s not in named]
            if missing:
                raise LocatedValueError(("slo",), f"no accuracy target for sink{'s' if len(missing) > 1 else ''} "
                                        f"{listed(missing)}", "give `slo.accuracy` (the target of every sink "
                                        "`slo.sinks` does not list) or an entry in `slo.sinks`")

    @property
    def sinks(self) -> list[str]:
        """The stages no stage reads from, in the order they are declared (at least one: a DAG ends)."""
        consumed = {i.from_ for s in self.stages for i in s.input_specs()}
        return [s.name for s in self.stages if s.name not in consumed]

    @property
    def sink(self) -> str:
        """The first of :attr:`sinks` (the only one of a workflow with one sink)."""
        return self.sinks[0]

    def objective(self, sink: str) -> SinkObjective:
        """The accuracy target of ``sink``: its own entry of ``slo.sinks``, else ``slo.accuracy`` and
        ``slo.accuracy_table`` (validation made sure one exists)."""
        return next(o for o in self.objectives() if o.stage == sink)

    def objectives(self) -> list[SinkObjective]:
        """Every sink's target, in the order of :attr:`sinks` (see :meth:`objective`)."""
        own = {o.stage: o for o in self.slo.sinks}
        default = self.slo.accuracy
        objectives = []
        for sink in self.sinks:
            objective = own.get(sink)
            if objective is None:
                assert default is not None, "validated: every sink has a target"
                objective = SinkObjective(stage=sink, accuracy=default, accuracy_table=self.slo.accuracy_table)
            objectives.append(objective)
        return objectives

    def output_sinks(self, output: Output) -> list[str]:
        """The sinks whose results ``output`` carries, in the order of :attr:`sinks`."""
        wanted = set(output.sinks) if output.sinks is not None else None
        return [s for s in self.sinks if wanted is None or s in wanted]


def topological_order(spec: WorkflowSpec) -> list[str] | None:
    """Stages in topological order (Kahn's algorithm, stable by declaration: of the stages whose
    inputs are all placed, the one declared first comes next), or None on a cycle. A heap of the
    ready stages: O((S + E) log S), so that a document of many stages is refused or accepted fast."""
    index = {s.name: k for k, s in enumerate(spec.stages)}
    waiting = [0] * len(spec.stages)  # inputs from stages not placed yet
    feeds: list[list[int]] = [[] for _ in spec.stages]
    for k, stage in enumerate(spec.stages):
        for name in {i.from_ for i in stage.input_specs() if i.from_ in index}:
            feeds[index[name]].append(k)
            waiting[k] += 1
    ready = [k for k, n in enumerate(waiting) if n == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        k = heapq.heappop(ready)
        order.append(spec.stages[k].name)
        for j in feeds[k]:
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    return order if len(order) == len(spec.stages) else None


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
