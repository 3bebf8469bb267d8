"""The eager kernel: G and the second-difference C as one autograd Function with a hand-written
backward, over buffers reused from step to step (:class:`Workspace`)."""

from __future__ import annotations

import weakref

import torch
from torch.autograd.function import once_differentiable

from bench.flow.formulas import (
    Geometry,
    coefficients,
    geometries,
    length_and_curvature,
    per_sample_view,
    raw_norm,
    row_numels,
    values_and_slopes,
)


class FusedFlow(torch.autograd.Function):
    """G and the second-difference C in one pass, with a hand-written backward.

    Autograd through the plain formulas costs about 4x the passes over the feature maps (norm
    backward, negation, gradient accumulation per op); on resnet56 / batch 128 / CPU that made a
    training step 1.6x slower. Here the forward keeps d_l and e_l = d_l - P(d_{l-1}), and the
    backward turns those buffers, in place, into dL/dd_l and then dL/dx_l = dL/dd_{l-1} - P^T dL/dd_l.
    It can run only once per forward (no retain_graph). With a :class:`Workspace`, the e_l live in
    buffers reused from step to step."""

    @staticmethod
    def forward(ctx, align: str, norm: str, curv: bool, workspace: Workspace | None, *features: torch.Tensor):
        claim = workspace.claim() if workspace is not None else None
        pairs = geometries(list(features), align)
        ds = [
            None if g is None else _minus_aligned(n, x, g, None if claim is None else claim.buffer(("d", i), n))
            for i, (x, n, g) in enumerate(zip(features, features[1:], pairs, strict=False))
        ]
        es: list[torch.Tensor | None] = [None] * len(ds)
        if curv:
            for i in range(1, len(ds)):
                if ds[i] is not None and ds[i - 1] is not None:
                    out = None if claim is None else claim.buffer(("e", i), ds[i])
                    es[i] = _minus_aligned(ds[i], ds[i - 1], pairs[i], out)
        rows = [v for v in ds + es if v is not None]  # the d's, then the e's
        n_d = sum(d is not None for d in ds)
        raw = torch.stack([raw_norm(v, norm) for v in rows])
        values, slopes = values_and_slopes(raw, row_numels(rows, raw), norm)
        ctx.state = (norm, pairs, ds, es, slopes, n_d, [f.shape for f in features], claim)
        return length_and_curvature(values, n_d)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_length: torch.Tensor, grad_curvature: torch.Tensor):
        if ctx.state is None:
            raise RuntimeError("ffr's fused backward runs once per forward; retain_graph is not supported")
        norm, pairs, ds, es, slopes, n_d, shapes, _claim = ctx.state
        ctx.state = None  # the buffers below are overwritten in place; the workspace is free again
        rows = iter(coefficients(slopes, n_d, grad_length, grad_curvature))
        grads_d = [None if d is None else _base(d, norm).mul_(per_sample_view(next(rows), d)) for d in ds]
        for i, e in enumerate(es):  # e_i = d_i - P(d_{i-1})
            if e is not None:
                base, coefficient = _base(e, norm), per_sample_view(next(rows), e)
                grads_d[i].addcmul_(base, coefficient)
                pairs[i].source(grads_d[i - 1]).addcmul_(pairs[i].target(base), coefficient, value=-1)
        return (None, None, None, None, *_feature_grads(grads_d, pairs, shapes))


def _minus_aligned(nxt: torch.Tensor, x: torch.Tensor, geometry: Geometry, out: torch.Tensor | None = None):
    """nxt - P(x), written without materialising P(x), into ``out`` when given."""
    if nxt.shape == x.shape:
        return nxt - x if out is None else torch.sub(nxt, x, out=out)
    out = nxt.clone() if out is None else out.copy_(nxt)
    geometry.target(out).sub_(geometry.source(x))
    return out


def _base(v: torch.Tensor, norm: str) -> torch.Tensor:
    """v, or sign(v) for the L1 norm, in v's own buffer."""
    return v.sign_() if norm == "l1" else v


def _feature_grads(grads_d: list, pairs: list, shapes: list) -> list[torch.Tensor | None]:
    """dL/dx_i = dL/dd_{i-1} - P^T(dL/dd_i), reusing dL/dd_{i-1}'s buffer (left to right, so that
    each dL/dd_i is read before it is overwritten)."""
    out: list[torch.Tensor | None] = [None] * len(shapes)
    for i in range(len(shapes)):
        before = grads_d[i - 1] if i > 0 else None
        after = grads_d[i] if i < len(grads_d) else None
        if after is not None:
            if before is None:
                before = torch.empty(shapes[i], dtype=after.dtype, device=after.device, memory_format=_format_of(after))
                before.zero_()
            pairs[i].source(before).sub_(pairs[i].target(after))
        out[i] = before
    return out


def _format_of(t: torch.Tensor) -> torch.memory_format:
    channels_last = t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


class Workspace:
    """Buffers for the d_l and e_l, reused from one training step to the next. Fresh ones would be
    ~B x (size of all features) of new memory each per step (140 MB on resnet56 at batch 128), and
    on CPU new memory costs page faults: reusing the e_l measured about 3% of a resnet56 step. One
    forward claims the buffers until its backward has run or its graph is freed, and a second
    forward in the meantime allocates its own. The backward returns the features' gradients in the
    d_l buffers; autograd has consumed them before the next step's forward writes there."""

    def __init__(self) -> None:
        self.buffers: dict[tuple[str, int], torch.Tensor] = {}
        self._owner: weakref.ref | None = None

    def claim(self) -> _Claim | None:
        if self._owner is not None and self._owner() is not None:
            return None
        claim = _Claim(self)
        self._owner = weakref.ref(claim)
        return claim

    def clear(self) -> None:
        self.buffers.clear()


class _Claim:
    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace

    def buffer(self, key: tuple[str, int], like: torch.Tensor) -> torch.Tensor:
        buffers = self.workspace.buffers
        old = buffers.get(key)
        layout = (like.shape, like.stride(), like.dtype, like.device)
        if old is None or (old.shape, old.stride(), old.dtype, old.device) != layout:
            buffers[key] = torch.empty_like(like)
        return buffers[key]
