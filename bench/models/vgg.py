"""CIFAR VGGs: conv3x3-BN-ReLU stacks with max-pooling, as the pruning papers define them.

- ``vgg16``: Li et al. (2017): 13 convs, then Linear(512,512)+BN1d+ReLU+Linear(512,classes).
- ``vgg19``: Network Slimming (Liu et al. 2017): 16 convs, then one Linear(512,classes).
Convs carry no bias (BN follows each). After the last conv the 2x2 map (32 px input) is averaged,
adaptively, so 64 px inputs work too.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.units import PrunableUnit, chain_unit

VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
VGG19_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512,
)  # fmt: skip


class CifarVGG(nn.Module):
    """VGG for 32x32 (or 64x64) inputs. ``features.<i>`` are convs, BNs, ReLUs and pools in order."""

    def __init__(self, cfg: tuple[int | str, ...], num_classes: int = 10, hidden: int | None = None) -> None:
        super().__init__()
        self.features = _make_features(cfg)
        width = [c for c in cfg if isinstance(c, int)][-1]
        self.pool = nn.AdaptiveAvgPool2d(1)
        if hidden is None:
            self.classifier = nn.Sequential(nn.Linear(width, num_classes))
        else:
            self.classifier = nn.Sequential(
                nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
            )
        self.init_weights()

    def init_weights(self) -> None:
        """Kaiming-normal (fan-out) convs, unit-gamma BNs; linears keep their default init."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def convs(self) -> list[str]:
        """Qualified names of the convs in forward order (conv id k of Li et al. is index k-1)."""
        return [f"features.{i}" for i, m in enumerate(self.features) if isinstance(m, nn.Conv2d)]

    def prunable_units(self) -> list[PrunableUnit]:
        """Every conv's output channels; the last conv's consumer is the first linear layer."""
        convs = self.convs()
        consumers = [*convs[1:], "classifier.0"]
        units = []
        for conv, consumer in zip(convs, consumers, strict=True):
            index = int(conv.split(".")[1])
            channels = self.features[index].out_channels
            units.append(chain_unit(conv, channels, f"features.{index + 1}", (consumer,)))
        return units

    def feature_modules(self, kind: str = "blocks") -> list[str]:
        """Each conv's output after BN and ReLU: the ReLU modules, in order (a VGG's blocks are its
        layers, so ``kind`` changes nothing)."""
        return [f"features.{i}" for i, m in enumerate(self.features) if isinstance(m, nn.ReLU)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def _make_features(cfg: tuple[int | str, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_channels = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        assert isinstance(v, int)  # cfg is a module constant, not user input
        layers += [nn.Conv2d(in_channels, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
        in_channels = v
    return nn.Sequential(*layers)
