"""Calibration data for int8 post-training quantisation, kept apart from the images it is then scored on.

Which images calibrate, in order of preference: the `--calib_path` folder; else images of the `--image_path`
folder outside the scored subset (other cars first: a Carvana id is `<car>_<angle>`); else, when every image is
scored, the scored images themselves, which the report then says plainly (their int8 dice delta is flattered).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from dataset.batches import Loader, iter_batches
from dataset.pairs import Dataset, Sample, find_pairs
from utils.errors import SampleError

SOURCES = {
    "calib_path": "--calib_path",
    "outside": "images of the data folder outside the scored set",
    "scored": "the scored images themselves (overlap: the int8 dice delta is flattered; pass --calib_path)",
}


@dataclass
class Calibration:
    """Full-size input batches (B, C, H, W) and a key naming the images and size (part of an int8 artifact's key).

    `ids` are the images that decoded (and calibrated), `skipped` the (image, reason) pairs that did not, `source`
    a key of SOURCES, `overlap` how many calibration images are also scored.
    """

    batches: list[torch.Tensor]
    key: str
    images: int
    ids: list[str] = field(default_factory=list)
    source: str = "random"
    overlap: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def describe(self) -> dict:
        """The report's `config.calibration` entry."""
        return {"source": self.source, "what": SOURCES.get(self.source, self.source), "images": self.images,
                "ids": self.ids, "overlap_with_scored": self.overlap,
                "skipped": [{"id": i, "error": e} for i, e in self.skipped]}


def _car(image_id: str) -> str:
    return image_id.rsplit("_", 1)[0]


def choose_samples(dataset: Dataset, count: int, calib_path: str | None = None,
                   folder: list[Sample] | None = None) -> tuple[list[Sample], str]:
    """The (up to) `count` calibration samples and their source (a key of SOURCES).

    `folder` is every image of the data folder, scored or not (the scored set is a subset when --limit cut it).
    """
    scored = dataset.samples + dataset.unpaired
    ids = {s.id for s in scored}
    cars = {_car(i) for i in ids}

    def other_cars_first(samples: list[Sample]) -> list[Sample]:
        """Other cars first, then scored cars' other images, then scored images; within each group one image per
        car before a second one of any car (eight angles of one car calibrate worse than eight cars)."""
        seen: dict = {}
        rank = []
        for s in samples:
            car = _car(s.id)
            seen[car] = seen.get(car, -1) + 1
            rank.append((s.id in ids, car in cars, seen[car]))
        order = sorted(range(len(samples)), key=lambda i: rank[i])
        return [samples[i] for i in order]

    if calib_path is not None:
        return other_cars_first(find_pairs(calib_path).samples)[:count], "calib_path"
    outside = [s for s in folder or [] if s.id not in ids]
    if outside:  # topped up with scored images when too few lie outside (the report counts the overlap)
        return (other_cars_first(outside) + other_cars_first(scored))[:count], "outside"
    return other_cars_first(scored)[:count], "scored"


def load_calibration(samples: list[Sample], loader: Loader, source: str = "scored",
                     scored_ids: set[str] | frozenset = frozenset()) -> Calibration:
    """Decode `samples` as the accuracy pass does (`loader`: its size, batch and decode path, on the host); an image
    that does not decode is skipped and named. SampleError when none decodes (int8 would have nothing to calibrate on).
    """
    batches, ids, skipped = [], [], []
    for batch in iter_batches(samples, loader):
        skipped.extend(batch.failed)
        if batch.n:
            batches.append(batch.images)
            ids.extend(batch.ids[:batch.n])
    if not ids:
        where = f"; first error: {skipped[0][0]}: {skipped[0][1]}" if skipped else ""
        raise SampleError(f"no calibration image could be decoded ({len(samples)} tried{where}); "
                          "pass --calib_path with readable images")
    # surrogateescape: an id from a file name that is not UTF-8 hashes as its own bytes
    digest = hashlib.sha256(f"{','.join(ids)}|{loader.size}|{loader.batch_size}".encode("utf-8", "surrogateescape"))
    for batch in batches:  # the pixels too: other files under the same names are another calibration set
        digest.update(batch.numpy().tobytes())
    key = digest.hexdigest()[:16]
    return Calibration(batches, key, len(ids), ids, source, sum(i in scored_ids for i in ids), skipped)


def random_calibration(shape: tuple, count: int = 2, seed: int = 0) -> Calibration:
    """Uniform [0, 1) batches: only for tests and runs without data (int8 scales then fit no real image)."""
    gen = torch.Generator().manual_seed(seed)
    batches = [torch.rand(shape, generator=gen) for _ in range(count)]
    return Calibration(batches, f"random-{seed}-{count}", count * shape[0])
