"""Device selection: `cpu`, an accelerator index, or `cuda:N` / `npu:N`, never a silent fallback to the CPU."""
from __future__ import annotations

import contextlib
import importlib.util
import os
import platform

import torch

from utils.errors import SampleError


def npu_available() -> bool:
    """True when torch_npu sees at least one Ascend NPU (importing it registers torch.npu), or torch_aie is installed.

    torch_aie runs without torch_npu and has no device query; its wheel only installs with CANN, so its presence is
    taken as an NPU host and `set_device` reports a missing card.
    """
    if importlib.util.find_spec("torch_npu") is None:
        return importlib.util.find_spec("torch_aie") is not None
    try:
        import torch_npu  # noqa: F401
    except Exception:  # a broken CANN install raises many kinds of errors; it simply means "no NPU here"
        return False
    return hasattr(torch, "npu") and torch.npu.is_available()


def accelerator() -> str | None:
    """The accelerator type present on this machine: 'cuda', 'npu' or None."""
    if torch.cuda.is_available():
        return "cuda"
    if npu_available():
        return "npu"
    return None


def _count(kind: str) -> int:
    if kind == "cuda":
        return torch.cuda.device_count()
    return torch.npu.device_count() if hasattr(torch, "npu") else 1 << 16  # torch_aie alone cannot count


def _device(kind: str, index: int | str) -> torch.device:
    """torch.device for `kind:index`; `npu` exists in torch only once an Ascend package has registered it."""
    if kind == "npu":
        for package in ("torch_npu", "torch_aie"):
            if importlib.util.find_spec(package) is not None:
                try:
                    importlib.import_module(package)
                except Exception:  # noqa: BLE001  a broken CANN install: reported below as an unusable device
                    pass
    try:
        return torch.device(f"{kind}:{index}")
    except RuntimeError:
        raise SampleError(
            f"device {kind}:{index} is not known to this torch: install torch_npu (Ascend's PyTorch adapter, which "
            "registers the npu device) for your CANN version, or use --device cpu"
        ) from None


def parse_device(text: str | None) -> torch.device:
    """Resolve --device: None picks accelerator 0 when present, else the CPU; `N` means the accelerator N."""
    if text is None or text == "auto":
        kind = accelerator()
        return _device(kind, 0) if kind else torch.device("cpu")
    text = text.strip().lower()
    if text == "cpu":
        return torch.device("cpu")
    kind, _, index = text.rpartition(":")
    if not kind and index.isdigit():
        kind = accelerator()
        if kind is None:
            raise SampleError(
                f"--device {text} asks for accelerator {index}, but this machine has no CUDA GPU and no Ascend NPU "
                "(torch_npu) visible to PyTorch; use --device cpu"
            )
    elif kind not in ("cuda", "npu") or not index.isdigit():
        raise SampleError(f"unknown device {text!r}; use cpu, an accelerator index such as 0, cuda:N or npu:N")
    available = {"cuda": torch.cuda.is_available, "npu": npu_available}[kind]()
    if not available:
        raise SampleError(f"--device {text}: no {kind.upper()} device is available here; use --device cpu")
    if int(index) >= _count(kind):
        raise SampleError(f"--device {text}: only {_count(kind)} {kind.upper()} device(s) present (indices from 0)")
    return _device(kind, index)


def synchronizer(device: torch.device):
    """A function that waits for all work queued on `device` (a no-op on the CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    if device.type == "npu":
        return lambda: torch.npu.synchronize(device)
    return lambda: None


# ISA features that decide which engine and precision is fast on a CPU (AMX, AVX512-BF16, VNNI: bf16 / int8 natively).
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_fp16")
NATIVE_BF16 = ("avx512_bf16", "amx_bf16")  # bf16 arithmetic in hardware
NATIVE_INT8 = ("avx512_vnni", "avx_vnni", "amx_int8")  # int8 dot products in hardware


def describe_host(device: torch.device) -> dict:
    """The CPU (model name, the ISA flags in ISA_FLAGS) and, on an accelerator, its name: every figure's context."""
    model, flags = platform.processor() or platform.machine(), set()
    for key, value in _cpuinfo():
        if key == "model name" and value:
            model = value
        elif key == "flags":
            flags = set(value.split())
            break
    host = {"cpu": model, "cpu_count": os.cpu_count(), "isa": [f for f in ISA_FLAGS if f in flags]}
    if device.type == "cuda":
        host["accelerator"] = torch.cuda.get_device_name(device)
    elif device.type == "npu":
        host["accelerator"] = torch.npu.get_device_name(device.index or 0) if hasattr(torch, "npu") else "npu"
    return host


def usable_cpus() -> int:
    """Logical CPUs this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _cpuinfo():
    """(key, value) pairs of /proc/cpuinfo, stripped; nothing where it does not exist (not Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.readlines()
    except OSError:
        return
    for line in lines:
        key, _, value = line.partition(":")
        yield key.strip(), value.strip()


def physical_cores() -> int:
    """Physical cores among the usable CPUs (SMT siblings counted once); the logical count when unknown."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:
        return usable_cpus()
    cores, cpu, phys = set(), None, "0"
    for key, value in _cpuinfo():
        if key == "processor":
            cpu = int(value) if value.isdigit() else None
        elif key == "physical id":
            phys = value
        elif key == "core id" and cpu in allowed:
            cores.add((phys, value))
    return len(cores) or len(allowed)


def precision_hints(device: torch.device, precisions: list[str], host: dict | None = None) -> list[str]:
    """One line per faster precision this device runs natively and the run did not ask for; never a switch."""
    host = host or describe_host(device)
    hints = []
    if device.type == "cpu":
        isa = set(host.get("isa", []))
        bf16 = sorted(isa & set(NATIVE_BF16))
        int8 = sorted(isa & set(NATIVE_INT8))
        if bf16 and "bf16" not in precisions:
            hints.append(f"this CPU computes bf16 natively ({', '.join(bf16)}): try --precision fp32,bf16 "
                         "(bf16 ran 2-6x faster than fp32 on the CPUs measured in docs/engines.md; the row is "
                         "checked against the 0.999 cosine bar)")
        if int8 and "int8" not in precisions:
            hints.append(f"this CPU has int8 dot-product instructions ({', '.join(int8)}): try --precision fp32,int8 "
                         "--calib_path DIR (images that are not scored); the row reports its dice delta vs fp32")
    elif device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        if major >= 7 and not {"fp16", "bf16"} & set(precisions):
            native = "fp16 and bf16" if major >= 8 else "fp16"
            hints.append(f"{host.get('accelerator', 'this GPU')} has tensor cores for {native}: try "
                         "--precision fp32,fp16 (checked against the 0.999 cosine bar)")
    elif device.type == "npu" and "fp16" not in precisions:
        hints.append("Ascend NPUs compute fp16 natively: try --precision fp16")
    return hints


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run the block with torch's intra-op threads at `threads` (unchanged when None), then restore them."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def memory_bytes() -> int | None:
    """This machine's memory, or its container's limit when lower; None where neither can be read."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(limit_file) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total
