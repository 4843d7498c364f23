"""The fidelity gate: a row's worst per-image cosine vs eager fp32 must reach its precision's bar."""
from __future__ import annotations

# fp32 engines reorder float sums (fused BatchNorm, other kernels) and land near 1 - 1e-7; 1e-5 of slack is a bug
# detector, not a tolerance for approximation. Half precision loses ~3 decimal digits. int8 is our own bar (the
# issue sets none): measured int8 rows sit at 0.998+ here, and a broken quantisation falls far below 0.99.
BARS = {"fp32": 0.99999, "fp16": 0.999, "bf16": 0.999, "int8": 0.99}


def gate_row(row: dict) -> dict:
    """Add cosine_bar, fidelity ('ok' / 'LOW' / 'unchecked') and dice_delta (vs eager fp32) to a report row."""
    bar = BARS.get(row["precision"])
    cosine = row.get("cosine_min")
    row["cosine_bar"] = bar
    if cosine is None or bar is None:
        row["fidelity"] = "unchecked"
    else:
        row["fidelity"] = "ok" if cosine >= bar else "LOW"
    # The reference is scored at the model's resolution; at --eval_resolution original the row keeps its
    # model-resolution dice as model_res_dice, and the delta compares like with like.
    dice = row.get("model_res_dice", row.get("dice"))
    if dice is not None and row.get("reference_dice") is not None:
        row["dice_delta"] = dice - row["reference_dice"]
    return row


def failures(rows: list[dict]) -> list[str]:
    """One line per row below its bar, for stderr and --strict."""
    return [f"{r['engine']} {r['precision']}: worst cosine {r['cosine_min']:.6f} < bar {r['cosine_bar']}"
            for r in rows if r.get("fidelity") == "LOW"]
