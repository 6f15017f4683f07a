"""CPU pinning on one machine: give each planned instance its own cores, as its own machine would.

Why. On an embedded Ray every site of the topology lives on this one machine, and an instance's
``cpus`` become the Ray ``num_cpus`` of its replicas. Ray's ``num_cpus`` is bookkeeping only: the
operating system still moves every process across every core, so the data plane's own process (the
sources, the routing) and Ray's services run on the core a busy replica is using. Measured with
``bench/runtime.py`` on the 2-core machine: the hub replica's models took 298 us per frame when the
driver could run on its core and 264 us when it could not, against 240 us alone in one process, and
the deployed workflow served 2,909 against 3,343 frames/s. Pinning makes the plan's CPU shares
real: each instance gets ``ceil(cpus)`` cores of its own, so what was profiled on one core is what a
replica gets.

The layout (:func:`cpu_layout`, pure) hands out the cores this process may use, in order, to the
instances the plan uses (replicas of one shared instance share its cores). The data plane's process
is not an instance: it takes the cores left over, and when none are left, the cores of the instance
the plan loads least (on a real deployment it would run elsewhere; on one machine it has to sit
beside somebody, and beside the idlest instance it disturbs the plan least). When the instances need
more cores than there are, nothing is pinned and the reason is reported: the topology does not
describe this machine, and the operating system's scheduling is the honest fallback.

:func:`pin_process` applies a mask to every thread of a process (Linux ``sched_setaffinity`` acts
per thread, and Ray's and torch's threads already exist when a replica starts).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from collections.abc import Iterable


@dataclass(frozen=True)
class InstanceLoad:
    """One planned instance on this machine: its key, the cores it was given (``cpus``) and its
    planned busy fraction (0..1)."""

    key: tuple
    cpus: float
    utilization: float


@dataclass
class CpuLayout:
    """Cores per instance key, the cores of the data plane's own process, or why nothing is pinned."""

    instances: dict[tuple, list[int]] = field(default_factory=dict)
    driver: list[int] = field(default_factory=list)
    reason: str | None = None  # set when nothing is pinned

    @property
    def pinned(self) -> bool:
        return self.reason is None


def cpu_layout(loads: Iterable[InstanceLoad], cores: Iterable[int]) -> CpuLayout:
    """Give each instance ``ceil(cpus)`` cores of ``cores`` (busiest first, so ties keep the plan's
    heavy instances on the lowest-numbered cores), then place the driver (see the module docstring)."""
    available = sorted(set(cores))
    loads = sorted(loads, key=lambda load: (-load.utilization, str(load.key)))
    if not loads:
        return CpuLayout(reason="no instances to place")
    needed = sum(max(1, math.ceil(load.cpus - 1e-9)) for load in loads)
    if needed > len(available):
        return CpuLayout(reason=f"the plan's instances need {needed} cores and this process may use "
                                f"{len(available)}: the topology does not describe this machine")
    layout = CpuLayout()
    cursor = 0
    for load in loads:
        take = max(1, math.ceil(load.cpus - 1e-9))
        layout.instances[load.key] = available[cursor:cursor + take]
        cursor += take
    rest = available[cursor:]
    layout.driver = rest if rest else list(layout.instances[loads[-1].key])
    return layout


def pin_process(cores: Iterable[int], pid: int | None = None) -> bool:
    """Restrict every thread of process ``pid`` (this one by default) to ``cores``. False where the
    platform cannot (no ``sched_setaffinity``, no ``/proc``); threads that end meanwhile are skipped."""
    mask = set(cores)
    if not hasattr(os, "sched_setaffinity") or not mask:
        return False
    task_dir = f"/proc/{pid if pid is not None else 'self'}/task"
    try:
        threads = [int(tid) for tid in os.listdir(task_dir)]
    except OSError:
        return False
    for tid in threads:
        try:
            os.sched_setaffinity(tid, mask)
        except (ProcessLookupError, PermissionError):
            continue
    return True


def usable_cores() -> list[int]:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))
