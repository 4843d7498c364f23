"""Every installed engine against an independent eager fp32 copy at 64 px: the seed-0 UNet, and UNet++ at base width
8 (its graph and ops at a fifth of the cost); registry, options, missing packages and devices."""
from __future__ import annotations

import dataclasses
import importlib.util
import sys

import pytest
import torch

import engines
from dataset.calibration import random_calibration
from engines.base import EngineOptions
from engines.cache import ArtifactCache
from pipeline.fidelity import BARS
from report.metrics import cosine_per_sample
from tests.conftest import SHAPE64 as SHAPE
from tests.conftest import Twin, make_twin
from utils.errors import SampleError

CPU = torch.device("cpu")
CPU_ENGINES = ["torch", "torchscript", "inductor", "onnxruntime", "openvino"]


def need(key: str) -> None:
    """Skip (with the install hint as reason) when the engine's package is not installed."""
    reason = engines.missing(key, CPU)
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def narrow_unetpp() -> Twin:
    """UNet++ at base width 8: NestedUNet's graph (every node, skip and op of the full model) at 0.57 M parameters."""
    return make_twin("unet++", base_width=8)


@pytest.fixture(scope="session")
def unetpp_cache(tmp_path_factory) -> ArtifactCache:
    return ArtifactCache(str(tmp_path_factory.mktemp("unetpp-cache")))


@pytest.fixture(params=["unet", "unet++"])
def twin_and_cache(request) -> tuple[Twin, ArtifactCache]:
    """The model (with its input and an independent twin's logits) and its session cache: the UNet's is conftest's,
    shared with the levers and auto's full probe, so each engine is built once per session."""
    if request.param == "unet":
        return request.getfixturevalue("unet64"), request.getfixturevalue("unet64_cache")
    return request.getfixturevalue("narrow_unetpp"), request.getfixturevalue("unetpp_cache")


def run_once(engine, x):
    output = engine.to_torch(engine.run(engine.prepare(x)))
    engine.synchronize()
    return output


def matrix():
    """(model, engine) cases. Inductor compiles the UNet only, which keeps it covered end to end: its compile time
    goes with the graph's size, not its width, so UNet++'s larger graph would be the slowest build of the suite for
    no engine path the UNet's does not already take. UNet++ runs on every other engine."""
    for name in ("unet", "unet++"):
        for key in CPU_ENGINES:
            if key == "inductor" and name == "unet++":
                continue
            # The session UNet's builds (width 16, Pytorch-UNet's graph) are the slow tier's (the narrow UNet++ keeps
            # every engine in the fast one).
            marks = [pytest.mark.slow] if key == "inductor" or (name == "unet" and key != "torch") else []
            if name == "unet":  # the session's UNet builds: on one pytest-xdist worker (conftest.GROUPS)
                marks.append(pytest.mark.xdist_group("unet64"))
            yield pytest.param(name, key, id=f"{name}-{key}", marks=marks)


@pytest.mark.parametrize("twin_and_cache, key", matrix(), indirect=["twin_and_cache"])
def test_engine_matches_eager_fp32(key, twin_and_cache):
    need(key)
    (model, x, expected, _), cache = twin_and_cache
    engine = engines.load(key, model, SHAPE, CPU, "fp32", EngineOptions(cache=cache))
    out = run_once(engine, x)
    assert out.shape == expected.shape and out.dtype == torch.float32
    assert cosine_per_sample(out, expected).min().item() >= BARS["fp32"]
    assert (engine.name, engine.device, engine.precision) == (key, CPU, "fp32") and engine.timed
    assert engine.is_reference == (key == "torch")  # only eager fp32 on the CPU is the reference by construction


@pytest.mark.parametrize("name", ["unet", "unet++"])
def test_bf16_runs_close_to_fp32(name, request):
    """The UNet at 32 px: a CPU without native bf16 (AVX2) emulates it, and at 64 px the UNet's case was the slowest
    of the fast tier (12 s on a 2-core AMD EPYC; 1.4 s at 32 px). The narrow UNet++ is the session's, at 64 px."""
    twin = make_twin("unet", (1, 3, 32, 32)) if name == "unet" else request.getfixturevalue("narrow_unetpp")
    model, x, expected, _ = twin
    engine = engines.load("torch", model, tuple(x.shape), CPU, "bf16")
    assert cosine_per_sample(run_once(engine, x), expected).min().item() > 0.99 and not engine.is_reference


@pytest.mark.slow
@pytest.mark.parametrize("key", ["onnxruntime", "openvino"])
def test_int8_is_close_and_cached(key, unet64_full, tmp_path):
    """int8 fidelity on the full-width UNet (a narrow net's scales would say little about it), in a cache of its own:
    the session's UNet builds are not needed, so it may run on another pytest-xdist worker."""
    need(key)
    if key == "openvino" and importlib.util.find_spec("nncf") is None:
        pytest.skip("openvino int8 needs nncf: pip install nncf")
    model, x, expected, _ = unet64_full
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
    from pipeline.rows import Job

    options = EngineOptions(openvino_hint="throughput")
    engine = engines.load("openvino", torch.nn.Conv2d(3, 2, 1), SHAPE, CPU, options=options)
    assert engine.parallel >= 1 and "async infer requests" in engine.timed
    stats = timing_pass(engine, torch.rand(SHAPE), Job(None, SHAPE, CPU, lambda: iter(()), 0, loop=2, warmup=1,
                                                        show_progress=False))
    assert stats.fps == pytest.approx(2 * engine.parallel / stats.timed_s)


def test_options_are_said_out_loud():
    """A misspelt option is an error where it is written, never an option that silently vanishes."""
    with pytest.raises(TypeError):
        EngineOptions(hint="throughput")
    assert {f.name for f in dataclasses.fields(EngineOptions)} >= {"threads", "cache", "calibration", "openvino_hint"}
