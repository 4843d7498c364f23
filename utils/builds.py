"""Folders a run builds in before it publishes them (engine artifacts, the generated data set).

Each build folder holds a `.builder` file (the builder's pid and host) that its builder keeps `flock`ed while it
lives, so the next run can tell a build whose builder was killed from a live one, and remove it: the kernel drops a
flock when its holder ends, however it ends, and unlike a pid it cannot be reused by another process.

A folder the sample creates in the cache (`engines/`, a generated set) holds a `CACHEDIR.TAG` (the Cache Directory
Tagging convention, https://bford.info/cachedir/): backup tools skip it, and it is what proves the folder the
sample's. The cache folder may be one the user chose (`--cache_dir .`), where a name alone proves nothing: only a
tagged folder is ever removed by name (`--clear_cache`, the sweep of a killed run's generated set).
"""
from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Iterator
from typing import Callable

BUILDER = ".builder"  # in a build folder while it is built; never part of what is published
CLAIM = ".unet-sample-claim-"  # a build folder's name for the instant before its .builder file is locked
CLAIM_LEFT_S = 3600.0  # a claim lasts microseconds: one this old was cut short by a kill
STALE = ".stale-"  # a folder being deleted, renamed aside first; one left by a kill is swept like a claim
TEMP_STALE = ".unet-sample-stale-"  # STALE in the shared temp dir, where a bare .stale-* may be another program's
# Every temporary folder a run makes (engine builds, a generated set, inductor's cache): any one made sweeps them all.
TEMPORARY = ("unet-sample-build-", "unet-sample-data-", "unet-sample-inductor-")
TAG = "CACHEDIR.TAG"  # in each folder the sample made in the cache: https://bford.info/cachedir/
TAG_SIGNATURE = "Signature: 8a477f597d28d172789f06886806bc55"  # the convention's first line, exactly
TAG_COMMENT = "# This file is a cache directory tag created by unet-sample (python sample.py --clear_cache removes " \
              "this folder)."  # the second line: the tag is ours, not another program's


def tag(folder: str) -> None:
    """Mark `folder`, which this run has just created, as the sample's cache (never a folder that was there before:
    it may be the user's). OSError when the file cannot be written."""
    with open(os.path.join(folder, TAG), "x", encoding="ascii") as f:
        f.write(f"{TAG_SIGNATURE}\n{TAG_COMMENT}\n# For information about cache directory tags, see "
                "https://bford.info/cachedir/\n")


def tagged(folder: str) -> bool:
    """Whether `folder` is a folder (not a link) that holds the tag `tag` writes: one the sample made."""
    path = os.path.join(folder, TAG)
    try:
        if os.path.islink(folder) or not os.path.isdir(folder) or not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        with open(path, "rb") as f:
            lines = f.read(1024).decode("ascii", errors="replace").splitlines()
    except OSError:
        return False
    return lines[:2] == [TAG_SIGNATURE, TAG_COMMENT]


def make_tagged(folder: str) -> None:
    """Create `folder` (and its parents) and tag it; a folder already there is used as it is, untagged (the user's,
    or an older sample's: nothing proves which). OSError when it cannot be made."""
    if os.path.isdir(folder):
        return
    os.makedirs(os.path.dirname(folder) or os.curdir, exist_ok=True)
    try:
        os.mkdir(folder)
    except FileExistsError:
        if os.path.isdir(folder):
            return  # another run made it a moment ago, and tags it
        raise
    tag(folder)


@contextlib.contextmanager
def build_folder(parent: str, prefix: str) -> Iterator[str]:
    """A new folder `<parent>/<prefix>XXXX` whose `.builder` file is locked for the block; the block builds there and
    renames it into place (or not); whatever is still there at the end is removed. OSError when it cannot be made."""
    folder = tempfile.mkdtemp(prefix=CLAIM, dir=parent)
    fd = None
    try:
        fd = os.open(os.path.join(folder, BUILDER), os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        _lock(fd)  # a fresh file: held at once (or no locks here, and the pid and host tell)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        # Renamed only once locked: a folder named <prefix>* without a locked .builder is one whose builder is gone.
        named = os.path.join(parent, prefix + os.path.basename(folder)[len(CLAIM):])
        os.rename(folder, named)
        folder = named
        yield folder
    finally:
        if os.path.isdir(folder):
            shutil.rmtree(folder, ignore_errors=True)
        if fd is not None:
            os.close(fd)


def settle(folder: str) -> None:
    """Remove the `.builder` file from a build folder that was published as `folder`."""
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(folder, BUILDER))


def _lock(fd: int) -> bool | None:
    """flock `fd` at once: True when now held, False when another process holds it, None where there are no locks
    (no fcntl, or a file system without them: ENOLCK)."""
    try:
        import fcntl
    except ImportError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None
    return True


def builder_gone(folder: str) -> bool:
    """Whether the process that built in `folder` has ended: its `.builder` file is missing (a build from before these
    files), or nobody holds its lock, or (where there are no locks) it names a pid of this host that has ended."""
    try:
        # O_RDWR: network file systems emulate flock with fcntl locks, and an exclusive one needs a writable descriptor
        fd = os.open(os.path.join(folder, BUILDER), os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return True
    except OSError:
        return False  # unreadable: it cannot be told, so it stays
    try:
        held = _lock(fd)
        if held is not None:
            return held  # ours now (closing the file drops it): the builder has ended
        pid, _, host = os.read(fd, 300).decode(errors="replace").strip().partition(" ")
        return host == socket.gethostname() and pid.isdigit() and not _alive(int(pid))
    except OSError:
        return False
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # another user's process
    return True


def sweep(parent: str, prefix: str | tuple[str, ...], stale: str = STALE,
          ours: Callable[[str], bool] | None = None) -> list[str]:
    """Remove the build folders `<parent>/<prefix>*` whose builder has ended (a run killed while it built), and
    claims and `<stale>*` folders older than an hour; the folders removed. A live build, here or in another process,
    stays. `ours`: where `parent` may hold the user's own folders, a build folder must also pass it (`tagged`)."""
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    now = time.time()
    for name in names:
        path = os.path.join(parent, name)
        try:
            if name.startswith((CLAIM, stale)) and now - os.lstat(path).st_mtime > CLAIM_LEFT_S:
                shutil.rmtree(path, ignore_errors=True)  # aside already: no run reads it
                removed.append(path)
            elif name.startswith(prefix) and os.path.isdir(path) and (ours is None or ours(path)) and \
                    builder_gone(path):
                remove_aside(path, stale)
                removed.append(path)
        except OSError:
            continue  # another run removed it first, or a read-only cache: it stays, harmless
    return removed


def remove_aside(path: str, stale: str = STALE) -> None:
    """Delete `path` (a folder, or whatever occupies its name), renamed aside into a fresh `<stale>*` folder first (one
    atomic step: no run sees it half deleted). OSError when it cannot be moved (FileNotFoundError: another run
    removed it first)."""
    aside = tempfile.mkdtemp(prefix=stale, dir=os.path.dirname(path))
    try:
        os.rename(path, os.path.join(aside, "entry"))
    finally:
        shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def temporary_folder(prefix: str) -> Iterator[str]:
    """A new `<temp dir>/<prefix>XXXX` for the block, locked as a build folder (so no other run removes it while it
    is in use) and removed at the end; first the TEMPORARY folders that runs killed before their end left are
    removed."""
    parent = tempfile.gettempdir()
    sweep(parent, TEMPORARY + (prefix,), TEMP_STALE)
    with build_folder(parent, prefix) as folder:
        yield folder


_PROCESS = contextlib.ExitStack()  # the folders of process_folder, removed at exit
atexit.register(_PROCESS.close)


def process_folder(prefix: str) -> str:
    """A `temporary_folder` kept (and locked) until the process exits."""
    return _PROCESS.enter_context(temporary_folder(prefix))
