"""Every engine row on every rank of a torchrun job, and rank 0's merge of the ranks' parts into the row one process
would have made: per-image scores back in one-process order (utils/shards.py), e2e time from the first rank's start to
the last rank's end, model fps summed over the ranks, a row that failed on any rank failed. `world` is a
pipeline.distributed.World (its syncs, its description of the ranks, the one-process order)."""
from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import replace
from types import SimpleNamespace
from typing import Callable

from engines.base import EngineOptions
from pipeline import rows
from pipeline.passes import PassResult
from report.outputs import Outputs, RowOutputs
from utils.data import Batch
from utils.shards import in_order, merge_accuracy
from utils.timing import SPLIT, summarize


def _stamped(batches: Callable[[], Iterable[Batch]], stamps: dict) -> Callable[[], Iterable[Batch]]:
    """`batches` that notes the wall clock when the accuracy pass asks for its first batch (its start)."""
    def make():
        stamps["start"] = time.time()
        yield from batches()
    return make


def run_rows(world, plan: list[tuple[str, str]], job: rows.Job, options: EngineOptions,
             outputs: Outputs | None = None, loaded: dict | None = None,
             row_options: dict | None = None) -> rows.RowsResult:
    """rows.run_rows, every row on every rank, each on its shard; after each row rank 0 merges the ranks' parts into
    the one-process row (elsewhere the result is empty). A row that failed on any rank fails, with that rank's reason;
    Ctrl-C stops every rank after the row it cut short."""
    merged = rows.RowsResult()
    loaded = dict(loaded or {})
    for name, precision in plan:
        key = (name, precision)
        passes, stamps = {}, {}
        part = rows.RowsResult(interrupted=True)
        try:
            if not world.interrupted:
                rank_job = replace(job, batches=_stamped(job.batches, stamps), passes=passes)
                built = {key: loaded.pop(key)} if key in loaded else None
                part = rows.run_rows([key], rank_job, options, outputs, built, row_options)
        except KeyboardInterrupt:
            world.interrupted = True
        with world.holding():  # from here to the next row a Ctrl-C is noted: the ranks stop after this row
            states, parts = _exchange(world, key, part, passes.get(key, (None, None)), stamps.get("start"), outputs)
            if parts is not None:
                row, skip = merge_row(world, parts, name, precision)
                merged.rows.extend([row] if row else [])
                merged.skipped.extend([skip] if skip else [])
        if any(s[2] for s in states):
            merged.interrupted = True
            break
    return merged


def _exchange(world, key: tuple[str, str], part: rows.RowsResult, passed: tuple, start: float | None,
              outputs: Outputs | None) -> tuple[list, list | None]:
    """After a row: every rank's (failed, skipped, interrupted), and on rank 0 every rank's part of the row."""
    name, precision = key
    result, row_outputs = passed
    if result is not None:
        result.timing_batch = None  # a tensor the merge does not need
    row = dict(part.rows[0]) if part.rows else None
    if row is not None:
        row.pop("per_image", None)  # the pass holds the same lists
    payload = {"rank": world.rank, "row": row, "skipped": part.skipped, "result": result, "outputs": row_outputs,
               "start": start}
    failed = any(s.get("failed") for s in part.skipped)
    states = world.sync(f"row {name} {precision}", (failed, bool(part.skipped), part.interrupted or world.interrupted))
    if outputs is not None and (any(s[0] for s in states) or len({s[1] for s in states}) > 1):
        outputs.discard(name, precision)  # failed somewhere: the next row writes the files, on every rank
    return states, world.gather(f"row {name} {precision}", payload)


def merge_row(world, parts: list[dict], name: str, precision: str) -> tuple[dict | None, dict | None]:
    """(the one-process row, or a skipped / failed entry) from every rank's part of one row."""
    failed = [(p, s) for p in parts for s in p["skipped"] if s.get("failed")]
    skipped = [(p, s) for p in parts for s in p["skipped"] if not s.get("failed")]
    if failed or (skipped and len(skipped) < len(parts)):
        p, s = (failed or skipped)[0]
        others = len(failed or skipped) - 1
        reason = f"{world.describe(p['rank'])}: {s['reason']}" + (f" (and {others} other rank(s))" if others else "")
        if not failed:
            reason += "; the other ranks ran it, so the row would cover part of the data"
        return None, {"engine": name, "precision": precision, "reason": reason, "failed": True}
    if skipped:
        return None, skipped[0][1]  # every rank skipped it alike: as one process would
    done = [p for p in parts if p["row"] is not None and p["result"] is not None]
    if not done:
        return None, None  # Ctrl-C before any rank had built it
    result, outputs = _merge_pass(world, done)
    first = done[0]["row"]
    engine = SimpleNamespace(name=first["engine"], device=first["device"], precision=first["precision"],
                             artifact=_artifact([p["row"]["artifact"] for p in done]),
                             artifact_path=first["artifact_path"], timed=first["timed_region"],
                             levers=tuple(first.get("levers", ())))
    row = rows.make_row(engine, max(p["row"]["compile_s"] for p in done), result, _merge_timing(done), outputs)
    row["device"] = f"{first['device'].split(':')[0]} x{world.size}"
    start = min((p["start"] for p in done if p["start"] is not None), default=0.0)
    row["ranks"] = [{"rank": p["rank"], "host": world.ranks[p["rank"]]["host"], "device": p["row"]["device"],
                     "images": p["row"]["images"], "compile_s": p["row"]["compile_s"], "artifact": p["row"]["artifact"],
                     "first_call_ms": p["row"]["first_call_ms"], "fps": p["row"].get("fps"),
                     "latency_median_ms": p["row"].get("latency_median_ms"), "e2e_s": p["row"]["e2e_s"],
                     "e2e_fps": p["row"]["e2e_fps"],
                     "start_s": None if p["start"] is None else p["start"] - start} for p in done]
    return row, None


def _merge_pass(world, done: list[dict]) -> tuple[PassResult, RowOutputs | None]:
    """One PassResult in the one-process order; e2e time = from the first rank's start to the last rank's end."""
    results = [p["result"] for p in done]
    accuracy = merge_accuracy([r.accuracy for r in results], world.order)
    extra = {i: (r.batch_ms[k], r.sizes[k]) for r in results for k, i in enumerate(r.accuracy.ids)}
    spans = [(p["start"], p["start"] + p["result"].e2e_s) for p in done if p["result"].images and p["start"] is not None]
    first_calls = [r.first_call_s for r in results if r.first_call_s is not None]
    merged = PassResult(accuracy, e2e_s=max(e for _, e in spans) - min(s for s, _ in spans) if spans else 0.0,
                        first_call_s=max(first_calls) if first_calls else None,
                        failed=in_order([f for r in results for f in r.failed], lambda f: f[0], world.order),
                        batch_ms=[extra[i][0] for i in accuracy.ids], sizes=[extra[i][1] for i in accuracy.ids],
                        interrupted=any(r.interrupted for r in results),
                        split={key: sum(r.split.get(key, 0.0) for r in results) for key in SPLIT})  # rank-seconds
    outs = [p["outputs"] for p in done if p["outputs"] is not None]
    if not outs:
        return merged, None
    scores = [o.scores for o in outs if o.scores is not None]
    return merged, RowOutputs(max(o.seconds for o in outs), merge_accuracy(scores, world.order) if scores else None)


def _merge_timing(done: list[dict]) -> dict | None:
    """Latency statistics over every rank's timed calls; fps = the sum of the ranks' model fps (each rank timed its
    own device)."""
    timed = [p["row"] for p in done if p["row"].get("calls")]
    if not timed:
        return None
    latencies = [ms for r in timed for ms in r["latencies_ms"]]
    per_call = max(1, round(timed[0]["fps"] * timed[0]["timed_s"] / timed[0]["calls"]))
    timing = summarize([ms / 1000.0 for ms in latencies], per_call)
    timing.update(latencies_ms=latencies, fps=sum(r["fps"] for r in timed))
    return timing


def _artifact(states: list[str]) -> str:
    """'loaded', or 'compiled x1, loaded x3' when the ranks differ (one rank per host builds, the others load)."""
    unique = list(dict.fromkeys(states))
    return unique[0] if len(unique) == 1 else ", ".join(f"{s} x{states.count(s)}" for s in unique)
