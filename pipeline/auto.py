"""`--engine auto`: the fastest engine installed here whose output passes the fidelity bar, measured on this device at
the run's shape and precision, and kept for this machine, package versions, model, shape and precision.

The probe compiles each candidate into the artifact cache (the chosen row then loads it), checks its first call on the
run's first batch against the eager fp32 reference and times one call; the finalists are then timed in turn. `--auto
static` (the default with `--no_cache`, which could not keep the choice) takes engines.default_engine's fixed order.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import json
import math
import os
import sys
import time
from typing import Callable

import torch

import engines
from engines.base import EngineOptions
from engines.cache import key_digest
from pipeline.passes import Reference
from pipeline.probe import Choice, FirstCall, ProbeInput, Target, measure, static_choice
from pipeline.probe_budget import ProbeBudget, costs_path, expected_build_s, keep_costs, probe_order, read_costs
from pipeline.rows import Job, PlannedRow
from utils.device import describe_host, usable_cpus
from utils.errors import first_line
from utils.files import write_atomic

RECORD_VERSION = 1


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


def choice_key(target: Target, names: list[str]) -> dict:
    """Everything a measured choice depends on: the device (CPU model and ISA flags, or the accelerator's name), the
    package versions, the model (its weights digest), the shape, the precision and the options that change speed."""
    versions = {"torch": torch.__version__}
    for name in names:
        package = getattr(engines.module_of(name), "PACKAGE", None)
        if package:
            versions[package] = package_version(package)
    device, options, precision = target.device, target.options, target.precision
    return {"version": RECORD_VERSION, "device": device.type, "host": describe_host(device), "cpus": usable_cpus(),
            "versions": versions, "model": target.model_id, "shape": list(target.shape), "precision": precision,
            "threads": options.threads, "openvino_hint": options.openvino_hint,
            "openvino_device": options.openvino_device, "calibration": options.calibration.key
            if options.calibration and precision == "int8" else None,
            "levers": [options.channels_last, options.cudnn_benchmark, options.cuda_graphs]}


def _record_path(options: EngineOptions, key: dict) -> str | None:
    if options.cache is None:
        return None
    return os.path.join(options.cache.root, "auto", f"{key['precision']}-{key_digest(key)}.json")


def _read_record(path: str | None, key: dict, device: torch.device) -> dict | None:
    """The kept choice for `key`, or None (absent, unreadable, for another key, or its engine no longer runs). A record
    kept before `complete` was written counts as complete unless it names engines not tried."""
    if path is None or not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
        if record.get("key") != key or engines.missing(record["engine"], device) is not None:
            return None
        record["not_tried"] = [str(name) for name in record.get("not_tried") or []]
        record["cut"] = bool(record.get("cut"))
        record["complete"] = bool(record.get("complete", not (record["not_tried"] or record["cut"])))
        record["budget_s"] = None if record.get("budget_s") is None else float(record["budget_s"])
        return record
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # a damaged record is measured again and rewritten


def _outgrown(record: dict, budget: ProbeBudget | None) -> bool:
    """Whether a kept choice was made under a budget too small to finish (engines not tried, rounds cut) and this run
    may finish it: its budget is larger (None: no limit). On a loaded machine the first run's choice could otherwise
    be eager torch for ever."""
    if record["complete"]:
        return False
    return budget is None or record["budget_s"] is None or budget.total_s > record["budget_s"]


def _shortfall(record: dict) -> str:
    """What an incomplete kept choice missed: 'it left out a, b', 'its finalists' rounds were cut short', or both."""
    said = [f"it left out {', '.join(record['not_tried'])}"] if record["not_tried"] else []
    return " and ".join(said + (["its finalists' rounds were cut short"] if record["cut"] else []))


def _incomplete_note(record: dict, known: dict[str, float]) -> str:
    """The reason's words for a reused choice the budget cut short: what it missed, and how to measure again (a larger
    --auto_budget, enough for the builds it left out as measured here, else as typical; or an emptied cache)."""
    budget_s = record["budget_s"] or 0.0
    extra = sum(expected_build_s(name, known) for name in record["not_tried"])
    larger = math.ceil((budget_s + max(extra + (budget_s if record["cut"] else 0.0), 5.0)) / 5.0) * 5
    return (f"; incomplete: within the --auto_budget of {budget_s:g} s {_shortfall(record)}; to measure again, run "
            f"with a larger budget (e.g. --auto_budget {larger:g}) or empty the cache (python sample.py --clear_cache)")


def _settled(record: dict) -> list[dict]:
    """The earlier probe's entries a re-measure need not build again: engines that did not compile or missed the
    fidelity bar. The key they were measured under still holds (same packages, model, shape, precision), so they
    would fail again; the engines that were timed are timed again, since timings from another run do not compare."""
    entries = [e for e in record.get("candidates") or [] if isinstance(e, dict) and "engine" in e]
    failed = {e["engine"] for e in entries if str(e.get("note", "")).startswith(("did not compile", "below the"))}
    failed -= {e["engine"] for e in entries if e.get("median_ms") is not None}
    return [dict(e, note=f"{e['note']} (in the earlier probe; not built again)") for e in entries
            if e["engine"] in failed]


def _kept(record: dict, path: str | None, precision: str, known: dict[str, float]) -> Choice:
    """The choice a record keeps; its reason says when a budget cut the probe short, and how to measure again."""
    note = "" if record["complete"] else _incomplete_note(record, known)
    return Choice(record["engine"], precision, "cached", record.get("threads"), record.get("candidates", []),
                  f"measured on {record.get('measured', '?')}: {record.get('reason', '')}{note}", record=path or "",
                  near_tie=record.get("near_tie", False), runner_up=record.get("runner_up"),
                  budget_s=record["budget_s"], not_tried=list(record["not_tried"]), cut=record["cut"])


def choose(target: Target, first_input: Callable[[], ProbeInput], mode: str = "measure",
           log: Callable[[str], None] = lambda line: None, budget: ProbeBudget | None = None) -> Choice:
    """The engine for `target`: kept from an earlier measurement, measured now within `budget` (--auto_budget; None:
    no limit), or (mode 'static') the fixed order. `first_input()` gives the probe's batch and its reference logits;
    it is called only when a probe runs. A kept choice the budget cut short (engines not tried, rounds cut) is measured
    again under a larger budget, without building again the engines that failed; a budget no larger reuses it."""
    if mode == "static":
        return static_choice(target, "--auto static, or --no_cache, which could not keep a measured choice")
    names = candidates(target.device, target.precision)
    key = choice_key(target, names)
    path = _record_path(target.options, key)
    costs = None if target.options.cache is None else \
        costs_path(target.options.cache.root, key["host"], target.device.type)
    record, settled = _read_record(path, key, target.device), []
    if record is not None and _outgrown(record, budget):
        log(f"auto {target.precision}: the kept choice, {record['engine']}, is incomplete: within the --auto_budget "
            f"of {record['budget_s'] or 0:g} s {_shortfall(record)}; measuring again "
            f"{'with no time limit' if budget is None else f'within {budget.total_s:g} s'}")
        settled, record = _settled(record), None
        names = [name for name in names if name not in {e["engine"] for e in settled}]
    if record is not None:
        return _kept(record, path, target.precision, read_costs(costs))
    if not names:
        return static_choice(target, f"no installed engine runs {target.precision} on {target.device.type}")
    start = time.perf_counter()  # the probe's time holds the reference's call, as its budget does
    say = _begin(target, budget, log)
    try:
        given = first_input()
    except Exception as exc:  # noqa: BLE001  the rows meet the same failure and report it as theirs
        if budget is not None:
            budget.end()
        return static_choice(target, f"the probe could not run the eager fp32 reference "
                               f"({type(exc).__name__}: {first_line(exc)})")
    choice = _probe(target, names, given, say, budget, costs)
    choice.probe_s = time.perf_counter() - start
    choice.candidates.extend(settled)
    if path and choice.source == "measured":
        _keep(path, key, choice)
    return choice


def _begin(target: Target, budget: ProbeBudget | None, log: Callable[[str], None]) -> Callable[[str], None]:
    """Say what the probe is, and start its clock and progress bar, before the reference's call on the first batch (a
    UNet 512's takes seconds on a small CPU, and the budget holds it); `log` for the probe's lines, above the bar."""
    if budget is None:
        return log
    log(f"auto {target.precision}: finding the fastest engine here, once per machine, model, shape and precision "
        f"(then kept in the cache); up to about {budget.total_s:g} s (--auto_budget). --engine torch, or any "
        "engine named, skips this")
    budget.begin(f"auto {target.precision}")
    budget.step(f"auto {target.precision}: the eager fp32 reference")
    return budget.wrap(log)


def _probe(target: Target, names: list[str], given: ProbeInput, say: Callable[[str], None],
           budget: ProbeBudget | None, costs: str | None) -> Choice:
    """Measure `names` within `budget` (begun by _begin), cheapest build here first, the probe's lines said with `say`;
    the build seconds measured are kept in `costs` for the next run's order."""
    if budget is not None:
        budget.known = read_costs(costs)
        names = probe_order(names, budget.known)
    try:
        choice = measure(target, names, given, say, budget=budget)
    finally:
        if budget is not None:
            budget.end()
    keep_costs(costs, choice.builds)
    return choice


def _keep(path: str, key: dict, choice: Choice) -> None:
    """Keep a measured choice for the next run (which then decides at once), with whether the budget let the probe
    finish: a later run with a larger budget measures an incomplete one again."""
    record = {"key": key, "engine": choice.engine, "threads": choice.threads, "reason": choice.reason,
              "candidates": choice.candidates, "near_tie": choice.near_tie, "runner_up": choice.runner_up,
              "budget_s": choice.budget_s, "not_tried": choice.not_tried, "cut": choice.cut,
              "complete": not (choice.not_tried or choice.cut), "measured": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_atomic(path, json.dumps(record, indent=1).encode())
        choice.record = path
    except Exception as exc:  # noqa: BLE001  the choice still applies to this run; the next one measures again
        print(f"warning: could not keep the auto choice in {path}: {first_line(exc)}", file=sys.stderr)


def resolve(plan: list[PlannedRow], job: Job, mode: str = "measure",
            log: Callable[[str], None] = lambda line: None,
            budget_s: float | None = None) -> tuple[list[PlannedRow], list[Choice]]:
    """The plan with each 'auto' row's engine chosen (its threads, and the probe's build of it, filled in), and the
    choices made; each precision's probe within `budget_s` seconds (--auto_budget; None: no limit)."""
    options = job.options
    model_id = options.cache.digest(job.model) if options.cache is not None and mode != "static" else ""
    first_input = _first_input(job)
    resolved, choices = [], []
    for row in plan:
        if row.engine != "auto":
            resolved.append(row)
            continue
        target = Target(job.model, model_id, job.shape, job.device, row.precision, options)
        budget = None if budget_s is None else ProbeBudget(budget_s, show=job.show_progress)
        choice = choose(target, first_input, mode, log, budget)
        choices.append(choice)
        resolved.append(PlannedRow(choice.engine, row.precision, choice.threads, choice.built))
        choice.built = None  # the row owns the engine now
    return resolved, choices


def _first_input(job: Job) -> Callable[[], ProbeInput]:
    """The probe's input, made once for every precision: the run's first real batch (noise when nothing decodes: the
    rows will report the images) and the reference's logits for it."""
    made: list[ProbeInput] = []
    reference = job.reference or Reference(job.model)

    def first_input() -> ProbeInput:
        if not made:
            found = _first_batch(job)
            if found is None:
                batch, n, ran = torch.rand(job.shape), job.shape[0], True
                start = time.perf_counter()
                with torch.inference_mode():
                    logits = job.model(batch)
            else:
                batch, n = found.images, found.n
                ran = not all(i in reference.cache for i in found.ids)  # else no model call to take as one
                start = time.perf_counter()
                logits = reference(found.ids, found)
            seconds = time.perf_counter() - start
            # the CPU model's first call on this batch: eager torch's own first call at fp32 (probe.py)
            first = FirstCall(seconds, torch.get_num_threads()) if ran and reference.device.type == "cpu" else None
            made.append(ProbeInput(batch, n, logits.cpu(), first))
        return made[0]

    return first_input


def _first_batch(job: Job):
    """The first batch with a real image, or None."""
    batches = job.batches()
    try:
        return next((batch for batch in batches if batch.n), None)
    finally:
        close = getattr(batches, "close", None)
        if close:
            close()
