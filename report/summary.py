"""The report: a table on stdout, the worst images under it, and the same numbers as JSON (written atomically)."""
from __future__ import annotations

import json
import math

from report.notes import config_notes
from report.ranks import rank_lines
from utils.files import write_atomic
from utils.timing import SPLIT_MAIN

COLUMNS = [  # (header, row key, format)
    ("engine", "engine", "{}"),
    ("device", "device", "{}"),
    ("prec", "precision", "{}"),
    ("images", "images", "{}"),
    ("dice", "dice", "{:.4f}"),
    ("micro dice", "micro_dice", "{:.4f}"),
    ("IoU", "iou", "{:.4f}"),
    ("cos min", "cosine_min", "{:.6f}"),
    ("cos mean", "cosine_mean", "{:.6f}"),
    ("fidelity", "fidelity", "{}"),
    ("dice delta", "dice_delta", "{:+.4f}"),
    ("median ms", "latency_median_ms", "{:.1f}"),
    ("p90 ms", "latency_p90_ms", "{:.1f}"),
    ("p99 ms", "latency_p99_ms", "{:.1f}"),
    ("fps", "fps", "{:.3f}"),
    ("e2e fps", "e2e_fps", "{:.3f}"),
    ("compile s", "compile_s", "{:.1f}"),
    ("artifact", "artifact", "{}"),
]


def _cell(row: dict, key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return fmt.format(value)


def format_table(rows: list[dict]) -> str:
    """Rows aligned under COLUMNS; '-' where a figure was not measured (no masks, no reference)."""
    cells = [[h for h, _, _ in COLUMNS]] + [[_cell(r, k, f) for _, k, f in COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.rjust(w) if i > 2 else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths)))
             for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def describe(host: dict | None) -> str:
    """'AMD EPYC, 2 cores (avx2, avx512f); NVIDIA H200': the machine a report's figures belong to."""
    if not host:
        return "unknown"
    isa = f" ({', '.join(host['isa'])})" if host.get("isa") else ""
    text = f"{host.get('cpu', '?')}, {host.get('cpu_count', '?')} cores{isa}"
    return text + (f"; {host['accelerator']}" if host.get("accelerator") else "")


def format_report(report: dict, json_path: str | None = None, worst: str = "") -> str:
    """The human-readable report: what was run on what, the table, the notes that qualify the numbers, the `worst`
    images' lines, and where every file went (`json_path`: the JSON report, when it was written)."""
    c = report["config"]
    lines = [
        f"model      {c['model']}: {c.get('variant', c['model'])}, {c['parameters']:,} parameters, "
        f"{c['n_classes']} classes",
        f"weights    {c['weights']}",
        f"data       {c['data']}",
        f"images     {c['images']} at {c['image_size'][0]}x{c['image_size'][1]}, batch {c['batch_size']}"
        + (f", {c['unpaired']} without a mask (timed, not scored)" if c.get("unpaired") else ""),
        f"timing     {c['warm_counter']} warm-up + {c['loop']} timed calls per engine; torch {c['torch']},"
        f" {c['threads']} CPU threads",
        f"host       {describe(c.get('host'))}",
        "",
        format_table(report["rows"]),
        "",
    ]
    if c["weights"] == "random":
        lines.append("note: random weights (no --pth): dice measures nothing; cosine and speed are still valid"
                     + _random_prediction(report["rows"]))
    where = ("at each image's original size (logits resized bilinearly, Kaggle's metric)"
             if c.get("eval_resolution") == "original" else f"at the model's {c['image_size'][0]}x{c['image_size'][1]}")
    lines.append(f"dice = mean over images of per-image dice (Pytorch-UNet's), scored {where}; micro dice pools all "
                 "pixels; IoU = mean per-image IoU; cos = per-sample cosine vs eager fp32 on "
                 f"{_reference_where(c)}")
    lines.append("fidelity: worst cosine vs the precision's bar (fp32 0.99999, fp16/bf16 0.999, int8 0.99; LOW = below); "
                 "dice delta = dice - eager fp32 dice on the same images (at model size); "
                 "artifact: compiled now or loaded from the cache")
    for row in report["rows"]:
        if row.get("interrupted"):
            lines.append(f"{row['engine']} {row['precision']}: INTERRUPTED after {row['images']} of {c['images']} "
                         "image(s); its figures cover those" + ("" if row.get("calls") else ", and it has no timing"))
        lines.append(f"{row['engine']} {row['precision']}: timed region = {row.get('timed_region')}; "
                     f"first call {_cell(row, 'first_call_ms', '{:.1f}')} ms; compile / export {row['compile_s']:.1f} s "
                     f"({row.get('artifact')})")
        if row.get("split_s") and row.get("images"):
            lines.append(f"{row['engine']} {row['precision']}: {format_split(row['split_s'], row['images'], c)}")
        if row.get("model_res_dice") is not None:
            # Five decimals: the two figures usually differ past the table's fourth.
            lines.append(f"{row['engine']} {row['precision']}: dice {row['dice']:.5f} at original size, "
                         f"{row['model_res_dice']:.5f} at the model's size (micro {row['micro_dice']:.5f} / "
                         f"{row['model_res_micro_dice']:.5f})")
        if row.get("outputs_s") is not None:
            lines.append(f"{row['engine']} {row['precision']}: per-image outputs took {row['outputs_s']:.1f} s in a "
                         "background thread, overlapped with the engine and included in e2e fps")
        if row.get("failed_images"):
            lines.append(f"{row['engine']} {row['precision']}: {len(row['failed_images'])} image(s) skipped: "
                         + "; ".join(f["error"] for f in row["failed_images"][:3]))
    for skip in report.get("skipped", []):
        lines.append(f"{'FAILED' if skip.get('failed') else 'skipped'} {skip['engine']} {skip['precision']}: "
                     f"{skip['reason']}")
    lines.extend(rank_lines(report))  # runs across ranks (torchrun) only
    lines.extend(config_notes(c))
    if report.get("partial"):
        lines.append("PARTIAL: the run was interrupted (Ctrl-C): rows it never reached are missing, and a row it cut "
                     "short says INTERRUPTED above")
    if worst:
        lines.append(worst)
    lines.extend(_written(report, json_path))
    return "\n".join(lines)


def format_split(split: dict, images: int, config: dict) -> str:
    """Where a row's end-to-end time went, in ms per image: the main thread's parts (they add up to e2e), then the
    decode threads' (in parallel with them) and the reference's (left out of e2e)."""
    def ms(key):
        return f"{split.get(key, 0.0) * 1000.0 / images:.2f}"

    main = ", ".join(f"{key} {ms(key)}" for key in SPLIT_MAIN if key != "nvjpeg" or split.get(key))
    workers = config.get("workers")
    threads = f"{workers} decode threads" if workers else "the decode threads"
    ranks = (config.get("distributed") or {}).get("world_size")
    unit = (f"rank-ms per image (summed over {ranks} ranks; each rank's main-thread parts add up to its e2e)"
            if ranks else "ms per image")
    where = "main thread" if ranks else "main thread, adds up to e2e"
    text = (f"{unit}: {main} ({where}); decode {ms('decode')} + resize {ms('resize')} "
            f"in {threads} ({config.get('decode', 'exact')} path, in parallel)")
    if split.get("reference"):
        text += f"; reference {ms('reference')} (not in e2e)"
    return text


def _reference_where(config: dict) -> str:
    where = config.get("reference") or "cpu"
    if where == "cpu":
        return "the CPU"
    return f"{where} ({'TF32' if where.startswith('cuda') else 'HF32'} off)"


def _random_prediction(rows: list[dict]) -> str:
    """Why random weights give the same dice with any architecture: they predict one class nearly everywhere."""
    fg = rows[0]["per_image"]["fg_pred"] if rows else []
    if not fg:
        return ""
    share = sum(fg) / len(fg)
    if 0.02 < share < 0.98:
        return f" (the untrained network marks {share:.1%} of pixels as car)"
    what = "car" if share >= 0.98 else "background"
    return (f" (the untrained network marks {share:.1%} of pixels as car: it predicts '{what}' nearly everywhere, so "
            "any untrained model scores the same dice, set by how much of each image the car covers)")


def _written(report: dict, json_path: str | None) -> list[str]:
    """Where the run's files went, so nobody has to guess."""
    out, lines = report.get("outputs") or {}, []
    if out.get("folder"):
        lines.append(f"wrote {out['files']} mask / overlay file(s) to {out['folder']}")
    if out.get("submission"):
        lines.append(f"wrote the submission ({out['submission_rows']} rows) to {out['submission']}")
    if out.get("csv"):
        lines.append(f"wrote the per-image CSV ({out['csv_rows']} rows) to {out['csv']}")
    for path in report.get("plots") or []:
        lines.append(f"wrote plot {path}")
    if json_path:
        lines.append(f"wrote the JSON report to {json_path}")
    return lines


def format_worst(records: list[dict], count: int = 5) -> str:
    """The `count` scored images with the lowest dice per engine row, worst first, so the images to look at are
    named."""
    rows: dict = {}
    for r in records:
        if r["dice"] is not None:
            rows.setdefault((r["engine"], r["precision"]), []).append(r)
    worst = [w for group in rows.values() for w in sorted(group, key=lambda r: r["dice"])[:count]]
    if not worst:
        return ""
    lines = [f"worst {len(worst)} image(s) by dice ({worst[0]['resolution']} resolution):"]
    for r in worst:
        lines.append(f"  {r['engine']} {r['precision']}  {r['id']}  dice {r['dice']:.4f}  IoU {r['iou']:.4f}  "
                     f"foreground true {r['fg_true']:.3f} / predicted {r['fg_pred']:.3f}")
    return "\n".join(lines)


def write_json(path: str, report: dict) -> None:
    """The report as JSON: the same numbers as the table, as numbers (NaN / inf written as null)."""
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    write_atomic(path, json.dumps(clean(report), indent=2) + "\n")
