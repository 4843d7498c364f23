"""The run's configuration: the command line parsed once into a frozen value (a torchrun rank derives its own copy),
and the checks of it against this machine that come before anything runs."""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Optional

from dataset.synthetic import synthetic_folder
from report.outputs import FOLDER_FILES
from report.plots import PLOT_FILES
from utils.builds import tagged
from utils.device import memory_bytes
from utils.errors import SampleError
from utils.files import check_outputs, default_cache_dir

# Peak memory of eager fp32 inference per input pixel and image: lower bounds of the measured figures (UNet++ n1=32
# included; docs/failures.md), so a size they refuse cannot fit.
BYTES_PER_PIXEL = {"unet": 1536, "unet++": 2048}


@dataclass(frozen=True)
class RunConfig:
    """Every flag of sample.py (its parser holds the defaults and the help), plus the command as typed. `model_name`
    is the canonical name (`unet` or `unet++`)."""

    image_path: Optional[str]
    mask_path: Optional[str]
    image_size: tuple[int, int]
    limit: Optional[int]
    workers: int
    decode: str
    synthetic_count: int
    cache_dir: Optional[str]
    model_name: str
    pth: Optional[str]
    n_classes: Optional[int]
    bilinear: Optional[bool]
    base_width: Optional[int]
    seed: int
    engine: str
    auto: Optional[str]
    auto_budget: float
    profile: bool
    device: Optional[str]
    precision: str
    batch_size: int
    loop: int
    warm_counter: int
    min_duration: Optional[float]
    percentiles: tuple
    scenario: tuple
    concurrency: tuple
    min_queries: Optional[int]
    target_latency_ms: Optional[float]
    mlperf_minimums: bool
    qsl_memory: float
    loadgen_logs: Optional[str]
    threads: Optional[int]
    no_reference: bool
    reference: str
    dist_timeout: int
    calib: int
    calib_path: Optional[str]
    no_cache: bool
    strict: bool
    openvino_hint: str
    openvino_device: str
    soc_version: str
    channels_last: str
    cudnn_benchmark: str
    cuda_graphs: str
    json: Optional[str]
    quiet: bool
    html: Optional[str]
    trace: Optional[str]
    compare: Optional[list]
    fail_on_regression: Optional[float]
    clear_cache: bool
    output: Optional[str]
    overlay: bool
    submission: Optional[str]
    csv: Optional[str]
    eval_resolution: str
    plots: Optional[str]
    overwrite: bool
    command: str

    @classmethod
    def from_namespace(cls, values: dict, command: str) -> RunConfig:
        """The config of parsed flags (`vars(args)`); a flag the parser has and this class lacks is a TypeError."""
        return cls(**values, command=command)

    @property
    def loop_min_duration(self) -> float:
        """The timed loop's --min_duration: 0 unless asked, and the LoadGen scenarios' alone when `loop` is not among
        --scenario's (the loop still runs: its median sets LoadGen's expected latency)."""
        return (self.min_duration or 0.0) if "loop" in self.scenario else 0.0

    @property
    def auto_mode(self) -> str:
        """How `--engine auto` decides: as asked, else measure, or static with --no_cache (no choice could be kept)."""
        return self.auto or ("static" if self.no_cache else "measure")

    def outputs_asked(self) -> bool:
        """Per-image results that need the accuracy pass's logits: files, or dice at the original size."""
        return bool(self.output or self.submission or self.eval_resolution == "original")


def memory_problem(config: RunConfig) -> str | None:
    """Why the input size cannot fit this machine's memory (the model's activations, plus the int8 calibration images
    held as float32), or None; the message says what fits instead."""
    name, (w, h), batch = config.model_name, config.image_size, config.batch_size
    calib = config.calib if "int8" in config.precision.lower() else 0
    total = memory_bytes()
    need = (BYTES_PER_PIXEL[name] * batch + calib * 3 * 4) * w * h
    if not total or need <= total:
        return None
    held = f" and {calib} calibration images (--calib)" if calib else ""
    return (f"--image_size {w}x{h} at --batch_size {batch} needs at least {_gib(need)} for {name}'s activations "
            f"({BYTES_PER_PIXEL[name]} bytes per pixel){held}, more than this machine's {_gib(total)}: "
            f"{_what_fits(name, (w, h), calib, total)}")


def _gib(size: float) -> str:
    """Bytes in GiB, with a decimal below 10 GiB; below 1 GiB in MiB or KiB (a small container is not '0 GiB')."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if size >= scale:
            return f"{size / scale:.{1 if size < 10 * scale else 0}f} {unit}"
    return f"{size / 2**10:.0f} KiB"


def _what_fits(name: str, size: tuple[int, int], calib: int, total: int) -> str:
    """The largest batch at this size; where not even one image fits, the largest square size at batch 1."""
    w, h = size
    batch = (total - calib * 3 * 4 * w * h) // (BYTES_PER_PIXEL[name] * w * h)
    if batch >= 1:
        return f"the largest batch that fits at {w}x{h} is about --batch_size {batch}"
    side = int((total / (BYTES_PER_PIXEL[name] + calib * 3 * 4)) ** 0.5) // 16 * 16
    fewer = f", or fewer calibration images (--calib, {calib} now)" if calib else ""
    if side < 16:
        return f"no input size fits in this memory at --batch_size 1{fewer}"
    return f"the limit here is about {side}x{side} at --batch_size 1{fewer}"


def output_problem(config: RunConfig) -> str | None:
    """Why the outputs cannot be written safely, checked before anything runs: a link or a special file (/dev/null,
    /dev/stdout, a FIFO) as a target, two outputs writing one file, an output among the inputs."""
    outputs = [(flag, path, folder, names) for flag, path, folder, names in [
        ("--output", config.output, True, FOLDER_FILES), ("--plots", config.plots, True, PLOT_FILES),
        ("--submission", config.submission, False, ()), ("--csv", config.csv, False, ()),
        ("--json", config.json, False, ()), ("--html", config.html, False, ()),
        ("--trace", config.trace, False, ())] if path]
    cache = config.cache_dir or default_cache_dir()
    inputs = [("image", config.image_path), ("mask", config.mask_path), ("calibration", config.calib_path),
              ("checkpoint", config.pth), ("engine cache", os.path.join(cache, "engines"))]
    # The generated sets: the sample's own (tagged: --clear_cache removes them, results with them) and the one this
    # run reads. A user's folder that merely starts with synthetic- is neither.
    generated = {path for path in glob.glob(os.path.join(glob.escape(cache), "synthetic-*")) if tagged(path)}
    if config.image_path is None:
        generated.add(synthetic_folder(config.synthetic_count, config.seed, cache))
    inputs += [("generated data", path) for path in sorted(generated)]
    try:
        check_outputs(outputs, inputs)
    except SampleError as exc:
        return str(exc)
    return None
