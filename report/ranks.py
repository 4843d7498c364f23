"""The report's lines for a run across ranks (torchrun): who ran what where, and how each row's speed adds up."""
from __future__ import annotations

from report.results import Report, Row, RunInfo


def _figure(value, fmt: str = "{:.3f}") -> str:
    return "-" if value is None else fmt.format(value)


def world_line(info: RunInfo) -> list[str]:
    """'ranks: 2 under torchrun (gloo) ...' with each rank's device, host, threads and share of the images."""
    world = info.distributed
    if not world:
        return []
    ranks = "; ".join(f"rank {r['rank']} {r['device']} on {r['host']}, {r['threads']} CPU thread(s), {r['images']} "
                      "image(s)" for r in world["ranks"])
    return [f"ranks: {world['world_size']} under torchrun on {world['nodes']} host(s) (backend {world['backend']}, "
            f"syncs over gloo, timeout {world['timeout_s']:g} s): {ranks}"]


def row_lines(rows: list[Row]) -> list[str]:
    """Per row: each rank's model fps and their sum (the table's fps), and the aggregate end-to-end fps."""
    lines = []
    for row in rows:
        if not row.ranks:
            continue
        fps = " + ".join(_figure(r.fps) for r in row.ranks)
        e2e = (f"{row.images} images / {row.e2e_s:.2f} s from the first rank's start to the last rank's end"
               if row.e2e_fps else "no image scored")
        lines.append(f"{row.label} on {len(row.ranks)} ranks: model fps {fps} = "
                     f"{_figure(row.timing and row.timing.fps)} (the table's fps: each rank timed its own device); "
                     f"e2e fps {_figure(row.e2e_fps)} = {e2e}; compile / load s "
                     + ", ".join(f"{r.compile_s:.1f}" for r in row.ranks) + f" ({row.artifact})")
    return lines


def rank_lines(report: Report) -> list[str]:
    """Every line this module adds to a report (none for one process)."""
    return world_line(report.info) + row_lines(report.rows)
