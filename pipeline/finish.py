"""The end of a run: every result file written, the report printed, what went wrong said on stderr, the exit status."""
from __future__ import annotations

import sys
from typing import Callable

from pipeline.config import RunConfig
from pipeline.fidelity import failures
from report.compare_table import gate
from report.csv_files import per_image_records, write_per_image_csv
from report.html import write_html
from report.json_report import report_dict, write_json
from report.outputs import Outputs
from report.results import Report, TraceFile, WrittenFiles
from report.summary import format_report, format_worst
from utils.errors import SampleError, first_line
from utils.files import shown
from utils.signals import Interrupts
from utils.streams import stdout_error, to_devnull
from utils.trace import TRACE


def finish(config: RunConfig, report: Report, outputs: Outputs | None, status: int, interrupts: Interrupts) -> int:
    """Write every result file, then print the report; one failing write is an error line, never the loss of the
    rest, and the files are written before anything can go wrong on stdout. From here on a signal is only counted."""
    interrupts.hold()
    if report.partial:
        report.interrupted_by = interrupts.first  # None under torchrun when another rank's signal stopped the run
    errors: list[str] = []

    def attempt(step: Callable[[], object], what: str = "a result file") -> bool:
        """One writer: whatever it raises is one error line naming `what`, never the loss of the other files."""
        try:
            step()
            return True
        except (SampleError, OSError) as exc:
            errors.append(str(exc))
        except Exception as exc:  # noqa: BLE001  a writer's bug or a name it cannot encode costs its file alone
            errors.append(f"cannot write {what}: {type(exc).__name__}: {first_line(exc)}")
        return False

    records = per_image_records(report.rows, config.eval_resolution, config.image_size)
    if outputs is not None or config.csv:
        report.outputs = write_files(config, outputs, records, errors, attempt)
    if config.plots:
        from report.plots import write_plots

        def plots():
            report.plots = write_plots(report_dict(report), config.plots)
        attempt(plots, f"--plots {config.plots}")
    if config.trace:  # before the JSON, which names it once written
        attempt(lambda: write_trace(config.trace, report), f"--trace {config.trace}")
    TRACE.reset(on=False)  # its spans are written (or never asked for): their memory goes
    json_written = bool(config.json) and attempt(lambda: write_json(config.json, report), f"--json {config.json}")
    low = [f"below the fidelity bar: {line}" for line in failures(report.rows)]  # stderr's lines, on the page too
    html_written = bool(config.html) and attempt(lambda: write_html(config.html, report, low), f"--html {config.html}")
    # The worst images are named when per-image results were asked for (a plain run keeps its report short).
    worst = format_worst(records) if outputs is not None or config.csv else ""
    text = format_report(report, json_path=config.json if json_written else None, worst=worst,
                         html_path=config.html if html_written else None)
    printed = print_report(shown(text))  # names as the files have them: a byte that is not UTF-8 as \xNN
    if printed not in (None, "closed"):
        errors.append(printed)
    if interrupts.received and not report.partial:  # held while the files of a complete run were written
        print(f"note: {interrupts.first} came while the result files were written; they were all written and the "
              "report is complete", file=sys.stderr)
    code = exit_status(config, report, errors, status)
    code = 141 if printed == "closed" and code == 0 else code  # 141 = 128 + SIGPIPE, as `cat` ends under `| head`
    return interrupts.close(code)  # 128 + a signal that came before the report was out: 130, 143, 129


def write_trace(path: str, report: Report) -> None:
    """The run's timeline (utils/trace.py), every rank's on rank 0; the report names it once it is written."""
    report.trace = TraceFile(path, *TRACE.write(path))


def write_files(config: RunConfig, outputs: Outputs | None, records: list, errors: list[str],
                attempt: Callable[..., bool]) -> WrittenFiles:
    """The per-image files: masks and overlays (written during the run), the submission, the CSV. A path is named
    only once its file is written: the report never claims a write that failed."""
    written = {"eval_resolution": config.eval_resolution}
    if outputs is not None:
        written.update(outputs.close())
        errors.extend(outputs.errors)
        if config.submission and attempt(outputs.write_submission, f"--submission {config.submission}"):
            written.update(submission=config.submission, submission_rows=len(outputs.rle_rows))
    if config.csv and attempt(lambda: write_per_image_csv(config.csv, records), f"--csv {config.csv}"):
        written.update(csv=config.csv, csv_rows=len(records))
    return WrittenFiles(**written)


def print_report(text: str) -> str | None:
    """Print the report (the last thing a run does): None, "closed" when stdout is a pipe whose reader has gone
    (`| head -1`), or why stdout failed (`> /dev/full`, `>&-`, a terminal that hung up)."""
    try:
        sys.stdout.write(text + "\n")
        error = stdout_error()  # a guarded stdout (the command line's) keeps its error instead of raising it
    except (OSError, ValueError, AttributeError) as exc:
        error = exc
    if error is None:
        return None
    # stdout -> /dev/null: the interpreter's last flush of what is still buffered must not fail again at exit
    to_devnull(sys.stdout)
    if isinstance(error, BrokenPipeError):
        return "closed"
    why = getattr(error, "strerror", None) or ("stdout is closed" if sys.stdout is None else error)
    return f"cannot write the report to stdout: {why}; the result files are written all the same"


def exit_status(config: RunConfig, report: Report, errors: list[str], status: int) -> int:
    """Say on stderr what went wrong (failed rows, low fidelity, unreadable images, failed writes); the exit status."""
    low = failures(report.rows)
    if low and config.strict and status == 0:
        status = 1
    for skip in report.skipped:
        if skip.failed:
            print(f"error: {skip.reason}", file=sys.stderr)
    if not report.rows and not report.partial and not any(s.failed for s in report.skipped):
        print("error: none of the requested engine x precision rows can run here (see the skipped lines); "
              "choose another --engine or --precision", file=sys.stderr)
    for line in low:
        print(f"{'error' if config.strict else 'warning'}: below the fidelity bar: {line}", file=sys.stderr)
    # --fail_on_regression's: regressed rows, and a gate that checked nothing or lost base rows; without it, nothing
    regressions = gate(report.comparison)
    for line in regressions:
        print(f"error: {line}", file=sys.stderr)
    if regressions and status == 0:
        status = 1
    for row in report.rows:
        if row.failed_images:
            failed = row.failed_images
            print(f"error: {len(failed)} image(s) could not be read and were left out of the scores "
                  f"(fix or remove them): {failed[0].error}" + (" ..." if len(failed) > 1 else ""), file=sys.stderr)
    for message in errors:
        print(f"error: {message}", file=sys.stderr)
    if report.partial:
        return 130
    return 1 if errors else status
