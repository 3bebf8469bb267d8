"""Training budgets: which epochs every phase of a method's pipeline gets, and the matched-budget mode.

A method's budget is every training epoch that produced its final model (Blalock et al., MLSys 2020,
"What is the state of neural network pruning?": unequal budgets confound most claimed gains):

- the dense baseline's epochs when the method starts from it (``Method.start == "dense"``);
- per prune round, its sparsity-training phase (when it has one) and a fine-tuning phase (the last
  round's fine-tuning is the final one).

``--budget N`` (``RunConfig.budget``) gives every method N epochs in all. The dense baseline is
shared and never retrained, so a method that starts from it has ``N - dense.epochs`` left, which is
split over its own phases in the proportions of its configured schedules (largest remainders, every
phase keeps at least one epoch). A method that cannot fit (N below the dense epochs it starts from, or
fewer epochs left than it has phases) is refused before any training. Our choice: scaling keeps each
method's own ratio of sparsity to fine-tuning, so a matched run stays that method's protocol in
miniature; milestones are fractions of a phase, so they stretch with it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from bench.config import RunConfig, Schedule
from bench.errors import BenchError
from bench.schema import Phase, budget_metric


@dataclass(frozen=True)
class PhasePlan:
    """The schedules of one method's pipeline: ``sparsity[r]`` (empty without sparsity training) and
    ``finetune[r]`` per round r (the last is the final fine-tuning), plus the dense epochs it starts
    from (0 for a method that starts from scratch). ``scale``: the matched-budget factor, None when
    the method runs its configured schedules."""

    dense_epochs: int
    sparsity: tuple[Schedule, ...]
    finetune: tuple[Schedule, ...]
    scale: float | None = None

    @property
    def epochs(self) -> dict[str, int]:
        """Epochs per phase in all rounds (phases with no epochs left out)."""
        phases = {
            Phase.DENSE: self.dense_epochs,
            Phase.SPARSITY: sum(s.epochs for s in self.sparsity),
            Phase.FINETUNE: sum(s.epochs for s in self.finetune),
        }
        return {phase: epochs for phase, epochs in phases.items() if epochs > 0}

    @property
    def total(self) -> int:
        return sum(self.epochs.values())


def configured(cfg: RunConfig, name: str, start_dense: bool, sparsity_training: bool, rounds: int) -> PhasePlan:
    """The method's configured schedules (no scaling)."""
    sparsity = (cfg.sparsity_schedule(name),) * rounds if sparsity_training else ()
    return PhasePlan(cfg.dense.epochs if start_dense else 0, sparsity, (cfg.finetune_schedule(name),) * rounds)


def matched(plan: PhasePlan, budget: int, name: str) -> PhasePlan:
    """``plan`` with its sparsity and fine-tune phases scaled so that the total is ``budget`` epochs."""
    left = budget - plan.dense_epochs
    schedules = [*plan.sparsity, *plan.finetune]
    planned = [s.epochs for s in schedules]
    needed = sum(1 for e in planned if e > 0)
    if left < 0:
        raise BenchError(
            f"--budget {budget} is below the {plan.dense_epochs} epochs of the dense baseline that {name} "
            f"starts from; give at least {plan.dense_epochs + max(needed, 1)} epochs"
        )
    if left < needed or (left > 0 and not needed):
        raise BenchError(
            f"--budget {budget} leaves {name} {left} epoch(s) after its {plan.dense_epochs} dense epochs, but its "
            f"{len(plan.finetune)} round(s) have {needed} training phase(s) of at least one epoch each; "
            f"give --budget >= {plan.dense_epochs + max(needed, 1)}"
        )
    epochs = shares(planned, left)
    scaled = [_with_epochs(s, e) for s, e in zip(schedules, epochs, strict=True)]
    cut = len(plan.sparsity)
    scale = left / sum(planned) if sum(planned) else 1.0
    return PhasePlan(plan.dense_epochs, tuple(scaled[:cut]), tuple(scaled[cut:]), scale)


def shares(planned: list[int], total: int) -> list[int]:
    """``total`` split in proportion to ``planned`` (largest remainders); a positive entry keeps >= 1."""
    weight = sum(planned)
    exact = [total * p / weight for p in planned]
    out = [max(math.floor(x), 1 if p > 0 else 0) for x, p in zip(exact, planned, strict=True)]
    by_remainder = sorted(range(len(planned)), key=lambda i: exact[i] - out[i], reverse=True)
    while sum(out) < total:
        i = next(i for i in by_remainder if out[i] < math.ceil(exact[i]))
        out[i] += 1
        by_remainder.remove(i)
    while sum(out) > total:  # the ">= 1" floors overshot: take from the largest
        i = max(range(len(out)), key=lambda k: out[k])
        out[i] -= 1
    return out


def _with_epochs(schedule: Schedule, epochs: int) -> Schedule:
    return dataclasses.replace(schedule, epochs=epochs, warmup_epochs=min(schedule.warmup_epochs, epochs))


def metrics(phases: dict[str, int], train_size: int) -> dict[str, float]:
    """``budget/<phase>_epochs`` and ``budget/<phase>_images`` for each phase that trained."""
    out: dict[str, float] = {}
    for phase, epochs in phases.items():
        out[budget_metric(phase, "epochs")] = float(epochs)
        out[budget_metric(phase, "images")] = float(epochs * train_size)
    return out
