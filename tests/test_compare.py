"""--compare and --fail_on_regression: real runs of an engine made 30 % slower (it sleeps 30 % longer per call) are
"slower" and fail the gate, the reverse is "faster" and passes, a run against itself is "the same"; a gate that
matched nothing or lost base rows fails; dice is compared only on the same weights and data; the top says what
differs; old reports are read; a file that is no report (or a malformed one) is one error line before anything is
built."""
from __future__ import annotations

import dataclasses
import json
import os
import time

import pytest

import engines
import models
import sample
from report.compare import DICE_DROP, compare, read_base
from report.compare_table import gate
from tests.conftest import SMALL, write_pair

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Each call of the wrapped engine lasts CALL_S (the model's few ms, then a pause up to CALL_S), so a call's time is set
# by the pause, not by the tiny model, which a loaded machine stretches at random (a base timed at +-9.8 % under a
# load of 3 on 2 CPUs once hid the 30 % slowdown); the slower twin's calls last SLOWER times as long.
CALL_S = 0.06
SLOWER = 1.3


def slowed(factor: float):
    """engines.load whose engine's every call lasts `factor` x CALL_S: the model, then a pause for the rest, as an
    engine (or machine) of a known, steady speed would."""
    real = engines.load

    def load(*args, **kwargs):
        engine = real(*args, **kwargs)

        def run(x):
            start = time.perf_counter()
            out = engine.run(x)
            time.sleep(max(0.0, factor * CALL_S - (time.perf_counter() - start)))
            return out
        return dataclasses.replace(engine, run=run)
    return load


def sample_run(argv: list, factor: float = 1.0) -> int:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engines, "load", slowed(factor))
        return sample.main(argv)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """(argv of a small run, the JSON of one such run with the pausing engine): the base."""
    root = tmp_path_factory.mktemp("compare")
    for i in range(3):
        write_pair(str(root), f"car{i}_01", seed=i)
    argv = ["--image_path", str(root / "images"), "--mask_path", str(root / "masks"), "--image_size", "32",
            "--engine", "torch", "--loop", "12", "--warm_counter", "1", "--quiet", "--device", "cpu", "--threads", "1",
            *SMALL]
    path = root / "base.json"
    assert sample_run(argv + ["--json", str(path)]) == 0
    return argv, str(path)


def edited(tmp_path, path: str, change, name: str = "edited.json") -> str:
    """A copy of the report at `path` after `change(report)`, in tmp_path as `name`."""
    with open(path) as f:
        report = json.load(f)
    change(report)
    copy = tmp_path / name
    copy.write_text(json.dumps(report))
    return str(copy)


def test_a_30_percent_slower_engine_is_slower_and_fails_the_gate_the_reverse_passes(base, tmp_path, capsys):
    argv, base_json = base
    slow_json = str(tmp_path / "slow.json")
    code = sample_run(argv + ["--compare", base_json, "--fail_on_regression", "5", "--json", slow_json],
                      SLOWER)
    out, err = capsys.readouterr()
    (row,) = json.load(open(slow_json))["comparison"][0]["rows"]
    assert code == 1, err
    assert row["verdict"] == "slower" and row["regression"] is True and 0.65 < row["speed_ratio"] < 0.87
    assert row["speed"] == f"{1 / row['speed_ratio']:.2f}x slower" and row["speed"] in out and row["speed"] in err
    assert row["slowdown_pct"] > 5 and row["median_ci_ms"][0] > row["base_median_ci_ms"][1]
    assert f"error: regression against {base_json}: torch fp32, batch 1, 32x32, loop: slower by " in err
    assert "beyond the noise, over --fail_on_regression 5 %" in err
    assert f"compared with {base_json}" in out and "x slower   slower" in out
    # the same run, its base now the slower one: faster, and the gate passes
    code = sample_run(argv + ["--compare", slow_json, "--fail_on_regression", "5"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "x faster   faster" in out and "regression" not in err
    # without --fail_on_regression a comparison never changes the exit status
    slower = compare(read_base(slow_json), read_base(base_json))
    assert slower.rows[0].verdict == "slower" and slower.rows[0].regression is None and gate([slower]) == []


def test_a_run_against_itself_is_the_same(base):
    _, base_json = base
    itself = compare(read_base(base_json), read_base(base_json), 0.0)
    (row,) = itself.rows
    assert row.verdict == "the same" and row.speed_ratio == 1.0 and row.slowdown_pct == 0.0
    assert row.dice_change == 0.0 and row.cosine_change == 0.0 and row.regression is False
    assert itself.differences == [] and itself.new == [] and itself.gone == []


def test_a_dice_drop_past_the_bar_is_a_regression_and_new_and_gone_rows_are_listed(base, tmp_path):
    _, base_json = base

    def better(report):  # the base scored DICE_DROP + 0.001 higher, and its one row was onnxruntime's
        report["rows"].append(dict(report["rows"][0], engine="onnxruntime"))
        report["rows"][0]["dice"] += DICE_DROP + 0.001
    result = compare(read_base(base_json), read_base(edited(tmp_path, base_json, better)), 0.0)
    (row,) = result.rows
    assert row.verdict == "the same" and row.regression is True
    assert row.dice_change == pytest.approx(-DICE_DROP - 0.001)
    gone, line = gate([result])
    assert "dice dropped by 0.0040, more than 0.003" in line and "slower" not in line
    assert [k.engine for k in result.gone] == ["onnxruntime"] and result.new == [] and result.dice_compared
    assert "1 row(s) of" in gone and "gone from this run and were not checked: onnxruntime fp32 batch 1 32x32" in gone
    def slightly(report):  # the base scored 0.002 higher: within the bar
        report["rows"][0]["dice"] += DICE_DROP - 0.001
    within = compare(read_base(base_json), read_base(edited(tmp_path, base_json, slightly, "within.json")), 0.0)
    assert within.rows[0].regression is False


def test_loadgen_scenarios_match_by_name_and_a_lower_rate_is_slower_with_unknown_noise(base, tmp_path):
    _, base_json = base

    def offline(rate):
        def change(report):
            report["rows"][0]["scenarios"] = [{"scenario": "offline", "metric_name": "samples/s", "metric": rate}]
        return change
    this = read_base(edited(tmp_path, base_json, offline(80.0)))
    result = compare(this, read_base(edited(tmp_path, base_json, offline(100.0), "base.json")), 10.0)
    loop, rate = result.rows
    assert loop.scenario == "loop" and rate.scenario == "offline" and rate.metric_name == "samples/s"
    assert (rate.base_metric, rate.metric, rate.base_median_ms) == (100.0, 80.0, None)
    assert rate.speed_ratio == pytest.approx(0.8) and rate.verdict == "noise unknown"
    assert rate.slowdown_pct == pytest.approx(25.0) and rate.regression is True
    (line,) = gate([result])
    assert "offline: slower by 25.0 % (noise unknown: no interval to allow for)" in line


def test_other_weights_host_model_and_load_are_said_at_the_top(base, tmp_path):
    _, base_json = base

    def other(report):
        report["config"].update(weights="/elsewhere/other.pth", weights_digest="sha256:" + "0" * 64,
                                model="unet", variant="UNet", parameters=31)
        report["config"]["host"].update(cpu="Another CPU", accelerator="NVIDIA H200")
        report["rows"][0]["load_average"] = 99.0
    lines = compare(read_base(base_json), read_base(edited(tmp_path, base_json, other))).differences
    assert "weights: different: /elsewhere/other.pth (sha256:000000000000) in the base, random, seed 0 here" in lines
    assert any(line.startswith("host: Another CPU") and "NVIDIA H200 in the base" in line for line in lines)
    assert any(line.startswith("model: unet: UNet, 31 parameters in the base") for line in lines)
    assert any(line.startswith("load: the machine's load average was 99 in the base") for line in lines)
    assert not any(line.startswith("data") for line in lines)  # same files: its digest matches


def test_an_old_report_is_read_and_what_it_cannot_tell_is_said(base, tmp_path):
    _, base_json = base
    with open(os.path.join(ROOT, "docs", "reports", "default.json")) as f:
        report = json.load(f)
    for key in ("weights_digest", "data_digest", "run_s"):  # as a report written before digests and intervals
        report["config"].pop(key, None)
    for row in report["rows"]:
        row.pop("latency_median_ci_ms", None)
    (tmp_path / "old.json").write_text(json.dumps(report))
    old = read_base(str(tmp_path / "old.json"))
    (row,) = old.rows
    assert row.key.engine == report["rows"][0]["engine"] and row.interval is not None and row.derived  # its calls
    result = compare(read_base(base_json), old)
    assert any(line.startswith("weights: cannot tell") for line in result.differences)
    assert any("derived here from the base's per-call latencies" in line for line in result.differences)
    assert result.rows == [] and len(result.new) == 1 and len(result.gone) == 1  # another engine and size
    assert "batch and size: base ran batch 1 at 512 px; this run batch 1 at 32 px: no row can match" \
        in result.differences
    assert "dice: not compared (nor gated): the weights and data are not known to be the same" in result.differences
    (line,) = gate([dataclasses.replace(result, fail_on_regression_pct=5.0)])  # a gate on it checks nothing: it fails
    assert "nothing was checked" in line and "(base ran batch 1 at 512 px; this run batch 1 at 32 px)" in line
    for name in ("h200_unet512.json", "unet256.json", "unetpp512.json"):  # no variant; int8 rows; 3 calls
        assert read_base(os.path.join(ROOT, "docs", "reports", name)).rows


CONFIG = '{"version": 1, "config": {"image_size": [64, 64], "batch_size": 1, "model": "unet"}, '
ROW = '{"engine": "torch", "precision": "fp32"'


@pytest.mark.parametrize("content, says", [
    (None, "cannot open --compare report"),
    ("not json at all", "not JSON (Expecting value"),
    ('{"rows": []}', "not a report of this sample (no \"version\""),
    ('{"version": 2, "config": {}, "rows": []}', "written by a newer version of this sample (report version 2"),
    (CONFIG + '"rows": [{"engine": 3}]}', "rows[0].engine is int, not str"),
    (CONFIG + f'"rows": [{ROW}, "latency_median_ci_ms": [1, 2, 3]}}]}}',
     "rows[0].latency_median_ci_ms is [1.0, 2.0, 3.0], not [low, high] (2 numbers, low <= high)"),
    (CONFIG + f'"rows": [{ROW}, "latency_median_ci_ms": [1, "2"]}}]}}',
     "rows[0].latency_median_ci_ms[1] is str, not a number"),
    (CONFIG + f'"rows": [{ROW}, "latency_median_ms": 1{"0" * 400}}}]}}', "rows[0].latency_median_ms is too large"),
    ('{"version": 1, "config": {"image_size": [64, 64], "model": "unet"}, "rows": []}', "config.batch_size is missing"),
])
def test_a_file_that_is_no_report_is_one_error_line_before_anything_runs(tmp_path, capsys, monkeypatch, content,
                                                                          says):
    path = tmp_path / "base.json"
    if content is not None:
        path.write_text(content)
    monkeypatch.setattr(models, "create_model", lambda *a, **k: pytest.fail("the model was built"))
    code = sample.main(["--image_size", "64", "--engine", "torch", "--quiet", "--compare", str(path)])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("error: ") and says in line and str(path) in line


def test_a_gate_that_matches_nothing_fails_and_says_the_batch_and_size_differ(base, tmp_path, capsys):
    argv, base_json = base

    def bigger(report):  # the base ran batch 4 at 256 px on 4 threads
        report["config"].update(batch_size=4, image_size=[256, 256], threads=4)
    other = edited(tmp_path, base_json, bigger)
    code = sample_run(argv + ["--compare", other, "--fail_on_regression", "5"])
    out, err = capsys.readouterr()
    assert code == 1, err
    assert f"error: --fail_on_regression: nothing was checked: no row of this run matches one of {other}'s (base " \
           "ran batch 4 at 256 px; this run batch 1 at 32 px)" in err
    top = out[out.index(f"compared with {other}"):].splitlines()[1:3]  # the comparison's first lines
    assert top == ["  batch and size: base ran batch 4 at 256 px; this run batch 1 at 32 px: no row can match",
                   "  threads: 4 in the base, 1 here"]
    assert sample_run(argv + ["--compare", other]) == 0  # without the gate the comparison never fails the run
    capsys.readouterr()


def test_a_base_row_gone_from_this_run_fails_the_gate_a_new_row_does_not(base, tmp_path, capsys):
    argv, base_json = base

    def more(report):  # the base also ran onnxruntime, which this run has not
        report["rows"].append(dict(report["rows"][0], engine="onnxruntime"))
    more_json = edited(tmp_path, base_json, more)
    code = sample_run(argv + ["--compare", more_json, "--fail_on_regression", "50"])
    _, err = capsys.readouterr()
    assert code == 1
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert line == (f"error: --fail_on_regression: 1 row(s) of {more_json} are gone from this run and were not "
                    "checked: onnxruntime fp32 batch 1 32x32 loop; run them too, or compare with a base of this run's "
                    "rows")
    newer = compare(read_base(more_json), read_base(base_json), 50.0)  # this run has the extra row: new, not gone
    assert [k.engine for k in newer.new] == ["onnxruntime"] and newer.gone == [] and gate([newer]) == []


def test_a_matched_row_without_a_figure_fails_the_gate(base, tmp_path):
    _, base_json = base

    def untimed(report):  # an interrupted base: its row has no timing
        report["rows"][0].update(latency_median_ms=None, latency_median_ci_ms=None, latencies_ms=[])
    result = compare(read_base(base_json), read_base(edited(tmp_path, base_json, untimed)), 5.0)
    assert result.rows[0].verdict == "not timed" and result.rows[0].speed is None
    (line,) = gate([result])
    assert "the speed of torch fp32, batch 1, 32x32, loop was not checked against" in line


@pytest.mark.parametrize("what", ["data_digest", "weights_digest", None])
def test_dice_is_compared_and_gated_only_on_the_same_weights_and_data(base, tmp_path, what):
    _, base_json = base

    def other(report):  # the base scored 0.01 higher, on other data or weights (or its digest is unknown: None)
        report["rows"][0]["dice"] += 0.01
        if what:
            report["config"][what] = "sha256:" + "1" * 64
        else:
            report["config"].pop("data_digest")
    result = compare(read_base(base_json), read_base(edited(tmp_path, base_json, other)), 5.0)
    (row,) = result.rows
    assert row.dice_change is None and row.regression is False and not result.dice_compared and gate([result]) == []
    unsure = "weights" if what == "weights_digest" else "data"
    assert f"dice: not compared (nor gated): the {unsure} are not known to be the same" in result.differences
    assert any(line.startswith(f"{unsure}: different" if what else "data: cannot tell") for line in result.differences)


def test_threads_decode_device_and_openvino_hint_are_said_at_the_top(base, tmp_path):
    _, base_json = base

    def openvino(hint, device, threads, decode):
        def change(report):
            report["config"].update(threads=threads, decode=decode)
            report["rows"][0].update(engine="openvino", device=device,
                                     timed_region=f"infer request on a host array (OpenVINO CPU, {hint} hint)")
        return change
    this = read_base(edited(tmp_path, base_json, openvino("latency", "cpu", 1, "fast"), "this.json"))
    other = read_base(edited(tmp_path, base_json, openvino("THROUGHPUT", "cuda:0", 4, "nvjpeg")))
    lines = compare(this, other).differences
    for line in ("threads: 4 in the base, 1 here", "decode: nvjpeg in the base, fast here",
                 "device: cuda:0 in the base, cpu here", "OpenVINO hint: throughput in the base, latency here"):
        assert line in lines
    assert compare(this, this).differences == []
