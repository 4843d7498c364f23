"""The two passes over one engine: accuracy (streamed data, end-to-end fps) and timing (one resident batch)."""
from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import torch
from tqdm import tqdm

from dataset.batches import Batch, to_float
from dataset.modes import Conversion
from engines.base import Engine
from pipeline.worst import WorstImages
from report.metrics import Accuracy
from utils.device import synchronizer
from utils.signals import held
from utils.timing import Split, Timing, load_average, measure, summarize
from utils.trace import TRACE


def _reduced_fp32_flags(device: torch.device) -> list[tuple[object, str]]:
    """The (object, attribute) switches that let `device` compute fp32 convolutions and matmuls in reduced precision:
    TF32 on CUDA (cuDNN's defaults to on), HF32 on Ascend (torch_npu's convolutions default to on)."""
    if device.type == "cuda":
        return [(torch.backends.cudnn, "allow_tf32"), (torch.backends.cuda.matmul, "allow_tf32")]
    if device.type == "npu":
        npu = getattr(torch, "npu", None)
        return [(getattr(npu, part), "allow_hf32") for part in ("conv", "matmul")
                if npu is not None and hasattr(getattr(npu, part, None), "allow_hf32")]
    return []


@contextmanager
def exact_fp32(device: torch.device):
    """fp32 on an accelerator as IEEE fp32 for the block: TF32 (CUDA) / HF32 (Ascend) off, then as they were."""
    flags = _reduced_fp32_flags(device)
    saved = [getattr(obj, name) for obj, name in flags]
    for obj, name in flags:
        setattr(obj, name, False)
    try:
        yield
    finally:
        for (obj, name), value in zip(flags, saved):
            setattr(obj, name, value)


def metrics_device(device: torch.device) -> torch.device:
    """Where scores are computed for tensors on `device`: there on the CPU and CUDA (only per-image scalars come
    back), on the CPU for other accelerators (the NPU's float64 support is partial)."""
    return device if device.type in ("cpu", "cuda") else torch.device("cpu")


def batch_input(batch: Batch, device: torch.device) -> torch.Tensor:
    """The batch as NCHW float32 in [0, 1] on `device`: on an accelerator the uint8 pixels are uploaded (pinned host
    memory, a non-blocking copy: a quarter of the bytes of float32) and scaled there."""
    if device.type == "cpu":
        return batch.images
    pixels = batch.pixels
    if pixels.device == device:  # decoded there (nvJPEG)
        return to_float(pixels)
    if device.type == "cuda" and not pixels.is_pinned():
        pixels = pixels.pin_memory()
    return to_float(pixels.to(device, non_blocking=True))


class Reference:
    """Logits of the eager fp32 model, the yardstick every engine's output is compared with: on `device` (the run's
    accelerator by default, TF32 off, so it is IEEE fp32 like the CPU's; or the CPU).

    Results are kept per image id on the host up to `budget_bytes` (set it where more than one pass compares with
    the same images: several rows, or auto's probe and its row), so the reference is computed once per image; with
    none kept (the default) memory stays flat in the size of the data set.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device | None = None, budget_bytes: int = 0):
        self.device = device or torch.device("cpu")
        self.model = model if self.device.type == "cpu" else copy.deepcopy(model).to(self.device).float().eval()
        self.budget = budget_bytes
        self.cache: dict[str, torch.Tensor] = {}
        self.used = 0

    def __call__(self, ids: list[str], batch: Batch) -> torch.Tensor:
        if all(i in self.cache for i in ids):
            return torch.stack([self.cache[i] for i in ids])
        with torch.inference_mode(), exact_fp32(self.device):
            logits = self.model(batch_input(batch, self.device))[: len(ids)].float()
        synchronizer(self.device)()  # its time is the caller's `reference` part: the device's work included
        self.offer(ids, logits)
        return logits

    def offer(self, ids: list[str], logits: torch.Tensor) -> None:
        """Keep reference logits per id on the host while the budget lasts (also those computed elsewhere that are
        the reference by construction: eager fp32 on the CPU)."""
        for i, row in zip(ids, logits):
            if i not in self.cache and self.used + row.numel() * 4 <= self.budget:
                self.cache[i] = row.detach().to("cpu", copy=True)
                self.used += row.numel() * 4


@dataclass
class PassResult:
    """What the accuracy pass measured for one engine: scores at the model's resolution, per-image call times and
    sizes (aligned with `accuracy.ids`), the end-to-end time and where it went, and one batch for the timing pass."""

    accuracy: Accuracy
    e2e_s: float = 0.0
    first_call_s: float | None = None
    failed: list[tuple[str, str]] = field(default_factory=list)
    converted: list[Conversion] = field(default_factory=list)  # files read by dataset.modes' rule, not as stored
    timing_batch: torch.Tensor | None = None
    batch_ms: list[float] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    interrupted: bool = False  # Ctrl-C stopped the row; what it holds covers the images finished before
    split: Split = field(default_factory=Split)
    started: float = 0.0  # wall clock (time.time) at the start: a torchrun merge spans the ranks' passes with it
    worst: WorstImages | None = None  # the lowest-dice images' thumbnails, when asked (--html)

    @property
    def images(self) -> int:
        """Images scored by the pass (each batch's real rows, recorded whole)."""
        return len(self.accuracy.ids)

    @property
    def e2e_fps(self) -> float | None:
        return self.images / self.e2e_s if self.e2e_s > 0 and self.images else None


class Timed(Protocol):
    """How a row is timed (pipeline.rows.Job): calls, warm-up, seconds at least, the percentiles to report."""

    loop: int
    warmup: int
    min_duration_s: float
    percentiles: tuple
    show_progress: bool


class BatchHook(Protocol):
    """Something that wants each batch's logits during the accuracy pass (outputs, per-image scores)."""

    def add(self, batch: Batch, logits: torch.Tensor) -> None:
        """Called after each batch with its real rows' CPU float32 logits."""

    def flush(self) -> None:
        """Called once after the last batch, inside the end-to-end time: finish any background work."""


def accuracy_pass(engine: Engine, batches: Iterable[Batch], total: int, reference: Reference | None,
                  show_progress: bool = True, on_batch: BatchHook | None = None, keep_worst: int = 0) -> PassResult:
    """Stream batches through the engine; score each real row; time it all except the reference's own compute.

    End-to-end time covers waiting for decoded data, the copy to the device, the engine call, the copy back,
    the metrics and the `on_batch` hook (its `add` per batch, its `flush` at the end). The first engine call is
    timed on its own (lazy initialisation shows there). `split` says where the time went (`SPLIT`): the main
    thread's parts add up to the end-to-end time; `reference` is outside it; `decode` / `resize` are the decode
    threads' seconds, spent in parallel. Scores are computed where the logits are (`metrics_device`): on a GPU only
    per-image scalars come back, and the logits only when `on_batch` wants them. `keep_worst`: how many of the
    lowest-dice images to keep as thumbnails (`worst`, inside the metrics part: only an image that enters the set
    is copied and made small).
    """
    result = PassResult(Accuracy(), started=time.time(), worst=WorstImages(keep_worst) if keep_worst else None)
    split = result.split
    own_reference = reference is not None and engine.is_reference
    # The bar's clock runs through the reference's compute too; e2e fps leaves it out: say so where people look.
    note = " (+ reference, not in e2e)" if reference is not None and not own_reference else ""
    bar = tqdm(total=total, desc=f"accuracy {engine.name} {engine.precision}{note}", unit="img",
               disable=not show_progress, leave=False)
    start = time.perf_counter()
    iterator = iter(batches)
    try:
        while True:
            with split("wait"):
                batch = next(iterator, None)
            if batch is None:
                break
            split.add("wait", -batch.device_decode_s)
            for part, seconds in (("nvjpeg", batch.device_decode_s), ("decode", batch.decode_s),
                                  ("resize", batch.resize_s)):
                split.add(part, seconds)
            result.failed.extend(batch.failed)
            result.converted.extend(batch.converted)
            if batch.n:
                _score_batch(engine, batch, result, reference, on_batch)
                bar.update(batch.n)
        if on_batch is not None:
            with split("outputs"):
                on_batch.flush()
    except KeyboardInterrupt:
        result.interrupted = True  # the batches scored so far are a result: the caller reports them as partial
    finally:
        bar.close()
        if hasattr(batches, "close"):
            with split("wait"):  # the decode threads' end is the data's: inside e2e, so a part of its split
                batches.close()  # stop the decoding threads now (Ctrl-C, engine error), not whenever GC gets to it
        end = time.perf_counter()
        result.e2e_s = end - start - split["reference"]
        TRACE.record("accuracy pass", start, end, {"e2e_s": result.e2e_s, "reference_s": split["reference"]})
    return result


def uploads(engine: Engine) -> bool:
    """Whether the pipeline uploads a batch's uint8 pixels to the engine's device itself (torch engines on an
    accelerator), rather than handing the engine the host float batch."""
    return engine.device_input and engine.device.type != "cpu"


def engine_inputs(engine: Engine, batch: Batch):
    """`batch` in the engine's native form, fed as every pass feeds it (uploaded as uint8 where `uploads`, else the
    host NCHW float batch)."""
    return engine.prepare(batch_input(batch, engine.device) if uploads(engine) else batch.images)


def _score_batch(engine: Engine, batch: Batch, result: PassResult, reference: Reference | None,
                 on_batch: BatchHook | None) -> None:
    """One batch of the accuracy pass: upload, engine call, logits, reference, scores and the hook, each part timed."""
    split = result.split
    with split("h2d"):
        inputs = engine_inputs(engine, batch)
        engine.synchronize()
        if result.timing_batch is None:  # on an accelerator the uploaded batch, else the host one
            result.timing_batch = inputs if uploads(engine) else batch.images
    start = time.perf_counter()
    output = engine.run(inputs)
    engine.synchronize()
    call_s = time.perf_counter() - start
    split.add("model", call_s, start)
    if result.first_call_s is None:
        result.first_call_s = call_s
    with split("d2h"):
        logits = output_logits(engine, output)[: batch.n]
        host_logits = logits.cpu() if on_batch is not None else None
    ref = None
    if reference is not None:
        with split("reference"):  # the whole step (compute, keeping, the copy to where the logits are): not in e2e
            if engine.is_reference:
                reference.offer(batch.ids, logits)
                ref = logits
            else:
                ref = reference(batch.ids, batch).to(logits.device)
    # A batch is recorded whole or not at all: its per-image lists (and so the image count) and its hand-over to the
    # writer (which waits at most for MAX_PENDING batches) all happen, or none does.
    with held():
        with split("metrics"):
            masks = batch.masks[: batch.n].to(logits.device, non_blocking=True) if batch.masks is not None else None
            result.accuracy.add(batch.ids, logits, masks, ref)
            if result.worst is not None:
                result.worst.add(batch, logits, result.accuracy.dice[-batch.n:], result.accuracy.iou[-batch.n:])
            result.batch_ms.extend([call_s * 1000.0] * batch.n)
            result.sizes.extend(batch.original_sizes)
        if on_batch is not None:
            with split("outputs"):
                on_batch.add(batch, host_logits)


def output_logits(engine: Engine, output) -> torch.Tensor:
    """The engine's output as float32 logits where the scores will be computed (`metrics_device`): a torch output on
    the CPU or a GPU stays there (no copy back), anything else goes through the engine's own `to_torch` (host)."""
    if isinstance(output, torch.Tensor) and metrics_device(output.device) == output.device:
        return output.float()
    return engine.to_torch(output)


def timing_pass(engine: Engine, batch: torch.Tensor, job: Timed) -> Timing:
    """Warm up, then time the engine's calls on one batch already in its native form: `job.loop` calls, and more until
    `job.min_duration_s` seconds are timed; the machine's load average is kept beside the figures."""
    native = engine.prepare(batch)
    engine.synchronize()
    with tqdm(total=job.loop, desc=f"timing {engine.name} {engine.precision}", unit="call",
              disable=not job.show_progress, leave=False) as bar:
        call = engine.run_parallel or engine.run
        latencies = measure(call, native, engine.synchronize, loop=job.loop, warmup=job.warmup, progress=bar.update,
                            min_duration_s=job.min_duration_s)
    return summarize(latencies, batch.shape[0] * engine.parallel, job.percentiles, load_average())
