"""--clear_cache removes only what the sample provably made (the folders holding its CACHEDIR.TAG): a --cache_dir that
is a project with its own `engines/` package keeps it, a cache a real run wrote is emptied, and --html / --trace
refuse an empty path."""
from __future__ import annotations

import os

import pytest

import sample
from dataset.synthetic import ensure_synthetic
from pipeline import cache_folders
from tests.conftest import SMALL
from utils.builds import BUILDER, TAG, TAG_COMMENT, TAG_SIGNATURE, build_folder, tag

TINY = SMALL + ["--image_size", "64", "--engine", "torch", "--device", "cpu", "--loop", "1", "--warm_counter", "0",
                "--quiet", "--synthetic_count", "2"]


def _write(path, text: str = "x") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _tree(folder) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, n), folder) for d, _, names in os.walk(folder) for n in names)


@pytest.fixture
def no_headers(tmp_path, monkeypatch):
    """Inductor's shared headers folder stays out of these tests (it is another test's, and the machine's)."""
    monkeypatch.setattr(cache_folders, "inductor_headers", lambda: str(tmp_path / "no-headers"))


def test_a_users_engines_package_and_synthetic_folders_survive(tmp_path, capsys, no_headers):
    project = tmp_path / "project"  # `--cache_dir .` in a project that has its own engines/ package
    _write(project / "engines" / "__init__.py", "from .cache import *\n")
    _write(project / "engines" / "cache.py", "X = 1\n")
    _write(project / "synthetic-photos" / "a.jpg")
    _write(project / ".synthetic-mine" / "notes.txt")
    _write(project / "engines-not" / "f.txt")
    before = _tree(project)
    assert sample.main(["--cache_dir", str(project), "--clear_cache"]) == 0
    out, err = capsys.readouterr()
    assert _tree(project) == before, "nothing the sample did not make is removed"
    for name in ("engines", "synthetic-photos", ".synthetic-mine"):
        line = f"kept {project / name}: not marked as the sample's cache (no {TAG} written by unet-sample); " \
               "remove it by hand if an older version of the sample wrote it"
        assert line in out.splitlines(), out
    assert "removed" not in out and "the cache is empty" not in out and not err


def test_a_tagged_look_alike_is_the_samples_and_a_foreign_tag_is_not(tmp_path, capsys, no_headers):
    cache = tmp_path / "cache"
    _write(cache / "synthetic-v1-seed0-n2" / "images" / "a.jpg")
    tag(str(cache / "synthetic-v1-seed0-n2"))
    _write(cache / "engines" / TAG, f"{TAG_SIGNATURE}\n# created by another program\n")  # a tag, but not ours
    assert sample.main(["--cache_dir", str(cache), "--clear_cache"]) == 0
    out = capsys.readouterr().out
    assert f"removed {cache / 'synthetic-v1-seed0-n2'}" in out and not (cache / "synthetic-v1-seed0-n2").exists()
    assert (cache / "engines" / TAG).exists() and f"kept {cache / 'engines'}: not marked" in out


def test_a_cache_the_sample_wrote_is_tagged_and_emptied(tmp_path, capsys, no_headers):
    cache = tmp_path / "cache"
    _write(cache / "mine.txt")  # the user's own file beside the sample's folders
    assert sample.main(TINY + ["--cache_dir", str(cache)]) == 0
    made = sorted(os.listdir(cache))
    assert made == ["engines", "mine.txt", "synthetic-v1-seed0-n2"], made
    for name in ("engines", "synthetic-v1-seed0-n2"):
        lines = (cache / name / TAG).read_text().splitlines()
        assert lines[:2] == ["Signature: 8a477f597d28d172789f06886806bc55", TAG_COMMENT]
        assert "unet-sample" in lines[1]
    capsys.readouterr()
    assert sample.main(["--cache_dir", str(cache), "--clear_cache"]) == 0
    out = capsys.readouterr().out
    assert f"removed {cache / 'engines'}" in out and f"removed {cache / 'synthetic-v1-seed0-n2'}" in out
    assert "kept" not in out and os.listdir(cache) == ["mine.txt"]


def test_an_engines_folder_that_was_there_is_used_untagged(tmp_path, capsys, no_headers):
    cache = tmp_path / "cache"
    _write(cache / "engines" / "__init__.py")
    assert sample.main(TINY + ["--cache_dir", str(cache)]) == 0
    assert not (cache / "engines" / TAG).exists(), "a folder the sample did not create is never marked as its own"
    assert (cache / "synthetic-v1-seed0-n2" / TAG).exists()
    capsys.readouterr()
    assert sample.main(["--cache_dir", str(cache), "--clear_cache"]) == 0
    assert (cache / "engines" / "__init__.py").exists() and not (cache / "synthetic-v1-seed0-n2").exists()


def _killed_build(folder) -> None:
    """What a run killed while it generated a set leaves: a tagged build folder whose .builder nobody holds."""
    _write(folder / BUILDER, "999999 elsewhere\n")
    tag(str(folder))


def test_a_killed_runs_build_goes_and_a_live_one_or_a_users_stays(tmp_path, capsys, no_headers):
    cache = tmp_path / "cache"
    _killed_build(cache / ".synthetic-dead")
    _write(cache / ".synthetic-users" / "a.txt")  # the user's, untagged
    with build_folder(str(cache), ".synthetic-") as live:  # another run generating a set now
        tag(live)
        assert sample.main(["--cache_dir", str(cache), "--clear_cache"]) == 0
        out = capsys.readouterr().out
        assert f"removed {cache / '.synthetic-dead'}" in out and not (cache / ".synthetic-dead").exists()
        assert f"kept {live}: a run is generating this data set now" in out and os.path.isdir(live)
        assert f"kept {cache / '.synthetic-users'}: not marked" in out


def test_generating_a_set_sweeps_only_the_samples_leftovers(tmp_path):
    cache = tmp_path / "cache"
    _killed_build(cache / ".synthetic-dead")
    _write(cache / ".synthetic-users" / "a.txt")
    _write(cache / ".stale-users" / "a.txt")
    os.utime(cache / ".stale-users", (0, 0))  # old: a bare .stale-* was once swept as the sample's own
    ensure_synthetic(1, cache_dir=str(cache))
    assert sorted(os.listdir(cache)) == [".stale-users", ".synthetic-users", "synthetic-v1-seed0-n1"]


def test_the_generated_set_is_an_input_and_a_users_synthetic_folder_is_not(tmp_path, capsys):
    cache = tmp_path / "cache"
    inside = ["--cache_dir", str(cache), "--synthetic_count", "2", "--json"]
    with pytest.raises(SystemExit) as stop:  # the set this run reads (not made yet): never written among the inputs
        sample.main(TINY + inside + [str(cache / "synthetic-v1-seed0-n2" / "r.json")])
    assert stop.value.code == 2 and "inside the generated data folder" in capsys.readouterr().err
    _write(cache / "synthetic-photos" / "a.jpg")  # the user's, which the run neither reads nor removes
    config = sample.parse_config(sample.get_args_parser(), TINY + inside + [str(cache / "synthetic-photos" / "r.json")])
    assert config.json.endswith("r.json")
