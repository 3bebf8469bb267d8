"""``bench sweep``: hyperparameter search and grids on Optuna, one full pipeline run per trial.

A sweep is an Optuna study in a storage (sqlite under ``results/`` by default, PostgreSQL to scale
across machines) plus an MLflow parent run whose children are the trials. The invoking command
creates both once, then starts ``--workers`` local worker processes; the same command started on
another machine against the same storage joins the same study.

Trials and slots. Every trial fills a *slot*: search trials take slots 0..N-1 in creation order,
grid trials take their cell. A slot counts once: a trial whose slot a lower-numbered live trial
(waiting, running, complete or pruned) already holds, or a search trial past slot N-1, is
*surplus*. It ends at once as FAIL with ``bench.surplus`` and counts nowhere. Two workers that
race for the last slot therefore never both run it. A killed worker stops sending heartbeats, its
trial is failed by the next worker that looks, and Optuna's retry callback enqueues a copy that
inherits the slot, so nothing is lost and nothing is run twice.

Selection uses the validation split (``best_val_acc``); the test accuracy is stored as a user
attribute and only reported. ``--best K --seeds ...`` re-runs the best configurations over seeds
on the test protocol of ``bench run``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from bench import config as configmod
from bench.config import MethodOverrides, PruneConfig, RunConfig
from bench.errors import BenchError
from bench.paths import exclusive_lock

STORAGE_FILE = "optuna.db"
OBJECTIVES = {"acc": "maximize", "flops": "maximize"}  # val accuracy; achieved FLOPs reduction
PRUNERS = ("median", "hyperband", "none")
LIVE = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
SURPLUS = "bench.surplus"
SLOT = "bench.slot"
CELL = "bench.cell"
GRID_AXES = ("models", "datasets", "methods", "targets", "seeds")


@dataclass(frozen=True)
class SweepSpec:
    """Everything a worker needs, JSON-serialisable so worker processes (and machines) share it.

    ``trials``: slots to fill (search) or the grid's cell count. ``target_range``: the FLOPs
    reduction searched when FLOPs is an objective (fraction of MACs). ``heartbeat_s``: how often a
    running trial proves its worker alive; after ``grace_s`` without one it is failed and retried
    (at most ``max_retry`` times). ``threads``: torch CPU threads per worker.
    """

    study: str
    storage: str
    kind: str  # "search" or "grid"
    base: dict[str, Any]  # the resolved RunConfig every trial starts from (RunConfig.to_dict())
    method: str | None = None  # search: the method whose search space is sampled
    trials: int = 0
    objectives: tuple[str, ...] = ("acc",)
    pruner: str = "median"
    target_range: tuple[float, float] = (0.2, 0.8)
    sampler_seed: int = 0
    heartbeat_s: int = 10
    grace_s: int = 30
    max_retry: int = 2
    threads: int = 0  # 0: torch's default
    parent_run_id: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("search", "grid"):
            raise BenchError(f"sweep kind must be search or grid, got {self.kind!r}")
        for name in self.objectives:
            if name not in OBJECTIVES:
                raise BenchError(f"unknown objective '{name}'; valid: {', '.join(OBJECTIVES)}")
        if len(set(self.objectives)) != len(self.objectives) or not self.objectives:
            raise BenchError(f"--objectives must name distinct objectives, got {','.join(self.objectives)}")
        if self.objectives[0] != "acc":
            raise BenchError("the first objective must be acc (validation accuracy); e.g. --objectives acc,flops")
        if self.pruner not in PRUNERS:
            raise BenchError(f"unknown pruner '{self.pruner}'; valid: {', '.join(PRUNERS)}")
        if self.kind == "search" and self.trials < 1:
            raise BenchError(f"--trials must be >= 1, got {self.trials}")
        lo, hi = self.target_range
        if not 0 <= lo < hi < 1:
            raise BenchError(f"the searched FLOPs reduction range must satisfy 0 <= lo < hi < 1, got {lo}, {hi}")
        if self.heartbeat_s < 1 or self.grace_s <= self.heartbeat_s:
            raise BenchError(f"need heartbeat >= 1 s and grace > heartbeat, got {self.heartbeat_s}, {self.grace_s}")

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def base_config(self) -> RunConfig:
        """The RunConfig every trial starts from (``base`` is its JSON form)."""
        return configmod.from_dict(json.loads(json.dumps(self.base)))

    def tracker(self):
        """The MLflow store and experiment of the sweep's runs."""
        from bench.tracking import Tracker, resolve_tracking_uri

        base = self.base_config()
        return Tracker(resolve_tracking_uri(base.tracking_uri, Path(base.results_dir).resolve()), base.experiment)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @staticmethod
    def from_json(text: str) -> SweepSpec:
        data = json.loads(text)
        data["objectives"] = tuple(data["objectives"])
        data["target_range"] = tuple(data["target_range"])
        return SweepSpec(**data)


# --- storage and study ---------------------------------------------------------------------------


def default_storage(results_dir: Path) -> str:
    return f"sqlite:///{results_dir / STORAGE_FILE}"


def normalize_storage_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 (a dependency); SQLAlchemy alone would look for psycopg2."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if not url.startswith(("sqlite:///", "postgresql+", "mysql")):
        raise BenchError(f"unsupported --storage '{url}'; use sqlite:///<file>.db or postgresql://user@host:port/db")
    return url


def open_storage(spec: SweepSpec) -> optuna.storages.RDBStorage:
    """The RDB storage with heartbeats and retries. sqlite waits up to 5 min for a lock instead of
    failing with "database is locked" when workers write at once."""
    url = normalize_storage_url(spec.storage)
    db_file = Path(url[len("sqlite:///") :]) if url.startswith("sqlite:///") else None
    if db_file is not None:
        db_file.parent.mkdir(parents=True, exist_ok=True)
    engine: dict[str, Any] = {"connect_args": {"timeout": 300}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        options = {
            "engine_kwargs": engine,
            "heartbeat_interval": spec.heartbeat_s,
            "grace_period": spec.grace_s,
            "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(spec.max_retry),
        }
        try:
            if db_file is not None:
                return SqliteStorage(url, db_file.with_name(db_file.name + ".lock"), **options)
            return optuna.storages.RDBStorage(url, **options)
        except Exception as exc:  # SQLAlchemy / driver errors: a bad URL, server down, no access
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BenchError(f"cannot open the Optuna storage {spec.storage!r}: {first}") from exc


class SqliteStorage(optuna.storages.RDBStorage):
    """An sqlite RDBStorage whose trial state changes are atomic across this machine's processes.

    Optuna claims a WAITING trial (an enqueued grid cell, a heartbeat retry) by reading its state
    and writing RUNNING under ``SELECT ... FOR UPDATE``, which sqlite ignores: two workers can both
    read WAITING and both run the trial, and the later one then dies on "Cannot tell a COMPLETE
    trial" (optuna/optuna#4621; we lost a worker this way in 1 of 3 sweep-bench runs). Here every
    state change holds an exclusive lock on a file beside the database, so the read-check-write is
    one step. sqlite is local-only, so a machine-wide lock covers every worker. PostgreSQL and MySQL
    lock the row themselves and use the plain RDBStorage."""

    def __init__(self, url: str, lock_file: Path, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.lock_file = lock_file

    def set_trial_state_values(self, trial_id: int, state: TrialState, values=None) -> bool:
        with exclusive_lock(self.lock_file):
            return super().set_trial_state_values(trial_id, state, values)


def sampler_for(spec: SweepSpec, worker: int) -> optuna.samplers.BaseSampler:
    """TPE with the constant liar, so parallel workers do not sample the same point; seeded per worker."""
    if spec.kind == "grid":
        return optuna.samplers.RandomSampler(seed=spec.sampler_seed + worker)  # every param is fixed per cell
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=spec.sampler_seed + worker, constant_liar=True, n_startup_trials=5)


def pruner_for(spec: SweepSpec) -> optuna.pruners.BasePruner:
    """Pruning needs one objective (Optuna cannot prune multi-objective trials)."""
    if spec.pruner == "none" or spec.multi_objective or spec.kind == "grid":
        return optuna.pruners.NopPruner()
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)


def open_study(spec: SweepSpec, worker: int = 0, storage: optuna.storages.RDBStorage | None = None) -> optuna.Study:
    """Create the study or load it; a study with other objectives is refused."""
    storage = storage or open_storage(spec)
    directions = [OBJECTIVES[o] for o in spec.objectives]
    study = optuna.create_study(
        study_name=spec.study,
        storage=storage,
        directions=directions,
        sampler=sampler_for(spec, worker),
        pruner=pruner_for(spec),
        load_if_exists=True,
    )
    stored = [d.name.lower() for d in study.directions]
    if stored != directions:
        raise BenchError(
            f"study '{spec.study}' in {spec.storage} optimises {len(stored)} objective(s) ({', '.join(stored)}), "
            f"not {', '.join(spec.objectives)}; use another --study name"
        )
    kind = study.user_attrs.get("bench.kind")
    if kind is not None and kind != spec.kind:
        raise BenchError(f"study '{spec.study}' is a {kind} sweep, not a {spec.kind}; use another --study name")
    if kind is None:
        study.set_user_attr("bench.kind", spec.kind)
    return study


# --- slots ---------------------------------------------------------------------------------------


def slot_of(trial: FrozenTrial, trials: list[FrozenTrial]) -> str:
    """The slot a trial fills: its grid cell, the slot its failed original filled (a retry), or for a
    fresh search trial ``n<k>`` with k = the fresh, non-surplus trials numbered below it."""
    if CELL in trial.user_attrs:
        return "cell:" + trial.user_attrs[CELL]
    if SLOT in trial.user_attrs:  # a retry inherits its original's user attributes
        return trial.user_attrs[SLOT]
    fresh = [
        t
        for t in trials
        if t.number < trial.number and CELL not in t.user_attrs and "failed_trial" not in t.system_attrs
    ]
    return f"n{sum(not t.user_attrs.get(SURPLUS) for t in fresh)}"


def is_surplus(trial: FrozenTrial, slot: str, trials: list[FrozenTrial], spec: SweepSpec) -> bool:
    if spec.kind == "grid" and not slot.startswith("cell:"):
        return True  # a grid has nothing to sample: only enqueued cells run
    if spec.kind == "search" and slot.startswith("n") and int(slot[1:]) >= spec.trials:
        return True
    return any(
        t.number < trial.number and t.state in LIVE and not t.user_attrs.get(SURPLUS) and _stored_slot(t) == slot
        for t in trials
    )


def _stored_slot(trial: FrozenTrial) -> str | None:
    if CELL in trial.user_attrs:
        return "cell:" + trial.user_attrs[CELL]
    return trial.user_attrs.get(SLOT)


def work_left(study: optuna.Study, spec: SweepSpec) -> str:
    """``"run"`` when a trial can start, ``"wait"`` while only others' running trials remain (one may
    fail and come back as a retry), ``"done"`` otherwise."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return "run"
    if spec.kind == "search":  # a failed trial keeps its slot: it counts as a trial, and is not re-run
        filled = {_stored_slot(t) for t in trials if not t.user_attrs.get(SURPLUS)}
        if sum(s is not None and s.startswith("n") for s in filled) < spec.trials:
            return "run"
    if any(t.state == TrialState.RUNNING for t in trials):
        return "wait"
    return "done"


# --- grids ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grid:
    """A cartesian product of models x datasets x methods x targets x seeds, from TOML.

    Top-level keys: the five axes (lists), optional ``study``, ``preset``, ``objectives`` is not
    allowed (a grid maximises validation accuracy), and ``[set]``, a table of ``key = value``
    settings applied to every cell as ``--set`` would (e.g. ``"data.train_limit" = 2000``).
    """

    models: tuple[str, ...]
    datasets: tuple[str, ...]
    methods: tuple[str, ...]
    targets: tuple[float, ...]
    seeds: tuple[int, ...]
    study: str | None = None
    preset: str | None = None
    sets: tuple[str, ...] = ()

    def cells(self) -> list[dict[str, Any]]:
        product = itertools.product(self.models, self.datasets, self.methods, self.targets, self.seeds)
        return [dict(zip(("model", "dataset", "method", "target", "seed"), c, strict=True)) for c in product]


def load_grid(path: str | Path) -> Grid:
    data = configmod.load_toml(path)
    unknown = set(data) - {*GRID_AXES, "study", "preset", "set"}
    if unknown:
        raise BenchError(
            f"grid {path}: unknown keys {', '.join(sorted(unknown))}; valid: {', '.join(GRID_AXES)}, study, preset, set"
        )
    axes = {}
    for axis in GRID_AXES:
        values = data.get(axis, [0] if axis == "seeds" else ["cifar10"] if axis == "datasets" else None)
        if not isinstance(values, list) or not values:
            raise BenchError(f"grid {path}: '{axis}' must be a non-empty list")
        axes[axis] = tuple(values)
    _check_grid_values(path, axes)
    sets = tuple(f"{key}={_toml_literal(value)}" for key, value in dict(data.get("set", {})).items())
    return Grid(**axes, study=data.get("study"), preset=data.get("preset"), sets=sets)


def _check_grid_values(path: str | Path, axes: dict[str, tuple]) -> None:
    from bench import models, registry

    for name in axes["models"]:
        models.validate_name(name)
    for name in axes["methods"]:
        registry.get_method(name)
    for target in axes["targets"]:
        if not isinstance(target, int | float) or not 0 <= target < 1:
            raise BenchError(f"grid {path}: targets are FLOPs reductions in [0, 1), got {target!r}")
    for seed in axes["seeds"]:
        if not isinstance(seed, int):
            raise BenchError(f"grid {path}: seeds are integers, got {seed!r}")


def _toml_literal(value: Any) -> str:
    """A value as ``--set`` parses it (TOML literal syntax)."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if not isinstance(value, list) else "[" + ", ".join(_toml_literal(v) for v in value) + "]"


def cell_key(cell: Mapping[str, Any]) -> str:
    return json.dumps(dict(cell), sort_keys=True)


def enqueue_missing_cells(study: optuna.Study, cells: list[dict[str, Any]]) -> tuple[int, int]:
    """Enqueue the cells no live trial covers; returns (cells already covered, cells enqueued)."""
    trials = study.get_trials(deepcopy=False)
    covered = {t.user_attrs.get(CELL) for t in trials if t.state in LIVE and not t.user_attrs.get(SURPLUS)}
    missing = [c for c in cells if cell_key(c) not in covered]
    for cell in missing:
        study.enqueue_trial({}, user_attrs={CELL: cell_key(cell)})
    return len(cells) - len(missing), len(missing)


# --- one trial -----------------------------------------------------------------------------------


class Pruned(optuna.TrialPruned):
    """A trial the pruner stopped; also a runner EarlyStop so its MLflow run ends KILLED, not FAILED."""


def _pruned_type() -> type[Exception]:
    from bench.runner import EarlyStop

    class PrunedTrial(Pruned, EarlyStop):
        pass

    return PrunedTrial


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
    from bench import registry

    base = spec.base_config()
    if spec.kind == "grid":
        # the cell lives in a user attribute, not in params: a grid extended later (another target)
        # would change a categorical's choices, which Optuna refuses within one study
        cell = json.loads(trial.user_attrs[CELL])
        data = dataclasses.replace(base.data, name=cell["dataset"])
        prune = _with_target(base.prune, float(cell["target"]))
        return dataclasses.replace(
            base, model=cell["model"], data=data, methods=(cell["method"],), seeds=(int(cell["seed"]),), prune=prune
        )
    assert spec.method is not None
    cls = registry.get_method(spec.method)
    fixed = base.method_params(spec.method)
    params = {**cls().search_space(FixedParams(trial, fixed)), **fixed}
    cls.from_params(params)  # a bad sampled combination fails the trial with a clear reason
    overrides = base.method.get(spec.method) or MethodOverrides()
    methods = {**base.method, spec.method: dataclasses.replace(overrides, params=params)}
    prune = base.prune
    if spec.multi_objective:
        target = trial.suggest_float("target_flops_reduction", *spec.target_range)
        prune = _with_target(base.prune, target)
    return dataclasses.replace(base, methods=(spec.method,), seeds=base.seeds[:1], method=methods, prune=prune)


def _with_target(prune: PruneConfig, target: float) -> PruneConfig:
    """The run's pruning settings with the FLOPs-target rule at ``target`` (other rules cleared)."""
    return dataclasses.replace(prune, target_flops_reduction=target, channel_fraction=None, layer_ratio=None, plan=None)


class TrialRunner:
    """Runs trials in one worker process: one tracker, the decoded datasets kept between trials."""

    def __init__(self, spec: SweepSpec, say: Callable[[str], None]) -> None:
        self.spec, self.say = spec, say
        self.tracker = spec.tracker()
        self._data: dict[Any, Any] = {}
        self._pruned = _pruned_type()

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        trials = trial.study.get_trials(deepcopy=False)
        frozen = next(t for t in trials if t.number == trial.number)
        slot = slot_of(frozen, trials)
        trial.set_user_attr(SLOT, slot)
        trial.set_user_attr("bench.worker", f"{os.uname().nodename}:{os.getpid()}")
        if is_surplus(frozen, slot, trial.study.get_trials(deepcopy=False), self.spec):
            trial.set_user_attr(SURPLUS, True)
            raise SurplusTrial(f"slot {slot} is already filled")
        # a retry continues its original's MLflow run and, on the same machine, its checkpoints
        original = frozen.system_attrs.get("failed_trial", frozen.number)
        try:
            return self._run(trial, f"trial-{original}")
        except optuna.TrialPruned:
            raise
        except BaseException as exc:
            trial.set_user_attr("bench.error", repr(exc)[:1000])
            raise

    def _run(self, trial: optuna.Trial, label: str) -> float | tuple[float, ...]:
        from bench import registry, runner

        cfg = trial_config(self.spec, trial)
        method, seed = cfg.methods[0], cfg.seeds[0]
        trial.set_user_attr("bench.config", cfg.to_dict())
        self.say(f"trial {trial.number}: {method} on {cfg.model}/{cfg.data.name} seed {seed} {_params_text(trial)}")
        paths, data, runtime, tracker = self._prepare(cfg)
        session = runner.Session(
            cfg, paths, data, runtime, tracker, self.spec.parent_run_id, self.say, on_epoch=self._reporter(trial)
        )
        dense_state, dense_row = runner.dense_baseline(session, seed, log_run=False)
        tags = {"optuna.study": self.spec.study, "optuna.trial": str(trial.number), "bench.sweep": self.spec.kind}
        row = runner.run_method(
            session,
            method,
            registry.get_method(method),
            seed,
            dense_state,
            dense_row,
            label=label,
            tags=tags,
        )
        for key in ("test_acc", "best_val_acc", "flops_reduction", "params_reduction", "run_id", "dense_test_acc"):
            if key in row:
                trial.set_user_attr(f"bench.{key}", row[key])
        values = {"acc": float(row["best_val_acc"]), "flops": float(row["flops_reduction"])}
        result = tuple(values[o] for o in self.spec.objectives)
        return result if self.spec.multi_objective else result[0]

    def _prepare(self, cfg: RunConfig):
        from bench import runner

        if cfg.data not in self._data:
            self._data[cfg.data] = runner.prepare(cfg, progress=False, tracker=self.tracker)
        return self._data[cfg.data]

    def _reporter(self, trial: optuna.Trial) -> Callable[[str, int, dict[str, float]], None]:
        """Intermediate values for the pruner: validation accuracy after each fine-tuning epoch."""
        steps = itertools.count()

        def on_epoch(phase: str, epoch: int, stats: dict[str, float]) -> None:
            if phase != "finetune" or self.spec.multi_objective:
                return
            step = next(steps)
            trial.report(stats["val_acc"], step)
            if trial.should_prune():
                raise self._pruned(f"pruned after fine-tune epoch {step + 1}: val acc {stats['val_acc']:.4f}")

        return on_epoch


class SurplusTrial(Exception):
    """A trial whose slot is already filled (see the module docs); it ends at once."""


def _params_text(trial: optuna.Trial | FrozenTrial) -> str:
    """A trial's sampled params, or its grid cell, as ``k=v, ...``."""
    shown = json.loads(trial.user_attrs[CELL]) if CELL in trial.user_attrs else trial.params
    return ", ".join(f"{k}={_short(v)}" for k, v in shown.items())


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


# --- workers -------------------------------------------------------------------------------------


def work(spec: SweepSpec, worker: int, say: Callable[[str], None] = print) -> None:
    """One worker: run trials until every slot is filled and no trial is running anywhere."""
    if spec.threads:
        import torch

        torch.set_num_threads(spec.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(spec, worker)
    objective = TrialRunner(spec, lambda line: say(f"[worker {worker}] {line}"))
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        state = work_left(study, spec)
        if state == "done":
            return
        if state == "wait":
            time.sleep(1.0)  # another worker's trial may end (or fail over) any moment; a poll is one query
            continue
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)


def start_workers(spec_file: Path, count: int, log_dir: Path | None = None) -> list[subprocess.Popen]:
    """``count`` worker processes (``python -m bench sweep --worker SPEC``), sharing our stdout, or
    each writing ``worker-<i>.log`` under ``log_dir``."""
    procs = []
    for worker in range(count):
        cmd = [sys.executable, "-m", "bench", "sweep", "--worker", str(spec_file), "--worker-index", str(worker)]
        if log_dir is None:
            procs.append(subprocess.Popen(cmd, start_new_session=True))
            continue
        with open(log_dir / f"worker-{worker}.log", "w") as out:  # the child keeps its own copy of the handle
            procs.append(subprocess.Popen(cmd, start_new_session=True, stdout=out, stderr=subprocess.STDOUT))
    return procs


def wait_for(procs: list[subprocess.Popen], say: Callable[[str], None]) -> list[int]:
    """Wait for every worker; on Ctrl-C stop them all (their trials fail over by heartbeat)."""
    try:
        return [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            p.wait()
        raise


# --- the command ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """Trial counts (surplus excluded) and the best trials."""

    complete: int
    pruned: int
    failed: int
    running: int
    waiting: int
    best: list[FrozenTrial]
    failures: list[tuple[int, str]]


def summarize(study: optuna.Study) -> Summary:
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get(SURPLUS)]
    count = {state: sum(t.state == state for t in trials) for state in TrialState}
    failures = [
        (t.number, str(t.user_attrs.get("bench.error", "heartbeat lost (worker killed)")))
        for t in trials
        if t.state == TrialState.FAIL
    ]
    return Summary(
        count[TrialState.COMPLETE],
        count[TrialState.PRUNED],
        count[TrialState.FAIL],
        count[TrialState.RUNNING],
        count[TrialState.WAITING],
        best_trials(study),
        failures,
    )


def best_trials(study: optuna.Study, k: int | None = None) -> list[FrozenTrial]:
    """Single objective: complete trials by value, best first. Several: the Pareto front, by accuracy."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    if len(study.directions) > 1:
        front = [t for t in study.best_trials if t.values]
        ranked = sorted(front, key=lambda t: -t.values[0])
    else:
        ranked = sorted(complete, key=lambda t: -t.values[0])
    return ranked if k is None else ranked[:k]


def format_summary(summary: Summary, spec: SweepSpec) -> str:
    lines = [
        f"study '{spec.study}' ({spec.storage}): {summary.complete} complete, {summary.pruned} pruned, "
        f"{summary.failed} failed" + (f", {summary.running} running" if summary.running else "")
    ]
    lines += [f"  failed trial {n}: {reason}" for n, reason in summary.failures]
    title = "Pareto front (val acc, FLOPs reduction)" if spec.multi_objective else "best trials (val acc)"
    if summary.best:
        lines.append(f"{title}:")
        for t in summary.best[:10]:
            values = ", ".join(f"{v:.4f}" for v in t.values)
            test = t.user_attrs.get("bench.test_acc")
            test_text = f" (test {test:.4f}, reported only)" if isinstance(test, float) else ""
            lines.append(f"  trial {t.number}: {values}{test_text}  {_params_text(t)}")
    return "\n".join(lines)


def prepare_sweep(spec: SweepSpec, cells: list[dict[str, Any]] | None, say: Callable[[str], None]) -> SweepSpec:
    """Create (or join) the study and the MLflow parent run, enqueue missing grid cells, and train the
    dense baselines once before any worker starts; returns the spec with the parent run id."""
    study = open_study(spec)
    tracker = spec.tracker()
    parent = study.user_attrs.get("bench.mlflow_parent")
    if parent is None:
        tags = {"bench.kind": "sweep", "optuna.study": spec.study, "optuna.storage": _redact(spec.storage)}
        parent = tracker.start_run(f"sweep {spec.study}", parent_id=None, key=f"sweep/{spec.study}", tags=tags)
        tracker.log_params(parent, {"sweep": _spec_params(spec)})
        study.set_user_attr("bench.mlflow_parent", parent)
    else:
        tracker.reopen(parent)
    if cells is not None:
        done, queued = enqueue_missing_cells(study, cells)
        say(f"grid: {len(cells)} cells, {done} done or under way, {queued} enqueued")
    return dataclasses.replace(spec, parent_run_id=parent)


def _spec_params(spec: SweepSpec) -> dict[str, Any]:
    params = dataclasses.asdict(spec)
    params["storage"] = _redact(spec.storage)
    params.pop("parent_run_id")
    return params


def _redact(url: str) -> str:
    """A storage URL without its password."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


def warm_baselines(spec: SweepSpec, cells: list[dict[str, Any]] | None, say: Callable[[str], None]) -> None:
    """Train every dense baseline the trials will need (each trial's reference row, and the start of
    methods that prune it), once, before workers start: they would otherwise wait on each other."""
    from bench import runner

    base = spec.base_config()
    if cells is None:
        needed = [(base.model, base.data, base.seeds[0])]
    else:
        needed = sorted(
            {(c["model"], dataclasses.replace(base.data, name=c["dataset"]), c["seed"]) for c in cells},
            key=lambda k: (k[0], k[1].name, k[2]),
        )
    for model, data, seed in needed:
        cfg = dataclasses.replace(base, model=model, data=data, seeds=(seed,), methods=())
        paths, splits, runtime, tracker = runner.prepare(cfg, progress=False)
        session = runner.Session(cfg, paths, splits, runtime, tracker, spec.parent_run_id, say)
        runner.dense_baseline(session, seed, log_run=False)


def run_sweep(
    spec: SweepSpec, workers: int, cells: list[dict[str, Any]] | None = None, say: Callable[[str], None] = print
) -> Summary:
    """The whole command: prepare, warm the baselines, run ``workers`` processes, summarise."""
    spec = prepare_sweep(spec, cells, say)
    study = open_study(spec)
    if work_left(study, spec) == "done":
        say(f"study '{spec.study}': nothing left to run")
    else:
        warm_baselines(spec, cells, say)
        spec_file = write_spec(spec)
        say(f"sweep '{spec.study}': {workers} worker(s), storage {_redact(spec.storage)}, spec {spec_file}")
        codes = wait_for(start_workers(spec_file, workers), say)
        if any(codes):
            say(f"worker exit codes: {codes}")
    summary = summarize(study)
    say(format_summary(summary, spec))
    _finish_parent(spec, summary, study)
    return summary


def write_spec(spec: SweepSpec) -> Path:
    from bench.checkpoint import atomic_write_text

    path = Path(spec.base_config().results_dir).resolve() / "sweeps" / f"{_safe(spec.study)}-{os.getpid()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(spec.to_json(), path)
    return path


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _finish_parent(spec: SweepSpec, summary: Summary, study: optuna.Study) -> None:
    tracker = spec.tracker()
    tracker.log_metrics(
        spec.parent_run_id,
        {"trials_complete": summary.complete, "trials_pruned": summary.pruned, "trials_failed": summary.failed},
    )
    if summary.running == 0 and summary.waiting == 0:
        tracker.end_run(spec.parent_run_id, "FINISHED")
    print(f"MLflow: sweep parent run {spec.parent_run_id} in experiment '{tracker.experiment_name}' at {tracker.uri}")


# --- re-running the best configurations over seeds ------------------------------------------------


def rerun_best(spec: SweepSpec, k: int, seeds: tuple[int, ...], say: Callable[[str], None] = print):
    """``--best K --seeds ...``: each of the best K trials' configurations through ``bench run`` (test
    protocol) over ``seeds``; returns the combined results, labelled ``<method> (trial N)``."""
    import pandas as pd

    from bench import runner
    from reports.tables import comparison_table, format_table

    study = open_study(spec)
    best = best_trials(study, k)
    if not best:
        raise BenchError(f"study '{spec.study}' has no complete trial to re-run")
    frames = []
    for trial in best:
        cfg = dataclasses.replace(configmod.from_dict(trial.user_attrs["bench.config"]), seeds=seeds)
        say(f"re-running trial {trial.number} ({_params_text(trial)}) over seeds {','.join(map(str, seeds))}")
        rows = runner.run(cfg, progress=False, say=lambda _line: None)
        label = f"{cfg.methods[0]} (trial {trial.number})"
        rows["method"] = rows["method"].where(rows["method"] == "dense", label)
        frames.append(rows)
    results = pd.concat(frames, ignore_index=True)
    dense = results[results["method"] == "dense"].drop_duplicates(subset=["seed"])
    results = pd.concat([dense, results[results["method"] != "dense"]], ignore_index=True)
    say(format_table(comparison_table(results), title=f"best {len(best)} of study '{spec.study}' over seeds"))
    return results
