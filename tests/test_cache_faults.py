"""Faults in the engine cache's own files (docs/failures.md rows 8 and 17): a full disk is an OSError, never an abort;
a cache that cannot be written builds apart; a damaged entry name is rebuilt; temporary builds never outlive a kill."""
from __future__ import annotations

import ast
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import engines.cache
import sample
from engines.cache import ArtifactCache, artifact
from tests.conftest import ROOT, SMALL, write_pair
from utils.builds import build_folder

FAST = ["--image_size", "32", "--loop", "1", "--warm_counter", "0", "--quiet", "--device", "cpu", "--no_reference",
        *SMALL]
NET = torch.nn.Conv2d(3, 2, 1)


def run_artifact(cache, build=None):
    """(state, kept, folder) of one artifact of NET built by `build` (default: one small file)."""
    def write(folder):
        with open(os.path.join(folder, "model.bin"), "wb") as f:
            f.write(b"x")

    with artifact(cache, "e", "1", NET, (1, 3, 8, 8), "fp32", build or write) as built:
        assert os.path.isfile(os.path.join(built.folder, "model.bin"))
        return built.state, built.kept, built.folder


def full_disk(under: str):
    """An `open` for engines.cache whose files under `under` fail as on a full disk (torch's writer would abort)."""
    def fake(path, mode="r", *args, **kwargs):
        if "x" in mode and os.path.abspath(path).startswith(os.path.abspath(under)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return open(path, mode, *args, **kwargs)
    return fake


def test_product_code_serialises_torch_through_memory():
    """torch.save / torch.jit.save / the AOTInductor package write into a buffer (engines.cache.save_bytes), never a
    path: torch's C++ file writer aborts the whole process when a write fails."""
    calls = []
    for folder in ("engines", "models", "pipeline", "dataset", "report", "utils"):
        for name in os.listdir(os.path.join(ROOT, folder)):
            if name.endswith(".py"):
                tree = ast.parse(open(os.path.join(ROOT, folder, name)).read())
                calls += [(name, n) for n in ast.walk(tree) if isinstance(n, ast.Call)]
    writes = 0
    for name, call in calls:
        func = ast.unparse(call.func)
        if func in ("torch.save", "torch.jit.save"):
            assert ast.unparse(call.args[1]) == "buffer", (name, ast.unparse(call))
            writes += 1
        elif func.endswith("aoti_compile_and_package"):
            assert {k.arg: ast.unparse(k.value) for k in call.keywords}.get("package_path") == "buffer", name
            writes += 1
    assert writes >= 3  # torchscript, torch_aie, inductor


def test_a_file_size_limit_is_a_failed_row_not_an_abort(tmp_path):
    """`ulimit -f` (SIGXFSZ ignored, as sample.py does) under the cache and the temp dir: torch.jit.save used to abort
    the process (SIGABRT in ~PyTorchStreamWriter); now the engine fails with EFBIG like any write error."""
    code = textwrap.dedent(f"""
        import resource, signal, sys
        sys.path.insert(0, {ROOT!r})
        import torch, engines
        from engines.base import EngineOptions
        from engines.cache import ArtifactCache
        from utils.errors import SampleError
        cache = ArtifactCache({str(tmp_path / "c")!r})
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            engines.load("torchscript", torch.nn.Conv2d(3, 64, 3), (1, 3, 8, 8), torch.device("cpu"),
                         options=EngineOptions(cache=cache))
        except SampleError as exc:
            print(exc)
    """)
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "failed to compile for cpu fp32: [Errno 27] File too large" in done.stdout, done.stdout
    assert done.stderr.count("warning: cannot write the engine cache") == 1, done.stderr
    assert os.listdir(tmp_path) == ["c"]


def test_a_full_cache_builds_apart_and_says_so_once(tmp_path, capsys):
    cache = ArtifactCache(str(tmp_path / "c"))

    def write(folder):
        if folder.startswith(cache.root):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what save_bytes raises on a full disk
        open(os.path.join(folder, "model.bin"), "wb").close()
    first, second = run_artifact(cache, write), run_artifact(cache, write)
    assert first[:2] == second[:2] == ("compiled", False) and not os.path.exists(first[2])
    assert capsys.readouterr().err.splitlines() == [
        f"warning: cannot write the engine cache {cache.root} (No space left on device); this run caches no more "
        "engines: they are built in a temporary folder, as with --no_cache"]
    assert [d for d in os.listdir(os.path.join(cache.root, "e")) if d.startswith(".build-")] == []


@pytest.mark.parametrize("damage", ["engine folder is a file", "entry cannot be removed"])
def test_a_cache_path_that_cannot_be_made_builds_apart(damage, tmp_path, monkeypatch, capsys):
    cache = ArtifactCache(str(tmp_path / "c"))
    if damage == "engine folder is a file":
        open(os.path.join(cache.root, "e"), "w").close()
    else:
        entry = cache.folder("e", "1", NET, (1, 3, 8, 8), "fp32")[0]
        os.makedirs(os.path.dirname(entry))
        os.symlink("/nonexistent", entry)

        def refuse(path, *args):
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), path)
        monkeypatch.setattr(engines.cache, "remove_aside", refuse)
    assert run_artifact(cache)[:2] == ("compiled", False)
    err = capsys.readouterr().err
    assert err.count("warning: cannot write the engine cache") == 1 and err.startswith("warning:"), err


@pytest.mark.parametrize("damage", ["dangling link", "link to an entry", "file"])
def test_an_entry_name_that_is_not_an_entry_folder_is_rebuilt(damage, tmp_path, capsys):
    cache = ArtifactCache(str(tmp_path / "c"))
    entry = run_artifact(cache)[2]
    elsewhere = str(tmp_path / "elsewhere")
    os.rename(entry, elsewhere)
    if damage == "file":
        open(entry, "w").close()
    else:
        os.symlink("/nonexistent" if damage == "dangling link" else elsewhere, entry)
    assert run_artifact(cache) == ("compiled", True, entry)
    assert os.path.isdir(entry) and not os.path.islink(entry) and os.listdir(elsewhere)  # a link's target stays
    assert f"note: cache entry {entry} is damaged (its name is a" in capsys.readouterr().err
    assert run_artifact(cache)[0] == "loaded"


def test_a_full_disk_keeps_the_run_whole(tmp_path, monkeypatch, capsys):
    """Through the command line: a full cache is one warning (exit 0); a full temp dir too is one failed row (exit
    1) and the other rows and files are kept."""
    for i in range(2):
        write_pair(str(tmp_path / "img"), f"car{i}")
    data = ["--image_path", str(tmp_path / "img" / "images"), "--mask_path", str(tmp_path / "img" / "masks")]
    cache = str(tmp_path / "c")
    monkeypatch.setattr(engines.cache, "open", full_disk(cache), raising=False)
    rep = tmp_path / "r.json"
    argv = FAST + data + ["--engine", "torch,torchscript", "--cache_dir", cache, "--json", str(rep)]
    assert sample.main(argv) == 0
    assert [r["artifact"] for r in json.loads(rep.read_text())["rows"]] == ["eager", "compiled"]
    assert capsys.readouterr().err.count("warning: cannot write the engine cache") == 1
    monkeypatch.setattr(engines.cache, "open", full_disk("/"), raising=False)
    assert sample.main(argv) == 1
    err = capsys.readouterr().err
    assert "error: engine torchscript failed to compile for cpu fp32: [Errno 28] No space left on device" in err
    assert [r["engine"] for r in json.loads(rep.read_text())["rows"]] == ["torch"]


BODIES = {  # what a run does in the temp dir, with `{}` the step where a kill may land
    "unet-sample-build-": """
        import os, signal, torch
        from engines.cache import artifact
        def build(folder):
            {}
        with artifact(None, "e", "1", torch.nn.Conv2d(3, 2, 1), (1, 3, 8, 8), "fp32", build):
            pass
    """,
    "unet-sample-data-": """
        import os, signal
        from PIL import Image
        import dataset.synthetic as synthetic
        def make_pair(seed):
            {}
            return Image.new("RGB", (8, 8)), Image.new("P", (8, 8))
        synthetic.make_pair = make_pair
        synthetic.ensure_synthetic(1, cache_dir=os.path.join(os.environ["TMPDIR"], "ro"), writable=False)
    """,
}


@pytest.mark.parametrize("killed, after", [("unet-sample-build-", "unet-sample-build-"),
                                           ("unet-sample-data-", "unet-sample-data-"),
                                           ("unet-sample-build-", "unet-sample-data-")])
def test_what_a_killed_run_left_in_the_temp_dir_is_removed_by_the_next_run(killed, after, tmp_path):
    """A run killed (SIGKILL) while it builds without a cache, or generates the set apart from an unwritable cache:
    the next run that makes a temporary folder of any kind removes what it left, but never a live run's folder."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}

    def run(body: str) -> int:
        code = f"import sys\nsys.path.insert(0, {ROOT!r})\n" + textwrap.dedent(body)
        return subprocess.run([sys.executable, "-c", code], env=env, timeout=300).returncode

    assert run(BODIES[killed].format("os.kill(os.getpid(), signal.SIGKILL)")) == -signal.SIGKILL
    (dead,) = [d for d in os.listdir(tmp_path) if d.startswith(killed)]
    with build_folder(str(tmp_path), killed) as live:  # a live run's folder (this process holds its lock)
        assert run(BODIES[after].format("pass")) == 0
        assert [d for d in os.listdir(tmp_path) if d.startswith("unet-sample-")] == [os.path.basename(live)], dead
