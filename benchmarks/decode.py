#!/usr/bin/env python
"""Input pipeline throughput: decode + resize + mask, images per second, `exact` (Pytorch-UNet's path) vs `fast`.

Both paths run through the pipeline the accuracy pass uses (`iter_batches`: decode threads, batches, the float
conversion) over the same images, in alternating rounds, so a busy spell on a shared machine hits both alike; the
table gives each round's throughput and the ratio of the medians. Each path's CPU seconds per image are split into
decode and resize as the decode threads measured them. Used for docs/data.md:

    python benchmarks/decode.py --image_path ../shared/data/carvana/images --mask_path ../shared/data/carvana/masks
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from dataset.batches import Loader, default_workers, iter_batches  # noqa: E402
from dataset.decode import DECODES, TORCH_RESIZE, parse_size  # noqa: E402
from dataset.pairs import find_pairs  # noqa: E402
from utils.device import describe_host, usable_cpus  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image_path", required=True)
    p.add_argument("--mask_path", help="masks are decoded too (as a scored run does) when given")
    p.add_argument("--image_size", default="512")
    p.add_argument("--workers", type=int, help="decode threads (default: sample.py's default here)")
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--limit", type=int, help="first N pairs (default: all)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per path (default 3)")
    return p


def one_pass(samples, size, batch_size, workers, has_masks, decode) -> tuple[float, float, float, int]:
    """Wall seconds, decode and resize thread-seconds, images."""
    start = time.perf_counter()
    decode_s = resize_s = 0.0
    images = 0
    for batch in iter_batches(samples, Loader(size, batch_size, workers, decode), has_masks):
        if batch.n:
            batch.images  # noqa: B018  the float conversion every CPU engine's input needs
        decode_s += batch.decode_s
        resize_s += batch.resize_s
        images += batch.n
    return time.perf_counter() - start, decode_s, resize_s, images


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    workers = args.workers or default_workers()
    size = parse_size(args.image_size)
    dataset = find_pairs(args.image_path, args.mask_path, args.limit)
    samples, has_masks = dataset.samples, dataset.has_masks
    one_pass(samples[:4], size, args.batch_size, workers, has_masks, "fast")  # page cache and lazy imports warm
    runs: dict[str, list] = {d: [] for d in DECODES}
    for _ in range(args.rounds):
        for decode in reversed(DECODES):
            runs[decode].append(one_pass(samples, size, args.batch_size, workers, has_masks, decode))
    cpu = describe_host(torch.device("cpu"))["cpu"]
    print(f"# {len(samples)} {'pairs' if has_masks else 'images'} from {args.image_path} -> {size[0]}x{size[1]}, "
          f"{workers} decode threads, batch {args.batch_size}; {cpu} ({usable_cpus()} CPUs), "
          f"Python {platform.python_version()}, torch resize {'on' if TORCH_RESIZE else 'off (Pillow)'}")
    print("| path | images/s per round | median images/s | decode ms/img | resize ms/img |")
    print("|---|---|---|---|---|")
    medians = {}
    for decode in DECODES:
        fps = [n / wall for wall, _, _, n in runs[decode]]
        medians[decode] = statistics.median(fps)
        n = sum(r[3] for r in runs[decode])
        dec = sum(r[1] for r in runs[decode]) / n * 1000
        res = sum(r[2] for r in runs[decode]) / n * 1000
        print(f"| {decode} | {', '.join(f'{f:.1f}' for f in fps)} | {medians[decode]:.1f} | {dec:.2f} | {res:.2f} |")
    print(f"\nfast / exact: {medians['fast'] / medians['exact']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
