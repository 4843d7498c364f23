"""Every engine agrees with the eager fp32 model; engine and device errors are clear."""
from __future__ import annotations

import pytest
import torch

import engines
import models
from utils.device import parse_device
from utils.errors import SampleError
from utils.metrics import cosine_per_sample

CPU = torch.device("cpu")


def name_of(model) -> str:
    return "unet" if hasattr(model, "inc") else "unet++"


@pytest.fixture(scope="module", params=["unet", "unet++"])
def model(request):
    torch.manual_seed(0)
    net, _ = models.create_model(request.param)
    return net


@pytest.mark.parametrize("name", ["torch", "torchscript"])
def test_engine_matches_eager(model, name):
    x = torch.rand(2, 3, 64, 64)
    engine = engines.load(name, model, tuple(x.shape), CPU)
    out = engine.to_torch(engine.run(engine.prepare(x)))
    # An independent copy: the eager fp32 CPU engine calls `model` itself, so comparing with it would prove nothing.
    twin = type(model)(**({"n_channels": 3, "n_classes": 2} if name_of(model) == "unet" else {"num_classes": 2}))
    twin.load_state_dict(model.state_dict())
    with torch.no_grad():
        ref = twin.eval()(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert cosine_per_sample(out, ref).min().item() >= 0.99999
    assert engine.compile_s >= 0 and engine.device == CPU


def test_bf16_runs_close_to_fp32(model):
    x = torch.rand(1, 3, 64, 64)
    engine = engines.load("torch", model, tuple(x.shape), CPU, "bf16")
    out = engine.to_torch(engine.run(engine.prepare(x)))
    with torch.no_grad():
        assert cosine_per_sample(out, model(x)).min().item() > 0.99


def test_unknown_engine_lists_valid_ones():
    with pytest.raises(SampleError, match="unknown engine 'tensorflow'; valid engines: torch, torchscript"):
        engines.canonical_name("tensorflow")


@pytest.mark.parametrize("text", ["0", "cuda:0", "npu:1"])
def test_accelerator_request_without_one_is_an_error(text, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("utils.device.npu_available", lambda: False)
    with pytest.raises(SampleError, match="use --device cpu"):
        parse_device(text)


@pytest.mark.parametrize("text", ["gpu", "cuda:x", "tpu:0"])
def test_unknown_device(text):
    with pytest.raises(SampleError, match="unknown device"):
        parse_device(text)


def test_default_device_without_accelerator_is_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("utils.device.npu_available", lambda: False)
    assert parse_device(None) == CPU and parse_device("CPU") == CPU


def test_npu_without_a_registered_device_type_is_a_clear_error(monkeypatch):
    """A host with torch_aie but no torch_npu: torch cannot parse `npu:0`; say what to install."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("utils.device.npu_available", lambda: True)
    monkeypatch.setattr("utils.device._count", lambda kind: 1)
    if hasattr(torch, "npu"):
        pytest.skip("torch_npu is installed here")
    with pytest.raises(SampleError, match="install torch_npu"):
        parse_device(None)
