"""A run leaves nothing behind in the temp dir: builds without a cache are removed as soon as the engine is loaded."""
from __future__ import annotations

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
    """The temp dir's entries, once onnxruntime has been imported: importing it writes `$TMPDIR/.ses`, one small file
    that it overwrites on every import (its session id), shared by every process, so not the sample's to remove."""
    if importlib.util.find_spec("onnxruntime"):
        importlib.import_module("onnxruntime")
    return set(os.listdir(tempfile.gettempdir()))


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
