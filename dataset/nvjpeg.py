"""JPEG decode and resize on a CUDA GPU (nvJPEG through torchvision), with the CPU as the fallback."""
from __future__ import annotations

import io
import time
from typing import Callable

import numpy as np
import torch
from PIL import Image

from dataset.decode import decode_error, resized, to_rgb
from utils.device import synchronizer
from utils.errors import first_line


class DeviceJpeg:
    """JPEG decode and resize on an accelerator: nvJPEG through `torchvision.io.decode_jpeg(device=...)`, then
    antialiased bicubic on the device, rounded to uint8 like the CPU paths. The decode threads only read the bytes
    (and decode the masks); a batch the device cannot decode (a corrupt file, a driver error) is decoded on the CPU
    instead, where a bad file is named as usual. nvJPEG ignores EXIF, so a JPEG with an orientation never reaches it:
    `read_jpeg` leaves it to the CPU, which turns it upright (docs/data.md#image-modes).

    `decoder(list of uint8 byte tensors) -> list of (C, H, W) uint8 tensors on the device` is torchvision's by default
    (see `make`); tests pass another one.
    """

    def __init__(self, device: torch.device, size: tuple[int, int], decoder: Callable):
        self.device, self.size, self.decoder = device, size, decoder
        self.fallbacks: list[str] = []  # why batches went to the CPU

    @staticmethod
    def make(device: torch.device, size: tuple[int, int]) -> tuple[DeviceJpeg | None, str]:
        """The nvJPEG decoder for a CUDA `device`, or None and why not (no torchvision, or it cannot decode there)."""
        if device.type != "cuda":
            return None, f"no device JPEG decoder for {device.type}"
        try:
            from torchvision.io import ImageReadMode, decode_jpeg
        except Exception as exc:  # noqa: BLE001  torchvision missing or built for another torch: the CPU decodes
            return None, f"torchvision is not importable ({first_line(exc)})"

        def decoder(datas: list[torch.Tensor]) -> list[torch.Tensor]:
            return decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)

        probe = io.BytesIO()
        Image.new("RGB", (16, 16), (10, 200, 30)).save(probe, "JPEG")
        try:
            decoder([torch.frombuffer(bytearray(probe.getvalue()), dtype=torch.uint8)])
        except Exception as exc:  # noqa: BLE001  e.g. a torchvision without nvJPEG
            return None, f"torchvision cannot decode JPEGs on {device} ({first_line(exc)})"
        return DeviceJpeg(device, size, decoder), "nvJPEG (torchvision.io.decode_jpeg) + bicubic on the device"

    def decode(self, datas: list[bytes], paths: list[str]) -> list[torch.Tensor | str]:
        """Each JPEG as (H, W, C) uint8 on the device at `size`, or the one-line error of a file nothing decodes.

        The batch goes to the device decoder at once; should that fail, each file is tried alone, and one the device
        cannot decode is decoded on the CPU (the reason is kept in `fallbacks`), which names a corrupt file."""
        sync = synchronizer(self.device)
        sync()  # work queued on the stream must not see the decoder's allocations early (pytorch/vision#9606)
        try:
            out: list = self._on_device(datas)
        except Exception:  # noqa: BLE001  one bad file fails the whole batched call: find it
            out = []
            for data, path in zip(datas, paths):
                try:
                    out.append(self._on_device([data])[0])
                except Exception as exc:  # noqa: BLE001
                    self.fallbacks.append(f"{path}: {type(exc).__name__}: {first_line(exc)}")
                    out.append(self._cpu(data, path))
        sync()  # the caller's clock then holds the device's time
        return out

    def _cpu(self, data: bytes, path: str) -> torch.Tensor | str:
        """A file the device could not decode, decoded on the CPU and uploaded; its one-line error when the CPU
        cannot decode it either (upright by its EXIF orientation, as `to_rgb` reads every image). A failing upload
        (a broken device) is raised: it is not the file's fault."""
        try:
            with Image.open(io.BytesIO(data)) as img:
                array = resized(to_rgb(img), self.size, "fast")
        except Exception as exc:  # noqa: BLE001  one file's failure, named
            return str(decode_error("image", path, exc))
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def _on_device(self, datas: list[bytes]) -> list[torch.Tensor]:
        decoded = self.decoder([torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in datas])
        w, h = self.size
        out = []
        for chw in decoded:
            if chw.shape[0] == 1:
                chw = chw.expand(3, -1, -1)
            if tuple(chw.shape[1:]) != (h, w):
                scaled = torch.nn.functional.interpolate(chw[None].float(), size=(h, w), mode="bicubic",
                                                          antialias=True, align_corners=False)
                chw = scaled[0].round_().clamp_(0, 255).to(torch.uint8)
            out.append(chw.permute(1, 2, 0))
        return out

    def decode_ready(self, ready: list, clock: list[float]) -> tuple[list, list[tuple[str, str]]]:
        """Decode the JPEG bytes among `ready` (decode-thread items) here; (the items that decoded, bytes replaced by
        device tensors; the (id, error) of those that did not). `clock[2]` gets the seconds."""
        todo = [k for k, item in enumerate(ready) if isinstance(item[1], bytes)]
        if not todo:
            return ready, []
        start = time.perf_counter()
        results = dict(zip(todo, self.decode([ready[k][1] for k in todo], [ready[k][0].image for k in todo])))
        clock[2] += time.perf_counter() - start
        kept, failed = [], []
        for k, item in enumerate(ready):
            result = results.get(k, item[1])
            if isinstance(result, str):
                failed.append((item[0].id, result))
            else:
                kept.append((item[0], result, *item[2:]))
        return kept, failed
