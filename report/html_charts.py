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
EXACT = 1e-9  # where 1 - cosine is drawn for a row identical to the reference (a log axis has no 0)


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


def speed_accuracy(rows: list[dict]) -> str | None:
    """Throughput (timing pass, log axis) against the dice delta and the worst cosine, one point per row labelled with
    its fidelity verdict; each precision's cosine bar drawn. None when no row has both a throughput and either."""
    timed = [r for r in rows if r.get("fps")]
    panels = [key for key in ("dice_delta", "cosine_min") if any(r.get(key) is not None for r in timed)]
    if not panels:
        return None
    fig, axes = _figure(3.6 * len(panels) + 2.0, 3.6, len(panels))
    colour = colours(timed)
    for ax, key in zip(axes, panels):
        for r in (r for r in timed if r.get(key) is not None):
            y = r[key] if key == "dice_delta" else max(1.0 - r[key], EXACT)
            ax.plot(r["fps"], y, MARKERS.get(r["precision"], "v"), color=colour[r["engine"]], markersize=8,
                    alpha=0.85, label=f"{label(r)}: {r.get('fidelity', '?')}")
        _decades(ax, [r["fps"] for r in timed])
        ax.set_xlabel("throughput, images / s (timing pass, log)")
        if key == "dice_delta":
            ax.axhline(0.0, color="#888", linewidth=0.8)
            ax.axhline(-0.003, color="#c00", linestyle="--", linewidth=0.8)
            ax.annotate("int8 goal -0.003", (0.01, -0.003), xycoords=("axes fraction", "data"), fontsize=7,
                        color="#c00", va="bottom")
            ax.set_ylabel("dice delta vs eager fp32 (up = better)")
        else:
            for bar in sorted({r["cosine_bar"] for r in timed if r.get("cosine_bar") is not None}):
                ax.axhline(1.0 - bar, color="#c00", linestyle="--", linewidth=0.8)
                ax.annotate(f"bar {bar:g}", (0.01, 1.0 - bar), xycoords=("axes fraction", "data"), fontsize=7,
                            color="#c00", va="bottom")
            ax.set_yscale("log")
            ax.invert_yaxis()  # up = closer to the reference, as on the dice panel
            ax.set_ylabel("1 - worst cosine (log, up = closer)")
        ax.margins(y=0.2)
    # Each row is one engine colour and precision marker: the legend names it and its verdict (labels beside close
    # points would overlap).
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, title="row: fidelity",
                    title_fontsize=8)
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
