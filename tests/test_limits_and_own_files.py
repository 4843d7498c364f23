"""Issue 17, classes 5 and 6: absurd numbers are usage errors that give their bound in two lines, a full disk names
the masks it cost, and our own files (the --output lock, engine builds, the cache) never stop or litter a run."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import subprocess
import sys
import textwrap
import types

import pytest

import pipeline.config
import sample
import utils.builds
import utils.files
from engines.cache import ArtifactCache
from tests.conftest import ROOT, SMALL
from utils.builds import build_folder

FAST = ["--engine", "torch", "--image_size", "32", "--loop", "2", "--warm_counter", "1", "--quiet", "--device", "cpu",
        "--no_reference", *SMALL]
CPUS = os.cpu_count() or 1


def usage_error(argv: list[str], capsys) -> str:
    """The stderr of a usage error, which must be exit 2, one `error:` line and one pointer to --help."""
    with pytest.raises(SystemExit) as exc:
        sample.parse_config(sample.get_args_parser(), argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2
    lines = err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and "--help" in lines[1], err
    return lines[0]


@pytest.mark.parametrize("argv, bound", [
    (["--threads", "1000000"], f"at most {CPUS} (this machine's logical CPUs"),
    (["--threads", str(CPUS + 1)], f"at most {CPUS} "),
    (["--loop", "1000000000"], "at most 100000"),
    (["--warm_counter", "1000000000"], "at most 10000"),
    (["--dist_timeout", "100000000000"], "at most 604800"),
    (["--synthetic_count", "1000000"], "at most 10000"),
    (["--seed", str(2**64)], "at most 9223372036854775807"),
    (["--workers", "100000"], "at most 256"),
    (["--loop", "ten"], "expected a whole number, got 'ten'"),
    (["--no_such_flag"], "unrecognized arguments"),
])
def test_an_absurd_number_is_a_two_line_usage_error_that_gives_the_bound(argv, bound, capsys):
    assert bound in usage_error(argv, capsys)


def test_threads_within_the_cpus_are_kept():
    assert sample.parse_config(sample.get_args_parser(), ["--threads", str(CPUS)]).threads == CPUS


@pytest.mark.parametrize("memory, argv, says", [
    (24 << 30, ["--batch_size", "100000"], "the largest batch that fits at 512x512 is about --batch_size 64"),
    (24 << 30, ["--image_size", "16384", "--batch_size", "8"], "the limit here is about 4096x4096 at --batch_size 1"),
    (256 << 20, ["--batch_size", "4"], "1.5 GiB for unet's activations (1536 bytes per pixel), more than this "
                                         "machine's 256 MiB: the limit here is about 416x416 at --batch_size 1"),
    (256 << 10, [], "no input size fits in this memory at --batch_size 1"),
])
def test_a_batch_or_size_past_memory_says_what_fits(memory, argv, says, monkeypatch, capsys):
    monkeypatch.setattr(pipeline.config, "memory_bytes", lambda: memory)
    line = usage_error(argv, capsys)
    assert says in line and not re.search(r"\b0x0\b|\b0(\.0)? [GM]iB", line), line
    if "--batch_size 64" in says:  # 64 fits and 65 does not, by the same figures
        assert 64 * 1536 * 512 * 512 <= memory < 65 * 1536 * 512 * 512


@pytest.mark.parametrize("call", ["open", "write"])
def test_a_full_disk_at_the_output_lock_is_one_error_and_leaves_no_folder(call, small_set, tmp_path, monkeypatch,
                                                                          capsys):
    """The lock file cannot be made (os.open), or its pid cannot be written (os.write): ENOSPC either way."""
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(utils.files, "os", types.SimpleNamespace(**{**vars(os), call: full}))
    out = tmp_path / "new" / "out"
    code = sample.main(FAST + ["--image_path", small_set[0], "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("error: ")] == \
        [f"error: cannot lock --output folder {out} (its lock file {out / '.unet-sample.lock'}): No space left on "
         "device; free some space there, or choose another folder"], err
    assert not (tmp_path / "new").exists()  # every folder the run made for --output is gone


def test_a_run_that_loses_the_race_for_a_new_output_folder_leaves_the_winners_lock(tmp_path, monkeypatch):
    import contextlib
    import fcntl

    target = tmp_path / "new" / "out"
    real_mkdir, real_makedirs, winner = os.mkdir, os.makedirs, []

    def another_run_first(path):  # the other run makes the folder and takes its lock just before this one gets there
        if os.path.abspath(path) == str(target) and not winner:
            winner.append(None)  # real_makedirs calls os.mkdir: once is enough
            real_makedirs(target)
            fd = os.open(target / utils.files.LOCK_NAME, os.O_RDWR | os.O_CREAT)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, b"999999\n")
            winner[0] = fd

    def mkdir(path, *args, **kwargs):
        another_run_first(path)
        return real_mkdir(path, *args, **kwargs)

    def makedirs(path, *args, **kwargs):
        another_run_first(path)
        return real_makedirs(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "makedirs", makedirs)
    with contextlib.ExitStack() as locks, pytest.raises(utils.files.SampleError, match="in use by another run"):
        utils.files.check_destination(str(target), folder=True, overwrite=False, flag="--output", locks=locks)
    assert (target / utils.files.LOCK_NAME).read_text() == "999999\n"  # the winner's lock and folder stay
    os.close(winner[0])


def test_a_build_whose_builder_was_killed_is_removed_and_a_live_one_kept(tmp_path):
    cache = str(tmp_path / "cache")
    killed = textwrap.dedent(f"""
        import os, signal, torch
        from engines.cache import ArtifactCache, artifact
        def build(folder):
            open(os.path.join(folder, "model.pt"), "wb").close()
            os.kill(os.getpid(), signal.SIGKILL)  # killed mid-build, as `kill -9` or the OOM killer does
        with artifact(ArtifactCache({cache!r}), "torchscript", "1", torch.nn.Conv2d(3, 2, 1), (1, 3, 8, 8), "fp32",
                      build):
            pass
    """)
    assert subprocess.run([sys.executable, "-c", killed], cwd=ROOT).returncode == -9
    engine = os.path.join(cache, "engines", "torchscript")
    (dead,) = [d for d in os.listdir(engine) if d.startswith(".build-")]
    legacy = os.path.join(engine, ".build-legacy")  # what a build killed before the .builder files left
    os.makedirs(legacy)
    open(os.path.join(legacy, "model.pt"), "wb").close()
    aside = [os.path.join(engine, name) for name in (".stale-old", ".stale-new")]  # deletions cut short by a kill
    for folder in aside:
        os.makedirs(os.path.join(folder, "entry"))
    os.utime(aside[0], (0, 0))  # long ago: its deletion was cut short; the new one may still be under way
    with build_folder(engine, ".build-") as live:  # a build in progress (its flock is held by this process)
        ArtifactCache(cache)  # the next run
        assert [os.path.join(engine, d) for d in os.listdir(engine) if d.startswith(".build-")] == [live]
    assert not os.path.exists(live) and not os.path.exists(aside[0]) and os.path.exists(aside[1])


def test_a_cache_that_cannot_be_written_is_not_used_and_said_once(tmp_path, monkeypatch, capsys):
    """A read-only cache (EROFS on every folder or file made under it: chmod does not stop root, who runs these tests
    in containers). The default data set is generated in a temporary folder, removed at exit; engines build apart."""
    cache = str(tmp_path / "ro-cache")
    real_mkdir, real_open = os.mkdir, os.open

    def read_only(real):
        def call(path, *args, **kwargs):
            if os.path.abspath(path).startswith(cache):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
            return real(path, *args, **kwargs)
        return call

    monkeypatch.setattr(os, "mkdir", read_only(real_mkdir))
    monkeypatch.setattr(os, "open", read_only(real_open))
    # The run's folders kept until exit, apart from those of this process (conftest's keeps the whole session's).
    monkeypatch.setattr(utils.builds, "_PROCESS", contextlib.ExitStack())
    rep = tmp_path / "r.json"
    code = sample.main(FAST + ["--engine", "torchscript", "--synthetic_count", "1", "--cache_dir", cache,
                               "--json", str(rep)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert [line for line in err.splitlines() if line.startswith(("warning:", "note:"))] == [
        f"warning: cannot write the cache folder ({cache}: Read-only file system); this run caches nothing: its "
        "engines are built in a temporary folder; a data set it must generate goes to a temporary folder, removed "
        "at exit"], err
    report = json.loads(rep.read_text())
    assert report["rows"][0]["images_scored"] == 1 and report["config"]["artifact_cache"] is None
    assert not os.path.exists(cache)
    folder = os.path.dirname(os.path.dirname(re.search(r"\((.*)\)", report["config"]["data"]).group(1)))
    assert os.path.basename(folder).startswith("unet-sample-data-") and os.path.isdir(folder)
    utils.builds._PROCESS.close()  # what happens at exit (to this run's folders only)
    assert not os.path.exists(folder)


def test_an_output_folder_the_run_made_goes_when_it_is_stopped_before_its_first_file(small_set, tmp_path,
                                                                                     monkeypatch):
    import pipeline.run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C once the output folder is made, before any row

    out = tmp_path / "new" / "out"
    argv = FAST + ["--image_path", small_set[0], "--mask_path", small_set[1], "--output", str(out)]
    monkeypatch.setattr(pipeline.run, "engine_options", interrupted)
    assert sample.main(argv) == 130
    assert not (tmp_path / "new").exists()  # both levels were this run's, and empty
    monkeypatch.undo()
    assert sample.main(argv) == 0 and len(os.listdir(out)) == 3  # a run that wrote its masks keeps its folder
