"""GPU speed levers of the torch engines: channels_last, cudnn.benchmark and a CUDA graph, each `auto`, `on` or `off`.

Everything here but `capture_cuda_graph` is plain logic, tested on the CPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from utils.errors import SampleError

SETTINGS = ("auto", "on", "off")
HALF = ("fp16", "bf16")
# Which engine reads which lever. Inductor lays out its own tensors (channels_last is its decision, not ours), and
# TensorRT, ONNX Runtime and OpenVINO choose their own kernels and layouts: the flags do not reach them.
SUPPORTED = {
    "torch": ("channels_last", "cudnn_benchmark", "cuda_graphs"),
    "torchscript": ("channels_last", "cudnn_benchmark", "cuda_graphs"),
    "inductor": ("cudnn_benchmark", "cuda_graphs"),  # the graph wraps the AOTInductor package's call
}
# What `auto` turns on, per engine: only where it was measured (eager torch; docs/engines.md#gpu-speed-levers).
# Inductor's graph stands in for the CUDA graphs torch.compile's max-autotune captured itself (an AOTInductor package
# has none). TorchScript with channels_last or a graph was not measured: `on` reaches it, `auto` does not.
AUTO = {
    "torch": ("channels_last", "cudnn_benchmark", "cuda_graphs"),
    "torchscript": ("cudnn_benchmark",),
    "inductor": ("cudnn_benchmark", "cuda_graphs"),
}
GRAPH_WARMUP = 3  # calls before capture: cudnn.benchmark's search, TorchScript's profiling runs, lazy init


@dataclass(frozen=True)
class Levers:
    """The levers in effect for one engine row."""

    channels_last: bool = False
    cudnn_benchmark: bool = False
    cuda_graph: bool = False

    @property
    def memory_format(self) -> torch.memory_format:
        """The layout the model's weights and its input are kept in."""
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def names(self) -> tuple[str, ...]:
        """The levers that are on, by the names the report uses."""
        on = (("channels_last", self.channels_last), ("cudnn.benchmark", self.cudnn_benchmark),
              ("CUDA graph", self.cuda_graph))
        return tuple(name for name, value in on if value)

    def describe(self, timed: str) -> str:
        """`timed` (what a timed call holds) with the levers that are on, for the report's timed-region line."""
        if not self.names():
            return timed
        text = f"{timed}; speed levers: {', '.join(self.names())}"
        if self.cuda_graph:
            text += " (replay: input copied into the graph's static buffer, output copied out of it)"
        return text


def auto_levers(engine: str, device_type: str, precision: str, batch: int) -> Levers:
    """The `auto` rule, from the measurements on one H200 (docs/engines.md#gpu-speed-levers).

    channels_last at fp16 / bf16 on CUDA (it paid at every batch); a CUDA graph at fp16 / bf16 and batch 1 only (it
    paid there and cost a little at larger batches); cudnn.benchmark on CUDA at every precision (every figure was
    measured with it on; the shape is fixed, so its one-off search falls in the warm-up). fp32 was not measured with
    channels_last or a graph: auto leaves both off there.
    """
    cuda, half = device_type == "cuda", precision in HALF
    wanted = {"channels_last": cuda and half, "cudnn_benchmark": cuda, "cuda_graphs": cuda and half and batch == 1}
    supported = AUTO.get(engine, ())
    return Levers(*(wanted[k] and k in supported for k in ("channels_last", "cudnn_benchmark", "cuda_graphs")))


def choose_levers(engine: str, device_type: str, precision: str, batch: int, channels_last: str = "auto",
                  cudnn_benchmark: str = "auto", cuda_graphs: str = "auto") -> Levers:
    """Resolve the three settings (`auto`, `on`, `off`) for one row.

    `on` forces a lever wherever it can exist; where it cannot (a CUDA-only lever on another device) it is a
    SampleError, never silently dropped. An engine that does not read a lever (SUPPORTED) runs without it whatever
    the setting: its row's report says so.
    """
    auto = auto_levers(engine, device_type, precision, batch)
    supported = SUPPORTED.get(engine, ())
    chosen = {}
    for flag, setting, default in (("channels_last", channels_last, auto.channels_last),
                                   ("cudnn_benchmark", cudnn_benchmark, auto.cudnn_benchmark),
                                   ("cuda_graphs", cuda_graphs, auto.cuda_graph)):
        if setting not in SETTINGS:
            raise SampleError(f"--{flag} {setting!r}: use one of {', '.join(SETTINGS)}")
        if setting == "on" and flag != "channels_last" and device_type != "cuda" and flag in supported:
            raise SampleError(f"--{flag} on needs a CUDA device; this {engine} row runs on {device_type} "
                              f"(use --{flag} auto or off here)")
        chosen[flag] = default if setting == "auto" else (setting == "on" and flag in supported)
    return Levers(chosen["channels_last"], chosen["cudnn_benchmark"], chosen["cuda_graphs"])


def levers_for(engine: str, device: torch.device, precision: str, example_shape: tuple, options: Any) -> Levers:
    """`choose_levers` for an engine being built with EngineOptions `options`."""
    return choose_levers(engine, device.type, precision, int(example_shape[0]), options.channels_last,
                         options.cudnn_benchmark, options.cuda_graphs)


class cudnn_benchmark:  # noqa: N801  used like torch's own lower-case context managers
    """Set torch.backends.cudnn.benchmark for the block, then restore it.

    A plain class: it wraps every timed call, and torch's `cudnn.flags` would reset the other cudnn flags to its own
    defaults.
    """

    def __init__(self, on: bool):
        self.on = on

    def __enter__(self):
        self.old = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = self.on

    def __exit__(self, *exc):
        torch.backends.cudnn.benchmark = self.old


def capture_cuda_graph(fn: Callable[[torch.Tensor], torch.Tensor], static_in: torch.Tensor,
                       warmup: int = GRAPH_WARMUP) -> tuple[Callable[[], None], torch.Tensor]:
    """Capture `fn(static_in)` in a CUDA graph; return (replay, the output tensor every replay overwrites).

    `warmup` calls run on a side stream first (PyTorch's recipe), then the capture.
    """
    device = static_in.device
    with torch.cuda.device(device):
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                fn(static_in)
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = fn(static_in)
    return graph.replay, static_out


def graphed(fn: Callable[[torch.Tensor], torch.Tensor], example: torch.Tensor,
            capture: Callable = capture_cuda_graph) -> Callable[[torch.Tensor], torch.Tensor]:
    """`fn` replayed from a graph captured on a copy of `example` (fixed shape, dtype, layout and device).

    Each call copies its input into the graph's static input buffer, replays, and returns a copy of the static output:
    the next replay overwrites that buffer, so a caller that kept the output of one call past the next (a writer
    thread, a deferred metric) would otherwise read the wrong batch. The copy costs one device-to-device copy of the
    logits (1 MB at batch 1, 512 px, fp16).
    """
    static_in = torch.empty_like(example).copy_(example)  # empty_like keeps example's layout (channels_last)
    replay, static_out = capture(fn, static_in)

    def replayed(x: torch.Tensor) -> torch.Tensor:
        if x.shape != static_in.shape or x.dtype != static_in.dtype or x.device != static_in.device:
            raise SampleError(f"a CUDA graph replays one input shape: it was captured for "
                              f"{tuple(static_in.shape)} {static_in.dtype} on {static_in.device}, got "
                              f"{tuple(x.shape)} {x.dtype} on {x.device}")
        static_in.copy_(x)  # also converts the layout, should x not be in the graph's
        replay()
        return static_out.clone()

    return replayed


def apply_levers(run: Callable[[torch.Tensor], Any], levers: Levers, device: torch.device,
                 example: Callable[[], torch.Tensor],
                 capture: Callable = capture_cuda_graph) -> Callable[[torch.Tensor], Any]:
    """`run` with `levers` in effect.

    On CUDA, cudnn.benchmark is set (on or off) around every call, so one row's setting never leaks into another's;
    then, with the graph lever, a graph is captured from `example()` (an input in the engine's native form: device,
    dtype, layout; made only when a graph is captured) and replayed.
    """
    call = run
    if device.type == "cuda":
        flag = levers.cudnn_benchmark

        def call(x):
            with cudnn_benchmark(flag):
                return run(x)
    return graphed(call, example(), capture) if levers.cuda_graph else call
