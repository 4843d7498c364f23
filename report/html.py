"""--html: the report as one self-contained HTML page. The page is drawn from the JSON report's dict (what ran, the
charts, the scenarios, the comparison, the profiles) and the first row's worst images; its table and notes are the
stdout report's own lines (report/summary.py, report/notes.py). No script, no network: charts are inline SVG
(report/html_charts.py), images base64 data: URIs, the style inline."""
from __future__ import annotations

import base64
import os
import re
from collections.abc import Sequence

from report.html_charts import charts
from report.json_report import _finite, _names, report_dict
from report.notes import auto_lines
from report.overlay import draw_overlay, encode_jpeg
from report.results import Report, Row
from report.summary import cell, columns, header_lines, legend_lines, note_lines
from utils.errors import SampleError
from utils.files import write_atomic

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
TEMPLATE = "report.html.j2"
# A note that says something went wrong or qualifies a figure: shown apart, above the other notes.
WARNING = re.compile(r"\b(LOW|unstable|INTERRUPTED|PARTIAL|FAILED|error|skipped|INVALID|warning|too few)\b")
CDF_POINTS = 400  # a latency curve's points at most (a long --min_duration run times thousands of calls)


def require_html() -> None:
    """Fail before the run, with the command that fixes it, when a package the page needs is missing."""
    for module in ("jinja2", "matplotlib"):
        try:
            __import__(module)
        except ImportError:
            raise SampleError(f"--html needs {module}, which is not installed: pip install {module} "
                              "(or pip install -r requirements-dev.txt)") from None


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
    made = {name: Markup(svg) for name, svg in charts(_drawable(data)).items()}
    notes = sorted_notes(report, warnings)
    partial = next((n for n in notes["warnings"] if n.startswith("PARTIAL")), "PARTIAL") if data.get("partial") else ""
    return env.get_template(TEMPLATE).render(
        config=data["config"], version=data.get("version"), partial=partial, ran=what_ran(report, data),
        table=results_table(report), charts=made, notes=notes, worst=worst_images(report),
        scenarios=scenario_rows(data), comparison=comparisons(data), profiles=profiles(data))


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
    """The stdout table's columns and cells, each row's marks (LOW, unstable, INTERRUPTED) and CSS classes."""
    table = columns(report.info.percentiles)
    rows = []
    for row in report.rows:
        marks = _marks(row)
        rows.append({"cells": [cell(figure(row), fmt) for _, figure, fmt in table], "marks": marks,
                     "classes": " ".join(m.lower() for m in marks)})
    return {"head": [h for h, _, _ in table], "rows": rows}


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


def _row_key(entry: dict) -> str:
    """'torch fp32 b1 256x256 loop' from a comparison entry's match keys (whatever of them it has)."""
    size = entry.get("image_size")
    parts = [entry.get("engine"), entry.get("precision"),
             f"b{entry['batch_size']}" if entry.get("batch_size") is not None else None,
             "x".join(str(v) for v in size) if isinstance(size, (list, tuple)) else size, entry.get("scenario")]
    return " ".join(str(p) for p in parts if p not in (None, ""))


def comparisons(data: dict) -> list[dict]:
    """--compare's entries (a top-level list), each with its rows' labels made; new / gone rows as labels."""
    out = []
    for entry in data.get("comparison") or []:
        rows = [{**r, "label": _row_key(r)} for r in entry.get("rows") or []]
        named = {k: [_row_key(x) if isinstance(x, dict) else str(x) for x in entry.get(k) or []]
                 for k in ("new", "gone")}
        out.append({"base": entry.get("base", "?"), "differences": list(entry.get("differences") or []),
                    "rows": rows, **named})
    return out


def profiles(data: dict) -> list[dict]:
    """--profile's tables, one per row that has one."""
    return [{"row": f"{r['engine']} {r['precision']}", **r["profile"]} for r in data.get("rows", [])
            if isinstance(r.get("profile"), dict)]
