#!/usr/bin/env python
"""Rewrite the generated blocks of README.md and docs/*.md from the JSON reports in docs/reports/."""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import re
import shlex
import sys
import textwrap

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from report.summary import describe  # noqa: E402

# A block sits between two HTML comments; the first names its report and its kind:
#     <!-- generated from docs/reports/unet512.json: engines -->
#     ... written by this script, never by hand
#     <!-- end generated -->
# Kinds: `engines` (caption, exact command, one table row per engine x precision, skipped rows), `fastest` (the
# fastest row per precision that passes its fidelity bar) and `output` (the run's stdout saved beside the report
# as <name>.txt). `--check` writes nothing and exits 1 naming each stale block, so the docs cannot drift from the JSON.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKER = "<!-- generated from "
OPEN = re.compile(r"^<!-- generated from (?P<report>\S+): (?P<kind>\S+) -->\n", re.MULTILINE)
END = "<!-- end generated -->"
WIDTH = 115  # prose lines, as the hand-written docs wrap them
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
COLUMNS = ("engine", "precision", "median ms", "fps", "e2e fps", "worst cosine vs eager fp32", "fidelity", "dice",
           "dice delta", "compile / export s", "artifact")


class DocTablesError(Exception):
    """A marker, report or stored output that cannot be rendered: the message says which and why."""


def get_args_parser() -> argparse.ArgumentParser:
    """The command line: --check, and --root for a checkout other than this one."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 naming each stale block")
    p.add_argument("--root", default=ROOT, help="repository root holding README.md, docs/ and docs/reports/")
    return p


def load_report(root: str, name: str) -> dict:
    """The JSON report `name` (a path relative to the repository root)."""
    path = os.path.join(root, name)
    if not os.path.isfile(path):
        raise DocTablesError(f"report {name} does not exist: run the command that writes it (--json {name}) "
                             "or fix the marker")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise DocTablesError(f"report {name} cannot be read as JSON: {e}") from e


def fmt(value, spec: str) -> str:
    """`value` formatted with `spec`, or '-' when it was not measured."""
    return "-" if value is None else spec.format(value)


def fmt_ms(value) -> str:
    """Milliseconds: whole, with thousands separators, from 100 ms up (CPU rows); two decimals below (GPU rows)."""
    return fmt(value, "{:,.0f}" if value is not None and value >= 100 else "{:.2f}")


def fill(text: str) -> str:
    """Prose wrapped at WIDTH without breaking words or hyphenated names."""
    return textwrap.fill(text, WIDTH, break_long_words=False, break_on_hyphens=False)


def describe_host(host: dict | None) -> str:
    """'AMD EPYC, 2 cores (avx2, avx512f)': the machine the figures belong to, as the report itself names it."""
    return describe(host) if host else "an unrecorded machine"


def describe_date(started: str | None) -> str:
    """'2026-11-26 05:39 UTC' from config.started (ISO 8601, UTC)."""
    if not started:
        return "an unrecorded date"
    when = datetime.datetime.fromisoformat(started)
    if when.tzinfo is not None:
        when = when.astimezone(datetime.timezone.utc)
    return when.strftime("%Y-%m-%d %H:%M UTC")


def wrap_command(command: str | None, width: int = 110) -> str:
    """The recorded command, broken before options with shell line continuations (same words, same quoting)."""
    if not command:
        return "# command not recorded in this report"
    chunks = []  # each option with its value(s); the first chunk is the program
    for word in (shlex.quote(w) for w in shlex.split(command)):
        if chunks and not word.startswith("-"):
            chunks[-1] += " " + word
        else:
            chunks.append(word)
    lines = [chunks[0]]
    for chunk in chunks[1:]:
        if len(lines[-1]) + 1 + len(chunk) > width:
            lines.append("    " + chunk)
        else:
            lines[-1] += " " + chunk
    return " \\\n".join(lines)


def caption(report: dict) -> list[str]:
    """Where, when and on what the figures were measured, then the exact command in a bash block."""
    c = report.get("config", {})
    w, h = c.get("image_size", ("?", "?"))
    weights = "random weights (dice left out: it measures nothing)" if c.get("weights") == "random" else \
        f"weights `{os.path.basename(str(c.get('weights')))}`"
    calib = ""
    if c.get("calibration"):
        cal = c["calibration"]
        where = "of these images" if cal["source"] == "scored" else "images that are not scored" \
            if not cal["overlap_with_scored"] else f"images, {cal['overlap_with_scored']} of them scored"
        calib = f"; int8 calibrated on {cal['images']} {where} ({cal['what'].split(' (')[0]})"
    elif c.get("calibration_images"):
        calib = f"; int8 calibrated on {c['calibration_images']} of these images"
    partial = " **Partial report: the run was interrupted.**" if report.get("partial") else ""
    text = (f"Measured on {describe_host(c.get('host'))}, torch {c.get('torch', '?')}, "
            f"{describe_date(c.get('started'))}: {c.get('model', '?')}, {weights}, {c.get('images', '?')} images at "
            f"{w}x{h}, batch {c.get('batch_size', '?')}, {c.get('warm_counter', '?')} warm-up + {c.get('loop', '?')} "
            f"timed calls per row{calib}.{partial}")
    return [fill(text), "", "```bash", wrap_command(c.get("command")), "```", ""]


def table_row(row: dict, random_weights: bool) -> str:
    """One markdown table row; dice columns are '-' for random weights."""
    dice, delta = (None, None) if random_weights else (row.get("dice"), row.get("dice_delta"))
    cells = [row.get("engine"), row.get("precision"), fmt_ms(row.get("latency_median_ms")),
             fmt(row.get("fps"), "{:.3f}"), fmt(row.get("e2e_fps"), "{:.3f}"), fmt(row.get("cosine_min"), "{:.6f}"),
             row.get("fidelity") or "-", fmt(dice, "{:.4f}"), fmt(delta, "{:+.4f}"),
             fmt(row.get("compile_s"), "{:.1f}"), row.get("artifact") or "-"]
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def skipped_lines(report: dict) -> list[str]:
    """One line per engine x precision that did not run, FAILED ones marked."""
    lines = []
    for skip in report.get("skipped", []):
        status = "**FAILED**" if skip.get("failed") else "skipped"
        reason = " ".join(str(skip.get("reason", "")).split())
        lines.append(f"- {status} {skip.get('engine')} {skip.get('precision')}: {reason}")
    return lines + ([""] if lines else [])


def render_engines(report: dict) -> str:
    """Caption, command and one table row per engine x precision, then the skipped rows."""
    random_weights = report.get("config", {}).get("weights") == "random"
    lines = caption(report) + ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += [table_row(r, random_weights) for r in report.get("rows", [])] + [""]
    return "\n".join(lines + skipped_lines(report))


def render_fastest(report: dict) -> str:
    """Per precision, the row with the lowest median that passes its fidelity bar, and its speed-up over eager fp32."""
    rows = report.get("rows", [])
    eager = next((r for r in rows if r.get("engine") == "torch" and r.get("precision") == "fp32"), None)
    parts = []
    for precision in PRECISIONS:
        ok = [r for r in rows if r.get("precision") == precision and r.get("fidelity") == "ok"
              and r.get("latency_median_ms") is not None]
        if not ok:
            continue
        best = min(ok, key=lambda r: r["latency_median_ms"])
        speedup = f", {eager['latency_median_ms'] / best['latency_median_ms']:.2f}x eager torch fp32" if eager else ""
        parts.append(f"{precision} **{best['engine']}** {fmt_ms(best['latency_median_ms'])} ms{speedup}")
    low = [f"{r.get('engine')} {r.get('precision')}" for r in rows if r.get("fidelity") == "LOW"]
    text = "Fastest row that passes its fidelity bar, per precision (median of the timed calls): " + (
        "; ".join(parts) if parts else "none") + "."
    return fill(text + (f" Below the bar (LOW): {', '.join(low)}." if low else "")) + "\n"


def read_output(root: str, name: str) -> str:
    """The run's stdout saved beside report `name` as <name>.txt."""
    txt = os.path.splitext(name)[0] + ".txt"
    if not os.path.isfile(os.path.join(root, txt)):
        raise DocTablesError(f"stored output {txt} does not exist: save the run's stdout there (> {txt})")
    with open(os.path.join(root, txt), encoding="utf-8") as f:
        return f.read().rstrip("\n")


def render_output(report: dict, output: str) -> str:
    """The command and date, then the run's stdout in a plain code block."""
    c = report.get("config", {})
    head = f"`{c.get('command', 'command not recorded')}`, {describe_date(c.get('started'))}, stdout:"
    return "\n".join([head, "", "```", output, "```", ""])


def render_first_run(report: dict) -> str:
    """What auto's probe cost the run, in words: the figures the prose around a default run's output quotes."""
    c = report["config"]
    lines = []
    for choice in c.get("auto") or []:
        if choice["source"] != "measured":
            lines.append(f"This run reused the `auto {choice['precision']}` choice kept by an earlier one "
                         f"({choice['engine']}): no probe.")
            continue
        budget = f", within its `--auto_budget` of {choice['budget_s']:g} s" if choice.get("budget_s") else ""
        left = f"; it did not try {', '.join(choice['not_tried'])}" if choice.get("not_tried") else ""
        lines.append(f"A first run also probes the installed engines for `--engine auto`{budget}: "
                     f"{choice['probe_s']:.0f} s of this run's {c['run_s']:.0f} s (the `auto {choice['precision']}` "
                     f"line{left}); later runs reuse the choice and decide at once.")
    return fill(" ".join(lines) or f"This run chose no engine automatically; it took {c['run_s']:.0f} s.") + "\n"


KINDS = ("engines", "fastest", "output", "first_run")


def render(kind: str, name: str, root: str) -> str:
    """The body of one block of `kind` from report `name`."""
    if kind not in KINDS:
        raise DocTablesError(f"unknown block kind {kind!r} (known: {', '.join(KINDS)})")
    report = load_report(root, name)
    try:
        if kind == "output":
            return render_output(report, read_output(root, name))
        if kind == "first_run":
            return render_first_run(report)
        return render_engines(report) if kind == "engines" else render_fastest(report)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise DocTablesError(f"report {name} lacks a field or holds one of the wrong type ({e!r}): "
                             "is it a sample.py --json report?") from e


def check_markers(text: str, path: str) -> None:
    """A line that starts like an opening marker must be a whole one, or its block would be skipped silently."""
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        if line.startswith(MARKER) and not OPEN.fullmatch(line):
            raise DocTablesError(f"{path}:{number}: malformed marker {line.strip()!r}: "
                                 "write <!-- generated from docs/reports/<name>.json: <kind> --> on a line of its own")


def rewrite(text: str, path: str, root: str) -> tuple[str, list[str]]:
    """`text` with every generated block re-rendered, and the labels of the blocks that changed."""
    check_markers(text, path)
    out, stale, pos = [], [], 0
    for m in OPEN.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        end = text.find(END, m.end())
        if end < 0:
            raise DocTablesError(f"{path}:{line}: opening marker without a closing {END}")
        if OPEN.search(text, m.end(), end):
            raise DocTablesError(f"{path}:{line}: block opened again before its {END}")
        try:
            body = render(m.group("kind"), m.group("report"), root)
        except DocTablesError as e:
            raise DocTablesError(f"{path}:{line}: {e}") from e
        if text[m.end():end] != body:
            stale.append(f"{path}:{line}: {m.group('report')}: {m.group('kind')}")
        out += [text[pos:m.end()], body]
        pos = end
    return "".join(out) + text[pos:], stale


def doc_files(root: str) -> list[str]:
    """README.md, its translations (README.*.md) and docs/*.md, relative to `root`."""
    readmes = sorted(os.path.relpath(p, root) for p in glob.glob(os.path.join(root, "README*.md")))
    docs = sorted(os.path.relpath(p, root) for p in glob.glob(os.path.join(root, "docs", "*.md")))
    return readmes + docs


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or with --check, verify) every generated block; 0 when all are current."""
    args = get_args_parser().parse_args(argv)
    results = []  # (file, new text, stale labels): every file renders before any is written
    try:
        for rel in doc_files(args.root):
            with open(os.path.join(args.root, rel), encoding="utf-8") as f:
                results.append((rel, *rewrite(f.read(), rel, args.root)))
    except DocTablesError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    stale = [label for _, _, labels in results for label in labels]
    if args.check:
        for label in stale:
            print(f"stale: {label} (run python benchmarks/doc_tables.py)", file=sys.stderr)
        return 1 if stale else 0
    for rel, text, labels in results:
        if labels:
            with open(os.path.join(args.root, rel), "w", encoding="utf-8") as f:
                f.write(text)
            print(f"rewrote {len(labels)} block(s) in {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
