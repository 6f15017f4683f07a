"""CPU pinning: the layout is pure and checked case by case; pinning is checked on this process."""

from __future__ import annotations

import os
import threading

from jellybean.runtime.affinity import InstanceLoad, cpu_layout, pin_process, usable_cores


def test_each_instance_gets_whole_cores_of_its_own_busiest_first() -> None:
    layout = cpu_layout([InstanceLoad(("cloud", "vm", 0), 1, 0.05), InstanceLoad(("hub", "box", 0), 2, 0.9)],
                        [0, 1, 2, 3])
    assert layout.pinned
    assert layout.instances == {("hub", "box", 0): [0, 1], ("cloud", "vm", 0): [2]}
    assert layout.driver == [3]  # a core nobody was given


def test_fractional_cpus_round_up_and_the_driver_sits_beside_the_idlest_instance() -> None:
    layout = cpu_layout([InstanceLoad("a", 0.5, 0.7), InstanceLoad("b", 1, 0.1)], [4, 7])
    assert layout.instances == {"a": [4], "b": [7]}
    assert layout.driver == [7]


def test_more_cores_planned_than_available_pins_nothing_and_says_why() -> None:
    layout = cpu_layout([InstanceLoad("a", 2, 0.5), InstanceLoad("b", 1, 0.5)], [0, 1])
    assert not layout.pinned and not layout.instances
    assert "need 3 cores" in layout.reason and "may use 2" in layout.reason
    assert not cpu_layout([], [0, 1]).pinned


def test_pinning_reaches_threads_that_already_run_and_can_be_undone() -> None:
    original = set(usable_cores())
    started, release = threading.Event(), threading.Event()
    seen: dict[str, set[int]] = {}

    def worker() -> None:
        started.set()
        release.wait(5)
        seen["worker"] = os.sched_getaffinity(0)  # pid 0: the calling thread

    thread = threading.Thread(target=worker)
    thread.start()
    started.wait(5)
    one = min(original)
    try:
        assert pin_process([one])
        release.set()
        thread.join(5)
        assert seen["worker"] == {one}
        assert os.sched_getaffinity(0) == {one}
    finally:
        pin_process(original)
    assert os.sched_getaffinity(0) == original
