"""The benchmark scripts run against the current engine interface (a refactor must not leave them behind)."""
from __future__ import annotations

import importlib.util
import os

from tests.conftest import ROOT


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_interleaved_times_every_row(small_set, tmp_path, capsys):
    interleaved = load_script("interleaved")
    assert interleaved.main(["--rows", "torch:fp32,torchscript:fp32", "--image_path", small_set[0], "--image_size", "32",
                             "--rounds", "2", "--cache_dir", str(tmp_path)]) in (0, None)
    captured = capsys.readouterr()
    table = [line for line in captured.out.splitlines() if line.startswith("| torch")]
    assert len(table) == 2 and "1.000000" in table[0], captured.out  # both rows, each checked against eager
    assert "loaded torch fp32 (eager" in captured.err and "round 2/2" in captured.err


def test_doc_reports_refuses_an_unknown_run(capsys):
    assert load_script("doc_reports").main(["unet1024"]) == 2
    assert "unknown run unet1024; runs: unet512, unet256, unetpp512, default" in capsys.readouterr().err
