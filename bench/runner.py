"""``bench run``: the pipeline of DESIGN.md, read top to bottom.

    config -> checks (methods, hyperparameters, plan sources) -> workspace (results dir, data,
    runtime, tracking store) -> planned work and estimate -> parent MLflow run -> per seed:
    dense baseline (trained or reused from the cache) -> per method: MethodRun -> results table

Where each box lives: checks of inherited architectures in ``bench.inherit``, the estimate in
``bench.estimate``, the baseline cache in ``bench.baseline``, one method and seed in
``bench.method_run``, what a finished run writes to MLflow in ``bench.run_log``. Rendering the
table is the caller's: the CLI passes a ``present`` callback (``bench`` core never imports reports).

A killed invocation resumes: the parent MLflow run is found by the config hash, each phase resumes
from its last epoch checkpoint, and finished (method, seed) pairs are not run again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import unquote, urlparse

import pandas as pd

from bench import controls, inherit, measure, models, named_plans, provenance
from bench.api import Method
from bench.baseline import Baseline, dense_baseline
from bench.config import RunConfig
from bench.estimate import PresetChoice, describe_plan, method_objects, method_phases, planned_rounds
from bench.method_run import MethodRun
from bench.schema import Artifact, Kind, Result, Tag
from bench.session import EarlyStop, EpochCallback, Say, Session, Workspace, prepare

__all__ = ["EarlyStop", "Outcome", "PresetChoice", "TrialRequest", "prepare", "run", "run_trial", "warm_baseline"]


@dataclass(frozen=True)
class Outcome:
    """What a finished ``bench run`` hands to its presenter: the rows and how to caption them."""

    results: pd.DataFrame  # one row per (method or dense, seed): ``Result.to_row()``
    cfg: RunConfig
    title: str  # what the numbers are: model, data, selection, seeds, FLOPs convention
    data_name: str


Present = Callable[[Outcome], Mapping[str, pd.DataFrame]]  # prints; returns tables to log on the parent


def run(
    cfg: RunConfig,
    *,
    progress: bool = True,
    say: Say = print,
    present: Present | None = None,
    choice: PresetChoice | None = None,
) -> pd.DataFrame:
    """Run every method over every seed; returns one row per (method or dense, seed). ``choice``: how
    the preset was chosen, for the plan's header (``bench.estimate.PresetChoice``)."""
    methods = checked_methods(cfg)
    rows = controls.controls(cfg)
    check_budgets(cfg, methods)
    order = inherit.run_order(controls.expand(cfg), rows)
    work = prepare(cfg, progress)
    external = inherit.external_sources(work.tracker, rows, cfg.model)
    say(describe_plan(cfg, work, methods, external, choice))
    session = Session(cfg, work, _start_parent(cfg, work), say, external)
    with _parent_ended_on_failure(session):
        results = pd.DataFrame([result.to_row() for result in _all_results(session, order)])
        _finish_parent(session, results, present)
    return results


def checked_methods(cfg: RunConfig) -> dict[str, Method]:
    """Every method of the run, built from its hyperparameters: bad names and values fail now,
    not after the baseline. So does a named plan the model lacks, or one a method would apply in rounds."""
    models.validate_name(cfg.model)
    if cfg.prune.plan is not None:
        named_plans.check_plan(cfg.model, cfg.prune.plan)
    methods = method_objects(cfg)
    if cfg.prune.plan is not None:
        named_plans.check_one_round(cfg.prune.plan, {name: planned_rounds(cfg, m) for name, m in methods.items()})
    return methods


def check_budgets(cfg: RunConfig, methods: Mapping[str, Method]) -> None:
    """Every method's phases fit ``--budget`` (``bench.budget.matched`` refuses what cannot)."""
    for name, method in methods.items():
        method_phases(cfg, name, method, planned_rounds(cfg, method))


def _all_results(session: Session, order: list[str]) -> Iterator[Result]:
    for seed in session.cfg.seeds:
        baseline = dense_baseline(session, seed)
        yield baseline.result
        for name in order:
            yield MethodRun(session, name, seed, baseline).execute()


# --- the parent run ------------------------------------------------------------------------------


def _start_parent(cfg: RunConfig, work: Workspace) -> str:
    """Start (or resume) the parent run and log the config and environment on it; a failure while
    logging (a changed config on resume) ends it FAILED with the reason."""
    name = f"{cfg.model} {cfg.data.name} {','.join(cfg.methods) or 'dense'}"
    tags = {
        Tag.KIND: Kind.RUN,
        Tag.CONFIG_HASH: cfg.digest(),
        Tag.MODEL: cfg.model,
        Tag.DATASET: cfg.data.name,
        Tag.DATA_SOURCE: work.data.source,
        Tag.DATA_LABEL: work.data.label,
    }
    tracker = work.tracker
    parent_id = tracker.start_run(name, parent_id=None, key=f"run/{cfg.digest()}", tags=tags)
    with tracker.ended_on_failure(parent_id):
        tracker.log_params(parent_id, cfg.to_dict())
        tracker.set_tags(parent_id, provenance.environment())
        tracker.log_dict(parent_id, cfg.to_dict(), Artifact.CONFIG)
    return parent_id


@contextmanager
def _parent_ended_on_failure(session: Session) -> Iterator[None]:
    """Whatever ends the run early, the parent run ends KILLED (Ctrl-C, SIGTERM: ``bench.stopped``)
    or FAILED (``bench.error``) with the reason (``Tracker.ended_on_failure``)."""
    with session.tracker.ended_on_failure(session.parent_id):
        yield


def _finish_parent(session: Session, results: pd.DataFrame, present: Present | None) -> None:
    """Present the table, store the results (and the presenter's tables) on the parent, end it."""
    outcome = Outcome(results, session.cfg, _table_title(session), session.data.name)
    tables = present(outcome) if present is not None else {}
    tracker = session.tracker
    tracker.log_table(session.parent_id, results, Artifact.RESULTS)
    for artifact, table in tables.items():
        tracker.log_table(session.parent_id, table, artifact)
    tracker.end_run(session.parent_id, "FINISHED")
    session.say(f"\nMLflow: parent run {session.parent_id} in experiment '{session.cfg.experiment}' at {tracker.uri}")
    for line in child_lines(session, results):
        session.say(line)


def child_lines(session: Session, results: pd.DataFrame) -> list[str]:
    """One line per child run (the dense baseline and each method, per seed): its MLflow run id and
    where its artifacts (plans.json, model.pt) are, a local path for a local store."""
    if "run_id" not in results:
        return []
    lines = []
    for row in results.itertuples():
        if isinstance(row.run_id, str) and row.run_id:
            uri = session.tracker.get_run(row.run_id).info.artifact_uri
            lines.append(f"  {row.method} seed {row.seed}: run {row.run_id}, artifacts {local_path(uri)}")
    return lines


def local_path(uri: str) -> str:
    """A ``file:`` URI as the path it names; any other URI (a server's) as it is."""
    if uri.startswith("file://"):
        return unquote(urlparse(uri).path)
    return uri


def _table_title(session: Session) -> str:
    cfg, data = session.cfg, session.data
    return (
        f"{cfg.model} on {data.label} ({data.source}); test accuracy of the best-validation checkpoint, "
        f"mean +- std over {len(cfg.seeds)} seed(s); FLOPs are {measure.FLOP_CONVENTION}"
    )


# --- entry points for sweeps ----------------------------------------------------------------------


@dataclass(frozen=True)
class TrialRequest:
    """One method and seed run under an existing parent (a sweep trial), as ``run_trial`` runs it."""

    parent_id: str  # the sweep's MLflow parent run
    label: str  # names the MLflow run and the work dir (e.g. "trial-7")
    tags: Mapping[str, str] = field(default_factory=dict)
    on_epoch: EpochCallback | None = None  # e.g. the pruner's intermediate reports
    say: Say = print


def run_trial(cfg: RunConfig, work: Workspace, request: TrialRequest) -> Result:
    """``cfg.methods[0]`` for ``cfg.seeds[0]`` from the cached dense baseline (not logged again):
    the whole method pipeline, resumable, its MLflow run nested under ``request.parent_id``."""
    session = Session(cfg, work, request.parent_id, request.say, on_epoch=request.on_epoch)
    seed = cfg.seeds[0]
    baseline = dense_baseline(session, seed, log_run=False)
    return MethodRun(session, cfg.methods[0], seed, baseline, label=request.label).execute(request.tags)


def warm_baseline(cfg: RunConfig, parent_id: str, say: Say = print) -> Baseline:
    """Train (or find in the cache) the dense baseline of ``cfg.seeds[0]`` without logging a run:
    sweeps call it before their workers start, so workers never wait on each other."""
    session = Session(cfg, prepare(cfg, progress=False), parent_id, say)
    return dense_baseline(session, cfg.seeds[0], log_run=False)
