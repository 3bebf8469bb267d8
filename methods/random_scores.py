"""random: random channel scores under the same allocation rule and fine-tuning as every method.

The floor a method has to beat (methods/README.md, "Baselines every comparison includes"): if a method's
pruned network does no better than one whose channels were chosen at random and then fine-tuned
on the same schedule, its importance criterion adds nothing. Scores are uniform in [0, 1), drawn
from the run's seeded generator, so the same seed gives the same plan. Starts from the trained
dense baseline, like l1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.api import Context, Method


@dataclass(frozen=True)
class RandomConfig:
    """No hyperparameters: the allocation rule and schedules are the run's."""


class RandomScores(Method):
    name = "random"
    description = "random channel scores, same allocation and fine-tuning (the floor to beat)"
    Config = RandomConfig
    start = "dense"

    def importance(self, model: nn.Module, ctx: Context) -> dict[str, torch.Tensor]:
        return {unit.name: torch.rand(unit.channels, generator=ctx.generator) for unit in ctx.units}
