"""A Solution: the raw decisions of any strategy, before they are priced and reported as a Plan.

Every strategy (the MILP and each baseline) produces one, and one function turns it into a Plan,
so costs, accuracy and latency are always computed the same way. Quantities are per *member*
site of a node (identical sites are decided alike).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Solution:
    models: dict[str, str]
    #: option index -> requests/s served with that option at each member site
    rates: dict[int, float]
    #: (group index, stage) -> instances in use per member (exclusive mode), or
    #: (group index, None) -> instances in use per member (shared mode)
    counts: dict[tuple[int, str | None], float]
    #: (edge key, node index) -> messages/s per member on the node's uplink, upward / downward.
    #: None: route in proportion to where the stages run (the heuristics' semantics).
    flows_up: dict[tuple[str, int], float] | None = None
    flows_down: dict[tuple[str, int], float] | None = None
    notes: list[str] = field(default_factory=list)
