"""MLPerf LoadGen's logs read back: the verdict and figures of mlperf_log_detail.txt, the masks of
mlperf_log_accuracy.json (what the scenarios report is what LoadGen wrote, not what the harness thinks it did)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional

import numpy as np

from utils.errors import SampleError


@dataclass
class LoadGenLog:
    """mlperf_log_detail.txt read back: the last value of each key, and the messages LoadGen flagged as errors."""

    values: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def latency_ms(self, percentile: str, per_query: bool = False) -> Optional[float]:
        """A latency percentile ('50.00', '99.00') in ms; MultiStream's per-query figure with `per_query`."""
        kind = "per_query_latency" if per_query else "latency"
        value = self.get(f"result_{percentile}_percentile_{kind}_ns")
        return None if value is None else float(value) / 1e6

    def duration_s(self) -> float:
        """The timed run's length from LoadGen's own marks (power_begin / power_end), 0.0 when absent."""
        begin, end = self.get("power_begin"), self.get("power_end")
        if not (begin and end):
            return 0.0
        stamps = [datetime.strptime(v, "%m-%d-%Y %H:%M:%S.%f") for v in (begin, end)]
        return (stamps[1] - stamps[0]).total_seconds()

    def reasons(self) -> tuple:
        """Why LoadGen judged the run INVALID, in its words (empty for a VALID run without errors)."""
        found = [text for key, text in (("result_min_duration_met", "min duration not met"),
                                        ("result_min_queries_met", "min query count not met"),
                                        ("result_perf_constraints_met", "latency bound not met"),
                                        ("early_stopping_met", "early stopping not met"))
                 if self.get(key) is False]
        if self.get("early_stopping_met") is False and self.get("early_stopping_result"):
            found.append(" ".join(str(self.get("early_stopping_result")).split()))
        if str(self.get("result_invalid_reason", "")).strip():
            found.append(str(self.get("result_invalid_reason")).strip())
        return tuple(found + self.errors)


def read_log(folder: str) -> LoadGenLog:
    """Parse LoadGen's mlperf_log_detail.txt (one ':::MLLOG {json}' per line); the verdict falls back to the summary's
    'Result is :' line when the detail lacks it."""
    log = LoadGenLog()
    with open(os.path.join(folder, "mlperf_log_detail.txt"), encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.startswith(":::MLLOG "):
                continue
            entry = json.loads(line[len(":::MLLOG "):])
            log.values[entry["key"]] = entry["value"]
            if entry.get("metadata", {}).get("is_error"):
                log.errors.append(f"{entry['key']}: {entry['value']}")
    if "result_validity" not in log.values:
        with open(os.path.join(folder, "mlperf_log_summary.txt"), encoding="utf-8", errors="replace") as f:
            verdicts = [line.split(":", 1)[1].strip() for line in f if line.startswith("Result is")]
        log.values["result_validity"] = verdicts[-1] if verdicts else "INVALID"
    return log


def read_accuracy(folder: str, count: int, shape: tuple) -> list[np.ndarray]:
    """The masks LoadGen logged in AccuracyOnly mode (mlperf_log_accuracy.json: one {seq_id, qsl_idx, data hex} entry
    per line, read line by line so a large log is never held twice), in sample order. A sample logged twice (MultiStream
    fills its last query of 8 with repeats) keeps its first answer, as MLPerf's accuracy scripts do."""
    masks: list = [None] * count
    with open(os.path.join(folder, "mlperf_log_accuracy.json"), encoding="utf-8") as f:
        for line in f:
            line = line.strip().rstrip(",")
            if not line.startswith("{"):
                continue
            entry = json.loads(line)
            if masks[entry["qsl_idx"]] is None:
                masks[entry["qsl_idx"]] = np.frombuffer(bytes.fromhex(entry["data"]), np.uint8).reshape(shape)
    missing = [k for k, m in enumerate(masks) if m is None]
    if missing:
        raise SampleError(f"LoadGen's accuracy log in {folder} lacks {len(missing)} of {count} samples "
                          f"(first: {missing[:5]})")
    return masks
