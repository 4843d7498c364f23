"""`--engine auto` decides on numbers it can trust: finalists within each other's noise are timed on, interleaved,
within a budget; a candidate whose calls spread widely (two modes) does not win on a lucky sample; a choice still
inside the noise is reported as a near tie. Fake engines with scripted latencies and a fake clock: no compiles, and
the budget is counted in the scripted milliseconds, so a busy machine cannot change what these tests see."""
from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest

from engines.base import EngineOptions
from pipeline import probe
from report.notes import auto_lines
from tests.conftest import CPU

SHAPE = (1, 3, 16, 16)
STEADY = [100.0, 101.0, 99.0, 100.5, 99.5, 100.2, 99.8]
# Two modes, 80 or 150 ms, two fast calls in three and the first one fast: its median after the first rounds is 80,
# below the steady engine's 100, which a plain lowest-median rule would take.
BIMODAL = [80.0, 80.0, 150.0]


class Clock:
    """perf_counter for the probe: each scripted call moves it on by the call's milliseconds."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def _run(monkeypatch, scripts: dict, budget_s: float | None = None):
    """probe.measure over fake finalists named as `scripts`' keys, each call's ms taken in turn from its (cycled)
    script, the first in the probe's own timed call: (the choice, the tie rounds' seconds on the fake clock)."""
    clock, calls = Clock(), {name: itertools.cycle(ms) for name, ms in scripts.items()}
    monkeypatch.setattr(probe, "time", clock)

    def timed_call(engine, inputs, threads):
        ms = next(calls[engine.name])
        clock.now += ms / 1000.0
        return ms

    finalists = []
    for name in scripts:
        entry = {"engine": name, "threads": None, "median_ms": None, "median_ci_ms": None, "spread": None,
                 "cosine_min": 1.0, "compile_s": 0.0, "first_call_ms": 1.0, "note": ""}
        engine = SimpleNamespace(name=name, parallel=1)
        finalists.append(probe._Finalist(entry, engine, None, 0.001, None, [timed_call(engine, None, None)]))
    monkeypatch.setattr(probe, "_timed_call", timed_call)
    monkeypatch.setattr(probe, "_probe_all", lambda *args: ([f.entry for f in finalists], list(finalists)))
    settled = []
    real_settle = probe._settle

    def settle(*args):
        start = clock.now
        rounds = real_settle(*args)
        settled.append((rounds, clock.now - start))
        return rounds

    monkeypatch.setattr(probe, "_settle", settle)
    target = probe.Target(None, "m", SHAPE, CPU, "fp32", EngineOptions())
    choice = probe.measure(target, list(scripts), None, tie_budget_s=budget_s)
    return choice, settled[0]


def _entry(choice, name: str) -> dict:
    return next(c for c in choice.candidates if c["engine"] == name)


def test_a_bimodal_engine_does_not_win_on_a_lucky_sample(monkeypatch):
    choice, _ = _run(monkeypatch, {"bimodal": BIMODAL, "steady": STEADY})
    bimodal, steady = _entry(choice, "bimodal"), _entry(choice, "steady")
    assert bimodal["median_ms"] < steady["median_ms"], "the setup: the bimodal engine's median is the lower"
    assert choice.engine == "steady" and bimodal["spread"] is True and steady["spread"] is False
    assert choice.near_tie and choice.runner_up["engine"] == "bimodal"
    assert "spread widely" in choice.reason and "near tie" in choice.reason
    line = auto_lines(SimpleNamespace(auto=[choice.describe()]))[0]  # the report's note on stdout
    assert "near tie" in line and "bimodal" in line and " spread" in line


def test_engines_within_each_others_noise_are_a_near_tie_with_both_medians(monkeypatch):
    choice, (rounds, seconds) = _run(monkeypatch, {"a": [100.0, 103.0, 97.0, 101.0, 99.0],
                                                   "b": [101.0, 98.0, 102.0, 100.0, 99.5]}, budget_s=3.0)
    assert rounds > 0 and choice.near_tie
    described = choice.describe()
    other = "b" if choice.engine == "a" else "a"
    assert (described["near_tie"], described["runner_up"]) == (True, other)
    for name in ("a", "b"):
        assert f"{_entry(choice, name)['median_ms']:,.1f} ms" in choice.reason
        assert _entry(choice, name)["calls"] == 1 + probe.PROBE_ROUNDS + rounds  # interleaved: one call each a round
    assert "near tie" in choice.reason and described["runner_up_median_ms"] == _entry(choice, other)["median_ms"]


def test_clearly_separated_engines_are_decided_without_extra_rounds(monkeypatch):
    choice, (rounds, _) = _run(monkeypatch, {"slow": [130.0, 131.0, 129.0], "fast": STEADY})
    assert (choice.engine, rounds, choice.near_tie) == ("fast", 0, False)
    assert all(c["calls"] == 1 + probe.PROBE_ROUNDS for c in choice.candidates)
    assert "1.30x faster than slow" in choice.reason and "near tie" not in choice.reason


def test_engines_a_few_percent_apart_are_timed_until_they_separate(monkeypatch):
    choice, (rounds, seconds) = _run(monkeypatch, {"b": [104.0, 96.0, 104.5, 103.5, 104.2],
                                                   "a": [100.0, 100.5, 99.5, 100.2, 99.8]}, budget_s=60.0)
    assert choice.engine == "a" and not choice.near_tie and 0 < rounds and seconds < 60.0


@pytest.mark.parametrize("budget_s", [None, 0.0, 1.0])
def test_the_budget_bounds_the_rounds(monkeypatch, budget_s):
    choice, (rounds, seconds) = _run(monkeypatch, {"bimodal": BIMODAL, "steady": STEADY}, budget_s)
    budget = probe.TIE_BUDGET_S if budget_s is None else budget_s  # 8 rounds of ~0.2 s are under TIE_BUDGET_S
    assert seconds <= budget and choice.near_tie
    assert rounds >= (budget - 0.5) / 0.25  # the budget is used, not left: a round here takes 0.18-0.25 s
    if budget_s == 0.0:
        assert rounds == 0 and choice.engine == "steady"  # 5 calls: the bimodal one's range already spans both modes


def test_a_spread_engine_whose_whole_interval_is_faster_than_a_steady_median_still_wins(monkeypatch):
    """Spread is not disqualifying: the steady engine is preferred only where its median could be the spread one's."""
    choice, _ = _run(monkeypatch, {"spread": [160.0, 175.0, 186.0, 170.0, 180.0, 150.0],
                                   "steady": [188.0, 189.0, 190.0, 184.0, 192.0]}, budget_s=0.0)
    spread, steady = _entry(choice, "spread"), _entry(choice, "steady")
    assert spread["spread"] and not steady["spread"] and spread["median_ci_ms"][1] >= steady["median_ci_ms"][0]
    assert choice.engine == "spread" and choice.near_tie
