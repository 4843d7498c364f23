"""Side-by-side runs: which (engine, precision) rows to run, running each (compile, accuracy pass, timing pass) into one
typed result, and the report row built from that result in one place; one failing row loses no other."""
from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

import torch

import engines
from dataset.batches import Batch
from engines.base import Engine, EngineOptions, Unsupported
from pipeline.concurrency import Sweep, sweep
from pipeline.fidelity import gate
from pipeline.passes import PassResult, Reference, accuracy_pass, timing_pass
from pipeline.profile import Profile, profile_row
from pipeline.scenario_rows import ScenarioPlan, ScenarioRow, run_scenarios
from report.outputs import Outputs, RowOutputs
from report.results import FailedImage, PerImage, RankPart, Row, Skip
from utils.device import torch_threads
from utils.errors import SampleError, first_line
from utils.timing import PERCENTILES, Timing
from utils.trace import TRACE, span

PRECISIONS = ("fp32", "fp16", "bf16", "int8")


@dataclass(frozen=True)
class Built:
    """An engine compiled before its row ran (auto's probe), with its compile seconds and the probe's first call."""

    engine: Engine
    compile_s: float
    first_call_s: Optional[float]


@dataclass(frozen=True)
class PlannedRow:
    """One row to run: the engine ('auto' until pipeline.auto resolves it), the precision, torch's and the engine's
    CPU threads (None: each one's default), and the engine auto's probe already built for it."""

    engine: str
    precision: str
    threads: Optional[int] = None
    built: Optional[Built] = None

    @property
    def label(self) -> str:
        return f"{self.engine} {self.precision}"


def parse_precisions(text: str) -> list[str]:
    """'fp32,int8' -> ['fp32', 'int8']; SampleError names the valid precisions."""
    names = [p.strip().lower() for p in text.split(",") if p.strip()]
    bad = [p for p in names if p not in PRECISIONS]
    if bad or not names:
        what = ", ".join(bad) if bad else repr(text)
        raise SampleError(f"unknown precision {what}; use a comma list of {', '.join(PRECISIONS)}")
    return list(dict.fromkeys(names))


def plan_rows(engine_spec: str, precisions: list[str], device: torch.device,
              threads: int | None = None) -> tuple[list[PlannedRow], list[Skip]]:
    """The rows to run (each with `threads`) and the skipped ones with their reason.

    `engine_spec` is `auto`, `all` (every registered engine whose package and device are present) or a comma list.
    Precisions run where the engine supports them and are skipped elsewhere. An engine asked for by name that cannot
    run here at all (no package, device or precision of those asked) is planned anyway, so running it reports the
    reason as a failure; under `all` it is listed as skipped instead.
    """
    spec = engine_spec.strip().lower()
    if spec == "auto":  # pipeline.auto.resolve picks each row's engine once the model and data are ready
        return [PlannedRow("auto", p, threads) for p in precisions], []
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
            skipped.append(Skip(name, ",".join(precisions), reason))
            continue
        supported = engines.module_of(name).PRECISIONS
        runnable = [p for p in precisions if p in supported]
        for precision in precisions:
            if precision in runnable or (explicit and not runnable):
                rows.append(PlannedRow(name, precision, threads))
            else:
                skipped.append(Skip(name, precision, f"engine {name} does not support {precision} "
                                                     f"({', '.join(supported)})"))
    return rows, skipped


@dataclass
class Job:
    """What every row of a run shares: the model, the compiled shape, the device, the data, the engine options, the
    per-image outputs, and how to time it."""

    model: torch.nn.Module
    shape: tuple
    device: torch.device
    batches: Callable[[], Iterable[Batch]]  # a fresh pass over the data per row
    total: int  # images per pass (for the progress bar)
    options: EngineOptions = field(default_factory=EngineOptions)
    outputs: Optional[Outputs] = None
    reference: Optional[Reference] = None
    loop: int = 10
    warmup: int = 2
    show_progress: bool = True
    min_duration_s: float = 0.0  # timed calls go on until both `loop` calls and this many seconds are done
    percentiles: tuple = PERCENTILES
    scenarios: Optional[ScenarioPlan] = None  # --scenario's LoadGen scenarios, run after the timing pass
    concurrency: tuple = (1,)  # --concurrency: a sweep of requests in flight after the timing pass, unless (1,)
    worst: int = 0  # --html: the first row that runs keeps this many of its lowest-dice images as thumbnails
    profile: bool = False  # --profile: per-operator time of a few more calls after the timing pass


@dataclass(frozen=True)
class EngineFacts:
    """What the report says about the engine a row ran (an Engine itself holds callables and device state)."""

    name: str
    device: str
    precision: str
    artifact: str
    artifact_path: str
    timed: str
    levers: tuple[str, ...]

    @classmethod
    def of(cls, engine: Engine) -> EngineFacts:
        return cls(engine.name, str(engine.device), engine.precision, engine.artifact, engine.artifact_path,
                   engine.timed, tuple(engine.levers))


@dataclass
class RowResult:
    """Everything one row measured: the engine's facts, its compile seconds, the accuracy pass, the timing pass (None
    when Ctrl-C came first) and what the per-image outputs did; a torchrun merge adds each rank's part."""

    facts: EngineFacts
    compile_s: float
    passed: PassResult
    timing: Optional[Timing]
    outputs: Optional[RowOutputs]
    ranks: Optional[list[RankPart]] = None
    scenarios: list[ScenarioRow] = field(default_factory=list)
    concurrency: Optional[Sweep] = None
    profile: Optional[Profile] = None

    @property
    def extra_failed(self) -> bool:
        """The engine failed in the --concurrency sweep or a LoadGen scenario (the row's own figures stand)."""
        return any(s.result.validity == "ERROR" for s in self.scenarios) or \
            (self.concurrency is not None and self.concurrency.failed is not None)


@dataclass
class RowsResult:
    """What `run_rows` made: the finished rows, those skipped or failed and why, and whether Ctrl-C stopped the run."""

    results: list[RowResult] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    interrupted: bool = False

    @property
    def status(self) -> int:
        """1 when a row failed, a row lost images, or nothing ran; else 0 (130 for Ctrl-C is the caller's)."""
        failed = any(s.failed for s in self.skipped) or any(r.passed.failed or r.extra_failed for r in self.results)
        return 1 if failed or not self.results else 0


class Ranks(Protocol):
    """The ranks of a torchrun job (pipeline.distributed.World), as `run_rows` meets them after each row."""

    interrupted: bool  # Ctrl-C reached a rank: no further row runs

    def merge(self, row: PlannedRow, part: RowsResult, outputs: Outputs | None) -> RowsResult:
        """Every rank's part of `row`, merged into the one-process row on rank 0 (empty elsewhere); interrupted when
        any rank was."""


def run_rows(plan: list[PlannedRow], job: Job, ranks: Ranks | None = None) -> RowsResult:
    """Run each planned row; a row the engine refuses here (e.g. bf16 on a CPU without it) is skipped, one that fails
    is listed as failed, and Ctrl-C stops with the rows finished so far. Under torchrun (`ranks`) every rank runs
    every row on its shard and the ranks' parts are merged after each one."""
    done, this = RowsResult(), job
    for row in plan:
        part = RowsResult(interrupted=True) if ranks is not None and ranks.interrupted else _attempt(row, this)
        if part.results and this.worst:  # the first row that ran kept the worst images: the next ones need not
            this = dataclasses.replace(job, worst=0)
        if ranks is not None:
            part = ranks.merge(row, part, job.outputs)
        done.results.extend(part.results)
        done.skipped.extend(part.skipped)
        if part.interrupted:
            done.interrupted = True
            break
    return done


def _attempt(row: PlannedRow, job: Job) -> RowsResult:
    """One row, whatever happens: its result, its skip or failure, or an interruption."""
    part = RowsResult()
    try:
        if job.show_progress:
            print(f"[{row.label}] compiling / loading ...", file=sys.stderr)
        result = run_row(row, job)
        part.results.append(result)
        part.interrupted = result.passed.interrupted
    except KeyboardInterrupt:
        part.interrupted = True
    except Unsupported as exc:
        part.skipped.append(Skip(row.engine, row.precision, str(exc)))
    except Exception as exc:  # noqa: BLE001  any engine failure becomes a reported row; the others still run
        reason = str(exc) if isinstance(exc, SampleError) else \
            f"engine {row.engine} {row.precision} failed: {type(exc).__name__}: {first_line(exc)}"
        part.skipped.append(Skip(row.engine, row.precision, reason, failed=True))
        if job.outputs:
            job.outputs.discard(row.engine, row.precision)
    return part


def run_row(row: PlannedRow, job: Job) -> RowResult:
    """Compile (timed) unless auto's probe built the engine, run the accuracy pass, then the timing pass on one of its
    batches. torch's intra-op threads follow the row's `threads` while it runs."""
    options = job.options if row.threads == job.options.threads else \
        dataclasses.replace(job.options, threads=row.threads)
    with torch_threads(row.threads), span(f"row {row.label}"):
        if row.built is not None:
            engine, compile_s = row.built.engine, row.built.compile_s
        else:
            start = time.perf_counter()
            engine = engines.load(row.engine, job.model, job.shape, job.device, row.precision, options)
            compile_s = time.perf_counter() - start
            TRACE.record("compile", start, start + compile_s)
        outputs = job.outputs
        hook = outputs.hook(engine.name, row.precision) if outputs else None
        passed = accuracy_pass(engine, job.batches(), job.total, job.reference, job.show_progress, hook, job.worst)
        if row.built is not None and row.built.first_call_s is not None:
            passed.first_call_s = row.built.first_call_s  # the probe made the first call: the row's would be warm
        timing = None
        if not passed.interrupted and passed.timing_batch is not None:
            try:
                with span("timing pass"):
                    timing = timing_pass(engine, passed.timing_batch, job)
            except KeyboardInterrupt:
                passed.interrupted = True  # the accuracy pass finished: its figures are a result; the timing is lost
        swept, scenarios, profiled = None, [], None
        try:
            if job.profile and timing is not None and not passed.interrupted:
                profiled = profile_row(engine, passed.timing_batch, job, options, timing.latency_median_ms)
            if job.concurrency != (1,) and timing is not None and not passed.interrupted:
                swept = sweep_row(engine, passed.timing_batch, job, row.threads)
            if job.scenarios is not None and timing is not None and not passed.interrupted:
                run_scenarios(engine, job.scenarios, passed.accuracy, timing.latency_median_ms,
                              f"{engine.name} {row.precision}", swept.plateau if swept else 1, done=scenarios)
        except KeyboardInterrupt:
            passed.interrupted = True  # the loop's figures and the scenarios that finished stand
        if passed.interrupted and hook:
            outputs.wait(keep_errors=True)  # the batches already handed over get their files (MAX_PENDING at most)
        row_outputs = outputs.finish(engine.name, row.precision) if hook else None
    passed.timing_batch = None  # the row keeps its figures, not a device batch
    return RowResult(EngineFacts.of(engine), compile_s, passed, timing, row_outputs, scenarios=scenarios,
                     concurrency=swept, profile=profiled)


def sweep_row(engine, batch: torch.Tensor, job: Job, threads: int | None) -> Sweep:
    """The row's --concurrency sweep on the timing pass's batch: each level times `job.loop` calls per request (and
    `job.min_duration_s`)."""
    native = engine.prepare(batch)
    engine.synchronize()
    try:
        return sweep(engine, native, job.concurrency, job.loop, job.warmup, job.min_duration_s, batch.shape[0],
                     threads)
    except Exception as exc:  # noqa: BLE001  the engine failed with requests side by side: said, the row stands
        return Sweep([], 1, 1, failed=f"{type(exc).__name__}: {first_line(exc)}")


def to_row(result: RowResult) -> Row:
    """The report row, built here and nowhere else: what ran, its scores (at the original size when the outputs scored
    there, with the model-size ones kept as `model_res`), agreement with the reference, fidelity, timing, lists."""
    passed, facts = result.passed, result.facts
    model_res = passed.accuracy
    final = result.outputs.scores if result.outputs is not None and result.outputs.scores is not None else model_res
    scores, model_scores, agreement = final.scores(), model_res.scores(), model_res.agreement()
    # Aligned by id: at the original size the outputs thread scores the images the pass handed it, in order.
    position = {image_id: k for k, image_id in enumerate(model_res.ids)}
    index = [position[i] for i in final.ids]
    per_image = PerImage(id=final.ids, width=[passed.sizes[i][0] for i in index],
                         height=[passed.sizes[i][1] for i in index], dice=final.dice, iou=final.iou,
                         fg_true=final.fg_true, fg_pred=final.fg_pred, cosine=[model_res.cosine[i] for i in index],
                         batch_ms=[passed.batch_ms[i] for i in index],
                         dice_model_res=None if final is model_res else [model_res.dice[i] for i in index])
    return Row(
        engine=facts.name, device=facts.device, precision=facts.precision, artifact=facts.artifact,
        artifact_path=facts.artifact_path, images=passed.images, interrupted=passed.interrupted,
        failed_images=[FailedImage(i, e) for i, e in passed.failed], scores=scores, agreement=agreement,
        model_res=None if final is model_res else model_scores,
        gate=gate(facts.precision, agreement.cosine_min, model_scores.dice, agreement.reference_dice,
                  len(model_res.nonfinite)),
        compile_s=result.compile_s,
        first_call_ms=None if passed.first_call_s is None else passed.first_call_s * 1000.0,
        e2e_s=passed.e2e_s, e2e_fps=passed.e2e_fps, timed_region=facts.timed, levers=list(facts.levers),
        split_s={k: round(v, 6) for k, v in passed.split.seconds.items()}, timing=result.timing,
        per_image=per_image, outputs_s=None if result.outputs is None else result.outputs.seconds,
        ranks=result.ranks, nonfinite=list(model_res.nonfinite), scenarios=list(result.scenarios),
        concurrency=result.concurrency, profile=result.profile,
        worst=list(passed.worst.kept) if passed.worst is not None else [])
