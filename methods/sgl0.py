"""sgl0: sparse group L0 + L2,1 by relaxed variable splitting (Kevin Bui, Fredrick Park, Shuai
Zhang, Yingyong Qi, Jack Xin; "l0 Regularized Structured Sparsity Convolutional Neural Networks",
arXiv 1912.07868, 2019; "Structured Sparsity of Convolutional Neural Networks via Nonconvex Sparse
Group Regularization", Frontiers in Applied Mathematics and Statistics 6:529564, 2021, doi
10.3389/fams.2020.529564; official code: github.com/kbui1993/Official_Nonconvex_SGL).

Each regularized layer (every producer conv of every prunable unit: in a CIFAR ResNet exactly the
first conv of each block, as the authors regularize) gets an auxiliary copy U of its weights W.
Training minimizes cross-entropy plus, per unit and divided by the training-set size N (the
authors' code divides the whole regularizer by N = 50,000; we use ``ctx.train_size``)::

    lam * ||U||_0  +  lam * sqrt(|g|) * sum_g ||W_g||_2  +  beta / 2 * ||W - U||^2

with a group g = one output channel's filter (|g| = C_in * k * k). Each iteration alternates: an
optimizer step on W with U fixed (the L2,1 and coupling terms are :meth:`regularization`, so
autograd and the run's optimizer handle them; ||U||_0 has no gradient in W), then
:meth:`after_step` sets U to the L0 proximal point, U = hard-threshold(W, sqrt(2 lam / beta)):
entries with |w| >= t are kept, the rest zeroed (at |w| = t both choices have the same objective;
the authors' ``Hardshrink`` keeps |w| > t, a measure-zero difference). beta grows x1.25 every
``beta_every`` epochs of the sparsity phase (authors: 20, 40 for LeNet), in :meth:`on_epoch_end`
after the epoch's last step, as in the authors' loop. ``threshold="soft"`` swaps the L0 term for
lam * ||U||_1, whose proximal point is the soft threshold at lam / beta (the authors'
``group_relaxed_L1`` variant).

Read in the authors' code (``train_group_relaxed_wideresnet.py``, ``wideresnet_models.py``,
``new_layers/group_relaxed_L0_layers.py``), CIFAR wide ResNet 28-10: lam 1e-3, beta 0.04 (our
defaults), trained from scratch (``start="scratch"``) for 200 epochs, batch 128, SGD momentum 0.9
Nesterov, lr 0.1 x0.2 at epochs 60/120/160. The optimizer has no weight decay; the model's own
regularizer adds 5e-4/2 ||p||^2 on every other layer (and BN), none on a regularized conv's weight,
whose only penalty is the sgl0 term. Validation loads an exponential moving average of the
parameters (``beta_ema`` 0.99, every step). These are the paper preset's ``[method.sgl0.sparsity]``
and ``[method.sgl0.params]`` sections (bench/presets/paper.toml); other presets run sgl0 on the
run's sparsity schedule. :meth:`no_weight_decay` exempts the regularized weights from the
optimizer's weight decay on every preset (the L2,1 term is their regulariser).

``ema`` (default 0: off; the paper preset sets the authors' 0.99): with it, the harness keeps a
bias-corrected EMA of the parameters during the sparsity phase (``bench.training.ParamEMA``);
validation, selection and the model handed to pruning use the averaged parameters, BN running
statistics stay the trained model's (the authors average ``parameters()`` only). Importance then
reads U = threshold(W_ema): the channels removed are those the averaged model, the one that was
evaluated, has emptied. U itself, the coupling and the threshold steps follow the live W, as in the
authors' loop. We chose off by default: on other presets every method is evaluated on its live
weights, and an average is a change of protocol, not of sgl0's objective.

DepGraph units (a whole coupled group, e.g. timm's resnet18 ``layer4.0.downsample.0`` with three
producer convs): the group g of channel c is every producer's filter c together (|g| = the sum of
their sizes), so the L2,1 term pulls the whole coupled channel toward zero; every producer conv gets
its U and is thresholded; the score reduces the members' per-layer-normalised norms by their mean
(``bench.api.reduce_group``), and a channel is empty when every member's U filter is zero. A chain
unit (one producer) is exactly the single-filter case above.

Our choices:
- U starts as the thresholded initial W (the authors start it uniform in [0, 1), an artefact that
  the first thresholding overwrites).
- Importance (``importance="U"``): a filter's ||U_g||_2 divided by the mean ||U_g||_2 of its layer
  (l1's ``layer_mean`` rule, applied to U). The L0 threshold is one absolute number for every
  layer, while weight scales differ by layer (fan-out init, BN makes scale free), so raw or
  W-normalised U norms rank whole wide layers last. Measured on a trained resnet20 (15 epochs),
  t = 0.092 (beta after 160 epochs), no empty group, 40% FLOPs target: U / mean ||W_g|| kept
  2-6% of each stage-3 layer (123 channels in all), U / mean ||U_g|| kept 58-66% of every layer
  (204 channels), close to the W-norm scores' 44-69% (211). A filter whose U group is all zero is
  removed by the method: it scores below every filter with a nonzero U group, in [-1, 0):
  -1 / (1 + ||W_g|| / mean ||W_g||). The global FLOPs-target rule then decides the rest; when more
  groups are empty than the target needs, the empty-U filters with the largest W go last, instead
  of the allocation's stable sort breaking the tie by layer order (first stage first). Same
  network at the initial t = 0.224: 0-20 of the 16-32-wide layers' filters and 63-64 of each
  64-wide layer's are empty, so sgl0 prunes stage 3 first whichever normalisation is used; that is
  the method's decision. ``importance="W"`` scores ||W_g||_2 / mean ||W_g||_2 (l1's rule with L2).
- The scores use U = threshold(W) recomputed from the weights being pruned, at the threshold of
  the last step: after sparsity training the harness hands on the last (or best-validation)
  epoch's weights, or their EMA, and the stored U belongs to the last step's live W. When the
  weights are the last step's, the two are bitwise equal.
- Across rounds (the method itself runs one), U is keyed by layer name; after surgery a layer's U
  has a stale shape and is re-initialized as threshold(W) at the next training step, which is
  exactly the sliced U when no training happened in between. beta is state: it keeps growing
  across sparsity phases instead of restarting. U and beta survive a resume (:meth:`state_dict`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from bench.api import (
    Context,
    Method,
    PrunableUnit,
    layer_mean,
    member_filters,
    member_producers,
    module_by_name,
    reduce_group,
)
from bench.errors import BenchError

THRESHOLDS = ("hard", "soft")
IMPORTANCES = ("U", "W")


@dataclass(frozen=True)
class SGL0Config:
    """``lam``: weight of the L0 (or L1) term on U and of the L2,1 term on W, per channel group
    (times sqrt of the group size), before the division by N. ``beta``: initial weight of the
    coupling beta/2 ||W - U||^2; ``beta_growth`` multiplies it every ``beta_every`` sparsity epochs.
    ``threshold``: "hard" (L0, at sqrt(2 lam / beta)) or "soft" (L1, at lam / beta).
    ``importance``: score channels by U (default) or by W. ``ema``: decay per optimizer step of the
    moving average of the parameters that evaluation and pruning use; 0 = off (the authors: 0.99)."""

    lam: float = 1e-3
    beta: float = 0.04
    beta_growth: float = 1.25
    beta_every: int = 20
    threshold: str = "hard"
    importance: str = "U"
    ema: float = 0.0

    def __post_init__(self) -> None:
        if not self.lam > 0:
            raise ValueError(f"lam must be > 0, got {self.lam}")
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if not self.beta_growth >= 1:
            raise ValueError(f"beta_growth must be >= 1, got {self.beta_growth}")
        if self.beta_every < 1:
            raise ValueError(f"beta_every must be >= 1 (epochs), got {self.beta_every}")
        if self.threshold not in THRESHOLDS:
            raise ValueError(f"threshold must be one of {', '.join(THRESHOLDS)}, got '{self.threshold}'")
        if self.importance not in IMPORTANCES:
            raise ValueError(f"importance must be one of {', '.join(IMPORTANCES)}, got '{self.importance}'")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must be in [0, 1) (0: off; the authors use 0.99), got {self.ema}")


class SparseGroupL0(Method):
    name = "sgl0"
    description = "sparse group L0 + L2,1 by variable splitting, trained from scratch (Bui et al. 2021)"
    Config = SGL0Config
    start = "scratch"
    sparsity_training = True

    def __init__(self, config: SGL0Config | None = None) -> None:
        super().__init__(config)
        self.beta = self.config.beta  # current coupling weight; grows in on_epoch_end
        self.u_beta = self.config.beta  # the beta that the current U was thresholded with
        self.u: dict[str, torch.Tensor] = {}  # layer name -> U, same shape as its weight

    # --- the splitting ----------------------------------------------------------------------
    def threshold(self, beta: float | None = None) -> float:
        """The proximal threshold: sqrt(2 lam / beta) for L0 (hard), lam / beta for L1 (soft)."""
        beta = self.beta if beta is None else beta
        if self.config.threshold == "hard":
            return math.sqrt(2 * self.config.lam / beta)
        return self.config.lam / beta

    def prox(self, weight: torch.Tensor, beta: float | None = None) -> torch.Tensor:
        """U for fixed W: the proximal point of the L0 (or L1) term, elementwise."""
        w = weight.detach()
        t = self.threshold(beta)
        if self.config.threshold == "hard":
            return torch.where(w.abs() >= t, w, torch.zeros_like(w))
        return torch.sign(w) * (w.abs() - t).clamp_min(0)

    def layers(self, model: nn.Module, ctx: Context) -> dict[str, nn.Module]:
        """The regularized layers: every producer conv of every prunable unit."""
        return {name: module_by_name(model, name) for u in ctx.units for name in member_producers(model, u)}

    def setup(self, model: nn.Module, ctx: Context) -> None:
        self._refresh_stale(model, ctx)

    def no_weight_decay(self, model: nn.Module, ctx: Context) -> set[str]:
        """The regularized weights: their penalty is the sgl0 term (the authors' optimizer has none)."""
        return {f"{name}.weight" for name in self.layers(model, ctx)}

    def ema_decay(self, ctx: Context) -> float | None:
        return self.config.ema or None

    def regularization(self, model: nn.Module, features: list[torch.Tensor], ctx: Context) -> torch.Tensor | None:
        if ctx.train_size <= 0:
            raise BenchError("sgl0 divides its regularizer by the training-set size, and ctx.train_size is not set")
        self._refresh_stale(model, ctx)
        terms = [self.unit_penalty(model, unit) for unit in ctx.units]
        return sum(terms) / ctx.train_size if terms else None

    def unit_penalty(self, model: nn.Module, unit: PrunableUnit) -> torch.Tensor:
        """lam sqrt(|g|) sum_g ||W_g||_2 + beta/2 ||W - U||^2 over the unit's producers (the part with
        a W gradient); g = channel c of every producer together."""
        filters, names = member_filters(model, unit), member_producers(model, unit)
        grouped = torch.cat(filters, dim=1) if len(filters) > 1 else filters[0]
        group_size = grouped.shape[1]
        group_norms = torch.linalg.vector_norm(grouped, dim=1)  # its gradient at an all-zero group is 0
        coupling = sum((f - self.u[n].reshape(f.shape)).pow(2).sum() for f, n in zip(filters, names, strict=True))
        return self.config.lam * math.sqrt(group_size) * group_norms.sum() + 0.5 * self.beta * coupling

    def after_step(self, model: nn.Module, ctx: Context) -> None:
        with torch.no_grad():
            for name, layer in self.layers(model, ctx).items():
                self.u[name] = self.prox(layer.weight)
        self.u_beta = self.beta

    def on_epoch_end(self, model: nn.Module, ctx: Context) -> None:
        if ctx.phase == "sparsity" and (ctx.epoch + 1) % self.config.beta_every == 0:
            self.beta *= self.config.beta_growth

    def _refresh_stale(self, model: nn.Module, ctx: Context) -> None:
        """U of a new layer, or of one whose shape surgery changed, restarts as threshold(W)."""
        for name, layer in self.layers(model, ctx).items():
            u = self.u.get(name)
            if u is None or u.shape != layer.weight.shape:
                self.u[name] = self.prox(layer.weight, self.u_beta)
            elif u.device != layer.weight.device:
                self.u[name] = u.to(layer.weight.device)

    # --- scores -----------------------------------------------------------------------------
    def importance(self, model: nn.Module, ctx: Context) -> dict[str, torch.Tensor]:
        return {unit.name: self.unit_scores(model, unit).cpu() for unit in ctx.units}

    def unit_scores(self, model: nn.Module, unit: PrunableUnit) -> torch.Tensor:
        """Per channel: the producers' ||U_g|| / layer mean, reduced by their mean; an all-zero U
        channel scores -1 / (1 + W score) instead (module docs)."""
        filters = [f.detach().float() for f in member_filters(model, unit)]
        w_rel = reduce_group([layer_mean(torch.linalg.vector_norm(f, dim=1)) for f in filters])
        if self.config.importance == "W":
            return w_rel
        u_norms = [torch.linalg.vector_norm(self.prox(f, self.u_beta), dim=1) for f in filters]
        u_rel = reduce_group([layer_mean(n) for n in u_norms])
        empty = sum(u_norms) == 0
        return torch.where(empty, -1 / (1 + w_rel), u_rel)

    # --- state and sweeps -------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "beta": self.beta,
            "u_beta": self.u_beta,
            "u": {name: u.detach().cpu().clone() for name, u in self.u.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self.beta = float(state["beta"])
        self.u_beta = float(state["u_beta"])
        self.u = {name: u.clone() for name, u in state["u"].items()}

    def search_space(self, trial) -> dict:
        return {
            "lam": trial.suggest_float("lam", 1e-4, 1e-2, log=True),
            "beta": trial.suggest_float("beta", 0.01, 0.4, log=True),
        }
