"""What `--engine auto`'s probe says about its choice: why the winner won, and what its --auto_budget left out, in
words."""
from __future__ import annotations

from utils.timing import median_min_calls


def calls(n: int) -> str:
    """'1 call', '6 calls': the reason is read by people, who notice '1 calls'."""
    return f"{n} call" if n == 1 else f"{n} calls"


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
        made = len(best.times)
        why = f"their medians' 95 % intervals still overlap after {made} interleaved calls each" \
            if made >= median_min_calls() else \
            f"{calls(made)} each {'is' if made == 1 else 'are'} too few for 95 % intervals to part them"
        said += (f"; near tie: {best.entry['engine']} {ms:,.1f} ms vs {_name(runner, best.threads)} "
                 f"{runner['median_ms']:,.1f} ms, {why}")
    elif runner is not None:
        said += f", {runner['median_ms'] / ms:.2f}x faster than {_name(runner, best.threads)}"
    if len(ranked) > 1 and not near_tie:
        said += f" (medians of {len(best.times)} interleaved calls)"
    return said


def budget_note(budget, made: int) -> str:
    """What `budget` (a pipeline.probe_budget.ProbeBudget) cut short, for the reason: the finalists' rounds (after
    `made` calls each; 0: no finalist, nothing to say) and the engines it did not start, each with the time that was
    left against the build it expected. A person reading 'not tried' must see that the budget was too small for
    that engine, not that the engine is slow or was forgotten."""
    note = ""
    if budget.cut and made:
        note += f"; the --auto_budget of {budget.total_s:g} s ended the finalists' rounds after {calls(made)} each"
    if budget.not_tried:
        first = budget.skipped.get(budget.not_tried[0])
        note += f"; not tried: {', '.join(budget.not_tried)}"
        if first is not None:  # all were left out at once: the order is cheapest build first
            builds = [_build(name, budget.skipped.get(name)) for name in budget.not_tried]
            note += (f": too little budget left ({first[0]:.1f} s of the --auto_budget's {budget.total_s:g} s) to "
                     f"build {' or '.join(builds)}")
            if first[3] >= 0.05:
                note += f" and time {'it' if len(builds) == 1 else 'each'} (about {first[3]:.1f} s)"
    return note


def _build(name: str, skipped: tuple | None) -> str:
    """'openvino (about 3.9 s last time)', or '... typically' where this machine never built it (the prior)."""
    if skipped is None:
        return name
    return f"{name} (about {skipped[1]:.1f} s {'last time' if skipped[2] else 'typically'})"
