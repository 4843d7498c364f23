"""`--engine auto` measures the engines here, keeps the fastest that passes the fidelity bar, and remembers it."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys

import pytest
import torch

import engines
import sample
from engines import inductor
from engines.base import EngineOptions
from engines.cache import ArtifactCache
from pipeline import auto, probe
from pipeline.fidelity import BARS
from pipeline.rows import Job, PlannedRow
from tests.conftest import CPU, SHAPE64, UNET64_WIDTH, small_model
from tests.test_outputs import documented_fields, field_paths
from utils.device import precision_hints

SHAPE = SHAPE64  # at 32 px frozen TorchScript takes ~600 ms a call here (oneDNN on 2x2 maps)


# The probe runs its candidates on one thread here: two OpenMP threads on two cores that another process shares (a
# parallel test run, a build) slow a call by 10-100x at random, and the speed ratios these tests set up go with them.
ONE_THREAD = 1


@pytest.fixture(scope="module")
def net():
    """The probe's logic does not depend on the network: the small UNet++ (base width 8) keeps the torch /
    torchscript speed ratios these tests set up, at a fraction of the UNet's build and forward time."""
    return small_model()


def _inputs(model):
    """The probe's input: a batch and its eager fp32 logits."""
    batch = torch.rand(SHAPE)
    with torch.inference_mode():
        reference = model(batch)
    given = probe.ProbeInput(batch, 1, reference)
    return lambda: given


def _target(model, model_id: str = "m", options: EngineOptions | None = None) -> probe.Target:
    return probe.Target(model, model_id, SHAPE, CPU, "fp32", options or EngineOptions(threads=ONE_THREAD))


def _slowed(monkeypatch, slow: dict, wrong: tuple = ()):
    """engines.load, with each call of engine `name` repeated `slow[name]` times (a ratio, which survives a busy
    machine better than a fixed delay), and `wrong` engines returning garbage at once (the fastest of all, so only
    the fidelity check can keep them out)."""
    real = engines.load

    def load(name, model, shape, device, precision="fp32", options=None):
        engine = real(name, model, shape, device, precision, options)
        if name in wrong:
            return dataclasses.replace(engine, run=lambda x: torch.rand(shape[0], 2, *shape[2:]))
        if name in slow:
            run = engine.run
            return dataclasses.replace(engine, run=lambda x: [run(x) for _ in range(slow[name])][-1])
        return engine

    monkeypatch.setattr(engines, "load", load)


def _measured(net, monkeypatch, tmp_path, names: list, slow: dict | None = None, wrong: tuple = (),
              model_id: str = "m"):
    """auto.choose among `names` only (slowed / made wrong as `_slowed` does), with a cache in `tmp_path`:
    (the choice, its options)."""
    monkeypatch.setattr(auto, "candidates", lambda device, precision: list(names))
    if slow or wrong:
        _slowed(monkeypatch, slow or {}, wrong)
    options = EngineOptions(cache=ArtifactCache(str(tmp_path)), threads=ONE_THREAD)
    return auto.choose(_target(net, model_id, options), _inputs(net)), options


def test_picks_the_fastest_that_passes_and_keeps_it(net, monkeypatch, tmp_path):
    choice, options = _measured(net, monkeypatch, tmp_path, ["torch", "torchscript"], {"torch": 6}, model_id="m1")
    assert choice.engine == "torchscript" and choice.source == "measured" and choice.built is not None, choice
    timed = {c["engine"]: c for c in choice.candidates}
    assert timed["torch"]["median_ms"] > 2 * timed["torchscript"]["median_ms"]
    assert timed["torchscript"]["cosine_min"] > 0.99999 and "faster than torch" in choice.reason
    assert os.path.isfile(choice.record)
    kept = os.path.join(options.cache.root, "torchscript")
    assert os.listdir(kept), "the winner's build stays in the cache for its row and the next run"

    def no_probe():
        raise AssertionError("a kept choice must not probe again")

    again = auto.choose(_target(net, "m1", options), no_probe)
    assert (again.engine, again.source, again.built) == ("torchscript", "cached", None)
    assert again.candidates == json.loads(open(choice.record).read())["candidates"]
    # Another model, shape or precision is another decision.
    other = auto.choose(_target(net, "m2", options), _inputs(net))
    assert other.source == "measured" and other.record != choice.record


def test_a_fast_engine_with_wrong_output_is_never_chosen(net, monkeypatch, tmp_path):
    choice, _ = _measured(net, monkeypatch, tmp_path, ["torch", "torchscript"], {"torch": 2}, wrong=("torchscript",))
    assert choice.engine == "torch"
    bad = next(c for c in choice.candidates if c["engine"] == "torchscript")
    assert bad["median_ms"] is None and "below the fp32 fidelity bar" in bad["note"] and bad["cosine_min"] < 0.9


def test_damaged_or_stale_records_are_measured_again(net, monkeypatch, tmp_path):
    choice, options = _measured(net, monkeypatch, tmp_path, ["torch"])
    with open(choice.record, "w") as f:
        f.write("{not json")
    assert auto.choose(_target(net, "m", options), _inputs(net)).source == "measured"
    record = json.loads(open(choice.record).read())
    record["engine"] = "tensorrt"  # kept, but it cannot run here any more
    with open(choice.record, "w") as f:
        json.dump(record, f)
    assert auto.choose(_target(net, "m", options), _inputs(net)).engine == "torch"


def test_static_mode_and_no_candidate_fall_back_to_the_fixed_order(net, monkeypatch):
    choice = auto.choose(_target(net, ""), _inputs(net), mode="static")
    assert (choice.engine, choice.source) == (engines.default_engine(CPU), "static") and not choice.candidates
    monkeypatch.setattr(auto, "candidates", lambda device, precision: ["torch"])
    _slowed(monkeypatch, {}, wrong=("torch",))
    choice = auto.choose(_target(net, ""), _inputs(net))
    assert choice.source == "static" and "no candidate passed" in choice.reason


def test_the_key_names_what_the_choice_depends_on():
    target = probe.Target(None, "digest", SHAPE, CPU, "int8", EngineOptions(threads=3))
    key = auto.choice_key(target, ["torch", "onnxruntime"])
    assert key["host"]["cpu"] and key["versions"]["torch"] == torch.__version__ and "onnxruntime" in key["versions"]
    assert (key["model"], key["shape"], key["precision"], key["threads"]) == ("digest", list(SHAPE), "int8", 3)


def test_thread_counts_are_probed_only_where_smt_offers_a_choice(monkeypatch):
    monkeypatch.setattr(probe, "usable_cpus", lambda: 8)
    monkeypatch.setattr(probe, "physical_cores", lambda: 4)
    assert probe.thread_candidates(CPU, EngineOptions()) == [4]
    assert probe.thread_candidates(CPU, EngineOptions(threads=2)) == []  # the user's --threads is kept
    monkeypatch.setattr(probe, "physical_cores", lambda: 8)
    assert probe.thread_candidates(CPU, EngineOptions()) == []


@pytest.mark.full_auto
def test_candidates_are_the_engines_that_run_the_precision_here_static_order_first(monkeypatch):
    """Every installed engine that runs the precision on this device, and no other; the static order's first leads
    (the likely winner sets the bar early). Hiding a package takes its engine out and hands the lead on."""
    for key in ("openvino", "onnxruntime"):
        reason = engines.missing(key, CPU)
        if reason:
            pytest.skip(reason)
    fp32 = auto.candidates(CPU, "fp32")
    assert fp32[0] == "openvino" and sorted(fp32) == ["inductor", "onnxruntime", "openvino", "torch", "torchscript"]
    assert auto.candidates(CPU, "int8") == ["openvino", "onnxruntime"]  # the only CPU int8 engines
    monkeypatch.setitem(sys.modules, "openvino", None)  # find_spec answers None: "not installed"
    assert auto.candidates(CPU, "fp32")[0] == "onnxruntime" and "openvino" not in auto.candidates(CPU, "fp32")
    assert auto.candidates(CPU, "int8") == ["onnxruntime"]
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert auto.candidates(CPU, "fp32")[0] == "torchscript" and auto.candidates(CPU, "int8") == []


def test_precision_hints_name_native_precisions_and_never_switch():
    host = {"isa": ["avx2", "avx512_bf16", "amx_int8"]}
    hints = precision_hints(CPU, ["fp32"], host)
    assert len(hints) == 2 and "--precision fp32,bf16" in hints[0] and "amx_int8" in hints[1]
    assert precision_hints(CPU, ["fp32", "bf16", "int8"], host) == []
    assert precision_hints(CPU, ["fp32"], {"isa": ["avx2"]}) == []


@pytest.fixture
def session_builds(unet64, unet64_cache, tmp_path) -> str:
    """A cache folder holding the session's build of every installed CPU fp32 engine for the seed-0 UNet at 64 px
    (what `sample.py --seed 0 --image_size 64 --base_width 16` builds): a copy of conftest's cache, after asking it
    for each engine, which compiles only what no earlier test (the engine matrix, the levers) has built."""
    for name in auto.candidates(CPU, "fp32"):
        engines.load(name, unet64.model, SHAPE64, CPU, "fp32", EngineOptions(cache=unet64_cache))
    folder = str(tmp_path / "cache")
    shutil.copytree(os.path.dirname(unet64_cache.root), folder)  # the run adds its choice and data set to a copy
    return folder


@pytest.mark.full_auto
@pytest.mark.slow
def test_cli_probes_every_installed_engine_then_reuses_the_choice(session_builds, tmp_path, capsys, monkeypatch):
    loads = []
    real = engines.load

    def load(name, *args, **kwargs):
        engine = real(name, *args, **kwargs)
        loads.append((name, engine.artifact))
        return engine

    monkeypatch.setattr(engines, "load", load)
    argv = ["--image_size", "64", "--seed", "0", "--base_width", str(UNET64_WIDTH), "--synthetic_count", "1",
            "--loop", "1", "--warm_counter", "0", "--quiet", "--device", "cpu", "--cache_dir", session_builds,
            "--json", str(tmp_path / "r.json"),
            "--auto_budget", "3600"]  # every engine: the default budget would leave the prior's slow builds out
    assert sample.main(argv) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "r.json").read_text())
    choice = report["config"]["auto"][0]
    installed = set(auto.candidates(CPU, "fp32"))
    assert {c["engine"] for c in choice["candidates"]} >= installed
    for c in choice["candidates"]:  # each one ran on the batch and was compared with the eager reference
        assert c["cosine_min"] is not None and c["cosine_min"] >= BARS["fp32"], c
    # The CLI's seed-0 UNet is the fixture's: every engine the probe asked for was the session's build (but
    # torch.compile, inductor where torch has no AOTInductor, which compiles on its first call from inductor's own
    # cache: there is no package to load).
    kept = ("loaded", "eager") if inductor.aoti_available() else ("loaded", "eager", "compiled (inductor's own cache)")
    assert all(state in kept for _, state in loads), loads
    if not probe.thread_candidates(CPU, EngineOptions()):  # else the leader is loaded again with other threads
        assert sorted(name for name, _ in loads) == sorted(installed), "one load each: the row took the probe's"
    assert report["rows"][0]["engine"] == choice["engine"] and report["rows"][0]["fidelity"] == "ok"
    assert f"auto fp32: {choice['engine']} (measured now" in out and "probed: " in out
    winner = next(c for c in choice["candidates"]
                  if c["engine"] == choice["engine"] and c["threads"] == choice["threads"])
    assert report["rows"][0]["compile_s"] == pytest.approx(winner["compile_s"], abs=0.01)  # the probe's build, reused
    assert not field_paths(report) - documented_fields(), "document config.auto's fields in docs/outputs.md"
    loads.clear()
    assert sample.main(argv) == 0
    assert json.loads((tmp_path / "r.json").read_text())["config"]["auto"][0]["source"] == "cached"
    assert [name for name, _ in loads] == [choice["engine"]], "the kept choice: no probe, only the row's engine"


def test_a_thread_count_that_wins_is_kept_and_the_row_builds_with_it(net, monkeypatch, tmp_path):
    """Where SMT offers a choice, the winner is timed again with one thread per core; a variant that wins is
    kept, named in the reason, and its row gets its own options (the probe's engine used the other count)."""
    monkeypatch.setattr(auto, "candidates", lambda device, precision: ["torch"])
    monkeypatch.setattr(probe, "thread_candidates", lambda device, options: [1])
    real = probe._timed_call
    monkeypatch.setattr(probe, "_timed_call", lambda engine, inputs, threads: real(engine, inputs, threads)
                        * (1 if threads == 1 else 4))  # the default thread count made slow on purpose
    options = EngineOptions(cache=ArtifactCache(str(tmp_path)))
    choice = auto.choose(_target(net, "m", options), _inputs(net))
    assert (choice.engine, choice.threads, choice.built) == ("torch", 1, None)
    assert "faster than torch with default threads" in choice.reason
    job = Job(net, SHAPE, CPU, lambda: iter(()), 0, options)
    plan, _ = auto.resolve([PlannedRow("auto", "fp32")], job)
    assert plan == [PlannedRow("torch", "fp32", threads=1)]  # the row builds its own engine with the chosen count


def test_a_reference_that_cannot_run_falls_back_without_a_traceback(net, monkeypatch):
    monkeypatch.setattr(auto, "candidates", lambda device, precision: ["torch"])

    def broken():
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory")

    choice = auto.choose(_target(net, ""), broken)
    assert choice.source == "static" and "could not run the eager fp32 reference" in choice.reason


def test_the_losers_builds_leave_the_cache_and_the_winner_reports_the_probes_first_call(net, monkeypatch, tmp_path):
    choice, options = _measured(net, monkeypatch, tmp_path, ["torch", "torchscript"], {"torchscript": 6})
    assert choice.engine == "torch" and choice.built.first_call_s > 0
    assert not os.path.isdir(os.path.join(options.cache.root, "torchscript")) or \
        not os.listdir(os.path.join(options.cache.root, "torchscript"))  # built by the probe, then removed
    assert all("artifact_path" not in c for c in choice.candidates)
