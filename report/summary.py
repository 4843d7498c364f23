"""The report on stdout: what ran on what, the table, the notes that qualify its numbers, and the worst images."""
from __future__ import annotations

import math
from typing import Callable

from report.compare_table import comparison_lines
from report.csv_files import ImageRecord
from report.metrics import name_nonfinite
from report.notes import config_notes
from report.profile_table import profile_lines
from report.ranks import rank_lines
from report.results import Report, Row, RunInfo
from report.scenario_table import concurrency_lines, scenario_lines
from report.table import aligned
from utils.device import usable_cpus
from utils.timing import PERCENTILES, SPLIT_MAIN, UNSTABLE, Timing, median_min_calls

PERCENTILE_COLUMNS = ("p", None, "{:.1f}")
COLUMNS: list[tuple[str, Callable[[Row], object] | None, str]] = [  # (header, figure, format)
    ("engine", lambda r: r.engine, "{}"),
    ("device", lambda r: r.device, "{}"),
    ("prec", lambda r: r.precision, "{}"),
    ("images", lambda r: r.images, "{}"),
    ("dice", lambda r: r.scores.dice, "{:.4f}"),
    ("micro dice", lambda r: r.scores.micro_dice, "{:.4f}"),
    ("IoU", lambda r: r.scores.iou, "{:.4f}"),
    ("cos min", lambda r: r.agreement.cosine_min, "{:.6f}"),
    ("cos mean", lambda r: r.agreement.cosine_mean, "{:.6f}"),
    ("fidelity", lambda r: r.gate.fidelity, "{}"),
    ("dice delta", lambda r: r.gate.dice_delta, "{:+.4f}"),
    ("median ms", lambda r: r.timing and r.timing.latency_median_ms, "{:.1f}"),
    ("±95%", lambda r: interval_cell(r.timing), "{}"),
    PERCENTILE_COLUMNS,  # the run's --percentiles but the median: p90 ms, p99 ms by default
    ("fps", lambda r: r.timing and r.timing.fps, "{:.3f}"),
    ("e2e fps", lambda r: r.e2e_fps, "{:.3f}"),
    ("compile s", lambda r: r.compile_s, "{:.1f}"),
    ("artifact", lambda r: r.artifact, "{}"),
]


def cell(value, fmt: str) -> str:
    """`value` formatted, or '-' where it was not measured (None, NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def interval_cell(timing: Timing | None) -> str | None:
    """The median's 95 % interval as ± a share of it, '!' past 5 % (unstable); 'n<6' with too few calls for one."""
    if timing is None:
        return None
    half = timing.ci_half_width
    if half is None:
        return f"n<{median_min_calls()}"
    return f"{half * 100:.1f}%" + ("!" if timing.unstable else "")


def _percentile(p: float) -> Callable[[Row], float | None]:
    def figure(row: Row) -> float | None:
        found = [q.ms for q in row.timing.latency_percentiles if q.percentile == p] if row.timing else []
        return found[0] if found else None
    return figure


def columns(percentiles: list[float]) -> list[tuple[str, Callable[[Row], object], str]]:
    """COLUMNS with one column per reported percentile in place of PERCENTILE_COLUMNS (the median has its own)."""
    shown = [(f"p{p:g} ms", _percentile(p), "{:.1f}") for p in percentiles if p != 50]
    out = []
    for column in COLUMNS:
        out.extend(shown if column is PERCENTILE_COLUMNS else [column])
    return out


def format_table(rows: list[Row], percentiles: list[float] = PERCENTILES) -> str:
    """Rows aligned under the columns; '-' where a figure was not measured (no masks, no reference)."""
    table = columns(list(percentiles))
    cells = [[h for h, _, _ in table]] + [[cell(figure(r), f) for _, figure, f in table] for r in rows]
    return aligned(cells, left=3)  # engine, device, precision


def describe(host: dict | None) -> str:
    """'AMD EPYC, 2 cores (avx2, avx512f); NVIDIA H200': the machine a report's figures belong to."""
    if not host:
        return "unknown"
    isa = f" ({', '.join(host['isa'])})" if host.get("isa") else ""
    text = f"{host.get('cpu', '?')}, {host.get('cpu_count', '?')} cores{isa}"
    return text + (f"; {host['accelerator']}" if host.get("accelerator") else "")


def header_lines(c: RunInfo) -> list[str]:
    """What was run on what."""
    unpaired = f", {c.unpaired} without a mask (timed, not scored)" if c.unpaired else ""
    return [
        f"model      {c.model}: {c.variant}, {c.parameters:,} parameters, {c.n_classes} classes",
        f"weights    {c.weights}",
        f"data       {c.data}",
        f"images     {c.images} at {c.image_size[0]}x{c.image_size[1]}, batch {c.batch_size}{unpaired}",
        f"timing     {c.warm_counter} warm-up + {c.loop} timed calls per engine{_at_least(c)}; torch {c.torch}, "
        f"{c.threads} CPU threads",
        f"host       {describe(c.host)}",
    ]


def _at_least(c: RunInfo) -> str:
    return f", and more until {c.min_duration_s:g} s are timed" if c.min_duration_s else ""


def stability_line(row: Row) -> str | None:
    """Why a row's median is not to be trusted: its 95 % interval is wide (and how busy the machine was), or there
    were too few calls for an interval at all."""
    t = row.timing
    if t is None or not t.calls:
        return None
    if t.latency_median_ci_ms is None:
        return (f"{row.label}: {t.calls} timed call(s) are too few for a 95 % interval of the median (it takes "
                f"{median_min_calls()}); raise --loop or set --min_duration")
    if not t.unstable:
        return None
    low, high = t.latency_median_ci_ms
    cpus = usable_cpus()
    busy = ("the machine was busy" if t.load_average > cpus else "the machine was not busy: the engine's own "
            "times spread (another process's bursts, frequency scaling, a bimodal engine)") \
        if t.load_average is not None else "no load average on this platform"
    load = f"load average {t.load_average:g} on {cpus} usable CPU(s): " if t.load_average is not None else ""
    return (f"{row.label}: unstable: the median's 95 % interval is {low:.1f}-{high:.1f} ms (±{t.ci_half_width:.1%}, "
            f"over {UNSTABLE:.0%}); {load}{busy}; rerun on a quiet machine, or raise --loop / --min_duration")


def legend_lines(report: Report) -> list[str]:
    """What the table's figures mean in this run."""
    c, lines = report.info, []
    if c.weights == "random":
        lines.append("note: random weights (no --pth): dice measures nothing; cosine and speed are still valid"
                     + _random_prediction(report.rows))
    where = ("at each image's original size (logits resized bilinearly, Kaggle's metric)"
             if c.eval_resolution == "original" else f"at the model's {c.image_size[0]}x{c.image_size[1]}")
    lines.append(f"dice = mean over images of per-image dice (Pytorch-UNet's), scored {where}; micro dice pools all "
                 "pixels; IoU = mean per-image IoU; cos = per-sample cosine vs eager fp32 on "
                 f"{_reference_where(c)}")
    lines.append("fidelity: worst cosine vs the precision's bar (fp32 0.99999, fp16/bf16 0.999, int8 0.99; "
                 "LOW = below); dice delta = dice - eager fp32 dice on the same images (at model size); "
                 "artifact: compiled now or loaded from the cache")
    lines.append("±95%: half the width of the median's distribution-free 95 % interval (order statistics), as a share "
                 f"of the median; '!' past {UNSTABLE:.0%}: unstable; 'n<{median_min_calls()}': too few calls for one")
    return lines


def row_lines(row: Row, c: RunInfo) -> list[str]:
    """The notes on one row: interrupted, what a timed call holds, where the time went, both dice, outputs, failures."""
    lines, label = [], row.label
    if row.interrupted:
        lines.append(f"{label}: INTERRUPTED after {row.images} of {c.images} image(s); its figures cover those"
                     + ("" if row.timing else ", and it has no timing"))
    lines.append(f"{label}: timed region = {row.timed_region}; first call {cell(row.first_call_ms, '{:.1f}')} ms; "
                 f"compile / export {row.compile_s:.1f} s ({row.artifact})")
    stability = stability_line(row)
    if stability:
        lines.append(stability)
    lines.extend(concurrency_lines(row))
    if row.split_s and row.images:
        lines.append(f"{label}: {format_split(row.split_s, row.images, c)}")
    if row.model_res is not None and row.model_res.dice is not None:
        # Five decimals: the two figures usually differ past the table's fourth.
        lines.append(f"{label}: dice {row.scores.dice:.5f} at original size, {row.model_res.dice:.5f} at the model's "
                     f"size (micro {row.scores.micro_dice:.5f} / {row.model_res.micro_dice:.5f})")
    if row.outputs_s is not None:
        lines.append(f"{label}: per-image outputs took {row.outputs_s:.1f} s in a background thread, overlapped with "
                     "the engine and included in e2e fps")
    if row.nonfinite:
        lines.append(f"{label}: LOW: {name_nonfinite(row.nonfinite, row.images)}; their cosine counts as -1 (the "
                     "worst), max_abs_diff has no bound (null in the JSON), and their dice scores a prediction in "
                     "which a NaN logit is background")
    if row.failed_images:
        lines.append(f"{label}: {len(row.failed_images)} image(s) skipped: "
                     + "; ".join(f.error for f in row.failed_images[:3]))
    return lines


def format_report(report: Report, json_path: str | None = None, worst: str = "", html_path: str | None = None) -> str:
    """The human-readable report: what was run on what, the table, the notes that qualify the numbers, the `worst`
    images' lines, and where every file went (`json_path` / `html_path`: the JSON / HTML report, when written)."""
    c = report.info
    lines = header_lines(c) + ["", format_table(report.rows, c.percentiles), ""] + note_lines(report)
    lines.extend(profile_lines(report))  # --profile's operators, per row
    lines.extend(comparison_lines(report.comparison))  # --compare's bases
    if worst:
        lines.append(worst)
    lines.extend(_written(report, json_path, html_path))
    if report.cache_note:
        lines.append(report.cache_note)
    return "\n".join(lines)


def note_lines(report: Report) -> list[str]:
    """The lines under the table that qualify its numbers (the HTML report shows them too): the legend, each row's
    notes, the LoadGen scenarios, skipped and failed rows, the ranks, how the run was set up, and PARTIAL."""
    c, lines = report.info, legend_lines(report)
    for row in report.rows:
        lines.extend(row_lines(row, c))
    lines.extend(scenario_lines(report))
    for skip in report.skipped:
        lines.append(f"{'FAILED' if skip.failed else 'skipped'} {skip.engine} {skip.precision}: {skip.reason}")
    lines.extend(rank_lines(report))  # runs across ranks (torchrun) only
    lines.extend(config_notes(c))
    if report.partial:
        by = {"SIGINT": "Ctrl-C (SIGINT)", None: "a signal"}.get(report.interrupted_by, report.interrupted_by)
        lines.append(f"PARTIAL: the run was interrupted by {by}: rows it never reached are missing, and a row it cut "
                     "short says INTERRUPTED above")
    return lines


def format_split(split: dict[str, float], images: int, c: RunInfo) -> str:
    """Where a row's end-to-end time went, in ms per image: the main thread's parts (they add up to e2e), then the
    decode threads' (in parallel with them) and the reference's (left out of e2e)."""
    def ms(key):
        return f"{split.get(key, 0.0) * 1000.0 / images:.2f}"

    main = ", ".join(f"{key} {ms(key)}" for key in SPLIT_MAIN if key != "nvjpeg" or split.get(key))
    threads = f"{c.workers} decode threads" if c.workers else "the decode threads"
    ranks = (c.distributed or {}).get("world_size")
    unit = (f"rank-ms per image (summed over {ranks} ranks; each rank's main-thread parts add up to its e2e)"
            if ranks else "ms per image")
    where = "main thread" if ranks else "main thread, adds up to e2e"
    text = (f"{unit}: {main} ({where}); decode {ms('decode')} + resize {ms('resize')} "
            f"in {threads} ({c.decode} path, in parallel)")
    if split.get("reference"):
        text += f"; reference {ms('reference')} (not in e2e)"
    return text


def _reference_where(c: RunInfo) -> str:
    where = c.reference or "cpu"
    if where == "cpu":
        return "the CPU"
    return f"{where} ({'TF32' if where.startswith('cuda') else 'HF32'} off)"


def _random_prediction(rows: list[Row]) -> str:
    """Why random weights give the same dice with any architecture: they predict one class nearly everywhere."""
    fg = rows[0].per_image.fg_pred if rows else []
    if not fg:
        return ""
    share = sum(fg) / len(fg)
    if 0.02 < share < 0.98:
        return f" (the untrained network marks {share:.1%} of pixels as car)"
    what = "car" if share >= 0.98 else "background"
    return (f" (the untrained network marks {share:.1%} of pixels as car: it predicts '{what}' nearly everywhere, so "
            "any untrained model scores the same dice, set by how much of each image the car covers)")


def _written(report: Report, json_path: str | None, html_path: str | None = None) -> list[str]:
    """Where the run's files went, so nobody has to guess."""
    out, lines = report.outputs, []
    if out is not None and out.folder:
        lines.append(f"wrote {out.files} mask / overlay file(s) to {out.folder}")
    if out is not None and out.submission:
        lines.append(f"wrote the submission ({out.submission_rows} rows) to {out.submission}")
    if out is not None and out.csv:
        lines.append(f"wrote the per-image CSV ({out.csv_rows} rows) to {out.csv}")
    for path in report.plots or []:
        lines.append(f"wrote plot {path}")
    if report.trace is not None:
        t = report.trace
        lines.append(f"wrote the trace ({t.spans} spans on {t.tracks} tracks) to {t.path}: open it in "
                     "https://ui.perfetto.dev or chrome://tracing")
    if json_path:
        lines.append(f"wrote the JSON report to {json_path}")
    if html_path:
        lines.append(f"wrote the HTML report to {html_path}")
    return lines


def format_worst(records: list[ImageRecord], count: int = 5) -> str:
    """The `count` scored images with the lowest dice per engine row, worst first, so the images to look at are
    named."""
    rows: dict = {}
    for r in records:
        if r.dice is not None:
            rows.setdefault((r.engine, r.precision), []).append(r)
    worst = [w for group in rows.values() for w in sorted(group, key=lambda r: r.dice)[:count]]
    if not worst:
        return ""
    lines = [f"worst {len(worst)} image(s) by dice ({worst[0].resolution} resolution):"]
    for r in worst:
        lines.append(f"  {r.engine} {r.precision}  {r.id}  dice {r.dice:.4f}  IoU {r.iou:.4f}  "
                     f"foreground true {r.fg_true:.3f} / predicted {r.fg_pred:.3f}")
    return "\n".join(lines)
