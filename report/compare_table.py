"""What a --compare comparison says: its block on stdout (after the main table) and --fail_on_regression's lines on
stderr."""
from __future__ import annotations

from typing import Optional

from report.compare import DICE_DROP, size_text
from report.table import aligned


def _cell(value: Optional[float], fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _speed(ratio: Optional[float]) -> str:
    if ratio is None:
        return "-"
    return f"{ratio:.2f}x faster" if ratio >= 1.0 else f"{1.0 / ratio:.2f}x slower"


def comparison_lines(comparisons: list) -> list:
    """The comparison on stdout: per base, what differs, the matched rows aligned, the new and gone rows."""
    lines = []
    for c in comparisons:
        lines += ["", f"compared with {c.base} (started {c.base_started or '?'}):"]
        lines += [f"  {line}" for line in c.differences] or ["  same host, model, weights and data"]
        if c.rows:
            gate = c.fail_on_regression_pct is not None
            cells = [["engine", "prec", "batch", "size", "scenario", "base", "this", "speed", "verdict", "dice change",
                      "cos change"] + (["regressed"] if gate else [])]
            for m in c.rows:
                loop = m.scenario == "loop"
                cells.append([m.engine, m.precision, str(m.batch_size), size_text(m.image_size),
                              "loop (median ms)" if loop else f"{m.scenario} ({m.metric_name})",
                              _cell(m.base_median_ms if loop else m.base_metric, "{:.2f}"),
                              _cell(m.median_ms if loop else m.metric, "{:.2f}"), _speed(m.speed_ratio), m.verdict,
                              _cell(m.dice_change, "{:+.4f}"), _cell(m.cosine_change, "{:+.6f}")]
                             + (["yes" if m.regression else "no"] if gate else []))
            lines.append(aligned(cells, left=5))
        else:
            lines.append("  no row of this run matches one of the base's (engine, precision, batch, size, scenario)")
        for what, keys in (("new here", c.new), ("gone since the base", c.gone)):
            if keys:
                lines.append(f"{what}: " + "; ".join(f"{k.engine} {k.precision} batch {k.batch_size} "
                                                    f"{size_text(k.image_size)} {k.scenario}" for k in keys))
    if comparisons:
        lines.append("speed: how many times faster this run is (base median / this median; a LoadGen rate: this / "
                     "base); verdict: faster or slower when the two medians' 95 % intervals do not overlap, the same "
                     "when they do, noise unknown without an interval (a LoadGen figure, an old or short run)")
    return lines


def gate(comparisons: list) -> tuple:
    """(regressions, warnings) for --fail_on_regression: each regressed row and by how much; a base nothing matched."""
    regressions, warnings = [], []
    for c in comparisons:
        pct = c.fail_on_regression_pct
        if pct is None:
            continue
        if not c.rows:
            warnings.append(f"--fail_on_regression: no row of this run matches one of {c.base}'s; nothing was gated")
        for m in (m for m in c.rows if m.regression):
            why = []
            if m.slowdown_pct is not None and m.slowdown_pct > pct:
                noise = "beyond the noise" if m.verdict == "slower" else "(noise unknown: no interval to allow for)"
                why.append(f"slower by {m.slowdown_pct:.1f} % {noise}, over --fail_on_regression {pct:g} % "
                           f"({_speed(m.speed_ratio)})")
            if m.dice_change is not None and m.dice_change < -DICE_DROP:
                why.append(f"dice dropped by {-m.dice_change:.4f}, more than {DICE_DROP}")
            regressions.append(f"regression against {c.base}: {m.label}: {'; '.join(why)}")
    return regressions, warnings
