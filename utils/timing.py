"""Latency measurement: warm-up apart, a device sync before every clock read, per-call latencies kept."""
from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Callable, Optional

import numpy as np

from utils.trace import REFERENCE, TRACE, span

# Where an accuracy pass's time goes (pipeline.passes.accuracy_pass): the main thread's parts add up to its e2e time;
# the reference's compute is left out of e2e; decode and resize are the decode threads' seconds, in parallel.
SPLIT_MAIN = ("wait", "nvjpeg", "h2d", "model", "d2h", "metrics", "outputs")
SPLIT = (*SPLIT_MAIN, "reference", "decode", "resize")


@dataclass
class Split:
    """Seconds per part of a pass (SPLIT): `with split("h2d"): ...` adds the block's wall time to its part."""

    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SPLIT, 0.0))

    @contextmanager
    def __call__(self, part: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            end = time.perf_counter()
            self.seconds[part] += end - start
            TRACE.record(part, start, end, track=REFERENCE if part == "reference" else None)  # --trace: same readings

    def add(self, part: str, seconds: float, start: float | None = None) -> None:
        """Add `seconds` to `part`; with `start` (the interval's first clock reading) it is also a span in --trace."""
        self.seconds[part] += seconds
        if start is not None:
            TRACE.record(part, start, start + seconds)

    def __getitem__(self, part: str) -> float:
        return self.seconds[part]


PERCENTILES = (50.0, 90.0, 99.0)  # --percentiles' default
LEVEL = 0.95  # the median's confidence interval
UNSTABLE = 0.05  # a median whose interval's half-width exceeds this share of it is flagged unstable


def median_ranks(n: int, level: float = LEVEL) -> tuple[int, int] | None:
    """The 1-based order statistics (j, n + 1 - j) that bracket the median of any continuous distribution with at
    least `level` probability, from the binomial(n, 1/2) law of how many samples fall below it (distribution-free);
    None when even (min, max) cannot: fewer than 6 calls for 95 %. Exact up to 1,000 calls, the normal approximation
    of the binomial past that."""
    tail = (1.0 - level) / 2.0
    if n > 1000:
        j = math.floor(n / 2.0 - NormalDist().inv_cdf(1.0 - tail) * math.sqrt(n) / 2.0)
        return j, n + 1 - j
    below, j = 0, 0  # P(Binomial(n, 1/2) <= j - 1) * 2**n: the median lies below x_(j) (or above x_(n+1-j))
    while (below + math.comb(n, j)) <= tail * 2**n:
        below += math.comb(n, j)
        j += 1
    return (j, n + 1 - j) if j >= 1 else None


def median_min_calls(level: float = LEVEL) -> int:
    """The fewest calls whose median has a `level` interval (6 for 95 %)."""
    n = 1
    while median_ranks(n, level) is None:
        n += 1
    return n


def median_interval(ms: Sequence[float], level: float = LEVEL) -> list[float] | None:
    """[low, high]: a distribution-free `level` confidence interval of the median of `ms` (order statistics), or
    None with too few values for one."""
    ranks = median_ranks(len(ms), level)
    if ranks is None:
        return None
    ordered = sorted(ms)
    return [float(ordered[ranks[0] - 1]), float(ordered[ranks[1] - 1])]


def intervals_overlap(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether the intervals [low, high] `a` and `b` share a point: two medians that cannot be told apart."""
    return a[0] <= b[1] and b[0] <= a[1]


def load_average() -> float | None:
    """The 1-minute load average (None where the platform has none): read beside a timing, it says how busy the
    machine was while the figures were taken."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


@dataclass(frozen=True)
class Percentile:
    percentile: float
    ms: float


@dataclass(frozen=True)
class Timing:
    """The timing pass's figures: latency statistics in ms, every timed call, fps = images / total timed seconds.

    `latency_median_ci_ms`: the median's distribution-free 95 % interval (None: too few calls for one); `unstable`:
    its half-width is over 5 % of the median (None without an interval); `load_average` when the timing ended."""

    calls: int
    latency_median_ms: float
    latency_mean_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    latency_min_ms: float
    latency_max_ms: float
    timed_s: float
    fps: float
    latencies_ms: list[float]
    latency_median_ci_ms: Optional[list[float]] = None
    unstable: Optional[bool] = None
    latency_percentiles: list[Percentile] = field(default_factory=list)
    load_average: Optional[float] = None

    @property
    def ci_half_width(self) -> float | None:
        """The median interval's half-width as a share of the median."""
        if self.latency_median_ci_ms is None or not self.latency_median_ms:
            return None
        low, high = self.latency_median_ci_ms
        return (high - low) / 2.0 / self.latency_median_ms


def measure(run: Callable[[Any], Any], inputs: Any, synchronize: Callable[[], None], loop: int,
            warmup: int = 0, progress: Callable[[int], None] | None = None, min_duration_s: float = 0.0) -> list[float]:
    """Call `run(inputs)` `warmup` times untimed, then timed until both `loop` calls and `min_duration_s` seconds of
    timed calls are done; return each timed call's seconds.

    The device is synchronised before each clock read, so a call's time includes all the work it queued.
    """
    with span("warm-up"):
        for _ in range(warmup):
            run(inputs)
        synchronize()
    latencies, timed = [], 0.0
    while len(latencies) < loop or timed < min_duration_s:
        start = time.perf_counter()
        run(inputs)
        synchronize()
        latencies.append(time.perf_counter() - start)
        TRACE.record("timed call", start, start + latencies[-1])
        timed += latencies[-1]
        if progress:
            progress(1)
    return latencies


def summarize(latencies: list[float], images_per_call: int, percentiles: Sequence[float] = PERCENTILES,
              load: float | None = None) -> Timing:
    """Latency statistics in ms (median and its 95 % interval, mean, `percentiles`, p90, p99, min, max) and fps =
    images / total timed seconds; `load`: the load average to keep beside them."""
    ms = np.asarray(latencies, dtype=np.float64) * 1000.0
    total_s = float(ms.sum()) / 1000.0
    median = float(np.median(ms))
    interval = median_interval(ms.tolist())
    timing = Timing(
        calls=len(latencies),
        latency_median_ms=median,
        latency_mean_ms=float(ms.mean()),
        latency_p90_ms=float(np.percentile(ms, 90)),
        latency_p99_ms=float(np.percentile(ms, 99)),
        latency_min_ms=float(ms.min()),
        latency_max_ms=float(ms.max()),
        timed_s=total_s,
        fps=images_per_call * len(latencies) / total_s if total_s > 0 else float("inf"),
        latencies_ms=[float(v) for v in ms],
        latency_median_ci_ms=interval,
        latency_percentiles=[Percentile(float(p), float(np.percentile(ms, p))) for p in percentiles],
        load_average=load,
    )
    half = timing.ci_half_width
    return dataclasses.replace(timing, unstable=None if half is None else half > UNSTABLE)
