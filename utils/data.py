"""Carvana image / mask pairs: find them, decode and resize them as Pytorch-UNet does, stream them in batches."""
from __future__ import annotations

import io
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from utils.device import synchronizer, usable_cpus
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
    """A padded batch: `pixels` (B, H, W, C) uint8 as decoded; `images` the same as (B, C, H, W) float32 in [0, 1];
    `masks` (B, H, W) uint8 class maps or None; the first `n` rows are real. `decode_s` / `resize_s`: the decode
    threads' seconds for the batch's images (spent in parallel with the rest of the run)."""

    ids: list[str]
    pixels: torch.Tensor
    masks: torch.Tensor | None
    n: int
    original_sizes: list[tuple[int, int]]
    failed: list[tuple[str, str]] = field(default_factory=list)
    decode_s: float = 0.0
    resize_s: float = 0.0
    device_decode_s: float = 0.0  # nvJPEG decode + resize, in the thread that iterates (not a decode thread)

    @cached_property
    def images(self) -> torch.Tensor:
        """NCHW float32 scaled to [0, 1] (Pytorch-UNet: no mean / std), made on first use: an accelerator run
        uploads the uint8 `pixels` and scales them on the device instead."""
        return to_float(self.pixels.cpu())


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


DECODES = ("fast", "exact")


def _torch_resize_works() -> bool:
    """Whether this torch resizes uint8 images with antialiased bicubic as Pillow does (torch >= 2.1's kernel, within
    one or two grey levels; torch 2.0's uint8 path runs but differs by up to 24): checked on a random image."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8))
    try:
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]
        y = torch.nn.functional.interpolate(x, size=(23, 37), mode="bicubic", antialias=True, align_corners=False)
    except (RuntimeError, NotImplementedError, TypeError):
        return False
    ours = y[0].permute(1, 2, 0).numpy().astype(int)
    pillow = np.asarray(image.resize((37, 23), resample=Image.BICUBIC)).astype(int)
    return np.abs(ours - pillow).max() <= 2


TORCH_RESIZE = _torch_resize_works()


def resize_bicubic(rgb: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Antialiased bicubic to size=(W, H), as Pillow's resize: torch's uint8 kernel (written to match Pillow's, within
    one grey level on about 0.1 % of values, and several times faster), else Pillow itself."""
    if rgb.size == size:
        return np.asarray(rgb)
    if not TORCH_RESIZE:
        return np.asarray(rgb.resize(size, resample=Image.BICUBIC))
    x = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None]  # a writable copy (np.asarray's is read-only)
    y = torch.nn.functional.interpolate(x, size=(size[1], size[0]), mode="bicubic", antialias=True, align_corners=False)
    return y[0].permute(1, 2, 0).numpy()


def _rgb(img: Image.Image) -> Image.Image:
    """`img` decoded, as RGB: grayscale, palette and RGBA images are converted, as Pytorch-UNet's input expects."""
    img.load()
    return img if img.mode == "RGB" else img.convert("RGB")


def _resized(rgb: Image.Image, size: tuple[int, int], decode: str) -> np.ndarray:
    """An RGB image at `size`: Pillow's bicubic for `exact`, torch's for every other path (`fast`, and the CPU side
    of `nvjpeg`: the files it leaves to the CPU)."""
    if decode != "exact":
        return resize_bicubic(rgb, size)
    return np.asarray(rgb if rgb.size == size else rgb.resize(size, resample=Image.BICUBIC))


def load_image(path: str, size: tuple[int, int], decode: str = "exact",
               clock: list[float] | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode to RGB and resize to size=(W, H) with bicubic; return the HWC uint8 array and the (W, H) before resizing.

    `exact` is Pytorch-UNet's path: the full-size decode, then Pillow's bicubic. `fast` (and `nvjpeg`'s CPU side)
    decodes the same way and resizes with torch's antialiased bicubic (`resize_bicubic`: Pillow's filter, several
    times faster). Decoding at a reduced DCT scale (Pillow's `draft`) was measured and left out: it moved dice by
    5e-4 to 8e-4 (docs/data.md). `clock`, when given, gets [decode seconds, resize seconds] added.
    """
    try:
        start = time.perf_counter()
        with open_regular(path, "image") as f, Image.open(f) as img:
            _check_pixels(img, "image", path)
            original = img.size
            rgb = _rgb(img)
        decoded = time.perf_counter()
        array = _resized(rgb, size, decode)
        if clock is not None:
            clock[0] += decoded - start
            clock[1] += time.perf_counter() - decoded
        return array, original
    except Exception as exc:  # noqa: BLE001  one file's failure, named; _decode_error keeps its message
        raise _decode_error("image", path, exc) from None


def load_mask(path: str, size: tuple[int, int], image_size: tuple[int, int],
              clock: list[float] | None = None) -> np.ndarray:
    """Decode a mask, check it matches its image's size, resize with nearest; any non-zero pixel is foreground.
    `clock`, when given, gets [decode seconds, resize seconds] added."""
    try:
        start = time.perf_counter()
        with open_regular(path, "mask") as f, Image.open(f) as img:
            _check_pixels(img, "mask", path)
            if img.size != image_size:
                raise SampleError(
                    f"mask {path} is {img.size[0]}x{img.size[1]} but its image is {image_size[0]}x{image_size[1]}; "
                    "a mask must have its image's size"
                )
            # Palette GIFs hold indices {0, 1}; read indices (mode P / L), never the palette colours.
            band = img if img.mode in ("1", "L", "P", "I", "I;16") else img.convert("L")
            band.load()
            decoded = time.perf_counter()
            if band.size != size:
                band = band.resize(size, resample=Image.NEAREST)
            mask = (np.asarray(band) != 0).astype(np.uint8)
        if clock is not None:
            clock[0] += decoded - start
            clock[1] += time.perf_counter() - decoded
        return mask
    except Exception as exc:  # noqa: BLE001  one file's failure, named; _decode_error keeps its message
        raise _decode_error("mask", path, exc) from None


JPEG_MAGIC = b"\xff\xd8\xff"


def read_jpeg(path: str, clock: list[float] | None = None) -> tuple[bytes, tuple[int, int]] | None:
    """A JPEG's bytes and (W, H) from its header (no pixel decoded), for a device decoder; None for other formats."""
    try:
        start = time.perf_counter()
        with open_regular(path, "image") as f:
            data = f.read()
        if not data.startswith(JPEG_MAGIC):
            return None
        with Image.open(io.BytesIO(data)) as img:
            _check_pixels(img, "image", path)
            if img.format != "JPEG" or img.mode not in ("RGB", "L"):
                return None  # CMYK and other rare modes: the CPU decoder handles them
            size = img.size
        if clock is not None:
            clock[0] += time.perf_counter() - start
        return data, size
    except Exception as exc:  # noqa: BLE001  one file's failure, named; _decode_error keeps its message
        raise _decode_error("image", path, exc) from None


def _load_sample(sample: Sample, size: tuple[int, int], decode: str, device_jpeg: bool = False):
    """Decode one sample in a decode thread; with `device_jpeg` a JPEG's bytes are read for the device decoder
    instead (its mask is still decoded here)."""
    clock = [0.0, 0.0]
    try:
        jpeg = read_jpeg(sample.image, clock) if device_jpeg else None
        if jpeg is not None:
            image, original = jpeg[0], jpeg[1]
        else:  # not a JPEG, or no device decoder: decoded here
            image, original = load_image(sample.image, size, decode, clock)
        mask = load_mask(sample.mask, size, original, clock) if sample.mask else None
        return sample, image, mask, original, None, clock
    except SampleError as exc:
        return sample, None, None, None, str(exc), clock


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """Stack HWC uint8 images into an NCHW float32 batch scaled to [0, 1] (Pytorch-UNet: no mean / std)."""
    return to_float(torch.from_numpy(np.stack(images)))


def to_float(pixels: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) uint8 -> (B, C, H, W) float32 in [0, 1], contiguous, on the tensor's device."""
    return pixels.permute(0, 3, 1, 2).float().div_(255.0).contiguous()


def _assemble(loaded: list, batch_size: int, has_masks: bool, pin: bool = False) -> Batch:
    n = len(loaded)
    # Static-shape engines need full batches: pad by repeating the last image; metrics ignore rows >= n.
    padded = loaded + [loaded[-1]] * (batch_size - n)
    arrays = [item[1] for item in padded]
    devices = [a.device for a in arrays if isinstance(a, torch.Tensor)]
    if devices:  # decoded on the device (DeviceJpeg): the batch is assembled there
        pixels = torch.stack([a if isinstance(a, torch.Tensor) else torch.from_numpy(a).to(devices[0]) for a in arrays])
    elif pin:  # stacked straight into page-locked memory: the upload to the GPU is then a non-blocking DMA
        pixels = torch.empty((len(arrays), *arrays[0].shape), dtype=torch.uint8, pin_memory=True)
        np.stack(arrays, out=pixels.numpy())
    else:
        pixels = torch.from_numpy(np.stack(arrays))
    masks = torch.from_numpy(np.stack([item[2] for item in padded])) if has_masks else None
    return Batch([item[0].id for item in loaded], pixels, masks, n, [item[3] for item in loaded],
                 decode_s=sum(item[4][0] for item in loaded), resize_s=sum(item[4][1] for item in loaded))


class DeviceJpeg:
    """JPEG decode and resize on an accelerator: nvJPEG through `torchvision.io.decode_jpeg(device=...)`, then
    antialiased bicubic on the device, rounded to uint8 like the CPU paths. The decode threads only read the bytes
    (and decode the masks); a batch the device cannot decode (a corrupt file, a driver error) is decoded on the CPU
    instead, where a bad file is named as usual.

    `decoder(list of uint8 byte tensors) -> list of (C, H, W) uint8 tensors on the device` is torchvision's by default
    (see `make`); tests pass another one.
    """

    def __init__(self, device: torch.device, size: tuple[int, int], decoder: Callable):
        self.device, self.size, self.decoder = device, size, decoder
        self.fallbacks: list[str] = []  # why batches went to the CPU

    @staticmethod
    def make(device: torch.device, size: tuple[int, int]) -> tuple[DeviceJpeg | None, str]:
        """The nvJPEG decoder for a CUDA `device`, or None and why not (no torchvision, or it cannot decode there)."""
        if device.type != "cuda":
            return None, f"no device JPEG decoder for {device.type}"
        try:
            from torchvision.io import ImageReadMode, decode_jpeg
        except Exception as exc:  # noqa: BLE001  torchvision missing or built for another torch: the CPU decodes
            return None, f"torchvision is not importable ({first_line(exc)})"

        def decoder(datas: list[torch.Tensor]) -> list[torch.Tensor]:
            return decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)

        probe = io.BytesIO()
        Image.new("RGB", (16, 16), (10, 200, 30)).save(probe, "JPEG")
        try:
            decoder([torch.frombuffer(bytearray(probe.getvalue()), dtype=torch.uint8)])
        except Exception as exc:  # noqa: BLE001  e.g. a torchvision without nvJPEG
            return None, f"torchvision cannot decode JPEGs on {device} ({first_line(exc)})"
        return DeviceJpeg(device, size, decoder), "nvJPEG (torchvision.io.decode_jpeg) + bicubic on the device"

    def decode(self, datas: list[bytes], paths: list[str]) -> list[torch.Tensor | str]:
        """Each JPEG as (H, W, C) uint8 on the device at `size`, or the one-line error of a file nothing decodes.

        The batch goes to the device decoder at once; should that fail, each file is tried alone, and one the device
        cannot decode is decoded on the CPU (the reason is kept in `fallbacks`), which names a corrupt file."""
        sync = synchronizer(self.device)
        sync()  # work queued on the stream must not see the decoder's allocations early (pytorch/vision#9606)
        try:
            out: list = self._on_device(datas)
        except Exception:  # noqa: BLE001  one bad file fails the whole batched call: find it
            out = []
            for data, path in zip(datas, paths):
                try:
                    out.append(self._on_device([data])[0])
                except Exception as exc:  # noqa: BLE001
                    self.fallbacks.append(f"{path}: {type(exc).__name__}: {first_line(exc)}")
                    out.append(self._cpu(data, path))
        sync()  # the caller's clock then holds the device's time
        return out

    def _cpu(self, data: bytes, path: str) -> torch.Tensor | str:
        """A file the device could not decode, decoded on the CPU and uploaded; its one-line error when the CPU
        cannot decode it either. A failing upload (a broken device) is raised: it is not the file's fault."""
        try:
            with Image.open(io.BytesIO(data)) as img:
                array = _resized(_rgb(img), self.size, "fast")
        except Exception as exc:  # noqa: BLE001  one file's failure, named
            return str(_decode_error("image", path, exc))
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def _on_device(self, datas: list[bytes]) -> list[torch.Tensor]:
        decoded = self.decoder([torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in datas])
        w, h = self.size
        out = []
        for chw in decoded:
            if chw.shape[0] == 1:
                chw = chw.expand(3, -1, -1)
            if tuple(chw.shape[1:]) != (h, w):
                resized = torch.nn.functional.interpolate(chw[None].float(), size=(h, w), mode="bicubic",
                                                          antialias=True, align_corners=False)
                chw = resized[0].round_().clamp_(0, 255).to(torch.uint8)
            out.append(chw.permute(1, 2, 0))
        return out


def _device_pass(ready: list, decoder: DeviceJpeg, clock: list[float]) -> tuple[list, list[tuple[str, str]]]:
    """Decode the JPEG bytes among `ready` on the decoder's device; returns the items that decoded (bytes replaced
    by device tensors) and the (id, error) of those that did not. `clock[2]` gets the seconds."""
    todo = [k for k, item in enumerate(ready) if isinstance(item[1], bytes)]
    if not todo:
        return ready, []
    start = time.perf_counter()
    results = dict(zip(todo, decoder.decode([ready[k][1] for k in todo], [ready[k][0].image for k in todo])))
    clock[2] += time.perf_counter() - start
    kept, failed = [], []
    for k, item in enumerate(ready):
        result = results.get(k, item[1])
        if isinstance(result, str):
            failed.append((item[0].id, result))
        else:
            kept.append((item[0], result, *item[2:]))
    return kept, failed


def default_workers() -> int:
    """Decode threads by default: one per usable CPU (the decoders and the resize release the GIL), at least 2,
    at most 16."""
    return max(2, min(16, usable_cpus()))


def _meet(barrier: threading.Barrier) -> None:
    """Wait at `barrier` for at most 10 s (a thread that never arrives must not hang the run)."""
    try:
        barrier.wait(timeout=10)
    except threading.BrokenBarrierError:
        pass


class Decoders:
    """`workers` daemon threads that decode samples. Daemon, unlike ThreadPoolExecutor's (which are joined when the
    pool closes and again at exit): a thread stuck in a read (a hung network mount) can then neither keep Ctrl-C from
    stopping the run nor keep the process from exiting with its report."""

    def __init__(self, workers: int):
        self.tasks: queue.SimpleQueue = queue.SimpleQueue()
        self.workers = max(1, workers)
        started = threading.Barrier(self.workers + 1)
        threads = torch.get_num_threads()
        self.threads = [threading.Thread(target=self._work, args=(started,), name=f"decode-{i}", daemon=True)
                        for i in range(self.workers)]
        for thread in self.threads:
            thread.start()
        _meet(started)
        # torch.set_num_threads(1) in each thread also set the default of threads yet to come: give it back.
        torch.set_num_threads(threads)

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        self.tasks.put((future, fn, args))
        return future

    def _work(self, started: threading.Barrier) -> None:
        # One torch thread per decode thread (the resize): the threads are the parallelism. An OpenMP team per decode
        # thread beside the engine's own oversubscribes the cores; measured on 2 busy cores, the resize took 6x longer.
        torch.get_num_threads()  # torch's per-thread lazy init first, or it would undo the next line on first use
        torch.set_num_threads(1)
        _meet(started)
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

    def close(self, wait: float = 0.0) -> None:
        """Let each thread end after its current task, waiting at most `wait` seconds in all for them: a run that
        finished waits (a thread still inside torch while the interpreter exits can abort the process), one stopped
        by Ctrl-C or an error does not (a thread may be stuck in a read)."""
        for _ in range(self.workers):
            self.tasks.put(None)
        deadline = time.perf_counter() + wait
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.perf_counter()))


def iter_batches(samples: list[Sample], size: tuple[int, int], batch_size: int, workers: int = 2,
                 has_masks: bool = False, decode: str = "exact", pin: bool = False,
                 device_decoder: DeviceJpeg | None = None) -> Iterator[Batch]:
    """Yield full-size batches, decoding ahead in `workers` threads with a bounded queue (never the whole set in memory).

    Samples that fail to decode are dropped from the batches and listed in the `failed` field of the batch that
    follows them (an empty one, n == 0, at the end or when Ctrl-C stops the wait), so the caller can report them.
    `decode` is `load_image`'s: "exact" (Pytorch-UNet's) or "fast". `pin`: batches in page-locked memory (CUDA).
    `device_decoder`: JPEGs are decoded on its device (the batch's pixels are there), in this thread.
    """
    prefetch = max(2 * batch_size, workers * 2)
    pool = Decoders(workers)
    pending: deque = deque()
    todo = iter(samples)
    ready, failed = [], []
    # decode / resize seconds spent on files that failed (counted with the next batch), and on the device decoder
    lost = [0.0, 0.0, 0.0]

    def refill():
        while len(pending) < prefetch:
            sample = next(todo, None)
            if sample is None:
                return
            pending.append(pool.submit(_load_sample, sample, size, decode, device_decoder is not None))

    def empty() -> Batch:
        return Batch([], torch.empty(0, dtype=torch.uint8), None, 0, [], failed, lost[0], lost[1], lost[2])

    finished = False
    try:
        refill()
        while pending:
            sample, image, mask, original, error, clock = pending.popleft().result()
            refill()
            if error:
                failed.append((sample.id, error))
                lost[0] += clock[0]
                lost[1] += clock[1]
                continue
            ready.append((sample, image, mask, original, clock))
            if len(ready) == batch_size and device_decoder is not None:
                ready, bad = _device_pass(ready, device_decoder, lost)
                failed.extend(bad)
            if len(ready) == batch_size:
                batch = _assemble(ready, batch_size, has_masks, pin)
                batch.failed, ready, failed = failed, [], []
                batch.decode_s, batch.resize_s, batch.device_decode_s = (batch.decode_s + lost[0],
                                                                          batch.resize_s + lost[1], lost[2])
                lost = [0.0, 0.0, 0.0]
                yield batch
        if ready and device_decoder is not None:
            ready, bad = _device_pass(ready, device_decoder, lost)
            failed.extend(bad)
        if ready:
            batch = _assemble(ready, batch_size, has_masks, pin)
            batch.failed, batch.decode_s, batch.resize_s = failed, batch.decode_s + lost[0], batch.resize_s + lost[1]
            batch.device_decode_s = lost[2]
            yield batch
        elif failed:
            yield empty()
        finished = True
    except KeyboardInterrupt:
        if failed:  # Ctrl-C while waiting for a decode: the files that failed so far are still named
            yield empty()
        raise
    finally:
        for future in pending:  # closed early (Ctrl-C, an engine error): decode nothing more
            future.cancel()
        pool.close(wait=5.0 if finished else 0.0)


def iter_dataset(dataset: Dataset, size: tuple[int, int], batch_size: int, workers: int = 2,
                 decode: str = "exact", pin: bool = False, device_decoder: DeviceJpeg | None = None) -> Iterator[Batch]:
    """Batches of the scored pairs, then batches of the images without a mask (timed and compared, not scored)."""
    yield from iter_batches(dataset.samples, size, batch_size, workers, dataset.has_masks, decode, pin, device_decoder)
    if dataset.unpaired:
        yield from iter_batches(dataset.unpaired, size, batch_size, workers, False, decode, pin, device_decoder)


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
