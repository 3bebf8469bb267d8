"""timm models behind ``timm:<name>``: five CNN families, trained from scratch, their early downsampling
adapted to small inputs; every other timm family is refused with the reason.

ImageNet networks downsample 32x in total, so on 32 px images the last stage runs at 1x1 (2x2 at
64 px). On inputs up to 64 px we remove a factor 4 at the input end, for a total stride of 8: the last
stage runs at 4x4 on 32 px images and 8x8 on 64 px, as in the CIFAR ResNet-18 that pruning papers
train (kuangliu/pytorch-cifar; He et al. 2016's CIFAR ResNets end at 8x8 with stride 4). Per family
(``FAMILIES``; ``timm.list_models(module=...)`` lists each one's members):

- ResNet (timm module ``resnet``: resnet*, resnet*d, resnext*, seresnet*, ecaresnet*, wide_resnet*):
  conv1 7x7/2 -> 3x3/1 and the 3x3/2 max-pool removed, kuangliu's ResNet-18; a deep stem (resnet*d)
  keeps its three 3x3 convs, the first at stride 1.
- EfficientNet (``efficientnet``: efficientnet*, mobilenetv2*, mnasnet*, mixnet*, ...) and MobileNetV3
  (``mobilenetv3``: mobilenetv3*, mobilenetv4*, lcnet*, fbnetv3*): conv_stem stride 2 -> 1 and the first
  downsampling block at stride 1, as kuangliu's CIFAR MobileNetV2 ("change stride 2 -> 1 for CIFAR10":
  conv1 and the 24-channel stage). kuangliu's EfficientNet-B0 keeps that block's stride (2x2 at 32 px).
- RegNet (``regnet``: regnetx*, regnety*, regnetv*): the stem conv and the first stage's first block at
  stride 1. kuangliu's CIFAR RegNets do the same and also run the second stage at stride 1 (stride 4).
- ConvNeXt (``convnext``, V1 and V2): the 4x4/4 patchify stem -> 1x1/1, i.e. patch size 1 (timm's
  ``patch_size=1``), as J. Ruseckas's "ConvNeXt on CIFAR10" (juliusruseckas.github.io/ml/convnext-
  cifar10.html); the three 2x2/2 downsampling layers stay.

The adapted model is measured: a forward at the input size must leave the last stage at least
input/8 wide, or the variant is refused (a stem of a kind the family's rule does not cover). What
changed and the measured last-stage size are stored as ``model.bench_stem_adaptation``, which the
run records as a tag. Above 64 px nothing changes (``"none"``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from bench.errors import BenchError, closest

SMALL_INPUT_MAX = 64  # px; inputs up to this size get the small-input downsampling
TARGET_STRIDE = 8  # total downsampling of an adapted model: last stage 4x4 at 32 px, 8x8 at 64 px
NO_ADAPTATION = "none"

Adapter = Callable[[nn.Module], list[str]]  # changes the model in place; returns what it changed


@dataclass(frozen=True)
class Family:
    """A timm family bench supports: its timm module, a tested member and its small-input rule."""

    name: str
    module: str  # timm's module: timm.list_models(module=module) lists the family
    example: str  # a member the tests create, prune and run
    rule: str  # what changes at <= 64 px, for listings and errors
    adapt: Adapter


def create_timm(name: str, num_classes: int, input_size: int) -> nn.Module:
    """Create ``timm:<name>`` from scratch (no pretrained weights: nothing is downloaded), with its
    downsampling adapted when ``input_size`` <= 64 px; a BenchError for an unsupported family."""
    import timm

    family = family_of(name)
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    except Exception as exc:  # timm raises many kinds; the message is what the user needs
        raise BenchError(f"timm could not create '{name}': {exc}") from exc
    adapted = input_size <= SMALL_INPUT_MAX
    model.bench_stem_adaptation = adapt_stem(model, family, name, input_size) if adapted else NO_ADAPTATION
    return model


def family_of(name: str) -> Family:
    """The supported family of timm model ``name``, or a BenchError saying why it is not supported."""
    import timm

    if not timm.is_model(name):
        hint = closest(name, timm.list_models())
        suggestion = f" Did you mean 'timm:{hint}'?" if hint else ""
        raise BenchError(f"unknown timm model '{name}'.{suggestion} timm.list_models() lists the valid names")
    module = timm_module(name)
    for family in FAMILIES:
        if family.module == module:
            return family
    raise BenchError(f"timm:{name} is not supported: {refusal_reason(module)}. {supported_families()}")


def timm_module(name: str) -> str:
    """The timm module that defines model ``name`` (``vision_transformer``, ``resnet``, ...)."""
    from timm.models import model_entrypoint

    return model_entrypoint(name).__module__.rsplit(".", 1)[-1]


def refusal_reason(module: str) -> str:
    """Why timm's ``module`` family is refused: transformers for what they are, other CNNs as untested."""
    if module in TRANSFORMER_MODULES:
        return (
            f"timm's '{module}' models are vision transformers: their patch and position embeddings fix a patch "
            "grid, and bench prunes conv channel groups, of which a transformer has one (the patch embedding's "
            "width), not attention heads or MLP neurons"
        )
    return (
        f"timm's '{module}' family has no small-input rule in bench: its downsampling is not adapted to "
        "32/64 px (its last stage would run at 1x1 on 32 px images) and its pruning is untested"
    )


def supported_families() -> str:
    """One sentence naming the supported families and how to list their members."""
    names = ", ".join(f"{f.name} (timm.list_models(module='{f.module}'), e.g. timm:{f.example})" for f in FAMILIES)
    return f"Supported: {names}"


def adapt_stem(model: nn.Module, family: Family, name: str, input_size: int) -> str:
    """Apply ``family``'s small-input rule and measure the result; returns the description to record."""
    before = final_feature_size(model, input_size)
    changes = family.adapt(model)
    after = final_feature_size(model, input_size)
    if min(after) < max(2, input_size // TARGET_STRIDE):
        raise BenchError(
            f"timm:{name}: bench's {family.name} rule ({family.rule}) leaves its last stage at "
            f"{after[0]}x{after[1]} on {input_size} px inputs, below the stride-{TARGET_STRIDE} size: this "
            f"variant's stem is of another kind and is not supported. {supported_families()}"
        )
    return f"{', '.join(changes)}; last stage {after[0]}x{after[1]} at {input_size} px (was {before[0]}x{before[1]})"


def final_feature_size(model: nn.Module, input_size: int) -> tuple[int, int]:
    """Height and width of ``forward_features`` on one ``input_size`` px image (eval mode, no grad)."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        features = model.forward_features(torch.zeros(1, 3, input_size, input_size))
    model.train(was_training)
    return int(features.shape[-2]), int(features.shape[-1])


# --- the rules -----------------------------------------------------------------------------------


def adapt_resnet(model: nn.Module) -> list[str]:
    """conv1 7x7/2 -> 3x3/1 (a deep stem: its first conv at stride 1), the stem's max-pool removed."""
    stem = model.conv1
    if isinstance(stem, nn.Conv2d):
        new = nn.Conv2d(stem.in_channels, stem.out_channels, 3, 1, 1, bias=stem.bias is not None)
        nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")  # as timm's ResNet.init_weights
        model.conv1 = new
        changes = [f"conv1 {_geometry(stem)} -> {_geometry(new)}"]
    else:
        changes = unstride(model, "conv1")
    return changes + unstride(model, "maxpool")


def adapt_inverted_residual(model: nn.Module) -> list[str]:
    """conv_stem and the first downsampling block of ``blocks`` at stride 1 (EfficientNet, MobileNetV3)."""
    return unstride(model, "conv_stem") + unstride(model, first_downsampling(model, "blocks"))


def adapt_regnet(model: nn.Module) -> list[str]:
    """The stem conv and the first downsampling block (the first stage's first) at stride 1."""
    stages = [name for name, _ in model.named_children() if name.startswith("s") and name[1:].isdigit()]
    return unstride(model, "stem") + unstride(model, first_downsampling(model, *stages))


def adapt_convnext(model: nn.Module) -> list[str]:
    """The 4x4/4 patchify stem conv -> 1x1/1 (patch size 1); another stem kind: its convs at stride 1."""
    patchify = model.stem[0]
    if not (isinstance(patchify, nn.Conv2d) and patchify.kernel_size == patchify.stride != (1, 1)):
        return unstride(model, "stem")
    new = nn.Conv2d(patchify.in_channels, patchify.out_channels, 1, 1, bias=patchify.bias is not None)
    nn.init.trunc_normal_(new.weight, std=0.02)  # as timm's ConvNeXt _init_weights
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    model.stem[0] = new
    return [f"stem.0 {_geometry(patchify)} -> {_geometry(new)} (patch size 1)"]


def unstride(model: nn.Module, name: str) -> list[str]:
    """Every strided conv in submodule ``name`` to stride 1 (padding unchanged: odd kernels keep the
    size), every strided max/avg pool in it removed; returns what changed."""
    changes = []
    for sub, module in list(model.get_submodule(name).named_modules()):
        path = f"{name}.{sub}" if sub else name
        if isinstance(module, nn.Conv2d) and module.stride != (1, 1):
            before = _geometry(module)
            module.stride = (1, 1)
            changes.append(f"{path} {before} -> {_geometry(module)}")
        elif isinstance(module, nn.MaxPool2d | nn.AvgPool2d) and _pair(module.stride) != (1, 1):
            model.set_submodule(path, nn.Identity())
            changes.append(f"{path} {_geometry(module)} removed")
    return changes


def first_downsampling(model: nn.Module, *containers: str) -> str:
    """Name of the first block (child of a child of ``containers``, in order) holding a strided conv."""
    for name, block in _blocks(model, containers):
        if any(isinstance(m, nn.Conv2d) and m.stride != (1, 1) for m in block.modules()):
            return name
    raise BenchError(f"{type(model).__name__} has no downsampling block under {', '.join(containers)}")


def _blocks(model: nn.Module, containers: tuple[str, ...]) -> Iterator[tuple[str, nn.Module]]:
    """(name, block) of every block of a timm stage list (``blocks.i.j``) or of stages (``s1.b1``)."""
    for container in containers:
        for stage_name, stage in model.get_submodule(container).named_children():
            if container == "blocks":
                yield from ((f"blocks.{stage_name}.{n}", b) for n, b in stage.named_children())
            else:
                yield f"{container}.{stage_name}", stage


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (value[0], value[-1])


def _geometry(module: nn.Module) -> str:
    """``KxK/S``: kernel and stride of a conv or pool."""
    kernel, stride = _pair(module.kernel_size), _pair(module.stride or module.kernel_size)
    return f"{kernel[0]}x{kernel[1]}/{stride[0]}"


FAMILIES = (
    Family("ResNet", "resnet", "resnet18", "conv1 -> 3x3/1, max-pool removed", adapt_resnet),
    Family(
        "EfficientNet", "efficientnet", "efficientnet_b0", "stem and first downsampling block at stride 1",
        adapt_inverted_residual,
    ),
    Family(
        "MobileNetV3", "mobilenetv3", "mobilenetv3_small_100", "stem and first downsampling block at stride 1",
        adapt_inverted_residual,
    ),
    Family("RegNet", "regnet", "regnetx_002", "stem and first stage at stride 1", adapt_regnet),
    Family("ConvNeXt", "convnext", "convnext_atto", "patchify stem 4x4/4 -> 1x1/1", adapt_convnext),
)  # fmt: skip
# timm modules of vision transformers: refused for what they are (see refusal_reason)
TRANSFORMER_MODULES = frozenset({
    "vision_transformer", "vision_transformer_hybrid", "vision_transformer_relpos", "vision_transformer_sam",
    "deit", "beit", "eva", "cait", "xcit", "crossvit", "pit", "tnt", "twins", "pvt_v2", "levit", "mvitv2",
    "swin_transformer", "swin_transformer_v2", "swin_transformer_v2_cr", "maxxvit", "coat", "convit",
    "efficientformer", "efficientformer_v2", "fastvit", "gcvit", "nest", "sequencer", "volo", "hiera", "davit",
    "tiny_vit", "edgenext", "mlp_mixer", "focalnet", "naflexvit",
})  # fmt: skip


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
