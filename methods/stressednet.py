"""stressednet: stress-induced evolutionary synthesis (Mohammad Javad Shafiee, Brendan Chwyl, Francis
Li, Rongyan Chen, Michelle Karg, Christian Scharfenberger, Alexander Wong; "StressedNets: Efficient
Feature Representations via Stress-induced Evolutionary Synthesis of Deep Neural Networks", arXiv
1801.05387, 2018; Neurocomputing 352:93-105, 2019).

The network evolves over generations (:meth:`rounds` = ``generations``, default 3). Each offspring
architecture is sampled from survival probabilities derived from the parent's weights, capped by
an environmental factor F; during training a stress signal weakens the filters that the next
sampling is likely to drop, so the network adapts in advance. The method section could not be
read; methods/README.md fixed these choices, implemented here:

- Survival probability of channel c of a unit:
  ``P_c = clip(exp(s_c / Z - 1), 0, 1) * F``, with Z the unit's largest strength
  (``normalizer="max"``, default), so the strongest channel has P = F and the weakest at least
  F / e; ``normalizer="mean"`` (Z = the unit's mean strength) clips every above-average channel to
  F. Z is per unit because a global FLOPs rule compares layers whose weight scales differ.
- Strength s_c (we chose; methods/README.md says only "derived from the parent's weights"): the L1
  norm of the BN-folded filter, ``||W_c||_1 * |gamma_c| / sqrt(running_var_c + eps)``, for a conv followed
  by an affine BN, and ``||W_c||_1`` for a conv without one. Behind a BN the raw filter's scale
  changes nothing the network computes, and stress acts on gamma (below), so the strength must
  read gamma: then a stressed channel's strength drops by ``stress_factor`` and so does its P at the
  next draw. A DepGraph unit (a whole coupled group, e.g. three convs and three BNs on timm's
  resnet18 ``layer4.0.downsample.0``) scores every producer conv: each member's strengths divided
  by that member's mean (a 1x1 downsample has 9x fewer weights per filter than a 3x3 conv), then
  averaged over members (``bench.api.reduce_group``, Torch-Pruning's default "mean"). A chain unit
  (one conv, one BN) gives exactly the formula above, since Z cancels the member's mean.
- Which BN follows which conv is read from one eval-mode forward of a blank image
  (:func:`conv_bn_pairs`): a BN whose input is a conv's output tensor. A unit's members are listed
  in graph order, not in conv-BN pairs.
- Stress (:meth:`on_epoch_end`, sparsity phase only): draw a sample that keeps channel c with
  probability P_c and, for each channel it drops, multiply gamma and beta of every affine BN of the
  unit (``bench.api.unit_bns``) by ``stress_factor`` (default 0.8), and the filter (and bias) of
  every producer conv that has no BN after it. The channel's BN output is then scaled by the factor,
  in training and in eval mode alike: the network feels the stress, and the running statistics
  (of the conv's output) are untouched. Scaling a conv filter behind a BN, as this method did
  before, left the training forward pass unchanged. Keep with probability P, never 1 - P (one
  unofficial implementation inverts it).
- Offspring (:meth:`importance`): the harness must meet the run's FLOPs target within 1 pp, and
  independent Bernoulli(P_c) draws miss it. So each channel draws v_c uniform in (0, 1] and scores
  ``log P_c - log v_c``. The harness's global threshold on these scores (its FLOPs-target rule,
  per round the cumulative ``round_target``) keeps exactly the channels with v_c < theta * P_c for
  the smallest-pruning theta that meets the target: a Bernoulli(theta * P_c) offspring sharing
  the draws v, that is the environmental factor F scaled by theta, found exactly by the
  allocation's search instead of a bisection on F. Channels with larger P survive more often.
  Every other allocation rule (channel fraction, named plan) also works: the draw picks which
  channels go. No allocate hook and no PruneConfig are needed. A consequence: F shifts every score
  by the same log F, so under a FLOPs target it sets how often the epoch-end stress hits channels,
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

from bench.api import (
    Context,
    Method,
    PrunableUnit,
    bn_fold,
    is_affine_bn,
    member_filters,
    member_producers,
    module_by_name,
    reduce_group,
    unit_bns,
)

NORMALIZERS = ("max", "mean")
_SAMPLE_EPOCH = -1  # the epoch slot of the offspring draw in the per-event seed


@dataclass(frozen=True)
class StressedNetConfig:
    """``environment``: F, the survival probability of a unit's strongest channel (0, 1].
    ``stress_factor``: what a channel that the epoch-end draw drops is multiplied by (its BN gamma
    and beta, or the filter of a conv without BN). ``generations``: prune rounds. ``offspring``: per
    generation; only 1 is supported (see docs). ``normalizer``: Z, the unit's largest ("max") or
    mean strength."""

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


def survival_probability(strength: torch.Tensor, environment: float, normalizer: str = "max") -> torch.Tensor:
    """P_c = clip(exp(s_c / Z - 1), 0, 1) * F for each channel's strength s_c (a (channels,) tensor)."""
    s = strength.detach().float()
    z = s.max() if normalizer == "max" else s.mean()
    z = z.clamp_min(torch.finfo(s.dtype).tiny)  # an all-zero unit: every P is F / e
    return torch.exp(s / z - 1).clamp(0, 1) * environment


def conv_bn_pairs(model: nn.Module, input_size: int) -> dict[str, str]:
    """{conv name: name of the affine BN whose input is that conv's output}, read from one eval-mode
    forward of a blank image (no running statistic changes)."""
    convs = {m: n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    bns = {m: n for n, m in model.named_modules() if is_affine_bn(m)}
    if not convs:
        return {}
    outputs: list[tuple[torch.Tensor, str]] = []
    pairs: dict[str, str] = {}

    def conv_out(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        outputs.append((output, convs[module]))

    def bn_in(module: nn.Module, inputs: tuple) -> None:
        pairs.update({name: bns[module] for out, name in outputs if out is inputs[0]})

    handles = [m.register_forward_hook(conv_out) for m in convs] + [m.register_forward_pre_hook(bn_in) for m in bns]
    first = next(iter(convs))
    x = torch.zeros(1, first.in_channels, input_size, input_size, device=first.weight.device)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return pairs


def keep_sample(p: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One Bernoulli draw per channel: True (kept) with probability p."""
    return torch.rand(p.shape, generator=generator) < p.cpu()


def offspring_scores(p: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """log p - log v with v uniform in (0, 1]: keeping scores above log(1/theta) keeps v < theta p."""
    v = 1 - torch.rand(p.shape, generator=generator, dtype=torch.float64)
    return (p.cpu().double().log() - v.log()).float()


class StressedNet(Method):
    name = "stressednet"
    description = "survival sampling from BN-folded filter norms under stress, over generations (Shafiee et al. 2019)"
    Config = StressedNetConfig
    start = "dense"
    sparsity_training = True

    def __init__(self, config: StressedNetConfig | None = None) -> None:
        super().__init__(config)
        self.base_seed = 0
        self.pairs: dict[str, str] | None = None  # conv -> the BN after it (derived from the model, not state)

    def setup(self, model: nn.Module, ctx: Context) -> None:
        self.base_seed = int(torch.randint(0, 2**62, (), generator=ctx.generator))
        self.pairs = conv_bn_pairs(model, ctx.input_size)

    def rounds(self, ctx: Context) -> int:
        return self.config.generations

    def _pairs(self, model: nn.Module, ctx: Context) -> dict[str, str]:
        if self.pairs is None:  # importance or stress called without setup (tests, tools)
            self.pairs = conv_bn_pairs(model, ctx.input_size)
        return self.pairs

    def producers(self, model: nn.Module, unit: PrunableUnit) -> list[tuple[str, torch.Tensor]]:
        """(name, weight as (channels, -1)) of every conv/linear producing the unit's channels."""
        return list(zip(member_producers(model, unit), member_filters(model, unit), strict=True))

    def strength(self, model: nn.Module, unit: PrunableUnit, ctx: Context) -> torch.Tensor:
        """s_c: each producer's BN-folded filter L1 norm over its mean, averaged over producers."""
        pairs, per_member = self._pairs(model, ctx), []
        for name, filters in self.producers(model, unit):
            norms = filters.detach().float().abs().sum(1)
            if name in pairs:
                norms = norms * bn_fold(module_by_name(model, pairs[name]))
            per_member.append(norms / norms.mean().clamp_min(torch.finfo(norms.dtype).tiny))
        return reduce_group(per_member, "mean")

    def probabilities(self, model: nn.Module, ctx: Context) -> dict[str, torch.Tensor]:
        """Survival probability of every channel of every unit."""
        cfg = self.config
        return {
            u.name: survival_probability(self.strength(model, u, ctx), cfg.environment, cfg.normalizer)
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
        probabilities = self.probabilities(model, ctx)  # all units before any is stressed
        with torch.no_grad():
            for unit in ctx.units:
                dropped = ~keep_sample(probabilities[unit.name], generator)
                self.stress(model, unit, dropped, ctx)

    def stress(self, model: nn.Module, unit: PrunableUnit, dropped: torch.Tensor, ctx: Context) -> None:
        """Scale the dropped channels where the network feels it: gamma and beta of every BN of the
        unit, and the filter (and bias) of every producer without a BN after it."""
        pairs = self._pairs(model, ctx)
        tensors = [t for bn in unit_bns(model, unit) for t in (bn.weight, bn.bias) if t is not None]
        for name, _ in self.producers(model, unit):
            if name not in pairs:
                module = module_by_name(model, name)
                tensors += [t for t in (module.weight, module.bias) if t is not None]
        for t in tensors:
            scale = torch.where(dropped, self.config.stress_factor, 1.0).to(t.device, t.dtype)
            t.mul_(scale.view(-1, *([1] * (t.dim() - 1))))

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
