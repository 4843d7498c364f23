"""sample.py end to end: synthetic default, real Carvana data with a real checkpoint, and every bad input."""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import sample
from models.unetpp import NestedUNet
from tests.conftest import ROOT, SMALL, small_model

BASE = ["--image_size", "64", "--loop", "2", "--warm_counter", "1", "--quiet", "--device", "cpu"]
FAST = BASE + SMALL  # the full-size UNet where the test is about it: BASE alone


def run(argv, capsys):
    code = sample.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_synthetic_default_end_to_end(tmp_path, capsys):
    report_path = tmp_path / "r.json"
    code, out, err = run(FAST + ["--synthetic_count", "2", "--cache_dir", str(tmp_path), "--json", str(report_path)],
                         capsys)
    assert code == 0, err
    assert "synthetic Carvana-like set" in out and "random weights" in out
    report = json.loads(report_path.read_text())
    row = report["rows"][0]
    auto = report["config"]["auto"][0]
    assert auto["source"] == "measured" and auto["engine"] == row["engine"] and auto["record"]
    assert row["images"] == 2 and row["images_scored"] == 2
    assert 0.0 <= row["dice"] <= 1.0 and len(row["per_image"]["cosine"]) == 2
    assert row["calls"] == 2 and len(row["latencies_ms"]) == 2 and row["fps"] > 0 and row["e2e_fps"] > 0
    (probed,) = [c for c in auto["candidates"] if c["engine"] == row["engine"]]  # the row runs the probe's build
    assert row["compile_s"] == probed["compile_s"] and row["first_call_ms"] == pytest.approx(probed["first_call_ms"],
                                                                                              abs=0.01)
    assert report["config"]["image_size"] == [64, 64] and report["partial"] is False
    for key in ("dice", "micro dice", "IoU", "cos min", "median ms", "p90 ms", "p99 ms", "fps", "e2e fps", "compile s"):
        assert key in out
    assert "generating 2 synthetic Carvana-like pairs" in err  # the first run says why it takes a moment
    assert f"wrote the JSON report to {report_path}" in out
    assert report["config"]["host"]["cpu"] and report["config"]["command"].startswith("python sample.py ")
    code, out, err = run(FAST + ["--synthetic_count", "2", "--cache_dir", str(tmp_path)], capsys)
    assert code == 0 and "generating" not in err and "wrote" not in out  # made once; no file asked for, none named
    assert f"auto fp32: {row['engine']} (kept from an earlier run" in out  # measured once, then kept


@pytest.mark.parametrize("model_name", ["unet", pytest.param("unet++", marks=pytest.mark.slow)])
def test_real_carvana_batches_with_padding(carvana, tmp_path, capsys, model_name):
    """The full-size networks on real pairs (UNet++ in the slow tier: its 36 M parameters at full width cost the inner
    loop more than the default UNet). channels_last runs eager torch on a copy of the model, so the reference (the
    model itself, on its own calls) is independent of the row: a padded batch's rows must still match it."""
    images, masks = carvana
    report_path = tmp_path / "r.json"
    code, out, err = run(BASE + ["--image_path", images, "--mask_path", masks, "--model_name", model_name,
                                 "--limit", "3", "--batch_size", "2", "--engine", "torch", "--channels_last", "on",
                                 "--json", str(report_path)], capsys)
    assert code == 0, err
    row = json.loads(report_path.read_text())["rows"][0]
    assert row["images_scored"] == 3 and len(row["per_image"]["dice"]) == 3  # the padded fourth row is not scored
    assert row["levers"] == ["channels_last"] and row["cosine_min"] >= 0.99999 and row["max_abs_diff"] < 1e-3


@pytest.mark.slow
def test_real_checkpoint_gives_real_dice(carvana, checkpoint, tmp_path, capsys):
    """The shared checkpoint's README gives dice 0.98 at 256 px; at 128 px on 4 images it stays well above 0.9.
    Eager torch in channels_last, which runs on a copy of the model: the plain eager fp32 row would be the reference
    itself, its cosine 1 by construction; this one is checked against it."""
    images, masks = carvana
    report_path = tmp_path / "r.json"
    code, out, err = run(["--image_path", images, "--mask_path", masks, "--pth", checkpoint, "--image_size", "128",
                          "--limit", "4", "--batch_size", "4", "--loop", "1", "--warm_counter", "0", "--quiet",
                          "--device", "cpu", "--engine", "torch", "--channels_last", "on", "--json", str(report_path)],
                         capsys)
    assert code == 0, err
    row = json.loads(report_path.read_text())["rows"][0]
    assert row["dice"] > 0.93 and row["micro_dice"] > 0.93 and row["iou"] > 0.87
    assert row["levers"] == ["channels_last"] and row["cosine_min"] >= 0.99999  # vs the eager fp32 reference
    assert 0 < row["max_abs_diff"] < 1e-3  # another computation than the reference's, and a close one
    assert "unet_carvana_256.pth" in out


def test_images_without_masks_are_timed_not_scored_and_listed_last(small_set, tmp_path, capsys):
    images, masks = small_set
    os.remove(os.path.join(masks, "car1_01_mask.gif"))
    report_path = tmp_path / "r.json"
    code, out, err = run(FAST + ["--image_path", images, "--mask_path", masks, "--json", str(report_path)], capsys)
    assert code == 0
    assert "no mask for" in err and "1 without a mask" in out
    row = json.loads(report_path.read_text())["rows"][0]
    assert row["images"] == 3 and row["images_scored"] == 2
    per = row["per_image"]  # the per-image lists stay aligned: the unscored image comes last in every one
    assert per["id"] == ["car0_01", "car2_01", "car1_01"]
    assert per["dice"][2] is None and None not in per["dice"][:2] and len(per["cosine"]) == 3


def test_no_masks_means_no_dice(small_set, capsys):
    code, out, err = run(FAST + ["--image_path", small_set[0]], capsys)
    assert code == 0
    table = out.split("-----\n", 1)[1].split("\n\n")[0].splitlines()  # the rows under the table's rule
    assert len(table) == 1 and table[0].split()[4] == "-"  # dice column


def _ckpt(tmp_path, obj):
    path = tmp_path / "c.pth"
    torch.save(obj, path)
    return str(path)


@pytest.mark.parametrize("case,expect", [
    ("missing image path", "image path not found"),
    ("empty folder", "no image files"),
    ("unpaired", "no image in .* has a mask"),
    ("other architecture", "run with --model_name unet\\+\\+"),
    ("pickled model", "refused to unpickle"),
    ("unknown engine", "unknown engine"),
    ("unknown device", "unknown device"),
    ("accelerator absent", "use --device cpu"),
    ("mask of another size", "mask .* but its image is"),
])
def test_bad_input_is_one_clear_error(case, expect, small_set, tmp_path, capsys):
    images, masks = small_set
    args = FAST + ["--image_path", images, "--mask_path", masks]
    if case == "missing image path":
        args[args.index(images)] = str(tmp_path / "nope")
    elif case == "empty folder":
        (tmp_path / "empty").mkdir()
        args[args.index(images)] = str(tmp_path / "empty")
    elif case == "unpaired":
        other = tmp_path / "other"
        other.mkdir()
        torch.save({}, other / "x.pth")  # a folder with no mask files at all would say so instead
        (other / "zzz_mask.gif").write_bytes(open(os.path.join(masks, "car0_01_mask.gif"), "rb").read())
        args[args.index(masks)] = str(other)
    elif case == "other architecture":  # the UNet (BASE) given a NestedUNet's weights
        args = BASE + args[len(FAST):] + ["--pth", _ckpt(tmp_path, NestedUNet(2, base_width=8).state_dict())]
    elif case == "pickled model":
        args += ["--pth", _ckpt(tmp_path, small_model())]
    elif case == "unknown engine":
        args += ["--engine", "tensorflow"]
    elif case == "unknown device":
        args[args.index("cpu")] = "tpu:0"
    elif case == "accelerator absent":
        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
        args[args.index("cpu")] = "0"
    elif case == "mask of another size":
        from PIL import Image
        Image.new("P", (10, 10)).save(os.path.join(masks, "car1_01_mask.gif"))
    code, out, err = run(args, capsys)
    assert code == 1
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error: ")], err
    import re
    assert re.search(expect, err), err


@pytest.mark.parametrize("argv", [["--loop", "0"], ["--batch_size", "0"], ["--warm_counter", "-1"],
                                  ["--model_name", "segformer"], ["--image_size", "abc"],
                                  ["--model_name", "unet++", "--image_size", "72"], ["--mask_path", "x"]])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        sample.main(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_partial_results_survive_a_bad_image(small_set, tmp_path, capsys):
    images, masks = small_set
    with open(os.path.join(images, "car0_01.jpg"), "r+b") as f:
        f.truncate(100)
    report_path = tmp_path / "r.json"
    code, out, err = run(FAST + ["--image_path", images, "--mask_path", masks, "--json", str(report_path)], capsys)
    assert code == 1 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error: ") and "could not be read" in line], err
    row = json.loads(report_path.read_text())["rows"][0]
    assert row["images_scored"] == 2 and row["failed_images"][0]["id"] == "car0_01"
    assert "1 image(s) skipped" in out


@pytest.mark.slow
def test_subprocess_exit_status_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "sample.py"), "--image_path", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: image path not found")
    assert "Traceback" not in proc.stderr


def test_python39_compatible_syntax():
    """The torch / torch_aie path must run on the Ascend stack's Python 3.9: every module of the project parses with
    3.9's grammar here, and with a real Python 3.9 where one is installed."""
    from tests.test_layout import project_modules

    files = sorted(project_modules().values())
    assert any("pipeline" in f for f in files) and any("report" in f for f in files)
    for path in files:
        ast.parse(open(path).read(), path, feature_version=(3, 9))
    py39 = shutil.which("python3.9")
    if py39 is None:
        pytest.skip("python3.9 is not installed here (3.9's grammar was checked in-process)")
    env = {**os.environ, "PYENV_VERSION": "3.9.18"}
    proc = subprocess.run([py39, "-c", "import ast, sys\nfor f in sys.argv[1:]: ast.parse(open(f).read(), f)"] + files,
                          capture_output=True, text=True, env=env)
    if "version" in proc.stderr and "not installed" in proc.stderr:
        pytest.skip("pyenv has no 3.9.18 here (3.9's grammar was checked in-process)")
    assert proc.returncode == 0, proc.stderr


def test_two_images_with_one_id_are_refused(small_set, capsys):
    images, masks = small_set
    from PIL import Image
    Image.new("RGB", (96, 64)).save(os.path.join(images, "car0_01.png"))
    code, out, err = run(FAST + ["--image_path", images, "--mask_path", masks], capsys)
    assert code == 1 and "two images share the id 'car0_01'" in err


@pytest.mark.parametrize("flag", ["--json"])  # a cache that cannot be written is no error: test_limits_and_own_files
def test_unwritable_destinations_fail_before_the_run(flag, small_set, capsys):
    target = "/proc/unet-sample-test/x.json" if flag == "--json" else "/proc/unet-sample-test"
    args = FAST + [flag, target] + (["--image_path", small_set[0]] if flag == "--json" else ["--synthetic_count", "1"])
    code, out, err = run(args, capsys)
    assert code == 1 and err.startswith("error: ") and "Traceback" not in err
    assert out == ""  # stopped before running anything


@pytest.mark.parametrize("spec", [",", " "])
def test_engine_list_naming_nothing(spec, small_set, capsys):
    code, out, err = run(FAST + ["--image_path", small_set[0], "--engine", spec], capsys)
    assert code == 1 and "names no engine" in err


@pytest.mark.parametrize("flag, what", [
    ("--html", "the file to write"), ("--trace", "the file to write"), ("--json", "the file to write"),
    ("--csv", "the file to write"), ("--submission", "the file to write"), ("--output", "the folder to write"),
    ("--plots", "the folder to write"), ("--loadgen_logs", "the logs' folder"), ("--compare", "a saved --json report"),
    ("--pth", "the checkpoint"), ("--image_path", "the images' folder"), ("--mask_path", "the masks' folder"),
    ("--calib_path", "the calibration images"), ("--cache_dir", "the cache folder")])
def test_an_empty_path_is_one_error_line(flag, what, capsys):
    """`--json "$OUT"` with OUT unset: no report written, dice skipped, the default cache or random weights used,
    silently; it is a usage error before anything runs."""
    with pytest.raises(SystemExit) as stop:
        sample.main([flag, ""])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == f"error: argument {flag}: the path is empty (a shell variable left unset?); give " \
                                  f"{what}, or leave the flag out"
