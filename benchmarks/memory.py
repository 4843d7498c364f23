#!/usr/bin/env python
"""Peak memory against data set size: the same sample.py run over the first N pairs for each N given, each in a
fresh process, its peak resident set size (ru_maxrss) read at exit. Memory that grows with the data set (per-image
state kept beyond the per-image scalars) shows as a ratio above 1.

    python benchmarks/memory.py --counts 64,272 -- --image_path ../shared/data/carvana/images \\
        --mask_path ../shared/data/carvana/masks --pth ../shared/models/unet_carvana_256.pth --engine openvino
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Runs sample.py's main in this process and prints its peak RSS (KiB on Linux) last.
PROBE = ("import resource, sys; sys.path.insert(0, {root!r}); import sample; code = sample.main({argv!r}); "
         "print('peak_rss_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)")


def peak_rss(argv: list[str]) -> tuple[int, int]:
    """(exit status, peak RSS in KiB) of one sample.py run in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", PROBE.format(root=ROOT, argv=argv)], cwd=ROOT, capture_output=True,
                          text=True)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("peak_rss_kib"):
            return done.returncode, int(line.split()[1])
    raise SystemExit(f"error: the run gave no figure (exit {done.returncode}): {done.stderr.strip()[-500:]}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", default="64,272", help="comma list of --limit values (default 64,272)")
    p.add_argument("sample_args", nargs=argparse.REMAINDER, help="after --: sample.py's flags (not --limit)")
    args = p.parse_args(argv)
    passthrough = [a for a in args.sample_args if a != "--"]
    rows = []
    for count in [int(c) for c in args.counts.split(",")]:
        code, kib = peak_rss([*passthrough, "--limit", str(count), "--quiet"])
        rows.append((count, code, kib))
        print(f"{count} images: peak RSS {kib / 1024:.0f} MiB (exit {code})", file=sys.stderr, flush=True)
    base = rows[0][2]
    print("| images | peak RSS MiB | vs first |")
    print("|---|---|---|")
    for count, _, kib in rows:
        print(f"| {count} | {kib / 1024:.0f} | {kib / base:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
