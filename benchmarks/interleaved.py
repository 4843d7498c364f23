#!/usr/bin/env python
"""Round-robin latency of several engine rows on one image: on a shared, noisy CPU, interleaving the calls keeps
the comparison between engines fair (each round times every engine once, so a busy spell hits them all).

Used for the table in docs/engines.md; engines come from the artifact cache that sample.py fills.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import engines  # noqa: E402
import models  # noqa: E402
from dataset.batches import Loader, to_tensor  # noqa: E402
from dataset.calibration import load_calibration  # noqa: E402
from dataset.decode import load_image, parse_size  # noqa: E402
from dataset.pairs import find_pairs  # noqa: E402
from engines.base import EngineOptions  # noqa: E402
from engines.cache import ArtifactCache  # noqa: E402
from report.metrics import cosine_per_sample  # noqa: E402
from utils.timing import measure  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rows", default="torch:fp32,torchscript:fp32,inductor:fp32,onnxruntime:fp32,onnxruntime:int8,"
                                     "openvino:fp32,openvino:int8", help="comma list of engine:precision")
    p.add_argument("--model_name", default="unet")
    p.add_argument("--pth")
    p.add_argument("--image_path", required=True, help="folder of images: the first one is timed")
    p.add_argument("--mask_path", help="unused beyond pairing; calibration uses the first --calib images")
    p.add_argument("--image_size", default="512")
    p.add_argument("--limit", type=int, help="as sample.py's --limit (the int8 artifacts' calibration key follows it)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--per_round", action="store_true",
                   help="print each round's calls, then each engine's spread and how its calls move with the first "
                        "row's: a slow phase of the machine moves every engine, an engine's own slow mode only its own")
    p.add_argument("--calib", type=int, default=8)
    p.add_argument("--cache_dir")
    return p


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    size = parse_size(args.image_size)
    torch.manual_seed(0)
    model, _ = models.create_model(args.model_name, args.pth)
    dataset = find_pairs(args.image_path, args.mask_path, args.limit)
    batch = to_tensor([load_image(dataset.samples[0].image, size)[0]])
    shape = tuple(batch.shape)
    with torch.inference_mode():
        reference = model(batch)
    rows = [tuple(r.split(":")) for r in args.rows.split(",")]
    calibration = None
    if any(p == "int8" for _, p in rows):  # the timed batch is one image: calibration overlaps it, speed is the point
        calibration = load_calibration(dataset.samples[:args.calib], Loader(size))
    options = EngineOptions(cache=ArtifactCache(args.cache_dir), calibration=calibration)
    loaded = []
    for name, precision in rows:
        start = time.perf_counter()
        engine = engines.load(name, model, shape, torch.device("cpu"), precision, options)
        compile_s = time.perf_counter() - start
        native = engine.prepare(batch)
        cosine = cosine_per_sample(engine.to_torch(engine.run(native)), reference).min().item()
        loaded.append((engine, native, cosine, []))
        print(f"loaded {name} {precision} ({engine.artifact}, {compile_s:.1f} s)", file=sys.stderr)
    for r in range(args.rounds):
        for engine, native, _, times in loaded:
            times.extend(measure(engine.run, native, engine.synchronize, loop=1))
        line = f"round {r + 1}/{args.rounds}"
        if args.per_round:
            line += ": " + "  ".join(f"{e.name} {e.precision} {times[-1] * 1000:,.0f} ms" for e, _, _, times in loaded)
        print(line, file=sys.stderr)
    base = float(np.median(loaded[0][3]))
    print(f"| engine | precision | median ms | min ms | 1 / median (calls/s) | x vs {rows[0][0]} {rows[0][1]} "
          "| worst cosine |")
    print("|---|---|---|---|---|---|---|")
    for engine, _, cosine, times in loaded:
        med = float(np.median(times)) * 1000
        print(f"| {engine.name} | {engine.precision} | {med:,.0f} | {min(times) * 1000:,.0f} | {1000 / med:.2f} | "
              f"{base * 1000 / med:.2f} | {cosine:.6f} |")
    if args.per_round:
        print_shared_spread(loaded)
    return 0


def print_shared_spread(loaded: list) -> None:
    """Each engine's spread (max / min call) and the correlation of its calls with the first row's, round by round."""
    first = np.array(loaded[0][3])
    print("\n| engine | precision | min ms | max ms | max / min | correlation with the first row's calls |")
    print("|---|---|---|---|---|---|")
    for engine, _, _, times in loaded:
        t = np.array(times)
        corr = float(np.corrcoef(first, t)[0, 1]) if len(t) > 2 and t.std() > 0 and first.std() > 0 else float("nan")
        print(f"| {engine.name} | {engine.precision} | {t.min() * 1000:,.0f} | {t.max() * 1000:,.0f} | "
              f"{t.max() / t.min():.2f} | {corr:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
