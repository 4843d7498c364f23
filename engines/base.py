"""The one interface every inference engine implements."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from utils.errors import SampleError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class Unsupported(SampleError):
    """The engine cannot run this precision on this device here: a skipped row, not a failed one."""


def _noop() -> None:
    return None


@dataclass
class Engine:
    """A compiled model ready to run.

    `prepare` turns a CPU float32 NCHW batch into the engine's native input (device copy, dtype); `run` is the
    only call the timing loop times; `synchronize` waits for the device; `to_torch` brings an output back as a
    CPU float32 tensor. `timed` says in words what a timed call holds.
    """

    name: str
    device: torch.device
    precision: str
    run: Callable[[Any], Any]
    prepare: Callable[[torch.Tensor], Any]
    to_torch: Callable[[Any], torch.Tensor]
    synchronize: Callable[[], None] = _noop
    timed: str = "model call on a device-resident batch (no host<->device copies)"
    compile_s: float = 0.0
    artifact: str = "compiled"  # or "loaded" (from the artifact cache)
    artifact_path: str = ""
    close: Callable[[], None] = _noop
    # Engines that gain throughput from concurrent requests time `run_parallel`, which runs `parallel` batches.
    run_parallel: Optional[Callable[[Any], Any]] = None
    parallel: int = 1


def torch_io(device: torch.device, precision: str):
    """prepare / to_torch for engines whose native tensors are torch tensors on `device` in `precision`."""
    dtype = DTYPES[precision]

    def prepare(batch: torch.Tensor) -> torch.Tensor:
        return batch.to(device=device, dtype=dtype).contiguous()

    def to_torch(output: torch.Tensor) -> torch.Tensor:
        return output.detach().to(device="cpu", dtype=torch.float32)

    return prepare, to_torch
