"""Issue 17 class 2 (docs/failures.md class 13): NaN / inf logits never pass the fidelity bar. The image's cosine is
the worst, the row is LOW at any precision, the images are counted and named, and no aggregate loses the NaN
(Python's min() skips a NaN that is not first; max(0.0, nan) is 0.0)."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import engines.torch_eager
import sample
from pipeline.fidelity import BARS, failures, gate
from pipeline.passes import PassResult
from pipeline.rows import EngineFacts, RowResult, to_row
from report.json_report import _finite, row_dict
from report.metrics import NAMED, Accuracy, NonFinite, highest, lowest, merge_accuracy, predict
from tests.conftest import SMALL

NAN, INF = float("nan"), float("inf")


def _batch(n: int = 3, seed: int = 0) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    return [f"img{k}" for k in range(n)], torch.randn(n, 2, 8, 8), torch.randint(0, 2, (n, 8, 8))


def _row(acc: Accuracy, precision: str = "fp32"):
    """The report row of an accuracy pass, built by the code that builds it in a run."""
    n = len(acc.ids)
    passed = PassResult(acc, e2e_s=1.0, batch_ms=[1.0] * n, sizes=[(8, 8)] * n)
    facts = EngineFacts("torch", "cpu", precision, "eager", "", "model call", ())
    return to_row(RowResult(facts, 0.0, passed, None, None))


def test_python_min_and_max_hide_a_nan_that_is_not_first_and_ours_do_not():
    assert min([1.0, NAN]) == 1.0 and max(0.0, NAN) == 0.0  # what the aggregates used to do
    assert math.isnan(lowest([1.0, NAN, 0.5])) and math.isnan(highest([0.0, NAN])) and lowest([2.0, 1.0]) == 1.0


@pytest.mark.parametrize("value, kind", [(NAN, "NaN"), (INF, "+inf"), (-INF, "-inf")])
@pytest.mark.parametrize("image", [0, 1])  # 1: the order that hid it (the NaN not first)
def test_one_nonfinite_image_is_the_worst_counted_named_and_low_at_every_precision(value, kind, image):
    ids, logits, masks = _batch()
    out = logits.clone()
    out[image, 1, 2, 3] = value
    acc = Accuracy()
    acc.add(ids, out, masks, logits)
    agreement = acc.agreement()
    assert agreement.cosine_min == -1.0 and agreement.cosine_mean == pytest.approx(1 / 3)  # (-1 + 1 + 1) / 3
    assert agreement.max_abs_diff == INF and acc.cosine[image] == -1.0
    assert acc.nonfinite == [NonFinite(ids[image], "output", kind)]
    for precision in BARS:
        assert gate(precision, agreement.cosine_min, 0.5, 0.5, len(acc.nonfinite)).fidelity == "LOW"
    assert all(d is not None and math.isfinite(d) for d in acc.dice)  # still scored, from the mask


def test_a_nan_in_a_later_batch_reaches_max_abs_diff_and_the_merge_of_ranks():
    ids, logits, masks = _batch()
    out = logits * 1.001
    out[1] = NAN  # all NaN: the whole image
    one = Accuracy()
    for k in range(3):  # a batch per image: the NaN batch comes after a finite one
        one.add(ids[k:k + 1], out[k:k + 1], masks[k:k + 1], logits[k:k + 1])
    assert one.max_abs_diff == INF and one.agreement().cosine_min == -1.0
    parts = [Accuracy(), Accuracy()]
    parts[0].add([ids[0], ids[2]], out[[0, 2]], masks[[0, 2]], logits[[0, 2]])
    parts[1].add([ids[1]], out[[1]], masks[[1]], logits[[1]])
    order = {i: k for k, i in enumerate(ids)}
    for ranks in (parts, parts[::-1]):  # torchrun: whichever rank holds the NaN, and in either order
        merged = merge_accuracy(ranks, order)
        assert merged.max_abs_diff == INF and merged.agreement().cosine_min == -1.0
        assert merged.nonfinite == [NonFinite(ids[1], "output", "NaN")] and merged.ids == ids


def test_an_all_nan_row_and_an_fp16_overflow_are_low_with_json_that_agrees_with_itself():
    ids, logits, masks = _batch(NAMED + 5)
    acc = Accuracy()
    acc.add(ids, torch.full_like(logits, NAN), masks, logits)
    row = _row(acc)
    assert row.gate.fidelity == "LOW" and len(row.nonfinite) == NAMED + 5
    text = json.dumps(_finite(row_dict(row)), allow_nan=False)  # valid JSON: no bare NaN / Infinity
    data = json.loads(text)
    assert data["cosine_min"] == -1.0 and data["cosine_mean"] == -1.0 and data["max_abs_diff"] is None
    assert data["nonfinite_images"] == NAMED + 5 and len(data["nonfinite"]) == NAMED  # counted whole, named bounded
    assert data["nonfinite"][0] == {"id": ids[0], "where": "output", "values": "NaN"}
    assert failures([row]) == [f"torch fp32: {NAMED + 5} of {NAMED + 5} image(s) gave NaN / inf logits: "
                               + ", ".join(f"{i} (output: NaN)" for i in ids[:5]) + f" and {NAMED} more"]
    half = logits.clone()
    half[2] *= 1e6  # an activation past fp16's 65,504
    acc = Accuracy()
    acc.add(ids[:3], half[:3].half().float(), masks[:3], logits[:3])
    assert acc.nonfinite == [NonFinite(ids[2], "output", "+inf, -inf")] and _row(acc, "fp16").gate.fidelity == "LOW"


def test_a_nonfinite_reference_vouches_for_nothing_and_no_reference_still_catches_the_output():
    ids, logits, masks = _batch()
    ref = logits.clone()
    ref[2, 0, 0, 0] = NAN
    acc = Accuracy()
    acc.add(ids, logits, masks, ref)  # the engine is finite, the eager fp32 reference is not
    assert acc.nonfinite == [NonFinite(ids[2], "reference", "NaN")] and acc.agreement().cosine_min == -1.0
    assert _row(acc).gate.fidelity == "LOW"
    acc = Accuracy()
    acc.add(ids, ref, masks, ref)  # the eager fp32 row is the reference itself
    assert acc.nonfinite == [NonFinite(ids[2], "both", "NaN")] and _row(acc).gate.fidelity == "LOW"
    acc = Accuracy()
    acc.add(ids, ref, masks, None)  # --no_reference: nothing to compare with, and still LOW
    row = _row(acc)
    assert row.agreement.cosine_min is None and row.gate.fidelity == "LOW"
    assert failures([row]) == [f"torch fp32: 1 of 3 image(s) gave NaN / inf logits: {ids[2]} (output: NaN)"]


@pytest.mark.parametrize("classes", [1, 2, 3])
def test_a_nan_logit_predicts_background_for_any_class_count(classes):
    logits = torch.zeros(1, classes, 1, 2)
    logits[0, -1, 0, 0] = 5.0  # pixel 0: the last class
    logits[0, classes // 2, 0, 1] = NAN  # pixel 1: a NaN, which argmax would take for the maximum
    assert predict(logits).tolist() == [[[classes - 1 if classes > 1 else 1, 0]]]


def test_nan_on_the_second_image_fails_strict_end_to_end(small_set, tmp_path, capsys, monkeypatch):
    """The whole run: the engine's output is NaN on the second image only (the order that passed before)."""
    load = engines.torch_eager.load

    def poisoned_load(*args, **kwargs):
        engine = load(*args, **kwargs)
        calls = []

        def run(x):
            out = engine.run(x)
            calls.append(1)
            if len(calls) == 2:  # the accuracy pass's second batch: car1_01
                out = out.clone()
                out[0, 0, 1, 1] = NAN
            return out
        return dataclasses.replace(engine, run=run, is_reference=False)  # the reference: the model, finite

    monkeypatch.setattr(engines.torch_eager, "load", poisoned_load)
    report = tmp_path / "r.json"
    code = sample.main(SMALL + ["--image_path", small_set[0], "--mask_path", small_set[1], "--image_size", "32",
                                "--engine", "torch", "--loop", "2", "--warm_counter", "1", "--batch_size", "1",
                                "--device", "cpu", "--quiet", "--strict", "--json", str(report)])
    out, err = capsys.readouterr()
    assert code == 1, err
    row = json.loads(report.read_text(), parse_constant=lambda c: pytest.fail(f"bare {c} in the JSON"))["rows"][0]
    assert row["fidelity"] == "LOW" and row["cosine_min"] == -1.0 and row["max_abs_diff"] is None
    assert row["nonfinite_images"] == 1 and row["nonfinite"] == [{"id": "car1_01", "where": "output", "values": "NaN"}]
    assert row["per_image"]["cosine"][1] == -1.0 and row["per_image"]["cosine"][0] == pytest.approx(1.0)
    assert "torch fp32: LOW: 1 of 3 image(s) gave NaN / inf logits: car1_01 (output: NaN)" in out
    assert "error: below the fidelity bar: torch fp32: 1 of 3 image(s)" in err
