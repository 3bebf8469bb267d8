"""Shared channel scorers, in the style of Torch-Pruning's ``importance.py``: each takes the model and
its prunable units and returns one detached score tensor per unit (``{unit.name: (channels,)}``).

Plugins combine these instead of importing each other: l1 and ffr share the filter L1 norm, slim and
ffr the BN scale. Every function here is public plugin surface (re-exported by ``bench.api``).
"""

from __future__ import annotations

import torch
from torch import nn

from bench.errors import BenchError
from bench.units import PrunableUnit, module_by_name

BN_TYPES = (nn.BatchNorm2d,)
FILTER_NORMALIZATIONS = ("layer_mean", "per_weight", "none")

Scores = dict[str, torch.Tensor]


def layer_mean(scores: torch.Tensor) -> torch.Tensor:
    """``scores / scores.mean()``: the layer's average channel scores 1, whatever the layer's width
    or fan-in (an all-zero layer stays zero instead of dividing by zero)."""
    return scores / scores.mean().clamp_min(torch.finfo(scores.dtype).tiny)


def filter_l1(model: nn.Module, units: list[PrunableUnit], normalize: str = "layer_mean") -> Scores:
    """L1 norm of each output filter of the unit's producer conv (Li et al., ICLR 2017), scaled for a
    global comparison: by the layer's mean filter norm, by the filter's number of weights, or not."""
    if normalize not in FILTER_NORMALIZATIONS:
        raise BenchError(f"normalize must be one of {', '.join(FILTER_NORMALIZATIONS)}, got '{normalize}'")
    return {
        unit.name: _normalized_l1(module_by_name(model, unit.producer).weight.detach(), normalize) for unit in units
    }


def _normalized_l1(weight: torch.Tensor, normalize: str) -> torch.Tensor:
    norms = weight.abs().flatten(1).sum(1)
    if normalize == "layer_mean":
        return layer_mean(norms)
    if normalize == "per_weight":
        return norms / weight[0].numel()
    return norms


def unit_bn(model: nn.Module, unit: PrunableUnit, needed_by: str = "this scorer") -> nn.BatchNorm2d:
    """The BN that scales this unit's channels (the first BN among its 'out' members); ``needed_by``
    names the method in the error raised when there is none."""
    for name in unit.modules("out"):
        module = module_by_name(model, name)
        if isinstance(module, BN_TYPES):
            return module
    raise BenchError(f"{needed_by} needs a BatchNorm after '{unit.name}', and this model has none there")


def bn_gamma(model: nn.Module, units: list[PrunableUnit], needed_by: str = "this scorer") -> Scores:
    """|gamma| of the BN that scales each unit's channels (network slimming, Liu et al. 2017)."""
    return {unit.name: unit_bn(model, unit, needed_by).weight.detach().abs().clone() for unit in units}


def batchnorms(model: nn.Module) -> list[nn.BatchNorm2d]:
    """Every affine BatchNorm2d of the model, in module order."""
    return [m for m in model.modules() if isinstance(m, BN_TYPES) and m.weight is not None]
