"""Stored runs as one tidy table, from MLflow (any tracking URI) or from a CSV/Parquet export.

One row per finished run of a method or of the dense baseline: what ``bench run`` and ``bench
sweep`` logged, read back, never recomputed, and never through torch. Older runs that lack the
per-run identity tags (model, dataset) take them from their parent run.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from bench.errors import BenchError

METRICS = [
    "test_acc",
    "best_val_acc",
    "params",
    "macs",
    "dense_test_acc",
    "dense_params",
    "dense_macs",
    "flops_reduction",
    "params_reduction",
    "train_epochs",
    "latency_median_ms",
    "latency_iqr_ms",
]
TAGS = {  # column -> tag
    "method": "bench.method",
    "seed": "bench.seed",
    "model": "bench.model",
    "dataset": "bench.dataset",
    "data_label": "bench.data_label",
    "prune_rule": "bench.prune_rule",
    "prune_value": "bench.prune_value",
    "baseline_key": "bench.baseline_key",
    "plan_source": "bench.plan_source",
    "study": "optuna.study",
    "trial": "optuna.trial",
    "latency_batch_size": "bench.latency_batch_size",
    "latency_device": "bench.latency_device",
    "git_sha": "env.git_sha",
    "git_dirty": "env.git_dirty",
    "device": "env.device",
    "torch": "env.torch",
    "cuda": "env.cuda",
    "python": "env.python",
    "mlflow": "env.mlflow",
}
COLUMNS = ["run_id", "parent_id", "experiment", *TAGS, *METRICS, "target", "start_time"]
PARENT_TAG = "mlflow.parentRunId"


def load_mlflow(
    uri: str, *, experiment: str | None = None, sweep: str | None = None, run_ids: Iterable[str] = ()
) -> pd.DataFrame:
    """Finished method and dense runs: of ``run_ids`` (a parent id stands for its children), of the
    sweep (Optuna study) named ``sweep``, or of the whole ``experiment`` (default "bench")."""
    client = _client(uri)
    ids = list(run_ids)
    if ids:
        runs = [r for run_id in ids for r in _expand(client, run_id)]
    else:
        exp = _experiment(client, uri, experiment or "bench")
        runs = _search(client, [exp.experiment_id], "attributes.status = 'FINISHED'")
        if sweep is not None:
            parents = [r for r in runs if r.data.tags.get("optuna.study") == sweep and PARENT_TAG not in r.data.tags]
            if not parents:
                raise BenchError(f"no sweep '{sweep}' in experiment '{exp.name}' at {uri}")
            wanted = {p.info.run_id for p in parents}
            runs = [r for r in runs if r.data.tags.get(PARENT_TAG) in wanted]
    parents = {}
    rows = []
    for run in runs:
        if "bench.method" not in run.data.tags or run.info.status != "FINISHED":
            continue
        parent_id = run.data.tags.get(PARENT_TAG)
        if parent_id and parent_id not in parents:
            parents[parent_id] = client.get_run(parent_id).data.tags
        rows.append(_row(run, parents.get(parent_id, {})))
    if not rows:
        raise BenchError(f"no finished bench runs found at {uri} for the given selection")
    return tidy(pd.DataFrame(rows))


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        if not path.exists():
            raise BenchError(f"no MLflow store at {uri} (file missing); pass --tracking-uri or --results-dir")
    return MlflowClient(tracking_uri=uri)


def _experiment(client, uri: str, name: str):
    exp = client.get_experiment_by_name(name)
    if exp is None:
        names = ", ".join(e.name for e in client.search_experiments()) or "none"
        raise BenchError(f"no MLflow experiment '{name}' at {uri}; experiments: {names}")
    return exp


def _expand(client, run_id: str) -> list:
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise BenchError(f"no MLflow run '{run_id}' at {client.tracking_uri}") from exc
    children = _search(client, [run.info.experiment_id], f"tags.`{PARENT_TAG}` = '{run_id}'")
    return children or [run]


def _search(client, experiment_ids: list[str], query: str) -> list:
    found, token = [], None
    while True:
        page = client.search_runs(experiment_ids, query, max_results=1000, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            return found


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
    for metric in METRICS:
        row[metric] = metrics.get(metric)
    if row["prune_rule"] is None and "prune.target_flops_reduction" in params:  # runs before the identity tags
        value = params["prune.target_flops_reduction"]
        if value not in ("None", ""):
            row["prune_rule"], row["prune_value"] = "target_flops_reduction", value
    return row


def tidy(frame: pd.DataFrame) -> pd.DataFrame:
    """Every column of COLUMNS with its dtype; ``target`` is the requested FLOPs reduction (NaN when
    the rule was another or the run is dense)."""
    frame = frame.copy()
    for column in COLUMNS:
        if column not in frame:
            frame[column] = None
    for column in [*METRICS, "start_time"]:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame["seed"] = pd.to_numeric(frame["seed"], errors="coerce").astype("Int64")
    frame["trial"] = pd.to_numeric(frame["trial"], errors="coerce").astype("Int64")
    is_target = frame["prune_rule"] == "target_flops_reduction"
    frame["target"] = pd.to_numeric(frame["prune_value"].where(is_target), errors="coerce")
    # chronological inside a group, so methods appear in the order they were run (as bench run lists them)
    return frame[COLUMNS].sort_values(["model", "dataset", "start_time"], kind="stable", ignore_index=True)


def load_export(path: str | Path) -> pd.DataFrame:
    """Runs exported earlier with :func:`save_export` (``.csv`` or ``.parquet``)."""
    path = Path(path)
    if not path.exists():
        raise BenchError(f"no export file {path}")
    if path.suffix == ".parquet":
        return tidy(pd.read_parquet(path))
    if path.suffix == ".csv":
        return tidy(pd.read_csv(path, dtype={"run_id": str, "parent_id": str, "git_sha": str}))
    raise BenchError(f"export {path}: use a .csv or .parquet file")


def save_export(frame: pd.DataFrame, path: str | Path) -> None:
    path = Path(path)
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)


def read_artifact(uri: str, run_id: str, name: str) -> Any | None:
    """A run's JSON artifact (plans.json, sparsity.json), parsed; None when it has none."""
    client = _client(uri)
    if name not in {a.path for a in client.list_artifacts(run_id)}:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(client.download_artifacts(run_id, name, tmp)).read_text())
