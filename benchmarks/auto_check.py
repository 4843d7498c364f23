#!/usr/bin/env python
"""Does `--engine auto` pick the fastest engine on this machine? One run of `--engine all`, then one of `--engine
auto` with an empty cache (so the probe's real cost shows), on the same images; prints, per precision, what auto
chose and how its choice compares with the fastest row of the `all` run (the issue's bar: >= 0.97x).

    python benchmarks/auto_check.py --image_path ../shared/data/carvana/images \\
        --mask_path ../shared/data/carvana/masks --pth ../shared/models/unet_carvana_256.pth --out /tmp/auto

Each run is a `sample.py` subprocess; their JSON reports stay in --out. Record the printed table, with the CPU it
names, in docs/engines.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image_path", required=True)
    p.add_argument("--mask_path")
    p.add_argument("--pth")
    p.add_argument("--model_name", default="unet")
    p.add_argument("--image_size", default="512")
    p.add_argument("--limit", default="2")
    p.add_argument("--loop", default="5")
    p.add_argument("--precision", default="fp32,bf16,int8")
    p.add_argument("--out", required=True, help="folder for the two JSON reports and their artifact caches")
    return p


def sample(args, engine: str, name: str) -> tuple[dict, float]:
    cache = os.path.join(args.out, f"cache-{name}")
    shutil.rmtree(cache, ignore_errors=True)  # cold: compile / probe costs are real
    report = os.path.join(args.out, f"{name}.json")
    argv = [sys.executable, os.path.join(ROOT, "sample.py"), "--image_path", args.image_path, "--model_name",
            args.model_name, "--image_size", args.image_size, "--limit", args.limit, "--loop", args.loop,
            "--engine", engine, "--precision", args.precision, "--device", "cpu", "--cache_dir", cache,
            "--quiet", "--json", report]
    argv += ["--mask_path", args.mask_path] if args.mask_path else []
    argv += ["--pth", args.pth] if args.pth else []
    print("$ " + " ".join(argv[1:]), file=sys.stderr, flush=True)
    start = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if not os.path.isfile(report):
        raise SystemExit(f"{name} run wrote no report (exit {proc.returncode}):\n{proc.stdout[-2000:]}")
    with open(report) as f:
        return json.load(f), wall


def table(every: dict, chosen: dict) -> list[str]:
    lines = ["| precision | auto chose | its median ms in `all` | fastest in `all` | ratio | auto's own row ms | "
             "probe s |", "|---|---|---|---|---|---|---|"]
    worst = None
    for choice in chosen["config"].get("auto", []):
        precision = choice["precision"]
        rows = [r for r in every["rows"] if r["precision"] == precision and r.get("fidelity") == "ok"]
        if not rows:
            lines.append(f"| {precision} | {choice['engine']} | - | no row passed | - | - | {choice['probe_s']} |")
            continue
        fastest = min(rows, key=lambda r: r["latency_median_ms"])
        mine = next((r for r in rows if r["engine"] == choice["engine"]), None)
        own = next((r for r in chosen["rows"] if r["precision"] == precision), None)
        ratio = fastest["latency_median_ms"] / mine["latency_median_ms"] if mine else 0.0
        worst = ratio if worst is None else min(worst, ratio)
        cells = [precision, choice["engine"], f"{mine['latency_median_ms']:,.1f}" if mine else "(not in `all`)",
                 f"{fastest['engine']} {fastest['latency_median_ms']:,.1f}", f"{ratio:.2f}x",
                 f"{own['latency_median_ms']:,.1f}" if own else "(no row)", f"{choice['probe_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"worst ratio {worst:.2f}x (bar 0.97x)" if worst is not None else "no ratio")
    return lines


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    every, wall_all = sample(args, "all", "all")
    chosen, wall_auto = sample(args, "auto", "auto")
    host = every["config"]["host"]
    print(f"{host['cpu']}, {host['cpu_count']} CPUs ({', '.join(host['isa'])}); torch {every['config']['torch']}; "
          f"{args.model_name} {args.image_size} px, {every['config']['images']} images, batch 1, "
          f"{args.loop} timed calls per row; `all` run {wall_all:.0f} s, cold `auto` run {wall_auto:.0f} s")
    print("\n".join(table(every, chosen)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
