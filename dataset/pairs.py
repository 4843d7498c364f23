"""Carvana image / mask pairs: `<id>.jpg` images with `<id>_mask.gif|png` masks, found and checked."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from utils.errors import SampleError
from utils.files import file_kind

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_EXTS = (".gif", ".png", ".bmp", ".tif", ".tiff")
MASK_SUFFIX = "_mask"


@dataclass
class Sample:
    """One image and, when known, its ground-truth mask file."""

    id: str
    image: str
    mask: str | None = None


@dataclass
class Dataset:
    """The samples to evaluate and the image files that had no mask (reported, still timed)."""

    samples: list[Sample]
    unpaired: list[Sample] = field(default_factory=list)
    has_masks: bool = False

    def __len__(self) -> int:
        return len(self.samples) + len(self.unpaired)



def _list_files(path: str, exts: tuple[str, ...], what: str) -> list[str]:
    if os.path.isfile(path):
        return [path]
    if os.path.exists(path) and not os.path.isdir(path):
        raise SampleError(f"{what} path {path} is {file_kind(path)}; give a folder or an image file")
    if not os.path.isdir(path):
        raise SampleError(f"{what} path not found: {path}")
    files = sorted(
        os.path.join(path, f) for f in os.listdir(path)
        if f.lower().endswith(exts) and not f.startswith(".")
    )
    if not files:
        raise SampleError(f"no {what} files ({', '.join(exts)}) in {path}")
    return files


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def _check_unique(images: list[str]) -> None:
    seen: dict[str, str] = {}
    for p in images:
        if _stem(p) in seen:
            raise SampleError(f"two images share the id '{_stem(p)}': {seen[_stem(p)]} and {p}; ids name masks, "
                              "cache entries and output files, so keep one")
        seen[_stem(p)] = p


def find_pairs(image_path: str, mask_path: str | None = None, limit: int | None = None) -> Dataset:
    """Pair `<id>.jpg` images with `<id>_mask.gif|png` masks (a mask named `<id>.<ext>` also pairs).

    Either path may be a folder or a single file. Without `mask_path` every image is evaluated for speed and
    cosine only. Masks without an image are an error (wrong folder?); images without a mask are reported.
    """
    images = _list_files(image_path, IMAGE_EXTS, "image")
    _check_unique(images)
    if mask_path is None:
        samples = [Sample(_stem(p), p) for p in images]
        return Dataset(samples[:limit] if limit else samples)
    masks = {}
    for p in _list_files(mask_path, MASK_EXTS, "mask"):
        stem = _stem(p)
        key = stem[: -len(MASK_SUFFIX)] if stem.endswith(MASK_SUFFIX) else stem
        if key in masks:
            raise SampleError(f"two masks for image id '{key}': {masks[key]} and {p}; keep one")
        masks[key] = p
    samples, unpaired = [], []
    for p in images:
        stem = _stem(p)
        if stem in masks:
            samples.append(Sample(stem, p, masks.pop(stem)))
        else:
            unpaired.append(Sample(stem, p))
    if not samples:
        example = f" (e.g. {os.path.basename(images[0])} wants {_stem(images[0])}{MASK_SUFFIX}.gif)" if images else ""
        raise SampleError(
            f"no image in {image_path} has a mask in {mask_path}: masks must be named <image id>{MASK_SUFFIX}.gif "
            f"or .png{example}"
        )
    if masks and os.path.isdir(mask_path) and os.path.isdir(image_path):
        orphans = sorted(masks.values())
        raise SampleError(
            f"{len(orphans)} mask(s) have no image in {image_path}, e.g. {orphans[0]}; "
            "check that --image_path and --mask_path point at the same set"
        )
    if limit:
        samples, unpaired = samples[:limit], unpaired[: max(0, limit - len(samples))]
    return Dataset(samples, unpaired, has_masks=True)

