"""The one exception type the CLI turns into a clear message and exit status 1, and how Ctrl-C stops a run once."""
from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class SampleError(Exception):
    """A problem with the user's input or environment; the message says what was wrong and what to do."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Interrupts:
    """Ctrl-C for one run: the first SIGINT raises KeyboardInterrupt (the run stops and reports what it has); every
    later one is only counted, so a second Ctrl-C can never cut the partial report, its files or exit status 130."""

    def __init__(self):
        self.count = 0
        self.said = False

    def first(self, signum, frame) -> None:
        self.count += 1
        signal.signal(signal.SIGINT, self.later)  # before raising: no window in which a second one raises too
        raise KeyboardInterrupt

    def later(self, signum, frame) -> None:
        self.count += 1
        if self.count > 1 and not self.said:
            self.said = True
            try:  # os.write, not print: a handler that prints can re-enter a half-written stderr buffer
                os.write(2, b"\ninterrupted: writing the partial report and its files first (Ctrl-\\ kills the run)\n")
            except OSError:
                pass

    def hold(self) -> None:
        """From now on Ctrl-C is only counted: the report and its files are being written."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self.later)


@contextmanager
def interrupts(restore: bool = True) -> Iterator[Interrupts]:
    """Install the run's Ctrl-C handling for the block (main thread only), then restore the previous handler; with
    `restore=False` (a command line about to exit) a Ctrl-C after the block stays counted, never a traceback."""
    latch = Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield latch
        return
    previous = signal.signal(signal.SIGINT, latch.first)
    try:
        yield latch
    finally:
        signal.signal(signal.SIGINT, previous if restore else latch.later)
