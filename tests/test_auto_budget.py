"""`--auto_budget`: the probe tries the engines cheapest build first (as last measured on this machine, else a prior
with eager torch first), stops trying when its budget is spent, cuts the finalists' rounds to fit, names what it left
out and why, keeps whether its choice was complete, and a kept choice the budget cut short is measured again under a
larger budget (reused, and said to be incomplete, under one no larger). Fake engines with scripted build and call
times on a fake clock, and kept records written by hand: no compiles, and a busy machine cannot change what these
tests see; one test probes the small UNet++ for real."""
from __future__ import annotations

import itertools
import json
import sys
import time
from types import SimpleNamespace

import pytest
import torch

import sample
from dataset.batches import Batch
from engines.base import EngineOptions
from engines.cache import ArtifactCache
from pipeline import auto, probe, probe_budget
from pipeline.passes import Reference
from pipeline.probe_budget import ProbeBudget, bar_label, costs_path, keep_costs, probe_order, read_costs
from tests.conftest import CPU, SHAPE64, small_model

SHAPE = (1, 3, 16, 16)


class Clock:
    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _measure(monkeypatch, engines: dict, total_s: float, known: dict | None = None, budget: ProbeBudget | None = None,
             log=lambda line: None):
    """probe.measure over fake candidates {name: (build s, [call ms, ...])}, in probe_order, within `total_s` (or
    `budget`, begun by the caller), its lines to `log`."""
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
        for _ in range(probe_budget.probe_calls(name) - 1):
            timed_call(engine, None, None)
        finalist = probe._Finalist(entry, engine, None, 0.001, None, [timed_call(engine, None, None)])
        entry["median_ms"] = finalist.times[0]
        return entry, finalist

    monkeypatch.setattr(probe, "probe", fake_probe)
    monkeypatch.setattr(probe, "_timed_call", timed_call)
    monkeypatch.setattr(probe, "_discard_losers", lambda *args: None)
    budget = budget or ProbeBudget(total_s, known=dict(known or {}))
    budget.start = clock.now  # begun on the fake clock
    target = probe.Target(None, "m", SHAPE, CPU, "fp32", EngineOptions())
    names = probe_order(list(engines), budget.known)
    return probe.measure(target, names, None, log, budget=budget), names


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
    # torch took 3.2 s (2 calls: eager torch's first and its timed one); onnxruntime's expected 3.3 + 3 x 1.6 s fit
    # the 11.8 s left and it took 6.3 s; openvino's 3.9 + 3 x 1.0 s do not fit the 5.5 s left, nor torchscript's
    assert tried == ["torch", "onnxruntime"]
    assert choice.engine == "onnxruntime" and choice.source == "measured"
    assert choice.not_tried == ["openvino", "torchscript"] and choice.budget_s == 15.0
    # why: too little was left to start them (5.5 s: ~3.9 s of build each and 3 calls of ~1 s), not a budget "spent"
    assert "; not tried: openvino, torchscript: too little budget left (5.5 s of the --auto_budget's 15 s) to build " \
           "openvino (about 3.9 s typically) or torchscript (about 9.9 s typically) and time each (about 3.0 s)" \
        in choice.reason, choice.reason
    assert "being spent" not in choice.reason
    described = choice.describe()
    assert described["not_tried"] == ["openvino", "torchscript"] and described["budget_s"] == 15.0
    assert choice.builds == {"torch": 0.0, "onnxruntime": 3.3}, "the build times kept for the next run's order"


def test_a_known_build_that_cannot_fit_is_not_started(monkeypatch):
    engines = {"torch": (0.0, [100.0]), "inductor": (30.0, [50.0]), "onnxruntime": (1.0, [60.0])}
    choice, order = _measure(monkeypatch, engines, total_s=20.0, known={"inductor": 30.0, "onnxruntime": 1.0})
    assert order == ["torch", "onnxruntime", "inductor"]
    assert [c["engine"] for c in choice.candidates] == ["torch", "onnxruntime"]
    assert choice.not_tried == ["inductor"], "30 s of build measured here cannot fit the ~19 s left"
    assert "too little budget left (18.6 s of the --auto_budget's 20 s) to build inductor (about 30.0 s last time) " \
           "and time it (about 0.2 s)" in choice.reason, choice.reason


def test_rounds_the_budget_cannot_hold_are_cut_and_the_tie_is_said(monkeypatch):
    engines = {"a": (0.0, [100.0, 104.0, 97.0]), "b": (0.0, [101.0, 96.0, 103.0])}
    # the two probes (0.6 s), then one round of 0.2 s
    choice, _ = _measure(monkeypatch, engines, total_s=0.9, known={"a": 0.0, "b": 0.0})
    assert choice.cut and not choice.not_tried
    assert all(c["calls"] < 6 for c in choice.candidates), "the rounds stopped short of 6 calls each"
    assert choice.near_tie, "calls too few to part them: said as a near tie, not a win"
    assert "ended the finalists' rounds after 2 calls each" in choice.reason, choice.reason


def test_one_call_each_is_said_in_the_singular(monkeypatch):
    engines = {"a": (0.0, [100.0, 104.0, 97.0]), "b": (0.0, [101.0, 96.0, 103.0])}
    # no round of 0.2 s fits in what the two probes (0.6 s) leave
    choice, _ = _measure(monkeypatch, engines, total_s=0.7, known={"a": 0.0, "b": 0.0})
    assert choice.cut and all(c["calls"] == 1 for c in choice.candidates)
    assert "ended the finalists' rounds after 1 call each" in choice.reason, choice.reason
    assert "1 call each is too few for 95 % intervals to part them" in choice.reason, choice.reason
    assert "1 calls" not in choice.reason


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


def _kept_choices(monkeypatch, tmp_path, names: list, made: dict):
    """auto.choose with a cache in `tmp_path` among `names`, probe.measure replaced by one that returns `made`'s
    choice (Choice fields) under whatever budget it gets: (choose(budget_s), the calls measure got, the record)."""
    options = EngineOptions(cache=ArtifactCache(str(tmp_path)))
    target = probe.Target(None, "m", SHAPE, CPU, "fp32", options)
    monkeypatch.setattr(auto, "candidates", lambda device, precision: list(names))
    measured = []

    def fake_measure(target, names, given, log, budget=None):
        measured.append((list(names), None if budget is None else budget.total_s))
        fields = dict(made, budget_s=None if budget is None else budget.total_s)
        return probe.Choice(made["engine"], "fp32", "measured", **{k: v for k, v in fields.items() if k != "engine"})

    monkeypatch.setattr(auto, "measure", fake_measure)
    lines: list = []

    def choose(budget_s):
        budget = None if budget_s is None else ProbeBudget(budget_s)
        return auto.choose(target, lambda: None, "measure", lines.append, budget)

    return choose, measured, lines


def _record(choice) -> dict:
    with open(choice.record) as f:
        return json.load(f)


@pytest.mark.parametrize("left_out", [{"not_tried": ["onnxruntime"]}, {"cut": True}])
@pytest.mark.parametrize("budget_s, measured_again", [(10.0, False), (20.0, False), (120.0, True), (None, True)])
def test_a_choice_the_budget_cut_short_is_measured_again_under_a_larger_budget(monkeypatch, tmp_path, budget_s,
                                                                             measured_again, left_out):
    choose, measured, lines = _kept_choices(monkeypatch, tmp_path, ["torch", "onnxruntime"],
                                            dict(engine="torch", **left_out))
    first = choose(20.0)
    kept = _record(first)
    assert first.source == "measured" and kept["complete"] is False and kept["budget_s"] == 20.0
    assert kept["cut"] == bool(left_out.get("cut")) and kept["not_tried"] == left_out.get("not_tried", [])
    again = choose(budget_s)
    assert (again.source == "measured") == measured_again
    assert [b for _, b in measured] == ([20.0, budget_s] if measured_again else [20.0])
    if measured_again:
        said = [line for line in lines if "the kept choice, torch, is incomplete" in line]
        assert said and "measuring again" in said[0], lines
        return
    # an equal or smaller budget reuses it, and the report's line says it is incomplete and how to measure again
    assert again.not_tried == left_out.get("not_tried", []) and again.cut == bool(left_out.get("cut"))
    shortfall = "it left out onnxruntime" if left_out.get("not_tried") else "its finalists' rounds were cut short"
    assert f"incomplete: within the --auto_budget of 20 s {shortfall}; to measure again, run with a larger budget " \
           f"(e.g. --auto_budget " in again.reason and "python sample.py --clear_cache" in again.reason, again.reason
    larger = float(again.reason.split("--auto_budget ")[-1].split(")")[0])
    assert larger > 20.0, "the suggested budget is one that measures again"


def test_a_complete_choice_is_kept_whatever_the_budget(monkeypatch, tmp_path):
    choose, measured, _ = _kept_choices(monkeypatch, tmp_path, ["torch", "onnxruntime"], dict(engine="onnxruntime"))
    first = choose(20.0)
    assert _record(first)["complete"] is True
    again = choose(600.0)
    assert again.source == "cached" and len(measured) == 1 and "incomplete" not in again.reason


@pytest.mark.parametrize("old, reused", [({}, True), ({"not_tried": ["onnxruntime"], "budget_s": 20.0}, False)])
def test_a_record_kept_by_an_earlier_version_is_still_read(monkeypatch, tmp_path, old, reused):
    """Records from before `complete`/`cut` existed: one without budget fields is complete; one that names engines
    not tried was incomplete then too."""
    choose, measured, _ = _kept_choices(monkeypatch, tmp_path, ["torch", "onnxruntime"], dict(engine="torch"))
    first = choose(20.0)
    kept = _record(first)
    for name in ("complete", "cut", "not_tried", "budget_s"):
        kept.pop(name)
    with open(first.record, "w") as f:
        json.dump({**kept, **old}, f)
    again = choose(120.0)
    assert (again.source == "cached") == reused and len(measured) == (1 if reused else 2)
    if reused:
        assert again.engine == "torch" and "incomplete" not in again.reason


def test_measuring_again_builds_again_only_what_could_change(monkeypatch, tmp_path):
    """The engines the earlier probe could not compile, or whose output missed the bar, are not built again (same
    packages, model, shape: same outcome); their entries stay in the report. Those it timed are timed again."""
    entries = [{"engine": "torch", "threads": None, "median_ms": 9.0, "note": ""},
               {"engine": "openvino", "threads": None, "median_ms": None, "note": "did not compile: no plugin"},
               {"engine": "onnxruntime", "threads": None, "median_ms": None,
                "note": "below the fp32 fidelity bar 0.999"}]
    names = ["torch", "openvino", "onnxruntime", "inductor"]
    choose, measured, _ = _kept_choices(monkeypatch, tmp_path, names,
                                        dict(engine="torch", not_tried=["inductor"], candidates=entries))
    choose(20.0)
    again = choose(120.0)
    assert measured[-1][0] == ["torch", "inductor"], "only the timed and the untried engines are probed again"
    carried = {c["engine"]: c["note"] for c in again.candidates}
    assert carried["openvino"].startswith("did not compile") and "not built again" in carried["openvino"]
    assert "not built again" in carried["onnxruntime"]


def test_the_probes_lines_are_written_above_its_bar_which_names_the_phase(monkeypatch, capsys):
    """The bar redraws itself with a carriage return from its own thread; a line printed through it comes out on the
    bar's line. Through wrap(), each line stands alone (after the last carriage return of its line) and becomes the
    bar's label: the finalists' timing phase shows as such."""
    budget = ProbeBudget(0.7, known={"a": 0.0, "b": 0.0}, show=True)
    logged = []

    def log(line):
        logged.append(line)
        print(line, file=sys.stderr)

    budget.begin("auto fp32")
    try:
        engines = {"a": (0.0, [100.0, 104.0, 97.0]), "b": (0.0, [101.0, 96.0, 103.0])}
        _measure(monkeypatch, engines, total_s=0.7, budget=budget, log=budget.wrap(log))
        assert budget._bar.desc == "auto fp32: timing a, b in turn", "the label follows the probe into its rounds"
    finally:
        budget.end()
    assert logged[-1] == "auto fp32: timing a, b in turn ...", logged
    err = capsys.readouterr().err
    for line in logged:
        shown = [part.split("\r")[-1] for part in err.split("\n") if line in part]
        assert shown == [line], f"garbled: {shown!r}"
    assert bar_label("x" * 100, 20) == "x" * 17 + "..." and bar_label("auto fp32: probing torch ...") == \
        "auto fp32: probing torch"


def test_a_real_probe_cut_short_is_kept_incomplete_then_completed(tmp_path):
    """The small UNet++ at 64 px, eager torch and TorchScript for real: a budget too small for TorchScript's build
    keeps torch, said to be incomplete; the same budget reuses it; a larger one probes TorchScript too."""
    net = small_model()
    batch = torch.rand(SHAPE64)
    with torch.inference_mode():
        given = probe.ProbeInput(batch, 1, net(batch))
    options = EngineOptions(cache=ArtifactCache(str(tmp_path)), threads=1)
    target = probe.Target(net, "small", SHAPE64, CPU, "fp32", options)
    names = ["torch", "torchscript"]  # both part of torch: present wherever the sample runs
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(auto, "candidates", lambda device, precision: list(names))
        first = auto.choose(target, lambda: given, "measure", budget=ProbeBudget(0.5))
        assert first.source == "measured" and first.not_tried == ["torchscript"] and _record(first)["complete"] is False
        again = auto.choose(target, lambda: given, "measure", budget=ProbeBudget(0.5))
        assert again.source == "cached" and "incomplete: within the --auto_budget of 0.5 s it left out torchscript" \
            in again.reason
        full = auto.choose(target, lambda: given, "measure", budget=ProbeBudget(600.0))
    assert full.source == "measured" and not full.not_tried and _record(full)["complete"] is True
    assert {c["engine"] for c in full.candidates} == {"torch", "torchscript"}


def test_the_cli_says_up_front_what_the_probe_is_and_how_to_skip_it(small_set, tmp_path, capsys):
    images, masks = small_set
    code = sample.main(["--image_path", images, "--mask_path", masks, "--image_size", "64", "--loop", "2",
                        "--warm_counter", "0", "--cache_dir", str(tmp_path / "cache"), "--auto_budget", "7"])
    err = capsys.readouterr().err
    assert code == 0
    assert "once per machine, model, shape and precision" in err and "--engine torch" in err
    assert "up to about 7 s (--auto_budget)" in err


def _job(net, batch=None, reference=None) -> SimpleNamespace:
    """What auto._first_input reads of a run: its model, shape, reference and batches (one, or none that decodes)."""
    return SimpleNamespace(reference=reference, model=net, shape=SHAPE64,
                           batches=lambda: iter([] if batch is None else [batch]))


def test_eager_torch_takes_the_references_call_as_its_first_and_times_one_more(monkeypatch):
    """The probe's reference is the CPU model's first call on the probe's batch; eager torch at fp32 on the CPU calls
    that very model, so its probe makes one call in all (the timed one) and reports the reference's as its first.
    With other threads than the reference ran with, and in the leader's run again at one thread per core, it makes
    its own first call (and no untimed call beyond it)."""
    net, calls = small_model(), []
    net.register_forward_hook(lambda module, args, out: calls.append(1))
    pixels = torch.randint(0, 256, (1, 64, 64, 3), dtype=torch.uint8)
    batch = Batch(["car_01"], pixels, None, 1, [(64, 64)])
    for job in (_job(net, batch), _job(net)):  # a real batch; noise when nothing decodes
        calls.clear()
        given = auto._first_input(job)()
        assert len(calls) == 1 and given.first_call.threads == torch.get_num_threads() and given.first_call.seconds > 0
        target = probe.Target(net, "small", SHAPE64, CPU, "fp32", EngineOptions())
        entry, finalist = probe.probe("torch", target, given)
        assert len(calls) == 2 and finalist is not None and entry["median_ms"] is not None
        assert entry["first_call_ms"] == pytest.approx(given.first_call.seconds * 1000.0, abs=0.01)
        assert entry["cosine_min"] == pytest.approx(1.0)
    other = probe.Target(net, "small", SHAPE64, CPU, "fp32", EngineOptions(threads=given.first_call.threads + 1))
    _, finalist = probe.probe("torch", other, given)
    assert len(calls) == 4 and finalist is not None, "its own first call, then the timed one"
    calls.clear()
    monkeypatch.setattr(probe, "thread_candidates", lambda device, options: [torch.get_num_threads()])
    entries, _ = probe._probe_all(target, ["torch"], given, lambda line: None)
    assert len(entries) == 2 and len(calls) == 3, "the leader's run at one thread per core makes its own first call"
    # A reference that already held the batch made no model call: there is nothing to take as eager torch's first.
    held = Reference(net, budget_bytes=1 << 20)
    held(batch.ids, batch)
    assert auto._first_input(_job(net, batch, held))().first_call is None


def test_the_probe_is_announced_before_the_references_call():
    """The reference's call on the first batch comes before the first candidate (a UNet 512's takes 7 s on a 2-core
    AVX2 CPU): the line that says what the probe is and how to skip it comes before it, not after a silent wait, and
    the budget's clock holds it."""
    logged, seen = [], []
    budget = ProbeBudget(5.0)
    budget.start -= 60.0  # made a minute ago: the clock must start at the probe, before the reference's call

    def first_input():
        seen.append((list(logged), budget.elapsed()))
        raise RuntimeError("out of memory (simulated)")

    target = probe.Target(small_model(), "small", SHAPE64, CPU, "fp32", EngineOptions())
    choice = auto.choose(target, first_input, "measure", log=logged.append, budget=budget)
    (lines, elapsed), = seen
    assert len(lines) == 1 and "finding the fastest engine here" in lines[0], lines
    assert elapsed < 30.0, "the reference's call is inside the --auto_budget's time"
    assert choice.source == "static" and "could not run the eager fp32 reference" in choice.reason


def test_the_probes_time_holds_the_references_call(monkeypatch):
    """`probe_s` ('measured now in N s') counts from where the budget's clock starts: before the reference's call."""
    monkeypatch.setattr(auto, "candidates", lambda device, precision: ["torch"])
    net, batch = small_model(), torch.rand(SHAPE64)
    with torch.inference_mode():
        given = probe.ProbeInput(batch, 1, net(batch))

    def first_input():
        time.sleep(0.5)  # the reference's call
        return given

    target = probe.Target(net, "small", SHAPE64, CPU, "fp32", EngineOptions())
    choice = auto.choose(target, first_input, "measure", budget=ProbeBudget(60.0))
    assert choice.source == "measured" and choice.engine == "torch" and choice.probe_s >= 0.5, choice
