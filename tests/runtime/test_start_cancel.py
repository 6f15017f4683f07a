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
