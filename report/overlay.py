"""Pictures of a prediction: the mask as a viewable PNG, and the image with the mask tinted over it."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

TINT = (255, 0, 160)  # magenta: stands out on cars and on the studio background
OUTLINE = np.array([0, 255, 0], dtype=np.uint8)
ALPHA = 0.45


def encode_mask_png(pred: np.ndarray, n_classes: int) -> bytes:
    """A (H, W) class map as an 8-bit PNG a person can view: class c -> c * 255 // (n_classes - 1) (0 / 255 for two)."""
    scale = 255 // max(n_classes - 1, 1)
    buffer = io.BytesIO()
    # compress_level 1: binary masks shrink nearly as well as at the default level, several times faster.
    Image.fromarray(pred.astype(np.uint8) * scale).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def read_mask_png(path: str) -> np.ndarray:
    """A mask PNG written by encode_mask_png back as a (H, W) 0 / 1 foreground map."""
    with Image.open(path) as img:
        return (np.asarray(img) != 0).astype(np.uint8)


def outline_of(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels of `mask` within `width` pixels of its border (the mask minus its erosion by a square)."""
    inside = mask.astype(bool)
    eroded = inside.copy()
    for _ in range(width):
        shrunk = eroded.copy()
        shrunk[1:, :] &= eroded[:-1, :]
        shrunk[:-1, :] &= eroded[1:, :]
        shrunk[:, 1:] &= eroded[:, :-1]
        shrunk[:, :-1] &= eroded[:, 1:]
        eroded = shrunk
    return inside & ~eroded


def draw_overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray | None = None) -> np.ndarray:
    """The RGB image with predicted foreground tinted and, when known, the ground-truth outline drawn in green."""
    base = Image.fromarray(image)
    # Pillow's blend / composite run in C: several times faster than numpy fancy indexing on a 1918x1280 image.
    tinted = Image.blend(base, Image.new("RGB", base.size, TINT), ALPHA)
    out = np.array(Image.composite(tinted, base, Image.fromarray(((pred != 0) * 255).astype(np.uint8))))
    if truth is not None:
        out[outline_of(truth, max(1, image.shape[1] // 640))] = OUTLINE
    return out


def encode_jpeg(image: np.ndarray, quality: int = 85) -> bytes:
    """An RGB array as JPEG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
