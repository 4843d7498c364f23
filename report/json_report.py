"""The report as JSON (schema in docs/outputs.md): the typed report turned into dicts here and nowhere else."""
from __future__ import annotations

import dataclasses
import json
import math

from report.metrics import NAMED, Scores
from report.results import Report, Row, RunInfo
from utils.files import shown, write_atomic

VERSION = 1
# config keys written only when the run has them (an int8 row, --engine auto, nvJPEG fallbacks, torchrun)
OPTIONAL_CONFIG = ("calibration_images", "calibration", "auto", "decode_fallbacks", "distributed", "conversions",
                   "loadgen")


def _present(obj, prefix: str = "") -> dict:
    """A dataclass's fields that are not None, their names prefixed."""
    return {prefix + f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if getattr(obj, f.name) is not None}


def config_dict(info: RunInfo) -> dict:
    return {k: v for k, v in dataclasses.asdict(info).items() if v is not None or k not in OPTIONAL_CONFIG}


def _scores(scores: Scores, prefix: str = "") -> dict:
    out = _present(scores, prefix)
    if prefix:
        out.pop(prefix + "images_scored")
    return out


def row_dict(row: Row) -> dict:
    """One row, flat, in the schema's key order; a figure a row does not have is absent, as it always was."""
    out = {"engine": row.engine, "device": row.device, "precision": row.precision, "artifact": row.artifact,
           "artifact_path": row.artifact_path, "images": row.images, "interrupted": row.interrupted,
           "failed_images": [dataclasses.asdict(f) for f in row.failed_images],
           **_scores(row.scores), **_present(row.agreement), "nonfinite_images": len(row.nonfinite),
           "nonfinite": [dataclasses.asdict(n) for n in row.nonfinite[:NAMED]]}
    if row.model_res is not None:
        out.update(_scores(row.model_res, "model_res_"))
    out.update(dataclasses.asdict(row.gate))
    out.update(compile_s=row.compile_s, first_call_ms=row.first_call_ms, e2e_s=row.e2e_s, e2e_fps=row.e2e_fps,
               timed_region=row.timed_region, levers=list(row.levers), split_s=dict(row.split_s))
    if row.timing is not None:
        out.update(dataclasses.asdict(row.timing))
    out["per_image"] = {k: v for k, v in dataclasses.asdict(row.per_image).items() if v is not None}
    if row.outputs_s is not None:
        out["outputs_s"] = row.outputs_s
    if row.ranks is not None:
        out["ranks"] = [dataclasses.asdict(r) for r in row.ranks]
    if row.concurrency is not None:
        out["concurrency"] = dataclasses.asdict(row.concurrency)
    if row.profile is not None:
        out["profile"] = dataclasses.asdict(row.profile)
    if row.scenarios:
        out["scenarios"] = [{**dataclasses.asdict(s.result), "reasons": list(s.result.reasons),
                             "server_runs": [dataclasses.asdict(r) for r in s.result.server_runs],
                             "accuracy": dataclasses.asdict(s.accuracy),
                             "target_latency_source": s.target_latency_source} for s in row.scenarios]
    return out


def report_dict(report: Report) -> dict:
    """The whole report as the JSON file holds it."""
    out = {"version": VERSION, "config": config_dict(report.info), "rows": [row_dict(r) for r in report.rows],
           "skipped": [{"engine": s.engine, "precision": s.precision, "reason": s.reason, **({"failed": True}
                                                                                         if s.failed else {})}
                       for s in report.skipped],
           "partial": report.partial, "interrupted_by": report.interrupted_by}
    if report.outputs is not None:
        out["outputs"] = dataclasses.asdict(report.outputs)
    if report.plots is not None:
        out["plots"] = list(report.plots)
    if report.trace is not None:
        out["trace"] = dataclasses.asdict(report.trace)
    if report.comparison:
        out["comparison"] = [dataclasses.asdict(c) for c in report.comparison]
    return out


def _finite(value):
    """NaN and inf become null (JSON has neither), at any depth."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _names(value):
    """Every string (file names, paths, messages) as `shown` writes it, at any depth: a name's byte that is not UTF-8
    as the text `\\xNN`, never a lone surrogate (`\\udcff`), which strict JSON readers refuse."""
    if isinstance(value, str):
        return shown(value)
    if isinstance(value, dict):
        return {shown(k): _names(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_names(v) for v in value]
    return value


def write_json(path: str, report: Report) -> None:
    """The report as JSON, written atomically: the same numbers as the table, as numbers."""
    write_atomic(path, json.dumps(_names(_finite(report_dict(report))), indent=2) + "\n")
