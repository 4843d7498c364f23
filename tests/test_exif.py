"""Images (and masks) are read upright by their EXIF orientation, as a viewer shows them, on every decode path
(docs/data.md#image-modes, docs/failures.md row 14)."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import sample
from dataset.batches import Loader, iter_batches
from dataset.calibration import load_calibration
from dataset.decode import load_image, load_mask, open_image, read_jpeg, to_rgb
from dataset.nvjpeg import DeviceJpeg
from dataset.pairs import Sample, find_pairs
from tests.conftest import CPU, SMALL, write_pair

T = Image.Transpose
# How a camera stores an upright picture under each orientation: the inverse of the transpose a viewer applies.
STORED = {2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM, 5: T.TRANSPOSE, 6: T.ROTATE_90,
          7: T.TRANSVERSE, 8: T.ROTATE_270}


def _upright(size=(96, 64)) -> Image.Image:
    """A picture with no symmetry (a gradient and an off-centre box), so any wrong transpose shows."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    pixels = np.stack([x * 255 // w, y * 255 // h, np.zeros_like(x)], axis=2).astype(np.uint8)
    pixels[h // 8: h // 3, w // 10: w // 3, 2] = 255
    return Image.fromarray(pixels)


def _save_oriented(img: Image.Image, path: str, turn: int, **kwargs) -> None:
    exif = Image.Exif()
    exif[0x0112] = turn
    img.transpose(STORED[turn]).save(path, exif=exif, **kwargs)


@pytest.mark.parametrize("decode", ["fast", "exact"])
@pytest.mark.parametrize("turn", range(2, 9))
def test_an_oriented_image_decodes_to_its_upright_pixels(tmp_path, decode, turn):
    up, path = _upright(), str(tmp_path / f"o{turn}.png")  # PNG: lossless, so the pixels must match exactly
    up.save(tmp_path / "up.png")
    _save_oriented(up, path, turn)
    with Image.open(path) as img:  # STORED is what Pillow's own exif_transpose undoes
        assert np.array_equal(np.asarray(ImageOps.exif_transpose(img)), np.asarray(up))
    expected, size = load_image(str(tmp_path / "up.png"), (48, 40), decode)
    got, original = load_image(path, (48, 40), decode)
    assert original == size == (96, 64) and np.array_equal(got, expected)
    _save_oriented(up, str(tmp_path / "o.tif"), turn)  # Pillow turns a TIFF upright while loading it: never twice
    converted: list = []
    got, original = load_image(str(tmp_path / "o.tif"), (48, 40), decode, None, converted)
    assert original == (96, 64) and np.array_equal(got, expected)
    assert [c.how[:19] for c in converted] == [f"EXIF orientation {turn}:"]


@pytest.mark.parametrize("decode", ["fast", "exact"])
def test_an_oriented_jpeg_decodes_as_its_upright_copy(tmp_path, decode):
    up = _upright()
    up.save(tmp_path / "up.jpg", quality=95)
    with Image.open(tmp_path / "up.jpg") as img:  # the same JPEG pixels, stored turned (JPEG re-encoding is lossy)
        _save_oriented(img.convert("RGB"), str(tmp_path / "o6.png"), 6)
    expected, _ = load_image(str(tmp_path / "up.jpg"), (96, 64), decode)
    got, original = load_image(str(tmp_path / "o6.png"), (96, 64), decode)
    assert original == (96, 64) and np.array_equal(got, expected)
    _save_oriented(up, str(tmp_path / "o6.jpg"), 6, quality=95)
    got, original = load_image(str(tmp_path / "o6.jpg"), (96, 64), decode)
    assert original == (96, 64) and np.abs(got.astype(int) - expected.astype(int)).mean() < 3


def test_a_non_square_rotated_jpeg_passes_the_size_check_with_its_upright_mask_and_is_reported(tmp_path):
    mask = write_pair(str(tmp_path), "car0_01", size=(96, 64))  # the mask as an annotator drew it, on the upright car
    path = str(tmp_path / "images" / "car0_01.jpg")
    with Image.open(path) as img:
        _save_oriented(img.convert("RGB"), path, 6, quality=95)
    with Image.open(path) as img:
        assert img.size == (64, 96)  # stored on its side
    converted: list = []
    _, original = load_image(path, (96, 64), "fast", None, converted)
    assert original == (96, 64)
    got = load_mask(str(tmp_path / "masks" / "car0_01_mask.gif"), (96, 64), original, None, converted)
    assert np.array_equal(got, mask)
    assert [(c.file, c.path, c.how) for c in converted] == [
        ("image", path, "EXIF orientation 6: turned upright (rotated 90 degrees clockwise)")]


def test_an_oriented_mask_is_turned_upright_too(tmp_path):
    mask = write_pair(str(tmp_path), "car0_01", size=(96, 64))
    path = str(tmp_path / "masks" / "car0_01_mask.png")
    _save_oriented(Image.fromarray(mask * 255), path, 8)
    converted: list = []
    assert np.array_equal(load_mask(path, (96, 64), (96, 64), None, converted), mask)
    assert [(c.file, c.how) for c in converted] == [
        ("mask", "EXIF orientation 8: turned upright (rotated 90 degrees counter-clockwise)")]


def test_a_mask_drawn_on_the_stored_pixels_is_refused_with_a_hint(tmp_path):
    write_pair(str(tmp_path), "car0_01", size=(96, 64))
    with pytest.raises(Exception, match=r"is 96x64 but its image is 64x96.*EXIF orientation"):
        load_mask(str(tmp_path / "masks" / "car0_01_mask.gif"), (32, 32), (64, 96))


def test_nvjpeg_declines_an_oriented_jpeg_and_the_cpu_turns_it_upright(tmp_path):
    write_pair(str(tmp_path), "car0_01", size=(96, 64), seed=0)
    write_pair(str(tmp_path), "car1_01", size=(96, 64), seed=1)
    path = str(tmp_path / "images" / "car1_01.jpg")
    with Image.open(path) as img:
        _save_oriented(img.convert("RGB"), path, 6, quality=95)
    assert read_jpeg(path) is None
    assert read_jpeg(str(tmp_path / "images" / "car0_01.jpg")) is not None

    def pillow(datas):  # a device decoder that, like nvJPEG, ignores EXIF
        return [torch.from_numpy(np.array(Image.open(io.BytesIO(d.numpy().tobytes())).convert("RGB"))).permute(2, 0, 1)
                for d in datas]
    samples = find_pairs(str(tmp_path / "images"), str(tmp_path / "masks")).samples
    decoder = DeviceJpeg(CPU, (96, 64), pillow)
    on_device = next(iter_batches(samples, Loader((96, 64), 2, 1, "fast", device_decoder=decoder), True))
    on_cpu = next(iter_batches(samples, Loader((96, 64), 2, 1, "fast"), True))
    assert on_device.failed == [] and torch.equal(on_device.masks, on_cpu.masks)
    assert (on_device.pixels.int() - on_cpu.pixels.int()).abs().max() <= 2
    with open(path, "rb") as f:  # the CPU fallback of bytes the device could not decode turns them upright too
        assert decoder._cpu(f.read(), path).shape == (64, 96, 3)


def test_int8_calibration_reads_an_oriented_image_upright(tmp_path):
    up = _upright()
    up.save(tmp_path / "car0_01.png")
    _save_oriented(up, str(tmp_path / "car1_01.png"), 7)
    samples = [Sample(f"car{i}_01", str(tmp_path / f"car{i}_01.png")) for i in (0, 1)]
    batch = load_calibration(samples, Loader((48, 32), 2)).batches[0]
    assert torch.equal(batch[0], batch[1])


def test_the_overlay_re_read_is_upright(tmp_path):
    up = _upright()
    _save_oriented(up, str(tmp_path / "o5.png"), 5)
    with open_image(str(tmp_path / "o5.png"), "image") as img:
        assert np.array_equal(np.asarray(to_rgb(img)), np.asarray(up))


def test_a_rotated_pair_scores_as_its_upright_copy_end_to_end(tmp_path):
    root = tmp_path / "data"
    write_pair(str(root), "car0_01", size=(96, 64))
    path = root / "images" / "car0_01.jpg"
    with Image.open(path) as img:
        upright = img.convert("RGB")
    upright.save(root / "images" / "car0_01.png")  # lossless, so the rotated copy holds exactly the same pixels
    os.unlink(path)
    common = ["--engine", "torch", "--image_size", "32", "--loop", "2", "--warm_counter", "1", "--quiet",
              "--no_reference", "--device", "cpu", "--mask_path", str(root / "masks")] + SMALL
    reports = []
    for turn in (1, 6):
        if turn != 1:
            _save_oriented(upright, str(root / "images" / "car0_01.png"), turn)
        out = tmp_path / f"r{turn}.json"
        assert sample.main(common + ["--image_path", str(root / "images"), "--json", str(out), "--output",
                                     str(tmp_path / f"o{turn}"), "--overlay", "--eval_resolution", "original"]) == 0
        reports.append(json.loads(out.read_text()))
    dice = [r["rows"][0]["per_image"]["dice"] for r in reports]
    assert dice[0] == dice[1]
    for name in ("car0_01_mask.png", "car0_01_overlay.jpg"):  # written upright, from the upright re-read
        assert (tmp_path / "o1" / name).read_bytes() == (tmp_path / "o6" / name).read_bytes()
    assert reports[1]["config"]["conversions"][0]["how"].startswith("EXIF orientation 6")
