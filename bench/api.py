"""The plugin interface: a method decides which channels matter, and optionally how to push
training toward sparsity. The harness owns data, the loop, surgery, fine-tuning and measurement.

Write a method by subclassing :class:`Method` and registering it in the ``bench.methods``
entry-point group of your package (see README). ``bench.testing.check_method`` runs the
conformance kit on it.

This module is the whole public plugin surface (``__all__``): a plugin imports from ``bench.api``
and ``bench.errors`` only, never from another plugin or another bench module (tests/test_layering.py
checks it). Besides the interface itself it re-exports:

- the prunable-unit model (:class:`PrunableUnit`, :func:`module_by_name`) and :class:`PruningPlan`;
- the schedule and pruning-rule configs (:class:`Schedule`, :class:`PruneConfig`), for hooks that
  receive them;
- the shared channel scorers of :mod:`bench.importance` (filter L1, BN gamma, group norms, out-in
  energy, per-layer normalisers);
- the allocation building blocks a method's :meth:`Method.allocate` composes (the FLOPs cost model,
  the global greedy, ``round_target`` of iterative pruning, ``backend_of``);
- model knowledge a regulariser needs (:func:`feature_modules`: where a model's features are) and the
  fused feature-flow kernels of :mod:`bench.flow` (ffr's length and curvature terms).

Names from modules above the lower layer (``bench.pruning``, ``bench.models``, ``bench.flow``) are
resolved lazily (:func:`__getattr__`, listed in ``_LAZY``): those modules may import this one, and
neither import order then makes a cycle.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from torch import nn

from bench.allocation import (
    CostModel,
    TargetUnreachable,
    as_scores,
    by_flops_target,
    candidates,
    counts_after,
    plan_from_counts,
)
from bench.config import PruneConfig, Schedule
from bench.errors import BenchError, closest
from bench.importance import (
    BN_TYPES,
    ENERGY_NORMALIZATIONS,
    FILTER_NORMALIZATIONS,
    GROUP_NORMALIZATIONS,
    GROUP_REDUCTIONS,
    Scores,
    batchnorms,
    bn_fold,
    bn_gamma,
    channel_sq,
    filter_l1,
    filter_sq,
    group_l2,
    group_norm,
    is_affine_bn,
    layer_mean,
    layer_share,
    member_filters,
    member_producers,
    member_sq,
    out_in_energy,
    out_in_sq,
    reduce_group,
    unit_bn,
    unit_bns,
)
from bench.plan import PruningPlan
from bench.surgery import backend_of
from bench.units import PrunableUnit, module_by_name

if TYPE_CHECKING:
    from bench.datasets import DatasetSplits
    from bench.flow import KERNELS, FlowEngine, align_to, fused_terms
    from bench.models import feature_modules
    from bench.pruning import round_target

__all__ = [  # noqa: RUF022 (grouped by purpose, sorted within each group)
    # the interface
    "Context",
    "Method",
    "NoConfig",
    "Phase",
    "Start",
    "config_from_params",
    # what it talks about
    "PruneConfig",
    "PrunableUnit",
    "PruningPlan",
    "Schedule",
    "module_by_name",
    # shared scorers (bench.importance)
    "BN_TYPES",
    "ENERGY_NORMALIZATIONS",
    "FILTER_NORMALIZATIONS",
    "GROUP_NORMALIZATIONS",
    "GROUP_REDUCTIONS",
    "Scores",
    "batchnorms",
    "bn_fold",
    "bn_gamma",
    "channel_sq",
    "filter_l1",
    "filter_sq",
    "group_l2",
    "group_norm",
    "is_affine_bn",
    "layer_mean",
    "layer_share",
    "member_filters",
    "member_producers",
    "member_sq",
    "out_in_energy",
    "out_in_sq",
    "reduce_group",
    "unit_bn",
    "unit_bns",
    # allocation building blocks for Method.allocate
    "CostModel",
    "TargetUnreachable",
    "as_scores",
    "backend_of",
    "by_flops_target",
    "candidates",
    "counts_after",
    "plan_from_counts",
    "round_target",
    # model knowledge and fused kernels for feature regularisers
    "KERNELS",
    "FlowEngine",
    "align_to",
    "feature_modules",
    "fused_terms",
]

_LAZY = {  # name -> the module above this one that defines it (see the module docs)
    "round_target": "bench.pruning",
    "feature_modules": "bench.models",
    "KERNELS": "bench.flow",
    "FlowEngine": "bench.flow",
    "align_to": "bench.flow",
    "fused_terms": "bench.flow",
}

Phase = Literal["sparsity", "finetune", "prune", "train"]  # "train": a scratch row's training (harness only)
Start = Literal["dense", "scratch"]


@dataclass(frozen=True)
class NoConfig:
    """Hyperparameters of a method that has none."""


@dataclass
class Context:
    """What the harness tells a method. Progress fields change as training runs.

    ``units`` are the model's current prunable units (they shrink after each round's surgery).
    ``generator`` is seeded from the run seed, so a method's randomness is reproducible.
    ``prune`` is the run's pruning rule, for methods whose :meth:`Method.allocate` needs the target
    (None when a caller builds a Context without a run config).
    """

    model_name: str
    units: list[PrunableUnit]
    device: torch.device
    seed: int
    generator: torch.Generator
    data: DatasetSplits | None = None
    input_size: int = 32
    round: int = 0
    rounds: int = 1
    phase: Phase = "sparsity"
    epoch: int = 0
    epochs: int = 0
    step: int = 0  # optimizer steps taken in the current phase
    steps_per_epoch: int = 0
    train_size: int = 0  # images per epoch; sgl0 divides its regularizer by it
    log: Callable[[dict[str, float]], None] = field(default=lambda metrics: None)
    prune: PruneConfig | None = None


class Method(abc.ABC):
    """Base class of pruning methods, in the spirit of Optuna's ``BaseSampler``.

    Required: :meth:`importance`. Every other hook does nothing by default.

    Call order for one (method, seed) pipeline, all driven by the harness::

        method = Method(config)                    # config: an instance of cls.Config
        model  = dense baseline (start="dense") or a fresh init (start="scratch")
        method.setup(model, ctx)
        for ctx.round in range(method.rounds(ctx)):
            if method.sparsity_training:           # same loop as every phase, ctx.phase="sparsity"
                optimizer = SGD(schedule), weight decay 0 on method.no_weight_decay(model, ctx)
                decay = method.ema_decay(ctx)      # None: no moving average
                for each epoch:
                    for each batch:
                        logits = model(x)          # features of feature_modules() captured in this pass
                        loss = CE(logits, y) + method.regularization(model, features, ctx)
                        loss.backward()
                        method.after_backward(model, ctx)   # gradient edits (slimming's subgradient)
                        optimizer.step()
                        method.after_step(model, ctx)       # proximal / thresholding steps
                        ema.update(model)                   # only with a decay
                    method.on_epoch_end(model, ctx)         # e.g. stress
                    evaluate val/test, select on val        # with the EMA's parameters, if any
                model <- the selected (or last) epoch's weights, the EMA's parameters if any
            scores = method.importance(model, ctx)          # ctx.phase="prune": {unit: 1-D scores}
            plan = method.allocate(model, scores, ctx)      # None -> the harness's rule (PruneConfig)
            surgery.apply(model, plan)
            if more rounds: fine-tune (ctx.phase="finetune")
        fine-tune (ctx.phase="finetune"); hooks run here only if finetune_hooks is True

    ``no_weight_decay`` and ``ema_decay`` shape the optimizer and the evaluation of the phases that
    run the hooks (the sparsity phase; fine-tuning too with ``finetune_hooks``); their defaults
    leave every phase as the run's schedule says.

    The epochs of every phase are the run's schedules, or scaled by the harness to a matched budget
    (``--budget``); the scratch control (Liu et al. 2019) is the harness's, not a method.

    Selection of the final checkpoint uses the validation split; the test split is only reported.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type] = NoConfig
    start: ClassVar[Start] = "dense"  # where the pipeline starts: the trained dense baseline, or scratch
    sparsity_training: ClassVar[bool] = False  # run a sparsity-training phase before importance
    finetune_hooks: ClassVar[bool] = False  # also call the training hooks while fine-tuning

    def __init__(self, config: Any = None) -> None:
        self.config = self.Config() if config is None else config

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Method:
        """Build from a plain mapping (TOML, ``--set method.<name>.params.k=v``, Optuna)."""
        return cls(config_from_params(cls.Config, params, cls.name or cls.__name__))

    # --- optional hooks, in call order --------------------------------------------------------
    def setup(self, model: nn.Module, ctx: Context) -> None:
        """Once, before sparsity training (or before importance when there is none)."""

    def no_weight_decay(self, model: nn.Module, ctx: Context) -> set[str]:
        """Names (as in ``model.named_parameters()``) of parameters that the optimizer gives no weight
        decay, because the method's regulariser is theirs (sgl0). Default: none."""
        return set()

    def ema_decay(self, ctx: Context) -> float | None:
        """Decay per optimizer step of an exponential moving average of the parameters (buffers stay
        the model's own); with one, evaluation and selection use the averaged parameters and the
        phase hands them on (to importance, surgery, the next phase). Default None: no average."""
        return None

    def feature_modules(self, model: nn.Module) -> list[str]:
        """Modules whose outputs :meth:`regularization` receives, in forward order. Default: none."""
        return []

    def regularization(self, model: nn.Module, features: list[torch.Tensor], ctx: Context) -> torch.Tensor | None:
        """An extra loss term added to cross-entropy, or None."""
        return None

    def after_backward(self, model: nn.Module, ctx: Context) -> None:
        """After ``loss.backward()``, before the optimizer step: edit gradients here."""

    def after_step(self, model: nn.Module, ctx: Context) -> None:
        """After the optimizer step: proximal or thresholding updates of the weights."""

    def on_epoch_end(self, model: nn.Module, ctx: Context) -> None:
        """After each training epoch of a phase that runs hooks."""

    @abc.abstractmethod
    def importance(self, model: nn.Module, ctx: Context) -> dict[str, torch.Tensor]:
        """One score per channel for every unit in ``ctx.units``; higher means more important.

        Scores are compared across units by the global rules (FLOPs target, channel fraction), so
        make them comparable (for example mean |w| rather than a raw L1 sum). They may be returned
        as computed (on the model's device, still attached to autograd): the harness's allocation
        takes them through :func:`as_scores` (detached, float32 on the CPU, one finite value per
        channel, else a BenchError naming the unit); a custom :meth:`allocate` can call it too.
        """

    def allocate(self, model: nn.Module, scores: dict[str, torch.Tensor], ctx: Context) -> PruningPlan | None:
        """A custom plan, or None to use the harness's allocation rule."""
        return None

    def rounds(self, ctx: Context) -> int:
        """How many prune rounds (iterative pruning); fine-tuning runs between rounds."""
        return 1

    def search_space(self, trial: Any) -> dict[str, Any]:
        """Sample this method's hyperparameters from an Optuna trial; returns Config kwargs."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """State that must survive a resume (e.g. auxiliary variables)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def config_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)


def config_from_params(config_cls: type, params: Mapping[str, Any], method: str) -> Any:
    """Instantiate a method's frozen Config, rejecting unknown keys with the valid ones."""
    valid = {f.name for f in dataclasses.fields(config_cls)}
    for key in params:
        if key not in valid:
            hint = closest(key, valid)
            suggestion = f" Did you mean '{hint}'?" if hint else ""
            listed = ", ".join(sorted(valid)) or "none"
            raise BenchError(f"unknown parameter '{key}' for method '{method}'.{suggestion} Valid: {listed}")
    try:
        return config_cls(**params)
    except (TypeError, ValueError) as exc:
        raise BenchError(f"bad parameters for method '{method}': {exc}") from exc


def __getattr__(name: str) -> Any:
    """Lazy re-exports from modules above this one in the import graph (``_LAZY``, module docs)."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
