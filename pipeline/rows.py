"""Side-by-side runs: which (engine, precision) rows to run, running each (compile, accuracy pass, timing pass), and
building its report row once, from typed parts; one failing row loses no other."""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Callable

import torch

import engines
from engines.base import Engine, EngineOptions, Unsupported
from pipeline.fidelity import gate
from pipeline.passes import PassResult, Reference, accuracy_pass, timing_pass
from report.outputs import Outputs, RowOutputs
from utils.data import Batch
from utils.device import torch_threads
from utils.errors import SampleError, first_line

PRECISIONS = ("fp32", "fp16", "bf16", "int8")


def parse_precisions(text: str) -> list[str]:
    """'fp32,int8' -> ['fp32', 'int8']; SampleError names the valid precisions."""
    names = [p.strip().lower() for p in text.split(",") if p.strip()]
    bad = [p for p in names if p not in PRECISIONS]
    if bad or not names:
        what = ", ".join(bad) if bad else repr(text)
        raise SampleError(f"unknown precision {what}; use a comma list of {', '.join(PRECISIONS)}")
    return list(dict.fromkeys(names))


def plan_rows(engine_spec: str, precisions: list[str], device: torch.device) -> tuple[list[tuple[str, str]], list[dict]]:
    """The (engine, precision) rows to run and the skipped ones with their reason.

    `engine_spec` is `auto`, `all` (every registered engine whose package and device are present) or a comma list.
    Precisions run where the engine supports them and are skipped elsewhere. An engine asked for by name that cannot
    run here at all (no package, device or precision of those asked) is planned anyway, so running it reports the
    reason as a failure; under `all` it is listed as skipped instead.
    """
    spec = engine_spec.strip().lower()
    if spec == "auto":  # pipeline.auto.resolve picks each row's engine once the model and data are ready
        return [("auto", p) for p in precisions], []
    if spec == "all":
        names, explicit = list(engines.ENGINES), False
    else:
        names, explicit = list(dict.fromkeys(engines.canonical_name(n) for n in spec.split(",") if n.strip())), True
        if not names:
            raise SampleError(f"--engine {engine_spec!r} names no engine; use auto, all or a comma list of "
                              f"{', '.join(engines.ENGINES)}")
    rows, skipped = [], []
    for name in names:
        reason = None if explicit else engines.missing(name, device)
        if reason:
            skipped.append({"engine": name, "precision": ",".join(precisions), "reason": reason})
            continue
        supported = engines.module_of(name).PRECISIONS
        runnable = [p for p in precisions if p in supported]
        for precision in precisions:
            if precision in runnable or (explicit and not runnable):
                rows.append((name, precision))
            else:
                skipped.append({"engine": name, "precision": precision,
                                "reason": f"engine {name} does not support {precision} ({', '.join(supported)})"})
    return rows, skipped


@dataclass
class Job:
    """What every row of a run shares: the model, the compiled shape, the device, the data, and how to time it."""

    model: torch.nn.Module
    shape: tuple
    device: torch.device
    batches: Callable[[], Iterable[Batch]]  # a fresh pass over the data per row
    total: int  # images per pass (for the progress bar)
    reference: Reference | None = None
    loop: int = 10
    warmup: int = 2
    show_progress: bool = True
    passes: dict | None = None  # set by pipeline/distributed.py: (engine, precision) -> (PassResult, RowOutputs), to merge


@dataclass
class RowsResult:
    """What `run_rows` made: the finished rows, the rows skipped or failed (with `failed: True`) and why, and
    whether Ctrl-C stopped the run."""

    rows: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    interrupted: bool = False

    @property
    def status(self) -> int:
        """1 when a row failed, a row lost images, or nothing ran; else 0 (130 for Ctrl-C is the caller's)."""
        failed = any(s.get("failed") for s in self.skipped) or any(r["failed_images"] for r in self.rows)
        return 1 if failed or not self.rows else 0


def run_rows(plan: list[tuple[str, str]], job: Job, options: EngineOptions, outputs: Outputs | None = None,
             loaded: dict | None = None, row_options: dict | None = None) -> RowsResult:
    """Run each planned row; a row the engine refuses here (e.g. bf16 on a CPU without it) is skipped, one that fails
    is listed as failed, and Ctrl-C stops with the rows finished so far.

    `loaded` maps a row to an engine already compiled for it, its compile seconds and its first call's seconds
    (`--engine auto`'s probe);
    `row_options` a row to its own options (a thread count auto chose)."""
    result = RowsResult()
    loaded, row_options = dict(loaded or {}), row_options or {}
    for name, precision in plan:
        if job.show_progress:
            print(f"[{name} {precision}] compiling / loading ...", file=sys.stderr)
        try:
            row = run_row(name, precision, job, row_options.get((name, precision), options), outputs,
                          loaded.pop((name, precision), None))
            result.rows.append(row)
            if row["interrupted"]:
                result.interrupted = True
                break
        except KeyboardInterrupt:
            result.interrupted = True
            break
        except Unsupported as exc:
            result.skipped.append({"engine": name, "precision": precision, "reason": str(exc)})
        except Exception as exc:  # noqa: BLE001  any engine failure becomes a reported row; the others still run
            reason = str(exc) if isinstance(exc, SampleError) else \
                f"engine {name} {precision} failed: {type(exc).__name__}: {first_line(exc)}"
            result.skipped.append({"engine": name, "precision": precision, "reason": reason, "failed": True})
            if outputs:
                outputs.discard(name, precision)
    return result


def run_row(name: str, precision: str, job: Job, options: EngineOptions, outputs: Outputs | None = None,
            loaded: tuple[Engine, float, float | None] | None = None) -> dict:
    """Compile (timed), run the accuracy pass, then the timing pass on one of its batches; return the report row.

    `loaded`: the engine, compile seconds and first-call seconds of a build made earlier for this row (auto's
    probe, which made that first call: the row's own first call would be a warm one). With
    `options.threads` set, torch's intra-op threads follow it for the row."""
    with torch_threads(options.threads):
        return _run_row(name, precision, job, options, outputs, loaded)


def _run_row(name: str, precision: str, job: Job, options: EngineOptions, outputs: Outputs | None,
             loaded: tuple[Engine, float, float | None] | None) -> dict:
    first_call_s = None
    if loaded is not None:
        engine, compile_s, first_call_s = loaded
    else:
        start = time.perf_counter()
        engine = engines.load(name, job.model, job.shape, job.device, precision, options)
        compile_s = time.perf_counter() - start
    hook = outputs.hook(engine.name, precision) if outputs else None
    result = accuracy_pass(engine, job.batches(), job.total, job.reference, job.show_progress, hook)
    if first_call_s is not None:
        result.first_call_s = first_call_s
    timing = None
    if not result.interrupted and result.timing_batch is not None:
        try:
            timing = timing_pass(engine, result.timing_batch, job.loop, job.warmup, job.show_progress)
        except KeyboardInterrupt:
            result.interrupted = True  # the accuracy pass finished: its figures are a result; the timing is lost
    if result.interrupted and hook:
        outputs.wait(keep_errors=True)  # the batches already handed over get their files (MAX_PENDING at most)
    row_outputs = outputs.finish(engine.name, precision) if hook else None
    if job.passes is not None:  # a torchrun rank: rank 0 merges every rank's pass into the one-process row
        job.passes[(name, precision)] = (result, row_outputs)
    return make_row(engine, compile_s, result, timing, row_outputs)


def make_row(engine: Engine, compile_s: float, result: PassResult, timing: dict | None,
             outputs: RowOutputs | None) -> dict:
    """The report row, built once: what ran, its scores (at the original size when `outputs` scored there, with the
    model-size ones kept as `model_res_*`), agreement with the reference, fidelity, timing and per-image lists."""
    model_res = result.accuracy
    final = outputs.scores if outputs is not None and outputs.scores is not None else model_res
    scores, model_scores, agreement = final.scores(), model_res.scores(), model_res.agreement()
    row = {
        "engine": engine.name, "device": str(engine.device), "precision": engine.precision,
        "artifact": engine.artifact, "artifact_path": engine.artifact_path,
        "images": result.images, "interrupted": result.interrupted,
        "failed_images": [{"id": i, "error": e} for i, e in result.failed],
        **scores, **agreement,
    }
    # Aligned by id: at the original size the outputs thread scores the images the pass handed it, in order.
    position = {image_id: k for k, image_id in enumerate(model_res.ids)}
    index = [position[i] for i in final.ids]
    per_image = {"id": final.ids, "width": [result.sizes[i][0] for i in index],
                 "height": [result.sizes[i][1] for i in index], "dice": final.dice, "iou": final.iou,
                 "fg_true": final.fg_true, "fg_pred": final.fg_pred, "cosine": [model_res.cosine[i] for i in index],
                 "batch_ms": [result.batch_ms[i] for i in index]}
    if final is not model_res:
        row.update({f"model_res_{k}": v for k, v in model_scores.items() if k != "images_scored"})
        per_image["dice_model_res"] = [model_res.dice[i] for i in index]
    row.update(gate(engine.precision, agreement.get("cosine_min"), model_scores.get("dice"),
                    agreement.get("reference_dice")))
    row.update({
        "compile_s": compile_s,
        "first_call_ms": None if result.first_call_s is None else result.first_call_s * 1000.0,
        "e2e_s": result.e2e_s, "e2e_fps": result.e2e_fps, "timed_region": engine.timed, "levers": list(engine.levers),
        "split_s": {k: round(v, 6) for k, v in result.split.items()},
        **(timing or {}),
        "per_image": per_image,
    })
    if outputs is not None:
        row["outputs_s"] = outputs.seconds
    return row
