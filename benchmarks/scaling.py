#!/usr/bin/env python
"""One process with T threads against torchrun with N ranks of T/N threads each, on the same pairs and flags: the
aggregate e2e fps and model fps of both, the wall time of each command (process start and torchrun included), and
whether their scores agree to the bit. Used for docs/scaling.md; there is no target: on one small CPU it shows what
the machinery costs.

The runs alternate (one process, torchrun, one process, ...) so a busy spell on a shared machine hits both.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
sys.path.insert(0, ROOT)

from benchmarks.quiet import cpu_mark, other_cores, wait_quiet  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--image_path", default=os.path.join(SHARED, "data", "carvana", "images"))
    p.add_argument("--mask_path", default=os.path.join(SHARED, "data", "carvana", "masks"))
    p.add_argument("--pth", default=os.path.join(SHARED, "models", "unet_carvana_256.pth"))
    p.add_argument("--limit", type=int, default=32, help="pairs (default 32)")
    p.add_argument("--image_size", default="256")
    p.add_argument("--engine", default="torch")
    p.add_argument("--nproc", type=int, default=2, help="torchrun ranks (default 2)")
    p.add_argument("--threads", type=int, default=2,
                   help="CPU threads in all: the one process's, split among the ranks")
    p.add_argument("--repeat", type=int, default=2, help="runs of each, alternating (default 2)")
    p.add_argument("--loop", type=int, default=10)
    p.add_argument("--out", help="folder for the runs' JSON reports (default: a temporary one)")
    p.add_argument("--busy", type=float, default=0.15,
                   help="before each run, wait (up to 5 minutes) until other processes use fewer cores than this over "
                        "10 s; a run during which they used more is marked LOADED (default 0.15)")
    return p


def sample_args(args, json_path: str) -> list[str]:
    return ["--image_path", args.image_path, "--mask_path", args.mask_path, "--pth", args.pth,
            "--limit", str(args.limit), "--image_size", args.image_size, "--engine", args.engine, "--device", "cpu",
            "--loop", str(args.loop), "--quiet", "--json", json_path]


def commands(args, folder: str, k: int) -> dict[str, list[str]]:
    """The two command lines of round `k`."""
    one = [sys.executable, "sample.py", "--threads", str(args.threads)]
    ranks = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
             "sample.py", "--threads", str(max(1, args.threads // args.nproc))]
    return {f"1 process x {args.threads} threads": one + sample_args(args, os.path.join(folder, f"one-{k}.json")),
            f"{args.nproc} ranks x {max(1, args.threads // args.nproc)} thread(s)":
                ranks + sample_args(args, os.path.join(folder, f"ranks-{k}.json"))}


def run(cmd: list[str]) -> tuple[float, float, dict]:
    """Wall seconds of the command, the cores other processes used meanwhile (on average), its JSON's first row."""
    mark, start = cpu_mark(), time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    other = other_cores(mark, wall)
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} exited {done.returncode}:\n{done.stderr[-2000:]}")
    json_path = cmd[cmd.index("--json") + 1]
    with open(json_path) as f:
        return wall, other, json.load(f)["rows"][0]


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    folder = args.out or tempfile.mkdtemp(prefix="unet-sample-scaling-")
    os.makedirs(folder, exist_ok=True)
    results: dict[str, list] = {}
    for k in range(args.repeat):
        for name, cmd in commands(args, folder, k).items():
            waited = wait_quiet(args.busy, window=10.0, most=300.0)  # as --busy's help says
            print(f"round {k + 1}/{args.repeat}: {name} (after {waited:.0f} s waiting for a quiet machine) ...",
                  file=sys.stderr)
            results.setdefault(name, []).append(run(cmd))
    print("| setup | run | images | e2e fps (aggregate) | model fps (sum over ranks) | median ms per call | "
          "wall s (whole command) | other processes (cores) | dice | micro dice |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, runs in results.items():
        for k, (wall, other, row) in enumerate(runs):
            loaded = " LOADED" if other > args.busy else ""
            print(f"| {name} | {k + 1} | {row['images']} | {row['e2e_fps']:.3f} | {row['fps']:.3f} | "
                  f"{row['latency_median_ms']:,.0f} | {wall:.1f} | {other:.2f}{loaded} | "
                  f"{row['dice']:.6f} | {row['micro_dice']:.6f} |")
    scores = {(r["dice"], r["micro_dice"], r["iou"]) for runs in results.values() for _, _, r in runs}
    print(f"\ndice, micro dice and IoU {'equal to the bit in every run' if len(scores) == 1 else 'DIFFER'}; "
          f"reports in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
