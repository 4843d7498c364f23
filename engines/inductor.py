"""torch.compile (TorchInductor) at the real batch shape; on the CPU with freezing (weights folded as constants).

Compilation happens on the first call, so `load` makes that call: its wall time is the reported compile time.
"""
from __future__ import annotations

import copy
import getpass
import os
import shutil
import tempfile
from contextlib import contextmanager

import torch

from engines.base import DTYPES, Engine, EngineOptions, torch_io
from utils.cache import ArtifactCache
from utils.device import synchronizer

DEVICES = ("cpu", "cuda")
PRECISIONS = ("fp32", "fp16", "bf16")
# Read before torch can set it: inductor writes its default into the environment the first time it looks.
USER_CACHE_DIR = os.environ.get("TORCHINDUCTOR_CACHE_DIR")


@contextmanager
def inductor_options(**values):
    """Set torch._inductor.config values for the duration (by hand: `config.patch` is not in torch 2.0)."""
    import torch._inductor.config as config

    # torch 2.0 has no `freezing` option: there the graph is compiled without it (slower, same numbers).
    values = {k: v for k, v in values.items() if hasattr(config, k)}
    old = {k: getattr(config, k) for k in values}
    for k, v in values.items():
        setattr(config, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(config, k, v)


@contextmanager
def inductor_cache(cache: ArtifactCache | None):
    """Point inductor's own cache (keyed by graph, weights and versions) at `<cache>/engines/inductor` while it
    compiles; without our cache, at a temporary folder removed afterwards (the compiled code is loaded by then).

    A TORCHINDUCTOR_CACHE_DIR the user set is theirs and is kept. Inductor also makes its global folder
    `<temp dir>/torchinductor_<user>`; when this compile created it and left it empty, it goes too.
    """
    if USER_CACHE_DIR:
        yield USER_CACHE_DIR
        return
    try:
        default = os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}")
    except (KeyError, OSError):  # no user name (a container without /etc/passwd): inductor names it otherwise
        default = ""
    existed = not default or os.path.exists(default)
    folder = os.path.join(cache.root, "inductor") if cache else tempfile.mkdtemp(prefix="unet-sample-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    try:
        yield folder if cache else ""
    finally:
        os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        if not cache:
            shutil.rmtree(folder, ignore_errors=True)
        if not existed and os.path.isdir(default) and not any(files for _, _, files in os.walk(default)):
            shutil.rmtree(default, ignore_errors=True)


def load(model: torch.nn.Module, example_shape: tuple, device: torch.device, precision: str,
         options: EngineOptions) -> Engine:
    """Compile a copy of the model; the mode defaults to max-autotune on CUDA (it pays there) and default on the CPU."""
    # max-autotune benchmarks GEMM / conv templates at compile time: it pays on GPUs; on the CPU it is opt-in.
    mode = options.inductor_mode or ("max-autotune" if device.type == "cuda" else "default")
    net = copy.deepcopy(model).to(device=device, dtype=DTYPES[precision]).eval()
    prepare, to_torch = torch_io(device, precision)
    example = prepare(torch.rand(example_shape))
    sync = synchronizer(device)
    # Freezing folds weights and BatchNorm into constants; it needs the graph to run without grad.
    # Inductor keeps precompiled headers (about 150 MB, made once per machine) in its global temp folder whatever
    # its cache dir says. They save 12-19 % of a cold CPU compile (UNet / UNet++ at 64 px), so they stay on with
    # our cache; with --no_cache, which promises to leave nothing behind, they are off.
    with inductor_cache(options.cache) as cache_dir, torch.no_grad(), \
            inductor_options(freezing=device.type == "cpu", cpp_cache_precompile_headers=options.cache is not None):
        compiled = torch.compile(net, mode=mode, dynamic=False)
        compiled(example)
        sync()

    def run(x):
        with torch.no_grad():
            return compiled(x)

    return Engine("inductor", device, precision, run, prepare, to_torch, sync,
                  timed=f"compiled model call ({mode} mode) on a device-resident batch",
                  artifact="compiled (inductor's own cache)" if cache_dir else "compiled", artifact_path=cache_dir,
                  device_input=True)
