"""Accuracy metrics with Pytorch-UNet's exact definitions, plus agreement with the eager fp32 reference."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch

EPS = 1e-6
NAMED = 20  # non-finite images named in the JSON (their count is always whole)


@dataclass(frozen=True)
class Scores:
    """Accuracy at one resolution; the figures are None when no image was scored (no masks)."""

    images_scored: int
    dice: Optional[float] = None
    dice_min: Optional[float] = None
    micro_dice: Optional[float] = None
    iou: Optional[float] = None


@dataclass(frozen=True)
class Agreement:
    """Agreement with the eager fp32 reference: its own dice on the scored images, and the worst / mean per-image
    cosine and the largest absolute logit difference (None without a reference)."""

    reference_dice: Optional[float] = None
    cosine_min: Optional[float] = None
    cosine_mean: Optional[float] = None
    max_abs_diff: Optional[float] = None


@dataclass(frozen=True)
class NonFinite:
    """An image whose logits hold NaN or inf: `where` is `output` (the engine's), `reference` (the eager fp32
    model's) or `both`; `values` names which of NaN, +inf, -inf (the output's, or the reference's when only it has)."""

    id: str
    where: str
    values: str


def lowest(values: list[float]) -> float:
    """min() that a NaN anywhere makes NaN (Python's min skips a NaN that is not first: the order would decide)."""
    return math.nan if any(math.isnan(v) for v in values) else min(values)


def highest(values: list[float]) -> float:
    """max() that a NaN anywhere makes NaN (`max(0.0, nan)` is 0.0)."""
    return math.nan if any(math.isnan(v) for v in values) else max(values)


def predict(logits: torch.Tensor, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """Class map (N, H, W): argmax over classes, or logit > 0 (sigmoid > 0.5) for a one-class model. A pixel with a NaN
    logit is background (class 0) for any class count, so NaN logits give one prediction on every engine."""
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).to(dtype)  # NaN > 0 is False: background
    if logits.shape[1] == 2:
        # Same answer as argmax (ties go to class 0, as argmax's first maximum), a quarter of the work; NaN: class 0.
        return (logits[:, 1] > logits[:, 0]).to(dtype)
    pred = logits.argmax(dim=1)
    nan = logits.isnan().any(dim=1)  # argmax takes a NaN as the maximum: which class wins would depend on the order
    return pred.masked_fill(nan, 0).to(dtype)


def finite_per_sample(x: torch.Tensor) -> torch.Tensor:
    """(N,) bool: True where every value of the sample is finite (no NaN, +inf or -inf)."""
    return torch.isfinite(x).flatten(1).all(dim=1)


def _kinds(sample: torch.Tensor) -> str:
    found = [("NaN", sample.isnan()), ("+inf", sample == math.inf), ("-inf", sample == -math.inf)]
    return ", ".join(name for name, hits in found if bool(hits.any()))


def find_nonfinite(ids: list[str], output: torch.Tensor, reference: torch.Tensor | None) -> list[NonFinite]:
    """The images of a batch whose output or reference logits hold NaN or inf (none: one check per tensor)."""
    out_ok = finite_per_sample(output)
    ref_ok = finite_per_sample(reference) if reference is not None else torch.ones_like(out_ok)
    if bool((out_ok & ref_ok).all()):
        return []
    found = []
    for k, (o, r) in enumerate(zip(out_ok.tolist(), ref_ok.tolist())):
        if not (o and r):
            where = "reference" if o else "output" if r else "both"
            found.append(NonFinite(ids[k], where, _kinds(reference[k] if o else output[k])))
    return found


def name_nonfinite(found: list[NonFinite], images: int, named: int = 5) -> str:
    """'2 of 3 image(s) gave NaN / inf logits: car1 (output: NaN), car2 (reference: +inf)', the first `named`."""
    listed = ", ".join(f"{n.id} ({n.where}: {n.values})" for n in found[:named])
    more = f" and {len(found) - named} more" if len(found) > named else ""
    return f"{len(found)} of {images} image(s) gave NaN / inf logits: {listed}{more}"


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
    """Cosine similarity of each sample's flattened logits with the reference's (never across the batch axis); -1, the
    worst possible, for a sample with NaN or inf on either side (NaN would slip past min() and `>=` checks)."""
    a, b = output.flatten(1).double(), reference.flatten(1).double()
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12)
    finite = finite_per_sample(output) & finite_per_sample(reference)
    return torch.where(finite, cosine, torch.full_like(cosine, -1.0))


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
    max_abs_diff: float = 0.0  # inf once an image's output or reference is non-finite: no bound
    nonfinite: list[NonFinite] = field(default_factory=list)  # images with NaN / inf logits, in run order

    def add(self, ids: list[str], logits: torch.Tensor, masks: torch.Tensor | None,
            reference: torch.Tensor | None) -> None:
        """Score the real rows of one batch of logits (padding already dropped by the caller); note the images whose
        output or reference holds NaN / inf."""
        self.score(ids, predict(logits), masks, logits.shape[1])
        found = find_nonfinite(ids, logits, reference)
        self.nonfinite.extend(found)
        if reference is not None and masks is not None:
            ref_counts = overlap_counts(predict(reference), masks, reference.shape[1])
            self.reference_dice.extend(dice_from_counts(ref_counts).tolist())
        if reference is None:
            self.cosine.extend([None] * len(ids))
            return
        self.cosine.extend(cosine_per_sample(logits, reference).tolist())
        diff = math.inf if found else (logits.double() - reference.double()).abs().max().item()
        self.max_abs_diff = highest([self.max_abs_diff, diff])

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

    def scores(self) -> Scores:
        """dice = mean over scored images of per-image dice (the table's figure, Pytorch-UNet's); dice_min; micro_dice
        pools all pixels; iou = mean per-image IoU; images_scored."""
        dice = [d for d in self.dice if d is not None]
        if not dice:
            return Scores(0)
        iou = [v for v in self.iou if v is not None]
        return Scores(len(dice), dice=sum(dice) / len(dice), dice_min=lowest(dice),
                      micro_dice=dice_from_counts(torch.stack(self.counts).sum(0)).item(), iou=sum(iou) / len(iou))

    def agreement(self) -> Agreement:
        """Agreement with the eager fp32 reference: cosine min / mean, max abs diff, and the reference's own dice."""
        reference = sum(self.reference_dice) / len(self.reference_dice) if self.reference_dice else None
        cosine = [c for c in self.cosine if c is not None]
        if not cosine:
            return Agreement(reference)
        return Agreement(reference, lowest(cosine), sum(cosine) / len(cosine), self.max_abs_diff)


def merge_accuracy(parts: list[Accuracy], order: dict[str, int]) -> Accuracy:
    """One Accuracy holding every part's images in `order` (the single process's), so `scores()` and `agreement()`
    sum in its order. Micro dice pools integer pixel counts, which any order sums exactly; the eager reference's
    dice (one per scored image, present for all or none of a part's scored images) follows its image."""
    entries = []
    for acc in parts:
        scored = [k for k, d in enumerate(acc.dice) if d is not None]
        reference = dict(zip(scored, acc.reference_dice)) if len(acc.reference_dice) == len(scored) else {}
        entries.extend((order[image_id], acc, k, reference.get(k)) for k, image_id in enumerate(acc.ids))
    entries.sort(key=lambda e: e[0])
    merged = Accuracy()
    for _, acc, k, ref in entries:
        merged.ids.append(acc.ids[k])
        merged.dice.append(acc.dice[k])
        merged.iou.append(acc.iou[k])
        merged.fg_true.append(acc.fg_true[k])
        merged.fg_pred.append(acc.fg_pred[k])
        if k < len(acc.cosine):  # scores at the original size carry no cosine (to_row reads the model size's)
            merged.cosine.append(acc.cosine[k])
        if ref is not None:
            merged.reference_dice.append(ref)
    merged.counts = [c for acc in parts for c in acc.counts]
    merged.max_abs_diff = highest([acc.max_abs_diff for acc in parts] or [0.0])
    merged.nonfinite = sorted((n for acc in parts for n in acc.nonfinite), key=lambda n: order[n.id])
    return merged
