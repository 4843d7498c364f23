"""The timing loop on a fake engine with a fake clock: warm-up excluded, sync before every read, exact statistics."""
from __future__ import annotations

import pytest

from utils import timing


class FakeClock:
    """perf_counter that advances only when the fake engine 'computes', and records the call order."""

    def __init__(self):
        self.now = 0.0
        self.events = []

    def perf_counter(self):
        self.events.append("clock")
        return self.now


def test_measure_excludes_warmup_and_syncs_before_each_read(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(timing.time, "perf_counter", clock.perf_counter)
    durations = iter([9.0, 9.0, 0.010, 0.020, 0.030, 0.040])  # two slow warm-up calls, then four timed calls

    def run(x):
        clock.events.append("run")
        clock.now += next(durations)

    def sync():
        clock.events.append("sync")

    latencies = timing.measure(run, None, sync, loop=4, warmup=2)
    assert latencies == pytest.approx([0.010, 0.020, 0.030, 0.040])
    assert clock.events[:4] == ["run", "run", "sync", "clock"]
    assert clock.events[4:8] == ["run", "sync", "clock", "clock"]


def test_summarize_statistics():
    stats = timing.summarize([0.010, 0.020, 0.030, 0.040, 0.100], images_per_call=4)
    assert stats.latency_median_ms == pytest.approx(30.0)
    assert stats.latency_mean_ms == pytest.approx(40.0)
    assert stats.latency_min_ms == pytest.approx(10.0)
    assert stats.latency_max_ms == pytest.approx(100.0)
    assert stats.latency_p90_ms == pytest.approx(76.0)  # linear interpolation between 40 and 100
    assert stats.latency_p99_ms == pytest.approx(97.6)
    assert stats.fps == pytest.approx(4 * 5 / 0.2)  # images / total timed seconds, not 1 / mean latency per call
    assert stats.calls == 5 and stats.latencies_ms == pytest.approx([10.0, 20.0, 30.0, 40.0, 100.0])
