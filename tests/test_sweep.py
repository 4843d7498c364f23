"""Side-by-side runs through sample.main: one row per engine and precision, failures kept apart, the fidelity gate."""
from __future__ import annotations

import json
import sys
import types

import pytest
import torch

import engines
import sample
from engines.base import Engine
from pipeline import fidelity
from pipeline.rows import PlannedRow, parse_precisions, plan_rows
from tests.conftest import SMALL
from utils.errors import SampleError

CPU = torch.device("cpu")


def argv(small_set, tmp_path, *extra):
    images, masks = small_set
    return ["--image_path", images, "--mask_path", masks, "--image_size", "64", "--loop", "1", "--warm_counter", "0",
            "--limit", "2", "--quiet", "--device", "cpu", "--cache_dir", str(tmp_path / "cache"),
            "--json", str(tmp_path / "r.json"), *SMALL, *extra]


def report(tmp_path) -> dict:
    with open(tmp_path / "r.json") as f:
        return json.load(f)


@pytest.fixture
def broken_engine(monkeypatch):
    """An engine that compiles but fails on its first call, registered as `broken`."""
    module = types.ModuleType("fake_broken_engine")
    module.DEVICES, module.PRECISIONS = ("cpu",), ("fp32",)

    def run(x):
        raise RuntimeError("kernel exploded")

    module.load = lambda model, shape, device, precision, options: Engine("broken", device, precision, run, lambda b: b,
                                                                 lambda y: y)
    monkeypatch.setitem(sys.modules, "fake_broken_engine", module)
    monkeypatch.setitem(engines.ENGINES, "broken", "fake_broken_engine")


@pytest.mark.slow
def test_rows_per_engine_and_precision_then_loaded_from_cache(small_set, tmp_path, capsys):
    if engines.missing("onnxruntime", CPU):
        pytest.skip("onnxruntime is not installed")
    args = argv(small_set, tmp_path, "--engine", "torch,onnxruntime", "--precision", "fp32,int8", "--calib", "1")
    assert sample.main(args) == 0  # int8 runs where the engine has it; torch int8 is listed as skipped
    rows = report(tmp_path)["rows"]
    assert [(r["engine"], r["precision"]) for r in rows] == [("torch", "fp32"), ("onnxruntime", "fp32"),
                                                            ("onnxruntime", "int8")]
    assert all(r["fidelity"] == "ok" for r in rows)
    assert rows[1]["dice_delta"] == pytest.approx(0.0, abs=1e-3)  # the torch row is the reference: 0 by construction
    assert "skipped torch int8: engine torch does not support int8" in capsys.readouterr().out
    assert sample.main(argv(small_set, tmp_path, "--engine", "onnxruntime", "--precision", "fp32,int8",
                            "--calib", "1")) == 0
    assert [r["artifact"] for r in report(tmp_path)["rows"]] == ["loaded", "loaded"]


def test_a_failing_engine_loses_no_other_row(small_set, tmp_path, capsys, broken_engine):
    assert sample.main(argv(small_set, tmp_path, "--engine", "broken,torch")) == 1
    out = capsys.readouterr()
    data = report(tmp_path)
    assert [r["engine"] for r in data["rows"]] == ["torch"]
    assert data["skipped"][0]["engine"] == "broken" and data["skipped"][0]["failed"]
    assert "RuntimeError: kernel exploded" in out.out and "error: engine broken fp32 failed" in out.err


def test_strict_turns_a_low_cosine_into_exit_1(small_set, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(fidelity.BARS, "fp32", 1.1)  # no output can reach it
    assert sample.main(argv(small_set, tmp_path, "--engine", "torch")) == 0
    assert report(tmp_path)["rows"][0]["fidelity"] == "LOW"
    assert "LOW" in capsys.readouterr().out
    assert sample.main(argv(small_set, tmp_path, "--engine", "torch", "--strict")) == 1
    assert "error: below the fidelity bar: torch fp32" in capsys.readouterr().err


def test_all_lists_what_cannot_run_here_with_the_reason():
    rows, skipped = plan_rows("all", ["fp32", "int8"], CPU)
    planned = [(r.engine, r.precision) for r in rows]
    assert ("torch", "fp32") in planned and ("torch", "int8") not in planned
    reasons = {s.engine: s.reason for s in skipped}
    assert reasons["tensorrt"] == "engine tensorrt does not run on cpu; it supports cuda"
    assert "torch_aie" in reasons and "torch_npu" in reasons
    assert any(s.engine == "torch" and s.precision == "int8" for s in skipped)


def test_all_skips_an_engine_whose_package_is_hidden(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    rows, skipped = plan_rows("all", ["fp32"], CPU)
    assert not any(r.engine == "openvino" for r in rows)
    assert any(s.engine == "openvino" and "pip install openvino" in s.reason for s in skipped)


def test_a_named_engine_without_any_asked_precision_is_a_failure(small_set, tmp_path, capsys):
    assert plan_rows("torch", ["int8"], CPU) == ([PlannedRow("torch", "int8")], [])
    assert sample.main(argv(small_set, tmp_path, "--engine", "torch", "--precision", "int8")) == 1
    assert "error: engine torch does not support int8" in capsys.readouterr().err


def test_auto_plans_one_row_per_precision():
    """The engine is chosen later (pipeline.auto.resolve), once the model and the data are ready to measure."""
    planned = [PlannedRow("auto", "fp32", 3), PlannedRow("auto", "int8", 3)]
    assert plan_rows("auto", ["fp32", "int8"], CPU, 3) == (planned, [])


def test_precision_list_is_checked():
    assert parse_precisions("fp32, int8,fp32") == ["fp32", "int8"]
    with pytest.raises(SampleError, match="unknown precision fp8"):
        parse_precisions("fp32,fp8")


def test_a_precision_refused_here_is_skipped_not_failed(small_set, tmp_path, capsys):
    if engines.missing("onnxruntime", CPU):
        pytest.skip("onnxruntime is not installed")
    assert sample.main(argv(small_set, tmp_path, "--engine", "onnxruntime", "--precision", "fp32,fp16")) == 0
    assert [(r["engine"], r["precision"]) for r in report(tmp_path)["rows"]] == [("onnxruntime", "fp32")]
    assert "skipped onnxruntime fp16: onnxruntime fp16 needs the CUDA provider" in capsys.readouterr().out
    assert sample.main(argv(small_set, tmp_path, "--engine", "onnxruntime", "--precision", "fp16")) == 1
    assert "error: none of the requested engine x precision rows can run here" in capsys.readouterr().err


def test_a_row_failing_part_way_leaves_no_records_and_the_next_row_writes_the_files(small_set, tmp_path, monkeypatch,
                                                                                      capsys):
    """The first row dies on its second batch: the CSV holds only the row that finished, which also wrote the masks."""
    module = types.ModuleType("fake_flaky_engine")
    module.DEVICES, module.PRECISIONS = ("cpu",), ("fp32",)
    calls = []

    def load(model, shape, device, precision, options):
        def run(x):
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("device lost")
            with torch.no_grad():
                return model(x)
        return Engine("flaky", device, precision, run, lambda b: b, lambda y: y)

    module.load = load
    monkeypatch.setitem(sys.modules, "fake_flaky_engine", module)
    monkeypatch.setitem(engines.ENGINES, "flaky", "fake_flaky_engine")
    per_image = tmp_path / "per.csv"
    args = argv(small_set, tmp_path, "--engine", "flaky,torch", "--csv", str(per_image), "--output",
                str(tmp_path / "o"))
    assert sample.main(args) == 1
    rows = per_image.read_text().strip().splitlines()[1:]
    assert len(rows) == 2 and all(r.startswith("torch,") for r in rows)
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["car0_01_mask.png", "car1_01_mask.png"]
    assert "device lost" in capsys.readouterr().err
