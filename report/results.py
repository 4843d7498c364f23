"""What a run found, typed from the pipeline to the writers: the report, its rows and their parts, the skipped rows.

Only the writers (report/json_report.py, the stdout table, the CSV, the plots) turn these into dicts and strings.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from report.metrics import Agreement, NonFinite, Scores
from utils.timing import PERCENTILES, Timing


@dataclass(frozen=True)
class Skip:
    """A row that did not run: skipped as not applicable here, or `failed` (asked for, and it broke: exit 1)."""

    engine: str
    precision: str
    reason: str
    failed: bool = False


@dataclass(frozen=True)
class FailedImage:
    """An image left out of a row's scores because it could not be read."""

    id: str
    error: str


@dataclass(frozen=True)
class Gate:
    """A row's fidelity: the bar of its precision, `fidelity` ('ok' / 'LOW' / 'unchecked') and dice_delta (the row's
    model-size dice minus the eager fp32 reference's on the same images; None without masks or a reference)."""

    cosine_bar: Optional[float]
    fidelity: str
    dice_delta: Optional[float]


@dataclass(frozen=True)
class PerImage:
    """Per-image lists, aligned by index, in run order; `dice_model_res` only when dice is scored at the original
    size."""

    id: list[str]
    width: list[int]
    height: list[int]
    dice: list[Optional[float]]
    iou: list[Optional[float]]
    fg_true: list[Optional[float]]
    fg_pred: list[float]
    cosine: list[Optional[float]]
    batch_ms: list[float]
    dice_model_res: Optional[list[Optional[float]]] = None


@dataclass(frozen=True, eq=False)
class WorstImage:
    """One of a row's worst-scored images, kept for the HTML report (not in the JSON): dice and IoU at the model's
    size; `fp_share` / `fn_share` the false-positive / false-negative pixels (foreground = any class but 0) as shares
    of the union of predicted and true foreground, so that fp_share + fn_share = 1 - IoU for one foreground class;
    thumbnails at the image's own aspect ratio: `image` (h, w, 3) uint8, `pred` and `truth` (h, w) bool."""

    id: str
    dice: float
    iou: float
    fp_share: float
    fn_share: float
    image: object  # numpy.ndarray, as are pred and truth
    pred: object
    truth: object


@dataclass(frozen=True)
class RankPart:
    """One torchrun rank's share of a merged row."""

    rank: int
    host: str
    device: str
    images: int
    compile_s: float
    artifact: str
    first_call_ms: Optional[float]
    fps: Optional[float]
    latency_median_ms: Optional[float]
    e2e_s: float
    e2e_fps: Optional[float]
    start_s: Optional[float]


@dataclass(frozen=True)
class Row:
    """One engine x precision that ran: what ran, its scores (at the original size when asked, the model-size ones
    then in `model_res`), agreement with the reference, fidelity, speed, and the per-image lists."""

    engine: str
    device: str
    precision: str
    artifact: str
    artifact_path: str
    images: int
    interrupted: bool
    failed_images: list[FailedImage]
    scores: Scores
    agreement: Agreement
    model_res: Optional[Scores]
    gate: Gate
    compile_s: float
    first_call_ms: Optional[float]
    e2e_s: float
    e2e_fps: Optional[float]
    timed_region: str
    levers: list[str]
    split_s: dict[str, float]
    timing: Optional[Timing]
    per_image: PerImage
    outputs_s: Optional[float] = None
    ranks: Optional[list[RankPart]] = None
    nonfinite: list[NonFinite] = field(default_factory=list)  # images with NaN / inf logits: the row is LOW
    scenarios: list = field(default_factory=list)  # pipeline.scenario_rows.ScenarioRow, one per LoadGen scenario
    concurrency: Optional[object] = None  # pipeline.concurrency.Sweep: --concurrency's levels
    profile: Optional[object] = None  # pipeline.profile.Profile: --profile's operators
    worst: list[WorstImage] = field(default_factory=list)  # with --html, the first row's lowest dice, lowest first

    @property
    def label(self) -> str:
        return f"{self.engine} {self.precision}"


@dataclass
class RunInfo:
    """What was run on what (the JSON's `config`). `host`, `calibration`, `auto` and `distributed` are the facts as
    their owners describe them (utils.device, dataset.calibration, pipeline.auto, pipeline.distributed)."""

    model: str
    variant: str
    parameters: int
    n_classes: int
    weights: str
    data: str
    images: int
    unpaired: int
    image_size: list[int]
    eval_resolution: str
    command: str
    started: str
    batch_size: int
    loop: int
    warm_counter: int
    torch: str
    threads: int
    host: dict
    artifact_cache: Optional[str]
    calibration_images: Optional[int] = None
    calibration: Optional[dict] = None
    decode: str = "fast"
    decode_note: str = ""
    workers: int = 0
    reference: Optional[str] = None
    auto: Optional[list[dict]] = None
    hints: list[str] = field(default_factory=list)
    decode_fallbacks: Optional[list[str]] = None
    conversions: Optional[list[dict]] = None  # files not 8-bit RGB (or not plain mask bands), as dataset.modes says
    distributed: Optional[dict] = None
    min_duration_s: float = 0.0  # timed calls go on until this many seconds are done too
    loadgen: Optional[dict] = None  # --scenario's LoadGen scenarios (pipeline.scenario_rows.ScenarioPlan)
    percentiles: list[float] = field(default_factory=lambda: list(PERCENTILES))
    run_s: Optional[float] = None  # wall seconds from the run's start (Python's imports done) to its report
    weights_digest: Optional[str] = None  # report.compare.weights_digest: what --compare matches weights by
    data_digest: Optional[str] = None  # report.compare.data_digest: what --compare matches data by


@dataclass(frozen=True)
class WrittenFiles:
    """What the per-image results wrote (the JSON's `outputs`): a path is named only once its file is written."""

    eval_resolution: str
    folder: Optional[str] = None
    overlay: bool = False
    files: int = 0
    submission: Optional[str] = None
    submission_rows: int = 0
    csv: Optional[str] = None
    csv_rows: int = 0
    not_written: list[dict] = field(default_factory=list)  # masks / overlays that failed: {path, error}, the first 100
    not_written_count: int = 0


@dataclass(frozen=True)
class TraceFile:
    """The --trace file, once written (the JSON's `trace`): its path, its spans, its tracks (threads of all ranks)."""

    path: str
    spans: int
    tracks: int


@dataclass
class Report:
    """A run's report: what ran, the rows that finished, those skipped or failed, and whether a signal cut it short
    (`interrupted_by` names it: 'SIGINT' for Ctrl-C, 'SIGTERM', 'SIGHUP')."""

    info: RunInfo
    rows: list[Row]
    skipped: list[Skip]
    partial: bool
    outputs: Optional[WrittenFiles] = None
    plots: Optional[list[str]] = None
    interrupted_by: Optional[str] = None
    cache_note: Optional[str] = None  # the report's last line when the cache grew (utils.cache_folders)
    trace: Optional[TraceFile] = None
    comparison: list = field(default_factory=list)  # report.compare.Comparison, one per --compare base
