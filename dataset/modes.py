"""Every Pillow mode read by one rule: an image becomes the 8-bit RGB a viewer shows, a mask a foreground band; an image
with no sensible mapping is refused by name; both are turned upright by their EXIF orientation
(docs/data.md#image-modes)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL
from PIL import Image

# Modes Pillow converts to RGB itself, 8 bits a channel, the way a viewer shows them.
PILLOW_RGB = {
    "1": "black and white",
    "L": "8-bit grey copied to R, G and B",
    "LA": "8-bit grey copied to R, G and B; alpha dropped",
    "La": "8-bit grey (premultiplied alpha divided out); alpha dropped",
    "P": "its palette's colours",
    "PA": "its palette's colours; alpha dropped",
    "RGBA": "alpha dropped",
    "RGBa": "premultiplied alpha divided out, then dropped",
    "RGBX": "padding dropped",
    "CMYK": "CMYK to RGB by Pillow (no colour profile)",
    "YCbCr": "YCbCr to RGB (BT.601, as JPEG)",
    "LAB": "CIELAB to RGB by Pillow",
    "HSV": "HSV to RGB",
    "BGR;15": "15-bit BGR to RGB",
    "BGR;16": "16-bit BGR to RGB",
    "BGR;24": "BGR to RGB",
}
SIXTEEN = ("I;16", "I;16L", "I;16B", "I;16N")  # 16-bit grey, nominal range 0-65535
MASK_BANDS = ("1", "L", "P", "I", "F") + SIXTEEN  # single-band masks: their stored values (palette indices for P)
RANGES = (1.0, 255.0, 65535.0)  # the ranges a 32-bit integer (not 0-1) or float grey image is read in
ORIENTATION = 0x0112  # EXIF's Orientation tag
# Pillow's ImageOps.exif_transpose: the transpose that shows each stored orientation upright, as a viewer does.
UPRIGHT = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT, "mirrored left to right"),
    3: (Image.Transpose.ROTATE_180, "rotated 180 degrees"),
    4: (Image.Transpose.FLIP_TOP_BOTTOM, "mirrored top to bottom"),
    5: (Image.Transpose.TRANSPOSE, "mirrored across its top-left to bottom-right diagonal"),
    6: (Image.Transpose.ROTATE_270, "rotated 90 degrees clockwise"),
    7: (Image.Transpose.TRANSVERSE, "mirrored across its top-right to bottom-left diagonal"),
    8: (Image.Transpose.ROTATE_90, "rotated 90 degrees counter-clockwise"),
}


@dataclass(frozen=True)
class Conversion:
    """A file that was not 8-bit RGB (an image) or not a 1-bit / 8-bit / palette band (a mask), and how it was read."""

    file: str  # "image" or "mask"
    path: str
    mode: str
    how: str


def orientation(img: Image.Image) -> int:
    """The EXIF orientation a viewer applies to `img`: 2-8, or 1 (as stored) for none, 1, or a value it ignores.

    Pillow parses the EXIF block it kept while reading the header (a JPEG's APP1 segment; a PNG's eXIf chunk needs
    the file read): microseconds, and nothing for a file without one. Asked again after `load()` (see `upright`)."""
    try:
        value = img.getexif().get(ORIENTATION, 1)
    except Exception:  # noqa: BLE001  a damaged EXIF block: viewers show the pixels as stored, and so do we
        return 1
    return value if isinstance(value, int) and value in UPRIGHT else 1


def upright_size(size: tuple[int, int], turn: int) -> tuple[int, int]:
    """(W, H) of an image of stored `size` once EXIF orientation `turn` is applied (5-8 swap the sides)."""
    return (size[1], size[0]) if turn >= 5 else size


def upright(img: Image.Image, stored: int, turn: int) -> tuple[Image.Image, str | None]:
    """`img` (loaded) as a viewer shows it, and how it was turned (None: stored upright). `stored` is its EXIF
    orientation before loading, `turn` after: Pillow turns a TIFF upright itself while loading it (leaving 1)."""
    if stored not in UPRIGHT:
        return img, None
    method, how = UPRIGHT[stored]
    return (img.transpose(method) if turn == stored else img), f"EXIF orientation {stored}: turned upright ({how})"


def _grey8(img: Image.Image) -> tuple[np.ndarray, str]:
    """A 16-bit, 32-bit integer or float grey image as 8-bit grey; ValueError (the reason) when it has no range.

    16-bit: its nominal 0-65535 (a dark image stays dark, as a viewer shows it). 32-bit integer and float have no
    nominal range a file uses: the smallest of 0-1 (float only), 0-255 and 0-65535 that holds every value (Pillow's own
    `convert("I")` keeps 8-bit values; a 16-bit PNG opens as `I` in older Pillow; float images are mostly 0-1). A float
    at most half a grey level (of 0-1) below 0, or half a level above a range's top, still counts as inside it."""
    values = np.asarray(img)
    if values.size == 0:
        raise ValueError("it has no pixels")
    if img.mode in SIXTEEN:
        top, how = 65535.0, "16-bit grey, 0-65535 scaled to 0-255"
    else:
        kind = "float" if img.mode == "F" else "32-bit integer"
        if not np.isfinite(values).all():
            raise ValueError("its float values include NaN or infinity, which have no brightness; fix the file")
        lo, hi = values.min().item(), values.max().item()
        half = 1 / 510 if img.mode == "F" else 0  # half a grey level of 0-1: float noise around 0, never a real value
        tops = [t for t in RANGES if (t > 1 or img.mode == "F") and lo >= -half and hi <= t + t * half]
        if not tops:
            within = "0-1, 0-255 or 0-65535" if img.mode == "F" else "0-255 or 0-65535"
            raise ValueError(f"its {kind} values run from {lo:g} to {hi:g}, not within {within}, so they have no "
                             "brightness to read; save it as 8- or 16-bit")
        top = tops[0]
        how = f"{kind} grey within 0-{top:g}, " + ("kept as 8-bit" if top == 255 else "scaled to 0-255")
    grey = np.rint(values.astype(np.float64) * (255.0 / top))
    return np.clip(grey, 0, 255).astype(np.uint8), how


def rgb8(img: Image.Image) -> tuple[Image.Image, str | None]:
    """`img` (loaded) as 8-bit RGB and how it was converted (None: it was 8-bit RGB); ValueError (the reason) for a
    mode with no sensible mapping."""
    mode = img.mode
    if mode == "RGB":
        return img, None
    if mode in SIXTEEN or mode in ("I", "F"):
        grey, how = _grey8(img)
        return Image.fromarray(grey).convert("RGB"), how
    if mode not in PILLOW_RGB:
        raise ValueError(f"its mode {mode} has no known mapping to 8-bit RGB; save it as RGB")
    try:
        return (img.convert("LA") if mode == "La" else img).convert("RGB"), PILLOW_RGB[mode]
    except ValueError:  # a Pillow without this conversion (LAB on old ones)
        raise ValueError(f"Pillow {PIL.__version__} cannot convert its mode {mode} to RGB; save it as RGB") from None


def mask_band(img: Image.Image) -> tuple[Image.Image, str | None]:
    """`img` (loaded) as one band whose non-zero pixels are the foreground, and how it was read (None for 1-bit, 8-bit
    grey and palette masks, the usual ones). Single bands keep their stored values (palette indices, never the
    palette's colours; 16-bit and float values, never clipped to 8 bits); colour masks count a pixel with any non-zero
    colour channel (alpha ignored). ValueError for a float mask with NaN or infinity."""
    mode = img.mode
    if mode in ("1", "L", "P"):
        return img, None
    if mode in MASK_BANDS:
        if mode == "F" and not np.isfinite(np.asarray(img)).all():
            raise ValueError("its float values include NaN or infinity; fix the mask")
        return img, "non-zero values (not clipped to 8 bits)"
    if mode in ("LA", "La", "PA"):
        return img.getchannel(0), f"non-zero {'palette index' if mode == 'PA' else 'grey'}; alpha ignored"
    rgb, _ = rgb8(img)
    colour = np.asarray(rgb).any(axis=2).astype(np.uint8)
    return Image.fromarray(colour), "any non-zero colour channel" + ("; alpha ignored" if "A" in mode else "")


def describe_conversions(conversions: list[Conversion], examples: int = 5) -> list[dict] | None:
    """The report's `config.conversions`: one entry per file kind, mode and way, with a count and the first
    `examples` paths; each file once however many rows read it. None when nothing was converted."""
    groups: dict[tuple[str, str, str], dict[str, None]] = {}
    for c in conversions:  # a dict keeps the first-seen order and counts a path once
        groups.setdefault((c.file, c.mode, c.how), {})[c.path] = None
    return [{"file": file, "mode": mode, "how": how, "count": len(paths), "examples": list(paths)[:examples]}
            for (file, mode, how), paths in groups.items()] or None
