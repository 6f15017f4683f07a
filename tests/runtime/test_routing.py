"""Routing by plan shares: exact proportions over every window, determinism, affinity, exclusion."""

from __future__ import annotations

from collections import Counter

import pytest

from jellybean.runtime.routing import AffinityRouter, WeightedRouter


def test_smooth_weighted_round_robin_holds_the_shares_over_every_prefix() -> None:
    weights = {"a": 5.0, "b": 3.0, "c": 2.0}
    router = WeightedRouter(weights)
    picks = [router.pick() for _ in range(1000)]
    total = sum(weights.values())
    for n in range(1, 1001):
        counts = Counter(picks[:n])
        for name, w in weights.items():
            assert abs(counts[name] - n * w / total) <= 1.0 + 1e-9


def test_routing_is_deterministic() -> None:
    a = WeightedRouter({"x": 1.5, "y": 0.5})
    b = WeightedRouter({"y": 0.5, "x": 1.5})
    assert [a.pick() for _ in range(50)] == [b.pick() for _ in range(50)]


def test_fractional_shares() -> None:
    router = WeightedRouter({"gpu": 36.47, "cpu": 3.53})
    counts = Counter(router.pick() for _ in range(4000))
    assert counts["cpu"] == pytest.approx(4000 * 3.53 / 40, abs=1)


def test_exclusion_skips_a_failed_replica_and_keeps_the_others_shares() -> None:
    router = WeightedRouter({"a": 1, "b": 1, "c": 2})
    picks = Counter(router.pick(exclude={"c"}) for _ in range(100))
    assert set(picks) == {"a", "b"} and picks["a"] == picks["b"] == 50
    assert router.pick(exclude={"a", "b", "c"}) is None


def test_removed_replica_is_never_chosen() -> None:
    router = WeightedRouter({"a": 1, "b": 1})
    router.remove("a")
    assert {router.pick() for _ in range(10)} == {"b"}


def test_affinity_keeps_a_key_on_one_replica_and_spreads_keys_by_weight() -> None:
    router = AffinityRouter({"a": 1.0, "b": 3.0})
    assert all(router.pick(42) == router.pick(42) for _ in range(5))
    counts = Counter(router.pick(k) for k in range(20000))
    assert counts["b"] / 20000 == pytest.approx(0.75, abs=0.02)


def test_affinity_moves_only_the_keys_of_an_excluded_replica() -> None:
    router = AffinityRouter({"a": 1.0, "b": 1.0, "c": 1.0})
    before = {k: router.pick(k) for k in range(3000)}
    after = {k: router.pick(k, exclude={"c"}) for k in range(3000)}
    for k in range(3000):
        if before[k] != "c":
            assert after[k] == before[k]
        else:
            assert after[k] in {"a", "b"}


def test_bad_weights_are_refused() -> None:
    with pytest.raises(ValueError):
        WeightedRouter({})
    with pytest.raises(ValueError):
        WeightedRouter({"a": -1})
