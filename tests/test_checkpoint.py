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


def _randomised(net: torch.nn.Module) -> torch.nn.Module:
    """Weights no fresh build has, so equal weights after loading prove they came from the file."""
    for p in net.parameters():
        torch.nn.init.normal_(p)
    return net


def _narrow() -> torch.nn.Module:
    """NestedUNet at base width 8 (0.57 M parameters): the unwrapping does not depend on the network's size."""
    return _randomised(NestedUNet(2, base_width=8))


@pytest.fixture(scope="module")
def full_size(tmp_path_factory) -> dict:
    """The full-size UNet (31 M) and NestedUNet (36 M), each built and saved once for the module (270 MB of files,
    hence the slow tier): the UNet in train.py's format, the NestedUNet as a plain state dict."""
    folder = tmp_path_factory.mktemp("full-size")
    sources = {}
    for name, net, fmt in (("unet", UNet(3, 2), "train.py"), ("unet++", NestedUNet(2), "plain")):
        _randomised(net)
        path = str(folder / f"{name}.pth")
        torch.save(_formats(net.state_dict())[fmt], path)
        sources[name] = net, path
    return sources


@pytest.mark.parametrize("fmt", list(_formats({})))
def test_formats_load_strictly(tmp_path, fmt):
    source = _narrow()
    path = tmp_path / "ckpt.pth"
    torch.save(_formats(source.state_dict())[fmt], path)
    model, info = models.create_model("unet++", str(path))
    assert _same_weights(model, source) and info["base_width"] == 8
    assert not model.training
    if fmt == "train.py":
        assert info["mask_values"] == [0, 1]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["unet", "unet++"])
def test_full_size_models_load_strictly(full_size, name):
    source, path = full_size[name]
    model, info = models.create_model(name, path)
    assert _same_weights(model, source) and not model.training
    assert info["parameters"] == sum(p.numel() for p in source.parameters())
    assert info.get("mask_values") == ([0, 1] if name == "unet" else None)


def test_shapes_inferred(tmp_path):
    path = tmp_path / "c.pth"
    torch.save(UNet(1, 1, bilinear=True, base_width=8).state_dict(), path)
    _, info = models.create_model("unet", str(path))
    assert (info["n_channels"], info["n_classes"], info["bilinear"], info["base_width"]) == (1, 1, True, 8)
    assert "width 8, not Pytorch-UNet's 64" in info["variant"]
    with pytest.raises(SampleError, match="--base_width 64 does not match .* inc.double_conv.0.weight has 8 filters"):
        models.create_model("unet", str(path), base_width=64)
    state = UNet(1, 1, base_width=1).state_dict()  # a small file that claims a 4096-wide first layer
    state["inc.double_conv.0.weight"] = torch.zeros(4096, 1, 3, 3)
    torch.save(state, path)
    with pytest.raises(SampleError, match="has 4096 filters, past the widest network this sample builds"):
        models.create_model("unet", str(path))
    torch.save(NestedUNet(3, deep_supervision=True, base_width=8).state_dict(), path)
    model, info = models.create_model("unet++", str(path))
    assert info["n_classes"] == 3 and model.deep_supervision and info["base_width"] == 8
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("given,suggest", [("unet", "unet\\+\\+"), ("unet++", "unet")])
def test_other_architecture_suggests_model_name(request, tmp_path, given, suggest):
    if given == "unet":  # a NestedUNet's weights
        path = str(tmp_path / "c.pth")
        torch.save(_narrow().state_dict(), path)
    else:  # a UNet's: the shared checkpoint, already on disk
        path = request.getfixturevalue("checkpoint")
    with pytest.raises(SampleError, match=f"--model_name {suggest}$"):
        models.create_model(given, path)


def test_mismatch_names_keys(tmp_path):
    state = _narrow().state_dict()
    del state["final.bias"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "c.pth"
    torch.save(state, path)
    with pytest.raises(SampleError, match="1 missing: final.bias; 1 unexpected: extra.weight"):
        models.create_model("unet++", str(path))


def test_pickled_model_is_refused(tmp_path):
    path = tmp_path / "whole.pth"
    torch.save(NestedUNet(2, base_width=8), path)  # refused before anything is built: the size does not matter
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
    assert info["base_width"] == 64 and info["variant"] == "UNet (Pytorch-UNet, transposed-conv up)"
    assert sum(p.numel() for p in model.parameters()) == 31_037_698
