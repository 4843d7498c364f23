"""Eager PyTorch: the reference path (Pytorch-UNet's), on the CPU or an accelerator, fp32 / fp16 / bf16."""
from __future__ import annotations

import copy

import torch

from engines.base import DTYPES, Engine, EngineOptions, torch_io
from utils.device import synchronizer

DEVICES = ("cpu", "cuda", "npu")
PRECISIONS = ("fp32", "fp16", "bf16")


def load(model: torch.nn.Module, example_shape: tuple, device: torch.device, precision: str,
         options: EngineOptions) -> Engine:
    """Move (a copy of, unless fp32 on the CPU) the model to `device` in `precision` and call it under inference_mode."""
    if device.type == "npu":
        import torch_npu  # noqa: F401  registers the npu device with torch
    net = model if (device.type == "cpu" and precision == "fp32") else copy.deepcopy(model)
    net = net.to(device=device, dtype=DTYPES[precision]).eval()

    def run(x):
        with torch.inference_mode():
            return net(x)

    prepare, to_torch = torch_io(device, precision)
    # fp32 on the CPU calls the very model the reference calls: its output is the reference.
    return Engine("torch", device, precision, run, prepare, to_torch, synchronizer(device), artifact="eager",
                  device_input=True, is_reference=device.type == "cpu" and precision == "fp32")
