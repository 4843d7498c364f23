"""Machine-readable tables of a run: the per-image CSV and the Kaggle Carvana submission (both written atomically)."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, fields
from typing import Optional

from report.results import Row
from utils.files import shown, write_atomic


def _write_rows(path: str, header: tuple[str, ...], rows: list) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_atomic(path, shown(buffer.getvalue()))  # names as everywhere: a carriage return in one cannot cut a row


@dataclass(frozen=True)
class ImageRecord:
    """One image of one engine row, as the per-image CSV has it (PER_IMAGE_COLUMNS)."""

    engine: str
    precision: str
    id: str
    resolution: str
    width: int
    height: int
    dice: Optional[float]
    iou: Optional[float]
    fg_true: Optional[float]
    fg_pred: float
    batch_ms: float


def per_image_records(rows: list[Row], resolution: str, image_size: tuple[int, int]) -> list[ImageRecord]:
    """One record per image and engine row, in run order, from the rows' per-image lists; width / height are the
    size the image was scored at (the model's, or its own at the original resolution)."""
    records = []
    for row in rows:
        p = row.per_image
        for i, image_id in enumerate(p.id):
            w, h = (p.width[i], p.height[i]) if resolution == "original" else image_size
            records.append(ImageRecord(row.engine, row.precision, image_id, resolution, w, h, p.dice[i], p.iou[i],
                                       p.fg_true[i], p.fg_pred[i], p.batch_ms[i]))
    return records


PER_IMAGE_COLUMNS = tuple(f.name for f in fields(ImageRecord))


def write_per_image_csv(path: str, records: list[ImageRecord]) -> None:
    """One row per image and engine row, in run order; empty cells where an image has no mask."""
    rows = [["" if getattr(r, c) is None else getattr(r, c) for c in PER_IMAGE_COLUMNS] for r in records]
    _write_rows(path, PER_IMAGE_COLUMNS, rows)


def write_submission(path: str, rows: list[tuple[str, str]]) -> None:
    """Kaggle Carvana's submission: header `img,rle_mask`, then the image file name and its run-length encoding."""
    _write_rows(path, ("img", "rle_mask"), rows)
