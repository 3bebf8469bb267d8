"""ffr: feature flow regularization (Wu, Lan, Zhang, Xiang; "Feature Flow Regularization:
Improving Structured Sparsity in Deep Neural Networks", arXiv 2106.02914, 2021; Neural Networks 2023).

The features of consecutive hidden layers form a trajectory, the feature flow; FFR penalises its
gradient and curvature (arXiv wording), or its length and total absolute curvature (journal
wording), so that short, straight trajectories give parameters with structured sparsity, and
filters are then pruned. Neither the full text nor the authors' code could be read: the
formulation below is our reconstruction (methods/README.md, "ffr"), and every choice is a config field.

- Features (``features="blocks"``): x_0 is the stem's output (after its ReLU), x_l the output of
  basic block l (ResNets) or of conv layer l after BN and ReLU (VGGs); the classifier is excluded.
  ``features="layers"``: every conv+BN+ReLU output in forward order, so a ResNet block contributes
  its internal channel (conv1-BN-ReLU, the channel that is pruned) and then its output; the
  internal feature is aligned to and from its neighbours by the same P (for a VGG both are the
  same). They are captured by forward hooks in the loss's own forward pass (no second pass).
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

Cost: training computes G and the second difference through ``bench.flow``'s fused kernels (eager or
compiled, by ``kernel``; measured there); the formulas below are the reference they are tested against.

Units of G and C: with ``norm="l2"`` one layer pair adds the RMS per-element distance between
consecutive (aligned) features, in activation units; pairs are summed, not averaged, so G grows
with depth (resnet56 has 27 pairs, resnet20 9). The angle curvature is in radians per turn, summed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import nn

from bench.api import KERNELS, Context, FlowEngine, Method, align_to, bn_gamma, feature_modules, filter_l1, fused_terms

ALIGNS = ("shortcut", "stage")
CURVATURES = ("second_difference", "angle")
NORMS = ("l2", "l2sq", "l1")
IMPORTANCES = ("l1", "bn")
FEATURES = ("blocks", "layers")
CHOICES = {
    "features": FEATURES,
    "align": ALIGNS,
    "curvature": CURVATURES,
    "norm": NORMS,
    "importance": IMPORTANCES,
    "kernel": KERNELS,
}
Features = list[torch.Tensor]  # x_0, x_1, ...: (N, C, H, W) each


@dataclass(frozen=True)
class FFRConfig:
    """``lambda_grad``: weight per unit of G (summed batch-mean per-sample norms of x_{l+1} - P(x_l),
    in the units of ``norm``); ``lambda_curv``: weight per unit of C (same units for
    ``second_difference``, radians for ``angle``). Both >= 0; 0 switches a term off.

    The defaults are the best trial of the Optuna study ``ffr-resnet20-cifar10`` (``bench sweep``,
    20 trials, TPE, median pruner; committed with its config, export, figures and README under
    ``results/studies/ffr-resnet20-cifar10/``): resnet20 on the CIFAR-10 JPEG copy, 6,000 training
    images, selected and scored on a 2,000-image validation split, 8 epochs of FFR training from
    scratch (cosine, lr 0.1), pruned to a 50% FLOPs target, 2 fine-tune epochs. Trial 0 scored
    55.65% val with lambda_grad = 4.43e-3, lambda_curv = 1.40e-2, ``features="blocks"``,
    ``curvature="angle"``, ``norm="l1"`` (rounded here to two digits); the runner-up (55.55%, trial
    15) had 5x and 100x smaller lambdas, so on this budget the study cannot tell lambdas apart
    within the validation noise (about 1.1 pp). Four of the five trials that completed (the pruner
    stopped 15 after their first fine-tune epoch) used blocks; the one with layers was the worst (46.8%). A budget
    this small is the floor the issue allows, not the paper's: re-run the study at the paper
    preset (``--preset paper``) before trusting these on full CIFAR schedules. Earlier
    placeholders were 1e-2 / 5e-3 (l2, second difference).

    ``features``: ``"blocks"`` (x_l = residual block outputs) or ``"layers"`` (every conv+BN+ReLU
    output in forward order, so each block's internal channel, the one that is pruned, is on the
    trajectory too). ``align``, ``curvature``, ``norm``: see the module docs. ``importance``:
    ``"l1"`` = filter L1 norm / its layer's mean (l1's ``layer_mean``), ``"bn"`` = |gamma| of the
    unit's BN.

    ``kernel``: how G and C are computed, not what: ``"eager"``, ``"compiled"`` (inductor), or
    ``"auto"`` (eager for the first ``COMPILE_AFTER_STEPS`` training steps, then compiled); see
    :class:`bench.flow.FlowEngine`. The engines agree to float rounding."""

    lambda_grad: float = 4.4e-3  # study ffr-resnet20-cifar10, trial 0 (see above)
    lambda_curv: float = 1.4e-2
    features: str = "blocks"
    align: str = "shortcut"
    curvature: str = "angle"
    norm: str = "l1"
    importance: str = "l1"
    kernel: str = "auto"

    def __post_init__(self) -> None:
        for name in ("lambda_grad", "lambda_curv"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        for name, valid in CHOICES.items():
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
        self.engine = FlowEngine(self.config.kernel)  # bench.flow.kernel_status(method) reports it

    def feature_modules(self, model: nn.Module) -> list[str]:
        return feature_modules(model, needed_by="ffr", kind=self.config.features)

    def regularization(self, model: nn.Module, features: Features, ctx: Context) -> torch.Tensor | None:
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
            return bn_gamma(model, ctx.units, needed_by="ffr")
        return filter_l1(model, ctx.units, normalize="layer_mean")

    def search_space(self, trial) -> dict:
        return {
            "lambda_grad": trial.suggest_float("lambda_grad", 1e-4, 1e-1, log=True),
            "lambda_curv": trial.suggest_float("lambda_curv", 1e-4, 1e-1, log=True),
            "features": trial.suggest_categorical("features", list(FEATURES)),
            "curvature": trial.suggest_categorical("curvature", list(CURVATURES)),
            "norm": trial.suggest_categorical("norm", list(NORMS)),
        }


# --- the formulas: readable references (training runs them through bench.flow's fused kernels) -----


def per_sample(v: torch.Tensor, norm: str) -> torch.Tensor:
    """One value per sample: RMS (``l2``), mean square (``l2sq``) or mean |v| (``l1``)."""
    flat, numel = v.flatten(1), math.prod(v.shape[1:])
    if norm == "l2":
        return torch.linalg.vector_norm(flat, 2, 1) / math.sqrt(numel)
    return (flat.abs() if norm == "l1" else flat.square()).sum(1) / numel


def segments(features: Features, align: str) -> list[torch.Tensor | None]:
    """d_l = x_{l+1} - P(x_l) for every consecutive pair (autograd); None where ``align="stage"`` skips it."""
    return [
        None if align == "stage" and x.shape != nxt.shape else nxt - align_to(x, nxt.shape[1:])
        for x, nxt in pairwise(features)
    ]


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
    features: Features, align: str, curvature: str, norm: str, curv: bool = True, engine: FlowEngine | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(G, C) as training computes them: G and the second difference through ``bench.flow``'s fused
    kernels (``engine``: eager without buffer reuse if None), the angle from :func:`segments`.
    C is 0 when ``curv`` is False."""
    fused_curv = curv and curvature == "second_difference"
    length, curv_value = fused_terms(features, align, norm, fused_curv, engine)
    if not curv or fused_curv:
        return length, curv_value
    return length, sum(_turns(segments(features, align)), length.new_zeros(()))


def _turns(ds: list[torch.Tensor | None]) -> list[torch.Tensor]:
    """Batch-mean turning angle between each segment and the (aligned) one before it."""
    return [
        turning_angle(d, align_to(prev, d.shape[1:])).mean()
        for prev, d in pairwise(ds)
        if prev is not None and d is not None
    ]


def flow_length(features: Features, align: str = "shortcut", norm: str = "l2") -> torch.Tensor:
    """G = sum_l mean_batch ||x_{l+1} - P(x_l)||, a scalar."""
    return sum((per_sample(d, norm).mean() for d in segments(features, align) if d is not None), _zero(features))


def flow_curvature(
    features: Features, align: str = "shortcut", curvature: str = "second_difference", norm: str = "l2"
) -> torch.Tensor:
    """C = sum_l mean_batch ||x_{l+1} - 2 P(x_l) + P(P(x_{l-1}))||, or the summed turning angles."""
    ds = segments(features, align)
    if curvature == "angle":
        return sum(_turns(ds), _zero(features))
    pairs = [(prev, d) for prev, d in pairwise(ds) if prev is not None and d is not None]
    return sum((per_sample(d - align_to(prev, d.shape[1:]), norm).mean() for prev, d in pairs), _zero(features))


def _zero(features: Features) -> torch.Tensor:
    """A float zero on the features' device, the start of every sum."""
    return features[0].new_zeros(()) if features else torch.zeros(())
