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

One module per job, in data-flow order:

- :mod:`~bench.sweeps.spec`: :class:`SweepSpec` (validated, JSON between processes), study names.
- :mod:`~bench.sweeps.storage`: the Optuna storage (sqlite claim lock, PostgreSQL) and study.
- :mod:`~bench.sweeps.slots`: which slot a trial fills, surplus trials, whether work is left.
- :mod:`~bench.sweeps.grid`: grid TOML files and their cells.
- :mod:`~bench.sweeps.trial`: one trial's RunConfig and the runner that runs it.
- :mod:`~bench.sweeps.workers`: the worker loop and local worker processes.
- :mod:`~bench.sweeps.output`: what a worker prints: whole lines prefixed ``[w<worker> t<trial>]``, Optuna's
  logging at WARNING unless ``--verbose``.
- :mod:`~bench.sweeps.summary`: counts, best trials, the best re-run over seeds.
- :mod:`~bench.sweeps.run`: the command: prepare, warm baselines, run workers, summarise.
"""

from __future__ import annotations

from bench.sweeps.grid import Grid, cell_key, enqueue_missing_cells, load_grid
from bench.sweeps.run import prepare_sweep, run_sweep, warm_baselines
from bench.sweeps.slots import CELL, LIVE, SLOT, SURPLUS, is_surplus, slot_of, work_left
from bench.sweeps.spec import OBJECTIVES, PRUNERS, SweepSpec, default_study_name, write_spec
from bench.sweeps.storage import (
    STORAGE_FILE,
    SqliteStorage,
    default_storage,
    normalize_storage_url,
    open_storage,
    open_study,
    redact,
)
from bench.sweeps.summary import BestRerun, Summary, best_trials, format_summary, rerun_best, summarize
from bench.sweeps.trial import FixedParams, SurplusTrial, TrialRunner, params_text, trial_config
from bench.sweeps.workers import start_workers, threads_per_worker, wait_for, work

__all__ = [
    "CELL",
    "LIVE",
    "OBJECTIVES",
    "PRUNERS",
    "SLOT",
    "STORAGE_FILE",
    "SURPLUS",
    "BestRerun",
    "FixedParams",
    "Grid",
    "SqliteStorage",
    "Summary",
    "SurplusTrial",
    "SweepSpec",
    "TrialRunner",
    "best_trials",
    "cell_key",
    "default_storage",
    "default_study_name",
    "enqueue_missing_cells",
    "format_summary",
    "is_surplus",
    "load_grid",
    "normalize_storage_url",
    "open_storage",
    "open_study",
    "params_text",
    "prepare_sweep",
    "redact",
    "rerun_best",
    "run_sweep",
    "slot_of",
    "start_workers",
    "summarize",
    "threads_per_worker",
    "trial_config",
    "wait_for",
    "warm_baselines",
    "work",
    "work_left",
    "write_spec",
]
