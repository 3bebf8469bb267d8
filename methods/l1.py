"""l1: filter L1 norm (Li, Kadav, Durdanovic, Samet, Graf; "Pruning Filters for Efficient ConvNets",
ICLR 2017, arXiv 1608.08710).

Prune a trained dense model once, then fine-tune (paper: 40 epochs at a constant lr 0.001, the
``paper`` preset's fine-tune schedule). The importance of an output channel is the L1 norm of its
filter. Inside a layer that is exactly the paper's ranking. Across layers, global rules (a FLOPs
target) need comparable scores, so by default the norm is divided by the filter's number of
weights (mean |w|); a per-layer ranking is unchanged by that. Li et al.'s named configurations
(``--plan l1-a`` / ``l1-b``) fix the kept counts per layer and use the scores only to pick filters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.api import Context, Method
from bench.units import module_by_name


@dataclass(frozen=True)
class L1Config:
    """``per_weight``: divide each filter's L1 norm by its number of weights (C_in * k * k)."""

    per_weight: bool = True


class L1Norm(Method):
    name = "l1"
    description = "filter L1 norm, prune the trained dense model once, fine-tune (Li et al. 2017)"
    Config = L1Config
    start = "dense"

    def importance(self, model: nn.Module, ctx: Context) -> dict[str, torch.Tensor]:
        scores = {}
        for unit in ctx.units:
            weight = module_by_name(model, unit.producer).weight.detach()
            norms = weight.abs().flatten(1).sum(1)
            scores[unit.name] = norms / weight[0].numel() if self.config.per_weight else norms
        return scores
