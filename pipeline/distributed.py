"""Scaling out: the same command on N devices and hosts under torchrun, with the report of one process
(docs/scaling.md).

Each rank takes its own device and a contiguous shard of the batches one process would make (dataset/shards.py); the
ranks meet at a few syncs (pipeline/syncs.py): after the setup, after each row (rank 0 merges it: pipeline/gather.py),
before the files are written and at the exit. Outside torchrun `World()` is inactive and leaves the run untouched.
"""
from __future__ import annotations

import atexit
import dataclasses
import datetime
import hashlib
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from dataset.pairs import Dataset
from dataset.shards import in_order, sample_order, shard
from engines.base import EngineOptions
from pipeline.config import RunConfig
from pipeline.gather import Gather
from pipeline.rows import PlannedRow
from pipeline.syncs import Lost, Stopped, Syncs
from report.outputs import Outputs
from report.results import Report
from utils.device import accelerator, usable_cpus
from utils.errors import SampleError, first_line
from utils.signals import Interrupts
from utils.trace import TRACE

VISIBLE = {"cuda": "CUDA_VISIBLE_DEVICES", "npu": "ASCEND_RT_VISIBLE_DEVICES"}
BACKENDS = {"cuda": "nccl", "npu": "hccl"}  # the device's own; the ranks' messages always go over gloo
INTERRUPTED = "interrupted before any engine row finished{by}; nothing was written"


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
class World(Syncs, Gather):
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
    interrupts: Optional[Interrupts] = None  # the run's signals (Ctrl-C counts)
    order: dict = field(default_factory=dict)  # sample id -> index in the one-process order
    images: list = field(default_factory=list)  # this rank's share (sample ids)
    data: tuple = (0, "")  # the whole data set this rank listed: (images, digest of their ids)
    ranks: list = field(default_factory=list)  # every rank's description (after the setup sync)
    steps: int = 0

    @property
    def active(self) -> bool:
        return self.size > 1

    @classmethod
    def from_env(cls, timeout_s: float = 1800.0) -> World:
        """The world of this process: inactive unless torchrun set WORLD_SIZE > 1."""
        try:
            size = int(os.environ.get("WORLD_SIZE") or 1)
        except ValueError:
            size = 1
        if size <= 1:
            return cls()
        env = os.environ
        return cls(rank=int(env.get("RANK", 0)), size=size, local_rank=int(env.get("LOCAL_RANK", 0)),
                   local_size=int(env.get("LOCAL_WORLD_SIZE") or size), nodes=int(env.get("GROUP_WORLD_SIZE") or 1),
                   host=socket.gethostname(), timeout_s=float(timeout_s))

    def rank_config(self, config: RunConfig) -> RunConfig:
        """This rank's copy of the run's config: its device, its share of the CPU threads (unless --threads), progress
        bars on rank 0 only, and the command as launched. One process: `config` itself."""
        if not self.active:
            return config
        device, self.problem = rank_device(config.device, self.local_rank)
        # the ranks of a host share its cores (torchrun's own default is 1 thread each)
        threads = config.threads or max(1, usable_cpus() // self.local_size)
        self.device, self.threads = device, threads
        nodes = f"--nnodes={self.nodes} " if self.nodes > 1 else ""
        command = config.command.replace("python sample.py", f"torchrun {nodes}--nproc_per_node={self.local_size} "
                                         "sample.py", 1)
        return dataclasses.replace(config, device=device, threads=threads, quiet=config.quiet or self.rank > 0,
                                   command=command)

    def describe(self, rank: int | None = None) -> str:
        """'rank 1 (cuda:1 on host-b)'."""
        rank = self.rank if rank is None else rank
        info = self.ranks[rank] if rank < len(self.ranks) else ({"device": self.device, "host": self.host}
                                                               if rank == self.rank else {})
        return f"rank {rank} ({info.get('device', '?')} on {info.get('host', '?')})" if info else f"rank {rank}"

    def start(self, interrupts: Interrupts | None = None) -> None:
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
            elif kind == "npu" and hasattr(torch, "npu"):  # hccl's context is the current device's (npu:0 otherwise)
                torch.npu.set_device(int(self.device.split(":")[1]))
            dist.init_process_group(backend=backend, timeout=timeout)
            self.group = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else None
        except (RuntimeError, ValueError) as exc:
            raise SampleError(f"{self.describe()}: cannot join the torchrun job with {backend}: "
                              f"{first_line(exc)}") from None
        self.backend, self.started = backend, True
        if self.interrupts is not None:
            self.interrupts.catch(signal.SIGTERM)
        if self.problem:
            raise SampleError(self.problem)

    # The run's hooks, in the order sample.py calls them.

    def shard(self, dataset: Dataset, batch_size: int) -> Dataset:
        """This rank's share of the pairs (the whole set for one process)."""
        if not self.active:
            return dataset
        self.order = sample_order(dataset)
        ids = [s.id for s in dataset.samples + dataset.unpaired]
        self.data = (len(ids), hashlib.sha256("\n".join(ids).encode("utf-8", "surrogateescape")).hexdigest()[:16])
        mine = shard(dataset, batch_size, self.rank, self.size)
        self.images = [s.id for s in mine.samples + mine.unpaired]
        return mine

    def share_setup(self, plan: list[PlannedRow], options: EngineOptions) -> tuple[list[PlannedRow], EngineOptions]:
        """The setup sync: rank 0's plan (`--engine auto` is resolved there) and its int8 calibration reach every
        rank, each with its own thread count; each rank's device, host and share reach rank 0. A rank whose setup
        failed stops every rank here."""
        if not self.active:
            return plan, options
        mine = self.rank_facts()
        lead = None
        if self.rank == 0:
            lead = {"plan": [(row.engine, row.precision) for row in plan],
                    "calibration": options.calibration is not None}
        states = self.sync("setup", (mine, lead, self.data))
        self.ranks = [s[0] for s in states]
        lead = states[0][1]
        others = [r for r, s in enumerate(states) if s[2] != states[0][2]]
        if others:  # each rank listed the pairs itself: shards of different lists would miss or repeat images
            raise SampleError(f"{self.describe(others[0])} sees another data set than rank 0 "
                              f"({states[others[0]][2][0]} vs {states[0][2][0]} images, or other names): give every "
                              "rank the same --image_path / --mask_path contents (on several hosts, a shared folder)")
        # The calibration batches go from rank 0 alone, by broadcast: an all_gather would pad every rank's message
        # to the largest and hand each rank world-size copies.
        if lead["calibration"]:
            calibration = self.broadcast("setup (calibration)", options.calibration if self.rank == 0 else None)
            if self.rank:
                options = dataclasses.replace(options, calibration=calibration)
        if self.rank:  # rank 0's engines (auto chose them there), with this rank's threads
            plan = [PlannedRow(engine, precision, self.threads) for engine, precision in lead["plan"]]
        if options.cache is not None:
            options.cache.wait_s = self.timeout_s  # a rank waits for its host's build as long as for a sync
        return plan, options

    def gather_outputs(self, report: Report, outputs: Outputs | None) -> bool:
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
        began = time.perf_counter()
        self.sync("outputs")
        anchor = time.perf_counter()  # every rank leaves this all_gather together: the ranks' traces meet here
        parts = self.gather("outputs", payload)
        self.gather_trace(began, anchor)
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
        report.info.distributed = self.facts()
        return True

    def gather_trace(self, began: float, anchor: float) -> None:
        """--trace: every rank's spans to rank 0, each rank's clock shifted so that the end of the 'outputs' sync
        (`anchor`, read on each rank as the all_gather returned) is one instant on rank 0's clock."""
        if not TRACE.on:  # the same on every rank: they share the command line
            return
        TRACE.record("sync: outputs (the ranks' clocks are aligned on its end)", began, anchor)
        parts = self.gather("trace", TRACE.export(anchor))
        if self.rank == 0:
            TRACE.merge(parts[1:], anchor)

    def rank_facts(self) -> dict:
        """This rank, as the report lists it (config.distributed.ranks[])."""
        return {"rank": self.rank, "local_rank": self.local_rank, "host": self.host, "device": self.device,
                "threads": self.threads, "images": len(self.images),
                "first": self.images[0] if self.images else None, "last": self.images[-1] if self.images else None}

    def facts(self) -> dict:
        """The job, as the report describes it (config.distributed)."""
        return {"launcher": "torchrun", "world_size": self.size, "nodes": self.nodes, "backend": self.backend,
                "syncs": "gloo", "timeout_s": self.timeout_s, "ranks": self.ranks}

    def fail(self, exc: BaseException | None) -> int:
        """The exit status after `exc` ended the run (None: Ctrl-C before any row finished). One process prints its
        `error:` line as always (any other exception propagates, as always). Under torchrun a rank that failed tells
        the others at their next sync, and rank 0 alone prints the line that names it; a rank that lost the others
        prints its own."""
        if exc is None:
            by = self.interrupts.first if self.interrupts is not None else None
            message, status = INTERRUPTED.format(by=f" ({by})" if by else ""), 130
        elif isinstance(exc, SampleError):
            message, status = str(exc), exc.status if isinstance(exc, Stopped) else 1
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
            # Rank 0 always says a lost rank, naming who is missing: torchrun's SIGTERM (after a peer died) arrives as
            # a Ctrl-C here, so being signalled does not mean the user stopped the run (their Ctrl-C reaches every
            # rank alike, and the syncs then succeed). Another rank stopped by torchrun stays quiet: one line.
            signalled = self.interrupted or (self.interrupts is not None and self.interrupts.count)
            if self.rank == 0 or not (isinstance(exc, Lost) and signalled):
                said = message if isinstance(exc, Lost) else f"{self.describe()}: {message}"
                print(f"error: {said}", file=sys.stderr)
            return 1 if isinstance(exc, Lost) else status
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
        if self.lost and (status == 0 or status > 128):
            status = 1  # a rank died or hung: not an interruption, whatever signal torchrun then sent
        if self.started and not (self.stopped or self.lost):
            try:
                status = self.sync("exit", status)[0]  # rank 0 merged every rank's results into its status
            except Stopped as stopped:
                status = stopped.status
            except Lost as lost:
                print(f"error: {lost}", file=sys.stderr)
                status = status or 1
        if not self.lost:  # exit handlers (torch_aie.finalize) run as in any process; after a lost peer they may hang
            try:
                atexit._run_exitfuncs()
            except Exception:  # noqa: BLE001  a failing handler must not change the agreed status
                pass
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(status)
