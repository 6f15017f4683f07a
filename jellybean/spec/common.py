"""Pieces shared by every Jellybean document: the envelope, names, tiers.

Every document is Kubernetes-shaped (``apiVersion``, ``kind``, ``metadata``, ``spec``) so that the
same YAML can be fed to the CLI, to the controller's API and, later, applied as a custom resource.
Unknown keys are refused everywhere: a misspelt field is an error, never silently ignored.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Hashable, Iterable
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from jellybean.spec.errors import Loc, LocatedValueError

API_VERSION: Final = "jellybean.io/v1alpha1"

#: Names follow Kubernetes' DNS-1123 label rules, relaxed to allow dots and upper case because
#: imported JellyBean names (``workflow-compute-cpu-1``, ``ExtractImageFeature``) use them.
NAME_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN, max_length=253)]
NAME_RE = re.compile(NAME_PATTERN)

#: The range of magnitudes of any nonzero number in a document (rates, sizes, prices, counts,
#: latencies, accuracies): up to a petabyte in MB or a billion requests per second, down to a
#: billionth. Numbers outside are typos or hostile, and the solver's arithmetic breaks on them
#: (a bandwidth of 1e-300 or a rate of 1e15 makes HiGHS refuse the model) rather than the plan.
MIN_MAGNITUDE = 1e-9
MAX_MAGNITUDE = 1e9


class StrictModel(BaseModel):
    """Base for every document part: unknown keys forbidden, values validated on assignment."""

    # NaN and infinities are refused: no field means them, and they reach the solver as garbage.
    model_config = ConfigDict(extra="forbid", frozen=False, populate_by_name=True, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _numbers_in_range(cls, value: Any) -> Any:
        found = _out_of_range(value, ())
        if found is not None:
            loc, number = found
            text = repr(number)
            text = text if len(text) <= 24 else f"{text[:12]}... ({len(text)} digits)"
            low, high = (f"{x:.0e}".replace("e+0", "e").replace("e-0", "e-") for x in (MIN_MAGNITUDE, MAX_MAGNITUDE))
            raise LocatedValueError(loc, f"{text} is out of range: a number in a document is 0 or between {low} "
                                    f"and {high} in magnitude", "check the unit and the number of zeros")
        return value


def _out_of_range(value: Any, loc: Loc) -> tuple[Loc, int | float] | None:
    """The first number in a field's value (scalars, lists, mappings' keys and values; nested
    models check themselves) that is nonzero and outside the magnitudes allowed, with where it is."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (loc, value) if value and not MIN_MAGNITUDE <= abs(value) <= MAX_MAGNITUDE else None
    items: Iterable[tuple[Hashable, Any]]
    if isinstance(value, list):
        items = enumerate(value)
    elif isinstance(value, dict):
        for key in value:
            if _out_of_range(key, ()) is not None:
                return (*loc, key), key
        items = value.items()
    else:
        return None
    for key, item in items:
        found = _out_of_range(item, (*loc, key))
        if found is not None:
            return found
    return None


class Tier(str, enum.Enum):
    """The infrastructure tiers, ordered from the data's origin to the cloud."""

    device = "device"
    hub = "hub"
    edge = "edge"
    cloud = "cloud"

    @property
    def rank(self) -> int:
        return TIER_ORDER.index(self)


TIER_ORDER: list[Tier] = [Tier.device, Tier.hub, Tier.edge, Tier.cloud]


class Metadata(StrictModel):
    name: Name = Field(description="Unique name of the document within its kind.")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


def first_repeat(values: list[str]) -> int | None:
    """Index of the first value that already appeared earlier in ``values``, or None."""
    seen: set[str] = set()
    for index, value in enumerate(values):
        if value in seen:
            return index
        seen.add(value)
    return None
