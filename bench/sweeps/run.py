"""The ``bench sweep`` command: create (or join) the study and its MLflow parent run, train the dense
baselines once, run the local workers, and summarise."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import Any

from bench.checkpoint import note_resume_point
from bench.schema import Kind, Metric, Param, Tag, TrialAttr
from bench.sweeps.grid import enqueue_missing_cells
from bench.sweeps.slots import work_left
from bench.sweeps.spec import SweepSpec, write_spec
from bench.sweeps.storage import open_study, redact, study_lock
from bench.sweeps.summary import Summary, format_summary, summarize
from bench.sweeps.trial import check_config, warm_baseline
from bench.sweeps.workers import start_workers, wait_for


def prepare_sweep(spec: SweepSpec, cells: list[dict[str, Any]] | None, say: Callable[[str], None]) -> SweepSpec:
    """Create (or join) the study and the MLflow parent run and enqueue missing grid cells; returns
    the spec with the parent run id. Under the storage's first-use lock, so that machines starting
    at the same moment create one parent run, not one each."""
    with study_lock(spec):
        return _prepare(spec, cells, say)


def _prepare(spec: SweepSpec, cells: list[dict[str, Any]] | None, say: Callable[[str], None]) -> SweepSpec:
    study = open_study(spec)
    note_resume_point(f"study {spec.study}")  # the study persists: the same command joins it again
    tracker = spec.tracker()
    parent = study.user_attrs.get(TrialAttr.MLFLOW_PARENT)
    if parent is None:
        tags = {Tag.KIND: Kind.SWEEP, Tag.STUDY: spec.study, Tag.STORAGE: redact(spec.storage)}
        parent = tracker.start_run(f"sweep {spec.study}", parent_id=None, key=f"sweep/{spec.study}", tags=tags)
        tracker.log_params(parent, {Param.SWEEP: _spec_params(spec)})
        study.set_user_attr(TrialAttr.MLFLOW_PARENT, parent)
    else:
        tracker.reopen(parent)
    if cells is not None:
        done, queued = enqueue_missing_cells(study, cells)
        say(f"grid: {len(cells)} cells, {done} done or under way, {queued} enqueued")
    return dataclasses.replace(spec, parent_run_id=parent)


def _spec_params(spec: SweepSpec) -> dict[str, Any]:
    params = dataclasses.asdict(spec)
    params["storage"] = redact(spec.storage)
    params.pop("parent_run_id")
    return params


def warm_baselines(spec: SweepSpec, cells: list[dict[str, Any]] | None, say: Callable[[str], None]) -> None:
    """Train every dense baseline the trials will need (each trial's reference row, and the start of
    methods that prune it), once, before workers start: they would otherwise wait on each other."""
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
        warm_baseline(cfg, spec.parent_run_id, say)


def run_sweep(
    spec: SweepSpec,
    workers: int,
    cells: list[dict[str, Any]] | None = None,
    say: Callable[[str], None] = print,
    verbose: bool = False,
) -> Summary:
    """The whole command: check, prepare, warm the baselines, run ``workers`` processes (their lines
    prefixed ``[w<worker> t<trial>]``; Optuna's INFO lines only if ``verbose``), summarise."""
    check_config(spec.base_config())
    spec = prepare_sweep(spec, cells, say)
    study = open_study(spec)
    if work_left(study, spec) == "done":
        say(f"study '{spec.study}': nothing left to run")
    else:
        warm_baselines(spec, cells, say)
        spec_file = write_spec(spec)
        say(f"sweep '{spec.study}': {workers} worker(s), storage {redact(spec.storage)}, spec {spec_file}")
        sys.stdout.flush()  # our lines come before the workers', which share this stdout (a pipe buffers)
        codes = wait_for(start_workers(spec_file, workers, verbose=verbose), say)
        if any(codes):
            say(f"worker exit codes: {codes}")
    summary = summarize(study)
    say(format_summary(summary, spec))
    _finish_parent(spec, summary)
    return summary


def _finish_parent(spec: SweepSpec, summary: Summary) -> None:
    """Log the trial counts on the parent run; end it when no trial is left running or waiting."""
    tracker = spec.tracker()
    tracker.log_metrics(
        spec.parent_run_id,
        {
            Metric.TRIALS_COMPLETE: summary.complete,
            Metric.TRIALS_PRUNED: summary.pruned,
            Metric.TRIALS_FAILED: summary.failed,
        },
    )
    if summary.running == 0 and summary.waiting == 0:
        tracker.end_run(spec.parent_run_id, "FINISHED")
    print(f"MLflow: sweep parent run {spec.parent_run_id} in experiment '{tracker.experiment_name}' at {tracker.uri}")
