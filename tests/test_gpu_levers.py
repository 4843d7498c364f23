"""GPU speed levers (channels_last, cudnn.benchmark, CUDA graphs) and the AOTInductor artifact: every CUDA-only branch's
logic on the CPU; on a GPU (`cuda` mark), every CUDA-capable engine against eager fp32 with the levers on and off."""
from __future__ import annotations

import os
import shutil

import pytest
import torch

import engines
from engines import inductor
from engines.base import EngineOptions
from engines.cache import ArtifactCache, verify
from engines.levers import Levers, apply_levers, auto_levers, choose_levers, cudnn_benchmark, graphed, levers_for
from pipeline.fidelity import BARS
from report.metrics import cosine_per_sample
from tests.conftest import SHAPE64 as SHAPE
from utils.errors import SampleError

CPU = torch.device("cpu")
CUDA = torch.device("cuda:0")  # a CPU build of torch makes this device object, though it cannot use it
ALL, BENCH = Levers(True, True, True), Levers(cudnn_benchmark=True)
REAL_HEADERS = inductor.precompiled_headers  # taken at collection, before conftest's session patch replaces it


@pytest.mark.parametrize("engine, device, precision, batch, expected", [
    ("torch", "cuda", "fp16", 1, ALL),  # the H200 rows: channels_last and a graph pay at fp16 / bf16, batch 1
    ("torchscript", "cuda", "bf16", 1, BENCH),  # not measured with channels_last or a graph: only on when asked
    ("torch", "cuda", "fp16", 8, Levers(True, True, False)),  # the graph lost 1-3 % at batch 8 and 32
    ("torch", "cuda", "bf16", 32, Levers(True, True, False)),
    ("torch", "cuda", "fp32", 1, BENCH),  # fp32 not measured with channels_last or a graph: off
    ("inductor", "cuda", "fp16", 1, Levers(False, True, True)),  # inductor lays out its own tensors
    ("inductor", "cuda", "fp16", 2, BENCH),
    ("tensorrt", "cuda", "fp16", 1, Levers()),  # TensorRT picks its own tactics: no lever reaches it
    ("onnxruntime", "cuda", "fp16", 1, Levers()),
    ("torch", "cpu", "fp16", 1, Levers()),  # nothing on the CPU unless asked for
    ("torch", "cpu", "fp32", 1, Levers()),
    ("torch_npu", "npu", "fp16", 1, Levers()),
])
def test_auto_rule(engine, device, precision, batch, expected):
    assert auto_levers(engine, device, precision, batch) == expected
    assert choose_levers(engine, device, precision, batch) == expected


def test_on_and_off_override_auto():
    assert choose_levers("torch", "cuda", "fp16", 1, "off", "off", "off") == Levers()
    assert choose_levers("torch", "cuda", "fp32", 8, "on", "on", "on") == ALL
    assert choose_levers("torch", "cpu", "fp32", 1, channels_last="on") == Levers(channels_last=True)
    # A lever the engine does not read stays off, with no error: its row's report lists no levers.
    assert choose_levers("tensorrt", "cuda", "fp16", 1, "on", "on", "on") == Levers()
    assert choose_levers("inductor", "cuda", "fp16", 1, channels_last="on") == Levers(False, True, True)
    assert choose_levers("onnxruntime", "cpu", "fp32", 1, cuda_graphs="on") == Levers()


@pytest.mark.parametrize("flag", ["cudnn_benchmark", "cuda_graphs"])
def test_a_cuda_lever_forced_on_elsewhere_is_refused(flag):
    with pytest.raises(SampleError, match=f"--{flag} on needs a CUDA device; this torch row runs on cpu"):
        choose_levers("torch", "cpu", "fp32", 1, **{flag: "on"})


def test_a_bad_setting_is_refused():
    with pytest.raises(SampleError, match="--cuda_graphs 'yes': use one of auto, on, off"):
        choose_levers("torch", "cuda", "fp16", 1, cuda_graphs="yes")


def test_options_reach_the_rule():
    options = EngineOptions(channels_last="off", cuda_graphs="off")
    assert levers_for("torch", CUDA, "fp16", (1, 3, 8, 8), options) == BENCH
    assert levers_for("torch", CUDA, "fp16", (1, 3, 8, 8), EngineOptions()) == ALL
    on = EngineOptions(channels_last="on", cuda_graphs="on")  # TorchScript: on when asked, off under auto
    assert levers_for("torchscript", CUDA, "fp16", (1, 3, 8, 8), on) == ALL
    assert levers_for("torchscript", CUDA, "fp16", (1, 3, 8, 8), EngineOptions()) == BENCH


def test_report_names_the_levers():
    assert ALL.names() == ("channels_last", "cudnn.benchmark", "CUDA graph")
    assert Levers().describe("model call") == "model call"
    text = ALL.describe("model call")
    assert text.startswith("model call; speed levers: channels_last, cudnn.benchmark, CUDA graph")
    assert "copied out" in text
    assert Levers(channels_last=True).memory_format == torch.channels_last
    assert Levers().memory_format == torch.contiguous_format


def fake_capture(log: list):
    """A stand-in for capture_cuda_graph with a CUDA graph's semantics: replay recomputes from the static input
    buffer into the one static output tensor."""
    def capture(fn, static_in):
        log.append("capture")
        static_out = fn(static_in)

        def replay():
            log.append("replay")
            static_out.copy_(fn(static_in))

        return replay, static_out
    return capture


def test_graph_replays_from_its_static_buffers_and_hands_out_copies():
    log, weight = [], torch.arange(1.0, 5.0).reshape(1, 1, 2, 2)
    run = graphed(lambda x: x * weight, torch.zeros(1, 1, 2, 2), fake_capture(log))
    x1, x2 = torch.rand(1, 1, 2, 2), torch.rand(1, 1, 2, 2)
    out1 = run(x1)
    x1_copy = x1.clone()
    x1.zero_()  # the graph read its own copy of the input, not x1
    out2 = run(x2)
    assert log == ["capture", "replay", "replay"]
    assert torch.equal(out2, x2 * weight)
    # The next replay overwrote the graph's output buffer; the first call's result is the caller's own copy.
    assert torch.equal(out1, x1_copy * weight)
    assert out1.data_ptr() != out2.data_ptr()


def test_graph_refuses_another_shape_or_dtype():
    run = graphed(lambda x: x + 1, torch.zeros(2, 3, 4, 4), fake_capture([]))
    with pytest.raises(SampleError, match=r"captured for \(2, 3, 4, 4\) torch.float32 on cpu, got \(1, 3, 4, 4\)"):
        run(torch.zeros(1, 3, 4, 4))
    with pytest.raises(SampleError, match="got .* torch.float16"):
        run(torch.zeros(2, 3, 4, 4, dtype=torch.float16))


def test_graph_keeps_the_example_layout():
    seen = []
    example = torch.rand(1, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    graphed(lambda x: seen.append(x.is_contiguous(memory_format=torch.channels_last)) or x, example, fake_capture([]))
    assert seen == [True]


@pytest.mark.parametrize("flag", [True, False])
def test_cudnn_benchmark_is_set_around_each_call_and_restored(flag):
    seen, before = [], torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = not flag
    try:
        run = apply_levers(lambda x: seen.append(torch.backends.cudnn.benchmark) or x, Levers(cudnn_benchmark=flag),
                           CUDA, lambda: pytest.fail("no graph: no example needed"))
        run(torch.zeros(1))
        assert seen == [flag] and torch.backends.cudnn.benchmark is (not flag)  # one row never leaks into another
        with cudnn_benchmark(flag):
            assert torch.backends.cudnn.benchmark is flag
        assert torch.backends.cudnn.benchmark is (not flag)
    finally:
        torch.backends.cudnn.benchmark = before


def test_levers_on_the_cpu_leave_the_call_alone():
    call = lambda x: x  # noqa: E731
    assert apply_levers(call, Levers(channels_last=True), CPU, lambda: pytest.fail("no graph")) is call


def test_graph_lever_captures_once_from_the_example():
    log = []
    run = apply_levers(lambda x: x * 2, Levers(cudnn_benchmark=True, cuda_graph=True), CUDA,
                       lambda: torch.ones(1, 2), capture=fake_capture(log))
    assert torch.equal(run(torch.full((1, 2), 3.0)), torch.full((1, 2), 6.0)) and log == ["capture", "replay"]


def run_once(engine, x):
    output = engine.to_torch(engine.run(engine.prepare(x)))
    engine.synchronize()
    return output


@pytest.mark.parametrize("key", ["torch", pytest.param("torchscript", marks=pytest.mark.slow)])  # two UNet traces
def test_channels_last_on_the_cpu_matches_eager(key, unet64, unet64_cache):
    """The channels_last branch (on by default only on CUDA) runs on the CPU too: same numbers, NCHW out, and the
    caller's model (the reference's own) keeps its layout."""
    model, x, expected, _ = unet64
    options = EngineOptions(cache=unet64_cache, channels_last="on")
    engine = engines.load(key, model, SHAPE, CPU, "fp32", options)
    assert engine.prepare(x).is_contiguous(memory_format=torch.channels_last)
    out = run_once(engine, x)
    assert out.is_contiguous() and cosine_per_sample(out, expected).min().item() >= BARS["fp32"]
    assert engine.levers == ("channels_last",) and "speed levers: channels_last" in engine.timed
    assert not engine.is_reference
    assert model.inc.double_conv[0].weight.is_contiguous()
    if key == "torchscript":  # a channels_last trace is its own cache entry, beside the NCHW one (the matrix's)
        plain = engines.load(key, model, SHAPE, CPU, "fp32", EngineOptions(cache=unet64_cache))
        again = engines.load(key, model, SHAPE, CPU, "fp32", options)
        assert plain.artifact_path != engine.artifact_path == again.artifact_path and again.artifact == "loaded"
        assert plain.levers == () and not plain.prepare(x).is_contiguous(memory_format=torch.channels_last)


def test_default_rows_on_the_cpu_have_no_levers(unet64):
    engine = engines.load("torch", unet64.model, SHAPE, CPU, "fp32")
    assert engine.levers == () and "levers" not in engine.timed and engine.is_reference


def test_aoti_key_and_configs(tmp_path):
    key = inductor.aoti_key(CPU, "default")
    assert key["mode"] == "default" and key["cpu"] and isinstance(key["isa"], list)  # -march=native: per CPU
    assert inductor.aoti_configs(CUDA, "max-autotune", None)["max_autotune"] is True
    cpu = inductor.aoti_configs(CPU, "default", ArtifactCache(str(tmp_path)))
    assert cpu["freezing"] is True and cpu["max_autotune"] is False


def test_precompiled_headers_only_with_our_cache(tmp_path, monkeypatch):
    """conftest compiles the suite without them (they would be cold on every run); a user's run has them with a cache,
    and --no_cache, which leaves nothing behind, has none."""
    monkeypatch.setattr(inductor, "precompiled_headers", REAL_HEADERS)
    cache = ArtifactCache(str(tmp_path))
    assert inductor.precompiled_headers(cache) and not inductor.precompiled_headers(None)
    headers = [v for k, v in inductor.aoti_configs(CPU, "default", cache).items() if "precompile" in k]
    assert headers and all(headers)
    assert all(v is False for k, v in inductor.aoti_configs(CPU, "default", None).items() if "precompile" in k)


@pytest.mark.parametrize("version, expected", [("2.5.1+cu121", False), ("2.0.1+cu117", False), ("2.6.0", True),
                                               ("2.13.0+cpu", True), ("2.10.0a0+git1234", True)])
def test_aoti_needs_torch_2_6(version, expected, monkeypatch):
    import torch._inductor

    for name in ("aoti_compile_and_package", "aoti_load_package"):  # torch 2.0.1 has neither: stand-ins
        monkeypatch.setattr(torch._inductor, name, getattr(torch._inductor, name, None), raising=False)
    monkeypatch.setattr(torch, "export", getattr(torch, "export", None), raising=False)
    monkeypatch.setattr(torch, "__version__", version)
    assert inductor.aoti_available() is expected


def test_inductor_without_aoti_falls_back_and_leaves_graphs_to_its_mode(monkeypatch):
    """torch 2.0.1 has no AOTInductor: torch.compile runs, whose max-autotune mode captures its own CUDA graphs."""
    seen = {}
    monkeypatch.setattr(inductor, "aoti_available", lambda: False)
    monkeypatch.setattr(inductor, "compile_module", lambda *args: seen.setdefault("levers", args[-1]))
    inductor.load(torch.nn.Conv2d(3, 2, 1), SHAPE, CUDA, "fp16", EngineOptions())
    assert seen["levers"] == BENCH
    with pytest.raises(SampleError, match="--cuda_graphs on: torch .* has no AOTInductor"):
        inductor.load(torch.nn.Conv2d(3, 2, 1), SHAPE, CUDA, "fp16", EngineOptions(cuda_graphs="on"))


def test_aoti_graph_needs_a_single_threaded_loader(monkeypatch):
    if not inductor.aoti_available():
        pytest.skip(f"torch {torch.__version__} has no AOTInductor")
    monkeypatch.setattr(inductor, "single_threaded_loader", lambda: False)
    with pytest.raises(SampleError, match="cannot load an AOTInductor package for graph capture"):
        inductor.load(torch.nn.Conv2d(3, 2, 1), SHAPE, CUDA, "fp16", EngineOptions(cuda_graphs="on"))


def built_twice(model: torch.nn.Module, device: torch.device, precision: str, cache: ArtifactCache):
    """The inductor row built twice into `cache`: the second loads the package the first compiled or found there;
    skipped where torch has no AOTInductor."""
    if not inductor.aoti_available():
        pytest.skip(f"torch {torch.__version__} has no AOTInductor: inductor uses torch.compile")
    options = EngineOptions(cache=cache)
    first = engines.load("inductor", model, SHAPE, device, precision, options)
    second = engines.load("inductor", model, SHAPE, device, precision, options)
    assert second.artifact == "loaded" and first.artifact_path == second.artifact_path
    return first, second


@pytest.mark.slow
def test_aoti_package_is_cached_loaded_and_checksummed(unet64, unet64_cache, tmp_path):
    """The package the engine matrix builds (whichever test asks first compiles it) loads from the cache, and every
    load checks its sha256: rebuilding a damaged entry is the cache's (tests/test_hostile.py); this proves the
    package file is one of the entry's checksummed files, so a changed model.pt2 is caught."""
    _, x, expected, _ = unet64
    _, second = built_twice(unet64.model, CPU, "fp32", unet64_cache)
    assert "AOTInductor package" in second.timed
    assert cosine_per_sample(run_once(second, x), expected).min().item() >= BARS["fp32"]
    copy = str(tmp_path / "entry")  # damaged on a copy: the session's entry stays good for the tests after this
    shutil.copytree(second.artifact_path, copy)
    assert verify(copy) is None
    package = os.path.join(copy, inductor.PACKAGE_FILE)
    with open(package, "r+b") as f:
        f.seek(os.path.getsize(package) // 2)
        f.write(b"tampered")
    assert verify(copy) == f"{inductor.PACKAGE_FILE} changed"


# ---- on a GPU: every CUDA-capable engine against eager fp32 on the CPU, levers on, off and auto ----

def cuda_engines() -> list[str]:
    return [k for k in ("torch", "torchscript", "inductor", "tensorrt", "onnxruntime") if "cuda" in
            engines.module_of(k).DEVICES]


@pytest.fixture(scope="module")
def gpu_cache(tmp_path_factory) -> ArtifactCache:
    return ArtifactCache(str(tmp_path_factory.mktemp("gpu-cache")))


@pytest.mark.cuda
@pytest.mark.parametrize("setting", ["auto", "on", "off"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("key", cuda_engines())
def test_cuda_engine_matches_eager(key, precision, setting, unet64, gpu_cache):
    reason = engines.missing(key, CUDA)
    if reason:
        pytest.skip(reason)
    if precision not in engines.module_of(key).PRECISIONS:
        pytest.skip(f"{key} has no {precision}")
    if key == "onnxruntime":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            pytest.skip("onnxruntime has no CUDA provider here: pip install onnxruntime-gpu")
    model, x, expected, twin = unet64
    # inductor in its default mode here: max-autotune's search would take minutes per build (it has its own test).
    options = EngineOptions(cache=gpu_cache, channels_last=setting, cudnn_benchmark=setting, cuda_graphs=setting,
                            inductor_mode="default")
    engine = engines.load(key, model, SHAPE, CUDA, precision, options)
    wanted = choose_levers(key, "cuda", precision, 1, setting, setting, setting)
    assert engine.levers == wanted.names()
    flipped = torch.flip(x, [3])
    with torch.no_grad():
        expected_flipped = twin(flipped)
    # Three calls, each checked: a graph that replayed a stale input or output buffer fails the second or third.
    for inputs, want in ((x, expected), (flipped, expected_flipped), (x, expected)):
        assert cosine_per_sample(run_once(engine, inputs), want).min().item() >= BARS[precision]


@pytest.mark.cuda
def test_cuda_graph_outputs_outlive_the_next_replay(unet64):
    model, x, _, _ = unet64
    engine = engines.load("torch", model, SHAPE, CUDA, "fp16", EngineOptions(cuda_graphs="on"))
    assert "CUDA graph" in engine.levers
    first = engine.run(engine.prepare(x))
    kept = first.clone()
    engine.run(engine.prepare(torch.rand(SHAPE)))
    torch.cuda.synchronize()
    assert torch.equal(first, kept)


@pytest.mark.cuda
@pytest.mark.slow
def test_inductor_max_autotune_package_loads_on_the_second_run(unet64, tmp_path):
    _, x, expected, _ = unet64
    first, second = built_twice(unet64.model, CUDA, "fp16", ArtifactCache(str(tmp_path)))
    assert first.artifact == "compiled"
    assert "max-autotune" in second.timed
    assert cosine_per_sample(run_once(second, x), expected).min().item() >= BARS["fp16"]
