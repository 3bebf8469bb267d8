"""Sparsity curves: the two sparsities FFR's paper claims to improve, measured on any model.

- **unstructured**: the fraction of conv and linear weights with |w| < eps;
- **structured**: the fraction of conv filters whose mean |w| (||W_c||_1 / numel) is < eps.
Both over a log-spaced grid of eps, so a curve shows how much of a network sits near zero at
every scale, not only at one arbitrary threshold. The runner logs them for the dense baseline and
for every method's model just before its first pruning (after sparsity training, where there is
one), as an MLflow artifact (``sparsity.json``) and as metrics at fixed eps.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from bench.errors import BenchError
from bench.schema import Artifact, Tag, sparsity_metric

EPS_GRID = tuple(float(e) for e in torch.logspace(-6, 0, 25, dtype=torch.float64))  # 4 points per decade
REPORT_EPS = (1e-4, 1e-3, 1e-2)  # eps logged as scalar metrics
ARTIFACT = Artifact.SPARSITY


@dataclass(frozen=True)
class SparsityCurves:
    """Fractions in [0, 1] per eps of ``eps``; counts say what the fractions are of."""

    eps: tuple[float, ...]
    unstructured: tuple[float, ...]
    structured: tuple[float, ...]
    weights: int  # conv + linear weights counted
    filters: int  # conv output filters counted

    def as_dict(self) -> dict:
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        """Fractions at REPORT_EPS, as MLflow metric names (``sparsity/unstructured_eps_1e-03``)."""
        out = {}
        for eps in REPORT_EPS:
            out[sparsity_metric("unstructured", eps)] = fraction_below(self.eps, self.unstructured, eps)
            out[sparsity_metric("structured", eps)] = fraction_below(self.eps, self.structured, eps)
        return out


def sparsity_curves(model: nn.Module, eps: tuple[float, ...] = EPS_GRID) -> SparsityCurves:
    """Measure both curves of ``model`` (weights only; BN and biases are not counted)."""
    grid = torch.tensor(eps, dtype=torch.float64)
    magnitudes, filter_means = [], []
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            w = module.weight.detach().abs().double().cpu()
            magnitudes.append(w.flatten())
            if isinstance(module, nn.Conv2d):
                filter_means.append(w.flatten(1).mean(1))
    mags, means = torch.cat(magnitudes), torch.cat(filter_means)
    return SparsityCurves(
        tuple(eps), _fractions_below(mags, grid), _fractions_below(means, grid), mags.numel(), means.numel()
    )


def _fractions_below(values: torch.Tensor, grid: torch.Tensor) -> tuple[float, ...]:
    """Fraction of ``values`` strictly below each threshold (one sort, one searchsorted)."""
    ordered = torch.sort(values).values
    counts = torch.searchsorted(ordered, grid, side="left")
    return tuple(float(c) / max(values.numel(), 1) for c in counts)


def fraction_below(eps_grid: tuple[float, ...], curve: tuple[float, ...], eps: float) -> float:
    """The curve at ``eps`` (the grid holds REPORT_EPS up to float rounding; nearest point otherwise)."""
    index = min(range(len(eps_grid)), key=lambda i: abs(eps_grid[i] / eps - 1))
    return curve[index]


def format_curves(named: dict[str, dict]) -> str:
    """A text table: one row per eps, columns unstructured/structured per named model."""
    names = list(named)
    eps = named[names[0]]["eps"]
    header = ["eps", *[f"{n} unstr." for n in names], *[f"{n} struct." for n in names]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for i, e in enumerate(eps):
        unstructured = [f"{named[n]['unstructured'][i]:.3f}" for n in names]
        structured = [f"{named[n]['structured'][i]:.3f}" for n in names]
        lines.append("| " + " | ".join([f"{e:.1e}", *unstructured, *structured]) + " |")
    return "\n".join(lines)


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
