"""The Optuna storage and study of a sweep: sqlite under ``results/`` by default, PostgreSQL to scale
across machines; heartbeats and retries; the sqlite claim lock; storage URLs without passwords.

Opening a storage and creating (or loading) the study run under :func:`study_lock`, the database's
first-use lock (``bench.dblock``: a lock file beside an sqlite database, a PostgreSQL advisory
lock), so sweeps started at the same moment on a fresh database, on one machine or many, all join
one study instead of racing to create its tables."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from bench.dblock import file_lock, lock_file, schema_lock
from bench.errors import BenchError, first_line
from bench.schema import TrialAttr
from bench.sweeps.spec import OBJECTIVE_METRICS, OBJECTIVES, SweepSpec

STORAGE_FILE = "optuna.db"


def default_storage(results_dir: Path) -> str:
    return f"sqlite:///{results_dir / STORAGE_FILE}"


def normalize_storage_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 (a dependency); SQLAlchemy alone would look for psycopg2."""
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if not url.startswith(("sqlite:///", "postgresql+", "mysql")):
        raise BenchError(f"unsupported --storage '{url}'; use sqlite:///<file>.db or postgresql://user@host:port/db")
    return url


def redact(url: str) -> str:
    """A storage URL without its password."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        credentials, host = rest.rsplit("@", 1)
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


def open_error(spec: SweepSpec, exc: BaseException) -> BenchError:
    """The one-line error for a storage that cannot be opened (a bad URL, server down, no access)."""
    return BenchError(f"cannot open the Optuna storage {spec.storage!r}: {first_line(exc)}")


@contextmanager
def study_lock(spec: SweepSpec) -> Iterator[None]:
    """Hold the first-use lock of the spec's storage (re-entrant in this thread): opening the
    storage and creating the study under it is safe however many processes and machines start at
    once. A database that cannot be reached is a BenchError."""
    with ExitStack() as stack:
        try:
            stack.enter_context(schema_lock(normalize_storage_url(spec.storage)))
        except BenchError:
            raise
        except Exception as exc:  # driver errors: server down, no access
            raise open_error(spec, exc) from exc
        yield


def open_storage(spec: SweepSpec) -> optuna.storages.RDBStorage:
    """The RDB storage with heartbeats and retries, created under :func:`study_lock`. sqlite waits up
    to 5 min for a lock instead of failing with "database is locked" when workers write at once."""
    url = normalize_storage_url(spec.storage)
    db_file = Path(url[len("sqlite:///") :]) if url.startswith("sqlite:///") else None
    if db_file is not None:
        db_file.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), study_lock(spec):
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        options = _storage_options(spec, url)
        try:
            if db_file is not None:
                return SqliteStorage(url, lock_file(db_file.resolve()), **options)
            return optuna.storages.RDBStorage(url, **options)
        except Exception as exc:  # SQLAlchemy / driver errors: a bad URL, server down, no access
            raise open_error(spec, exc) from exc


def _storage_options(spec: SweepSpec, url: str) -> dict[str, Any]:
    """Engine settings, and the heartbeat that fails (and retries) the trials of a dead worker."""
    engine: dict[str, Any] = {"connect_args": {"timeout": 300}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    return {
        "engine_kwargs": engine,
        "heartbeat_interval": spec.heartbeat_s,
        "grace_period": spec.grace_s,
        "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(spec.max_retry),
    }


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
        with file_lock(self.lock_file):  # the first-use lock's file: one lock, re-entrant in a thread
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
    """Create the study or load it, under :func:`study_lock`; a study with other objectives, or of
    the other kind, is refused. A new study records its kind and its metric names."""
    with study_lock(spec):
        storage = storage or open_storage(spec)
        study = optuna.create_study(
            study_name=spec.study,
            storage=storage,
            directions=[OBJECTIVES[o] for o in spec.objectives],
            sampler=sampler_for(spec, worker),
            pruner=pruner_for(spec),
            load_if_exists=True,
        )
        _check_objectives(study, spec)
        _check_kind(study, spec)
        _name_metrics(study, spec)
    return study


def _check_objectives(study: optuna.Study, spec: SweepSpec) -> None:
    """An existing study must optimise the same objectives in the same directions."""
    stored = [d.name.lower() for d in study.directions]
    if stored != [OBJECTIVES[o] for o in spec.objectives]:
        raise BenchError(
            f"study '{spec.study}' in {spec.storage} optimises {len(stored)} objective(s) ({', '.join(stored)}), "
            f"not {', '.join(spec.objectives)}; use another --study name"
        )


def _check_kind(study: optuna.Study, spec: SweepSpec) -> None:
    """A search and a grid never share a study; a new study records its kind."""
    kind = study.user_attrs.get(TrialAttr.KIND)
    if kind is not None and kind != spec.kind:
        raise BenchError(f"study '{spec.study}' is a {kind} sweep, not a {spec.kind}; use another --study name")
    if kind is None:
        study.set_user_attr(TrialAttr.KIND, spec.kind)


def metric_names(spec: SweepSpec) -> list[str]:
    """The study's objective names, as MLflow names them: ``["best_val_acc", "flops_reduction"]``."""
    return [OBJECTIVE_METRICS[o] for o in spec.objectives]


def _name_metrics(study: optuna.Study, spec: SweepSpec) -> None:
    """Name the objectives (optuna-dashboard and ``study.trials_dataframe()`` show the names); a study
    named already is left alone."""
    names = metric_names(spec)
    if study.metric_names != names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)
