"""What `--engine auto`'s probe says about its choice: why the winner won, in words."""
from __future__ import annotations

from utils.timing import median_min_calls


def _name(entry: dict, threads: int | None) -> str:
    """The engine, with its thread count where that is not the winner's."""
    return entry["engine"] + (f" with {entry['threads'] or 'default'} threads" if entry["threads"] != threads else "")


def reason(ranked: list, runner: dict | None, near_tie: bool, precision: str) -> str:
    """Why the winner won, in words: by how much, over how many interleaved calls; a spread leader passed over; a
    near tie named as one, with both medians. `ranked`: pipeline.probe's finalists, the winner first."""
    best, lowest = ranked[0], min(ranked, key=lambda f: f.median)
    ms = best.median
    if lowest is best:
        said = f"fastest that passed the {precision} bar: {ms:,.1f} ms per batch"
    else:
        low, high = lowest.interval
        said = (f"steadiest of the fastest that passed the {precision} bar: {ms:,.1f} ms per batch; "
                f"{_name(lowest.entry, best.threads)} had a lower median but its calls spread widely "
                f"({low:,.1f}-{high:,.1f} ms holds its median, 95 %)")
    if runner is not None and near_tie:
        calls = len(best.times)
        why = f"their medians' 95 % intervals still overlap after {calls} interleaved calls each" \
            if calls >= median_min_calls() else f"{calls} calls each are too few for 95 % intervals to part them"
        said += (f"; near tie: {best.entry['engine']} {ms:,.1f} ms vs {_name(runner, best.threads)} "
                 f"{runner['median_ms']:,.1f} ms, {why}")
    elif runner is not None:
        said += f", {runner['median_ms'] / ms:.2f}x faster than {_name(runner, best.threads)}"
    if len(ranked) > 1 and not near_tie:
        said += f" (medians of {len(best.times)} interleaved calls)"
    return said
