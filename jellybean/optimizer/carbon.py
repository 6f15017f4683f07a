r"""Carbon: what a plan emits, and what the planner minimises or bounds. One home for the arithmetic.

The model. An instance in use draws

    ``P = idle + (busy - idle) x u``  W,

``idle`` and ``busy`` its ``power_w`` (Topology), ``u`` its planned utilisation (its busy fraction,
0..1: requests/s served over what it serves fully busy, ``sum_o r_o / mu_o``). Energy at a site of
grid carbon intensity ``I`` (gCO2/kWh) then emits, per hour,

    ``P W x 1 h = P / 1000 kWh``, so ``E = P x I / 1000``  gCO2/h.

Summed over a group's ``n`` instances in use, whose busy fractions add up to its busy
instance-equivalents ``L = sum_o r_o / mu_o`` (the same load the capacity rows bound by ``h n``):

    ``E_g = I (idle n + (busy - idle) L) / 1000``  gCO2/h,

linear in the MILP's counts and rates, so carbon costs nothing in model size. Instances not in use
count as off (as only used instances are charged); the network's energy is not counted (links have
no power figure; their traffic is priced in $).

Objectives (``jellybean plan --objective``): ``cost`` ($/h, the default), ``carbon`` (gCO2/h, ties
broken by cost: the cheapest of the least-carbon plans), ``cost+carbon`` ($/h, with the carbon
priced at ``carbon_price_per_tonne`` $/tCO2: ``cost + price x E / 10^6``). A ``carbon_budget`` is a
constraint ``sum_g E_g <= B`` gCO2/h with any of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

#: Grams per tonne: a carbon price in $/tCO2 is ``price / 10^6`` $ per gCO2.
G_PER_TONNE = 1e6
#: W x g/kWh -> g/h: one watt for one hour is 1/1000 kWh.
W_PER_KW = 1000.0

ObjectiveKind = Literal["cost", "carbon", "cost+carbon"]
OBJECTIVES: tuple[ObjectiveKind, ...] = get_args(ObjectiveKind)


def instance_power_w(idle_w: float, busy_w: float, utilization: float) -> float:
    """One instance's draw at ``utilization`` (0..1), W: ``idle + (busy - idle) x u``."""
    return idle_w + (busy_w - idle_w) * utilization


def grams_per_hour(power_w: float, intensity_g_per_kwh: float) -> float:
    """gCO2/h of ``power_w`` W drawn from a grid at ``intensity_g_per_kwh``: ``P x I / 1000``."""
    return power_w * intensity_g_per_kwh / W_PER_KW


def group_power_w(idle_w: float, busy_w: float, instances: float, busy_equivalents: float) -> float:
    """``instances`` in use whose busy fractions add up to ``busy_equivalents`` (``sum_o r_o / mu_o``),
    W: ``idle x n + (busy - idle) x L`` (the sum of :func:`instance_power_w` over the instances)."""
    return idle_w * instances + (busy_w - idle_w) * busy_equivalents


def price_per_g(carbon_price_per_tonne: float) -> float:
    """$ per gCO2 for a price in $ per tonne CO2."""
    return carbon_price_per_tonne / G_PER_TONNE


@dataclass(frozen=True)
class Objective:
    """What the planner minimises, and the carbon budget it keeps to (see the module docstring).

    ``kind``: ``cost`` ($/h), ``carbon`` (gCO2/h, then the cheapest plan within the least carbon
    found) or ``cost+carbon`` ($/h with carbon at ``carbon_price_per_tonne`` $/tCO2);
    ``carbon_budget_g_per_hour``: at most this many gCO2/h (None: no budget)."""

    kind: ObjectiveKind = "cost"
    carbon_price_per_tonne: float | None = None
    carbon_budget_g_per_hour: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.kind!r}; choose one of {', '.join(OBJECTIVES)}")
        price = self.carbon_price_per_tonne
        if self.kind == "cost+carbon" and price is None:
            raise ValueError("objective cost+carbon needs a carbon price ($ per tonne CO2, --carbon-price)")
        if price is not None and self.kind != "cost+carbon":
            raise ValueError(f"a carbon price is used only by objective cost+carbon, not {self.kind}")
        if price is not None and not (math.isfinite(price) and 0 <= price <= 1e9):
            raise ValueError(f"carbon price {price!r} $/tCO2 must be a finite number from 0 to 1e9")
        budget = self.carbon_budget_g_per_hour
        if budget is not None and not (math.isfinite(budget) and 0 <= budget <= 1e12):
            raise ValueError(f"carbon budget {budget!r} gCO2/h must be a finite number from 0 to 1e12")

    @property
    def uses_carbon(self) -> bool:
        """Whether carbon enters the model at all (objective or budget): the default does not."""
        return self.kind != "cost" or self.carbon_budget_g_per_hour is not None

    @property
    def unit(self) -> str:
        """The objective's unit, for messages."""
        return "gCO2/h" if self.kind == "carbon" else "$/h"

    def describe(self) -> str:
        """In words, for a plan's notes."""
        if self.kind == "cost+carbon":
            text = f"least cost with carbon at ${self.carbon_price_per_tonne:g}/tCO2"
        else:
            text = "least carbon, then least cost" if self.kind == "carbon" else "least cost"
        if self.carbon_budget_g_per_hour is not None:
            text += f", within a carbon budget of {self.carbon_budget_g_per_hour:g} gCO2/h"
        return text
