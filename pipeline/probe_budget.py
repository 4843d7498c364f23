"""`--auto_budget`: how long `--engine auto`'s probe may take, in which order it tries the engines, and what it shows
while it runs.

The engines go cheapest build first: the build seconds last measured on this machine (kept beside auto's choices in
the cache), else a prior of typical builds (eager torch first: it builds nothing). A candidate whose build and calls,
as last measured here (else as the prior says), would overrun what is left of the budget is not tried. The report
names the engines not tried, and a later run with a larger budget measures again.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from engines.cache import key_digest
from utils.errors import first_line
from utils.files import write_atomic

# Build seconds of UNet 512 fp32 measured on a 2-core Intel Xeon (AVX-512, AMX) on a first run: the order for engines
# never built on this machine. GPU and NPU compilers build for a minute or more.
PRIOR_BUILD_S = {"torch": 0.0, "torch_npu": 0.0, "onnxruntime": 3.3, "openvino": 3.9, "torchscript": 9.9,
                 "inductor": 19.3, "tensorrt": 60.0, "torch_aie": 60.0}
UNKNOWN_BUILD_S = 60.0  # an engine added later, never measured
PROBE_WARMUP = 2  # untimed calls first: TorchScript's profiling executor optimises on its second call
# ... but eager torch, whose second call is already a steady one (its first made oneDNN's primitives or ran
# cudnn.benchmark's search): one untimed call, which on the CPU in fp32 is the reference's own (ProbeInput.first_call)
EAGER_WARMUP = 1
LABEL_WIDTH = 60  # the progress bar's label at most: the bar and its seconds fit beside it on an 80-column terminal


def expected_build_s(name: str, known: dict[str, float]) -> float:
    """Engine `name`'s build seconds: as last measured here (`known`), else the prior."""
    return known.get(name, PRIOR_BUILD_S.get(name, UNKNOWN_BUILD_S))


def probe_warmups(name: str) -> int:
    """The untimed calls the probe makes for candidate `name`, its first call included."""
    return EAGER_WARMUP if name == "torch" else PROBE_WARMUP


def probe_calls(name: str) -> int:
    """The model calls the probe makes for candidate `name`: its untimed ones and its one timed call."""
    return probe_warmups(name) + 1


def probe_order(names: list[str], known: dict[str, float]) -> list[str]:
    """`names` cheapest build first: as last measured here (`known`), else the prior; ties keep their order."""
    return sorted(names, key=lambda name: expected_build_s(name, known))


def costs_path(root: str, host: dict, device_type: str) -> str:
    """The file that keeps this machine's build seconds per engine (a cache folder may be shared by machines)."""
    return os.path.join(root, "auto", f"builds-{device_type}-{key_digest({'host': host})[:16]}.json")


def read_costs(path: Optional[str]) -> dict[str, float]:
    """The build seconds kept in `path` ({} when absent or damaged: the prior order applies)."""
    if not path or not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            kept = json.load(f)
        return {str(k): float(v) for k, v in kept.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def keep_costs(path: Optional[str], measured: dict[str, float]) -> None:
    """Add this probe's build seconds to `path`; a failure costs the next run its order, nothing else."""
    if not path or not measured:
        return
    merged = {**read_costs(path), **{k: round(v, 2) for k, v in measured.items()}}
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_atomic(path, json.dumps(merged, indent=1, sort_keys=True).encode())
    except Exception as exc:  # noqa: BLE001  the choice still stands
        print(f"warning: could not keep the engines' build times in {path}: {first_line(exc)}", file=sys.stderr)


@dataclass
class ProbeBudget:
    """The probe's time budget (`total_s` seconds from `start`), the build seconds known on this machine, the engines
    it left out, and its progress bar (None: quiet)."""

    total_s: float
    known: dict[str, float] = field(default_factory=dict)
    show: bool = False
    start: float = field(default_factory=lambda: time.perf_counter())
    not_tried: list[str] = field(default_factory=list)
    cut: bool = False  # a round of the finalists' calls was left out for want of time
    tried_any: bool = False
    # not_tried's engines: (seconds left then, build seconds expected, measured here (else the prior), calls' seconds)
    skipped: dict = field(default_factory=dict)
    _bar: object = None
    _stop: Optional[threading.Event] = None
    _thread: Optional[threading.Thread] = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.total_s - self.elapsed()

    def fits(self, name: str, call_ms: Optional[float]) -> bool:
        """Whether candidate `name` may be tried now: the first always is; a later one when its build (as measured
        here, else the prior) and its calls (at `call_ms`, the fastest call so far) fit the time left. One left out is
        named in `not_tried`, and `skipped` keeps why (the reason says it)."""
        if not self.tried_any:
            self.tried_any = True
            return True
        build_s = expected_build_s(name, self.known)
        calls_s, left = probe_calls(name) * (call_ms or 0.0) / 1000.0, self.left()
        if build_s + calls_s <= left:
            return True
        self.not_tried.append(name)
        self.skipped[name] = (max(0.0, left), build_s, name in self.known, calls_s)
        return False

    def round_fits(self, round_s: float) -> bool:
        """Whether one more round of calls (`round_s` seconds) fits; False marks the choice as cut short."""
        if round_s <= self.left():
            return True
        self.cut = True
        return False

    def begin(self, label: str) -> None:
        """Start the clock (the probe's first engine is next) and show the bar (stderr, refreshed twice a second from a
        thread of its own, so a long build still moves it)."""
        self.start = time.perf_counter()
        if not self.show:
            return
        from tqdm import tqdm

        self._bar = tqdm(total=round(self.total_s), desc=label, unit="s", file=sys.stderr, leave=False,
                         bar_format="{desc} {bar} {n:.0f} of ~{total:.0f} s")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, args=(self._bar, self._stop), name="probe-progress",
                                        daemon=True)
        self._thread.start()

    def step(self, label: str) -> None:
        if self._bar is not None:
            self._bar.set_description_str(label, refresh=False)

    def wrap(self, log: Callable[[str], None]) -> Callable[[str], None]:
        """`log` for the probe's own lines while the bar shows: each line is written with the bar cleared and then
        drawn again below it (a line printed through the bar's `\\r` redraws comes out garbled), and becomes the bar's
        label, so the finalists' timing and the tie rounds show what the probe is doing."""
        def say(line: str) -> None:
            bar = self._bar
            if bar is None:
                log(line)
                return
            from tqdm import tqdm

            with tqdm.external_write_mode(file=sys.stderr):
                log(line)
            bar.set_description_str(bar_label(line), refresh=False)

        return say

    def _tick(self, bar, stop: threading.Event) -> None:
        """Move `bar` to the seconds spent until `stop` (its own references: end() may clear the attributes)."""
        while not stop.wait(0.5):
            elapsed = self.elapsed()
            bar.total = max(round(self.total_s), round(elapsed) + 1)  # an overrunning build stretches the estimate
            bar.n = elapsed
            bar.refresh()

    def end(self) -> None:
        """Stop the bar's thread before closing the bar: a refresh after close() would draw it again under the next
        line."""
        if self._bar is not None:
            self._stop.set()
            if self._thread is not None:
                self._thread.join(timeout=2.0)
            self._bar.close()
            self._bar, self._thread = None, None


def bar_label(line: str, width: int = LABEL_WIDTH) -> str:
    """A probe log line as the bar's label: without its trailing ' ...', cut to `width` characters (the bar needs
    the rest of a terminal line)."""
    label = line.rstrip(". ")
    return label if len(label) <= width else label[:width - 3].rstrip() + "..."
