"""A run from its config to its report: set up (device, plan, model, data, outputs, engine options, reference), run
every row, then write and print whatever finished."""
from __future__ import annotations

import contextlib
import datetime
import importlib.util
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

import engines
import models
from dataset.batches import Loader, iter_dataset
from dataset.calibration import choose_samples, load_calibration
from dataset.decode import DECODES
from dataset.modes import describe_conversions
from dataset.nvjpeg import DeviceJpeg
from dataset.pairs import Dataset, find_pairs
from dataset.synthetic import ensure_synthetic
from engines.base import EngineOptions
from engines.cache import ArtifactCache, engines_root
from pipeline import cache_folders
from pipeline.auto import resolve
from pipeline.config import RunConfig
from pipeline.distributed import World
from pipeline.finish import finish
from pipeline.passes import Reference
from pipeline.rows import Job, PlannedRow, parse_precisions, plan_rows, run_rows, to_row
from pipeline.scenario_rows import scenario_plan
from pipeline.worst import WORST_COUNT
from report.compare import compare_all, data_digest, read_base, weights_digest
from report.outputs import Outputs
from report.results import Report, RunInfo, Skip
from utils.device import describe_host, parse_device, precision_hints
from utils.errors import SampleError
from utils.files import check_destination, default_cache_dir, folder_problem
from utils.signals import Interrupts
from utils.trace import TRACE, span


@dataclass
class Prepared:
    """What the rows need, made before any row runs (an error until here loses nothing)."""

    job: Job
    plan: list[PlannedRow]
    skipped: list[Skip]
    info: RunInfo
    precisions: list[str]
    device_decoder: Optional[DeviceJpeg]
    bases: list = field(default_factory=list)  # report.compare.Side: the --compare reports, read before the run


def run(config: RunConfig, world: World, interrupts: Interrupts, locks: contextlib.ExitStack | None) -> int:
    """Set up, run every row, then report whatever finished; the exit status. `locks` (rank 0's, or the one
    process's) keeps the output folders locked until the end; other ranks write no file and lock none."""
    TRACE.reset(on=bool(config.trace), rank=world.rank if world.active else None)  # --trace: the run's timeline
    began = time.perf_counter()
    cache_before = cache_folders.sizes(config.cache_dir) if not world.rank else {}
    with span("setup"):
        prepared = prepare(config, world, locks)
    job, info, plan = prepared.job, prepared.info, prepared.plan
    if any(row.engine == "auto" for row in plan) and not world.rank:  # under torchrun rank 0 chooses for all
        log = (lambda line: None) if config.quiet else (lambda line: print(line, file=sys.stderr))
        plan, choices = resolve(plan, job, config.auto_mode, log, config.auto_budget)
        info.auto = [c.describe() for c in choices]
    plan, job.options = world.share_setup(plan, job.options)
    info.hints = precision_hints(job.device, prepared.precisions, info.host)
    result = run_rows(plan, job, world if world.active else None)
    info.conversions = describe_conversions([c for r in result.results for c in r.passed.converted])
    decoder = prepared.device_decoder
    if decoder is not None and decoder.fallbacks:  # batches nvJPEG could not decode: said, not hidden
        info.decode_fallbacks = decoder.fallbacks[:20]
        print(f"warning: nvJPEG could not decode {len(decoder.fallbacks)} file(s) or batch(es); the CPU "
              f"decoded them: {decoder.fallbacks[0]}", file=sys.stderr)
    report = Report(info, [to_row(r) for r in result.results], prepared.skipped + result.skipped,
                    result.interrupted)
    if not world.gather_outputs(report, job.outputs):
        return result.status  # a rank other than 0: rank 0 writes the files and prints the report
    report.comparison = compare_all(report, prepared.bases, config.fail_on_regression)
    report.cache_note = cache_folders.growth_line(cache_before, cache_folders.sizes(config.cache_dir))
    info.run_s = round(time.perf_counter() - began, 1)
    return finish(config, report, job.outputs, result.status, interrupts)


def prepare(config: RunConfig, world: World, locks: contextlib.ExitStack | None) -> Prepared:
    """The device, the planned rows, the model, this rank's data, the outputs, the engine options, the reference and
    the decode path, and what the report will say about them."""
    device = parse_device(config.device)
    precisions = parse_precisions(config.precision)
    # --compare's reports are read first: one that cannot be compared with stops the run before anything is built;
    # rank 0 alone compares (under torchrun on several hosts the files may be on its host only)
    bases = [] if world.rank else [read_base(path) for path in config.compare or ()]
    plan, skipped = plan_rows(config.engine, precisions, device, config.threads)
    torch.manual_seed(config.seed)
    model, facts = models.create_model(config.model_name, config.pth, n_classes=config.n_classes,
                                        bilinear=config.bilinear, base_width=config.base_width)
    cache_ok = writable_cache(config, say=not world.rank)
    dataset, data_label = load_data(config, cache_ok)
    outputs = make_outputs(config, dataset, facts["n_classes"], locks)
    for sample in [] if world.rank else dataset.unpaired:  # under torchrun, said once
        print(f"warning: no mask for {sample.image}; it is timed but not scored", file=sys.stderr)
    shape = (config.batch_size, facts["n_channels"], config.image_size[1], config.image_size[0])
    options = engine_options(config, dataset, shape, plan if not world.rank else [], cache_ok)  # rank 0 calibrates
    info = run_info(config, facts, dataset, data_label, device, options)
    dataset = world.shard(dataset, config.batch_size)  # from here on, this rank's share (one process: all of it)
    logits_bytes = shape[0] * facts["n_classes"] * shape[2] * shape[3] * 4
    reference = None if config.no_reference else make_reference(config, model, device, plan, logits_bytes)
    decode, device_decoder, why = choose_decode(config.decode, device, config.image_size)
    info.decode, info.decode_note, info.workers = decode, why, config.workers
    info.reference = None if reference is None else str(reference.device)
    # On CUDA batches are assembled in page-locked memory: their upload is a non-blocking DMA.
    loader = Loader(config.image_size, config.batch_size, config.workers, decode, device.type == "cuda",
                    device_decoder)
    if world.active and config.concurrency != (1,):
        raise SampleError("--concurrency sweeps run in one process; under torchrun every rank times one request")
    if world.active and config.profile:
        raise SampleError("--profile runs in one process; run it without torchrun (one rank's operators are "
                          "every rank's)")
    scenarios = scenario_plan(config, dataset, decode, facts["n_classes"], world.active)
    if scenarios is not None:
        info.loadgen = scenarios.describe()
    job = Job(model, shape, device, lambda: iter_dataset(dataset, loader), len(dataset), options, outputs,
              reference, config.loop, config.warm_counter, show_progress=not config.quiet,
              min_duration_s=config.loop_min_duration, worst=WORST_COUNT if config.html else 0,
              percentiles=config.percentiles, scenarios=scenarios, concurrency=config.concurrency,
              profile=config.profile)
    return Prepared(job, plan, skipped, info, precisions, device_decoder, bases)


def run_info(config: RunConfig, facts: dict, dataset: Dataset, data_label: str, device: torch.device,
             options: EngineOptions) -> RunInfo:
    """What the report says was run on what (the rest is filled in as the run learns it)."""
    info = RunInfo(
        model=config.model_name, variant=facts["variant"], parameters=facts["parameters"],
        n_classes=facts["n_classes"], weights=facts["weights"], data=data_label, images=len(dataset),
        unpaired=len(dataset.unpaired), image_size=list(config.image_size), eval_resolution=config.eval_resolution,
        command=config.command, started=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        batch_size=config.batch_size, loop=config.loop, warm_counter=config.warm_counter, torch=torch.__version__,
        threads=torch.get_num_threads(), host=describe_host(device),
        artifact_cache=options.cache.root if options.cache else None, min_duration_s=config.loop_min_duration,
        percentiles=list(config.percentiles), weights_digest=weights_digest(config.pth, config.seed),
        data_digest=data_digest(dataset))
    if options.calibration:
        info.calibration_images = options.calibration.images
        info.calibration = options.calibration.describe()
    return info


def writable_cache(config: RunConfig, say: bool) -> bool:
    """Whether the run may write in its cache folder. Where it cannot (a read-only mount, a shared cache of another
    user), the run goes on caching nothing and, when `say`, says so in one line."""
    if config.no_cache and config.image_path is not None:
        return False  # nothing would be written there
    root = config.cache_dir or default_cache_dir()
    problem = folder_problem(root) or (None if config.no_cache else folder_problem(engines_root(root)))
    if problem and say:
        data = "; a data set it must generate goes to a temporary folder, removed at exit" \
            if config.image_path is None else ""
        print(f"warning: cannot write the cache folder ({problem}); this run caches nothing: its engines are built "
              f"in a temporary folder{data}", file=sys.stderr)
    return problem is None


def load_data(config: RunConfig, cache_ok: bool = True) -> tuple[Dataset, str]:
    """The data set to evaluate and its label: the user's folders, or the synthetic set written in Carvana's layout
    (in the cache, or where `cache_ok` is False and it is not there yet, in a temporary folder)."""
    if config.image_path is None:
        try:
            images, masks = ensure_synthetic(config.synthetic_count, config.seed, config.cache_dir,
                                             log=lambda line: print(line, file=sys.stderr), writable=cache_ok)
        except OSError as exc:
            raise SampleError(f"cannot write the synthetic set under {exc.filename or config.cache_dir}: "
                              f"{exc.strerror or exc}; pass a writable --cache_dir") from None
        return find_pairs(images, masks, config.limit), f"synthetic Carvana-like set ({images})"
    return find_pairs(config.image_path, config.mask_path, config.limit), config.image_path


def engine_options(config: RunConfig, dataset: Dataset, shape: tuple, plan: list[PlannedRow],
                   cache_ok: bool = True) -> EngineOptions:
    """What engines.load gets; int8 calibration images are decoded only when a row that can run int8 is planned.
    Engines are cached unless --no_cache or the cache cannot be written (`cache_ok` False)."""
    calibration = None
    if any(r.precision == "int8" and (r.engine == "auto" or "int8" in engines.module_of(r.engine).PRECISIONS)
           for r in plan):
        folder = None
        data_folder = config.image_path or os.path.dirname((dataset.samples + dataset.unpaired)[0].image)
        if config.calib_path is None and config.limit and os.path.isdir(data_folder):  # the images --limit left out
            folder = find_pairs(data_folder).samples
        try:
            samples, source = choose_samples(dataset, config.calib, config.calib_path, folder)
        except SampleError as exc:
            raise SampleError(f"--calib_path: {exc}") from None
        scored = {s.id for s in dataset.samples + dataset.unpaired}
        calibration = load_calibration(samples, Loader(config.image_size, shape[0], config.workers, config.decode),
                                       source, scored)
        for image_id, error in calibration.skipped:
            print(f"warning: calibration image {image_id} skipped: {error}", file=sys.stderr)
    cache = ArtifactCache(config.cache_dir) if cache_ok and not config.no_cache else None
    return EngineOptions(threads=config.threads, cache=cache,
                         calibration=calibration, openvino_hint=config.openvino_hint,
                         openvino_device=config.openvino_device, soc_version=config.soc_version,
                         channels_last=config.channels_last, cudnn_benchmark=config.cudnn_benchmark,
                         cuda_graphs=config.cuda_graphs)


def make_outputs(config: RunConfig, dataset: Dataset, n_classes: int,
                 locks: contextlib.ExitStack | None) -> Outputs | None:
    """Check every result destination before the run (locking output folders in `locks`); None when no file is
    written during the run and dice is scored at the model's size (the CSV is written from the report at the end)."""
    for path, folder, flag in [(config.output, True, "--output"), (config.plots, True, "--plots"),
                               (config.submission, False, "--submission"), (config.csv, False, "--csv")]:
        if path:  # a folder is also locked for the run (a second run writing there is refused)
            check_destination(path, folder=folder, overwrite=config.overwrite, flag=flag, locks=locks)
    for path, flag in [(config.json, "--json"), (config.html, "--html"), (config.trace, "--trace")]:
        if path:  # a report file is rewritten by each run
            check_destination(path, folder=False, overwrite=True, flag=flag)
    if config.plots:
        from report.plots import require_matplotlib
        require_matplotlib()
    if config.html:
        from report.html import require_html
        require_html()
    if not config.outputs_asked():
        return None
    return Outputs(dataset, n_classes=n_classes, folder=config.output, overlay=config.overlay,
                   submission=config.submission, eval_resolution=config.eval_resolution)


def make_reference(config: RunConfig, model: torch.nn.Module, device: torch.device, plan: list[PlannedRow],
                   batch_bytes: int) -> Reference:
    """The eager fp32 reference on the run's device (or the CPU with --reference cpu). It keeps its logits for the
    next pass only where one will compare with the same images: every image for several rows (at most 2 GiB), the
    first batch (`batch_bytes` of logits) for auto's probe and its row; else nothing, so memory stays flat in the
    data set's size."""
    # On an NPU the reference is eager torch there, which needs torch_npu (torch_aie alone compiles, it runs no eager
    # model): without it the CPU is the reference.
    on_device = config.reference == "device" and (device.type != "npu" or importlib.util.find_spec("torch_npu"))
    budget = 0
    if len(plan) > 1:
        budget = 2 << 30
    elif any(row.engine == "auto" for row in plan):
        budget = batch_bytes
    return Reference(model, device if on_device else parse_device("cpu"), budget)


def choose_decode(asked: str, device: torch.device, size: tuple[int, int]) -> tuple[str, DeviceJpeg | None, str]:
    """(decode path, its DeviceJpeg or None, why): nvjpeg where asked and torchvision can decode on this CUDA device,
    else the CPU's fast path, saying why. nvjpeg is not the default until its dice is measured on a GPU."""
    if asked in DECODES:
        return asked, None, ""
    decoder, why = DeviceJpeg.make(device, size)
    if decoder is not None:
        return "nvjpeg", decoder, why
    print(f"warning: --decode nvjpeg: {why}; decoding on the CPU (fast path)", file=sys.stderr)
    return "fast", None, why
