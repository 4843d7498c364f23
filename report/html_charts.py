"""The HTML report's charts (matplotlib, drawn from the JSON report's dict) as inline SVG: text kept as text (no
embedded or external fonts), no metadata, ids salted per chart so that several can share one page."""
from __future__ import annotations

import io
import math
import re

from report.plots import draw_concurrency
from utils.timing import SPLIT_MAIN

MARKERS = {"fp32": "o", "fp16": "s", "bf16": "D", "int8": "^"}
PARTS = {"wait": "#bab0ac", "nvjpeg": "#9c755f", "h2d": "#4e79a7", "model": "#e15759", "d2h": "#76b7b2",
         "metrics": "#f28e2b", "outputs": "#b07aa1", "decode": "#59a14f", "resize": "#edc948"}
# Text stays text (the browser's sans-serif draws it: no font file embedded or fetched), named in few bytes.
STYLE = {"svg.fonttype": "none", "font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans", "Arial"]}
FLOOR, FLOOR_TEXT = 1e-9, "1e-9"  # where 1 - cosine is drawn for a row this close or closer (a log axis has no 0)
LABEL_PT = 7  # a point's name, in points
OFFSETS = (3, -12, 14, -23, 25, -34, 36, -45)  # a name's bottom above (below) its point, in points: tried in turn


def _figure(width: float, height: float, columns: int = 1):
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig, fig.subplots(1, columns, squeeze=False)[0]


def to_svg(fig, name: str) -> str:
    """The figure as an <svg> element to inline: no XML prolog, no metadata, text as <text> in the page's font."""
    import matplotlib
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": name}):
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buffer.getvalue()
    text = re.sub(r"<metadata>.*?</metadata>", "", text[text.index("<svg"):], flags=re.S)
    return re.sub(r"\s*<!--.*?-->", "", text, flags=re.S)


def label(row: dict) -> str:
    return f"{row['engine']} {row['precision']}"


def colours(rows: list[dict]) -> dict[str, str]:
    """One colour per engine, in the order the rows first name them."""
    from matplotlib import colormaps
    palette = colormaps["tab10"].colors
    engines = list(dict.fromkeys(r["engine"] for r in rows))
    return {e: palette[k % len(palette)] for k, e in enumerate(engines)}


def _decades(ax, values: list[float]) -> None:
    """A log x axis from the decade below the smallest value to the decade above the largest, labelled at the decades
    only (a narrower span labels its minor ticks, which overlap)."""
    from matplotlib.ticker import NullFormatter
    ax.set_xscale("log")
    ax.set_xlim(10 ** math.floor(math.log10(min(values) / 1.5)), 10 ** math.ceil(math.log10(max(values) * 1.5)))
    ax.xaxis.set_minor_formatter(NullFormatter())


def accuracy_panels(rows: list[dict]) -> list[str]:
    """The speed-accuracy chart's y figures: the dice delta against eager fp32 (or, without a reference, the dice
    against the masks) and the worst cosine with eager fp32, those some timed row has."""
    timed = [r for r in rows if r.get("fps")]
    dice = "dice_delta" if any(r.get("dice_delta") is not None for r in timed) else "dice"
    return [key for key in (dice, "cosine_min") if any(r.get(key) is not None for r in timed)]


def speed_accuracy_absent(rows: list[dict]) -> str | None:
    """Why there is no speed-accuracy chart, said in its place (None when there is one)."""
    if not any(r.get("fps") for r in rows):
        return "No speed-accuracy chart: no row has a throughput (none finished its timing pass)."
    if not accuracy_panels(rows):
        return ("No speed-accuracy chart: no timed row has a dice score (the images have no masks) or a cosine with "
                "the eager fp32 reference (--no_reference, or no reference ran).")
    return None


def floored(row: dict) -> bool:
    """The row's 1 - worst cosine is at or below FLOOR: drawn at FLOOR, which it is not (identical rows give 0)."""
    return row.get("cosine_min") is not None and 1.0 - row["cosine_min"] <= FLOOR


def _line(ax, y: float, text: str, colour: str, style: str, right: bool = False) -> tuple:
    """A horizontal reference line with its note at the axes' left (right) edge, above (below) it; returns the note
    as (y, text, right) for _label_points to keep the rows' names off it."""
    ax.axhline(y, color=colour, linestyle=style, linewidth=0.8)
    ax.annotate(text, (0.99 if right else 0.01, y), xycoords=("axes fraction", "data"), fontsize=LABEL_PT,
                color=colour, ha="right" if right else "left", va="top" if right else "bottom")
    return y, text, right


def _accuracy(ax, key: str, rows: list[dict]) -> list[tuple]:
    """The y axis of one panel, its reference lines and its label; returns the lines' notes (see _line)."""
    notes = []
    if key == "dice_delta":
        ax.axhline(0.0, color="#888", linewidth=0.8)
        notes.append(_line(ax, -0.003, "int8 goal -0.003", "#c00", "--"))
        ax.set_ylabel("dice delta vs eager fp32 (up = better)")
    elif key == "dice":
        ax.set_ylabel("dice against the masks (up = better)")
    else:
        notes += [_line(ax, 1.0 - bar, f"bar {bar:g}", "#c00", "--")
                  for bar in sorted({r["cosine_bar"] for r in rows if r.get("cosine_bar") is not None})]
        if any(map(floored, rows)):
            notes.append(_line(ax, FLOOR, f"floor {FLOOR_TEXT}: hollow = at or below", "#555", ":", right=True))
        ax.set_yscale("log")
        ax.invert_yaxis()  # up = closer to the reference, as on the dice panel
        ax.set_ylabel("1 - worst cosine (log, up = closer)")
    ax.margins(y=0.2)
    return notes


def _overlaps(box: tuple, placed: list[tuple]) -> bool:
    """Whether `box` (left, bottom, right, top) overlaps any of `placed`."""
    return any(not (box[2] <= a or c <= box[0] or box[3] <= b or d <= box[1]) for a, b, c, d in placed)


def _label_points(ax, points: list[tuple], notes: list[tuple], size_pt: tuple[float, float]) -> None:
    """Each point's row name beside it, moved up or down past the lines' notes and the names already placed (close
    rows share a y: the same dice, a cosine of 1). `points`: (x, y, name, colour); `size_pt`: the axes' rough size in
    points, to size a name in axes fractions."""
    ax.get_ylim()  # settles the autoscaled limits, which the transform below reads
    to_axes = ax.transData + ax.transAxes.inverted()  # independent of the page's layout
    wide, high = (lambda text: len(text) * 0.56 * LABEL_PT / size_pt[0]), (LABEL_PT + 2) / size_pt[1]
    placed: list[tuple] = []
    for y, text, right in notes:
        fy = to_axes.transform((1.0, y))[1]
        left, bottom = (0.99 - wide(text), fy - high) if right else (0.01, fy)
        placed.append((left, bottom, left + wide(text), bottom + high))
    for x, y, text, colour in sorted(points, key=lambda p: p[:2]):
        fx, fy = to_axes.transform((x, y))
        width, gap = wide(text), 5 / size_pt[0]
        right = fx + gap + width <= 1.0
        left = fx + gap if right else fx - gap - width
        boxes = [(left, fy + dy / size_pt[1], left + width, fy + dy / size_pt[1] + high) for dy in OFFSETS]
        k = next((k for k, box in enumerate(boxes) if not _overlaps(box, placed)), 0)
        placed.append(boxes[k])
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(5 if right else -5, OFFSETS[k]),
                    fontsize=LABEL_PT, color=colour, ha="left" if right else "right", va="bottom",
                    annotation_clip=False)


def speed_accuracy(rows: list[dict]) -> str | None:
    """Throughput (timing pass, log axis) against the dice delta (or the dice, without a reference) and the worst
    cosine, one point per row labelled with its engine and precision, the legend naming each row's fidelity verdict;
    each precision's cosine bar drawn; a cosine at or below the axis's floor hollow. None when no row has both a
    throughput and any of them (speed_accuracy_absent says why)."""
    panels = accuracy_panels(rows)
    if not panels:
        return None
    timed = [r for r in rows if r.get("fps")]
    fig, axes = _figure(3.6 * len(panels) + 2.0, 3.6, len(panels))
    colour = colours(timed)
    for ax, key in zip(axes, panels):
        points = []
        for r in (r for r in timed if r.get(key) is not None):
            y = max(1.0 - r[key], FLOOR) if key == "cosine_min" else r[key]
            hollow = key == "cosine_min" and floored(r)
            ax.plot(r["fps"], y, MARKERS.get(r["precision"], "v"), color=colour[r["engine"]], markersize=8,
                    alpha=0.85, markerfacecolor="white" if hollow else colour[r["engine"]], markeredgewidth=1.5,
                    label=f"{label(r)}: {r.get('fidelity', '?')}")
            points.append((r["fps"], y, label(r), colour[r["engine"]]))
        _decades(ax, [r["fps"] for r in timed])
        ax.set_xlabel("throughput, images / s (timing pass, log)")
        _label_points(ax, points, _accuracy(ax, key, timed), (3.6 * 72 * 0.72, 3.6 * 72 * 0.75))
    # The legend names each row (engine colour, precision marker) with its fidelity verdict, each row's first marker
    # (a filled one: the dice panel comes first, hollow says "at or below the floor" only on the cosine panel).
    shown: dict = {}
    for ax in axes:
        for handle, text in zip(*ax.get_legend_handles_labels()):
            shown.setdefault(text, handle)
    axes[-1].legend(list(shown.values()), list(shown), loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8,
                    title="row: fidelity", title_fontsize=8)
    return to_svg(fig, "speed-accuracy")


def latency_cdf(rows: list[dict]) -> str | None:
    """Each row's timed calls as a cumulative distribution, its median marked; log axis where they spread wide."""
    timed = [r for r in rows if r.get("latencies_ms")]
    if not timed:
        return None
    fig, (ax,) = _figure(8, 3.4)
    colour = colours(timed)
    styles = {"fp32": "-", "fp16": "--", "bf16": "-.", "int8": ":"}
    for r in timed:
        values = sorted(r["latencies_ms"])
        share = [(k + 1) / len(values) for k in range(len(values))]
        ax.step(values, share, where="post", color=colour[r["engine"]], linestyle=styles.get(r["precision"], "-"),
                label=f"{label(r)} ({len(values)} calls)")
        if r.get("latency_median_ms") is not None:
            ax.plot(r["latency_median_ms"], 0.5, MARKERS.get(r["precision"], "v"), color=colour[r["engine"]])
    everything = [v for r in timed for v in r["latencies_ms"] if v > 0]
    if everything and max(everything) > 10 * min(everything):
        ax.set_xscale("log")
    ax.set_xlabel("latency per timed call, ms")
    ax.set_ylabel("share of calls at or below")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return to_svg(fig, "latency")


def time_split(rows: list[dict]) -> str | None:
    """Per row, ms per image: the main thread's parts stacked (they add up to e2e, marked), and the decode threads'
    decode and resize beside them (in parallel)."""
    split = [r for r in rows if r.get("images") and any((r.get("split_s") or {}).get(p) for p in SPLIT_MAIN)]
    if not split:
        return None
    fig, (ax,) = _figure(8, 0.9 + 0.75 * len(split))
    seen: set[str] = set()
    for k, r in enumerate(split):
        per_image = {p: s * 1000.0 / r["images"] for p, s in r["split_s"].items()}
        for y, parts, height in ((k, SPLIT_MAIN, 0.42), (k + 0.36, ("decode", "resize"), 0.22)):
            left = 0.0
            for part in (p for p in parts if per_image.get(p)):
                ax.barh(y, per_image[part], height, left=left, color=PARTS[part],
                        label=None if part in seen else part)
                seen.add(part)
                left += per_image[part]
        e2e = r["e2e_s"] * 1000.0 / r["images"]
        ax.plot([e2e, e2e], [k - 0.26, k + 0.26], color="black", linewidth=1.5)
        ax.annotate(f"e2e {e2e:.1f}", (e2e, k - 0.26), textcoords="offset points", xytext=(3, -2), fontsize=7)
    widest = max(max(r["e2e_s"], sum(r["split_s"].get(p, 0.0) for p in SPLIT_MAIN)) * 1000.0 / r["images"]
                 for r in split)
    ax.set_xlim(0, 1.15 * widest)  # room for the e2e labels
    ax.set_yticks(range(len(split)), [label(r) for r in split])
    ax.invert_yaxis()
    ax.set_xlabel("ms per image (accuracy pass): main thread stacked; decode threads below, in parallel")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    return to_svg(fig, "split")


def concurrency(rows: list[dict]) -> str | None:
    """--concurrency's curves (report/plots.py draws them the same way)."""
    swept = [r for r in rows if (r.get("concurrency") or {}).get("levels")]
    if not swept:
        return None
    fig, (ax,) = _figure(8, 3.4)
    draw_concurrency(ax, swept)
    return to_svg(fig, "concurrency")


def charts(data: dict) -> dict[str, str]:
    """Every chart the report has data for, by name."""
    import matplotlib
    rows = data.get("rows", [])
    with matplotlib.rc_context(STYLE):
        made = {"speed_accuracy": speed_accuracy(rows), "latency": latency_cdf(rows), "split": time_split(rows),
                "concurrency": concurrency(rows)}
    return {name: svg for name, svg in made.items() if svg is not None}
