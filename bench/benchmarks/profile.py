"""``bench profile``: params, FLOPs (fvcore conv+linear MACs) and latency of a model, optionally
after a named pruning plan.

With a plan and ``latency``, the dense model and the pruned one are timed side by side
(:func:`bench.measure.measure_latencies`, interleaved in rounds so that a slow spell of the machine
hits both alike) at each batch size, and the speed-up is dense latency / pruned latency.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from torch import nn

from bench import allocation, measure, models, named_plans, surgery
from bench.errors import BenchError, unknown_name

# classes and input size (px) of the built-in datasets, so a model can be profiled without the data
DATASET_SHAPES = {"cifar10": (10, 32), "cifar100": (100, 32), "tinyimagenet": (200, 64)}
ROUNDS = 5  # interleaved rounds when dense and pruned are timed together (at most one per repeat)
DENSE = "dense"


@dataclass(frozen=True)
class LatencyRequest:
    """What ``--latency`` asks for: batch sizes (images per forward), device, timed repeats."""

    batch_sizes: tuple[int, ...] = (64,)
    device: str = "cpu"
    repeats: int = 30

    def __post_init__(self) -> None:
        if not self.batch_sizes or min(self.batch_sizes) < 1 or self.repeats < 1:
            raise BenchError(
                f"--batch-size and --repeats must be >= 1, got {','.join(map(str, self.batch_sizes)) or 'none'} "
                f"and {self.repeats}"
            )


def profile(model_name: str, dataset: str, plan: str | None, latency: LatencyRequest | None) -> dict[str, Any]:
    """Params and MACs of ``model_name`` (and after ``plan``); latency of each when ``latency``."""
    if dataset not in DATASET_SHAPES:
        raise unknown_name("dataset", dataset, DATASET_SHAPES)
    num_classes, input_size = DATASET_SHAPES[dataset]
    model = models.create(model_name, num_classes, input_size)
    dense = measure.cost(model, input_size)
    report: dict[str, Any] = {
        "model": model_name,
        "dataset": dataset,
        "input_size": input_size,
        "num_classes": num_classes,
        "flops_convention": measure.FLOP_CONVENTION,
        "dense": {"params": dense.params, "macs": dense.macs},
    }
    timed = {DENSE: model}
    if plan:
        timed[plan] = pruned_copy(model, model_name, plan, input_size)
        report["plan"] = plan
        report["pruned"] = _pruned_cost(timed[plan], dense, input_size)
    if latency is not None:
        report["latency"] = measure_side_by_side(timed, input_size, latency)
    return report


def pruned_copy(model: nn.Module, model_name: str, plan: str, input_size: int) -> nn.Module:
    """A copy of ``model`` with the named plan applied (``model`` stays dense)."""
    pruned = copy.deepcopy(model)
    apply_named_plan(pruned, model_name, plan, input_size)
    return pruned


def _pruned_cost(pruned: nn.Module, dense: measure.Cost, input_size: int) -> dict[str, Any]:
    cost = measure.cost(pruned, input_size)
    return {
        "params": cost.params,
        "macs": cost.macs,
        "params_reduction": 1 - cost.params / dense.params,
        "flops_reduction": 1 - cost.macs / dense.macs,
    }


def measure_side_by_side(timed: dict[str, nn.Module], input_size: int, request: LatencyRequest) -> list[dict[str, Any]]:
    """Per batch size: each model's latency (median, IQR and the protocol) under its label ("dense",
    the plan's name as "pruned"), and the speed-up dense / pruned when there is a pruned model."""
    rounds = min(ROUNDS, request.repeats) if len(timed) > 1 else 1
    out = []
    for batch in request.batch_sizes:
        measured = measure.measure_latencies(timed, input_size, batch, request.device, repeats=request.repeats,
                                             rounds=rounds)  # fmt: skip
        entry: dict[str, Any] = {"batch_size": batch, DENSE: measured[DENSE].as_dict()}
        pruned = [label for label in measured if label != DENSE]
        if pruned:
            entry["pruned"] = {"plan": pruned[0], **measured[pruned[0]].as_dict()}
            entry["speedup"] = measured[DENSE].median_ms / measured[pruned[0]].median_ms
        out.append(entry)
    return out


def apply_named_plan(model, model_name: str, plan: str, input_size: int) -> None:
    """Apply Li et al.'s named plan; which filters go is decided by their L1 norm, as in the paper."""
    units = surgery.prunable_units(model, input_size)
    scores = {u.name: model.get_submodule(u.name).weight.detach().abs().flatten(1).sum(1) for u in units}
    counts = named_plans.named_counts(model_name, plan, {u.name: u.channels for u in units})
    surgery.apply(model, allocation.plan_from_counts(model_name, units, scores, counts, surgery.backend_of(model)))


def format_profile(report: dict[str, Any]) -> str:
    dense = report["dense"]
    lines = [
        f"{report['model']} ({report['dataset']}, {report['input_size']}x{report['input_size']} input, "
        f"{report['num_classes']} classes)",
        f"  dense:  params {dense['params']:,} ({dense['params'] / 1e6:.2f}M)  "
        f"FLOPs {dense['macs']:,} MACs ({dense['macs'] / 1e6:.2f}M)",
    ]
    if "pruned" in report:
        p = report["pruned"]
        lines.append(
            f"  {report['plan']}:  params {p['params']:,} ({p['params'] / 1e6:.2f}M, "
            f"-{p['params_reduction']:.1%})  FLOPs {p['macs']:,} MACs ({p['macs'] / 1e6:.2f}M, "
            f"-{p['flops_reduction']:.1%})"
        )
    if "latency" in report:
        lines += format_latency(report["latency"], report.get("plan"))
    lines.append(f"  FLOPs = {report['flops_convention']}")
    return "\n".join(lines)


def format_latency(entries: list[dict[str, Any]], plan: str | None) -> list[str]:
    """A protocol line, then per batch size: dense, pruned and the speed-up, each labelled."""
    p = entries[0][DENSE]
    threads = f"{p['threads']} thread{'s' if p['threads'] != 1 else ''}"
    together = f", dense and {plan} interleaved in {p['rounds']} rounds" if plan else ""
    lines = [
        f"  latency, ms per batch on {p['device']} ({threads}; median and IQR of {p['repeats']} repeats after "
        f"{p['warmup']} warm-up{together}):"
    ]
    for entry in entries:
        d = entry[DENSE]
        line = f"    batch {entry['batch_size']}:  dense {d['median_ms']:.2f} ms (IQR {d['iqr_ms']:.2f})"
        if "pruned" in entry:
            q = entry["pruned"]
            line += (
                f"  pruned ({q['plan']}) {q['median_ms']:.2f} ms (IQR {q['iqr_ms']:.2f})"
                f"  speed-up {entry['speedup']:.2f}x (dense / pruned)"
            )
        lines.append(line)
    if not plan:
        lines.append("    (no --plan: only the dense model; pass --plan to time a pruned one beside it)")
    return lines
