"""Files on disk: where the cache lives, opening input files that may not be regular files, checking (and claiming)
result destinations before the run, writing results atomically."""
from __future__ import annotations

import codecs
import contextlib
import errno
import fnmatch
import os
import re
import stat
import sys
import tempfile

from utils.errors import SampleError

LOCK_NAME = ".unet-sample.lock"  # in an output folder while a run writes there (holds the run's pid)


def default_cache_dir() -> str:
    """Where generated data and compiled engines live: $UNET_SAMPLE_CACHE, else $XDG_CACHE_HOME/unet-sample,
    else ~/.cache/unet-sample."""
    return os.environ.get("UNET_SAMPLE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "unet-sample")


def folder_problem(folder: str) -> str | None:
    """Why files cannot be created in `folder` (made when missing): a read-only mount, no permission, a full disk;
    None when they can (one empty file is made and removed to know)."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return f"{folder}: {exc.strerror or exc}"
    return None


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link"),
                       (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "a special file"


def file_kind(path: str) -> str | None:
    """None for a regular file (or a link to one); else what `path` is, in words ('a named pipe (FIFO)', ...)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) else _kind(mode)


def open_regular(path: str, what: str = "file"):
    """Open `path` for binary reading only if it is a regular file, and never wait on it: a named pipe, a device, a
    socket or a folder that carries an image's name is refused (SampleError), not opened and waited on forever."""
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise SampleError(f"{what} {path} is {_kind(mode)}, not a regular file")
        # O_NONBLOCK: should the path become a FIFO between the stat and the open, the open still returns at once.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise SampleError(f"cannot open {what} {path}: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise SampleError(f"{what} {path} is {_kind(mode)}, not a regular file")
        os.set_blocking(fd, True)  # a regular file: reads behave as usual
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_target(path: str, *, folder: bool, flag: str) -> None:
    """Refuse a destination that is a symbolic link, a device (/dev/null, /dev/stdout), a FIFO or a socket, or a file
    where a folder is asked for and the reverse: a run writes regular files only and never replaces, or writes
    through, anything else. A link to a folder is fine for a folder: files go inside it and the link stays."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return  # absent, or under a file or an unreadable folder: check_destination says so when it creates it
    if stat.S_ISLNK(mode):
        if folder and os.path.isdir(path):
            return
        raise SampleError(f"{flag} {path} is a symbolic link (to {os.readlink(path)}); a run never replaces or writes "
                          "through a link: give the path of a regular file")
    if folder and not stat.S_ISDIR(mode):
        raise SampleError(f"{flag} {path} is {_kind(mode)}, not a folder; give a folder path")
    if not folder and stat.S_ISDIR(mode):
        raise SampleError(f"{flag} {path} is a folder; give a file path")
    if not folder and not stat.S_ISREG(mode):
        raise SampleError(f"{flag} {path} is {_kind(mode)}, not a regular file; a run never writes into one: give "
                          "the path of a regular file")


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _writes(real: str, folder: bool, names: tuple[str, ...], other: str) -> bool:
    """Whether the output at `real` (a file, or a folder that gets files named like `names`) writes the file `other`."""
    if not folder:
        return real == other
    return os.path.dirname(other) == real and any(fnmatch.fnmatchcase(os.path.basename(other), n)
                                                  for n in names + (LOCK_NAME,))


def check_outputs(outputs: list[tuple[str, str, bool, tuple[str, ...]]], inputs: list[tuple[str, str]]) -> None:
    """Before the run, refuse outputs that alias something: a link or special file (check_target), two outputs that
    write one file, and an output among the run's inputs.

    `outputs`: (flag, path, is_folder, patterns of the file names written into a folder); `inputs`: (what, path) for
    each input folder or file (images, masks, calibration images, the checkpoint, the engine cache). An output may not
    be inside an input folder nor be an input file; an output folder may not get a file named like an input file in it.
    """
    for flag, path, folder, _ in outputs:
        check_target(path, folder=folder, flag=flag)
    real = [(flag, path, os.path.realpath(path), folder, names) for flag, path, folder, names in outputs]
    for i, (flag_a, path_a, a, folder_a, names_a) in enumerate(real):
        for flag_b, path_b, b, folder_b, names_b in real[i + 1:]:
            if a == b and folder_a != folder_b:
                raise SampleError(f"{flag_a} {path_a} and {flag_b} {path_b} are the same path; give each its own")
            if (not folder_a and _writes(b, folder_b, names_b, a)) or \
                    (not folder_b and _writes(a, folder_a, names_a, b)):
                raise SampleError(f"{flag_a} {path_a} and {flag_b} {path_b} would write the same file "
                                  f"({a if not folder_a else b}); give each output its own path")
    for what, given in inputs:
        if not given:
            continue
        source = os.path.realpath(given)
        is_folder = not os.path.isfile(source)  # a path not there yet (the engine cache) is a folder to keep out of
        for flag, path, target, folder, names in real:
            if (is_folder and _inside(target, source)) or (not is_folder and _writes(target, folder, names, source)):
                where = f"inside the {what} folder {given}" if is_folder else f"would overwrite the {what} {given}"
                raise SampleError(f"{flag} {path} is {where}; a run never writes among its inputs: choose a path "
                                  "outside them")


class FolderInUse(SampleError):
    """Another run holds the folder's lock."""


class FolderLock:
    """An exclusive lock on an output folder for one run: `flock` on <folder>/.unet-sample.lock, which holds the
    run's pid. The kernel drops it when the process ends, a crash included; `release` also removes the file.
    Where fcntl is missing (not a POSIX system) no lock is taken."""

    held: set[str] = set()  # folders this process holds (--output and --plots may name one folder)

    def __init__(self, folder: str, flag: str):
        self.folder, self.flag = os.path.realpath(folder), flag
        self.path = os.path.join(self.folder, LOCK_NAME)
        self.fd: int | None = None

    def __enter__(self) -> FolderLock:
        try:
            import fcntl
        except ImportError:
            return self
        if self.folder in FolderLock.held:
            return self
        while self.fd is None:
            try:
                flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
                fd = os.open(self.path, flags, 0o644)
            except OSError as exc:
                raise self._cannot(exc) from None
            try:
                self.fd = self._claim(fd, fcntl)
            finally:
                if self.fd is None:
                    os.close(fd)
        FolderLock.held.add(self.folder)
        return self

    def _claim(self, fd: int, fcntl) -> int | None:
        """Lock the open lock file and write our pid in it: `fd`, or None when the file was stale (retry)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.read(fd, 32).decode(errors="replace").strip()
            except OSError:
                holder = ""
            who = f"pid {holder}" if holder.isdigit() else "its pid is not written yet"
            raise FolderInUse(f"{self.flag} folder {self.folder} is in use by another run ({who}); wait for it to "
                              "end, or choose another folder") from None
        except OSError as exc:  # a file system without locks (ENOLCK), say: not another run, and none can hold it
            with contextlib.suppress(OSError):
                if os.fstat(fd).st_size == 0:
                    os.unlink(self.path)
            raise self._cannot(exc) from None
        try:
            # The holder before us removes the file as it releases it: a lock on that old file guards nothing.
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                return None
            mine = os.fstat(fd)
            if (current.st_dev, current.st_ino) != (mine.st_dev, mine.st_ino):
                return None
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError as exc:  # a full disk: the file is ours (locked), so it goes
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            raise self._cannot(exc) from None
        return fd

    def _cannot(self, exc: OSError) -> SampleError:
        full = exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
        return SampleError(f"cannot lock {self.flag} folder {self.folder} (its lock file {self.path}): "
                           f"{exc.strerror or exc}; {'free some space there, or ' if full else ''}choose another "
                           "folder")

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)  # while still locked: a run waiting on this file then sees it is stale
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None
        FolderLock.held.discard(self.folder)


def check_destination(path: str, *, folder: bool, overwrite: bool, flag: str, locks=None) -> None:
    """Fail before the run when `path` cannot be written, is a link or special file, or holds earlier results and
    --overwrite is off. With `locks` (a contextlib.ExitStack) a folder is also locked for the run (FolderLock)."""
    check_target(path, folder=folder, flag=flag)
    if not folder and os.path.exists(path) and not overwrite:
        raise SampleError(f"{flag} file {path} exists; pass --overwrite or choose another path")
    target = path if folder else os.path.dirname(os.path.abspath(path))
    created: list[str] = []
    try:
        try:
            _make_folders(target, created)
        except OSError as exc:
            raise SampleError(f"cannot create {flag} folder {target}: {exc.strerror or exc}") from None
        if not os.access(target, os.W_OK | os.X_OK):
            raise SampleError(f"cannot write to {target} ({flag}): permission denied")
        if folder and locks is not None:
            locks.callback(_remove_empty, list(created))  # after the lock's release (LIFO): a run that wrote nothing
            locks.enter_context(FolderLock(path, flag))
    except FolderInUse:
        raise  # the folder is another run's now, whoever made it: nothing of it is ours to remove
    except BaseException:
        _remove_empty(created)  # only folders this run made, and only while empty
        raise
    if folder and not overwrite and [f for f in os.listdir(path) if f != LOCK_NAME]:
        raise SampleError(f"{flag} folder {path} exists and is not empty; pass --overwrite or choose another folder")


def _remove_empty(created: list[str]) -> None:
    """Remove the folders a run made that are still empty at its end (interrupted before its first file)."""
    for made in reversed(created):
        with contextlib.suppress(OSError):
            os.rmdir(made)


def _make_folders(folder: str, created: list[str]) -> None:
    """makedirs that notes in `created` each folder this call made (one another run made at the same moment is not
    noted: its FileExistsError says so)."""
    folder = os.path.abspath(folder)
    if os.path.isdir(folder):
        return
    parent = os.path.dirname(folder)
    if parent != folder:
        _make_folders(parent, created)
    try:
        os.mkdir(folder)
        created.append(folder)
    except FileExistsError:
        if not os.path.isdir(folder):
            raise


def write_atomic(path: str, data: str | bytes) -> None:
    """Write text or bytes to a temporary file beside `path`, then rename: a reader never sees half a file.

    A file system error becomes a SampleError naming the path, for every result file alike. A link or special file
    at `path` is never replaced. Text is written as UTF-8 whatever the locale, file names in it as `shown` writes them.
    """
    try:
        _write_atomic(path, data if isinstance(data, bytes) else data.encode("utf-8", _name_errors()))
    except OSError as exc:
        raise SampleError(f"cannot write {path}: {exc.strerror or exc}") from None


def _write_atomic(path: str, data: str | bytes) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        raise SampleError(f"cannot write {path}: it is {_kind(mode)}, which a run never replaces; remove it or choose "
                          "another path")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; outputs are meant to be shared like any other
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# A file name's byte that is not UTF-8 reaches Python as a lone surrogate U+DC80-U+DCFF (PEP 383): in text it is written
# `\xNN`, on disk it stays the byte it was (docs/outputs.md#file-names-that-are-not-utf-8).
NAME_ERRORS = "unet_sample.names"


def _escape(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    out = []
    for char in exc.object[exc.start:exc.end]:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:
            code -= 0xDC00  # the name's own byte
        out.append(f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
    return "".join(out), exc.end


def _name_errors() -> str:
    """The codec error handler for names, registered on first use (nothing happens at import)."""
    try:
        codecs.lookup_error(NAME_ERRORS)
    except LookupError:
        codecs.register_error(NAME_ERRORS, _escape)
    return NAME_ERRORS


# Control characters but tab and newline (a carriage return, a terminal's escape sequences, C1 codes): a name holding
# one would cut a CSV row or drive the terminal, so it is written `\xNN` too.
CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def shown(text: str) -> str:
    """`text` (a file name, or a path or message holding one) as valid, inert Unicode: each byte of a name that is not
    UTF-8, and each control character but tab and newline, becomes `\\xNN` (`car\\xff_01.jpg`), as in every result
    file, the report and the error lines."""
    if not text.isascii():
        text = text.encode("utf-8", _name_errors()).decode("utf-8")
    return CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def escape_streams() -> None:
    """stdout and stderr write such bytes as `shown` does, and a character their encoding lacks (a Latin-1 or ASCII
    locale) as a backslash escape too: a name in a line never raises UnicodeEncodeError there."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors=_name_errors())
        except (AttributeError, ValueError, OSError):
            pass  # not a text stream (a test's StringIO), or closed (utils/streams.py)
