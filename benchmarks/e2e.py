#!/usr/bin/env python
"""Model-only vs end-to-end fps, with where the end-to-end time went, for the engines, precisions and batch sizes
given: one `sample.py` run per batch size (every other flag passed through), read back from its JSON report.

    python benchmarks/e2e.py --batch_sizes 1,8 -- --engine torch,torchscript --precision fp16 --device 0 \\
        --image_path ../shared/data/carvana/images --mask_path ../shared/data/carvana/masks

Model-only fps is the timing pass's (one resident batch, `timed_region` says what a call holds); e2e fps is the
accuracy pass's over every image (decode wait, copies, the engine, metrics; the reference left out). The split
columns are ms per image on the main thread (they add up to e2e), then the decode threads' (in parallel).
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

from utils.timing import SPLIT_MAIN as MAIN  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch_sizes", default="1", help="comma list (default 1)")
    p.add_argument("--json", metavar="PATH", help="also write every run's rows here")
    p.add_argument("sample_args", nargs=argparse.REMAINDER,
                   help="after --: sample.py's flags (not --batch_size/--json)")
    return p


def table(rows: list[dict]) -> str:
    lines = ["| engine | precision | batch | images | model-only fps | e2e fps | e2e / model | "
             + " | ".join(MAIN) + " | decode | resize | reference |",
             "|---|---|---|---|---|---|---|" + "---|" * (len(MAIN) + 3)]
    for r in rows:
        split, n = r.get("split_s") or {}, max(r["images"], 1)
        ratio = r["e2e_fps"] / r["fps"] if r.get("fps") and r.get("e2e_fps") else None
        cells = [f"{split.get(k, 0.0) * 1000 / n:.2f}" for k in (*MAIN, "decode", "resize", "reference")]
        lines.append(f"| {r['engine']} | {r['precision']} | {r['batch']} | {r['images']} | "
                     f"{r.get('fps') or 0:.1f} | {r.get('e2e_fps') or 0:.1f} | "
                     f"{'-' if ratio is None else f'{ratio:.0%}'} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    passthrough = [a for a in args.sample_args if a != "--"]
    rows, host = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for batch in [int(b) for b in args.batch_sizes.split(",") if b.strip()]:
            report_path = os.path.join(tmp, f"bs{batch}.json")
            command = [sys.executable, os.path.join(ROOT, "sample.py"), *passthrough, "--batch_size", str(batch),
                       "--json", report_path, "--quiet"]
            print("$ " + " ".join(command[1:]), file=sys.stderr, flush=True)
            done = subprocess.run(command, cwd=ROOT)
            if not os.path.exists(report_path):
                print(f"error: batch {batch}: sample.py exited {done.returncode} without a report", file=sys.stderr)
                return 1
            with open(report_path) as f:
                report = json.load(f)
            host = report["config"]["host"]
            rows += [{**r, "batch": batch} for r in report["rows"]]
    where = host.get("accelerator") or f"{host['cpu']} ({host['cpu_count']} CPUs)"
    print(f"# {where}; per image ms: {', '.join(MAIN)} on the main thread; decode / resize in the decode threads")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"host": host, "rows": [{k: v for k, v in r.items() if k not in ("per_image", "latencies_ms")}
                                              for r in rows]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
