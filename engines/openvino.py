"""OpenVINO: ONNX export read into an IR, compiled for the CPU (or an Intel GPU) with a latency or throughput hint.

int8 is NNCF post-training static quantisation of the IR. With the THROUGHPUT hint the timing pass keeps one
async request per stream in flight and reports that as such (see `timed`).
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys

import numpy as np
import torch

from dataset.calibration import Calibration
from engines.base import Engine, EngineOptions, Unsupported
from engines.cache import artifact
from engines.onnx_export import OPSET, export_onnx, host_array
from utils.errors import SampleError, first_line

DEVICES = ("cpu",)
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
PACKAGE = "openvino"
INSTALL = "pip install openvino (and nncf for int8)"
ARTIFACT_VERSION = "1"
HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}
INFERENCE_PRECISION = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "f32"}  # int8 layers run int8 regardless


def quantize_int8(ov_model, calibration: Calibration):
    """NNCF post-training static quantisation of the IR."""
    try:
        import nncf
    except ImportError:
        raise SampleError("openvino int8 needs NNCF: pip install nncf") from None
    data = nncf.Dataset(calibration.batches, lambda batch: batch.numpy())
    # overflow_fix keeps int8 accurate on CPUs without VNNI (and is harmless with it).
    params = nncf.AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix.ENABLE)
    with contextlib.redirect_stdout(sys.stderr):  # NNCF draws its progress bar on stdout, where the report goes
        return nncf.quantize(ov_model, data, subset_size=len(calibration.batches), advanced_parameters=params)


def build(folder: str, model: torch.nn.Module, shape: tuple, precision: str, calibration: Calibration | None) -> None:
    """Export to ONNX, read it as an OpenVINO model, quantise for int8, save the IR as `folder`/model.xml."""
    import openvino as ov

    onnx_path = os.path.join(folder, "model.onnx")
    export_onnx(model, shape, onnx_path)
    ov_model = ov.Core().read_model(onnx_path)
    if precision == "int8":
        ov_model = quantize_int8(ov_model, calibration)
    # Keep fp32 weights: the precision is chosen at compile time (INFERENCE_PRECISION_HINT), not baked in.
    try:
        ov.save_model(ov_model, os.path.join(folder, "model.xml"), compress_to_fp16=False)
    except RuntimeError as exc:
        raise write_error(folder, os.path.getsize(onnx_path), exc) from None
    os.remove(onnx_path)


def write_error(folder: str, size: int, exc: RuntimeError) -> OSError:
    """What OpenVINO's C++ writer meant by a bare "iostream error": a full disk when there is no room for the IR's
    `size` bytes, else an I/O error; an OSError, so the cache can build without itself (engines/cache.py)."""
    code = errno.ENOSPC if shutil.disk_usage(folder).free < size else errno.EIO
    return OSError(code, f"{os.strerror(code)} (OpenVINO could not write its IR: {first_line(exc)})")


def check_precision(core, target: str, precision: str) -> None:
    """SampleError when `target` lacks native fp16 / bf16: OpenVINO would silently run fp32 instead."""
    capabilities = core.get_property(target, "OPTIMIZATION_CAPABILITIES")
    if precision in ("fp16", "bf16") and precision.upper() not in capabilities:
        raise Unsupported(f"openvino {target} here has no {precision} support (capabilities: {', '.join(capabilities)})"
                          f" and would run {precision} as fp32; use fp32 or int8")


def compile_ir(core, path: str, target: str, precision: str, hint: str, threads: int | None):
    """Compile the IR for `target` with the performance hint and the inference precision asked for."""
    config = {"PERFORMANCE_HINT": HINTS[hint], "INFERENCE_PRECISION_HINT": INFERENCE_PRECISION[precision]}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return core.compile_model(core.read_model(path), target, config)


def load(model: torch.nn.Module, example_shape: tuple, device: torch.device, precision: str,
         options: EngineOptions) -> Engine:
    """Build or reuse the IR and compile it for `openvino_device` (CPU by default; GPU = an Intel GPU) with the hint."""
    import openvino as ov

    calibration, ov_device, hint = options.calibration, options.openvino_device, options.openvino_hint
    if precision == "int8" and calibration is None:
        raise SampleError("openvino int8 needs calibration images (--calib N)")
    core = ov.Core()
    if ov_device not in core.available_devices:
        raise SampleError(f"openvino device {ov_device} is not present; it has {', '.join(core.available_devices)}")
    check_precision(core, ov_device, precision)
    version = f"{ARTIFACT_VERSION}-ov{ov.__version__}-opset{OPSET}-torch{torch.__version__}"
    extra = {"calibration": calibration.key} if precision == "int8" else {}
    # fp32 / fp16 / bf16 share one fp32 IR: OpenVINO picks the precision when it compiles.
    stored = "int8" if precision == "int8" else "fp32"
    with artifact(options.cache, "openvino", version, model, example_shape, stored,
                  lambda tmp: build(tmp, model, example_shape, stored, calibration), **extra) as built:
        compiled = compile_ir(core, os.path.join(built.folder, "model.xml"), ov_device, precision, hint,
                              options.threads)
    def new_request():
        request = compiled.create_infer_request()  # one per caller: an infer request is not for two threads at once

        def run(x: np.ndarray):
            return request.infer({0: x}, share_inputs=True)[0]
        return run

    run = new_request()

    parallel = async_runner(compiled) if hint == "throughput" else {}
    timed = f"infer request on a host array (OpenVINO {ov_device}, {hint} hint)"
    if parallel:
        timed = f"{parallel['parallel']} async infer requests of the batch in flight per timed call (THROUGHPUT hint)"
    return Engine("openvino", device, precision, run, host_array, lambda y: torch.from_numpy(np.array(y)).float(),
                  timed=timed, artifact=built.state, artifact_path=built.path, request=new_request, **parallel)


def async_runner(compiled) -> dict:
    """A timed call that keeps one request per stream in flight (the THROUGHPUT hint's point), as Engine fields."""
    import openvino as ov

    n = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    queue = ov.AsyncInferQueue(compiled, n)

    def run_parallel(x: np.ndarray) -> None:
        for _ in range(n):
            queue.start_async({0: x}, share_inputs=True)
        queue.wait_all()

    return {"run_parallel": run_parallel, "parallel": n}
