"""CIFAR ResNets of He et al. (2016), Section 4.2: 3 stages of n basic blocks, widths 16/32/64.

Option A shortcuts: where the shape changes, the identity is subsampled by stride 2 and zero-padded
in channels, so shortcuts carry no parameters. Convs have no bias; BN follows every conv. With
depth 6n+2 this gives resnet20/32/56/110 with 0.27M/0.46M/0.85M/1.73M params on 10 classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bench.units import PrunableUnit, chain_unit


class ShortcutA(nn.Module):
    """Parameter-free shortcut: spatial subsample by ``stride`` and zero-pad ``pad`` channels per side."""

    def __init__(self, stride: int, pad: int) -> None:
        super().__init__()
        self.stride, self.pad = stride, pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad, self.pad))
        return x


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus shortcut, then ReLU. ``conv1``'s output is the internal channel."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()  # a module (not F.relu) so that a hook sees the internal channel's features
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        changes_shape = stride != 1 or in_planes != planes
        self.shortcut = ShortcutA(stride, (planes - in_planes) // 2) if changes_shape else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images; global average pooling makes it size-agnostic (32 or 64 px)."""

    def __init__(self, depth: int, num_classes: int = 10, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()  # a module (not F.relu) so that a hook sees the stem's output x_0
        in_planes = widths[0]
        stages = []
        for i, planes in enumerate(widths):
            layers = []
            for b in range(blocks):
                stride = 2 if (i > 0 and b == 0) else 1
                layers.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(widths[-1], num_classes)
        self.init_weights()

    def init_weights(self) -> None:
        """Kaiming-normal (fan-out) convs, unit-gamma BNs; linears keep their default init."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def blocks(self) -> list[tuple[str, BasicBlock]]:
        """All basic blocks in forward order, with their qualified names."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, BasicBlock)]

    def prunable_units(self) -> list[PrunableUnit]:
        """The internal-channel rule: only each block's conv1 output (input of its conv2) is pruned.

        The channels that feed the residual additions are coupled across a stage by the option-A
        shortcuts, and the published tables leave them alone (methods/README.md).
        """
        return [chain_unit(f"{n}.conv1", b.conv1.out_channels, f"{n}.bn1", (f"{n}.conv2",)) for n, b in self.blocks()]

    def feature_modules(self, kind: str = "blocks") -> list[str]:
        """The modules whose outputs form the feature flow: the stem after its ReLU (x_0), then each
        block (``"blocks"``), or each block's internal conv+BN+ReLU output before the block's own
        (``"layers"``: every conv+BN+ReLU output in forward order, the pruned channel included)."""
        if kind == "layers":
            return ["relu", *[name for n, _ in self.blocks() for name in (f"{n}.relu1", n)]]
        return ["relu", *[n for n, _ in self.blocks()]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)
