"""--concurrency: N requests in flight on the resident batch, each level's throughput and latency, where throughput
stops growing; engines with requests of their own (OpenVINO) give each thread one; an accelerator engine without them
is not run side by side."""
from __future__ import annotations

import importlib.util
import json
import threading
import time

import pytest
import torch

import engines
import sample
from engines.base import Engine
from pipeline.concurrency import run_level, sweep
from tests.conftest import CPU
from tests.test_hostile import FAST


def sleeper(seconds: float, lock: threading.Lock | None = None) -> Engine:
    """An engine whose call waits `seconds` without the GIL (as a native kernel does); with `lock`, one at a time."""
    def run(x):
        if lock is None:
            time.sleep(seconds)
            return x
        with lock:
            time.sleep(seconds)
        return x
    return Engine("fake", CPU, "fp32", run, lambda b: b, lambda y: y)


def test_requests_in_flight_multiply_throughput_until_the_engine_is_full():
    free = sweep(sleeper(0.01), None, [1, 2, 4], calls_each=6, warmup=1, min_duration_s=0.0, images_per_call=2)
    rates = {lv.concurrency: lv.images_per_s for lv in free.levels}
    assert rates[2] > 1.6 * rates[1] and rates[4] > 1.6 * rates[2], rates  # independent calls overlap
    assert free.best == 4 == free.plateau and all(lv.calls == 6 * lv.concurrency for lv in free.levels)
    assert rates[1] == pytest.approx(2 / 0.01, rel=0.35)  # images per call / call time
    full = sweep(sleeper(0.02, threading.Lock()), None, [1, 2, 4], calls_each=4, warmup=1, min_duration_s=0.0,
                 images_per_call=1)
    locked = {lv.concurrency: lv.images_per_s for lv in full.levels}
    assert locked[4] < 1.3 * locked[1] and locked[2] < 1.3 * locked[1], locked  # one call at a time: requests only wait
    assert all(rate == pytest.approx(50.0, rel=0.4) for rate in locked.values()), locked


def test_a_level_runs_for_its_minimum_duration_and_an_engine_error_is_raised():
    level = run_level(sleeper(0.005), None, 2, calls_each=1, warmup=0, min_duration_s=0.1, images_per_call=1)
    assert level.wall_s >= 0.1 and level.calls >= 2 * 10
    def broken(x):
        raise RuntimeError("device lost")
    with pytest.raises(RuntimeError, match="device lost"):
        run_level(Engine("fake", CPU, "fp32", broken, lambda b: b, lambda y: y), None, 2, 2, 0, 0.0, 1)


def test_an_accelerator_engine_without_requests_of_its_own_runs_one_at_a_time():
    gpu = Engine("fake", torch.device("xpu", 0), "fp16", lambda x: x, lambda b: b, lambda y: y)  # no CUDA here
    swept = sweep(gpu, None, [1, 2], 2, 0, 0.0, 1)
    assert [lv.concurrency for lv in swept.levels] == [1] and "no independent requests" in swept.skipped[0]


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")
def test_openvino_gives_every_request_its_own_infer_request():
    engine = engines.load("openvino", torch.nn.Conv2d(3, 2, 1), (1, 3, 16, 16), CPU)
    native = engine.prepare(torch.rand(1, 3, 16, 16))
    first, second = engine.request(), engine.request()
    assert torch.equal(engine.to_torch(first(native)), engine.to_torch(second(native)))
    swept = sweep(engine, native, [1, 2], 4, 1, 0.0, 1)
    assert [lv.calls for lv in swept.levels] == [4, 8]


def test_the_sweep_is_in_the_json_and_on_stdout(small_set, tmp_path, capsys):
    images, masks = small_set
    report = tmp_path / "r.json"
    assert sample.main(FAST + ["--image_path", images, "--mask_path", masks, "--concurrency", "2,1",
                               "--json", str(report), "--plots", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "concurrency.png").stat().st_size > 1000
    swept = json.loads(report.read_text())["rows"][0]["concurrency"]
    assert [lv["concurrency"] for lv in swept["levels"]] == [1, 2] and swept["best"] in (1, 2)
    assert [lv["torch_threads"] for lv in swept["levels"]] == [torch.get_num_threads(),
                                                              max(1, torch.get_num_threads() // 2)]
    assert "torch fp32: requests in flight 1:" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        sample.main(["--concurrency", "0"])
    assert "requests in flight run from 1 to 64" in capsys.readouterr().err
