"""A run leaves nothing behind in the temp dir: builds without a cache are removed as soon as the engine is loaded."""
from __future__ import annotations

import gc
import importlib
import importlib.util
import os
import tempfile

import pytest
import torch

import engines
import models
import sample
from tests.conftest import CPU


def entries() -> set[str]:
    """Everything in the temp dir, at any depth (pytest's tmp_path folders aside), once onnxruntime is imported:
    importing it writes `$TMPDIR/.ses`, one small file it overwrites on every import (its session id), shared by
    every process, so not the sample's to remove."""
    if importlib.util.find_spec("onnxruntime"):
        importlib.import_module("onnxruntime")
    root = tempfile.gettempdir()
    found = set()
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith("pytest-of-")]  # pytest's own tmp_path folders
        found.update(os.path.relpath(os.path.join(folder, name), root) for name in dirs + files)
    return found


def test_engines_loaded_without_a_cache_leave_nothing(tmp_path):
    """engines.load with no options (no cache): the exported / traced files go as soon as the engine is loaded."""
    before = entries()
    model = models.build("unet")
    for key in ("torchscript", "onnxruntime", "openvino"):
        if engines.missing(key, CPU):
            continue
        engine = engines.load(key, model, (1, 3, 32, 32), CPU)
        engine.run(engine.prepare(torch.rand(1, 3, 32, 32)))  # still runs: everything it needs is in memory
        assert engine.artifact == "compiled" and engine.artifact_path == ""
    assert entries() == before


@pytest.mark.parametrize("cache", ["--no_cache", "--cache_dir"])
def test_a_full_run_leaves_nothing(small_set, tmp_path, cache, capsys):
    before = entries()
    installed = [k for k in ("torch", "torchscript", "onnxruntime", "openvino") if not engines.missing(k, CPU)]
    args = ["--image_path", small_set[0], "--mask_path", small_set[1], "--image_size", "32", "--loop", "1",
            "--warm_counter", "0", "--quiet", "--device", "cpu", "--engine", ",".join(installed),
            "--precision", "fp32", "--json", str(tmp_path / "r.json")]
    args += ["--no_cache"] if cache == "--no_cache" else ["--cache_dir", str(tmp_path / "cache")]
    assert sample.main(args) == 0, capsys.readouterr().err
    assert entries() == before


@pytest.mark.slow
@pytest.mark.parametrize("cached", [False, True])
def test_inductor_leaves_nothing(tmp_path, monkeypatch, cached):
    """Inductor keeps its code in our cache or, with --no_cache, in a temporary folder that goes afterwards."""
    from engines import inductor
    from engines.base import EngineOptions
    from engines.cache import ArtifactCache

    monkeypatch.setattr(inductor, "USER_CACHE_DIR", None)  # conftest points it at the run's folder, as a user may
    before = entries()
    options = EngineOptions(cache=ArtifactCache(str(tmp_path)) if cached else None)
    engine = engines.load("inductor", torch.nn.Conv2d(3, 2, 3), (1, 3, 16, 16), CPU, options=options)
    engine.run(engine.prepare(torch.rand(1, 3, 16, 16)))
    path = engine.artifact_path
    del engine  # torch's AOTInductor loader unpacks a package into $TMPDIR/aotinductor_* while it is loaded
    gc.collect()
    new = entries() - before
    # With our cache inductor may keep its precompiled headers in its global folder: made once, reused by every
    # compile on the machine (docs/engines.md); --no_cache promises nothing at all.
    assert not new if not cached else all(e.startswith("torchinductor_") for e in new), sorted(new)
    inductor_folder = os.path.join(str(tmp_path), "engines", "inductor")  # the package, or inductor's own cache
    assert (path == inductor_folder or path.startswith(inductor_folder + os.sep)) if cached else path == ""
