"""Standard output and error that may be unusable: closed (`>&-`), full (`/dev/full`), a pipe whose reader has gone,
a terminal that hung up. A write there never raises; the first failure is kept, so that the report can say it and
the exit status count it; and no file the run opens can take a closed stream's descriptor. (A character the
encoding lacks is escaped by utils/files.py's escape_streams.)"""
from __future__ import annotations

import errno
import os
import signal
import sys

# An escape sequence in a file name would drive the terminal (colours, its title, worse): ESC and the C1 codes are
# written as text. Carriage returns stay: the progress bars redraw with them.
INERT = {code: f"\\x{code:02x}" for code in [0x1b, *range(0x80, 0xa0)]}


class Guarded:
    """A standard stream whose write errors are kept in `error`, never raised, and whose text cannot drive the terminal
    (INERT). After the first error its descriptor points at /dev/null, so what is still buffered (and the interpreter's
    last flush at exit) cannot fail again."""

    def __init__(self, stream, error: OSError | None = None):
        self._stream = stream
        self.error = error

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text.translate(INERT))
        except UnicodeError:  # the text, not the stream: escape_streams' concern; the stream stays as it is
            raise
        except (OSError, ValueError) as exc:
            self._lost(exc)
            return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError) as exc:
            self._lost(exc)

    def _lost(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc if isinstance(exc, OSError) else OSError(errno.EBADF, str(exc))
        to_devnull(self._stream)

    def __getattr__(self, name: str):  # fileno, isatty, encoding, buffer...: the stream's own
        return getattr(self._stream, name)


def to_devnull(stream) -> None:
    """Point `stream`'s descriptor at /dev/null and drop what it still buffers there; quietly, whatever it is."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, stream.fileno())
        finally:
            os.close(null)
        stream.flush()
    except (OSError, ValueError, AttributeError):
        pass


def reserve_descriptors() -> set[int]:
    """Open /dev/null on each of descriptors 0-2 that is closed, so that no file the run opens takes its number (a
    line meant for stderr would land in a result file); the numbers that were closed."""
    closed = set()
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.add(fd)
    for fd in sorted(closed):
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
    return closed


def guard() -> None:
    """For the command line, first thing: closed descriptors reserved, sys.stdout and sys.stderr guarded (one closed
    at start is kept as a closed stream's error), and a file past the size limit (`ulimit -f`) made a write error
    that the writers name (EFBIG) instead of a kill (SIGXFSZ)."""
    closed = reserve_descriptors()
    for name, fd in (("stdout", 1), ("stderr", 2)):
        stream, error = getattr(sys, name), None
        if stream is None or fd in closed:
            stream, error = open(os.devnull, "w"), OSError(errno.EBADF, f"{name} is closed")
        setattr(sys, name, Guarded(stream, error))
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def stdout_error() -> OSError | None:
    """What went wrong on a guarded stdout (None: nothing, or not guarded); flushed first, so nothing is pending."""
    sys.stdout.flush()
    return getattr(sys.stdout, "error", None)


def exit_status(status: int) -> int:
    """The exit status of a command whose only output went to stdout (`--help`): 141 for a closed pipe, as `cat`
    ends under `| head`; 1 and an `error:` line for any other failure; else `status`."""
    if sys.stdout is None:
        return status
    error = stdout_error()
    if error is None or status:
        return status
    if isinstance(error, BrokenPipeError):
        return 141
    print(f"error: cannot write to stdout: {error.strerror or error}", file=sys.stderr)
    return 1
