"""Issue 17, classes 1 and 7 (docs/failures.md rows 12 and 5): SIGTERM and SIGHUP end a run as Ctrl-C does, at any
moment; a stdout or stderr that is closed, full or a closed pipe costs no result file and no traceback. Each test
starts its processes together and waits for them all: one run's seconds for several cases."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import sample
from tests.test_hostile import FAST, LOCK_NAME, ROOT, SAMPLE, drive, finish, make_set, no_traceback, read_csv
from utils.streams import Guarded

# One thread each: the processes of a test run side by side. LOUD: the progress bars and notes reach stderr too.
QUIET = FAST + ["--threads", "1"]
LOUD = [arg for arg in QUIET if arg != "--quiet"]


@pytest.mark.slow
def test_sigterm_and_sighup_end_the_run_as_ctrl_c_does_at_any_moment(tmp_path):
    """The first signal stops the run and names itself; later ones, of any kind, are only counted. In the accuracy
    pass (SIGTERM, then a mix), in the timing pass after the terminal hung up (SIGHUP; no stdout, no stderr), before
    any row (SIGHUP), and while torch is imported (SIGTERM: nothing has started, a quiet exit)."""
    images, masks = make_set(tmp_path / "data", 3)
    cases = {"accuracy": "SIGTERM,SIGINT,SIGHUP", "timing": "SIGHUP,SIGTERM", "setup": "SIGHUP", "import": "SIGTERM"}
    runs = {}
    for point, signals in cases.items():
        d = tmp_path / point
        d.mkdir()
        batch = ["--batch_size", "1"] if point == "accuracy" else []  # interrupted after its second batch
        env = dict(os.environ, SAMPLE_SIGNALS=signals, SAMPLE_HANGUP="1" if point == "timing" else "")
        runs[point] = (d, drive(point, QUIET + batch + ["--image_path", images, "--mask_path", masks, "--output",
                                                       str(d / "out"), "--csv", str(d / "per.csv"), "--json",
                                                       str(d / "r.json")], env=env))
    for point, (d, proc) in runs.items():
        code, out, err = finish(proc)
        if point == "accuracy":
            assert "PARTIAL: the run was interrupted by SIGTERM" in out and "INTERRUPTED after 2 of 3" in out, out
        first = cases[point].split(",")[0]
        assert code == {"SIGTERM": 143, "SIGHUP": 129}[first] and no_traceback(err), (point, code, err)
        assert not (d / "out" / LOCK_NAME).exists(), point  # the lock is released on the way out
        if point in ("setup", "import"):
            assert not (d / "r.json").exists(), point
            assert f"interrupted before any engine row finished ({first})" in err if point == "setup" else not out + err
            continue
        report = json.loads((d / "r.json").read_text())
        (row,) = report["rows"]
        scored = {"accuracy": 2, "timing": 3}[point]
        assert report["partial"] is True and report["interrupted_by"] == first and row["interrupted"], point
        assert row["images"] == len(read_csv(d / "per.csv")) == len(os.listdir(d / "out")) == scored, point


@pytest.mark.slow
def test_every_unusable_stdout_or_stderr_keeps_every_file_and_says_what_it_can(tmp_path):
    """stdout closed (`>&-`): exit 1 and an error line; stderr full and an ASCII-only stdout: exit 0 and the whole
    report, the folder's name escaped; stderr closed and stdout a pipe whose reader has gone: 141. Every result file is
    written, and nothing ends in a traceback or a failed row (`> /dev/full` and a closed pipe alone:
    tests/test_hostile.py)."""
    images, masks = make_set(tmp_path / "café", 2)
    cases = {"stdout closed": ">&-", "stderr full": "2>/dev/full", "stderr closed, pipe gone": "2>&-"}
    procs = {}
    for case, redirect in cases.items():
        argv = LOUD + ["--image_path", images, "--mask_path", masks, "--json", str(tmp_path / f"{case}.json"),
                       "--csv", str(tmp_path / f"{case}.csv")]
        command = " ".join([sys.executable, SAMPLE] + [f"'{a}'" for a in argv]) + " " + redirect
        env = dict(os.environ, PYTHONIOENCODING="ascii" if case == "stderr full" else "utf-8")
        procs[case] = subprocess.Popen(["sh", "-c", "exec " + command], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True, env=env)
    procs["stderr closed, pipe gone"].stdout.close()  # the reader is gone before the report is printed
    results = {}
    for case, proc in procs.items():
        if proc.stdout.closed:
            proc.wait(timeout=120)
            results[case] = proc.returncode, "", proc.stderr.read()
        else:
            results[case] = finish(proc)
    for case, (code, _, err) in results.items():
        expected = {"stdout closed": 1, "stderr full": 0, "stderr closed, pipe gone": 141}[case]
        assert code == expected and no_traceback(err), (case, code, err)
        assert json.loads((tmp_path / f"{case}.json").read_text())["rows"][0]["images_scored"] == 2, case
        assert len(read_csv(tmp_path / f"{case}.csv")) == 2, case
    assert "error: cannot write the report to stdout: stdout is closed" in results["stdout closed"][2]
    out = results["stderr full"][1]
    assert "dice" in out and "FAILED" not in out and "caf\\xe9" in out, out


def test_help_into_a_full_stdout_is_an_error_not_a_silent_exit_0(monkeypatch, capsys):
    """The command line's --help, its stdout guarded as sample.py's own start guards it."""
    full = open("/dev/full", "w")
    monkeypatch.setattr(sys, "argv", ["sample.py", "--help"])
    monkeypatch.setattr(sys, "stdout", Guarded(full))
    with pytest.raises(SystemExit) as exit_:
        sample.main(command_line=True)
    full.close()
    assert exit_.value.code == 1
    assert "error: cannot write to stdout: No space left on device" in capsys.readouterr().err


LATE = """
import json, os, signal, sys, threading
sys.path.insert(0, sys.argv[1])
import pipeline.passes, pipeline.run, sample
measure, finish = pipeline.passes.measure, pipeline.run.finish

def hang_up_then_measure(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGHUP)
    return measure(*args, **kwargs)

def finish_then_terminate(*args, **kwargs):
    code = finish(*args, **kwargs)
    signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
    return code

pipeline.passes.measure, pipeline.run.finish = hang_up_then_measure, finish_then_terminate
signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup starts a process
code = sample.main(sys.argv[2:])
print(json.dumps({"code": code, "sigterm_default": signal.getsignal(signal.SIGTERM) is signal.SIG_DFL}))
"""


def test_a_signal_ignored_at_start_stays_ignored_and_one_after_the_report_changes_no_exit_status(small_set, tmp_path):
    """`nohup` starts a run with SIGHUP ignored: the run must outlive the terminal. A `timeout` SIGTERM that lands
    once the report is out finds a complete run: exit 0, not 143. In a process of its own: a signal a test sends
    itself must never reach the test runner's worker."""
    images, masks = small_set
    argv = QUIET + ["--image_path", images, "--mask_path", masks, "--json", str(tmp_path / "r.json")]
    done = subprocess.run([sys.executable, "-c", LATE, ROOT] + argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and no_traceback(done.stderr), done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    report = json.loads((tmp_path / "r.json").read_text())
    assert result["code"] == 0 and report["partial"] is False and report["rows"][0]["images"] == 3
    assert result["sigterm_default"]  # a library call puts the handlers back


TWO_PENDING = """
import json, signal, sys, threading, time
sys.path.insert(0, sys.argv[1])
import torch
from utils.signals import STOPPING, Interrupts

class Watched(Interrupts):
    def _handle(self, signum, frame):  # the order Python runs the handlers in
        ran.append(signum)
        super()._handle(signum, frame)

def terminate_then_interrupt():  # for the main thread, 0.2 s apart: the kernel hands over each on its own
    signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
    time.sleep(0.2)
    signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

torch.set_num_threads(1)
b = torch.randn(1000, 1000)
torch.mm(b, b)  # untimed: the first call pays for warming up

def timed():
    start = time.perf_counter()
    torch.mm(b, b)
    return time.perf_counter() - start

per = min(timed() for _ in range(3))  # a call slowed by a passing spike would make the real one too short
# One call of about 1 s whatever the CPU (3000 wide took 3-10 s on a slow one): the signals come at 0.01 s and 0.21 s.
n = min(6000, max(1000, int(1000 * (1.0 / per) ** (1 / 3))))
a = torch.randn(n, n)
for attempt in range(5):  # until both land inside one C call (a busy machine may run the first handler between)
    ran, raised = [], False
    sender = threading.Timer(0.01, terminate_then_interrupt)
    with Watched(STOPPING) as interrupts:
        try:
            sender.start()
            while sender.is_alive():
                torch.mm(a, a)  # a long C call: Python's handlers wait for its end
        except KeyboardInterrupt:
            raised = True
        sender.join()
        deadline = time.monotonic() + 10
        while interrupts.count < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    if ran == [signal.SIGINT, signal.SIGTERM]:
        break
print(json.dumps({"ran": ran, "raised": raised, "first": interrupts.first, "status": interrupts.status(0)}))
"""


def test_two_signals_pending_together_are_taken_in_the_order_they_came():
    """Python runs the handlers of signals pending together lowest number first (here SIGINT's, then SIGTERM's):
    SIGTERM then Ctrl-C, both landing while the main thread is in C code, must still read as SIGTERM (143), the one
    that came first. (Two signals the kernel holds at once, the process not running, reach it lowest number first.)
    In a process of its own: a SIGTERM a test sends itself must never reach the test runner's worker."""
    done = subprocess.run([sys.executable, "-c", TWO_PENDING, ROOT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and no_traceback(done.stderr), (done.returncode, done.stderr[-2000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"ran": [2, 15], "raised": True, "first": "SIGTERM", "status": 143}, result
