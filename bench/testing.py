"""Conformance kit for method plugins: ``check_method("mymethod")`` runs every check on small CPU
models, prints one line per check and a summary, and raises ``AssertionError`` naming the first
check that failed. Use it in your plugin's tests::

    from bench.testing import check_method
    def test_my_method_conforms():
        check_method("mymethod")            # registered name, or the Method subclass itself

Checks: the name's ``bench.methods`` entry point loads a Method subclass with a name and a
description; the Config is a frozen dataclass that round-trips through JSON; then on resnet20 (the
direct surgery path, chain units) and on timm:resnet18 (DepGraph, coupled groups of several convs
and BNs): the hooks run through a real (short) sparsity phase when the method trains one;
importance gives one finite score per channel of every unit (shapes per unit); the plan meets the
FLOPs target within 1 percentage point and never empties a unit; surgery makes the model physically
smaller (params and MACs drop) and it still runs forward and backward; the same seed gives the same
plan. Synthetic images are enough here: the kit checks interfaces and shapes, not accuracy.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TypeVar

import torch
from torch import nn

from bench import measure, models, surgery
from bench.allocation import as_scores
from bench.api import Context, Method
from bench.config import PruneConfig, Schedule
from bench.datasets import DatasetSplits, Split
from bench.plan import PruningPlan
from bench.pruning import default_plan
from bench.registry import GROUP, get_method
from bench.training import Runtime, fit, seed_everything

TOLERANCE = 0.01  # 1 percentage point of FLOPs reduction
MODELS = ("resnet20", "timm:resnet18")  # the direct surgery path and the DepGraph one
HOOKS = (  # Method's optional hooks, in call order
    "setup", "no_weight_decay", "ema_decay", "feature_modules", "regularization", "after_backward", "after_step",
    "on_epoch_end", "allocate", "rounds", "search_space", "state_dict", "load_state_dict",
)  # fmt: skip
T = TypeVar("T")


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
    scores: dict[str, tuple[int, ...]]  # unit -> shape of its scores, as the method returned them


class Checks:
    """Runs named checks in order: one printed line each ("ok" and what was seen), and on the first
    failure a "FAIL" line and an AssertionError that names the check and says why."""

    def __init__(self, subject: str, say: Callable[[str], None]) -> None:
        self.subject, self.say, self.passed = subject, say, 0

    def run(self, check: str, body: Callable[[], tuple[T, str]]) -> T:
        """``body`` returns (its value, what it saw); any exception fails the check."""
        try:
            value, seen = body()
        except Exception as exc:  # a plugin can fail in any way: each is reported as this check's failure
            reason = str(exc).strip() or type(exc).__name__
            self.say(f"  FAIL  {check}: {reason}")
            raise AssertionError(f"{self.subject}: check '{check}' failed: {reason}") from exc
        self.passed += 1
        self.say(f"  ok    {check}: {seen}")
        return value


def check_method(
    method: str | type[Method],
    model: str | Sequence[str] = MODELS,
    target: float = 0.4,
    seed: int = 0,
    say: Callable[[str], None] = print,
) -> int:
    """Run every conformance check on ``method`` (on each of ``model``), printing one line per check
    and a summary through ``say``; raises AssertionError naming the first check that failed.
    Returns the number of checks passed."""
    label = method if isinstance(method, str) else getattr(method, "__name__", repr(method))
    checks = Checks(f"check_method({label!r})", say)
    say(f"check_method({label!r}):")
    cls = checks.run("registry entry", lambda: registry_entry(method))
    checks.run("config", lambda: check_config_roundtrip(cls))
    checks.run("hooks", lambda: (None, overridden_hooks(cls)))
    for name in [model] if isinstance(model, str) else list(model):
        check_on_model(checks, cls, name, target, seed)
    say(f"check_method({label!r}): all {checks.passed} checks passed")
    return checks.passed


def registry_entry(method: str | type[Method]) -> tuple[type[Method], str]:
    """The class behind ``method`` and how it was found (its entry point, or given as a class)."""
    if isinstance(method, str):
        cls = get_method(method)
        target = next((ep.value for ep in entry_points(group=GROUP) if ep.name == method), "?")
        found = f"'{method}' -> {target} (entry-point group '{GROUP}')"
    else:
        cls, found = method, f"{method!r} given as a class (not looked up in '{GROUP}')"
    assert isinstance(cls, type) and issubclass(cls, Method), f"{cls!r} is not a bench.api.Method subclass"
    assert cls.name, f"{cls.__name__}.name is empty: set the name it is registered under"
    assert cls.description, f"{cls.__name__}.description is empty: `bench list methods` shows it"
    return cls, found


def check_config_roundtrip(cls: type[Method]) -> tuple[None, str]:
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
    names = ", ".join(f.name for f in fields) or "no fields"
    return None, f"{cls.Config.__name__} is a frozen dataclass ({names}) that round-trips through JSON"


def overridden_hooks(cls: type[Method]) -> str:
    """Which optional hooks the method overrides, and whether the kit runs a sparsity phase."""
    own = [h for h in HOOKS if getattr(cls, h) is not getattr(Method, h)]
    phase = "one short sparsity epoch per model" if cls.sparsity_training else "no sparsity phase"
    return f"importance, {', '.join(own) or 'no optional hook'}; start={cls.start}, {phase}"


def check_on_model(checks: Checks, cls: type[Method], model_name: str, target: float, seed: int) -> None:
    """The pipeline checks on one model, each named: hooks, importance, plan, surgery, determinism."""
    run = checks.run(f"{model_name} hooks", lambda: _started(cls, model_name, target, seed))
    raw = checks.run(f"{model_name} importance", lambda: _scored(run))
    plan = checks.run(f"{model_name} plan", lambda: _planned(run, raw))
    outcome = checks.run(f"{model_name} surgery", lambda: _operated(run, plan, raw, target))
    checks.run(f"{model_name} determinism", lambda: (None, _same_plan(cls, outcome, model_name, target, seed)))


@dataclass(frozen=True)
class Pass:
    """One pipeline pass of the kit in progress: the method, its model and context, the data."""

    method: Method
    model: nn.Module
    ctx: Context
    data: DatasetSplits
    dense_cost: measure.Cost


def run_pipeline(cls: type[Method], model_name: str, target: float, seed: int) -> Outcome:
    """setup -> (short sparsity training) -> importance -> allocation -> surgery, on CPU."""
    run = start_pass(cls, model_name, target, seed)
    raw = score(run)
    return operate(run, allocate(run, raw)[0], raw)


def start_pass(cls: type[Method], model_name: str, target: float, seed: int) -> Pass:
    """A fresh ``model_name`` (synthetic data, CPU) after ``setup`` and, if the method trains one,
    a short sparsity phase with every training hook."""
    seed_everything(seed)
    data = synthetic_splits(seed=seed)
    model = models.create(model_name, data.num_classes, data.input_size)
    dense_cost = measure.cost(model, data.input_size)
    units = surgery.prunable_units(model)
    generator = torch.Generator().manual_seed(seed)
    prune = PruneConfig(target_flops_reduction=target)
    ctx = Context(model_name, units, torch.device("cpu"), seed, generator, data, data.input_size, prune=prune)
    method = cls()
    method.setup(model, ctx)
    if cls.sparsity_training:
        sparsity_epoch(model, method, ctx)
    return Pass(method, model, ctx, data, dense_cost)


def sparsity_epoch(model: nn.Module, method: Method, ctx: Context) -> None:
    """One short sparsity phase (batch 32, lr 0.01) on ``ctx.data``, with every training hook."""
    ctx.phase = "sparsity"
    schedule = Schedule(epochs=1, batch_size=32, lr=0.01)
    runtime = Runtime(torch.device("cpu"), progress=False, epoch_lines=False)
    fit(model, ctx.data, schedule, runtime, seed=ctx.seed, method=method, ctx=ctx)


def score(run: Pass) -> dict[str, torch.Tensor]:
    """The method's importance, as it returned it (checked: one finite score per channel of every unit)."""
    run.ctx.phase = "prune"
    run.model.eval()
    raw = run.method.importance(run.model, run.ctx)
    check_scores(run.method.name, raw, run.ctx)
    return raw


def allocate(run: Pass, raw: dict[str, torch.Tensor]) -> tuple[PruningPlan, str]:
    """The method's plan, else the harness's rule for ``ctx.prune`` (and which one made it); the scores
    reach allocation as the harness hands them on (:func:`bench.allocation.as_scores`)."""
    model, ctx = run.model, run.ctx
    scores = as_scores(ctx.units, raw)
    plan = run.method.allocate(model, scores, ctx)
    if plan is not None:
        return plan, "the method's allocate"
    backend = surgery.backend_of(model)
    plan = default_plan(ctx.prune, ctx.model_name, model, ctx.units, scores, backend=backend, input_size=ctx.input_size)
    return plan, f"the harness's rule ({ctx.prune.rule})"


def operate(run: Pass, plan: PruningPlan, raw: dict[str, torch.Tensor]) -> Outcome:
    """Surgery by ``plan``, then one forward and backward pass of the pruned model."""
    surgery.apply(run.model, plan, run.data.input_size)
    check_forward_backward(run.method.name, run.model, run.data)
    shapes = {unit: tuple(s.shape) for unit, s in raw.items()}
    return Outcome(plan, run.dense_cost, measure.cost(run.model, run.data.input_size), run.model, shapes)


def _started(cls: type[Method], model_name: str, target: float, seed: int) -> tuple[Pass, str]:
    run = start_pass(cls, model_name, target, seed)
    trained = "setup and one sparsity epoch with the training hooks" if cls.sparsity_training else "setup"
    return run, f"{trained} ran ({surgery.backend_of(run.model)} surgery path, {len(run.ctx.units)} units)"


def _scored(run: Pass) -> tuple[dict[str, torch.Tensor], str]:
    raw = score(run)
    widths = sorted({s.shape[0] for s in raw.values()})
    grad = sum(s.requires_grad for s in raw.values())
    note = f"; {grad} still attached to autograd (the harness detaches them)" if grad else ""
    return raw, f"one finite score per channel for each of {len(raw)} units (widths {widths}){note}"


def _planned(run: Pass, raw: dict[str, torch.Tensor]) -> tuple[PruningPlan, str]:
    plan, source = allocate(run, raw)
    assert all(len(k) >= 1 for k in plan.keep.values()), "a unit was left with zero channels"
    return plan, f"{len(plan.keep)} of {len(run.ctx.units)} units pruned by {source}, none emptied"


def _operated(run: Pass, plan: PruningPlan, raw: dict[str, torch.Tensor], target: float) -> tuple[Outcome, str]:
    outcome = operate(run, plan, raw)
    seen = check_plan(outcome, target)
    dense, pruned = outcome.dense_cost, outcome.pruned_cost
    return outcome, (
        f"{seen}; params {dense.params:,} -> {pruned.params:,}, MACs {dense.macs:,} -> {pruned.macs:,}; "
        "the pruned model runs forward and backward"
    )


def _same_plan(cls: type[Method], first: Outcome, model_name: str, target: float, seed: int) -> str:
    second = run_pipeline(cls, model_name, target, seed)
    assert first.plan.keep == second.plan.keep, f"{cls.name}: the same seed gave two different plans"
    return "the same seed gave the same plan"


def check_scores(name: str, scores: dict[str, torch.Tensor], ctx: Context) -> None:
    expected = {u.name: u.channels for u in ctx.units}
    assert isinstance(scores, dict), f"{name}: importance returned a {type(scores).__name__}, not a dict"
    assert set(scores) == set(expected), (
        f"{name}: importance units {sorted(scores)} != prunable units {sorted(expected)}"
    )
    for unit, channels in expected.items():
        s = scores[unit]
        assert isinstance(s, torch.Tensor), f"{name}: importance of '{unit}' is a {type(s).__name__}, not a tensor"
        assert s.shape == (channels,), (
            f"{name}: importance of '{unit}' has shape {tuple(s.shape)}, expected ({channels},)"
        )
        assert torch.isfinite(s).all(), f"{name}: importance of '{unit}' has non-finite values"


def check_plan(outcome: Outcome, target: float) -> str:
    """The FLOPs target is met within TOLERANCE (under the harness's rule) and the model shrank."""
    plan, dense, pruned = outcome.plan, outcome.dense_cost, outcome.pruned_cost
    achieved = 1 - pruned.macs / dense.macs
    by_rule = plan.meta.get("rule") == "target_flops_reduction"
    assert abs(achieved - target) <= TOLERANCE or not by_rule, (
        f"FLOPs reduction {achieved:.4f} misses the target {target} by more than {TOLERANCE}"
    )
    assert all(len(k) >= 1 for k in plan.keep.values()), "a unit was left with zero channels"
    assert pruned.params < dense.params, f"params did not drop: {dense.params} -> {pruned.params}"
    assert pruned.macs < dense.macs, f"MACs did not drop: {dense.macs} -> {pruned.macs}"
    goal = f"the {target:.0%} FLOPs target met" if by_rule else "the method's own plan"
    return f"{goal} (MACs -{achieved:.1%})"


def check_forward_backward(name: str, model: nn.Module, data: DatasetSplits) -> None:
    model.train()
    x = data.train.images[:4].float() / 255
    logits = model(x)
    assert logits.shape == (4, data.num_classes), f"{name}: pruned model output {tuple(logits.shape)}"
    logits.sum().backward()
