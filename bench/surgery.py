"""Surgery: physically remove channels, producing a smaller dense model (not masks).

``apply(model, plan)`` is the one entry point. Models that declare their prunable units (our CIFAR
ResNets with the internal-channel rule, and VGGs) take the direct path: each unit's members are
sliced in place. Any other model (timm) goes through Torch-Pruning's dependency graph, which finds
coupled channels in arbitrary graphs.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.errors import BenchError
from bench.plan import PruningPlan
from bench.units import Member, PrunableUnit, module_by_name

DEPGRAPH_INPUT_SIZE = 32  # px; only traces the graph, any valid size works


def prunable_units(model: nn.Module, input_size: int = DEPGRAPH_INPUT_SIZE) -> list[PrunableUnit]:
    """The model's prunable units: declared by the model, else discovered by Torch-Pruning."""
    if hasattr(model, "prunable_units"):
        return list(model.prunable_units())
    return _depgraph_units(model, input_size)


def backend_of(model: nn.Module) -> str:
    return "direct" if hasattr(model, "prunable_units") else "depgraph"


def apply(model: nn.Module, plan: PruningPlan, input_size: int = DEPGRAPH_INPUT_SIZE) -> nn.Module:
    """Remove every channel the plan does not keep, in place; returns ``model`` for chaining."""
    units = {u.name: u for u in prunable_units(model, input_size)}
    _check_plan(plan, units)
    if backend_of(model) == "direct":
        for name, kept in plan.keep.items():
            _prune_unit_direct(model, units[name], torch.tensor(kept, dtype=torch.long))
    else:
        _prune_depgraph(model, plan, input_size)
    return model


def _check_plan(plan: PruningPlan, units: dict[str, PrunableUnit]) -> None:
    for name, total in plan.channels.items():
        if name not in units:
            raise BenchError(f"plan unit '{name}' is not a prunable unit of this model ({len(units)} units)")
        if units[name].channels != total:
            raise BenchError(
                f"plan unit '{name}' expects {total} channels, the model has {units[name].channels}; "
                "replay earlier rounds' plans first"
            )


def _prune_unit_direct(model: nn.Module, unit: PrunableUnit, kept: torch.Tensor) -> None:
    for member in unit.members:
        _slice_member(module_by_name(model, member.module), member, kept, unit.channels)


def _slice_member(module: nn.Module, member: Member, kept: torch.Tensor, channels: int) -> None:
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        raise BenchError(f"direct surgery does not handle grouped conv '{member.module}'; use the depgraph path")
    if member.side == "out":
        _slice_out(module, kept)
    elif isinstance(module, nn.Linear):
        per_channel = module.in_features // channels  # flatten after a spatial map: features per channel
        cols = (kept[:, None] * per_channel + torch.arange(per_channel)).flatten()
        _set_param(module, "weight", module.weight.data[:, cols])
        module.in_features = len(cols)
    elif isinstance(module, nn.Conv2d):
        _set_param(module, "weight", module.weight.data[:, kept])
        module.in_channels = len(kept)
    else:
        raise BenchError(f"cannot slice the input of {type(module).__name__} '{member.module}'")


def _slice_out(module: nn.Module, kept: torch.Tensor) -> None:
    for attr in ("weight", "bias"):
        if getattr(module, attr, None) is not None:
            _set_param(module, attr, getattr(module, attr).data[kept])
    for attr in ("running_mean", "running_var"):
        if getattr(module, attr, None) is not None:
            setattr(module, attr, getattr(module, attr)[kept].clone())
    if isinstance(module, nn.Conv2d):
        module.out_channels = len(kept)
    elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
        module.num_features = len(kept)
    elif isinstance(module, nn.Linear):
        module.out_features = len(kept)


def _set_param(module: nn.Module, name: str, data: torch.Tensor) -> None:
    old = getattr(module, name)
    setattr(module, name, nn.Parameter(data.clone().contiguous(), requires_grad=old.requires_grad))


def _depgraph(model: nn.Module, input_size: int):
    import torch_pruning as tp

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    graph = tp.DependencyGraph().build_dependency(
        model, torch.randn(1, 3, input_size, input_size, device=device), verbose=False
    )
    model.train(was_training)
    return graph


def _classifier(model: nn.Module) -> list[nn.Module]:
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    return [head] if isinstance(head, nn.Module) else []


def _depgraph_units(model: nn.Module, input_size: int) -> list[PrunableUnit]:
    """One unit per dependency group rooted at a conv, named after its root conv. A group that touches
    a grouped conv (1 < groups < channels: ResNeXt, RegNet) is not a unit: Torch-Pruning slices a grouped
    conv correctly only when the same offsets go in every group, and a plan keeps any channels. Depthwise
    convs (groups == channels) are sliced channel by channel and stay."""
    graph = _depgraph(model, input_size)
    names = {module: name for name, module in model.named_modules()}
    units = []
    for group in graph.get_all_groups(ignored_layers=_classifier(model), root_module_types=[nn.Conv2d]):
        if any(_grouped(dep.target.module) for dep, _ in group):
            continue
        members = []
        for dep, _ in group:
            name = names.get(dep.target.module)
            if name is not None:
                side = "out" if "out_channels" in getattr(dep.handler, "__name__", "") else "in"
                members.append(Member(name, side))
        root = group[0].dep.target.module
        units.append(PrunableUnit(names[root], root.out_channels, tuple(dict.fromkeys(members))))
    return units


def _grouped(module: nn.Module) -> bool:
    """A grouped conv that is not depthwise: its channels can go only group-uniformly."""
    return isinstance(module, nn.Conv2d) and 1 < module.groups < module.in_channels


def _prune_depgraph(model: nn.Module, plan: PruningPlan, input_size: int) -> None:
    import torch_pruning as tp

    graph = _depgraph(model, input_size)
    for name, kept in plan.keep.items():
        conv = module_by_name(model, name)
        removed = sorted(set(range(plan.channels[name])) - set(kept))
        if removed:
            group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=removed)
            group.prune()
