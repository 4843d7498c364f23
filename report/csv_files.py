"""Machine-readable tables of a run: the per-image CSV and the Kaggle Carvana submission (both written atomically)."""
from __future__ import annotations

import csv
import io

from utils.files import write_atomic

PER_IMAGE_COLUMNS = ("engine", "precision", "id", "resolution", "width", "height", "dice", "iou", "fg_true", "fg_pred",
                     "batch_ms")


def _write_rows(path: str, header: tuple[str, ...], rows: list) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue())


def per_image_records(rows: list[dict], resolution: str, image_size: tuple[int, int]) -> list[dict]:
    """One record per image and engine row, in run order, from the rows' per-image lists; width / height are the
    size the image was scored at (the model's, or its own at the original resolution)."""
    records = []
    for row in rows:
        p = row["per_image"]
        for i, image_id in enumerate(p["id"]):
            w, h = (p["width"][i], p["height"][i]) if resolution == "original" else image_size
            records.append({"engine": row["engine"], "precision": row["precision"], "id": image_id,
                            "resolution": resolution, "width": w, "height": h, "dice": p["dice"][i], "iou": p["iou"][i],
                            "fg_true": p["fg_true"][i], "fg_pred": p["fg_pred"][i], "batch_ms": p["batch_ms"][i]})
    return records


def write_per_image_csv(path: str, records: list[dict]) -> None:
    """One row per image and engine row, in run order; empty cells where an image has no mask."""
    rows = [["" if r[c] is None else r[c] for c in PER_IMAGE_COLUMNS] for r in records]
    _write_rows(path, PER_IMAGE_COLUMNS, rows)


def write_submission(path: str, rows: list[tuple[str, str]]) -> None:
    """Kaggle Carvana's submission: header `img,rle_mask`, then the image file name and its run-length encoding."""
    _write_rows(path, ("img", "rle_mask"), rows)
