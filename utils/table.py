"""Machine-readable tables of a run: the per-image CSV and the Kaggle Carvana submission (both written atomically)."""
from __future__ import annotations

import csv
import io

from utils.report import write_atomic

PER_IMAGE_COLUMNS = ("engine", "precision", "id", "resolution", "width", "height", "dice", "iou", "fg_true", "fg_pred",
                     "batch_ms")


def _write_rows(path: str, header: tuple[str, ...], rows: list) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue())


def write_per_image_csv(path: str, records: list[dict]) -> None:
    """One row per image and engine row, in run order; empty cells where an image has no mask."""
    rows = [["" if r[c] is None else r[c] for c in PER_IMAGE_COLUMNS] for r in records]
    _write_rows(path, PER_IMAGE_COLUMNS, rows)


def write_submission(path: str, rows: list[tuple[str, str]]) -> None:
    """Kaggle Carvana's submission: header `img,rle_mask`, then the image file name and its run-length encoding."""
    _write_rows(path, ("img", "rle_mask"), rows)


def format_worst(records: list[dict]) -> str:
    """The worst-scored images as lines under the table, so the images to look at are named."""
    if not records:
        return ""
    lines = [f"worst {len(records)} image(s) by dice ({records[0]['resolution']} resolution):"]
    for r in records:
        lines.append(f"  {r['engine']} {r['precision']}  {r['id']}  dice {r['dice']:.4f}  IoU {r['iou']:.4f}  "
                     f"foreground true {r['fg_true']:.3f} / predicted {r['fg_pred']:.3f}")
    return "\n".join(lines)
