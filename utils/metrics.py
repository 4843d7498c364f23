"""Accuracy metrics with Pytorch-UNet's exact definitions, plus agreement with the eager fp32 reference."""
from __future__ import annotations

from dataclasses import dataclass, field

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
    """Accumulates per-image results over a run and reduces them with named reductions."""

    ids: list[str] = field(default_factory=list)
    dice: list[float] = field(default_factory=list)
    iou: list[float] = field(default_factory=list)
    counts: list[torch.Tensor] = field(default_factory=list)
    cosine: list[float] = field(default_factory=list)
    max_abs_diff: float = 0.0
    reference_dice: list[float] = field(default_factory=list)  # the eager fp32 reference's dice on the same images
    scored_ids: list[str] = field(default_factory=list)  # the ids that had a mask, in the order of `dice`

    def add(self, ids: list[str], logits: torch.Tensor, masks: torch.Tensor | None,
            reference: torch.Tensor | None) -> None:
        """Score the real rows of one batch (padding already dropped by the caller)."""
        self.ids.extend(ids)
        if masks is not None:
            self.scored_ids.extend(ids)
            self.score(predict(logits), masks, logits.shape[1])
        if reference is not None and masks is not None:
            ref_counts = overlap_counts(predict(reference), masks, reference.shape[1])
            self.reference_dice.extend(dice_from_counts(ref_counts).tolist())
        if reference is not None:
            self.cosine.extend(cosine_per_sample(logits, reference).tolist())
            diff = (logits.double() - reference.double()).abs().max().item()
            self.max_abs_diff = max(self.max_abs_diff, diff)

    def score(self, pred: torch.Tensor, masks: torch.Tensor, n_classes: int) -> None:
        """Add per-image dice and IoU of class maps `pred` against `masks` (both (N, H, W)); ids are the caller's."""
        counts = overlap_counts(pred, masks, n_classes)
        self.counts.append(counts.sum(0))
        self.dice.extend(dice_from_counts(counts).tolist())
        self.iou.extend(iou_from_counts(counts).tolist())

    def summary(self) -> dict:
        """dice = mean over images of per-image dice (the table's figure, Pytorch-UNet's); micro_dice pools all pixels."""
        out: dict = {"images_scored": len(self.dice)}
        if self.dice:
            out.update(
                dice=sum(self.dice) / len(self.dice),
                dice_min=min(self.dice),
                micro_dice=dice_from_counts(torch.stack(self.counts).sum(0)).item(),
                iou=sum(self.iou) / len(self.iou),
            )
        if self.reference_dice:
            out["reference_dice"] = sum(self.reference_dice) / len(self.reference_dice)
        if self.cosine:
            out.update(cosine_min=min(self.cosine), cosine_mean=sum(self.cosine) / len(self.cosine),
                       max_abs_diff=self.max_abs_diff)
        return out
