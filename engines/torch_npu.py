"""Eager PyTorch on an Ascend NPU through torch_npu (fp32 / fp16), synchronised with torch.npu.synchronize().

UNVERIFIED ON HARDWARE: tested only with a recording stand-in of torch_npu.
"""
from __future__ import annotations

import copy

import torch

from engines.base import DTYPES, Engine, EngineOptions

DEVICES = ("npu",)
PRECISIONS = ("fp32", "fp16", "bf16")
PACKAGE = "torch_npu"
INSTALL = "pip install torch-npu matching your torch, with Ascend CANN installed and set_env.sh sourced"


def load(model: torch.nn.Module, example_shape: tuple, device, precision: str, options: EngineOptions) -> Engine:
    """Move a copy of the model to npu:N in `precision`; every timed call ends with torch.npu.synchronize()."""
    import torch_npu  # noqa: F401  registers torch.npu and the npu device

    index = device.index or 0
    name = f"npu:{index}"
    torch.npu.set_device(index)
    dtype = DTYPES[precision]
    net = copy.deepcopy(model).to(name, dtype).eval()

    def run(x):
        with torch.no_grad():
            return net(x)

    return Engine("torch_npu", device, precision, run, prepare=lambda batch: batch.to(name, dtype),
                  to_torch=lambda out: out.to("cpu").float(), synchronize=lambda: torch.npu.synchronize(index),
                  timed=f"eager model call on {name} + torch.npu.synchronize()", device_input=True)
