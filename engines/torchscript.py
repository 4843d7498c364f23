"""TorchScript: trace at the real batch shape, then freeze (folds BatchNorm into the convolutions).

This is what the original Ascend sample compiled from.
"""
from __future__ import annotations

import copy
import os
import warnings

import torch

from engines.base import DTYPES, RESIDENT, Engine, EngineOptions, torch_io
from engines.cache import artifact, save_bytes
from engines.levers import apply_levers, levers_for
from utils.device import synchronizer

DEVICES = ("cpu", "cuda", "npu")
PRECISIONS = ("fp32", "fp16", "bf16")
ARTIFACT_VERSION = "1"


def trace(model: torch.nn.Module, example: torch.Tensor, freeze: bool = True) -> torch.jit.ScriptModule:
    """Trace `model` on `example` (its shape becomes the compiled shape) and, by default, freeze it for inference."""
    with torch.no_grad(), warnings.catch_warnings():
        # UNet's padding reads tensor sizes; at a fixed shape they are constants, which is what we want.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, example)
    return torch.jit.freeze(traced.eval()) if freeze else traced.eval()


def load(model: torch.nn.Module, example_shape: tuple, device: torch.device, precision: str,
         options: EngineOptions) -> Engine:
    """Trace + freeze a copy of the model on `device` in `precision`, cached, with the GPU levers in effect."""
    if device.type == "npu":
        import torch_npu  # noqa: F401
    levers = levers_for("torchscript", device, precision, example_shape, options)
    prepare, to_torch = torch_io(device, precision, levers.memory_format)

    def build(folder: str) -> None:
        net = copy.deepcopy(model).to(device=device, dtype=DTYPES[precision]).eval()
        net = net.to(memory_format=levers.memory_format)
        traced = trace(net, prepare(torch.rand(example_shape)))
        save_bytes(os.path.join(folder, "model.pt"), lambda buffer: torch.jit.save(traced, buffer))

    version = f"{ARTIFACT_VERSION}-torch{torch.__version__}-{device.type}"
    # A channels_last trace is its own cache entry; the NCHW key is unchanged.
    extra = {"memory_format": "channels_last"} if levers.channels_last else {}
    with artifact(options.cache, "torchscript", version, model, example_shape, precision, build, **extra) as built:
        scripted = torch.jit.load(os.path.join(built.folder, "model.pt"), map_location=device)

    def call(x):
        with torch.inference_mode():
            return scripted(x)

    run = apply_levers(call, levers, device, lambda: prepare(torch.rand(example_shape)))
    return Engine("torchscript", device, precision, run, prepare, to_torch, synchronizer(device),
                  artifact=built.state, artifact_path=built.path, device_input=True, levers=levers.names(),
                  timed=levers.describe(RESIDENT))
