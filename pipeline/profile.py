"""--profile: where a row's call spends its time, per operator (or layer), from the engine's own profiler.

After the timing pass, a few more calls on the same resident batch run under the engine's profiler: torch.profiler
for torch, TorchScript and inductor; OpenVINO's performance counters (a second compile of the same IR with
PERF_COUNT on: the timed engine was compiled without it); ONNX Runtime's profiler (a second session on the same ONNX
file, writing its trace in a temporary folder that is removed). The timed engine is never touched, and an engine
without a profiler here says so in one line. Times are self times (an operator's own, its children's apart), so the
total over every profiled operator is one call's work, compared with the row's median call timed without a profiler.

Grouping: torch by operator name (aten::mkldnn_convolution, ...: every call of it summed); OpenVINO and ONNX Runtime
by layer / node name, each with its type (Convolution, Conv, ...), and per type in `types`.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Optional, Protocol

import torch

from engines.base import Engine, EngineOptions
from utils.errors import first_line

TOP = 15  # operators kept per row (all of them count in the total)
MAX_CALLS = 10
OPAQUE = 0.5  # operators covering less than this share of a profiled call: the call is opaque to the profiler
TORCH_ENGINES = ("torch", "torchscript", "inductor")
MARK = "unet_sample::profiled_call"  # torch.profiler's span around each call (not an operator)
NO_PROFILER = {
    "tensorrt": "tensorrt: no per-layer profiler in this sample (trtexec --dumpProfile answers it for a TensorRT "
                "engine)",
    "torch_aie": "torch_aie: its compiled call is opaque to torch.profiler, and no Ascend profiler runs here "
                 "(msprof / ais_bench --profiler answer it)",
    "torch_npu": "torch_npu: no Ascend profiler runs here (torch_npu.profiler / msprof answer it)",
}


@dataclass(frozen=True)
class ProfiledOp:
    """One operator (torch) or layer (OpenVINO, ONNX Runtime): its self time per call, its share of all profiled
    operators' time, and how many times it ran per call (1 for a layer)."""

    name: str
    type: str  # the operator's type: the aten name for torch, Convolution / Conv ... for OpenVINO / ONNX Runtime
    detail: str  # OpenVINO's exec_type (the kernel), ONNX Runtime's provider; '' for torch
    ms_per_call: float
    share: float
    count: float


@dataclass(frozen=True)
class OpType:
    """Every profiled operator of one type, summed."""

    type: str
    ms_per_call: float
    share: float
    count: float


@dataclass(frozen=True)
class Profile:
    """A row's --profile: the top operators, every type, the total of all profiled operators per call beside the row's
    median call timed without the profiler, and the profiled calls' own mean wall time. `tool` is None (and `note`
    says why) when the engine has no profiler here or profiling failed; the row's figures stand either way."""

    tool: Optional[str]
    calls: int
    ops: list[ProfiledOp] = field(default_factory=list)
    ops_count: int = 0  # operators / layers profiled, before the top TOP are kept
    types: list[OpType] = field(default_factory=list)
    total_ms_per_call: Optional[float] = None
    median_call_ms: Optional[float] = None
    profiled_call_ms: Optional[float] = None  # the profiled calls' mean wall time, the profiler's overhead in it
    note: str = ""

    @property
    def ratio(self) -> float | None:
        """All profiled operators' time per call over the unprofiled median call."""
        if self.total_ms_per_call is None or not self.median_call_ms:
            return None
        return self.total_ms_per_call / self.median_call_ms


class Profiled(Protocol):
    """What a profile needs from the run (pipeline.rows.Job): the model and shape to rebuild a profiled engine from,
    the timing's loop and warm-up."""

    model: torch.nn.Module
    shape: tuple
    loop: int
    warmup: int
    show_progress: bool


@dataclass
class Measured:
    """What one profiler saw over `calls` calls: per operator [type, detail, total ms, occurrences], the calls' wall
    times, and what the note should say."""

    tool: str
    calls: int
    ops: dict = field(default_factory=dict)
    walls_ms: list = field(default_factory=list)
    note: str = ""
    engine: str = ""
    host_clock: bool = True  # the operators' times are wall time on the host, comparable with a call's (not CUDA's)

    def add(self, name: str, kind: str, detail: str, ms: float, count: int = 1) -> None:
        entry = self.ops.setdefault(name, [kind, detail, 0.0, 0])
        entry[2] += ms
        entry[3] += count


def profile_calls(loop: int) -> int:
    """How many calls are profiled: the timing's `loop`, between 3 and MAX_CALLS."""
    return max(3, min(loop, MAX_CALLS))


def profile_row(engine: Engine, batch: torch.Tensor, job: Profiled, options: EngineOptions,
                median_ms: float | None) -> Profile:
    """The row's profile (its note says why there is none); an engine error while profiling is the note, never the
    row's loss. Ctrl-C propagates."""
    calls, warmup = profile_calls(job.loop), max(2, job.warmup)
    if job.show_progress:
        print(f"[{engine.name} {engine.precision}] profiling {calls} calls ...", file=sys.stderr)
    try:
        if engine.name in TORCH_ENGINES:
            measured = profile_torch(engine, batch, calls, warmup)
        elif engine.name == "openvino":
            measured = profile_openvino(engine, batch, job, options, (calls, warmup))
        elif engine.name == "onnxruntime":
            measured = profile_onnxruntime(engine, batch, job, options, (calls, warmup))
        else:
            why = NO_PROFILER.get(engine.name, f"{engine.name}: no per-operator profiler for this engine here")
            return Profile(None, 0, median_call_ms=median_ms, note=why)
    except Exception as exc:  # noqa: BLE001  the profile is an extra: its failure is said, the row stands
        return Profile(None, 0, median_call_ms=median_ms,
                       note=f"profiling {engine.name} failed: {type(exc).__name__}: {first_line(exc)}")
    measured.engine = engine.name
    return summarize(measured, median_ms)


def summarize(measured: Measured, median_ms: float | None) -> Profile:
    """Per-call figures: the top TOP operators by time, every type, the total of all of them."""
    n = measured.calls
    total = sum(entry[2] for entry in measured.ops.values()) / n

    def share(ms: float) -> float:
        return ms / total if total > 0 else 0.0

    ranked = sorted(measured.ops.items(), key=lambda item: -item[1][2])
    ops = [ProfiledOp(name, kind, detail, ms / n, share(ms / n), count / n)
           for name, (kind, detail, ms, count) in ranked[:TOP]]
    by_type: dict = {}
    for kind, _, ms, count in measured.ops.values():
        summed = by_type.setdefault(kind, [0.0, 0])
        summed[0] += ms
        summed[1] += count
    types = [OpType(kind, ms / n, share(ms / n), count / n)
             for kind, (ms, count) in sorted(by_type.items(), key=lambda item: -item[1][0])]
    # The mean, like the operators' per-call times: the same calls, so a spike counts in both or in neither.
    wall = sum(measured.walls_ms) / len(measured.walls_ms) if measured.walls_ms else None
    if wall and measured.host_clock and total < OPAQUE * wall:  # a call the profiler cannot see into (AOTInductor)
        return Profile(None, n, [], len(measured.ops), [], total, median_ms, wall,
                       f"{measured.engine}: its compiled call is opaque to {measured.tool}: the operators it sees "
                       f"cover {total / wall:.1%} of a profiled call")
    return Profile(measured.tool, n, ops, len(measured.ops), types, total, median_ms, wall, measured.note)


@contextlib.contextmanager
def _quiet_stderr():
    """Kineto (torch.profiler's backend) writes 'USDT: ... profiler_start / profiler_stop' lines on the process's
    stderr when a profile starts and stops; they say nothing to the user."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 (stderr closed): nothing to quiet
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def profile_torch(engine: Engine, batch: torch.Tensor, calls: int, warmup: int) -> Measured:
    """torch.profiler over `calls` calls: self CPU time per operator on the calling thread (an operator's intra-op
    threads work inside it, so they count once). On CUDA the operators' self device time (their kernels) instead.
    The CUDA path is written to the same events but not tested on a GPU yet."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, record_function

    cuda = engine.device.type == "cuda"
    native = engine.prepare(batch)
    engine.synchronize()
    for _ in range(warmup):
        engine.run(native)
        engine.synchronize()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])  # CUDA: untested here
    profiler = profile(activities=activities)
    measured = Measured("torch.profiler", calls, host_clock=not cuda)  # a GPU idle between kernels is not opaque
    with _quiet_stderr():
        profiler.start()
    try:
        for _ in range(calls):
            start = time.perf_counter()
            with record_function(MARK):
                engine.run(native)
                engine.synchronize()
            measured.walls_ms.append((time.perf_counter() - start) * 1000.0)
    finally:
        with _quiet_stderr():
            profiler.stop()
    events = profiler.events()
    threads = {e.thread for e in events if e.name == MARK}  # other threads' ops (an outputs writer) are not the call
    for e in events:
        if e.name == MARK or e.thread not in threads or e.device_type != DeviceType.CPU:
            continue
        if cuda:  # untested here: kernels are attributed to the operator that launched them
            us = getattr(e, "self_device_time_total", None)
            us = e.self_cuda_time_total if us is None else us
        else:
            us = e.self_cpu_time_total
        measured.add(e.name, e.name, "", us / 1000.0)
    what = "self CUDA time (kernels) per operator" if cuda else "self CPU time per operator, calling thread"
    measured.note = what + ("; the row's CUDA graph replays hide its operators" if "CUDA graph" in
                            " ".join(engine.levers) else "")
    return measured


@contextlib.contextmanager
def _artifact_file(engine: Engine, name: str, build) -> Iterator[tuple[str, bool]]:
    """(path of the engine's `name` file, rebuilt): the cached artifact's, or one built again by `build(folder)` in a
    temporary folder removed at the end of the block (a build without the cache is gone once its engine is loaded)."""
    from engines.cache import TEMPORARY
    from utils.builds import temporary_folder

    cached = os.path.join(engine.artifact_path, name) if engine.artifact_path else ""
    if cached and os.path.isfile(cached):
        yield cached, False
        return
    with temporary_folder(TEMPORARY) as folder:
        build(folder)
        yield os.path.join(folder, name), True


def profile_openvino(engine: Engine, batch: torch.Tensor, job: Profiled, options: EngineOptions,
                     counts: tuple[int, int]) -> Measured:
    """OpenVINO's performance counters: the row's IR compiled again as the engine was, with PERF_COUNT on, one infer
    request; per executed layer its real_time, summed over the calls (fused and skipped layers report none)."""
    import openvino as ov

    from engines import openvino as ov_engine

    calls, warmup = counts
    stored = "int8" if engine.precision == "int8" else "fp32"  # as engines.openvino.load keeps it
    config = {"PERFORMANCE_HINT": ov_engine.HINTS[options.openvino_hint], "PERF_COUNT": True,
              "INFERENCE_PRECISION_HINT": ov_engine.INFERENCE_PRECISION[engine.precision]}
    if options.threads:
        config["INFERENCE_NUM_THREADS"] = options.threads
    core = ov.Core()
    with _artifact_file(engine, "model.xml", lambda folder: ov_engine.build(
            folder, job.model, job.shape, stored, options.calibration)) as (path, rebuilt):
        compiled = core.compile_model(core.read_model(path), options.openvino_device, config)
    request = compiled.create_infer_request()
    native = engine.prepare(batch)
    for _ in range(warmup):
        request.infer({0: native}, share_inputs=True)
    measured = Measured("OpenVINO performance counters", calls)
    for _ in range(calls):
        start = time.perf_counter()
        request.infer({0: native}, share_inputs=True)
        measured.walls_ms.append((time.perf_counter() - start) * 1000.0)
        for layer in request.get_profiling_info():
            if getattr(layer.status, "name", str(layer.status)).endswith("EXECUTED"):
                measured.add(layer.node_name, layer.node_type, layer.exec_type,
                             layer.real_time.total_seconds() * 1000.0)
    measured.note = ("real_time per executed layer, one infer request; a second compile of the "
                     + ("IR rebuilt for the profile" if rebuilt else "cached IR") + " with PERF_COUNT on")
    if engine.parallel > 1:
        measured.note += (f"; the row's median times {engine.parallel} requests in flight (THROUGHPUT hint): the "
                          "sum is not comparable with it")
    return measured


def profile_onnxruntime(engine: Engine, batch: torch.Tensor, job: Profiled, options: EngineOptions,
                        counts: tuple[int, int]) -> Measured:
    """ONNX Runtime's profiler: a second session on the row's ONNX file with enable_profiling, its trace written in a
    temporary folder and read back; per node its kernel time, over the calls after the warm-up."""
    import onnxruntime as ort

    from engines import onnxruntime as ort_engine
    from engines.cache import TEMPORARY
    from utils.builds import temporary_folder

    calls, warmup = counts
    native = engine.prepare(batch)
    with temporary_folder(TEMPORARY) as trace_folder, _artifact_file(
            engine, "model.onnx", lambda folder: ort_engine.build(folder, job.model, job.shape, engine.precision,
                                                                  options.calibration)) as (path, rebuilt):
        settings = ort.SessionOptions()
        settings.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        settings.intra_op_num_threads = options.threads or 0
        settings.enable_profiling = True
        settings.profile_file_prefix = os.path.join(trace_folder, "ort")
        session = ort.InferenceSession(path, settings, providers=ort_engine.providers(ort, engine.device))
        walls = []
        for _ in range(warmup + calls):
            start = time.perf_counter()
            session.run(None, {"input": native})
            walls.append((time.perf_counter() - start) * 1000.0)
        with open(session.end_profiling()) as f:
            events = json.load(f)
    measured = Measured("ONNX Runtime profiler", calls, walls_ms=walls[warmup:])
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    after = runs[-calls] if len(runs) >= calls else 0  # the nodes of the calls after the warm-up only
    if len(runs) < calls:  # a trace without its runs: every call's nodes, the warm-up's too
        measured.calls = warmup + calls
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e.get("ts", 0) >= after:
            args = e.get("args", {})
            measured.add(e["name"][:-len("_kernel_time")], args.get("op_name", "?"), args.get("provider", ""),
                         e.get("dur", 0) / 1000.0)
    measured.note = ("kernel time per node; a second session on the "
                     + ("ONNX file rebuilt for the profile" if rebuilt else "cached ONNX file") + " with profiling on")
    if engine.device.type != "cpu":  # untested here: CUDA kernels run asynchronously to the node that launched them
        measured.note += "; on CUDA a node's time is its launch on the host, not its kernels' run on the GPU"
    return measured
