"""The MLflow writer: a thin layer over ``MlflowClient`` with explicit run ids.

Why not the fluent API (``mlflow.start_run``): it keeps one global active run per process, which
makes nested runs (a method run under a sweep or a comparison) and resuming a killed run implicit
and order-dependent. Every call here names its run id instead.

Why run keys: a run is identified by the caller's ``key`` (for example the resolved config's hash)
in the ``bench.key`` tag. Starting the same key again after a kill reuses the unfinished MLflow run
instead of leaving a dead duplicate next to a new one, so the store holds one run per piece of work.

Reading goes through ``bench.store`` (the one MLflow reader): ``Tracker.store`` is a ``Store`` on the
same client, which the look-ups here (``find_finished``, ``get_run``, ``read_json``) use. Tag names
come from ``bench.schema``.

Nothing left open: ``Tracker.ended_on_failure`` ends a run FAILED or KILLED with the reason when
its body raises, and every run a process starts is remembered until it ends, so the CLI's safety
net (``bench.lifecycle``) ends, through ``end_open_runs``, whatever a command left open when it fails.

Stores: the default is an embedded sqlite database under ``results/`` with artifacts beside it in
``results/mlartifacts``. A team points ``--tracking-uri`` (or ``MLFLOW_TRACKING_URI``) at an MLflow
server, which then decides where artifacts go.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import (
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from bench import provenance
from bench.dblock import schema_lock
from bench.errors import BenchError, EarlyStop
from bench.schema import PARENT_TAG, Tag
from bench.store import ENV_URI, Store, check_server, open_error, quote, sqlite_path

if TYPE_CHECKING:
    import pandas as pd

DB_FILE = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
KEY_TAG = Tag.KEY
RESUMES_TAG = Tag.RESUMES

EndStatus = Literal["FINISHED", "FAILED", "KILLED"]
EarlyEnd = Literal["FAILED", "KILLED"]  # how a run stopped before its end ends
_END_STATUSES = ("FINISHED", "FAILED", "KILLED")
_TRUNCATED = "...[truncated]"
_REASON_TAG: dict[str, str] = {"FAILED": Tag.ERROR, "KILLED": Tag.STOPPED}  # where an early end says why
_REASON_CHARS = 500  # a repr is enough to tell what stopped the run; the CLI prints the rest
_T = TypeVar("_T")


def default_tracking_uri(results_dir: Path) -> str:
    """The embedded store: ``sqlite:///<absolute results_dir>/mlflow.db``."""
    return f"sqlite:///{Path(results_dir).expanduser().resolve() / DB_FILE}"


def resolve_tracking_uri(uri: str | None, results_dir: Path) -> str:
    """Pick the store: explicit ``--tracking-uri``, then ``$MLFLOW_TRACKING_URI``, then the default."""
    return uri or os.environ.get(ENV_URI) or default_tracking_uri(results_dir)


def flatten(params: Mapping[str, Any] | Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings (and dataclass instances) into dotted keys: ``{"dense.epochs": 160}``.

    MLflow params are a flat string map; dotted keys keep the config's structure readable and
    searchable (``params."dense.epochs" = '160'``).
    """
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        params = dataclasses.asdict(params)
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        nested = isinstance(value, Mapping) or (dataclasses.is_dataclass(value) and not isinstance(value, type))
        if nested and value:
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = value
    return flat


def ending(exc: BaseException) -> EarlyEnd:
    """How a run stopped by ``exc`` ends: KILLED when stopped on purpose (Ctrl-C, SIGTERM, an early
    stopped trial), FAILED for anything else."""
    return "KILLED" if isinstance(exc, KeyboardInterrupt | EarlyStop) else "FAILED"


def open_runs() -> frozenset[str]:
    """Ids of the runs this process started (or reopened) and has not ended."""
    return frozenset(_OPEN)


def end_open_runs(status: EarlyEnd, reason: str, *, keep: Collection[str] = ()) -> list[str]:
    """End every run this process left open, except ``keep``, with ``status`` and ``reason``: the
    safety net for a run opened by a code path without its own ``ended_on_failure``. Returns their ids."""
    ended = [run_id for run_id in list(_OPEN) if run_id not in keep]
    for run_id in ended:
        _OPEN[run_id].end_with_reason(run_id, status, reason)
    return ended


def _truncate(value: str, limit: int) -> str:
    """Cut ``value`` to ``limit`` characters with a visible marker (MLflow rejects longer values)."""
    return value if len(value) <= limit else value[: limit - len(_TRUNCATED)] + _TRUNCATED


def _chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@contextmanager
def quiet_logger(name: str, level: int = logging.WARNING) -> Iterator[None]:
    """Records of logger ``name`` below ``level`` hidden for the block (its level restored after)."""
    log = logging.getLogger(name)
    before = log.level
    log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(before)


def _check_writable(db: Path, uri: str) -> None:
    """Fail with a one-line hint before MLflow turns an unwritable path into a SQLAlchemy traceback."""
    fix = f"make it writable, or point --tracking-uri (or ${ENV_URI}) at another store"
    directory = db.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise BenchError(f"cannot create the tracking directory {directory} for {uri} ({reason}); {fix}") from exc
    if not os.access(directory, os.W_OK | os.X_OK):
        raise BenchError(f"the tracking directory {directory} is not writable (store {uri}); {fix}")
    if db.exists() and not os.access(db, os.R_OK | os.W_OK):
        raise BenchError(f"the tracking database {db} is not writable; {fix}")


_OPEN: dict[str, Tracker] = {}  # run id -> the Tracker that started or reopened it and has not ended it


class Tracker:
    """One MLflow experiment in one store, addressed by explicit run ids.

    Opening the store (MLflow creates and migrates a fresh database's schema on first use) and
    getting or creating the experiment run under ``bench.dblock.schema_lock``: concurrent
    first-time migrations race, so any number of processes (``bench run`` commands started at
    once on a fresh results dir, sweep workers) may construct a ``Tracker`` on the same store.
    """

    def __init__(self, uri: str, experiment: str) -> None:
        self.uri = uri
        self.experiment_name = experiment
        db = sqlite_path(uri)
        if db is not None:
            _check_writable(db, uri)
        elif uri.startswith(("http://", "https://")):
            check_server(uri)
        try:
            # MLflow's INFO lines while it creates a store ("Creating initial MLflow database tables")
            with schema_lock(uri), quiet_logger("mlflow.store.db.utils"):
                self.client = MlflowClient(tracking_uri=uri)
                self.experiment_id = self._ensure_experiment(db)
        except BenchError:
            raise
        except Exception as exc:  # store construction: every failure here is a bad URI or store
            raise open_error(uri, exc) from exc
        self.store = Store(uri, self.client)  # the reader, on the same client

    def _ensure_experiment(self, db: Path | None) -> str:
        """Get or create the experiment; a local sqlite store keeps its artifacts beside the DB."""
        found = self.client.get_experiment_by_name(self.experiment_name)
        if found is None:
            location = (db.parent / ARTIFACT_DIR).as_uri() if db is not None else None
            try:
                return self.client.create_experiment(self.experiment_name, artifact_location=location)
            except MlflowException:  # another process created it between get and create
                found = self.client.get_experiment_by_name(self.experiment_name)
                if found is None:
                    raise
        if found.lifecycle_stage != "active":
            raise BenchError(
                f"MLflow experiment '{self.experiment_name}' (id {found.experiment_id}) is deleted in "
                f"{self.uri}; restore it with `mlflow experiments restore --experiment-id "
                f"{found.experiment_id}` or choose another experiment name"
            )
        return found.experiment_id

    # ----------------------------------------------------------------------------------- runs

    def start_run(
        self,
        name: str,
        *,
        parent_id: str | None = None,
        key: str,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Start the run for ``key`` under ``parent_id``, or resume its unfinished one; either way the
        run gets ``tags`` and MLflow's standard source tags (git commit, entry point, user).

        An unfinished run (RUNNING, FAILED, KILLED: an invocation that was killed or crashed) with the
        same key and parent is set RUNNING again and returned, so a rerun after a kill never leaves a
        duplicate. A FINISHED run with the key does not block a new run: that is a deliberate repeat.
        """
        tags = {**provenance.source_tags(), **(tags or {})}  # MLflow's source tags on every run
        unfinished = [r for r in self._runs_with_key(key, parent_id) if r.info.status != "FINISHED"]
        if unfinished:
            run = unfinished[0]  # newest first
            run_id = run.info.run_id
            resumes = int(run.data.tags.get(RESUMES_TAG, "0")) + 1
            self.client.update_run(run_id, status="RUNNING")
            _OPEN[run_id] = self
            self.set_tags(run_id, {**tags, RESUMES_TAG: str(resumes)})
            return run_id
        tags[KEY_TAG] = key
        if parent_id is not None:
            tags[PARENT_TAG] = parent_id
        run_id = self.client.create_run(self.experiment_id, tags=tags, run_name=name).info.run_id
        _OPEN[run_id] = self
        return run_id

    def find_finished(self, key: str, *, parent_id: str | None = None) -> str | None:
        """The newest FINISHED run with ``key`` under ``parent_id``, or None: lets callers skip work."""
        finished = [r for r in self._runs_with_key(key, parent_id) if r.info.status == "FINISHED"]
        return finished[0].info.run_id if finished else None

    def _runs_with_key(self, key: str, parent_id: str | None) -> list[Run]:
        """Active (not deleted) runs with the key and exactly this parent, newest first."""
        query = f"tags.`{KEY_TAG}` = {quote(key)}"
        if parent_id is not None:
            query += f" and tags.`{PARENT_TAG}` = {quote(parent_id)}"
        runs = self.store.search([self.experiment_id], query, order_by=["attributes.start_time DESC"])
        return [r for r in runs if r.data.tags.get(PARENT_TAG) == parent_id]

    def reopen(self, run_id: str) -> None:
        """Mark a run RUNNING again (a sweep that is extended or joined by another machine)."""
        self.get_run(run_id)
        self.client.update_run(run_id, status="RUNNING")
        _OPEN[run_id] = self

    def end_run(self, run_id: str, status: EndStatus = "FINISHED") -> None:
        """Mark the run terminated; a run left RUNNING or FAILED/KILLED is resumable by its key."""
        if status not in _END_STATUSES:
            raise ValueError(f"end status must be one of {', '.join(_END_STATUSES)}, got {status!r}")
        self.client.set_terminated(run_id, status=status)
        _OPEN.pop(run_id, None)

    def end_with_reason(self, run_id: str, status: EarlyEnd, reason: str) -> None:
        """End a run early, FAILED or KILLED, with ``reason`` in ``bench.error`` or ``bench.stopped``.
        Best effort: the store may be what failed, and the caller's exception matters more than ours."""
        with suppress(Exception):
            self.set_tags(run_id, {_REASON_TAG[status]: reason[:_REASON_CHARS]})
        with suppress(Exception):
            self.end_run(run_id, status)

    @contextmanager
    def ended_on_failure(self, run_id: str) -> Iterator[None]:
        """Whatever stops the body (an error, Ctrl-C, SIGTERM, an early stop) ends ``run_id`` KILLED or
        FAILED (``ending``) with the exception's repr as the reason, then propagates."""
        try:
            yield
        except BaseException as exc:
            self.end_with_reason(run_id, ending(exc), repr(exc))
            raise

    # ------------------------------------------------------------------------- params and tags

    def log_params(self, run_id: str, params: Mapping[str, Any] | Any) -> None:
        """Log (nested) params as flat strings; re-logging identical values on resume is a no-op.

        MLflow refuses to change a param's value. A different value for a key the run already has
        means the config changed between the killed invocation and this one, so that is an error
        rather than a silent mix of two configs in one run.
        """
        flat = {k: _truncate(str(v), MAX_PARAM_VAL_LENGTH) for k, v in flatten(params).items()}
        existing = self.client.get_run(run_id).data.params
        changed = {k: (existing[k], v) for k, v in flat.items() if k in existing and existing[k] != v}
        if changed:
            shown = "; ".join(f"{k}: logged {old!r}, now {new!r}" for k, (old, new) in changed.items())
            raise BenchError(
                f"run {run_id} already has different values for {len(changed)} param(s) ({shown}); "
                "the config changed since this run started: restore it, or use a new run key"
            )
        new = [Param(k, v) for k, v in flat.items() if k not in existing]
        for chunk in _chunks(new, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(run_id, params=chunk)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Set string tags (overwriting), in batches of MLflow's per-request limit."""
        items = [RunTag(k, _truncate(str(v), MAX_TAG_VAL_LENGTH)) for k, v in tags.items()]
        for chunk in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(run_id, tags=chunk)

    # --------------------------------------------------------------------------------- metrics

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log one step's metrics in ``log_batch`` requests of at most 1000 metrics."""
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        for chunk in _chunks(batch, MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=chunk)

    # ------------------------------------------------------------------------------- artifacts

    def log_dict(self, run_id: str, obj: Any, artifact_file: str) -> None:
        """Store a JSON (or YAML, by extension) artifact, e.g. the resolved config or the plan."""
        self.client.log_dict(run_id, obj, artifact_file)

    def log_artifact(self, run_id: str, local_path: Path | str, artifact_path: str | None = None) -> None:
        """Upload a file, or a directory's contents, under ``artifact_path`` of the run."""
        path = Path(local_path)
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(run_id, str(path), artifact_path)

    def log_table(self, run_id: str, df: pd.DataFrame, artifact_file: str) -> None:
        """Store a DataFrame as an MLflow table artifact (``.json`` or ``.parquet``), replacing it.

        MLflow's ``log_table`` appends to an existing artifact of the same name. A resumed run
        re-logs its tables, and appending would duplicate their rows, so an existing table is
        overwritten in MLflow's own format (pandas ``split`` JSON or parquet) instead.
        """
        directory, _, filename = artifact_file.rpartition("/")
        if artifact_file not in self.store.artifacts(run_id, directory or None):
            self.client.log_table(run_id, data=df, artifact_file=artifact_file)
            return
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / filename
            if filename.endswith(".parquet"):
                df.to_parquet(local, index=False)
            else:
                df.to_json(local, orient="split", index=False, date_format="iso")
            self.client.log_artifact(run_id, str(local), directory or None)

    # ------------------------------------------------------------------- reading (via the store)

    def get_run(self, run_id: str) -> Run:
        """The run with this id in this store; BenchError when there is none."""
        return self.store.get_run(run_id)

    def read_json(self, run_id: str, artifact_file: str) -> Any:
        """A JSON artifact of the run, parsed; BenchError naming the run's artifacts when it is missing."""
        return self.store.read_json(run_id, artifact_file)


__all__ = [
    "ARTIFACT_DIR",
    "KEY_TAG",
    "PARENT_TAG",
    "RESUMES_TAG",
    "Tracker",
    "default_tracking_uri",
    "end_open_runs",
    "ending",
    "flatten",
    "open_runs",
    "resolve_tracking_uri",
]
