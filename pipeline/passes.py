"""The two passes over one engine: accuracy (streamed data, end-to-end fps) and timing (one resident batch)."""
from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import torch
from tqdm import tqdm

from engines.base import Engine
from utils.data import Batch
from utils.metrics import Accuracy
from utils.timing import measure, summarize


class Reference:
    """Logits of the eager fp32 model on the CPU, the yardstick every engine's output is compared with.

    Results are kept per image id (up to `budget_bytes`), so comparing several engines on the same data
    runs the slow CPU reference once.
    """

    def __init__(self, model: torch.nn.Module, budget_bytes: int = 2 << 30):
        self.model = model
        self.budget = budget_bytes
        self.cache: dict[str, torch.Tensor] = {}
        self.used = 0
        self.seconds = 0.0

    def __call__(self, ids: list[str], images: torch.Tensor) -> torch.Tensor:
        if all(i in self.cache for i in ids):
            return torch.stack([self.cache[i] for i in ids])
        start = time.perf_counter()
        with torch.inference_mode():
            logits = self.model(images.float())[: len(ids)]
        self.seconds += time.perf_counter() - start
        self.offer(ids, logits)
        return logits

    def offer(self, ids: list[str], logits: torch.Tensor) -> None:
        """Cache reference logits per id while the budget lasts (also those computed elsewhere that are the
        reference by construction: eager fp32 on the CPU)."""
        for i, row in zip(ids, logits):
            if i not in self.cache and self.used + row.numel() * 4 <= self.budget:
                self.cache[i] = row.clone()
                self.used += row.numel() * 4


@dataclass
class PassResult:
    """What the accuracy pass measured for one engine: scores at the model's resolution, per-image call times and
    sizes (aligned with `accuracy.ids`), the end-to-end time, and one batch for the timing pass."""

    accuracy: Accuracy
    e2e_s: float = 0.0
    first_call_s: float | None = None
    failed: list[tuple[str, str]] = field(default_factory=list)
    timing_batch: torch.Tensor | None = None
    batch_ms: list[float] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    interrupted: bool = False  # Ctrl-C stopped the row; what it holds covers the images finished before

    @property
    def images(self) -> int:
        """Images scored by the pass (each batch's real rows, recorded whole)."""
        return len(self.accuracy.ids)

    @property
    def e2e_fps(self) -> float | None:
        return self.images / self.e2e_s if self.e2e_s > 0 and self.images else None


class BatchHook(Protocol):
    """Something that wants each batch's logits during the accuracy pass (outputs, per-image scores)."""

    def add(self, batch: Batch, logits: torch.Tensor) -> None:
        """Called after each batch with its real rows' CPU float32 logits."""

    def flush(self) -> None:
        """Called once after the last batch, inside the end-to-end time: finish any background work."""


@contextmanager
def deferred_interrupt():
    """Hold Ctrl-C until the block ends (in the main thread; elsewhere signals never arrive anyway), then deliver it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        # Hand the held Ctrl-C to the handler it was held from (the run's own counts it and raises only the first),
        # so a second one after the block cannot raise again while the partial report is written.
        if callable(previous):
            previous(signal.SIGINT, None)
        elif previous != signal.SIG_IGN:
            raise KeyboardInterrupt


def accuracy_pass(engine: Engine, batches: Iterable[Batch], total: int, reference: Reference | None,
                  show_progress: bool = True, on_batch: BatchHook | None = None) -> PassResult:
    """Stream batches through the engine; score each real row; time it all except the reference's own compute.

    End-to-end time covers waiting for decoded data, the copy to the device, the engine call, the copy back,
    the metrics and the `on_batch` hook (its `add` per batch, its `flush` at the end). The first engine call is
    timed on its own (lazy initialisation shows there).
    """
    result = PassResult(Accuracy())
    own_reference = reference is not None and engine.is_reference
    # The bar's clock runs through the reference's compute too; e2e fps leaves it out: say so where people look.
    note = " (+ reference, not in e2e)" if reference is not None and not own_reference else ""
    bar = tqdm(total=total, desc=f"accuracy {engine.name} {engine.precision}{note}", unit="img",
               disable=not show_progress, leave=False)
    start = time.perf_counter()
    ref_before = reference.seconds if reference else 0.0
    try:
        for batch in batches:
            result.failed.extend(batch.failed)
            if batch.n == 0:
                continue
            if result.timing_batch is None:
                result.timing_batch = batch.images
            call_start = time.perf_counter()
            output = engine.run(engine.prepare(batch.images))
            engine.synchronize()
            call_s = time.perf_counter() - call_start
            if result.first_call_s is None:
                result.first_call_s = call_s
            logits = engine.to_torch(output)[: batch.n]
            masks = batch.masks[: batch.n] if batch.masks is not None else None
            if own_reference:
                reference.offer(batch.ids, logits)
                ref = logits
            else:
                ref = reference(batch.ids, batch.images) if reference else None
            # A batch is recorded whole or not at all: its per-image lists (and so the image count) and its hand-over to the
            # writer (which waits at most for MAX_PENDING batches) all happen, or none does.
            with deferred_interrupt():
                result.accuracy.add(batch.ids, logits, masks, ref)
                result.batch_ms.extend([call_s * 1000.0] * batch.n)
                result.sizes.extend(batch.original_sizes)
                if on_batch is not None:
                    on_batch.add(batch, logits)
            bar.update(batch.n)
        if on_batch is not None:
            on_batch.flush()
    except KeyboardInterrupt:
        result.interrupted = True  # the batches scored so far are a result: the caller reports them as partial
    finally:
        bar.close()
        if hasattr(batches, "close"):
            batches.close()  # stop the decoding threads now (Ctrl-C, engine error), not whenever GC gets to it
        result.e2e_s = time.perf_counter() - start - ((reference.seconds - ref_before) if reference else 0.0)
    return result


def timing_pass(engine: Engine, batch: torch.Tensor, loop: int, warmup: int, show_progress: bool = True) -> dict:
    """Warm up, then time `loop` engine calls on one batch already in the engine's native form."""
    native = engine.prepare(batch)
    engine.synchronize()
    with tqdm(total=loop, desc=f"timing {engine.name} {engine.precision}", unit="call", disable=not show_progress,
              leave=False) as bar:
        call = engine.run_parallel or engine.run
        latencies = measure(call, native, engine.synchronize, loop=loop, warmup=warmup, progress=bar.update)
    stats = summarize(latencies, batch.shape[0] * engine.parallel)
    stats["latencies_ms"] = [s * 1000.0 for s in latencies]
    return stats
