"""Every installed engine against an independent eager fp32 copy on both models at 64 px; registry, options,
missing packages and devices."""
from __future__ import annotations

import dataclasses
import importlib.util
import sys

import pytest
import torch

import engines
import models
from dataset.calibration import random_calibration
from engines.base import EngineOptions
from engines.cache import ArtifactCache
from pipeline.fidelity import BARS
from report.metrics import cosine_per_sample
from utils.errors import SampleError

SHAPE = (1, 3, 64, 64)
CPU = torch.device("cpu")
CPU_ENGINES = ["torch", "torchscript", "inductor", "onnxruntime", "openvino"]


def need(key: str) -> None:
    """Skip (with the install hint as reason) when the engine's package is not installed."""
    reason = engines.missing(key, CPU)
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> ArtifactCache:
    """One artifact cache for the matrix: an engine exported once is loaded by the tests after it."""
    return ArtifactCache(str(tmp_path_factory.mktemp("matrix-cache")))


@pytest.fixture(scope="session", params=["unet", "unet++"])
def model_and_input(request):
    """The model, an input, and the expected logits from an independent copy (another instance with the same
    weights): the eager fp32 engine calls `model` itself, so comparing with `model` would prove nothing for it."""
    torch.manual_seed(0)
    model, _ = models.create_model(request.param)
    twin = models.build(request.param)
    twin.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})
    x = torch.rand(SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model, x, twin.eval()(x)


def run_once(engine, x):
    output = engine.to_torch(engine.run(engine.prepare(x)))
    engine.synchronize()
    return output


@pytest.mark.parametrize("key", [pytest.param(k, marks=pytest.mark.slow) if k == "inductor" else k for k in CPU_ENGINES])
def test_engine_matches_eager_fp32(key, model_and_input, cache):
    need(key)
    model, x, expected = model_and_input
    engine = engines.load(key, model, SHAPE, CPU, "fp32", EngineOptions(cache=cache))
    out = run_once(engine, x)
    assert out.shape == expected.shape and out.dtype == torch.float32
    assert cosine_per_sample(out, expected).min().item() >= BARS["fp32"]
    assert (engine.name, engine.device, engine.precision) == (key, CPU, "fp32") and engine.timed
    assert engine.is_reference == (key == "torch")  # only eager fp32 on the CPU is the reference by construction


def test_bf16_runs_close_to_fp32(model_and_input):
    model, x, expected = model_and_input
    engine = engines.load("torch", model, SHAPE, CPU, "bf16")
    assert cosine_per_sample(run_once(engine, x), expected).min().item() > 0.99 and not engine.is_reference


@pytest.mark.slow
@pytest.mark.parametrize("key", ["onnxruntime", "openvino"])
def test_int8_is_close_and_cached(key, tmp_path):
    need(key)
    if key == "openvino" and importlib.util.find_spec("nncf") is None:
        pytest.skip("openvino int8 needs nncf: pip install nncf")
    torch.manual_seed(0)
    model, _ = models.create_model("unet")
    x = torch.rand(SHAPE)
    with torch.no_grad():
        expected = model(x)
    options = EngineOptions(cache=ArtifactCache(str(tmp_path)), calibration=random_calibration(SHAPE, count=2))
    first = engines.load(key, model, SHAPE, CPU, "int8", options)
    second = engines.load(key, model, SHAPE, CPU, "int8", options)
    assert (first.artifact, second.artifact) == ("compiled", "loaded")
    assert first.artifact_path == second.artifact_path
    assert cosine_per_sample(run_once(second, x), expected).min().item() >= BARS["int8"]


def test_int8_needs_calibration():
    need("onnxruntime")
    with pytest.raises(SampleError, match="--calib"):
        engines.load("onnxruntime", torch.nn.Conv2d(3, 2, 1), SHAPE, CPU, "int8")


@pytest.mark.parametrize("key, package", [("onnxruntime", "onnxruntime"), ("openvino", "openvino"),
                                          ("tensorrt", "torch_tensorrt"), ("torch_aie", "torch_aie")])
def test_hidden_package_names_what_to_install(key, package, monkeypatch):
    monkeypatch.setitem(sys.modules, package, None)  # find_spec answers None, import raises ImportError
    device = torch.device("cuda:0") if key == "tensorrt" else CPU
    if key == "torch_aie":
        device = type("Npu", (), {"type": "npu", "index": 0})()
    with pytest.raises(SampleError, match=f"needs the {package} package: .*install"):
        engines.load(key, torch.nn.Conv2d(3, 2, 1), SHAPE, device)


def test_engine_on_a_device_it_does_not_support():
    with pytest.raises(SampleError, match="does not run on cpu; it supports cuda"):
        engines.load("tensorrt", torch.nn.Conv2d(3, 2, 1), SHAPE, CPU)


def test_unsupported_precision_is_refused():
    with pytest.raises(SampleError, match="does not support int8"):
        engines.load("torch", torch.nn.Conv2d(3, 2, 1), SHAPE, CPU, "int8")


def test_onnxruntime_fp16_needs_cuda():
    need("onnxruntime")
    with pytest.raises(SampleError, match="fp16 needs the CUDA provider"):
        engines.load("onnxruntime", torch.nn.Conv2d(3, 2, 1), SHAPE, CPU, "fp16")


def test_openvino_refuses_a_precision_the_cpu_would_run_as_fp32():
    need("openvino")
    import openvino as ov

    if "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU runs bf16 natively")
    with pytest.raises(SampleError, match="would run bf16 as fp32"):
        engines.load("openvino", torch.nn.Conv2d(3, 2, 1), SHAPE, CPU, "bf16")


def test_cuda_paths_without_a_gpu():
    """The CUDA branches that can run on a CPU: provider choice and the refusal without a CUDA build."""
    need("onnxruntime")
    import onnxruntime as ort

    from engines.onnxruntime import providers

    assert providers(ort, CPU) == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(SampleError, match="onnxruntime-gpu"):
            providers(ort, torch.device("cuda:1"))


def test_auto_prefers_the_measured_order_and_falls_back(monkeypatch):
    first = next(k for k in engines.AUTO["cpu"] if engines.missing(k, CPU) is None)
    assert engines.default_engine(CPU) == first
    for key in engines.AUTO["cpu"]:
        monkeypatch.setitem(sys.modules, engines.module_of(key).__dict__.get("PACKAGE") or "_none_", None)
    assert engines.default_engine(CPU) == "torchscript"


def test_aliases_and_unknown_names():
    assert engines.canonical_name("ORT") == "onnxruntime"
    assert engines.canonical_name("torch.compile") == "inductor"
    with pytest.raises(SampleError, match="valid engines: torch, torchscript"):
        engines.canonical_name("tflite")


def test_openvino_throughput_hint_times_concurrent_requests():
    need("openvino")
    from pipeline.passes import timing_pass

    engine = engines.load("openvino", torch.nn.Conv2d(3, 2, 1), SHAPE, CPU, options=EngineOptions(openvino_hint="throughput"))
    assert engine.parallel >= 1 and "async infer requests" in engine.timed
    stats = timing_pass(engine, torch.rand(SHAPE), loop=2, warmup=1, show_progress=False)
    assert stats.fps == pytest.approx(2 * engine.parallel / stats.timed_s)


def test_options_are_said_out_loud():
    """A misspelt option is an error where it is written, never an option that silently vanishes."""
    with pytest.raises(TypeError):
        EngineOptions(hint="throughput")
    assert {f.name for f in dataclasses.fields(EngineOptions)} >= {"threads", "cache", "calibration", "openvino_hint"}
