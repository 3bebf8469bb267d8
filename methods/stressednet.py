"""stressednet: stress-induced evolutionary synthesis (Shafiee, Chywl, Li, Wong; "StressedNets:
Efficient Feature Representations via Stress-induced Evolutionary Synthesis of Deep Neural
Networks", arXiv 1801.05387).

The network evolves over generations (:meth:`rounds` = ``generations``, default 3). Each offspring
architecture is sampled from survival probabilities derived from the parent's weights, capped by
an environmental factor F; during training a stress signal weakens the filters that the next
sampling is likely to drop, so the network adapts in advance. The method section could not be
read; METHODS.md fixed these choices, implemented here:

- Survival probability of output filter c of a unit's producer conv:
  ``P_c = clip(exp(||W_c||_1 / Z - 1), 0, 1) * F``, with Z the layer's largest filter L1 norm
  (``normalizer="max"``, default), so the strongest filter has P = F and the weakest at least
  F / e; ``normalizer="mean"`` (Z = the layer's mean norm) clips every above-average filter to F.
  Z is per layer because a global FLOPs rule compares layers whose weight scales differ.
- Stress (:meth:`on_epoch_end`, sparsity phase only): draw a sample that keeps filter c with
  probability P_c and multiply the weights (and bias) of the filters it drops by
  ``stress_factor`` (default 0.8). Keep with probability P, never 1 - P (one unofficial
  implementation inverts it). Behind a BatchNorm this does not change the training-mode forward
  pass; it lowers the dropped filters' norms, hence their P at the next draw.
- Offspring (:meth:`importance`): the harness must meet the run's FLOPs target within 1 pp, and
  independent Bernoulli(P_c) draws miss it. So each channel draws v_c uniform in (0, 1] and scores
  ``log P_c - log v_c``. The harness's global threshold on these scores (its FLOPs-target rule,
  per round the cumulative ``round_target``) keeps exactly the channels with v_c < theta * P_c for
  the smallest-pruning theta that meets the target: a Bernoulli(theta * P_c) offspring sharing
  the draws v, that is the environmental factor F scaled by theta, found exactly by the
  allocation's search instead of a bisection on F. Filters with larger P survive more often.
  Every other allocation rule (channel fraction, named plan) also works: the draw picks which
  channels go. No allocate hook and no PruneConfig are needed. A consequence: F shifts every score
  by the same log F, so under a FLOPs target it sets how often the epoch-end stress hits filters,
  not which offspring the given weights produce.
- One offspring per generation: choosing the best of several needs each one trained and compared
  on validation, which the harness's one-model pipeline does not do, so ``offspring`` > 1 is
  refused with an error.
- The run starts from the trained dense baseline (``start="dense"``): the ancestor of an
  evolutionary synthesis is a trained network, and its weights carry the heredity information
  that P is computed from (at a random init, P is noise). Generation r: stress training (the
  sparsity schedule), sampling, surgery, then the offspring trains (the fine-tune schedule).
- Randomness: every draw comes from a generator seeded with (a base seed drawn from
  ``ctx.generator`` at setup, round, epoch), so the same seed gives the same offspring, and a
  resumed run repeats the draws of an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.api import Context, Method, module_by_name

NORMALIZERS = ("max", "mean")
_SAMPLE_EPOCH = -1  # the epoch slot of the offspring draw in the per-event seed


@dataclass(frozen=True)
class StressedNetConfig:
    """``environment``: F, the survival probability of a layer's strongest filter (0, 1].
    ``stress_factor``: what the weights of a filter that the epoch-end draw drops are multiplied by.
    ``generations``: prune rounds. ``offspring``: per generation; only 1 is supported (see docs).
    ``normalizer``: Z, the layer's largest ("max") or mean filter L1 norm."""

    environment: float = 0.8
    stress_factor: float = 0.8
    generations: int = 3
    offspring: int = 1
    normalizer: str = "max"

    def __post_init__(self) -> None:
        if not 0 < self.environment <= 1:
            raise ValueError(f"environment must be in (0, 1], got {self.environment}")
        if not 0 <= self.stress_factor <= 1:
            raise ValueError(f"stress_factor must be in [0, 1], got {self.stress_factor}")
        if self.generations < 1:
            raise ValueError(f"generations must be >= 1, got {self.generations}")
        if self.offspring != 1:
            raise ValueError(
                f"offspring must be 1, got {self.offspring}: choosing the best of several offspring needs each "
                "one trained and validated, which the harness does not do yet"
            )
        if self.normalizer not in NORMALIZERS:
            raise ValueError(f"normalizer must be one of {', '.join(NORMALIZERS)}, got '{self.normalizer}'")


def survival_probability(weight: torch.Tensor, environment: float, normalizer: str = "max") -> torch.Tensor:
    """P_c = clip(exp(||W_c||_1 / Z - 1), 0, 1) * F for each output filter c of ``weight``."""
    norms = weight.detach().float().abs().flatten(1).sum(1)
    z = norms.max() if normalizer == "max" else norms.mean()
    z = z.clamp_min(torch.finfo(norms.dtype).tiny)  # an all-zero layer: every P is F / e
    return torch.exp(norms / z - 1).clamp(0, 1) * environment


def keep_sample(p: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One Bernoulli draw per filter: True (kept) with probability p."""
    return torch.rand(p.shape, generator=generator) < p.cpu()


def offspring_scores(p: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """log p - log v with v uniform in (0, 1]: keeping scores above log(1/theta) keeps v < theta p."""
    v = 1 - torch.rand(p.shape, generator=generator, dtype=torch.float64)
    return (p.cpu().double().log() - v.log()).float()


class StressedNet(Method):
    name = "stressednet"
    description = "survival sampling from weight norms under stress, over generations (Shafiee et al. 2018)"
    Config = StressedNetConfig
    start = "dense"
    sparsity_training = True

    def __init__(self, config: StressedNetConfig | None = None) -> None:
        super().__init__(config)
        self.base_seed = 0

    def setup(self, model: nn.Module, ctx: Context) -> None:
        self.base_seed = int(torch.randint(0, 2**62, (), generator=ctx.generator))

    def rounds(self, ctx: Context) -> int:
        return self.config.generations

    def probabilities(self, model: nn.Module, ctx: Context) -> dict[str, torch.Tensor]:
        """Survival probability of every channel of every unit."""
        return {
            u.name: survival_probability(
                module_by_name(model, u.producer).weight, self.config.environment, self.config.normalizer
            )
            for u in ctx.units
        }

    def generator(self, ctx: Context, epoch: int) -> torch.Generator:
        """The draw of (round, epoch); ``epoch=-1`` is the offspring draw of the round."""
        seed = (self.base_seed + 1_000_003 * ctx.round + 1_009 * (epoch + 2)) % 2**63
        return torch.Generator().manual_seed(seed)

    def on_epoch_end(self, model: nn.Module, ctx: Context) -> None:
        if ctx.phase != "sparsity":
            return
        generator = self.generator(ctx, ctx.epoch)
        with torch.no_grad():
            for unit in ctx.units:
                conv = module_by_name(model, unit.producer)
                p = survival_probability(conv.weight, self.config.environment, self.config.normalizer)
                dropped = ~keep_sample(p, generator)
                scale = torch.where(dropped, self.config.stress_factor, 1.0).to(conv.weight.device)
                conv.weight.mul_(scale.view(-1, *([1] * (conv.weight.dim() - 1))).to(conv.weight.dtype))
                if conv.bias is not None:
                    conv.bias.mul_(scale.to(conv.bias.dtype))

    def importance(self, model: nn.Module, ctx: Context) -> dict[str, torch.Tensor]:
        generator = self.generator(ctx, _SAMPLE_EPOCH)
        return {unit: offspring_scores(p, generator) for unit, p in self.probabilities(model, ctx).items()}

    def state_dict(self) -> dict:
        return {"base_seed": self.base_seed}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.base_seed = int(state["base_seed"])

    def search_space(self, trial) -> dict:
        return {
            "environment": trial.suggest_float("environment", 0.5, 1.0),
            "stress_factor": trial.suggest_float("stress_factor", 0.5, 1.0),
            "generations": trial.suggest_int("generations", 1, 5),
        }
