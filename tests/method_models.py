"""Small models shared by method tests (pytest puts tests/ on sys.path)."""

from __future__ import annotations

import torch
from torch import nn

from bench.api import Context
from bench.units import chain_unit


def tiny() -> tuple[nn.Module, Context]:
    """conv(3->4) -> conv(4->6) -> pool 2x2 -> flatten -> linear(24->3): unit '0' is consumed by
    conv '3', unit '3' by the linear layer (4 features per channel)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(24, 3),
    )
    units = [chain_unit("0", 4, "1", ("3",)), chain_unit("3", 6, "4", ("8",))]
    return model, Context("tiny", units, torch.device("cpu"), 0, torch.Generator().manual_seed(0), input_size=8)
