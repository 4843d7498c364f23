"""Side-by-side runs: which (engine, precision) rows to run, and running them so that one failure loses no other row."""
from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Callable

import torch

import engines
from engines.base import Unsupported
from utils.errors import SampleError, first_line
from utils.evaluate import Reference, run_engine
from utils.fidelity import gate_row

PRECISIONS = ("fp32", "fp16", "bf16", "int8")


def parse_precisions(text: str) -> list[str]:
    """'fp32,int8' -> ['fp32', 'int8']; SampleError names the valid precisions."""
    names = [p.strip().lower() for p in text.split(",") if p.strip()]
    bad = [p for p in names if p not in PRECISIONS]
    if bad or not names:
        what = ", ".join(bad) if bad else repr(text)
        raise SampleError(f"unknown precision {what}; use a comma list of {', '.join(PRECISIONS)}")
    return list(dict.fromkeys(names))


def plan_rows(engine_spec: str, precisions: list[str], device: torch.device) -> tuple[list[tuple[str, str]], list[dict]]:
    """The (engine, precision) rows to run and the skipped ones with their reason.

    `engine_spec` is `auto`, `all` (every registered engine whose package and device are present) or a comma list.
    Precisions run where the engine supports them and are skipped elsewhere. An engine asked for by name that cannot
    run here at all (no package, device or precision of those asked) is planned anyway, so running it reports the
    reason as a failure; under `all` it is listed as skipped instead.
    """
    spec = engine_spec.strip().lower()
    if spec == "auto":
        return [(engines.default_engine(device, p), p) for p in precisions], []
    if spec == "all":
        names, explicit = list(engines.ENGINES), False
    else:
        names, explicit = list(dict.fromkeys(engines.canonical_name(n) for n in spec.split(",") if n.strip())), True
        if not names:
            raise SampleError(f"--engine {engine_spec!r} names no engine; use auto, all or a comma list of "
                              f"{', '.join(engines.ENGINES)}")
    rows, skipped = [], []
    for name in names:
        reason = None if explicit else engines.missing(name, device)
        if reason:
            skipped.append({"engine": name, "precision": ",".join(precisions), "reason": reason})
            continue
        supported = engines.module_of(name).PRECISIONS
        runnable = [p for p in precisions if p in supported]
        for precision in precisions:
            if precision in runnable or (explicit and not runnable):
                rows.append((name, precision))
            else:
                skipped.append({"engine": name, "precision": precision,
                                "reason": f"engine {name} does not support {precision} ({', '.join(supported)})"})
    return rows, skipped


def run_rows(plan: list[tuple[str, str]], model: torch.nn.Module, shape: tuple, device: torch.device,
             make_batches: Callable[[], Iterable], total: int, reference: Reference | None, report: dict,
             loop: int, warmup: int, show_progress: bool = True, outputs=None, **options) -> int:
    """Run each planned row into `report` (rows / skipped); returns 1 when a row failed or none ran, else 0.

    A row the engine refuses as unsupported here (e.g. bf16 on a CPU without it) is skipped, not failed.

    `outputs` (utils.outputs.Outputs or None) sees every batch's logits and adds its figures to each row.
    `options` go to engines.load (threads, cache, calibration, ...). Ctrl-C marks the report partial and stops.
    """
    status = 0
    for name, precision in plan:
        if show_progress:
            print(f"[{name} {precision}] compiling / loading ...", file=sys.stderr)
        try:
            engine = engines.load(name, model, shape, device, precision, **options)
            try:
                hook = outputs.hook(name, precision) if outputs else None
                row = run_engine(engine, make_batches, total, reference, loop, warmup, show_progress=show_progress,
                                 on_batch=hook)
            finally:
                engine.close()
        except KeyboardInterrupt:
            report["partial"] = True
            return 130
        except Unsupported as exc:
            report["skipped"].append({"engine": name, "precision": precision, "reason": str(exc)})
            continue
        except Exception as exc:  # noqa: BLE001  any engine failure becomes a reported row; the others still run
            reason = str(exc) if isinstance(exc, SampleError) else \
                f"engine {name} {precision} failed: {type(exc).__name__}: {first_line(exc)}"
            report["skipped"].append({"engine": name, "precision": precision, "reason": reason, "failed": True})
            if outputs:
                outputs.discard(name, precision)
            status = 1
            continue
        row["artifact_path"] = engine.artifact_path
        if outputs:
            outputs.finish_row(row)
        report["rows"].append(gate_row(row))
        if row["failed_images"]:
            status = 1
    return 1 if plan and not report["rows"] else status  # nothing asked for could run
