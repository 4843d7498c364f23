"""The MLPerf LoadGen harness (pipeline/scenarios.py): accuracy mode's logged masks are the engine's own, each scenario
runs and is judged by LoadGen, Server finds a rate under its target, and a missing package is named with its install."""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import sys
import time

import numpy as np
import pytest
import torch

import engines
from dataset.batches import Batch, to_float
from dataset.decode import load_image, load_mask
from pipeline.loadgen_log import LoadGenLog
from pipeline.passes import accuracy_pass
from pipeline.scenario_rows import images_within
from pipeline.scenario_types import SCENARIOS, ScenarioSettings, ServerRun
from pipeline.scenarios import (
    call_seconds,
    confirm_best,
    confirmation,
    early_stopping_queries,
    loadgen,
    loadgen_settings,
    run_accuracy,
    run_scenario,
)
from report.metrics import dice_from_counts, overlap_counts, predict
from tests.conftest import CPU, small_model
from utils.errors import SampleError

# Every test marked needs_loadgen needs the package; the rest check what happens without it, or read its words.
needs_loadgen = pytest.mark.skipif(importlib.util.find_spec("mlperf_loadgen") is None,
                                   reason="mlcommons-loadgen is not installed (requirements-dev.txt)")

SIZE = (64, 64)
BATCH = 3  # 5 images, 8 samples per MultiStream query: short batches are padded


@pytest.fixture(scope="module")
def engine():
    """The SMALL network (a real UNet++), for the runs timed by LoadGen."""
    return engines.load("torch", small_model(), (BATCH, 3, *SIZE[::-1]), CPU)


def brightness_model() -> torch.nn.Module:
    """Foreground where a pixel's mean brightness passes one half: a one-layer 'segmenter' whose masks differ between
    images (the random SMALL network paints every pixel one class), so a mix-up of samples or pixels shows."""
    conv = torch.nn.Conv2d(3, 2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[-1.0] * 3, [1.0] * 3]).view(2, 3, 1, 1) / 3)
        conv.bias.copy_(torch.tensor([0.5, -0.5]))
    return conv.eval()


@pytest.fixture(scope="module")
def bright():
    return engines.load("torch", brightness_model(), (BATCH, 3, *SIZE[::-1]), CPU)


def counting(engine):
    """The engine with a counter of its `run` calls."""
    calls = []

    def run(native):
        calls.append(native.shape[0])
        return engine.run(native)

    return dataclasses.replace(engine, run=run), calls


def read_pairs(images_dir: str, masks_dir: str, count: int = 5):
    """The first `count` pairs at SIZE as the accuracy pass decodes them: (N, H, W, C) uint8 images, (N, H, W) masks."""
    images, masks = [], []
    masks_by_stem = {name.rsplit("_mask", 1)[0]: name for name in os.listdir(masks_dir)}
    for name in sorted(os.listdir(images_dir))[:count]:
        image, upright = load_image(os.path.join(images_dir, name), SIZE, "exact")
        images.append(image)
        masks.append(load_mask(os.path.join(masks_dir, masks_by_stem[os.path.splitext(name)[0]]), SIZE, upright))
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks))


@pytest.fixture(params=["carvana", "small_set"])
def pairs(request):
    """Real Carvana pairs (skipped without ../shared) and the generated small set, whose boxes all sit in one place:
    each pair is shifted by its own step, so that no two images share a mask."""
    images, masks = read_pairs(*request.getfixturevalue(request.param))
    if request.param == "small_set":
        for k in range(images.shape[0]):
            images[k], masks[k] = images[k].roll(5 * k, dims=1), masks[k].roll(5 * k, dims=1)
    return images, masks


def direct(engine, images: torch.Tensor, masks: torch.Tensor):
    """Masks and mean dice without LoadGen: engine calls on padded batches, scored by the project's accuracy pass."""
    batches, predicted = [], []
    for start in range(0, images.shape[0], BATCH):
        n = min(BATCH, images.shape[0] - start)
        rows = list(range(start, start + n)) + [start + n - 1] * (BATCH - n)
        batch = Batch([str(k) for k in range(start, start + n)], images[rows], masks[rows], n, [SIZE] * n)
        batches.append(batch)
        logits = engine.to_torch(engine.run(engine.prepare(to_float(images[rows]))))
        predicted.extend(predict(logits[:n], torch.uint8).numpy())
    result = accuracy_pass(engine, batches, images.shape[0], None, show_progress=False)
    return predicted, result.accuracy.scores().dice


def check_accuracy(engine, images: torch.Tensor, masks: torch.Tensor, scenario: str, log_dir) -> float:
    """LoadGen's logged masks are the engine's, image by image, and score the same mean dice; returns that dice."""
    settings = ScenarioSettings(scenario, log_dir=str(log_dir), target_latency_ms=1000.0)
    logged = run_accuracy(engine, images, BATCH, settings)
    expected, dice = direct(engine, images, masks)
    assert len(logged) == images.shape[0]
    for got, want in zip(logged, expected):
        assert got.shape == SIZE[::-1] and got.dtype == np.uint8
        np.testing.assert_array_equal(got, want)
    assert len({m.tobytes() for m in logged}) > 1  # the images' masks differ: a mix-up of samples would show
    counts = overlap_counts(torch.from_numpy(np.stack(logged)).long(), masks.long(), 2)
    assert abs(dice_from_counts(counts).mean().item() - dice) < 1e-9
    assert os.path.exists(os.path.join(str(log_dir), f"{scenario}-accuracy", "mlperf_log_accuracy.json"))
    return dice


@needs_loadgen
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_accuracy_mode_reads_back_the_engines_masks(bright, pairs, scenario, tmp_path):
    check_accuracy(bright, *pairs, scenario, tmp_path)


@needs_loadgen
@pytest.mark.slow
def test_accuracy_mode_with_the_real_checkpoint_on_carvana(carvana, checkpoint, tmp_path):
    import models

    model, _ = models.create_model("unet", checkpoint=checkpoint)
    engine = engines.load("torch", model, (BATCH, 3, *SIZE[::-1]), CPU)
    dice = check_accuracy(engine, *read_pairs(*carvana, count=4), "offline", tmp_path)
    assert dice > 0.5  # trained at 256 px, it still finds the cars at 64


@pytest.fixture(scope="module")
def held():
    return torch.from_numpy(np.random.default_rng(0).integers(0, 256, (5, *SIZE[::-1], 3), dtype=np.uint8))


@needs_loadgen
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_each_scenario_runs_and_is_judged(engine, held, scenario, tmp_path, capfd):
    counted, calls = counting(engine)
    settings = ScenarioSettings(scenario, min_duration_s=0.15, min_queries=8 if scenario == "singlestream" else 1,
                                target_latency_ms=1000.0, log_dir=str(tmp_path), search_runs=3)  # 8: an interval
    result = run_scenario(counted, held, BATCH, settings)
    assert capfd.readouterr().out == ""  # LoadGen writes its logs to files only: stdout is the report's
    assert result.scenario == scenario and result.validity in ("VALID", "INVALID")
    assert result.validity == "VALID" or result.reasons
    assert result.metric is not None and result.metric > 0
    assert not result.submission_grade and not result.mlperf_minimums
    assert result.performance_sample_count == 5 and result.queries > 0 and result.duration_s > 0
    assert 0 < result.latency_p50_ms <= result.latency_p90_ms <= result.latency_p99_ms
    assert os.path.exists(os.path.join(result.log_dir, "mlperf_log_summary.txt"))
    assert os.path.exists(os.path.join(result.log_dir, "mlperf_log_detail.txt"))
    served = len(calls) - 4 * (3 if scenario == "server" else 1)  # each LoadGen run follows 4 calls that time it
    assert all(size == BATCH for size in calls)  # every call is a full compiled batch
    if scenario == "singlestream":
        assert served == result.queries
        # The harness's clock (issue to completion of each query) gives the median's interval; LoadGen's own p50, from
        # its clock around the same calls, lies in it (1 ms of slack: the two clocks start and stop microseconds apart).
        low, high = result.latency_p50_ci_ms
        assert low <= high and low - 1.0 <= result.latency_p50_ms <= high + 1.0, (low, high, result.latency_p50_ms)
    else:
        assert result.latency_p50_ci_ms is None
    if scenario == "multistream":
        assert served == result.queries * math.ceil(8 / BATCH)
    elif scenario == "offline":
        assert served == math.ceil(result.samples / BATCH)
    elif scenario == "server":  # a fast machine may also confirm the best rate (see the test below)
        search = [r for r in result.server_runs if not r.confirms]
        best = max((r for r in search if r.met), key=lambda r: r.target_qps)
        best = next((r for r in result.server_runs if r.confirms and r.met), best)
        assert result.metric == best.completed_qps and result.latency_p99_ms == best.latency_p99_ms
        assert result.log_dir == best.log_dir
        assert result.latency_p99_ms < settings.target_latency_ms
        assert len(search) == 3 and any(r.met for r in search) and len(result.server_runs) <= 4
        assert all(r.met == (r.latency_p99_ms < 1000.0) for r in result.server_runs)


@needs_loadgen
def test_server_reports_no_rate_when_one_call_misses_the_target(bright, held, tmp_path):
    settings = ScenarioSettings("server", target_latency_ms=1e-6, log_dir=str(tmp_path))
    result = run_scenario(bright, held, BATCH, settings)
    assert result.metric is None and result.validity == "INVALID" and "target" in result.reasons[0]


@needs_loadgen
def test_server_confirms_its_best_rate_with_the_queries_early_stopping_needs(bright, held, tmp_path):
    """Short search runs leave LoadGen's early stopping short of queries (it needs 459 for a p99 with none over the
    bound), so 90 % of the best rate runs again with enough of them, within the search's own time, and LoadGen calls it
    VALID. Each call sleeps 10 ms, on one thread, so that a busy machine's other processes do not stall an OpenMP team;
    the runs' length follows from the rate the search will use, R: its two runs, at 0.625 R and 0.9375 R, stay under 459
    queries while the confirmation's 505 fit in their time, for any run length in [299 / R, 489 / R)."""
    torch.set_num_threads(1)  # conftest's _deterministic sets the count again for the next test
    slow = dataclasses.replace(bright, run=lambda native: (time.sleep(0.01), bright.run(native))[1])
    call_s = call_seconds(slow, held, BATCH)
    rate = BATCH / call_s  # R; the search's ceiling is 1.25 R (given the same call time: known_s)
    settings = ScenarioSettings("server", min_duration_s=390 / rate, min_queries=1, target_latency_ms=1000.0,
                                log_dir=str(tmp_path), search_runs=2)
    result = run_scenario(slow, held, BATCH, settings, known_s=call_s)
    *search, confirm = result.server_runs
    assert len(search) == 2 and not any(r.confirms for r in search) and confirm.confirms, result.server_runs
    best = max((r for r in search if r.met), key=lambda r: r.target_qps)
    assert best.validity == "INVALID" and best.queries < 459
    assert confirm.target_qps == pytest.approx(0.9 * best.target_qps)  # the best sits at the edge: 90 % of it
    assert confirm.queries >= 459 and confirm.met and confirm.validity == "VALID", result.reasons
    assert (result.validity, result.metric, result.log_dir) == ("VALID", confirm.completed_qps, confirm.log_dir)
    assert os.path.basename(confirm.log_dir).startswith("confirm-")


def test_a_confirmation_longer_than_the_search_is_left_to_the_user_with_the_flag():
    log = LoadGenLog({"early_stopping_result": "* Run unsuccessful.\n * Processed 49 queries.\n * Would need to run at "
                                              "least 410 more queries, with the run being successful if ..."})
    assert early_stopping_queries(log) == 459 and early_stopping_queries(LoadGenLog()) is None
    run = ServerRun(50.0, 50.0, 48.0, 80.0, True, "INVALID", "run2", 49)
    queries, notes = confirmation(log, run, ScenarioSettings("server", min_duration_s=10.0, search_runs=5))
    assert queries == math.ceil(459 * 1.1) and notes == ()  # 505 queries at 45/s: 11.2 s of the search's 50 s
    queries, notes = confirmation(log, run, ScenarioSettings("server", min_duration_s=1.0, search_runs=5))
    assert queries == 0 and "needs about 459 queries" in notes[0] and "--min_queries 505" in notes[0]
    assert confirmation(LoadGenLog(), run, ScenarioSettings("server")) == (0, ())


def test_a_confirmation_over_the_bound_or_that_fails_leaves_the_search_s_best_standing():
    log = LoadGenLog({"early_stopping_result": "* Processed 49 queries. * Would need to run at least 410 more queries"})
    settings = ScenarioSettings("server", min_duration_s=10.0, search_runs=5)
    search = ServerRun(50.0, 50.0, 48.0, 80.0, True, "INVALID", "run2", 49)

    def answering(p99: float, validity: str):
        def server_run(rate, folder, queries):
            assert rate == pytest.approx(45.0) and queries == 505 and "confirm-45qps" in folder
            runs.append(ServerRun(rate, rate, rate, p99, p99 < 100.0, validity, folder, queries, confirms=True))
            return LoadGenLog(), folder
        return server_run

    def failing(rate, folder, queries):
        raise SampleError("engine torch failed during a LoadGen test: device lost")

    runs = [search]
    best, valid, notes = confirm_best(answering(90.0, "VALID"), runs, (log, "run2"), settings)
    assert best is valid and best[1] == runs[-1].log_dir and notes == ()
    runs = [search]
    best, valid, notes = confirm_best(answering(90.0, "INVALID"), runs, (log, "run2"), settings)
    assert best[1] == runs[-1].log_dir and valid is None and notes == ()  # the longer run is the better evidence
    runs = [search]
    best, valid, notes = confirm_best(answering(150.0, "INVALID"), runs, (log, "run2"), settings)
    assert best == (log, "run2") and valid is None and "went over the bound (p99 150 ms)" in notes[0]
    runs = [search]
    best, valid, notes = confirm_best(failing, runs, (log, "run2"), settings)
    assert best == (log, "run2") and valid is None and "failed (engine torch failed" in notes[0] and runs == [search]


@needs_loadgen
def test_mlperf_minimums_keep_loadgens_official_settings():
    lg = loadgen()
    for scenario in SCENARIOS:
        settings = ScenarioSettings(scenario, min_duration_s=0.2, min_queries=1, mlperf_minimums=True)
        test = loadgen_settings(lg, settings, lg.TestMode.PerformanceOnly, 0.01, BATCH)
        assert test.min_duration_ms == 600_000
        assert test.min_query_count == (662 if scenario == "multistream" else 100)
    short = loadgen_settings(lg, ScenarioSettings("offline", min_duration_s=0.2, min_queries=1),
                             lg.TestMode.PerformanceOnly, 0.01, BATCH)
    assert (short.min_duration_ms, short.min_query_count) == (200, 1)


@needs_loadgen
def test_an_engine_error_ends_the_test_and_is_raised(engine, held, tmp_path):
    calls = []

    def run(native):
        calls.append(1)
        if len(calls) > 4:  # after the 4 timing calls: the first query fails
            raise RuntimeError("device lost")
        return engine.run(native)

    broken = dataclasses.replace(engine, run=run)
    settings = ScenarioSettings("singlestream", min_duration_s=0.1, min_queries=1, log_dir=str(tmp_path))
    with pytest.raises(SampleError, match="device lost"):
        run_scenario(broken, held, BATCH, settings)


def test_settings_and_budget():
    with pytest.raises(SampleError, match="valid scenarios: singlestream"):
        ScenarioSettings("streaming")
    assert images_within(10 * 64 * 64 * 3, 64, 64, 100) == 10
    assert images_within(10 * 64 * 64 * 3, 64, 64, 4) == 4
    assert images_within(1, 64, 64, 4) == 1  # LoadGen needs one sample
    assert images_within(1 << 30, 64, 64, 0) == 0


def test_without_loadgen_the_error_names_its_install(monkeypatch, held):
    monkeypatch.setitem(sys.modules, "mlperf_loadgen", None)  # `import mlperf_loadgen` raises ImportError
    for call in (run_scenario, run_accuracy):
        with pytest.raises(SampleError, match="pip install mlcommons-loadgen"):
            call(None, held, BATCH, ScenarioSettings())
