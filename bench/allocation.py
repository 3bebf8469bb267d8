"""Allocation: turn per-channel importance scores into a PruningPlan.

Rules (PruneConfig picks one):
- ``target_flops_reduction``: one global threshold over all scores, searched so that the pruned
  model's MACs drop by at least the target; the achieved reduction is what gets recorded.
- ``channel_fraction``: a global threshold at a percentile of all scores (Network Slimming's
  "70% of channels pruned").
- ``layer_ratio``: the same fraction ``p`` of every unit, keeping ``int(C * (1 - p))`` (Li et al.).
- a named plan: kept counts per unit from a published configuration (``bench.named_plans``).
Every rule keeps at least ``max(1, ceil(min_keep_fraction * C))`` channels of each unit, the
highest-scoring ones, so no layer is ever emptied. With ``round_to`` > 1 every kept count is
rounded up to a multiple of it (at most the unit's width), and the FLOPs search measures the
rounded counts, so the target still holds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from bench.errors import BenchError
from bench.plan import PruningPlan
from bench.units import PrunableUnit

Scores = Mapping[str, torch.Tensor]  # unit name -> one score per channel (higher = more important)


@dataclass(frozen=True)
class _ConvCost:
    """MACs of one conv/linear as a function of its kept input and output channels."""

    module: str
    macs: int  # at full width
    in_channels: int
    out_channels: int
    depthwise: bool


class CostModel:
    """Analytic conv+linear MACs of a model under a plan, without building the pruned model.

    A conv's MACs scale with kept_in/in * kept_out/out (depthwise: with kept_out/out only). The
    tests check it against fvcore on physically pruned models.
    """

    def __init__(self, model: nn.Module, units: list[PrunableUnit], input_size: int = 32) -> None:
        self.units = {u.name: u for u in units}
        self.layers = _trace_costs(model, input_size)
        self.base = sum(layer.macs for layer in self.layers)
        self._out_unit = {m.module: u.name for u in units for m in u.members if m.side == "out"}
        self._in_unit = {m.module: u.name for u in units for m in u.members if m.side == "in"}

    def macs(self, kept: Mapping[str, int]) -> float:
        """Total MACs when unit ``n`` keeps ``kept[n]`` channels (units not named stay whole)."""
        total = 0.0
        for layer in self.layers:
            out_frac = self._fraction(self._out_unit.get(layer.module), kept)
            in_frac = 1.0 if layer.depthwise else self._fraction(self._in_unit.get(layer.module), kept)
            total += layer.macs * out_frac * in_frac
        return total

    def reduction(self, kept: Mapping[str, int]) -> float:
        return 1.0 - self.macs(kept) / self.base

    def _fraction(self, unit: str | None, kept: Mapping[str, int]) -> float:
        if unit is None or unit not in kept:
            return 1.0
        return kept[unit] / self.units[unit].channels


def _trace_costs(model: nn.Module, input_size: int) -> list[_ConvCost]:
    costs: list[_ConvCost] = []
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            hooks.append(module.register_forward_hook(_cost_hook(name, costs)))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return costs


def _cost_hook(name: str, costs: list[_ConvCost]):
    def hook(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            spatial = output.shape[-1] * output.shape[-2]
            macs = spatial * kh * kw * (module.in_channels // module.groups) * module.out_channels
            depthwise = module.groups > 1 and module.groups == module.in_channels
            costs.append(_ConvCost(name, macs, module.in_channels, module.out_channels, depthwise))
        else:
            positions = output.numel() // output.shape[-1]  # batch 1: tokens, if any
            macs = positions * module.in_features * module.out_features
            costs.append(_ConvCost(name, macs, module.in_features, module.out_features, False))

    return hook


_FLOAT_SLACK = 1e-9  # absorbs float noise such as 0.07 * 100 = 7.000000000000001 or 50 * (1 - 0.9) = 4.999...


def min_keep(channels: int, min_keep_fraction: float) -> int:
    """``max(1, ceil(min_keep_fraction * C))``, computed without float noise."""
    return max(1, math.ceil(min_keep_fraction * channels - _FLOAT_SLACK))


def ratio_keep(channels: int, ratio: float) -> int:
    """Li et al.'s ``int(C * (1 - ratio))``, computed without float noise (50 * (1 - 0.9) keeps 5, not 4)."""
    return math.floor(channels * (1 - ratio) + _FLOAT_SLACK)


def as_scores(units: list[PrunableUnit], scores: Scores) -> dict[str, torch.Tensor]:
    """The scores a method returned, as the harness uses them: detached from autograd (a plugin may
    return ``weight.abs().mean(...)`` as it is), float32 on the CPU, one finite value per channel of
    every unit; anything else is a BenchError naming the unit. Units not listed are left out."""
    out = {}
    for unit in units:
        if unit.name not in scores:
            raise BenchError(f"importance has no scores for unit '{unit.name}' (it returned {len(scores)} units)")
        s = scores[unit.name]
        if not isinstance(s, torch.Tensor):
            raise BenchError(f"importance of '{unit.name}' is a {type(s).__name__}, not a torch.Tensor")
        s = s.detach().to("cpu", torch.float32)
        if s.numel() != unit.channels:
            raise BenchError(f"importance of '{unit.name}' has {s.numel()} scores for {unit.channels} channels")
        if s.dim() != 1:
            raise BenchError(f"importance of '{unit.name}' has shape {tuple(s.shape)}; expected ({unit.channels},)")
        if not torch.isfinite(s).all():
            raise BenchError(f"importance of '{unit.name}' has {int((~torch.isfinite(s)).sum())} non-finite scores")
        out[unit.name] = s
    return out


def _top_indices(scores: torch.Tensor, count: int) -> tuple[int, ...]:
    """Indices of the ``count`` highest scores, in ascending index order (ties: lower index wins)."""
    order = torch.argsort(scores, descending=True, stable=True)
    return tuple(sorted(order[:count].tolist()))


def plan_from_counts(
    model_name: str,
    units: list[PrunableUnit],
    scores: Scores,
    counts: Mapping[str, int],
    backend: str,
    meta: Mapping | None = None,
) -> PruningPlan:
    """Keep the ``counts[n]`` highest-scoring channels of each unit ``n``."""
    scores = as_scores(units, scores)
    by_name = {u.name: u for u in units}
    keep = {n: _top_indices(scores[n], c) for n, c in counts.items() if c < by_name[n].channels}
    channels = {n: by_name[n].channels for n in keep}
    return PruningPlan(model_name, keep, channels, backend, dict(meta or {}))


class TargetUnreachable(BenchError):
    """No allowed pruning reaches the FLOPs target; ``most`` is the best reduction there is."""

    def __init__(self, message: str, most: float) -> None:
        super().__init__(message)
        self.most = most


def candidates(
    units: list[PrunableUnit], scores: Scores, min_keep_fraction: float = 0.0, max_prune_fraction: float = 1.0
) -> list[tuple[float, str]]:
    """The channels that may go, in ascending score order: the lowest-scoring channels of each unit,
    at most ``floor(max_prune_fraction * C)`` of it (per-round caps such as OICSR's), never touching
    its protected minimum. Ties keep unit order."""
    out: list[tuple[float, str]] = []
    scores = as_scores(units, scores)
    for unit in units:
        s = scores[unit.name]
        cap = min(
            math.floor(max_prune_fraction * unit.channels + _FLOAT_SLACK),
            unit.channels - min_keep(unit.channels, min_keep_fraction),
        )
        out.extend((float(v), unit.name) for v in torch.sort(s, stable=True).values[:cap])
    out.sort(key=lambda item: item[0])
    return out


def counts_after(
    units: list[PrunableUnit], ranked: list[tuple[float, str]], k: int, round_to: int = 1
) -> dict[str, int]:
    """Kept counts per unit after removing the first ``k`` of ``ranked`` (then rounded up)."""
    counts = {u.name: u.channels for u in units}
    for _, name in ranked[:k]:
        counts[name] -= 1
    return round_counts(units, counts, round_to)


def round_counts(units: list[PrunableUnit], counts: Mapping[str, int], round_to: int) -> dict[str, int]:
    """Each count rounded up to a multiple of ``round_to``, capped at the unit's width."""
    if round_to <= 1:
        return dict(counts)
    width = {u.name: u.channels for u in units}
    return {n: min(width[n], math.ceil(c / round_to) * round_to) for n, c in counts.items()}


def by_flops_target(
    units: list[PrunableUnit],
    scores: Scores,
    cost: CostModel,
    target: float,
    min_keep_fraction: float = 0.0,
    max_prune_fraction: float = 1.0,
    round_to: int = 1,
) -> dict[str, int]:
    """Kept counts for the smallest global threshold whose MACs reduction reaches ``target``.

    Binary search over how many of the globally lowest-scoring channels go; MACs never increase as
    more channels go (rounding up is monotone too), so the search is exact up to one channel (one
    rounding step with ``round_to``).
    """
    ranked = candidates(units, scores, min_keep_fraction, max_prune_fraction)
    most = cost.reduction(counts_after(units, ranked, len(ranked), round_to))
    if most < target:
        raise TargetUnreachable(
            f"target FLOPs reduction {target:.3f} is unreachable: pruning every prunable channel gives "
            f"{most:.3f} under this rule; lower --target-flops-reduction",
            most,
        )
    lo, hi = 0, len(ranked)
    while lo < hi:
        mid = (lo + hi) // 2
        if cost.reduction(counts_after(units, ranked, mid, round_to)) >= target:
            hi = mid
        else:
            lo = mid + 1
    return counts_after(units, ranked, lo, round_to)


def by_channel_fraction(
    units: list[PrunableUnit], scores: Scores, fraction: float, min_keep_fraction: float = 0.0
) -> dict[str, int]:
    """Kept counts after pruning ``fraction`` of all channels by one global threshold."""
    ranked = candidates(units, scores, min_keep_fraction)
    total = sum(u.channels for u in units)
    return counts_after(units, ranked, min(len(ranked), round(fraction * total)))


def by_layer_ratio(units: list[PrunableUnit], ratio: float, min_keep_fraction: float = 0.0) -> dict[str, int]:
    """Kept counts ``int(C * (1 - ratio))`` per unit (Li et al.), never below the minimum."""
    return {u.name: max(min_keep(u.channels, min_keep_fraction), ratio_keep(u.channels, ratio)) for u in units}
