"""`--compare BASE.json`: this run's rows against saved `--json` reports, matched by engine, precision, batch, size and
scenario, with a verdict beyond the two runs' noise; and the weights' and data's digests that tell two runs apart."""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, replace
from typing import Optional

from dataset.pairs import Dataset
from report.json_report import VERSION
from report.results import Report, RunInfo
from utils.errors import SampleError, first_line
from utils.files import open_regular
from utils.timing import median_interval

DICE_DROP = 0.003  # a matched row whose dice drops by more fails --fail_on_regression (the int8 dice-delta goal)
MEDIAN = "median call (ms)"  # the loop row's figure
LOWER_IS_FASTER = ("loop", "singlestream", "multistream")  # latencies; offline's and server's figures are rates
ADVICE = "pass a report written by sample.py --json"
BUSIER = 1.0  # a load average this much higher (a busy CPU's worth) is said at the top: the run is slower for it


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
class Facts:
    """What a report ran on, compared at the top of a comparison (a digest is None in reports older than digests)."""

    host: dict
    model: tuple  # (name, variant or None, parameters)
    weights: str
    weights_digest: Optional[str]
    data: str
    data_digest: Optional[str]
    images: int
    torch: str
    load: Optional[float] = None  # the highest load average at the end of a row's timing


@dataclass(frozen=True)
class Side:
    """One report as the comparison reads it: this run's, or a base read from its JSON file."""

    path: str
    started: Optional[str]
    partial: bool
    facts: Facts
    rows: list


@dataclass(frozen=True)
class Matched:
    """A row found in both runs. `speed_ratio` > 1: this run is faster (base median / this median; for a LoadGen rate,
    this / base). `slowdown_pct`: how much slower beyond the noise (0: not slower beyond it). `regression`: None
    without --fail_on_regression."""

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
    """This run against one base report (the JSON's `comparison[]`)."""

    base: str
    base_started: Optional[str]
    differences: list
    rows: list
    new: list
    gone: list
    fail_on_regression_pct: Optional[float]


def size_text(size: tuple) -> str:
    return "x".join(str(v) for v in size)


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
    return Side("this run", info.started, report.partial, _facts(info, max(loads, default=None)), rows)


def _facts(info: RunInfo, load: Optional[float]) -> Facts:
    return Facts(info.host, (info.model, info.variant, info.parameters), info.weights, info.weights_digest, info.data,
                 info.data_digest, info.images, info.torch, load)


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
                replace(read.facts(config), load=max(loads, default=None)), figures)


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
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise self.fail(name, f"is {type(value).__name__}, not a number")
            return float(value) if math.isfinite(value) else None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(name, f"is {type(value).__name__}, not {kind.__name__}")
        return value

    def obj(self, obj: dict, key: str, where: str) -> dict:
        return self.value(obj, key, dict, where, required=True)

    def numbers(self, obj: dict, key: str, where: str) -> Optional[list]:
        values = self.value(obj, key, list, where)
        if values is None:
            return None
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise self.fail(f"{where}.{key}", "holds a value that is not a number")
        return [float(v) for v in values]

    def facts(self, config: dict) -> Facts:
        host = self.value(config, "host", dict, "config") or {}
        model = (self.value(config, "model", str, "config", True), self.value(config, "variant", str, "config"),
                 self.value(config, "parameters", int, "config"))
        return Facts(host, model, self.value(config, "weights", str, "config") or "?",
                     self.value(config, "weights_digest", str, "config"), self.value(config, "data", str, "config")
                     or "?", self.value(config, "data_digest", str, "config"),
                     self.value(config, "images", int, "config"), self.value(config, "torch", str, "config") or "?")

    def rows(self, rows: list, config: dict) -> list:
        """Every row's loop figures and its LoadGen scenarios'; the median's interval derived from the per-call
        latencies where an older report has none."""
        size = self.numbers(config, "image_size", "config")
        if size is None or len(size) != 2:
            raise self.fail("config.image_size", "is not [width, height]")
        batch, out = self.value(config, "batch_size", int, "config", True), []
        for i, row in enumerate(rows):
            where = f"rows[{i}]"
            if not isinstance(row, dict):
                raise self.fail(where, "is not an object")
            key = Key(self.value(row, "engine", str, where, True), self.value(row, "precision", str, where, True),
                      batch, tuple(int(v) for v in size), "loop")
            interval, derived = self.numbers(row, "latency_median_ci_ms", where), False
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
    left, matched, new = list(base.rows), [], []
    for figures in this.rows:
        found = next((i for i, b in enumerate(left) if b.key == figures.key), None)
        if found is None:
            new.append(figures.key)
        else:
            matched.append(judge(left.pop(found), figures, fail_pct))
    return Comparison(base.path, base.started, differences(this, base), matched, new, [b.key for b in left],
                      fail_pct)


def compare_all(report: Report, bases: list, fail_pct: Optional[float]) -> list:
    """This run against each base read before the run (read_base)."""
    this = this_side(report)
    return [compare(this, base, fail_pct) for base in bases]


def judge(base: Figures, this: Figures, fail_pct: Optional[float]) -> Matched:
    """The speed ratio, the verdict (faster / slower when the two medians' 95 % intervals do not overlap, the same
    when they do; `noise unknown` when either has none), the slowdown beyond the noise, and the regression."""
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
    dice = this.dice - base.dice if this.dice is not None and base.dice is not None else None
    cosine = this.cosine_min - base.cosine_min if this.cosine_min is not None and base.cosine_min is not None else None
    regression = None if fail_pct is None else bool((slowdown is not None and slowdown > fail_pct)
                                                     or (dice is not None and dice < -DICE_DROP))
    loop = this.figure == MEDIAN
    k = this.key
    return Matched(k.engine, k.precision, k.batch_size, k.image_size, k.scenario,
                   base.value if loop else None, this.value if loop else None,
                   base.interval if loop else None, this.interval if loop else None,
                   None if loop else this.figure, None if loop else base.value, None if loop else this.value,
                   ratio, verdict, slowdown, dice, cosine, regression)


def _host(host: dict) -> str:
    text = f"{host.get('cpu', '?')}, {host.get('cpu_count', '?')} CPUs"
    return text + (f"; {host['accelerator']}" if host.get("accelerator") else "")


def _model(model: tuple) -> str:
    name, variant, parameters = model
    return f"{name}{f': {variant}' if variant else ''}" + (f", {parameters:,} parameters" if parameters else "")


def differences(this: Side, base: Side) -> list:
    """What the two runs did not share, said at the top of the comparison: host, model, weights, data, torch; and
    what cannot be told (a base older than the digests)."""
    t, b, lines = this.facts, base.facts, []
    if _host(t.host) != _host(b.host):
        lines.append(f"host: {_host(b.host)} in the base, {_host(t.host)} here")
    # an older report names no variant: then name and parameter count decide
    same_model = t.model == b.model or (t.model[0] == b.model[0] and t.model[2] == b.model[2]
                                        and None in (t.model[1], b.model[1]))
    if not same_model:
        lines.append(f"model: {_model(b.model)} in the base, {_model(t.model)} here")
    lines.extend(_digest_lines("weights", b.weights_digest, t.weights_digest, b.weights, t.weights))
    if b.images is not None and b.images != t.images:
        lines.append(f"data: {b.images} images in the base ({b.data}), {t.images} here ({t.data})")
    else:
        lines.extend(_digest_lines("data", b.data_digest, t.data_digest, b.data, t.data))
    if b.torch != t.torch:
        lines.append(f"torch: {b.torch} in the base, {t.torch} here")
    if b.load is not None and t.load is not None and abs(b.load - t.load) >= BUSIER:
        lines.append(f"load: the machine's load average was {b.load:g} in the base, {t.load:g} here (at the end of "
                     "the rows' timing): a busier machine slows a run")
    if base.partial:
        lines.append("the base run was interrupted (partial): a row it cut short has no timing")
    if any(f.derived for f in base.rows):
        lines.append("the base report predates the median's interval: it is derived here from the base's per-call "
                     "latencies")
    return lines


def _digest_lines(what: str, base: Optional[str], this: Optional[str], base_label: str, label: str) -> list:
    if base is None:
        if what == "weights" and (base_label == "random") != (label == "random"):
            return [f"weights: {base_label} in the base, {label} here"]
        return [f"{what}: cannot tell whether they are the same (the base report predates {what} digests; it names "
                f"{base_label}, this run {label})"]
    if base != this:
        return [f"{what}: different: {_digest_text(base_label, base)} in the base, {_digest_text(label, this)} here"]
    return []


def _digest_text(label: str, digest: Optional[str]) -> str:
    """'/models/a.pth (sha256:0123456789ab)', or the digest alone where it says all ('random, seed 0')."""
    return f"{label} ({digest[:19]})" if digest and digest.startswith("sha256:") else digest or label
