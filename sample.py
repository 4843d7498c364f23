#!/usr/bin/env python
"""Run a UNet / UNet++ over Carvana images on an inference engine and report accuracy (dice) and speed (fps)."""
from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import importlib.util
import os
import shlex
import sys
import warnings

import torch
from PIL import Image

import engines
import models
from engines.base import EngineOptions
from engines.levers import SETTINGS
from pipeline.auto import resolve as resolve_auto
from pipeline.distributed import World
from pipeline.fidelity import failures
from pipeline.passes import Reference
from pipeline.rows import Job, parse_precisions, plan_rows, run_rows
from report.csv_files import per_image_records, write_per_image_csv
from report.outputs import FOLDER_FILES, Outputs
from report.plots import PLOT_FILES
from report.summary import format_report, format_worst, write_json
from utils.cache import ArtifactCache
from utils.calibration import choose_samples, load_calibration
from utils.data import DECODES, DeviceJpeg, default_workers, find_pairs, iter_dataset, memory_bytes, parse_size
from utils.device import describe_host, parse_device, precision_hints
from utils.errors import SampleError, interrupts
from utils.files import check_destination, check_outputs, default_cache_dir
from utils.synthetic import ensure_synthetic

# Peak memory of eager fp32 inference per input pixel and image, measured here at 512 px: UNet 2.4 KiB, UNet++ (n1=64)
# 5.4 KiB. The figures below are lower bounds (UNet++ n1=32 included), so a size they refuse cannot fit.
BYTES_PER_PIXEL = {"unet": 1536, "unet++": 2048}


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def at_most(limit: int, why: str):
    """An argparse type: an int from 1 to `limit`; past it, a usage error that says the limit and why."""
    def parse(text: str) -> int:
        value = positive_int(text)
        if value > limit:
            raise argparse.ArgumentTypeError(f"must be at most {limit} ({why}), got {value}")
        return value
    return parse


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def image_size(text: str) -> tuple[int, int]:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    data = p.add_argument_group("data")
    data.add_argument("--image_path", help="folder of <id>.jpg images, or one image; default: a synthetic Carvana-like set")
    data.add_argument("--mask_path", help="folder of <id>_mask.gif|png masks, or one mask; without it dice is skipped")
    data.add_argument("--image_size", type=image_size, default=(512, 512), metavar="N|WxH",
                      help="model input size (default 512); images resized with Pillow bicubic, masks nearest")
    data.add_argument("--limit", type=positive_int, help="use only the first N pairs (sorted by name)")
    data.add_argument("--workers", type=at_most(256, "decode threads past the CPU count only wait"),
                      default=default_workers(),
                      help=f"decoding threads (default: one per usable CPU, 2 to 16: {default_workers()} here)")
    data.add_argument("--decode", choices=(*DECODES, "nvjpeg"), default="fast",
                      help="fast (default): the resize in torch's antialiased bicubic, Pillow's filter, 4x faster "
                           "(dice within 1e-5 of exact; decode + resize + mask about 2x: docs/data.md). exact: "
                           "Pytorch-UNet's Pillow bicubic. nvjpeg: JPEGs decoded and resized on a CUDA GPU "
                           "(torchvision.io.decode_jpeg; its dice not yet measured), else fast")
    data.add_argument("--synthetic_count", type=positive_int, default=4, help="size of the synthetic set (default 4)")
    data.add_argument("--cache_dir", help="where the generated data set and the compiled engines (<cache_dir>/engines) "
                                           "are kept (default: $UNET_SAMPLE_CACHE, else $XDG_CACHE_HOME/unet-sample, "
                                           "else ~/.cache/unet-sample)")
    model = p.add_argument_group("model")
    model.add_argument("--model_name", default="unet", help="unet (default) or unet++ (also unetpp, nested_unet)")
    model.add_argument("--pth", help="checkpoint (state dict); without it the weights are random")
    model.add_argument("--n_classes", type=at_most(1024, "a wider segmentation head is not a Carvana model"),
                       help="default: from the checkpoint, else 2")
    model.add_argument("--bilinear", action="store_true", default=None,
                       help="UNet with bilinear upsampling (default: from the checkpoint, else transposed conv)")
    model.add_argument("--base_width", type=at_most(256, "n1 = 256 is already 586 M parameters"), metavar="N1",
                       help="unet++ base width n1 (filters n1..16*n1); default: from the checkpoint, else 64, the "
                            "reference NestedUNet's")
    model.add_argument("--seed", type=int, default=0, help="seed of the random weights and the synthetic set (default 0)")
    run = p.add_argument_group("engine and timing")
    run.add_argument("--engine", default="auto",
                     help="auto (default: the fastest engine here that passes the fidelity bar, measured once per "
                          "machine, model, shape and precision, then kept; see --auto), all, or a comma list of: "
                          f"{', '.join(engines.ENGINES)}")
    run.add_argument("--auto", choices=["measure", "static"],
                     help="how --engine auto decides: measure (default; the first run probes each installed engine, "
                          "later runs reuse the choice) or static (a fixed order, no probe; the default with --no_cache)")
    run.add_argument("--device", help="cpu, an accelerator index (0), cuda:N or npu:N; default: accelerator 0, else cpu")
    run.add_argument("--precision", default="fp32", help="comma list of fp32, fp16, bf16, int8; one row each (default fp32)")
    run.add_argument("--batch_size", type=positive_int, default=1,
                     help="compiled batch size (default 1); the last batch is padded")
    run.add_argument("--loop", type=positive_int, default=10, help="timed calls per engine (default 10)")
    run.add_argument("--warm_counter", type=non_negative_int, default=2, help="untimed warm-up calls before timing (default 2)")
    run.add_argument("--threads", type=positive_int,
                     help="CPU threads for torch, onnxruntime and openvino (default: each one's choice)")
    run.add_argument("--no_reference", action="store_true", help="skip the eager fp32 reference (no cosine)")
    run.add_argument("--reference", choices=["device", "cpu"], default="device",
                     help="where the eager fp32 reference runs: device (default: the run's --device; TF32 off on CUDA) "
                          "or cpu")
    run.add_argument("--dist_timeout", type=positive_int, default=1800, metavar="S",
                     help="under torchrun: how long a rank waits for the others at a sync before the run ends with an "
                          "error (default 1800 s)")
    add_engine_options(p.add_argument_group("engine options"))
    out = p.add_argument_group("output")
    out.add_argument("--json", metavar="PATH", help="write the report as JSON")
    out.add_argument("--quiet", action="store_true", help="no progress bars")
    add_result_arguments(p)
    return p


def add_engine_options(group) -> None:
    """Flags that reach the engines (int8 calibration, artifact cache, fidelity gate, per-engine settings)."""
    group.add_argument("--calib", type=at_most(1024, "calibration images are held in memory"), default=8,
                       help="int8: calibrate on N images (default 8): from --calib_path, else from the data folder's "
                            "images outside the scored set (other cars first), else the scored images (the report "
                            "then says they overlap)")
    group.add_argument("--calib_path", metavar="DIR", help="int8: a folder (or one file) of calibration images, "
                                                           "ideally other cars than the scored ones")
    group.add_argument("--no_cache", action="store_true",
                       help="build engines afresh in a temporary folder (default: reuse <cache_dir>/engines)")
    group.add_argument("--strict", action="store_true", help="exit 1 when a row's cosine is below its precision's bar")
    group.add_argument("--openvino_hint", choices=["latency", "throughput"], default="latency",
                       help="throughput: time concurrent async requests (one per stream)")
    group.add_argument("--openvino_device", default="CPU", help="openvino: CPU, or GPU for an Intel GPU")
    group.add_argument("--soc_version", default="Ascend310P3", help="torch_aie: the Ascend SoC to compile for")
    # GPU speed levers of the torch, torchscript and inductor rows; auto follows the H200 measurements (docs/engines.md).
    group.add_argument("--channels_last", choices=SETTINGS, default="auto",
                       help="torch / torchscript: weights and input in channels_last (auto: on for eager torch at "
                            "CUDA fp16 / bf16, where it was measured)")
    group.add_argument("--cudnn_benchmark", choices=SETTINGS, default="auto",
                       help="torch / torchscript / inductor on CUDA: let cuDNN time its algorithms (auto: on for CUDA)")
    group.add_argument("--cuda_graphs", choices=SETTINGS, default="auto",
                       help="torch / torchscript / inductor on CUDA: replay one captured CUDA graph per call (auto: on "
                            "for CUDA fp16 / bf16 at batch 1)")


def engine_options(args, dataset, shape: tuple, plan: list[tuple[str, str]]) -> EngineOptions:
    """What engines.load gets; int8 calibration images are decoded only when a row that can run int8 is planned."""
    calibration = None
    if any(p == "int8" and (n == "auto" or "int8" in engines.module_of(n).PRECISIONS) for n, p in plan):
        folder = None
        data_folder = args.image_path or os.path.dirname((dataset.samples + dataset.unpaired)[0].image)  # generated set
        if args.calib_path is None and args.limit and os.path.isdir(data_folder):  # the images --limit left out
            folder = find_pairs(data_folder).samples
        try:
            samples, source = choose_samples(dataset, args.calib, args.calib_path, folder)
        except SampleError as exc:
            raise SampleError(f"--calib_path: {exc}") from None
        scored = {s.id for s in dataset.samples + dataset.unpaired}
        calibration = load_calibration(samples, args.image_size, shape[0], args.workers, source, scored, args.decode)
        for image_id, error in calibration.skipped:
            print(f"warning: calibration image {image_id} skipped: {error}", file=sys.stderr)
    return EngineOptions(threads=args.threads, cache=None if args.no_cache else ArtifactCache(args.cache_dir),
                         calibration=calibration, openvino_hint=args.openvino_hint,
                         openvino_device=args.openvino_device, soc_version=args.soc_version,
                         channels_last=args.channels_last, cudnn_benchmark=args.cudnn_benchmark,
                         cuda_graphs=args.cuda_graphs)


def add_result_arguments(p: argparse.ArgumentParser) -> None:
    """Flags for per-image results (docs/outputs.md): masks, overlays, submission, per-image CSV, plots."""
    res = p.add_argument_group("per-image results (files are written for the first engine row)")
    res.add_argument("--output", metavar="DIR", help="write <id>_mask.png (0 / 255) at each image's original size")
    res.add_argument("--overlay", action="store_true", help="with --output: also <id>_overlay.jpg, mask tinted on the image")
    res.add_argument("--submission", metavar="FILE.csv", help="Kaggle Carvana submission (img,rle_mask) at original size")
    res.add_argument("--csv", metavar="FILE", help="one row per image: dice, IoU, foreground fractions, batch latency")
    res.add_argument("--eval_resolution", choices=["model", "original"], default="model",
                     help="score dice at the model's input size (Pytorch-UNet's table) or the original size (Kaggle's)")
    res.add_argument("--plots", metavar="DIR", help="latency, dice and fps-vs-dice plots as PNG (needs matplotlib)")
    res.add_argument("--overwrite", action="store_true", help="allow writing into existing --output / --plots / files")


def make_outputs(args, dataset, n_classes: int) -> Outputs | None:
    """Check every result destination before the run; None when no file is written during the run and dice is
    scored at the model's size (the CSV is written from the report at the end)."""
    for path, folder, flag in [(args.output, True, "--output"), (args.plots, True, "--plots"),
                               (args.submission, False, "--submission"), (args.csv, False, "--csv")]:
        if path:  # a folder is also locked for the run (a second run writing there is refused)
            check_destination(path, folder=folder, overwrite=args.overwrite, flag=flag, locks=getattr(args, "locks", None))
    if args.json:
        check_destination(args.json, folder=False, overwrite=True, flag="--json")
    if args.plots:
        from report.plots import require_matplotlib
        require_matplotlib()
    if not (args.output or args.submission or args.eval_resolution == "original"):
        return None
    return Outputs(dataset, n_classes=n_classes, folder=args.output, overlay=args.overlay, submission=args.submission,
                   eval_resolution=args.eval_resolution)


def output_problem(args) -> str | None:
    """Why the outputs cannot be written safely, checked before anything runs: a link or a special file (/dev/null,
    /dev/stdout, a FIFO) as a target, two outputs writing one file, an output among the inputs."""
    outputs = [(flag, path, folder, names) for flag, path, folder, names in [
        ("--output", args.output, True, FOLDER_FILES), ("--plots", args.plots, True, PLOT_FILES),
        ("--submission", args.submission, False, ()), ("--csv", args.csv, False, ()), ("--json", args.json, False, ())]
        if path]
    cache = args.cache_dir or default_cache_dir()
    inputs = [("image", args.image_path), ("mask", args.mask_path), ("calibration", getattr(args, "calib_path", None)),
              ("checkpoint", args.pth), ("engine cache", os.path.join(cache, "engines"))]
    inputs += [("generated data", path) for path in sorted(glob.glob(os.path.join(glob.escape(cache), "synthetic-*")))]
    try:
        check_outputs(outputs, inputs)
    except SampleError as exc:
        return str(exc)
    return None


def memory_problem(name: str, size: tuple[int, int], batch_size: int, calib: int = 0) -> str | None:
    """Why `size` cannot fit this machine's memory (the model's activations, plus `calib` int8 calibration images
    held as float32), or None."""
    total = memory_bytes()
    per_pixel = BYTES_PER_PIXEL[name] * batch_size + calib * 3 * 4
    need = per_pixel * size[0] * size[1]
    if not total or need <= total:
        return None
    side = int((total / per_pixel) ** 0.5) // 16 * 16
    held = f" and {calib} calibration images (--calib)" if calib else ""
    return (f"--image_size {size[0]}x{size[1]} at --batch_size {batch_size} needs at least {need / 2**30:.0f} GiB for "
            f"{name}'s activations ({BYTES_PER_PIXEL[name]} bytes per pixel){held}, more than this machine's "
            f"{total / 2**30:.0f} GiB: the limit here is about {side}x{side} at these settings")


def make_reference(args, model, device, plan: list[tuple[str, str]], shape: tuple, n_classes: int) -> Reference:
    """The eager fp32 reference on the run's device (or the CPU with --reference cpu). It keeps its logits for the
    next pass only where one will compare with the same images: every image for several rows (at most 2 GiB), the
    first batch for auto's probe and its row; else nothing, so memory stays flat in the data set's size."""
    # On an NPU the reference is eager torch there, which needs torch_npu (torch_aie alone compiles, it runs no eager
    # model): without it the CPU is the reference.
    on_device = args.reference == "device" and (device.type != "npu" or importlib.util.find_spec("torch_npu"))
    where = device if on_device else parse_device("cpu")
    budget = 0
    if len(plan) > 1:
        budget = 2 << 30
    elif any(engine == "auto" for engine, _ in plan):
        budget = shape[0] * n_classes * shape[2] * shape[3] * 4
    return Reference(model, where, budget)


def choose_decode(asked: str, device, size: tuple[int, int]):
    """(decode path, its DeviceJpeg or None, why): nvjpeg where asked and torchvision can decode on this CUDA device,
    else the CPU's fast path, saying why. nvjpeg is not the default until its dice is measured on a GPU
    (tests/test_pipeline.py's cuda test, docs/data.md)."""
    if asked in DECODES:
        return asked, None, ""
    decoder, why = DeviceJpeg.make(device, size)
    if decoder is not None:
        return "nvjpeg", decoder, why
    print(f"warning: --decode nvjpeg: {why}; decoding on the CPU (fast path)", file=sys.stderr)
    return "fast", None, why


def load_data(args):
    """The data set to evaluate: the user's folders, or the synthetic set written in Carvana's layout."""
    if args.image_path is None:
        try:
            images, masks = ensure_synthetic(args.synthetic_count, args.seed, args.cache_dir,
                                             log=lambda line: print(line, file=sys.stderr))
        except OSError as exc:
            raise SampleError(f"cannot write the synthetic set under {exc.filename or args.cache_dir}: "
                              f"{exc.strerror or exc}; pass a writable --cache_dir") from None
        return find_pairs(images, masks, args.limit), f"synthetic Carvana-like set ({images})"
    dataset = find_pairs(args.image_path, args.mask_path, args.limit)
    return dataset, args.image_path


def main(argv=None) -> int:
    parser = get_args_parser()
    from_cli = argv is None  # the process ends with this call: a late Ctrl-C must not become a traceback at exit
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.command = "python sample.py " + shlex.join(argv)
    if args.mask_path and not args.image_path:
        parser.error("--mask_path needs --image_path")
    if args.overlay and not args.output:
        parser.error("--overlay needs --output DIR")
    try:
        name = models.canonical_name(args.model_name)
    except KeyError as exc:
        parser.error(str(exc.args[0]))
    if args.base_width and name != "unet++":
        parser.error("--base_width applies to unet++ only")
    if name == "unet++" and (args.image_size[0] % 16 or args.image_size[1] % 16):
        parser.error(f"unet++ needs --image_size sides that are multiples of 16, got {args.image_size}")
    calib = args.calib if "int8" in args.precision.lower() else 0  # int8 holds its calibration images in memory
    problem = memory_problem(name, args.image_size, args.batch_size, calib) or output_problem(args)
    if problem:
        parser.error(problem)
    world = World.from_env(args)  # one process (inactive) unless torchrun started this one: then args are this rank's
    if args.threads:
        torch.set_num_threads(args.threads)
    # Images past Pillow's limit are skipped and named (utils/data.py); its warning would only repeat that.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    with interrupts(restore=not from_cli) as latch, contextlib.ExitStack() as locks:
        # finish holds Ctrl-C; output folders stay locked until the end (under torchrun by rank 0 alone)
        args.interrupts, args.locks, args.world = latch, None if world.rank else locks, world
        try:
            world.start(latch)
            status = run(args, name)
        except SampleError as exc:
            status = world.fail(exc)  # under torchrun every rank stops, and rank 0 names the rank that failed
        except KeyboardInterrupt:
            status = world.fail(None)
        except Exception as exc:  # noqa: BLE001  one process: raised as always; a rank: it must stop the others
            status = world.fail(exc)
        finally:
            latch.hold()  # a Ctrl-C now is counted, never a traceback while the locks are released
    return world.exit(130 if latch.count else status)


def run(args, name: str) -> int:
    """Set up (errors here lose nothing: no row has run yet), run every row, then report whatever finished."""
    device = parse_device(args.device)
    precisions = parse_precisions(args.precision)
    plan, skipped = plan_rows(args.engine, precisions, device)
    torch.manual_seed(args.seed)
    model, info = models.create_model(name, args.pth, n_classes=args.n_classes, bilinear=args.bilinear,
                                       base_width=args.base_width)
    dataset, data_label = load_data(args)
    outputs = make_outputs(args, dataset, info["n_classes"])
    for sample in [] if args.world.rank else dataset.unpaired:  # under torchrun, said once
        print(f"warning: no mask for {sample.image}; it is timed but not scored", file=sys.stderr)
    shape = (args.batch_size, info["n_channels"], args.image_size[1], args.image_size[0])
    options = engine_options(args, dataset, shape, plan if not args.world.rank else [])  # rank 0 calibrates for all
    config = {
        "model": name, "variant": info["variant"], "parameters": info["parameters"],
        "n_classes": info["n_classes"], "weights": info["weights"], "data": data_label,
        "images": len(dataset), "unpaired": len(dataset.unpaired), "image_size": list(args.image_size),
        "eval_resolution": args.eval_resolution, "command": args.command,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "batch_size": args.batch_size, "loop": args.loop, "warm_counter": args.warm_counter,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "host": describe_host(device),
        "artifact_cache": options.cache.root if options.cache else None,
    }
    if options.calibration:
        config["calibration_images"] = options.calibration.images
        config["calibration"] = options.calibration.describe()
    dataset = args.world.shard(dataset, args.batch_size)  # from here on, this rank's share (one process: all of it)
    reference = None if args.no_reference else make_reference(args, model, device, plan, shape, info["n_classes"])
    decode, device_decoder, why = choose_decode(args.decode, device, args.image_size)
    config.update(decode=decode, decode_note=why, workers=args.workers,
                  reference=None if reference is None else str(reference.device))
    pin = device.type == "cuda"  # batches assembled in page-locked memory: their upload is a non-blocking DMA
    job = Job(model, shape, device,
              lambda: iter_dataset(dataset, args.image_size, args.batch_size, args.workers, decode, pin, device_decoder),
              len(dataset), reference=reference, loop=args.loop, warmup=args.warm_counter, show_progress=not args.quiet)
    loaded, row_options = {}, {}
    if any(engine == "auto" for engine, _ in plan) and not args.world.rank:  # under torchrun rank 0 chooses for all
        mode = args.auto or ("static" if args.no_cache else "measure")
        log = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr))
        plan, loaded, row_options, choices = resolve_auto(plan, job, options, mode, log)
        config["auto"] = [c.describe() for c in choices]
    plan, row_options, options = args.world.share_setup(plan, row_options, options)
    config["hints"] = precision_hints(device, precisions, config["host"])
    result = (args.world.run_rows if args.world.active else run_rows)(plan, job, options, outputs, loaded, row_options)
    if device_decoder is not None and device_decoder.fallbacks:  # batches nvJPEG could not decode: said, not hidden
        config["decode_fallbacks"] = device_decoder.fallbacks[:20]
        print(f"warning: nvJPEG could not decode {len(device_decoder.fallbacks)} file(s) or batch(es); the CPU "
              f"decoded them: {device_decoder.fallbacks[0]}", file=sys.stderr)
    report = {"version": 1, "config": config, "rows": result.rows, "skipped": skipped + result.skipped,
              "partial": result.interrupted}
    if not args.world.gather_outputs(report, outputs):
        return result.status  # a rank other than 0: rank 0 writes the files and prints the report
    return finish(args, report, outputs, result.status)


def finish(args, report: dict, outputs: Outputs | None, status: int) -> int:
    """Write every result file, then print the report; one failing write is an error line, never the loss of the
    rest, and the files are written before anything can go wrong on stdout. From here on Ctrl-C is only counted."""
    if getattr(args, "interrupts", None):
        args.interrupts.hold()
    errors = []

    def attempt(step) -> bool:
        try:
            step()
            return True
        except (SampleError, OSError) as exc:
            errors.append(str(exc))
            return False

    # The summary names a file only once it is written: the report never claims a write that failed.
    records = per_image_records(report["rows"], args.eval_resolution, args.image_size)
    summary = {"eval_resolution": args.eval_resolution, "folder": None, "overlay": False, "files": 0,
               "submission": None, "submission_rows": 0, "csv": None, "csv_rows": 0}
    if outputs:
        summary.update(outputs.close())
        errors.extend(outputs.errors)
        if args.submission and attempt(outputs.write_submission):
            summary.update(submission=args.submission, submission_rows=len(outputs.rle_rows))
    if args.csv and attempt(lambda: write_per_image_csv(args.csv, records)):
        summary.update(csv=args.csv, csv_rows=len(records))
    if outputs or args.csv:
        report["outputs"] = summary
    if args.plots:
        from report.plots import write_plots

        def plots():
            report["plots"] = write_plots(report, args.plots)
        attempt(plots)
    json_written = bool(args.json) and attempt(lambda: write_json(args.json, report))
    # The worst images are named when per-image results were asked for (a plain run keeps its report short).
    worst = format_worst(records) if outputs or args.csv else ""
    printed = print_report(format_report(report, json_path=args.json if json_written else None, worst=worst))
    if printed not in (None, "closed"):
        errors.append(printed)
    code = exit_status(args, report, errors, status)
    return 141 if printed == "closed" and code == 0 else code  # 141 = 128 + SIGPIPE, as `cat` ends under `| head`


def print_report(text: str) -> str | None:
    """Print the report (the last thing a run does): None, "closed" when stdout is a pipe whose reader has gone
    (`| head -1`), or why stdout failed (`> /dev/full`)."""
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        return None
    except BrokenPipeError:
        result = "closed"
    except OSError as exc:
        result = f"cannot write the report to stdout: {exc.strerror or exc}; the result files are written all the same"
    try:  # stdout -> /dev/null: the interpreter's last flush of what is still buffered must not fail again at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
    return result


def exit_status(args, report: dict, errors: list[str], status: int) -> int:
    """Say on stderr what went wrong (failed rows, low fidelity, unreadable images, failed writes); the exit status."""
    low = failures(report["rows"])
    if low and args.strict and status == 0:
        status = 1
    for skip in report["skipped"]:
        if skip.get("failed"):
            print(f"error: {skip['reason']}", file=sys.stderr)
    if not report["rows"] and not report["partial"] and not any(s.get("failed") for s in report["skipped"]):
        print("error: none of the requested engine x precision rows can run here (see the skipped lines); "
              "choose another --engine or --precision", file=sys.stderr)
    for line in low:
        print(f"{'error' if args.strict else 'warning'}: below the fidelity bar: {line}", file=sys.stderr)
    for row in report["rows"]:
        if row["failed_images"]:
            failed = row["failed_images"]
            print(f"error: {len(failed)} image(s) could not be read and were left out of the scores "
                  f"(fix or remove them): {failed[0]['error']}" + (" ..." if len(failed) > 1 else ""), file=sys.stderr)
    for message in errors:
        print(f"error: {message}", file=sys.stderr)
    if report["partial"]:
        return 130
    return 1 if errors else status


if __name__ == "__main__":
    sys.exit(main())
