"""--html: the report as one self-contained HTML page. The page is drawn from the JSON report's dict (what ran, the
charts, the scenarios, the comparison, the profiles) and the first row's worst images; its table and notes are the
stdout report's own lines (report/summary.py, report/notes.py). No script, no network: charts are inline SVG
(report/html_charts.py), images base64 data: URIs, the style inline."""
from __future__ import annotations

import base64
import os
import re
from collections.abc import Sequence
from types import SimpleNamespace

from report.compare_table import comparison_lines, size_text, speed_text
from report.html_charts import FLOOR_TEXT, accuracy_panels, charts, floored, speed_accuracy_absent
from report.json_report import _finite, _names, report_dict
from report.notes import auto_lines
from report.overlay import draw_overlay, encode_jpeg
from report.profile_table import profile_block, sum_line
from report.results import Report, Row
from report.summary import cell, columns, header_lines, legend_lines, note_lines
from utils.errors import SampleError
from utils.files import write_atomic

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
TEMPLATE = "report.html.j2"
# A note that says something went wrong or qualifies a figure: shown apart, above the other notes.
WARNING = re.compile(r"\b(LOW|unstable|INTERRUPTED|PARTIAL|FAILED|error|skipped|INVALID|warning|too few)\b")
MATPLOTLIB = (3, 5)  # the oldest matplotlib the charts run on
CDF_POINTS = 400  # a latency curve's points at most (a long --min_duration run times thousands of calls)


def require_html() -> None:
    """Fail before the run, with the command that fixes it, when a package the page needs is missing or too old
    (matplotlib before 3.5 has no Figure(layout=...) nor matplotlib.colormaps: the charts would fail after the run)."""
    for module in ("jinja2", "matplotlib"):
        try:
            imported = __import__(module)
        except ImportError:
            raise SampleError(f"--html needs {module}, which is not installed: pip install {module} "
                              "(or pip install -r requirements-dev.txt)") from None
        if module == "matplotlib" and _version(imported) < MATPLOTLIB:
            wanted = ".".join(map(str, MATPLOTLIB))
            raise SampleError(f"--html needs matplotlib {wanted} or newer, not {imported.__version__}: "
                              f"pip install 'matplotlib>={wanted}'")


def _version(module) -> tuple[int, ...]:
    """(major, minor) of a module's __version__ ('3.4.3', '3.10.0rc1'); (0,) when it says none."""
    found = re.match(r"(\d+)\.(\d+)", str(getattr(module, "__version__", "")))
    return (int(found.group(1)), int(found.group(2))) if found else (0,)


def write_html(path: str, report: Report, warnings: Sequence[str] = ()) -> None:
    """The page, written atomically; `warnings`: what stderr says about the rows (below the fidelity bar)."""
    write_atomic(path, page(report, warnings=warnings))


def page(report: Report, data: dict | None = None, warnings: Sequence[str] = ()) -> str:
    """The HTML text of `report`; `data` its JSON dict (report_dict's, made here when not given)."""
    import jinja2
    from markupsafe import Markup

    data = _names(_finite(report_dict(report))) if data is None else data
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.ChainableUndefined, trim_blocks=True, lstrip_blocks=True)
    drawable = _drawable(data)
    made = {name: Markup(svg) for name, svg in charts(drawable).items()}
    notes = sorted_notes(report, warnings)
    partial = next((n for n in notes["warnings"] if n.startswith("PARTIAL")), "PARTIAL") if data.get("partial") else ""
    rows = drawable.get("rows", [])
    speed = {"panels": accuracy_panels(rows), "floored": any(floored(r) for r in rows if r.get("fps")),
             "absent": speed_accuracy_absent(rows), "floor": FLOOR_TEXT}
    return env.get_template(TEMPLATE).render(
        config=data["config"], version=data.get("version"), partial=partial, ran=what_ran(report, data),
        table=results_table(report), charts=made, speed=speed, notes=notes, worst=worst_images(report),
        scenarios=scenario_rows(data), comparison=comparisons(data), profiles=profiles(report))


def _drawable(data: dict) -> dict:
    """The dict with each row's per-call latencies thinned to CDF_POINTS quantiles: the curve looks the same."""
    rows = []
    for row in data.get("rows", []):
        calls = row.get("latencies_ms") or []
        if len(calls) > CDF_POINTS:
            ordered = sorted(calls)
            row = {**row, "latencies_ms": [ordered[round(k * (len(ordered) - 1) / (CDF_POINTS - 1))]
                                           for k in range(CDF_POINTS)]}
        rows.append(row)
    return {**data, "rows": rows}


def what_ran(report: Report, data: dict) -> list[tuple[str, str]]:
    """(label, text) pairs: the stdout report's header lines, then the command, the date and the versions."""
    pairs = [tuple(re.split(r"\s{2,}", line, maxsplit=1)) for line in header_lines(report.info)]
    c = data["config"]
    pairs += [("decode", f"{c.get('decode')} path, {c.get('workers')} decode threads"),
              ("reference", c.get("reference") or "none (--no_reference)"),
              ("command", c.get("command", "")), ("started", c.get("started", "")),
              ("versions", f"torch {c.get('torch')}; JSON report version {data.get('version')}")]
    return [(label, text) for label, text in pairs]


def results_table(report: Report) -> dict:
    """The stdout table's columns and cells, each row's marks (LOW, unstable, INTERRUPTED) and CSS classes; a column's
    class: `name` (engine, device, precision: left-aligned) or `artifact` (long text that wraps, so the table fits)."""
    table = columns(report.info.percentiles)
    kinds = ["name" if k < 3 else "artifact" if h == "artifact" else "" for k, (h, _, _) in enumerate(table)]
    rows = []
    for row in report.rows:
        marks = _marks(row)
        rows.append({"cells": [(cell(figure(row), fmt), kind) for (_, figure, fmt), kind in zip(table, kinds)],
                     "marks": marks, "classes": " ".join(m.lower() for m in marks)})
    return {"head": [(h, kind) for (h, _, _), kind in zip(table, kinds)], "rows": rows}


def _marks(row: Row) -> list[str]:
    marks = []
    if row.gate.fidelity == "LOW":
        marks.append("LOW")
    if row.timing is not None and row.timing.unstable:
        marks.append("unstable")
    if row.interrupted:
        marks.append("INTERRUPTED")
    return marks


def sorted_notes(report: Report, warnings: Sequence[str]) -> dict[str, list[str]]:
    """The stdout report's notes, sorted for the page: the table's legend, warnings, auto's probe, hints, the rest.
    Text tables (the LoadGen scenarios) are left out: the page draws its own."""
    legend, probe, hints = legend_lines(report), auto_lines(report.info), [f"hint: {h}" for h in report.info.hints]
    shown = set(legend) | set(probe) | set(hints)
    rest = [line for line in note_lines(report) if line and "\n" not in line and line not in shown
            and not line.startswith("MLPerf LoadGen scenarios")]
    return {"legend": legend, "warnings": list(warnings) + [n for n in rest if WARNING.search(n)], "probe": probe,
            "hints": list(report.info.hints), "other": [n for n in rest if not WARNING.search(n)]}


def worst_images(report: Report) -> dict | None:
    """The first row that kept them: its label and, per image, the overlay (prediction tinted, truth outlined) as a
    JPEG data: URI with its scores."""
    row = next((r for r in report.rows if r.worst), None)
    if row is None:
        return None
    images = []
    for w in row.worst:
        jpeg = encode_jpeg(draw_overlay(w.image, w.pred, w.truth), quality=80)
        images.append({"id": w.id, "dice": w.dice, "iou": w.iou, "fp": w.fp_share, "fn": w.fn_share,
                       "uri": "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")})
    return {"row": row.label, "images": images}


def scenario_rows(data: dict) -> list[dict]:
    """One entry per row x LoadGen scenario, as the JSON holds them."""
    return [{"row": f"{r['engine']} {r['precision']}", **s} for r in data.get("rows", []) for s in r.get("scenarios")
            or []]


def _key_text(key) -> str:
    """'torch fp32 batch 2 16x16 loop', as stdout names a new or gone row, from a comparison key (what it has)."""
    if not isinstance(key, dict):
        return str(key)
    size = key.get("image_size")
    parts = [key.get("engine"), key.get("precision"),
             f"batch {key['batch_size']}" if key.get("batch_size") is not None else None,
             size_text(size) if isinstance(size, (list, tuple)) else size, key.get("scenario")]
    return " ".join(str(p) for p in parts if p not in (None, ""))


def _stdout_words() -> tuple[str, str]:
    """(what stdout says when the runs share everything, its speed and verdict note): taken from comparison_lines
    for a comparison of nothing, so the page's words cannot drift from stdout's."""
    empty = SimpleNamespace(base="", base_started=None, differences=[], rows=[], new=[], gone=[],
                            fail_on_regression_pct=None)
    lines = comparison_lines([empty])
    return lines[2].strip(), lines[-1]


def _compared(r: dict, gated: bool) -> dict:
    """One matched row as stdout's comparison table has it: its cells (the same formats) and its CSS classes."""
    loop = r.get("scenario") == "loop"
    size = r.get("image_size")
    cells = [r.get("engine"), r.get("precision"), r.get("batch_size"),
             size_text(size) if isinstance(size, (list, tuple)) else size,
             "loop (median ms)" if loop else f"{r.get('scenario')} ({r.get('metric_name')})",
             cell(r.get("base_median_ms" if loop else "base_metric"), "{:.2f}"),
             cell(r.get("median_ms" if loop else "metric"), "{:.2f}"), speed_text(r.get("speed_ratio")) or "-",
             r.get("verdict") or "-", cell(r.get("dice_change"), "{:+.4f}"), cell(r.get("cosine_change"), "{:+.6f}")]
    cells = ["-" if c is None else str(c) for c in cells] + (["yes" if r.get("regression") else "no"] if gated else [])
    classes = (r.get("verdict") or "").replace(" ", "-") + (" regression" if r.get("regression") else "")
    return {"cells": cells, "classes": classes.strip()}


def comparisons(data: dict) -> list[dict]:
    """--compare's entries (a top-level list) in stdout's words: what differs (or that nothing does), the matched
    rows in stdout's columns (`regressed` only under --fail_on_regression), the new and gone rows, and the note."""
    same, note = _stdout_words()
    out = []
    for entry in data.get("comparison") or []:
        gated = entry.get("fail_on_regression_pct") is not None
        head = ["engine", "prec", "batch", "size", "scenario", "base", "this", "speed", "verdict", "dice change",
                "cos change"] + (["regressed"] if gated else [])
        out.append({"base": entry.get("base", "?"), "started": entry.get("base_started") or "?",
                    "differences": list(entry.get("differences") or []) or [same], "same": not entry.get("differences"),
                    "head": head, "rows": [_compared(r, gated) for r in entry.get("rows") or []],
                    "new": [_key_text(k) for k in entry.get("new") or []],
                    "gone": [_key_text(k) for k in entry.get("gone") or []], "note": note})
    return out


def profiles(report: Report) -> list[dict]:
    """--profile's tables, one per profiled row, in stdout's columns (report/profile_table.py): the operator or layer,
    its type and kernel / provider where they say something, ms per call, share, runs per call; the types' table;
    stdout's heading and sum lines."""
    out = []
    for row in (r for r in report.rows if r.profile is not None):
        p, lines = row.profile, profile_block(row)
        if p.tool is None:
            out.append({"row": row.label, "heading": lines[0], "ops": [], "types": []})
            continue
        with_type = any(op.type != op.name for op in p.ops)
        with_detail = len({op.detail for op in p.ops}) > 1
        head = [("layer / node" if with_type else "operator", "name")] + ([("type", "name")] if with_type else []) \
            + ([("kernel / provider", "name")] if with_detail else []) + [("ms/call", ""), ("share", ""),
                                                                          ("per call", "")]
        ops = [{"cells": [op.name] + ([op.type] if with_type else []) + ([op.detail] if with_detail else [])
                + [f"{op.ms_per_call:.2f}", f"{op.share:.1%}", f"{op.count:g}"], "share": op.share} for op in p.ops]
        types = [{"cells": [t.type, f"{t.ms_per_call:.2f}", f"{t.share:.1%}", f"{t.count:g}"], "share": t.share}
                 for t in p.types] if with_type else []
        out.append({"row": row.label, "heading": lines[0], "head": head, "ops": ops, "types": types,
                    "sum": sum_line(row)})
    return out
