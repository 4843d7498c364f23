"""Latency measurement: warm-up apart, a device sync before every clock read, per-call latencies kept."""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

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
            self.seconds[part] += time.perf_counter() - start

    def add(self, part: str, seconds: float) -> None:
        self.seconds[part] += seconds

    def __getitem__(self, part: str) -> float:
        return self.seconds[part]


@dataclass(frozen=True)
class Timing:
    """The timing pass's figures: latency statistics in ms, every timed call, fps = images / total timed seconds."""

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


def measure(run: Callable[[Any], Any], inputs: Any, synchronize: Callable[[], None], loop: int,
            warmup: int = 0, progress: Callable[[int], None] | None = None) -> list[float]:
    """Call `run(inputs)` `warmup` times untimed, then `loop` times timed; return each timed call's seconds.

    The device is synchronised before each clock read, so a call's time includes all the work it queued.
    """
    for _ in range(warmup):
        run(inputs)
    synchronize()
    latencies = []
    for _ in range(loop):
        start = time.perf_counter()
        run(inputs)
        synchronize()
        latencies.append(time.perf_counter() - start)
        if progress:
            progress(1)
    return latencies


def summarize(latencies: list[float], images_per_call: int) -> Timing:
    """Latency statistics in ms (median, mean, p90, p99, min, max) and fps = images / total timed seconds."""
    ms = np.asarray(latencies, dtype=np.float64) * 1000.0
    total_s = float(ms.sum()) / 1000.0
    return Timing(
        calls=len(latencies),
        latency_median_ms=float(np.median(ms)),
        latency_mean_ms=float(ms.mean()),
        latency_p90_ms=float(np.percentile(ms, 90)),
        latency_p99_ms=float(np.percentile(ms, 99)),
        latency_min_ms=float(ms.min()),
        latency_max_ms=float(ms.max()),
        timed_s=total_s,
        fps=images_per_call * len(latencies) / total_s if total_s > 0 else float("inf"),
        latencies_ms=[float(v) for v in ms],
    )
