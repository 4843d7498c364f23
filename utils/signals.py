"""How a run stops on a signal: the first raises KeyboardInterrupt and the run reports what finished; later ones are
only counted; a `held()` section keeps a signal from cutting it in half and delivers it at its end."""
from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

MESSAGE = b"\ninterrupted: writing the partial report and its files first (Ctrl-\\ kills the run)\n"


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@dataclass
class Section:
    """A `held()` section: `caught` says whether a signal arrived inside it."""

    caught: bool = False


class Interrupts:
    """The signals of one run (SIGINT, and those `catch` adds): the first raises KeyboardInterrupt, or, inside a
    `held()` section, is kept for the section's end; every later one is only counted, so a second Ctrl-C can never
    cut the partial report, its files or the exit status. After `hold()` every signal is only counted.

    Used as a context manager it installs its handler (main thread only) and restores the previous ones at the end;
    with `restore=False` (a command line about to exit) a signal after the block stays counted, never a traceback.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGINT,), restore: bool = True):
        self.count = 0
        self.received: list[int] = []  # every signal, in order of arrival
        self.stopping = False  # the run has been told to stop: a signal was raised or kept
        self.finishing = False
        self.depth = 0  # nested held() sections
        self.pending: Section | None = None  # the held section a signal landed in
        self.said = False
        self.restore = restore
        self._wanted = signals
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Interrupts:
        global _active
        for signum in self._wanted:
            self.catch(signum)
        self._outer, _active = _active, self
        return self

    def __exit__(self, *exc) -> None:
        global _active
        if not self.restore:
            self.hold()
            return
        _active = self._outer
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def catch(self, signum: int) -> None:
        """Handle `signum` as this run's too (torchrun's SIGTERM, say); nothing outside the main thread."""
        if _main_thread() and signum not in self._previous:
            self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        self.count += 1
        self.received.append(signum)
        if self.count > 1 and not self.said:
            self.said = True
            try:  # os.write, not print: a handler that prints can re-enter a half-written stderr buffer
                os.write(2, MESSAGE)
            except OSError:
                pass
        if self.stopping or self.finishing:
            return
        if self.depth:
            self.pending = self.pending or Section(True)
            return
        self.stopping = True
        raise KeyboardInterrupt

    def hold(self) -> None:
        """From now on signals are only counted: the report and its files are being written."""
        self.finishing = True

    @contextmanager
    def held(self, deliver: bool = True) -> Iterator[Section]:
        """A section no signal may cut in half: a signal inside is kept (`caught`) and, with `deliver`, raised as
        KeyboardInterrupt when the outermost section ends; without it the caller reads `caught` and stops later."""
        section = Section()
        self.depth += 1
        try:
            yield section
        finally:
            self.depth -= 1
            kept, self.pending = (self.pending, None) if self.depth == 0 else (None, self.pending)
        if kept is not None:
            section.caught = True
            self.stopping = True
            if deliver:
                raise KeyboardInterrupt


_active: Interrupts | None = None


@contextmanager
def held(deliver: bool = True) -> Iterator[Section]:
    """`Interrupts.held` of the run in progress; outside one (a library call, a test), a SIGINT in the block is kept
    and raised at its end. Signals reach the main thread only: elsewhere the block runs as it is."""
    if not _main_thread():
        yield Section()
        return
    if _active is not None:
        with _active.held(deliver) as section:
            yield section
        return
    with Interrupts() as run, run.held(deliver) as section:
        yield section
