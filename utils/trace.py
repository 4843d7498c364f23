"""The run on a timeline (`--trace PATH`): spans in the Chrome trace-event format (Perfetto, chrome://tracing).

A span is recorded from the clock readings its timer takes anyway (`utils.timing.Split`, the decode threads' clocks,
the timing loop), so the trace and the time split agree to the microsecond. Off by default: `record` then returns at
once and nothing is kept. One track per thread name (the decode threads of successive passes share `decode-N`), the
reference on its own track (it runs on the main thread but is not in e2e); under torchrun one process per rank, each
rank's clock shifted so that the end of a sync the ranks share lines up, gathered to rank 0 (docs/outputs.md).
"""
from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from utils.files import shown, write_atomic

MAIN = "MainThread"
REFERENCE = "reference"  # the reference's own track: its compute runs on the main thread, outside e2e
SHOWN = {MAIN: "main thread", REFERENCE: "reference (main thread, not in e2e)", "outputs_0": "outputs writer"}


def _order(thread: str) -> tuple:
    """Tracks top to bottom: the main thread, the reference, the decode threads by number, the rest by name."""
    if thread in (MAIN, REFERENCE):
        return (0, int(thread == REFERENCE), "")
    prefix, _, number = thread.rpartition("-")
    if prefix == "decode" and number.isdigit():
        return (1, int(number), "")
    return (2, 0, thread)


class Recorder:
    """A thread-safe list of spans (name, start, end in `time.perf_counter` seconds, thread, args), with the other
    ranks' spans gathered to rank 0; `on` is False (and `record` free) unless a run started it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset(False)

    def reset(self, on: bool, rank: int | None = None) -> None:
        """Forget every span; record from now on when `on`, as torchrun `rank` (None: one process)."""
        host = socket.gethostname()
        with self.lock:
            self.on = on
            self.origin = time.perf_counter()
            self.spans: list[tuple] = []
            self.pid = rank or 0
            self.process = f"rank {rank} on {host}" if rank is not None else f"sample.py on {host}"
            self.remote: list[dict] = []  # other ranks' exports, on rank 0

    def record(self, name: str, start: float, end: float, args: dict | None = None, *, file: str | None = None,
               track: str | None = None) -> None:
        """One span from two `time.perf_counter` readings, on the calling thread's track (or `track`); `file`: the
        file it worked on. Nothing happens while the recorder is off."""
        if not self.on:
            return
        if file is not None:
            args = {**(args or {}), "file": file}
        span = (name, start, end, track or threading.current_thread().name, args)
        with self.lock:
            self.spans.append(span)

    def export(self, anchor: float) -> dict:
        """This rank's spans for rank 0, their times in seconds from `anchor` (this rank's clock at the end of a sync
        every rank passed)."""
        with self.lock:
            spans = [(name, start - anchor, end - anchor, *rest) for name, start, end, *rest in self.spans]
        return {"pid": self.pid, "process": self.process, "spans": spans}

    def merge(self, exports: list[dict], anchor: float) -> None:
        """Other ranks' `export`s on rank 0, put on this process's clock so that their anchors meet `anchor` (rank 0's
        reading at the end of the same sync)."""
        for part in exports:
            spans = [(name, start + anchor, end + anchor, *rest) for name, start, end, *rest in part["spans"]]
            with self.lock:
                self.remote.append({**part, "spans": spans})

    def document(self) -> dict:
        """The trace as the Chrome trace-event JSON object format: `traceEvents` with complete events ("ph": "X", ts
        and dur in microseconds from the start of the run) and the process / thread names ("ph": "M")."""
        with self.lock:
            processes = [{"pid": self.pid, "process": self.process, "spans": list(self.spans)}, *self.remote]
        events: list[dict] = []
        for part in processes:
            pid = part["pid"]
            threads = sorted({span[3] for span in part["spans"]}, key=_order)
            tids = {thread: k + 1 for k, thread in enumerate(threads)}
            events.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": part["process"]}})
            events.append({"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0, "args": {"sort_index": pid}})
            for thread, tid in tids.items():
                events.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid,
                               "args": {"name": SHOWN.get(thread, thread)}})
                events.append({"name": "thread_sort_index", "ph": "M", "pid": pid, "tid": tid,
                               "args": {"sort_index": tid}})
            for name, start, end, thread, args in part["spans"]:
                event = {"name": name, "ph": "X", "ts": round((start - self.origin) * 1e6, 3),
                         "dur": round((end - start) * 1e6, 3), "pid": pid, "tid": tids[thread]}
                if args:
                    event["args"] = {k: shown(v) if isinstance(v, str) else v for k, v in args.items()}
                events.append(event)
        return {"traceEvents": events, "displayTimeUnit": "ms",
                "otherData": {"clock": "time.perf_counter; ts and dur in microseconds from the start of the run"}}

    def write(self, path: str) -> tuple[int, int]:
        """Write the trace to `path` atomically (SampleError when it cannot be written); (spans, tracks) written."""
        doc = self.document()
        write_atomic(path, json.dumps(doc, separators=(",", ":")) + "\n")
        spans = [e for e in doc["traceEvents"] if e["ph"] == "X"]
        return len(spans), sum(1 for e in doc["traceEvents"] if e["name"] == "thread_name")


TRACE = Recorder()  # the process's recorder: sample.py's run starts it with --trace


@contextmanager
def span(name: str, args: dict | None = None) -> Iterator[None]:
    """A coarse span around the block (a row, a pass); no clock is read while the recorder is off."""
    if not TRACE.on:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        TRACE.record(name, start, time.perf_counter(), args)
