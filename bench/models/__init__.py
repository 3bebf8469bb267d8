"""Model registry, in the style of timm: ``create(name, num_classes, input_size)``.

Our own CIFAR ResNets and VGGs are registered by name; a timm model of one of the supported families
(``timm_models.FAMILIES``) is ``timm:<name>``, other timm families are refused with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from bench.errors import BenchError, unknown_name
from bench.models import timm_models
from bench.models.cifar_resnet import CifarResNet
from bench.models.timm_models import create_timm
from bench.models.vgg import VGG16_CFG, VGG19_CFG, CifarVGG

TIMM_PREFIX = "timm:"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    factory: Callable[[int], nn.Module]  # num_classes -> model


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, description: str) -> Callable[[Callable[[int], nn.Module]], Callable[[int], nn.Module]]:
    """Decorator that registers a factory ``f(num_classes) -> nn.Module`` under ``name``."""

    def wrap(factory: Callable[[int], nn.Module]) -> Callable[[int], nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is registered twice")
        _REGISTRY[name] = ModelEntry(name, description, factory)
        return factory

    return wrap


for _depth, _params in ((20, "0.27M"), (32, "0.46M"), (56, "0.85M"), (110, "1.73M")):
    register_model(f"resnet{_depth}", f"CIFAR ResNet-{_depth}, option-A shortcuts, {_params} params (He et al. 2016)")(
        lambda n, d=_depth: CifarResNet(d, n)
    )


@register_model("vgg16", "CIFAR VGG-16 with BN and a 512-512 classifier, 14.99M params (Li et al. 2017)")
def _vgg16(num_classes: int) -> nn.Module:
    return CifarVGG(VGG16_CFG, num_classes, hidden=512)


@register_model("vgg19", "CIFAR VGG-19 with BN and one linear layer, 20.04M params (Liu et al. 2017)")
def _vgg19(num_classes: int) -> nn.Module:
    return CifarVGG(VGG19_CFG, num_classes, hidden=None)


def list_models() -> dict[str, str]:
    """Registered names -> one-line description, plus ``timm:<name>`` and one line per timm family."""
    names = {name: entry.description for name, entry in sorted(_REGISTRY.items())}
    names[f"{TIMM_PREFIX}<name>"] = (
        f"a timm model of the families below, from scratch; at <= {timm_models.SMALL_INPUT_MAX} px its "
        f"downsampling is cut to stride {timm_models.TARGET_STRIDE} (last stage 4x4 at 32 px, 8x8 at 64 px); "
        "other timm families are refused with the reason"
    )
    for family in timm_models.FAMILIES:
        names[f"{TIMM_PREFIX}{family.example}"] = (
            f"{family.name} family: any of timm.list_models(module='{family.module}'); at <= "
            f"{timm_models.SMALL_INPUT_MAX} px {family.rule}"
        )
    return names


def validate_name(name: str) -> None:
    """Raise a BenchError naming the valid models when ``name`` is not one; a timm name must exist and
    belong to a supported family (checked by name: nothing is built)."""
    if name.startswith(TIMM_PREFIX):
        timm_models.family_of(name[len(TIMM_PREFIX) :])
    elif name not in _REGISTRY:
        raise unknown_name("model", name, [*_REGISTRY, f"{TIMM_PREFIX}<name>"])


def create(name: str, num_classes: int = 10, input_size: int = 32) -> nn.Module:
    """Build model ``name`` with ``num_classes`` outputs for square inputs of ``input_size`` px."""
    validate_name(name)
    if name.startswith(TIMM_PREFIX):
        model = create_timm(name[len(TIMM_PREFIX) :], num_classes, input_size)
    else:
        model = _REGISTRY[name].factory(num_classes)
    model.bench_name = name
    return model


FEATURE_KINDS = ("blocks", "layers")


def feature_modules(model: nn.Module, needed_by: str = "this method", kind: str = "blocks") -> list[str]:
    """Names of the modules whose outputs are the model's features x_0, x_1, ... in forward order (the
    feature flow): each model's own ``feature_modules(kind)`` (our CIFAR ResNets and VGGs), else timm's
    ``feature_info`` for timm ResNets. ``kind``: ``"blocks"`` (residual block outputs) or ``"layers"``
    (every conv+BN+ReLU output, the blocks' internal ones included). ``needed_by`` names the method in
    the error for other models."""
    if kind not in FEATURE_KINDS:
        raise BenchError(f"feature kind must be one of {', '.join(FEATURE_KINDS)}, got {kind!r}")
    if hasattr(model, "feature_modules"):
        return list(model.feature_modules(kind))
    names = timm_models.feature_modules(model, kind)
    if names is not None:
        return names
    name = getattr(model, "bench_name", type(model).__name__)
    raise BenchError(
        f"{needed_by} cannot find the feature flow of model '{name}': it supports our CIFAR ResNets and VGGs "
        "(resnet20/32/56/110, vgg16, vgg19) and timm ResNets (timm:resnet18, timm:resnet50, ...)"
    )


def reinitialize(model: nn.Module, seed: int) -> None:
    """Draw every parameter and BN statistic afresh at the model's current (possibly pruned) shapes.

    Each module's own ``reset_parameters`` runs first, then the model's ``init_weights`` (ours, and
    timm's where a model has one), as construction would. The draw is seeded by ``seed`` and does not
    disturb the global RNG stream.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
        init = getattr(model, "init_weights", None)
        if callable(init):
            init()
