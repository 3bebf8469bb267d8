"""The formulas the flow kernels share: the alignment P, the differences d_l and e_l, and the
per-sample norms with their slopes. Pure functions of tensors; the fused and compiled kernels
(``bench.flow.fused``, ``bench.flow.compiled``) build on them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

import torch
import torch.nn.functional as F

from bench.errors import BenchError


@dataclass(frozen=True)
class Geometry:
    """Where P puts x_l inside x_{l+1}'s shape: x[:, :, ::sh, ::sw] lands on channels low..low+C."""

    sh: int
    sw: int
    low: int
    channels: int

    @staticmethod
    def between(src: torch.Size, dst: torch.Size) -> Geometry:
        channels, height, width = src
        if dst[0] < channels:
            raise BenchError(
                f"ffr cannot align a feature of {channels} channels to one of {dst[0]}: the zero-padding "
                'alignment only widens; use align="stage" for this model'
            )
        return Geometry(_ratio(height, dst[1]), _ratio(width, dst[2]), (dst[0] - channels) // 2, channels)

    def source(self, x: torch.Tensor) -> torch.Tensor:
        """The entries of an x_l-shaped tensor that P keeps (a view)."""
        return x if self.sh == self.sw == 1 else x[:, :, :: self.sh, :: self.sw]

    def target(self, y: torch.Tensor) -> torch.Tensor:
        """The entries of an x_{l+1}-shaped tensor that P fills (a view)."""
        return y if self.low == 0 and self.channels == y.shape[1] else y[:, self.low : self.low + self.channels]


def _ratio(size: int, target: int) -> int:
    stride = -(-size // target)  # ceil: a stride-2 conv with padding maps 7 -> 4
    if target > size or -(-size // stride) != target:
        raise BenchError(f"ffr cannot align a {size}-pixel feature map to {target} pixels by subsampling")
    return stride


def align_to(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """P: map a batch ``x`` (N, C, H, W) into per-sample ``shape`` (C', H', W') like an option-A
    shortcut: subsample by the integer spatial ratio, zero-pad channels equally on both sides."""
    return aligned(x, Geometry.between(x.shape[1:], shape), shape[0])


def aligned(x: torch.Tensor, geometry: Geometry, channels: int) -> torch.Tensor:
    """P(x) into ``channels`` channels (pure)."""
    x = geometry.source(x)
    if geometry.channels != channels:
        x = F.pad(x, (0, 0, 0, 0, geometry.low, channels - geometry.channels - geometry.low))
    return x


def adjoint(y: torch.Tensor, geometry: Geometry, shape: torch.Size) -> torch.Tensor:
    """P^T(y): the entries P filled, put back where they came from in a ``shape``-shaped sample; zeros elsewhere."""
    part = geometry.target(y)
    if geometry.sh == geometry.sw == 1:
        return part
    out = part.new_zeros((len(part), *shape))
    geometry.source(out).copy_(part)
    return out


def geometries(features: list[torch.Tensor], align: str) -> list[Geometry | None]:
    """P for every consecutive pair; None where ``align="stage"`` skips the pair (shapes differ)."""
    out = []
    for x, nxt in pairwise(features):
        skip = align == "stage" and x.shape != nxt.shape
        out.append(None if skip else Geometry.between(x.shape[1:], nxt.shape[1:]))
    return out


def differences(features, geometries, curv: bool) -> tuple[list, list]:
    """d_l = x_{l+1} - P(x_l) and e_l = d_l - P(d_{l-1}) as pure expressions (None where skipped)."""
    pairs = zip(features, features[1:], geometries, strict=False)
    ds = [None if g is None else n - aligned(x, g, n.shape[1]) for x, n, g in pairs]
    es: list[torch.Tensor | None] = [None] * len(ds)
    for i in range(1, len(ds) if curv else 0):
        if ds[i] is not None and ds[i - 1] is not None:
            es[i] = ds[i] - aligned(ds[i - 1], geometries[i], ds[i].shape[1])
    return ds, es


def raw_norm(v: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample L1 (``l1``) or L2 norm of ``v``, not yet normalised."""
    return torch.linalg.vector_norm(v, 1 if norm == "l1" else 2, tuple(range(1, v.dim())))


def values_and_slopes(raw: torch.Tensor, numel: torch.Tensor, norm: str) -> tuple[torch.Tensor, torch.Tensor]:
    """From raw per-sample L1 or L2 norms (rows of ``raw``, one row per difference, ``numel``
    elements per sample), the normalised values, and k such that d value / dv = k * v (``l2``,
    ``l2sq``) or k * sign(v) (``l1``)."""
    if norm == "l1":
        return raw / numel, (1 / numel).expand_as(raw)
    if norm == "l2sq":
        return raw.square() / numel, (2 / numel).expand_as(raw)
    root = numel.sqrt()
    return raw / root, torch.where(raw > 0, 1 / (raw * root), 0.0)  # |v| = 0: slope 0


def row_numels(rows: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """Elements per sample of each difference row, a column on ``like``'s dtype and device."""
    return torch.tensor([[math.prod(v.shape[1:])] for v in rows], dtype=like.dtype).to(like.device)


def length_and_curvature(values: torch.Tensor, n_d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(G, C) from the per-sample values, rows d_0.. then e_..: batch means, summed over pairs."""
    return values[:n_d].mean(1).sum(), values[n_d:].mean(1).sum()


def coefficients(slopes: torch.Tensor, n_d: int, grad_length: torch.Tensor, grad_curvature: torch.Tensor):
    """Per difference (row) and sample: c such that d(grad_G * G + grad_C * C) / dv = c * v (or c * sign v)."""
    scale = torch.cat([grad_length.expand(n_d), grad_curvature.expand(len(slopes) - n_d)]) / slopes.shape[1]
    return slopes * scale[:, None]


def per_sample_view(c: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """A per-sample column ``c`` shaped to broadcast against the batch ``v``."""
    return c.view((-1,) + (1,) * (v.dim() - 1))
