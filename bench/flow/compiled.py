"""The compiled kernel: the pure formulas of G and C and of their gradients, compiled by inductor
for one signature (shapes, strides, dtypes, devices of the features; align, norm, curv)."""

from __future__ import annotations

import functools
import inspect

import torch
from torch.autograd.function import once_differentiable

from bench.flow.formulas import (
    adjoint,
    coefficients,
    differences,
    geometries,
    length_and_curvature,
    per_sample_view,
    raw_norm,
    row_numels,
    values_and_slopes,
)

# torch.compile can keep one call's compiles apart from all others (recent torch; 2.15 here)
ISOLATED_COMPILE = "isolate_recompiles" in inspect.signature(torch.compile).parameters


class CompiledKernels:
    """The norm and gradient functions for one signature, compiled by inductor on construction, so
    that a failing compile surfaces here and not inside a backward pass."""

    def __init__(self, features: list[torch.Tensor], signature: tuple, align: str, norm: str, curv: bool) -> None:
        self.signature, self.norm = signature, norm
        pairs = tuple(geometries(features, align))
        with torch.no_grad():
            examples = [f.detach() for f in features]
            ds, es = differences(examples, pairs, curv)
            rows = [v for v in ds + es if v is not None]
            self.n_d = sum(d is not None for d in ds)
            self.numel = row_numels(rows, examples[0])
            self.norms = _compile(functools.partial(pure_norms, pairs, norm, curv), examples)
            inputs = [examples[0].new_zeros((len(rows), len(examples[0]))), *examples]  # the coefficients' shape
            self.gradients = _compile(functools.partial(pure_gradients, pairs, norm, curv), inputs)


def _compile(fn, examples: list[torch.Tensor]):
    """``fn`` compiled for exactly the layout of ``examples``.

    Public ``torch.compile`` where it can isolate the call's compiles (``isolate_recompiles``):
    dynamo keeps one cache per function, and past its recompile limit (8 signatures in a process,
    e.g. a sweep worker's models) it would run them eagerly without a word; isolated, each engine
    has its own entry (``recompile_limit=1``, ``fullgraph``: another compile raises instead of falling
    back). A process still has dynamo's global ``accumulated_recompile_limit`` (256, i.e. 128
    engines); past it a compile should raise and leave the engine eager with the reason (untested).
    Older torch: the private entry point, inductor on a make_fx trace, as before.

    The two run the same inductor kernels. Measured side by side in one process (resnet56, batch
    128, channels_last, 2 CPU threads on a machine shared by ~6 jobs, 5 steps, median of 2
    alternating passes), ms/step private / public / no ffr: 7587 / 5673 / 4054, then with the order
    swapped 3588 / 1769 / 4563. Passes of one loop varied up to 7x, so the runs show no difference
    beyond the noise; compiling (with 5 steps) took 11-50 s either way, the first in a process most."""
    if ISOLATED_COMPILE:
        compiled = torch.compile(fn, fullgraph=True, dynamic=False, isolate_recompiles=True, recompile_limit=1)
        compiled(*examples)  # compile now, so that a failure surfaces here
        return compiled
    from torch._inductor import compile as inductor_compile
    from torch.fx.experimental.proxy_tensor import make_fx

    return inductor_compile(make_fx(fn)(*examples), examples)


class CompiledFlow(torch.autograd.Function):
    """G and C through :class:`CompiledKernels`: the forward keeps only the features (which the
    network keeps anyway); the backward recomputes the differences inside its fused kernels."""

    @staticmethod
    def forward(ctx, kernels: CompiledKernels, *features: torch.Tensor):
        features = tuple(f.detach() for f in features)  # as compiled: torch.compile guards requires_grad
        values, slopes = values_and_slopes(kernels.norms(*features), kernels.numel, kernels.norm)
        ctx.kernels = kernels
        ctx.save_for_backward(slopes, *features)
        return length_and_curvature(values, kernels.n_d)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_length: torch.Tensor, grad_curvature: torch.Tensor):
        slopes, *features = ctx.saved_tensors
        rows = coefficients(slopes, ctx.kernels.n_d, grad_length, grad_curvature)
        return (None, *ctx.kernels.gradients(rows, *features))


def pure_norms(pairs, norm: str, curv: bool, *features: torch.Tensor) -> torch.Tensor:
    """Raw per-sample norms, one row per d_l, then per e_l (what the eager kernel stacks)."""
    ds, es = differences(features, pairs, curv)
    return torch.stack([raw_norm(v, norm) for v in ds + es if v is not None])


def pure_gradients(pairs, norm: str, curv: bool, rows: torch.Tensor, *features: torch.Tensor):
    """dL/dx_i = g_{i-1} - P^T g_i with g_i = a_i v(d_i) + c_i v(e_i) - P^T(c_{i+1} v(e_{i+1})), where
    a, c are the rows of coefficients and v is the identity or sign (``l1``); None for a
    feature that no difference touches."""
    ds, es = differences(features, pairs, curv)
    g = _difference_grads(ds, es, pairs, norm, iter(rows))
    out = []
    for i, x in enumerate(features):
        before = g[i - 1] if i > 0 else None
        after = None if i >= len(g) or g[i] is None else adjoint(g[i], pairs[i], x.shape[1:])
        out.append(before if after is None else (-after if before is None else before - after))
    return tuple(out)


def _difference_grads(ds: list, es: list, pairs, norm: str, rows) -> list[torch.Tensor | None]:
    """g_i = dL/dd_i = a_i v(d_i) + c_i v(e_i) - P^T(c_{i+1} v(e_{i+1})); None where d_i is skipped."""
    a = [None if d is None else per_sample_view(next(rows), d) for d in ds]
    c = [None if e is None else per_sample_view(next(rows), e) for e in es]
    base = torch.sign if norm == "l1" else (lambda v: v)
    terms_e = [None if e is None else c[i] * base(e) for i, e in enumerate(es)]
    g: list[torch.Tensor | None] = []
    for i, d in enumerate(ds):
        if d is None:
            g.append(None)
            continue
        v = a[i] * base(d)
        if terms_e[i] is not None:
            v = v + terms_e[i]
        if i + 1 < len(ds) and terms_e[i + 1] is not None:
            v = v - adjoint(terms_e[i + 1], pairs[i + 1], d.shape[1:])
        g.append(v)
    return g
