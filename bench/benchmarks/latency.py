"""``bench speed`` section (c): is a pruned model really faster, and by as much as its FLOPs say?

The dense model and pruned variants of it, timed side by side with
:func:`bench.measure.measure_latencies` (the protocol of ``profile --latency`` and every measured
run: eval mode, inference mode, warm-up, median and IQR, CUDA events on a GPU; here interleaved
over the variants in rounds, so that a slow spell of the machine does not land on one of them) at
batch 1 and batch 64. Variants:

- Li et al.'s named ``l1`` plans for the model (l1-a, l1-b where published);
- 50% FLOPs plans of ``l1`` and ``ffr`` by the harness's allocation;
- the same two with ``prune.round_to=8``: kept channel counts that fill a vector register.

Latency depends only on the architecture, so the plans score the freshly initialised weights (for
ffr, its L1/layer-mean importance). For each variant: its FLOPs ratio (dense MACs / its MACs), its
measured speed-up (dense latency / its latency) and their quotient, the *efficiency*. The CPU
target: efficiency >= 0.7 at batch 64 (50% fewer FLOPs must give at least 1.4x).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bench import measure, models, named_plans, registry, surgery
from bench.api import Context
from bench.benchmarks.profile import apply_named_plan
from bench.config import PruneConfig
from bench.pruning import default_plan

BATCH_SIZES = (1, 64)
TARGET_EFFICIENCY = 0.7
ROUND_TO = 8
ROUNDS = 5  # interleaved rounds over the variants: drift hits every one alike


def variants(model_name: str, num_classes: int, input_size: int) -> dict[str, nn.Module]:
    """The dense model and its pruned variants, by label, built from one initialisation."""
    torch.manual_seed(0)
    dense = models.create(model_name, num_classes, input_size)
    out = {"dense": dense}
    for plan in named_plans.plans_for(model_name):
        model = models.create(model_name, num_classes, input_size)
        model.load_state_dict(dense.state_dict())
        apply_named_plan(model, model_name, plan, input_size)
        out[f"l1 {plan}"] = model
    for method in ("l1", "ffr"):
        for round_to in (1, ROUND_TO):
            label = f"{method} 50% FLOPs" + (f", round_to={round_to}" if round_to > 1 else "")
            prune = PruneConfig(target_flops_reduction=0.5, round_to=round_to)
            out[label] = _pruned(dense, model_name, num_classes, method, input_size, prune)
    return out


def _pruned(
    dense: nn.Module, model_name: str, num_classes: int, method: str, input_size: int, prune: PruneConfig
) -> nn.Module:
    """``dense`` pruned by ``method``'s importance under ``prune`` (a copy)."""
    model = models.create(model_name, num_classes, input_size)
    model.load_state_dict(dense.state_dict())
    units = surgery.prunable_units(model, input_size)
    ctx = Context(model_name, units, torch.device("cpu"), 0, torch.Generator().manual_seed(0), None, input_size)
    scores = registry.create_method(method).importance(model, ctx)
    plan = default_plan(
        prune, model_name, model, units, scores, backend=surgery.backend_of(model), input_size=input_size
    )
    return surgery.apply(model, plan, input_size)


def latency_comparison(
    model_name: str,
    num_classes: int,
    input_size: int,
    device: torch.device | str = "cpu",
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    repeats: int = 30,
) -> dict[str, Any]:
    """Latency (median, IQR), FLOPs ratio, speed-up and efficiency of every variant at each batch size."""
    built = variants(model_name, num_classes, input_size)
    dense_macs = measure.cost(built["dense"], input_size).macs
    rows: dict[str, dict[str, Any]] = {}
    for label, model in built.items():
        cost = measure.cost(model, input_size)
        rows[label] = {"variant": label, "macs": cost.macs, "params": cost.params,
                       "flops_ratio": dense_macs / cost.macs, "channels": _widths(model, input_size)}  # fmt: skip
    rounds = min(ROUNDS, repeats)
    for batch in batch_sizes:
        measured = measure.measure_latencies(built, input_size, batch, device, repeats=repeats, rounds=rounds)
        for label, lat in measured.items():
            speedup = measured["dense"].median_ms / lat.median_ms
            rows[label][f"batch_{batch}"] = {**lat.as_dict(), "speedup": speedup,
                                             "efficiency": speedup / rows[label]["flops_ratio"]}  # fmt: skip
    return {
        "model": model_name,
        "input_size": input_size,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "batch_sizes": list(batch_sizes),
        "rows": list(rows.values()),
        "target_min_efficiency_batch_64_cpu": TARGET_EFFICIENCY,
    }


def _widths(model: nn.Module, input_size: int) -> list[int]:
    return [u.channels for u in surgery.prunable_units(model, input_size)]


def format_latency(report: dict[str, Any]) -> str:
    batches = report["batch_sizes"]
    head = "".join(f"{f'batch {b}: ms (IQR)':>22}{'speed-up':>10}{'eff.':>7}" for b in batches)
    lines = [
        f"(c) inference latency, {report['model']}, {report['device']}, {report['threads']} threads "
        "(efficiency = speed-up / FLOPs ratio; CPU target at batch 64 >= "
        f"{report['target_min_efficiency_batch_64_cpu']}):",
        f"    {'variant':<30}{'MMACs':>8}{'FLOPs x':>8}{head}",
    ]
    for row in report["rows"]:
        cells = ""
        for b in batches:
            m = row[f"batch_{b}"]
            cells += f"{m['median_ms']:>12.2f} ({m['iqr_ms']:5.2f}){m['speedup']:>9.2f}x{m['efficiency']:>7.2f}"
        lines.append(f"    {row['variant']:<30}{row['macs'] / 1e6:>8.2f}{row['flops_ratio']:>7.2f}x{cells}")
    return "\n".join(lines)
