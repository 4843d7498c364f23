"""The one exception type the CLI turns into a clear message and exit status 1."""
from __future__ import annotations


class SampleError(Exception):
    """A problem with the user's input or environment; the message says what was wrong and what to do."""
