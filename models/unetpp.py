"""UNet++ (Zhou et al.) with the module names every NestedUNet shares, so their checkpoints load strictly.

The seed's reference is bigmb/Unet-Segmentation-Pytorch-Nest-of-Unets `NestedUNet` (base width n1 = 64). Others
differ only in the base width (4uiiurz1's is 32) and optional deep-supervision heads; the width is read off a
checkpoint's `conv0_0.conv1.weight` (models/checkpoint.py).
"""
from __future__ import annotations

import torch
from torch import nn

REFERENCE_WIDTH = 64  # n1 of the reference NestedUNet: filters 64, 128, 256, 512, 1024


class VGGBlock(nn.Module):
    """conv 3x3 => BN => ReLU => conv 3x3 => BN => ReLU."""

    def __init__(self, in_channels: int, middle_channels: int, out_channels: int):
        super().__init__()
        self.relu = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_channels, middle_channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(middle_channels)
        self.conv2 = nn.Conv2d(middle_channels, out_channels, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(x)))


class NestedUNet(nn.Module):
    """UNet++: node X(i,j) sees every earlier node of its row and the upsampled X(i+1,j-1).

    With deep_supervision the checkpoint has four heads (final1..final4); inference uses final4, the head on
    the full-depth path, so the output is always one (N, num_classes, H, W) tensor. H and W must be multiples
    of 16. `base_width` is n1: the filters are n1 * (1, 2, 4, 8, 16).
    """

    def __init__(self, num_classes: int = 2, input_channels: int = 3, deep_supervision: bool = False,
                 base_width: int = REFERENCE_WIDTH):
        super().__init__()
        f = tuple(base_width * 2 ** i for i in range(5))
        self.base_width = base_width
        self.n_channels = input_channels
        self.n_classes = num_classes
        self.deep_supervision = deep_supervision
        self.pool = nn.MaxPool2d(2, 2)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)

        self.conv0_0 = VGGBlock(input_channels, f[0], f[0])
        self.conv1_0 = VGGBlock(f[0], f[1], f[1])
        self.conv2_0 = VGGBlock(f[1], f[2], f[2])
        self.conv3_0 = VGGBlock(f[2], f[3], f[3])
        self.conv4_0 = VGGBlock(f[3], f[4], f[4])

        self.conv0_1 = VGGBlock(f[0] + f[1], f[0], f[0])
        self.conv1_1 = VGGBlock(f[1] + f[2], f[1], f[1])
        self.conv2_1 = VGGBlock(f[2] + f[3], f[2], f[2])
        self.conv3_1 = VGGBlock(f[3] + f[4], f[3], f[3])

        self.conv0_2 = VGGBlock(f[0] * 2 + f[1], f[0], f[0])
        self.conv1_2 = VGGBlock(f[1] * 2 + f[2], f[1], f[1])
        self.conv2_2 = VGGBlock(f[2] * 2 + f[3], f[2], f[2])

        self.conv0_3 = VGGBlock(f[0] * 3 + f[1], f[0], f[0])
        self.conv1_3 = VGGBlock(f[1] * 3 + f[2], f[1], f[1])

        self.conv0_4 = VGGBlock(f[0] * 4 + f[1], f[0], f[0])

        if deep_supervision:
            self.final1 = nn.Conv2d(f[0], num_classes, kernel_size=1)
            self.final2 = nn.Conv2d(f[0], num_classes, kernel_size=1)
            self.final3 = nn.Conv2d(f[0], num_classes, kernel_size=1)
            self.final4 = nn.Conv2d(f[0], num_classes, kernel_size=1)
        else:
            self.final = nn.Conv2d(f[0], num_classes, kernel_size=1)

    def forward(self, x):
        x0_0 = self.conv0_0(x)
        x1_0 = self.conv1_0(self.pool(x0_0))
        x0_1 = self.conv0_1(torch.cat([x0_0, self.up(x1_0)], 1))

        x2_0 = self.conv2_0(self.pool(x1_0))
        x1_1 = self.conv1_1(torch.cat([x1_0, self.up(x2_0)], 1))
        x0_2 = self.conv0_2(torch.cat([x0_0, x0_1, self.up(x1_1)], 1))

        x3_0 = self.conv3_0(self.pool(x2_0))
        x2_1 = self.conv2_1(torch.cat([x2_0, self.up(x3_0)], 1))
        x1_2 = self.conv1_2(torch.cat([x1_0, x1_1, self.up(x2_1)], 1))
        x0_3 = self.conv0_3(torch.cat([x0_0, x0_1, x0_2, self.up(x1_2)], 1))

        x4_0 = self.conv4_0(self.pool(x3_0))
        x3_1 = self.conv3_1(torch.cat([x3_0, self.up(x4_0)], 1))
        x2_2 = self.conv2_2(torch.cat([x2_0, x2_1, self.up(x3_1)], 1))
        x1_3 = self.conv1_3(torch.cat([x1_0, x1_1, x1_2, self.up(x2_2)], 1))
        x0_4 = self.conv0_4(torch.cat([x0_0, x0_1, x0_2, x0_3, self.up(x1_3)], 1))

        if self.deep_supervision:
            return self.final4(x0_4)
        return self.final(x0_4)
