"""Decoding and resizing one image or mask as Pytorch-UNet does (RGB, bicubic for images, nearest for masks)."""
from __future__ import annotations

import contextlib
import io
import os
import time

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from dataset.modes import PILLOW_RGB, Conversion, mask_band, orientation, rgb8, upright, upright_size
from utils.errors import SampleError, first_line
from utils.files import open_regular
from utils.trace import TRACE

MAX_SIDE = 16384  # --image_size: past this no UNet fits any machine's memory (pipeline/config.py's memory check)


def decode_error(what: str, path: str, exc: Exception) -> SampleError:
    """Any failure to decode one file, as one line naming it: the file is skipped, never the whole row."""
    if isinstance(exc, SampleError):
        return exc
    if isinstance(exc, Image.DecompressionBombError):
        reason = f"{first_line(exc)} (Pillow's decompression-bomb limit); shrink it or remove it"
    elif isinstance(exc, UnidentifiedImageError):  # its message names the file object, not the path
        reason = ("Pillow cannot read it as an image (not a format it knows, a damaged header, or a layout it does not "
                  "support); replace it or remove it")
    elif isinstance(exc, MemoryError):
        reason = "not enough memory to decode it; shrink it or remove it"
    elif isinstance(exc, (OSError, SyntaxError, ValueError)):
        reason = str(exc) or type(exc).__name__
    else:  # Pillow's decoders raise many types on hostile files (struct.error, IndexError, ...)
        reason = f"{type(exc).__name__}: {first_line(exc)}"
    return SampleError(f"cannot decode {what} {path}: {reason}")


def _check_pixels(img: Image.Image, what: str, path: str) -> None:
    """Refuse what Pillow only warns about (between MAX_IMAGE_PIXELS and twice that) before decoding any pixel."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit and img.size[0] * img.size[1] > limit:
        raise SampleError(f"cannot decode {what} {path}: {img.size[0]}x{img.size[1]} = {img.size[0] * img.size[1]:,} "
                          f"pixels is past Pillow's decompression-bomb limit of {limit:,}; shrink it or remove it")


@contextlib.contextmanager
def open_image(path: str, what: str):
    """Pillow's image of a regular file, its size checked before any pixel is decoded; an empty file named as such."""
    with open_regular(path, what) as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise SampleError(f"cannot decode {what} {path}: the file is empty (0 bytes); replace it or remove it")
        with Image.open(f) as img:
            _check_pixels(img, what, path)
            yield img


DECODES = ("fast", "exact")


def _torch_resize_works() -> bool:
    """Whether this torch resizes uint8 images with antialiased bicubic as Pillow does (torch >= 2.1's kernel, within
    one or two grey levels; torch 2.0's uint8 path runs but differs by up to 24): checked on a random image."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8))
    try:
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]
        y = torch.nn.functional.interpolate(x, size=(23, 37), mode="bicubic", antialias=True, align_corners=False)
    except (RuntimeError, NotImplementedError, TypeError):
        return False
    ours = y[0].permute(1, 2, 0).numpy().astype(int)
    pillow = np.asarray(image.resize((37, 23), resample=Image.BICUBIC)).astype(int)
    return np.abs(ours - pillow).max() <= 2


TORCH_RESIZE = _torch_resize_works()


def resize_bicubic(rgb: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Antialiased bicubic to size=(W, H), as Pillow's resize: torch's uint8 kernel (written to match Pillow's, within
    one grey level on about 0.1 % of values, and several times faster), else Pillow itself."""
    if rgb.size == size:
        return np.array(rgb)  # writable (np.asarray's is read-only, which torch.from_numpy warns about)
    if not TORCH_RESIZE:
        return np.array(rgb.resize(size, resample=Image.BICUBIC))
    x = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None]  # a writable copy (np.asarray's is read-only)
    y = torch.nn.functional.interpolate(x, size=(size[1], size[0]), mode="bicubic", antialias=True, align_corners=False)
    return y[0].permute(1, 2, 0).numpy()


def _note(conversions: list[Conversion] | None, file: str, path: str, mode: str, how: str | None) -> None:
    """Add how a file was read to `conversions` (None: as stored)."""
    if how is not None and conversions is not None:
        conversions.append(Conversion(file, path, mode, how))


def to_rgb(img: Image.Image, path: str = "", conversions: list[Conversion] | None = None) -> Image.Image:
    """`img` decoded, as 8-bit RGB by dataset/modes.py's rule (ValueError when it has none) and turned upright by its
    EXIF orientation, as a viewer shows it; how an image that was not 8-bit RGB or upright was read is added to
    `conversions`."""
    stored = orientation(img)
    img.load()
    rgb, how = rgb8(img)
    _note(conversions, "image", path, img.mode, how)
    rgb, how = upright(rgb, stored, orientation(img))  # asked again: loading a TIFF turns it upright already
    _note(conversions, "image", path, img.mode, how)
    return rgb


def resized(rgb: Image.Image, size: tuple[int, int], decode: str) -> np.ndarray:
    """An RGB image at `size`: Pillow's bicubic for `exact`, torch's for every other path (`fast`, and the CPU side
    of `nvjpeg`: the files it leaves to the CPU)."""
    if decode != "exact":
        return resize_bicubic(rgb, size)
    return np.array(rgb if rgb.size == size else rgb.resize(size, resample=Image.BICUBIC))  # writable, as above


def _count(clock: list[float], start: float, decoded: float, end: float, path: str) -> None:
    """A file's decode and resize seconds added to a decode thread's `clock`, and the same two spans in --trace."""
    clock[0] += decoded - start
    clock[1] += end - decoded
    TRACE.record("decode", start, decoded, file=path)
    TRACE.record("resize", decoded, end, file=path)


def load_image(path: str, size: tuple[int, int], decode: str = "exact", clock: list[float] | None = None,
               conversions: list[Conversion] | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode to upright RGB and resize to size=(W, H) with bicubic; return the HWC uint8 array and the upright (W, H)
    before resizing (a viewer's, which its mask must have).

    `exact` is Pytorch-UNet's path: the full-size decode, then Pillow's bicubic. `fast` (and `nvjpeg`'s CPU side)
    decodes the same way and resizes with torch's antialiased bicubic (`resize_bicubic`, Pillow's filter). A reduced
    DCT scale (Pillow's `draft`) is not used: it moves dice past the bar (docs/data.md). `clock`, when given, gets
    [decode seconds, resize seconds] added; `conversions`, an image that was not 8-bit RGB or upright.
    """
    try:
        start = time.perf_counter()
        with open_image(path, "image") as img:
            rgb = to_rgb(img, path, conversions)
        decoded = time.perf_counter()
        array = resized(rgb, size, decode)
        if clock is not None:
            _count(clock, start, decoded, time.perf_counter(), path)
        return array, rgb.size  # the upright size: a viewer's, the mask's and --eval_resolution original's
    except Exception as exc:  # noqa: BLE001  one file's failure, named; decode_error keeps its message
        raise decode_error("image", path, exc) from None


def _check_mask_size(path: str, shown: tuple[int, int], image_size: tuple[int, int], turn: int) -> None:
    """SampleError unless a mask, as a viewer shows it, has its upright image's size; a swap is explained."""
    if shown == image_size:
        return
    hint = ""
    if shown == image_size[::-1]:  # most likely a mask drawn on a rotated file's stored pixels, or the other way round
        hint = (" (both as a viewer shows them: a file with an EXIF orientation is turned upright first, so a mask "
                "must be drawn on the upright image)")
    elif turn != 1:
        hint = f" (after its EXIF orientation {turn})"
    raise SampleError(f"mask {path} is {shown[0]}x{shown[1]} but its image is {image_size[0]}x{image_size[1]}{hint}; "
                      "a mask must have its image's size")


def load_mask(path: str, size: tuple[int, int], image_size: tuple[int, int], clock: list[float] | None = None,
              conversions: list[Conversion] | None = None) -> np.ndarray:
    """Decode a mask, check it matches its image's size, resize with nearest; any non-zero pixel is foreground (the
    band of dataset/modes.py's mask_band). `clock`, when given, gets [decode seconds, resize seconds] added;
    `conversions`, a mask that was not a 1-bit, 8-bit grey or palette band."""
    try:
        start = time.perf_counter()
        with open_image(path, "mask") as img:
            stored = orientation(img)
            _check_mask_size(path, upright_size(img.size, stored), image_size, stored)
            img.load()
            band, how = mask_band(img)
            _note(conversions, "mask", path, img.mode, how)
            band, how = upright(band, stored, orientation(img))  # asked again: loading a TIFF turns it upright already
            _note(conversions, "mask", path, img.mode, how)
            decoded = time.perf_counter()
            if band.size != size:
                band = band.resize(size, resample=Image.NEAREST)
            mask = (np.asarray(band) != 0).astype(np.uint8)
        if clock is not None:
            _count(clock, start, decoded, time.perf_counter(), path)
        return mask
    except Exception as exc:  # noqa: BLE001  one file's failure, named; decode_error keeps its message
        raise decode_error("mask", path, exc) from None


JPEG_MAGIC = b"\xff\xd8\xff"


def read_jpeg(path: str, clock: list[float] | None = None,
              conversions: list[Conversion] | None = None) -> tuple[bytes, tuple[int, int]] | None:
    """A JPEG's bytes and (W, H) from its header (no pixel decoded), for a device decoder; None for other formats and
    for a JPEG with an EXIF orientation (the CPU turns it upright). A grey JPEG (the device decoder copies it to R, G
    and B, as `to_rgb` does) is added to `conversions`."""
    try:
        start = time.perf_counter()
        with open_regular(path, "image") as f:
            data = f.read()
        if not data.startswith(JPEG_MAGIC):
            return None
        with Image.open(io.BytesIO(data)) as img:
            _check_pixels(img, "image", path)
            if img.format != "JPEG" or img.mode not in ("RGB", "L"):
                return None  # CMYK and other rare modes: the CPU decoder handles them
            if orientation(img) != 1:
                return None  # the device decoder ignores EXIF: the CPU path turns it upright
            size = img.size
            if img.mode == "L" and conversions is not None:
                conversions.append(Conversion("image", path, "L", PILLOW_RGB["L"]))
        if clock is not None:
            read = time.perf_counter()
            clock[0] += read - start
            TRACE.record("decode", start, read, file=path)
        return data, size
    except Exception as exc:  # noqa: BLE001  one file's failure, named; decode_error keeps its message
        raise decode_error("image", path, exc) from None


def parse_size(text: str) -> tuple[int, int]:
    """'512' -> (512, 512); '959x640' -> (959, 640) as (W, H)."""
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or min(values) < 16:
        raise ValueError(f"expected N or WxH with sides >= 16, got {text!r}")
    if max(values) > MAX_SIDE:
        raise ValueError(f"sides are at most {MAX_SIDE} (no UNet of that size fits in memory), got {text!r}")
    return (values[0], values[-1])

