"""Inherited architectures (the scratch control, ``bench.controls``): where a scratch row's plans come
from, checked before any training, and read once the source has run.

A source is another method of the same invocation (its finished work dir for the same seed) or
``run:<MLflow run id>``, a finished method run of the tracking store.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from bench.controls import RUN_SOURCE, Inherited, ScratchControl
from bench.errors import BenchError
from bench.plan import PruningPlan, load_plans
from bench.schema import Artifact, Metric, Tag, stored_number
from bench.session import Session
from bench.tracking import Tracker

BUDGET_METRICS = (Metric.TRAIN_EPOCHS, Metric.MACS, Metric.DENSE_MACS)  # what a source must have recorded


def run_order(names: tuple[str, ...], controls: Mapping[str, ScratchControl]) -> list[str]:
    """The order given, except that the scratch rows run after every method (their sources)."""
    return [m for m in names if m not in controls] + [m for m in names if m in controls]


def external_sources(tracker: Tracker, controls: Mapping[str, ScratchControl], model: str) -> dict[str, Inherited]:
    """Every ``run:<id>`` source, read (and checked) once before the run starts."""
    sources = {c.source for c in controls.values()}
    return {s: from_store(tracker, s, model) for s in sources if s.startswith(RUN_SOURCE)}


def from_store(tracker: Tracker, source: str, model: str) -> Inherited:
    """The plans and budget of a finished method run of this store, checked against ``model``."""
    run_id = source[len(RUN_SOURCE) :].strip()
    run = tracker.get_run(run_id)
    if run.info.status != "FINISHED":
        raise BenchError(f"plan source run '{run_id}' is {run.info.status}, not FINISHED; name a finished method run")
    plans = tuple(PruningPlan.from_dict(d) for d in tracker.read_json(run_id, Artifact.PLANS))
    if plans and plans[0].model != model:
        raise BenchError(f"plan source run '{run_id}' pruned {plans[0].model}, but this run's model is {model}")
    numbers = {k: stored_number(run.data, k) for k in BUDGET_METRICS}
    missing = [k for k, v in numbers.items() if v is None]
    if missing:
        raise BenchError(
            f"plan source run '{run_id}' lacks the metrics {', '.join(missing)} (logged by bench run since "
            "the scratch control was added); re-run its method or name a newer run"
        )
    budget = (int(numbers[k]) for k in BUDGET_METRICS)
    return Inherited(source, run_id, plans, *budget, protocol=run.data.tags.get(Tag.PROTOCOL, run_id))


def inherited(session: Session, source: str, seed: int) -> Inherited:
    """The source's plans for ``seed``: read from the store before the run, or from the same run's
    finished work dir of the source method."""
    if source in session.external:
        return session.external[source]
    folder = session.paths.runs / session.parent_id / f"{source}-s{seed}"
    row = json.loads((folder / "result.json").read_text())
    if "train_epochs" not in row:
        raise BenchError(f"{source} seed {seed} in {folder} finished before epoch budgets were recorded; re-run it")
    plans = tuple(load_plans(folder / Artifact.PLANS))
    budget = (int(row[k]) for k in BUDGET_METRICS)
    return Inherited(source, row.get("run_id"), plans, *budget, protocol=row.get("protocol", ""))
