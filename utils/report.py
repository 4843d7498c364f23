"""The report: a table on stdout, the same numbers as JSON (written atomically)."""
from __future__ import annotations

import json
import math
import os
import tempfile

from utils.errors import SampleError

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
    text = f"{host['cpu']}, {host['cpu_count']} cores{isa}"
    return text + (f"; {host['accelerator']}" if host.get("accelerator") else "")


def format_report(report: dict) -> str:
    """The human-readable report: what was run on what, the table, and the notes that qualify the numbers."""
    c = report["config"]
    lines = [
        f"model      {c['model']} ({c['parameters']:,} parameters, {c['n_classes']} classes)",
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
        lines.append("note: random weights (no --pth): dice measures nothing; cosine and speed are still valid")
    where = ("at each image's original size (logits resized bilinearly, Kaggle's metric)"
             if c.get("eval_resolution") == "original" else f"at the model's {c['image_size'][0]}x{c['image_size'][1]}")
    lines.append(f"dice = mean over images of per-image dice (Pytorch-UNet's), scored {where}; micro dice pools all "
                 "pixels; IoU = mean per-image IoU; cos = per-sample cosine vs eager fp32 on the CPU")
    lines.append("fidelity: worst cosine vs the precision's bar (fp32 0.99999, fp16/bf16 0.999, int8 0.99; LOW = below); "
                 "dice delta = dice - eager fp32 dice on the same images (at model size); "
                 "artifact: compiled now or loaded from the cache")
    for row in report["rows"]:
        lines.append(f"{row['engine']} {row['precision']}: timed region = {row.get('timed_region')}; "
                     f"first call {_cell(row, 'first_call_ms', '{:.1f}')} ms; compile / export {row['compile_s']:.1f} s "
                     f"({row.get('artifact')})")
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
    if report.get("partial"):
        lines.append("PARTIAL: the run was interrupted; the rows above are the ones that finished")
    return "\n".join(lines)


def write_atomic(path: str, data: str | bytes) -> None:
    """Write text or bytes to a temporary file beside `path`, then rename: a reader never sees half a file.

    A file system error becomes a SampleError naming the path, for every result file alike.
    """
    try:
        _write_atomic(path, data)
    except OSError as exc:
        raise SampleError(f"cannot write {path}: {exc.strerror or exc}") from None


def _write_atomic(path: str, data: str | bytes) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; outputs are meant to be shared like any other
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
