"""The timing loop on a fake engine with a fake clock: warm-up excluded, sync before every read, exact statistics."""
from __future__ import annotations

import itertools
import json
import math
import time

import numpy as np
import pytest

from tests.test_hostile import FAST
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


def test_measure_goes_on_until_both_the_calls_and_the_seconds_are_done(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(timing.time, "perf_counter", clock.perf_counter)

    def run(x):
        clock.now += 0.010

    assert len(timing.measure(run, None, lambda: None, loop=2, min_duration_s=0.055)) == 6  # 6 x 10 ms >= 55 ms
    assert len(timing.measure(run, None, lambda: None, loop=8, min_duration_s=0.055)) == 8  # the calls go further
    assert len(timing.measure(run, None, lambda: None, loop=3)) == 3  # no duration: exactly --loop, as the original


def _coverage(n: int, j: int) -> float:
    """P(x_(j) <= median <= x_(n+1-j)) for n draws of any continuous distribution, exactly."""
    return 1.0 - 2.0 * sum(math.comb(n, i) for i in range(j)) / 2**n


def test_median_interval_is_the_narrowest_order_statistics_pair_with_95_percent():
    assert [timing.median_ranks(n) for n in (1, 5)] == [None, None]  # even (min, max) holds the median < 95 %
    assert timing.median_min_calls() == 6
    for n in list(range(6, 120)) + [500, 1000]:
        j, k = timing.median_ranks(n)
        assert k == n + 1 - j and _coverage(n, j) >= 0.95 > _coverage(n, j + 1), n
    j, _ = timing.median_ranks(1001)  # past 1,000: the normal approximation, within a hair of the exact pair
    assert _coverage(1001, j) >= 0.95 - 1e-3


def test_median_interval_covers_a_skewed_medians_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    draws = rng.lognormal(0.0, 1.0, size=(4000, 12))  # the true median is exp(0) = 1; skewed like latencies
    covered = [low <= 1.0 <= high for low, high in (timing.median_interval(list(d)) for d in draws)]
    assert 0.95 <= np.mean(covered) <= 0.99  # n = 12: the pair (3, 10) covers 96.1 %


def test_a_bimodal_timer_is_unstable_a_steady_one_is_not_and_too_few_calls_have_no_interval():
    bimodal = timing.summarize([0.010, 0.020] * 10, 1)  # two modes, 2x apart: the median could be either
    steady = timing.summarize([0.010 + 0.00001 * i for i in range(20)], 1)
    few = timing.summarize([0.010] * 5, 1)
    assert bimodal.unstable and bimodal.latency_median_ci_ms == pytest.approx([10.0, 20.0])
    assert steady.unstable is False and steady.ci_half_width < 0.01
    assert few.latency_median_ci_ms is None and few.unstable is None
    shown = timing.summarize([0.010, 0.020], 1, (50, 99.9)).latency_percentiles
    assert [p.percentile for p in shown] == [50, 99.9] and [p.ms for p in shown] == pytest.approx([15.0, 19.99])


def test_a_noisy_engine_is_flagged_unstable_on_stdout_and_in_the_json(small_set, tmp_path, monkeypatch, capsys):
    """An engine whose calls take 0 or 25 ms more, in turn (a busy neighbour, a bimodal engine): the row says
    unstable, why, and what to do; the table shows the interval and the percentiles asked for."""
    import pipeline.passes
    import sample

    real = pipeline.passes.measure
    calls = itertools.count()

    def noisy_measure(run, *args, **kwargs):
        def noisy(inputs):
            out = run(inputs)
            time.sleep(0.025 * (next(calls) % 2))
            return out
        return real(noisy, *args, **kwargs)

    monkeypatch.setattr(pipeline.passes, "measure", noisy_measure)
    images, masks = small_set
    report = tmp_path / "r.json"
    code = sample.main(FAST + ["--image_path", images, "--mask_path", masks, "--loop", "12", "--percentiles",
                               "99.9,50", "--min_duration", "0.01", "--json", str(report)])
    out = capsys.readouterr().out
    assert code == 0
    row = json.loads(report.read_text())["rows"][0]
    assert row["unstable"] is True and row["calls"] == 12 and row["load_average"] is not None
    assert [p["percentile"] for p in row["latency_percentiles"]] == [50, 99.9]
    assert "torch fp32: unstable: the median's 95 % interval is" in out and "rerun on a quiet machine" in out
    header, _, line = out.split("\n\n")[1].splitlines()[:3]
    assert "±95%" in header and "p99.9 ms" in header and "p90 ms" not in header and "%!" in line
    assert "and more until 0.01 s are timed" in out


@pytest.mark.parametrize("flag, value, message", [("--percentiles", "50,abc", "expected a comma list such as 50,90,99"),
                                                  ("--percentiles", "0,50", "percentiles lie in (0, 100]"),
                                                  ("--min_duration", "-1", "must be from 0 to 86400 s")])
def test_bad_timing_flags_are_a_usage_error(flag, value, message, capsys):
    import sample

    with pytest.raises(SystemExit) as exit_:
        sample.main([flag, value])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
