"""The probe behind `--engine auto`: each candidate compiled, its first call on the run's first batch checked against
the eager fp32 reference and one call timed; the finalists (within GIVE_UP of the fastest) then timed in turn,
PROBE_ROUNDS rounds, and those whose medians' intervals still overlap the leader's are timed on, interleaved, until
they separate or the tie budget is spent. The lowest median wins, but a candidate whose calls spread widely never wins
over a steady one it cannot be told apart from; a choice still inside the noise is reported as a near tie.
Where the CPU has SMT, the winner is also timed with one thread per physical core."""
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
from pipeline.probe_budget import ProbeBudget, probe_calls, probe_warmups
from pipeline.probe_reason import budget_note, reason
from pipeline.rows import Built
from report.metrics import cosine_per_sample
from utils.device import physical_cores, torch_threads, usable_cpus
from utils.errors import first_line
from utils.timing import UNSTABLE, intervals_overlap, median_interval, median_min_calls
from utils.trace import TRACE

# interleaved calls per finalist after its first timed one: 6 in all, the fewest whose median has a 95 % interval, so
# no finalist is judged (spread, tied) on calls too few to say
PROBE_ROUNDS = median_min_calls() - 1
GIVE_UP = 1.5  # a candidate whose first timed call is this many times the fastest one's is not a finalist
# ... nor one whose first call (one-time work included: 2x a steady call is common) took this many times the fastest
FIRST_CALL_GIVE_UP = 4.0
SETTLE_S = 0.05
"""A pause before each timed probe call: ONNX Runtime's intra-op threads spin for a while after its call returns, and
OpenVINO timed right after it ran 24 % slower here (76 vs 61 ms, UNet 128 px, 2-core Xeon); a 20 ms pause cut that
to 7 %, 50 ms to 4 %. The probe interleaves engines; a row is timed alone."""
TIE_BUDGET_S = 5.0
"""Seconds of interleaved tie rounds at least: two engines within a few % of each other (ONNX Runtime and OpenVINO on
a 2-core CPU) need a dozen calls each before a 95 % interval of a median is narrow enough to part them."""
TIE_ROUNDS = 8
"""... or this many rounds of the tied finalists' calls, if longer: the budget scales with the call time, so a slow
model (UNet 512 on 2 cores, ~2 s a call) still gets the calls an interval needs (13 calls: the 3rd to the 11th)."""
# --auto_budget's default: the probe stops trying engines after this many seconds (issue 19: the README's first
# command within 60 s on a Zen 4, 120 s on a Zen 3)
AUTO_BUDGET_S = 25.0


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
    near_tie: bool = False  # the winner's and the runner-up's median intervals still overlapped when the probe ended
    runner_up: Optional[dict] = None  # the runner-up's candidates entry
    budget_s: Optional[float] = None  # --auto_budget, where the probe ran under one
    not_tried: list[str] = field(default_factory=list)  # candidates the budget left out
    cut: bool = False  # the budget also cut the finalists' rounds short
    builds: dict = field(default_factory=dict)  # build seconds of the engines built now (kept for the next order)

    def describe(self) -> dict:
        """The report's entry (config.auto)."""
        runner = self.runner_up or {}
        return {"precision": self.precision, "engine": self.engine, "threads": self.threads, "source": self.source,
                "reason": self.reason, "candidates": self.candidates, "probe_s": round(self.probe_s, 2),
                "record": self.record, "near_tie": self.near_tie, "runner_up": runner.get("engine"),
                "runner_up_threads": runner.get("threads"), "runner_up_median_ms": runner.get("median_ms"),
                "budget_s": self.budget_s, "not_tried": list(self.not_tried)}


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
class FirstCall:
    """The reference's call on the probe's batch, when it was the CPU model's first call on it: its seconds and the
    torch threads it ran with. Eager torch at fp32 on the CPU calls that very model, so its probe takes this call as
    its own first call instead of making the same call again (7 s of a UNet 512 on a 2-core AVX2 CPU)."""

    seconds: float
    threads: int


@dataclass(frozen=True)
class ProbeInput:
    """The probe's input, a real batch with `n` real images, and the eager fp32 reference's logits for it."""

    batch: torch.Tensor
    n: int
    reference: torch.Tensor
    first_call: Optional[FirstCall] = None


@dataclass
class _Finalist:
    entry: dict
    engine: Engine
    inputs: object
    first_call_s: float
    threads: Optional[int]
    times: list = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def interval(self) -> list[float]:
        """The median's 95 % interval (utils.timing.median_interval); with too few calls for one (a lone finalist's
        one call), the calls' range."""
        return median_interval(self.times) or [min(self.times), max(self.times)]

    @property
    def spread(self) -> bool | None:
        """Whether the calls spread too widely for their median to be trusted: the median's 95 % interval is wider
        than UNSTABLE of it each way (rows[].unstable's rule). Two modes (OpenVINO at 630 or 1,200 ms by turns) do
        that as soon as both appear in the middle of the calls. With 6 to 8 calls the interval is their whole range, so
        one slow call marks a finalist spread until the tie rounds add calls; a spread finalist only gives way to a
        steady one inside its interval. None: too few calls."""
        interval = median_interval(self.times)
        return None if interval is None else (interval[1] - interval[0]) / 2.0 > UNSTABLE * self.median


def _timed_call(engine: Engine, inputs, threads: int | None) -> float:
    """Milliseconds per batch of one call, timed as the row's timing pass times it (`run_parallel` where the engine
    has one: `parallel` batches per call), the device synchronised, torch's intra-op threads at `threads`."""
    call = engine.run_parallel or engine.run
    time.sleep(SETTLE_S)  # the engine timed before this one may still spin its threads
    with torch_threads(threads):
        start = time.perf_counter()
        call(inputs)
        engine.synchronize()
        return (time.perf_counter() - start) * 1000.0 / engine.parallel


def probe(name: str, target: Target, given: ProbeInput, best_ms: float | None = None) -> tuple[dict, _Finalist | None]:
    """Compile one candidate, make its untimed calls (probe_budget.probe_warmups), check the first one's
    output against the reference, time one call; (its report entry, a finalist to time further, or None when it
    failed or missed the bar).

    A candidate whose first call already took FIRST_CALL_GIVE_UP x `best_ms` (the fastest timed call so far) stops
    there: a first call carries one-time work, hence the wider margin than GIVE_UP."""
    options, precision = target.options, target.precision
    entry: dict = {"engine": name, "threads": options.threads, "median_ms": None, "median_ci_ms": None, "spread": None,
                   "cosine_min": None, "compile_s": 0.0, "first_call_ms": None, "note": ""}
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
            entry["built_now"] = engine.artifact.startswith("compiled") or engine.artifact == "eager"
            inputs = engine.prepare(given.batch)
            made = given.first_call
            if engine.is_reference and made is not None and made.threads == torch.get_num_threads():
                raw, first_call_s = given.reference, made.seconds  # the reference's call was this engine's first
            else:
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
            for _ in range(probe_warmups(name) - 1):
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


def _probe_all(target: Target, names: list[str], given: ProbeInput, log: Callable[[str], None],
               budget: ProbeBudget | None = None):
    """Probe each candidate (one timed call each) while `budget` allows, then the leader again with one thread per
    physical core where that differs and time is left; (every entry, the finalists left)."""
    entries, finalists = [], []
    for name in names:
        fastest = min((f.times[0] for f in finalists), default=None)
        if budget is not None and not budget.fits(name, fastest):
            continue
        log(f"auto {target.precision}: probing {name} ...")
        if budget is not None:
            budget.step(f"auto {target.precision}: probing {name}")
        entry, finalist = probe(name, target, given, fastest)
        entries.append(entry)
        if finalist is not None:
            finalists = _prune(finalists + [finalist])
        gc.collect()  # an engine dropped from the finalists frees its memory before the next one compiles
    if finalists:
        leader = min(finalists, key=lambda f: f.times[0])
        calls = probe_calls(leader.entry["engine"])
        more = budget is None or budget.round_fits(calls * leader.times[0] / 1000.0)
        for count in thread_candidates(target.device, target.options) if more else []:
            log(f"auto {target.precision}: probing {leader.entry['engine']} with {count} threads ...")
            threaded = replace(target, options=replace(target.options, threads=count))
            # the reference's call was the leader's first already: this one makes its own, on a warm model
            entry, finalist = probe(leader.entry["engine"], threaded, replace(given, first_call=None), leader.times[0])
            entries.append(entry)
            if finalist is not None:
                finalists = _prune(finalists + [finalist])
    return entries, finalists


def _time_finalists(finalists: list[_Finalist], log: Callable[[str], None], precision: str,
                    budget: ProbeBudget | None = None) -> None:
    """Time the finalists round-robin, PROBE_ROUNDS calls each (fewer where `budget` runs out first), so a busy spell
    on a shared machine hits them all."""
    if len(finalists) > 1:
        log(f"auto {precision}: timing {', '.join(f.entry['engine'] for f in finalists)} in turn ...")
        round_s = sum(f.times[0] * f.engine.parallel for f in finalists) / 1000.0
        for _ in range(PROBE_ROUNDS):
            if budget is not None and not budget.round_fits(round_s):
                break
            for f in finalists:
                f.times.append(_timed_call(f.engine, f.inputs, f.threads))


def _ranked(finalists: list[_Finalist]) -> list[_Finalist]:
    """Lowest median first, except that a leader whose calls spread widely goes behind the fastest steady finalist
    whose median lies inside the leader's 95 % interval: a lucky run of calls in its fast mode must not win against a
    steady engine the calls cannot tell apart from it (the row would time both modes). A steady median above that
    interval is slower whatever the spread (trial 4 of issue 18's check, under load: a spread OpenVINO at 175 ms,
    [158, 186], against a steady ONNX Runtime at 189 ms, whose row then ran 0.87x of OpenVINO's)."""
    ranked = sorted(finalists, key=lambda f: f.median)
    lead = ranked[0]
    if lead.spread:
        steady = [f for f in ranked[1:] if f.spread is False and f.median <= lead.interval[1]]
        if steady:
            ranked.remove(steady[0])
            ranked.insert(0, steady[0])
    return ranked


def _tied(finalists: list[_Finalist]) -> list[_Finalist]:
    """The leader and the finalists whose medians' intervals overlap its own (just the leader when none does)."""
    ranked = _ranked(finalists)
    return [ranked[0]] + [f for f in ranked[1:] if intervals_overlap(f.interval, ranked[0].interval)]


def _settle(finalists: list[_Finalist], budget_s: float | None, log: Callable[[str], None], precision: str,
            cap_s: float | None = None) -> int:
    """Time the leader and the finalists tied with it interleaved, one call each a round, until no interval overlaps
    the leader's or the next round would overrun `budget_s` seconds (None: TIE_BUDGET_S, or TIE_ROUNDS rounds if
    longer); the rounds made. Interleaving puts a busy spell or a turbo step on every contender alike."""
    tied, rounds, start = _tied(finalists) if finalists else [], 0, time.perf_counter()
    if len(tied) < 2:
        return 0
    next_s = sum(f.median * f.engine.parallel for f in tied) / 1000.0  # the first round's cost, from the medians
    budget_s = max(TIE_BUDGET_S, TIE_ROUNDS * next_s) if budget_s is None else budget_s
    budget_s = budget_s if cap_s is None else min(budget_s, cap_s)  # --auto_budget's time left
    if budget_s < next_s:
        return 0
    log(f"auto {precision}: {', '.join(f.entry['engine'] for f in tied)} within each other's noise: timing them "
        f"interleaved for up to {budget_s:.0f} s ...")
    while len(tied) > 1 and time.perf_counter() - start + next_s <= budget_s:
        began = time.perf_counter()
        for f in tied:
            f.times.append(_timed_call(f.engine, f.inputs, f.threads))
        next_s, rounds = time.perf_counter() - began, rounds + 1
        tied = _tied(finalists)
    return rounds


def _describe(finalists: list[_Finalist]) -> None:
    """Each finalist's figures in its report entry."""
    for f in finalists:
        spread = f.spread
        f.entry.update(median_ms=f.median, calls=len(f.times), spread=spread,
                       median_ci_ms=None if spread is None else [round(v, 2) for v in f.interval])


def _runner_up(ranked: list[_Finalist], entries: list[dict]) -> dict | None:
    """The best-ranked finalist still tied with the winner, else the second finalist, else the fastest other candidate
    that was timed at all (its one call)."""
    if len(ranked) > 1:
        return next((f for f in ranked[1:] if intervals_overlap(f.interval, ranked[0].interval)), ranked[1]).entry
    others = [e for e in entries if e["median_ms"] is not None and e is not ranked[0].entry]
    return min(others, key=lambda e: e["median_ms"], default=None)


def measure(target: Target, names: list[str], given: ProbeInput, log: Callable[[str], None] = lambda line: None,
            tie_budget_s: float | None = None, budget: ProbeBudget | None = None) -> Choice:
    """Probe the candidate engines `names` in turn while `budget` (--auto_budget; None: no limit) allows, time the
    finalists in turn, then the tied ones interleaved for up to `tie_budget_s` seconds (None: the default tie budget,
    see _settle), within what `budget` has left; the lowest median that passed the bar wins, a steady engine over a
    spread one it ties with (the static order when none passed)."""
    start = time.perf_counter()
    entries, finalists = _probe_all(target, names, given, log, budget)
    _time_finalists(finalists, log, target.precision, budget)
    _settle(finalists, tie_budget_s, log, target.precision, None if budget is None else max(0.0, budget.left()))
    _describe(finalists)
    ranked = _ranked(finalists) if finalists else []
    winner = ranked[0].entry["engine"] if ranked else engines.default_engine(target.device, target.precision)
    _discard_losers(entries, winner, target.options)
    builds = {e["engine"]: e["compile_s"] for e in entries if e.pop("built_now", False)
              and e["threads"] == target.options.threads}
    probe_s = time.perf_counter() - start
    TRACE.record(f"auto probe {target.precision}", start, start + probe_s, {"engines": ", ".join(names)})
    if not ranked:
        choice = static_choice(target, "no candidate passed the probe", entries, probe_s)
    else:
        best, runner = ranked[0], _runner_up(ranked, entries)
        near_tie = any(intervals_overlap(best.interval, f.interval) for f in ranked[1:])
        # the budget stopped the rounds before the calls could hold a 95 % interval: nothing parted them
        near_tie = near_tie or (budget is not None and budget.cut and len(ranked) > 1
                                and len(best.times) < median_min_calls())
        handed = best.threads == target.options.threads  # else the row builds its engine with the chosen threads
        built = Built(best.engine, best.entry["compile_s"], best.first_call_s) if handed else None
        choice = Choice(best.entry["engine"], target.precision, "measured", best.threads, entries,
                        reason(ranked, runner, near_tie, target.precision), probe_s=probe_s, built=built,
                        near_tie=near_tie, runner_up=runner)
    choice.builds = builds
    if budget is not None:
        choice.budget_s, choice.not_tried, choice.cut = budget.total_s, list(budget.not_tried), budget.cut
        choice.reason += budget_note(budget, len(ranked[0].times) if ranked else 0)
    return choice


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
