"""A deterministic Carvana-like data set (studio background, cars with wheels and windows) for runs without data.

A set is kept in `<cache>/synthetic-v<VERSION>-seed<S>-n<N>`, tagged as the sample's (utils/builds.py: CACHEDIR.TAG)
from the moment its build folder is made, so that `--clear_cache` removes it and never a user's `synthetic-*`.
"""
from __future__ import annotations

import os
import random
from typing import Callable

from PIL import Image, ImageDraw, ImageFilter

from utils.builds import TEMP_STALE, build_folder, process_folder, settle, sweep, tag, tagged
from utils.files import default_cache_dir

WIDTH, HEIGHT = 1918, 1280  # Carvana's resolution, so decoding and resizing cost what they cost on real data
VERSION = 1  # bump when the drawing changes, so old caches are not reused
BUILD = ".synthetic-"  # a set being generated (utils/builds.py)
TEMPORARY = "unet-sample-data-"  # a set generated apart from an unwritable cache (one of utils.builds.TEMPORARY)


def _background(rng: random.Random) -> Image.Image:
    """A studio backdrop: a light wall gradient over a slightly darker floor, with the car's shadow added later."""
    wall = rng.randint(200, 245)
    floor = wall - rng.randint(15, 40)
    horizon = int(HEIGHT * rng.uniform(0.55, 0.65))
    gradient = Image.linear_gradient("L").resize((WIDTH, HEIGHT))
    top = Image.new("RGB", (WIDTH, HEIGHT), (wall, wall, wall + 5 if wall < 250 else wall))
    bottom = Image.new("RGB", (WIDTH, HEIGHT), (floor, floor, floor))
    canvas = Image.composite(bottom, top, gradient.point(lambda v: 255 if v * HEIGHT / 255 > horizon else int(v * 0.3)))
    return canvas


def _car(rng: random.Random, draw_img: ImageDraw.ImageDraw, draw_mask: ImageDraw.ImageDraw) -> None:
    """Draw one car (body, cabin, windows, wheels, lights) on the image and its silhouette on the mask."""
    length = rng.uniform(0.55, 0.8) * WIDTH
    height = length * rng.uniform(0.28, 0.36)
    cx = WIDTH / 2 + rng.uniform(-0.08, 0.08) * WIDTH
    base = HEIGHT * rng.uniform(0.68, 0.78)
    left, right = cx - length / 2, cx + length / 2
    body_top = base - height * 0.55
    colour = tuple(rng.randint(20, 230) for _ in range(3))
    wheel_r = height * rng.uniform(0.2, 0.25)

    # Shadow on the floor first: dark pixels outside the mask, as real studio shots have.
    draw_img.ellipse([left - 20, base - 25, right + 20, base + 35], fill=(90, 90, 95))

    cabin = [
        (left + length * 0.22, body_top + 4), (left + length * 0.34, base - height),
        (left + length * 0.68, base - height), (left + length * 0.82, body_top + 4),
    ]
    body = [left, body_top, right, base - wheel_r * 0.3]
    for draw, fill in ((draw_img, colour), (draw_mask, 1)):
        draw.rounded_rectangle(body, radius=int(height * 0.18), fill=fill)
        draw.polygon(cabin, fill=fill)
    # Windows: inside the cabin, so they stay car pixels in the mask (Carvana masks include glass).
    glass = (rng.randint(40, 80),) * 2 + (rng.randint(70, 110),)
    mid = left + length * 0.52
    inset = height * 0.09
    draw_img.polygon([(cabin[0][0] + inset * 2, body_top), (cabin[1][0] + inset, cabin[1][1] + inset),
                      (mid - inset / 2, cabin[1][1] + inset), (mid - inset / 2, body_top)], fill=glass)
    draw_img.polygon([(mid + inset / 2, body_top), (mid + inset / 2, cabin[2][1] + inset),
                      (cabin[2][0] - inset, cabin[2][1] + inset), (cabin[3][0] - inset * 2, body_top)], fill=glass)
    # Wheels below the body line, tyres dark, rims light.
    for wx in (left + length * 0.2, left + length * 0.8):
        box = [wx - wheel_r, base - wheel_r * 1.6, wx + wheel_r, base + wheel_r * 0.4]
        draw_img.ellipse(box, fill=(25, 25, 28))
        draw_mask.ellipse(box, fill=1)
        rim = wheel_r * 0.55
        cy = (box[1] + box[3]) / 2
        draw_img.ellipse([wx - rim, cy - rim, wx + rim, cy + rim], fill=(170, 170, 175))
    # Lights and a door line: texture inside the car.
    draw_img.rectangle([right - length * 0.04, body_top + height * 0.08, right - 4, body_top + height * 0.18],
                       fill=(250, 240, 200))
    draw_img.line([(mid, body_top + 6), (mid, base - wheel_r)], fill=tuple(max(0, c - 40) for c in colour), width=4)


def make_pair(seed: int) -> tuple[Image.Image, Image.Image]:
    """One 1918x1280 RGB image and its mode-P {0, 1} mask, fully determined by `seed`."""
    rng = random.Random(seed)
    image = _background(rng)
    mask = Image.new("P", (WIDTH, HEIGHT), 0)
    mask.putpalette([0, 0, 0, 255, 255, 255])
    _car(rng, ImageDraw.Draw(image), ImageDraw.Draw(mask))
    image = image.filter(ImageFilter.GaussianBlur(1.2))  # soften edges like a photo
    return image, mask


def synthetic_folder(count: int, seed: int, cache_dir: str | None = None) -> str:
    """The folder that holds the set of `count` pairs drawn from `seed` (there or not yet)."""
    return os.path.join(cache_dir or default_cache_dir(), f"synthetic-v{VERSION}-seed{seed}-n{count}")


def ensure_synthetic(count: int = 8, seed: int = 0, cache_dir: str | None = None,
                     log: Callable[[str], None] | None = None, writable: bool = True) -> tuple[str, str]:
    """Write `count` pairs in the Carvana layout (images/<id>.jpg, masks/<id>_mask.gif) once; return both folders.

    `log` hears one line before a set is generated (a few seconds per pair: the first run is not silent).

    The folder is built under a temporary name and renamed into place, so an interrupted run never leaves a
    half-written set that a later run would trust (nor, once the next run has swept it, its temporary folder). Where
    the cache cannot be written (`writable` False) a set already there is used, else one is generated in a temporary
    folder that goes when the process exits.
    """
    root = synthetic_folder(count, seed, cache_dir)
    images, masks = os.path.join(root, "images"), os.path.join(root, "masks")
    if os.path.isdir(images) and os.path.isdir(masks):
        return images, masks
    if writable:
        os.makedirs(os.path.dirname(root), exist_ok=True)
        # What runs killed while generating left: only tagged folders, and our own name for folders being deleted, as
        # the cache folder may be one the user chose (--cache_dir .) that holds a .synthetic-* or .stale-* of theirs.
        sweep(os.path.dirname(root), BUILD, TEMP_STALE, ours=tagged)
    else:
        parent = process_folder(TEMPORARY)  # locked while this process lives, removed at exit
        root = os.path.join(parent, os.path.basename(root))
        images, masks = os.path.join(root, "images"), os.path.join(root, "masks")
    if log:
        log(f"generating {count} synthetic Carvana-like pairs ({WIDTH}x{HEIGHT} JPEG + GIF) in {root}"
            f"{' (once)' if writable else ''} ...")
    _generate(count, seed, root)
    return images, masks


def _generate(count: int, seed: int, root: str) -> None:
    """Draw the set in a build folder beside `root`, then rename it to `root` (unless another run was first)."""
    try:
        with build_folder(os.path.dirname(root), BUILD) as tmp:
            tag(tmp)  # before anything else: a build cut short is still provably ours
            os.makedirs(os.path.join(tmp, "images"))
            os.makedirs(os.path.join(tmp, "masks"))
            for i in range(count):
                image, mask = make_pair(seed * 100003 + i)
                name = f"synth{seed:04d}_{i + 1:02d}"
                image.save(os.path.join(tmp, "images", name + ".jpg"), quality=90)
                mask.save(os.path.join(tmp, "masks", name + "_mask.gif"))
            os.rename(tmp, root)
            settle(root)
    except FileExistsError:
        pass  # another run made it first: theirs is complete, ours is discarded
    except OSError:
        # Includes the case where another process renamed first on platforms that raise OSError.
        if not os.path.isdir(os.path.join(root, "images")):
            raise
