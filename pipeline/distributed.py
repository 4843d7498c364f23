"""Scaling out: the same command on N devices and N hosts, launched by torchrun, with the report of one process.

torchrun starts one process (rank) per device and sets RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE. Each rank
takes its own device (accelerator LOCAL_RANK, or the CPU with its share of the cores) and a contiguous shard of the
batches one process would make (utils/shards.py). The ranks meet only at a few syncs, each one all_gather of every
rank's state on a gloo group with a timeout (`--dist_timeout`), sometimes followed by a gather to rank 0: after the
setup (rank 0's plan, thread counts and int8 calibration reach every rank), after each engine row (rank 0 merges the
ranks' passes into the one-process row), before the files are written (the Kaggle submission's rows, file counts)
and at the exit (rank 0's status becomes everyone's). A rank that fails says so at the next sync and every rank
stops there; rank 0 prints the one line that names it. A sync that times out or loses a rank ends the run too.

Outside torchrun (no WORLD_SIZE, or 1) `World()` is inactive and every method leaves the one-process run untouched.
"""
from __future__ import annotations

import datetime
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Callable

import torch

from engines.base import EngineOptions
from pipeline import rows
from pipeline.passes import PassResult
from report.outputs import Outputs, RowOutputs
from utils.data import Batch, Dataset
from utils.device import accelerator, usable_cpus
from utils.errors import SampleError, first_line
from utils.shards import in_order, merge_accuracy, sample_order, shard
from utils.timing import summarize

VISIBLE = {"cuda": "CUDA_VISIBLE_DEVICES", "npu": "ASCEND_RT_VISIBLE_DEVICES"}
BACKENDS = {"cuda": "nccl", "npu": "hccl"}  # the device's own; the ranks' messages always go over gloo
INTERRUPTED = "interrupted before any engine row finished; nothing was written"


class Stopped(SampleError):
    """A rank stopped the run at a sync (its error, or Ctrl-C): every rank ends with `status`; rank 0 has printed it."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


class Lost(SampleError):
    """A sync failed (a rank died, or did not come within the timeout): the ranks can no longer agree on anything."""


def rank_device(text: str | None, local_rank: int) -> tuple[str, str | None]:
    """(this rank's --device, a problem or None): an accelerator becomes `kind:LOCAL_RANK`; the CPU stays the CPU."""
    given = (text or "auto").strip().lower()
    if given == "cpu":
        return "cpu", None
    kind, _, index = given.rpartition(":")
    if given in ("cuda", "npu"):
        kind, index = given, "0"
    elif given == "auto":
        kind, index = accelerator() or "cpu", "0"
        if kind == "cpu":
            return "cpu", None
    elif not kind and index.isdigit():
        kind = accelerator()
        if kind is None:
            return given, None  # parse_device says there is no accelerator
    if kind not in VISIBLE or not index.isdigit():
        return given, None  # parse_device names what is wrong with it
    if index != "0":
        return given, (f"--device {text}: under torchrun each rank takes its own accelerator ({kind}:LOCAL_RANK); "
                       f"give --device {kind} (or 0) and choose the cards with {VISIBLE[kind]}")
    return f"{kind}:{local_rank}", None


@dataclass
class World:
    """This process's place in a torchrun job; inactive (size 1) for a plain `python sample.py`."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    nodes: int = 1
    host: str = ""
    device: str = ""
    threads: int = 0
    timeout_s: float = 1800.0
    problem: str | None = None  # found in the environment; reported at the first sync, so that rank 0 prints it
    backend: str = ""
    group: object = None  # the gloo group every sync runs on
    started: bool = False
    stopped: bool = False  # a sync stopped the run (Stopped): no more syncs
    lost: bool = False  # a sync failed (Lost): no more syncs
    interrupted: bool = False  # Ctrl-C came during a sync: the run stops at the next one
    interrupts: object = None  # utils.errors.Interrupts of the run (Ctrl-C counts)
    order: dict = field(default_factory=dict)  # sample id -> index in the one-process order
    images: list = field(default_factory=list)  # this rank's share (sample ids)
    ranks: list = field(default_factory=list)  # every rank's description (after the setup sync)
    steps: int = 0

    @property
    def active(self) -> bool:
        return self.size > 1

    @classmethod
    def from_env(cls, args) -> World:
        """The world of this process: inactive, `args` untouched, unless torchrun set WORLD_SIZE > 1. Then `args` is
        this rank's: its device, its share of the CPU threads (unless --threads), progress bars on rank 0 only, and
        the command as launched."""
        try:
            size = int(os.environ.get("WORLD_SIZE") or 1)
        except ValueError:
            size = 1
        if size <= 1:
            return cls()
        env = os.environ
        world = cls(rank=int(env.get("RANK", 0)), size=size, local_rank=int(env.get("LOCAL_RANK", 0)),
                    local_size=int(env.get("LOCAL_WORLD_SIZE") or size), nodes=int(env.get("GROUP_WORLD_SIZE") or 1),
                    host=socket.gethostname(), timeout_s=float(args.dist_timeout))
        args.device, world.problem = rank_device(args.device, world.local_rank)
        if args.threads is None:  # the ranks of a host share its cores (torchrun's own default is 1 thread each)
            args.threads = max(1, usable_cpus() // world.local_size)
        world.device, world.threads = args.device, args.threads
        args.quiet = args.quiet or world.rank > 0
        nodes = f"--nnodes={world.nodes} " if world.nodes > 1 else ""
        args.command = args.command.replace("python sample.py", f"torchrun {nodes}--nproc_per_node={world.local_size} "
                                            "sample.py", 1)
        return world

    def describe(self, rank: int | None = None) -> str:
        """'rank 1 (cuda:1 on host-b)'."""
        rank = self.rank if rank is None else rank
        info = self.ranks[rank] if rank < len(self.ranks) else ({"device": self.device, "host": self.host}
                                                               if rank == self.rank else {})
        return f"rank {rank} ({info.get('device', '?')} on {info.get('host', '?')})" if info else f"rank {rank}"

    def start(self, interrupts=None) -> None:
        """Join the job: the device's backend for the default group (nccl, hccl, else gloo), a gloo group for the
        syncs, the collective timeout; SIGTERM (torchrun passes on the one it gets) then acts as Ctrl-C."""
        self.interrupts = interrupts
        if not self.active:
            return
        import torch.distributed as dist

        kind = self.device.split(":")[0]
        backend = BACKENDS.get(kind, "gloo")
        if backend == "nccl" and not dist.is_nccl_available():
            backend = "gloo"
        if backend == "hccl":
            try:
                import torch_npu  # noqa: F401  registers hccl
            except Exception:  # noqa: BLE001  torch_aie alone (no torch_npu): the device never needs a collective
                backend = "gloo"
        timeout = datetime.timedelta(seconds=self.timeout_s)
        try:
            if kind == "cuda" and int(self.device.split(":")[1]) < torch.cuda.device_count():
                torch.cuda.set_device(int(self.device.split(":")[1]))
            dist.init_process_group(backend=backend, timeout=timeout)
            self.group = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
        except (RuntimeError, ValueError) as exc:
            raise SampleError(f"{self.describe()}: cannot join the torchrun job with {backend}: "
                              f"{first_line(exc)}") from None
        self.backend, self.started = backend, True
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _as_ctrl_c)
        if self.problem:
            raise SampleError(self.problem)

    # The syncs. Each one starts with an all_gather of every rank's small state, so a rank that stopped (it sends
    # `stop`) is heard wherever the others are; a gather of the big payloads follows only when nobody stopped.

    def sync(self, step: str, state=None, stop: str | None = None, status: int = 1) -> list:
        """Every rank's `state` at `step`; Stopped when a rank sent `stop` (rank 0 prints it first)."""
        import torch.distributed as dist

        messages = [None] * self.size
        message = (stop, status, self.describe(), state)  # who: before the setup sync only a rank knows its device
        self._collective(step, lambda: dist.all_gather_object(messages, message, group=self.group))
        stops = [m for m in messages if m[0] is not None]
        if stops:
            self._stop(stops)
        return [m[3] for m in messages]

    def gather(self, step: str, payload) -> list | None:
        """Every rank's `payload` on rank 0 (None elsewhere), right after a `sync` that every rank passed."""
        import torch.distributed as dist

        parts = [None] * self.size if self.rank == 0 else None
        self._collective(step + " (gather)", lambda: dist.gather_object(payload, parts, dst=0, group=self.group))
        return parts

    def _collective(self, step: str, call: Callable[[], None]) -> None:
        self.steps += 1
        self._mark(step)
        try:
            with self.holding():
                call()
        except RuntimeError as exc:
            self.lost = True
            raise Lost(self._lost(step, exc)) from None

    @contextmanager
    def holding(self):
        """Ctrl-C (or SIGTERM) in the block is noted, not raised: a sync cut in half would leave the ranks out of step.
        The run then stops at the next row."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGINT, self._note_interrupt)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _note_interrupt(self, signum, frame) -> None:
        if self.interrupts is not None:
            self.interrupts.later(signum, frame)  # counted: the process exits 130
        self.interrupted = True

    def _stop(self, stops: list) -> None:
        """Every rank learnt at one sync that `stops` (message, status, who, state) stopped: rank 0 prints the first,
        then one last sync, so that no rank exits (and torchrun kills the others) before that line is out."""
        self.stopped = True
        message, status, who, _ = stops[0]
        if status != 130:
            more = f" (and {len(stops) - 1} other rank(s) stopped too)" if len(stops) > 1 else ""
            message = f"{who}: {message}{more}"
        if self.rank == 0:
            print(f"error: {message}", file=sys.stderr, flush=True)
        self.bye()
        raise Stopped(message, status)

    def bye(self) -> None:
        """The last sync of a stopped run; a rank that is already gone cannot matter any more."""
        import torch.distributed as dist

        try:
            with self.holding():
                dist.barrier(group=self.group)
        except RuntimeError:
            self.lost = True

    def _mark(self, step: str) -> None:
        """Leave this rank's last step in torchrun's store, so a sync that times out can say who did not come."""
        try:
            _store().set(f"unet-sample/{os.environ.get('TORCHELASTIC_RESTART_COUNT', 0)}/{self.rank}",
                         f"{self.steps}|{step}")
        except Exception:  # noqa: BLE001  no store: the timeout message is vaguer, nothing else changes
            pass

    def _lost(self, step: str, exc: Exception) -> str:
        """Which ranks did not reach `step`, and their last step, from the store; else gloo's own words."""
        behind = []
        try:
            store = _store()
            for r in range(self.size):
                key = f"unet-sample/{os.environ.get('TORCHELASTIC_RESTART_COUNT', 0)}/{r}"
                count, _, where = store.get(key).decode().partition("|") if store.check([key]) else ("0", "", "start")
                if int(count) < self.steps:
                    behind.append(f"{self.describe(r)} is still at '{where}'")
        except Exception:  # noqa: BLE001
            behind = []
        why = "; ".join(behind) or f"gloo: {first_line(exc).split('. ')[0]}"
        return (f"{self.describe()}: stopped waiting for the other ranks at '{step}': {why}; a rank is stuck (past "
                f"--dist_timeout {self.timeout_s:g} s) or has died (its own error, if any, is above)")

    # The run's hooks, in the order sample.py calls them.

    def shard(self, dataset: Dataset, batch_size: int) -> Dataset:
        """This rank's share of the pairs (the whole set for one process)."""
        if not self.active:
            return dataset
        self.order = sample_order(dataset)
        mine = shard(dataset, batch_size, self.rank, self.size)
        self.images = [s.id for s in mine.samples + mine.unpaired]
        return mine

    def share_setup(self, plan: list, row_options: dict, options: EngineOptions) -> tuple[list, dict, EngineOptions]:
        """The setup sync: rank 0's plan (`--engine auto` is resolved there), its thread counts per row and its int8
        calibration reach every rank; each rank's device, host and share reach rank 0. A rank whose setup failed
        stops every rank here."""
        if not self.active:
            return plan, row_options, options
        mine = {"rank": self.rank, "local_rank": self.local_rank, "host": self.host, "device": self.device,
                "threads": self.threads, "images": len(self.images),
                "first": self.images[0] if self.images else None, "last": self.images[-1] if self.images else None}
        lead = None
        if self.rank == 0:
            lead = {"plan": plan, "threads": {row: o.threads for row, o in row_options.items()},
                    "calibration": options.calibration}
        states = self.sync("setup", (mine, lead))
        self.ranks = [s[0] for s in states]
        lead = states[0][1]
        if self.rank:
            options = replace(options, calibration=lead["calibration"])
            row_options = {tuple(row): replace(options, threads=t) for row, t in lead["threads"].items()}
            plan = [tuple(row) for row in lead["plan"]]
        if options.cache is not None:
            options.cache.wait_s = self.timeout_s  # a rank waits for its host's build as long as for a sync
        return plan, row_options, options

    def gather_outputs(self, report: dict, outputs: Outputs | None) -> bool:
        """Before the files are written: rank 0 takes every rank's submission rows (in one-process order), file counts
        and write errors, and notes the world in the report. True on the rank that writes the files and the report."""
        if not self.active:
            return True
        payload = None
        if outputs is not None and self.rank:
            errors = list(outputs.errors)
            outputs.close()  # this rank's masks are on disk
            payload = {"files": outputs.files_written, "failed": outputs.failed_files, "errors": errors,
                       "rle_rows": outputs.rle_rows}
        self.sync("outputs")
        parts = self.gather("outputs", payload)
        if self.rank:
            return False
        if outputs is not None:
            by_name = {os.path.basename(s.image): s.id for s in outputs.samples.values()}
            for part in parts[1:]:
                outputs.files_written += part["files"]
                outputs.failed_files.extend(part["failed"])
                outputs.errors.extend(part["errors"])
                outputs.rle_rows.extend(part["rle_rows"])
            outputs.rle_rows = in_order(outputs.rle_rows, lambda r: by_name[r[0]], self.order)
        report["config"]["distributed"] = {"launcher": "torchrun", "world_size": self.size, "nodes": self.nodes,
                                           "backend": self.backend, "syncs": "gloo", "timeout_s": self.timeout_s,
                                           "ranks": self.ranks}
        return True

    def run_rows(self, plan: list[tuple[str, str]], job: rows.Job, options: EngineOptions, outputs: Outputs | None = None,
                 loaded: dict | None = None, row_options: dict | None = None) -> rows.RowsResult:
        """Every row on every rank, merged on rank 0: `run_rows` below."""
        return run_rows(self, plan, job, options, outputs, loaded, row_options)

    def fail(self, exc: BaseException | None) -> int:
        """The exit status after `exc` ended the run (None: Ctrl-C before any row finished). One process prints its
        `error:` line as always (any other exception propagates, as always). Under torchrun a rank that failed tells
        the others at their next sync, and rank 0 alone prints the line that names it; a rank that lost the others
        prints its own."""
        if exc is None:
            message, status = INTERRUPTED, 130
        elif isinstance(exc, SampleError):
            message, status = str(exc), getattr(exc, "status", 1)
        else:
            message, status = f"{type(exc).__name__}: {first_line(exc)}", 1
        if not self.active:
            if exc is not None and not isinstance(exc, SampleError):
                raise exc
            print(f"error: {message}", file=sys.stderr)
            return status
        if self.interrupts is not None:
            self.interrupts.hold()
        if isinstance(exc, Stopped):
            return status  # printed by rank 0 at the sync
        if isinstance(exc, Lost) or not self.started or self.stopped or self.lost:
            signalled = self.interrupted or getattr(self.interrupts, "count", 0)
            if not (isinstance(exc, Lost) and signalled):  # torchrun stopping this rank: the cause is said above
                print(f"error: {message if isinstance(exc, Lost) else f'{self.describe()}: {message}'}", file=sys.stderr)
            return status
        try:
            self.sync("stop", stop=message, status=status)
        except Stopped as stopped:
            return stopped.status
        except Lost as lost:
            print(f"error: {lost}", file=sys.stderr)
        return status

    def exit(self, status: int) -> int:
        """The process's exit status: one process's own; under torchrun rank 0's (it wrote the report), agreed at a
        last sync, and the process ends here (os._exit, streams flushed): every result is written by then, and gloo's
        teardown can spin or abort once a peer has gone (seen with torch 2.0.1's destroy_process_group)."""
        if not self.active:
            return status
        if self.started and not (self.stopped or self.lost):
            try:
                status = self.sync("exit", status)[0]  # rank 0 merged every rank's results into its status
            except Stopped as stopped:
                status = stopped.status
            except Lost as lost:
                print(f"error: {lost}", file=sys.stderr)
                status = status or 1
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(status)


def _store():
    import torch.distributed.distributed_c10d as c10d

    return c10d._get_default_store()


def _as_ctrl_c(signum, frame) -> None:
    """SIGTERM (torchrun stopping its workers) goes to the current Ctrl-C handler: a partial report, not a kill."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    elif handler != signal.SIG_IGN:
        raise KeyboardInterrupt


def _stamped(batches: Callable[[], Iterable[Batch]], stamps: dict) -> Callable[[], Iterable[Batch]]:
    """`batches` that notes the wall clock when the accuracy pass asks for its first batch (its start)."""
    def make():
        stamps["start"] = time.time()
        yield from batches()
    return make


def run_rows(world: World, plan: list[tuple[str, str]], job: rows.Job, options: EngineOptions,
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
        result, row_outputs = passes.get(key, (None, None))
        if result is not None:
            result.timing_batch = None  # a tensor the merge does not need
        row = dict(part.rows[0]) if part.rows else None
        if row is not None:
            row.pop("per_image", None)  # the pass holds the same lists
        payload = {"rank": world.rank, "row": row, "skipped": part.skipped, "result": result, "outputs": row_outputs,
                   "start": stamps.get("start")}
        failed = any(s.get("failed") for s in part.skipped)
        states = world.sync(f"row {name} {precision}", (failed, bool(part.skipped), part.interrupted or world.interrupted))
        if outputs is not None and (any(s[0] for s in states) or len({s[1] for s in states}) > 1):
            outputs.discard(name, precision)  # failed somewhere: the next row writes the files, on every rank
        parts = world.gather(f"row {name} {precision}", payload)
        if parts is not None:
            with world.holding():
                row, skip = merge_row(world, parts, name, precision)
            merged.rows.extend([row] if row else [])
            merged.skipped.extend([skip] if skip else [])
        if any(s[2] for s in states):
            merged.interrupted = True
            break
    return merged


def merge_row(world: World, parts: list[dict], name: str, precision: str) -> tuple[dict | None, dict | None]:
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
                             artifact_path=first["artifact_path"], timed=first["timed_region"])
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


def _merge_pass(world: World, done: list[dict]) -> tuple[PassResult, RowOutputs | None]:
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
                        interrupted=any(r.interrupted for r in results))
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
