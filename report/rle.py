"""Run-length encoding in the Kaggle Carvana submission layout (1-indexed `start length` pairs, row-major)."""
from __future__ import annotations

import numpy as np


def encode_rle(mask: np.ndarray) -> str:
    """A (H, W) mask (non-zero = car) as 'start length ...': pixels numbered from 1, left to right, then top down."""
    flat = np.asarray(mask).reshape(-1) != 0
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1  # first pixel of every new run (0-indexed)
    # A run touching either end of the image has only one edge inside it: add the missing one.
    head, tail = [0] if flat[:1].any() else [], [flat.size] if flat[-1:].any() else []
    edges = np.concatenate((head, edges, tail)).astype(np.int64)
    starts, ends = edges[0::2], edges[1::2]
    pairs = np.stack([starts + 1, ends - starts], axis=1).reshape(-1)
    return " ".join(map(str, pairs.tolist()))


def decode_rle(text: str, size: tuple[int, int]) -> np.ndarray:
    """The inverse of encode_rle: 'start length ...' and size=(W, H) -> (H, W) uint8 mask of 0 / 1."""
    w, h = size
    values = np.array(text.split(), dtype=np.int64)
    if values.size % 2:
        raise ValueError("an RLE string needs an even count of numbers (start length pairs)")
    starts, lengths = values[0::2] - 1, values[1::2]
    if values.size and (starts.min() < 0 or (starts + lengths).max() > w * h or lengths.min() < 1):
        raise ValueError(f"RLE runs fall outside a {w}x{h} image")
    # +1 at each run's start and -1 at its end; the running sum is 1 inside runs.
    steps = np.zeros(w * h + 1, dtype=np.int32)
    np.add.at(steps, starts, 1)
    np.add.at(steps, starts + lengths, -1)
    return (np.cumsum(steps[:-1]) > 0).astype(np.uint8).reshape(h, w)
