"""How a run stops on a signal (Ctrl-C, SIGTERM, SIGHUP): the first raises KeyboardInterrupt and the run reports what
finished, then exits 128 + its number; later ones are only counted; a `held()` section keeps a signal from cutting it
in half and delivers it at its end.
SIGQUIT keeps its default (a kill, with a core dump) and SIGKILL cannot be caught."""
from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

MESSAGE = b"\ninterrupted: writing the partial report and its files first (Ctrl-\\ kills the run)\n"
# What stops a run and keeps what finished: Ctrl-C, `kill` / `timeout` / a scheduler / `docker stop`, a lost terminal.
STOPPING = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class Arrivals:
    """The order signals came in. Python runs the handlers of signals pending together lowest number first (SIGINT
    before an earlier SIGTERM), but its C-level handler writes each number to the wakeup fd the moment it lands. (Two
    signals the kernel holds at once, while the process is not running, land lowest number first: no order is left.)"""

    def __init__(self):
        self.read, self.write = os.pipe()
        for fd in (self.read, self.write):
            os.set_blocking(fd, False)
        self.previous = signal.set_wakeup_fd(self.write, warn_on_full_buffer=False)

    @classmethod
    def open(cls) -> Arrivals | None:
        """None off the main thread, or where the platform has no such fd (then handlers' order stands)."""
        try:
            return cls() if _main_thread() else None
        except (AttributeError, OSError, ValueError):
            return None

    def drain(self) -> list[int]:
        """The signal numbers that came since the last call, in order."""
        data = b""
        while True:
            try:
                chunk = os.read(self.read, 512)
            except OSError:  # BlockingIOError: nothing more
                break
            if not chunk:
                break
            data += chunk
        return list(data)

    def close(self) -> None:
        try:
            signal.set_wakeup_fd(self.previous)
        except (OSError, ValueError):
            pass
        for fd in (self.read, self.write):
            os.close(fd)


@dataclass
class Section:
    """A `held()` section: `caught` says whether a signal arrived inside it."""

    caught: bool = False


class Interrupts:
    """The signals of one run (SIGINT, or the command line's STOPPING, and those `catch` adds): the first raises
    KeyboardInterrupt, or, inside a `held()` section, is kept for the section's end; every later one, of any kind, is
    only counted, so a second signal can never cut the partial report, its files or the exit status. After `hold()`
    every signal is only counted.

    Used as a context manager it installs its handler (main thread only) and restores the previous ones at the end;
    with `restore=False` (a command line about to exit) a signal after the block is ignored, never a traceback.
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
        self.final: int | None = None  # the exit status, fixed once the run's report is out (`close`)
        self._arrivals: Arrivals | None = None
        self._noted: dict[int, int] = {}  # signals read from the wakeup fd whose handler has not run yet

    def __enter__(self) -> Interrupts:
        global _active
        for signum in self._wanted:
            self.catch(signum)
        self._arrivals = Arrivals.open()
        self._outer, _active = _active, self
        return self

    def __exit__(self, *exc) -> None:
        global _active
        if not self.restore:
            self.hold()
            # The run is over and said: ignored, not counted, since Python puts the default handlers back as it shuts
            # down, and a SIGTERM then would kill a process whose results are all written.
            for signum in self._previous:
                signal.signal(signum, signal.SIG_IGN)
            return
        _active = self._outer
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
        if self._arrivals is not None:
            self._arrivals.close()
            self._arrivals = None

    def status(self, otherwise: int) -> int:
        """128 + the number of the first signal (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP), else `otherwise`."""
        return 128 + self.received[0] if self.received else otherwise

    def close(self, otherwise: int) -> int:
        """The run's exit status, fixed at the first call (the report is out): a later signal changes nothing."""
        if self.final is None:
            self.final = self.status(otherwise)
        return self.final

    @property
    def first(self) -> str | None:
        """The name of the signal that stopped the run ('SIGTERM'), or None."""
        return signal.Signals(self.received[0]).name if self.received else None

    def catch(self, signum: int) -> None:
        """Handle `signum` as this run's too (torchrun's SIGTERM, say); nothing outside the main thread, and not a
        signal the process was started ignoring (`nohup` ignores SIGHUP: the run must outlive the terminal)."""
        if _main_thread() and signum not in self._previous and signal.getsignal(signum) is not signal.SIG_IGN:
            self._previous[signum] = signal.signal(signum, self._handle)

    def _note_arrivals(self, signum: int) -> None:
        """Add to `received` what came since, in the order it came; `signum` itself when the fd had not seen it."""
        for came in self._arrivals.drain() if self._arrivals is not None else []:
            if came in self._previous:
                self.received.append(came)
                self._noted[came] = self._noted.get(came, 0) + 1
        if self._noted.get(signum):
            self._noted[signum] -= 1
        else:
            self.received.append(signum)

    def _handle(self, signum, frame) -> None:
        self.count += 1
        self._note_arrivals(signum)
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


_starting: Arrivals | None = None


def _exit_now(signum, frame) -> None:
    came = [s for s in (_starting.drain() if _starting is not None else []) if s in STOPPING]
    os._exit(128 + (came[0] if came else signum))


def exit_until_run() -> None:
    """For the command line, before its imports: until a run's Interrupts take over, a stopping signal ends the
    process at once, quietly, with 128 + its number: nothing has started, so nothing is lost (no traceback from
    inside an import)."""
    global _starting
    _starting = Arrivals.open()
    for signum in STOPPING:
        if signal.getsignal(signum) is not signal.SIG_IGN:  # ignored at start (nohup, a background job): kept so
            signal.signal(signum, _exit_now)


def pending() -> bool:
    """Whether the run in progress has been told to stop (a signal raised, or kept by a held section): for work that
    other threads do while the main thread waits inside one (a LoadGen test), so they can wind down."""
    run = _active
    return run is not None and (run.stopping or run.pending is not None)


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
