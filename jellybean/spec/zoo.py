"""The ``ModelZoo`` document: tasks, their model variants, and how accurate and costly each is.

A *task* (``image-features``, ``vehicle-detection``) is what a workflow stage asks for; a *variant*
(``resnet18``, ``yolov5s-int8``) is one model that performs it. Quantised or lower-precision builds
are simply more variants. Each variant carries:

- ``accuracy``: its accuracy on the task's own metric (``metric``), in the zoo's unit (percent);
- ``output_kb``: the size of one output message, i.e. of what one downstream request receives
  from it (KB = 1024 bytes, as in JellyBean);
- ``memory_mb``: the resident memory of one replica;
- ``profiles``: per hardware type, the latency of one batch at each profiled batch size
  (mean, and p90 where known). One instance running the variant at batch size ``b`` serves
  ``b * 1000 / latency_ms[b]`` requests per second;
- optionally ``accuracy_profile``: JellyBean's per-stage form, samples of
  *(accuracies of the inputs -> output accuracy)*, keyed by the input *tasks*;
- optionally ``cost_proxy``: the scalar cost JellyBean's model-selection search ranks by.

End-to-end accuracy tables (``accuracy_tables``) give the measured workflow accuracy for
combinations of variants of several tasks; a workflow uses one when it covers its stages.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from jellybean.spec.common import API_VERSION, Metadata, Name, StrictModel, first_repeat
from jellybean.spec.errors import LocatedValueError


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


class Variant(StrictModel):
    name: Name
    accuracy: float = Field(description="Accuracy on the task's own metric, in the zoo's unit.")
    output_kb: float = Field(ge=0, description="Size of one output message in KB (1024 bytes).")
    memory_mb: float = Field(default=0.0, ge=0, description="Resident memory of one replica in MB.")
    precision: str = Field(default="fp32", description="Numeric precision of the build (fp32, fp16, int8).")
    loader: Name | None = Field(
        default=None,
        description="Registered model loader that runs this variant (see `jellybean zoo list`); only "
        "registered loaders can be named, never import paths or files. Needed to serve, not to plan.",
    )
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
    def _unique_hardware(self) -> "Variant":
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
    def _unique_variants(self) -> "Task":
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
    def _row_widths(self) -> "AccuracyTable":
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
    def _consistent(self) -> "ModelZooSpec":
        i = first_repeat([t.name for t in self.tasks])
        if i is not None:
            raise LocatedValueError(("tasks", i, "name"), f"task names must be unique; repeated: {self.tasks[i].name}")
        by_name = {t.name: t for t in self.tasks}
        for t, table in enumerate(self.accuracy_tables):
            for k, task_name in enumerate(table.tasks):
                if task_name not in by_name:
                    raise LocatedValueError(("accuracy_tables", t, "tasks", k),
                                            f"accuracy table {table.name!r} names unknown task {task_name!r}")
            for index, row in enumerate(table.rows):
                for k, (task_name, variant_name) in enumerate(zip(table.tasks, row.variants)):
                    if by_name[task_name].variant(variant_name) is None:
                        raise LocatedValueError(("accuracy_tables", t, "rows", index, "variants", k),
                            f"accuracy table {table.name!r} rows[{index}]: task {task_name!r} has no "
                            f"variant {variant_name!r}"
                        )
        return self

    def task(self, name: str) -> Task | None:
        return next((t for t in self.tasks if t.name == name), None)


class ModelZoo(StrictModel):
    apiVersion: Literal["jellybean.io/v1alpha1"] = API_VERSION
    kind: Literal["ModelZoo"] = "ModelZoo"
    metadata: Metadata
    spec: ModelZooSpec
