"""Shared fixtures: paths to ../shared test material (skipped when absent), small generated data, checkpoints."""
from __future__ import annotations

import os
import shutil
import sys
import tempfile

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


@pytest.fixture(autouse=True)
def _cheap_auto_probe(request, monkeypatch):
    """`--engine auto` (the CLI's default) probes every installed engine the first time a cache folder sees a model
    and shape; each CLI test has its own folder, and inductor alone compiles for ~20 s. Tests not marked `full_auto`
    probe only torch and torchscript, which build in a second; the probe's logic is the same."""
    if request.node.get_closest_marker("full_auto") is None:
        import pipeline.auto

        real = pipeline.auto.candidates
        monkeypatch.setattr(pipeline.auto, "candidates",
                            lambda device, precision: [n for n in real(device, precision) if n in CHEAP_AUTO])


CHEAP_AUTO = ("torch", "torchscript")


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(2)


def pytest_runtest_setup(item):
    """Tests marked `cuda` skip where torch sees no CUDA GPU (pyproject.toml registers the mark)."""
    if item.get_closest_marker("cuda") is not None and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is False here)")


def pytest_configure(config):
    """One private temp dir and cache for the whole run, removed at its end: the suite leaves nothing behind.

    tempfile, pytest's tmp_path, subprocesses (TMPDIR), inductor's own cache and the sample's default cache folder
    all land in it, so a test never reads a cache that an earlier run (or a user) left in the home folder.
    """
    root = tempfile.mkdtemp(prefix="unet-sample-tests-")
    config._unet_sample_root = root
    os.environ["TMPDIR"] = tempfile.tempdir = root
    os.environ["UNET_SAMPLE_CACHE"] = os.path.join(root, "cache")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(root, "inductor")


def pytest_unconfigure(config):
    root = getattr(config, "_unet_sample_root", None)
    if root:
        shutil.rmtree(root, ignore_errors=True)
