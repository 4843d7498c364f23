"""`--engine auto`: measure the engines installed here, on this device, at the run's shape and precision; pick the
fastest whose output passes the fidelity bar; remember the choice for this machine, these package versions, this
model, shape and precision, so the next run decides at once.

The probe compiles each candidate (into the artifact cache, so the chosen row then loads it), makes PROBE_WARMUP
untimed calls on the run's first real batch, checks the first one's cosine against the eager fp32 reference and
times one call. The finalists (within GIVE_UP of the fastest) are then timed in turn, PROBE_ROUNDS rounds, and the
lowest median wins. Where the CPU has SMT, the winner is also timed with one thread per physical core. `--auto
static` (the default with `--no_cache`, which could not keep the choice) skips the probe and takes
engines.default_engine's fixed order.
"""
from __future__ import annotations

import gc
import importlib
import importlib.metadata
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import torch

import engines
from engines.base import Engine, EngineOptions
from pipeline.fidelity import BARS
from pipeline.passes import Reference
from utils.cache import discard, key_digest
from utils.device import describe_host, physical_cores, torch_threads, usable_cpus
from utils.errors import SampleError, first_line
from utils.files import write_atomic
from utils.metrics import cosine_per_sample

PROBE_WARMUP = 2  # untimed calls first: TorchScript's profiling executor optimises on its second call
PROBE_ROUNDS = 4  # interleaved calls per finalist after its first timed one
GIVE_UP = 1.5  # a candidate whose first timed call is this many times the fastest one's is not a finalist
FIRST_CALL_GIVE_UP = 4.0  # ... nor one whose first (untimed) call already took this many times the fastest timed call
# (first calls carry one-time work: 2x a steady call is common; engines timed with concurrent requests are exempt)
RECORD_VERSION = 1


@dataclass
class Choice:
    """What `--engine auto` picked for one precision, how (`source`: measured / cached / static) and from what."""

    engine: str
    precision: str
    source: str
    threads: Optional[int] = None  # None: the engine's default (all usable CPUs)
    candidates: list[dict] = field(default_factory=list)  # engine, threads, median_ms, cosine_min, note
    reason: str = ""
    record: str = ""  # the cache file that keeps the choice
    probe_s: float = 0.0
    loaded: Optional[Engine] = None  # the probe's compiled winner, handed to the row (not reported)
    compile_s: Optional[float] = None
    first_call_s: Optional[float] = None  # the winner's first call, made by the probe

    def describe(self) -> dict:
        """The report's entry (config.auto)."""
        return {"precision": self.precision, "engine": self.engine, "threads": self.threads, "source": self.source,
                "reason": self.reason, "candidates": self.candidates, "probe_s": round(self.probe_s, 2),
                "record": self.record}


def candidates(device: torch.device, precision: str) -> list[str]:
    """Every registered engine that can run `precision` on `device` here (package and device present), the static
    order's first: the likely winner sets the bar early, and slower candidates are then cut short."""
    names = [name for name in engines.ENGINES
             if engines.missing(name, device) is None and precision in engines.module_of(name).PRECISIONS]
    first = engines.default_engine(device, precision)
    return sorted(names, key=lambda name: name != first)


def package_version(package: str) -> str:
    """The installed version of an engine's package (distribution names vary: onnxruntime-gpu, torch-tensorrt)."""
    for dist in (package, package.replace("_", "-"), f"{package}-gpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    try:
        return str(getattr(importlib.import_module(package), "__version__", "?"))
    except ImportError:
        return "absent"


def choice_key(device: torch.device, precision: str, shape: tuple, names: list[str], model_id: str,
               options: EngineOptions) -> dict:
    """Everything a measured choice depends on: the device (CPU model and ISA flags, or the accelerator's name), the
    package versions, the model (its weights digest), the shape, the precision and the options that change speed."""
    versions = {"torch": torch.__version__}
    for name in names:
        package = getattr(engines.module_of(name), "PACKAGE", None)
        if package:
            versions[package] = package_version(package)
    return {"version": RECORD_VERSION, "device": device.type, "host": describe_host(device), "cpus": usable_cpus(),
            "versions": versions, "model": model_id, "shape": list(shape), "precision": precision,
            "threads": options.threads, "openvino_hint": options.openvino_hint,
            "openvino_device": options.openvino_device, "calibration": options.calibration.key
            if options.calibration and precision == "int8" else None,
            "levers": [options.channels_last, options.cudnn_benchmark, options.cuda_graphs]}


def _record_path(options: EngineOptions, key: dict) -> str | None:
    if options.cache is None:
        return None
    return os.path.join(options.cache.root, "auto", f"{key['precision']}-{key_digest(key)}.json")


def _read_record(path: str | None, key: dict, device: torch.device) -> dict | None:
    """The kept choice for `key`, or None (absent, unreadable, for another key, or its engine no longer runs)."""
    if path is None or not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
        if record.get("key") != key or engines.missing(record["engine"], device) is not None:
            return None
        return record
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # a damaged record is measured again and rewritten


def _timed_call(engine: Engine, inputs, threads: int | None) -> float:
    """Milliseconds per batch of one call, timed as the row's timing pass times it (`run_parallel` where the engine
    has one: `parallel` batches per call), the device synchronised, torch's intra-op threads at `threads`."""
    call = engine.run_parallel or engine.run
    with torch_threads(threads):
        start = time.perf_counter()
        call(inputs)
        engine.synchronize()
        return (time.perf_counter() - start) * 1000.0 / engine.parallel


@dataclass
class _Finalist:
    entry: dict
    engine: Engine
    inputs: object
    first_call_s: float
    threads: Optional[int]
    times: list = field(default_factory=list)


def probe(name: str, precision: str, model: torch.nn.Module, shape: tuple, device: torch.device,
          options: EngineOptions, batch: torch.Tensor, n: int, reference: torch.Tensor,
          best_ms: float | None = None) -> tuple[dict, _Finalist | None]:
    """Compile one candidate, make PROBE_WARMUP untimed calls, check the first one's output against the reference,
    time one call; (its report entry, a finalist to time further, or None when it failed or missed the bar).

    A candidate whose first call already took FIRST_CALL_GIVE_UP x `best_ms` (the fastest timed call so far) stops
    there: a first call carries one-time work, hence the wider margin than GIVE_UP."""
    entry: dict = {"engine": name, "threads": options.threads, "median_ms": None, "cosine_min": None,
                   "compile_s": 0.0, "first_call_ms": None, "note": ""}
    with torch_threads(options.threads):
        try:
            start = time.perf_counter()
            try:
                engine = engines.load(name, model, shape, device, precision, options)
            except Exception as exc:  # noqa: BLE001  a candidate that cannot compile here is noted, not fatal
                entry["note"] = f"did not compile: {first_line(exc)}"
                return entry, None
            entry["compile_s"] = round(time.perf_counter() - start, 2)
            entry["artifact_path"] = engine.artifact_path if engine.artifact == "compiled" else ""
            inputs = engine.prepare(batch)
            start = time.perf_counter()
            raw = engine.run(inputs)
            engine.synchronize()
            first_call_s = time.perf_counter() - start
            entry["first_call_ms"] = round(first_call_s * 1000.0, 2)
            cosine = float(cosine_per_sample(engine.to_torch(raw)[:n], reference[:n]).min())
            entry["cosine_min"] = cosine
            if not cosine >= BARS[precision]:
                entry["note"] = f"below the {precision} fidelity bar {BARS[precision]}"
                return entry, None
            if engine.parallel == 1 and best_ms is not None and first_call_s * 1000.0 > FIRST_CALL_GIVE_UP * best_ms:
                entry["note"] = f"not a finalist: its first call took over {FIRST_CALL_GIVE_UP}x the fastest call"
                return entry, None
            for _ in range(PROBE_WARMUP - 1):
                engine.run(inputs)
            engine.synchronize()
            finalist = _Finalist(entry, engine, inputs, first_call_s, options.threads)
            finalist.times.append(_timed_call(engine, inputs, options.threads))
            entry["median_ms"] = finalist.times[0]
            return entry, finalist
        except Exception as exc:  # noqa: BLE001
            entry["note"] = f"failed: {type(exc).__name__}: {first_line(exc)}"
            return entry, None


def thread_candidates(device: torch.device, options: EngineOptions) -> list[int]:
    """Thread counts worth timing for the winner: one per physical core where SMT doubles the logical CPUs."""
    if device.type != "cpu" or options.threads:
        return []
    logical, physical = usable_cpus(), physical_cores()
    return [physical] if physical < logical else []


def _prune(finalists: list[_Finalist]) -> list[_Finalist]:
    """Drop the finalists whose one call took over GIVE_UP x the fastest one's: no round can close such a gap."""
    best = min(f.times[0] for f in finalists)
    kept = []
    for f in finalists:
        if f.times[0] > GIVE_UP * best:
            f.entry["note"] = f"not a finalist: over {GIVE_UP}x the fastest first call"
        else:
            kept.append(f)
    return kept


def _static(device: torch.device, precision: str, options: EngineOptions, why: str, entries: list | None = None,
            probe_s: float = 0.0) -> Choice:
    """The static order's engine, with `why` no measured choice was made."""
    name = engines.default_engine(device, precision)
    return Choice(name, precision, "static", options.threads, entries or [], f"{why}; {name} from the static order",
                  probe_s=probe_s)


def measure(model: torch.nn.Module, shape: tuple, device: torch.device, precision: str, options: EngineOptions,
            names: list[str], batch: torch.Tensor, n: int, reference: torch.Tensor,
            log: Callable[[str], None] = lambda line: None) -> Choice:
    """Probe the candidate engines `names` (one timed call each), then time the finalists round-robin, PROBE_ROUNDS
    calls each, so a busy spell on a shared machine hits them all; the lowest median that passed the bar wins (the
    static order when none did)."""
    start = time.perf_counter()
    entries, finalists = [], []
    for name in names:
        log(f"auto {precision}: probing {name} ...")
        fastest = min((f.times[0] for f in finalists), default=None)
        entry, finalist = probe(name, precision, model, shape, device, options, batch, n, reference, fastest)
        entries.append(entry)
        if finalist is not None:
            finalists = _prune(finalists + [finalist])
        gc.collect()  # an engine dropped from the finalists frees its memory before the next one compiles
    if finalists:
        leader = min(finalists, key=lambda f: f.times[0])
        for count in thread_candidates(device, options):
            log(f"auto {precision}: probing {leader.entry['engine']} with {count} threads ...")
            entry, finalist = probe(leader.entry["engine"], precision, model, shape, device,
                                    replace(options, threads=count), batch, n, reference, leader.times[0])
            entries.append(entry)
            if finalist is not None:
                finalists = _prune(finalists + [finalist])
        if len(finalists) > 1:
            log(f"auto {precision}: timing {', '.join(f.entry['engine'] for f in finalists)} in turn ...")
            for _ in range(PROBE_ROUNDS):
                for f in finalists:
                    f.times.append(_timed_call(f.engine, f.inputs, f.threads))
        for f in finalists:
            f.entry["median_ms"] = statistics.median(f.times)
            f.entry["calls"] = len(f.times)
        finalists.sort(key=lambda f: f.entry["median_ms"])
    winner = finalists[0].entry["engine"] if finalists else engines.default_engine(device, precision)
    _discard_losers(entries, winner, options)
    probe_s = time.perf_counter() - start
    if not finalists:
        return _static(device, precision, options, "no candidate passed the probe", entries, probe_s)
    best = finalists[0]
    best_ms = best.entry["median_ms"]
    reason = f"fastest that passed the {precision} bar: {best_ms:,.1f} ms per batch"
    others = sorted((e for e in entries if e["median_ms"] is not None and e is not best.entry),
                    key=lambda e: e["median_ms"])
    if others:
        runner = others[0]
        threads = f" with {runner['threads'] or 'default'} threads" if runner["threads"] != best.threads else ""
        reason += f", {runner['median_ms'] / best_ms:.2f}x faster than {runner['engine']}{threads}"
    if len(finalists) > 1:
        reason += f" (medians of {best.entry['calls']} interleaved calls)"
    handed = best.threads == options.threads  # else the row builds its engine with the chosen thread count
    return Choice(best.entry["engine"], precision, "measured", best.threads, entries, reason, probe_s=probe_s,
                  loaded=best.engine if handed else None, compile_s=best.entry["compile_s"],
                  first_call_s=best.first_call_s if handed else None)


def _discard_losers(entries: list[dict], winner: str | None, options: EngineOptions) -> None:
    """Remove the artifacts this probe built for engines it did not choose (one UNet 512 build is ~120 MB, and a
    probe makes one per engine): only folders inside the artifact cache that the probe itself compiled."""
    root = os.path.realpath(options.cache.root) if options.cache is not None else None
    for entry in entries:
        path = entry.pop("artifact_path", "")
        if root and path and entry["engine"] != winner and os.path.realpath(path).startswith(root + os.sep):
            try:
                discard(path)  # renamed aside first: no run sees a half-deleted entry
            except SampleError:
                pass  # it stays; the cache is still valid, only larger


def choose(model: torch.nn.Module, model_id: str, shape: tuple, device: torch.device, precision: str,
           options: EngineOptions, first_batch: Callable[[], tuple[torch.Tensor, int]],
           reference: Callable[[torch.Tensor], torch.Tensor], mode: str = "measure",
           log: Callable[[str], None] = lambda line: None) -> Choice:
    """The engine for `precision`: kept from an earlier measurement, measured now, or (mode 'static') the fixed order.

    `first_batch()` gives the probe's input (a real batch and its count of real images), `reference(batch)` the
    eager fp32 logits for it; both are called only when a probe runs.
    """
    if mode == "static":
        return _static(device, precision, options, "--auto static, or --no_cache, which could not keep a measured choice")
    names = candidates(device, precision)
    key = choice_key(device, precision, shape, names, model_id, options)
    path = _record_path(options, key)
    record = _read_record(path, key, device)
    if record is not None:
        return Choice(record["engine"], precision, "cached", record.get("threads"), record.get("candidates", []),
                      f"measured on {record.get('measured', '?')}: {record.get('reason', '')}", record=path or "")
    if not names:
        return _static(device, precision, options, f"no installed engine runs {precision} on {device.type}")
    try:
        batch, n = first_batch()
        expected = reference(batch)
    except Exception as exc:  # noqa: BLE001  the rows meet the same failure and report it as theirs
        return _static(device, precision, options, f"the probe could not run the eager fp32 reference "
                                                   f"({type(exc).__name__}: {first_line(exc)})")
    choice = measure(model, shape, device, precision, options, names, batch, n, expected, log)
    if path and choice.source == "measured":
        record = {"key": key, "engine": choice.engine, "threads": choice.threads, "reason": choice.reason,
                  "candidates": choice.candidates, "measured": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_atomic(path, json.dumps(record, indent=1).encode())
            choice.record = path
        except Exception as exc:  # noqa: BLE001  the choice still applies to this run; the next one measures again
            print(f"warning: could not keep the auto choice in {path}: {first_line(exc)}", file=sys.stderr)
    return choice


def resolve(plan: list[tuple[str, str]], job, options: EngineOptions, mode: str = "measure",
            log: Callable[[str], None] = lambda line: None):
    """Replace each ("auto", precision) row of `plan` by its chosen engine.

    Returns (plan, loaded, row_options, choices): `loaded` maps a row to the probe's compiled engine, its compile
    seconds and its first call's seconds (the row reuses it, and reports the probe's first call as its own),
    `row_options` a row to its options when auto chose a thread count.
    """
    model_id = options.cache.digest(job.model) if options.cache is not None and mode != "static" else ""
    reference = job.reference or Reference(job.model)
    probe_input: list = []

    def first_batch():
        if not probe_input:
            batches = job.batches()
            try:
                for batch in batches:
                    if batch.n:
                        probe_input.append((batch.images, batch.n, batch.ids, batch))
                        break
            finally:
                close = getattr(batches, "close", None)
                if close:
                    close()
            if not probe_input:  # nothing decodes: probe on noise (the rows will report the images)
                probe_input.append((torch.rand(job.shape), job.shape[0], [], None))
        return probe_input[0][:2]

    def reference_logits(batch: torch.Tensor) -> torch.Tensor:
        _, _, ids, whole = probe_input[0]
        if ids:
            return reference(ids, whole).cpu()
        with torch.inference_mode():
            return job.model(batch.float())

    resolved, loaded, row_options, choices = [], {}, {}, []
    for name, precision in plan:
        if name != "auto":
            resolved.append((name, precision))
            continue
        choice = choose(job.model, model_id, job.shape, job.device, precision, options, first_batch,
                        reference_logits, mode, log)
        choices.append(choice)
        row = (choice.engine, precision)  # plan_rows lists each precision once, so rows never repeat
        resolved.append(row)
        if choice.loaded is not None:
            loaded[row] = (choice.loaded, choice.compile_s, choice.first_call_s)
            choice.loaded = None
        if choice.threads != options.threads:
            row_options[row] = replace(options, threads=choice.threads)
    return resolved, loaded, row_options, choices
