"""Per-image results of a run: predicted masks and overlays on disk, the Kaggle submission, per-image scores.

The accuracy pass hands each batch's logits to a `Hook`; the slow part (bilinear resize to the original
1918x1280, argmax, PNG / JPEG encoding, RLE) runs in one background thread so it overlaps the next engine call.
At most `MAX_PENDING` batches wait, so a slow disk slows the pass instead of filling memory. The hook's `flush`
waits for that thread inside the accuracy pass, so end-to-end fps includes all the output work.
"""
from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from utils.data import Batch, Dataset, load_mask
from utils.errors import SampleError
from utils.metrics import Accuracy, predict
from utils.overlay import draw_overlay, encode_jpeg, encode_mask_png
from utils.report import write_atomic
from utils.rle import encode_rle
from utils.table import write_per_image_csv, write_submission

MAX_PENDING = 2
SCORE_FIELDS = ("dice", "dice_min", "micro_dice", "iou")


def check_destination(path: str, *, folder: bool, overwrite: bool, flag: str) -> None:
    """Fail before the run when `path` cannot be written, or holds earlier results and --overwrite is off."""
    if folder and os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise SampleError(f"{flag} folder {path} exists and is not empty; pass --overwrite or choose another folder")
    if not folder and os.path.exists(path) and not overwrite:
        raise SampleError(f"{flag} file {path} exists; pass --overwrite or choose another path")
    if not folder and os.path.isdir(path):
        raise SampleError(f"{flag} {path} is a folder; give a file path")
    target = path if folder else os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(target, exist_ok=True)
    except OSError as exc:
        raise SampleError(f"cannot create {flag} folder {target}: {exc.strerror or exc}") from None
    if not os.access(target, os.W_OK | os.X_OK):
        raise SampleError(f"cannot write to {target} ({flag}): permission denied")


def upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(1, C, h, w) logits resized bilinearly to size=(W, H), as Pytorch-UNet's predict does before its argmax."""
    if logits.shape[-1] == size[0] and logits.shape[-2] == size[1]:
        return logits
    return F.interpolate(logits, size=(size[1], size[0]), mode="bilinear", align_corners=False)


class Hook:
    """The accuracy pass's view of Outputs for one engine x precision row: `add` per batch, `flush` at the end."""

    def __init__(self, outputs: Outputs, key: tuple[str, str], write_files: bool):
        self.outputs, self.key, self.write_files = outputs, key, write_files

    def add(self, batch: Batch, logits: torch.Tensor, call_s: float) -> None:
        """Queue one batch (real rows only); blocks while MAX_PENDING batches are still being written."""
        masks = None if batch.masks is None else batch.masks[: batch.n].clone()
        task = (self, list(batch.ids), logits.detach().clone(), masks, list(batch.original_sizes), call_s)
        self.outputs.submit(task)

    def flush(self) -> None:
        """Wait until every queued batch is scored and written."""
        self.outputs.wait()


class Outputs:
    """Per-image scores at the chosen resolution and, for the first engine row, the files a person looks at."""

    def __init__(self, dataset: Dataset, *, n_classes: int, folder: str | None = None, overlay: bool = False,
                 submission: str | None = None, csv: str | None = None, eval_resolution: str = "model"):
        self.samples = {s.id: s for s in dataset.samples + dataset.unpaired}
        self.n_classes, self.folder, self.overlay = n_classes, folder, overlay
        self.submission, self.csv, self.eval_resolution = submission, csv, eval_resolution
        self.records: list[dict] = []
        self.rle_rows: list[tuple[str, str]] = []
        self.scores: dict[tuple[str, str], Accuracy] = {}
        self.busy_s: dict[tuple[str, str], float] = {}
        self.files_written = 0
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outputs")
        self.pending: deque = deque()

    def hook(self, engine: str, precision: str) -> Hook:
        """The hook for one engine row; files (masks, overlays, submission) come from the first row only."""
        key = (engine, precision)
        self.scores[key], self.busy_s[key] = Accuracy(), 0.0
        return Hook(self, key, write_files=len(self.scores) == 1)

    def discard(self, engine: str, precision: str) -> None:
        """Forget a row that failed part-way: its per-image records leave the CSV and the worst list, and when it
        was the row writing files, the next row writes them (over any it left)."""
        key = (engine, precision)
        try:
            self.wait()
        except Exception:  # noqa: BLE001  the writer's own error is what failed the row; it is reported there
            self.pending.clear()
        self.records = [r for r in self.records if (r["engine"], r["precision"]) != key]
        if key in self.scores and next(iter(self.scores)) == key:
            self.rle_rows = []
        self.scores.pop(key, None)
        self.busy_s.pop(key, None)

    def submit(self, task: tuple) -> None:
        """Queue a batch for the writer thread; first wait for the oldest while MAX_PENDING are queued."""
        while len(self.pending) >= MAX_PENDING:
            self.pending.popleft().result()
        self.pending.append(self.pool.submit(self._process, *task))

    def wait(self) -> None:
        """Block until every queued batch is done; re-raises the writer's error (a SampleError) here."""
        while self.pending:
            self.pending.popleft().result()

    def _process(self, hook: Hook, ids, logits, masks, sizes, call_s) -> None:
        start = time.perf_counter()
        for i, image_id in enumerate(ids):
            self._process_one(hook, image_id, logits[i: i + 1], None if masks is None else masks[i], sizes[i], call_s)
        self.busy_s[hook.key] += time.perf_counter() - start

    def _process_one(self, hook: Hook, image_id: str, logits: torch.Tensor, mask, size, call_s: float) -> None:
        sample = self.samples[image_id]
        at_original = self.eval_resolution == "original"
        # uint8 class maps: a 1918x1280 int64 map is 20 MB and every comparison on it costs four times as much.
        full = predict(upsample(logits, size), torch.uint8)[0] if hook.write_files or at_original else None
        truth = None
        if sample.mask and (at_original or (hook.write_files and self.overlay)):
            truth = torch.from_numpy(load_mask(sample.mask, size, size))
        if at_original:
            self._score(hook.key, image_id, full, truth, call_s)
        else:
            self._score(hook.key, image_id, predict(logits, torch.uint8)[0], mask, call_s)
        if hook.write_files:
            self._write_files(sample, full.numpy(), None if truth is None else truth.numpy())

    def _score(self, key, image_id: str, pred: torch.Tensor, truth: torch.Tensor | None, call_s: float) -> None:
        pixels = pred.numel()
        record = {"engine": key[0], "precision": key[1], "id": image_id, "resolution": self.eval_resolution,
                  "height": pred.shape[0], "width": pred.shape[1], "dice": None, "iou": None, "fg_true": None,
                  "fg_pred": int(torch.count_nonzero(pred)) / pixels, "batch_ms": call_s * 1000.0}
        if truth is not None:
            accuracy = self.scores[key]
            accuracy.ids.append(image_id)
            accuracy.score(pred[None], truth[None], self.n_classes)
            record.update(dice=accuracy.dice[-1], iou=accuracy.iou[-1], fg_true=int(torch.count_nonzero(truth)) / pixels)
        self.records.append(record)

    def _write_files(self, sample, pred: np.ndarray, truth: np.ndarray | None) -> None:
        if self.submission:
            self.rle_rows.append((os.path.basename(sample.image), encode_rle(pred)))
        if not self.folder:
            return
        self._write(os.path.join(self.folder, f"{sample.id}_mask.png"), encode_mask_png(pred, self.n_classes))
        if self.overlay:
            with Image.open(sample.image) as img:
                image = np.asarray(img.convert("RGB"))
            self._write(os.path.join(self.folder, f"{sample.id}_overlay.jpg"), encode_jpeg(draw_overlay(image, pred, truth)))

    def _write(self, path: str, data: bytes) -> None:
        write_atomic(path, data)
        self.files_written += 1

    def finish_row(self, row: dict) -> None:
        """Put the per-image scores' figures in the engine's report row; at original resolution they replace
        the model-resolution ones, which stay under `model_res_*`."""
        key = (row["engine"], row["precision"])
        row["outputs_s"] = self.busy_s.get(key, 0.0)
        if self.eval_resolution != "original" or key not in self.scores:
            return
        for name in SCORE_FIELDS:
            row[f"model_res_{name}"] = row.pop(name, None)
        summary = self.scores[key].summary()
        row.update({name: summary.get(name) for name in SCORE_FIELDS})
        row["per_image"]["dice_model_res"] = row["per_image"].get("dice")
        by_id = dict(zip(self.scores[key].ids, self.scores[key].dice))
        row["per_image"]["dice"] = [by_id.get(i) for i in row["per_image"]["id"]]

    def close(self, report: dict) -> None:
        """Stop the worker (queued batches that never started are dropped on Ctrl-C), write the CSV and the
        submission with the rows finished so far, and describe the outputs in the report."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.pending.clear()
        if self.csv:
            write_per_image_csv(self.csv, self.records)
        if self.submission:
            write_submission(self.submission, self.rle_rows)
        report["outputs"] = {
            "eval_resolution": self.eval_resolution, "folder": self.folder, "overlay": self.overlay,
            "files": self.files_written, "submission": self.submission, "submission_rows": len(self.rle_rows),
            "csv": self.csv, "csv_rows": len(self.records),
        }

    def worst(self, count: int = 5) -> list[dict]:
        """The `count` scored images with the lowest dice, per engine row, worst first."""
        scored = [r for r in self.records if r["dice"] is not None]
        out = []
        for key in self.scores:
            rows = [r for r in scored if (r["engine"], r["precision"]) == key]
            out.extend(sorted(rows, key=lambda r: r["dice"])[:count])
        return out
