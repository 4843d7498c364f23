"""`--auto_budget`: the probe tries the engines cheapest build first (as last measured on this machine, else a prior
with eager torch first), stops trying when its budget is spent, cuts the finalists' rounds to fit, names what it left
out, and a kept choice that left engines out is measured again under a larger budget. Fake engines with scripted
build and call times on a fake clock: no compiles, and a busy machine cannot change what these tests see."""
from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest

import sample
from engines.base import EngineOptions
from engines.cache import ArtifactCache
from pipeline import auto, probe, probe_budget
from pipeline.probe_budget import ProbeBudget, costs_path, keep_costs, probe_order, read_costs
from tests.conftest import CPU

SHAPE = (1, 3, 16, 16)


class Clock:
    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _measure(monkeypatch, engines: dict, total_s: float, known: dict | None = None):
    """probe.measure over fake candidates {name: (build s, [call ms, ...])}, in probe_order, within `total_s`."""
    clock = Clock()
    for module in (probe, probe_budget):
        monkeypatch.setattr(module, "time", clock)
    calls = {name: itertools.cycle(ms) for name, (_, ms) in engines.items()}

    def timed_call(engine, inputs, threads):
        ms = next(calls[engine.name])
        clock.now += ms / 1000.0
        return ms

    def fake_probe(name, target, given, best_ms=None):
        build_s, _ = engines[name]
        clock.now += build_s
        entry = {"engine": name, "threads": None, "median_ms": None, "median_ci_ms": None, "spread": None,
                 "cosine_min": 1.0, "compile_s": build_s, "first_call_ms": 1.0, "note": "", "built_now": True}
        engine = SimpleNamespace(name=name, parallel=1)
        for _ in range(probe_budget.CALLS_PER_CANDIDATE - 1):
            timed_call(engine, None, None)
        finalist = probe._Finalist(entry, engine, None, 0.001, None, [timed_call(engine, None, None)])
        entry["median_ms"] = finalist.times[0]
        return entry, finalist

    monkeypatch.setattr(probe, "probe", fake_probe)
    monkeypatch.setattr(probe, "_timed_call", timed_call)
    monkeypatch.setattr(probe, "_discard_losers", lambda *args: None)
    budget = ProbeBudget(total_s, known=dict(known or {}))
    target = probe.Target(None, "m", SHAPE, CPU, "fp32", EngineOptions())
    names = probe_order(list(engines), budget.known)
    return probe.measure(target, names, None, budget=budget), names


def test_nothing_known_eager_torch_goes_first_then_the_prior_order():
    assert probe_order(["openvino", "inductor", "onnxruntime", "torchscript", "torch"], {}) == \
        ["torch", "onnxruntime", "openvino", "torchscript", "inductor"]
    # what this machine measured comes first: inductor's build was cheap here (its own cache was warm)
    assert probe_order(["openvino", "inductor", "torch"], {"inductor": 0.5, "openvino": 9.0}) == \
        ["torch", "inductor", "openvino"]


def test_the_probe_stops_trying_engines_when_the_budget_is_spent(monkeypatch):
    engines = {"torch": (0.0, [1600.0]), "onnxruntime": (3.3, [1000.0]), "openvino": (3.9, [990.0]),
               "torchscript": (9.9, [1700.0])}
    choice, order = _measure(monkeypatch, engines, total_s=15.0)
    assert order == ["torch", "onnxruntime", "openvino", "torchscript"]
    tried = [c["engine"] for c in choice.candidates]
    # torch took 4.8 s; onnxruntime's expected 3.3 + 3 x 1.6 s fit the 10.2 s left and it took 6.3 s; openvino's
    # 3.9 + 3 x 1.0 s do not fit the 3.9 s left, nor torchscript's
    assert tried == ["torch", "onnxruntime"]
    assert choice.engine == "onnxruntime" and choice.source == "measured"
    assert choice.not_tried == ["openvino", "torchscript"] and choice.budget_s == 15.0
    assert "not tried" in choice.reason and "openvino, torchscript" in choice.reason
    described = choice.describe()
    assert described["not_tried"] == ["openvino", "torchscript"] and described["budget_s"] == 15.0
    assert choice.builds == {"torch": 0.0, "onnxruntime": 3.3}, "the build times kept for the next run's order"


def test_a_known_build_that_cannot_fit_is_not_started(monkeypatch):
    engines = {"torch": (0.0, [100.0]), "inductor": (30.0, [50.0]), "onnxruntime": (1.0, [60.0])}
    choice, order = _measure(monkeypatch, engines, total_s=20.0, known={"inductor": 30.0, "onnxruntime": 1.0})
    assert order == ["torch", "onnxruntime", "inductor"]
    assert [c["engine"] for c in choice.candidates] == ["torch", "onnxruntime"]
    assert choice.not_tried == ["inductor"], "30 s of build measured here cannot fit the ~19 s left"


def test_rounds_the_budget_cannot_hold_are_cut_and_the_tie_is_said(monkeypatch):
    engines = {"a": (0.0, [100.0, 104.0, 97.0]), "b": (0.0, [101.0, 96.0, 103.0])}
    # the two probes (0.6 s), then one round of 0.2 s
    choice, _ = _measure(monkeypatch, engines, total_s=0.9, known={"a": 0.0, "b": 0.0})
    assert choice.cut and not choice.not_tried
    assert all(c["calls"] < 6 for c in choice.candidates), "the rounds stopped short of 6 calls each"
    assert choice.near_tie, "calls too few to part them: said as a near tie, not a win"


def test_build_costs_are_kept_per_machine(tmp_path):
    path = costs_path(str(tmp_path), {"cpu": "x"}, "cpu")
    assert read_costs(path) == {}
    keep_costs(path, {"onnxruntime": 3.26})
    keep_costs(path, {"openvino": 3.9})
    assert read_costs(path) == {"onnxruntime": 3.26, "openvino": 3.9}
    assert costs_path(str(tmp_path), {"cpu": "y"}, "cpu") != path, "another machine's file"
    with open(path, "w") as f:
        f.write("{damaged")
    assert read_costs(path) == {}, "a damaged file: the prior order, no error"


@pytest.mark.parametrize("budget_s, measured_again", [(20.0, False), (120.0, True)])
def test_a_choice_that_left_engines_out_is_measured_again_under_a_larger_budget(monkeypatch, tmp_path, budget_s,
                                                                              measured_again):
    options = EngineOptions(cache=ArtifactCache(str(tmp_path)))
    target = probe.Target(None, "m", SHAPE, CPU, "fp32", options)
    monkeypatch.setattr(auto, "candidates", lambda device, precision: ["torch", "onnxruntime"])
    measured = []

    def fake_measure(target, names, given, log, budget=None):
        measured.append(budget.total_s)
        return probe.Choice("torch", "fp32", "measured", not_tried=["onnxruntime"], budget_s=budget.total_s)

    monkeypatch.setattr(auto, "measure", fake_measure)
    given = lambda: None  # noqa: E731
    first = auto.choose(target, given, "measure", budget=ProbeBudget(20.0))
    assert first.source == "measured" and first.record, "kept"
    again = auto.choose(target, given, "measure", budget=ProbeBudget(budget_s))
    assert (again.source == "measured") == measured_again
    assert measured == [20.0, 120.0] if measured_again else measured == [20.0]
    if not measured_again:
        assert again.not_tried == ["onnxruntime"], "the kept choice still says what it left out"


def test_the_cli_says_up_front_what_the_probe_is_and_how_to_skip_it(small_set, tmp_path, capsys):
    images, masks = small_set
    code = sample.main(["--image_path", images, "--mask_path", masks, "--image_size", "64", "--loop", "2",
                        "--warm_counter", "0", "--cache_dir", str(tmp_path / "cache"), "--auto_budget", "7"])
    err = capsys.readouterr().err
    assert code == 0
    assert "once per machine, model, shape and precision" in err and "--engine torch" in err
    assert "up to about 7 s (--auto_budget)" in err
