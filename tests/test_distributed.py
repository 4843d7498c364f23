"""Issue 9, the same command under torchrun: every pair scored once, results equal to one process's to the bit, files
equal byte for byte, a failing or stuck rank ends the run with one clear line, Ctrl-C keeps a partial report.

The runs are real `torchrun --standalone --nproc_per_node=2` jobs (gloo, CPU, 64 px, eager torch), compared with one
process run in this one with the same thread count per process (1), so both compute every image with the same
kernels. A module-scoped fixture makes the data, the checkpoint and the runs once for the assertions that share them.
"""
from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

import sample
from dataset.batches import Loader, iter_dataset
from dataset.pairs import Dataset, Sample, find_pairs
from dataset.shards import sample_order, shard, span
from engines.cache import ArtifactCache, artifact
from models.unet import UNet
from pipeline.distributed import World, rank_device
from report.metrics import Accuracy, merge_accuracy
from tests.conftest import ROOT, write_pair

FAST = ["--engine", "torch", "--image_size", "64", "--loop", "1", "--warm_counter", "0", "--device", "cpu", "--quiet"]

# sample.py under a driver that first patches a library function on one rank (the faults a real job meets).
DRIVER = """
import os, runpy, signal, sys, time
root, fault = sys.argv[1], sys.argv[2]
sys.path.insert(0, root)
sys.argv = [os.path.join(root, "sample.py")] + sys.argv[3:]
rank = int(os.environ["RANK"])
if fault == "engine" and rank == 1:  # an engine error on one rank (out of memory on its device, say)
    import engines
    def load(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated on rank 1)")
    engines.load = load
elif fault == "device" and rank == 1:  # a bad device on one rank: its setup fails
    import utils.device
    from utils.errors import SampleError
    def parse_device(text):
        raise SampleError("--device cuda:1: only 1 CUDA device(s) present (indices from 0)")
    utils.device.parse_device = parse_device
elif fault == "stuck" and rank == 1:  # a rank that never comes back (a hung driver call)
    import engines
    def load(*args, **kwargs):
        time.sleep(120)
    engines.load = load
elif fault == "ctrl-c" and rank == 0:  # Ctrl-C in the terminal: SIGINT to torchrun and every rank, mid-row
    import dataset.batches
    real = dataset.batches.iter_dataset
    def iter_dataset(*args, **kwargs):
        for k, batch in enumerate(real(*args, **kwargs)):
            if k == 1:
                os.killpg(os.getpgrp(), signal.SIGINT)
                time.sleep(5)
            yield batch
    dataset.batches.iter_dataset = iter_dataset
elif fault == "die" and rank == 1:  # a rank killed mid-row (the OOM killer, a segfault)
    import dataset.batches
    real = dataset.batches.iter_dataset
    def iter_dataset(*args, **kwargs):
        for k, batch in enumerate(real(*args, **kwargs)):
            if k == 1:
                os.kill(os.getpid(), signal.SIGKILL)
            yield batch
    dataset.batches.iter_dataset = iter_dataset
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def torchrun(argv: list[str], fault: str | None = None, nproc: int = 2, timeout: float = 120) -> tuple[int, str, str]:
    """Run sample.py (or the fault driver) under `python -m torch.distributed.run --standalone`, in its own session."""
    target = ["-c", DRIVER, ROOT, fault] if fault else [os.path.join(ROOT, "sample.py")]
    if fault:  # torchrun runs a script file: write the driver beside the data
        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"driver-{os.getpid()}.py")
        with open(path, "w") as f:
            f.write(DRIVER)
        target = [path, ROOT, fault]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "--monitor_interval=0.2"] + target + argv
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun did not end within {timeout} s\n{out}\n{err}")
    return proc.returncode, out, err


def ours(err: str) -> str:
    """stderr without torchrun's own lines (its OMP note, its log lines and its ChildFailedError summary)."""
    keep = []
    for line in err.splitlines():
        if line.startswith(("W1", "E1", "I1", "*", "Setting OMP_NUM_THREADS")) or "torch/distributed" in line:
            continue
        if line.startswith("Traceback") or line.startswith("  ") or "ChildFailedError" in line:
            continue  # torchrun's summary of a failed job: printed by torchrun, not by a rank
        keep.append(line)
    return "\n".join(keep)


def no_traceback_of_ours(err: str) -> bool:
    """Only torchrun itself may print a traceback (its ChildFailedError); none comes from the sample's code."""
    return not any(part in err for part in ('sample.py", line', "pipeline/", "utils/", "engines/", "report/"))


def make_checkpoint(path: str) -> None:
    """A UNet whose output bias is set so that about half of the pixels are 'car': random weights alone predict the
    car everywhere, which would make every mask the same and the comparison weak."""
    torch.manual_seed(3)
    model = UNet(3, 2).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 3, 64, 64))
        margin = (logits[:, 1] - logits[:, 0]).median()
        model.outc.conv.bias[1] -= margin
        # ... and the classes swapped: on these images the untrained features light up the background
        model.outc.conv.weight.copy_(model.outc.conv.weight.flip(0))
        model.outc.conv.bias.copy_(model.outc.conv.bias.flip(0))
    torch.save(model.state_dict(), path)


def read_csv_text(path: str, drop: str = "batch_ms") -> str:
    """The CSV text with one column's cells blanked (a latency, which no two runs share)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    col = rows[0].index(drop)
    for row in rows[1:]:
        row[col] = ""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Seven images (six pairs and one without a mask: an odd count, a padded batch of 2) with a real-looking model,
    run by one process and by two ranks with every output; then one image on two ranks (rank 1 has no data)."""
    root = tmp_path_factory.mktemp("dist")
    for i in range(6):
        write_pair(str(root), f"car{i}_01", seed=i, size=(96, 64))
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(root / "images" / "nomask_01.jpg")
    pth = str(root / "unet.pth")
    make_checkpoint(pth)
    data = ["--image_path", str(root / "images"), "--mask_path", str(root / "masks"), "--pth", pth]
    result = {}
    for name, launch in (("one", None), ("two", 2)):
        out = root / name
        argv = FAST + data + ["--batch_size", "2", "--precision", "fp32,bf16", "--json", str(out / "r.json"),
                              "--csv", str(out / "images.csv"), "--output", str(out / "masks"),
                              "--submission", str(out / "submission.csv"), "--cache_dir", str(root / "cache")]
        if launch:
            code, stdout, err = torchrun(argv)
        else:
            code = sample.main(argv + ["--threads", "1"])
            stdout = err = ""
        result[name] = {"code": code, "out": stdout, "err": err, "dir": out,
                        "report": json.loads((out / "r.json").read_text())}
    # N larger than the data: one image, two ranks; scored at the original size (the outputs' own scores merge too)
    for name, launch in (("one_image", None), ("one_image_two", 2)):
        out = root / name
        argv = FAST + data + ["--limit", "1", "--eval_resolution", "original", "--json", str(out / "r.json"),
                              "--cache_dir", str(root / "cache")]
        code = torchrun(argv)[0] if launch else sample.main(argv + ["--threads", "1"])
        result[name] = {"code": code, "report": json.loads((out / "r.json").read_text())}
    return result


SCORES = ("images", "images_scored", "dice", "dice_min", "micro_dice", "iou", "cosine_min", "cosine_mean",
          "max_abs_diff", "reference_dice", "dice_delta", "fidelity")


def test_two_ranks_report_exactly_what_one_process_reports(runs):
    one, two = runs["one"]["report"], runs["two"]["report"]
    assert runs["one"]["code"] == 0 and runs["two"]["code"] == 0, runs["two"]["err"]
    assert [(r["engine"], r["precision"]) for r in two["rows"]] == [("torch", "fp32"), ("torch", "bf16")]
    for a, b in zip(one["rows"], two["rows"]):
        assert 0.2 < a["dice"] < 0.999 and a["dice_min"] < a["dice"]  # the model's masks are not all alike
        assert {k: a.get(k) for k in SCORES} == {k: b.get(k) for k in SCORES}  # bit for bit
        drop = ("batch_ms",)
        assert {k: v for k, v in a["per_image"].items() if k not in drop} == \
               {k: v for k, v in b["per_image"].items() if k not in drop}
        assert b["device"] == "cpu x2" and [r["images"] for r in b["ranks"]] == [4, 3]
        assert b["fps"] == pytest.approx(sum(r["fps"] for r in b["ranks"]))
        assert b["e2e_fps"] == pytest.approx(7 / b["e2e_s"])
        assert b["e2e_s"] >= max(r["e2e_s"] for r in b["ranks"]) - 1e-6  # first start to last end (wall clock)
        assert b["calls"] == 2 and len(b["latencies_ms"]) == 2  # one timed call per rank
    world = two["config"]["distributed"]
    assert world["world_size"] == 2 and world["backend"] == "gloo" and world["timeout_s"] == 1800
    assert [(r["rank"], r["device"], r["threads"], r["images"], r["first"], r["last"]) for r in world["ranks"]] == \
           [(0, "cpu", 1, 4, "car0_01", "car3_01"), (1, "cpu", 1, 3, "car4_01", "nomask_01")]
    assert two["config"]["images"] == 7 and two["config"]["command"].startswith("torchrun --nproc_per_node=2 sample.py")


def test_rank_0_alone_prints_the_report_and_the_files_equal_one_process_s(runs):
    one, two = runs["one"]["dir"], runs["two"]["dir"]
    out = runs["two"]["out"]
    assert out.count("engine  device") == 1 and "ranks: 2 under torchrun" in out
    assert "torch fp32 on 2 ranks: model fps" in out and "from the first rank's start to the last rank's end" in out
    assert "warning: no mask for" in runs["two"]["err"] and runs["two"]["err"].count("warning: no mask for") == 1
    masks = sorted(os.listdir(one / "masks"))
    assert masks == sorted(os.listdir(two / "masks")) and len(masks) == 7  # the lock file is gone
    for name in masks:
        assert (one / "masks" / name).read_bytes() == (two / "masks" / name).read_bytes(), name
    assert (one / "submission.csv").read_bytes() == (two / "submission.csv").read_bytes()
    # byte for byte but the batch latency, which differs between any two runs
    assert read_csv_text(one / "images.csv") == read_csv_text(two / "images.csv")
    assert len(read_csv_text(one / "images.csv").splitlines()) == 1 + 2 * 7


def test_a_rank_with_no_data_changes_nothing(runs):
    one, two = runs["one_image"]["report"], runs["one_image_two"]["report"]
    assert runs["one_image"]["code"] == 0 and runs["one_image_two"]["code"] == 0
    a, b = one["rows"][0], two["rows"][0]
    assert {k: a.get(k) for k in SCORES} == {k: b.get(k) for k in SCORES}
    assert a["model_res_dice"] == b["model_res_dice"] and a["model_res_micro_dice"] == b["model_res_micro_dice"]
    assert [r["images"] for r in b["ranks"]] == [1, 0] and b["images"] == 1
    assert [r["images"] for r in two["config"]["distributed"]["ranks"]] == [1, 0]


def test_an_engine_error_on_one_rank_fails_the_row_on_every_rank_with_one_line(tmp_path):
    for i in range(3):
        write_pair(str(tmp_path), f"car{i}_01", seed=i)
    argv = FAST + ["--image_path", str(tmp_path / "images"), "--mask_path", str(tmp_path / "masks"),
                   "--cache_dir", str(tmp_path / "cache"), "--json", str(tmp_path / "r.json")]
    code, out, err = torchrun(argv, fault="engine")
    mine = ours(err)
    line = "error: rank 1 (cpu on "
    assert code != 0 and mine.count(line) == 1, err
    assert "engine torch fp32 failed: RuntimeError: CUDA out of memory (simulated on rank 1)" in mine
    assert "FAILED torch fp32: rank 1 (cpu on" in out  # rank 0's report says so too
    assert no_traceback_of_ours(err), err
    assert json.loads((tmp_path / "r.json").read_text())["skipped"][0]["failed"] is True


def test_a_setup_error_on_one_rank_stops_every_rank_with_one_line(tmp_path):
    write_pair(str(tmp_path), "car0_01")
    argv = FAST + ["--image_path", str(tmp_path / "images"), "--cache_dir", str(tmp_path / "cache")]
    start = time.monotonic()
    code, out, err = torchrun(argv, fault="device")
    assert code != 0 and out == "", out
    assert ours(err).count("error: ") == 1, err
    assert "error: rank 1 (cpu on " in err and "--device cuda:1: only 1 CUDA device(s) present" in err
    assert no_traceback_of_ours(err) and time.monotonic() - start < 60


def test_a_stuck_rank_ends_the_run_within_the_collective_timeout(tmp_path):
    write_pair(str(tmp_path), "car0_01")
    write_pair(str(tmp_path), "car1_01", seed=1)
    argv = FAST + ["--image_path", str(tmp_path / "images"), "--cache_dir", str(tmp_path / "cache"),
                   "--dist_timeout", "4"]
    start = time.monotonic()
    code, out, err = torchrun(argv, fault="stuck", timeout=90)
    assert code != 0, err
    assert "error: rank 0 (cpu on" in err and "stuck (past --dist_timeout 4 s)" in err, err
    assert "rank 1 (cpu on" in err and "is still at 'setup'" in err, err  # the stuck rank is named, with where it is
    assert no_traceback_of_ours(err) and time.monotonic() - start < 60


def test_ctrl_c_under_torchrun_gives_rank_0_s_partial_report(tmp_path):
    for i in range(6):
        write_pair(str(tmp_path), f"car{i}_01", seed=i)
    report = tmp_path / "r.json"
    argv = FAST + ["--image_path", str(tmp_path / "images"), "--mask_path", str(tmp_path / "masks"),
                   "--cache_dir", str(tmp_path / "cache"), "--json", str(report)]
    code, out, err = torchrun(argv, fault="ctrl-c")
    assert code != 0
    assert "PARTIAL: the run was interrupted" in out and "INTERRUPTED after" in out, out + err
    saved = json.loads(report.read_text())
    row = saved["rows"][0]
    assert saved["partial"] is True and row["interrupted"] is True and 1 <= row["images"] < 6
    assert no_traceback_of_ours(err), err


# Pieces, without processes.

def test_shards_hold_every_pair_once_in_whole_batches():
    samples = [Sample(f"s{i}", f"s{i}.jpg", "m") for i in range(7)]
    unpaired = [Sample(f"u{i}", f"u{i}.jpg") for i in range(3)]
    dataset = Dataset(samples, unpaired, True)
    for size in (1, 2, 3, 7, 12):
        for batch in (1, 2, 4):
            parts = [shard(dataset, batch, r, size) for r in range(size)]
            ids = [s.id for p in parts for s in p.samples + p.unpaired]
            assert ids == [s.id for s in samples + unpaired]  # each once, in order, none lost
            for p in parts[:-1]:
                assert len(p.samples) % batch == 0 or not p.unpaired  # a partial batch only at a set's end
            assert parts[0].samples or parts[0].unpaired  # rank 0 always has data
    assert [span(5, r, 3) for r in range(3)] == [(0, 2), (2, 4), (4, 5)] and span(1, 1, 2) == (1, 1)


def test_merged_scores_are_the_one_process_scores_bit_for_bit():
    torch.manual_seed(1)
    logits, masks = torch.randn(9, 2, 8, 8), torch.randint(0, 2, (9, 8, 8))
    ids = [f"i{k}" for k in range(9)]
    whole, parts = Accuracy(), [Accuracy(), Accuracy()]
    for lo in range(0, 9, 2):
        hi = min(lo + 2, 9)
        whole.add(ids[lo:hi], logits[lo:hi], masks[lo:hi], logits[lo:hi] * 1.01)
        parts[0 if lo < 6 else 1].add(ids[lo:hi], logits[lo:hi], masks[lo:hi], logits[lo:hi] * 1.01)
    merged = merge_accuracy(parts[::-1], {i: k for k, i in enumerate(ids)})  # the order of arrival does not matter
    assert merged.ids == ids and merged.scores() == whole.scores() and merged.agreement() == whole.agreement()


def test_each_rank_takes_its_accelerator_and_its_share_of_the_cpu(monkeypatch):
    assert rank_device("cpu", 3) == ("cpu", None)
    assert rank_device("cuda", 3) == ("cuda:3", None) and rank_device("npu:0", 1) == ("npu:1", None)
    device, problem = rank_device("cuda:2", 0)
    assert device == "cuda:2" and "CUDA_VISIBLE_DEVICES" in problem
    config = sample.parse_config(sample.get_args_parser(), ["--device", "cpu"])
    assert config.command == "python sample.py --device cpu"
    one = World.from_env()
    assert not one.active and one.rank_config(config) is config  # one process: untouched
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr("pipeline.distributed.usable_cpus", lambda: 16)
    world = World.from_env()
    mine = world.rank_config(config)
    assert world.active and (world.rank, mine.threads, mine.device, mine.quiet) == (1, 8, "cpu", True)
    assert mine.command == "torchrun --nproc_per_node=2 sample.py --device cpu"
    assert config.threads is None and config.quiet is False  # the parsed config is frozen: the rank has a copy


def test_one_process_builds_an_artifact_while_another_waits_then_loads_it(tmp_path):
    cache, model, built, states = ArtifactCache(str(tmp_path)), torch.nn.Conv2d(3, 2, 1), [], []

    def build(folder):
        built.append(threading.current_thread().name)
        time.sleep(0.5)
        open(os.path.join(folder, "model.bin"), "w").close()

    def use():
        with artifact(cache, "e", "1", model, (1, 3, 8, 8), "fp32", build) as a:
            states.append(a.state)

    threads = [threading.Thread(target=use, name=f"rank{r}") for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1 and sorted(states) == ["compiled", "loaded"]


def test_find_pairs_shard_and_iter_dataset_agree(tmp_path):
    """A shard batches exactly as the one process: same images per batch, padding only in a set's last batch."""
    for i in range(5):
        write_pair(str(tmp_path), f"car{i}_01", seed=i)
    dataset = find_pairs(str(tmp_path / "images"), str(tmp_path / "masks"))
    whole = [b.ids for b in iter_dataset(dataset, Loader((32, 32), 2, 1))]
    split = [b.ids for r in range(2) for b in iter_dataset(shard(dataset, 2, r, 2), Loader((32, 32), 2, 1))]
    assert whole == split == [["car0_01", "car1_01"], ["car2_01", "car3_01"], ["car4_01"]]
    assert sample_order(dataset)["car4_01"] == 4


def test_a_rank_that_dies_is_named_by_rank_0_and_the_run_exits_1(tmp_path):
    """SIGKILL on rank 1 mid-row: torchrun then sends SIGTERM to rank 0, which must not pass for the user's Ctrl-C."""
    for i in range(6):
        write_pair(str(tmp_path), f"car{i}_01", seed=i)
    argv = FAST + ["--image_path", str(tmp_path / "images"), "--mask_path", str(tmp_path / "masks"),
                   "--cache_dir", str(tmp_path / "cache")]
    start = time.monotonic()
    code, out, err = torchrun(argv, fault="die", timeout=90)
    assert code == 1, (code, err)
    mine = ours(err)
    assert mine.count("error: rank 0 (cpu on") == 1 and "rank 1 (cpu on" in mine, err
    assert "interrupted" not in mine.lower() and no_traceback_of_ours(err), err
    assert time.monotonic() - start < 60
