"""The named configurations of Li et al. (ICLR 2017), the standard L1 rows of comparison tables.

Convolutions are numbered from 1 (the stem). In a CIFAR ResNet the first conv of basic block b
(counting from 0 across the network) has id 2 + 2b, and it is the only one pruned. A stage's
ratio ``p`` keeps ``int(C * (1 - p))`` filters; listed ids are skipped as sensitive.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bench.allocation import ratio_keep
from bench.errors import BenchError


@dataclass(frozen=True)
class ResNetPlanSpec:
    stage_ratios: tuple[float, float, float]
    skip: tuple[int, ...]


@dataclass(frozen=True)
class VGGPlanSpec:
    keep: dict[int, int]  # conv id -> filters kept


NAMED_PLANS: dict[tuple[str, str], ResNetPlanSpec | VGGPlanSpec] = {
    ("resnet56", "l1-a"): ResNetPlanSpec((0.1, 0.1, 0.1), (16, 20, 38, 54)),
    ("resnet56", "l1-b"): ResNetPlanSpec((0.6, 0.3, 0.1), (16, 18, 20, 34, 38, 54)),
    ("resnet110", "l1-a"): ResNetPlanSpec((0.5, 0.0, 0.0), (36,)),
    ("resnet110", "l1-b"): ResNetPlanSpec((0.5, 0.4, 0.3), (36, 38, 74)),
    ("vgg16", "l1-a"): VGGPlanSpec({1: 32, **{i: 256 for i in range(8, 14)}}),
}


def plans_for(model: str) -> list[str]:
    return sorted(p for m, p in NAMED_PLANS if m == model)


def all_plans() -> list[str]:
    return sorted({f"{m}/{p}" for m, p in NAMED_PLANS})


def check_plan(model_name: str, plan: str) -> ResNetPlanSpec | VGGPlanSpec:
    """The spec of named ``plan`` for ``model_name``; a BenchError listing the valid plans when there
    is none. A run calls it before any work, so a wrong name never costs a trained baseline."""
    spec = NAMED_PLANS.get((model_name, plan))
    if spec is None:
        own = ", ".join(plans_for(model_name)) or "none"
        valid = ", ".join(all_plans()) or "none"
        raise BenchError(
            f"no named plan '{plan}' for model '{model_name}'; {model_name} has {own}. "
            f"Named plans (model/plan): {valid}"
        )
    return spec


def check_one_round(plan: str, rounds: Mapping[str, int]) -> None:
    """A named plan prescribes the kept filters of the unpruned model, so it is applied once: a
    method that prunes in rounds (``rounds``: method -> its prune rounds) cannot run it."""
    several = [f"{name} ({count} rounds)" for name, count in rounds.items() if count > 1]
    if several:
        raise BenchError(
            f"named plan '{plan}' applies to the unpruned model in one round, but {', '.join(several)} "
            "prune in rounds; drop --plan for them or use --target-flops-reduction"
        )


def named_counts(model_name: str, plan: str, channels: dict[str, int]) -> dict[str, int]:
    """Kept filter counts per unit for named ``plan`` of ``model_name``.

    ``channels`` maps the model's unit names (in forward order) to their widths.
    """
    spec = check_plan(model_name, plan)
    if isinstance(spec, VGGPlanSpec):
        names = list(channels)
        return {names[conv_id - 1]: kept for conv_id, kept in spec.keep.items()}
    return _resnet_counts(spec, channels)


def _resnet_counts(spec: ResNetPlanSpec, channels: dict[str, int]) -> dict[str, int]:
    names = list(channels)  # layerS.J.conv1 in forward order
    per_stage = len(names) // 3
    counts = {}
    for block, name in enumerate(names):
        conv_id = 2 + 2 * block
        ratio = spec.stage_ratios[block // per_stage]
        if conv_id in spec.skip or ratio == 0:
            continue
        counts[name] = ratio_keep(channels[name], ratio)
    return counts
