"""Conformance kit for method plugins: ``check_method("mymethod")`` runs every check on a tiny CPU
model and raises ``AssertionError`` naming the first failure. Use it in your plugin's tests::

    from bench.testing import check_method
    def test_my_method_conforms():
        check_method("mymethod")            # registered name, or the Method subclass itself

Checks: the config round-trips through JSON; the hooks run through a real (short) training phase;
importance gives one finite score per channel of every unit; the plan meets the FLOPs target
within 1 percentage point and never empties a unit; surgery makes the model physically smaller
(params and MACs drop) and it still runs forward and backward; the same seed gives the same plan.
Synthetic images are enough here: the kit checks interfaces and shapes, not accuracy.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import torch
from torch import nn

from bench import measure, models, surgery
from bench.api import Context, Method
from bench.config import PruneConfig, Schedule
from bench.datasets import DatasetSplits, Split
from bench.plan import PruningPlan
from bench.pruning import default_plan
from bench.registry import get_method
from bench.training import Runtime, fit, seed_everything

TOLERANCE = 0.01  # 1 percentage point of FLOPs reduction


def synthetic_splits(
    num_classes: int = 10, size: int = 32, n_train: int = 64, n_eval: int = 32, seed: int = 0
) -> DatasetSplits:
    """Random uint8 images with random labels: enough to drive hooks and shapes."""
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> Split:
        images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
        return Split(images, torch.randint(0, num_classes, (n,), generator=g))

    return DatasetSplits(
        "synthetic",
        split(n_train),
        split(n_eval),
        split(n_eval),
        num_classes,
        tuple(str(i) for i in range(num_classes)),
        size,
        (0.5,) * 3,
        (0.25,) * 3,
        "synthetic",
    )


@dataclass(frozen=True)
class Outcome:
    """What one pipeline pass of the kit produced."""

    plan: PruningPlan
    dense_cost: measure.Cost
    pruned_cost: measure.Cost
    model: nn.Module


def check_method(method: str | type[Method], model: str = "resnet20", target: float = 0.4, seed: int = 0) -> None:
    """Run every conformance check on ``method``; raises AssertionError on the first failure."""
    cls = get_method(method) if isinstance(method, str) else method
    assert issubclass(cls, Method), f"{cls!r} is not a bench.api.Method subclass"
    check_config_roundtrip(cls)
    first = run_pipeline(cls, model, target, seed)
    check_plan(first, target)
    second = run_pipeline(cls, model, target, seed)
    assert first.plan.keep == second.plan.keep, f"{cls.name}: the same seed gave two different plans"


def check_config_roundtrip(cls: type[Method]) -> None:
    method = cls()
    assert dataclasses.is_dataclass(method.config), f"{cls.name}: Config must be a dataclass"
    params = json.loads(json.dumps(dataclasses.asdict(method.config)))
    assert cls.from_params(params).config == method.config, f"{cls.name}: config does not round-trip through JSON"
    fields = dataclasses.fields(method.config)
    if fields:
        try:
            setattr(method.config, fields[0].name, None)
        except dataclasses.FrozenInstanceError:
            pass
        else:
            raise AssertionError(f"{cls.name}: expected a frozen Config")


def run_pipeline(cls: type[Method], model_name: str, target: float, seed: int) -> Outcome:
    """setup -> (short sparsity training) -> importance -> allocation -> surgery, on CPU."""
    seed_everything(seed)
    data = synthetic_splits(seed=seed)
    model = models.create(model_name, data.num_classes, data.input_size)
    dense_cost = measure.cost(model, data.input_size)
    method = cls()
    prune = PruneConfig(target_flops_reduction=target)
    ctx = Context(
        model_name,
        surgery.prunable_units(model),
        torch.device("cpu"),
        seed,
        torch.Generator().manual_seed(seed),
        data,
        data.input_size,
        prune=prune,
    )
    method.setup(model, ctx)
    if cls.sparsity_training:
        sparsity_epoch(model, method, ctx)
    plan = prune_once(model, method, ctx)
    surgery.apply(model, plan, data.input_size)
    check_forward_backward(cls.name, model, data)
    return Outcome(plan, dense_cost, measure.cost(model, data.input_size), model)


def sparsity_epoch(model: nn.Module, method: Method, ctx: Context) -> None:
    """One short sparsity phase (batch 32, lr 0.01) on ``ctx.data``, with every training hook."""
    ctx.phase = "sparsity"
    schedule = Schedule(epochs=1, batch_size=32, lr=0.01)
    runtime = Runtime(torch.device("cpu"), progress=False, epoch_lines=False)
    fit(model, ctx.data, schedule, runtime, seed=ctx.seed, method=method, ctx=ctx)


def prune_once(model: nn.Module, method: Method, ctx: Context) -> PruningPlan:
    """Score the channels (checked), then the method's plan or the harness's rule for ``ctx.prune``."""
    ctx.phase = "prune"
    model.eval()
    scores = method.importance(model, ctx)
    check_scores(method.name, scores, ctx)
    backend = surgery.backend_of(model)
    return method.allocate(model, scores, ctx) or default_plan(
        ctx.prune, ctx.model_name, model, ctx.units, scores, backend=backend, input_size=ctx.input_size
    )


def check_scores(name: str, scores: dict[str, torch.Tensor], ctx: Context) -> None:
    expected = {u.name: u.channels for u in ctx.units}
    assert set(scores) == set(expected), (
        f"{name}: importance units {sorted(scores)} != prunable units {sorted(expected)}"
    )
    for unit, channels in expected.items():
        s = scores[unit]
        assert s.shape == (channels,), (
            f"{name}: importance of '{unit}' has shape {tuple(s.shape)}, expected ({channels},)"
        )
        assert torch.isfinite(s).all(), f"{name}: importance of '{unit}' has non-finite values"


def check_plan(outcome: Outcome, target: float) -> None:
    plan, dense, pruned = outcome.plan, outcome.dense_cost, outcome.pruned_cost
    achieved = 1 - pruned.macs / dense.macs
    assert abs(achieved - target) <= TOLERANCE or plan.meta.get("rule") != "target_flops_reduction", (
        f"FLOPs reduction {achieved:.4f} misses the target {target} by more than {TOLERANCE}"
    )
    assert all(len(k) >= 1 for k in plan.keep.values()), "a unit was left with zero channels"
    assert pruned.params < dense.params, f"params did not drop: {dense.params} -> {pruned.params}"
    assert pruned.macs < dense.macs, f"MACs did not drop: {dense.macs} -> {pruned.macs}"


def check_forward_backward(name: str, model: nn.Module, data: DatasetSplits) -> None:
    model.train()
    x = data.train.images[:4].float() / 255
    logits = model(x)
    assert logits.shape == (4, data.num_classes), f"{name}: pruned model output {tuple(logits.shape)}"
    logits.sum().backward()
