"""The report's notes on how the run was set up: what `--engine auto` measured and chose, which images calibrated
int8, which files were not 8-bit RGB and how they were read, and faster precisions this device runs natively (a hint,
never a switch)."""
from __future__ import annotations

from report.results import RunInfo


def _candidate(entry: dict) -> str:
    threads = f" x{entry['threads']} threads" if entry.get("threads") else ""
    if entry.get("median_ms") is not None:
        text = f"{entry['engine']}{threads} {entry['median_ms']:,.1f} ms" + (" spread" if entry.get("spread") else "")
        return text + (f" ({entry['note']})" if entry.get("note") else "")
    return f"{entry['engine']}{threads}: {entry.get('note') or 'not timed'}"


def auto_lines(info: RunInfo) -> list[str]:
    lines = []
    for choice in info.auto or []:
        threads = f" with {choice['threads']} threads" if choice.get("threads") else ""
        how = {"measured": f"measured now in {choice.get('probe_s', 0):.0f} s", "cached": "kept from an earlier run",
               "static": "fixed order, not measured"}.get(choice["source"], choice["source"])
        line = f"auto {choice['precision']}: {choice['engine']}{threads} ({how}; {choice['reason']})"
        if choice.get("candidates"):
            line += "; probed: " + ", ".join(_candidate(c) for c in choice["candidates"])
        lines.append(line)
    return lines


def calibration_line(info: RunInfo) -> list[str]:
    cal = info.calibration
    if not cal:
        return []
    ids = ", ".join(cal["ids"][:4]) + (f" (+{len(cal['ids']) - 4} more)" if len(cal["ids"]) > 4 else "")
    overlap = cal.get("overlap_with_scored", 0)
    line = f"int8 calibration: {cal['images']} image(s) from {cal['what']}: {ids}"
    if overlap and cal["source"] != "scored":
        line += f"; {overlap} of them are also scored"
    if cal.get("skipped"):
        line += f"; {len(cal['skipped'])} unreadable, skipped: " + "; ".join(
            f"{s['id']} ({s['error']})" for s in cal["skipped"][:3])
    return [line]


def conversion_line(info: RunInfo) -> list[str]:
    """Which files were not 8-bit RGB images (or plain mask bands), and how they were read (docs/data.md)."""
    if not info.conversions:
        return []
    parts = []
    for c in info.conversions:
        names = ", ".join(c["examples"][:3]) + (f" (+{c['count'] - 3} more)" if c["count"] > 3 else "")
        parts.append(f"{c['count']} {c['file']}(s) of mode {c['mode']}: {c['how']} ({names})")
    return ["converted: " + "; ".join(parts)]


def config_notes(info: RunInfo) -> list[str]:
    """Lines for the report, after the table's own notes."""
    return auto_lines(info) + calibration_line(info) + conversion_line(info) + [f"hint: {h}" for h in info.hints]
