"""TensorRT through torch-tensorrt on a CUDA GPU, fp32 or fp16, at the real batch shape (compiled from a trace)."""
from __future__ import annotations

import copy

import torch

from engines.base import DTYPES, Engine, EngineOptions, torch_io
from utils.device import synchronizer

DEVICES = ("cuda",)
PRECISIONS = ("fp32", "fp16")
PACKAGE = "torch_tensorrt"
INSTALL = "pip install torch-tensorrt (matching your torch and CUDA versions)"


def load(model: torch.nn.Module, example_shape: tuple, device: torch.device, precision: str,
         options: EngineOptions) -> Engine:
    """Trace a copy of the model on the GPU and compile it with torch_tensorrt for one static input shape."""
    import torch_tensorrt

    from engines.torchscript import trace

    net = copy.deepcopy(model).to(device).eval()
    prepare, to_torch = torch_io(device, precision)
    traced = trace(net, torch.rand(example_shape, device=device))
    compiled = torch_tensorrt.compile(
        traced, ir="ts", inputs=[torch_tensorrt.Input(tuple(example_shape), dtype=DTYPES[precision])],
        enabled_precisions={DTYPES[precision]}, device=torch_tensorrt.Device(gpu_id=device.index or 0))

    def run(x):
        with torch.no_grad():
            return compiled(x)

    return Engine("tensorrt", device, precision, run, prepare, to_torch, synchronizer(device), device_input=True)
