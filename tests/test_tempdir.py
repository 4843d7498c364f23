"""A run leaves nothing behind: builds without a cache are removed as soon as the engine is loaded, inductor keeps its
package in our cache, and a full run writes nothing into the home folder or the temp dir."""
from __future__ import annotations

import gc
import importlib
import importlib.util
import os
import subprocess
import sys
import tempfile

import pytest
import torch

import engines
import sample
from engines.base import EngineOptions
from pipeline.fidelity import BARS
from report.metrics import cosine_per_sample
from tests.conftest import CPU, ROOT, SHAPE64, SMALL, isolated_environment, small_model, write_pair

FAST = ["--loop", "1", "--warm_counter", "0", "--quiet", "--device", "cpu"]


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


def need(key: str) -> None:
    """Skip, naming what is missing, when engine `key` cannot run here: a check that could not run says so."""
    reason = engines.missing(key, CPU)
    if reason:
        pytest.skip(f"not checked: {reason}")


@pytest.mark.parametrize("key", ["torchscript", "onnxruntime", "openvino"])
def test_a_build_without_a_cache_is_gone_once_the_engine_is_loaded(key):
    """engines.load with no options (no cache): the exported / traced files go as soon as the engine is loaded, and
    the engine still runs (everything it needs is in memory)."""
    need(key)
    before = entries()
    engine = engines.load(key, small_model(), (1, 3, 32, 32), CPU)
    assert engine.artifact == "compiled" and engine.artifact_path == ""
    assert entries() == before
    assert engine.to_torch(engine.run(engine.prepare(torch.rand(1, 3, 32, 32)))).shape == (1, 2, 32, 32)


def test_a_full_run_without_a_cache_leaves_nothing(small_set, tmp_path, capsys):
    """`--no_cache`: the run (data, reference, a compiled row, the report) leaves the temp dir as it found it. Each
    engine's build is checked above; a cached run with every CPU engine but inductor, at the end of this file."""
    before = entries()
    args = ["--image_path", small_set[0], "--mask_path", small_set[1], "--image_size", "32", *FAST, *SMALL,
            "--engine", "torchscript", "--no_cache", "--json", str(tmp_path / "r.json")]
    assert sample.main(args) == 0, capsys.readouterr().err
    assert entries() == before


def small_net() -> torch.nn.Module:
    """Three ops inductor fuses and freezes (the BatchNorm folds into the convolution): the cheapest real compile."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    torch.nn.init.uniform_(net[1].running_mean, -0.5, 0.5)
    torch.nn.init.uniform_(net[1].running_var, 0.5, 2.0)
    return net.eval()


@pytest.mark.slow
@pytest.mark.parametrize("path", ["aoti", "torch.compile"])
def test_inductor_without_a_cache_matches_eager_and_leaves_nothing(path, monkeypatch):
    """Inductor without a cache, both ways it compiles: the AOTInductor package, and the torch.compile fallback (the
    only inductor path on the Ascend stack's torch 2.0.1; every other test patches it out) compiled for real on this
    CPU. Each matches eager and, once the engine is gone, has left nothing in the temp dir."""
    from engines import inductor

    if path == "aoti" and not inductor.aoti_available():
        pytest.skip(f"torch {torch.__version__} has no AOTInductor")
    if path == "torch.compile":
        monkeypatch.setattr(inductor, "aoti_available", lambda: False)
    monkeypatch.setattr(inductor, "USER_CACHE_DIR", None)  # conftest points it at the run's folder, as a user may
    net, x = small_net(), torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        expected = net(x)
    before = entries()
    engine = engines.load("inductor", net, tuple(x.shape), CPU)
    out = engine.to_torch(engine.run(engine.prepare(x)))
    assert cosine_per_sample(out, expected).min().item() >= BARS["fp32"]
    assert torch.allclose(out, expected, atol=1e-4)
    assert ("AOTInductor" in engine.timed) == (path == "aoti") and engine.artifact_path == ""
    del engine, out  # torch's AOTInductor loader unpacks a package into $TMPDIR/aotinductor_* while it is loaded
    gc.collect()
    if path == "torch.compile":
        torch._dynamo.reset()  # the compiled frame stays with dynamo, not in the temp dir
    new = entries() - before
    # torch 2.0's inductor keeps the first folder it wrote to for the whole process (engines/inductor.py): there what
    # lands in that folder goes at exit; later torch reads its folder afresh and nothing may stay.
    import torch._inductor.codecache as codecache

    if hasattr(codecache.cache_dir, "cache_clear"):
        kept = [os.path.relpath(f, tempfile.gettempdir()) for f in inductor._PROCESS_FOLDER + [codecache.cache_dir()]]
        new = {e for e in new if not any(e == k or e.startswith(k + os.sep) for k in kept)}
    assert not new, sorted(new)


@pytest.mark.slow
def test_inductor_keeps_its_package_in_the_cache(unet64, unet64_cache, monkeypatch):
    """With our cache the package lives in it (the session's UNet build, shared with the engine matrix: loaded here
    when an earlier test compiled it); once the engine is gone the temp dir holds at most inductor's precompiled
    headers, made once and reused by every compile on the machine (docs/engines.md). What a compile leaves in the temp
    dir is the same with or without our cache, but for those headers: the test above checks it."""
    from engines import inductor

    if not inductor.aoti_available() and inductor._PROCESS_FOLDER:
        pytest.skip("torch 2.0's inductor keeps a process's first cache folder, and this process compiled without a "
                    "cache before (one run is one or the other: --no_cache is run-wide)")
    monkeypatch.setattr(inductor, "USER_CACHE_DIR", None)
    before = entries()
    engine = engines.load("inductor", unet64.model, SHAPE64, CPU, options=EngineOptions(cache=unet64_cache))
    engine.run(engine.prepare(unet64.x))
    path = engine.artifact_path
    del engine
    gc.collect()
    new = entries() - before
    assert all(e.startswith("torchinductor_") for e in new), sorted(new)
    folder = os.path.join(unet64_cache.root, "inductor")
    if inductor.aoti_available():
        assert os.path.dirname(path) == folder and os.path.isfile(os.path.join(path, inductor.PACKAGE_FILE))
    else:  # torch.compile keeps its code in inductor's own cache, which it points into ours
        assert path == folder


def _listing(folder: str) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, n), folder) for d, dirs, files in os.walk(folder)
                  for n in dirs + files)


@pytest.mark.slow
def test_a_full_run_writes_nothing_into_home_or_the_temp_dir(tmp_path):
    """`python sample.py` with a cache, plots, torchscript and fp32 + int8 rows on onnxruntime and openvino (nncf), in
    the environment conftest gives the suite but with HOME and TMPDIR fresh empty folders: both stay empty. So the
    suite keeps every library's home-folder writes (matplotlib, onnxruntime, openvino / nncf telemetry) out of HOME,
    and a cached run leaves nothing in the temp dir."""
    for package in ("onnxruntime", "openvino", "nncf", "matplotlib"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"not checked: needs {package} (pip install {package})")
    data, home, tmp = tmp_path / "data", tmp_path / "home", tmp_path / "tmp"
    for folder in (home, tmp):
        folder.mkdir()
    for i in range(2):
        write_pair(str(data), f"car{i}_01", seed=i)
    env = {**os.environ, **isolated_environment(str(tmp_path / "env")), "HOME": str(home), "TMPDIR": str(tmp)}
    args = [sys.executable, os.path.join(ROOT, "sample.py"), "--image_path", str(data / "images"), "--mask_path",
            str(data / "masks"), "--image_size", "32", *FAST, *SMALL, "--engine", "torchscript,onnxruntime,openvino",
            "--precision", "fp32,int8", "--calib", "1", "--plots", str(tmp_path / "plots"),
            "--cache_dir", str(tmp_path / "cache"), "--json", str(tmp_path / "r.json")]
    done = subprocess.run(args, env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert os.listdir(tmp_path / "plots"), "the plots were drawn (matplotlib ran)"
    assert _listing(str(home)) == [], "written into HOME"
    # onnxruntime's import (re)writes $TMPDIR/.ses, its session id, shared by every process (see `entries`).
    assert [e for e in _listing(str(tmp)) if e != ".ses"] == [], "left in TMPDIR"
