"""The planned work of a run, printed before any training: the preset, the pruning rule, the device,
phases, epochs, images per seed, the matched budget when one is set, and an estimated time from
measured throughput; above an hour on CPU, the largest preset that fits in one (estimated the same
way). Also each method's phases (``method_phases``: configured, or scaled by ``bench.budget`` to
``--budget``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from bench import budget, controls, models, registry
from bench.api import Context, Method
from bench.budget import PhasePlan
from bench.config import PRESETS, PruneConfig, RunConfig
from bench.controls import Inherited, ScratchControl
from bench.datasets import DatasetSplits
from bench.errors import BenchError
from bench.measure import duration
from bench.session import Workspace, load_data
from bench.training import Runtime, seconds_per_image

EVAL_COST = 0.45  # an eval image costs this fraction of a training image (measured: resnet20, 2-core CPU)
DENSE_PHASE = "dense baseline (cached if present)"
SUGGEST_ABOVE = 3600.0  # s: a CPU plan longer than this names the preset that fits


@dataclass(frozen=True)
class PresetChoice:
    """How the command chose its settings, for the plan's header: ``defaulted`` when no preset was
    named (the CLI's ``quick``), and ``variant(name)``: the same command under another preset, so a
    plan above an hour on CPU can say which preset fits (None: no suggestion, e.g. the Python API)."""

    defaulted: bool = False
    variant: Callable[[str], RunConfig] | None = None


@dataclass(frozen=True)
class Workload:
    """What one run trains and evaluates: (label, epochs per seed) of each phase and the images."""

    phases: list[tuple[str, int]]
    totals: dict[str, int]  # each row's training budget in epochs
    train_images: int  # over every seed
    eval_images: int

    def seconds(self, per_image: float) -> float:
        """Estimated wall time at ``per_image`` seconds per training image (eval images cost less)."""
        return per_image * (self.train_images + self.eval_images * EVAL_COST)


def describe_plan(
    cfg: RunConfig,
    work: Workspace,
    methods: Mapping[str, Method],
    external: Mapping[str, Inherited],
    choice: PresetChoice | None = None,
) -> str:
    """The header (preset, rule, device), the planned work (phases, epochs, images) and an estimate
    from measured throughput; above an hour on CPU, which preset fits."""
    data, device = work.data, work.runtime.device
    load = workload(cfg, data, methods, external)
    probe = models.create(cfg.model, data.num_classes, data.input_size)
    spi = seconds_per_image(probe, data, cfg.dense.batch_size, work.runtime)
    estimate = load.seconds(spi)
    lines = [
        f"plan: {cfg.model} on {data.label} [{data.source}]",
        *_adaptation_line(cfg, probe, data.input_size),
        f"  {preset_text(cfg.preset, choice)}; pruning rule: {rule_text(cfg.prune)}; device {device}",
        f"  images: train {len(data.train):,} / val {len(data.val):,} / test {len(data.test):,}; "
        f"seeds {','.join(map(str, cfg.seeds))}",
        f"  {'phase':<34}{'epochs':>7}{'train images':>14}",
        *(f"  {name:<34}{epochs:>7}{epochs * len(data.train):>14,}" for name, epochs in load.phases),
        _budget_line(cfg, load.totals),
        f"  total per seed x {len(cfg.seeds)} seed(s): {load.train_images:,} training + {load.eval_images:,} eval "
        f"images; measured {spi * 1e3:.2f} ms per training image -> estimated {duration(estimate)} on "
        f"{device.type} (cached baselines are skipped)",
    ]
    if device.type == "cpu" and estimate > SUGGEST_ABOVE and choice is not None and choice.variant is not None:
        lines.append(suggestion(cfg, work, external, choice.variant, estimate))
    return "\n".join(lines)


def _adaptation_line(cfg: RunConfig, model: nn.Module, input_size: int) -> list[str]:
    """What ``bench.models.timm_models`` did to a timm stem for this input size (also a run tag)."""
    if not cfg.model.startswith("timm:"):
        return []
    return [f"  stem for {input_size} px: {getattr(model, 'bench_stem_adaptation', 'none')}"]


def preset_text(preset: str | None, choice: PresetChoice | None) -> str:
    """ "preset quick (the default: no --preset given)", "preset smoke", or "no preset"."""
    if preset is None:
        return "no preset (the built-in defaults)"
    return f"preset {preset} (the default: no --preset given)" if choice and choice.defaulted else f"preset {preset}"


def rule_text(prune: PruneConfig) -> str:
    """The active pruning rule and its value, as a person says it."""
    if prune.plan is not None:
        return f"named plan {prune.plan}"
    if prune.channel_fraction is not None:
        return f"channel fraction {prune.channel_fraction:g} (of the prunable channels, one global threshold)"
    if prune.layer_ratio is not None:
        return f"layer ratio {prune.layer_ratio:g} (of every layer's channels)"
    return f"target FLOPs reduction {prune.target_flops_reduction * 100:g}%"


def workload(
    cfg: RunConfig, data: DatasetSplits, methods: Mapping[str, Method], external: Mapping[str, Inherited]
) -> Workload:
    """The phases of every row and the images they train and evaluate, over all seeds."""
    seeds = len(cfg.seeds)
    rows = controls.controls(cfg)
    totals = row_budgets(cfg, methods, rows, external)
    phases = planned_phases(cfg, methods, rows, totals)
    train_images = sum(epochs * len(data.train) for _, epochs in phases) * seeds
    eval_images = sum(epochs for _, epochs in phases) * (len(data.val) + len(data.test)) * seeds
    return Workload(phases, totals, train_images, eval_images)


def probe_seconds(cfg: RunConfig, data: DatasetSplits, runtime: Runtime) -> float:
    """Measured seconds per training image of the run's model at its dense batch size."""
    probe = models.create(cfg.model, data.num_classes, data.input_size)
    return seconds_per_image(probe, data, cfg.dense.batch_size, runtime)


def suggestion(
    cfg: RunConfig,
    work: Workspace,
    external: Mapping[str, Inherited],
    variant: Callable[[str], RunConfig],
    estimate: float,
) -> str:
    """One line: the largest built-in preset whose estimate (the same estimator) is under an hour,
    or, honestly, that none is."""
    known: dict[str, float] = {}
    for name in (p for p in PRESETS if p != cfg.preset):
        try:
            known[name] = _estimate(variant(name), cfg, work, external)
        except BenchError:  # the command's settings do not resolve under that preset
            continue
    fitting = {name: seconds for name, seconds in known.items() if seconds <= SUGGEST_ABOVE}
    head = f"  about {duration(estimate)} on cpu; "
    if fitting:
        best = max(fitting, key=fitting.__getitem__)
        return head + f"--preset {best} takes ~{duration(fitting[best])} (the largest preset under an hour)"
    smallest = min(known, key=known.__getitem__, default=None)
    also = f" (--preset {smallest}: ~{duration(known[smallest])})" if smallest else ""
    return head + f"no preset fits in an hour{also}; try fewer seeds or methods, fewer epochs (--set), or a GPU"


def _estimate(cfg: RunConfig, base: RunConfig, work: Workspace, external: Mapping[str, Inherited]) -> float:
    """The estimate of ``cfg`` (the command under another preset), on ``base``'s data when it is the same."""
    data = work.data if cfg.data == base.data else load_data(cfg, work.paths)
    return workload(cfg, data, method_objects(cfg), external).seconds(probe_seconds(cfg, data, work.runtime))


def method_objects(cfg: RunConfig) -> dict[str, Method]:
    """Every method of the run (the scratch control's rows aside), built from its hyperparameters."""
    names = [name for name in cfg.methods if not controls.is_control(name)]
    return {name: registry.get_method(name).from_params(cfg.method_params(name)) for name in names}


def planned_phases(
    cfg: RunConfig, methods: Mapping[str, Method], rows: Mapping[str, ScratchControl], totals: Mapping[str, int]
) -> list[tuple[str, int]]:
    """(label, epochs per seed) of every training phase: each method's (configured or budget-matched)
    and each scratch row's (``totals``: ``row_budgets``)."""
    phases = [(DENSE_PHASE, cfg.dense.epochs)]
    for name, method in methods.items():
        phases += _method_lines(name, method_phases(cfg, name, method, planned_rounds(cfg, method)))
    phases += [(f"{name}: train ({row.source}'s architecture)", totals[name]) for name, row in rows.items()]
    return phases


def row_budgets(
    cfg: RunConfig, methods: Mapping[str, Method], rows: Mapping[str, ScratchControl], external: Mapping[str, Inherited]
) -> dict[str, int]:
    """Each row's planned training budget in epochs (``train_epochs``); a scratch row's source is
    planned at the FLOPs target (its MACs are known only once it has pruned)."""
    totals = {name: method_phases(cfg, name, m, planned_rounds(cfg, m)).total for name, m in methods.items()}
    kept = max(1e-6, 1 - (cfg.prune.target_flops_reduction or 0.0))
    for name, row in rows.items():
        source = external.get(row.source)
        source_epochs = source.train_epochs if source else totals[row.source]
        totals[name] = row.epochs(cfg, source_epochs, source.macs_ratio if source else 1 / kept)
    return totals


def _method_lines(name: str, plan: PhasePlan) -> list[tuple[str, int]]:
    rounds = len(plan.finetune)
    suffix = f" x {rounds} rounds" if rounds > 1 else ""
    lines = []
    if plan.sparsity:
        lines.append((f"{name}: sparsity training{suffix}", sum(s.epochs for s in plan.sparsity)))
    lines.append((f"{name}: fine-tune{suffix}", sum(s.epochs for s in plan.finetune)))
    return lines


def planned_rounds(cfg: RunConfig, method: Method) -> int:
    """The method's prune rounds, asked before any model exists (rounds hooks read their config)."""
    ctx = Context(cfg.model, [], torch.device("cpu"), 0, torch.Generator(), prune=cfg.prune)
    return method.rounds(ctx)


def method_phases(cfg: RunConfig, name: str, method: Method, rounds: int) -> PhasePlan:
    """The method's phases: its configured schedules, scaled to ``cfg.budget`` in matched mode."""
    plan = budget.configured(cfg, name, method.start == "dense", method.sparsity_training, rounds)
    return plan if cfg.budget is None else budget.matched(plan, cfg.budget, name)


def _budget_line(cfg: RunConfig, totals: Mapping[str, int]) -> str:
    """Each row's training budget, and whether it is matched (``--budget``)."""
    mode = f"matched to --budget {cfg.budget}" if cfg.budget is not None else "as configured (no --budget)"
    listed = ", ".join(f"{name} {epochs}" for name, epochs in totals.items())
    return f"  training budget in epochs, {mode}, dense epochs included where a method starts from them: {listed}"
