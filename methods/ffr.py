"""ffr: feature flow regularization (Wu, Lan, Zhang, Xiang; "Feature Flow Regularization:
Improving Structured Sparsity in Deep Neural Networks", arXiv 2106.02914; Neural Networks 2023).

The features of consecutive hidden layers form a trajectory, the feature flow; FFR penalises its
gradient and curvature (arXiv wording), or its length and total absolute curvature (journal
wording), so that short, straight trajectories give parameters with structured sparsity, and
filters are then pruned. Neither the full text nor the authors' code could be read: the
formulation below is our reconstruction (METHODS.md, "ffr"), and every choice is a config field.

- Features: x_0 is the stem's output (after its ReLU), x_l the output of basic block l (ResNets)
  or of conv layer l after BN and ReLU (VGGs); the classifier is excluded. They are captured by
  forward hooks in the loss's own forward pass (no second pass).
- Alignment P maps x_l into x_{l+1}'s shape without parameters, as an option-A shortcut does:
  spatial subsample by the integer ratio, then zero-pad channels equally on both sides
  (``align="shortcut"``). ``align="stage"`` only takes differences inside runs of equal shape.
- Length: ``G = sum_l ||x_{l+1} - P(x_l)||``. Curvature: ``C = sum_l ||x_{l+1} - 2 P(x_l) +
  P(P(x_{l-1}))||`` (``"second_difference"``), or the turning angle between consecutive segments
  d_l = x_{l+1} - P(x_l) and P(d_{l-1}) (``"angle"``, radians, the discrete total absolute curvature).
- Norm per sample, then the batch mean: ``"l2"`` = L2 / sqrt(numel of one sample's feature), i.e.
  the RMS difference per element, so 16x32x32 and 64x8x8 maps weigh alike; ``"l2sq"`` = squared
  L2 / numel (mean square); ``"l1"`` = L1 / numel (mean absolute difference).
- Loss: ``CE + lambda_grad * G + lambda_curv * C``, computed in float32 even under bf16 autocast.
- Training from scratch on the dense schedule (``start="scratch"``, sparsity training), then the
  harness prunes filters with its default allocation (FLOPs target, internal channels of ResNets)
  by ``importance``: the filter L1 norm divided by its layer's mean (l1's ``layer_mean``), or |gamma|
  of the unit's BN. Then fine-tuning, without FFR.

Cost: G and the second-difference C run as one autograd Function with a hand-written gradient,
computed by one of two engines (``kernel``). Eager: in-place passes over buffers reused between
steps; on resnet56, batch 128, channels_last, 2 CPU threads, a training step grows by 16%
(plain autograd through the formulas: 64%). Compiled: inductor kernels (make_fx traces) of the same
formulas, one fused pass per norm and per feature gradient, nothing stored but the features; the
step grows by about 7%. ``kernel="auto"`` switches from eager to compiled after
``COMPILE_AFTER_STEPS`` steps (``python -m bench speed``, section d, measures both).

Units of G and C: with ``norm="l2"`` one layer pair adds the RMS per-element distance between
consecutive (aligned) features, in activation units; pairs are summed, not averaged, so G grows
with depth (resnet56 has 27 pairs, resnet20 9). The angle curvature is in radians per turn, summed.
"""

from __future__ import annotations

import functools
import math
import sys
import weakref
from dataclasses import dataclass
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from bench.api import Context, Method
from bench.errors import BenchError
from methods.l1 import L1Config, L1Norm
from methods.slim import unit_bn

ALIGNS = ("shortcut", "stage")
CURVATURES = ("second_difference", "angle")
NORMS = ("l2", "l2sq", "l1")
IMPORTANCES = ("l1", "bn")
KERNELS = ("auto", "compiled", "eager")
COMPILE_AFTER_STEPS = 200  # "auto": a compile (10-30 s once per process and shapes) pays back in a few hundred steps


@dataclass(frozen=True)
class FFRConfig:
    """``lambda_grad``: weight per unit of G (summed batch-mean per-sample norms of x_{l+1} - P(x_l),
    in the units of ``norm``); ``lambda_curv``: weight per unit of C (same units for
    ``second_difference``, radians for ``angle``). Both >= 0; 0 switches a term off.

    The defaults are placeholders, not results: at initialisation they make the term a few tenths
    of the initial cross-entropy (ln 10 = 2.3) on resnet56, where we measured G = 23 and C = 32
    with ``norm="l2"`` (1e-2 * 23 + 5e-3 * 32 = 0.39; resnet20: G = 7.3, C = 8.9). The real
    defaults must come from an Optuna sweep on the validation split (a later issue), recorded with
    the sweep that produced them.

    ``align``, ``curvature``, ``norm``: see the module docs. ``importance``: ``"l1"`` = filter L1
    norm / its layer's mean (l1's ``layer_mean``), ``"bn"`` = |gamma| of the unit's BN.

    ``kernel``: how G and C are computed, not what: ``"eager"``, ``"compiled"`` (inductor), or
    ``"auto"`` (eager for the first ``COMPILE_AFTER_STEPS`` training steps, then compiled); see
    :class:`FlowEngine`. The engines agree to float rounding."""

    lambda_grad: float = 1e-2
    lambda_curv: float = 5e-3
    align: str = "shortcut"
    curvature: str = "second_difference"
    norm: str = "l2"
    importance: str = "l1"
    kernel: str = "auto"

    def __post_init__(self) -> None:
        for name in ("lambda_grad", "lambda_curv"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name, valid in (
            ("align", ALIGNS),
            ("curvature", CURVATURES),
            ("norm", NORMS),
            ("importance", IMPORTANCES),
            ("kernel", KERNELS),
        ):
            if getattr(self, name) not in valid:
                raise ValueError(f"{name} must be one of {', '.join(valid)}, got {getattr(self, name)!r}")


class FeatureFlow(Method):
    name = "ffr"
    description = "feature flow regularization: short, straight feature trajectories (Wu et al. 2023)"
    Config = FFRConfig
    start = "scratch"
    sparsity_training = True

    def __init__(self, config: FFRConfig | None = None) -> None:
        super().__init__(config)
        self.engine = FlowEngine(self.config.kernel)

    def feature_modules(self, model: nn.Module) -> list[str]:
        return flow_modules(model)

    def regularization(self, model: nn.Module, features: list[torch.Tensor], ctx: Context) -> torch.Tensor | None:
        cfg = self.config
        device = features[0].device if features else torch.device("cpu")
        if cfg.lambda_grad == 0 and cfg.lambda_curv == 0:
            return torch.zeros((), device=device)
        with torch.autocast(device.type, enabled=False):
            feats = [f.float() for f in features]
            with_curv = cfg.lambda_curv > 0  # lambda_curv = 0: the curvature is not even computed
            length, curv = flow_terms(feats, cfg.align, cfg.curvature, cfg.norm, with_curv, self.engine)
            return cfg.lambda_grad * length + cfg.lambda_curv * curv

    def on_epoch_end(self, model: nn.Module, ctx: Context) -> None:
        self.engine.workspace.clear()  # evaluation, pruning and fine-tuning do not need the buffers

    def importance(self, model: nn.Module, ctx: Context) -> dict[str, torch.Tensor]:
        if self.config.importance == "bn":
            return {unit.name: unit_bn(model, unit).weight.detach().abs().clone() for unit in ctx.units}
        return L1Norm(L1Config(normalize="layer_mean")).importance(model, ctx)  # filter L1 / layer mean

    def search_space(self, trial) -> dict:
        return {
            "lambda_grad": trial.suggest_float("lambda_grad", 1e-4, 1e-1, log=True),
            "lambda_curv": trial.suggest_float("lambda_curv", 1e-4, 1e-1, log=True),
            "align": trial.suggest_categorical("align", list(ALIGNS)),
            "curvature": trial.suggest_categorical("curvature", list(CURVATURES)),
            "norm": trial.suggest_categorical("norm", list(NORMS)),
        }


# --- which features ------------------------------------------------------------------------------


def flow_modules(model: nn.Module) -> list[str]:
    """Names of the modules whose outputs are x_0, x_1, ... in forward order."""
    if hasattr(model, "feature_modules"):  # our CIFAR ResNets and VGGs
        return list(model.feature_modules())
    timm_resnet = sys.modules.get("timm.models.resnet")
    if timm_resnet is not None and isinstance(model, timm_resnet.ResNet):
        stem = "maxpool" if isinstance(model.maxpool, nn.MaxPool2d) else "act1"
        blocks = [f"{layer}.{child}" for layer in ("layer1", "layer2", "layer3", "layer4") for child, _ in
                  model.get_submodule(layer).named_children()]  # fmt: skip
        return [stem, *blocks]
    name = getattr(model, "bench_name", type(model).__name__)
    raise BenchError(
        f"ffr cannot find the feature flow of model '{name}': it supports our CIFAR ResNets and VGGs "
        "(resnet20/32/56/110, vgg16, vgg19) and timm ResNets (timm:resnet18, timm:resnet50, ...)"
    )


# --- the regularizer: pure functions of the feature list -----------------------------------------


def align_to(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """P: map a batch ``x`` (N, C, H, W) into per-sample ``shape`` (C', H', W') like an option-A
    shortcut: subsample by the integer spatial ratio, zero-pad channels equally on both sides."""
    return _aligned(x, _Geometry.between(x.shape[1:], shape), shape[0])


@dataclass(frozen=True)
class _Geometry:
    """Where P puts x_l inside x_{l+1}'s shape: x[:, :, ::sh, ::sw] lands on channels low..low+C."""

    sh: int
    sw: int
    low: int
    channels: int

    @staticmethod
    def between(src: torch.Size, dst: torch.Size) -> _Geometry:
        channels, height, width = src
        if dst[0] < channels:
            raise BenchError(
                f"ffr cannot align a feature of {channels} channels to one of {dst[0]}: the zero-padding "
                'alignment only widens; use align="stage" for this model'
            )
        return _Geometry(_ratio(height, dst[1]), _ratio(width, dst[2]), (dst[0] - channels) // 2, channels)

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


def per_sample(v: torch.Tensor, norm: str) -> torch.Tensor:
    """One value per sample: RMS (``l2``), mean square (``l2sq``) or mean |v| (``l1``)."""
    numel = v.new_full((1, 1), math.prod(v.shape[1:]))
    return _values_and_slopes(_raw_norm(v, norm)[None], numel, norm)[0][0]


def _raw_norm(v: torch.Tensor, norm: str) -> torch.Tensor:
    return torch.linalg.vector_norm(v, 1 if norm == "l1" else 2, tuple(range(1, v.dim())))


def _values_and_slopes(raw: torch.Tensor, numel: torch.Tensor, norm: str) -> tuple[torch.Tensor, torch.Tensor]:
    """From raw per-sample L1 or L2 norms (rows of ``raw``, one row per difference, ``numel``
    elements per sample), the normalised values, and k such that d value / dv = k * v (``l2``,
    ``l2sq``) or k * sign(v) (``l1``)."""
    if norm == "l1":
        return raw / numel, (1 / numel).expand_as(raw)
    if norm == "l2sq":
        return raw.square() / numel, (2 / numel).expand_as(raw)
    root = numel.sqrt()
    return raw / root, torch.where(raw > 0, 1 / (raw * root), 0.0)  # |v| = 0: slope 0


def _minus_aligned(
    nxt: torch.Tensor, x: torch.Tensor, geometry: _Geometry, out: torch.Tensor | None = None
) -> torch.Tensor:
    """nxt - P(x), written without materialising P(x), into ``out`` when given."""
    if nxt.shape == x.shape:
        return nxt - x if out is None else torch.sub(nxt, x, out=out)
    out = nxt.clone() if out is None else out.copy_(nxt)
    geometry.target(out).sub_(geometry.source(x))
    return out


def _geometries(features: list[torch.Tensor], align: str) -> list[_Geometry | None]:
    """P for every consecutive pair; None where ``align="stage"`` skips the pair (shapes differ)."""
    out = []
    for x, nxt in pairwise(features):
        skip = align == "stage" and x.shape != nxt.shape
        out.append(None if skip else _Geometry.between(x.shape[1:], nxt.shape[1:]))
    return out


class _FusedFlow(torch.autograd.Function):
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
        geometries = _geometries(list(features), align)
        ds = [
            None if g is None else _minus_aligned(n, x, g, None if claim is None else claim.buffer(("d", i), n))
            for i, (x, n, g) in enumerate(zip(features, features[1:], geometries, strict=False))
        ]
        es: list[torch.Tensor | None] = [None] * len(ds)
        if curv:
            for i in range(1, len(ds)):
                if ds[i] is not None and ds[i - 1] is not None:
                    out = None if claim is None else claim.buffer(("e", i), ds[i])
                    es[i] = _minus_aligned(ds[i], ds[i - 1], geometries[i], out)
        rows = [v for v in ds + es if v is not None]  # the d's, then the e's
        n_d = sum(d is not None for d in ds)
        raw = torch.stack([_raw_norm(v, norm) for v in rows])
        values, slopes = _values_and_slopes(raw, _row_numels(rows, raw), norm)
        ctx.state = (norm, geometries, ds, es, slopes, n_d, [f.shape for f in features], claim)
        return _length_and_curvature(values, n_d)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_length: torch.Tensor, grad_curvature: torch.Tensor):
        if ctx.state is None:
            raise RuntimeError("ffr's fused backward runs once per forward; retain_graph is not supported")
        norm, geometries, ds, es, slopes, n_d, shapes, _claim = ctx.state
        ctx.state = None  # the buffers below are overwritten in place; the workspace is free again
        coefficients = iter(_coefficients(slopes, n_d, grad_length, grad_curvature))
        grads_d = [None if d is None else _base(d, norm).mul_(_per_sample_view(next(coefficients), d)) for d in ds]
        for i, e in enumerate(es):  # e_i = d_i - P(d_{i-1})
            if e is not None:
                base, coefficient = _base(e, norm), _per_sample_view(next(coefficients), e)
                grads_d[i].addcmul_(base, coefficient)
                geometries[i].source(grads_d[i - 1]).addcmul_(geometries[i].target(base), coefficient, value=-1)
        return (None, None, None, None, *_feature_grads(grads_d, geometries, shapes))


def _row_numels(rows: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """Elements per sample of each difference row, a column on ``like``'s dtype and device."""
    return torch.tensor([[math.prod(v.shape[1:])] for v in rows], dtype=like.dtype).to(like.device)


def _length_and_curvature(values: torch.Tensor, n_d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(G, C) from the per-sample values, rows d_0.. then e_..: batch means, summed over pairs."""
    return values[:n_d].mean(1).sum(), values[n_d:].mean(1).sum()


def _coefficients(slopes: torch.Tensor, n_d: int, grad_length: torch.Tensor, grad_curvature: torch.Tensor):
    """Per difference (row) and sample: c such that d(grad_G * G + grad_C * C) / dv = c * v (or c * sign v)."""
    scale = torch.cat([grad_length.expand(n_d), grad_curvature.expand(len(slopes) - n_d)]) / slopes.shape[1]
    return slopes * scale[:, None]


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
        if old is None or (old.shape, old.stride(), old.dtype, old.device) != (
            like.shape,
            like.stride(),
            like.dtype,
            like.device,
        ):
            buffers[key] = torch.empty_like(like)
        return buffers[key]


def _base(v: torch.Tensor, norm: str) -> torch.Tensor:
    """v, or sign(v) for the L1 norm, in v's own buffer."""
    return v.sign_() if norm == "l1" else v


def _per_sample_view(c: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return c.view((-1,) + (1,) * (v.dim() - 1))


def _feature_grads(grads_d: list, geometries: list, shapes: list) -> list[torch.Tensor | None]:
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
            geometries[i].source(before).sub_(geometries[i].target(after))
        out[i] = before
    return out


def _format_of(t: torch.Tensor) -> torch.memory_format:
    return (
        torch.channels_last
        if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
        else torch.contiguous_format
    )


# --- the engines: eager or compiled, chosen per step ------------------------------------------------


class FlowEngine:
    """Computes G and the second-difference C step after step, with one of two kernels.

    ``eager``: :class:`_FusedFlow`, whose buffers live in ``workspace``. ``compiled``: the pure
    formulas below, traced and compiled by inductor, specialised to the shapes of the first batch
    they see; a batch of other shapes (an epoch's short last batch) runs eagerly rather than
    recompiling. ``auto``: eager for the first ``COMPILE_AFTER_STEPS`` steps, then compiled. A
    compile that fails (no C++ compiler, no triton) leaves the engine eager for good, with the
    reason in ``status`` and on stderr."""

    def __init__(self, mode: str = "eager") -> None:
        if mode not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {mode!r}")
        self.mode = mode
        self.compile_after = COMPILE_AFTER_STEPS
        self.workspace = Workspace()
        self.steps = 0
        self.status = "eager"
        self._compiled: _CompiledKernels | None = None

    def terms(self, features: list[torch.Tensor], align: str, norm: str, curv: bool):
        """(G, C) of ``features``; C is 0 when ``curv`` is False."""
        self.steps += 1
        kernels = self._kernels_for(features, align, norm, curv)
        if kernels is not None:
            return _CompiledFlow.apply(kernels, *features)
        return _FusedFlow.apply(align, norm, curv, self.workspace, *features)

    def _kernels_for(self, features: list[torch.Tensor], align: str, norm: str, curv: bool):
        wanted = self.mode == "compiled" or (self.mode == "auto" and self.steps > self.compile_after)
        if not wanted or self.status.startswith("eager ("):
            return None
        signature = _signature(features, align, norm, curv)
        if self._compiled is None:
            try:
                self._compiled = _CompiledKernels(features, signature, align, norm, curv)
            except Exception as exc:  # inductor needs a C++ compiler on CPU and triton on CUDA
                lines = str(exc).strip().splitlines()
                self.status = f"eager (compile failed: {type(exc).__name__}: {lines[0] if lines else ''})"
                print(f"warning: ffr kernel {self.status}", file=sys.stderr)
                return None
            self.status = "compiled"
            self.workspace.clear()
        return self._compiled if self._compiled.signature == signature else None


def _signature(features: list[torch.Tensor], align: str, norm: str, curv: bool) -> tuple:
    layout = tuple((f.shape, f.stride(), f.dtype, f.device) for f in features)
    return layout, align, norm, curv


class _CompiledKernels:
    """The norm and gradient functions for one signature, traced (make_fx) and compiled by inductor
    on construction, so that a failing compile surfaces here and not inside a backward pass. Not
    through torch.compile: dynamo keeps one cache per function, and past its recompile limit (8
    signatures in a process, e.g. a sweep worker's models) it would silently run them eagerly."""

    def __init__(self, features: list[torch.Tensor], signature: tuple, align: str, norm: str, curv: bool) -> None:
        from torch._inductor import compile as inductor_compile
        from torch.fx.experimental.proxy_tensor import make_fx

        self.signature, self.norm = signature, norm
        geometries = tuple(_geometries(features, align))
        with torch.no_grad():
            examples = [f.detach() for f in features]
            ds, es = _differences(examples, geometries, curv)
            rows = [v for v in ds + es if v is not None]
            self.n_d = sum(d is not None for d in ds)
            self.numel = _row_numels(rows, examples[0])
            norms = functools.partial(_pure_norms, geometries, norm, curv)
            self.norms = inductor_compile(make_fx(norms)(*examples), examples)
            gradients = functools.partial(_pure_gradients, geometries, norm, curv)
            inputs = [examples[0].new_zeros((len(rows), len(examples[0]))), *examples]  # the coefficients' shape
            self.gradients = inductor_compile(make_fx(gradients)(*inputs), inputs)


class _CompiledFlow(torch.autograd.Function):
    """G and C through :class:`_CompiledKernels`: the forward keeps only the features (which the
    network keeps anyway); the backward recomputes the differences inside its fused kernels."""

    @staticmethod
    def forward(ctx, kernels: _CompiledKernels, *features: torch.Tensor):
        values, slopes = _values_and_slopes(kernels.norms(*features), kernels.numel, kernels.norm)
        ctx.kernels = kernels
        ctx.save_for_backward(slopes, *features)
        return _length_and_curvature(values, kernels.n_d)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_length: torch.Tensor, grad_curvature: torch.Tensor):
        slopes, *features = ctx.saved_tensors
        coefficients = _coefficients(slopes, ctx.kernels.n_d, grad_length, grad_curvature)
        return (None, *ctx.kernels.gradients(coefficients, *features))


def _differences(features, geometries, curv: bool) -> tuple[list, list]:
    """d_l = x_{l+1} - P(x_l) and e_l = d_l - P(d_{l-1}) as pure expressions (None where skipped)."""
    pairs = zip(features, features[1:], geometries, strict=False)
    ds = [None if g is None else n - _aligned(x, g, n.shape[1]) for x, n, g in pairs]
    es: list[torch.Tensor | None] = [None] * len(ds)
    for i in range(1, len(ds) if curv else 0):
        if ds[i] is not None and ds[i - 1] is not None:
            es[i] = ds[i] - _aligned(ds[i - 1], geometries[i], ds[i].shape[1])
    return ds, es


def _aligned(x: torch.Tensor, geometry: _Geometry, channels: int) -> torch.Tensor:
    """P(x) into ``channels`` channels (pure)."""
    x = geometry.source(x)
    if geometry.channels != channels:
        x = F.pad(x, (0, 0, 0, 0, geometry.low, channels - geometry.channels - geometry.low))
    return x


def _adjoint(y: torch.Tensor, geometry: _Geometry, shape: torch.Size) -> torch.Tensor:
    """P^T(y): the entries P filled, put back where they came from in a ``shape``-shaped sample; zeros elsewhere."""
    part = geometry.target(y)
    if geometry.sh == geometry.sw == 1:
        return part
    out = part.new_zeros((len(part), *shape))
    geometry.source(out).copy_(part)
    return out


def _pure_norms(geometries, norm: str, curv: bool, *features: torch.Tensor) -> torch.Tensor:
    """Raw per-sample norms, one row per d_l, then per e_l (what :class:`_FusedFlow` stacks)."""
    ds, es = _differences(features, geometries, curv)
    return torch.stack([_raw_norm(v, norm) for v in ds + es if v is not None])


def _pure_gradients(geometries, norm: str, curv: bool, coefficients: torch.Tensor, *features: torch.Tensor):
    """dL/dx_i = g_{i-1} - P^T g_i with g_i = a_i v(d_i) + c_i v(e_i) - P^T(c_{i+1} v(e_{i+1})), where
    a, c are the rows of ``coefficients`` and v is the identity or sign (``l1``); None for a
    feature that no difference touches."""
    ds, es = _differences(features, geometries, curv)
    rows = iter(coefficients)
    a = [None if d is None else _per_sample_view(next(rows), d) for d in ds]
    c = [None if e is None else _per_sample_view(next(rows), e) for e in es]
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
            v = v - _adjoint(terms_e[i + 1], geometries[i + 1], d.shape[1:])
        g.append(v)
    out = []
    for i, x in enumerate(features):
        before = g[i - 1] if i > 0 else None
        after = None if i >= len(g) or g[i] is None else _adjoint(g[i], geometries[i], x.shape[1:])
        out.append(before if after is None else (-after if before is None else before - after))
    return tuple(out)


def segments(features: list[torch.Tensor], align: str) -> list[torch.Tensor | None]:
    """d_l = x_{l+1} - P(x_l) for every consecutive pair (autograd); None where ``align="stage"`` skips it."""
    return _differences(features, _geometries(features, align), curv=False)[0]


def turning_angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample angle (radians) between ``a`` and ``b``: arccos of their cosine similarity, computed
    as 2 atan2(|u - v|, |u + v|) on the unit vectors u, v (Kahan), which is the same angle but stays
    accurate and differentiable at 0 and pi, where acos of a rounded cosine is not (cos = 1 - 6e-8
    reads as 3.5e-4 rad; acos' is infinite at +-1). A zero-length segment turns by 0."""
    dims = tuple(range(1, a.dim()))
    view = (-1,) + (1,) * (a.dim() - 1)
    na, nb = torch.linalg.vector_norm(a, 2, dims), torch.linalg.vector_norm(b, 2, dims)
    tiny = torch.finfo(na.dtype).tiny
    u, v = a / na.clamp_min(tiny).view(view), b / nb.clamp_min(tiny).view(view)
    angle = 2 * torch.atan2(torch.linalg.vector_norm(u - v, 2, dims), torch.linalg.vector_norm(u + v, 2, dims))
    return torch.where((na > tiny) & (nb > tiny), angle, torch.zeros_like(angle))


def flow_terms(
    features: list[torch.Tensor],
    align: str,
    curvature: str,
    norm: str,
    curv: bool = True,
    engine: FlowEngine | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(G, C); C is 0 when ``curv`` is False. The second difference uses that P is linear:
    x_{l+1} - 2 P(x_l) + P(P(x_{l-1})) = d_l - P(d_{l-1}). ``engine``: eager without buffer reuse if None."""
    if not any(g is not None for g in _geometries(features, align)):  # < 2 features, or no equal shapes ("stage")
        zero = features[0].new_zeros(()) if features else torch.zeros(())
        return zero, zero
    fused_curv = curv and curvature == "second_difference"
    if engine is None:
        length, curv_value = _FusedFlow.apply(align, norm, fused_curv, None, *features)
    else:
        length, curv_value = engine.terms(features, align, norm, fused_curv)
    if not curv or fused_curv:
        return length, curv_value
    ds = segments(features, align)
    turns = [
        turning_angle(d, align_to(prev, d.shape[1:])).mean()
        for prev, d in pairwise(ds)
        if prev is not None and d is not None
    ]
    return length, sum(turns, features[0].new_zeros(()))


def flow_length(features: list[torch.Tensor], align: str = "shortcut", norm: str = "l2") -> torch.Tensor:
    """G = sum_l mean_batch ||x_{l+1} - P(x_l)||, a scalar."""
    return flow_terms(features, align, "second_difference", norm, curv=False)[0]


def flow_curvature(
    features: list[torch.Tensor], align: str = "shortcut", curvature: str = "second_difference", norm: str = "l2"
) -> torch.Tensor:
    """C = sum_l mean_batch ||x_{l+1} - 2 P(x_l) + P(P(x_{l-1}))||, or the summed turning angles."""
    return flow_terms(features, align, curvature, norm)[1]
