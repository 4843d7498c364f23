"""The report's second table: one line per row x MLPerf LoadGen scenario, with LoadGen's verdict and the accuracy
check of its logged masks; then what qualifies those figures."""
from __future__ import annotations

from report.results import Report, Row
from report.table import aligned
from utils.timing import intervals_overlap


def _ms(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _metric(s) -> str:
    if s.metric is None:
        return "-"
    return f"{s.metric:.2f} /s" if s.scenario == "offline" else \
        f"{s.metric:.2f} q/s" if s.scenario == "server" else f"{s.metric:.1f} ms"


def _agrees(check) -> str:
    if check.identical is None:
        return "-" if check.dice is None else "no pass"
    return "identical" if check.identical else f"max diff {check.max_abs_dice_diff:.2e}"


def _reasons(reasons) -> str:
    """LoadGen's lines as one sentence: its '* ' bullets continue the line before them."""
    text = ""
    for reason in reasons[:4]:
        bullet = reason.startswith("* ")
        text += (" " if bullet else "; ") + reason.removeprefix("* ") if text else reason.removeprefix("* ")
    return text


def concurrency_lines(row: Row) -> list[str]:
    """A row's --concurrency sweep in one line: throughput and latency per level, and where throughput stops growing."""
    swept = row.concurrency
    if swept is None:
        return []
    levels = ", ".join(f"{lv.concurrency}: {lv.images_per_s:.2f} img/s (p50 {lv.latency_p50_ms:.1f} ms, p99 "
                       f"{lv.latency_p99_ms:.1f})" for lv in swept.levels)
    lines = [f"{row.label}: requests in flight {levels}; best {swept.best}, throughput stops growing at "
             f"{swept.plateau} (within 5 % of the best)"] if swept.levels else []
    if swept.failed:
        lines.append(f"{row.label}: error: the requests-in-flight sweep failed: {swept.failed}; the row's other "
                     "figures stand")
    return lines + [f"{row.label}: {why}" for why in swept.skipped]


def against_loop(row: Row, result) -> str | None:
    """SingleStream's p50 held against the row's loop median, each with its 95 % interval: what the harness costs.
    None when either interval is missing (too few calls or queries, or no loop)."""
    t = row.timing
    if result.scenario != "singlestream" or not result.latency_p50_ci_ms or result.latency_p50_ms is None or \
            t is None or not t.latency_median_ci_ms or not t.latency_median_ms:
        return None
    (low, high), (loop_low, loop_high) = result.latency_p50_ci_ms, t.latency_median_ci_ms
    verdict = "the intervals overlap" if intervals_overlap(result.latency_p50_ci_ms, t.latency_median_ci_ms) else \
        "beyond both intervals"
    change = (result.latency_p50_ms / t.latency_median_ms - 1) * 100
    return (f"{row.label} singlestream: p50 {result.latency_p50_ms:.1f} ms (95 % interval {low:.1f}-{high:.1f}, the "
            f"harness's clock) against the loop's median {t.latency_median_ms:.1f} ms ({loop_low:.1f}-"
            f"{loop_high:.1f}): {change:+.1f} %, {verdict}")


def server_line(row: Row, s) -> str:
    """Server's rate, its bound, the search's run count and, when one ran, its confirmation and what came of it."""
    r = s.result
    found = f"{r.metric:.2f} q/s" if r.metric is not None else "no rate"
    confirmed = ""
    for c in (run for run in r.server_runs if run.confirms):
        over = "" if c.met else f", p99 {c.latency_p99_ms:.3g} ms over the bound: the search's best stands"
        confirmed = f", then {c.target_qps:.3g}/s again with {c.queries} queries for LoadGen's early stopping " \
                    f"({c.validity}{over})"
    return (f"{row.label} server: highest rate with p99 under {r.target_latency_ms:.1f} ms "
            f"({s.target_latency_source}): {found}, searched in {sum(not run.confirms for run in r.server_runs)} "
            f"LoadGen run(s){confirmed}")


def scenario_lines(report: Report) -> list[str]:
    """The table and its notes, or nothing when no row ran a LoadGen scenario."""
    rows: list[tuple[Row, object]] = [(row, s) for row in report.rows for s in row.scenarios]
    if not rows:
        return []
    head = ["engine", "prec", "scenario", "metric", "value", "p50 ms", "p90 ms", "p99 ms", "queries", "samples",
            "s", "LoadGen", "dice", "vs pass"]
    cells = [head] + [[row.engine, row.precision, s.result.scenario, s.result.metric_name, _metric(s.result),
                       _ms(s.result.latency_p50_ms), _ms(s.result.latency_p90_ms), _ms(s.result.latency_p99_ms),
                       str(s.result.queries), str(s.result.samples), f"{s.result.duration_s:.1f}", s.result.validity,
                       "-" if s.accuracy.dice is None else f"{s.accuracy.dice:.4f}", _agrees(s.accuracy)]
                      for row, s in rows]
    lines = ["", "MLPerf LoadGen scenarios (docs/scenarios.md)", aligned(cells, left=4)]  # engine ... metric
    loadgen = report.info.loadgen or {}
    grade = "LoadGen's official minimums" if loadgen.get("mlperf_minimums") else \
        f"short runs (at least {loadgen.get('min_duration_s', 0):g} s, {loadgen.get('min_queries', 0)} queries): " \
        "not submission grade (--mlperf_minimums)"
    lines.append(f"scenarios: {grade}; {loadgen.get('performance_sample_count')} of "
                 f"{loadgen.get('images_available')} images held decoded in the query sample library; "
                 f"vs pass: per-image dice of LoadGen's accuracy-mode masks against the row's accuracy pass; logs in "
                 f"{loadgen.get('log_root')}")
    for row, s in rows:
        r = s.result
        if r.scenario == "server" and r.target_latency_ms is not None:
            lines.append(server_line(row, s))
        harness = against_loop(row, r)
        if harness:
            lines.append(harness)
        if r.validity == "ERROR":
            lines.append(f"{row.label} {r.scenario}: error: {_reasons(r.reasons)}; the row's other figures stand")
        elif r.validity != "VALID" and r.reasons:
            lines.append(f"{row.label} {r.scenario}: LoadGen says {r.validity}: {_reasons(r.reasons)}")
    return lines
