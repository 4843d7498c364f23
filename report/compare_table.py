"""What a --compare comparison says: the lines at its top (what the two runs do not share), its block on stdout (after
the main table) and --fail_on_regression's lines on stderr. The words only: report/compare.py reads and judges."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from report.table import aligned


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
    batch_size: int
    image_size: tuple
    load: Optional[float] = None  # the highest load average at the end of a row's timing
    threads: Optional[int] = None
    decode: Optional[str] = None
    devices: tuple = ()  # the rows' devices, sorted
    openvino_hint: Optional[str] = None  # from the OpenVINO rows' timed_region: the config does not hold it


@dataclass(frozen=True)
class Side:
    """One report as the comparison reads it: this run's, or a base read from its JSON file."""

    path: str
    started: Optional[str]
    partial: bool
    facts: Facts
    rows: list


DICE_DROP = 0.003  # a matched row whose dice drops by more fails --fail_on_regression (the int8 dice-delta goal)
BUSIER = 1.0  # a load average this much higher (a busy CPU's worth) is said at the top: the run is slower for it


def size_text(size: tuple) -> str:
    return "x".join(str(v) for v in size)


def speed_text(ratio: Optional[float]) -> Optional[str]:
    """'1.27x faster' / '1.27x slower' from a speed ratio (None without one): the figure stdout and the HTML show."""
    if ratio is None:
        return None
    return f"{ratio:.2f}x faster" if ratio >= 1.0 else f"{1.0 / ratio:.2f}x slower"


def runs_text(base: tuple, this: tuple) -> str:
    """'base ran batch 4 at 256 px; this run batch 1 at 512 px' from two (batch size, image size) pairs."""
    def px(size: tuple) -> str:
        return f"{size[0]} px" if len(set(size)) == 1 else f"{size_text(size)} px"
    return f"base ran batch {base[0]} at {px(base[1])}; this run batch {this[0]} at {px(this[1])}"


def _host(host: dict) -> str:
    text = f"{host.get('cpu', '?')}, {host.get('cpu_count', '?')} CPUs"
    return text + (f"; {host['accelerator']}" if host.get("accelerator") else "")


def _model(model: tuple) -> str:
    name, variant, parameters = model
    return f"{name}{f': {variant}' if variant else ''}" + (f", {parameters:,} parameters" if parameters else "")


def differences(this: Side, base: Side) -> list:
    """What the two runs did not share, said at the top of the comparison: batch and size (then no row matches), host,
    model, weights, data (and then that dice is not compared), torch, threads, decode, devices, OpenVINO hint, load;
    and what cannot be told (a base older than the digests)."""
    t, b, lines = this.facts, base.facts, []
    if (b.batch_size, b.image_size) != (t.batch_size, t.image_size):
        lines.append(f"batch and size: {runs_text((b.batch_size, b.image_size), (t.batch_size, t.image_size))}: "
                     "no row can match")
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
    unsure = [what for what, digests in (("weights", (b.weights_digest, t.weights_digest)),
                                         ("data", (b.data_digest, t.data_digest))) if not same_digest(*digests)]
    if unsure:
        lines.append(f"dice: not compared (nor gated): the {' and '.join(unsure)} are not known to be the same")
    lines.extend(_settings_lines(this, base))
    if base.partial:
        lines.append("the base run was interrupted (partial): a row it cut short has no timing")
    if any(f.derived for f in base.rows):
        lines.append("the base report predates the median's interval: it is derived here from the base's per-call "
                     "latencies")
    return lines


def same_digest(base: Optional[str], this: Optional[str]) -> bool:
    """Both runs' digests are known and equal: only then are their dice scores comparable."""
    return base is not None and base == this


def _settings_lines(this: Side, base: Side) -> list:
    """torch, threads, decode, devices, OpenVINO hint (each where both reports say it) and load that differ."""
    t, b, lines = this.facts, base.facts, []
    for what, base_value, value in (("torch", b.torch, t.torch), ("threads", b.threads, t.threads),
                                    ("decode", b.decode, t.decode),
                                    ("device", ", ".join(b.devices) or None, ", ".join(t.devices) or None),
                                    ("OpenVINO hint", b.openvino_hint, t.openvino_hint)):
        if base_value is not None and value is not None and base_value != value:
            lines.append(f"{what}: {base_value} in the base, {value} here")
    if b.load is not None and t.load is not None and abs(b.load - t.load) >= BUSIER:
        lines.append(f"load: the machine's load average was {b.load:g} in the base, {t.load:g} here (at the end of "
                     "the rows' timing): a busier machine slows a run")
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


def _cell(value: Optional[float], fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _keys_text(keys: list) -> str:
    return "; ".join(f"{k.engine} {k.precision} batch {k.batch_size} {size_text(k.image_size)} {k.scenario}"
                     for k in keys)


def comparison_lines(comparisons: list) -> list:
    """The comparison on stdout: per base, what differs, the matched rows aligned, the new and gone rows."""
    lines = []
    for c in comparisons:
        lines += ["", f"compared with {c.base} (started {c.base_started or '?'}):"]
        lines += [f"  {line}" for line in c.differences] or ["  same host, model, weights and data"]
        if c.rows:
            gate_on = c.fail_on_regression_pct is not None
            cells = [["engine", "prec", "batch", "size", "scenario", "base", "this", "speed", "verdict", "dice change",
                      "cos change"] + (["regressed"] if gate_on else [])]
            for m in c.rows:
                loop = m.scenario == "loop"
                cells.append([m.engine, m.precision, str(m.batch_size), size_text(m.image_size),
                              "loop (median ms)" if loop else f"{m.scenario} ({m.metric_name})",
                              _cell(m.base_median_ms if loop else m.base_metric, "{:.2f}"),
                              _cell(m.median_ms if loop else m.metric, "{:.2f}"), m.speed or "-", m.verdict,
                              _cell(m.dice_change, "{:+.4f}"), _cell(m.cosine_change, "{:+.6f}")]
                             + (["yes" if m.regression else "no"] if gate_on else []))
            lines.append(aligned(cells, left=5))
        else:
            lines.append("  no row of this run matches one of the base's (engine, precision, batch, size, scenario)")
        for what, keys in (("new here", c.new), ("gone since the base", c.gone)):
            if keys:
                lines.append(f"{what}: {_keys_text(keys)}")
    if comparisons:
        lines.append("speed: how many times faster this run is (base median / this median; a LoadGen rate: this / "
                     "base); verdict: faster or slower when the two medians' 95 % intervals do not overlap, the same "
                     "when they do, noise unknown without an interval (a LoadGen figure, an old or short run)")
    return lines


def gate(comparisons: list) -> list:
    """--fail_on_regression's failures, each an `error:` line's text: each regressed row and by how much; a base
    nothing of this run matched, or whose rows are gone from it (a gate that checked nothing must not pass); a matched
    row the base has no figure for. Rows new in this run fail nothing. Empty without --fail_on_regression."""
    failures = []
    for c in comparisons:
        pct = c.fail_on_regression_pct
        if pct is None:
            continue
        if not c.rows:
            failures.append(f"--fail_on_regression: nothing was checked: no row of this run matches one of {c.base}'s "
                            f"({_unmatched_why(c)}); compare with a base run with the same options")
        elif c.gone:
            failures.append(f"--fail_on_regression: {len(c.gone)} row(s) of {c.base} are gone from this run and were "
                            f"not checked: {_keys_text(c.gone)}; run them too, or compare with a base of this run's "
                            "rows")
        untimed = [m.label for m in c.rows if m.speed_ratio is None]
        if untimed:
            failures.append(f"--fail_on_regression: the speed of {'; '.join(untimed)} was not checked against "
                            f"{c.base}: one of the two runs has no figure for it")
        for m in (m for m in c.rows if m.regression):
            why = []
            if m.slowdown_pct is not None and m.slowdown_pct > pct:
                noise = "beyond the noise" if m.verdict == "slower" else "(noise unknown: no interval to allow for)"
                why.append(f"slower by {m.slowdown_pct:.1f} % {noise}, over --fail_on_regression {pct:g} % "
                           f"({m.speed})")
            if m.dice_change is not None and m.dice_change < -DICE_DROP:
                why.append(f"dice dropped by {-m.dice_change:.4f}, more than {DICE_DROP}")
            failures.append(f"regression against {c.base}: {m.label}: {'; '.join(why)}")
    return failures


def _unmatched_why(c) -> str:
    """Why no row matched: one run has none, their batch or size differ, or their engines / precisions / scenarios."""
    if not c.gone:
        return "the base has no rows"
    if not c.new:
        return "this run has no rows"
    base, this = c.gone[0], c.new[0]
    if (base.batch_size, base.image_size) != (this.batch_size, this.image_size):
        return runs_text((base.batch_size, base.image_size), (this.batch_size, this.image_size))
    return "their engines, precisions or scenarios differ"
