"""Stored runs as one tidy table, from MLflow (any tracking URI) or from a CSV/Parquet export.

One row per finished run of a method or of the dense baseline: what ``bench run`` and ``bench
sweep`` logged, read back, never recomputed, and never through torch. Older runs that lack the
per-run identity tags (model, dataset) take them from their parent run. Numeric fields are read
with ``bench.schema.stored_number``: the settings among them (the training budget, the latency
batch size) are params and tags since issue 14 and metrics in older stores, and read the same.

The ``protocol`` column is the run's protocol digest (``bench.protocol``: every setting that shaped
the result except the seed); each setting is a column ``protocol.<key>`` (``protocol.dense.epochs``),
its text as MLflow stores it, None when unset. Runs logged before the digest existed get a stand-in
that never pools runs of different configs: ``cfg:<the parent's bench.config_hash>``, else
``run:<parent run id>``, else ``unknown``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from bench.errors import BenchError, closest
from bench.schema import PARENT_TAG, Env, Metric, Param, Tag, is_sparsity_metric, stored_number

if TYPE_CHECKING:
    from mlflow.entities import Run

    from bench.store import Store

METRICS = [  # the numeric result fields a report reads, in column order (``stored_number``: metric, param or tag)
    Metric.TEST_ACC,
    Metric.BEST_VAL_ACC,
    Metric.PARAMS,
    Metric.MACS,
    Metric.DENSE_TEST_ACC,
    Metric.DENSE_PARAMS,
    Metric.DENSE_MACS,
    Metric.FLOPS_REDUCTION,
    Metric.PARAMS_REDUCTION,
    Metric.TRAIN_EPOCHS,
    Metric.TRAIN_IMAGES,
    Metric.CHANNELS_REMOVED,
    Metric.LATENCY_MEDIAN,
    Metric.LATENCY_IQR,
]
TAGS = {  # column -> tag
    "method": Tag.METHOD,
    "seed": Tag.SEED,
    "model": Tag.MODEL,
    "dataset": Tag.DATASET,
    "data_label": Tag.DATA_LABEL,
    "prune_rule": Tag.PRUNE_RULE,
    "prune_value": Tag.PRUNE_VALUE,
    "baseline_key": Tag.BASELINE_KEY,
    "plan_source": Tag.PLAN_SOURCE,
    "study": Tag.STUDY,
    "trial": Tag.TRIAL,
    "config_hash": Tag.CONFIG_HASH,  # on the parent run
    "latency_batch_size": Tag.LATENCY_BATCH_SIZE,  # read as a number (``_row``): the tag, else an old metric
    "latency_device": Tag.LATENCY_DEVICE,
    "git_sha": Env.GIT_SHA,
    "git_dirty": Env.GIT_DIRTY,
    "device": Env.DEVICE,
    "torch": Env.TORCH,
    "cuda": Env.CUDA,
    "python": Env.PYTHON,
    "mlflow": Env.MLFLOW,
}
COLUMNS = ["run_id", "parent_id", "experiment", "protocol", *TAGS, *METRICS, "target", "plan", "start_time"]
TARGET_RULE = "target_flops_reduction"  # the prune rule whose value is a report's ``target`` column
SETTING = Param.PROTOCOL_PREFIX  # the column of one protocol setting: ``protocol.dense.epochs``
GROUP_KEYS = ("experiment", "protocol", *TAGS, "target", "plan")  # groupable columns, besides the settings
PLAN_RULE = "plan"  # the prune rule whose value (a named plan, e.g. "l1-a") is the ``plan`` column


def load_mlflow(
    uri: str, *, experiment: str | None = None, sweep: str | None = None, run_ids: Iterable[str] = ()
) -> pd.DataFrame:
    """Finished method and dense runs: of ``run_ids`` (a parent id stands for its children), of the
    sweep (Optuna study) named ``sweep``, or of the whole ``experiment`` (default "bench")."""
    store = _store(uri)
    ids = list(run_ids)
    runs = [r for i in ids for r in store.expand(i)] if ids else _in_experiment(store, experiment or "bench", sweep)
    parents: dict[str, dict[str, str]] = {}
    rows = []
    for run in runs:
        if Tag.METHOD not in run.data.tags or run.info.status != "FINISHED":
            continue
        parent_id = run.data.tags.get(PARENT_TAG)
        if parent_id and parent_id not in parents:
            parents[parent_id] = store.get_run(parent_id).data.tags
        rows.append(_row(run, parents.get(parent_id, {})))
    if not rows:
        raise BenchError(f"no finished bench runs found at {uri} for the given selection")
    return tidy(pd.DataFrame(rows))


def _in_experiment(store: Store, name: str, sweep: str | None) -> list[Run]:
    """The experiment's finished runs; with ``sweep``, only the trials of that sweep's parent(s)."""
    exp = store.experiment(name)
    runs = store.search([exp.experiment_id], "attributes.status = 'FINISHED'")
    if sweep is None:
        return runs
    parents = {r.info.run_id for r in runs if r.data.tags.get(Tag.STUDY) == sweep and PARENT_TAG not in r.data.tags}
    if not parents:
        raise BenchError(f"no sweep '{sweep}' in experiment '{exp.name}' at {store.uri}")
    return [r for r in runs if r.data.tags.get(PARENT_TAG) in parents]


@lru_cache(maxsize=8)
def _store(uri: str) -> Store:
    """One open store per URI: a report reads runs, then each figure's artifacts, from the same one.
    Imported here: a report from an export file never loads mlflow."""
    from bench.store import Store

    return Store.open(uri)


def _row(run, parent_tags: dict[str, str]) -> dict[str, Any]:
    tags, metrics, params = run.data.tags, run.data.metrics, run.data.params
    row: dict[str, Any] = {
        "run_id": run.info.run_id,
        "parent_id": tags.get(PARENT_TAG),
        "experiment": run.info.experiment_id,
        "start_time": run.info.start_time,
    }
    for column, tag in TAGS.items():
        row[column] = tags.get(tag, parent_tags.get(tag))
    row["protocol"] = tags.get(Tag.PROTOCOL)  # the run's own: a parent's would describe other runs
    for key in [*METRICS, Metric.LATENCY_BATCH_SIZE]:  # settings: params and tags now, metrics in old stores
        row[key] = stored_number(run.data, key)
    row.update({k: v for k, v in params.items() if k.startswith(SETTING)})
    row.update({k: v for k, v in metrics.items() if is_sparsity_metric(k)})
    if row["prune_rule"] is None and Param.TARGET_FLOPS in params:  # runs before the identity tags
        value = params[Param.TARGET_FLOPS]
        if value not in ("None", ""):
            row["prune_rule"], row["prune_value"] = TARGET_RULE, value
    return row


def tidy(frame: pd.DataFrame) -> pd.DataFrame:
    """Every column of COLUMNS with its dtype; ``target`` is the requested FLOPs reduction (NaN when
    the rule was another or the run is dense), ``plan`` the named plan (None unless the rule was a plan)."""
    frame = frame.copy()
    for column in COLUMNS:
        if column not in frame:
            frame[column] = None
    for column in [*METRICS, "start_time", "latency_batch_size"]:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame["seed"] = pd.to_numeric(frame["seed"], errors="coerce").astype("Int64")
    frame["trial"] = pd.to_numeric(frame["trial"], errors="coerce").astype("Int64")
    is_target = frame["prune_rule"] == TARGET_RULE
    frame["target"] = pd.to_numeric(frame["prune_value"].where(is_target), errors="coerce")
    frame["plan"] = frame["prune_value"].where(frame["prune_rule"] == PLAN_RULE)
    frame["protocol"] = frame["protocol"].where(frame["protocol"].notna(), stand_in_protocol(frame))
    settings = setting_columns(frame)
    for column in settings:
        frame[column] = frame[column].map(setting_text).astype(object)
    sparsity = sparsity_columns(frame)
    for column in sparsity:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    # chronological inside a group, so methods appear in the order they were run (as bench run lists them)
    ordered = frame[COLUMNS + settings + sparsity].copy()  # one block per dtype: later assigns stay fast
    return ordered.sort_values(["model", "dataset", "start_time"], kind="stable", ignore_index=True)


def stand_in_protocol(frame: pd.DataFrame) -> pd.Series:
    """The digest of runs logged without one: ``cfg:<parent's config hash>``, ``run:<parent id>`` or
    ``unknown:<prune rule>=<value>``; it splits runs of different commands (and pruning targets) and
    pools only reruns of one config."""
    rule = "unknown:" + frame["prune_rule"].astype(object).astype(str) + "=" + frame["prune_value"].astype(str)
    by_parent = ("run:" + frame["parent_id"].astype(object).astype(str)).where(frame["parent_id"].notna(), rule)
    by_config = "cfg:" + frame["config_hash"].astype(object).astype(str)
    return by_config.where(frame["config_hash"].notna(), by_parent).astype(object)


def setting_columns(frame: pd.DataFrame) -> list[str]:
    """The ``protocol.<key>`` columns of ``frame``, sorted."""
    return sorted(c for c in frame.columns if str(c).startswith(SETTING))


def sparsity_columns(frame: pd.DataFrame) -> list[str]:
    """The sparsity-curve columns (``sparsity/structured_folded_eps_1e-02``: a fraction in [0, 1])."""
    return sorted(c for c in frame.columns if is_sparsity_metric(str(c)))


def setting_text(value: Any) -> str | None:
    """A setting as text; None for a missing value or MLflow's "None" (an unset setting)."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)) or value == "None":
        return None
    return str(value)


def group_column(frame: pd.DataFrame, key: str) -> str:
    """The column of ``--group-by`` key ``key``: a run column (model, target, ...) or a protocol
    setting (``dense.epochs`` or ``protocol.dense.epochs``); BenchError naming the valid keys."""
    if key in GROUP_KEYS:
        return key
    for column in (f"{SETTING}{key}", key):
        if column.startswith(SETTING) and column in frame.columns:
            return column
    valid = sorted({*GROUP_KEYS, *(c.removeprefix(SETTING) for c in setting_columns(frame))})
    hint = closest(key, valid)
    suggestion = f" Did you mean '{hint}'?" if hint else ""
    raise BenchError(
        f"cannot group by '{key}': no such column or protocol setting in the selected runs.{suggestion} "
        f"Valid keys: {', '.join(valid)}."
    )


EXPORT_REQUIRED = ("run_id", "method", "seed", "model", "dataset", "test_acc")  # what every row of a table needs


def load_export(path: str | Path) -> pd.DataFrame:
    """Runs exported earlier with :func:`save_export` (``.csv`` or ``.parquet``); a file without the
    run columns (another tool's CSV) is refused rather than read as an empty table."""
    path = Path(path)
    if not path.exists():
        raise BenchError(f"no export file {path}")
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
    elif path.suffix == ".csv":
        settings = setting_columns(pd.read_csv(path, nrows=0))  # text, as MLflow stores them: "4", not 4.0
        text = ["run_id", "parent_id", "git_sha", "protocol", "config_hash", *settings]
        frame = pd.read_csv(path, dtype=dict.fromkeys(text, str))
    else:
        raise BenchError(f"export {path}: use a .csv or .parquet file")
    missing = [c for c in EXPORT_REQUIRED if c not in frame.columns]
    if missing:
        raise BenchError(
            f"{path.name} is not a bench export: it lacks {', '.join(missing)} (write one with "
            f"'bench report --export FILE'); its columns: {', '.join(map(str, frame.columns[:8]))}"
        )
    return tidy(frame)


def save_export(frame: pd.DataFrame, path: str | Path) -> None:
    """``frame`` as ``.parquet`` or CSV at ``path`` (its folder is created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)


def read_artifact(uri: str, run_id: str, name: str) -> Any | None:
    """A run's JSON artifact (plans.json, sparsity.json), parsed; None when it has none."""
    return _store(uri).find_json(run_id, name)
