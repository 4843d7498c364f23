"""The fidelity gate: a row's worst per-image cosine vs eager fp32 must reach its precision's bar."""
from __future__ import annotations

from report.metrics import name_nonfinite
from report.results import Gate, Row

# fp32 engines only reorder float sums (fused BatchNorm, other kernels): 1e-5 of slack is a bug detector, not a
# tolerance for approximation. Half precision loses ~3 decimal digits. int8 is our own bar: a sound quantisation sits
# well above it and a broken one far below (docs/engines.md).
BARS = {"fp32": 0.99999, "fp16": 0.999, "bf16": 0.999, "int8": 0.99}


def gate(precision: str, cosine_min: float | None, dice: float | None, reference_dice: float | None,
         nonfinite: int = 0) -> Gate:
    """A row's fidelity: its precision's bar, 'ok' / 'LOW' / 'unchecked', and the dice delta (model-resolution dice
    minus the eager fp32 reference's on the same images; None without masks or a reference). `nonfinite` images (NaN
    or inf in the output or the reference) make the row LOW whatever its precision, with or without a reference."""
    bar = BARS.get(precision)
    if nonfinite:
        fidelity = "LOW"  # no bar can vouch for NaN / inf, and a NaN reference cannot vouch for anything
    elif cosine_min is None or bar is None:
        fidelity = "unchecked"
    else:
        fidelity = "ok" if cosine_min >= bar else "LOW"  # a NaN cosine_min fails `>=`: LOW
    delta = dice - reference_dice if dice is not None and reference_dice is not None else None
    return Gate(bar, fidelity, delta)


def failures(rows: list[Row]) -> list[str]:
    """One line per row below its bar (or with NaN / inf logits), for stderr and --strict."""
    return [f"{r.label}: " + (name_nonfinite(r.nonfinite, r.images) if r.nonfinite else
                              f"worst cosine {r.agreement.cosine_min:.6f} < bar {r.gate.cosine_bar}")
            for r in rows if r.gate.fidelity == "LOW"]
