"""scratch: another method's pruned architecture, trained from random initialisation (Liu, Sun, Zhou,
Huang, Darrell; "Rethinking the Value of Network Pruning", ICLR 2019, arXiv 1810.05270).

The control every comparison includes (METHODS.md, "Baselines"): if the pruned architecture alone,
trained from scratch, matches the pruned-and-fine-tuned network, then a method's value lies in the
architecture it found and not in the weights it kept.

- Source (``source``): the name of another method in the same run, whose plans for the same seed
  are replayed (``--methods l1,scratch`` with ``method.scratch.params.source=l1``), or
  ``run:<MLflow run id>`` of a finished method run in the same tracking store. Empty (the default):
  the first other method of ``--methods``. The harness runs the source before scratch whatever the
  order given.
- Initialisation: the plans are replayed onto a model of the run's architecture, then every
  parameter is drawn again by the model's own init scheme (kaiming-normal fan-out for our CIFAR
  models, timm's ``init_weights`` for timm models) at the pruned shapes. Nothing of the dense init
  survives, so this is Liu et al.'s control and not a lottery-ticket rewind.
- Budget (``budget``): ``"epochs"`` (default; Liu et al.'s Scratch-E) trains for the source's total
  epochs: its dense baseline's when it started from one, plus its sparsity and fine-tuning phases
  over all rounds. ``"flops"`` (Scratch-B) scales that by the source's dense/pruned MACs ratio, so
  the training compute matches, rounded to whole epochs.
- Schedule: the dense baseline's recipe (lr, schedule, weight decay, batch) with those epochs; the
  cosine/multistep milestones are fractions, so they stretch with it. ``method.scratch.finetune``
  replaces it outright when set.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from bench.api import RUN_SOURCE, Context, Inherited, Method, Schedule
from bench.errors import BenchError

BUDGETS = ("epochs", "flops")


@dataclass(frozen=True)
class ScratchConfig:
    """``source``: a method name of the same run, ``run:<MLflow run id>``, or "" for the first other
    method of ``--methods``. ``budget``: ``"epochs"`` (the source's total epochs) or ``"flops"``
    (those epochs times the source's dense/pruned MACs ratio)."""

    source: str = ""
    budget: str = "epochs"

    def __post_init__(self) -> None:
        if self.budget not in BUDGETS:
            raise ValueError(f"budget must be one of {', '.join(BUDGETS)}, got {self.budget!r}")
        if self.source.startswith(RUN_SOURCE) and not self.source[len(RUN_SOURCE) :].strip():
            raise ValueError("source 'run:' needs an MLflow run id after the colon")


class Scratch(Method):
    name = "scratch"
    description = "another method's pruned architecture trained from random init (Liu et al. 2019 control)"
    Config = ScratchConfig
    start = "scratch"

    def plan_source(self, methods: tuple[str, ...]) -> str:
        if self.config.source:
            return self.config.source
        others = [m for m in methods if m != self.name]
        if not others:
            raise BenchError(
                "scratch needs an architecture to train: list another method before it in --methods "
                "(e.g. --methods l1,scratch) or set method.scratch.params.source=run:<MLflow run id>"
            )
        return others[0]

    def inherited_schedule(self, dense: Schedule, inherited: Inherited) -> Schedule:
        return dataclasses.replace(dense, epochs=budget_epochs(self.config.budget, inherited))

    def importance(self, model: nn.Module, ctx: Context) -> dict[str, torch.Tensor]:
        raise BenchError("scratch does not score channels: the harness replays its source's plans")


def budget_epochs(budget: str, inherited: Inherited) -> int:
    """Training epochs for the inherited architecture: the source's total (Scratch-E), or that many
    scaled by dense/pruned MACs so the compute matches (Scratch-B), at least 1."""
    if budget == "epochs":
        return max(1, inherited.train_epochs)
    return max(1, round(inherited.train_epochs * inherited.dense_macs / inherited.macs))
