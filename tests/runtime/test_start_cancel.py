"""A start under way can be cancelled (a delete): the data plane's Pipeline on the in-process backend
(the real hosts, no Ray) gives up at once, leaving no actor alive."""

from __future__ import annotations

import threading
import time

import pytest

from jellybean.runtime.deployment import ServingError
from tests.runtime.inprocess import Runners, pipeline


class CancellingRunners(Runners):
    """Loading the first replica's models is when the workflow is deleted: it cancels the start."""

    def __init__(self) -> None:
        super().__init__()
        self.pipeline = None
        self.cancelled = threading.Event()

    def __call__(self, spec: dict) -> list:
        if not self.cancelled.is_set():
            self.cancelled.set()
            self.pipeline.cancel()
        return super().__call__(spec)


def test_a_cancel_during_setup_ends_the_start_and_kills_every_actor() -> None:
    runners = CancellingRunners()
    p, backend, _ = pipeline(runners=runners)
    runners.pipeline = p
    started = time.monotonic()
    with pytest.raises(ServingError, match="was cancelled"):
        p.start(timeout_s=60)
    assert time.monotonic() - started < 30  # not the setup timeout
    assert runners.cancelled.is_set()
    assert p.actors == {} or all(not a.handle.alive for a in p.actors.values())


def test_a_cancel_before_the_start_makes_it_give_up_before_any_setup() -> None:
    p, backend, _ = pipeline()
    calls: list[str] = []
    real = backend.call_all
    backend.call_all = lambda batch, timeout_s=None: calls.append("call_all") or real(batch, timeout_s)
    p.cancel()
    with pytest.raises(ServingError, match="was cancelled"):
        p.start(timeout_s=60)
    assert calls == [] and p.actors == {}  # nothing was set up, and what was made is gone


def test_a_start_without_the_cpus_free_fails_at_once_saying_so() -> None:
    """Ray has fewer CPUs free than the replicas ask for: NoRoom at once (not after the setup timeout),
    with the numbers, before any actor is made."""
    from jellybean.runtime.deployment import NoRoom

    p, backend, _ = pipeline()
    backend.free_cpus = lambda: 0.5
    p.room_wait_s = 0.0
    needed = sum(r.num_cpus for r in p.deployment.replicas)
    assert needed > 0.5
    with pytest.raises(NoRoom, match=rf"needs {round(needed, 2):g} CPU\(s\) for its replicas and Ray has 0.5 free"):
        p.start(timeout_s=60)
    assert p.actors == {}
    # CPUs still being released (actors just stopped) are waited for a moment.
    frees = iter([0.5, 0.5, needed])
    p2, backend2, _ = pipeline()
    backend2.free_cpus = lambda: next(frees)
    p2.room_wait_s = 30.0
    p2._check_room()  # returns once the CPUs are free
