"""The JSON report's schema: every key the writer can emit is in a golden list, every key of the list is emitted, and
the list is docs/outputs.md's table; no key is added or lost without the list and the docs changing together."""
from __future__ import annotations

import dataclasses
import os

import torch

from dataset.calibration import random_calibration
from dataset.modes import Conversion, describe_conversions
from engines.base import EngineOptions
from pipeline.concurrency import Level, Sweep
from pipeline.distributed import World
from pipeline.passes import PassResult
from pipeline.probe import ProbeInput, Target, measure
from pipeline.profile import Measured
from pipeline.profile import summarize as summarize_profile
from pipeline.rows import EngineFacts, RowResult, to_row
from pipeline.scenario_rows import AccuracyCheck, Library, ScenarioPlan, ScenarioRow
from pipeline.scenario_types import ScenarioResult, ScenarioSettings, ServerRun
from report.compare import compare, this_side
from report.json_report import report_dict
from report.metrics import Accuracy
from report.outputs import RowOutputs
from report.results import RankPart, Report, RunInfo, Skip, TraceFile, WrittenFiles
from tests.conftest import CPU
from tests.test_outputs import documented_fields, field_paths
from utils.device import describe_host
from utils.timing import summarize

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "report_keys.txt")
SHAPE = (2, 3, 16, 16)


def golden() -> set[str]:
    with open(GOLDEN) as f:
        return {line.strip() for line in f if line.strip() and not line.startswith("#")}


def _auto() -> list[dict]:
    """What `--engine auto` reports, from a real (tiny) probe of two engines."""
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 2, 3, padding=1).eval()
    batch = torch.rand(SHAPE)
    with torch.inference_mode():
        given = ProbeInput(batch, 2, model(batch))
    choice = measure(Target(model, "m", SHAPE, CPU, "fp32", EngineOptions()), ["torch", "torchscript"], given)
    return [choice.describe()]


def _row() -> RowResult:
    """A row with every optional part: failed images, a reference, scores at the original size, timing, ranks."""
    torch.manual_seed(0)
    logits, masks = torch.randn(2, 2, 8, 8), torch.randint(0, 2, (2, 8, 8))
    accuracy, original = Accuracy(), Accuracy()
    reference = logits * 1.01
    reference[1, 0, 0, 0] = float("nan")  # a non-finite reference: rows[].nonfinite[] is emitted
    accuracy.add(["a", "b"], logits, masks, reference)
    original.score(["a", "b"], logits.argmax(1), masks, 2)
    passed = PassResult(accuracy, e2e_s=1.0, first_call_s=0.1, failed=[("c", "cannot decode image c.jpg")],
                        batch_ms=[5.0, 5.0], sizes=[(8, 8), (8, 8)])
    facts = EngineFacts("torch", "cpu x2", "fp32", "compiled", "", "model call", ("channels_last",))
    part = RankPart(0, "host", "cpu", 2, 1.0, "compiled", 100.0, 2.0, 5.0, 1.0, 2.0, 0.0)
    swept = Sweep([Level(2, 12, 1.0, 24.0, 80.0, 90.0, [70.0, 85.0], 1)], 2, 2, ["concurrency 4: one at a time"])
    profiled = Measured("torch.profiler", 2, walls_ms=[5.0, 6.0], engine="torch")
    profiled.add("aten::mkldnn_convolution", "aten::mkldnn_convolution", "", 9.0, 4)
    return RowResult(facts, 1.0, passed, summarize([0.005, 0.006], 2), RowOutputs(0.5, original), [part],
                     scenarios=[_scenario()], concurrency=swept, profile=summarize_profile(profiled, 5.5))


def _plan() -> ScenarioPlan:
    library = Library(["a"], torch.zeros(1, 16, 16, 3, dtype=torch.uint8), None, 2**30, 2)
    return ScenarioPlan(("server",), library, ScenarioSettings(), None, "logs", 2, 2)


def _scenario() -> ScenarioRow:
    """A Server scenario with its search's runs and a failed accuracy check: every scenario key."""
    run = ServerRun(target_qps=10.0, scheduled_qps=9.9, completed_qps=9.8, latency_p99_ms=4.0, met=True,
                    validity="VALID", log_dir="logs/server/run1")
    result = ScenarioResult("server", "queries/s at p99 under target", 9.9, "INVALID", ("early stopping not met",),
                            performance_sample_count=2, batch_size=2, queries=10, samples=10, duration_s=1.0,
                            latency_p50_ms=2.0, latency_p90_ms=3.0, latency_p99_ms=4.0, early_stopping="not met",
                            log_dir="logs/server", target_latency_ms=25.0, server_runs=(run,))
    return ScenarioRow(result, AccuracyCheck(2, 0.5, 0.5, 0.0, True), "--target_latency_ms")


def full_report() -> Report:
    """A report with every optional part present, each made by the code that makes it in a run."""
    calibration = random_calibration((1, 3, 16, 16))
    calibration.skipped.append(("x", "cannot decode image x.jpg"))
    world = World(rank=0, size=2, host="host", device="cpu", threads=1, backend="gloo")
    world.ranks = [world.rank_facts()]
    info = RunInfo(model="unet", variant="UNet", parameters=1, n_classes=2, weights="random", data="d", images=2,
                   unpaired=0, image_size=[16, 16], eval_resolution="original", command="python sample.py",
                   started="now", batch_size=2, loop=1, warm_counter=0, torch=torch.__version__, threads=2,
                   host={**describe_host(CPU), "accelerator": "a GPU"}, artifact_cache="/cache",
                   calibration_images=calibration.images, calibration=calibration.describe(), decode="nvjpeg",
                   decode_note="nvJPEG", workers=2, reference="cpu", auto=_auto(), hints=["try bf16"],
                   decode_fallbacks=["x.jpg: RuntimeError"], distributed=world.facts(),
                   conversions=describe_conversions([Conversion("image", "x.png", "I;16", "16-bit grey")]),
                   loadgen=_plan().describe(), weights_digest="random, seed 0", data_digest="sha256:0")
    lost = [{"path": "out/c_mask.png", "error": "cannot write out/c_mask.png: No space left on device"}]
    outputs = WrittenFiles("original", "out", True, 2, "sub.csv", 2, "per.csv", 2, lost, 1)
    report = Report(info, [to_row(_row())], [Skip("tensorrt", "fp32", "absent", failed=True)], False, outputs,
                    ["latency.png"], trace=TraceFile("t.json", 2, 1))
    report.comparison = _comparison(report)
    return report


def _comparison(report: Report) -> list:
    """--compare against a base that has the loop row, lacks the Server row (new here) and has another (gone)."""
    this = this_side(report)
    loop = this.rows[0]
    base = dataclasses.replace(this, path="base.json", rows=[loop, dataclasses.replace(
        loop, key=dataclasses.replace(loop.key, engine="openvino"))])
    return [compare(this, base, 5.0)]


def test_every_key_the_writer_can_emit_is_in_the_golden_list_and_back():
    emitted, listed = field_paths(report_dict(full_report())), golden()
    added = sorted(emitted - listed)
    assert not added, f"new report keys: add them to {GOLDEN} and docs/outputs.md: {added}"
    assert not listed - emitted, f"keys no longer emitted: {sorted(listed - emitted)} (remove them from both, or " \
                                 "restore them)"


def test_the_golden_list_is_the_documented_list():
    documented = {f for f in documented_fields() if not f.startswith(("--", "python "))}
    assert documented == golden(), (f"only in docs/outputs.md: {sorted(documented - golden())}; "
                                    f"only in {GOLDEN}: {sorted(golden() - documented)}")
