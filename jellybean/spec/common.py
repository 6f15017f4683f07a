"""Pieces shared by every Jellybean document: the envelope, names, tiers.

Every document is Kubernetes-shaped (``apiVersion``, ``kind``, ``metadata``, ``spec``) so that the
same YAML can be fed to the CLI, to the controller's API and, later, applied as a custom resource.
Unknown keys are refused everywhere: a misspelt field is an error, never silently ignored.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

API_VERSION = "jellybean.io/v1alpha1"

#: Names follow Kubernetes' DNS-1123 label rules, relaxed to allow dots and upper case because
#: imported JellyBean names (``workflow-compute-cpu-1``, ``ExtractImageFeature``) use them.
NAME_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,251}[A-Za-z0-9])?$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN, max_length=253)]
NAME_RE = re.compile(NAME_PATTERN)


class StrictModel(BaseModel):
    """Base for every document part: unknown keys forbidden, values validated on assignment."""

    model_config = ConfigDict(extra="forbid", frozen=False, populate_by_name=True)


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
