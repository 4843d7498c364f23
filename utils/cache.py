"""On-disk cache of exported / compiled engines, keyed by weights, input shape, precision and engine version."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch

from utils.errors import SampleError
from utils.files import default_cache_dir

READY = "key.json"  # written last: a folder without it is an interrupted build and is rebuilt


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of the model's class, parameter / buffer names, dtypes, shapes and bytes."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.float().numpy().tobytes() if t.is_floating_point() else t.numpy().tobytes())
    return h.hexdigest()


class ArtifactCache:
    """Folders of engine artifacts under `<root>/engines` (root: the user cache folder by default)."""

    def __init__(self, root: str | None = None):
        try:
            self.root = os.path.join(root or default_cache_dir(), "engines")
            os.makedirs(self.root, exist_ok=True)
        except OSError as exc:
            raise SampleError(f"cannot create the engine cache {exc.filename or root}: {exc.strerror or exc}; "
                              "pass a writable --cache_dir or --no_cache") from None
        self._digests: dict[int, str] = {}

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
        name = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        return os.path.join(self.root, engine, f"{precision}-{name}"), key


@dataclass
class Artifact:
    """An engine artifact ready to load: its `folder`, whether it was `compiled` now or `loaded`, and whether it is
    `kept` in the cache (a temporary one is removed when the `artifact` block ends)."""

    folder: str
    state: str
    kept: bool

    @property
    def path(self) -> str:
        """The folder a report may name: empty for a temporary build, which is gone once the engine is loaded."""
        return self.folder if self.kept else ""


def is_ready(folder: str) -> bool:
    """True when `folder` holds a complete artifact from an earlier run."""
    return os.path.isfile(os.path.join(folder, READY))


@contextmanager
def building(folder: str, key: dict):
    """Yield a temporary folder to build an artifact in; on success it is renamed to `folder` (atomic publish)."""
    parent = os.path.dirname(folder)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".build-", dir=parent)
    try:
        yield tmp
        with open(os.path.join(tmp, READY), "w") as f:
            json.dump(key, f, indent=1)
        if is_ready(folder):
            return  # another run published the same artifact first; ours is discarded below
        if os.path.isdir(folder):
            shutil.rmtree(folder)  # an interrupted earlier build (no READY file)
        os.rename(tmp, folder)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def artifact(cache: ArtifactCache | None, engine: str, version: str, model: torch.nn.Module, shape: tuple,
             precision: str, build: Callable[[str], None], **extra) -> Iterator[Artifact]:
    """The artifact, built by `build(folder)` unless cached; load the engine from it inside the `with` block.

    Without a cache (`--no_cache`) it is built in a temporary folder that the end of the block removes, whatever
    happens: a run leaves nothing behind in the temp dir.
    """
    if cache is None:
        tmp = tempfile.mkdtemp(prefix="unet-sample-build-")
        try:
            build(tmp)
            yield Artifact(tmp, "compiled", kept=False)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    folder, key = cache.folder(engine, version, model, shape, precision, **extra)
    state = "loaded"
    if not is_ready(folder):
        with building(folder, key) as tmp:
            build(tmp)
        state = "compiled"
    yield Artifact(folder, state, kept=True)
