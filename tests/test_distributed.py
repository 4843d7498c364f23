"""Issue 9, the same command under torchrun: every pair scored once, results equal to one process's to the bit, files
equal byte for byte, a failing or stuck rank ends the run with one clear line, Ctrl-C keeps a partial report.

The runs are real `torchrun --standalone --nproc_per_node=2` jobs (gloo, CPU, 64 px), compared with one process run in
this one with the same thread count per process (1), so both compute every image with the same kernels. The network
is the small UNet++ (conftest.SMALL) with weights whose masks follow the images: what is tested is the sharding and
the merging, not the model. Each launch spends about 3 s of CPU starting torch in the launcher and in the ranks, so
one module-scoped fixture runs the seven launches side by side (each in its own session, read to its end by a thread)
and each test waits for its own.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest
import torch
from PIL import Image

import engines
import sample
from dataset.batches import Loader, iter_dataset
from dataset.pairs import Dataset, Sample, find_pairs
from dataset.shards import sample_order, shard, span
from engines.cache import ArtifactCache, artifact
from pipeline.distributed import World, rank_device
from report.metrics import Accuracy, merge_accuracy
from tests.conftest import ROOT, SMALL, small_model, write_pair

SAMPLE = os.path.join(ROOT, "sample.py")
FAST = ["--image_size", "64", "--loop", "1", "--warm_counter", "0", "--device", "cpu", "--quiet"]
TORCH = ["--engine", "torch"]
# `--engine auto` (the default), chosen from the static order: a measured choice would compile every engine in the
# ranks' processes, which conftest's cheap probe does not reach.
AUTO = ["--engine", "auto", "--auto", "static"]

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
        open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "rank-1-is-stuck"), "w").close()  # for the test
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
STUCK_TIMEOUT_S = 2  # --dist_timeout of the stuck launch: every healthy sync there must come within it


_PORTS: set[int] = set()


def free_port() -> int:
    """A TCP port free now and not handed to another launch of this session."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _PORTS:
            _PORTS.add(port)
            return port


class Job:
    """One `python -m torch.distributed.run --standalone --nproc_per_node=2` launch of `script` (a file and its
    arguments), in its own session, read to its end by a thread so that the launches run side by side."""

    def __init__(self, script: list[str]):
        # What --standalone does, on a port of its own: torch 2.0's --standalone always takes port 29400, so launches
        # side by side would meet each other's rendezvous.
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--rdzv_backend=c10d",
               f"--rdzv_endpoint=127.0.0.1:{free_port()}", f"--rdzv_id={uuid.uuid4().hex}", "--nproc_per_node=2",
               "--monitor_interval=0.2"] + script
        self.out = self.err = ""
        self.seconds = float("inf")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                     start_new_session=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        self.out, self.err = self.proc.communicate()
        self.seconds = time.monotonic() - self.started

    def result(self, timeout: float = 120) -> tuple[int, str, str]:
        """(exit status, stdout, stderr) once the launch has ended; one still running `timeout` s after its start is
        killed and fails the test."""
        self.reader.join(max(0.0, self.started + timeout - time.monotonic()))
        if self.reader.is_alive():
            self.kill()
            pytest.fail(f"torchrun did not end within {timeout} s\n{self.out}\n{self.err}")
        return self.proc.returncode, self.out, self.err

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):  # it may end meanwhile
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.reader.join()


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
    """The small UNet++ with masks that follow the images (dice about 0.76). Random weights predict one class
    everywhere, which would make every mask the same and the comparison weak: class 1's logit becomes the untrained
    network's margin less its median on noise, sign swapped (on these images the untrained features light up the
    background); class 0's is 0, so that bf16 does not round away a difference of two close logits."""
    model = small_model(3)
    with torch.no_grad():
        logits = model(torch.rand(2, 3, 64, 64))
        weight, bias = model.final.weight, model.final.bias
        car = weight[1] - weight[0], bias[1] - bias[0] - (logits[:, 1] - logits[:, 0]).median()
        weight[0], bias[0], weight[1], bias[1] = 0, 0, -car[0], -car[1]
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


def write_material(root) -> None:
    """Seven images: six pairs and one without a mask (an odd count, a padded batch of 2); the faults' six pairs."""
    for i in range(6):
        write_pair(str(root), f"car{i}_01", seed=i, size=(96, 64))
        write_pair(str(root / "six"), f"car{i}_01", seed=i)
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(root / "images" / "nomask_01.jpg")
    (root / "driver.py").write_text(DRIVER)  # torchrun runs a script file


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every launch by name, and the one-process twins' exit status: the faults (six pairs); the seven images with
    every output; one image on two ranks (rank 1 has no data) with `--engine auto`. The stuck launch goes first and
    alone (the twins run here meanwhile), so that its healthy syncs, which must come within its short --dist_timeout,
    meet no other launch; the rest start once its rank 1 is stuck."""
    root = tmp_path_factory.mktemp("dist")
    write_material(root)
    six = ["--image_path", str(root / "six" / "images"), "--mask_path", str(root / "six" / "masks")]

    def fault(name: str, *extra: str) -> Job:
        return Job([str(root / "driver.py"), ROOT, name] + FAST + TORCH + SMALL + six +
                   ["--cache_dir", str(root / name / "cache"), "--json", str(root / name / "r.json"), *extra])

    def files(name: str) -> list[str]:
        return ["--json", str(root / name / "r.json"), "--csv", str(root / name / "images.csv"),
                "--output", str(root / name / "masks"), "--submission", str(root / name / "submission.csv")]

    stuck = fault("stuck", "--dist_timeout", str(STUCK_TIMEOUT_S))
    result = {"root": root, "stuck": stuck}
    try:
        make_checkpoint(str(root / "small.pth"))
        data = SMALL + ["--pth", str(root / "small.pth"), "--image_path", str(root / "images"), "--mask_path",
                        str(root / "masks"), "--cache_dir", str(root / "cache")]
        seven = FAST + TORCH + data + ["--batch_size", "2", "--precision", "fp32,bf16"]
        # N larger than the data: one image, two ranks; scored at the original size (the outputs' own scores merge too)
        one_image = FAST + AUTO + data + ["--limit", "1", "--eval_resolution", "original"]
        result.update(one=sample.main(seven + files("one") + ["--threads", "1"]),
                      one_image=sample.main(one_image + files("one_image") + ["--threads", "1"]))
        deadline = time.monotonic() + 60
        while not (root / "rank-1-is-stuck").exists() and stuck.reader.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        result.update(two=Job([SAMPLE] + seven + files("two")),
                      one_image_two=Job([SAMPLE] + one_image + files("one_image_two")),
                      **{name: fault(name) for name in ("engine", "device", "ctrl-c", "die")})
        yield result
    finally:  # a launch still running (a failed test, an error here) goes with its processes
        for job in result.values():
            if isinstance(job, Job):
                job.kill()


def report(runs, name: str) -> dict:
    return json.loads((runs["root"] / name / "r.json").read_text())


# The torch fp32 row is the eager reference itself: its agreement with it (cosine_min, max_abs_diff) is 1 and 0 in any
# run. The bf16 row's (and auto's, unless it chose eager torch) are figures that move if a rank computes differently.
SCORES = ("images", "images_scored", "dice", "dice_min", "micro_dice", "iou", "cosine_min", "cosine_mean",
          "max_abs_diff", "reference_dice", "dice_delta", "fidelity", "nonfinite_images", "nonfinite")


@pytest.mark.slow
def test_two_ranks_report_exactly_what_one_process_reports(runs):
    code, _, err = runs["two"].result()
    assert runs["one"] == 0 and code == 0, err
    one, two = report(runs, "one"), report(runs, "two")
    assert [(r["engine"], r["precision"]) for r in two["rows"]] == [("torch", "fp32"), ("torch", "bf16")]
    for a, b in zip(one["rows"], two["rows"]):
        assert 0.2 < a["dice"] < 0.999 and a["dice_min"] < a["dice"]  # the model's masks are not all alike
        assert {k: a.get(k) for k in SCORES} == {k: b.get(k) for k in SCORES}  # bit for bit
        assert {k: v for k, v in a["per_image"].items() if k != "batch_ms"} == \
               {k: v for k, v in b["per_image"].items() if k != "batch_ms"}
        assert b["device"] == "cpu x2" and [r["images"] for r in b["ranks"]] == [4, 3]
        assert b["fps"] == pytest.approx(sum(r["fps"] for r in b["ranks"]))
        assert b["e2e_fps"] == pytest.approx(7 / b["e2e_s"])
        assert b["e2e_s"] >= max(r["e2e_s"] for r in b["ranks"]) - 1e-6  # first start to last end (wall clock)
        assert b["calls"] == 2 and len(b["latencies_ms"]) == 2  # one timed call per rank
    bf16 = two["rows"][1]
    assert 1 - bf16["cosine_min"] > 1e-7 and bf16["max_abs_diff"] > 1e-4  # so its equal agreement is evidence
    world = two["config"]["distributed"]
    assert world["world_size"] == 2 and world["backend"] == "gloo" and world["timeout_s"] == 1800
    assert [(r["rank"], r["device"], r["threads"], r["images"], r["first"], r["last"]) for r in world["ranks"]] == \
           [(0, "cpu", 1, 4, "car0_01", "car3_01"), (1, "cpu", 1, 3, "car4_01", "nomask_01")]
    assert two["config"]["images"] == 7 and two["config"]["command"].startswith("torchrun --nproc_per_node=2 sample.py")


@pytest.mark.slow
def test_rank_0_alone_prints_the_report_and_the_files_equal_one_process_s(runs):
    _, out, err = runs["two"].result()
    one, two = runs["root"] / "one", runs["root"] / "two"
    assert out.count("engine  device") == 1 and "ranks: 2 under torchrun" in out
    assert "torch fp32 on 2 ranks: model fps" in out and "from the first rank's start to the last rank's end" in out
    assert "warning: no mask for" in err and err.count("warning: no mask for") == 1
    masks = sorted(os.listdir(one / "masks"))
    assert masks == sorted(os.listdir(two / "masks")) and len(masks) == 7  # the lock file is gone
    for name in masks:
        assert (one / "masks" / name).read_bytes() == (two / "masks" / name).read_bytes(), name
    assert (one / "submission.csv").read_bytes() == (two / "submission.csv").read_bytes()
    # byte for byte but the batch latency, which differs between any two runs
    assert read_csv_text(one / "images.csv") == read_csv_text(two / "images.csv")
    assert len(read_csv_text(one / "images.csv").splitlines()) == 1 + 2 * 7


@pytest.mark.slow
def test_a_rank_with_no_data_changes_nothing(runs):
    code, _, err = runs["one_image_two"].result()
    assert runs["one_image"] == 0 and code == 0, err
    one, two = report(runs, "one_image"), report(runs, "one_image_two")
    a, b = one["rows"][0], two["rows"][0]
    assert 0.2 < a["dice"] < 0.999  # a real mask
    assert {k: a.get(k) for k in SCORES} == {k: b.get(k) for k in SCORES}
    assert a["model_res_dice"] == b["model_res_dice"] and a["model_res_micro_dice"] == b["model_res_micro_dice"]
    assert [r["images"] for r in b["ranks"]] == [1, 0] and b["images"] == 1
    assert [r["images"] for r in two["config"]["distributed"]["ranks"]] == [1, 0]
    for name in ("submission.csv", "masks/car0_01_mask.png"):
        assert (runs["root"] / "one_image" / name).read_bytes() == (runs["root"] / "one_image_two" / name).read_bytes()


@pytest.mark.slow
def test_auto_is_chosen_on_rank_0_and_run_by_every_rank(runs):
    """Under torchrun rank 0 resolves `--engine auto` for all; the other ranks once kept an unresolved 'auto' row
    unless int8 calibration was shared."""
    code, out, err = runs["one_image_two"].result()
    assert code == 0 and "failed" not in out.lower(), err
    one, two = report(runs, "one_image"), report(runs, "one_image_two")
    choice = engines.default_engine(torch.device("cpu"), "fp32")
    assert two["skipped"] == []
    assert [(r["engine"], r["precision"]) for r in one["rows"]] == [(choice, "fp32")]
    assert [(r["engine"], r["precision"]) for r in two["rows"]] == [(choice, "fp32")]
    assert [(c["engine"], c["source"]) for c in two["config"]["auto"]] == [(choice, "static")]
    assert all(r["compile_s"] is not None for r in two["rows"][0]["ranks"])  # rank 1 too, with no data


@pytest.mark.slow
def test_an_engine_error_on_one_rank_fails_the_row_on_every_rank_with_one_line(runs):
    code, out, err = runs["engine"].result()
    mine = ours(err)
    line = "error: rank 1 (cpu on "
    assert code != 0 and mine.count(line) == 1, err
    assert "engine torch fp32 failed: RuntimeError: CUDA out of memory (simulated on rank 1)" in mine
    assert "FAILED torch fp32: rank 1 (cpu on" in out  # rank 0's report says so too
    assert no_traceback_of_ours(err), err
    assert report(runs, "engine")["skipped"][0]["failed"] is True


@pytest.mark.slow
def test_a_setup_error_on_one_rank_stops_every_rank_with_one_line(runs):
    code, out, err = runs["device"].result()
    assert code != 0 and out == "", out
    assert ours(err).count("error: ") == 1, err
    assert "error: rank 1 (cpu on " in err and "--device cuda:1: only 1 CUDA device(s) present" in err
    assert no_traceback_of_ours(err) and runs["device"].seconds < 60


@pytest.mark.slow
def test_a_stuck_rank_ends_the_run_within_the_collective_timeout(runs):
    code, out, err = runs["stuck"].result(timeout=90)
    assert code != 0, err
    assert "error: rank 0 (cpu on" in err and f"stuck (past --dist_timeout {STUCK_TIMEOUT_S} s)" in err, err
    assert "rank 1 (cpu on" in err and "is still at 'setup'" in err, err  # the stuck rank is named, with where it is
    assert no_traceback_of_ours(err) and runs["stuck"].seconds < 60


@pytest.mark.slow
def test_ctrl_c_under_torchrun_gives_rank_0_s_partial_report(runs):
    code, out, err = runs["ctrl-c"].result()
    assert code != 0
    assert "PARTIAL: the run was interrupted" in out and "INTERRUPTED after" in out, out + err
    saved = report(runs, "ctrl-c")
    row = saved["rows"][0]
    assert saved["partial"] is True and row["interrupted"] is True and 1 <= row["images"] < 6
    assert no_traceback_of_ours(err), err


@pytest.mark.slow
def test_a_rank_that_dies_is_named_by_rank_0_and_the_run_exits_1(runs):
    """SIGKILL on rank 1 mid-row: torchrun then sends SIGTERM to rank 0, which must not pass for the user's Ctrl-C."""
    code, out, err = runs["die"].result(timeout=90)
    assert code == 1, (code, err)
    mine = ours(err)
    assert mine.count("error: rank 0 (cpu on") == 1 and "rank 1 (cpu on" in mine, err
    assert "interrupted" not in mine.lower() and no_traceback_of_ours(err), err
    assert runs["die"].seconds < 60


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

