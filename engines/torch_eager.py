"""Eager PyTorch: the reference path (Pytorch-UNet's), on the CPU or an accelerator, fp32 / fp16 / bf16."""
from __future__ import annotations

import copy

import torch

from engines.base import DTYPES, RESIDENT, Engine, EngineOptions, torch_io
from engines.levers import apply_levers, levers_for
from utils.device import synchronizer

DEVICES = ("cpu", "cuda", "npu")
PRECISIONS = ("fp32", "fp16", "bf16")


def load(model: torch.nn.Module, example_shape: tuple, device: torch.device, precision: str,
         options: EngineOptions) -> Engine:
    """Move the model to `device` in `precision` and call it under inference_mode, with the GPU levers in effect."""
    if device.type == "npu":
        import torch_npu  # noqa: F401  registers the npu device with torch
    levers = levers_for("torch", device, precision, example_shape, options)
    # fp32 on the CPU calls the very model the reference calls: its output is the reference. channels_last would
    # change that model's layout in place (and its sums' order), so it works on a copy.
    own = device.type == "cpu" and precision == "fp32" and not levers.channels_last
    net = model if own else copy.deepcopy(model)
    net = net.to(device=device, dtype=DTYPES[precision]).eval()
    if levers.channels_last:
        net = net.to(memory_format=torch.channels_last)

    def call(x):
        with torch.inference_mode():
            return net(x)

    prepare, to_torch = torch_io(device, precision, levers.memory_format)
    run = apply_levers(call, levers, device, lambda: prepare(torch.rand(example_shape)))
    return Engine("torch", device, precision, run, prepare, to_torch, synchronizer(device), artifact="eager",
                  device_input=True, is_reference=own, levers=levers.names(),
                  timed=levers.describe(RESIDENT))
