"""--profile on stdout: per row, its top operators (or layers) with their time per call and share, and how the
profiled operators' total compares with the row's median call timed without the profiler."""
from __future__ import annotations

from report.results import Report, Row
from report.table import aligned

NAME_WIDTH = 64  # OpenVINO's layer names are module paths of 80 characters and more


def _short(name: str) -> str:
    return name if len(name) <= NAME_WIDTH else name[: NAME_WIDTH - 3] + "..."


def profile_block(row: Row) -> list[str]:
    """One row's profile as lines: a heading, the operators' table, the types' shares, the sum against the median;
    one line when the engine had no profiler (or profiling failed)."""
    p = row.profile
    if p is None:
        return []
    if p.tool is None:
        return [f"profile {row.label}: {p.note}"]
    with_type = any(op.type != op.name for op in p.ops)
    details = {op.detail for op in p.ops}
    with_detail = len(details) > 1  # one for all (ONNX Runtime's provider) is said in the heading instead
    shown = f"top {len(p.ops)} of {p.ops_count}" if p.ops_count > len(p.ops) else f"all {p.ops_count}"
    what = "layers" if with_type else "operators"
    common = f", all on {details.pop()}" if len(details) == 1 and "" not in details else ""
    lines = [f"profile {row.label}: {p.tool}, {p.calls} calls, {shown} {what} by self time{common}"
             + (f" ({p.note})" if p.note else "")]
    header = ["operator" if not with_type else "layer / node"] + (["type"] if with_type else []) + \
        (["kernel / provider"] if with_detail else []) + ["ms/call", "share", "per call"]
    cells = [header]
    for op in p.ops:
        cells.append([_short(op.name)] + ([op.type] if with_type else []) + ([op.detail] if with_detail else [])
                     + [f"{op.ms_per_call:.2f}", f"{op.share:.1%}", f"{op.count:g}"])
    left = 1 + with_type + with_detail
    lines.extend("  " + line for line in aligned(cells, left).split("\n"))
    if with_type:
        lines.append("  by type: " + ", ".join(f"{t.type} {t.ms_per_call:.1f} ms ({t.share:.1%})" for t in p.types[:5]))
    lines.append("  " + sum_line(row))
    return lines


def sum_line(row: Row) -> str:
    """'profiled ops add up to X ms per call vs the median call Y ms (Z %)'."""
    p = row.profile
    text = f"profiled ops add up to {p.total_ms_per_call:.1f} ms per call"
    if p.ratio is None:
        return text + " (no unprofiled median to compare with)"
    text += f" vs the median call {p.median_call_ms:.1f} ms ({p.ratio * 100:.1f} %)"
    if row.timing is not None and row.timing.unstable:
        text += "; the median is unstable (see above): rerun on a quiet machine before reading much into this"
    return text


def profile_lines(report: Report) -> list[str]:
    """Every profiled row's block, in the table's order."""
    lines: list[str] = []
    for row in report.rows:
        lines.extend(profile_block(row))
    return lines
