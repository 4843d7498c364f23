"""The artifact cache: keys follow weights, shape, precision and version; only complete builds are reused."""
from __future__ import annotations

import contextlib
import os

import pytest
import torch

from engines.cache import ArtifactCache, artifact, is_ready


def test_key_changes_with_weights_shape_precision_version_and_extra(tmp_path):
    cache = ArtifactCache(str(tmp_path))
    a, b = torch.nn.Conv2d(3, 2, 1), torch.nn.Conv2d(3, 2, 1)
    base = cache.folder("onnxruntime", "1", a, (1, 3, 64, 64), "fp32")[0]
    assert base == cache.folder("onnxruntime", "1", a, (1, 3, 64, 64), "fp32")[0]
    others = [
        cache.folder("onnxruntime", "1", b, (1, 3, 64, 64), "fp32")[0],
        cache.folder("onnxruntime", "1", a, (2, 3, 64, 64), "fp32")[0],
        cache.folder("onnxruntime", "1", a, (1, 3, 64, 64), "int8")[0],
        cache.folder("onnxruntime", "2", a, (1, 3, 64, 64), "fp32")[0],
        cache.folder("onnxruntime", "1", a, (1, 3, 64, 64), "fp32", calibration="x")[0],
    ]
    assert len({base, *others}) == 6
    assert base.startswith(os.path.join(str(tmp_path), "engines", "onnxruntime"))


def ensure(cache, *args):
    with artifact(cache, *args) as built:
        return built.folder, built.state


def test_artifact_builds_once_then_loads(tmp_path):
    cache, model, built = ArtifactCache(str(tmp_path)), torch.nn.Conv2d(3, 2, 1), []

    def build(folder):
        built.append(folder)
        open(os.path.join(folder, "model.bin"), "w").close()

    first = ensure(cache, "e", "1", model, (1, 3, 8, 8), "fp32", build)
    second = ensure(cache, "e", "1", model, (1, 3, 8, 8), "fp32", build)
    assert (first[1], second[1]) == ("compiled", "loaded") and first[0] == second[0] and len(built) == 1
    assert os.path.isfile(os.path.join(first[0], "model.bin"))


def test_an_interrupted_build_is_not_reused(tmp_path):
    cache, model = ArtifactCache(str(tmp_path)), torch.nn.Conv2d(3, 2, 1)

    def broken(folder):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ensure(cache, "e", "1", model, (1, 3, 8, 8), "fp32", broken)
    folder = cache.folder("e", "1", model, (1, 3, 8, 8), "fp32")[0]
    assert not is_ready(folder) and not os.listdir(os.path.dirname(folder))  # the temporary folder is gone
    assert ensure(cache, "e", "1", model, (1, 3, 8, 8), "fp32", lambda f: None)[1] == "compiled"


@pytest.mark.parametrize("fail", [False, True])
def test_without_a_cache_the_build_is_temporary(fail):
    """--no_cache: the artifact lives only inside the block, which removes it whatever happens."""
    seen = []

    def build(folder):
        open(os.path.join(folder, "model.bin"), "w").close()

    with pytest.raises(RuntimeError) if fail else contextlib.nullcontext():
        with artifact(None, "e", "1", torch.nn.Conv2d(3, 2, 1), (1, 3, 8, 8), "fp32", build) as built:
            seen.append(built)
            assert os.path.isfile(os.path.join(built.folder, "model.bin"))
            assert (built.state, built.path) == ("compiled", "")  # a report never names a folder that is gone
            if fail:
                raise RuntimeError("the engine failed to load")
    assert not os.path.exists(seen[0].folder)
