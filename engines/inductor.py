"""TorchInductor at the real batch shape, as an AOTInductor package kept in the artifact cache (torch >= 2.6).

The first run exports and compiles the package, later runs load it; freezing (weights folded as constants) on the
CPU, max-autotune on CUDA. Where this torch has no AOTInductor (torch 2.0.1 on the Ascend stack), it falls back to
torch.compile, which compiles on the first call: `load` makes that call, so its wall time is the reported compile time.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import getpass
import inspect
import os
import shutil
import tempfile
from contextlib import contextmanager

import torch

from engines.base import DTYPES, Engine, EngineOptions, torch_io
from engines.cache import ArtifactCache, artifact, save_bytes, usable
from engines.levers import Levers, apply_levers, levers_for
from utils.builds import process_folder, temporary_folder
from utils.device import describe_host, synchronizer
from utils.errors import SampleError

DEVICES = ("cpu", "cuda")
PRECISIONS = ("fp32", "fp16", "bf16")
# Read before torch can set it: inductor writes its default into the environment the first time it looks.
USER_CACHE_DIR = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
AOTI_VERSION = "1"
TEMPORARY = "unet-sample-inductor-"  # inductor's cache without ours (one of utils.builds.TEMPORARY)
PACKAGE_FILE = "model.pt2"  # not PACKAGE: that names a pip package an engine needs (engines/__init__.py)


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
    """Point inductor's own cache at `<cache>/engines/inductor` while it compiles (without our cache, or one that can
    no longer be written, a temporary one).

    Inductor keys its cache by graph, weights and versions; the temporary folder goes afterwards (the compiled code is
    loaded by then). A TORCHINDUCTOR_CACHE_DIR the user set is theirs and is kept. Inductor also makes its global
    folder `<temp dir>/torchinductor_<user>`; when this compile created it and left it empty, it goes too.
    """
    if USER_CACHE_DIR:
        yield USER_CACHE_DIR
        return
    try:
        default = os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}")
    except (KeyError, OSError):  # no user name (a container without /etc/passwd): inductor names it otherwise
        default = ""
    existed = not default or os.path.exists(default)
    cache = usable(cache)
    previous = os.environ.get("TORCHINDUCTOR_CACHE_DIR")  # inductor may have written its default there
    try:
        with contextlib.ExitStack() as stack:
            folder = os.path.join(cache.root, "inductor") if cache else _temporary_folder(stack)
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
            yield folder if cache else ""
    finally:
        if previous is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = previous
        if not existed and os.path.isdir(default) and not any(files for _, _, files in os.walk(default)):
            shutil.rmtree(default, ignore_errors=True)


_PROCESS_FOLDER: list[str] = []  # where torch 2.0's inductor writes for the whole process (see _temporary_folder)


def _temporary_folder(stack: contextlib.ExitStack) -> str:
    """A temporary folder for inductor's cache, removed when `stack` closes. torch 2.0's inductor reads its folder
    once and keeps it, and more (its ISA probes' files) with it: there one folder serves every compile of the process
    and goes at exit (removed after the first compile, it broke the next: a second --no_cache row)."""
    # Told by the version, not by importing inductor: that import makes the cache folder the environment names now.
    if torch.__version__ >= "2.1":  # read afresh at every use
        return stack.enter_context(temporary_folder(TEMPORARY))
    if not _PROCESS_FOLDER:
        _PROCESS_FOLDER.append(process_folder(TEMPORARY))
    return _PROCESS_FOLDER[0]


def aoti_available() -> bool:
    """True when this torch has the AOTInductor API used here: torch >= 2.6 (2.5 had another signature)."""
    import torch._inductor

    release = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2] if p.isdigit())
    return release >= (2, 6) and hasattr(torch, "export") and \
        all(hasattr(torch._inductor, f) for f in ("aoti_compile_and_package", "aoti_load_package"))


def precompiled_headers(cache: ArtifactCache | None) -> bool:
    """Whether a compile may use (and make) inductor's precompiled headers. Inductor keeps them in its global temp
    folder whatever its cache dir says; made once, they shorten every later cold CPU compile on the machine. So they are
    on with our cache and off without it: --no_cache promises to leave nothing behind (docs/engines.md)."""
    return usable(cache) is not None


def aoti_configs(device: torch.device, mode: str, cache: ArtifactCache | None) -> dict:
    """inductor settings of the package.

    torch.compile's `mode` has no AOTInductor twin, so its autotuning is asked for by name (its CUDA graphs are the
    cuda_graphs lever's, around the package's call).
    """
    import torch._inductor.config as config

    configs = {"max_autotune": mode.startswith("max-autotune"), "freezing": device.type == "cpu"}
    headers = precompiled_headers(cache)
    for name, group in (("cpp_cache_precompile_headers", config), ("aot_inductor.precompile_headers",
                                                                   getattr(config, "aot_inductor", None))):
        if hasattr(group, name.rpartition(".")[2]):
            configs[name] = headers
    return configs


def aoti_key(device: torch.device, mode: str) -> dict:
    """What the package depends on beyond weights, shape and precision: the machine it is built for.

    The CPU compiler runs with -march=native and CUDA kernels are autotuned for this GPU, so a cache folder shared with
    another CPU or GPU must not load it.
    """
    host = describe_host(device)
    return {"mode": mode, "cpu": host["cpu"], "isa": host["isa"], "accelerator": host.get("accelerator", "")}


def single_threaded_loader() -> bool:
    """True when aoti_load_package can load a package for CUDA graph capture (`run_single_threaded`)."""
    import torch._inductor

    return "run_single_threaded" in inspect.signature(torch._inductor.aoti_load_package).parameters


def load(model: torch.nn.Module, example_shape: tuple, device: torch.device, precision: str,
         options: EngineOptions) -> Engine:
    """The compiled model: an AOTInductor package, or torch.compile where this torch has none.

    The mode defaults to max-autotune on CUDA (it pays there) and default on the CPU (max-autotune benchmarks GEMM /
    conv templates at compile time: opt-in there).
    """
    mode = options.inductor_mode or ("max-autotune" if device.type == "cuda" else "default")
    levers = levers_for("inductor", device, precision, example_shape, options)
    with inductor_cache(options.cache):  # the first `import torch._inductor` makes inductor's cache folder
        aoti = aoti_available()
    if aoti:
        return load_package(model, example_shape, device, precision, options, mode, levers)
    # torch.compile's max-autotune mode captures its own CUDA graphs: ours would wrap theirs.
    if levers.cuda_graph and options.cuda_graphs == "on":
        raise SampleError(f"--cuda_graphs on: torch {torch.__version__} has no AOTInductor; its torch.compile decides "
                          "CUDA graphs by mode (max-autotune captures them); use --cuda_graphs auto or off")
    return compile_module(model, example_shape, device, precision, options, mode,
                          dataclasses.replace(levers, cuda_graph=False))


def load_package(model: torch.nn.Module, example_shape: tuple, device: torch.device, precision: str,
                 options: EngineOptions, mode: str, levers: Levers) -> Engine:
    """Export the model, compile it into an AOTInductor package in the artifact cache (or load the one there)."""
    import torch._inductor

    if levers.cuda_graph and not single_threaded_loader():
        if options.cuda_graphs == "on":
            raise SampleError(f"--cuda_graphs on: torch {torch.__version__} cannot load an AOTInductor package for "
                              "graph capture (no run_single_threaded); use --cuda_graphs off")
        levers = dataclasses.replace(levers, cuda_graph=False)
    prepare, to_torch = torch_io(device, precision)

    def build(folder: str) -> None:
        net = copy.deepcopy(model).to(device=device, dtype=DTYPES[precision]).eval()
        # The package is the artifact: inductor's own cache would only keep a second copy of it (weights included),
        # so it compiles in a temporary one (export writes there too).
        # Freezing only applies to a graph compiled without grad (it then packs the CPU convolutions for oneDNN).
        with inductor_cache(None), torch.no_grad():
            exported = torch.export.export(net, (prepare(torch.rand(example_shape)),))
            configs = aoti_configs(device, mode, options.cache)
            save_bytes(os.path.join(folder, PACKAGE_FILE), lambda buffer: torch._inductor.aoti_compile_and_package(
                exported, package_path=buffer, inductor_configs=configs))

    version = f"{AOTI_VERSION}-aoti-torch{torch.__version__}-{device.type}"
    with artifact(options.cache, "inductor", version, model, example_shape, precision, build,
                  **aoti_key(device, mode)) as built:
        kwargs = {"run_single_threaded": True} if levers.cuda_graph else {}
        takes_index = "device_index" in inspect.signature(torch._inductor.aoti_load_package).parameters  # torch >= 2.8
        if device.type == "cuda" and takes_index:
            kwargs["device_index"] = device.index or 0
        on_device = torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
        # Loading compiles inductor's small CPU-feature probes once: kept in its cache (docs/engines.md).
        with inductor_cache(options.cache), on_device:
            compiled = torch._inductor.aoti_load_package(os.path.join(built.folder, PACKAGE_FILE), **kwargs)

    def call(x):
        with torch.no_grad():
            return compiled(x)

    run = apply_levers(call, levers, device, lambda: prepare(torch.rand(example_shape)))
    return Engine("inductor", device, precision, run, prepare, to_torch, synchronizer(device),
                  timed=levers.describe(f"AOTInductor package call ({mode}) on a device-resident batch"),
                  artifact=built.state, artifact_path=built.path, device_input=True, levers=levers.names())


def compile_module(model: torch.nn.Module, example_shape: tuple, device: torch.device, precision: str,
                   options: EngineOptions, mode: str, levers: Levers) -> Engine:
    """torch.compile a copy of the model and make its first call (the compile), for torch without AOTInductor."""
    net = copy.deepcopy(model).to(device=device, dtype=DTYPES[precision]).eval()
    prepare, to_torch = torch_io(device, precision)
    example = prepare(torch.rand(example_shape))
    sync = synchronizer(device)
    # max-autotune on CUDA captures CUDA graphs itself, whose output buffer the next call overwrites: a copy keeps
    # Engine's contract (what run returns stays the caller's).
    own_graphs = device.type == "cuda" and mode == "max-autotune"

    def call(x):
        with torch.no_grad():
            out = compiled(x)
        return out.clone() if own_graphs else out

    run = apply_levers(call, levers, device, lambda: example)
    # Freezing folds weights and BatchNorm into constants; it needs the graph to run without grad.
    with inductor_cache(options.cache) as cache_dir, inductor_options(
            freezing=device.type == "cpu", cpp_cache_precompile_headers=precompiled_headers(options.cache)):
        # Made here: torch.compile's imports make inductor's cache folder, which must be ours (or go with it).
        compiled = torch.compile(net, mode=mode, dynamic=False)  # lazy: it compiles on the first call, just below
        run(example)
        sync()
    return Engine("inductor", device, precision, run, prepare, to_torch, sync,
                  timed=levers.describe(f"compiled model call ({mode} mode"
                                        + (", its own CUDA graphs, output copied out" if own_graphs else "")
                                        + ") on a device-resident batch"),
                  artifact="compiled (inductor's own cache)" if cache_dir else "compiled", artifact_path=cache_dir,
                  device_input=True, levers=levers.names() + (("CUDA graph (max-autotune's)",) if own_graphs else ()))
