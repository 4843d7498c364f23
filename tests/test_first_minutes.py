"""A new user's first minutes: --help ends with examples, the cache says what it holds and --clear_cache empties it
(and nothing else), the dice histogram counts whole images."""
from __future__ import annotations

import os

import pytest

import sample
from pipeline import cache_folders
from report import plots
from utils.builds import tag


def test_help_ends_with_three_example_commands(capsys):
    with pytest.raises(SystemExit) as stop:
        sample.main(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    examples = text[text.index("examples:"):]
    assert text.rstrip().endswith(examples.rstrip()), "the examples close the help"
    commands = [line for line in examples.splitlines() if line.strip().startswith("python sample.py")]
    assert len(commands) == 3
    assert "--warm_counter" in examples and "--html" in examples, "the original flags, and a report to look at"


def _fill(path: str, size: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"\0" * size)


def test_clear_cache_removes_what_the_sample_keeps_and_nothing_else(tmp_path, monkeypatch, capsys):
    cache, headers = tmp_path / "cache", tmp_path / "tmp" / "torchinductor_me" / "precompiled_headers"
    monkeypatch.setattr(cache_folders, "inductor_headers", lambda: str(headers))
    _fill(str(cache / "engines" / "openvino" / "fp32-x" / "model.bin"), 3 << 20)
    _fill(str(cache / "engines" / "auto" / "fp32-y.json"), 100)
    _fill(str(cache / "synthetic-v1-seed0-n4" / "images" / "a.jpg"), 1 << 20)
    _fill(str(headers / "h.gch"), 2 << 20)
    _fill(str(cache / "mine.txt"), 10)  # the user's own file in their --cache_dir
    for made in ("engines", "synthetic-v1-seed0-n4"):
        tag(str(cache / made))  # as the sample marks the folders it makes (tests/test_clear_cache.py: the others stay)
    before = cache_folders.sizes(str(cache))
    assert before[str(cache)] >= 4 << 20 and before[str(headers)] == 2 << 20
    assert sample.main(["--cache_dir", str(cache), "--clear_cache"]) == 0
    out = capsys.readouterr().out
    assert f"removed {cache / 'engines'} (3.0 MB)" in out and "synthetic-v1-seed0-n4 (1.0 MB)" in out
    assert f"removed {headers} (2.0 MB)" in out
    assert sorted(os.listdir(cache)) == ["mine.txt"] and not headers.exists()
    assert sample.main(["--cache_dir", str(cache), "--clear_cache"]) == 0
    assert "the cache is empty" in capsys.readouterr().out


def test_the_report_says_when_the_cache_grew(tmp_path):
    before = {str(tmp_path / "c"): 5 << 20, "/tmp/h": 0}
    assert cache_folders.growth_line(before, dict(before)) is None, "nothing grew: nothing said"
    line = cache_folders.growth_line(before, {str(tmp_path / "c"): 125 << 20, "/tmp/h": 283 << 20})
    assert "125 MB (+120 MB)" in line and "/tmp/h 283 MB (+283 MB)" in line and "--clear_cache" in line


def test_the_dice_histogram_counts_whole_images(monkeypatch, tmp_path):
    pytest.importorskip("matplotlib")
    saved = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: saved.append(fig) or path)
    row = {"engine": "torch", "precision": "fp32", "per_image": {"dice": [0.97, 0.98, 0.98]}}
    plots.plot_dice([row], "model", str(tmp_path / "d.png"))
    ax = saved[0].axes[0]
    saved[0].canvas.draw() if hasattr(saved[0].canvas, "draw") else None
    ticks = [t for t in ax.get_yticks() if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
