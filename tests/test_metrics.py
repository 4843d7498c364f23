"""Dice, IoU and cosine on hand-computed cases, and equality with Pytorch-UNet's own evaluation arithmetic."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from report.metrics import (
    Accuracy,
    Agreement,
    cosine_per_sample,
    dice_from_counts,
    iou_from_counts,
    overlap_counts,
    predict,
)


def _logits_for(mask: torch.Tensor) -> torch.Tensor:
    """Two-class logits whose argmax is `mask`."""
    return torch.stack([-mask.float(), mask.float()], dim=1)


def test_hand_computed_dice_and_iou():
    pred = torch.tensor([[[1, 1, 0, 0]]])
    true = torch.tensor([[[1, 0, 0, 0]]])
    counts = overlap_counts(pred, true, 2)
    assert counts.tolist() == [[[1, 2, 1]]]
    assert dice_from_counts(counts).item() == pytest.approx(2 / 3)
    assert iou_from_counts(counts).item() == pytest.approx(1 / 2)


def test_empty_vs_empty_is_one_and_empty_vs_full_is_zero():
    empty, full = torch.zeros(1, 4, 4, dtype=torch.long), torch.ones(1, 4, 4, dtype=torch.long)
    assert dice_from_counts(overlap_counts(empty, empty, 2)).item() == pytest.approx(1.0)
    assert dice_from_counts(overlap_counts(empty, full, 2)).item() == pytest.approx(0.0, abs=1e-6)


def test_predict_two_class_equals_argmax_including_ties():
    logits = torch.randn(3, 2, 16, 16)
    logits[0, 1, :4] = logits[0, 0, :4]  # ties go to class 0, as argmax's first maximum
    assert torch.equal(predict(logits), logits.argmax(1))


def test_predict_one_class_is_sigmoid_half():
    logits = torch.randn(2, 1, 8, 8)
    assert torch.equal(predict(logits), (torch.sigmoid(logits[:, 0]) > 0.5).long())


def test_multiclass_dice_averages_foreground_classes():
    true = torch.tensor([[[0, 1, 2, 2]]])
    pred = torch.tensor([[[0, 1, 2, 0]]])
    # class 1: 2*1/(1+1) = 1; class 2: 2*1/(1+2) = 2/3
    assert dice_from_counts(overlap_counts(pred, true, 3)).item() == pytest.approx((1 + 2 / 3) / 2)


def _pytorch_unet_dice(logits: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Per-image dice the way Pytorch-UNet's evaluate() computes it (one-hot, background dropped, eps 1e-6)."""
    n = logits.shape[1]
    true_oh = F.one_hot(true, n).permute(0, 3, 1, 2).float()[:, 1:]
    pred_oh = F.one_hot(logits.argmax(1), n).permute(0, 3, 1, 2).float()[:, 1:]
    inter = 2 * (pred_oh * true_oh).sum(dim=(-1, -2))
    sets = pred_oh.sum(dim=(-1, -2)) + true_oh.sum(dim=(-1, -2))
    sets = torch.where(sets == 0, inter, sets)
    return ((inter + 1e-6) / (sets + 1e-6)).mean(dim=1)


def test_equals_pytorch_unet_arithmetic_per_image():
    torch.manual_seed(1)
    logits = torch.randn(6, 2, 32, 32)
    true = (torch.rand(6, 32, 32) > 0.6).long()
    true[0] = 0
    logits[0, 1] = -10  # empty vs empty
    acc = Accuracy()
    acc.add([str(i) for i in range(6)], logits, true, None)
    assert acc.dice == pytest.approx(_pytorch_unet_dice(logits, true).tolist(), abs=1e-7)
    assert acc.dice[0] == 1.0


def test_summary_reductions():
    acc = Accuracy()
    perfect = torch.zeros(1, 4, 4, dtype=torch.long)
    perfect[0, :2] = 1
    half = torch.zeros(1, 4, 4, dtype=torch.long)
    half[0, :1] = 1
    acc.add(["a"], _logits_for(perfect), perfect, None)
    acc.add(["b"], _logits_for(half), perfect, None)  # P=4, T=8, I=4: dice 2/3, IoU 1/2
    s = acc.scores()
    assert s.images_scored == 2 and s.dice == pytest.approx((1 + 2 / 3) / 2)
    assert s.micro_dice == pytest.approx(2 * 12 / (12 + 16))
    assert s.iou == pytest.approx((1 + 0.5) / 2)
    assert s.dice_min == pytest.approx(2 / 3)
    assert acc.agreement() == Agreement() and acc.cosine == [None, None]
    assert acc.fg_pred == [0.5, 0.25] and acc.fg_true == [0.5, 0.5]


def test_cosine_is_per_sample_not_over_the_batch():
    ref = torch.randn(2, 2, 8, 8)
    out = ref.clone()
    out[1] = -out[1]
    cos = cosine_per_sample(out, ref)
    assert cos.tolist() == pytest.approx([1.0, -1.0])
    acc = Accuracy()
    acc.add(["a", "b"], out, None, ref)
    s = acc.agreement()
    assert s.cosine_min == pytest.approx(-1.0) and s.cosine_mean == pytest.approx(0.0)
    assert s.max_abs_diff == pytest.approx(2 * ref[1].abs().max().item())
