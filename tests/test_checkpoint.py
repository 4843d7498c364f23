"""Every checkpoint format users have loads strictly; everything else is refused with a useful message."""
from __future__ import annotations

import pytest
import torch

import models
from models.unet import UNet
from models.unetpp import NestedUNet
from utils.errors import SampleError


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _formats(state):
    return {
        "plain": state,  # Pytorch-UNet v3.0 release files
        "train.py": {**state, "mask_values": [0, 1]},
        "module.": {"module." + k: v for k, v in state.items()},
        "_orig_mod.": {"_orig_mod." + k: v for k, v in state.items()},
        "module._orig_mod.": {"module._orig_mod." + k: v for k, v in state.items()},
        "state_dict wrapper": {"state_dict": state, "epoch": 3},
        "model wrapper": {"model": state, "optimizer": {}},
    }


@pytest.mark.parametrize("fmt", list(_formats({})))
@pytest.mark.parametrize("name,net", [("unet", lambda: UNet(3, 2)), ("unet++", lambda: NestedUNet(2))])
def test_formats_load_strictly(tmp_path, fmt, name, net):
    source = net()
    for p in source.parameters():
        torch.nn.init.normal_(p)
    path = tmp_path / "ckpt.pth"
    torch.save(_formats(source.state_dict())[fmt], path)
    model, info = models.create_model(name, str(path))
    assert _same_weights(model, source)
    assert not model.training
    if fmt == "train.py":
        assert info["mask_values"] == [0, 1]


def test_shapes_inferred(tmp_path):
    path = tmp_path / "c.pth"
    torch.save(UNet(1, 1, bilinear=True).state_dict(), path)
    _, info = models.create_model("unet", str(path))
    assert (info["n_channels"], info["n_classes"], info["bilinear"]) == (1, 1, True)
    torch.save(NestedUNet(3, deep_supervision=True).state_dict(), path)
    model, info = models.create_model("unet++", str(path))
    assert info["n_classes"] == 3 and model.deep_supervision
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("given,saved,suggest", [("unet", NestedUNet, "unet\\+\\+"), ("unet++", UNet, "unet")])
def test_other_architecture_suggests_model_name(tmp_path, given, saved, suggest):
    path = tmp_path / "c.pth"
    torch.save(saved().state_dict(), path)
    with pytest.raises(SampleError, match=f"--model_name {suggest}$"):
        models.create_model(given, str(path))


def test_mismatch_names_keys(tmp_path):
    state = UNet(3, 2).state_dict()
    del state["outc.conv.bias"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "c.pth"
    torch.save(state, path)
    with pytest.raises(SampleError, match="1 missing: outc.conv.bias; 1 unexpected: extra.weight"):
        models.create_model("unet", str(path))


def test_pickled_model_is_refused(tmp_path):
    path = tmp_path / "whole.pth"
    torch.save(UNet(3, 2), path)
    with pytest.raises(SampleError, match="refused to unpickle.*model.state_dict"):
        models.create_model("unet", str(path))


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04broken zip"])
def test_corrupt_checkpoint(tmp_path, content):
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(SampleError, match="not a PyTorch checkpoint"):  # issue 8: the one line for any non-checkpoint
        models.create_model("unet", str(path))


def test_missing_checkpoint(tmp_path):
    with pytest.raises(SampleError, match="checkpoint not found"):
        models.create_model("unet", str(tmp_path / "nope.pth"))


def test_real_checkpoint_loads(checkpoint):
    model, info = models.create_model("unet", checkpoint)
    assert info["mask_values"] == [0, 1] and info["n_classes"] == 2 and info["bilinear"] is False
    assert sum(p.numel() for p in model.parameters()) == 31_037_698
