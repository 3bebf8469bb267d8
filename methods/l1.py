"""l1: filter L1 norm (Li, Kadav, Durdanovic, Samet, Graf; "Pruning Filters for Efficient ConvNets",
ICLR 2017, arXiv 1608.08710).

Prune a trained dense model once, then fine-tune (paper: 40 epochs at a constant lr 0.001, the
``paper`` preset's fine-tune schedule). The importance of an output channel is the L1 norm of its
filter; inside a layer that is exactly the paper's ranking. Where a unit is a coupled group
(DepGraph, e.g. the convs summed by a timm ResNet's residual adds), every conv producing the
channels is scored, each normalised as below, and the group's score is their mean (``filter_l1``,
Torch-Pruning's default group reduction); a plain conv -> BN unit keeps the paper's score.

Across layers the paper never compares norms: it prunes the same fraction p of every layer of a
stage. A global rule (our FLOPs target) must compare them, and raw norms do not compare: with
fan-out initialisation, weights of 64-wide layers are half the size of 16-wide ones, and a
global threshold on mean |w| strips the wide layers to one channel first (measured on resnet20
at a 50% FLOPs target: stage 3 kept 1 of 64 channels, params -85%). So by default each norm is
divided by its layer's mean norm (``normalize="layer_mean"``): the threshold then removes the
relatively weakest filters of every layer, close to the paper's uniform p (same measurement:
about half of every layer kept, params -51%). ``"per_weight"`` (mean |w|) and ``"none"`` (raw
L1) are there for comparison. Named plans (``--plan l1-a``) fix the per-layer counts, as in the
paper, and use the scores only to choose filters, where every normalisation agrees.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.api import FILTER_NORMALIZATIONS, Context, Method, filter_l1

NORMALIZATIONS = FILTER_NORMALIZATIONS


@dataclass(frozen=True)
class L1Config:
    """``normalize``: how filter L1 norms are scaled before a global comparison (see module docs):
    by the layer's mean filter norm, by the filter's number of weights (C_in*k*k), or not at all."""

    normalize: str = "layer_mean"

    def __post_init__(self) -> None:
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got '{self.normalize}'")


class L1Norm(Method):
    name = "l1"
    description = "filter L1 norm, prune the trained dense model once, fine-tune (Li et al. 2017)"
    Config = L1Config
    start = "dense"

    def importance(self, model: nn.Module, ctx: Context) -> dict[str, torch.Tensor]:
        return filter_l1(model, ctx.units, self.config.normalize)

    def search_space(self, trial) -> dict:
        return {"normalize": trial.suggest_categorical("normalize", list(NORMALIZATIONS))}
