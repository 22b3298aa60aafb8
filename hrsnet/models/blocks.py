"""Residual units and small conv helpers shared by every High-Resolution Network preset.

Attribute names (conv1, bn1, downsample, ...) follow the official HRNet code, so its
checkpoints (and timm's ``hrnet_w*``) load into our ``hrnet_official`` preset unchanged.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    """3x3 convolution with padding 1 (keeps the size at stride 1, halves it, rounding up, at stride 2)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, padding=0, bias=bias)


def conv_bn(
    in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, bias: bool = False, relu: bool = True
) -> nn.Sequential:
    """conv -> BatchNorm (-> ReLU): indices 0, 1 (, 2) as in the official HRNet code."""
    conv = (conv3x3 if kernel_size == 3 else conv1x1)(in_channels, out_channels, stride, bias)
    layers: list[nn.Module] = [conv, nn.BatchNorm2d(out_channels)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """Post-activation residual unit of the original HRNet: conv-BN-ReLU-conv-BN, add, ReLU."""

    def __init__(self, channels: int, bias: bool = False):
        super().__init__()
        self.conv1 = conv3x3(channels, channels, bias=bias)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels, bias=bias)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        # In place, as timm: BatchNorm's backward does not need its output, and a fresh
        # full-resolution tensor per add costs allocations (page faults on a CPU).
        out += x
        return F.relu(out, inplace=True)


class PreActBlock(nn.Module):
    """Pre-activation residual unit (He et al. 2016): BN-ReLU-conv-BN-ReLU-conv, add, no ReLU after.

    ``bias``: the released notebooks keep PyTorch's default conv bias here too, as in every other
    conv of theirs (608 x C parameters in the report's HRNet).
    """

    def __init__(self, channels: int, bias: bool = False):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv1 = conv3x3(channels, channels, bias=bias)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = conv3x3(channels, channels, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Not in place: x itself is needed for the identity path.
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out), inplace=True))
        out += x  # a convolution's backward does not need its output
        return out


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 bottleneck (expansion 4) with a projection shortcut when widths differ.

    ``activation_after_add=True`` is the standard unit (ReLU after the residual sum), used in
    stage 1 by every preset and in the official classification head. ``False`` is the report's
    head unit: the ReLU closes the residual branch, before the sum, and nothing follows it.
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, bias: bool = False, activation_after_add: bool = True):
        super().__init__()
        out_channels = planes * self.expansion
        self.activation_after_add = activation_after_add
        self.conv1 = conv1x1(in_channels, planes, bias=bias)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, bias=bias)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_channels, bias=bias)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample = (
            nn.Sequential(conv1x1(in_channels, out_channels, bias=bias), nn.BatchNorm2d(out_channels))
            if in_channels != out_channels
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        if self.activation_after_add:
            out += shortcut
            return F.relu(out, inplace=True)
        # Not in place: ReLU's backward needs its own output unchanged.
        return F.relu(out, inplace=True) + shortcut
