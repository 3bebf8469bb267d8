"""timm models behind ``timm:<name>``, with num_classes set and the stem adapted to small inputs.

ImageNet stems downsample 4x (7x7 stride-2 conv + max-pool, or a stride-2 conv); on 32x32 or
64x64 images that throws away most of the resolution, so the stem is replaced by a 3x3 stride-1
conv and the max-pool removed, as the CIFAR literature does. What was changed is recorded on the
model as ``bench_stem_adaptation``.
"""

from __future__ import annotations

import sys

from torch import nn

from bench.errors import BenchError, closest

SMALL_INPUT_MAX = 64  # px; inputs up to this size get the CIFAR-style stem


def create_timm(name: str, num_classes: int, input_size: int) -> nn.Module:
    """Create ``timm:<name>`` from scratch (no pretrained weights: nothing is downloaded)."""
    import timm

    if not timm.is_model(name):
        hint = closest(name, timm.list_models())
        suggestion = f" Did you mean 'timm:{hint}'?" if hint else ""
        raise BenchError(f"unknown timm model '{name}'.{suggestion} timm.list_models() lists the valid names")
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    except Exception as exc:  # timm raises many kinds; the message is what the user needs
        raise BenchError(f"timm could not create '{name}': {exc}") from exc
    model.bench_stem_adaptation = adapt_stem(model) if input_size <= SMALL_INPUT_MAX else "none"
    return model


def adapt_stem(model: nn.Module) -> str:
    """Make the stem keep full resolution; returns a description of what changed."""
    changes = []
    stem = getattr(model, "conv1", None)
    if isinstance(stem, nn.Conv2d) and stem.stride != (1, 1):
        model.conv1 = nn.Conv2d(stem.in_channels, stem.out_channels, 3, 1, 1, bias=stem.bias is not None)
        changes.append("conv1 -> 3x3 stride 1")
    elif isinstance(stem, nn.Sequential) and isinstance(stem[0], nn.Conv2d) and stem[0].stride != (1, 1):
        stem[0].stride = (1, 1)  # deep stems (resnet*d): keep kernels, drop the stride
        changes.append("conv1.0 stride -> 1")
    conv_stem = getattr(model, "conv_stem", None)
    if isinstance(conv_stem, nn.Conv2d) and conv_stem.stride != (1, 1):
        conv_stem.stride = (1, 1)  # EfficientNet/MobileNet family
        changes.append("conv_stem stride -> 1")
    if isinstance(getattr(model, "maxpool", None), nn.MaxPool2d):
        model.maxpool = nn.Identity()
        changes.append("maxpool removed")
    return ", ".join(changes) or "none"


def feature_modules(model: nn.Module, kind: str = "blocks") -> list[str] | None:
    """x_0, x_1, ... of a timm ResNet: the stem's output (timm's first ``feature_info`` entry, or the
    max-pool after it where the model keeps one, so that x_0 is what the first stage reads), then each
    block of the stages ``feature_info`` lists after it (``"blocks"``), or each block's internal
    activations (``act1``, and ``act2`` in a bottleneck) before the block's own output (``"layers"``).
    None for other models: their stages are not all runs of blocks of one shape."""
    resnet = sys.modules.get("timm.models.resnet")
    if resnet is None or not isinstance(model, resnet.ResNet):
        return None
    stem, *stages = [info["module"] for info in model.feature_info]
    if isinstance(model.maxpool, nn.MaxPool2d):
        stem = "maxpool"
    blocks = [f"{stage}.{block}" for stage in stages for block, _ in model.get_submodule(stage).named_children()]
    if kind != "layers":
        return [stem, *blocks]
    return [stem, *[name for block in blocks for name in (*_internal_activations(model, block), block)]]


def _internal_activations(model: nn.Module, block: str) -> list[str]:
    """A timm residual block's activations before the addition: every ``act*`` child but the last,
    which follows the addition and is the block's output."""
    acts = sorted(n for n, _ in model.get_submodule(block).named_children() if n.startswith("act"))
    return [f"{block}.{n}" for n in acts[:-1]]
