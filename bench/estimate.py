"""The planned work of a run, printed before any training: phases, epochs, images per seed, and an
estimated time from measured throughput. Also each method's epoch budget (``pipeline_epochs``),
which the scratch control inherits and every run records as ``train_epochs``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from bench import models
from bench.api import Context, Inherited, Method
from bench.config import RunConfig, Schedule
from bench.session import Workspace
from bench.training import seconds_per_image

EVAL_COST = 0.45  # an eval image costs this fraction of a training image (measured: resnet20, 2-core CPU)
DENSE_PHASE = "dense baseline (cached if present)"


def describe_plan(
    cfg: RunConfig, work: Workspace, methods: Mapping[str, Method], external: Mapping[str, Inherited]
) -> str:
    """The planned work (phases, epochs, images) and an estimate from measured throughput."""
    data, seeds = work.data, len(cfg.seeds)
    phases = planned_phases(cfg, methods, external)
    train_images = sum(epochs * len(data.train) for _, epochs in phases) * seeds
    eval_images = sum(epochs for _, epochs in phases) * (len(data.val) + len(data.test)) * seeds
    probe = models.create(cfg.model, data.num_classes, data.input_size)
    spi = seconds_per_image(probe, data, cfg.dense.batch_size, work.runtime)
    estimate = spi * (train_images + eval_images * EVAL_COST)
    lines = [
        f"plan: {cfg.model} on {data.label} [{data.source}]",
        f"  images: train {len(data.train):,} / val {len(data.val):,} / test {len(data.test):,}; "
        f"seeds {','.join(map(str, cfg.seeds))}; device {work.runtime.device}; pruning rule {cfg.prune.rule}",
        f"  {'phase':<34}{'epochs':>7}{'train images':>14}",
        *(f"  {name:<34}{epochs:>7}{epochs * len(data.train):>14,}" for name, epochs in phases),
        f"  total per seed x {seeds} seed(s): {train_images:,} training + {eval_images:,} eval "
        f"images; measured {spi * 1e3:.2f} ms per training image -> estimated {duration(estimate)} "
        "(cached baselines are skipped)",
    ]
    return "\n".join(lines)


def planned_phases(
    cfg: RunConfig, methods: Mapping[str, Method], external: Mapping[str, Inherited]
) -> list[tuple[str, int]]:
    """(label, epochs per seed) of every training phase; inherited budgets use the planned sources."""
    phases = [(DENSE_PHASE, cfg.dense.epochs)]
    for name, method in methods.items():
        source = method.plan_source(cfg.methods)
        if source is None:
            phases += _pruning_phases(cfg, name, method)
            continue
        planned = external.get(source) or planned_inheritance(cfg, source, methods[source])
        epochs = inherited_schedule(cfg, name, method, planned).epochs
        phases.append((f"{name}: train ({source}'s architecture)", epochs))
    return phases


def _pruning_phases(cfg: RunConfig, name: str, method: Method) -> list[tuple[str, int]]:
    rounds = planned_rounds(cfg, method)
    suffix = f" x {rounds} rounds" if rounds > 1 else ""
    phases = []
    if method.sparsity_training:
        phases.append((f"{name}: sparsity training{suffix}", cfg.sparsity_schedule(name).epochs * rounds))
    phases.append((f"{name}: fine-tune{suffix}", cfg.finetune_schedule(name).epochs * rounds))
    return phases


def planned_rounds(cfg: RunConfig, method: Method) -> int:
    """The method's prune rounds, asked before any model exists (rounds hooks read their config)."""
    ctx = Context(cfg.model, [], torch.device("cpu"), 0, torch.Generator(), prune=cfg.prune)
    return method.rounds(ctx)


def pipeline_epochs(cfg: RunConfig, name: str, method: Method, rounds: int) -> int:
    """Every epoch that produced a method's final model: its dense baseline's (when it starts from it),
    its sparsity phases and its fine-tuning, over all rounds. The scratch control's budget."""
    per_round = cfg.finetune_schedule(name).epochs
    if method.sparsity_training:
        per_round += cfg.sparsity_schedule(name).epochs
    return (cfg.dense.epochs if method.start == "dense" else 0) + rounds * per_round


def planned_inheritance(cfg: RunConfig, source: str, method: Method) -> Inherited:
    """What a same-run source will hand over, for the estimate: its epochs, and MACs at the target."""
    epochs = pipeline_epochs(cfg, source, method, planned_rounds(cfg, method))
    kept = 1 - (cfg.prune.target_flops_reduction or 0.0)
    return Inherited(source, None, (), epochs, max(1, round(1e6 * kept)), 1_000_000)


def inherited_schedule(cfg: RunConfig, name: str, method: Method, inherited: Inherited) -> Schedule:
    """An explicit ``method.<name>.finetune`` schedule wins; otherwise the method's own choice."""
    override = cfg.method.get(name)
    if override is not None and override.finetune is not None:
        return override.finetune
    return method.inherited_schedule(cfg.dense, inherited)


def duration(seconds: float) -> str:
    """A human duration: seconds below 90 s, minutes below 90 min, hours above."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
