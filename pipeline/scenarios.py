"""MLPerf LoadGen scenarios over one engine: SingleStream, MultiStream, Offline and Server, each judged by LoadGen.

LoadGen decides when queries arrive and measures every latency itself; this module is its system under test (SUT) and
query sample library (QSL). The QSL holds images already decoded and resized as the accuracy pass feeds them; the SUT
gathers waiting samples into the engine's compiled batch, runs it, and answers each sample with its real class mask.
The package is imported on use: the rest of the project runs without it.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
import threading
import time
from collections import deque
from typing import Callable, Optional

import numpy as np
import torch

from dataset.batches import Batch
from engines.base import Engine
from pipeline.concurrency import bind_device
from pipeline.loadgen_log import LoadGenLog, read_accuracy, read_log
from pipeline.passes import engine_inputs, output_logits
from pipeline.scenario_types import LOADGEN_NAMES, METRICS, ScenarioResult, ScenarioSettings, ServerRun
from report.metrics import predict
from utils.errors import SampleError, first_line
from utils.signals import held, pending
from utils.timing import measure, median_interval

INSTALL = "pip install mlcommons-loadgen"
# mlperf.conf's '*' entries (seeds, percentiles, the 600 s minimums) apply to a model it does not name.
MODEL = "unet"
# LoadGen pre-generates queries from the expected latency / rate: a guess on the fast side (half the measured call)
# keeps it from running out of queries before the minimum duration; the run then just lasts longer.
EXPECT_FASTER = 2.0
# Offline's one query holds expected rate x min duration x 1.1 samples, so there a faster guess lengthens the run;
# full batches run at the measured rate, and a small margin covers a machine that speeds up after the timing calls.
OFFLINE_MARGIN = 1.2
# The confirmation run asks for 10 % more queries than early stopping needed (a few queries over the bound in the longer
# run raise what it needs), at 90 % of the best rate: the search's best sits at the edge, where a short run's p99 met
# the bound and a longer one's may not (at 32 px, ONNX Runtime on a 2-core EPYC: 149 ms in 166 queries at 16.8/s, then
# 292 ms in 505 against a 185 ms bound).
CONFIRM_MARGIN = 1.1
CONFIRM_RATE = 0.9
_ONE_TEST = threading.Lock()  # LoadGen's StartTest is process-wide: one test at a time


def loadgen():
    """The `mlperf_loadgen` module, or a SampleError that says how to install it."""
    try:
        import mlperf_loadgen
    except ImportError:
        raise SampleError(f"the MLPerf scenarios need MLCommons LoadGen, which is not installed: {INSTALL}") from None
    return mlperf_loadgen


def predict_masks(engine: Engine, pixels: torch.Tensor, n: int, run: Optional[Callable] = None) -> np.ndarray:
    """Class masks (n, H, W) uint8 of the first `n` rows of a padded (B, H, W, C) uint8 batch, fed to the engine as the
    accuracy pass feeds it (uploaded as uint8 for a device-input engine, else float NCHW in [0, 1]); `run`: a request
    of the engine's own (engines.base.Engine.request), else `engine.run`."""
    native = engine_inputs(engine, Batch([str(k) for k in range(n)], pixels, None, n, []))
    output = (run or engine.run)(native)
    engine.synchronize()
    return predict(output_logits(engine, output)[:n], torch.uint8).cpu().numpy()


def gather(images: torch.Tensor, indices: list[int], batch_size: int) -> torch.Tensor:
    """The samples at `indices` as one (batch_size, H, W, C) batch, a short one padded by repeating its last image
    (as dataset/batches.py's _assemble does: static-shape engines need full batches)."""
    return images[indices + [indices[-1]] * (batch_size - len(indices))]


class Harness:
    """LoadGen's SUT and QSL over one engine. Issued samples wait in one queue; a worker thread takes whatever is
    waiting, up to `batch_size`, runs it as one engine call and completes those samples. So SingleStream runs one
    padded call per query, MultiStream ceil(8 / batch) calls, Offline full batches, and Server batches the queries
    that arrived while the last call ran.

    The QSL's load / unload are bookkeeping: the images are in host memory already, as the accuracy pass has them.
    An engine error stops the engine work, completes what is left without data (so LoadGen can finish) and is raised
    once the test returns."""

    def __init__(self, lg, engine: Engine, images: torch.Tensor, batch_size: int, workers: int = 1):
        self.lg, self.engine, self.images, self.batch_size = lg, engine, images, batch_size
        self.waiting: deque = deque()  # (LoadGen's sample, when it was issued)
        self.latencies_ms: list[float] = []  # each sample's, issue to completion, in the last test
        self.ready = threading.Condition()
        self.stopping = False
        self.error: Optional[BaseException] = None
        # --concurrency's plateau for Offline and Server: that many calls in flight, each worker with its own request
        runs = [engine.request() for _ in range(workers)] if engine.request is not None else [None] * workers
        self.workers = [threading.Thread(target=self._work, args=(run,), name=f"loadgen-sut-{k}", daemon=True)
                        for k, run in enumerate(runs)]

    def __enter__(self):
        n = self.images.shape[0]
        self.sut = self.lg.ConstructSUT(self.issue, self.flush)
        self.qsl = self.lg.ConstructQSL(n, n, self.load, self.unload)
        for worker in self.workers:
            worker.start()
        return self

    def __exit__(self, *exc):
        with self.ready:
            self.stopping = True
            self.ready.notify_all()
        for worker in self.workers:
            worker.join()
        self.lg.DestroyQSL(self.qsl)
        self.lg.DestroySUT(self.sut)

    def issue(self, samples) -> None:
        now = time.perf_counter()
        with self.ready:
            self.waiting.extend((sample, now) for sample in samples)
            # one worker per batch waiting: Offline's one query of every sample must reach all of them
            self.ready.notify(-(-len(self.waiting) // self.batch_size))

    def flush(self) -> None:
        """Nothing is held back: every waiting sample is run as soon as the worker is free."""

    def load(self, indices) -> None:
        """Held already (see the class docstring)."""

    def unload(self, indices) -> None:
        """Held for the next test (see the class docstring)."""

    def _work(self, run: Optional[Callable]) -> None:
        try:
            bind_device(self.engine)
        except Exception as exc:  # noqa: BLE001  raised in the caller's thread once LoadGen returns
            self.error = exc
        while True:
            with self.ready:
                while not self.waiting and not self.stopping:
                    self.ready.wait()
                if not self.waiting:
                    return
                taken = [self.waiting.popleft() for _ in range(min(self.batch_size, len(self.waiting)))]
            self._serve(taken, run)

    def _serve(self, taken: list, run: Optional[Callable]) -> None:
        lg, masks = self.lg, None
        if self.error is None and not pending():  # a signal came: what is left is answered at once, without data
            try:
                masks = predict_masks(self.engine, gather(self.images, [s.index for s, _ in taken], self.batch_size),
                                      len(taken), run)
            except Exception as exc:  # noqa: BLE001  raised in the caller's thread once LoadGen returns
                self.error = exc
        if masks is None:
            lg.QuerySamplesComplete([lg.QuerySampleResponse(s.id, 0, 0) for s, _ in taken])
            return
        # LoadGen copies a response's bytes (when it logs them) before QuerySamplesComplete returns.
        lg.QuerySamplesComplete([lg.QuerySampleResponse(s.id, m.ctypes.data, m.nbytes)
                                 for (s, _), m in zip(taken, masks)])
        done = time.perf_counter()
        self.latencies_ms.extend((done - issued) * 1000.0 for _, issued in taken)  # one extend: safe across workers

    def start(self, test, folder: str) -> LoadGenLog:
        """Run one LoadGen test with its logs (summary, detail, trace, accuracy) in `folder`, none on stdout."""
        lg = self.lg
        os.makedirs(folder, exist_ok=True)
        output = lg.LogOutputSettings()
        output.outdir = folder
        output.copy_summary_to_stdout = False
        output.copy_detail_to_stdout = False
        logs = lg.LogSettings()
        logs.log_output = output
        logs.enable_trace = True
        # A signal must not surface inside LoadGen's callbacks (load / issue run in this thread): it would leave the
        # test running in LoadGen's threads and crash the process. Held, it ends the test (the SUT answers the rest at
        # once) and is raised here, after the test returned.
        self.latencies_ms = []
        with _ONE_TEST, held():
            lg.StartTestWithLogSettings(self.sut, self.qsl, test, logs)
        if self.error is not None:
            raise SampleError(f"engine {self.engine.name} failed during a LoadGen test: {first_line(self.error)}")
        return read_log(folder)


def call_seconds(engine: Engine, images: torch.Tensor, batch_size: int, calls: int = 3) -> float:
    """The fastest of `calls` full-batch engine calls (after one untimed), which sets LoadGen's expected latency / rate
    and the Server search's range."""
    times = measure(lambda pixels: predict_masks(engine, pixels, 1), gather(images, [0], batch_size),
                    engine.synchronize, loop=calls, warmup=1)
    return max(min(times), 1e-6)


def loadgen_settings(lg, settings: ScenarioSettings, mode, call_s: float, batch_size: int,
                     server_qps: Optional[float] = None):
    """LoadGen's TestSettings: mlperf.conf's built-in values (seeds, percentiles, minimums), our short minimums unless
    `mlperf_minimums`, expected latency / rate from the measured call, Server's target rate and latency bound."""
    test = lg.TestSettings()
    name = LOADGEN_NAMES[settings.scenario]
    if test.FromConfig("", MODEL, name, 0) != 0:
        raise SampleError(f"LoadGen did not load its built-in mlperf.conf; it needs mlcommons-loadgen >= 5.0: "
                          f"{INSTALL} --upgrade")
    test.scenario = getattr(lg.TestScenario, name)
    test.mode = mode
    if not settings.mlperf_minimums:
        test.min_duration_ms = max(1, round(settings.min_duration_s * 1000))
        test.min_query_count = settings.min_queries
    calls_per_query = math.ceil(test.multi_stream_samples_per_query / batch_size)
    test.single_stream_expected_latency_ns = max(1, int(call_s * 1e9 / EXPECT_FASTER))
    test.multi_stream_expected_latency_ns = max(1, int(calls_per_query * call_s * 1e9 / EXPECT_FASTER))
    test.offline_expected_qps = batch_size / call_s * OFFLINE_MARGIN
    test.server_target_latency_ns = max(1, int(settings.target_latency_ms * 1e6))
    test.server_target_qps = server_qps if server_qps else batch_size / call_s
    return test


def _check(images: torch.Tensor, batch_size: int) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[0] < 1:
        raise SampleError(f"the QSL needs (N, H, W, C) uint8 images, N >= 1; got {images.dtype} {tuple(images.shape)}")
    if batch_size < 1:
        raise SampleError(f"batch_size must be >= 1; got {batch_size}")


def _result(settings: ScenarioSettings, log: LoadGenLog, folder: str, metric: Optional[float], images: int,
            batch_size: int, **extra) -> ScenarioResult:
    multi = settings.scenario == "multistream"
    queries = int(log.get("result_query_count", 0))
    per_query = int(log.get("generated_samples_per_query", 1))
    samples = per_query if settings.scenario == "offline" else queries * per_query
    validity = str(log.get("result_validity", "INVALID"))
    return ScenarioResult(
        scenario=settings.scenario, metric_name=METRICS[settings.scenario], metric=metric, validity=validity,
        reasons=extra.pop("reasons", log.reasons()), mlperf_minimums=settings.mlperf_minimums,
        submission_grade=settings.mlperf_minimums and validity == "VALID", performance_sample_count=images,
        batch_size=batch_size, queries=queries, samples=samples, duration_s=log.duration_s(),
        latency_p50_ms=log.latency_ms("50.00", multi), latency_p90_ms=log.latency_ms("90.00", multi),
        latency_p99_ms=log.latency_ms("99.00", multi),
        early_stopping=" ".join(str(log.get("early_stopping_result", "")).split()), log_dir=folder, **extra)


def run_scenario(engine: Engine, images: torch.Tensor, batch_size: int, settings: ScenarioSettings,
                 concurrency: int = 1, known_s: Optional[float] = None) -> ScenarioResult:
    """Run `settings.scenario` under LoadGen in PerformanceOnly mode over the held `images` (N, H, W, C uint8, at the
    model's size) and return LoadGen's verdict and figures; Server searches for its rate (`search_server`). Offline and
    Server keep `concurrency` calls in flight (--concurrency's plateau); the stream scenarios one."""
    lg = loadgen()
    _check(images, batch_size)
    call_s = call_seconds(engine, images, batch_size)
    if known_s:  # the row's loop median: three calls on a busy machine can overstate a call several times
        call_s = min(call_s, known_s)
    workers = concurrency if settings.scenario in ("offline", "server") else 1
    with Harness(lg, engine, images, batch_size, workers) as harness:
        if settings.scenario == "server":
            return search_server(harness, settings, call_s)
        folder = os.path.join(settings.log_dir, settings.scenario)
        log = harness.start(loadgen_settings(lg, settings, lg.TestMode.PerformanceOnly, call_s, batch_size), folder)
    if settings.scenario == "offline":
        metric = log.get("result_samples_per_second")
    else:
        metric = log.latency_ms("90.00" if settings.scenario == "singlestream" else "99.00",
                                settings.scenario == "multistream")
    # SingleStream has one sample a query: the samples' latencies are the queries'
    interval = median_interval(harness.latencies_ms) if settings.scenario == "singlestream" else None
    return _result(settings, log, folder, None if metric is None else float(metric), images.shape[0], batch_size,
                   latency_p50_ci_ms=interval)


def search_server(harness: Harness, settings: ScenarioSettings, call_s: float) -> ScenarioResult:
    """Bisect LoadGen's server_target_qps over (0, 1.25 x the full-batch rate] in `settings.search_runs` runs: a rate
    whose measured p99 stays under `target_latency_ms` raises the floor, any other lowers the ceiling. When no run
    that met the bound was VALID, 90 % of the best rate may run again with the queries early stopping asked for
    (`confirm_best`). The result is the best run that met the bound and that LoadGen also called VALID, else the best
    such run (its completed samples/s, LoadGen's headline, is the metric), or the last run with metric None."""
    lg, batch_size = harness.lg, harness.batch_size
    target = settings.target_latency_ms
    root = os.path.join(settings.log_dir, "server")
    extra = {"target_latency_ms": target}
    if call_s * 1000.0 >= target:  # every query waits for at least one call: no rate can meet the bound
        reason = f"one engine call takes {call_s * 1000.0:.3g} ms, not under the {target:g} ms target at any rate"
        return ScenarioResult("server", METRICS["server"], None, "INVALID", (reason,), settings.mlperf_minimums,
                              performance_sample_count=harness.images.shape[0], batch_size=batch_size,
                              log_dir=root, **extra)
    low, high = 0.0, 1.25 * batch_size * len(harness.workers) / call_s
    runs, best, valid, last = [], None, None, None

    def server_run(rate: float, name: str, queries: int = 0) -> tuple:
        folder = os.path.join(root, name)
        run_settings = dataclasses.replace(settings, min_queries=queries) if queries else settings
        test = loadgen_settings(lg, run_settings, lg.TestMode.PerformanceOnly, call_s, batch_size, server_qps=rate)
        log = harness.start(test, folder)
        p99 = log.latency_ms("99.00")
        runs.append(ServerRun(rate, float(log.get("result_scheduled_samples_per_sec", 0.0)),
                              float(log.get("result_completed_samples_per_sec", 0.0)),
                              math.inf if p99 is None else p99, p99 is not None and p99 < target,
                              str(log.get("result_validity", "INVALID")), folder,
                              int(log.get("result_query_count", 0)), confirms=bool(queries)))
        return log, folder

    for k in range(settings.search_runs):
        rate = (low + high) / 2
        last = server_run(rate, f"run{k + 1}-{rate:.6g}qps")
        if runs[-1].met:
            low, best = rate, last
            valid = last if runs[-1].validity == "VALID" else valid  # LoadGen's early stopping agrees too
        else:
            high = rate
    notes = ()
    if best is not None and valid is None and not settings.mlperf_minimums:
        best, valid, notes = confirm_best(server_run, runs, best, settings)
    log, folder = valid or best or last
    extra["server_runs"] = tuple(runs)
    if best is None:
        extra["reasons"] = (f"no rate tried kept p99 under {target:g} ms", *log.reasons())
        return _result(settings, log, folder, None, harness.images.shape[0], batch_size, **extra)
    if notes or log.reasons():
        extra["reasons"] = (*log.reasons(), *notes)
    metric = float(log.get("result_completed_samples_per_sec", 0.0))
    return _result(settings, log, folder, metric, harness.images.shape[0], batch_size, **extra)


def confirm_best(server_run: Callable, runs: list, best: tuple, settings: ScenarioSettings) -> tuple:
    """Run 90 % of the search's best rate again with the queries LoadGen's early stopping asked for, when that fits in
    the search's time (`confirmation`); `server_run(rate, folder name, queries)` runs it and appends it to `runs`.
    Returns (best, valid, notes): the confirmation replaces the search's best when it met the bound (the longer run is
    the better evidence, VALID or not); a confirmation over the bound, or one that failed, leaves the search's best
    standing and says so."""
    best_run = next(r for r in runs if r.log_dir == best[1])
    queries, notes = confirmation(best[0], best_run, settings)
    if not queries:
        return best, None, notes
    rate = best_run.target_qps * CONFIRM_RATE
    try:
        confirmed = server_run(rate, f"confirm-{rate:.6g}qps", queries)
    except (SampleError, OSError) as exc:  # an optional run: the search's result is kept
        return best, None, (f"the confirmation at {rate:.3g}/s failed ({first_line(str(exc))}): the search's best "
                            f"run stands",)
    run = runs[-1]
    if run.met:
        return confirmed, (confirmed if run.validity == "VALID" else None), ()
    return best, None, (f"the confirmation at {rate:.3g}/s with {queries} queries went over the bound (p99 "
                        f"{run.latency_p99_ms:.3g} ms): the search's best run stands",)


def early_stopping_queries(log: LoadGenLog) -> Optional[int]:
    """The queries LoadGen's early stopping needs for a verdict, read off its words ('Processed 49 queries. Would
    need to run at least 410 more queries'): processed + more. None when it asked for nothing."""
    text = " ".join(str(log.get("early_stopping_result", "")).split())
    done = re.search(r"Processed (\d+) queries", text)
    more = re.search(r"at least (\d+) more queries", text)
    return int(done.group(1)) + int(more.group(1)) if done and more else None


def confirmation(log: LoadGenLog, run: ServerRun, settings: ScenarioSettings) -> tuple[int, tuple]:
    """Whether to run 90 % of the search's best rate again with enough queries for LoadGen's early stopping to say
    VALID (its only objection, for a short run), and the note that says why not. The run may take as long as the search
    took (`search_runs` x `min_duration_s`), so Server costs at most twice its search; a longer one is left to the
    user, with the flag that asks for it. Returns (the query count to run, or 0; notes)."""
    need = early_stopping_queries(log)
    if need is None or run.target_qps <= 0:
        return 0, ()
    queries = math.ceil(need * CONFIRM_MARGIN)
    seconds, allowed = queries / (run.target_qps * CONFIRM_RATE), settings.search_runs * settings.min_duration_s
    if seconds <= allowed:
        return queries, ()
    return 0, (f"LoadGen's early stopping needs about {need} queries to call a rate VALID, about {seconds:.0f} s at "
               f"{run.target_qps * CONFIRM_RATE:.3g}/s (90 % of the best), longer than the search's {allowed:g} s: "
               f"give --min_queries {queries} to confirm it",)


def run_accuracy(engine: Engine, images: torch.Tensor, batch_size: int,
                 settings: ScenarioSettings) -> list[np.ndarray]:
    """LoadGen's AccuracyOnly mode in `settings.scenario`: every sample issued (MultiStream fills its last query of 8
    with repeats, which keep their first answer); the masks are read back from the
    mlperf_log_accuracy.json LoadGen wrote (in `log_dir/<scenario>-accuracy`), in sample order, (H, W) uint8 each,
    for the caller to score with report.metrics at the model's resolution."""
    lg = loadgen()
    _check(images, batch_size)
    folder = os.path.join(settings.log_dir, f"{settings.scenario}-accuracy")
    # No timing calls: in accuracy mode LoadGen issues each sample once, whatever it expects; only Server paces its
    # queries by the rate, which a nominal 1 ms call sets high enough to keep the engine busy.
    test = loadgen_settings(lg, settings, lg.TestMode.AccuracyOnly, 1e-3, batch_size)
    with Harness(lg, engine, images, batch_size) as harness:
        harness.start(test, folder)
    return read_accuracy(folder, images.shape[0], tuple(images.shape[1:3]))
