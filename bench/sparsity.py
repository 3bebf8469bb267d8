"""Sparsity curves: the two sparsities FFR's paper claims to improve, measured on any model, raw and
with the BatchNorm folded in.

- **unstructured**: the fraction of conv and linear weights with |w| < eps;
- **structured**: the fraction of conv filters whose mean |w| (||W_c||_1 / numel) is < eps.

Behind a BatchNorm a conv filter's scale does not change the function (the BN divides it out), so
a raw |w| threshold measures weight decay as much as sparsity, and slim's sparsity, which lives in
gamma, is invisible to it. Hence three more curves (methods/README.md, "Sparsity that BatchNorm cannot hide"):

- **unstructured_folded** / **structured_folded**: the same on every conv's BN-folded weights,
  W_c * |gamma_c| / sqrt(var_c + eps_bn) (the filter the network computes with at inference), each
  divided by its layer's mean folded |w|, so eps is relative to the layer (1e-2: one hundredth of the
  layer's mean) and layers of different scales compare. A conv without a BN right after it (in
  registration order, with matching width) folds with 1. Linear layers are left out: no BN folds
  into them in the models we ship.
- **gamma**: the fraction of BN channels with |gamma| < eps (raw: what slim's global threshold reads).

All over a log-spaced grid of eps, so a curve shows how much of a network sits near zero at every
scale, not only at one arbitrary threshold. The runner logs them for the dense baseline and for
every method's model just before its first pruning (after sparsity training, where there is one),
as an MLflow artifact (``sparsity.json``) and as metrics at fixed eps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from bench.curves import CURVES
from bench.errors import BenchError
from bench.importance import bn_fold, is_affine_bn
from bench.schema import Artifact, Tag, sparsity_metric

EPS_GRID = tuple(float(e) for e in torch.logspace(-6, 0, 25, dtype=torch.float64))  # 4 points per decade
REPORT_EPS = (1e-4, 1e-3, 1e-2, 1e-1)  # eps logged as scalar metrics
ARTIFACT = Artifact.SPARSITY


@dataclass(frozen=True)
class SparsityCurves:
    """Fractions in [0, 1] per eps of ``eps`` (one tuple per name of ``CURVES``); counts say what the
    fractions are of."""

    eps: tuple[float, ...]
    unstructured: tuple[float, ...]
    structured: tuple[float, ...]
    weights: int  # conv + linear weights counted
    filters: int  # conv output filters counted
    unstructured_folded: tuple[float, ...] = ()
    structured_folded: tuple[float, ...] = ()
    gamma: tuple[float, ...] = ()
    bn_channels: int = 0  # BN channels counted by ``gamma``

    def as_dict(self) -> dict:
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        """Fractions at REPORT_EPS, as MLflow metric names (``sparsity/structured_folded_eps_1e-02``)."""
        out = {}
        for kind in CURVES:
            curve = getattr(self, kind)
            for eps in REPORT_EPS if curve else ():
                out[sparsity_metric(kind, eps)] = fraction_below(self.eps, curve, eps)
        return out


def sparsity_curves(model: nn.Module, eps: tuple[float, ...] = EPS_GRID) -> SparsityCurves:
    """Measure every curve of ``model`` (raw curves: conv + linear weights; BN and biases not counted)."""
    grid = torch.tensor(eps, dtype=torch.float64)
    magnitudes, filter_means = [], []
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            w = module.weight.detach().abs().double().cpu()
            magnitudes.append(w.flatten())
            if isinstance(module, nn.Conv2d):
                filter_means.append(w.flatten(1).mean(1))
    mags, means = torch.cat(magnitudes), torch.cat(filter_means)
    folded = [layer_relative(w) for w in folded_conv_weights(model)]
    gammas = [bn.weight.detach().abs().double().cpu() for bn in model.modules() if is_affine_bn(bn)]
    gamma = torch.cat(gammas) if gammas else torch.zeros(0, dtype=torch.float64)
    return SparsityCurves(
        tuple(eps),
        _fractions_below(mags, grid),
        _fractions_below(means, grid),
        mags.numel(),
        means.numel(),
        unstructured_folded=_fractions_below(torch.cat([w.flatten() for w in folded]), grid),
        structured_folded=_fractions_below(torch.cat([w.flatten(1).mean(1) for w in folded]), grid),
        gamma=_fractions_below(gamma, grid) if gammas else (),
        bn_channels=gamma.numel(),
    )


def folded_conv_weights(model: nn.Module) -> list[torch.Tensor]:
    """|W| of every conv with its BN folded in: |W_c| * |gamma_c| / sqrt(var_c + eps_bn) (float64, CPU).

    The BN of a conv is the next module in registration order when it is a BatchNorm2d of the conv's
    width (our models and timm's register each conv's BN right after it); a conv without one folds with 1.
    """
    leaves = list(model.modules())  # pre-order: a conv (a leaf) is followed by the next module it feeds in our models
    out = []
    for i, module in enumerate(leaves):
        if not isinstance(module, nn.Conv2d):
            continue
        w = module.weight.detach().abs().double().cpu()
        bn = leaves[i + 1] if i + 1 < len(leaves) else None
        if is_affine_bn(bn) and bn.num_features == w.shape[0] and bn.running_var is not None:
            w = w * bn_fold(bn, torch.float64).cpu().view(-1, *([1] * (w.dim() - 1)))
        out.append(w)
    return out


def layer_relative(weights: torch.Tensor) -> torch.Tensor:
    """``weights`` over their mean (an all-zero layer stays zero): eps becomes a fraction of the layer's scale."""
    return weights / weights.mean().clamp_min(torch.finfo(weights.dtype).tiny)


def _fractions_below(values: torch.Tensor, grid: torch.Tensor) -> tuple[float, ...]:
    """Fraction of ``values`` strictly below each threshold (one sort, one searchsorted)."""
    ordered = torch.sort(values).values
    counts = torch.searchsorted(ordered, grid, side="left")
    return tuple(float(c) / max(values.numel(), 1) for c in counts)


def fraction_below(eps_grid: tuple[float, ...], curve: tuple[float, ...], eps: float) -> float:
    """The curve at ``eps`` (the grid holds REPORT_EPS up to float rounding; nearest point otherwise)."""
    index = min(range(len(eps_grid)), key=lambda i: abs(eps_grid[i] / eps - 1))
    return curve[index]


def stored_curves(tracking_uri: str, run_id: str) -> dict[str, dict]:
    """Curves stored by ``run_id``, or by each of its nested runs when it is a parent: label -> curves.

    Labels are "<method> s<seed>", so a parent run shows FFR's curves beside the dense baseline's.
    """
    from bench.store import Store

    store = Store.open(tracking_uri)
    runs = sorted(store.expand(run_id), key=lambda r: r.info.start_time)
    curves = {}
    for run in runs:
        found = store.find_json(run.info.run_id, ARTIFACT)
        if found is not None:
            tags = run.data.tags
            curves[f"{tags.get(Tag.METHOD, run.info.run_name)} s{tags.get(Tag.SEED, '?')}"] = found
    if not curves:
        raise BenchError(f"run '{run_id}' has no {ARTIFACT} (nor do its nested runs); it predates sparsity logging")
    return curves
