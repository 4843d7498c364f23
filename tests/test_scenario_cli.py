"""`--scenario` end to end: every LoadGen scenario beside the timed loop, in one run of the command line; the harness's
masks against the accuracy pass's; the report's second table; LoadGen absent or refused by name."""
from __future__ import annotations

import json
import os

import pytest

import pipeline.scenarios
import sample
from tests.test_hostile import FAST
from utils.errors import SampleError

pytest.importorskip("mlperf_loadgen", reason="mlcommons-loadgen is not installed (requirements-dev.txt)")


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
