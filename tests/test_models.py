"""Architectures keep the reference implementations' names, sizes and shapes."""
from __future__ import annotations

import pytest
import torch

import models
from models.unet import UNet
from models.unetpp import NestedUNet


def test_unet_matches_pytorch_unet_layout():
    net = UNet(3, 2)
    sd = net.state_dict()
    assert len(sd) == 118
    assert sum(p.numel() for p in net.parameters()) == 31_037_698
    assert "inc.double_conv.0.weight" in sd and "up1.up.weight" in sd and "outc.conv.weight" in sd
    assert "inc.double_conv.0.bias" not in sd  # conv before BN has no bias, as in Pytorch-UNet


def test_unet_bilinear_has_no_transposed_convs():
    sd = UNet(3, 2, bilinear=True).state_dict()
    assert "up1.up.weight" not in sd
    assert sd["down4.maxpool_conv.1.double_conv.0.weight"].shape[0] == 512


def test_nested_unet_matches_reference_layout():
    sd = NestedUNet(2).state_dict()
    assert len(sd) == 212
    for name in ("conv0_0", "conv1_0", "conv4_0", "conv0_4", "final"):
        assert any(k.startswith(name + ".") for k in sd)
    assert len(NestedUNet(2, deep_supervision=True).state_dict()) == 218


@pytest.mark.parametrize("name", ["unet", "unet++"])
def test_forward_shape(name):
    model, _ = models.create_model(name)
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 96))
    assert out.shape == (2, 2, 64, 96)


def test_unet_handles_sizes_not_divisible_by_16():
    with torch.no_grad():
        assert UNet(3, 1)(torch.rand(1, 3, 50, 70)).shape == (1, 1, 50, 70)


@pytest.mark.parametrize("alias", ["UNet++", "unetpp", "nested_unet", "NestedUNet"])
def test_aliases(alias):
    assert models.canonical_name(alias) == "unet++"


def test_unknown_model_lists_names():
    with pytest.raises(KeyError, match="valid names: unet, unet\\+\\+"):
        models.canonical_name("segformer")
