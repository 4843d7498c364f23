"""ONNX Runtime: export with torch.onnx at the real batch shape, all graph optimisations, int8 by static quantisation.

On CUDA the TensorRT / CUDA execution providers are used when this onnxruntime build has them.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch

from dataset.calibration import Calibration
from engines.base import Engine, EngineOptions, Unsupported
from engines.cache import artifact
from engines.onnx_export import OPSET, export_onnx, host_array
from utils.errors import SampleError

DEVICES = ("cpu", "cuda")
PRECISIONS = ("fp32", "fp16", "int8")
PACKAGE = "onnxruntime"
INSTALL = "pip install onnxruntime (or onnxruntime-gpu for CUDA)"
ARTIFACT_VERSION = "1"


def providers(ort, device: torch.device) -> list:
    """Execution providers for `device`, best first; SampleError when this build cannot reach it."""
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    wanted = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
    if not wanted:
        raise SampleError(f"onnxruntime {ort.__version__} has no CUDA provider (has {', '.join(available)}); "
                          "pip install onnxruntime-gpu")
    return [(p, {"device_id": device.index or 0}) for p in wanted] + ["CPUExecutionProvider"]


def quantize_int8(source: str, target: str, calibration: Calibration) -> None:
    """Post-training static quantisation (QDQ, per-channel int8 weights, uint8 activations, MinMax calibration)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration.batches)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"input": batch.numpy()}

    # reduce_range: 7-bit weights avoid the u8 x s8 overflow of AVX2 / AVX-512 CPUs without VNNI.
    # The quantiser logs one warning per folded bias to the root logger; they say nothing the user can act on.
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        quantize_static(source, target, Reader(), quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)


def build(folder: str, model: torch.nn.Module, shape: tuple, precision: str,
          calibration: Calibration | None) -> None:
    """Export (and convert / quantise) into `folder`/model.onnx."""
    target = os.path.join(folder, "model.onnx")
    if precision == "fp32":
        export_onnx(model, shape, target)
        return
    source = os.path.join(folder, "fp32.onnx")
    export_onnx(model, shape, source)
    if precision == "int8":
        quantize_int8(source, target, calibration)
    else:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16
        onnx.save(convert_float_to_float16(onnx.load(source), keep_io_types=True), target)
    os.remove(source)


def load(model: torch.nn.Module, example_shape: tuple, device: torch.device, precision: str,
         options: EngineOptions) -> Engine:
    """Build or reuse the ONNX file, then open an InferenceSession with all graph optimisations."""
    import onnxruntime as ort

    if precision == "fp16" and device.type == "cpu":
        raise Unsupported("onnxruntime fp16 needs the CUDA provider (CPU kernels are fp32 / int8); use --device cuda:0")
    calibration = options.calibration
    if precision == "int8" and calibration is None:
        raise SampleError("onnxruntime int8 needs calibration images (--calib N)")
    chosen = providers(ort, device)
    version = f"{ARTIFACT_VERSION}-ort{ort.__version__}-opset{OPSET}-torch{torch.__version__}"
    extra = {"calibration": calibration.key} if precision == "int8" else {}
    settings = ort.SessionOptions()
    settings.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    settings.intra_op_num_threads = options.threads or 0  # 0 = onnxruntime's default (one per physical core)
    with artifact(options.cache, "onnxruntime", version, model, example_shape, precision,
                  lambda tmp: build(tmp, model, example_shape, precision, calibration), **extra) as built:
        session = ort.InferenceSession(os.path.join(built.folder, "model.onnx"), settings, providers=chosen)

    def run(x: np.ndarray):
        return session.run(None, {"input": x})[0]

    timed = "session.run on a host array" + ("" if device.type == "cpu" else " (includes host<->device copies)")
    return Engine("onnxruntime", device, precision, run, host_array, lambda y: torch.from_numpy(y).float(),
                  timed=timed, artifact=built.state, artifact_path=built.path)
