"""Engine registry: name -> module, imported only when chosen, so a missing package only matters to its own engine."""
from __future__ import annotations

import importlib
import time

import torch

from engines.base import Engine
from utils.errors import SampleError, first_line

# Each module defines DEVICES, PRECISIONS and load(model, example_shape, device, precision) -> Engine.
ENGINES = {
    "torch": "engines.torch_eager",
    "torchscript": "engines.torchscript",
}
ALIASES = {"eager": "torch", "pytorch": "torch", "jit": "torchscript", "ts": "torchscript"}


def canonical_name(name: str) -> str:
    """Map an --engine value to a registry key; SampleError lists the valid names."""
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in ENGINES:
        raise SampleError(f"unknown engine {name!r}; valid engines: {', '.join(ENGINES)} (or auto)")
    return key


def default_engine(device: torch.device) -> str:
    """The engine `--engine auto` picks: TorchScript (trace + freeze) measured faster than eager on the CPU."""
    return "torchscript" if device.type == "cpu" else "torch"


def load(name: str, model: torch.nn.Module, example_shape: tuple, device: torch.device,
         precision: str = "fp32") -> Engine:
    """Compile `model` for engine `name` at the static `example_shape`; the wall time goes into `compile_s`."""
    key = canonical_name(name)
    module = importlib.import_module(ENGINES[key])
    if device.type not in module.DEVICES:
        raise SampleError(f"engine {key} does not run on {device.type}; it supports {', '.join(module.DEVICES)}")
    if precision not in module.PRECISIONS:
        raise SampleError(f"engine {key} does not support {precision}; it supports {', '.join(module.PRECISIONS)}")
    start = time.perf_counter()
    try:
        engine = module.load(model, example_shape, device, precision)
    except RuntimeError as exc:
        raise SampleError(f"engine {key} failed to compile for {device} {precision}: {first_line(exc)}") from None
    engine.compile_s = time.perf_counter() - start
    return engine
