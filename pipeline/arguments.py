"""argparse types of the command line: whole numbers in bounds, numbers for which a test holds, sorted comma lists,
and paths that must not be empty. Each turns a bad value into a usage error that says what was wrong."""
from __future__ import annotations

import argparse
from typing import Callable


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def positive_int(text: str) -> int:
    value = whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def at_most(limit: int, why: str, low: int = 1) -> Callable[[str], int]:
    """An argparse type: an int from `low` to `limit`; past it, a usage error that says the limit and why."""
    def parse(text: str) -> int:
        value = whole_number(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        if value > limit:
            raise argparse.ArgumentTypeError(f"must be at most {limit} ({why}), got {value}")
        return value
    return parse


def path_to(what: str) -> Callable[[str], str]:
    """An argparse type for a path flag. An empty path (`--json ''`, a shell variable left unset) would otherwise
    silently change the run (no report written, dice skipped, the default cache used, random weights): it is a usage
    error that says what to give."""
    def given(text: str) -> str:
        if not text:
            raise argparse.ArgumentTypeError(f"the path is empty (a shell variable left unset?); give {what}, or "
                                             "leave the flag out")
        return text

    return given


def number_in(inside: Callable[[float], bool], bounds: str, what: str = "a number") -> Callable[[str], float]:
    """An argparse type: a float for which `inside` holds, else a usage error that says `bounds`."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not inside(value):
            raise argparse.ArgumentTypeError(f"{bounds}, got {text}")
        return value
    return parse


seconds = number_in(lambda v: 0 <= v <= 86400, "must be from 0 to 86400 s (a day)", "seconds")
positive_float = number_in(lambda v: 0 < v < float("inf"), "must be > 0")


def sorted_list(convert: Callable[[str], object], example: str, inside: Callable,
                bounds: str) -> Callable[[str], tuple]:
    """An argparse type: a comma list of `convert`ed values, sorted, each once, each `inside` (else `bounds`)."""
    def parse(text: str) -> tuple:
        try:
            values = sorted({convert(part) for part in text.split(",") if part.strip()})
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma list such as {example}, got {text!r}") from None
        if not values or not all(inside(v) for v in values):
            raise argparse.ArgumentTypeError(f"{bounds}, got {text!r}")
        return tuple(values)
    return parse


percentiles = sorted_list(float, "50,90,99", lambda v: 0 < v <= 100, "percentiles lie in (0, 100]")
concurrency = sorted_list(int, "1,2,4", lambda v: 1 <= v <= 64, "requests in flight run from 1 to 64 (threads of their "
                          "own)")
