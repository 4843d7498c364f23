"""UNet++ is the seed's reference network: bigmb/Unet-Segmentation-Pytorch-Nest-of-Unets `NestedUNet(in_ch, out_ch)`.

The reference is rebuilt here independently of models/unetpp.py, from its published layer list (conv_block_nested
= conv1 / bn1 / ReLU / conv2 / bn2 / ReLU; node X(i, j) concatenates X(i, 0..j-1) with the upsampled X(i+1, j-1);
bilinear `Up` with align_corners=True; a 1x1 `final`), so a wrong width, a wrong concatenation order or a missing
layer in the project's network fails here.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import models
from utils.errors import SampleError


class RefBlock(nn.Module):
    def __init__(self, in_ch, mid_ch, out_ch):
        super().__init__()
        self.activation = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_ch, mid_ch, kernel_size=3, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(mid_ch)
        self.conv2 = nn.Conv2d(mid_ch, out_ch, kernel_size=3, padding=1, bias=True)
        self.bn2 = nn.BatchNorm2d(out_ch)

    def forward(self, x):
        x = self.activation(self.bn1(self.conv1(x)))
        return self.activation(self.bn2(self.conv2(x)))


class RefNestedUNet(nn.Module):
    """Node X(i, j), i = depth 0..4, j = column 0..4-i; its input is j * filters[i] + filters[i + 1] channels for
    j > 0 (the row's earlier nodes plus the upsampled node below), the previous row's width for j = 0."""

    def __init__(self, in_ch=3, out_ch=2, n1=64, heads=1):
        super().__init__()
        filters = [n1 * 2 ** i for i in range(5)]
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.Up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        for i in range(5):
            for j in range(5 - i):
                if j == 0:
                    in_c = in_ch if i == 0 else filters[i - 1]
                else:
                    in_c = filters[i] * j + filters[i + 1]
                setattr(self, f"conv{i}_{j}", RefBlock(in_c, filters[i], filters[i]))
        if heads == 1:
            self.final = nn.Conv2d(filters[0], out_ch, kernel_size=1)
        else:  # 4uiiurz1's deep supervision: one head per column of row 0, the last one is the full-depth output
            for k in range(1, heads + 1):
                setattr(self, f"final{k}", nn.Conv2d(filters[0], out_ch, kernel_size=1))
        self.heads = heads

    def forward(self, x):
        nodes = {}
        for i in range(5):
            nodes[i, 0] = getattr(self, f"conv{i}_0")(x if i == 0 else self.pool(nodes[i - 1, 0]))
        for j in range(1, 5):
            for i in range(5 - j):
                inputs = [nodes[i, k] for k in range(j)] + [self.Up(nodes[i + 1, j - 1])]
                nodes[i, j] = getattr(self, f"conv{i}_{j}")(torch.cat(inputs, 1))
        head = self.final if self.heads == 1 else getattr(self, f"final{self.heads}")
        return head(nodes[0, 4])


def _randomise_bn(net: nn.Module) -> nn.Module:
    """Non-trivial running statistics, so eval-mode batch norm is not the identity."""
    gen = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return net.eval()


@pytest.mark.parametrize("n1,heads", [(64, 1), (32, 1), (32, 4)])
def test_reference_state_dict_loads_strictly_and_gives_the_same_logits(tmp_path, n1, heads):
    torch.manual_seed(0)
    ref = _randomise_bn(RefNestedUNet(3, 2, n1=n1, heads=heads))
    path = tmp_path / "ref.pth"
    torch.save(ref.state_dict(), path)

    model, info = models.create_model("unet++", str(path))
    assert info["base_width"] == n1 and info["deep_supervision"] == (heads == 4)
    assert info["parameters"] == sum(p.numel() for p in ref.parameters())
    assert f"n1={n1}" in info["variant"]
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)


def test_default_unetpp_is_the_reference_width():
    model, info = models.create_model("unet++")
    ref = RefNestedUNet(3, 2, n1=64)
    assert info["base_width"] == 64 and "reference" in info["variant"]
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters())
    assert model.state_dict()["conv4_0.conv2.weight"].shape == (1024, 1024, 3, 3)


def test_base_width_builds_random_networks_of_that_width():
    _, info = models.create_model("unet++", base_width=32)
    assert info["parameters"] == sum(p.numel() for p in RefNestedUNet(3, 2, n1=32).parameters())
    assert "not the reference" in info["variant"]


def test_base_width_that_contradicts_the_checkpoint_is_refused(tmp_path):
    path = tmp_path / "n32.pth"
    torch.save(RefNestedUNet(3, 2, n1=32).state_dict(), path)
    with pytest.raises(SampleError, match="--base_width 64 does not match .* 32 filters"):
        models.create_model("unet++", str(path), base_width=64)


def test_one_class_reference_loads(tmp_path):
    """The reference's default is NestedUNet(in_ch=3, out_ch=1): one logit, foreground where it is > 0. (At n1 = 8:
    the head's width does not depend on n1, and n1 = 64 loading is the first test's.)"""
    path = tmp_path / "one.pth"
    torch.save(RefNestedUNet(3, 1, n1=8).state_dict(), path)
    model, info = models.create_model("unet++", str(path))
    assert info["n_classes"] == 1 and info["base_width"] == 8
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 1, 32, 32)
