"""The Ascend engines' call sequences, pinned against recording stand-ins (no NPU here; unverified on hardware)."""
from __future__ import annotations

import importlib.machinery
import os
import sys
import types
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
import torch

import engines
from engines.base import EngineOptions
from engines.cache import ArtifactCache

NPU1 = SimpleNamespace(type="npu", index=1)  # torch.device("npu:1") only parses once torch_npu is imported
SHAPE = (2, 3, 32, 32)


class Payload:
    """A stand-in tensor: records where it is moved to."""

    def __init__(self, calls, where="cpu"):
        self.calls, self.where = calls, where

    def to(self, *args):
        self.calls.append(("to",) + args)
        return Payload(self.calls, args[0])

    def float(self):
        return torch.zeros(1)


def stand_in_module(name: str, calls: list) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)  # find_spec() sees it as installed
    module.calls = calls
    return module


@pytest.fixture
def torch_aie(monkeypatch, tmp_path):
    """A recording torch_aie: every call lands in `calls` with its argument values, in order."""
    calls = []
    aie = stand_in_module("torch_aie", calls)
    aie._enums = SimpleNamespace(PrecisionPolicy=SimpleNamespace(FP16="PrecisionPolicy.FP16",
                                                                 FP32="PrecisionPolicy.FP32"))
    aie.set_device = lambda index: calls.append(("set_device", index))
    aie.Input = lambda shape: calls.append(("Input", tuple(shape))) or ("Input", tuple(shape))
    aie.finalize = lambda: calls.append(("finalize",))

    class Compiled:  # torch_aie.compile gives a ScriptModule: torch.jit.save into memory asks it for its bytes
        def save_to_buffer(self, _extra_files=None):
            calls.append(("save_to_buffer",))
            return b""

    def compile(module, inputs, precision_policy, soc_version):
        calls.append(("compile", isinstance(module, torch.jit.ScriptModule), inputs, precision_policy, soc_version))
        return Compiled()

    class Stream:
        def __init__(self, name):
            calls.append(("Stream", name))

        def synchronize(self):
            calls.append(("stream.synchronize",))

    @contextmanager
    def stream(s):
        calls.append(("enter stream",))
        yield
        calls.append(("exit stream",))

    class Loaded:
        def eval(self):
            calls.append(("eval",))
            return self

        def __call__(self, x):
            calls.append(("call", x.where))
            return Payload(calls, x.where)

    aie.compile, aie.npu = compile, SimpleNamespace(Stream=Stream, stream=stream)
    monkeypatch.setitem(sys.modules, "torch_aie", aie)
    monkeypatch.setattr(torch.jit, "load", lambda path: calls.append(("torch.jit.load", os.path.basename(path)))
                        or Loaded())
    registered = []
    monkeypatch.setattr("engines.torch_aie.atexit.register", registered.append)
    monkeypatch.setattr("engines.torch_aie._finalize_registered", [])
    aie.registered, aie.cache = registered, ArtifactCache(str(tmp_path))
    return aie


def test_torch_aie_call_sequence(torch_aie):
    calls = torch_aie.calls
    engine = engines.load("torch_aie", torch.nn.Conv2d(3, 2, 1), SHAPE, NPU1, "fp16",
                          EngineOptions(cache=torch_aie.cache, soc_version="Ascend310P3"))
    assert calls == [
        ("set_device", 1),
        ("Input", SHAPE),
        ("compile", True, [("Input", SHAPE)], "PrecisionPolicy.FP16", "Ascend310P3"),
        ("save_to_buffer",),  # written by Python, not torch's C++ writer, which aborts on a full disk
        ("torch.jit.load", "model.ts"),  # the saved module is what runs, also right after compiling
        ("eval",),
        ("Stream", "npu:1"),
    ]
    assert engine.artifact == "compiled"
    del calls[:]
    out = engine.run(engine.prepare(Payload(calls)))  # the timed call
    assert calls == [("to", "npu:1"), ("enter stream",), ("call", "npu:1"), ("stream.synchronize",), ("exit stream",)]
    del calls[:]
    engine.to_torch(out)  # copied back outside the timed region
    assert calls == [("to", "cpu")]
    assert torch_aie.registered == [torch_aie.finalize]  # finalize() once, at exit, not per engine
    torch_aie.registered[0]()
    assert calls[-1] == ("finalize",)


def test_torch_aie_reuses_the_saved_module_and_takes_the_soc_flag(torch_aie):
    calls = torch_aie.calls
    model = torch.nn.Conv2d(3, 2, 1)
    options = EngineOptions(cache=torch_aie.cache, soc_version="Ascend310P1")
    engines.load("torch_aie", model, SHAPE, NPU1, "fp32", options)
    assert ("compile", True, [("Input", SHAPE)], "PrecisionPolicy.FP32", "Ascend310P1") in calls
    del calls[:]
    engine = engines.load("torch_aie", model, SHAPE, NPU1, "fp32", options)
    assert engine.artifact == "loaded"
    assert [c[0] for c in calls] == ["set_device", "torch.jit.load", "eval", "Stream"]
    assert len(torch_aie.registered) == 1


def test_torch_npu_call_sequence(monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "torch_npu", stand_in_module("torch_npu", calls))
    monkeypatch.setattr(torch, "npu", SimpleNamespace(set_device=lambda i: calls.append(("set_device", i)),
                                                      synchronize=lambda i: calls.append(("synchronize", i))),
                        raising=False)

    class Net:
        def to(self, *args):
            calls.append(("model.to",) + args)
            return self

        def eval(self):
            return self

        def __call__(self, x):
            calls.append(("call", x.where))
            return Payload(calls, x.where)

    engine = engines.load("torch_npu", Net(), SHAPE, NPU1, "fp16")
    assert calls == [("set_device", 1), ("model.to", "npu:1", torch.float16)]
    del calls[:]
    native = engine.prepare(Payload(calls))
    engine.run(native)
    engine.synchronize()
    assert calls == [("to", "npu:1", torch.float16), ("call", "npu:1"), ("synchronize", 1)]
