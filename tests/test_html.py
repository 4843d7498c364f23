"""--html: the page holds every section of a report and stands alone (no network), the run keeps its worst images
without --output, and headless Chromium renders the page with no console error and every chart drawn."""
from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import sample
from dataset.batches import Batch
from pipeline.profile import OpType, Profile, ProfiledOp
from pipeline.rows import to_row
from pipeline.worst import WorstImages
from report.html import page
from report.json_report import report_dict
from report.results import Gate, Report, RunInfo, Skip, WorstImage
from tests.conftest import SMALL
from tests.test_report_schema import _plan, _row
from utils.timing import summarize

CHROMIUM = next(filter(None, (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome"))), None)
RUN = ["--engine", "torch", "--image_size", "32", "--loop", "3", "--warm_counter", "0", "--quiet", "--device", "cpu",
       *SMALL]
CHROMIUM_GROUP = pytest.mark.xdist_group("chromium")  # one Chromium for the module: its tests on one xdist worker
RUN_BOXES = {"what-ran", "table", "chart-speed-accuracy", "chart-latency", "chart-split", "worst"}
ALL_BOXES = RUN_BOXES | {"warnings", "chart-concurrency", "scenarios", "comparison", "profile", "profile-types"}


TORCH_PROFILE = Profile("torch.profiler", 3, [ProfiledOp("aten::convolution", "aten::convolution", "", 4.1, 0.79, 23),
                                              ProfiledOp("aten::relu", "aten::relu", "", 0.6, 0.11, 18)], 2,
                        [], 5.2, 5.5, 6.0)
LAYER_PROFILE = Profile("OpenVINO performance counters", 5,
                        [ProfiledOp("__module.inc.double_conv.0/aten::_convolution/Convolution", "Convolution",
                                    "brgconv_avx512_I8", 2.0, 0.5, 1),
                         ProfiledOp("__module.inc.double_conv.2/aten::relu_/Relu", "Relu", "jit_avx512_I8", 0.4, 0.1,
                                    1)], 40, [OpType("Convolution", 3.1, 0.78, 20), OpType("Relu", 0.5, 0.12, 18)],
                        4.0, 4.2, 4.6)


def _worst(k: int) -> WorstImage:
    image = np.full((20, 30, 3), 60 * k, np.uint8)
    pred, truth = np.zeros((20, 30), bool), np.zeros((20, 30), bool)
    pred[4:16, 4:22], truth[5:15, 8:26] = True, True
    return WorstImage(f"car{k}", 0.5 + k / 10, 0.4, 0.35, 0.25, image, pred, truth)


def hand_made() -> tuple[Report, dict]:
    """A partial report of two rows, one LOW, unstable and interrupted, with the worst images, LoadGen scenarios, a
    --concurrency sweep and ranks; its dict gets a comparison and a profile of the shapes their writers emit."""
    base = to_row(_row())
    timing = summarize([0.005 + 0.0005 * (k % 4) for k in range(12)], 2)
    split = {"wait": 0.01, "h2d": 0.002, "model": 0.05, "d2h": 0.001, "metrics": 0.004, "outputs": 0.0,
             "decode": 0.03, "resize": 0.01}
    low = dataclasses.replace(base, timing=dataclasses.replace(timing, unstable=True), interrupted=True,
                              gate=Gate(0.99999, "LOW", -0.004), split_s=split, e2e_s=0.067,
                              worst=[_worst(k) for k in range(3)], profile=TORCH_PROFILE)
    ok = dataclasses.replace(base, engine="openvino", precision="int8", gate=Gate(0.99, "ok", -0.001), timing=timing,
                             split_s=split, e2e_s=0.067, concurrency=None, ranks=None, nonfinite=[],
                             profile=LAYER_PROFILE, artifact="/root/.cache/unet_sample/openvino/unet_int8_b2_16x16_"
                             "0123456789abcdef.xml (cached IR)")
    auto = [{"precision": "fp32", "engine": "torch", "source": "measured", "probe_s": 3.0, "reason": "fastest",
             "candidates": [{"engine": "torch", "median_ms": 5.0}, {"engine": "onnxruntime", "median_ms": 7.0}]}]
    info = RunInfo(model="unet", variant="UNet", parameters=1, n_classes=2, weights="w.pth", data="d", images=2,
                   unpaired=0, image_size=[16, 16], eval_resolution="model", command="python sample.py --html r.html",
                   started="2026-01-01T00:00:00+00:00", batch_size=2, loop=12, warm_counter=0, torch=torch.__version__,
                   threads=2, host={"cpu": "a CPU", "cpu_count": 2, "isa": ["avx2"]}, artifact_cache=None,
                   auto=auto, hints=["try bf16"], loadgen=_plan().describe())
    report = Report(info, [low, ok], [Skip("tensorrt", "fp32", "absent", failed=True)], True, interrupted_by="SIGINT")
    data = report_dict(report)
    key = {"batch_size": 2, "image_size": [16, 16]}
    data["comparison"] = [{"base": "base.json", "base_started": "2025-12-31T00:00:00+00:00",
                           "differences": ["host: another CPU"], "fail_on_regression_pct": 5.0,
                           "new": [{"engine": "openvino", "precision": "int8", "scenario": "loop", **key}],
                           "gone": [{"engine": "onnxruntime", "precision": "fp32", "scenario": "loop", **key}],
                           "rows": [{"engine": "torch", "precision": "fp32", "scenario": "loop", **key,
                                     "base_median_ms": 4.0, "median_ms": 5.1, "speed_ratio": 0.785,
                                     "verdict": "slower", "dice_change": -0.001, "cosine_change": -2.5e-6,
                                     "regression": True},
                                    {"engine": "openvino", "precision": "int8", "scenario": "offline", **key,
                                     "metric_name": "samples/s", "base_metric": 100.0, "metric": 101.0,
                                     "speed_ratio": 1.01, "verdict": "the same", "regression": False}]}]
    return report, data


@pytest.fixture(scope="module")
def full_page() -> str:
    """hand_made()'s page, drawn once for the module (matplotlib takes about a second)."""
    return page(*hand_made())


def test_page_shows_every_section_and_stands_alone(full_page):
    html = full_page
    assert {b for b in re.findall(r'data-box="([^"]+)"', html)} == ALL_BOXES
    for text in ("LOW", "unstable", "INTERRUPTED", "PARTIAL: the run was interrupted by Ctrl-C (SIGINT)",
                 "FAILED tensorrt fp32: absent", "auto fp32: torch", "try bf16", "host: another CPU",
                 "aten::convolution"):
        assert text in html, text
    assert "<code>python sample.py --html r.html</code>" in re.sub(r"</?span>", "", html)  # one box per word
    assert 'class="low unstable interrupted"' in html
    assert html.count('data-box="profile"') == 2 and html.count('data-box="profile-types"') == 1


def test_worst_images_are_the_lowest_dice_bounded_and_small():
    """Of equal dice the earlier stays; thumbnails keep the original aspect ratio; FP + FN = 1 - IoU."""
    keep = WorstImages(count=2, width=16)
    truth = torch.zeros(3, 8, 8, dtype=torch.uint8)
    truth[:, 2:6, 2:6] = 1
    logits = torch.zeros(3, 2, 8, 8)
    logits[:, 1, 3:7, 2:6] = 1.0  # one row of the truth missed (4 FN), one row too many (4 FP): IoU = 12 / 20
    pixels = torch.zeros(3, 8, 8, 3, dtype=torch.uint8)
    for ids, dice in ((["a", "b", "c"], [0.9, 0.5, 0.7]), (["d", "e", "f"], [0.5, 0.95, None])):
        batch = Batch(ids, pixels, truth, 3, [(64, 32)] * 3)
        keep.add(batch, logits, dice, [0.6] * 3)
    assert [(w.id, w.dice) for w in keep.kept] == [("b", 0.5), ("d", 0.5)]
    w = keep.kept[0]
    assert (w.fp_share, w.fn_share) == (0.2, 0.2) and w.fp_share + w.fn_share == pytest.approx(1 - 12 / 20)
    assert w.image.shape == (8, 16, 3) and w.pred.shape == w.truth.shape == (8, 16) and w.truth.dtype == bool


def _error(event: dict) -> str | None:
    """What a DevTools event says went wrong on the page: console.error / console.assert, an uncaught exception, or
    the browser's own error log (a resource that failed to load); None for anything else."""
    method, params = event.get("method"), event.get("params", {})
    if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
        return "console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
    if method == "Runtime.exceptionThrown":
        details = params["exceptionDetails"]
        return "exception: " + details.get("exception", {}).get("description", details["text"])
    if method == "Log.entryAdded" and params["entry"]["level"] == "error":
        return "log: " + params["entry"]["text"]
    return None


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (fd 3 in, fd 4 out; standard library only)."""

    def __init__(self, root: str, width: int = 1200):
        self.home = os.path.join(root, "home")
        os.makedirs(self.home)
        profile = os.path.join(root, "profile")
        # Its own home and XDG folders, dconf in memory: nothing of it can land in the user's ~, ~/.cache, ~/.config.
        env = {"PATH": os.environ.get("PATH", ""), "HOME": self.home, "GSETTINGS_BACKEND": "memory",
               "XDG_CONFIG_HOME": os.path.join(profile, "config"), "XDG_CACHE_HOME": os.path.join(profile, "cache")}
        commands, self.to_browser = os.pipe()  # Chromium reads our commands on its fd 3
        self.out, replies = os.pipe()  # and writes its replies and events on its fd 4
        flags = ["--headless", "--disable-gpu", "--no-sandbox", f"--user-data-dir={profile}", "--no-first-run",
                 "--remote-debugging-pipe", "--disable-crash-reporter", "--disable-breakpad", "about:blank"]
        # The shell moves the pipes to the fds Chromium reads (3) and writes (4); its stdout and stdin go nowhere.
        self.process = subprocess.Popen(["sh", "-c", 'exec "$@" 3<&0 4>&1 </dev/null >/dev/null', "sh", CHROMIUM,
                                         *flags], stdin=commands, stdout=replies, stderr=subprocess.DEVNULL,
                                        env=env)
        os.close(commands)
        os.close(replies)
        self.buffer, self.next_id, self.events = b"", 0, []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=900, deviceScaleFactor=1,
                  mobile=False)

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            if not select.select([self.out], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise TimeoutError("Chromium did not answer within 30 s")
            chunk = os.read(self.out, 1 << 20)
            if not chunk:
                raise EOFError("Chromium closed its DevTools pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, session: bool = False, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + 30
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def load(self, path: str) -> tuple[list[str], dict, Image.Image]:
        """Open a file; its console errors and uncaught exceptions, each [data-box]'s box (a chart's: its <svg>) in
        page pixels, and a screenshot of the whole page."""
        self.events = []
        self.call("Page.navigate", session=True, url="file://" + os.path.abspath(path))
        deadline = time.monotonic() + 30
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            self.events.append(self._message(deadline))
        boxes = json.loads(self.call("Runtime.evaluate", session=True, returnByValue=True, expression="""
            JSON.stringify(Object.fromEntries([...document.querySelectorAll('[data-box]')].map(e => {
                const r = (e.querySelector('svg') || e).getBoundingClientRect();
                return [e.dataset.box, [r.left + scrollX, r.top + scrollY, r.width, r.height]]; })))""")["result"]
            ["value"])
        shot = self.call("Page.captureScreenshot", session=True, format="png", captureBeyondViewport=True)
        errors = [error for error in map(_error, self.events) if error]
        return errors, boxes, Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("RGB")

    def evaluate(self, expression: str):
        """A JavaScript expression's value on the open page."""
        return self.call("Runtime.evaluate", session=True, returnByValue=True, expression=expression)["result"]["value"]

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (OSError, EOFError, TimeoutError, RuntimeError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self.to_browser)
        os.close(self.out)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One Chromium for the module (it takes about a second to start), with a temporary profile and home."""
    if CHROMIUM is None:
        pytest.skip("headless Chromium is absent (Debian: apt-get install chromium; .ci/run installs it)")
    chromium = Browser(str(tmp_path_factory.mktemp("chromium")))
    yield chromium
    chromium.close()
    assert not os.listdir(chromium.home), f"Chromium wrote into its home folder: {os.listdir(chromium.home)}"


def drawn(boxes: dict, shot: Image.Image) -> dict[str, str]:
    """Each box that is not drawn: too small, or for the table, the charts and the images a blank area of the
    screenshot (under 1 % of its pixels differ from its corner's)."""
    bad = {}
    for name, (x, y, w, h) in boxes.items():
        if w < 40 or h < 12:
            bad[name] = f"box {w:.0f}x{h:.0f}"
            continue
        if not name.startswith(("chart", "table", "worst")):
            continue
        area = np.asarray(shot.crop((int(x), int(y), int(x + w), int(y + h)))).astype(int)
        ink = (np.abs(area - area[0, 0]).sum(axis=2) > 60).mean()
        if ink < 0.01:
            bad[name] = f"{ink:.2%} ink"
    return bad


@CHROMIUM_GROUP
def test_a_run_writes_a_page_that_renders_in_chromium(small_set, tmp_path, capsys, browser):
    """A real run: the page names its three worst images (no --output asked), is small, and every chart is drawn;
    without a reference, the speed-accuracy chart plots the dice against the masks."""
    path = tmp_path / "r.html"
    args = ["--image_path", small_set[0], "--mask_path", small_set[1], "--html", str(path), "--no_reference"]
    assert sample.main(RUN + args) == 0
    assert f"wrote the HTML report to {path}" in capsys.readouterr().out
    html = path.read_text()
    assert html.count("data:image/jpeg;base64,") == 3 and len(html.encode()) < 300_000
    assert "dice against the masks (up = better)" in html
    errors, boxes, shot = browser.load(str(path))
    assert not errors
    assert RUN_BOXES <= set(boxes)  # and the warnings, when the busy machine made the row unstable
    assert not drawn(boxes, shot)


@CHROMIUM_GROUP
def test_every_section_renders_in_chromium(tmp_path, browser, full_page):
    path = tmp_path / "all.html"
    path.write_text(full_page)
    errors, boxes, shot = browser.load(str(path))
    assert not errors
    assert set(boxes) == ALL_BOXES
    assert not drawn(boxes, shot)


@CHROMIUM_GROUP
def test_nothing_is_hidden_off_a_1200_px_window(tmp_path, browser, full_page):
    """The browser's window is 1200 px wide: the page does not scroll sideways, the results table (a long artifact
    path in it) fits its box, every other table fits or scrolls in its own, and the command wraps at its spaces."""
    report, data = hand_made()
    long = "python sample.py " + " ".join(f"--option_{k} /a/long/path/number_{k}/of/a/run" for k in range(12))
    report = dataclasses.replace(report, info=dataclasses.replace(report.info, command=long))
    data["config"]["command"] = long
    path = tmp_path / "wide.html"
    path.write_text(page(report, data))
    errors, boxes, _ = browser.load(str(path))
    assert not errors and browser.evaluate("innerWidth") == 1200
    assert browser.evaluate("document.scrollingElement.scrollWidth") <= 1200
    tables = browser.evaluate("""JSON.stringify([...document.querySelectorAll('table')].map(t => [t.dataset.box,
        t.getBoundingClientRect().right, t.parentElement.getBoundingClientRect().right,
        getComputedStyle(t.parentElement).overflowX]))""")
    for box, right, edge, overflow in json.loads(tables):
        assert right <= edge + 0.5 or overflow == "auto", box
        if box == "table":
            assert right <= edge + 0.5, "the results table is wider than its box: a column is off to the right"
    text, right, words = json.loads(browser.evaluate("""JSON.stringify((() => {
        const c = document.querySelector('table.ran code');
        const words = [...c.querySelectorAll('span')].map(w => { const range = document.createRange();
            range.selectNodeContents(w); return [range.getClientRects().length, Math.round(w.offsetTop)]; });
        return [c.textContent, c.getBoundingClientRect().right, words]; })())"""))
    assert text == long and right <= 1200  # the command as it ran (to copy), inside the window
    assert len(words) == 26 and {n for n, _ in words} == {1}, "a word of the command was broken across lines"
    assert len({top for _, top in words}) > 1  # it did wrap

@CHROMIUM_GROUP
def test_the_browser_check_sees_console_errors_and_exceptions(tmp_path, browser):
    """The check above could pass by seeing nothing: a page that logs an error and throws is caught, and so is an
    empty chart."""
    path = tmp_path / "bad.html"
    path.write_text('<!DOCTYPE html><html><body><div data-box="chart-empty" style="width:300px;height:100px"></div>'
                    '<script>console.error("logged"); null.boom;</script></body></html>')
    errors, boxes, shot = browser.load(str(path))
    assert len(errors) == 2 and errors[0] == "console: logged"
    assert errors[1].startswith("exception: TypeError: Cannot read properties of null (reading 'boom')")
    assert drawn(boxes, shot) == {"chart-empty": "0.00% ink"}


def test_html_without_jinja2_is_one_line_before_anything_compiles(small_set, tmp_path, monkeypatch, capsys):
    import engines

    monkeypatch.setitem(sys.modules, "jinja2", None)  # import jinja2 now raises ImportError
    monkeypatch.setattr(engines, "load", lambda *a, **k: pytest.fail("an engine was built"))
    assert sample.main(RUN + ["--image_path", small_set[0], "--html", str(tmp_path / "r.html")]) == 1
    err = capsys.readouterr().err
    assert "error: --html needs jinja2, which is not installed: pip install jinja2" in err
    assert "Traceback" not in err and not (tmp_path / "r.html").exists()


def test_html_with_an_old_matplotlib_is_one_line_before_anything_compiles(small_set, tmp_path, monkeypatch, capsys):
    import matplotlib

    import engines

    monkeypatch.setattr(matplotlib, "__version__", "3.4.3", raising=False)
    monkeypatch.setattr(engines, "load", lambda *a, **k: pytest.fail("an engine was built"))
    assert sample.main(RUN + ["--image_path", small_set[0], "--html", str(tmp_path / "r.html")]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "error: --html needs matplotlib 3.5 or newer, not 3.4.3: pip install 'matplotlib>=3.5'"
    assert not (tmp_path / "r.html").exists()


def test_a_failed_html_write_loses_nothing_else(small_set, tmp_path, monkeypatch, capsys):
    import report.html

    monkeypatch.setattr(report.html, "page", lambda *a, **k: 1 / 0)
    paths = [str(tmp_path / name) for name in ("r.html", "r.json")]
    args = ["--image_path", small_set[0], "--html", paths[0], "--json", paths[1], "--no_reference"]
    assert sample.main(RUN + args) == 1
    captured = capsys.readouterr()
    assert f"error: cannot write --html {paths[0]}: ZeroDivisionError" in captured.err
    assert "wrote the JSON report" in captured.out and "HTML" not in captured.out
    assert os.path.exists(paths[1]) and not os.path.exists(paths[0])
