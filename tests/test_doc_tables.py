"""benchmarks/doc_tables.py: the docs' generated blocks match their JSON reports, render right, fail clearly."""
from __future__ import annotations

import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("doc_tables", os.path.join(ROOT, "benchmarks", "doc_tables.py"))
doc_tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(doc_tables)

REPORT = {
    "version": 1,
    "config": {
        "model": "unet", "weights": "/x/unet_carvana_256.pth", "images": 4, "image_size": [512, 512], "batch_size": 1,
        "loop": 5, "warm_counter": 2, "torch": "2.13.0+cpu", "calibration_images": 4,
        "command": "python sample.py --engine openvino --precision fp32,int8 --image_path '/data/my images' "
                   "--json r.json",
        "started": "2026-11-26T05:39:52+00:00",
        "host": {"cpu": "AMD EPYC", "cpu_count": 2, "isa": ["avx2", "avx512f"]},
    },
    "rows": [
        {"engine": "torch", "precision": "fp32", "latency_median_ms": 5069.4, "fps": 0.1973, "e2e_fps": 0.19,
         "cosine_min": 1.0, "fidelity": "ok", "dice": 0.92951, "dice_delta": 0.0, "compile_s": 0.0,
         "artifact": "eager"},
        {"engine": "openvino", "precision": "int8", "latency_median_ms": 1553.2, "fps": 0.63412, "e2e_fps": None,
         "cosine_min": 0.9997051, "fidelity": "ok", "dice": 0.93431, "dice_delta": 0.00482, "compile_s": 29.64,
         "artifact": "compiled"},
        {"engine": "onnxruntime", "precision": "int8", "latency_median_ms": 1400.0, "fps": 0.7, "cosine_min": 0.95,
         "fidelity": "LOW", "dice": 0.9, "dice_delta": -0.0295, "compile_s": 31.5, "artifact": "loaded"},
    ],
    "skipped": [{"engine": "tensorrt", "precision": "fp32", "reason": "needs a CUDA device"},
                {"engine": "inductor", "precision": "int8", "reason": "boom", "failed": True}],
}


def make_repo(tmp_path, body: str, report: dict | None = REPORT) -> str:
    """A checkout with docs/reports/r.json (+ r.txt) and a README.md of `body`."""
    os.makedirs(tmp_path / "docs" / "reports")
    if report is not None:
        (tmp_path / "docs" / "reports" / "r.json").write_text(json.dumps(report))
        (tmp_path / "docs" / "reports" / "r.txt").write_text("engine  fps\nopenvino  0.634\n")
    (tmp_path / "README.md").write_text(body)
    return str(tmp_path)


def block(kind: str, report: str = "docs/reports/r.json") -> str:
    return f"intro\n\n<!-- generated from {report}: {kind} -->\nold\n<!-- end generated -->\n\noutro\n"


def test_committed_docs_match_their_reports():
    with open(os.path.join(ROOT, "docs", "engines.md"), encoding="utf-8") as f:
        assert "<!-- generated from docs/reports/" in f.read(), "docs/engines.md lost its generated tables"
    assert doc_tables.main(["--check"]) == 0, "run: python benchmarks/doc_tables.py"


def test_engines_block_renders_caption_command_and_cells(tmp_path):
    root = make_repo(tmp_path, block("engines"))
    assert doc_tables.main(["--root", root]) == 0
    text = (tmp_path / "README.md").read_text()
    assert text.startswith("intro\n\n<!-- generated from docs/reports/r.json: engines -->\n"
                           "Measured on AMD EPYC, 2 cores")
    assert text.endswith("<!-- end generated -->\n\noutro\n") and "old" not in text
    flat = " ".join(text.split())  # prose is wrapped
    assert "(avx2, avx512f), torch 2.13.0+cpu, 2026-11-26 05:39 UTC" in flat
    assert "4 images at 512x512, batch 1, 2 warm-up + 5 timed calls per row" in flat
    assert f"```bash\n{REPORT['config']['command']}\n```" in text
    assert "| torch | fp32 | 5,069 | 0.197 | 0.190 | 1.000000 | ok | 0.9295 | +0.0000 | 0.0 | eager |" in text
    assert "| openvino | int8 | 1,553 | 0.634 | - | 0.999705 | ok | 0.9343 | +0.0048 | 29.6 | compiled |" in text
    assert "| onnxruntime | int8 | 1,400 | 0.700 | - | 0.950000 | LOW | 0.9000 | -0.0295 | 31.5 | loaded |" in text
    assert "- skipped tensorrt fp32: needs a CUDA device" in text
    assert "- **FAILED** inductor int8: boom" in text
    assert doc_tables.main(["--root", root, "--check"]) == 0


def test_random_weights_leave_dice_out(tmp_path):
    report = json.loads(json.dumps(REPORT))
    report["config"]["weights"] = "random"
    root = make_repo(tmp_path, block("engines"), report)
    assert doc_tables.main(["--root", root]) == 0
    text = (tmp_path / "README.md").read_text()
    assert "random weights (dice left out" in " ".join(text.split())
    assert "| torch | fp32 | 5,069 | 0.197 | 0.190 | 1.000000 | ok | - | - | 0.0 | eager |" in text


def test_long_command_wraps_without_changing_its_words():
    command = "python sample.py " + " ".join(f"--flag{i} 'value {i}'" for i in range(20))
    wrapped = doc_tables.wrap_command(command)
    assert all(len(line) <= 112 for line in wrapped.splitlines()) and wrapped.count("\\\n") > 1
    assert wrapped.replace(" \\\n    ", " ") == command


def test_fastest_and_output_blocks(tmp_path):
    root = make_repo(tmp_path, block("fastest") + block("output"))
    assert doc_tables.main(["--root", root]) == 0
    text = (tmp_path / "README.md").read_text()
    flat = " ".join(text.split())  # prose is wrapped
    # onnxruntime int8 is faster but LOW, so it is not the int8 pick
    assert ("fp32 **torch** 5,069 ms, 1.00x eager torch fp32; int8 **openvino** 1,553 ms, 3.26x eager torch fp32."
            in flat)
    assert "Below the bar (LOW): onnxruntime int8." in flat
    assert "2026-11-26 05:39 UTC, stdout:\n\n```\nengine  fps\nopenvino  0.634\n```\n<!-- end generated -->" in text


def test_first_run_block_quotes_the_probe_and_the_run_from_the_report(tmp_path):
    auto = {"precision": "fp32", "engine": "openvino", "source": "measured", "probe_s": 21.4, "budget_s": 20.0,
            "not_tried": ["inductor"]}
    report = {**REPORT, "config": {**REPORT["config"], "auto": [auto], "run_s": 47.6}}
    root = make_repo(tmp_path, block("first_run"), report)
    assert doc_tables.main(["--root", root]) == 0
    flat = " ".join((tmp_path / "README.md").read_text().split())
    assert ("within its `--auto_budget` of 20 s: 21 s of this run's 48 s (the `auto fp32` line; it did not try "
            "inductor)") in flat
    report["config"]["auto"] = [{**auto, "source": "cached"}]
    root = make_repo(tmp_path / "again", block("first_run"), report)
    assert doc_tables.main(["--root", root]) == 0
    assert "reused the `auto fp32` choice" in (tmp_path / "again" / "README.md").read_text()


def test_stale_block_is_named_and_nothing_written(tmp_path, capsys):
    root = make_repo(tmp_path, block("engines"))
    assert doc_tables.main(["--root", root]) == 0
    edited = (tmp_path / "README.md").read_text().replace("| 5,069 |", "| 4,000 |")
    (tmp_path / "README.md").write_text(edited)
    assert doc_tables.main(["--root", root, "--check"]) == 1
    assert "stale: README.md:3: docs/reports/r.json: engines" in capsys.readouterr().err
    assert (tmp_path / "README.md").read_text() == edited


@pytest.mark.parametrize("body, message", [
    (block("engines", "docs/reports/nope.json"), "README.md:3: report docs/reports/nope.json does not exist"),
    (block("table"), "README.md:3: unknown block kind 'table' (known: engines, fastest, output, first_run)"),
    ("<!-- generated from docs/reports/r.json: engines -->\nno end\n", "opening marker without a closing"),
    ("x\n<!-- generated from docs/reports/r.json -->\n<!-- end generated -->\n", "README.md:2: malformed marker"),
])
def test_bad_marker_is_one_clear_error(tmp_path, capsys, body, message):
    root = make_repo(tmp_path, body)
    assert doc_tables.main(["--root", root]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert (tmp_path / "README.md").read_text() == body


def test_error_in_a_later_file_writes_no_file(tmp_path):
    root = make_repo(tmp_path, block("engines"))
    (tmp_path / "docs" / "later.md").write_text(block("engines", "docs/reports/nope.json"))
    assert doc_tables.main(["--root", root]) == 1
    assert (tmp_path / "README.md").read_text() == block("engines")


def test_report_of_another_shape_is_a_clear_error(tmp_path, capsys):
    root = make_repo(tmp_path, block("engines"), {"config": {"started": "yesterday"}, "rows": []})
    assert doc_tables.main(["--root", root]) == 1
    assert "report docs/reports/r.json lacks a field or holds one of the wrong type" in capsys.readouterr().err


def test_missing_stored_output_is_a_clear_error(tmp_path, capsys):
    root = make_repo(tmp_path, block("output"))
    os.remove(tmp_path / "docs" / "reports" / "r.txt")
    assert doc_tables.main(["--root", root, "--check"]) == 1
    assert "stored output docs/reports/r.txt does not exist" in capsys.readouterr().err
