"""Pairing, decoding and batching behave as Pytorch-UNet's dataset does, and bad files are caught."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from dataset.batches import Loader, iter_batches, iter_dataset, to_tensor
from dataset.decode import load_image, load_mask, parse_size
from dataset.pairs import find_pairs
from dataset.synthetic import ensure_synthetic, make_pair
from tests.conftest import write_pair
from utils.errors import SampleError


def test_pairs_gif_and_png(small_set):
    ds = find_pairs(*small_set)
    assert [s.id for s in ds.samples] == ["car0_01", "car1_01", "car2_01"]
    assert ds.samples[2].mask.endswith("car2_01_mask.png") and ds.has_masks and not ds.unpaired


def test_single_files(small_set):
    images, masks = small_set
    ds = find_pairs(os.path.join(images, "car1_01.jpg"), os.path.join(masks, "car1_01_mask.gif"))
    assert [s.id for s in ds.samples] == ["car1_01"]


def test_image_without_mask_is_reported(small_set, tmp_path):
    images, masks = small_set
    os.remove(os.path.join(masks, "car1_01_mask.gif"))
    ds = find_pairs(images, masks)
    assert [s.id for s in ds.samples] == ["car0_01", "car2_01"]
    assert [s.id for s in ds.unpaired] == ["car1_01"] and len(ds) == 3


def test_mask_without_image_is_an_error(small_set):
    images, masks = small_set
    os.remove(os.path.join(images, "car1_01.jpg"))
    with pytest.raises(SampleError, match="1 mask\\(s\\) have no image"):
        find_pairs(images, masks)


def test_no_pairs_at_all(small_set, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    Image.new("L", (8, 8)).save(other / "unrelated.png")
    with pytest.raises(SampleError, match="no image in .* has a mask"):
        find_pairs(small_set[0], str(other))


def test_missing_and_empty_paths(tmp_path):
    with pytest.raises(SampleError, match="image path not found"):
        find_pairs(str(tmp_path / "nope"))
    with pytest.raises(SampleError, match="no image files"):
        find_pairs(str(tmp_path))


def test_limit(small_set):
    assert len(find_pairs(*small_set, limit=2).samples) == 2


def test_resize_is_pillow_bicubic(carvana):
    path = os.path.join(carvana[0], "00087a6bd4dc_01.jpg")
    array, original = load_image(path, (256, 256))
    expected = np.asarray(Image.open(path).convert("RGB").resize((256, 256), Image.BICUBIC))
    assert original == (1918, 1280) and np.array_equal(array, expected)


def test_mask_nearest_stays_binary(carvana):
    mask = load_mask(os.path.join(carvana[1], "00087a6bd4dc_01_mask.gif"), (128, 128), (1918, 1280))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}
    full = np.asarray(Image.open(os.path.join(carvana[1], "00087a6bd4dc_01_mask.gif")))
    assert abs(mask.mean() - (full != 0).mean()) < 0.01


@pytest.mark.parametrize("ext", [".gif", ".png"])
def test_mask_values_any_nonzero_is_foreground(tmp_path, ext):
    truth = write_pair(str(tmp_path), "a", mask_ext=ext)
    mask = load_mask(str(tmp_path / "masks" / f"a_mask{ext}"), (96, 64), (96, 64))
    assert np.array_equal(mask, truth)


def test_mask_of_other_size(tmp_path):
    write_pair(str(tmp_path), "a", size=(96, 64))
    with pytest.raises(SampleError, match="mask .* is 96x64 but its image is 100x64"):
        load_mask(str(tmp_path / "masks" / "a_mask.gif"), (64, 64), (100, 64))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_grayscale_rgba_palette_images_become_rgb(tmp_path, mode):
    path = tmp_path / "x.png"
    Image.new("RGB", (40, 30), (200, 100, 50)).convert(mode).save(path)
    array, _ = load_image(str(path), (32, 32))
    assert array.shape == (32, 32, 3)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_files_are_reported_not_scored(small_set, damage):
    images, masks = small_set
    victim = os.path.join(images, "car1_01.jpg")
    data = open(victim, "rb").read()
    with open(victim, "wb") as f:
        f.write(data[: len(data) // 2] if damage == "truncate" else b"\x00" * 100)
    ds = find_pairs(images, masks)
    batches = list(iter_batches(ds.samples, Loader((64, 64), 2), has_masks=True))
    scored = [i for b in batches for i in b.ids]
    failed = [f for b in batches for f in b.failed]
    assert scored == ["car0_01", "car2_01"]
    assert [f[0] for f in failed] == ["car1_01"] and "cannot decode image" in failed[0][1]


def test_truncated_gif_mask_is_reported(small_set):
    images, masks = small_set
    victim = os.path.join(masks, "car0_01_mask.gif")
    data = open(victim, "rb").read()
    open(victim, "wb").write(data[:30])
    batches = list(iter_batches(find_pairs(images, masks).samples, Loader((64, 64), 4), has_masks=True))
    assert batches[0].ids == ["car1_01", "car2_01"]
    assert "cannot decode mask" in batches[0].failed[0][1]


def test_batches_pad_the_last_one(small_set):
    ds = find_pairs(*small_set)
    batches = list(iter_batches(ds.samples, Loader((64, 48), 2), has_masks=True))
    assert [b.n for b in batches] == [2, 1]
    last = batches[-1]
    assert last.images.shape == (2, 3, 48, 64) and last.masks.shape == (2, 48, 64)
    assert last.original_sizes == [(96, 64)]
    assert 0.0 <= last.images.min() and last.images.max() <= 1.0


def test_batch_larger_than_dataset(small_set):
    batches = list(iter_batches(find_pairs(*small_set).samples, Loader((32, 32), 8), has_masks=True))
    assert len(batches) == 1 and batches[0].n == 3 and batches[0].images.shape[0] == 8


def test_unpaired_images_come_last_without_masks(small_set):
    images, masks = small_set
    os.remove(os.path.join(masks, "car0_01_mask.gif"))
    batches = list(iter_dataset(find_pairs(images, masks), Loader((32, 32), 4)))
    assert [b.ids for b in batches] == [["car1_01", "car2_01"], ["car0_01"]]
    assert batches[0].masks is not None and batches[1].masks is None


def test_to_tensor_scales_like_pytorch_unet():
    x = to_tensor([np.full((2, 3, 3), 255, np.uint8)])
    assert x.shape == (1, 3, 2, 3) and float(x.max()) == 1.0


@pytest.mark.parametrize("text,size", [("512", (512, 512)), ("959x640", (959, 640))])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["0", "8", "abc", "1x2x3"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_synthetic_set_is_deterministic_and_carvana_shaped(tmp_path):
    a, b = make_pair(5), make_pair(5)
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0]))
    images, masks = ensure_synthetic(2, seed=1, cache_dir=str(tmp_path))
    ds = find_pairs(images, masks)
    assert len(ds.samples) == 2
    with Image.open(ds.samples[0].image) as img, Image.open(ds.samples[0].mask) as mask:
        assert img.size == (1918, 1280) and img.format == "JPEG"
        assert mask.format == "GIF" and set(np.unique(np.asarray(mask))) == {0, 1}
        assert 0.05 < np.asarray(mask).mean() < 0.4
    assert ensure_synthetic(2, seed=1, cache_dir=str(tmp_path)) == (images, masks)  # reused, not rewritten
