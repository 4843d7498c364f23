"""Engine registry: name -> module, imported only when chosen, so a missing package matters only to its engine."""
from __future__ import annotations

import importlib
import importlib.util

import torch

from engines.base import Engine, EngineOptions
from utils.device import NATIVE_BF16, describe_host
from utils.errors import SampleError, first_line

# Each module defines DEVICES, PRECISIONS and load(model, example_shape, device, precision, options) -> Engine;
# an engine that needs a package names it in PACKAGE and says how to get it in INSTALL.
ENGINES = {
    "torch": "engines.torch_eager",
    "torchscript": "engines.torchscript",
    "inductor": "engines.inductor",
    "onnxruntime": "engines.onnxruntime",
    "openvino": "engines.openvino",
    "tensorrt": "engines.tensorrt",
    "torch_aie": "engines.torch_aie",
    "torch_npu": "engines.torch_npu",
}
ALIASES = {"eager": "torch", "pytorch": "torch", "jit": "torchscript", "ts": "torchscript", "compile": "inductor",
           "torch.compile": "inductor", "ort": "onnxruntime", "ov": "openvino", "trt": "tensorrt",
           "torch_tensorrt": "tensorrt", "aie": "torch_aie", "npu": "torch_npu"}
# `--engine auto` measures the installed engines on the spot (pipeline/auto.py). These fixed orders are its fallback
# (`--auto static`, `--no_cache`) and the order it probes in: the first installed one that supports the precision.
# CPU fp32: openvino and onnxruntime are close and swap places between CPUs (docs/engines.md).
AUTO = {"cpu": ("openvino", "onnxruntime", "torchscript", "torch"), "cuda": ("tensorrt", "torch"),
        "npu": ("torch_aie", "torch_npu")}
AUTO_INT8 = {"cpu": ("openvino", "onnxruntime")}
# onnxruntime has no CPU fp16 / bf16 kernels and openvino refuses them on a CPU without native support, so half
# precision on such a CPU goes to torch; with AVX512-BF16 or AMX, openvino bf16 is the fastest (docs/engines.md).
AUTO_HALF = {"cpu": ("torchscript", "torch")}
AUTO_HALF_NATIVE = {"cpu": ("openvino", "torchscript", "torch")}


def canonical_name(name: str) -> str:
    """Map an --engine value to a registry key; SampleError lists the valid names."""
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in ENGINES:
        raise SampleError(f"unknown engine {name!r}; valid engines: {', '.join(ENGINES)} (or auto, all)")
    return key


def module_of(key: str):
    """The engine's module (its own heavy package is not imported until `load`)."""
    return importlib.import_module(ENGINES[key])


def missing(key: str, device: torch.device) -> str | None:
    """Why engine `key` cannot run on `device` here (package or device absent), or None when it can."""
    module = module_of(key)
    if device.type not in module.DEVICES:
        return f"engine {key} does not run on {device.type}; it supports {', '.join(module.DEVICES)}"
    package = getattr(module, "PACKAGE", None)
    if package and importlib.util.find_spec(package) is None:
        return f"engine {key} needs the {package} package: {module.INSTALL}"
    return None


def default_engine(device: torch.device, precision: str = "fp32") -> str:
    """The engine of the static order for `device` and `precision` (AUTO, AUTO_INT8, AUTO_HALF[_NATIVE])."""
    if precision == "int8":
        order = AUTO_INT8.get(device.type, ())
    elif precision in ("fp16", "bf16") and device.type in AUTO_HALF:
        native = precision == "bf16" and set(NATIVE_BF16) & set(describe_host(device)["isa"])
        order = (AUTO_HALF_NATIVE if native else AUTO_HALF)[device.type]
    else:
        order = AUTO.get(device.type, ())
    for key in order:
        if missing(key, device) is None and precision in module_of(key).PRECISIONS:
            return key
    return "torch"


def load(name: str, model: torch.nn.Module, example_shape: tuple, device: torch.device,
         precision: str = "fp32", options: EngineOptions | None = None) -> Engine:
    """Compile `model` for engine `name` at the static `example_shape` (the caller times this call).

    `options` (threads, cache, calibration, per-engine settings) reach every engine, which reads what it needs.
    """
    key = canonical_name(name)
    reason = missing(key, device)
    if reason:
        raise SampleError(reason)
    module = module_of(key)
    if precision not in module.PRECISIONS:
        raise SampleError(f"engine {key} does not support {precision}; it supports {', '.join(module.PRECISIONS)}")
    try:
        return module.load(model, example_shape, device, precision, options or EngineOptions())
    except ImportError as exc:
        install = getattr(module, "INSTALL", "install its package")
        raise SampleError(f"engine {key}: {first_line(exc)}; {install}") from None
    except (RuntimeError, ValueError, TypeError, OSError) as exc:
        raise SampleError(f"engine {key} failed to compile for {device} {precision}: {first_line(exc)}") from None
