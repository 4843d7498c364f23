"""Calibration data for int8 post-training quantisation: the first N images of the data being evaluated."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from utils.data import Dataset, iter_batches


@dataclass
class Calibration:
    """Full-size input batches (B, C, H, W) and a key naming the images and size (part of an int8 artifact's key)."""

    batches: list[torch.Tensor]
    key: str
    images: int


def load_calibration(dataset: Dataset, size: tuple[int, int], batch_size: int, count: int,
                     workers: int = 2) -> Calibration:
    """Decode the first `count` images (scored pairs first) exactly as the accuracy pass does."""
    samples = (dataset.samples + dataset.unpaired)[:count]
    batches = [b.images for b in iter_batches(samples, size, batch_size, workers) if b.n]
    ids = ",".join(s.id for s in samples)
    key = hashlib.sha256(f"{ids}|{size}|{batch_size}".encode()).hexdigest()[:16]
    return Calibration(batches, key, len(samples))


def random_calibration(shape: tuple, count: int = 2, seed: int = 0) -> Calibration:
    """Uniform [0, 1) batches: only for tests and runs without data (int8 scales then fit no real image)."""
    gen = torch.Generator().manual_seed(seed)
    batches = [torch.rand(shape, generator=gen) for _ in range(count)]
    return Calibration(batches, f"random-{seed}-{count}", count * shape[0])
