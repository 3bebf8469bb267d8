"""One trial: its RunConfig (sampled or the grid cell's), and the runner that runs it in a worker.

A trial's slot is checked first (see :mod:`bench.sweeps.slots`); a surplus trial ends at once.
Otherwise it runs the whole pipeline for one method and one seed and returns the validation
accuracy (selection never sees the test split), plus the achieved FLOPs reduction when that is an
objective. The calls into ``bench.runner`` are in the "runner seam" section at the end, and only
there.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from bench.config import MethodOverrides, PruneConfig, RunConfig
from bench.errors import EarlyStop
from bench.schema import Metric, Tag, TrialAttr
from bench.sweeps.output import WorkerLabel
from bench.sweeps.slots import CELL, RETRY_OF, SLOT, SURPLUS, is_surplus, slot_of
from bench.sweeps.spec import SweepSpec

ROW_KEYS = (  # the fields of a trial's result row kept as its user attributes (``ROW_ATTR``)
    Metric.TEST_ACC,
    Metric.BEST_VAL_ACC,
    Metric.FLOPS_REDUCTION,
    Metric.PARAMS_REDUCTION,
    "run_id",
    Metric.DENSE_TEST_ACC,
)
ROW_ATTR = "bench.{}"  # trial user attribute of a ROW_KEYS field: bench.test_acc, ...


class FixedParams:
    """An Optuna trial whose ``suggest_*`` return the user's explicit ``--set method.<m>.params``
    values instead of sampling them (nothing is recorded in the study for those names)."""

    def __init__(self, trial: optuna.Trial, fixed: Mapping[str, Any]) -> None:
        self._trial, self._fixed = trial, dict(fixed)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._trial, name)
        if not name.startswith("suggest_"):
            return attr

        def suggest(param: str, *args: Any, **kwargs: Any) -> Any:
            return self._fixed[param] if param in self._fixed else attr(param, *args, **kwargs)

        return suggest


def trial_config(spec: SweepSpec, trial: optuna.Trial) -> RunConfig:
    """The RunConfig of one trial: the base config plus the sampled (or the cell's) settings."""
    base = spec.base_config()
    if spec.kind == "grid":
        return _cell_config(base, json.loads(trial.user_attrs[CELL]))
    assert spec.method is not None
    params = _sampled_params(spec.method, base, trial)
    overrides = base.method.get(spec.method) or MethodOverrides()
    methods = {**base.method, spec.method: dataclasses.replace(overrides, params=params)}
    prune = base.prune
    if spec.multi_objective:
        target = trial.suggest_float("target_flops_reduction", *spec.target_range)
        prune = _with_target(base.prune, target)
    return dataclasses.replace(base, methods=(spec.method,), seeds=base.seeds[:1], method=methods, prune=prune)


def _cell_config(base: RunConfig, cell: dict[str, Any]) -> RunConfig:
    """A grid cell's RunConfig: its model, dataset, method, FLOPs target and seed."""
    data = dataclasses.replace(base.data, name=cell["dataset"])
    prune = _with_target(base.prune, float(cell["target"]))
    return dataclasses.replace(
        base, model=cell["model"], data=data, methods=(cell["method"],), seeds=(int(cell["seed"]),), prune=prune
    )


def _sampled_params(method: str, base: RunConfig, trial: optuna.Trial) -> dict[str, Any]:
    """The method's search space sampled, with the user's fixed params kept as given."""
    from bench import registry

    cls = registry.get_method(method)
    fixed = base.method_params(method)
    params = {**cls().search_space(FixedParams(trial, fixed)), **fixed}
    cls.from_params(params)  # a bad sampled combination fails the trial with a clear reason
    return params


def _with_target(prune: PruneConfig, target: float) -> PruneConfig:
    """The run's pruning settings with the FLOPs-target rule at ``target`` (other rules cleared)."""
    return dataclasses.replace(prune, target_flops_reduction=target, channel_fraction=None, layer_ratio=None, plan=None)


def params_text(trial: optuna.Trial | FrozenTrial) -> str:
    """A trial's sampled params, or its grid cell, as ``k=v, ...``."""
    shown = json.loads(trial.user_attrs[CELL]) if CELL in trial.user_attrs else trial.params
    return ", ".join(f"{k}={_short(v)}" for k, v in shown.items())


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


class SurplusTrial(Exception):
    """A trial whose slot is already filled (see :mod:`bench.sweeps.slots`); it ends at once."""


class Pruned(optuna.TrialPruned, EarlyStop):
    """A trial the pruner stopped; also a runner EarlyStop so its MLflow run ends KILLED, not FAILED."""


class TrialRunner:
    """Runs trials in one worker process: one tracker, the decoded datasets kept between trials."""

    def __init__(self, spec: SweepSpec, say: Callable[[str], None], label: WorkerLabel | None = None) -> None:
        self.spec, self.say, self.label = spec, say, label
        self.tracker = spec.tracker()
        self._data: dict[Any, Any] = {}

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        """One trial; while it runs, the worker's lines say its number (``[w1 t7] ``)."""
        if self.label is not None:
            self.label.trial = trial.number
        try:
            return self._trial(trial)
        finally:
            if self.label is not None:
                self.label.trial = None

    def _trial(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        trials = trial.study.get_trials(deepcopy=False)
        frozen = next(t for t in trials if t.number == trial.number)
        slot = slot_of(frozen, trials)
        trial.set_user_attr(SLOT, slot)
        trial.set_user_attr(TrialAttr.WORKER, f"{os.uname().nodename}:{os.getpid()}")
        if is_surplus(frozen, slot, trial.study.get_trials(deepcopy=False), self.spec):
            trial.set_user_attr(SURPLUS, True)
            raise SurplusTrial(f"slot {slot} is already filled")
        # a retry continues its original's MLflow run and, on the same machine, its checkpoints
        original = frozen.system_attrs.get(RETRY_OF, frozen.number)
        try:
            return self._run(trial, f"trial-{original}")
        except optuna.TrialPruned:
            raise
        except BaseException as exc:
            trial.set_user_attr(TrialAttr.ERROR, repr(exc)[:1000])
            raise

    def _run(self, trial: optuna.Trial, label: str) -> float | tuple[float, ...]:
        cfg = trial_config(self.spec, trial)
        method, seed = cfg.methods[0], cfg.seeds[0]
        trial.set_user_attr(TrialAttr.CONFIG, cfg.to_dict())
        self.say(f"trial {trial.number}: {method} on {cfg.model}/{cfg.data.name} seed {seed} {params_text(trial)}")
        tags = {Tag.STUDY: self.spec.study, Tag.TRIAL: str(trial.number), Tag.SWEEP: self.spec.kind}
        row = self._pipeline(cfg, trial, label, tags)
        for key in ROW_KEYS:
            if key in row:
                trial.set_user_attr(ROW_ATTR.format(key), row[key])
        values = {"acc": float(row[Metric.BEST_VAL_ACC]), "flops": float(row[Metric.FLOPS_REDUCTION])}
        result = tuple(values[o] for o in self.spec.objectives)
        return result if self.spec.multi_objective else result[0]

    def _reporter(self, trial: optuna.Trial) -> Callable[[str, int, dict[str, float]], None]:
        """Intermediate values for the pruner: validation accuracy after each fine-tuning epoch."""
        steps = itertools.count()

        def on_epoch(phase: str, epoch: int, stats: dict[str, float]) -> None:
            if phase != "finetune" or self.spec.multi_objective:
                return
            step = next(steps)
            trial.report(stats["val_acc"], step)
            if trial.should_prune():
                raise Pruned(f"pruned after fine-tune epoch {step + 1}: val acc {stats['val_acc']:.2%}")

        return on_epoch

    # --- the runner seam: the only calls into bench.runner -----------------------------------------

    def _pipeline(self, cfg: RunConfig, trial: optuna.Trial, label: str, tags: dict[str, str]) -> dict[str, Any]:
        """The trial's one method and seed through ``runner.run_trial``, against the cached dense
        baseline (never logged as a run of its own); returns the result row."""
        from bench import runner

        request = runner.TrialRequest(self.spec.parent_run_id, label, tags, self._reporter(trial), self.say)
        return runner.run_trial(cfg, self._workspace(cfg), request).to_row()

    def _workspace(self, cfg: RunConfig):
        """The runner's workspace (paths, data, runtime, tracker) for ``cfg``; one per dataset config."""
        from bench import runner

        if cfg.data not in self._data:
            self._data[cfg.data] = runner.prepare(cfg, progress=False, tracker=self.tracker)
        return self._data[cfg.data]


def warm_baseline(cfg: RunConfig, parent_run_id: str, say: Callable[[str], None]) -> None:
    """Train (or find cached) the dense baseline of ``cfg``'s model, data and first seed."""
    from bench import runner

    runner.warm_baseline(cfg, parent_run_id, say)


def check_config(cfg: RunConfig) -> None:
    """What ``bench run`` checks before its first MLflow run (model, method hyperparameters, named
    plan, matched budget), for a sweep's base config before its study and parent run exist."""
    from bench import runner

    runner.check_budgets(cfg, runner.checked_methods(cfg))
