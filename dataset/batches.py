"""Streaming the pairs in padded batches, decoded ahead in background threads with a bounded queue."""
from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from dataset.decode import load_image, load_mask, read_jpeg
from dataset.modes import Conversion
from dataset.nvjpeg import DeviceJpeg
from dataset.pairs import Dataset, Sample
from utils.device import usable_cpus
from utils.errors import SampleError


@dataclass
class Batch:
    """A padded batch: `pixels` (B, H, W, C) uint8 as decoded; `images` the same as (B, C, H, W) float32 in [0, 1];
    `masks` (B, H, W) uint8 class maps or None; the first `n` rows are real. `decode_s` / `resize_s`: the decode
    threads' seconds for the batch's images (spent in parallel with the rest of the run). `converted`: the batch's
    files that were not 8-bit RGB (images) or plain bands (masks), and how they were read."""

    ids: list[str]
    pixels: torch.Tensor
    masks: torch.Tensor | None
    n: int
    original_sizes: list[tuple[int, int]]
    failed: list[tuple[str, str]] = field(default_factory=list)
    decode_s: float = 0.0
    resize_s: float = 0.0
    device_decode_s: float = 0.0  # nvJPEG decode + resize, in the thread that iterates (not a decode thread)
    converted: list[Conversion] = field(default_factory=list)

    @cached_property
    def images(self) -> torch.Tensor:
        """NCHW float32 scaled to [0, 1] (Pytorch-UNet: no mean / std), made on first use: an accelerator run
        uploads the uint8 `pixels` and scales them on the device instead."""
        return to_float(self.pixels.cpu())


def _load_sample(sample: Sample, size: tuple[int, int], decode: str, device_jpeg: bool = False):
    """Decode one sample in a decode thread; with `device_jpeg` a JPEG's bytes are read for the device decoder
    instead (its mask is still decoded here)."""
    clock, converted = [0.0, 0.0], []
    try:
        jpeg = read_jpeg(sample.image, clock, converted) if device_jpeg else None
        if jpeg is not None:
            image, original = jpeg[0], jpeg[1]
        else:  # not a JPEG, or no device decoder: decoded here
            image, original = load_image(sample.image, size, decode, clock, converted)
        mask = load_mask(sample.mask, size, original, clock, converted) if sample.mask else None
        return sample, image, mask, original, None, clock, converted
    except SampleError as exc:  # a sample left out: its conversions are not reported
        return sample, None, None, None, str(exc), clock, []


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
        # One torch thread per decode thread (the resize): the threads are the parallelism, and an OpenMP team per
        # decode thread beside the engine's own would oversubscribe the cores (docs/data.md).
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


@dataclass(frozen=True)
class Loader:
    """How pairs become batches: the model's input `size` (W, H), the compiled `batch_size`, `workers` decode threads,
    the `decode` path of `load_image` ("exact", Pytorch-UNet's, or "fast"), batches in page-locked memory (`pin`, for
    a CUDA upload), and a `device_decoder` that decodes JPEGs on its device, in the iterating thread."""

    size: tuple[int, int]
    batch_size: int = 1
    workers: int = 2
    decode: str = "exact"
    pin: bool = False
    device_decoder: DeviceJpeg | None = None


class _Collected:
    """What the next batch gathers: decoded items, the files that failed, and the seconds spent on those (decode,
    resize) and on the device decoder, all counted with the batch that follows."""

    def __init__(self, loader: Loader, has_masks: bool):
        self.loader, self.has_masks = loader, has_masks
        self.ready: list = []
        self.failed: list[tuple[str, str]] = []
        self.lost = [0.0, 0.0, 0.0]
        self.converted: list[Conversion] = []

    def add(self, sample: Sample, image, mask, original, error: str | None, clock: list[float],
            converted: list[Conversion]) -> None:
        self.converted.extend(converted)
        if error:
            self.failed.append((sample.id, error))
            self.lost[0] += clock[0]
            self.lost[1] += clock[1]
        else:
            self.ready.append((sample, image, mask, original, clock))

    def full(self) -> bool:
        """A whole batch is ready; JPEG bytes left for the device decoder are decoded first (a file it cannot decode
        leaves the batch short)."""
        if len(self.ready) == self.loader.batch_size:
            self.decode_on_device()
        return len(self.ready) == self.loader.batch_size

    def decode_on_device(self) -> None:
        if self.ready and self.loader.device_decoder is not None:
            self.ready, bad = self.loader.device_decoder.decode_ready(self.ready, self.lost)
            self.failed.extend(bad)

    def take(self, ready: bool = True) -> Batch | None:
        """The (padded) batch of what is ready, or, with nothing ready (or `ready=False`), an empty one that names the
        files that failed; None when there is neither."""
        if ready and self.ready:
            batch = _assemble(self.ready, self.loader.batch_size, self.has_masks, self.loader.pin)
        elif self.failed:
            batch = Batch([], torch.empty(0, dtype=torch.uint8), None, 0, [])
        else:
            return None
        batch.failed = self.failed
        batch.decode_s, batch.resize_s = batch.decode_s + self.lost[0], batch.resize_s + self.lost[1]
        batch.device_decode_s, batch.converted = self.lost[2], self.converted
        self.ready, self.failed, self.lost, self.converted = [], [], [0.0, 0.0, 0.0], []
        return batch


def iter_batches(samples: list[Sample], loader: Loader, has_masks: bool = False) -> Iterator[Batch]:
    """Yield full-size batches, decoding ahead in `loader.workers` threads with a bounded queue (never the whole set in
    memory).

    Samples that fail to decode are dropped from the batches and listed in the `failed` field of the batch that
    follows them (an empty one, n == 0, at the end or when Ctrl-C stops the wait), so the caller can report them.
    """
    prefetch = max(2 * loader.batch_size, loader.workers * 2)
    pool = Decoders(loader.workers)
    pending: deque = deque()
    todo = iter(samples)
    collected = _Collected(loader, has_masks)
    finished = False

    def refill():
        for sample in itertools.islice(todo, prefetch - len(pending)):
            pending.append(pool.submit(_load_sample, sample, loader.size, loader.decode, on_device))

    on_device = loader.device_decoder is not None
    try:
        refill()
        while pending:
            loaded = pending.popleft().result()
            refill()
            collected.add(*loaded)
            if collected.full():
                yield collected.take()
        collected.decode_on_device()
        last = collected.take()
        if last is not None:
            yield last
        finished = True
    except KeyboardInterrupt:
        if collected.failed:  # Ctrl-C while waiting for a decode: the files that failed so far are still named
            yield collected.take(ready=False)
        raise
    finally:
        for future in pending:  # closed early (Ctrl-C, an engine error): decode nothing more
            future.cancel()
        pool.close(wait=5.0 if finished else 0.0)


def iter_dataset(dataset: Dataset, loader: Loader) -> Iterator[Batch]:
    """Batches of the scored pairs, then batches of the images without a mask (timed and compared, not scored)."""
    yield from iter_batches(dataset.samples, loader, dataset.has_masks)
    if dataset.unpaired:
        yield from iter_batches(dataset.unpaired, loader)
