"""`--scenario` end to end: every LoadGen scenario beside the timed loop, in one run of the command line; the harness's
masks against the accuracy pass's; the report's second table; LoadGen absent or refused by name."""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

import pipeline.scenarios
import sample
from tests.test_hostile import FAST, ROOT
from utils.errors import SampleError

needs_loadgen = pytest.mark.skipif(importlib.util.find_spec("mlperf_loadgen") is None,
                                   reason="mlcommons-loadgen is not installed (requirements-dev.txt)")


@needs_loadgen
@pytest.mark.slow
def test_every_scenario_runs_beside_the_loop_and_feeds_the_engine_as_the_accuracy_pass(carvana, tmp_path, capsys):
    images, masks = carvana
    report, logs = tmp_path / "r.json", tmp_path / "logs"
    argv = [a for a in FAST if a != "--no_reference"] + [
        "--image_path", images, "--mask_path", masks, "--limit", "4", "--image_size", "64", "--batch_size", "2",
        "--scenario", "loop,offline,server", "--min_duration", "0.05", "--min_queries", "4",
        "--loadgen_logs", str(logs), "--json", str(report)]
    assert sample.main(argv) == 0
    out = capsys.readouterr().out
    data = json.loads(report.read_text())
    (row,) = data["rows"]
    assert data["config"]["loadgen"]["performance_sample_count"] == 4
    assert [s["scenario"] for s in row["scenarios"]] == ["offline", "server"]  # all four: test_scenarios.py
    for s in row["scenarios"]:  # the harness fed and read the engine exactly as the accuracy pass did
        assert s["accuracy"]["images"] == 4 and s["accuracy"]["identical"] is True, s
        assert abs(s["accuracy"]["dice"] - s["accuracy"]["pass_dice"]) <= 1e-9
        assert s["validity"] in ("VALID", "INVALID") and not s["submission_grade"] and s["queries"] >= 1
        assert os.path.isfile(os.path.join(s["log_dir"], "mlperf_log_summary.txt")), s["log_dir"]
    by = {s["scenario"]: s for s in row["scenarios"]}
    assert by["offline"]["metric"] > 0 and by["offline"]["samples"] >= 4
    server = by["server"]
    assert server["metric"] is not None and server["server_runs"]
    met = [r for r in server["server_runs"] if r["met"]]
    assert met and all(r["latency_p99_ms"] < server["target_latency_ms"] for r in met)
    assert server["target_latency_source"] == "5x the row's median call"
    assert "MLPerf LoadGen scenarios" in out and "not submission grade" in out and "identical" in out


def test_without_loadgen_a_scenario_is_one_error_line_before_anything_compiles(small_set, monkeypatch, capsys):
    def absent():
        raise SampleError(f"the MLPerf scenarios need MLCommons LoadGen, which is not installed: "
                          f"{pipeline.scenarios.INSTALL}")

    monkeypatch.setattr(pipeline.scenarios, "loadgen", absent)
    monkeypatch.setattr("pipeline.scenario_rows.loadgen", absent)
    images, masks = small_set
    assert sample.main(FAST + ["--image_path", images, "--mask_path", masks, "--scenario", "offline"]) == 1
    err = capsys.readouterr().err
    assert "error: the MLPerf scenarios need MLCommons LoadGen" in err and "pip install mlcommons-loadgen" in err
    assert "compiling" not in err and "Traceback" not in err


INTERRUPTED = """
import sys, threading
sys.path.insert(0, sys.argv[1])
import sample
import pipeline.scenarios as scenarios
start, tests = scenarios.Harness.start, []
def announced(self, test, folder):
    tests.append(folder)
    if folder.endswith("singlestream"):  # the performance test (after accuracy mode): tell the driver, then run it
        print("LOADGEN-STARTED", flush=True)
    return start(self, test, folder)
scenarios.Harness.start = announced
sys.exit(sample.main(sys.argv[2:]))
"""


@needs_loadgen
@pytest.mark.slow
def test_a_signal_inside_a_loadgen_test_ends_it_at_once_with_a_partial_report(small_set, tmp_path):
    """Ctrl-C 1 s into a 30 s SingleStream test: the SUT answers the rest at once, the test ends, and the run writes
    its partial report (exit 130), never a crash inside LoadGen's threads (a signal raised inside LoadGen's callbacks
    left its test running and the process died: no report)."""
    images, masks = small_set
    report = tmp_path / "r.json"
    argv = FAST + ["--image_path", images, "--mask_path", masks, "--scenario", "singlestream",
                   "--min_duration", "30", "--min_queries", "1", "--loadgen_logs", str(tmp_path / "logs"),
                   "--json", str(report)]
    proc = subprocess.Popen([sys.executable, "-c", INTERRUPTED, ROOT] + argv, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while not any("LOADGEN-STARTED" in line for line in lines) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, (proc.returncode, err[-2000:])
    assert time.monotonic() - sent < 25  # the test ended when its queries were answered, not at its 30 s minimum
    data = json.loads(report.read_text())
    (row,) = data["rows"]
    assert data["partial"] and row["interrupted"] and row["calls"] >= 1 and "scenarios" not in row


def test_an_engine_failure_in_the_sweep_keeps_the_row_and_exits_1(small_set, tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("device lost with two requests in flight")

    monkeypatch.setattr("pipeline.concurrency.run_level", broken)
    images, masks = small_set
    report = tmp_path / "r.json"
    assert sample.main(FAST + ["--image_path", images, "--mask_path", masks, "--concurrency", "1,2",
                               "--json", str(report)]) == 1
    (row,) = json.loads(report.read_text())["rows"]
    assert row["images"] == 3 and row["calls"] >= 1 and "device lost" in row["concurrency"]["failed"]
    assert "the requests-in-flight sweep failed: RuntimeError: device lost" in capsys.readouterr().out


@needs_loadgen
def test_offline_keeps_its_requests_in_flight(tmp_path):
    """Offline's one query of every sample reaches every worker: with 3 requests, calls overlap (the SUT once woke one
    worker per query, and Offline ran one call at a time at half the loop's fps)."""
    from engines.base import Engine
    from pipeline.scenario_types import ScenarioSettings
    from pipeline.scenarios import run_scenario
    from tests.conftest import CPU

    lock, state = threading.Lock(), {"now": 0, "peak": 0}

    def run(x):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.01)
        with lock:
            state["now"] -= 1
        return torch.zeros(x.shape[0], 2, *x.shape[2:])

    engine = Engine("fake", CPU, "fp32", run, lambda b: b, lambda y: y)
    images = torch.zeros(4, 16, 16, 3, dtype=torch.uint8)
    settings = ScenarioSettings("offline", min_duration_s=0.2, min_queries=12, log_dir=str(tmp_path))
    result = run_scenario(engine, images, 1, settings, concurrency=3)
    assert result.samples >= 12 and state["peak"] >= 2, (result.samples, state)


def test_an_unwritable_log_folder_is_one_error_line_before_anything_compiles(small_set, tmp_path, monkeypatch,
                                                                             capsys):
    """LoadGen's logs under a regular file: said before any row runs, never a row lost to an engine 'failure'."""
    monkeypatch.setattr("pipeline.scenario_rows.loadgen", lambda: None)  # the package is not what is tested
    (tmp_path / "file").write_text("")
    images, masks = small_set
    assert sample.main(FAST + ["--image_path", images, "--mask_path", masks, "--scenario", "offline",
                               "--loadgen_logs", str(tmp_path / "file" / "logs")]) == 1
    err = capsys.readouterr().err
    assert "error: --loadgen_logs: LoadGen's logs cannot be written to" in err and "writable folder" in err
    assert "compiling" not in err and "Traceback" not in err and "failed" not in err


@needs_loadgen
def test_singlestream_is_held_against_the_loop_with_both_intervals(small_set, tmp_path, capsys):
    """The harness's cost, as the issue asks to check it: SingleStream's p50 against the same row's loop median, each
    with its 95 % interval, in the JSON and on stdout."""
    images, masks = small_set
    report = tmp_path / "r.json"
    argv = [a for a in FAST if a not in ("--loop", "1")] + [
        "--image_path", images, "--mask_path", masks, "--loop", "8", "--scenario", "loop,singlestream",
        "--min_duration", "0.1", "--min_queries", "8", "--loadgen_logs", str(tmp_path / "logs"), "--json", str(report)]
    assert sample.main(argv) == 0
    (row,) = json.loads(report.read_text())["rows"]
    (single,) = row["scenarios"]
    low, high = single["latency_p50_ci_ms"]
    assert low <= single["latency_p50_ms"] + 1.0 and single["latency_p50_ms"] - 1.0 <= high
    loop_low, loop_high = row["latency_median_ci_ms"]
    line = next(x for x in capsys.readouterr().out.splitlines() if "singlestream: p50" in x)
    overlap = low <= loop_high and loop_low <= high
    assert f"(95 % interval {low:.1f}-{high:.1f}, the harness's clock) against the loop's median" in line
    assert line.endswith("the intervals overlap" if overlap else "beyond both intervals"), line


def test_the_verdict_names_intervals_that_do_not_meet():
    from types import SimpleNamespace

    from report.scenario_table import against_loop

    def row(low, high):
        return SimpleNamespace(label="torch fp32", timing=SimpleNamespace(latency_median_ms=(low + high) / 2,
                                                                          latency_median_ci_ms=[low, high]))

    single = SimpleNamespace(scenario="singlestream", latency_p50_ms=104.0, latency_p50_ci_ms=[103.0, 105.0])
    assert against_loop(row(100.0, 102.0), single).endswith("+3.0 %, beyond both intervals")
    assert against_loop(row(100.0, 103.5), single).endswith("the intervals overlap")
    assert against_loop(row(100.0, 102.0), SimpleNamespace(**{**vars(single), "latency_p50_ci_ms": None})) is None
    assert against_loop(row(100.0, 102.0), SimpleNamespace(**{**vars(single), "scenario": "offline"})) is None


def test_the_server_line_says_which_run_its_rate_comes_from():
    from types import SimpleNamespace

    from pipeline.scenario_types import ServerRun
    from report.scenario_table import server_line

    search = [ServerRun(20.0, 19.5, 19.0, 90.0, True, "INVALID", "run1", 190),
              ServerRun(30.0, 29.0, 25.0, 300.0, False, "INVALID", "run2", 250)]
    row = SimpleNamespace(label="onnxruntime fp32")

    def line(*runs, metric=19.0):
        result = SimpleNamespace(metric=metric, target_latency_ms=100.0, server_runs=(*search, *runs))
        return server_line(row, SimpleNamespace(result=result, target_latency_source="5x the row's median call"))

    assert line() == ("onnxruntime fp32 server: highest rate with p99 under 100.0 ms (5x the row's median call): "
                      "19.00 q/s, searched in 2 LoadGen run(s)")
    over = ServerRun(18.0, 18.0, 17.9, 140.0, False, "INVALID", "confirm", 505, confirms=True)
    assert line(over).endswith("searched in 2 LoadGen run(s), then 18/s again with 505 queries for LoadGen's early "
                               "stopping (INVALID, p99 140 ms over the bound: the search's best stands)")
    held = ServerRun(18.0, 18.0, 17.9, 80.0, True, "VALID", "confirm", 505, confirms=True)
    assert line(held, metric=17.9).endswith("17.90 q/s, searched in 2 LoadGen run(s), then 18/s again with 505 "
                                            "queries for LoadGen's early stopping (VALID)")
