"""`--compare BASE.json`: this run's rows against saved `--json` reports, matched by engine, precision, batch, size and
scenario, with a verdict beyond the two runs' noise; and the weights' and data's digests that tell two runs apart."""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, replace
from typing import Optional

from dataset.pairs import Dataset
from report.compare_table import DICE_DROP, Facts, Side, differences, same_digest, size_text, speed_text
from report.json_report import VERSION
from report.results import Report, RunInfo
from utils.errors import SampleError, first_line
from utils.files import open_regular
from utils.timing import median_interval

MEDIAN = "median call (ms)"  # the loop row's figure
LOWER_IS_FASTER = ("loop", "singlestream", "multistream")  # latencies; offline's and server's figures are rates
ADVICE = "pass a report written by sample.py --json"
HINT = re.compile(r"\b(latency|throughput) hint\b", re.IGNORECASE)  # in an OpenVINO row's timed_region


def weights_digest(pth: Optional[str], seed: int) -> str:
    """`sha256:<hex>` of the checkpoint file's bytes, or `random, seed N` for the weights `--seed N` draws."""
    if not pth:
        return f"random, seed {seed}"
    digest = hashlib.sha256()
    try:
        with open_regular(pth, "checkpoint") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise SampleError(f"cannot read the checkpoint {pth} for its digest: {exc.strerror or exc}") from None
    return "sha256:" + digest.hexdigest()


def data_digest(dataset: Dataset) -> str:
    """`sha256:<hex>` over the sorted lines `image name, its size, mask name, its size` of every image the run
    evaluates: which files (by name, not folder) and how many bytes each; not their bytes: cheap for any set."""
    lines = sorted(f"{_namesize_text(s.image)}\t{_namesize_text(s.mask)}" for s in dataset.samples + dataset.unpaired)
    return "sha256:" + hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


def _namesize_text(path: Optional[str]) -> str:
    if path is None:
        return "-\t-"
    try:
        size = os.path.getsize(path)
    except OSError:  # gone since it was found: the run reports the image it cannot read; the digest just differs
        size = -1
    return f"{os.path.basename(path)}\t{size}"


@dataclass(frozen=True)
class Key:
    """What matches a row with a base row: engine, precision, batch size, image size (W, H), `loop` (the timed loop)
    or a LoadGen scenario."""

    engine: str
    precision: str
    batch_size: int
    image_size: tuple
    scenario: str


@dataclass(frozen=True)
class Figures:
    """A row's compared figures: the median call (the loop) or LoadGen's metric, the median's 95 % interval, the
    model-size dice and the worst cosine; `derived`: the interval was computed here from an older report's calls."""

    key: Key
    figure: str
    value: Optional[float]
    interval: Optional[tuple] = None
    dice: Optional[float] = None
    cosine_min: Optional[float] = None
    derived: bool = False


@dataclass(frozen=True)
class Matched:
    """A row found in both runs. `speed_ratio` > 1: this run is faster (base median / this median; for a LoadGen rate,
    this / base); `speed` says it as stdout and the HTML page do ('1.27x slower'). `slowdown_pct`: how much slower
    beyond the noise (0: not slower beyond it). `dice_change`: None where the runs' weights or data differ.
    `regression`: None without --fail_on_regression."""

    engine: str
    precision: str
    batch_size: int
    image_size: tuple
    scenario: str
    base_median_ms: Optional[float]
    median_ms: Optional[float]
    base_median_ci_ms: Optional[tuple]
    median_ci_ms: Optional[tuple]
    metric_name: Optional[str]
    base_metric: Optional[float]
    metric: Optional[float]
    speed_ratio: Optional[float]
    speed: Optional[str]
    verdict: str
    slowdown_pct: Optional[float]
    dice_change: Optional[float]
    cosine_change: Optional[float]
    regression: Optional[bool]

    @property
    def label(self) -> str:
        return f"{self.engine} {self.precision}, batch {self.batch_size}, {size_text(self.image_size)}, {self.scenario}"


@dataclass(frozen=True)
class Comparison:
    """This run against one base report (the JSON's `comparison[]`). `dice_compared`: both runs' weights and data
    digests match, so a dice change means something (and --fail_on_regression gates it)."""

    base: str
    base_started: Optional[str]
    differences: list
    rows: list
    new: list
    gone: list
    fail_on_regression_pct: Optional[float]
    dice_compared: bool


def this_side(report: Report) -> Side:
    """This run's rows and facts."""
    info, rows = report.info, []
    for row in report.rows:
        key = Key(row.engine, row.precision, info.batch_size, tuple(info.image_size), "loop")
        t = row.timing
        interval = tuple(t.latency_median_ci_ms) if t and t.latency_median_ci_ms else None
        rows.append(Figures(key, MEDIAN, t.latency_median_ms if t else None, interval,
                            (row.model_res or row.scores).dice, row.agreement.cosine_min))
        rows.extend(Figures(replace(key, scenario=s.result.scenario), s.result.metric_name, s.result.metric)
                    for s in row.scenarios)
    loads = [r.timing.load_average for r in report.rows if r.timing and r.timing.load_average is not None]
    return Side("this run", info.started, report.partial, _facts(info, max(loads, default=None), report.rows), rows)


def _facts(info: RunInfo, load: Optional[float], rows: list) -> Facts:
    return Facts(info.host, (info.model, info.variant, info.parameters), info.weights, info.weights_digest, info.data,
                 info.data_digest, info.images, info.torch, info.batch_size, tuple(info.image_size), load,
                 info.threads, info.decode, *_row_facts([(r.engine, r.device, r.timed_region) for r in rows]))


def _row_facts(rows: list) -> tuple:
    """(the rows' devices, sorted; the OpenVINO hint their timed regions name, or None) from (engine, device,
    timed_region) triples: the config holds neither."""
    hints = {m.group(1).lower() for engine, _, timed in rows if engine == "openvino" and timed
             for m in [HINT.search(timed)] if m}
    return tuple(sorted({device for _, device, _ in rows if device})), ", ".join(sorted(hints)) or None


def read_base(path: str) -> Side:
    """A saved report (any version up to this sample's), or a SampleError that says in one line why it cannot be
    compared with: missing or unreadable, not JSON, not a report of this sample, written by a newer version."""
    try:
        with open_regular(path, "--compare report") as f:
            text = f.read()
    except SampleError as exc:
        raise SampleError(f"{exc}; {ADVICE}") from None
    except OSError as exc:
        raise SampleError(f"cannot read --compare report {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise SampleError(f"--compare {path}: not JSON ({first_line(exc)}); {ADVICE}") from None
    if not isinstance(data, dict) or not all(k in data for k in ("version", "config", "rows")):
        raise SampleError(f"--compare {path}: not a report of this sample (no \"version\", \"config\" and \"rows\" "
                          f"at the top); {ADVICE}")
    version = data["version"]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SampleError(f"--compare {path}: not a report of this sample (its version is {version!r}); {ADVICE}")
    if version > VERSION:
        raise SampleError(f"--compare {path}: written by a newer version of this sample (report version {version}, "
                          f"this one reads up to {VERSION}); compare with that version or rerun the base with this one")
    read = _Reader(path)
    config = read.obj(data, "config", "")
    rows = read.value(data, "rows", list, "") or []
    figures = read.rows(rows, config)  # each row checked first: a row that is not an object is named
    loads = [v for v in (read.value(r, "load_average", float, f"rows[{i}]") for i, r in enumerate(rows))
             if v is not None]
    return Side(path, read.value(config, "started", str, "config"), bool(data.get("partial")),
                replace(read.facts(config, rows), load=max(loads, default=None)), figures)


class _Reader:
    """Reads a base report's fields, each checked: a wrong type is a SampleError naming the field, never a guess."""

    def __init__(self, path: str):
        self.path = path

    def fail(self, where: str, what: str) -> SampleError:
        return SampleError(f"--compare {self.path}: not a report of this sample: {where} {what}; {ADVICE}")

    def value(self, obj: dict, key: str, kind, where: str, required: bool = False):
        """obj[key] of `kind` (float: any finite JSON number, NaN and infinities read as null), or None if absent."""
        value, name = obj.get(key), f"{where}.{key}" if where else key
        if value is None:
            if required:
                raise self.fail(name, "is missing")
            return None
        if kind is float:
            number = self.number(value, name)
            return number if math.isfinite(number) else None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(name, f"is {type(value).__name__}, not {kind.__name__}")
        return value

    def number(self, value, name: str) -> float:
        """A JSON number as a float; a bool, a string or an integer too large for a float is no number."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(name, f"is {type(value).__name__}, not a number")
        try:
            return float(value)
        except OverflowError:
            raise self.fail(name, "is too large a number") from None

    def obj(self, obj: dict, key: str, where: str) -> dict:
        return self.value(obj, key, dict, where, required=True)

    def numbers(self, obj: dict, key: str, where: str) -> Optional[list]:
        """obj[key]: a list of finite numbers, or None if absent."""
        values, name = self.value(obj, key, list, where), f"{where}.{key}"
        if values is None:
            return None
        numbers = [self.number(v, f"{name}[{i}]") for i, v in enumerate(values)]
        if not all(math.isfinite(v) for v in numbers):
            raise self.fail(name, "holds a value that is not a finite number")
        return numbers

    def interval(self, row: dict, where: str) -> Optional[tuple]:
        """The row's `latency_median_ci_ms`: [low, high] with low <= high, or None if absent."""
        interval = self.numbers(row, "latency_median_ci_ms", where)
        if interval is not None and (len(interval) != 2 or interval[0] > interval[1]):
            raise self.fail(f"{where}.latency_median_ci_ms", f"is {interval}, not [low, high] (2 numbers, low <= high)")
        return tuple(interval) if interval is not None else None

    def shape(self, config: dict) -> tuple:
        """(batch size, image size (W, H)): every row's."""
        size = self.numbers(config, "image_size", "config")
        if size is None or len(size) != 2 or not all(v == int(v) and v > 0 for v in size):
            raise self.fail("config.image_size", "is not [width, height] (2 positive integers)")
        return self.value(config, "batch_size", int, "config", True), tuple(int(v) for v in size)

    def facts(self, config: dict, rows: list) -> Facts:
        host = self.value(config, "host", dict, "config") or {}
        model = (self.value(config, "model", str, "config", True), self.value(config, "variant", str, "config"),
                 self.value(config, "parameters", int, "config"))
        rows_facts = _row_facts([tuple(self.value(r, k, str, f"rows[{i}]") for k in ("engine", "device",
                                                                                      "timed_region"))
                                 for i, r in enumerate(rows)])
        return Facts(host, model, self.value(config, "weights", str, "config") or "?",
                     self.value(config, "weights_digest", str, "config"), self.value(config, "data", str, "config")
                     or "?", self.value(config, "data_digest", str, "config"),
                     self.value(config, "images", int, "config"), self.value(config, "torch", str, "config") or "?",
                     *self.shape(config), None, self.value(config, "threads", int, "config"),
                     self.value(config, "decode", str, "config"), *rows_facts)

    def rows(self, rows: list, config: dict) -> list:
        """Every row's loop figures and its LoadGen scenarios'; the median's interval derived from the per-call
        latencies where an older report has none."""
        batch, size = self.shape(config)
        out = []
        for i, row in enumerate(rows):
            where = f"rows[{i}]"
            if not isinstance(row, dict):
                raise self.fail(where, "is not an object")
            key = Key(self.value(row, "engine", str, where, True), self.value(row, "precision", str, where, True),
                      batch, size, "loop")
            interval, derived = self.interval(row, where), False
            calls = self.numbers(row, "latencies_ms", where)
            if interval is None and calls:
                interval = median_interval(calls)
                derived = interval is not None
            dice = self.value(row, "model_res_dice", float, where)
            out.append(Figures(key, MEDIAN, self.value(row, "latency_median_ms", float, where),
                               tuple(interval) if interval else None,
                               self.value(row, "dice", float, where) if dice is None else dice,
                               self.value(row, "cosine_min", float, where), derived))
            for j, s in enumerate(self.value(row, "scenarios", list, where) or []):
                at = f"{where}.scenarios[{j}]"
                if not isinstance(s, dict):
                    raise self.fail(at, "is not an object")
                out.append(Figures(replace(key, scenario=self.value(s, "scenario", str, at, True)),
                                   self.value(s, "metric_name", str, at) or "?", self.value(s, "metric", float, at)))
        return out


def compare(this: Side, base: Side, fail_pct: Optional[float] = None) -> Comparison:
    """Each of this run's rows against the first base row with its key; the base rows left over are gone."""
    t, b = this.facts, base.facts
    dice = same_digest(b.weights_digest, t.weights_digest) and same_digest(b.data_digest, t.data_digest)
    left, matched, new = list(base.rows), [], []
    for figures in this.rows:
        found = next((i for i, b in enumerate(left) if b.key == figures.key), None)
        if found is None:
            new.append(figures.key)
        else:
            matched.append(judge(left.pop(found), figures, fail_pct, dice))
    return Comparison(base.path, base.started, differences(this, base), matched, new, [b.key for b in left],
                      fail_pct, dice)


def compare_all(report: Report, bases: list, fail_pct: Optional[float]) -> list:
    """This run against each base read before the run (read_base)."""
    this = this_side(report)
    return [compare(this, base, fail_pct) for base in bases]


def judge(base: Figures, this: Figures, fail_pct: Optional[float], compare_dice: bool = True) -> Matched:
    """The speed ratio, the verdict (faster / slower when the two medians' 95 % intervals do not overlap, the same
    when they do; `noise unknown` when either has none), the slowdown beyond the noise, and the regression; the dice
    change only where `compare_dice` (the same weights and data: another set scores another dice, no regression)."""
    ratio = slowdown = None
    verdict = "not timed"
    if base.value and this.value and base.value > 0 and this.value > 0:
        lower = base.key.scenario in LOWER_IS_FASTER
        ratio = base.value / this.value if lower else this.value / base.value
        if base.interval and this.interval:
            (b_low, b_high), (t_low, t_high) = base.interval, this.interval
            verdict = "slower" if t_low > b_high else "faster" if t_high < b_low else "the same"
            slowdown = max(0.0, (t_low / b_high - 1.0) * 100.0)  # the least slowdown both intervals allow
        else:
            verdict = "noise unknown"
            slowdown = max(0.0, (1.0 / ratio - 1.0) * 100.0)
    dice = this.dice - base.dice if compare_dice and this.dice is not None and base.dice is not None else None
    cosine = this.cosine_min - base.cosine_min if this.cosine_min is not None and base.cosine_min is not None else None
    regression = None if fail_pct is None else bool((slowdown is not None and slowdown > fail_pct)
                                                     or (dice is not None and dice < -DICE_DROP))
    loop = this.figure == MEDIAN
    k = this.key
    return Matched(k.engine, k.precision, k.batch_size, k.image_size, k.scenario,
                   base.value if loop else None, this.value if loop else None,
                   base.interval if loop else None, this.interval if loop else None,
                   None if loop else this.figure, None if loop else base.value, None if loop else this.value,
                   ratio, speed_text(ratio), verdict, slowdown, dice, cosine, regression)
