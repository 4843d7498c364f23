"""--profile: per-operator (or per-layer) self time from each engine's own profiler, whose total over every operator
is one call's time; an engine without a profiler, or whose call is opaque to it, says so in one line; the row stands
when profiling fails; the JSON and stdout carry it."""
from __future__ import annotations

import importlib.util
import json
import os
import tempfile
import time
from dataclasses import dataclass

import pytest
import torch

import engines
import sample
from engines.base import Engine, EngineOptions
from pipeline.passes import timing_pass
from pipeline.profile import Measured, profile_row, summarize
from tests.conftest import CPU, SHAPE64, small_model
from tests.test_hostile import FAST
from utils.device import torch_threads

# The bound against the unprofiled median; the profiler's own accounting (the operators against the very
# calls they were measured in) at 10 %. docs/engines.md has the 256 px figures (all within 10 %). One thread: on a
# busy 2-core machine two threads' calls swing by 2x and more as the other thread waits for a core; and another
# process's burst can still land in the few profiled calls, so the pair of measurements is taken again, for up to
# PATIENCE_S, before the bounds are asserted. A count was not enough: the torchrun tests' launches on the other
# pytest-xdist worker keep both cores busy for about a minute, and three attempts in a row fell inside it (28 % off).
ACCOUNTING = 0.10
AGAINST_MEDIAN = 0.15
PATIENCE_S = 90.0


@dataclass
class Job:
    """What profile_row and timing_pass read of pipeline.rows.Job."""

    model: torch.nn.Module
    shape: tuple = SHAPE64
    loop: int = 10
    warmup: int = 2
    show_progress: bool = False
    min_duration_s: float = 0.0
    percentiles: tuple = (50.0,)


def need(package: str) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed")


@pytest.mark.parametrize("name, conv", [("torch", "convolution"), ("openvino", "Convolution"),
                                        ("onnxruntime", "Conv")])
def test_the_top_operators_are_convolutions_and_add_up_to_a_call(name, conv, request, unet64_cache):
    """Eager torch (no build) profiles the full-width UNet: on the session's narrow builds its profiler's own cost per
    operator is a fifth of a call. ONNX Runtime's and OpenVINO's profilers, in C++, account for the narrow net's."""
    need({"torch": "torch"}.get(name, name))
    unet64 = request.getfixturevalue("unet64_full" if name == "torch" else "unet64")
    options = EngineOptions(cache=unet64_cache, threads=1)
    engine = engines.load(name, unet64.model, SHAPE64, CPU, "fp32", options)
    deadline = time.monotonic() + PATIENCE_S
    with torch_threads(1):
        while True:
            median = timing_pass(engine, unet64.x, Job(unet64.model, loop=6)).latency_median_ms
            profile = profile_row(engine, unet64.x, Job(unet64.model, loop=3), options, median)
            accounted = profile.tool and abs(profile.total_ms_per_call / profile.profiled_call_ms - 1) < ACCOUNTING
            if profile.tool is None or (accounted and abs(profile.ratio - 1) < AGAINST_MEDIAN) or \
                    time.monotonic() > deadline:
                break
    assert profile.tool is not None, profile.note
    assert profile.calls == 3 and profile.median_call_ms == median
    assert conv in profile.ops[0].name + profile.ops[0].type, profile.ops[:3]
    assert sum(op.share for op in profile.ops if conv in op.name + op.type) > 0.6
    assert profile.types[0].type in (conv, profile.ops[0].name)
    assert abs(sum(t.ms_per_call for t in profile.types) - profile.total_ms_per_call) < 1e-6  # every operator counts
    assert abs(profile.total_ms_per_call / profile.profiled_call_ms - 1) < ACCOUNTING, profile
    assert abs(profile.ratio - 1) < AGAINST_MEDIAN, profile
    assert torch.allclose(engine.to_torch(engine.run(engine.prepare(unet64.x))), unet64.expected, atol=1e-3)


def test_onnxruntime_without_a_cache_rebuilds_its_file_and_leaves_no_folder():
    need("onnxruntime")
    model = small_model()
    engine = engines.load("onnxruntime", model, SHAPE64, CPU, "fp32", EngineOptions())
    assert engine.artifact_path == ""  # the build's temporary folder is gone
    before = set(os.listdir(tempfile.gettempdir()))
    profile = profile_row(engine, torch.rand(SHAPE64), Job(model, loop=3), EngineOptions(), 1.0)
    assert profile.tool == "ONNX Runtime profiler" and "rebuilt for the profile" in profile.note
    assert profile.ops and profile.total_ms_per_call > 0
    assert set(os.listdir(tempfile.gettempdir())) <= before  # the trace and the rebuilt file went with their folder


def fake(name: str, run) -> Engine:
    return Engine(name, CPU, "fp32", run, lambda x: x, lambda y: y)


def test_an_engine_without_a_profiler_or_whose_profile_fails_says_so_in_one_line():
    job = Job(torch.nn.Identity(), loop=3)
    none = profile_row(fake("tensorrt", lambda x: x), torch.rand(1), job, EngineOptions(), 2.0)
    assert none.tool is None and none.ops == [] and "trtexec --dumpProfile" in none.note
    assert none.median_call_ms == 2.0 and "\n" not in none.note

    def broken(x):
        raise RuntimeError("device lost\nsecond line")
    failed = profile_row(fake("torch", broken), torch.rand(1), job, EngineOptions(), 2.0)
    assert failed.tool is None and failed.note == "profiling torch failed: RuntimeError: device lost"

    def stopped(x):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C is the run's, not the profile's note
        profile_row(fake("torch", stopped), torch.rand(1), job, EngineOptions(), 2.0)


def test_a_call_the_profiler_cannot_see_into_is_called_opaque():
    measured = Measured("torch.profiler", 2, walls_ms=[10.0, 10.0], engine="inductor")
    measured.add("aten::empty", "aten::empty", "", 0.2, 2)
    profile = summarize(measured, 9.0)
    assert profile.tool is None and profile.ops == []
    assert profile.note == "inductor: its compiled call is opaque to torch.profiler: the operators it sees cover " \
                           "1.0% of a profiled call"


def test_the_profile_is_in_the_json_and_on_stdout_and_ctrl_c_keeps_the_row(small_set, tmp_path, capsys,
                                                                          monkeypatch):
    images, masks = small_set
    report = tmp_path / "r.json"
    argv = FAST + ["--image_path", images, "--mask_path", masks, "--profile", "--json", str(report)]
    assert sample.main(argv) == 0
    profile = json.loads(report.read_text())["rows"][0]["profile"]
    assert profile["tool"] == "torch.profiler" and profile["calls"] == 3  # --loop 1: at least 3 calls
    assert "convolution" in profile["ops"][0]["name"] and profile["median_call_ms"] > 0
    assert 0 < profile["ops"][0]["share"] <= 1 and profile["total_ms_per_call"] > 0
    out = capsys.readouterr().out
    assert "profile torch fp32: torch.profiler, 3 calls" in out
    assert f"profiled ops add up to {profile['total_ms_per_call']:.1f} ms per call vs the median call " \
           f"{profile['median_call_ms']:.1f} ms (" in out

    import pipeline.rows

    def interrupted(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(pipeline.rows, "profile_row", interrupted)
    assert sample.main(argv) == 130
    row = json.loads(report.read_text())["rows"][0]
    assert "profile" not in row and row["latency_median_ms"] > 0  # the row and its timing stand
