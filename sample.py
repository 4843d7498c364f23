#!/usr/bin/env python
"""Run a UNet / UNet++ over Carvana images on an inference engine and report accuracy (dice) and speed (fps)."""
from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import warnings

from utils.signals import STOPPING, Interrupts, exit_until_run
from utils.streams import exit_status, guard

if __name__ == "__main__":  # before torch's imports: a closed stream or a signal there must not become a traceback
    guard()
    exit_until_run()

import torch
from PIL import Image

import engines
import models
from dataset.batches import default_workers
from dataset.decode import DECODES, parse_size
from engines.levers import SETTINGS
from pipeline import cache_folders
from pipeline.arguments import (
    at_most,
    concurrency,
    number_in,
    path_to,
    percentiles,
    positive_float,
    positive_int,
    seconds,
)
from pipeline.config import RunConfig, memory_problem, output_problem
from pipeline.distributed import World
from pipeline.probe import AUTO_BUDGET_S
from pipeline.run import run
from pipeline.scenario_types import SCENARIOS
from utils.errors import SampleError
from utils.files import default_cache_dir, escape_streams
from utils.timing import PERCENTILES


class Parser(argparse.ArgumentParser):
    """argparse whose usage error is its `error:` line and a pointer to --help: the 20-line usage hid the line."""

    def error(self, message: str):
        self.exit(2, f"error: {message}\n(python sample.py --help lists the flags and their limits)\n")


def image_size(text: str) -> tuple[int, int]:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


EXAMPLES = """examples:
  python sample.py                                     # the default job: random weights, a generated set, auto
  python sample.py --image_path data/imgs --mask_path data/masks --pth unet_carvana_scale0.5_epoch2.pth \\
      --model_name unet --batch_size 1 --device 0 --loop 100 --warm_counter 10   # the original sample's flags
  python sample.py --image_path data/imgs --mask_path data/masks --pth unet.pth --engine all \\
      --precision fp32,int8 --json report.json --html report.html    # every engine side by side, as a page
"""


def get_args_parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_arguments(p.add_argument_group("data"))
    model = p.add_argument_group("model")
    model.add_argument("--model_name", default="unet", help="unet (default) or unet++ (also unetpp, nested_unet)")
    model.add_argument("--pth", type=path_to("the checkpoint"), help="checkpoint (state dict); else random weights")
    model.add_argument("--n_classes", type=at_most(1024, "a wider segmentation head is not a Carvana model"),
                       help="default: from the checkpoint, else 2")
    model.add_argument("--bilinear", action="store_true", default=None,
                       help="UNet with bilinear upsampling (default: from the checkpoint, else transposed conv)")
    model.add_argument("--base_width", type=at_most(models.MAX_WIDTH, "n1 = 256 is 496-586 M parameters"), metavar="N1",
                       help="base width n1 (filters n1..16*n1); default: from the checkpoint, else 64, Pytorch-UNet's "
                            "and the reference NestedUNet's")
    model.add_argument("--seed", type=at_most(2**63 - 1, "torch's seed is a 64-bit integer", low=-2**63), default=0,
                       help="seed of the random weights and the synthetic set (default 0)")
    run = p.add_argument_group("engine and timing")
    run.add_argument("--engine", default="auto",
                     help="auto (default: the fastest engine here that passes the fidelity bar, measured once per "
                          "machine, model, shape and precision, then kept; see --auto), all, or a comma list of: "
                          f"{', '.join(engines.ENGINES)}")
    run.add_argument("--auto", choices=["measure", "static"],
                     help="how --engine auto decides: measure (default; the first run probes each installed engine, "
                          "later runs reuse the choice) or static (a fixed order, no probe; the default with "
                          "--no_cache)")
    run.add_argument("--device",
                     help="cpu, an accelerator index (0), cuda:N or npu:N; default: accelerator 0, else cpu")
    run.add_argument("--precision", default="fp32",
                     help="comma list of fp32, fp16, bf16, int8; one row each (default fp32)")
    run.add_argument("--batch_size", type=positive_int, default=1,
                     help="compiled batch size (default 1); the last batch is padded")
    run.add_argument("--loop", type=at_most(100_000, "every call's latency is kept and written to the JSON"),
                     default=10, help="timed calls per engine (default 10)")
    run.add_argument("--warm_counter", type=at_most(10_000, "warm-up past a few calls only takes time", low=0),
                     default=2,
                     help="untimed warm-up calls before timing (default 2)")
    cpus = os.cpu_count() or 1
    run.add_argument("--threads", type=at_most(cpus, "this machine's logical CPUs: more threads only wait for each "
                                                     "other"),
                     help=f"CPU threads for torch, onnxruntime and openvino, at most the logical CPUs ({cpus} here; "
                          "default: each one's choice)")
    run.add_argument("--no_reference", action="store_true", help="skip the eager fp32 reference (no cosine)")
    run.add_argument("--reference", choices=["device", "cpu"], default="device",
                     help="where the eager fp32 reference runs: device (default: the run's --device; TF32 off on CUDA) "
                          "or cpu")
    run.add_argument("--dist_timeout", type=at_most(7 * 86400, "a week: it is how long a stuck rank may hold the run"),
                     default=1800, metavar="S",
                     help="under torchrun: how long a rank waits for the others at a sync before the run ends with an "
                          "error (default 1800 s)")
    run.add_argument("--auto_budget", type=seconds, default=AUTO_BUDGET_S, metavar="S",
                     help=f"--engine auto's probe stops trying engines after S seconds (default {AUTO_BUDGET_S:g}); "
                          "the engines whose builds were cheapest here go first, and the report names those not tried")
    run.add_argument("--profile", action="store_true",
                     help="per-operator self time, profiled over up to 10 calls after the timed ones, top 15 with "
                          "their share of a call (torch.profiler, OpenVINO's performance counters, ONNX Runtime's "
                          "profiler)")
    add_timing_arguments(p.add_argument_group("timing"))
    add_engine_options(p.add_argument_group("engine options"))
    add_output_arguments(p.add_argument_group("output"))
    add_result_arguments(p)
    return p


def scenarios(text: str) -> tuple[str, ...]:
    """An argparse type: a comma list of loop and MLPerf LoadGen scenarios, each once, in the order given."""
    names = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    unknown = [n for n in names if n not in ("loop", *SCENARIOS)]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown scenario(s) {', '.join(unknown) or text!r}; valid: loop, "
                                         f"{', '.join(SCENARIOS)}")
    return names


def add_timing_arguments(timing) -> None:
    timing.add_argument("--scenario", type=scenarios, default=("loop",), metavar="S,S",
                        help="comma list: loop (the timed loop, default), and MLPerf LoadGen's singlestream, "
                             "multistream, offline, server (pip install mlcommons-loadgen; docs/scenarios.md)")
    timing.add_argument("--concurrency", type=concurrency, default=(1,), metavar="N,N",
                        help="requests in flight: a list sweeps them (1,2,4), each level timed with N threads on the "
                             "resident batch, throughput and p50 / p99 per level; LoadGen's offline and server use the "
                             "fewest requests that reach the best throughput (default 1: the timed loop alone)")
    timing.add_argument("--min_duration", type=seconds, metavar="S",
                        help="time each engine until both --loop calls and S seconds of calls are done (default 0: "
                             "exactly --loop calls, as the original sample timed); a LoadGen scenario's minimum "
                             "duration (default 10 s)")
    timing.add_argument("--min_queries", type=at_most(10_000_000, "LoadGen's own minimums are far below"),
                        metavar="N", help="a LoadGen scenario's minimum query count (default 100)")
    timing.add_argument("--target_latency_ms", type=positive_float, metavar="MS",
                        help="Server: the p99 latency bound its highest rate must meet (default: 5x the row's own "
                             "median call, said in the report)")
    timing.add_argument("--mlperf_minimums", action="store_true",
                        help="LoadGen's official minimums (600 s, its query counts, early stopping): the only runs "
                             "the report calls submission grade")
    timing.add_argument("--qsl_memory", type=positive_float, default=2.0, metavar="GiB",
                        help="memory for LoadGen's query sample library: the decoded images it holds (default 2)")
    timing.add_argument("--loadgen_logs", metavar="DIR", type=path_to("the logs' folder"),
                        help="where LoadGen's logs go, per row and scenario (default: <--output>/loadgen, else "
                             "./loadgen-logs)")
    timing.add_argument("--percentiles", type=percentiles, default=PERCENTILES, metavar="P,P",
                        help="latency percentiles to report (default 50,90,99); every median also carries its "
                             "distribution-free 95 %% confidence interval")


def add_data_arguments(data) -> None:
    """Flags that say which pairs run and how they are decoded."""
    data.add_argument("--image_path", type=path_to("the images' folder"),
                      help="folder of <id>.jpg images, or one image; default: a synthetic Carvana-like set")
    data.add_argument("--mask_path", type=path_to("the masks' folder"),
                      help="folder of <id>_mask.gif|png masks, or one mask; without it dice is skipped")
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
    data.add_argument("--synthetic_count", default=4,
                      type=at_most(10_000, "each generated pair takes about a second; pass your own images for more"),
                      help="size of the synthetic set (default 4)")
    data.add_argument("--cache_dir", type=path_to("the cache folder"),
                      help="where the generated data set and the compiled engines (<cache_dir>/engines) are kept "
                           "(default: $UNET_SAMPLE_CACHE, else $XDG_CACHE_HOME/unet-sample, else ~/.cache/unet-sample)")


def add_engine_options(group) -> None:
    """Flags that reach the engines (int8 calibration, artifact cache, fidelity gate, per-engine settings)."""
    group.add_argument("--calib", type=at_most(1024, "calibration images are held in memory"), default=8,
                       help="int8: calibrate on N images (default 8): from --calib_path, else from the data folder's "
                            "images outside the scored set (other cars first), else the scored images (the report "
                            "then says they overlap)")
    group.add_argument("--calib_path", metavar="DIR", type=path_to("the calibration images"),
                       help="int8: a folder (or one file) of calibration images, ideally other cars than the scored "
                            "ones")
    group.add_argument("--no_cache", action="store_true",
                       help="build engines afresh in a temporary folder (default: reuse <cache_dir>/engines)")
    group.add_argument("--strict", action="store_true", help="exit 1 when a row's cosine is below its precision's bar")
    group.add_argument("--openvino_hint", choices=["latency", "throughput"], default="latency",
                       help="throughput: time concurrent async requests (one per stream)")
    group.add_argument("--openvino_device", default="CPU", help="openvino: CPU, or GPU for an Intel GPU")
    group.add_argument("--soc_version", default="Ascend310P3", help="torch_aie: the Ascend SoC to compile for")
    # GPU speed levers of the torch, torchscript and inductor rows; auto follows what was measured (docs/engines.md).
    group.add_argument("--channels_last", choices=SETTINGS, default="auto",
                       help="torch / torchscript: weights and input in channels_last (auto: on for eager torch at "
                            "CUDA fp16 / bf16, where it was measured)")
    group.add_argument("--cudnn_benchmark", choices=SETTINGS, default="auto",
                       help="torch / torchscript / inductor on CUDA: let cuDNN time its algorithms (auto: on for CUDA)")
    group.add_argument("--cuda_graphs", choices=SETTINGS, default="auto",
                       help="torch / torchscript / inductor on CUDA: replay one captured CUDA graph per call (auto: on "
                            "for CUDA fp16 / bf16 at batch 1)")


def add_output_arguments(out) -> None:
    """Flags for the report: JSON, HTML, the trace, a comparison with saved reports, and the cache."""
    out.add_argument("--json", metavar="PATH", type=path_to("the file to write"), help="write the report as JSON")
    out.add_argument("--quiet", action="store_true", help="no progress bars")
    out.add_argument("--html", metavar="PATH", type=path_to("the file to write"),
                     help="write the report as one self-contained HTML page (charts, worst images, comparison)")
    out.add_argument("--trace", metavar="PATH", type=path_to("the file to write"),
                     help="write the run's timeline in the Chrome trace-event format (opens in Perfetto or "
                          "chrome://tracing)")
    out.add_argument("--compare", nargs="+", metavar="BASE.json", type=path_to("a saved --json report"),
                     help="compare this run's rows with one or more saved --json reports: speed ratio with a verdict "
                          "beyond the noise, dice and cosine change, new and gone rows")
    out.add_argument("--fail_on_regression", type=number_in(lambda v: 0 <= v < float("inf"), "must be >= 0"),
                     metavar="PCT", help="with --compare: exit 1 when a matched row is slower by more than PCT %% "
                                         "beyond the noise, or its dice drops by more than 0.003")
    out.add_argument("--clear_cache", action="store_true",
                     help="empty the cache: the folders the sample made (engines, auto's choices, generated data; "
                          "marked by a CACHEDIR.TAG) and inductor's headers; say what it freed and kept, and exit")


def add_result_arguments(p: argparse.ArgumentParser) -> None:
    """Flags for per-image results (docs/outputs.md): masks, overlays, submission, per-image CSV, plots."""
    res = p.add_argument_group("per-image results (files are written for the first engine row)")
    res.add_argument("--output", metavar="DIR", type=path_to("the folder to write"),
                     help="write <id>_mask.png (0 / 255) at each image's original size")
    res.add_argument("--overlay", action="store_true",
                     help="with --output: also <id>_overlay.jpg, mask tinted on the image")
    res.add_argument("--submission", metavar="FILE.csv", type=path_to("the file to write"),
                     help="Kaggle Carvana submission (img,rle_mask) at original size")
    res.add_argument("--csv", metavar="FILE", type=path_to("the file to write"),
                     help="one row per image: dice, IoU, foreground fractions, batch latency")
    res.add_argument("--eval_resolution", choices=["model", "original"], default="model",
                     help="score dice at the model's input size (Pytorch-UNet's table) or the original size "
                          "(Kaggle's)")
    res.add_argument("--plots", metavar="DIR", type=path_to("the folder to write"),
                     help="latency, dice and fps-vs-dice plots as PNG (needs matplotlib)")
    res.add_argument("--overwrite", action="store_true", help="allow writing into existing --output / --plots / files")


def parse_config(parser: argparse.ArgumentParser, argv: list[str]) -> RunConfig:
    """The command line as a frozen config; a usage error (exit 2) for flags that contradict each other or cannot
    work on this machine."""
    args = parser.parse_args(argv)
    if args.mask_path and not args.image_path:
        parser.error("--mask_path needs --image_path")
    if args.fail_on_regression is not None and not args.compare:
        parser.error("--fail_on_regression needs --compare BASE.json")
    if args.overlay and not args.output:
        parser.error("--overlay needs --output DIR")
    try:
        args.model_name = models.canonical_name(args.model_name)
    except KeyError as exc:
        parser.error(str(exc.args[0]))
    if args.model_name == "unet++" and (args.image_size[0] % 16 or args.image_size[1] % 16):
        parser.error(f"unet++ needs --image_size sides that are multiples of 16, got {args.image_size}")
    config = RunConfig.from_namespace(vars(args), "python sample.py " + shlex.join(argv))
    problem = memory_problem(config) or output_problem(config)
    if problem:
        parser.error(problem)
    return config


def clear_cache(cache_dir: str | None) -> int:
    """--clear_cache: remove what the sample keeps between runs (only folders it provably made), say what each removal
    freed and which look-alikes it kept; 1 when a removal failed."""
    done, kept = cache_folders.clear(cache_dir)
    for path, freed, why in done:
        said = f"removed {path} ({freed / cache_folders.MB:,.1f} MB)" if why is None else \
            f"error: could not remove all of {path}: {why} (freed {freed / cache_folders.MB:,.1f} MB)"
        print(said, file=sys.stdout if why is None else sys.stderr)
    for line in kept:
        print(line)
    if not done and not kept:
        print(f"the cache is empty: nothing kept under {cache_dir or default_cache_dir()} nor inductor's headers")
    return 1 if any(why for _, _, why in done) else 0


def main(argv=None, command_line: bool = False) -> int:
    """Run the sample on `argv` (default: sys.argv). `command_line`: the process ends with this call (`python
    sample.py`), so a signal after the report is ignored, never a traceback at exit, and --help's stdout is checked."""
    from_cli = command_line
    escape_streams()  # a file name that is not UTF-8 is written \xNN on stdout and stderr too (docs/outputs.md)
    try:
        config = parse_config(get_args_parser(), sys.argv[1:] if argv is None else list(argv))
    except SystemExit as exc:  # --help into a broken stdout is an error (141 for a closed pipe), never a silent 0
        if from_cli and not exc.code:
            raise SystemExit(exit_status(0)) from None
        raise
    if config.clear_cache:
        return clear_cache(config.cache_dir)
    world = World.from_env(config.dist_timeout)  # one process (inactive) unless torchrun started this one
    config = world.rank_config(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    # Images past Pillow's limit are skipped and named (dataset/decode.py); its warning would only repeat that.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    # Ctrl-C, SIGTERM and SIGHUP stop the run alike: the partial report and its files, then 128 + the signal.
    with Interrupts(STOPPING, restore=not from_cli) as interrupts, contextlib.ExitStack() as locks:
        # output folders stay locked until the end (under torchrun by rank 0 alone)
        try:
            world.start(interrupts)
            status = run(config, world, interrupts, None if world.rank else locks)
        except SampleError as exc:
            status = world.fail(exc)  # under torchrun every rank stops, and rank 0 names the rank that failed
        except KeyboardInterrupt:
            status = world.fail(None)
        except Exception as exc:  # noqa: BLE001  one process: raised as always; a rank: it must stop the others
            status = world.fail(exc)
        finally:
            interrupts.hold()  # a signal now is counted, never a traceback while the locks are released
    return world.exit(interrupts.close(status))


if __name__ == "__main__":
    sys.exit(main(command_line=True))
