#!/usr/bin/env python
"""The timed loop beside MLPerf LoadGen's SingleStream and Offline and a --concurrency sweep, per engine row, in one
`sample.py` run per OpenVINO hint; prints a markdown table (docs/scenarios.md holds one, with its CPU named).

    python benchmarks/scenarios.py -- --pth ../shared/models/unet_carvana_256.pth --image_size 256 --limit 16 \\
        --image_path ../shared/data/carvana/images --mask_path ../shared/data/carvana/masks --device cpu

What it shows: whether the harness costs anything (SingleStream's p50 against the loop's median and its 95 %
interval), whether requests in flight pay (images/s per level, the best), and whether Offline at the best level is at
least as fast as the loop. The plateau is the fewest requests within 5 % of the best throughput, which Offline
keeps in flight. Every figure is from one run; compare rows of one table only.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.quiet import wait_quiet  # noqa: E402
from utils.timing import intervals_overlap  # noqa: E402

RUNS = {"latency": ["--engine", "torch,onnxruntime,openvino"], "throughput": ["--engine", "openvino",
                                                                              "--openvino_hint", "throughput"]}


def run(hint: str, passed: list[str], args: argparse.Namespace, folder: str) -> dict:
    report = os.path.join(folder, f"{hint}.json")
    cmd = [sys.executable, os.path.join(ROOT, "sample.py"), *RUNS[hint], "--scenario", "loop,singlestream,offline",
           "--concurrency", args.concurrency, "--min_duration", str(args.min_duration), "--loop", str(args.loop),
           "--quiet", "--loadgen_logs", os.path.join(folder, f"logs-{hint}"), "--json", report, *passed]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    with open(report) as f:
        return json.load(f)


def table_lines(hint: str, report: dict) -> list[str]:
    lines = []
    for row in report["rows"]:
        by = {s["scenario"]: s for s in row.get("scenarios", [])}
        low, high = row.get("latency_median_ci_ms") or (float("nan"), float("nan"))
        single, offline = by["singlestream"], by["offline"]
        levels = " / ".join(f"{lv['concurrency']}: {lv['images_per_s']:.2f}" for lv in row["concurrency"]["levels"])
        same = all(s["accuracy"]["identical"] for s in by.values())
        single_ci, loop_ci = single.get("latency_p50_ci_ms"), row.get("latency_median_ci_ms")
        s_low, s_high = single_ci or (float("nan"), float("nan"))
        overlap = "no interval" if not (single_ci and loop_ci) else \
            "intervals overlap" if intervals_overlap(single_ci, loop_ci) else "intervals apart"
        lines.append(
            f"| {row['engine']} | {hint} | {row['latency_median_ms']:.1f} ({low:.1f}-{high:.1f}) | "
            f"{single['latency_p50_ms']:.1f} ({s_low:.1f}-{s_high:.1f}; "
            f"{single['latency_p50_ms'] / row['latency_median_ms'] - 1:+.1%}, {overlap}) | "
            f"{row['fps']:.3f} | {levels} | {row['concurrency']['plateau']} | {offline['metric']:.3f} "
            f"({offline['metric'] / row['fps'] - 1:+.1%}) | {'yes' if same else 'NO'} | {row['load_average']} |")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", default="1,2,4")
    p.add_argument("--min_duration", type=float, default=8.0, help="seconds per loop, level and scenario")
    p.add_argument("--loop", type=int, default=12)
    args, passed = p.parse_known_args()
    passed = [a for a in passed if a != "--"]
    waited = wait_quiet(limit=0.3, window=2.0, most=120.0)
    print(f"waited {waited:.0f} s for a quiet machine; CPU: {_cpu()}")
    print("| engine | OpenVINO hint | loop median ms (95 % interval) | SingleStream p50 ms (95 % interval; vs loop) | "
          "loop fps | "
          "images/s per requests in flight | plateau | Offline samples/s at the plateau (vs loop fps) | "
          "LoadGen masks = accuracy pass | load |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="unet-sample-bench-") as folder:
        for hint in RUNS:
            for line in table_lines(hint, run(hint, passed, args, folder)):
                print(line, flush=True)
    return 0


def _cpu() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} logical CPUs"
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
