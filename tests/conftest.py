"""Shared fixtures: paths to ../shared test material (skipped when absent), small generated data, the session's shared
models and engine builds, and an environment that keeps every write inside one temporary folder."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import NamedTuple

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
CPU = torch.device("cpu")
SHARED = os.environ.get("UNET_SAMPLE_SHARED", os.path.join(os.path.dirname(ROOT), "shared"))
CARVANA = os.path.join(SHARED, "data", "carvana")
CARVANA_512 = os.path.join(SHARED, "data", "carvana-other", "abdullah-al-masud-512")
CHECKPOINT = os.path.join(SHARED, "models", "unet_carvana_256.pth")
# A small real architecture for the tests whose point is not the network: UNet++ at base width 8 (0.57 M parameters
# against UNet's 31 M) takes the same code paths in a fraction of the time. The engine matrix and the real checkpoint
# keep the full-size models.
SMALL = ["--model_name", "unet++", "--base_width", "8"]
SHAPE64 = (1, 3, 64, 64)


def _need(path: str) -> str:
    if not os.path.exists(path):
        pytest.skip(f"{path} is absent: the shared test material is not beside this checkout")
    return path


@pytest.fixture
def carvana() -> tuple[str, str]:
    """The 272 real 1918x1280 Carvana pairs."""
    root = _need(CARVANA)
    return os.path.join(root, "images"), os.path.join(root, "masks")


@pytest.fixture
def checkpoint() -> str:
    """The real Pytorch-UNet-format checkpoint (train.py format, with mask_values)."""
    return _need(CHECKPOINT)


def write_pair(folder: str, name: str, size=(96, 64), mask_ext=".gif", seed=0, image_mode="RGB"):
    """A small image + mask pair in Carvana's layout: a bright box (the 'car') on a dark background."""
    rng = np.random.default_rng(seed)
    w, h = size
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4: 3 * h // 4, w // 5: 4 * w // 5] = 1
    pixels = (rng.integers(0, 60, (h, w, 3)) + mask[..., None] * 180).astype(np.uint8)
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    os.makedirs(os.path.join(folder, "masks"), exist_ok=True)
    Image.fromarray(pixels).convert(image_mode).save(os.path.join(folder, "images", name + ".jpg"
                                                                  if image_mode in ("RGB", "L") else name + ".png"))
    if mask_ext == ".gif":
        m = Image.fromarray(mask, "P")
        m.putpalette([0, 0, 0, 255, 255, 255])
    else:
        m = Image.fromarray(mask * 255, "L")
    m.save(os.path.join(folder, "masks", name + "_mask" + mask_ext))
    return mask


@pytest.fixture
def small_set(tmp_path) -> tuple[str, str]:
    """Three small pairs (GIF and PNG masks) in a temporary Carvana-layout folder."""
    for i, ext in enumerate([".gif", ".gif", ".png"]):
        write_pair(str(tmp_path), f"car{i}_01", mask_ext=ext, seed=i)
    return str(tmp_path / "images"), str(tmp_path / "masks")


def small_model(seed: int = 0) -> torch.nn.Module:
    """The SMALL network, as `sample.py --seed <seed>` builds it."""
    import models

    torch.manual_seed(seed)
    return models.create_model("unet++", base_width=8)[0]


class Twin(NamedTuple):
    """A model, an input, and the eager fp32 logits of an independent twin (another instance with the same weights):
    the eager fp32 CPU engine calls the model itself, so comparing with the model would prove nothing for it."""

    model: torch.nn.Module
    x: torch.Tensor
    expected: torch.Tensor
    twin: torch.nn.Module


def make_twin(name: str, shape: tuple = SHAPE64, **kwargs) -> Twin:
    import models

    torch.manual_seed(0)  # the weights sample.py builds with --seed 0
    model, _ = models.create_model(name, **kwargs)
    twin = models.build(name, **kwargs)
    twin.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return Twin(model, x, twin.eval()(x), twin)


@pytest.fixture(scope="session")
def unet64() -> Twin:
    """The seed-0 UNet at 64 px at base width UNET64_WIDTH (what `sample.py --seed 0 --base_width 16` builds), shared
    by the session: Pytorch-UNet's layers and operators with 1/16 of its weights, so each engine builds and loads in
    about half the time. The full-width UNet is unet64_full, and the real checkpoint's."""
    return make_twin("unet", base_width=UNET64_WIDTH)


UNET64_WIDTH = 16


@pytest.fixture(scope="session")
def unet64_full() -> Twin:
    """The seed-0 UNet at Pytorch-UNet's width at 64 px (what `sample.py --seed 0` builds), for the checks a narrow
    net would say little about: int8's scales, and the profiler's overhead against a call (at width 16 eager torch's
    profiled operators add up to only 0.81 of the profiled call)."""
    return make_twin("unet")


@pytest.fixture(scope="session")
def unet64_cache(tmp_path_factory):
    """One artifact cache for the seed-0 UNet at SHAPE64: each engine's build is made once per session, by the first
    test that asks for it, and the tests after it load it (the engine matrix, the levers, auto's full probe)."""
    from engines.cache import ArtifactCache

    return ArtifactCache(str(tmp_path_factory.mktemp("unet64-cache")))


@pytest.fixture(autouse=True)
def _cheap_auto_probe(request, monkeypatch):
    """`--engine auto` (the CLI's default) probes every installed engine the first time a cache folder sees a model
    and shape, and each CLI test has its own folder. Tests not marked `full_auto` probe eager torch alone (no
    build); the probe's logic is tested in tests/test_auto.py, and its full run once, on the session's builds."""
    if request.node.get_closest_marker("full_auto") is None:
        import pipeline.auto

        real = pipeline.auto.candidates
        monkeypatch.setattr(pipeline.auto, "candidates",
                            lambda device, precision: [n for n in real(device, precision) if n in CHEAP_AUTO])


CHEAP_AUTO = ("torch",)


@pytest.fixture(scope="session", autouse=True)
def _no_precompiled_headers():
    """Inductor keeps its precompiled headers in its global temp folder, which for the suite is the session's private
    one, so they are cold on every run: making them cost the session's first AOTInductor compile of the UNet 24 s to
    save 9 s (62 s against 47 s without, on a 2-core AMD EPYC). A user's stay and pay back; the suite compiles
    without. tests/test_gpu_levers.py checks the real setting."""
    from engines import inductor

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(inductor, "precompiled_headers", lambda cache: False)
        yield


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)


# Under pytest-xdist each worker runs on one core: two OpenMP threads per worker on shared cores slow calls at random.
THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2
# Tests that share a module or session fixture too costly to build twice run on one worker (`--dist loadgroup`):
# the seed-0 UNet's engine builds (one cold inductor compile) and the torchrun launches (one module fixture).
GROUPS = {"unet64_cache": "unet64", "runs": "torchrun"}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        for fixture, group in GROUPS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(group))
                break


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per usable core, at most 4 (each worker imports torch and builds its own fixtures)."""
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def pytest_runtest_setup(item):
    """Tests marked `cuda` skip where torch sees no CUDA GPU (pyproject.toml registers the mark)."""
    if item.get_closest_marker("cuda") is not None and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is False here)")


def isolated_environment(root: str) -> dict[str, str]:
    """The variables that keep a run's every write inside `root`: tempfile and subprocesses, the sample's cache,
    inductor's cache, and the libraries that would write into the home folder (tests/test_tempdir.py checks a full run
    with HOME pointed at an empty folder leaves it empty)."""
    return {
        "TMPDIR": root,
        "UNET_SAMPLE_CACHE": os.path.join(root, "cache"),
        "TORCHINDUCTOR_CACHE_DIR": os.path.join(root, "inductor"),
        "MPLCONFIGDIR": os.path.join(root, "matplotlib"),  # its font cache, else ~/.cache or ~/.config/matplotlib
        "XDG_CACHE_HOME": os.path.join(root, "xdg-cache"),  # onnxruntime's device id (~/.cache/Microsoft/...)
        "XDG_CONFIG_HOME": os.path.join(root, "xdg-config"),
        # openvino_telemetry (imported by openvino and nncf) writes ~/intel unless it runs in CI; it has no folder
        # setting, and NNCF_CI is read only after nncf has made its telemetry object.
        "CI": "true",
        # Inductor trusts /proc/cpuinfo instead of compiling a probe per ISA (6 s at the start of every session).
        "TORCHINDUCTOR_VEC_ISA_OK": "1",
    }


def pytest_configure(config):
    """One private temp dir and cache for the whole run, removed at its end: the suite leaves nothing behind.

    tempfile, pytest's tmp_path, subprocesses (TMPDIR), inductor's own cache, the sample's default cache folder and
    the libraries' own home folders all land in it, so a test never reads a cache that an earlier run (or a user)
    left in the home folder, and never writes one there.
    """
    from utils.builds import process_folder

    # Locked while the session lives, like a run's temporary folders: one a killed session left is removed by the next.
    root = process_folder("unet-sample-tests-")
    config._unet_sample_root = root
    os.environ.update(isolated_environment(root))
    tempfile.tempdir = root


def pytest_unconfigure(config):
    root = getattr(config, "_unet_sample_root", None)
    if root:
        shutil.rmtree(root, ignore_errors=True)
