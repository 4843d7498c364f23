"""A quiet machine for the benchmark scripts: wait until the CPUs are idle, then count what others took meanwhile."""
from __future__ import annotations

import os
import resource
import time


def busy_cores_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (user, nice, system, irq, softirq)."""
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    """CPU seconds of this process's finished children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_quiet(limit: float, window: float, most: float) -> float:
    """Seconds waited until the machine used fewer than `limit` cores over `window` seconds (or `most` passed)."""
    start = time.time()
    while time.time() - start < most:
        before = busy_cores_s()
        time.sleep(window)
        if (busy_cores_s() - before) / window < limit:
            break
    return time.time() - start


def cpu_mark() -> tuple[float, float]:
    """Where `other_cores` counts from: the machine's busy CPU seconds and our children's, now."""
    return busy_cores_s(), children_cpu_s()


def other_cores(mark: tuple[float, float], wall: float) -> float:
    """Cores other processes used on average over the `wall` seconds since `mark` (our children's CPU left out)."""
    busy, own = mark
    return max(0.0, busy_cores_s() - busy - (children_cpu_s() - own)) / wall
