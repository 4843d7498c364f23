"""int8 calibration does not grade its own homework: it prefers images that are not scored, and says when it can't."""
from __future__ import annotations

import json
import os

import pytest

import engines
import sample
from dataset.batches import Loader
from dataset.calibration import choose_samples, load_calibration
from dataset.pairs import find_pairs
from tests.conftest import CPU, SMALL, write_pair
from tests.test_outputs import documented_fields, field_paths
from utils.errors import SampleError


@pytest.fixture
def cars(tmp_path):
    """Cars a, b, c: a has two angles. Scoring only a_01 leaves a_02, b_01, c_01 outside the scored set."""
    for i, name in enumerate(["a_01", "a_02", "b_01", "c_01"]):
        write_pair(str(tmp_path), name, size=(64, 64), seed=i)
    return str(tmp_path / "images"), str(tmp_path / "masks")


def test_images_outside_the_scored_set_calibrate_other_cars_first(cars):
    images, masks = cars
    scored = find_pairs(images, masks, limit=1)
    samples, source = choose_samples(scored, 2, folder=find_pairs(images).samples)
    assert source == "outside" and [s.id for s in samples] == ["b_01", "c_01"]
    samples, _ = choose_samples(scored, 5, folder=find_pairs(images).samples)
    assert [s.id for s in samples] == ["b_01", "c_01", "a_02", "a_01"]  # then other angles, then scored images
    cal = load_calibration(samples, Loader((64, 64), 1), source="outside", scored_ids={"a_01"})
    assert cal.overlap == 1 and cal.describe()["overlap_with_scored"] == 1


def test_one_image_per_car_before_a_second_of_any(tmp_path):
    for i, name in enumerate(["a_01", "b_01", "b_02", "b_03", "c_01", "c_02"]):
        write_pair(str(tmp_path), name, size=(32, 32), seed=i)
    images, masks = str(tmp_path / "images"), str(tmp_path / "masks")
    samples, _ = choose_samples(find_pairs(images, masks, limit=1), 4, folder=find_pairs(images).samples)
    assert [s.id for s in samples] == ["b_01", "c_01", "b_02", "c_02"]


def test_calib_path_wins_and_overlap_is_counted(cars, tmp_path):
    images, masks = cars
    scored = find_pairs(images, masks)
    samples, source = choose_samples(scored, 8, calib_path=images)
    assert source == "calib_path" and len(samples) == 4
    assert [s.id for s in choose_samples(find_pairs(images, masks, limit=1), 4, calib_path=images)[0]] == \
        ["b_01", "c_01", "a_02", "a_01"]  # a calibration folder, too, gives other cars first, scored images last
    cal = load_calibration(samples, Loader((64, 64), 1), source=source, scored_ids={s.id for s in scored.samples})
    assert cal.images == 4 and cal.overlap == 4 and cal.describe()["overlap_with_scored"] == 4


def test_when_every_image_is_scored_it_says_so(cars):
    images, masks = cars
    scored = find_pairs(images, masks)
    samples, source = choose_samples(scored, 2, folder=find_pairs(images).samples)
    assert source == "scored" and [s.id for s in samples] == ["a_01", "b_01"]  # one per car here too


def test_unreadable_images_are_named_and_not_counted(cars, tmp_path):
    images, _ = cars
    with open(os.path.join(images, "b_01.jpg"), "wb") as f:
        f.write(b"not a jpeg")
    samples = find_pairs(images).samples
    cal = load_calibration(samples, Loader((64, 64), 2), source="calib_path")
    assert cal.images == 3 and "b_01" not in cal.ids and [i for i, _ in cal.skipped] == ["b_01"]
    assert sum(b.shape[0] for b in cal.batches) == 4  # two padded batches of 2 carry the 3 images that decoded
    for name in ("a_01", "a_02", "c_01"):
        with open(os.path.join(images, name + ".jpg"), "wb") as f:
            f.write(b"")
    with pytest.raises(SampleError, match="no calibration image could be decoded .4 tried; first error: a_01"):
        load_calibration(samples, Loader((64, 64), 1))


@pytest.mark.slow
def test_cli_reports_which_images_calibrated(cars, tmp_path, capsys):
    if engines.missing("openvino", CPU):
        pytest.skip("openvino is not installed")
    images, masks = cars
    report_path = tmp_path / "r.json"
    code = sample.main(["--image_path", images, "--mask_path", masks, "--limit", "1", "--image_size", "64",
                        "--engine", "openvino", "--precision", "int8", "--calib", "2", "--loop", "1",
                        "--warm_counter", "0", "--quiet", "--device", "cpu", "--no_cache", "--json", str(report_path),
                        *SMALL])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads(report_path.read_text())
    report["config"]["calibration"]["skipped"] = [{"id": "x", "error": "y"}]
    assert not field_paths(report) - documented_fields(), "document config.calibration's fields in docs/outputs.md"
    cal = report["config"]["calibration"]
    assert cal["source"] == "outside" and cal["ids"] == ["b_01", "c_01"] and cal["overlap_with_scored"] == 0
    assert "int8 calibration: 2 image(s) from images of the data folder outside the scored set: b_01, c_01" in out


def test_calib_path_that_does_not_exist_is_one_clear_error(cars, tmp_path, capsys):
    images, masks = cars
    code = sample.main(["--image_path", images, "--mask_path", masks, "--image_size", "64", "--engine", "openvino",
                        "--precision", "int8", "--quiet", "--device", "cpu", "--calib_path", str(tmp_path / "nope"),
                        *SMALL])
    assert code == 1
    assert "error: --calib_path: image path not found" in capsys.readouterr().err


def test_the_key_follows_the_pixels_not_only_the_names(cars):
    images, _ = cars
    samples = find_pairs(images).samples
    before = load_calibration(samples, Loader((64, 64), 1)).key
    write_pair(os.path.dirname(images), "a_01", size=(64, 64), seed=99)  # same name, other pixels
    after = load_calibration(samples, Loader((64, 64), 1)).key
    assert before != after and load_calibration(samples, Loader((64, 64), 1)).key == after
