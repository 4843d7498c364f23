"""The probe behind `--engine auto`: each candidate compiled, its first call on the run's first batch checked against
the eager fp32 reference and one call timed; the finalists (within GIVE_UP of the fastest) then timed in turn,
PROBE_ROUNDS rounds, and the lowest median wins. Where the CPU has SMT, the winner is also timed with one thread per
physical core."""
from __future__ import annotations

import gc
import os
import statistics
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Optional

import torch

import engines
from engines.base import Engine, EngineOptions
from engines.cache import discard
from pipeline.fidelity import BARS
from pipeline.rows import Built
from report.metrics import cosine_per_sample
from utils.device import physical_cores, torch_threads, usable_cpus
from utils.errors import first_line

PROBE_WARMUP = 2  # untimed calls first: TorchScript's profiling executor optimises on its second call
PROBE_ROUNDS = 4  # interleaved calls per finalist after its first timed one
GIVE_UP = 1.5  # a candidate whose first timed call is this many times the fastest one's is not a finalist
# ... nor one whose first call (one-time work included: 2x a steady call is common) took this many times the fastest
FIRST_CALL_GIVE_UP = 4.0


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
    built: Optional[Built] = None  # the probe's compiled winner and its first call, handed to the row (not reported)

    def describe(self) -> dict:
        """The report's entry (config.auto)."""
        return {"precision": self.precision, "engine": self.engine, "threads": self.threads, "source": self.source,
                "reason": self.reason, "candidates": self.candidates, "probe_s": round(self.probe_s, 2),
                "record": self.record}


@dataclass(frozen=True)
class Target:
    """What a choice is made for: the model (and its weights digest), the compiled shape, the device, the precision
    and the engine options the rows will build with."""

    model: torch.nn.Module
    model_id: str
    shape: tuple
    device: torch.device
    precision: str
    options: EngineOptions


@dataclass(frozen=True)
class ProbeInput:
    """The probe's input, a real batch with `n` real images, and the eager fp32 reference's logits for it."""

    batch: torch.Tensor
    n: int
    reference: torch.Tensor


@dataclass
class _Finalist:
    entry: dict
    engine: Engine
    inputs: object
    first_call_s: float
    threads: Optional[int]
    times: list = field(default_factory=list)


def _timed_call(engine: Engine, inputs, threads: int | None) -> float:
    """Milliseconds per batch of one call, timed as the row's timing pass times it (`run_parallel` where the engine
    has one: `parallel` batches per call), the device synchronised, torch's intra-op threads at `threads`."""
    call = engine.run_parallel or engine.run
    with torch_threads(threads):
        start = time.perf_counter()
        call(inputs)
        engine.synchronize()
        return (time.perf_counter() - start) * 1000.0 / engine.parallel


def probe(name: str, target: Target, given: ProbeInput, best_ms: float | None = None) -> tuple[dict, _Finalist | None]:
    """Compile one candidate, make PROBE_WARMUP untimed calls, check the first one's output against the reference,
    time one call; (its report entry, a finalist to time further, or None when it failed or missed the bar).

    A candidate whose first call already took FIRST_CALL_GIVE_UP x `best_ms` (the fastest timed call so far) stops
    there: a first call carries one-time work, hence the wider margin than GIVE_UP."""
    options, precision = target.options, target.precision
    entry: dict = {"engine": name, "threads": options.threads, "median_ms": None, "cosine_min": None,
                   "compile_s": 0.0, "first_call_ms": None, "note": ""}
    with torch_threads(options.threads):
        try:
            start = time.perf_counter()
            try:
                engine = engines.load(name, target.model, target.shape, target.device, precision, options)
            except Exception as exc:  # noqa: BLE001  a candidate that cannot compile here is noted, not fatal
                entry["note"] = f"did not compile: {first_line(exc)}"
                return entry, None
            entry["compile_s"] = round(time.perf_counter() - start, 2)
            entry["artifact_path"] = engine.artifact_path if engine.artifact == "compiled" else ""
            inputs = engine.prepare(given.batch)
            start = time.perf_counter()
            raw = engine.run(inputs)
            engine.synchronize()
            first_call_s = time.perf_counter() - start
            entry["first_call_ms"] = round(first_call_s * 1000.0, 2)
            cosine = float(cosine_per_sample(engine.to_torch(raw)[:given.n], given.reference[:given.n]).min())
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


def static_choice(target: Target, why: str, entries: list | None = None, probe_s: float = 0.0) -> Choice:
    """The static order's engine, with `why` no measured choice was made."""
    name = engines.default_engine(target.device, target.precision)
    return Choice(name, target.precision, "static", target.options.threads, entries or [],
                  f"{why}; {name} from the static order", probe_s=probe_s)


def _probe_all(target: Target, names: list[str], given: ProbeInput, log: Callable[[str], None]):
    """Probe each candidate (one timed call each), then the leader again with one thread per physical core where
    that differs; (every entry, the finalists left)."""
    entries, finalists = [], []
    for name in names:
        log(f"auto {target.precision}: probing {name} ...")
        fastest = min((f.times[0] for f in finalists), default=None)
        entry, finalist = probe(name, target, given, fastest)
        entries.append(entry)
        if finalist is not None:
            finalists = _prune(finalists + [finalist])
        gc.collect()  # an engine dropped from the finalists frees its memory before the next one compiles
    if finalists:
        leader = min(finalists, key=lambda f: f.times[0])
        for count in thread_candidates(target.device, target.options):
            log(f"auto {target.precision}: probing {leader.entry['engine']} with {count} threads ...")
            threaded = replace(target, options=replace(target.options, threads=count))
            entry, finalist = probe(leader.entry["engine"], threaded, given, leader.times[0])
            entries.append(entry)
            if finalist is not None:
                finalists = _prune(finalists + [finalist])
    return entries, finalists


def _time_finalists(finalists: list[_Finalist], log: Callable[[str], None], precision: str) -> None:
    """Time the finalists round-robin, PROBE_ROUNDS calls each, so a busy spell on a shared machine hits them all;
    fastest median first."""
    if len(finalists) > 1:
        log(f"auto {precision}: timing {', '.join(f.entry['engine'] for f in finalists)} in turn ...")
        for _ in range(PROBE_ROUNDS):
            for f in finalists:
                f.times.append(_timed_call(f.engine, f.inputs, f.threads))
    for f in finalists:
        f.entry["median_ms"] = statistics.median(f.times)
        f.entry["calls"] = len(f.times)
    finalists.sort(key=lambda f: f.entry["median_ms"])


def measure(target: Target, names: list[str], given: ProbeInput,
            log: Callable[[str], None] = lambda line: None) -> Choice:
    """Probe the candidate engines `names`, time the finalists in turn; the lowest median that passed the bar wins
    (the static order when none did)."""
    start = time.perf_counter()
    entries, finalists = _probe_all(target, names, given, log)
    _time_finalists(finalists, log, target.precision)
    winner = finalists[0].entry["engine"] if finalists else engines.default_engine(target.device, target.precision)
    _discard_losers(entries, winner, target.options)
    probe_s = time.perf_counter() - start
    if not finalists:
        return static_choice(target, "no candidate passed the probe", entries, probe_s)
    best = finalists[0]
    best_ms = best.entry["median_ms"]
    reason = f"fastest that passed the {target.precision} bar: {best_ms:,.1f} ms per batch"
    others = sorted((e for e in entries if e["median_ms"] is not None and e is not best.entry),
                    key=lambda e: e["median_ms"])
    if others:
        runner = others[0]
        threads = f" with {runner['threads'] or 'default'} threads" if runner["threads"] != best.threads else ""
        reason += f", {runner['median_ms'] / best_ms:.2f}x faster than {runner['engine']}{threads}"
    if len(finalists) > 1:
        reason += f" (medians of {best.entry['calls']} interleaved calls)"
    handed = best.threads == target.options.threads  # else the row builds its engine with the chosen thread count
    built = Built(best.engine, best.entry["compile_s"], best.first_call_s) if handed else None
    return Choice(best.entry["engine"], target.precision, "measured", best.threads, entries, reason,
                  probe_s=probe_s, built=built)


def _discard_losers(entries: list[dict], winner: str | None, options: EngineOptions) -> None:
    """Remove the artifacts this probe built for engines it did not choose (one UNet 512 build is ~120 MB, and a
    probe makes one per engine): only folders inside the artifact cache that the probe itself compiled."""
    root = os.path.realpath(options.cache.root) if options.cache is not None else None
    for entry in entries:
        path = entry.pop("artifact_path", "")
        if root and path and entry["engine"] != winner and os.path.realpath(path).startswith(root + os.sep):
            try:
                discard(path)  # renamed aside first: no run sees a half-deleted entry
            except OSError:
                pass  # it stays; the cache is still valid, only larger
