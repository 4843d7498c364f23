"""Per-image results: the files a run writes hold what the report says (masks, RLE, CSV), written atomically."""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import sample
from dataset.decode import load_mask
from dataset.pairs import find_pairs
from report.metrics import dice_from_counts, overlap_counts
from report.overlay import read_mask_png
from report.rle import decode_rle, encode_rle
from tests.conftest import ROOT, SMALL, write_pair
from utils.errors import SampleError
from utils.files import write_atomic

BASE = ["--engine", "torch", "--image_size", "32", "--loop", "1", "--warm_counter", "0", "--quiet", "--no_reference",
        "--device", "cpu"]
FAST = BASE + SMALL  # what is written does not depend on the network: the small one, but for the real checkpoint


def run(args: list[str], base: list[str] = FAST) -> int:
    return sample.main(base + args)


def read_csv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def dice_of(pred: np.ndarray, truth: np.ndarray) -> float:
    counts = overlap_counts(torch.from_numpy(pred)[None], torch.from_numpy(truth)[None], 2)
    return dice_from_counts(counts).item()


def no_temporary_files(root) -> bool:
    return not [f for _, _, files in os.walk(root) for f in files if f.startswith(".tmp-")]


@pytest.mark.parametrize("mask", [np.zeros((3, 4)), np.ones((3, 4)), np.eye(4)[:3], np.eye(3)[::-1]])
def test_rle_round_trip_edges(mask):
    assert np.array_equal(decode_rle(encode_rle(mask), (mask.shape[1], mask.shape[0])), mask != 0)


def test_rle_layout_is_row_major_one_indexed():
    mask = np.zeros((2, 3), np.uint8)
    mask[0, 2] = mask[1, 0] = mask[1, 1] = 1  # pixels 3, 4, 5 counted left to right, then top to bottom
    assert encode_rle(mask) == "3 3"
    assert encode_rle(np.ones((2, 2))) == "1 4" and encode_rle(np.zeros((2, 2))) == ""


def test_rle_random_masks_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = (rng.random((17, 23)) > rng.random()).astype(np.uint8)
        assert np.array_equal(decode_rle(encode_rle(mask), (23, 17)), mask)
    with pytest.raises(ValueError, match="even count"):
        decode_rle("1 2 3", (4, 4))


def test_write_atomic_text_and_bytes(tmp_path):
    write_atomic(str(tmp_path / "a.bin"), b"\x89PNG")
    write_atomic(str(tmp_path / "a.txt"), "hi")
    assert (tmp_path / "a.bin").read_bytes() == b"\x89PNG" and (tmp_path / "a.txt").read_text() == "hi"
    assert no_temporary_files(tmp_path)


def test_outputs_at_original_resolution(small_set, tmp_path, capsys):
    images, masks = small_set
    out, sub, per, rep = tmp_path / "out", tmp_path / "sub.csv", tmp_path / "per.csv", tmp_path / "r.json"
    assert run(["--image_path", images, "--mask_path", masks, "--output", str(out), "--overlay",
                "--submission", str(sub), "--csv", str(per), "--json", str(rep), "--eval_resolution", "original"]) == 0
    report = json.loads(rep.read_text())
    row = report["rows"][0]
    rows = read_csv(str(per))
    assert len(rows) == row["images_scored"] == 3
    assert np.mean([float(r["dice"]) for r in rows]) == pytest.approx(row["dice"], abs=1e-12)
    assert np.mean([float(r["iou"]) for r in rows]) == pytest.approx(row["iou"], abs=1e-12)
    assert row["model_res_dice"] is not None and report["config"]["eval_resolution"] == "original"
    submission = {r["img"]: r["rle_mask"] for r in read_csv(str(sub))}
    mask_of = {s.id: s.mask for s in find_pairs(images, masks).samples}
    for r in rows:
        pred = read_mask_png(str(out / f"{r['id']}_mask.png"))
        assert pred.shape == (64, 96) and (r["width"], r["height"]) == ("96", "64")
        truth = load_mask(mask_of[r["id"]], (96, 64), (96, 64))
        assert dice_of(pred, truth) == pytest.approx(float(r["dice"]), abs=1e-12)  # the PNG is the scored mask
        assert np.array_equal(decode_rle(submission[r["id"] + ".jpg"], (96, 64)), pred)  # RLE is the PNG exactly
        assert (out / f"{r['id']}_overlay.jpg").read_bytes()[:2] == b"\xff\xd8"
    assert report["outputs"]["files"] == 6 and report["outputs"]["submission_rows"] == 3
    assert no_temporary_files(tmp_path)
    assert np.mean(row["per_image"]["dice_model_res"]) == pytest.approx(row["model_res_dice"], abs=1e-12)
    printed = capsys.readouterr().out
    assert f"wrote 6 mask / overlay file(s) to {out}" in printed
    assert f"wrote the submission (3 rows) to {sub}" in printed


def test_model_resolution_csv_matches_report(small_set, tmp_path, capsys):
    per, rep = tmp_path / "per.csv", tmp_path / "r.json"
    assert run(["--image_path", small_set[0], "--mask_path", small_set[1], "--csv", str(per), "--json", str(rep)]) == 0
    report = json.loads(rep.read_text())
    row = report["rows"][0]
    rows = read_csv(str(per))
    assert {r["resolution"] for r in rows} == {"model"} and {r["width"] for r in rows} == {"32"}
    assert np.mean([float(r["dice"]) for r in rows]) == pytest.approx(row["dice"], abs=1e-12)
    assert [float(r["dice"]) for r in rows] == pytest.approx(row["per_image"]["dice"], abs=1e-12)
    assert [float(r["fg_pred"]) for r in rows] == pytest.approx(row["per_image"]["fg_pred"], abs=1e-12)
    out = capsys.readouterr().out
    assert f"wrote the per-image CSV (3 rows) to {per}" in out and f"wrote the JSON report to {rep}" in out
    assert out.index("worst 3 image(s) by dice") < out.index("wrote the per-image CSV")
    assert "model_res_dice" not in row and report["config"]["eval_resolution"] == "model"


def test_existing_output_needs_overwrite(small_set, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.png").write_bytes(b"x")
    assert run(["--image_path", small_set[0], "--output", str(out)]) == 1
    assert "exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert run(["--image_path", small_set[0], "--output", str(out), "--overwrite"]) == 0
    assert (out / "car0_01_mask.png").exists()


def test_unwritable_destination(small_set, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert run(["--image_path", small_set[0], "--output", str(blocker / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot create --output folder") and "Traceback" not in err
    assert run(["--image_path", small_set[0], "--csv", str(blocker / "per.csv")]) == 1


def test_overlay_needs_output(small_set):
    with pytest.raises(SystemExit) as exc:
        run(["--image_path", small_set[0], "--overlay"])
    assert exc.value.code == 2


def test_plots_without_matplotlib(small_set, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)  # import matplotlib now raises ImportError
    assert run(["--image_path", small_set[0], "--plots", str(tmp_path / "plots")]) == 1
    assert "--plots needs matplotlib, which is not installed: pip install matplotlib" in capsys.readouterr().err


def test_plots_written(small_set, tmp_path):
    pytest.importorskip("matplotlib")
    from report.plots import write_plots

    plots = tmp_path / "plots"
    assert run(["--image_path", small_set[0], "--mask_path", small_set[1], "--plots", str(plots)]) == 0
    assert sorted(os.listdir(plots)) == ["dice_histogram.png", "latency.png"]
    rows = [{"engine": e, "precision": "fp32", "latencies_ms": [1.0, 2.0], "fps": f, "dice": d,
             "per_image": {"dice": [d, None]}} for e, f, d in [("torch", 1.0, 0.9), ("onnxruntime", 2.0, 0.8)]]
    paths = write_plots({"config": {}, "rows": rows}, str(plots))
    assert [os.path.basename(p) for p in paths] == ["latency.png", "dice_histogram.png", "fps_vs_dice.png"]
    assert all(open(p, "rb").read(4) == b"\x89PNG" for p in paths)


def test_plots_of_several_saved_reports(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from report.plots import main as plots_main

    for name, fps, dice in [("a", 1.0, 0.9), ("b", 2.0, 0.8)]:
        row = {"engine": name, "precision": "fp32", "latencies_ms": [1.0], "fps": fps, "dice": dice,
               "per_image": {"dice": [dice]}}
        (tmp_path / f"{name}.json").write_text(json.dumps({"config": {"eval_resolution": "model"}, "rows": [row]}))
    reports = [str(tmp_path / "a.json"), str(tmp_path / "b.json")]
    assert plots_main([str(tmp_path / "p")] + reports) == 0
    assert "fps_vs_dice.png" in capsys.readouterr().out
    assert plots_main([str(tmp_path / "p")] + reports) == 1  # not empty any more
    assert plots_main([str(tmp_path / "q"), str(tmp_path / "missing.json")]) == 1
    assert "cannot read report" in capsys.readouterr().err


# A real Ctrl-C, in a process of its own (as a user's would be): the run is interrupted after its second batch.
SIGINT_DRIVER = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
import sample
from report.outputs import Hook
original_add, calls = Hook.add, []
def add_then_interrupt(self, batch, logits):
    original_add(self, batch, logits)
    calls.append(batch.ids)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.SIGINT)
Hook.add = add_then_interrupt
sys.exit(sample.main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_sigint_keeps_finished_files_and_a_partial_report(tmp_path):
    for i in range(6):
        write_pair(str(tmp_path), f"car{i}_01", seed=i)
    out, per, rep = tmp_path / "out", tmp_path / "per.csv", tmp_path / "r.json"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", SIGINT_DRIVER, root] + FAST + [
        "--image_path", str(tmp_path / "images"), "--mask_path", str(tmp_path / "masks"),
        "--output", str(out), "--csv", str(per), "--json", str(rep)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr
    report = json.loads(rep.read_text())
    assert report["partial"] is True and [r["interrupted"] for r in report["rows"]] == [True]
    rows = read_csv(str(per))  # the interrupted row's finished images are results too: scored, written, reported
    assert len(rows) == 2 == report["rows"][0]["images"] == report["outputs"]["csv_rows"]
    assert "calls" not in report["rows"][0]  # no timing pass after Ctrl-C
    written = sorted(os.listdir(out))
    assert written == sorted(f"{r['id']}_mask.png" for r in rows)  # every finished image, nothing half-written
    assert all(read_mask_png(str(out / f)).shape == (64, 96) for f in written)
    assert no_temporary_files(tmp_path)


# Ctrl-C in the timing pass, after the accuracy pass finished: the row and everything written for it are kept.
SIGINT_IN_TIMING = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
import sample
import pipeline.passes
def measure_then_interrupt(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
pipeline.passes.measure = measure_then_interrupt
sys.exit(sample.main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_sigint_in_the_timing_pass_keeps_the_finished_row(small_set, tmp_path):
    out, sub, per, rep = tmp_path / "out", tmp_path / "sub.csv", tmp_path / "per.csv", tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-c", SIGINT_IN_TIMING, ROOT] + FAST + [
        "--image_path", small_set[0], "--mask_path", small_set[1], "--output", str(out), "--submission", str(sub),
        "--csv", str(per), "--json", str(rep)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 130 and "Traceback" not in proc.stderr, proc.stderr
    report = json.loads(rep.read_text())
    (row,) = report["rows"]
    assert report["partial"] and row["interrupted"] and row["images"] == row["images_scored"] == 3
    assert "calls" not in row and "latency_median_ms" not in row
    assert len(read_csv(str(per))) == len(read_csv(str(sub))) == len(os.listdir(out)) == 3  # the row's files and rows
    assert "INTERRUPTED after 3 of 3 image(s)" in proc.stdout and "no timing" in proc.stdout


def test_a_failed_write_is_not_reported_as_written(small_set, tmp_path, monkeypatch, capsys):
    """The CSV cannot be written: an error line names it, the report does not claim it, the rest is written."""
    def disk_full(path, records):
        raise SampleError(f"cannot write {path}: No space left on device")

    monkeypatch.setattr("pipeline.finish.write_per_image_csv", disk_full)
    per, sub, rep = tmp_path / "per.csv", tmp_path / "sub.csv", tmp_path / "r.json"
    code = run(["--image_path", small_set[0], "--mask_path", small_set[1], "--csv", str(per), "--submission", str(sub),
                "--json", str(rep)])
    out, err = capsys.readouterr()
    assert code == 1 and f"error: cannot write {per}: No space left on device" in err
    outputs = json.loads(rep.read_text())["outputs"]
    assert outputs["csv"] is None and outputs["csv_rows"] == 0 and not per.exists()
    assert outputs["submission"] == str(sub) and len(read_csv(str(sub))) == 3
    assert "per-image CSV" not in out and f"wrote the submission (3 rows) to {sub}" in out


def documented_fields() -> set[str]:
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "outputs.md")
    with open(path) as f:
        return {line.split("`")[1] for line in f if line.startswith("| `")}


def field_paths(value, prefix: str = "") -> set[str]:
    """Every key of a JSON value as a dotted path; lists of objects as `name[]`; leaves' values are not walked."""
    paths = set()
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else key
            paths.add(path)
            paths |= field_paths(item, path)
    elif isinstance(value, list) and value and isinstance(value[0], dict):
        for item in value:
            paths |= field_paths(item, prefix + "[]")
    return paths


def test_report_fields_are_documented(small_set, tmp_path):
    rep = tmp_path / "r.json"
    args = ["--image_path", small_set[0], "--mask_path", small_set[1], "--csv", str(tmp_path / "c.csv"),
            "--eval_resolution", "original", "--json", str(rep)]
    if importlib.util.find_spec("matplotlib"):
        args += ["--plots", str(tmp_path / "p")]
    assert sample.main([a for a in FAST if a != "--no_reference"] + args) == 0
    report = json.loads(rep.read_text())
    report.setdefault("plots", [])
    report["skipped"] = [{"engine": "x", "precision": "fp32", "reason": "y"}]
    report["rows"][0]["failed_images"] = [{"id": "x", "error": "y"}]
    missing = field_paths(report) - documented_fields()
    assert not missing, f"document these report fields in docs/outputs.md: {sorted(missing)}"


@pytest.mark.shared
@pytest.mark.slow
def test_carvana_original_and_model_dice(carvana, checkpoint, tmp_path):
    out, sub, per, rep = tmp_path / "out", tmp_path / "sub.csv", tmp_path / "per.csv", tmp_path / "r.json"
    args = ["--image_path", carvana[0], "--mask_path", carvana[1], "--pth", checkpoint, "--limit", "2",
            "--eval_resolution", "original", "--output", str(out), "--submission", str(sub), "--csv", str(per),
            "--json", str(rep)]
    assert run(["--image_size", "128"] + args, base=BASE) == 0  # the last --image_size wins
    row = json.loads(rep.read_text())["rows"][0]
    assert row["dice"] > 0.9 and row["model_res_dice"] > 0.9 and row["dice"] != row["model_res_dice"]
    submission = {r["img"]: r["rle_mask"] for r in read_csv(str(sub))}
    mask_of = {s.id: s.mask for s in find_pairs(*carvana, limit=2).samples}
    for r in read_csv(str(per)):
        pred = read_mask_png(str(out / f"{r['id']}_mask.png"))
        assert pred.shape == (1280, 1918)
        assert dice_of(pred, load_mask(mask_of[r["id"]], (1918, 1280), (1918, 1280))) == pytest.approx(float(r["dice"]))
        assert np.array_equal(decode_rle(submission[r["id"] + ".jpg"], (1918, 1280)), pred)


def test_image_without_mask_is_written_not_scored(small_set, tmp_path):
    images, masks = small_set
    os.remove(os.path.join(masks, "car1_01_mask.gif"))
    sub, per, rep = tmp_path / "sub.csv", tmp_path / "per.csv", tmp_path / "r.json"
    assert run(["--image_path", images, "--mask_path", masks, "--submission", str(sub), "--csv", str(per),
                "--json", str(rep), "--eval_resolution", "original", "--output", str(tmp_path / "out"),
                "--overlay"]) == 0
    rows = {r["id"]: r for r in read_csv(str(per))}
    assert rows["car1_01"]["dice"] == "" and rows["car1_01"]["fg_pred"] != "" and len(rows) == 3
    assert [r["img"] for r in read_csv(str(sub))] == ["car0_01.jpg", "car2_01.jpg", "car1_01.jpg"]  # scored first
    report = json.loads(rep.read_text())
    assert report["rows"][0]["images_scored"] == 2 and report["outputs"]["files"] == 6


def test_padded_batches_write_real_rows_only(small_set, tmp_path):
    per, rep, out = tmp_path / "per.csv", tmp_path / "r.json", tmp_path / "out"
    assert run(["--image_path", small_set[0], "--mask_path", small_set[1], "--batch_size", "2", "--csv", str(per),
                "--json", str(rep), "--output", str(out)]) == 0  # batches of 2 + 1 padded row
    row = json.loads(rep.read_text())["rows"][0]
    rows = read_csv(str(per))
    assert [r["id"] for r in rows] == ["car0_01", "car1_01", "car2_01"] and len(os.listdir(out)) == 3
    assert np.mean([float(r["dice"]) for r in rows]) == pytest.approx(row["dice"], abs=1e-12)
