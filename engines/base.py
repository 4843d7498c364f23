"""The one interface every inference engine implements, and the options engines are built with."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from dataset.calibration import Calibration
from engines.cache import ArtifactCache
from utils.errors import SampleError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
RESIDENT = "model call on a device-resident batch (no host<->device copies)"


class Unsupported(SampleError):
    """The engine cannot run this precision on this device here: a skipped row, not a failed one."""


def _noop() -> None:
    return None


@dataclass(frozen=True)
class EngineOptions:
    """What an engine may be built with beyond model, shape, device and precision (a misspelt field is a TypeError)."""

    threads: Optional[int] = None  # CPU threads: onnxruntime intra-op, OpenVINO INFERENCE_NUM_THREADS
    cache: Optional[ArtifactCache] = None  # None: build in a temporary folder, removed once the engine is loaded
    calibration: Optional[Calibration] = None  # int8 only
    openvino_hint: str = "latency"  # or "throughput": time one async request per stream in flight
    openvino_device: str = "CPU"  # or "GPU" (an Intel GPU)
    soc_version: str = "Ascend310P3"  # torch_aie's compile target
    inductor_mode: Optional[str] = None  # None: max-autotune on CUDA, default on the CPU
    # GPU speed levers of the torch engines, each "auto", "on" or "off" (engines/levers.py has the auto rule).
    channels_last: str = "auto"
    cudnn_benchmark: str = "auto"
    cuda_graphs: str = "auto"


@dataclass(frozen=True)
class Engine:
    """A compiled model ready to run; every field is set by the engine module that builds it.

    `prepare` turns a CPU float32 NCHW batch into the engine's native input (device copy, dtype, layout); `run` is the
    only call the timing loop times; `synchronize` waits for the device; `to_torch` brings an output back as a CPU
    float32 tensor. `timed` says in words what a timed call holds, the GPU speed levers in effect included (`levers`,
    engines/levers.py). `is_reference` is true for the engine that computes exactly what the eager fp32 reference
    computes (its own output is its reference, for free).

    What `run` returns belongs to the caller: a later call never changes it, so it may be read after the next call
    (a writer thread, a deferred device-side metric). An engine that replays into a reused output buffer (a CUDA
    graph) returns a copy of that buffer.
    """

    name: str
    device: torch.device
    precision: str
    run: Callable[[Any], Any]
    prepare: Callable[[torch.Tensor], Any]
    to_torch: Callable[[Any], torch.Tensor]
    synchronize: Callable[[], None] = _noop
    timed: str = RESIDENT
    artifact: str = "compiled"  # "loaded" (from the artifact cache), "eager", ...
    artifact_path: str = ""
    is_reference: bool = False
    # Engines that gain throughput from concurrent requests time `run_parallel`, which runs `parallel` batches.
    run_parallel: Optional[Callable[[Any], Any]] = None
    parallel: int = 1
    # True when `prepare` takes a batch already on `device` (torch engines): the pipeline then uploads it itself, from
    # pinned memory, non-blocking (no overlap with the previous batch: each call is synced to be timed); False
    # for engines that read host arrays (ONNX Runtime, OpenVINO).
    device_input: bool = False
    levers: tuple = ()  # e.g. ("channels_last", "cudnn.benchmark", "CUDA graph")
    # One more request in flight (--concurrency): a factory of callables like `run` with state of their own (an
    # OpenVINO infer request). None: `run` may be called from several threads at once on the CPU; on an
    # accelerator an engine without one is timed one request at a time.
    request: Optional[Callable[[], Callable[[Any], Any]]] = None


def torch_io(device: torch.device, precision: str, memory_format: torch.memory_format = torch.contiguous_format):
    """prepare / to_torch for torch tensors on `device` in `precision`, the input in `memory_format` (channels_last)."""
    dtype = DTYPES[precision]

    def prepare(batch: torch.Tensor) -> torch.Tensor:
        return batch.to(device=device, dtype=dtype).contiguous(memory_format=memory_format)

    def to_torch(output: torch.Tensor) -> torch.Tensor:
        # contiguous() on the device (a no-op for NCHW outputs) turns a channels_last output back into NCHW there.
        return output.detach().contiguous().to(device="cpu", dtype=torch.float32)

    return prepare, to_torch
