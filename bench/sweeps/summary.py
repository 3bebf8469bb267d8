"""What a sweep found: trial counts, the best trials (or the Pareto front), and the best
configurations re-run over seeds on the test protocol of ``bench run`` (``--best K --seeds ...``).

Selection uses the validation split (``best_val_acc``); the test accuracy is stored as a user
attribute and only reported. Tables are the CLI's job: :func:`rerun_best` returns the results and
a title, and the CLI formats them with ``reports``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import optuna
from optuna.trial import FrozenTrial, TrialState

from bench import config as configmod
from bench.errors import BenchError
from bench.schema import DENSE, Metric, TrialAttr
from bench.sweeps.slots import SURPLUS
from bench.sweeps.spec import SweepSpec
from bench.sweeps.storage import open_study
from bench.sweeps.trial import ROW_ATTR, params_text

if TYPE_CHECKING:
    import pandas as pd

LOST = "heartbeat lost (worker killed)"  # the reason of a failed trial that recorded none


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
    failures = [(t.number, str(t.user_attrs.get(TrialAttr.ERROR, LOST))) for t in trials if t.state == TrialState.FAIL]
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
    """Counts, failure reasons, and the best ten trials (validation values; test accuracy reported only)."""
    lines = [
        f"study '{spec.study}' ({spec.storage}): {summary.complete} complete, {summary.pruned} pruned, "
        f"{summary.failed} failed" + (f", {summary.running} running" if summary.running else "")
    ]
    lines += [f"  failed trial {n}: {reason}" for n, reason in summary.failures]
    title = "Pareto front (val acc, FLOPs reduction)" if spec.multi_objective else "best trials (val acc)"
    if summary.best:
        lines.append(f"{title}:")
        lines += [_trial_line(t) for t in summary.best[:10]]
    return "\n".join(lines)


def _trial_line(trial: FrozenTrial) -> str:
    """Objectives and test accuracy in %, as every accuracy the harness prints (they are stored as
    fractions: validation accuracy, achieved FLOPs reduction)."""
    values = ", ".join(f"{v:.2%}" for v in trial.values)
    test = trial.user_attrs.get(ROW_ATTR.format(Metric.TEST_ACC))
    test_text = f" (test {test:.2%}, reported only)" if isinstance(test, float) else ""
    return f"  trial {trial.number}: {values}{test_text}  {params_text(trial)}"


class BestRerun(NamedTuple):
    """The best trials re-run over seeds: result rows (dense first, one per seed; then each trial's
    rows, labelled ``<method> (trial N)``) and the title of their table. A named tuple (immutable),
    so ``results, title = rerun_best(...)`` works too."""

    results: pd.DataFrame
    title: str


def rerun_best(spec: SweepSpec, k: int, seeds: tuple[int, ...], say: Callable[[str], None] = print) -> BestRerun:
    """``--best K --seeds ...``: each of the best K trials' configurations through ``bench run`` (test
    protocol) over ``seeds``; returns the combined results and their table's title."""
    import pandas as pd

    best = best_trials(open_study(spec), k)
    if not best:
        raise BenchError(f"study '{spec.study}' has no complete trial to re-run")
    results = pd.concat([_rerun(trial, seeds, say) for trial in best], ignore_index=True)
    dense = results[results["method"] == DENSE].drop_duplicates(subset=["seed"])
    results = pd.concat([dense, results[results["method"] != DENSE]], ignore_index=True)
    return BestRerun(results, f"best {len(best)} of study '{spec.study}' over seeds")


def _rerun(trial: FrozenTrial, seeds: tuple[int, ...], say: Callable[[str], None]) -> pd.DataFrame:
    """One trial's configuration over ``seeds``; its method rows labelled ``<method> (trial N)``."""
    from bench import runner

    cfg = dataclasses.replace(configmod.from_dict(trial.user_attrs[TrialAttr.CONFIG]), seeds=seeds)
    say(f"re-running trial {trial.number} ({params_text(trial)}) over seeds {','.join(map(str, seeds))}")
    rows = runner.run(cfg, progress=False, say=lambda _line: None)
    label = f"{cfg.methods[0]} (trial {trial.number})"
    rows["method"] = rows["method"].where(rows["method"] == DENSE, label)
    return rows
