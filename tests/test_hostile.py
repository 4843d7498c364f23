"""Issue 8, hostile input and faults: one test per failure class (docs/failures.md). Nothing hangs, nothing computed
is lost, nothing outside the outputs is touched; every error names the file and says what to do, with no traceback.
Class 9 (calibration on unreadable images) is tested with the calibration code."""
from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import time
import zipfile
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import sample
import utils.files
from engines.cache import ArtifactCache, artifact
from tests.conftest import ROOT, SMALL, small_model, write_pair

# The faults do not depend on the network: the small one, one batch for all images, no reference.
FAST = ["--engine", "torch", "--image_size", "32", "--loop", "1", "--warm_counter", "0", "--quiet", "--device", "cpu",
        "--no_reference", "--batch_size", "4", *SMALL]
SAMPLE = os.path.join(ROOT, "sample.py")
LOCK_NAME = ".unet-sample.lock"


def make_set(root, n: int = 4) -> tuple[str, str]:
    for i in range(n):
        write_pair(str(root), f"car{i}_01", seed=i)
    return str(root / "images"), str(root / "masks")


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def no_traceback(err: str) -> bool:
    return "Traceback" not in err and "Exception ignored" not in err


# A driver that runs sample.py as the command line does (runpy, __main__) after patching library functions.
DRIVER = """
import itertools, os, pty, runpy, signal, sys, threading, time
root, point = sys.argv[1], sys.argv[2]
sys.path.insert(0, root)
sys.argv = [os.path.join(root, "sample.py")] + sys.argv[3:]
# The signals sent, in turn (SAMPLE_SIGNALS=SIGTERM,SIGINT: SIGTERM first); SAMPLE_HANGUP: the terminal goes first.
SIGNALS = [getattr(signal, name) for name in os.environ.get("SAMPLE_SIGNALS", "SIGINT").split(",")]

def hang_up():
    # stdout and stderr become a terminal whose other end has closed: every write to them fails (EIO)
    master, slave = pty.openpty()
    os.dup2(slave, 1)
    os.dup2(slave, 2)
    os.close(master)

def hammer():
    # A signal now, then again every 20 ms until the process ends: any number of interrupts, in quick succession.
    if os.environ.get("SAMPLE_HANGUP"):
        hang_up()
    def loop():
        for signum in itertools.cycle(SIGNALS):
            os.kill(os.getpid(), signum)
            time.sleep(0.02)
    threading.Thread(target=loop, daemon=True).start()

def patch(module, name, block):
    # The first call starts the interrupts; it then waits for the first one (`block`), or lets a few land inside.
    import importlib
    mod = importlib.import_module(module)
    original = getattr(mod, name)
    def patched(*args, **kwargs):
        hammer()
        time.sleep(60 if block else 0.3)
        return original(*args, **kwargs)
    setattr(mod, name, patched)

if point == "stuck":  # one decode thread never returns (a hung network mount); one Ctrl-C, 2 s after it sticks
    import dataset.decode
    load = dataset.decode.load_image
    def stuck(path, size, *rest):
        if "zstuck" in path:
            threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGINT)).start()
            threading.Event().wait()
        return load(path, size, *rest)
    dataset.decode.load_image = stuck
elif point == "accuracy":  # after the second batch is handed to the writer
    from report.outputs import Hook
    add, seen = Hook.add, []
    def add_then_interrupt(self, batch, logits):
        add(self, batch, logits)
        seen.append(1)
        if len(seen) == 2:
            hammer()
            time.sleep(0.2)
    Hook.add = add_then_interrupt
elif point == "timing":
    patch("pipeline.passes", "measure", block=True)
elif point == "setup":
    patch("models", "create_model", block=True)
elif point == "finish":  # the rows are done; Ctrl-C arrives while the files are written
    patch("report.csv_files", "write_per_image_csv", block=False)
elif point == "import":  # the signal lands while sample.py imports torch
    class Signal:
        def find_spec(self, name, *rest):
            if name == "torch":
                os.kill(os.getpid(), SIGNALS[0])
    sys.meta_path.insert(0, Signal())
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def drive(point: str, argv: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", DRIVER, ROOT, point] + argv, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the run hung for {timeout} s (stderr: {err[-2000:]})")
    return proc.returncode, out, err


# 1. Files that are not regular files -------------------------------------------------------------------------------

@pytest.mark.slow
def test_non_regular_files_are_skipped_and_one_ctrl_c_stops_a_stuck_decode(tmp_path, monkeypatch):
    """A FIFO, a folder, a device and a socket named like images (and a FIFO mask) are skipped and named, never
    opened and waited on; a decode thread stuck for good does not keep one Ctrl-C from stopping the run, and the
    images finished before are kept."""
    images, masks = make_set(tmp_path, 2)
    gif = os.path.join(masks, "car0_01_mask.gif")
    for name in ("dev_01", "dir_01", "fifo_01", "sock_01", "zstuck_01", "zzlast_01"):
        shutil.copy(gif, os.path.join(masks, f"{name}_mask.gif"))
    shutil.copy(os.path.join(images, "car0_01.jpg"), os.path.join(images, "zstuck_01.jpg"))
    shutil.copy(os.path.join(images, "car0_01.jpg"), os.path.join(images, "zzlast_01.jpg"))
    os.mkfifo(os.path.join(images, "fifo_01.jpg"))
    os.mkdir(os.path.join(images, "dir_01.jpg"))
    os.symlink("/dev/zero", os.path.join(images, "dev_01.jpg"))
    write_pair(str(tmp_path), "car2_01", seed=2)
    os.remove(os.path.join(masks, "car2_01_mask.gif"))
    os.mkfifo(os.path.join(masks, "car2_01_mask.gif"))  # a good image whose mask is a FIFO
    monkeypatch.chdir(images)  # a socket's path must be short: bind it by its relative name
    sock = socket.socket(socket.AF_UNIX)
    sock.bind("sock_01.jpg")
    rep = tmp_path / "r.json"
    start = time.perf_counter()
    code, out, err = finish(drive("stuck", FAST + ["--batch_size", "2", "--image_path", images, "--mask_path", masks,
                                                   "--json", str(rep)]), timeout=90)
    sock.close()
    assert code == 130 and no_traceback(err), err
    assert time.perf_counter() - start < 60
    report = json.loads(rep.read_text())
    (row,) = report["rows"]
    assert report["partial"] and row["interrupted"]
    assert row["per_image"]["id"] == ["car0_01", "car1_01"]  # the good images before the stuck one: scored, kept
    failed = {f["id"]: f["error"] for f in row["failed_images"]}
    assert set(failed) == {"car2_01", "dev_01", "dir_01", "fifo_01", "sock_01"}, failed
    assert "named pipe (FIFO), not a regular file" in failed["fifo_01"] and "fifo_01.jpg" in failed["fifo_01"]
    assert "mask" in failed["car2_01"] and "car2_01_mask.gif" in failed["car2_01"]
    assert "a folder" in failed["dir_01"] and "device" in failed["dev_01"] and "sock_01.jpg" in failed["sock_01"]
    assert stat.S_ISFIFO(os.stat(os.path.join(images, "fifo_01.jpg")).st_mode)  # left as it was


# 2. Images beyond a decoder's limits; sizes that cannot fit -------------------------------------------------------

def png_header(path: str, width: int, height: int) -> None:
    """A PNG that declares width x height (8-bit grey) and holds almost nothing: what a decompression bomb looks like
    until it is decoded."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                + chunk(b"IEND", b""))


def test_decompression_bombs_are_skipped_images_and_sizes_past_the_limit_are_usage_errors(tmp_path, capsys,
                                                                                         monkeypatch):
    images, masks = make_set(tmp_path, 3)
    png_header(os.path.join(images, "bomb_01.png"), 20000, 10000)  # past Pillow's error limit
    png_header(os.path.join(images, "huge_01.png"), 10000, 10000)  # between its warning and error limits
    for name in ("bomb_01", "huge_01"):
        shutil.copy(os.path.join(masks, "car0_01_mask.gif"), os.path.join(masks, f"{name}_mask.gif"))
    png_header(os.path.join(masks, "car2_01_mask.png"), 20000, 10000)  # a bomb as a mask
    os.remove(os.path.join(masks, "car2_01_mask.gif"))
    rep = tmp_path / "r.json"
    code = sample.main(FAST + ["--image_path", images, "--mask_path", masks, "--json", str(rep)])
    out, err = capsys.readouterr()
    assert code == 1 and no_traceback(err)
    (row,) = json.loads(rep.read_text())["rows"]
    assert row["per_image"]["id"] == ["car0_01", "car1_01"] and row["images_scored"] == 2
    failed = {f["id"]: f["error"] for f in row["failed_images"]}
    assert set(failed) == {"bomb_01", "huge_01", "car2_01"}
    assert all("decompression-bomb" in e for e in failed.values()), failed
    assert "bomb_01.png" in failed["bomb_01"] and "car2_01_mask.png" in failed["car2_01"]
    assert "DecompressionBomb" not in err  # neither Pillow's warning nor its exception's name: one line per file
    for size, limit in [("100000", "at most 16384"), ("16384", "the limit here is about")]:
        monkeypatch.setattr("pipeline.config.memory_bytes", lambda: 16 << 30)  # a 16 GiB machine, wherever this runs
        with pytest.raises(SystemExit) as exc:  # --engine nosuch: even a run that got past this check stops at once
            sample.main(["--image_size", size, "--engine", "nosuch", "--image_path", images])
        assert exc.value.code == 2
        assert limit in capsys.readouterr().err


# 3. --pth that is not a checkpoint ---------------------------------------------------------------------------------

def _not_checkpoints(tmp_path) -> dict:
    files = {}

    def put(name, data):
        files[name] = tmp_path / name
        (tmp_path / name).write_bytes(data)
    put("text.pth", b"hello\nthis is not a checkpoint\n")
    put("digits.pth", b"12345\n")
    put("readme.md", open(os.path.join(ROOT, "README.md"), "rb").read())
    put("config.json", json.dumps({"state_dict": {"w": [1, 2]}}).encode())
    put("empty.pth", b"")
    put("random.pth", np.random.default_rng(0).bytes(4096))
    put("plain.pkl", __import__("pickle").dumps({"a": 1}))
    Image.new("RGB", (8, 8)).save(tmp_path / "photo.jpg")
    files["photo.jpg"] = tmp_path / "photo.jpg"
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("notes/readme.txt", "not torch")
    files["other.zip"] = tmp_path / "other.zip"
    torch.save({"w": torch.zeros(1000)}, tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    put("truncated.pth", data[: len(data) // 2])
    torch.jit.save(torch.jit.trace(torch.nn.Conv2d(3, 2, 1), torch.rand(1, 3, 4, 4)), tmp_path / "script.pt")
    files["script.pt"] = tmp_path / "script.pt"
    np.save(tmp_path / "array.npy", np.zeros(3))
    files["array.npy"] = tmp_path / "array.npy"
    os.mkfifo(tmp_path / "pipe.pth")
    files["pipe.pth"] = tmp_path / "pipe.pth"
    (tmp_path / "folder.pth").mkdir()
    files["folder.pth"] = tmp_path / "folder.pth"
    torch.save({1: torch.zeros(1)}, tmp_path / "intkeys.pth")
    files["intkeys.pth"] = tmp_path / "intkeys.pth"
    torch.save(small_model(), tmp_path / "whole.pth")
    files["whole.pth"] = tmp_path / "whole.pth"
    return files


def test_pth_that_is_not_a_checkpoint_is_one_line_that_never_suggests_weights_only_false(tmp_path, small_set, capsys):
    """Many kinds of file: one error line naming the file, exit 1, no traceback, and no message anywhere suggests
    turning weights_only off (torch's own text does; it is never passed on)."""
    for name, path in _not_checkpoints(tmp_path).items():
        code = sample.main(FAST + ["--image_path", small_set[0], "--pth", str(path)])
        out, err = capsys.readouterr()
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 1 and len(lines) == 1 and no_traceback(err), (name, err)
        expect = {"whole.pth": "refused to unpickle", "intkeys.pth": "not a state dict"}.get(name,
                                                                                          "not a PyTorch checkpoint")
        assert lines[0].startswith(f"error: {path}: {expect}"), (name, lines[0])
        assert "weights_only" not in out + err and "trust" not in err and "safe_globals" not in err, (name, err)
    legacy = tmp_path / "legacy.pth"  # the pre-1.6 (non-zip) format with tensors only is a checkpoint
    torch.save(small_model().state_dict(), legacy, _use_new_zipfile_serialization=False)
    assert sample.main(FAST + ["--image_path", small_set[0], "--pth", str(legacy), "--limit", "1"]) == 0


# 4. Output paths that alias something ------------------------------------------------------------------------------

def test_outputs_that_alias_a_link_a_device_another_output_or_an_input_are_refused(tmp_path, capsys):
    images, masks = make_set(tmp_path / "data", 2)
    ckpt = tmp_path / "c.pth"
    torch.save(small_model().state_dict(), ckpt)
    target = tmp_path / "precious.json"
    target.write_text("keep me")
    (tmp_path / "link.json").symlink_to(target)
    os.mkfifo(tmp_path / "fifo.csv")
    (tmp_path / "out").mkdir()
    mask_bytes = open(os.path.join(masks, "car0_01_mask.gif"), "rb").read()
    t = str(tmp_path)
    cases = [
        (["--json", f"{t}/link.json"], "is a symbolic link"),
        (["--csv", "/dev/stdout"], "is a symbolic link"),
        (["--json", "/dev/null"], "is a device, not a regular file"),
        (["--submission", f"{t}/fifo.csv"], "named pipe"),
        (["--plots", f"{t}/precious.json"], "not a folder"),
        (["--csv", f"{t}/r.csv", "--json", f"{t}/r.csv"], "would write the same file"),
        (["--csv", f"{t}/out/../r.csv", "--submission", f"{t}/r.csv"], "would write the same file"),
        (["--output", f"{t}/out", "--csv", f"{t}/out/car0_01_mask.png"], "would write the same file"),
        (["--output", masks, "--overwrite"], "inside the mask folder"),
        (["--output", os.path.join(images, "preds")], "inside the image folder"),
        (["--json", os.path.join(masks, "r.json")], "inside the mask folder"),
        (["--json", str(ckpt), "--pth", str(ckpt)], "would overwrite the checkpoint"),
        (["--output", f"{t}/cache/engines/x", "--cache_dir", f"{t}/cache"], "inside the engine cache folder"),
    ]
    for extra, expect in cases:
        with pytest.raises(SystemExit) as exc:
            sample.main(FAST + ["--image_path", images, "--mask_path", masks] + extra)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and expect in err and no_traceback(err), (extra, err)
    assert os.path.islink(tmp_path / "link.json") and target.read_text() == "keep me"
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and stat.S_ISFIFO(os.stat(tmp_path / "fifo.csv").st_mode)
    assert open(os.path.join(masks, "car0_01_mask.gif"), "rb").read() == mask_bytes
    assert sorted(os.listdir(masks)) == ["car0_01_mask.gif", "car1_01_mask.gif"] and ckpt.stat().st_size > 1000
    assert not os.path.exists(tmp_path / "r.csv") and os.listdir(tmp_path / "out") == []
    # A link to a folder is fine for --output: files go inside it, the link stays.
    (tmp_path / "real_out").mkdir()
    (tmp_path / "out_link").symlink_to(tmp_path / "real_out")
    assert sample.main(FAST + ["--image_path", images, "--output", str(tmp_path / "out_link")]) == 0
    assert os.path.islink(tmp_path / "out_link") and len(os.listdir(tmp_path / "real_out")) == 2


# 5. A broken stdout -----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_broken_stdout_still_writes_the_files_and_a_closed_pipe_ends_quietly(tmp_path):
    images, masks = make_set(tmp_path, 2)
    args = [sys.executable, SAMPLE] + FAST + ["--image_path", images, "--mask_path", masks]
    with open("/dev/full", "w") as full:
        outputs = ["--json", str(tmp_path / "full.json"), "--csv", str(tmp_path / "full.csv")]
        disk_full = subprocess.Popen(args + outputs, stdout=full, stderr=subprocess.PIPE, text=True)
    closed = subprocess.Popen(args + ["--json", str(tmp_path / "pipe.json")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    closed.stdout.close()  # the reader is gone before the report is printed (`| head -1` that already exited)
    code, _, err = finish(disk_full)
    assert code == 1 and no_traceback(err), err
    assert "error: cannot write the report to stdout: No space left on device" in err
    assert json.loads((tmp_path / "full.json").read_text())["rows"][0]["images_scored"] == 2
    assert len(read_csv(tmp_path / "full.csv")) == 2
    err = closed.stderr.read()
    closed.wait(timeout=120)
    assert closed.returncode == 141 and err.strip() == "", err  # quiet, as `cat` ends under `| head -1`
    assert json.loads((tmp_path / "pipe.json").read_text())["rows"][0]["images_scored"] == 2


# 6. Repeated Ctrl-C -----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_any_number_of_ctrl_c_gives_the_same_partial_report_and_exit_130(tmp_path):
    """SIGINT every 20 ms from the first one on, at four points: in the accuracy pass, in the timing pass, while
    the report's files are written, and before any row ran. Run concurrently (each in its own process)."""
    images, masks = make_set(tmp_path / "data", 3)
    runs = {}
    for point in ("accuracy", "timing", "finish", "setup"):
        d = tmp_path / point
        d.mkdir()
        batch = ["--batch_size", "1"] if point == "accuracy" else []  # interrupted after its second batch
        runs[point] = (d, drive(point, FAST + batch + ["--image_path", images, "--mask_path", masks,
                                                        "--output", str(d / "out"), "--csv", str(d / "per.csv"),
                                                        "--json", str(d / "r.json")]))
    for point, (d, proc) in runs.items():
        code, out, err = finish(proc)
        assert code == 130 and no_traceback(err), (point, err)
        if point == "setup":
            assert "interrupted before any engine row finished" in err and not (d / "r.json").exists()
            continue
        report = json.loads((d / "r.json").read_text())
        (row,) = report["rows"]
        per = read_csv(d / "per.csv")
        scored = {"accuracy": 2, "timing": 3, "finish": 3}[point]
        assert row["images"] == len(per) == len(os.listdir(d / "out")) == scored, point
        assert report["partial"] is (point != "finish") and ("calls" in row) is (point == "finish"), point
        assert ("note: SIGINT came while the result files were written" in err) is (point == "finish"), point
        assert report["outputs"]["csv_rows"] == scored and f"wrote the JSON report to {d / 'r.json'}" in out, point
        assert not [f for f in os.listdir(d / "out") if f.startswith(".tmp-")]


# 7. Disk full during --output -------------------------------------------------------------------------------------

def test_disk_full_for_the_masks_loses_no_result_and_names_the_file(tmp_path, monkeypatch, capsys):
    images, masks = make_set(tmp_path, 3)
    original = utils.files._write_atomic

    def disk_full_for_masks(path, data):
        if path.endswith("_mask.png"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        original(path, data)

    monkeypatch.setattr(utils.files, "_write_atomic", disk_full_for_masks)
    monkeypatch.setattr("report.outputs.LISTED", 2)  # the JSON's list of files not written is bounded, its count not
    out, sub, per, rep = tmp_path / "out", tmp_path / "sub.csv", tmp_path / "per.csv", tmp_path / "r.json"
    code = sample.main(FAST + ["--image_path", images, "--mask_path", masks, "--output", str(out), "--overlay",
                               "--submission", str(sub), "--csv", str(per), "--json", str(rep)])
    stdout, err = capsys.readouterr()
    assert code == 1 and no_traceback(err)
    assert f"cannot write {out / 'car0_01_mask.png'}: No space left on device" in err and "2 more" in err
    report = json.loads(rep.read_text())
    (row,) = report["rows"]  # the row's dice and timing are kept
    assert row["images_scored"] == 3 and row["dice"] is not None and row["latency_median_ms"] > 0
    assert len(read_csv(per)) == 3 and len(read_csv(sub)) == 3  # the other outputs are whole
    assert sorted(os.listdir(out)) == [f"car{i}_01_overlay.jpg" for i in range(3)]  # no mask, no temporary file
    assert report["outputs"]["files"] == 3 and "dice" in stdout
    assert report["outputs"]["not_written_count"] == 3 and report["outputs"]["not_written"] == [
        {"path": str(out / f"car{i}_01_mask.png"), "error": f"cannot write {out / f'car{i}_01_mask.png'}: No space "
                                                            "left on device"} for i in range(2)]


# 8. A tampered artifact cache -------------------------------------------------------------------------------------

def _entries(cache: str, engine: str) -> list[str]:
    root = os.path.join(cache, "engines", engine)
    return [os.path.join(root, d) for d in os.listdir(root) if not d.startswith(".")]


def test_a_tampered_cache_entry_is_rebuilt_never_used(tmp_path, small_set, capsys):
    pytest.importorskip("openvino")
    cache = str(tmp_path / "cache")
    argv = ["--engine", "openvino", "--image_size", "64", "--loop", "1", "--warm_counter", "0", "--quiet",
            "--device", "cpu", "--batch_size", "3", "--image_path", small_set[0], "--mask_path", small_set[1],
            "--cache_dir", cache, *SMALL]
    assert sample.main(argv + ["--json", str(tmp_path / "clean.json")]) == 0
    capsys.readouterr()
    # The damage that matters most, on a real engine: zeroed weights that openvino would load without a word.
    (ov,) = _entries(cache, "openvino")
    with open(os.path.join(ov, "model.bin"), "r+b") as f:
        f.seek(os.path.getsize(f.name) // 3)
        f.write(b"\0" * 65536)
    assert sample.main(argv + ["--json", str(tmp_path / "again.json")]) == 0
    err = capsys.readouterr().err
    assert f"note: cache entry {ov} failed its checksum (model.bin changed); rebuilt" in err, err
    from engines.cache import verify
    assert verify(ov) is None
    (clean,), (again,) = (json.loads((tmp_path / f"{n}.json").read_text())["rows"] for n in ("clean", "again"))
    assert again["artifact"] == "compiled"  # the rebuilt engine gives what the clean build gave
    assert clean["per_image"]["cosine"] == again["per_image"]["cosine"]
    assert clean["per_image"]["dice"] == again["per_image"]["dice"]
    # Every other kind of damage, on a small entry (the checksums cover any engine's files alike): a truncated file
    # (every later load would fail), a missing file, an added one, the key file emptied.
    model, built = torch.nn.Conv2d(3, 2, 1), []

    def build(folder):
        built.append(folder)
        for name in ("a.bin", "b.xml"):
            with open(os.path.join(folder, name), "wb") as f:
                f.write(name.encode() * 100)

    small = ArtifactCache(str(tmp_path / "small"))
    for damage, expect in [(lambda f: os.truncate(os.path.join(f, "a.bin"), 50), "(a.bin changed); rebuilt"),
                           (lambda f: os.remove(os.path.join(f, "a.bin")), "a.bin is missing"),
                           (lambda f: open(os.path.join(f, "extra.so"), "w").close(), "extra.so was added"),
                           (lambda f: open(os.path.join(f, "key.json"), "w").close(), "key.json is unreadable")]:
        with artifact(small, "e", "1", model, (1, 3, 8, 8), "fp32", build) as entry:
            pass
        damage(entry.folder)
        capsys.readouterr()
        with artifact(small, "e", "1", model, (1, 3, 8, 8), "fp32", build) as again_entry:
            assert again_entry.state == "compiled" and verify(again_entry.folder) is None
        assert expect in capsys.readouterr().err
    with artifact(small, "e", "1", model, (1, 3, 8, 8), "fp32", build) as entry:
        assert entry.state == "loaded"


# 10. Two runs writing one --output folder --------------------------------------------------------------------------

HOLD = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
import sample
from report.outputs import Hook
add, flag = Hook.add, sys.argv[2]
def add_and_hold(self, batch, logits):
    add(self, batch, logits)
    if not os.path.exists(flag + ".go"):
        open(flag + ".ready", "w").close()
        while not os.path.exists(flag + ".go"):
            time.sleep(0.05)
Hook.add = add_and_hold
sys.exit(sample.main(sys.argv[3:]))
"""


@pytest.mark.slow
def test_a_second_run_on_the_same_output_folder_is_refused_while_the_first_holds_it(tmp_path, capsys):
    images, masks = make_set(tmp_path, 3)
    out, flag = tmp_path / "out", str(tmp_path / "first")
    argv = FAST + ["--image_path", images, "--mask_path", masks, "--output", str(out), "--overwrite"]
    first = subprocess.Popen([sys.executable, "-c", HOLD, ROOT, flag] + argv, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 90
        while not os.path.exists(flag + ".ready") and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert os.path.exists(flag + ".ready"), first.stderr.read() if first.poll() is not None else "no start"
        assert sample.main(argv) == 1
        err = capsys.readouterr().err
        assert f"--output folder {out} is in use by another run (pid {first.pid})" in err and no_traceback(err)
        assert open(out / LOCK_NAME).read().strip() == str(first.pid)
    finally:
        open(flag + ".go", "w").close()
    code, _, err = finish(first)
    assert code == 0, err
    assert sorted(os.listdir(out)) == [f"car{i}_01_mask.png" for i in range(3)]  # the first run's files; no lock left
    assert sample.main(argv) == 0  # released at the end of the first run
    # A lock dies with its process, a crash included: the file left behind is no obstacle.
    held = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
                             "from utils.files import FolderLock; FolderLock(sys.argv[2], 'x').__enter__(); "
                             "print('held', flush=True); time.sleep(60)", ROOT, str(out)], stdout=subprocess.PIPE,
                            text=True)
    assert held.stdout.readline().strip() == "held"
    held.kill()
    held.wait()
    assert os.path.exists(out / LOCK_NAME)
    from utils.files import FolderLock
    with FolderLock(str(out), "--output"):
        assert open(out / LOCK_NAME).read().strip() == str(os.getpid())
    assert not os.path.exists(out / LOCK_NAME)
