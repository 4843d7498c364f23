"""The one exception type the CLI turns into a clear message and exit status 1."""
from __future__ import annotations


class SampleError(Exception):
    """A problem with the user's input or environment; the message says what was wrong and what to do."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
