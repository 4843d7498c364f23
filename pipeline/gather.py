"""Rank 0's merge of every rank's part of a row into the row one process would have made: per-image scores back in
one-process order (dataset/shards.py), e2e time from the first rank's start to the last rank's end, model fps summed
over the ranks, a row that failed on any rank failed."""
from __future__ import annotations

import dataclasses

from dataset.shards import in_order
from pipeline.passes import PassResult
from pipeline.rows import PlannedRow, RowResult, RowsResult
from report.metrics import merge_accuracy
from report.outputs import Outputs, RowOutputs
from report.results import RankPart, Skip
from utils.timing import SPLIT, Split, Timing, summarize


class Gather:
    """The merge of pipeline.distributed.World, which holds what it uses: rank, size, ranks (their descriptions),
    order (sample id -> one-process index), interrupted, and the syncs (`sync`, `gather`, `holding`, `describe`)."""

    def merge(self, row: PlannedRow, part: RowsResult, outputs: Outputs | None) -> RowsResult:
        """After each row, on every rank: the one-process row on rank 0 (nothing elsewhere), interrupted when any
        rank was (every rank then stops)."""
        merged = RowsResult()
        with self.holding():  # from here to the next row a Ctrl-C is noted: the ranks stop after this row
            states, parts = self._exchange(row, part, outputs)
            if parts is not None:
                self._merge_parts(row, parts, merged)
        merged.interrupted = any(s[2] for s in states)
        return merged

    def _exchange(self, row: PlannedRow, part: RowsResult, outputs: Outputs | None) -> tuple[list, list | None]:
        """Every rank's (failed, skipped, interrupted), and on rank 0 every rank's part of the row."""
        failed = any(s.failed for s in part.skipped)
        interrupted = part.interrupted or self.interrupted
        states = self.sync(f"row {row.label}", (failed, bool(part.skipped), interrupted))
        if outputs is not None and (any(s[0] for s in states) or len({s[1] for s in states}) > 1):
            outputs.discard(row.engine, row.precision)  # failed somewhere: the next row writes the files, on every rank
        payload = {"rank": self.rank, "result": part.results[0] if part.results else None, "skipped": part.skipped}
        return states, self.gather(f"row {row.label}", payload)

    def _merge_parts(self, row: PlannedRow, parts: list[dict], merged: RowsResult) -> None:
        """The one-process row, or a skipped / failed entry, from every rank's part of one row, into `merged`."""
        failed = [(p, s) for p in parts for s in p["skipped"] if s.failed]
        skipped = [(p, s) for p in parts for s in p["skipped"] if not s.failed]
        if failed or (skipped and len(skipped) < len(parts)):
            p, s = (failed or skipped)[0]
            others = len(failed or skipped) - 1
            reason = f"{self.describe(p['rank'])}: {s.reason}" + (f" (and {others} other rank(s))" if others else "")
            if not failed:
                reason += "; the other ranks ran it, so the row would cover part of the data"
            merged.skipped.append(Skip(row.engine, row.precision, reason, failed=True))
        elif skipped:
            merged.skipped.append(skipped[0][1])  # every rank skipped it alike: as one process would
        else:
            done = [(p["rank"], p["result"]) for p in parts if p["result"] is not None]
            if done:  # none: Ctrl-C before any rank had built it
                merged.results.append(self._merge_results(done))

    def _merge_results(self, done: list[tuple[int, RowResult]]) -> RowResult:
        """One RowResult from every rank's: facts of the first (the device as 'cpu x2', the artifact states counted),
        the slowest compile, the merged pass, timing and outputs, and each rank's part."""
        results = [r for _, r in done]
        first = results[0].facts
        passed = self._merge_pass(results)
        facts = dataclasses.replace(first, device=f"{first.device.split(':')[0]} x{self.size}",
                                    artifact=_artifact([r.facts.artifact for r in results]))
        ranks = [RankPart(rank=k, host=self.ranks[k]["host"], device=r.facts.device, images=r.passed.images,
                          compile_s=r.compile_s, artifact=r.facts.artifact,
                          first_call_ms=None if r.passed.first_call_s is None else r.passed.first_call_s * 1000.0,
                          fps=r.timing.fps if r.timing else None,
                          latency_median_ms=r.timing.latency_median_ms if r.timing else None,
                          e2e_s=r.passed.e2e_s, e2e_fps=r.passed.e2e_fps, start_s=r.passed.started - passed.started)
                 for k, r in done]
        return RowResult(facts, max(r.compile_s for r in results), passed, _merge_timing(results),
                         self._merge_outputs(results), ranks)

    def _merge_pass(self, results: list[RowResult]) -> PassResult:
        """One PassResult in the one-process order; e2e time = from the first rank's start to the last rank's end;
        the time split in rank-seconds."""
        passes = [r.passed for r in results]
        accuracy = merge_accuracy([p.accuracy for p in passes], self.order)
        extra = {i: (p.batch_ms[k], p.sizes[k]) for p in passes for k, i in enumerate(p.accuracy.ids)}
        spans = [(p.started, p.started + p.e2e_s) for p in passes if p.images]
        first_calls = [p.first_call_s for p in passes if p.first_call_s is not None]
        split = Split({key: sum(p.split.seconds.get(key, 0.0) for p in passes) for key in SPLIT})
        return PassResult(accuracy, e2e_s=max(e for _, e in spans) - min(s for s, _ in spans) if spans else 0.0,
                          first_call_s=max(first_calls) if first_calls else None,
                          failed=in_order([f for p in passes for f in p.failed], lambda f: f[0], self.order),
                          converted=[c for p in passes for c in p.converted],
                          batch_ms=[extra[i][0] for i in accuracy.ids], sizes=[extra[i][1] for i in accuracy.ids],
                          interrupted=any(p.interrupted for p in passes), split=split,
                          started=min(p.started for p in passes))

    def _merge_outputs(self, results: list[RowResult]) -> RowOutputs | None:
        outs = [r.outputs for r in results if r.outputs is not None]
        if not outs:
            return None
        scores = [o.scores for o in outs if o.scores is not None]
        return RowOutputs(max(o.seconds for o in outs), merge_accuracy(scores, self.order) if scores else None)


def _merge_timing(results: list[RowResult]) -> Timing | None:
    """Latency statistics over every rank's timed calls; fps = the sum of the ranks' model fps (each rank timed its
    own device)."""
    timed = [r.timing for r in results if r.timing is not None and r.timing.calls]
    if not timed:
        return None
    latencies = [ms for t in timed for ms in t.latencies_ms]
    per_call = max(1, round(timed[0].fps * timed[0].timed_s / timed[0].calls))
    percentiles = [p.percentile for p in timed[0].latency_percentiles]
    loads = [t.load_average for t in timed if t.load_average is not None]
    timing = summarize([ms / 1000.0 for ms in latencies], per_call, percentiles, max(loads) if loads else None)
    return dataclasses.replace(timing, latencies_ms=latencies, fps=sum(t.fps for t in timed))


def _artifact(states: list[str]) -> str:
    """'loaded', or 'compiled x1, loaded x3' when the ranks differ (one rank per host builds, the others load)."""
    unique = list(dict.fromkeys(states))
    return unique[0] if len(unique) == 1 else ", ".join(f"{s} x{states.count(s)}" for s in unique)
