"""The benchmark scripts run against the current engine interface (a refactor must not leave them behind)."""
from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys

from tests.conftest import ROOT


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_interleaved_times_every_row(small_set, tmp_path, capsys):
    interleaved = load_script("interleaved")
    assert interleaved.main(["--rows", "torch:fp32,torchscript:fp32", "--image_path", small_set[0],
                             "--image_size", "32", "--rounds", "3", "--cache_dir", str(tmp_path), "--per_round"]) \
        in (0, None)
    captured = capsys.readouterr()
    table = [line for line in captured.out.splitlines() if line.startswith("| torch")]
    assert len(table) == 4 and "1.000000" in table[0], captured.out  # both rows, each checked against eager
    assert "loaded torch fp32 (eager" in captured.err
    assert re.search(r"round 3/3: torch fp32 [\d,]+ ms  torchscript fp32 [\d,]+ ms", captured.err), captured.err
    spread = [line.split("|") for line in table[2:]]  # engine, precision, min, max, max / min, correlation
    assert [row[1].strip() for row in spread] == ["torch", "torchscript"], table
    low, high, ratio, corr = (float(row[i].replace(",", "")) for row in spread[1:] for i in (3, 4, 5, 6))
    assert low <= high and ratio >= 1.0 and (math.isnan(corr) or -1.0 <= corr <= 1.0), table


def test_doc_reports_refuses_an_unknown_run(tmp_path):
    # Run as the docs run it, a script by path (from elsewhere here): it must find benchmarks/quiet.py by itself.
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "doc_reports.py"), "unet1024"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "unknown run unet1024; runs: unet512, unet256, unetpp512, default" in done.stderr


def test_scaling_splits_the_threads_among_the_ranks(tmp_path):
    scaling = load_script("scaling")
    args = scaling.get_args_parser().parse_args(["--threads", "4", "--nproc", "2"])
    one, ranks = scaling.commands(args, str(tmp_path), 0).values()
    assert one[one.index("--threads") + 1] == "4" and ranks[ranks.index("--threads") + 1] == "2"
    assert "--nproc_per_node=2" in ranks and ranks[-1].endswith("ranks-0.json")


def test_a_quiet_machine_is_waited_for_and_other_load_counted():
    quiet = load_script("quiet")
    assert quiet.wait_quiet(float("inf"), window=0.01, most=60.0) < 60.0  # any load passes: one window
    assert quiet.other_cores(quiet.cpu_mark(), wall=1.0) >= 0.0
