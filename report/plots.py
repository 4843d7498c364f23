"""Plots of a report (optional: needs matplotlib): latency per engine, per-image dice, fps vs dice."""
from __future__ import annotations

import argparse
import io
import json
import os
import sys

from utils.errors import SampleError
from utils.files import check_destination, write_atomic

# what write_plots may write into its folder
PLOT_FILES = ("latency.png", "dice_histogram.png", "fps_vs_dice.png", "concurrency.png")


def require_matplotlib() -> None:
    """Fail with an actionable message when matplotlib is missing (checked before the run, not after it)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SampleError("--plots needs matplotlib, which is not installed: pip install matplotlib "
                          "(or pip install -r requirements-dev.txt)") from None


def _label(row: dict) -> str:
    return f"{row['engine']} {row['precision']}"


def _figure():
    # Figure without pyplot: no global state, no GUI backend, safe beside other threads.
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7, 4), dpi=100, layout="constrained")
    return fig, fig.subplots()


def _save(fig, path: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    write_atomic(path, buffer.getvalue())
    return path


def plot_latency(rows: list[dict], path: str) -> str:
    """Box plot of every timed call's latency, one box per engine row, with the calls drawn as points."""
    fig, ax = _figure()
    data = [r["latencies_ms"] for r in rows]
    ax.boxplot(data, showfliers=False)  # vertical: the default in every matplotlib version, no deprecated flag
    for i, values in enumerate(data, start=1):
        ax.plot([i] * len(values), values, "o", alpha=0.5, markersize=4)
    ax.set_xticks(range(1, len(rows) + 1), [_label(r) for r in rows])
    ax.set_ylabel("latency per timed call (ms)")
    ax.set_title("latency distribution (timing pass)")
    return _save(fig, path)


def plot_dice(rows: list[dict], resolution: str, path: str) -> str:
    """Histogram of per-image dice, one series per engine row."""
    fig, ax = _figure()
    for r in rows:
        values = [d for d in r["per_image"]["dice"] if d is not None]
        ax.hist(values, bins=30, alpha=0.6, label=f"{_label(r)} (mean {sum(values) / len(values):.4f})")
    ax.set_xlabel(f"per-image dice ({resolution} resolution)")
    ax.set_ylabel("images")
    from matplotlib.ticker import MaxNLocator
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # a count of images has no fractions
    ax.set_title("per-image dice")
    ax.legend(loc="upper left")
    return _save(fig, path)


def plot_fps_vs_dice(rows: list[dict], path: str) -> str:
    """One point per engine x precision: model fps (timing pass) against mean dice."""
    fig, ax = _figure()
    for r in rows:
        ax.plot(r["fps"], r["dice"], "o", markersize=8)
        ax.annotate(_label(r), (r["fps"], r["dice"]), textcoords="offset points", xytext=(6, 4))
    ax.set_xlabel("fps (timing pass)")
    ax.set_ylabel("mean dice")
    ax.set_title("speed vs accuracy per engine and precision")
    return _save(fig, path)


def plot_concurrency(rows: list[dict], path: str) -> str:
    """Throughput against median latency per --concurrency level, one curve per engine row, each point labelled with
    its requests in flight: where the curve turns up, more requests only add latency."""
    fig, ax = _figure()
    draw_concurrency(ax, rows)
    return _save(fig, path)


def draw_concurrency(ax, rows: list[dict]) -> None:
    """plot_concurrency's curves on `ax` (the HTML report draws them too)."""
    for r in rows:
        levels = r["concurrency"]["levels"]
        xs, ys = [lv["latency_p50_ms"] for lv in levels], [lv["images_per_s"] for lv in levels]
        ax.plot(xs, ys, "o-", label=_label(r))
        for lv, x, y in zip(levels, xs, ys):
            ax.annotate(str(lv["concurrency"]), (x, y), textcoords="offset points", xytext=(4, 4))
    ax.set_xlabel("median latency per call (ms)")
    ax.set_ylabel("images / s")
    ax.set_title("throughput vs latency per requests in flight")
    ax.legend(loc="lower right")


def write_plots(report: dict, folder: str) -> list[str]:
    """Write the plots the report has data for into `folder`; returns their paths."""
    require_matplotlib()
    rows = report["rows"]
    written = []
    timed = [r for r in rows if r.get("latencies_ms")]
    if timed:
        written.append(plot_latency(timed, os.path.join(folder, PLOT_FILES[0])))
    scored = [r for r in rows if any(d is not None for d in r.get("per_image", {}).get("dice", []))]
    if scored:
        resolution = report["config"].get("eval_resolution", "model")
        written.append(plot_dice(scored, resolution, os.path.join(folder, PLOT_FILES[1])))
    both = [r for r in scored if r.get("fps") and r.get("dice") is not None]
    if len(both) >= 2:  # a single point says nothing; the plot is for side-by-side runs
        written.append(plot_fps_vs_dice(both, os.path.join(folder, PLOT_FILES[2])))
    swept = [r for r in rows if (r.get("concurrency") or {}).get("levels")]
    if swept:
        written.append(plot_concurrency(swept, os.path.join(folder, PLOT_FILES[3])))
    return written


def _read_report(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise SampleError(f"cannot read report {path}: {exc}") from None


def main(argv=None) -> int:
    """`python -m report.plots DIR a.json b.json ...`: plot the rows of several saved reports side by side."""

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("folder", help="where the PNGs go")
    parser.add_argument("reports", nargs="+", help="JSON reports written by sample.py --json")
    parser.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty folder")
    args = parser.parse_args(argv)
    try:
        reports = [_read_report(p) for p in args.reports]
        resolutions = {r["config"].get("eval_resolution", "model") for r in reports}
        if len(resolutions) > 1:  # one dice axis must mean one thing
            raise SampleError(f"the reports score dice at different resolutions ({', '.join(sorted(resolutions))}); "
                              "plot them separately")
        check_destination(args.folder, folder=True, overwrite=args.overwrite, flag="plots")
        merged = {"config": reports[0]["config"], "rows": [row for r in reports for row in r["rows"]]}
        for path in write_plots(merged, args.folder):
            print(path)
    except SampleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
