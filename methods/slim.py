"""slim: Network Slimming (Liu, Li, Shen, Huang, Yan, Zhang; "Learning Efficient Convolutional
Networks through Network Slimming", ICCV 2017, arXiv 1708.06519).

Sparsity training from scratch adds ``lam * sum |gamma|`` over every BN scale, applied as the
subgradient ``gamma.grad += lam * sign(gamma)`` after backward, on every BN of the model (so on every
BN of a coupled group). The importance of a channel is the |gamma| of the BN after its conv; where a
unit is a coupled group (DepGraph: the BNs before a timm ResNet's residual adds), the mean |gamma|
over the group's BNs (``bn_gamma``, Torch-Pruning's default group reduction). Allocation is one
global threshold (``prune.channel_fraction``, e.g. 0.7 = 70% of channels pruned, or a FLOPs target).
Paper: gamma initialised to 0.5, lam 1e-4 for VGG and 1e-5 for ResNets, both phases 160 epochs,
batch 64, lr 0.1 /10 at 50% and 75%.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from bench.api import Context, Method, batchnorms, bn_gamma


@dataclass(frozen=True)
class SlimConfig:
    """``lam``: L1 weight on BN scales (per unit of summed |gamma|); None = 1e-4 for VGG, 1e-5 otherwise.
    ``gamma_init``: every BN scale starts at this value (paper: 0.5); None keeps the model's init."""

    lam: float | None = None
    gamma_init: float | None = 0.5

    def __post_init__(self) -> None:
        if self.lam is not None and self.lam < 0:
            raise ValueError(f"lam must be >= 0, got {self.lam}")


class NetworkSlimming(Method):
    name = "slim"
    description = "L1 on BN scales during training from scratch, global |gamma| threshold (Liu et al. 2017)"
    Config = SlimConfig
    start = "scratch"
    sparsity_training = True

    def setup(self, model: nn.Module, ctx: Context) -> None:
        if self.config.lam is None:
            lam = 1e-4 if ctx.model_name.startswith("vgg") else 1e-5
            self.config = dataclasses.replace(self.config, lam=lam)
        if self.config.gamma_init is not None:
            with torch.no_grad():
                for bn in batchnorms(model):
                    bn.weight.fill_(self.config.gamma_init)

    def after_backward(self, model: nn.Module, ctx: Context) -> None:
        for bn in batchnorms(model):
            if bn.weight.grad is not None:
                bn.weight.grad.add_(torch.sign(bn.weight.detach()), alpha=self.config.lam)

    def importance(self, model: nn.Module, ctx: Context) -> dict[str, torch.Tensor]:
        return bn_gamma(model, ctx.units, needed_by="slim")

    def search_space(self, trial) -> dict:
        return {"lam": trial.suggest_float("lam", 1e-6, 1e-3, log=True)}
