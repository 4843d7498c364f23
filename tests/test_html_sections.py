"""--html's sections say what stdout says: the comparison (its words, columns and note), the profiles (their
columns and by-type table), the speed-accuracy chart (each point named; a floored cosine not passed off as measured;
drawn against dice without a reference, or said absent)."""
from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from markupsafe import escape

from report.html import page
from tests.test_html import hand_made


@pytest.fixture(scope="module")
def full_page() -> str:
    """hand_made()'s page, drawn once for the module (matplotlib takes about a second)."""
    return page(*hand_made())


def _cells(html: str, box: str) -> list[list[str]]:
    """The cells of the first table with data-box=`box`, row by row (its header row first)."""
    table = re.search(rf'<table data-box="{box}">(.*?)</table>', html, re.S).group(1)
    return [re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S) for row in re.findall(r"<tr.*?</tr>", table, re.S)]


def test_the_comparison_says_what_stdout_says(full_page):
    """stdout's columns and formats ('1.27x slower', not the raw 0.785; a cosine change to 6 places), `regressed`
    only under --fail_on_regression, the new and gone rows and the note as stdout names them."""
    from report.compare_table import comparison_lines

    head, slower, same = _cells(full_page, "comparison")
    assert head == ["engine", "prec", "batch", "size", "scenario", "base", "this", "speed", "verdict", "dice change",
                    "cos change", "regressed"]
    assert slower == ["torch", "fp32", "2", "16x16", "loop (median ms)", "4.00", "5.10", "1.27x slower", "slower",
                      "-0.0010", "-0.000003", "yes"]
    assert same[4:9] == ["offline (samples/s)", "100.00", "101.00", "1.01x faster", "the same"] and same[-1] == "no"
    assert "0.785" not in full_page and 'class="slower regression"' in full_page
    assert "new here: openvino int8 batch 2 16x16 loop" in full_page
    assert "gone since the base: onnxruntime fp32 batch 2 16x16 loop" in full_page
    note = comparison_lines([SimpleNamespace(base="b", base_started=None, differences=[], rows=[], new=[], gone=[],
                                             fail_on_regression_pct=None)])[-1]
    assert note.startswith("speed: how many times faster") and str(escape(note)) in full_page
    report, data = hand_made()
    entry = data["comparison"][0]
    entry.update(differences=[], fail_on_regression_pct=None)
    html = page(report, data)
    assert "same host, model, weights and data" in html and ">regressed<" not in html
    assert len(_cells(html, "comparison")[0]) == 11


def test_the_profiles_have_stdout_columns_and_types(full_page):
    """A layer profile (OpenVINO) shows the type and kernel columns, runs per call and a by-type table; a torch
    profile (its type is its name) the operator alone; both with stdout's heading and sum lines."""
    torch_head, conv, _ = _cells(full_page, "profile")
    assert torch_head[:4] == ["operator", "ms/call", "share", "per call"] and conv[:4] == ["aten::convolution", "4.10",
                                                                                           "79.0%", "23"]
    layers = _cells(full_page[full_page.index("Profile: openvino int8"):], "profile")
    assert layers[0][:6] == ["layer / node", "type", "kernel / provider", "ms/call", "share", "per call"]
    assert layers[1][:6] == ["__module.inc.double_conv.0/aten::_convolution/Convolution", "Convolution",
                             "brgconv_avx512_I8", "2.00", "50.0%", "1"]
    assert [r[:4] for r in _cells(full_page, "profile-types")] == [["type", "ms/call", "share", "per call"],
                                                                  ["Convolution", "3.10", "78.0%", "20"],
                                                                  ["Relu", "0.50", "12.0%", "18"]]
    assert "profile openvino int8: OpenVINO performance counters, 5 calls, top 2 of 40 layers by self time" in full_page
    assert "profiled ops add up to 4.0 ms per call vs the median call 4.2 ms (95.2 %)" in full_page


def _svg_texts(html: str) -> list[str]:
    return [t.strip() for t in re.findall(r"<text[^>]*>([^<]+)</text>", html)]


def test_the_speed_accuracy_points_are_labelled_and_a_floored_cosine_is_not_a_measure(full_page):
    """Each point names its row; a cosine of 1 (1 - cosine = 0, drawn on the log axis's floor) is hollow and said to
    be at or below the floor, in the chart and its caption; a measured cosine is filled and the caption says nothing
    of a floor."""
    chart = re.search(r'data-box="chart-speed-accuracy">(.*?)</figure>', full_page, re.S).group(1)
    texts = _svg_texts(chart)
    assert texts.count("torch fp32") == 2 and texts.count("openvino int8") == 2  # one per panel
    assert "labelled with its engine and precision" in chart and "hollow" not in chart.split("</svg>")[1]
    report, data = hand_made()
    data["rows"][1]["cosine_min"] = 1.0
    chart = re.search(r'data-box="chart-speed-accuracy">(.*?)</figure>', page(report, data), re.S).group(1)
    caption = chart.split("</svg>")[1]
    assert "floor 1e-9: hollow = at or below" in _svg_texts(chart)
    assert "1 - cosine at or below 1e-9" in caption and "not a measured value" in caption
    faces = re.findall(r'<use [^>]*style="fill: (#\w+); fill-opacity: 0.85', chart)  # 2 rows x 2 panels, 2 in legend
    assert len(faces) == 6 and faces.count("#ffffff") == 1  # openvino int8's on the cosine panel only: hollow


def test_without_a_reference_throughput_is_drawn_against_dice(full_page):
    """--no_reference: no cosine and no dice delta, but dice against the masks: the chart plots that; with no masks
    either, the page says in the chart's place why there is none."""
    report, data = hand_made()
    for row in data["rows"]:
        row.pop("cosine_min"), row.pop("dice_delta")
    html = page(report, data)
    chart = re.search(r'data-box="chart-speed-accuracy">(.*?)</figure>', html, re.S).group(1)
    assert "dice against the masks (up = better)" in _svg_texts(chart) and "1 - worst cosine" not in chart
    assert "against the dice against the masks (no eager fp32 reference ran" in chart.split("</svg>")[1]
    for row in data["rows"]:
        row.pop("dice")
    html = page(report, data)
    assert 'data-box="chart-speed-accuracy"' not in html
    assert "No speed-accuracy chart: no timed row has a dice score (the images have no masks) or a cosine" in html
    assert html.count("data:image/jpeg;base64,") == 3
    assert not re.search(r"<script|<link|@import|<iframe|<object|<embed", html, re.I)
    assert all(v.startswith(("data:", "#")) for v in re.findall(r'(?:src|href)="([^"]*)"', html)), "an external link"
    assert not re.search(r"url\(\s*['\"]?(?!#|data:)", html), "an external url()"
