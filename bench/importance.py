"""Shared channel scorers, in the style of Torch-Pruning's ``importance.py``: each takes the model and
its prunable units and returns one detached score tensor per unit (``{unit.name: (channels,)}``).

Plugins combine these instead of importing each other: l1 and ffr share the filter L1 norm, slim and
ffr the BN scale, group_lasso and oicsr the per-channel group sums of squares. Every public name here
is plugin surface (re-exported by ``bench.api``).

Three layers of helpers, lowest first:

- per-layer normalisers of a score vector (:func:`layer_mean`, :func:`layer_share`), because a global
  allocation rule compares scores across layers whose weight scales differ;
- the members of a unit and how their scores combine (:func:`member_filters`, :func:`unit_bns`,
  :func:`reduce_group`): a DepGraph unit is a whole coupled group (on timm's resnet18 the unit of
  ``layer4.0.downsample.0`` holds three producer convs and three BNs), so a scorer scores every member
  and reduces, as Torch-Pruning's group importance does; a CIFAR chain unit has one of each;
- per-channel weight statistics of one unit that keep the autograd graph, so regularisers use them
  too (:func:`member_sq`, :func:`out_in_sq`, :func:`group_norm`);
- scorers ``(model, units) -> Scores`` (:func:`filter_l1`, :func:`group_l2`, :func:`out_in_energy`,
  :func:`bn_gamma`).
"""

from __future__ import annotations

import torch
from torch import nn

from bench.errors import BenchError
from bench.units import PrunableUnit, module_by_name

__all__ = [
    "BN_TYPES",
    "ENERGY_NORMALIZATIONS",
    "FILTER_NORMALIZATIONS",
    "GROUP_NORMALIZATIONS",
    "GROUP_REDUCTIONS",
    "Scores",
    "batchnorms",
    "bn_fold",
    "bn_gamma",
    "channel_sq",
    "filter_l1",
    "filter_sq",
    "group_l2",
    "group_norm",
    "is_affine_bn",
    "layer_mean",
    "layer_share",
    "member_filters",
    "member_producers",
    "member_sq",
    "out_in_energy",
    "out_in_sq",
    "reduce_group",
    "unit_bn",
    "unit_bns",
]

BN_TYPES = (nn.BatchNorm2d,)
FILTER_NORMALIZATIONS = ("layer_mean", "per_weight", "none")  # filter_l1
GROUP_NORMALIZATIONS = ("layer_mean", "none")  # group_l2
ENERGY_NORMALIZATIONS = ("layer_share", "layer_mean")  # out_in_energy
GROUP_REDUCTIONS = ("mean", "sum", "max", "prod", "first")  # reduce_group, Torch-Pruning's group_reduction
SQ_FLOOR = 1e-12  # a group norm is sqrt(max(sum of squares, this)): finite gradient at an all-zero group

Scores = dict[str, torch.Tensor]


# --- per-layer normalisers ---------------------------------------------------------------------


def layer_mean(scores: torch.Tensor) -> torch.Tensor:
    """``scores / scores.mean()``: the layer's average channel scores 1, whatever the layer's width
    or fan-in (an all-zero layer stays zero instead of dividing by zero)."""
    return scores / scores.mean().clamp_min(torch.finfo(scores.dtype).tiny)


def layer_share(scores: torch.Tensor) -> torch.Tensor:
    """``scores / scores.sum()``: the layer's scores sum to 1 (an all-zero layer stays zero)."""
    return scores / scores.sum().clamp_min(torch.finfo(scores.dtype).tiny)


def _check_normalize(normalize: str, valid: tuple[str, ...]) -> None:
    if normalize not in valid:
        raise BenchError(f"normalize must be one of {', '.join(valid)}, got '{normalize}'")


# --- the members of a unit, and one score from many ---------------------------------------------------


def member_filters(model: nn.Module, unit: PrunableUnit) -> list[torch.Tensor]:
    """For every conv/linear producing ``unit``'s channels (its "out" members, root first), the weight
    as (channels, -1): row i holds every weight of channel i's filter. Views of the parameters, so the
    autograd graph is kept; BN members are skipped (:func:`unit_bns`). Raises when a member's output
    width is not the unit's (a member that covers only part of the channels) or there is none."""
    filters = []
    for name in member_producers(model, unit):
        module = module_by_name(model, name)
        if module.weight.shape[0] != unit.channels:
            raise BenchError(
                f"'{name}' has {module.weight.shape[0]} output channels, unit '{unit.name}' has {unit.channels}"
            )
        filters.append(module.weight.reshape(unit.channels, -1))
    if not filters:
        raise BenchError(f"unit '{unit.name}' has no conv or linear producing its channels")
    return filters


def member_producers(model: nn.Module, unit: PrunableUnit) -> list[str]:
    """Names of the convs and linears producing ``unit``'s channels, in :func:`member_filters` order."""
    return [n for n in unit.modules("out") if isinstance(module_by_name(model, n), nn.Conv2d | nn.Linear)]


def is_affine_bn(module: nn.Module | None) -> bool:
    """Whether ``module`` is a BN with a learned scale gamma (one of ``BN_TYPES``, affine)."""
    return isinstance(module, BN_TYPES) and module.weight is not None


def bn_fold(bn: nn.BatchNorm2d, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """|gamma| / sqrt(running_var + eps), in ``dtype``: what the BN multiplies each channel of its
    input by in eval mode (a filter's BN-folded scale), detached."""
    return bn.weight.detach().to(dtype).abs() / (bn.running_var.detach().to(dtype) + bn.eps).sqrt()


def unit_bns(model: nn.Module, unit: PrunableUnit) -> list[nn.BatchNorm2d]:
    """Every affine BN scaling ``unit``'s channels (its "out" BN members, in member order; may be
    empty). Raises when one has a different width than the unit."""
    bns = []
    for name in unit.modules("out"):
        module = module_by_name(model, name)
        if is_affine_bn(module):
            if module.num_features != unit.channels:
                raise BenchError(
                    f"BN '{name}' has {module.num_features} features, unit '{unit.name}' has {unit.channels}"
                )
            bns.append(module)
    return bns


def reduce_group(per_member: list[torch.Tensor], how: str = "mean") -> torch.Tensor:
    """One (channels,) score from each member's (channels,) scores, as Torch-Pruning's
    ``GroupMagnitudeImportance(group_reduction=...)`` combines a group's layers (``_reduce``):
    ``"mean"`` (its default, and ours: every member counts equally, and a unit's score does not grow
    with its number of members, so units with one and with three producers compare), ``"sum"``,
    ``"max"``, ``"prod"``, or ``"first"`` (the root member only: the pre-group behaviour). A single
    member is returned as is, so a chain unit's score is exactly its one member's."""
    if how not in GROUP_REDUCTIONS:
        raise BenchError(f"group reduction must be one of {', '.join(GROUP_REDUCTIONS)}, got '{how}'")
    if not per_member:
        raise BenchError("reduce_group needs at least one member's scores, got none")
    if len(per_member) == 1 or how == "first":
        return per_member[0]
    stacked = torch.stack(per_member)
    if how == "mean":
        return stacked.mean(0)
    if how == "sum":
        return stacked.sum(0)
    if how == "max":
        return stacked.amax(0)
    return stacked.prod(0)


# --- filter L1 (Li et al. 2017) -------------------------------------------------------------------


def filter_l1(
    model: nn.Module, units: list[PrunableUnit], normalize: str = "layer_mean", reduction: str = "mean"
) -> Scores:
    """L1 norm of each output filter (Li et al., ICLR 2017) of every conv producing the unit's
    channels, each member scaled for a global comparison (by its mean filter norm, by its filter's
    number of weights, or not), then reduced over members (:func:`reduce_group`). We chose to scale
    each member before reducing (Torch-Pruning normalises after): a 1x1 downsample's filters have 9x
    fewer weights than a 3x3 conv's, and unscaled it would barely count."""
    _check_normalize(normalize, FILTER_NORMALIZATIONS)
    with torch.no_grad():
        return {
            unit.name: reduce_group([_normalized_l1(w, normalize) for w in member_filters(model, unit)], reduction)
            for unit in units
        }


def _normalized_l1(filters: torch.Tensor, normalize: str) -> torch.Tensor:
    """``filters``: (channels, weights per filter)."""
    norms = filters.abs().sum(1)
    if normalize == "layer_mean":
        return layer_mean(norms)
    if normalize == "per_weight":
        return norms / filters.shape[1]
    return norms


# --- BN scale (network slimming, Liu et al. 2017) ----------------------------------------------------


def unit_bn(model: nn.Module, unit: PrunableUnit, needed_by: str = "this scorer") -> nn.BatchNorm2d:
    """The first BN that scales this unit's channels (the root conv's BN; :func:`unit_bns` gives all
    of them); ``needed_by`` names the method in the error raised when there is none."""
    for name in unit.modules("out"):
        module = module_by_name(model, name)
        if isinstance(module, BN_TYPES):
            return module
    raise BenchError(f"{needed_by} needs a BatchNorm after '{unit.name}', and this model has none there")


def bn_gamma(
    model: nn.Module, units: list[PrunableUnit], needed_by: str = "this scorer", reduction: str = "mean"
) -> Scores:
    """|gamma| of every BN scaling each unit's channels (network slimming, Liu et al. 2017), reduced
    over the unit's BNs (:func:`reduce_group`; Torch-Pruning's ``BNScaleImportance`` reduces a group's
    BNs the same way, default mean). ``needed_by`` names the method when a unit has no BN."""
    scores = {}
    for unit in units:
        bns = unit_bns(model, unit)
        if not bns:
            raise BenchError(f"{needed_by} needs a BatchNorm after '{unit.name}', and this model has none there")
        scores[unit.name] = reduce_group([bn.weight.detach().abs() for bn in bns], reduction)
    return scores


def batchnorms(model: nn.Module) -> list[nn.BatchNorm2d]:
    """Every affine BatchNorm2d of the model, in module order."""
    return [m for m in model.modules() if isinstance(m, BN_TYPES) and m.weight is not None]


# --- group sums of squares (SSL, Wen et al. 2016; OICSR, Li et al. 2019) -----------------------------


def group_norm(sum_sq: torch.Tensor) -> torch.Tensor:
    """L2 norm from a sum of squares, with a gradient that stays finite when a group is all zero
    (an all-zero group has norm sqrt(SQ_FLOOR) = 1e-6, not 0)."""
    return sum_sq.clamp_min(SQ_FLOOR).sqrt()


def filter_sq(weight: torch.Tensor) -> torch.Tensor:
    """Sum of squares of each output filter W[n, ...]: shape (out_channels,). Keeps the graph."""
    return weight.pow(2).flatten(1).sum(1)


def channel_sq(weight: torch.Tensor) -> torch.Tensor:
    """Sum of squares of each input channel W[:, c, ...]: shape (in_channels,). Keeps the graph."""
    return weight.pow(2).transpose(0, 1).flatten(1).sum(1)


def member_sq(model: nn.Module, unit: PrunableUnit, side: str) -> list[torch.Tensor]:
    """For each conv/linear member of ``unit`` on ``side``, the sum of squares of the weights that
    go with each of the unit's channels (one (channels,) tensor per member; BN members carry no
    weights of a filter and are skipped). ``"out"``: the filters W[i, ...] (the producer conv).
    ``"in"``: the input slices W[:, i, ...] of each consumer. A linear consumer after a flatten gives
    ``in_features / channels`` consecutive features per channel. Depthwise convs are counted on their
    out side only. Keeps the graph, so regularisers differentiate through it."""
    sums = []
    for name in unit.modules(side):
        sq = _member_sq(module_by_name(model, name), name, unit, side)
        if sq is None:
            continue
        if sq.numel() != unit.channels:
            raise BenchError(f"'{name}' has {sq.numel()} {side}put channels, unit '{unit.name}' has {unit.channels}")
        sums.append(sq)
    if side == "out" and not sums:
        raise BenchError(f"unit '{unit.name}' has no conv or linear producing its channels")
    return sums


def _member_sq(module: nn.Module, name: str, unit: PrunableUnit, side: str) -> torch.Tensor | None:
    """One member's per-channel sum of squares, or None for a member without such weights."""
    if not isinstance(module, nn.Conv2d | nn.Linear):
        return None
    if side == "out":
        return filter_sq(module.weight)
    if isinstance(module, nn.Linear):
        if module.in_features % unit.channels:
            raise BenchError(
                f"linear '{name}' has {module.in_features} inputs, not a multiple of unit "
                f"'{unit.name}''s {unit.channels} channels"
            )
        return module.weight.pow(2).sum(0).view(unit.channels, -1).sum(1)
    return channel_sq(module.weight) if module.groups == 1 else None


def out_in_sq(model: nn.Module, unit: PrunableUnit) -> torch.Tensor:
    """Per channel i of ``unit``: ||W_l[i]||^2 + sum over consumers ||W_{l+1}[:, i]||^2, the out-in
    energy of OICSR's group (keeps the graph)."""
    return sum(member_sq(model, unit, "out") + member_sq(model, unit, "in"))


def group_l2(model: nn.Module, units: list[PrunableUnit], normalize: str = "layer_mean") -> Scores:
    """L2 norm of each channel's filter group (every conv/linear producing it: SSL's filter-wise
    groups), as float32, divided by the layer's mean norm (``"layer_mean"``) or raw (``"none"``)."""
    _check_normalize(normalize, GROUP_NORMALIZATIONS)
    scores = {}
    with torch.no_grad():
        for unit in units:
            norms = group_norm(sum(member_sq(model, unit, "out"))).float()
            scores[unit.name] = layer_mean(norms) if normalize == "layer_mean" else norms
    return scores


def out_in_energy(model: nn.Module, units: list[PrunableUnit], normalize: str = "layer_share") -> Scores:
    """OICSR's importance: each channel's out-in energy (:func:`out_in_sq`), as float32, divided by the
    layer's total (``"layer_share"``: a unit's scores sum to 1) or by its mean (``"layer_mean"``)."""
    _check_normalize(normalize, ENERGY_NORMALIZATIONS)
    scale = layer_mean if normalize == "layer_mean" else layer_share
    with torch.no_grad():
        return {unit.name: scale(out_in_sq(model, unit).float()) for unit in units}
