"""Ascend 310P through torch_aie (the original sample's route): trace, compile for the SoC, save, reload, run.

UNVERIFIED ON HARDWARE: written against the published call sequence and tested only with a recording stand-in.
"""
from __future__ import annotations

import atexit
import copy
import os

import torch

from engines.base import Engine, EngineOptions
from engines.cache import artifact, save_bytes

DEVICES = ("npu",)
PRECISIONS = ("fp32", "fp16")
PACKAGE = "torch_aie"
INSTALL = "install the torch_aie wheel shipped with Ascend CANN (Python 3.9, torch 2.0.1) and source CANN's set_env.sh"
ARTIFACT_VERSION = "1"
_finalize_registered = []  # torch_aie.finalize() must run once, at exit, after every engine is done


def policy(precision: str):
    """torch_aie's PrecisionPolicy for our precision name."""
    from torch_aie import _enums

    return _enums.PrecisionPolicy.FP16 if precision == "fp16" else _enums.PrecisionPolicy.FP32


def build(folder: str, model: torch.nn.Module, shape: tuple, precision: str, soc_version: str) -> None:
    """Trace on the CPU at the real batch shape, compile for `soc_version`, save as `folder`/model.ts."""
    import torch_aie

    from engines.torchscript import trace

    # A plain trace, as the original sample compiled: torch_aie does its own constant folding.
    traced = trace(copy.deepcopy(model).eval(), torch.rand(shape), freeze=False)
    compiled = torch_aie.compile(traced, inputs=[torch_aie.Input(tuple(shape))],
                                 precision_policy=policy(precision), soc_version=soc_version)
    save_bytes(os.path.join(folder, "model.ts"), lambda buffer: torch.jit.save(compiled, buffer))


def load(model: torch.nn.Module, example_shape: tuple, device, precision: str, options: EngineOptions) -> Engine:
    """set_device, then build or reuse the compiled module and reload it from disk (what a deployment runs)."""
    import torch_aie

    index = device.index or 0
    torch_aie.set_device(index)
    if not _finalize_registered:
        atexit.register(torch_aie.finalize)
        _finalize_registered.append(True)
    version = f"{ARTIFACT_VERSION}-aie{getattr(torch_aie, '__version__', '?')}-torch{torch.__version__}"
    soc = options.soc_version
    with artifact(options.cache, "torch_aie", version, model, example_shape, precision,
                  lambda tmp: build(tmp, model, example_shape, precision, soc), soc=soc) as built:
        compiled = torch.jit.load(os.path.join(built.folder, "model.ts"))
    compiled.eval()
    name = f"npu:{index}"
    stream = torch_aie.npu.Stream(name)

    def run(x):
        # The stream's synchronize() is inside the timed call: without it the clock would stop at the enqueue.
        with torch_aie.npu.stream(stream):
            out = compiled(x)
            stream.synchronize()
        return out

    return Engine("torch_aie", device, precision, run, prepare=lambda batch: batch.to(name),
                  to_torch=lambda out: out.to("cpu").float(), synchronize=stream.synchronize,
                  timed=f"compiled call on an npu stream + stream.synchronize() (input already on {name}; "
                        "output copied back outside the timed region)",
                  artifact=built.state, artifact_path=built.path)
