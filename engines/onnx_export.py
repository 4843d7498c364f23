"""Export to ONNX at a static shape (shared by the ONNX Runtime and OpenVINO engines)."""
from __future__ import annotations

import inspect
import warnings

import numpy as np
import torch

OPSET = 17


def export_onnx(model: torch.nn.Module, shape: tuple, path: str, opset: int = OPSET) -> None:
    """Write `model` as ONNX with a static input of `shape` (the real batch) named `input`, output `logits`."""
    kwargs = {}
    # torch >= 2.5 may default to the dynamo exporter; the TorchScript exporter handles UNet's size-dependent
    # padding as constants at a static shape and exists back to torch 2.0.1, which has no `dynamo` argument.
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    example = torch.rand(shape)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about sizes used as constants: intended at a static shape
        torch.onnx.export(model.eval(), (example,), path, opset_version=opset, input_names=["input"],
                          output_names=["logits"], do_constant_folding=True, **kwargs)


def host_array(batch: torch.Tensor) -> np.ndarray:
    """The input ONNX Runtime and OpenVINO read: host memory, a contiguous float32 array."""
    return np.ascontiguousarray(batch.numpy(), dtype=np.float32)
