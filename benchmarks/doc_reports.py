#!/usr/bin/env python
"""Re-measure the reports behind the docs' tables (docs/reports/*.json), each on a quiet machine, from the repo root.

Each run waits until the whole machine is idle, builds its engines in a fresh cache (so compile times are real
builds), and is retried when other processes took CPU during it; docs/reports/LOAD.txt says how quiet each run was.
Then `python benchmarks/doc_tables.py` rewrites the tables from the new JSON.
"""
from __future__ import annotations

import argparse
import datetime
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.quiet import cpu_mark, other_cores, wait_quiet  # noqa: E402

REPORTS = "docs/reports"
DATA = "../shared/data/carvana"
CHECKPOINT = "../shared/models/unet_carvana_256.pth"
REAL = ["--image_path", f"{DATA}/images", "--mask_path", f"{DATA}/masks"]
RUNS = {  # name -> sample.py arguments (the JSON and stdout go to docs/reports/<name>.json / .txt)
    "unet512": ["--engine", "all", "--precision", "fp32,bf16,int8", "--image_size", "512", "--loop", "5", "--device",
                "cpu", *REAL, "--pth", CHECKPOINT, "--limit", "4", "--quiet"],
    "unet256": ["--engine", "all", "--precision", "fp32,int8", "--image_size", "256", "--loop", "10", "--device", "cpu",
                *REAL, "--pth", CHECKPOINT, "--limit", "16", "--quiet"],
    "unetpp512": ["--model_name", "unet++", "--engine", "torch,onnxruntime,openvino", "--precision", "fp32,int8",
                  "--image_size", "512", "--loop", "3", "--device", "cpu", *REAL, "--limit", "2", "--quiet"],
    "default": [],  # the README's default job, with its progress bars on stderr as a user sees it
}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("names", nargs="*", help=f"runs to redo (default: all of {', '.join(RUNS)})")
    p.add_argument("--tries", type=int, default=3, help="attempts per run while other processes load the CPU")
    p.add_argument("--busy", type=float, default=0.15, help="CPU cores other processes may use on average (0.15)")
    return p


def attempt(name: str, args: list[str], limit: float) -> tuple[int, float, str]:
    """One run in a fresh engine cache; returns its exit status, the cores other processes used, and a log line."""
    waited = wait_quiet(limit, window=20.0, most=900.0)
    cache = tempfile.mkdtemp(prefix="unet-sample-doc-cache-")
    argv = [sys.executable, "sample.py", *args, "--json", f"{REPORTS}/{name}.json"]
    load, mark, t0 = open("/proc/loadavg").read().split()[:3], cpu_mark(), time.time()
    try:
        with open(os.path.join(ROOT, REPORTS, f"{name}.txt"), "w") as out:
            rc = subprocess.call(argv, cwd=ROOT, stdout=out, stderr=subprocess.DEVNULL,
                                 env={**os.environ, "UNET_SAMPLE_CACHE": cache})
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    wall = time.time() - t0
    other = other_cores(mark, wall)
    started = datetime.datetime.fromtimestamp(t0, datetime.timezone.utc).isoformat(timespec="seconds")
    line = (f"{name}: {'LOADED' if other > limit else 'quiet'}; rc={rc}; started {started} after {waited:.0f} s wait; "
            f"load before {', '.join(load)}; wall {wall:.0f} s; other processes {other:.2f} cores on average")
    return rc, other, line


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    # `timeout` and schedulers stop with SIGTERM: as an exit, so each run's engine cache in the temp dir is removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    names = args.names or list(RUNS)
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        print(f"error: unknown run {', '.join(unknown)}; runs: {', '.join(RUNS)}", file=sys.stderr)
        return 2
    status = 0
    for name in names:
        for _ in range(args.tries):
            rc, other, line = attempt(name, RUNS[name], args.busy)
            with open(os.path.join(ROOT, REPORTS, "LOAD.txt"), "a") as f:
                f.write(line + "\n")
            print(line, flush=True)
            if other <= args.busy:
                break
        status = status or rc
    return status


if __name__ == "__main__":
    sys.exit(main())
