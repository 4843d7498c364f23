"""A row's MLPerf LoadGen scenarios (`--scenario`): the query sample library is decoded once per run; then, per row and
scenario, LoadGen's accuracy mode (each sample once: its logged masks scored with this sample's dice and held against
the row's accuracy pass on the same images) and its performance mode (pipeline.scenarios). docs/scenarios.md says how
the figures relate to MLPerf's rules and to the original sample's fps."""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
import torch

from dataset.decode import load_image, load_mask
from dataset.pairs import Dataset
from engines.base import Engine
from pipeline.concurrency import shared_threads
from pipeline.scenario_types import METRICS, ScenarioResult, ScenarioSettings
from pipeline.scenarios import loadgen, run_accuracy, run_scenario
from report.metrics import Accuracy
from utils.errors import SampleError
from utils.files import folder_problem

TARGET_TIMES_MEDIAN = 5.0  # Server's default p99 bound: this many times the row's own median call


@dataclass(frozen=True)
class Library:
    """LoadGen's query sample library: the data set's first images that fit the memory budget, decoded and resized
    as the accuracy pass decodes them (uint8, at the model's size), with their masks when the data has them."""

    ids: list[str]
    images: torch.Tensor  # (N, H, W, C) uint8
    masks: Optional[torch.Tensor]  # (N, H, W) uint8 class maps, or None
    budget_bytes: int
    available: int  # images in the data set


@dataclass(frozen=True)
class ScenarioPlan:
    """The LoadGen scenarios every row runs, and how long and where."""

    names: tuple[str, ...]
    library: Library
    settings: ScenarioSettings  # min duration, min queries, minimums; the scenario and log folder are set per row
    target_latency_ms: Optional[float]  # None: TARGET_TIMES_MEDIAN x the row's median call
    log_root: str
    batch_size: int
    n_classes: int

    def describe(self) -> dict:
        """The JSON's `config.loadgen`: the scenarios, the library and the run lengths."""
        return {"scenarios": list(self.names), "performance_sample_count": len(self.library.ids),
                "images_available": self.library.available, "qsl_memory_bytes": self.library.budget_bytes,
                "min_duration_s": self.settings.min_duration_s, "min_queries": self.settings.min_queries,
                "mlperf_minimums": self.settings.mlperf_minimums, "target_latency_ms": self.target_latency_ms,
                "log_root": self.log_root}


@dataclass(frozen=True)
class AccuracyCheck:
    """LoadGen's accuracy mode against the row's accuracy pass on the same images: the masks LoadGen logged, scored
    with this sample's dice at the model's size. `identical`: every image's dice is equal (None without masks)."""

    images: int
    dice: Optional[float]
    pass_dice: Optional[float]
    max_abs_dice_diff: Optional[float]
    identical: Optional[bool]


@dataclass(frozen=True)
class ScenarioRow:
    """One row x scenario: what LoadGen measured and judged, its accuracy check, and where Server's bound came from."""

    result: ScenarioResult
    accuracy: AccuracyCheck
    target_latency_source: Optional[str] = None  # Server: "--target_latency_ms" or "5x the row's median call"


def images_within(budget_bytes: int, h: int, w: int, count: int, channels: int = 3) -> int:
    """How many of `count` HxWxC uint8 images the QSL may hold in `budget_bytes` (LoadGen's performance sample count);
    at least one when `count` > 0, since LoadGen cannot run without a sample."""
    per_image = max(1, h * w * channels)
    return min(count, max(1, budget_bytes // per_image)) if count > 0 else 0


def hold_images(arrays: Sequence[np.ndarray]) -> torch.Tensor:
    """Stack decoded HWC uint8 images (dataset.decode.load_image's) into the QSL's (N, H, W, C) tensor."""
    if not arrays:
        raise SampleError("the MLPerf scenarios need at least one decoded image")
    shapes = {tuple(a.shape) for a in arrays}
    if len(shapes) != 1 or any(a.dtype != np.uint8 or a.ndim != 3 for a in arrays):
        raise SampleError(f"the QSL needs HWC uint8 images of one size; got shapes {sorted(shapes)}")
    return torch.from_numpy(np.stack(arrays))


def load_library(dataset: Dataset, size: tuple[int, int], decode: str, budget_bytes: int) -> Library:
    """Decode the data set's first images that fit `budget_bytes` (a file that cannot be decoded is left out: the
    accuracy pass names it)."""
    w, h = size
    count = images_within(budget_bytes, h, w, len(dataset.samples))
    ids, images, masks = [], [], []
    for sample in dataset.samples:
        if len(ids) == count:
            break
        try:
            image, original = load_image(sample.image, size, decode)
            mask = load_mask(sample.mask, size, original) if sample.mask else None
        except SampleError:
            continue
        ids.append(sample.id)
        images.append(image)
        masks.append(mask)
    if not ids:
        raise SampleError("the MLPerf scenarios need at least one image that decodes; none did")
    stacked = None if any(m is None for m in masks) else torch.from_numpy(np.stack(masks))
    return Library(ids, hold_images(images), stacked, budget_bytes, len(dataset.samples))


def check_accuracy(library: Library, masks: list[np.ndarray], accuracy: Accuracy, n_classes: int) -> AccuracyCheck:
    """Score LoadGen's logged masks and hold them against the accuracy pass's per-image dice (model size)."""
    if library.masks is None:
        return AccuracyCheck(len(masks), None, None, None, None)
    scored = Accuracy()  # the accuracy pass's own scoring of class maps
    scored.score(library.ids[: len(masks)], torch.from_numpy(np.stack(masks)).long(), library.masks.long(), n_classes)
    dice = scored.dice
    by_id = dict(zip(accuracy.ids, accuracy.dice))
    pass_dice = [by_id.get(i) for i in library.ids[: len(dice)]]
    if any(d is None for d in pass_dice):  # an image the pass did not score (interrupted): nothing to hold against
        return AccuracyCheck(len(dice), float(np.mean(dice)), None, None, None)
    diffs = [abs(a - b) for a, b in zip(dice, pass_dice)]
    return AccuracyCheck(len(dice), float(np.mean(dice)), float(np.mean(pass_dice)), max(diffs),
                         all(d == 0.0 for d in diffs))


def run_scenarios(engine: Engine, plan: ScenarioPlan, accuracy: Accuracy, median_ms: Optional[float],
                  label: str, concurrency: int = 1, done: Optional[list] = None) -> list[ScenarioRow]:
    """Every scenario of `plan` on one row's engine: accuracy mode, then performance mode (Server: its search), Offline
    and Server with `concurrency` calls in flight. Each finished scenario is appended to `done` as it ends (a signal
    keeps those); an engine failure in one is that scenario's ERROR, and the others still run."""
    rows = [] if done is None else done
    given = plan.target_latency_ms
    target = given or TARGET_TIMES_MEDIAN * (median_ms or 1.0)
    source = "--target_latency_ms" if given else f"{TARGET_TIMES_MEDIAN:g}x the row's median call"
    for name in plan.names:
        folder = os.path.join(plan.log_root, label.replace(" ", "-"))  # LoadGen's logs: <folder>/<scenario>[-accuracy]
        settings = replace(plan.settings, scenario=name, log_dir=folder, target_latency_ms=target)
        try:
            rows.append(_one_scenario(engine, plan, settings, accuracy, median_ms, concurrency))
        except (SampleError, OSError) as exc:  # the engine failed inside LoadGen, or its logs could not be written
            failed = ScenarioResult(name, METRICS[name], None, "ERROR", (str(exc),), settings.mlperf_minimums)
            rows.append(ScenarioRow(failed, AccuracyCheck(0, None, None, None, None)))
            continue
        if name == "server":
            rows[-1] = replace(rows[-1], target_latency_source=source)
    return rows


def _one_scenario(engine: Engine, plan: ScenarioPlan, settings: ScenarioSettings, accuracy: Accuracy,
                  median_ms: Optional[float], concurrency: int) -> ScenarioRow:
    library = plan.library
    masks = run_accuracy(engine, library.images, plan.batch_size, settings)
    check = check_accuracy(library, masks, accuracy, plan.n_classes)
    inflight = concurrency if settings.scenario in ("offline", "server") else 1
    with shared_threads(engine, inflight, None):  # torch's CPU threads shared out, as the sweep measured them
        result = run_scenario(engine, library.images, plan.batch_size, settings, inflight,
                              None if median_ms is None else median_ms / 1000.0)
    return ScenarioRow(replace(result, concurrency=inflight), check)


def scenario_plan(config, dataset: Dataset, decode: str, n_classes: int, distributed: bool) -> ScenarioPlan | None:
    """The run's LoadGen scenarios (None: `--scenario loop` alone); refused under torchrun, and without LoadGen, before
    anything is compiled."""
    names = tuple(n for n in config.scenario if n != "loop")
    if not names:
        return None
    if distributed:
        raise SampleError("the MLPerf LoadGen scenarios run in one process; under torchrun use --scenario loop")
    loadgen()  # a clear error now, not after the first row's compile
    root = os.path.abspath(config.loadgen_logs or (os.path.join(config.output, "loadgen") if config.output
                                                   else "loadgen-logs"))
    problem = folder_problem(root)
    if problem:
        raise SampleError(f"--loadgen_logs: LoadGen's logs cannot be written to {problem}; point --loadgen_logs at a "
                          "writable folder")
    library = load_library(dataset, config.image_size, decode, int(config.qsl_memory * 2**30))
    defaults = ScenarioSettings()
    settings = ScenarioSettings(min_duration_s=config.min_duration or defaults.min_duration_s,
                                min_queries=config.min_queries or defaults.min_queries,
                                mlperf_minimums=config.mlperf_minimums)
    return ScenarioPlan(names, library, settings, config.target_latency_ms, root, config.batch_size, n_classes)
