"""Issue 19, `--trace PATH`: the run on a timeline in the Chrome trace-event format. One real run (64 px, the small
network, the reference and the outputs writer on) is read back: the file parses, each thread has its named track, the
spans nest or follow one another, and they come from the time split's own clock readings, so the main thread's parts
add up to the row's e2e time."""
from __future__ import annotations

import errno
import json
import os
import time

import pytest

import sample
import utils.files
from tests.conftest import SMALL
from utils.timing import Split, measure
from utils.trace import TRACE, Recorder

RUN = ["--engine", "torch", "--loop", "2", "--warm_counter", "1", "--quiet", "--device", "cpu", "--workers", "2",
       *SMALL]
MAIN_PARTS = ("wait", "h2d", "model", "d2h", "metrics", "outputs")
EPS_US = 0.002  # ts and dur are each rounded to the nanosecond


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """One traced run with every track: two decode threads, the reference, the outputs writer (--output)."""
    from tests.conftest import write_pair

    root = tmp_path_factory.mktemp("trace")
    for i in range(4):
        write_pair(str(root), f"car{i}_01", seed=i, size=(128, 128))
    paths = {name: str(root / name) for name in ("t.json", "r.json", "predicted")}
    # 128 px: at 64 px a batch's few milliseconds are of the order of the GIL hand-overs between the spans (the
    # writer and decode threads may hold the GIL up to 5 ms, sys.getswitchinterval, at each of a batch's seams)
    status = sample.main(RUN + ["--image_size", "128", "--image_path", str(root / "images"), "--mask_path",
                                str(root / "masks"), "--output", paths["predicted"], "--trace", paths["t.json"],
                                "--json", paths["r.json"]])
    with open(paths["t.json"]) as f:
        trace = json.load(f)
    with open(paths["r.json"]) as f:
        report = json.load(f)
    return status, trace, report, paths


def tracks(trace: dict) -> dict[tuple[int, int], str]:
    return {(e["pid"], e["tid"]): e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "thread_name"}


def spans(trace: dict, track: str | None = None) -> list[dict]:
    names = tracks(trace)
    return [e for e in trace["traceEvents"] if e["ph"] == "X" and (track is None or names[e["pid"], e["tid"]] == track)]


def total_s(events: list[dict], name: str) -> float:
    return sum(e["dur"] for e in events if e["name"] == name) / 1e6


def test_the_trace_parses_with_one_named_track_per_thread(traced):
    status, trace, report, paths = traced
    assert status == 0
    assert trace["displayTimeUnit"] == "ms" and isinstance(trace["traceEvents"], list)
    for event in trace["traceEvents"]:
        assert event["ph"] in ("X", "M") and isinstance(event["pid"], int) and isinstance(event["tid"], int)
        if event["ph"] == "X":
            assert isinstance(event["name"], str) and event["ts"] >= 0 and event["dur"] >= 0
    names = sorted(tracks(trace).values())
    # two decode threads, but one may decode every file of so small a set before the other starts
    decoders = [n for n in names if n.startswith("decode-")]
    assert decoders and set(decoders) <= {"decode-0", "decode-1"}, names
    assert [n for n in names if n not in decoders] == ["main thread", "outputs writer",
                                                       "reference (main thread, not in e2e)"]
    process = [e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "process_name"]
    assert len(process) == 1 and process[0].startswith("sample.py on ")
    assert report["trace"] == {"path": paths["t.json"], "spans": len(spans(trace)), "tracks": len(names)}
    assert not TRACE.on and not TRACE.spans  # written, then forgotten


def test_spans_nest_or_follow_one_another_on_each_track(traced):
    _, trace, _, _ = traced
    for track in set(tracks(trace).values()):
        open_ends: list[float] = []  # the ends of the spans that hold the current one
        for event in sorted(spans(trace, track), key=lambda e: (e["ts"], -e["dur"])):
            while open_ends and open_ends[-1] <= event["ts"] + EPS_US:
                open_ends.pop()
            assert not open_ends or event["ts"] + event["dur"] <= open_ends[-1] + EPS_US, f"{track}: {event} overlaps"
            open_ends.append(event["ts"] + event["dur"])
    parts = sorted((e for e in spans(trace, "main thread") if e["name"] in MAIN_PARTS), key=lambda e: e["ts"])
    for before, after in zip(parts, parts[1:]):  # the parts of the split never hold one another
        assert before["ts"] + before["dur"] <= after["ts"] + EPS_US, (before, after)
    (row,) = [e for e in spans(trace, "main thread") if e["name"] == "row torch fp32"]
    inside = [e["name"] for e in spans(trace, "main thread")
              if row["ts"] <= e["ts"] and e["ts"] + e["dur"] <= row["ts"] + row["dur"] + EPS_US]
    assert {"accuracy pass", "timing pass", "warm-up", "timed call", *MAIN_PARTS} <= set(inside)


def test_the_spans_are_the_time_split_and_add_up_to_e2e(traced):
    _, trace, report, _ = traced
    (row,) = report["rows"]
    split, main = row["split_s"], spans(trace, "main thread")
    for part in MAIN_PARTS:  # the same clock readings: equal to the microsecond, not only close
        assert total_s(main, part) == pytest.approx(split[part], abs=1e-5), part
    assert sum(total_s(main, part) for part in MAIN_PARTS) == pytest.approx(row["e2e_s"], rel=0.05)
    (accuracy,) = [e for e in main if e["name"] == "accuracy pass"]
    assert accuracy["args"]["e2e_s"] == pytest.approx(row["e2e_s"])
    reference = spans(trace, "reference (main thread, not in e2e)")
    assert total_s(reference, "reference") == pytest.approx(split["reference"], abs=1e-5) and len(reference) == 4
    decode = [e for e in spans(trace) if tracks(trace)[e["pid"], e["tid"]].startswith("decode-")]
    for part in ("decode", "resize"):  # each image and each mask, in the decode threads
        assert total_s(decode, part) == pytest.approx(split[part], abs=1e-5)
        assert len([e for e in decode if e["name"] == part]) == 8
    assert {os.path.basename(e["args"]["file"]) for e in decode} >= {"car0_01.jpg", "car0_01_mask.gif"}
    calls = [e["dur"] / 1000.0 for e in main if e["name"] == "timed call"]
    assert calls == pytest.approx(row["latencies_ms"], abs=1e-5)
    writer = spans(trace, "outputs writer")
    assert [e["name"] for e in writer] == ["write outputs"] * 4 and total_s(writer, "write outputs") == \
        pytest.approx(row["outputs_s"], abs=1e-5)


def test_with_the_trace_off_nothing_is_kept(tmp_path):
    TRACE.reset(False)
    split = Split()
    with split("h2d"):
        pass
    split.add("model", 0.5, time.perf_counter())
    measure(lambda x: x, None, lambda: None, loop=2, warmup=1)
    start = time.perf_counter()
    for _ in range(100_000):
        TRACE.record("decode", 0.0, 1.0, file="x.jpg")
    assert not TRACE.spans and time.perf_counter() - start < 0.5  # ~0.1 µs a call: a flag read


def test_an_unwritable_trace_is_one_error_line_and_the_json_is_still_written(small_set, tmp_path, monkeypatch,
                                                                             capsys):
    trace, report = str(tmp_path / "t.json"), str(tmp_path / "r.json")
    real = utils.files._write_atomic

    def disk_full_for_the_trace(path, data):
        if path == trace:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return real(path, data)
    monkeypatch.setattr(utils.files, "_write_atomic", disk_full_for_the_trace)
    images, masks = small_set
    status = sample.main(RUN + ["--image_size", "32", "--no_reference", "--loop", "1", "--image_path", images,
                                "--mask_path", masks, "--trace", trace, "--json", report])
    out, err = capsys.readouterr()
    assert status == 1 and not os.path.exists(trace)
    assert [line for line in err.splitlines() if line.startswith("error:")] == \
        [f"error: cannot write {trace}: No space left on device"]
    with open(report) as f:
        saved = json.load(f)
    assert "trace" not in saved and saved["rows"][0]["images"] == 3 and "wrote the trace" not in out


def test_ranks_are_processes_aligned_on_the_sync_they_share():
    """Two ranks whose clocks differ by 1000 s: after the merge the end of their shared sync is one instant."""
    rank0, rank1 = Recorder(), Recorder()
    rank0.reset(True, rank=0)
    rank1.reset(True, rank=1)
    rank1.origin = rank0.origin - 1000.0  # rank 1 started its clock earlier on another host
    anchor0, anchor1 = rank0.origin + 2.0, rank1.origin + 1002.5  # each rank's reading as the sync returned
    rank0.record("sync: outputs", anchor0 - 0.5, anchor0)
    rank1.record("sync: outputs", anchor1 - 0.1, anchor1)
    rank1.record("model", anchor1 - 1.0, anchor1 - 0.9)
    rank0.merge([rank1.export(anchor1)], anchor0)
    events = rank0.document()["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert names[0].startswith("rank 0 on ") and names[1].startswith("rank 1 on ")
    ends = {e["pid"]: e["ts"] + e["dur"] for e in events if e["name"] == "sync: outputs"}
    assert ends[0] == pytest.approx(2e6) and ends[1] == pytest.approx(ends[0])
    (model,) = [e for e in events if e["name"] == "model"]
    assert model["pid"] == 1 and model["ts"] == pytest.approx(1e6) and model["dur"] == pytest.approx(1e5)
