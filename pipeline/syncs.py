"""How the ranks of a torchrun job meet: syncs on a gloo group with a timeout. Each sync starts with an all_gather of
every rank's small state, so a rank that stopped (it sends `stop`) is heard wherever the others are, and the big
payloads follow in a gather to rank 0 only when nobody stopped. Ctrl-C never cuts a sync in half; a sync that times
out or loses a rank says which rank did not come and where it last was (from torchrun's store)."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Callable

from utils.errors import SampleError, first_line
from utils.signals import held


class Stopped(SampleError):
    """A rank stopped the run at a sync (its error, or Ctrl-C): every rank ends with `status`; rank 0 has printed it."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


class Lost(SampleError):
    """A sync failed (a rank died, or did not come within the timeout): the ranks can no longer agree on anything."""


class Syncs:
    """The syncs of pipeline.distributed.World, which holds the state they use: rank, size, group, steps, stopped,
    lost, interrupted, timeout_s, and `describe(rank)`."""

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

    def broadcast(self, step: str, obj):
        """Rank 0's `obj` on every rank (each receives one copy of exactly its size)."""
        import torch.distributed as dist

        box = [obj]
        self._collective(step, lambda: dist.broadcast_object_list(box, src=0, group=self.group))
        return box[0]

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
        The run then stops after the row."""
        with held(deliver=False) as section:
            yield
        if section.caught:
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
        """Leave this rank's last step in torchrun's store, so a sync that times out can say who did not come: its
        name, then a counter (`add`, which never blocks, reads it back; torch 2.0's store has no `check`)."""
        try:
            _store().set(_key(self.rank, "step"), step)
            _store().add(_key(self.rank, "count"), 1)
        except Exception:  # noqa: BLE001  no store: the timeout message is vaguer, nothing else changes
            pass

    def _lost(self, step: str, exc: Exception) -> str:
        """Which ranks did not reach `step`, and their last step, from the store; else gloo's own words."""
        behind = []
        try:
            store = _store()
            for r in range(self.size):
                count = store.add(_key(r, "count"), 0)
                if count < self.steps:
                    where = f"is still at '{store.get(_key(r, 'step')).decode()}'" if count else "reached no sync"
                    behind.append(f"{self.describe(r)} {where}")
        except Exception:  # noqa: BLE001
            behind = []
        why = "; ".join(behind) or f"gloo: {first_line(exc).split('. ')[0]}"
        return (f"{self.describe()}: stopped waiting for the other ranks at '{step}': {why}; a rank is stuck (past "
                f"--dist_timeout {self.timeout_s:g} s) or has died (its own error, if any, is above)")


def _key(rank: int, what: str) -> str:
    return f"unet-sample/{os.environ.get('TORCHELASTIC_RESTART_COUNT', 0)}/{rank}/{what}"


def _store():
    import torch.distributed.distributed_c10d as c10d

    return c10d._get_default_store()
