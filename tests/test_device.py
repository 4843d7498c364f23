"""Device selection: accelerator requests without one, unknown names, the default, npu without torch_npu; the host."""
from __future__ import annotations

import pytest
import torch

from utils.device import describe_host, parse_device
from utils.errors import SampleError

CPU = torch.device("cpu")


@pytest.mark.parametrize("text", ["0", "cuda:0", "npu:1"])
def test_accelerator_request_without_one_is_an_error(text, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("utils.device.npu_available", lambda: False)
    with pytest.raises(SampleError, match="use --device cpu"):
        parse_device(text)


@pytest.mark.parametrize("text", ["gpu", "cuda:x", "tpu:0"])
def test_unknown_device(text):
    with pytest.raises(SampleError, match="unknown device"):
        parse_device(text)


def test_default_device_without_accelerator_is_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("utils.device.npu_available", lambda: False)
    assert parse_device(None) == CPU and parse_device("CPU") == CPU


def test_npu_without_a_registered_device_type_is_a_clear_error(monkeypatch):
    """A host with torch_aie but no torch_npu: torch cannot parse `npu:0`; say what to install."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("utils.device.npu_available", lambda: True)
    monkeypatch.setattr("utils.device._count", lambda kind: 1)
    if hasattr(torch, "npu"):
        pytest.skip("torch_npu is installed here")
    with pytest.raises(SampleError, match="install torch_npu"):
        parse_device(None)


def test_host_is_described():
    host = describe_host(CPU)
    assert host["cpu"] and host["cpu_count"] >= 1 and "accelerator" not in host
    assert set(host["isa"]) <= {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8",
                                "amx_fp16"}
