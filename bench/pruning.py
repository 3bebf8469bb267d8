"""The harness's default allocation: PruneConfig's rule applied to a method's scores."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from bench import allocation, models, named_plans, surgery
from bench.allocation import Scores
from bench.config import PruneConfig
from bench.errors import BenchError
from bench.plan import PruningPlan
from bench.units import PrunableUnit


@dataclass(frozen=True)
class Origin:
    """The unpruned model: prunable widths (channels per unit) and conv+linear MACs per image. The
    base of cumulative targets, so that R rounds reach the requested value, not R shares of a shrinking
    model."""

    widths: Mapping[str, int]
    macs: float

    def channels_removed(self, units: Sequence[PrunableUnit]) -> float:
        """Achieved: 1 - kept / unpruned channels over the units that exist in both."""
        total = sum(self.widths.values())
        kept = sum(u.channels for u in units if u.name in self.widths)
        return 1 - kept / total if total else 0.0


def cumulative_share(total: float, round_index: int, rounds: int) -> float:
    """The share of the unpruned model removed after round ``round_index``: ``total * (r + 1) / R``."""
    return total * (round_index + 1) / rounds


def round_target(total: float, round_index: int, rounds: int, original_macs: float, current_macs: float) -> float:
    """This round's MACs reduction relative to the current model, so that after round r the
    cumulative reduction relative to the original model is ``total * (r + 1) / rounds``."""
    cumulative = cumulative_share(total, round_index, rounds)
    return max(0.0, 1.0 - (1.0 - cumulative) * original_macs / current_macs)


def default_plan(
    prune: PruneConfig,
    model_name: str,
    model: nn.Module,
    units: list[PrunableUnit],
    scores: Scores,
    *,
    backend: str,
    input_size: int,
    round_index: int = 0,
    rounds: int = 1,
    origin: Origin | None = None,
) -> PruningPlan:
    """Kept channels per unit under the configured rule; the scores choose which channels stay.

    Over R rounds every rule compounds on the unpruned model (``origin``, default: this one): after
    round r the removed share of channels (channel_fraction), of each unit (layer_ratio) or of MACs
    (FLOPs target) is ``value * (r + 1) / R``, to within one channel per unit."""
    widths = {u.name: u.channels for u in units}
    cost = allocation.CostModel(model, units, input_size)
    origin = origin or Origin(widths, cost.base)
    meta = {"rule": prune.rule, "round": round_index, "rounds": rounds, "round_to": prune.round_to}
    if prune.plan is not None:
        if round_index > 0:
            raise BenchError(f"named plan '{prune.plan}' applies to the unpruned model; it cannot run in rounds")
        counts = named_plans.named_counts(model_name, prune.plan, widths)
    elif prune.channel_fraction is not None:
        share = _round_channel_share(prune.channel_fraction, round_index, rounds, origin, units)
        counts = allocation.by_channel_fraction(units, scores, share, prune.min_keep_fraction)
        counts = allocation.round_counts(units, counts, prune.round_to)
    elif prune.layer_ratio is not None:
        cumulative = cumulative_share(prune.layer_ratio, round_index, rounds)
        counts = _layer_counts(units, origin, cumulative, prune.min_keep_fraction)
        counts = allocation.round_counts(units, counts, prune.round_to)
    else:
        target = round_target(prune.target_flops_reduction, round_index, rounds, origin.macs, cost.base)
        meta["round_target"] = target
        counts = allocation.by_flops_target(
            units, scores, cost, target, prune.min_keep_fraction, round_to=prune.round_to
        )
    meta["predicted_macs"] = cost.macs(counts)
    return allocation.plan_from_counts(model_name, units, scores, counts, backend, meta)


def _round_channel_share(
    fraction: float, round_index: int, rounds: int, origin: Origin, units: Sequence[PrunableUnit]
) -> float:
    """This round's share of the current channels, so that the unpruned model loses ``fraction`` of
    its channels in R rounds (not ``1 - (1 - fraction / R) ** R``, which under-prunes)."""
    current = sum(u.channels for u in units)
    keep = round(sum(origin.widths.values()) * (1 - cumulative_share(fraction, round_index, rounds)))
    return max(0.0, (current - keep) / current)


def _layer_counts(
    units: Sequence[PrunableUnit], origin: Origin, cumulative: float, min_keep_fraction: float
) -> dict[str, int]:
    """Per unit, ``int(C0 * (1 - cumulative))`` of its unpruned width C0 (Li et al.'s rule, compounded),
    never more than it has now nor below the minimum."""
    counts = {}
    for unit in units:
        original = origin.widths.get(unit.name, unit.channels)
        keep = allocation.ratio_keep(original, cumulative)
        counts[unit.name] = min(unit.channels, max(allocation.min_keep(original, min_keep_fraction), keep))
    return counts


def replay(model: nn.Module, plans: Sequence[PruningPlan], input_size: int, fresh_init_seed: int) -> None:
    """Apply ``plans`` in order to ``model`` (in place), then draw every weight again at the pruned
    shapes with ``fresh_init_seed`` (the scratch control: nothing of any trained weight survives)."""
    for plan in plans:
        surgery.apply(model, plan, input_size)
    models.reinitialize(model, fresh_init_seed)
