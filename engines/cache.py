"""On-disk cache of exported / compiled engines, keyed by weights, input shape, precision and engine version.

Every entry carries the sha256 of its files, checked before it is used. An `engines` folder the cache creates is
tagged (utils/builds.py: CACHEDIR.TAG), so that `--clear_cache` can tell it from a user's own folder of that name.
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import stat
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Callable

import torch

from utils.builds import BUILDER, build_folder, make_tagged, remove_aside, settle, sweep, temporary_folder
from utils.errors import SampleError, first_line
from utils.files import default_cache_dir

READY = "key.json"  # written last: a folder without it is an interrupted build and is rebuilt
BUILD = ".build-"  # an entry being built (utils/builds.py: one whose builder was killed is removed by the next run)
CHUNK = 1 << 20
TEMPORARY = "unet-sample-build-"  # a build without the cache, in the temp dir (one of utils.builds.TEMPORARY)
# What a build's own writes into the cache raise when the cache is the problem (a full or read-only disk, a quota).
STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def save_bytes(path: str, serialize: Callable[[io.BytesIO], object]) -> None:
    """`serialize(buffer)` into memory, then write `path` with Python's own writes: torch's C++ file writer aborts
    the process (SIGABRT) when a write fails, where this raises OSError (ENOSPC, EFBIG) that a caller can handle."""
    buffer = io.BytesIO()
    serialize(buffer)
    with open(path, "xb") as f:
        f.write(buffer.getbuffer())


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of the model's class, parameter / buffer names, dtypes, shapes and bytes."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.float().numpy().tobytes() if t.is_floating_point() else t.numpy().tobytes())
    return h.hexdigest()


def key_digest(key: dict) -> str:
    """A short stable name for a JSON-able key: the first 20 hex digits of the sha256 of its sorted JSON."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def engines_root(cache_dir: str | None) -> str:
    """`<cache>/engines`, made here (and tagged) when it is missing, before anything else may make it untagged (a
    check that files can be written there); where it cannot be made, the caller's own writes say why."""
    root = os.path.join(cache_dir or default_cache_dir(), "engines")
    with suppress(OSError):
        make_tagged(root)
    return root


class ArtifactCache:
    """Folders of engine artifacts under `<root>/engines` (root: the user cache folder by default).

    `wait_s`: how long a build waits for another process that is building the same artifact (the ranks of a torchrun
    job on one host, two runs side by side) before it builds its own copy. Builds left by killed runs are removed."""

    def __init__(self, root: str | None = None, wait_s: float = 1800.0):
        self.wait_s = wait_s
        self.failed: str | None = None  # why the cache's own files failed: from then on engines build apart
        self._digests: dict[int, str] = {}
        self.root = os.path.join(root or default_cache_dir(), "engines")
        try:
            make_tagged(self.root)  # tagged only when this run creates it: one already there may be the user's
            engines = [os.path.join(self.root, name) for name in os.listdir(self.root) if not name.startswith(".")]
        except OSError as exc:
            self.give_up(exc)
            return
        for folder in engines:
            sweep(folder, BUILD)

    def give_up(self, exc: OSError) -> None:
        """Stop writing the cache after its own files failed with `exc`, saying so once: later builds go to a
        temporary folder, as with --no_cache (entries already there are still loaded)."""
        if self.failed is None:
            where = f"{exc.filename}: " if exc.filename else ""
            self.failed = f"{where}{exc.strerror or exc}"
            print(f"warning: cannot write the engine cache {self.root} ({self.failed}); this run caches no more "
                  "engines: they are built in a temporary folder, as with --no_cache", file=sys.stderr)

    def digest(self, model: torch.nn.Module) -> str:
        """The weights digest, computed once per model object (hashing 31 M parameters takes a moment)."""
        if id(model) not in self._digests:
            self._digests[id(model)] = weights_digest(model)
        return self._digests[id(model)]

    def folder(self, engine: str, version: str, model: torch.nn.Module, shape: tuple, precision: str,
               **extra) -> tuple[str, dict]:
        """The folder for this artifact and the key it is stored under."""
        key = {"engine": engine, "version": version, "weights": self.digest(model), "shape": list(shape),
               "precision": precision, **{k: v for k, v in sorted(extra.items())}}
        name = key_digest(key)
        return os.path.join(self.root, engine, f"{precision}-{name}"), key


def usable(cache: ArtifactCache | None) -> ArtifactCache | None:
    """`cache` while it can be written, else None: where a compiler's own cache goes (inductor's)."""
    return None if cache is None or cache.failed else cache


@dataclass
class Artifact:
    """An engine artifact ready to load; one not `kept` in the cache is removed when the `artifact` block ends."""

    folder: str
    state: str
    kept: bool

    @property
    def path(self) -> str:
        """The folder a report may name: empty for a temporary build, which is gone once the engine is loaded."""
        return self.folder if self.kept else ""


def is_ready(folder: str) -> bool:
    """True when `folder` holds a complete artifact from an earlier run (see `verify` for whether it is intact)."""
    return os.path.isfile(os.path.join(folder, READY))


def occupied(folder: str) -> str | None:
    """What wrongly holds an entry's name (a link, dangling or not, a file, a device...); None for a folder or
    nothing. Such a name is a damaged entry: a link could point anywhere."""
    try:
        mode = os.lstat(folder).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(mode):
        return f"its name is a symbolic link to {os.readlink(folder)}, not an entry folder"
    return None if stat.S_ISDIR(mode) else "its name is a file, not an entry folder"


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def checksums(folder: str) -> dict[str, str]:
    """sha256 of every file under `folder` (but the READY file), by path relative to it.

    SampleError on anything that is not a regular file: a link could point anywhere.
    """
    sums = {}
    for root, dirs, files in os.walk(folder):
        for name in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            if rel in (READY, BUILDER):
                continue
            if not stat.S_ISREG(os.lstat(path).st_mode):
                raise SampleError(f"{rel} is not a regular file")
            sums[rel] = _sha256(path)
    return sums


def verify(folder: str) -> str | None:
    """None when every file of the entry matches the checksums written when it was committed; else what is wrong."""
    try:
        with open(os.path.join(folder, READY)) as f:
            expected = json.load(f)["sha256"]
        found = checksums(folder)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"its {READY} is unreadable or has no checksums ({first_line(exc)})"
    except SampleError as exc:
        return str(exc)
    if not isinstance(expected, dict):
        return f"its {READY} has no checksums"
    for rel in sorted(set(expected) | set(found)):
        if rel not in found:
            return f"{rel} is missing"
        if rel not in expected:
            return f"{rel} was added"
        if found[rel] != expected[rel]:
            return f"{rel} changed"
    return None


def discard(folder: str) -> None:
    """Remove a bad entry: renamed aside first (one atomic step), so no run sees it half deleted. OSError when it
    cannot be removed."""
    try:
        remove_aside(folder)
    except FileNotFoundError:
        pass  # another run removed it first


@contextmanager
def building(folder: str, key: dict):
    """Yield a temporary folder to build an artifact in; on success it is renamed to `folder` (atomic publish)."""
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    with build_folder(parent, BUILD) as tmp:  # removed at the end unless published
        yield tmp
        sums = checksums(tmp)  # hashed once, when the entry is committed; checked on every later load
        with open(os.path.join(tmp, READY), "w") as f:
            json.dump({**key, "sha256": sums}, f, indent=1)
        if is_ready(folder):
            return  # another run published the same artifact first; ours is discarded below
        if os.path.lexists(folder):
            discard(folder)  # an interrupted earlier build (no READY file)
        os.rename(tmp, folder)
        settle(folder)


@contextmanager
def build_lock(cache: ArtifactCache, folder: str):
    """Hold an exclusive `flock` on `<root>/.locks/<engine>-<entry>.lock` for the block (no lock without fcntl).

    A second process that wants the same entry waits up to `cache.wait_s`, then builds its own copy (`building`
    publishes one of them atomically). The kernel drops the lock when its holder ends, a crash included.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    locks = os.path.join(cache.root, ".locks")
    fd = None
    try:
        os.makedirs(locks, exist_ok=True)
        name = f"{os.path.basename(os.path.dirname(folder))}-{os.path.basename(folder)}.lock"
        fd = os.open(os.path.join(locks, name), os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError:
        pass  # a read-only lock folder: build unlocked (publishing stays atomic)
    deadline = time.monotonic() + cache.wait_s
    try:
        while fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > deadline:
                    print(f"note: waited {cache.wait_s:.0f} s for another process building {folder}; building it "
                          "here too", file=sys.stderr)
                    break
                time.sleep(0.2)
        yield
    finally:
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the lock


@contextmanager
def artifact(cache: ArtifactCache | None, engine: str, version: str, model: torch.nn.Module, shape: tuple,
             precision: str, build: Callable[[str], None], **extra) -> Iterator[Artifact]:
    """The artifact, built by `build(folder)` unless cached; load the engine from it inside the `with` block.

    Without a cache (`--no_cache`), or where the cache's own files fail (a full disk, a path it cannot make, a
    damaged entry it cannot remove), it is built in a temporary folder that the end of the block removes, whatever
    happens: a run leaves nothing behind in the temp dir.
    """
    built = None
    if cache is not None:
        folder, key = cache.folder(engine, version, model, shape, precision, **extra)
        try:
            built = cached(cache, folder, key, build)
        except OSError as exc:
            cache.give_up(exc)
    if built is None:
        with temporary_folder(TEMPORARY) as tmp:
            build(tmp)
            yield Artifact(tmp, "compiled", kept=False)
        return
    try:
        yield built
    except SampleError:
        raise
    except Exception as exc:
        if built.state != "loaded":
            raise
        raise SampleError(f"{engine} could not load its cached engine {built.folder} ({type(exc).__name__}: "
                          f"{first_line(exc)}); remove that folder to rebuild it, or pass --no_cache") from None


def cached(cache: ArtifactCache, folder: str, key: dict, build: Callable[[str], None]) -> Artifact | None:
    """The entry `folder`, checked, or built and published there; None when it is not there and the cache can no
    longer be written. OSError when the cache's own files fail (a build's, only for STORAGE_ERRORS)."""
    problem, damage = occupied(folder), "is damaged"
    with build_lock(cache, folder):  # one process builds an entry; the others (the ranks of a host) wait, then load it
        if not problem and is_ready(folder):
            problem, damage = verify(folder), "failed its checksum"  # never load a bad entry: rebuild it
            if not problem:
                return Artifact(folder, "loaded", kept=True)
        if problem:
            discard(folder)  # OSError when it cannot be removed: bypassed, as the cache's own failure
        if cache.failed:
            return None
        with building(folder, key) as tmp:
            try:
                build(tmp)
            except OSError as exc:
                if exc.errno in STORAGE_ERRORS:
                    raise
                raise RuntimeError(str(exc)) from exc  # the build's own failure, not the cache's: the row fails
    if problem:
        print(f"note: cache entry {folder} {damage} ({problem}); rebuilt", file=sys.stderr)
    return Artifact(folder, "compiled", kept=True)
