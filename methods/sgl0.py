"""sgl0: sparse group L0 + L2,1 by relaxed variable splitting (Bui, Park, Zhang, Qi, Xin;
"l0 Regularized Structured Sparsity Convolutional Neural Networks", arXiv 1912.07868; "Structured
Sparsity of Convolutional Neural Networks via Nonconvex Sparse Group Regularization", Frontiers in
Applied Mathematics and Statistics 2021; official code: github.com/kbui1993/Official_Nonconvex_SGL).

Each regularized layer (the producer conv of every prunable unit: in a CIFAR ResNet exactly the
first conv of each block, as the authors regularize) gets an auxiliary copy U of its weights W.
Training minimizes cross-entropy plus, per layer and divided by the training-set size N (the
authors' code divides the whole regularizer by N = 50,000; we use ``ctx.train_size``)::

    lam * ||U||_0  +  lam * sqrt(|g|) * sum_g ||W_g||_2  +  beta / 2 * ||W - U||^2

with a group g = one output filter (|g| = C_in * k * k). Each iteration alternates: an optimizer
step on W with U fixed (the L2,1 and coupling terms are :meth:`regularization`, so autograd and
the run's optimizer handle them; ||U||_0 has no gradient in W), then :meth:`after_step` sets U to
the L0 proximal point, U = hard-threshold(W, sqrt(2 lam / beta)): entries with |w| >= t are kept,
the rest zeroed (at |w| = t both choices have the same objective; the authors' ``Hardshrink``
keeps |w| > t, a measure-zero difference). beta grows x1.25 every ``beta_every`` epochs of the
sparsity phase (authors: 20, 40 for LeNet), in :meth:`on_epoch_end` after the epoch's last step,
as in the authors' loop. ``threshold="soft"`` swaps the L0 term for lam * ||U||_1, whose proximal
point is the soft threshold at lam / beta (the authors' ``group_relaxed_L1`` variant).

Defaults are the authors' CIFAR ones (wide ResNet 28-10): lam 1e-3, beta 0.04. Their schedule
(train from scratch, SGD Nesterov lr 0.1 x0.2 at 60/120/160, 200 epochs, wd 5e-4) is the run's
sparsity schedule; the method starts from scratch.

Our choices:
- U starts as the thresholded initial W (the authors start it uniform in [0, 1), an artefact that
  the first thresholding overwrites).
- Importance (``importance="U"``): a filter's ||U_g||_2 divided by the mean ||U_g||_2 of its layer
  (l1's ``layer_mean`` rule, applied to U). The L0 threshold is one absolute number for every
  layer, while weight scales differ by layer (fan-out init, BN makes scale free), so raw or
  W-normalised U norms rank whole wide layers last. Measured on a trained resnet20 (15 epochs),
  t = 0.092 (beta after 160 epochs), no empty group, 40% FLOPs target: U / mean ||W_g|| kept
  2-6% of each stage-3 layer (123 channels in all), U / mean ||U_g|| kept 58-66% of every layer
  (204 channels), close to the W-norm scores' 44-69% (211). A filter whose U group is all zero is removed by
  the method: it scores below every filter with a nonzero U group, in [-1, 0):
  -1 / (1 + ||W_g|| / mean ||W_g||). The global FLOPs-target rule then decides the rest; when more
  groups are empty than the target needs, the empty-U filters with the largest W go last, instead
  of the allocation's stable sort breaking the tie by layer order (first stage first). Same
  network at the initial t = 0.224: 0-20 of the 16-32-wide layers' filters and 63-64 of each
  64-wide layer's are empty, so sgl0 prunes stage 3 first whichever normalisation is used; that is
  the method's decision. ``importance="W"`` scores ||W_g||_2 / mean ||W_g||_2 (l1's rule with L2).
- The scores use U = threshold(W) recomputed from the weights being pruned, at the threshold of
  the last step: after sparsity training the harness restores the best-validation epoch, and the
  stored U belongs to the last step. When the best epoch is the last, the two are bitwise equal.
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

from bench.api import Context, Method, layer_mean, module_by_name
from bench.errors import BenchError

THRESHOLDS = ("hard", "soft")
IMPORTANCES = ("U", "W")


@dataclass(frozen=True)
class SGL0Config:
    """``lam``: weight of the L0 (or L1) term on U and of the L2,1 term on W, per filter group
    (times sqrt of the group size), before the division by N. ``beta``: initial weight of the
    coupling beta/2 ||W - U||^2; ``beta_growth`` multiplies it every ``beta_every`` sparsity epochs.
    ``threshold``: "hard" (L0, at sqrt(2 lam / beta)) or "soft" (L1, at lam / beta).
    ``importance``: score filters by U (default) or by W; see the module docs."""

    lam: float = 1e-3
    beta: float = 0.04
    beta_growth: float = 1.25
    beta_every: int = 20
    threshold: str = "hard"
    importance: str = "U"

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
        """The regularized layers: the producer conv of every prunable unit."""
        return {u.producer: module_by_name(model, u.producer) for u in ctx.units}

    def setup(self, model: nn.Module, ctx: Context) -> None:
        self._refresh_stale(model, ctx)

    def regularization(self, model: nn.Module, features: list[torch.Tensor], ctx: Context) -> torch.Tensor | None:
        if ctx.train_size <= 0:
            raise BenchError("sgl0 divides its regularizer by the training-set size, and ctx.train_size is not set")
        self._refresh_stale(model, ctx)
        total = None
        for name, layer in self.layers(model, ctx).items():
            term = self.layer_penalty(layer.weight, self.u[name])
            total = term if total is None else total + term
        return None if total is None else total / ctx.train_size

    def layer_penalty(self, weight: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """lam sqrt(|g|) sum_g ||W_g||_2 + beta/2 ||W - U||^2 for one layer (the part with a W gradient)."""
        group_size = weight[0].numel()
        group_norms = torch.linalg.vector_norm(weight.flatten(1), dim=1)
        coupling = (weight - u).pow(2).sum()
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
        scores = {}
        for unit in ctx.units:
            weight = module_by_name(model, unit.producer).weight.detach().float()
            w_norms = torch.linalg.vector_norm(weight.flatten(1), dim=1)
            w_rel = layer_mean(w_norms)
            if self.config.importance == "W":
                scores[unit.name] = w_rel.cpu()
                continue
            u_norms = torch.linalg.vector_norm(self.prox(weight, self.u_beta).flatten(1), dim=1)
            scores[unit.name] = torch.where(u_norms > 0, layer_mean(u_norms), -1 / (1 + w_rel)).cpu()
        return scores

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
