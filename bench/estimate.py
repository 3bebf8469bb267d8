"""The planned work of a run, printed before any training: phases, epochs, images per seed, the
matched budget when one is set, and an estimated time from measured throughput. Also each method's
phases (``method_phases``: configured, or scaled by ``bench.budget`` to ``--budget``).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from bench import budget, controls, models
from bench.api import Context, Method
from bench.budget import PhasePlan
from bench.config import RunConfig
from bench.controls import Inherited, ScratchControl
from bench.session import Workspace
from bench.training import seconds_per_image

EVAL_COST = 0.45  # an eval image costs this fraction of a training image (measured: resnet20, 2-core CPU)
DENSE_PHASE = "dense baseline (cached if present)"


def describe_plan(
    cfg: RunConfig, work: Workspace, methods: Mapping[str, Method], external: Mapping[str, Inherited]
) -> str:
    """The planned work (phases, epochs, images) and an estimate from measured throughput."""
    data, seeds = work.data, len(cfg.seeds)
    rows = controls.controls(cfg)
    totals = row_budgets(cfg, methods, rows, external)
    phases = planned_phases(cfg, methods, rows, totals)
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
        _budget_line(cfg, totals),
        f"  total per seed x {seeds} seed(s): {train_images:,} training + {eval_images:,} eval "
        f"images; measured {spi * 1e3:.2f} ms per training image -> estimated {duration(estimate)} "
        "(cached baselines are skipped)",
    ]
    return "\n".join(lines)


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


def duration(seconds: float) -> str:
    """A human duration: seconds below 90 s, minutes below 90 min, hours above."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
