"""``bench profile``: params, FLOPs (fvcore conv+linear MACs) and latency of a model, optionally
after a named pruning plan."""

from __future__ import annotations

from typing import Any

from bench import allocation, measure, models, named_plans, surgery
from bench.errors import BenchError, unknown_name

# classes and input size (px) of the built-in datasets, so a model can be profiled without the data
DATASET_SHAPES = {"cifar10": (10, 32), "cifar100": (100, 32), "tinyimagenet": (200, 64)}


def profile(
    model_name: str, dataset: str, plan: str | None, latency: bool, batch_size: int, device: str, repeats: int
) -> dict[str, Any]:
    if dataset not in DATASET_SHAPES:
        raise unknown_name("dataset", dataset, DATASET_SHAPES)
    if batch_size < 1 or repeats < 1:
        raise BenchError(f"--batch-size and --repeats must be >= 1, got {batch_size} and {repeats}")
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
    if plan:
        apply_named_plan(model, model_name, plan, input_size)
        pruned = measure.cost(model, input_size)
        report["plan"] = plan
        report["pruned"] = {
            "params": pruned.params,
            "macs": pruned.macs,
            "params_reduction": 1 - pruned.params / dense.params,
            "flops_reduction": 1 - pruned.macs / dense.macs,
        }
    if latency:
        report["latency"] = measure.measure_latency(model, input_size, batch_size, device, repeats=repeats).as_dict()
    return report


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
        lat = report["latency"]
        lines.append(
            f"  latency: median {lat['median_ms']:.2f} ms, IQR {lat['iqr_ms']:.2f} ms per batch of "
            f"{lat['batch_size']} on {lat['device']} ({lat['threads']} threads, {lat['warmup']} warm-up, "
            f"{lat['repeats']} repeats)"
        )
    lines.append(f"  FLOPs = {report['flops_convention']}")
    return "\n".join(lines)
