"""The MLPerf scenarios' shapes: what one scenario run is asked (ScenarioSettings) and what it measured
(ScenarioResult, with Server's every rate tried as a ServerRun). pipeline.scenarios runs them; the report reads them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from utils.errors import SampleError

SCENARIOS = ("singlestream", "multistream", "offline", "server")
LOADGEN_NAMES = {"singlestream": "SingleStream", "multistream": "MultiStream", "offline": "Offline", "server": "Server"}
METRICS = {"singlestream": "p90 latency (ms)", "multistream": "p99 per-query latency (ms)",
           "offline": "samples/s", "server": "queries/s at p99 under target"}


@dataclass(frozen=True)
class ScenarioSettings:
    """One scenario's run. Short runs (`min_duration_s`, `min_queries`) are for comparing engines; `mlperf_minimums`
    keeps LoadGen's official minimums (mlperf.conf: 600 s, its query counts, early stopping), the only runs called
    submission grade. `target_latency_ms` is Server's p99 bound; `search_runs` the LoadGen runs its rate search takes.
    Logs go to `log_dir/<scenario>` (Server: one folder per rate tried; accuracy: `<scenario>-accuracy`)."""

    scenario: str = "singlestream"
    min_duration_s: float = 10.0
    min_queries: int = 100
    target_latency_ms: float = 100.0
    mlperf_minimums: bool = False
    log_dir: str = "mlperf_logs"
    search_runs: int = 5

    def __post_init__(self):
        if self.scenario not in SCENARIOS:
            raise SampleError(f"unknown MLPerf scenario {self.scenario!r}; valid scenarios: {', '.join(SCENARIOS)}")
        if not (self.min_duration_s > 0 and self.min_queries >= 1 and self.target_latency_ms > 0
                and self.search_runs >= 1):
            raise SampleError("MLPerf settings need min_duration_s > 0, min_queries >= 1, target_latency_ms > 0 and "
                              f"search_runs >= 1; got {self}")


@dataclass(frozen=True)
class ServerRun:
    """One LoadGen Server run of the search, or the run that confirms its best rate: the rate asked for, what
    LoadGen measured, and whether p99 met the target."""

    target_qps: float
    scheduled_qps: float
    completed_qps: float  # the summary's headline: samples completed per second
    latency_p99_ms: float
    met: bool
    validity: str
    log_dir: str
    queries: int = 0  # queries LoadGen issued
    confirms: bool = False  # the run at the best rate, long enough for LoadGen's early stopping (search_server)


@dataclass(frozen=True)
class ScenarioResult:
    """What LoadGen measured and judged for one scenario. `metric` is the scenario's figure (METRICS names it; None
    when Server found no rate under the target); latencies are LoadGen's, in ms (MultiStream: per query).
    `submission_grade` is true only for a VALID run under LoadGen's official minimums."""

    scenario: str
    metric_name: str
    metric: Optional[float]
    validity: str
    reasons: tuple = ()
    mlperf_minimums: bool = False
    submission_grade: bool = False
    performance_sample_count: int = 0
    batch_size: int = 1
    queries: int = 0
    samples: int = 0
    duration_s: float = 0.0
    latency_p50_ms: Optional[float] = None
    latency_p90_ms: Optional[float] = None
    latency_p99_ms: Optional[float] = None
    # SingleStream: the 95 % interval of the median query latency, from the harness's own clock (issue to completion of
    # each query), so that its p50 can be held against the loop's median and interval; None elsewhere or too few
    latency_p50_ci_ms: Optional[list] = None
    early_stopping: str = ""
    log_dir: str = ""
    target_latency_ms: Optional[float] = None  # Server
    server_runs: tuple = ()  # Server: every ServerRun of the search, in order, then its confirmation if one ran
    concurrency: int = 1  # calls kept in flight (Offline, Server: --concurrency's plateau)
