"""Per-image results of a run written while it runs: predicted masks and overlays on disk, the Kaggle submission
rows, and dice at each image's original size.

The accuracy pass hands each batch's logits to a `Hook`; the slow part (bilinear resize to the original
1918x1280, argmax, PNG / JPEG encoding, RLE) runs in one background thread so it overlaps the next engine call.
At most `MAX_PENDING` batches wait, so a slow disk slows the pass instead of filling memory. The hook's `flush`
waits for that thread inside the accuracy pass, so end-to-end fps includes all the output work. Scores at the
model's resolution are the accuracy pass's own; this module scores only at the original resolution.
"""
from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dataset.batches import Batch
from dataset.decode import load_mask, open_image, to_rgb
from dataset.pairs import Dataset
from report.csv_files import write_submission
from report.metrics import Accuracy, predict
from report.overlay import draw_overlay, encode_jpeg, encode_mask_png
from report.rle import encode_rle
from utils.errors import SampleError
from utils.files import write_atomic
from utils.trace import TRACE

MAX_PENDING = 2
FOLDER_FILES = ("*_mask.png", "*_overlay.jpg")  # the names written into --output
LISTED = 100  # masks / overlays not written that the JSON names one by one (its count has them all)


@dataclass
class RowOutputs:
    """What the outputs did for one engine row: seconds of background work, and its scores at each image's
    original size (None when dice is scored at the model's size, by the accuracy pass)."""

    seconds: float
    scores: Accuracy | None


def upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(1, C, h, w) logits resized bilinearly to size=(W, H), as Pytorch-UNet's predict does before its argmax."""
    if logits.shape[-1] == size[0] and logits.shape[-2] == size[1]:
        return logits
    return F.interpolate(logits, size=(size[1], size[0]), mode="bilinear", align_corners=False)


class Hook:
    """The accuracy pass's view of Outputs for one engine x precision row: `add` per batch, `flush` at the end."""

    def __init__(self, outputs: Outputs, key: tuple[str, str], write_files: bool):
        self.outputs, self.key, self.write_files = outputs, key, write_files

    def add(self, batch: Batch, logits: torch.Tensor) -> None:
        """Queue one batch (real rows only); blocks while MAX_PENDING batches are still being written."""
        self.outputs.submit((self, list(batch.ids), logits.detach().clone(), list(batch.original_sizes)))

    def flush(self) -> None:
        """Wait until every queued batch is scored and written."""
        self.outputs.wait()


class Outputs:
    """Files a person looks at (written by the first engine row; by the next, if that one fails part-way) and scores
    at each image's original size."""

    def __init__(self, dataset: Dataset, *, n_classes: int, folder: str | None = None, overlay: bool = False,
                 submission: str | None = None, eval_resolution: str = "model"):
        self.samples = {s.id: s for s in dataset.samples + dataset.unpaired}
        self.n_classes, self.folder, self.overlay = n_classes, folder, overlay
        self.submission, self.at_original = submission, eval_resolution == "original"
        self.rle_rows: list[tuple[str, str]] = []
        self.scores: dict[tuple[str, str], Accuracy] = {}
        self.busy_s: dict[tuple[str, str], float] = {}
        self.files_written = 0
        self.failed_files: list[dict] = []  # {"path", "error"} of each mask / overlay that could not be written
        self.errors: list[str] = []
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outputs")
        self.pending: deque = deque()

    def hook(self, engine: str, precision: str) -> Hook | None:
        """The hook for one engine row: the first row (the next, when that one failed) writes the files; at the
        original resolution every row is scored here. None when this row has nothing to do here."""
        key = (engine, precision)
        write_files = not self.scores
        if not (write_files or self.at_original):
            return None  # a later row at the model's resolution: the accuracy pass has scored it already
        self.scores[key], self.busy_s[key] = Accuracy(), 0.0
        return Hook(self, key, write_files)

    def discard(self, engine: str, precision: str) -> None:
        """Forget a row that failed part-way; when it was the row writing files, the next row writes them (over any
        it left)."""
        key = (engine, precision)
        try:
            self.wait()
        except Exception:  # noqa: BLE001  the writer's own error is what failed the row; it is reported there
            self.pending.clear()
        if key in self.scores and next(iter(self.scores)) == key:
            self.rle_rows = []
        self.scores.pop(key, None)
        self.busy_s.pop(key, None)

    def finish(self, engine: str, precision: str) -> RowOutputs:
        """The row's part: background seconds and, at the original resolution, its scores."""
        key = (engine, precision)
        return RowOutputs(self.busy_s.get(key, 0.0), self.scores.get(key) if self.at_original else None)

    def submit(self, task: tuple) -> None:
        """Queue a batch for the writer thread; first wait for the oldest while MAX_PENDING are queued."""
        while len(self.pending) >= MAX_PENDING:
            self._finish_oldest()
        self.pending.append(self.pool.submit(self._process, *task))

    def wait(self, keep_errors: bool = False) -> None:
        """Block until every queued batch is done; re-raises the writer's error (a SampleError) here, or with
        `keep_errors` (after Ctrl-C, when the row is kept anyway) records it in `errors` for the report."""
        while self.pending:
            self._finish_oldest(keep_errors)

    def _finish_oldest(self, keep_errors: bool = False) -> None:
        """Wait for the oldest queued batch, then drop it (a Ctrl-C while waiting leaves it queued, not lost)."""
        try:
            self.pending[0].result()
        except SampleError as exc:
            if not keep_errors:
                self.pending.popleft()
                raise
            self.errors.append(str(exc))
        self.pending.popleft()

    def _process(self, hook: Hook, ids, logits, sizes) -> None:
        start = time.perf_counter()
        for i, image_id in enumerate(ids):
            self._process_one(hook, image_id, logits[i: i + 1], sizes[i])
        end = time.perf_counter()
        self.busy_s[hook.key] += end - start
        TRACE.record("write outputs", start, end, {"images": len(ids)})

    def _process_one(self, hook: Hook, image_id: str, logits: torch.Tensor, size) -> None:
        sample = self.samples[image_id]
        # uint8 class maps: a 1918x1280 int64 map is 20 MB and every comparison on it costs four times as much.
        full = predict(upsample(logits, size), torch.uint8)
        truth = None
        if sample.mask and (self.at_original or (hook.write_files and self.overlay)):
            truth = torch.from_numpy(load_mask(sample.mask, size, size))
        if self.at_original:
            self.scores[hook.key].score([image_id], full, None if truth is None else truth[None], self.n_classes)
        if hook.write_files:
            self._write_files(sample, full[0].numpy(), None if truth is None else truth.numpy())

    def _write_files(self, sample, pred: np.ndarray, truth: np.ndarray | None) -> None:
        if self.submission:
            self.rle_rows.append((os.path.basename(sample.image), encode_rle(pred)))
        if not self.folder:
            return
        self._write(os.path.join(self.folder, f"{sample.id}_mask.png"), encode_mask_png(pred, self.n_classes))
        if self.overlay:
            path = os.path.join(self.folder, f"{sample.id}_overlay.jpg")
            try:
                with open_image(sample.image, "image") as img:
                    image = np.asarray(to_rgb(img))  # the accuracy pass's rule: 8-bit RGB, EXIF orientation upright
            except Exception as exc:  # noqa: BLE001  one file's failure, named; never the other files
                self.failed_files.append({"path": path, "error": f"{path}: cannot read its image again ({exc})"})
                return
            self._write(path, encode_jpeg(draw_overlay(image, pred, truth)))

    def _write(self, path: str, data: bytes) -> None:
        """Write one file; a failure (disk full, say) is recorded and named at the end, never a lost row: the
        scores, the submission rows and the other outputs do not depend on this file."""
        try:
            write_atomic(path, data)
        except Exception as exc:  # noqa: BLE001  any failure of one file is that file's, never the run's
            self.failed_files.append({"path": path, "error": str(exc)})
            return
        self.files_written += 1

    def close(self) -> dict:
        """Stop the worker (queued batches that never started are dropped on Ctrl-C) and say what it wrote."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.pending.clear()
        if self.failed_files:
            more = f" (and {len(self.failed_files) - 1} more)" if len(self.failed_files) > 1 else ""
            self.errors.append(f"{len(self.failed_files)} mask / overlay file(s) were not written: "
                               f"{self.failed_files[0]['error']}{more}; the scores, the report and the other files are "
                               "complete")
        return {"folder": self.folder, "overlay": self.overlay, "files": self.files_written,
                "not_written": self.failed_files[:LISTED], "not_written_count": len(self.failed_files)}

    def write_submission(self) -> None:
        """The Kaggle submission of the rows finished so far (SampleError when it cannot be written)."""
        write_submission(self.submission, self.rle_rows)
