"""Routing requests to replicas by the plan's shares: pure, deterministic, no Ray.

A plan says which share of a stage's requests each replica serves. Two routers honour it:

- :class:`WeightedRouter`, *smooth weighted round robin* (the nginx algorithm): every pick adds each
  replica's weight to its credit, takes the replica with the most credit and charges it the total.
  After any prefix of ``n`` picks each replica has received ``n * w_i / W`` requests to within one,
  so the split holds over short windows as well as long ones, with no randomness.
- :class:`AffinityRouter`, *weighted rendezvous hashing*: the same key (a frame id) always lands on
  the same replica, which a stateful stage (a join that collects one frame's crops) needs, while
  keys still spread in proportion to the weights: replica ``i`` wins key ``k`` with probability
  ``w_i / W`` because its score is ``-w_i / ln(u_ik)`` with ``u_ik`` a hash-uniform in (0, 1).

Both accept an ``exclude`` set so a retry can avoid the replica that just failed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Hashable, Iterable


class WeightedRouter:
    def __init__(self, weights: dict[str, float]) -> None:
        if not weights:
            raise ValueError("a router needs at least one replica")
        if any(w < 0 for w in weights.values()):
            raise ValueError("weights must be non-negative")
        self.weights = {k: float(w) for k, w in sorted(weights.items())}
        self.credit = {k: 0.0 for k in self.weights}

    def pick(self, exclude: Iterable[str] = ()) -> str | None:
        if len(self.weights) == 1 and not exclude:
            return next(iter(self.weights))  # the common single-replica case, on the hot path
        excluded = set(exclude)
        live = {k: w for k, w in self.weights.items() if k not in excluded and w > 0}
        if not live:
            # All weighted replicas excluded: fall back to any zero-weight one left.
            rest = [k for k in self.weights if k not in excluded]
            return rest[0] if rest else None
        total = sum(live.values())
        for k, w in live.items():
            self.credit[k] += w
        chosen = max(live, key=lambda k: (self.credit[k], k))
        self.credit[chosen] -= total
        return chosen

    def remove(self, replica: str) -> None:
        self.weights.pop(replica, None)
        self.credit.pop(replica, None)


def _uniform(key: Hashable, replica: str) -> float:
    digest = hashlib.blake2b(f"{key!r}|{replica}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / 2.0**64


class AffinityRouter:
    def __init__(self, weights: dict[str, float]) -> None:
        if not weights:
            raise ValueError("a router needs at least one replica")
        self.weights = {k: float(w) for k, w in sorted(weights.items())}

    def pick(self, key: Hashable, exclude: Iterable[str] = ()) -> str | None:
        if len(self.weights) == 1 and not exclude:
            only = next(iter(self.weights))
            return only if self.weights[only] > 0 else None
        excluded = set(exclude)
        best, best_score = None, -math.inf
        for replica, weight in self.weights.items():
            if replica in excluded or weight <= 0:
                continue
            score = -weight / math.log(_uniform(key, replica))
            if score > best_score:
                best, best_score = replica, score
        return best

    def remove(self, replica: str) -> None:
        self.weights.pop(replica, None)


def uplinks_between(parent: dict[str, str | None], origin: str, destination: str) -> list[tuple[str, str]]:
    """The uplinks a message from site ``origin`` to site ``destination`` crosses on the site tree, in
    travel order, as ``(child site, "up" | "down")``: up from ``origin`` to the lowest common ancestor,
    then down to ``destination``. Empty when both are the same site."""
    def chain(site: str | None) -> list[str]:
        out = []
        while site is not None:
            out.append(site)
            site = parent.get(site)
        return out

    up, down = chain(origin), chain(destination)
    on_down = set(down)
    common = next((s for s in up if s in on_down), None)
    ups = up[:up.index(common)] if common is not None else up
    downs = down[:down.index(common)] if common is not None else down
    return [(s, "up") for s in ups] + [(s, "down") for s in reversed(downs)]
