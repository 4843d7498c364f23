"""Accuracy metrics with Pytorch-UNet's exact definitions, plus agreement with the eager fp32 reference."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

EPS = 1e-6


def predict(logits: torch.Tensor, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """Class map (N, H, W): argmax over classes, or logit > 0 (sigmoid > 0.5) for a one-class model."""
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).to(dtype)
    if logits.shape[1] == 2:
        # Same answer as argmax (ties go to class 0, as argmax's first maximum), a quarter of the work.
        return (logits[:, 1] > logits[:, 0]).to(dtype)
    return logits.argmax(dim=1).to(dtype)


def overlap_counts(pred: torch.Tensor, true: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Per image and foreground class: (|P∩T|, |P|, |T|) as an (N, K, 3) int64 tensor; K = max(n_classes - 1, 1)."""
    classes = range(1, max(n_classes, 2))
    rows = []
    for c in classes:
        p, t = pred == c, true == c
        rows.append(torch.stack([(p & t).flatten(1).sum(1), p.flatten(1).sum(1), t.flatten(1).sum(1)], dim=1))
    return torch.stack(rows, dim=1)


def dice_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """Per-image dice: mean over foreground classes of (2|P∩T| + eps) / (|P| + |T| + eps); empty vs empty is 1."""
    inter, p, t = counts.double().unbind(-1)
    return ((2 * inter + EPS) / (p + t + EPS)).mean(dim=-1)


def iou_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """Per-image IoU: mean over foreground classes of (|P∩T| + eps) / (|P∪T| + eps); empty vs empty is 1."""
    inter, p, t = counts.double().unbind(-1)
    return ((inter + EPS) / (p + t - inter + EPS)).mean(dim=-1)


def cosine_per_sample(output: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each sample's flattened logits with the reference's (never across the batch axis)."""
    a, b = output.flatten(1).double(), reference.flatten(1).double()
    return torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12)


@dataclass
class Accuracy:
    """Per-image results over a run, in lists aligned with `ids` (None where an image has no mask or no reference),
    reduced with named reductions by `scores` and `agreement`."""

    ids: list[str] = field(default_factory=list)
    dice: list[Optional[float]] = field(default_factory=list)
    iou: list[Optional[float]] = field(default_factory=list)
    fg_true: list[Optional[float]] = field(default_factory=list)  # fraction of pixels that are foreground in the mask
    fg_pred: list[float] = field(default_factory=list)  # ... and in the prediction
    cosine: list[Optional[float]] = field(default_factory=list)
    counts: list[torch.Tensor] = field(default_factory=list)  # per batch, pooled for micro dice
    reference_dice: list[float] = field(default_factory=list)  # the eager fp32 reference's dice on the scored images
    max_abs_diff: float = 0.0

    def add(self, ids: list[str], logits: torch.Tensor, masks: torch.Tensor | None,
            reference: torch.Tensor | None) -> None:
        """Score the real rows of one batch of logits (padding already dropped by the caller)."""
        self.score(ids, predict(logits), masks, logits.shape[1])
        if reference is not None and masks is not None:
            ref_counts = overlap_counts(predict(reference), masks, reference.shape[1])
            self.reference_dice.extend(dice_from_counts(ref_counts).tolist())
        if reference is None:
            self.cosine.extend([None] * len(ids))
            return
        self.cosine.extend(cosine_per_sample(logits, reference).tolist())
        diff = (logits.double() - reference.double()).abs().max().item()
        self.max_abs_diff = max(self.max_abs_diff, diff)

    def score(self, ids: list[str], pred: torch.Tensor, masks: torch.Tensor | None, n_classes: int) -> None:
        """Add class maps `pred` (N, H, W) scored against `masks` (N, H, W), or unscored when `masks` is None."""
        self.ids.extend(ids)
        self.fg_pred.extend((pred != 0).flatten(1).float().mean(1).tolist())
        if masks is None:
            self.dice.extend([None] * len(ids))
            self.iou.extend([None] * len(ids))
            self.fg_true.extend([None] * len(ids))
            return
        counts = overlap_counts(pred, masks, n_classes)
        self.counts.append(counts.sum(0).cpu())
        self.dice.extend(dice_from_counts(counts).tolist())
        self.iou.extend(iou_from_counts(counts).tolist())
        self.fg_true.extend((masks != 0).flatten(1).float().mean(1).tolist())

    def scores(self) -> dict:
        """dice = mean over scored images of per-image dice (the table's figure, Pytorch-UNet's); dice_min; micro_dice
        pools all pixels; iou = mean per-image IoU; images_scored."""
        dice = [d for d in self.dice if d is not None]
        out: dict = {"images_scored": len(dice)}
        if dice:
            iou = [v for v in self.iou if v is not None]
            out.update(dice=sum(dice) / len(dice), dice_min=min(dice),
                       micro_dice=dice_from_counts(torch.stack(self.counts).sum(0)).item(), iou=sum(iou) / len(iou))
        return out

    def agreement(self) -> dict:
        """Agreement with the eager fp32 reference: cosine min / mean, max abs diff, and the reference's own dice."""
        out: dict = {}
        if self.reference_dice:
            out["reference_dice"] = sum(self.reference_dice) / len(self.reference_dice)
        cosine = [c for c in self.cosine if c is not None]
        if cosine:
            out.update(cosine_min=min(cosine), cosine_mean=sum(cosine) / len(cosine), max_abs_diff=self.max_abs_diff)
        return out
