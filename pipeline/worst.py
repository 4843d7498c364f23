"""A row's worst-scored images, kept while the accuracy pass streams (for --html): a bounded set of small thumbnails,
so memory stays flat in the size of the data set and no file has to be written."""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from dataset.batches import Batch
from report.metrics import predict
from report.results import WorstImage

WORST_COUNT = 6  # images the HTML report shows
THUMBNAIL = 160  # their width in pixels


def error_shares(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(false-positive, false-negative) pixels of two foreground maps as shares of their union (0, 0 when both are
    empty): they add up to 1 - IoU."""
    union = int(np.count_nonzero(pred | truth))
    if not union:
        return 0.0, 0.0
    return np.count_nonzero(pred & ~truth) / union, np.count_nonzero(truth & ~pred) / union


def _shrink(array: np.ndarray, size: tuple[int, int], resample) -> np.ndarray:
    return np.asarray(Image.fromarray(array).resize(size, resample))


class WorstImages:
    """The `count` scored images with the lowest dice seen so far, lowest first; of equal dice the earlier stays."""

    def __init__(self, count: int = WORST_COUNT, width: int = THUMBNAIL):
        self.count, self.width = count, width
        self.kept: list[WorstImage] = []

    def _bar(self) -> float:
        """The dice an image must beat to enter."""
        return self.kept[-1].dice if len(self.kept) >= self.count else math.inf

    def add(self, batch: Batch, logits: torch.Tensor, dice: list, iou: list) -> None:
        """Consider a batch's real rows: `logits` theirs (N, classes, H, W), `dice` / `iou` their model-size scores
        (None: no mask). Only an image that enters the set is copied to the host and made small."""
        if batch.masks is None:
            return
        for k, (d, i) in enumerate(zip(dice, iou)):
            if d is not None and d < self._bar():
                self.kept.append(self._keep(batch, k, logits[k: k + 1], d, i))
                self.kept.sort(key=lambda w: w.dice)  # stable: the newcomer goes after an equal dice
                del self.kept[self.count:]

    def _keep(self, batch: Batch, k: int, logits: torch.Tensor, dice: float, iou: float) -> WorstImage:
        """Image `k` of the batch: its error shares at the model's size, and thumbnails `width` wide at the original
        image's aspect ratio (the model's input is square or stretched)."""
        pred = predict(logits)[0].cpu().numpy() != 0
        truth = batch.masks[k].cpu().numpy() != 0
        fp, fn = error_shares(pred, truth)
        w, h = batch.original_sizes[k]
        size = (self.width, max(1, round(self.width * h / w)))
        image = _shrink(batch.pixels[k].cpu().numpy(), size, Image.Resampling.BILINEAR)
        masks = [_shrink(m.astype(np.uint8) * 255, size, Image.Resampling.NEAREST) != 0 for m in (pred, truth)]
        return WorstImage(batch.ids[k], float(dice), float(iou), fp, fn, image, masks[0], masks[1])
