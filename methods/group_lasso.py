"""group_lasso: structured sparsity learning, SSL (Wen, Wu, Wang, Chen, Li; "Learning Structured
Sparsity in Deep Neural Networks", NeurIPS 2016, arXiv 1608.03665).

Read (methods/README.md): sparsity training adds group lasso terms, the sum over groups of each
group's L2 norm: filter-wise ``lambda_n * sum_n ||W[n,:,:,:]||_2`` and channel-wise
``lambda_c * sum_c ||W[:,c,:,:]||_2``. After training, the importance of a filter is its L2 norm,
and allocation is a global threshold or a FLOPs target. The loss term goes through
:meth:`regularization`, and autograd gives each group the gradient ``lambda * W_g / ||W_g||``.

Read in the official code (wenwei202/caffe, branch ``scnn``, ``examples/cifar10/readme.md``, whose
commands run ``examples/cifar10/train_script.sh base_lr weight_decay kernel_shape_decay breadth_decay
block_group_decay device_id template_solver.prototxt [finetuned.caffemodel]``):
- Start: the trained dense baseline (``start="dense"``). Every SSL command in that readme fine-tunes a
  trained model with the group lasso on: ``train_script.sh 0.001 0.0 0.003 0.003 0.0 0
  template_group_solver.prototxt yourbaseline.caffemodel`` (the CIFAR ConvNet), and for ResNets
  ``train_script.sh 0.1 0.0001 0.0 0.0 0.007 0 template_resnet_depth_solver.prototxt
  yourResNetsBaseline.caffemodel``. The model is then pruned once and fine-tuned.
- Defaults ``lambda_filter = lambda_channel = 3e-3``: the ConvNet command's ``breadth_decay`` (rows,
  i.e. filters W[n,:,:,:]) and ``kernel_shape_decay`` (columns W[:,c,h,w]), 0.003 each. These are
  the only filter-/channel-level values in the official CIFAR scripts; the ResNet command sets only
  ``block_group_decay = 0.007`` on whole layers (depth, not channels). Units agree: caffe's solver
  (``src/caffe/solvers/sgd_solver.cpp``, ``GroupLassoRegularize``) adds ``decay * W_g / ||W_g||`` to
  the gradient of the batch-mean loss, which is the gradient of our ``lambda * sum_g ||W_g||``.
  We chose to put the column value on channel groups W[:,c,:,:] (a channel group is the union of its
  k*k columns, and removing a channel is what surgery can do), so our channel term is between 1/k and
  1 times caffe's column term for the same weights.
- Schedule (we chose): the sparsity phase is the run's sparsity schedule, on the paper preset the
  dense one (lr 0.1, x0.1 at 50% and 75%, wd 1e-4, momentum 0.9), the ResNet command's lr and weight
  decay. The ConvNet command used lr 0.001 and no weight decay on a network without BN, so at lr 0.1
  the same lambda moves a group 100x further per step than there; the ResNet depth command also ran
  its group lasso (0.007) at lr 0.1.

Chosen here (not read):
- ``scope="units"`` (default): only the groups that surgery can remove are regularised. Those are
  the filters of each prunable unit's producer conv and the matching input channels of its consumers
  (for a linear consumer after a flatten, the features of that channel). In a CIFAR ResNet that is
  conv1's filters and conv2's input channels in every block. The filters that feed a residual sum
  (conv2's outputs, the stem) are coupled across a stage and never pruned (methods/README.md,
  "Conventions"). Shrinking them would cost accuracy and remove nothing. ``scope="all"`` follows
  the paper literally: both group kinds on every conv (channel groups skip grouped convs).
- Importance: the filter group's L2 norm divided by its layer's mean filter norm
  (``normalize="layer_mean"``, default, ``bench.api.group_l2``); ``"none"`` keeps raw norms.
  Measured on resnet20 with a global threshold at a 50% FLOPs target: raw norms leave
  layer2.0.conv1 with 1 of 32 channels and layer3.0.conv1 with 1 of 64. That happens at init,
  after 600 SGD steps at lambda 5e-4 (the former default), and after 600 steps without the
  regulariser alike (CIFAR-10 JPEG copy, 4k images, batch 64, lr 0.1). Those are the stage-entry convs with
  C_in = C_out / 2, where Kaiming fan-out init gives a filter norm of about
  sqrt(2 C_in / C_out) = 1 instead of 1.41. A BN follows every conv, so a filter's scale does
  not change what the network computes, and that difference is not importance. layer_mean kept
  38-58% of every block in the same run. Groups that SSL drove to zero still go first under either
  normalisation, because 0 / mean = 0 (tests/test_group_lasso.py). With lambda 1e-2,
  SSL shrank every filter norm to about 0.05-0.1, and the two kept 28-75% (raw) and 31-69%
  (layer_mean) of each block. A full 160-epoch schedule could not be measured here (CPU only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bench.api import GROUP_NORMALIZATIONS, Context, Method, channel_sq, filter_sq, group_l2, group_norm, member_sq

SCOPES = ("units", "all")
NORMALIZATIONS = GROUP_NORMALIZATIONS


@dataclass(frozen=True)
class GroupLassoConfig:
    """``lambda_filter`` (lambda_n) and ``lambda_channel`` (lambda_c) weigh the loss per unit of
    summed group L2 norm (filter groups W[n,:,:,:], channel groups W[:,c,:,:]). ``scope``: which
    groups are regularised, those of the prunable units (``"units"``) or of every conv
    (``"all"``). ``normalize``: how filter norms are scaled before the global comparison (module docs)."""

    lambda_filter: float = 3e-3  # SSL's breadth_decay (module docs)
    lambda_channel: float = 3e-3  # SSL's kernel_shape_decay
    scope: str = "units"
    normalize: str = "layer_mean"

    def __post_init__(self) -> None:
        for name in ("lambda_filter", "lambda_channel"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}, got '{self.scope}'")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got '{self.normalize}'")


class GroupLasso(Method):
    name = "group_lasso"
    description = "filter- and channel-wise group lasso fine-tuning the dense baseline, global L2 threshold (SSL)"
    Config = GroupLassoConfig
    start = "dense"
    sparsity_training = True

    def regularization(self, model: nn.Module, features: list[torch.Tensor], ctx: Context) -> torch.Tensor | None:
        cfg = self.config
        filters, channels = self.groups(model, ctx)
        total = torch.zeros((), device=next(model.parameters()).device)
        if cfg.lambda_filter:
            total = total + cfg.lambda_filter * sum(group_norm(sq).sum() for sq in filters)
        if cfg.lambda_channel:
            total = total + cfg.lambda_channel * sum(group_norm(sq).sum() for sq in channels)
        return total

    def groups(self, model: nn.Module, ctx: Context) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-group sums of squares (graph kept): the filter groups and the channel groups of ``scope``."""
        if self.config.scope == "all":
            convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
            filters = [filter_sq(conv.weight) for conv in convs]
            return filters, [channel_sq(conv.weight) for conv in convs if conv.groups == 1]
        filters = [sq for unit in ctx.units for sq in member_sq(model, unit, "out")]
        return filters, [sq for unit in ctx.units for sq in member_sq(model, unit, "in")]

    def importance(self, model: nn.Module, ctx: Context) -> dict[str, torch.Tensor]:
        return group_l2(model, ctx.units, self.config.normalize)

    def search_space(self, trial) -> dict:
        return {
            "lambda_filter": trial.suggest_float("lambda_filter", 1e-5, 5e-3, log=True),
            "lambda_channel": trial.suggest_float("lambda_channel", 1e-5, 5e-3, log=True),
        }
