"""The ``ModelZoo`` document: tasks, their model variants, and how accurate and costly each is.

A *task* (``image-features``, ``vehicle-detection``) is what a workflow stage asks for; a *variant*
(``resnet18``, ``yolov5s-int8``) is one model that performs it. Quantised or lower-precision builds
are simply more variants. Each variant carries:

- ``accuracy``: its accuracy on the task's own metric (``metric``), in the zoo's unit (percent);
- ``output_kb``: the size of one output message, i.e. of what one downstream request receives
  from it, as the data plane carries it (its fields and the runtime's identity fields, about 60
  bytes; :func:`jellybean.codec.travelling_bytes`) (KB = 1024 bytes, as in JellyBean); the planner
  adds the links' framing (``Topology.message_framing``);
- ``memory_mb``: the resident memory of one replica;
- ``profiles``: per hardware type, the latency of one batch at each profiled batch size
  (mean, and p90 where known). One instance running the variant at batch size ``b`` serves
  ``b * 1000 / latency_ms[b]`` requests per second;
- optionally ``accuracy_profile``: JellyBean's per-stage form, samples of
  *(accuracies of the inputs -> output accuracy)*, keyed by the input *tasks*;
- optionally ``cost_proxy``: the scalar cost JellyBean's model-selection search ranks by;
- how to serve it, one of two ways: ``runner: NAME`` (a Python runner an installed package
  registers, :mod:`jellybean.plugins`; ``loader`` is its older name) or ``artifact: {format, uri,
  sha256}`` (a weights file in the operator's model store, :mod:`jellybean.artifacts`) with its
  ``signature`` and optional ``pre``/``post`` steps from a small fixed set. A document never names a
  Python import path and never makes a replica run code it names.

End-to-end accuracy tables (``accuracy_tables``) give the measured workflow accuracy for
combinations of variants of several tasks; a workflow uses one when it covers its stages.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from jellybean.spec.common import API_VERSION, Metadata, Name, StrictModel, first_repeat
from jellybean.spec.errors import LocatedValueError, did_you_mean, listed


class LatencyProfile(StrictModel):
    """Measured latency of a variant on one hardware type, per batch size."""

    hardware: Name = Field(description="Hardware type, matched against Topology instances' `hardware`.")
    latency_ms: dict[int, float] = Field(
        description="Mean latency in milliseconds of one batch, keyed by batch size (>= 1)."
    )
    latency_ms_p50: dict[int, float] | None = Field(
        default=None, description="Median latency per batch size, where measured."
    )
    latency_ms_p90: dict[int, float] | None = Field(
        default=None, description="90th-percentile latency per batch size, where measured."
    )

    @field_validator("latency_ms", "latency_ms_p50", "latency_ms_p90")
    @classmethod
    def _positive(cls, value: dict[int, float] | None) -> dict[int, float] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("needs at least one batch size, e.g. {1: 12.5}")
        for batch, latency in value.items():
            if batch < 1:
                raise ValueError(f"batch size {batch} must be >= 1")
            if not latency > 0:
                raise ValueError(f"latency {latency} ms at batch {batch} must be > 0")
        return dict(sorted(value.items()))


class AccuracySample(StrictModel):
    """One JellyBean-style profile sample: with inputs at least this accurate, output reaches ``output``."""

    inputs: dict[str, float] = Field(
        default_factory=dict, description="Required accuracy of each input, keyed by the input's task."
    )
    output: float = Field(description="Output accuracy reached when the inputs meet `inputs`.")


#: Tensor element types an artifact's signature may declare (numpy's names).
DTYPES = ("float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
Dtype = Literal["float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool"]
#: A tensor or field name: what ONNX graphs and message fields use (no spaces, no paths).
FIELD_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.:-]{0,127}$"
FieldName = Annotated[str, StringConstraints(pattern=FIELD_PATTERN)]
#: A store-relative path: segments of safe characters, no leading slash, no ``..`` (checked below too).
URI_PATTERN = r"^(store://)?[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*$"


class Artifact(StrictModel):
    """A weights file in the model store: what it is, where, and its digest (checked at every load)."""

    format: Literal["torchscript", "onnx", "torch-export"] = Field(
        description="torchscript (a torch.jit.save file), onnx (run on onnxruntime's CPU provider) or "
        "torch-export (a .pt2 ExportedProgram from torch.export.save).")
    uri: Annotated[str, StringConstraints(pattern=URI_PATTERN, max_length=1024)] = Field(
        description="Path of the file inside the model store (`--model-store DIR`), e.g. `vad/silero.onnx` "
        "or `store://vad/silero.onnx`; never absolute, never `..`.")
    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] = Field(
        description="SHA-256 of the file, 64 lower-case hex digits (`sha256sum FILE`).")

    @field_validator("uri")
    @classmethod
    def _inside(cls, value: str) -> str:
        path = value.removeprefix("store://")
        if any(part in ("", ".", "..") for part in path.split("/")):
            raise ValueError("a model-store path may not contain `.` or `..` segments; name the file relative "
                             "to the store's root, e.g. `vad/silero.onnx`")
        return value

    @property
    def path(self) -> str:
        return self.uri.removeprefix("store://")


class TensorSpec(StrictModel):
    """One input or output of an artifact. ``shape`` lists the dimensions; the batch dimension is
    ``-1`` or ``batch`` (exactly one for a tensor fed from messages; none for a constant). An input
    with ``fill`` is not read from messages: it is a constant of that value (its batch dimension, if
    any, as long as the batch), e.g. a recurrent network's zero state or a sample rate."""

    name: FieldName
    dtype: Dtype = "float32"
    shape: list[int | Literal["batch"]] = Field(default_factory=list, max_length=8)
    field: FieldName | None = Field(default=None, description="Message field it is read from (inputs) or "
                                    "written to (outputs); default: its name.")
    fill: float | None = Field(default=None, description="A constant input's value (inputs only).")

    @field_validator("shape")
    @classmethod
    def _dims(cls, value: list[int | str]) -> list[int | str]:
        for dim in value:
            if dim != "batch" and not (dim == -1 or (isinstance(dim, int) and 1 <= dim <= 1_000_000)):
                raise ValueError(f"dimension {dim!r}: a dimension is a size from 1 to 1000000, or -1 / `batch` "
                                 "for the batch dimension")
        if sum(1 for d in value if d in (-1, "batch")) > 1:
            raise ValueError("at most one dimension is the batch (-1 or `batch`)")
        return value

    @property
    def batch_axis(self) -> int | None:
        return next((i for i, d in enumerate(self.shape) if d in (-1, "batch")), None)

    @property
    def key(self) -> str:
        return self.field or self.name


class Signature(StrictModel):
    inputs: list[TensorSpec] = Field(min_length=1, max_length=64)
    outputs: list[TensorSpec] = Field(min_length=1, max_length=64)

    @model_validator(mode="after")
    def _consistent(self) -> Signature:
        for side, specs in (("inputs", self.inputs), ("outputs", self.outputs)):
            i = first_repeat([t.name for t in specs])
            if i is not None:
                raise LocatedValueError((side, i, "name"), f"{side} name {specs[i].name!r} is declared twice")
        for i, t in enumerate(self.inputs):
            if t.fill is None and t.batch_axis is None:
                raise LocatedValueError(("inputs", i, "shape"), f"input {t.name!r} is read from messages, so one of its "
                                        "dimensions must be the batch (-1 or `batch`); or give it a `fill` value")
        for i, t in enumerate(self.outputs):
            if t.fill is not None:
                raise LocatedValueError(("outputs", i, "fill"), "an output has no `fill`; only constant inputs do")
            if t.batch_axis is None:
                raise LocatedValueError(("outputs", i, "shape"), f"output {t.name!r} needs a batch dimension "
                                        "(-1 or `batch`) to be split back into one result per message")
        return self


class Step(StrictModel):
    """One pre- or post-processing step, from a fixed set (anything else is a registered runner):

    - ``decode-image`` (``field`` bytes, PNG/JPEG -> float32 array in [0, 1]; ``mode`` gray | rgb,
      channels last), ``decode-audio`` (WAV bytes -> float32 mono samples in [-1, 1]; ``rate``, when
      given, must match the file's);
    - ``resize`` (an image array to ``size: [height, width]``, bilinear), ``normalize``
      (``(x * scale - mean) / std``, per channel when lists), ``pad`` (a 1-D signal padded with zeros or
      cut to ``length``), ``transpose`` (``axes``, e.g. HWC -> CHW);
    - ``crop-boxes`` (``boxes`` field of ``[x0, y0, x1, y1]`` in pixels -> a list of crops of ``field``
      resized to ``size``, into ``to``);
    - ``argmax`` (index of the largest score, optionally its ``labels`` name, into ``to``), ``top-k``
      (``k`` indices and scores), ``threshold`` (``field`` > ``above`` into ``to``), ``keep-if`` (drop
      the message unless ``field`` is true: fan-out 0), ``fan-out`` (one message per item of the
      ``field`` list, each carrying one item as ``to``).

    ``field`` names what the step reads, ``to`` (default: ``field``) where it writes."""

    op: Literal["decode-image", "decode-audio", "resize", "normalize", "pad", "transpose", "crop-boxes",
                "argmax", "top-k", "threshold", "keep-if", "fan-out"]
    field: FieldName
    to: FieldName | None = None
    mode: Literal["gray", "rgb"] | None = None
    rate: int | None = Field(default=None, ge=1, le=1_000_000)
    size: list[Annotated[int, Field(ge=1, le=8192)]] | None = Field(default=None, min_length=2, max_length=2)
    mean: float | list[float] | None = None
    std: float | list[float] | None = None
    scale: float | None = None
    length: int | None = Field(default=None, ge=1, le=100_000_000)
    axes: list[Annotated[int, Field(ge=0, le=7)]] | None = Field(default=None, max_length=8)
    boxes: FieldName | None = None
    labels: list[str] | None = Field(default=None, max_length=100_000)
    k: int | None = Field(default=None, ge=1, le=1000)
    above: float | None = None
    judge: bool = Field(default=False, description="argmax/threshold: compare the answer with the frame's "
                        "`truth` (a labelled replay dataset) and set `correct`, which `jellybean run` measures "
                        "accuracy from.")

    @model_validator(mode="after")
    def _arguments(self) -> Step:
        needs = {"resize": ("size",), "pad": ("length",), "transpose": ("axes",), "crop-boxes": ("boxes", "size"),
                 "top-k": ("k",), "threshold": ("above",)}.get(self.op, ())
        for name in needs:
            if getattr(self, name) is None:
                raise LocatedValueError((name,), f"step {self.op!r} needs `{name}`")
        if self.op == "normalize" and self.mean is None and self.std is None and self.scale is None:
            raise LocatedValueError(("op",), "step 'normalize' needs at least one of `mean`, `std`, `scale`")
        if isinstance(self.std, list) and any(s == 0 for s in self.std) or self.std == 0:
            raise LocatedValueError(("std",), "`std` may not be 0")
        return self

    @property
    def target(self) -> str:
        return self.to or self.field


class Variant(StrictModel):
    name: Name
    accuracy: float = Field(description="Accuracy on the task's own metric, in the zoo's unit.")
    output_kb: float = Field(ge=0, description="Size of one output message in KB (1024 bytes), as the data plane "
                             "carries it: its fields plus the runtime's frame id, source, site and timestamps (about "
                             "60 bytes). The planner adds the links' framing (Topology.message_framing).")
    memory_mb: float = Field(default=0.0, ge=0, description="Resident memory of one replica in MB.")
    precision: str = Field(default="fp32", description="Numeric precision of the build (fp32, fp16, int8).")
    runner: Name | None = Field(
        default=None,
        description="Registered runner that serves this variant (an entry point of group `jellybean.runners`; "
        "see `jellybean zoo list`): a name, never an import path or a file. Needed to serve, not to plan.",
    )
    loader: Name | None = Field(default=None, description="The older name of `runner` (still accepted).")
    artifact: Artifact | None = Field(default=None, description="A weights file in the model store that "
                                      "serves this variant, instead of a `runner`.")
    signature: Signature | None = Field(default=None, description="The artifact's inputs and outputs "
                                        "(needed with `artifact`).")
    pre: list[Step] = Field(default_factory=list, max_length=32, description="Steps before the model.")
    post: list[Step] = Field(default_factory=list, max_length=32, description="Steps after the model.")
    keep: list[FieldName] = Field(default_factory=list, max_length=64, description="Fields of the input "
                                  "message handed on with the outputs (e.g. the image a later stage crops).")
    cost_proxy: float | None = Field(
        default=None,
        ge=0,
        description="Scalar cost used to rank variants by cost alone (JellyBean's model selection). "
        "Default: the variant's median batch-1 latency across its profiles.",
    )
    profiles: list[LatencyProfile] = Field(min_length=1)
    accuracy_profile: list[AccuracySample] | None = Field(
        default=None, description="JellyBean's per-stage accuracy samples (inputs' accuracy -> output)."
    )

    @model_validator(mode="after")
    def _how_to_serve(self) -> Variant:
        if self.loader is not None:
            if self.runner is not None and self.runner != self.loader:
                raise LocatedValueError(("loader",), f"`loader` ({self.loader}) and `runner` ({self.runner}) "
                                        "disagree; `loader` is the older name of `runner`: keep `runner` only")
            self.runner = self.loader
        if self.artifact is not None and self.runner is not None:
            raise LocatedValueError(("artifact",), "a variant is served by a `runner` or by an `artifact`, "
                                    "not both; remove one")
        if self.artifact is not None and self.signature is None:
            raise LocatedValueError(("signature",), "an `artifact` needs its `signature` (inputs and outputs: "
                                    "name, dtype, shape with -1 for the batch)")
        if self.artifact is None and (self.signature is not None or self.pre or self.post or self.keep):
            raise LocatedValueError(("signature",) if self.signature is not None else ("pre",) if self.pre else ("post",),
                                    "`signature`, `pre` and `post` describe an `artifact`; a `runner` does "
                                    "its own (remove them, or give the variant an `artifact`)")
        return self

    @property
    def servable(self) -> bool:
        """Whether the document says how to serve it (a runner or an artifact)."""
        return self.runner is not None or self.artifact is not None

    @model_validator(mode="after")
    def _unique_hardware(self) -> Variant:
        i = first_repeat([p.hardware for p in self.profiles])
        if i is not None:
            raise LocatedValueError(("profiles", i, "hardware"),
                                    f"hardware {self.profiles[i].hardware!r} is profiled twice; merge the two entries")
        return self

    def profile_for(self, hardware: str) -> LatencyProfile | None:
        for profile in self.profiles:
            if profile.hardware == hardware:
                return profile
        return None

    def default_cost_proxy(self) -> float:
        """Median batch-1 (or smallest batch) latency across profiled hardware, in ms."""
        if self.cost_proxy is not None:
            return self.cost_proxy
        values = sorted(p.latency_ms[min(p.latency_ms)] / min(p.latency_ms) for p in self.profiles)
        middle = len(values) // 2
        return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


class Task(StrictModel):
    name: Name
    metric: str = Field(default="accuracy", description="The task metric the variants' accuracy is in.")
    variants: list[Variant] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_variants(self) -> Task:
        i = first_repeat([v.name for v in self.variants])
        if i is not None:
            raise LocatedValueError(("variants", i, "name"),
                                    f"variant names must be unique within a task; repeated: {self.variants[i].name}")
        return self

    def variant(self, name: str) -> Variant | None:
        return next((v for v in self.variants if v.name == name), None)


class AccuracyRow(StrictModel):
    variants: list[Name] = Field(description="One variant per task, in the order of the table's `tasks`.")
    accuracy: float


class AccuracyTable(StrictModel):
    """Measured end-to-end accuracy of a workflow for combinations of variants of several tasks."""

    name: Name
    tasks: list[Name] = Field(min_length=1)
    rows: list[AccuracyRow] = Field(min_length=1)

    @model_validator(mode="after")
    def _row_widths(self) -> AccuracyTable:
        for index, row in enumerate(self.rows):
            if len(row.variants) != len(self.tasks):
                raise LocatedValueError(("rows", index, "variants"),
                    f"rows[{index}] names {len(row.variants)} variants but the table has "
                    f"{len(self.tasks)} tasks ({', '.join(self.tasks)})"
                )
        return self


class ModelZooSpec(StrictModel):
    tasks: list[Task] = Field(min_length=1)
    accuracy_tables: list[AccuracyTable] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> ModelZooSpec:
        i = first_repeat([t.name for t in self.tasks])
        if i is not None:
            raise LocatedValueError(("tasks", i, "name"), f"task names must be unique; repeated: {self.tasks[i].name}")
        by_name = {t.name: t for t in self.tasks}
        for t, table in enumerate(self.accuracy_tables):
            for k, task_name in enumerate(table.tasks):
                if task_name not in by_name:
                    raise LocatedValueError(("accuracy_tables", t, "tasks", k),
                                            f"accuracy table {table.name!r} names unknown task {task_name!r}"
                                            f"{did_you_mean(task_name, by_name)}", f"tasks: {listed(by_name)}")
            for index, row in enumerate(table.rows):
                for k, (task_name, variant_name) in enumerate(zip(table.tasks, row.variants)):
                    if by_name[task_name].variant(variant_name) is None:
                        names = [v.name for v in by_name[task_name].variants]
                        raise LocatedValueError(("accuracy_tables", t, "rows", index, "variants", k),
                            f"accuracy table {table.name!r} rows[{index}]: task {task_name!r} has no "
                            f"variant {variant_name!r}{did_you_mean(variant_name, names)}", f"variants: {listed(names)}"
                        )
        return self

    def task(self, name: str) -> Task | None:
        return next((t for t in self.tasks if t.name == name), None)


class ModelZoo(StrictModel):
    apiVersion: Literal["jellybean.io/v1alpha1"] = API_VERSION
    kind: Literal["ModelZoo"] = "ModelZoo"
    metadata: Metadata
    spec: ModelZooSpec
