"""The harness's default allocation: PruneConfig's rule applied to a method's scores."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from bench import allocation, models, named_plans, surgery
from bench.allocation import Scores
from bench.config import PruneConfig
from bench.errors import BenchError
from bench.plan import PruningPlan
from bench.units import PrunableUnit


def round_target(total: float, round_index: int, rounds: int, original_macs: float, current_macs: float) -> float:
    """This round's MACs reduction relative to the current model, so that after round r the
    cumulative reduction relative to the original model is ``total * (r + 1) / rounds``."""
    cumulative = total * (round_index + 1) / rounds
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
    original_macs: float | None = None,
) -> PruningPlan:
    """Kept channels per unit under the configured rule; the scores choose which channels stay."""
    widths = {u.name: u.channels for u in units}
    cost = allocation.CostModel(model, units, input_size)
    meta = {"rule": prune.rule, "round": round_index, "rounds": rounds, "round_to": prune.round_to}
    if prune.plan is not None:
        if round_index > 0:
            raise BenchError(f"named plan '{prune.plan}' applies to the unpruned model; it cannot run in rounds")
        counts = named_plans.named_counts(model_name, prune.plan, widths)
    elif prune.channel_fraction is not None:
        share = prune.channel_fraction / rounds  # of the current channels, per round
        counts = allocation.by_channel_fraction(units, scores, share, prune.min_keep_fraction)
        counts = allocation.round_counts(units, counts, prune.round_to)
    elif prune.layer_ratio is not None:
        counts = allocation.by_layer_ratio(units, prune.layer_ratio / rounds, prune.min_keep_fraction)
        counts = allocation.round_counts(units, counts, prune.round_to)
    else:
        target = round_target(prune.target_flops_reduction, round_index, rounds, original_macs or cost.base, cost.base)
        meta["round_target"] = target
        counts = allocation.by_flops_target(
            units, scores, cost, target, prune.min_keep_fraction, round_to=prune.round_to
        )
    meta["predicted_macs"] = cost.macs(counts)
    return allocation.plan_from_counts(model_name, units, scores, counts, backend, meta)


def inherited_model(
    model_name: str,
    num_classes: int,
    input_size: int,
    plans: Sequence[PruningPlan],
    *,
    fresh_init_seed: int | None,
    dense_state: Mapping[str, torch.Tensor] | None = None,
) -> nn.Module:
    """The architecture that ``plans`` (applied in order) make of ``model_name``.

    With ``fresh_init_seed`` every weight is drawn again at the pruned shapes (the scratch control);
    otherwise the kept weights of ``dense_state`` (or of the construction init) stay.
    """
    model = models.create(model_name, num_classes, input_size)
    if dense_state is not None:
        model.load_state_dict(dense_state)
    for plan in plans:
        surgery.apply(model, plan, input_size)
    if fresh_init_seed is not None:
        models.reinitialize(model, fresh_init_seed)
    return model
