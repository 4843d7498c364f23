"""Files on disk: where the cache lives, checking a result destination before the run, writing results atomically."""
from __future__ import annotations

import os
import tempfile

from utils.errors import SampleError


def default_cache_dir() -> str:
    """Where generated data and compiled engines live: $UNET_SAMPLE_CACHE, else $XDG_CACHE_HOME/unet-sample,
    else ~/.cache/unet-sample."""
    return os.environ.get("UNET_SAMPLE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "unet-sample")


def check_destination(path: str, *, folder: bool, overwrite: bool, flag: str) -> None:
    """Fail before the run when `path` cannot be written, or holds earlier results and --overwrite is off."""
    if folder and os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise SampleError(f"{flag} folder {path} exists and is not empty; pass --overwrite or choose another folder")
    if not folder and os.path.exists(path) and not overwrite:
        raise SampleError(f"{flag} file {path} exists; pass --overwrite or choose another path")
    if not folder and os.path.isdir(path):
        raise SampleError(f"{flag} {path} is a folder; give a file path")
    target = path if folder else os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(target, exist_ok=True)
    except OSError as exc:
        raise SampleError(f"cannot create {flag} folder {target}: {exc.strerror or exc}") from None
    if not os.access(target, os.W_OK | os.X_OK):
        raise SampleError(f"cannot write to {target} ({flag}): permission denied")


def write_atomic(path: str, data: str | bytes) -> None:
    """Write text or bytes to a temporary file beside `path`, then rename: a reader never sees half a file.

    A file system error becomes a SampleError naming the path, for every result file alike.
    """
    try:
        _write_atomic(path, data)
    except OSError as exc:
        raise SampleError(f"cannot write {path}: {exc.strerror or exc}") from None


def _write_atomic(path: str, data: str | bytes) -> None:
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
