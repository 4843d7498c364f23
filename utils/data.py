"""Carvana image / mask pairs: find them, decode and resize them as Pytorch-UNet does, stream them in batches."""
from __future__ import annotations

import os
import queue
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from utils.errors import SampleError, first_line
from utils.files import file_kind, open_regular

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_EXTS = (".gif", ".png", ".bmp", ".tif", ".tiff")
MASK_SUFFIX = "_mask"
MAX_SIDE = 16384  # --image_size: past this no UNet fits any machine's memory (see sample.py's memory check)


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


@dataclass
class Batch:
    """A padded batch: `images` (B, C, H, W) float32 in [0, 1]; `masks` (B, H, W) int64 or None; the first `n` rows are real."""

    ids: list[str]
    images: torch.Tensor
    masks: torch.Tensor | None
    n: int
    original_sizes: list[tuple[int, int]]
    failed: list[tuple[str, str]] = field(default_factory=list)


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
            raise SampleError(f"two images share the id {_stem(p)!r}: {seen[_stem(p)]} and {p}; ids name masks, "
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
            raise SampleError(f"two masks for image id {key!r}: {masks[key]} and {p}; keep one")
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


def _decode_error(what: str, path: str, exc: Exception) -> SampleError:
    """Any failure to decode one file, as one line naming it: the file is skipped, never the whole row."""
    if isinstance(exc, SampleError):
        return exc
    if isinstance(exc, Image.DecompressionBombError):
        reason = f"{first_line(exc)} (Pillow's decompression-bomb limit); shrink it or remove it"
    elif isinstance(exc, MemoryError):
        reason = "not enough memory to decode it; shrink it or remove it"
    elif isinstance(exc, (OSError, UnidentifiedImageError, SyntaxError, ValueError)):
        reason = str(exc) or type(exc).__name__
    else:  # Pillow's decoders raise many types on hostile files (struct.error, IndexError, ...)
        reason = f"{type(exc).__name__}: {first_line(exc)}"
    return SampleError(f"cannot decode {what} {path}: {reason}")


def _check_pixels(img: Image.Image, what: str, path: str) -> None:
    """Refuse what Pillow only warns about (between MAX_IMAGE_PIXELS and twice that) before decoding any pixel."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit and img.size[0] * img.size[1] > limit:
        raise SampleError(f"cannot decode {what} {path}: {img.size[0]}x{img.size[1]} = {img.size[0] * img.size[1]:,} "
                          f"pixels is past Pillow's decompression-bomb limit of {limit:,}; shrink it or remove it")


def load_image(path: str, size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode to RGB and resize to size=(W, H) with Pillow's bicubic (Pytorch-UNet's filter).

    Returns the HWC uint8 array and the image's (W, H) before resizing.
    """
    try:
        with open_regular(path, "image") as f, Image.open(f) as img:
            _check_pixels(img, "image", path)
            original = img.size
            rgb = img.convert("RGB")  # grayscale, palette and RGBA images become RGB, as Pytorch-UNet's input expects
            if rgb.size != size:
                rgb = rgb.resize(size, resample=Image.BICUBIC)
            return np.asarray(rgb), original
    except Exception as exc:  # noqa: BLE001  one file's failure, named; _decode_error keeps its message
        raise _decode_error("image", path, exc) from None


def load_mask(path: str, size: tuple[int, int], image_size: tuple[int, int]) -> np.ndarray:
    """Decode a mask, check it matches its image's size, resize with nearest; any non-zero pixel is foreground."""
    try:
        with open_regular(path, "mask") as f, Image.open(f) as img:
            _check_pixels(img, "mask", path)
            if img.size != image_size:
                raise SampleError(
                    f"mask {path} is {img.size[0]}x{img.size[1]} but its image is {image_size[0]}x{image_size[1]}; "
                    "a mask must have its image's size"
                )
            # Palette GIFs hold indices {0, 1}; read indices (mode P / L), never the palette colours.
            band = img if img.mode in ("1", "L", "P", "I", "I;16") else img.convert("L")
            if band.size != size:
                band = band.resize(size, resample=Image.NEAREST)
            return (np.asarray(band) != 0).astype(np.uint8)
    except Exception as exc:  # noqa: BLE001  one file's failure, named; _decode_error keeps its message
        raise _decode_error("mask", path, exc) from None


def _load_sample(sample: Sample, size: tuple[int, int]):
    try:
        image, original = load_image(sample.image, size)
        mask = load_mask(sample.mask, size, original) if sample.mask else None
        return sample, image, mask, original, None
    except SampleError as exc:
        return sample, None, None, None, str(exc)


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """Stack HWC uint8 images into an NCHW float32 batch scaled to [0, 1] (Pytorch-UNet: no mean / std)."""
    array = np.stack(images).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(array)).float().div_(255.0)


def _assemble(loaded: list, batch_size: int, has_masks: bool) -> Batch:
    n = len(loaded)
    # Static-shape engines need full batches: pad by repeating the last image; metrics ignore rows >= n.
    padded = loaded + [loaded[-1]] * (batch_size - n)
    images = to_tensor([item[1] for item in padded])
    masks = torch.from_numpy(np.stack([item[2] for item in padded])).long() if has_masks else None
    return Batch([item[0].id for item in loaded], images, masks, n, [item[3] for item in loaded])


class Decoders:
    """`workers` daemon threads that decode samples. Daemon, unlike ThreadPoolExecutor's (which are joined when the
    pool closes and again at exit): a thread stuck in a read (a hung network mount) can then neither keep Ctrl-C from
    stopping the run nor keep the process from exiting with its report."""

    def __init__(self, workers: int):
        self.tasks: queue.SimpleQueue = queue.SimpleQueue()
        self.workers = max(1, workers)
        for i in range(self.workers):
            threading.Thread(target=self._work, name=f"decode-{i}", daemon=True).start()

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        self.tasks.put((future, fn, args))
        return future

    def _work(self) -> None:
        while True:
            task = self.tasks.get()
            if task is None:
                return
            future, fn, args = task
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while queued
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001  handed to whoever waits on the future
                future.set_exception(exc)

    def close(self) -> None:
        """Let each thread end after its current task; waits for none of them."""
        for _ in range(self.workers):
            self.tasks.put(None)


def iter_batches(samples: list[Sample], size: tuple[int, int], batch_size: int, workers: int = 2,
                 has_masks: bool = False) -> Iterator[Batch]:
    """Yield full-size batches, decoding ahead in `workers` threads with a bounded queue (never the whole set in memory).

    Samples that fail to decode are dropped from the batches and listed in the `failed` field of the batch that
    follows them (an empty one, n == 0, at the end or when Ctrl-C stops the wait), so the caller can report them.
    """
    prefetch = max(2 * batch_size, workers * 2)
    pool = Decoders(workers)
    pending: deque = deque()
    todo = iter(samples)
    ready, failed = [], []

    def refill():
        while len(pending) < prefetch:
            sample = next(todo, None)
            if sample is None:
                return
            pending.append(pool.submit(_load_sample, sample, size))

    try:
        refill()
        while pending:
            sample, image, mask, original, error = pending.popleft().result()
            refill()
            if error:
                failed.append((sample.id, error))
                continue
            ready.append((sample, image, mask, original))
            if len(ready) == batch_size:
                batch = _assemble(ready, batch_size, has_masks)
                batch.failed, ready, failed = failed, [], []
                yield batch
        if ready:
            batch = _assemble(ready, batch_size, has_masks)
            batch.failed = failed
            yield batch
        elif failed:
            yield Batch([], torch.empty(0), None, 0, [], failed)
    except KeyboardInterrupt:
        if failed:  # Ctrl-C while waiting for a decode: the files that failed so far are still named
            yield Batch([], torch.empty(0), None, 0, [], failed)
        raise
    finally:
        for future in pending:  # closed early (Ctrl-C, an engine error): decode nothing more
            future.cancel()
        pool.close()


def iter_dataset(dataset: Dataset, size: tuple[int, int], batch_size: int, workers: int = 2) -> Iterator[Batch]:
    """Batches of the scored pairs, then batches of the images without a mask (timed and compared, not scored)."""
    yield from iter_batches(dataset.samples, size, batch_size, workers, dataset.has_masks)
    if dataset.unpaired:
        yield from iter_batches(dataset.unpaired, size, batch_size, workers, has_masks=False)


def parse_size(text: str) -> tuple[int, int]:
    """'512' -> (512, 512); '959x640' -> (959, 640) as (W, H)."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < 16:
        raise ValueError(f"expected N or WxH with sides >= 16, got {text!r}")
    if max(values) > MAX_SIDE:
        raise ValueError(f"sides are at most {MAX_SIDE} (no UNet of that size fits in memory), got {text!r}")
    return (values[0], values[-1])


def memory_bytes() -> int | None:
    """This machine's memory, or its container's limit when lower; None where neither can be read."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(limit_file) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total
