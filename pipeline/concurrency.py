"""Requests in flight (`--concurrency 1,2,4`): N threads each call the engine on the resident batch, every one with a
request of its own where the engine has them (OpenVINO's infer requests; ONNX Runtime and the torch engines are
called from N threads at once), torch's CPU threads shared out between them. Each level gives throughput and its
per-call latency; the sweep says where throughput stops growing. docs/scenarios.md has the figures."""
from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch

from engines.base import Engine
from utils.device import torch_threads
from utils.timing import median_interval

PLATEAU = 0.05  # a level within this share of the best throughput: more requests no longer pay


@dataclass(frozen=True)
class Level:
    """One concurrency: calls made by all its threads, images per second over its wall time, each call's latency."""

    concurrency: int
    calls: int
    wall_s: float
    images_per_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    latency_median_ci_ms: Optional[list[float]]
    torch_threads: Optional[int]  # torch's intra-op threads per request (None: the engine's own pool)


@dataclass(frozen=True)
class Sweep:
    """Every level asked for, the best (highest throughput), and the fewest requests within PLATEAU of it: where
    throughput stops growing. `skipped`: levels not measured, and why."""

    levels: list[Level]
    best: int
    plateau: int
    skipped: list[str] = field(default_factory=list)
    failed: Optional[str] = None  # the engine's error when it failed with requests side by side (no level kept)


@contextmanager
def shared_threads(engine: Engine, n: int, total: int | None) -> Any:
    """torch's intra-op threads shared out between `n` requests (each thread that calls into torch gets its own team
    of `total // n`); other engines keep their own pools. Yields the threads per request, or None."""
    if engine.name not in ("torch", "torchscript", "inductor", "torch_npu") or engine.device.type != "cpu":
        yield None
        return
    each = max(1, (total or torch.get_num_threads()) // n)
    with torch_threads(each):
        yield each


def bind_device(engine: Engine) -> None:
    """Make the engine's device current in this thread: a new thread starts on device 0 (and, on Ascend, without the
    context its runtime set up in the thread that built the engine), and a request (or LoadGen's SUT) calls the
    engine from a thread of its own."""
    device = engine.device
    if device.type == "cuda":
        torch.cuda.set_device(device.index or 0)
    elif device.type == "npu" and engine.name == "torch_aie":
        import torch_aie

        torch_aie.set_device(device.index or 0)
    elif device.type == "npu":
        torch.npu.set_device(device.index or 0)  # torch.npu exists once torch_npu built the engine


def _callers(engine: Engine, n: int) -> list[Callable[[Any], Any]] | None:
    """`n` callables to run side by side, or None where this engine cannot have `n` requests in flight here."""
    if engine.request is not None:
        return [engine.request() for _ in range(n)]
    if n == 1 or engine.device.type == "cpu":
        return [engine.run] * n
    return None


class _Requests:
    """`n` threads, one request each: warm-up calls, a common start, then timed calls until each made `calls_each` and
    `min_duration_s` have passed since the start (or the main thread was interrupted)."""

    def __init__(self, engine: Engine, callers: list, native: Any, calls_each: int, warmup: int,
                 min_duration_s: float):
        self.engine, self.callers, self.native = engine, callers, native
        self.calls_each, self.warmup, self.min_duration_s = calls_each, warmup, min_duration_s
        self.latencies: list[list[float]] = [[] for _ in callers]
        self.errors: list[BaseException] = []
        self.ready = threading.Barrier(len(callers) + 1)
        self.stop = threading.Event()
        self.start = 0.0

    def _more(self, mine: list[float]) -> bool:
        return not self.stop.is_set() and (len(mine) < self.calls_each
                                           or time.perf_counter() - self.start < self.min_duration_s)

    def work(self, k: int) -> None:
        call, mine = self.callers[k], self.latencies[k]
        try:
            bind_device(self.engine)
            for _ in range(max(1, self.warmup)):
                call(self.native)
            self.engine.synchronize()
        except BaseException as exc:  # noqa: BLE001  raised in the caller's thread once all have ended
            self.errors.append(exc)
        try:
            self.ready.wait()
        except threading.BrokenBarrierError:  # the main thread was interrupted before the start
            return
        try:
            while not self.errors and self._more(mine):
                start = time.perf_counter()
                call(self.native)
                self.engine.synchronize()
                mine.append(time.perf_counter() - start)
        except BaseException as exc:  # noqa: BLE001
            self.errors.append(exc)

    def run(self) -> float:
        """The wall seconds from the common start to the last request's end."""
        workers = [threading.Thread(target=self.work, args=(k,), name=f"request-{k}", daemon=True)
                   for k in range(len(self.callers))]
        for w in workers:
            w.start()
        try:
            self.ready.wait()
            self.start = time.perf_counter()
            for w in workers:
                w.join()
        except BaseException:  # Ctrl-C: the requests end with their current call, then the signal goes on
            self.stop.set()
            self.ready.abort()
            for w in workers:
                w.join()
            raise
        if self.errors:
            raise self.errors[0]
        return time.perf_counter() - self.start


def run_level(engine: Engine, native: Any, n: int, calls_each: int, warmup: int, min_duration_s: float,
              images_per_call: int, threads: int | None = None) -> Level | None:
    """One concurrency's figures (None: the engine cannot have `n` requests in flight here)."""
    callers = _callers(engine, n)
    if callers is None:
        return None
    requests = _Requests(engine, callers, native, calls_each, warmup, min_duration_s)
    with shared_threads(engine, n, threads) as each:
        wall = requests.run()
    ms = np.asarray([v for mine in requests.latencies for v in mine]) * 1000.0
    return Level(n, int(ms.size), wall, images_per_call * ms.size / wall, float(np.percentile(ms, 50)),
                 float(np.percentile(ms, 99)), median_interval(ms.tolist()), each)


def sweep(engine: Engine, native: Any, levels: Sequence[int], calls_each: int, warmup: int, min_duration_s: float,
          images_per_call: int, threads: int | None = None) -> Sweep:
    """Every level in `levels`, in order; the best and the plateau (the fewest requests within PLATEAU of the best)."""
    done, skipped = [], []
    for n in levels:
        level = run_level(engine, native, n, calls_each, warmup, min_duration_s, images_per_call, threads)
        if level is None:
            skipped.append(f"concurrency {n}: {engine.name} on {engine.device} has no independent requests: one at a "
                           "time")
        else:
            done.append(level)
    if not done:
        return Sweep([], 1, 1, skipped)
    top = max(done, key=lambda lv: lv.images_per_s)
    plateau = min(lv.concurrency for lv in done if lv.images_per_s >= (1.0 - PLATEAU) * top.images_per_s)
    return Sweep(done, top.concurrency, plateau, skipped)
