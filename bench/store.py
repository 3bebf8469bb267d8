"""The one MLflow reader: runs, their nested runs and their JSON artifacts, from any tracking URI.

Torch-free (mlflow only), so ``reports`` and ``bench sparsity`` read through it as well as the
runner (the scratch control's ``run:<id>`` source), sweeps and ``bench.tracking.Tracker`` (which
writes, and looks its own runs up here). Every search follows MLflow's pagination: a page holds
at most ``PAGE_SIZE`` runs, and a sweep or a long experiment holds more.

Read-only: :meth:`Store.open` refuses a missing sqlite file (MLflow would create an empty store)
and an unreachable server (MLflow's client would retry for minutes).
"""

from __future__ import annotations

import json
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlflow.entities import Experiment, Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from bench.dblock import sqlite_file
from bench.errors import BenchError, first_line
from bench.schema import PARENT_TAG

ENV_URI = "MLFLOW_TRACKING_URI"
PAGE_SIZE = 1000  # runs per search request (MLflow's default page size)


class Store:
    """Read access to one MLflow tracking store; errors a user can cause are ``BenchError``."""

    def __init__(self, uri: str, client: MlflowClient) -> None:
        """Wrap an open client; readers use :meth:`open`, the writer passes its own client. MLflow's
        download bars are off unless the user set ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR``: a bar per
        small JSON or weight file read back (``bench.load_pruned``, reports) drowns the output. Every store
        access goes through here (``Tracker`` opens one too), so this is the one place that sets it."""
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        self.uri = uri
        self.client = client

    @classmethod
    def open(cls, uri: str) -> Store:
        """Open ``uri`` for reading: a missing sqlite file, a dead server or a bad URI is a BenchError."""
        db = sqlite_path(uri)
        if db is not None and not db.exists():
            raise BenchError(f"no MLflow store at {uri} (file missing); pass --tracking-uri or --results-dir")
        if uri.startswith(("http://", "https://")):
            check_server(uri)
        try:
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)  # MLflow opens the store lazily: fail here, not later
        except Exception as exc:  # store construction: every failure here is a bad URI or store
            raise open_error(uri, exc) from exc
        return cls(uri, client)

    # ------------------------------------------------------------------------------------- runs

    def experiment(self, name: str) -> Experiment:
        """The experiment called ``name``; BenchError listing the store's experiments when there is none."""
        found = self.client.get_experiment_by_name(name)
        if found is None:
            names = ", ".join(e.name for e in self.client.search_experiments()) or "none"
            raise BenchError(f"no MLflow experiment '{name}' at {self.uri}; experiments: {names}")
        return found

    def search(
        self, experiment_ids: Sequence[str], query: str = "", order_by: Sequence[str] | None = None
    ) -> list[Run]:
        """Every active run of the experiments matching the MLflow filter ``query``, all pages."""
        found: list[Run] = []
        token: str | None = None
        while True:
            page = self.client.search_runs(
                list(experiment_ids),
                query,
                max_results=PAGE_SIZE,
                order_by=list(order_by) if order_by else None,
                page_token=token,
            )
            found.extend(page)
            token = page.token
            if not token:
                return found

    def get_run(self, run_id: str) -> Run:
        """The run with this id; BenchError when the store has none."""
        try:
            return self.client.get_run(run_id)
        except MlflowException as exc:
            raise BenchError(f"no MLflow run '{run_id}' at {self.uri}; pass --tracking-uri or --results-dir") from exc

    def children(self, parent: Run | str, order_by: Sequence[str] | None = None) -> list[Run]:
        """The runs nested under ``parent`` (a run or its id), in its experiment; MLflow's order by default."""
        run = parent if isinstance(parent, Run) else self.get_run(parent)
        query = f"tags.`{PARENT_TAG}` = {quote(run.info.run_id)}"
        return self.search([run.info.experiment_id], query, order_by)

    def expand(self, run_id: str) -> list[Run]:
        """A parent's nested runs, or the run itself when it has none."""
        run = self.get_run(run_id)
        return self.children(run) or [run]

    # -------------------------------------------------------------------------------- artifacts

    def artifacts(self, run_id: str, folder: str | None = None) -> set[str]:
        """Paths of the run's artifacts directly in ``folder`` (the root by default)."""
        return {a.path for a in self.client.list_artifacts(run_id, folder)}

    def read_json(self, run_id: str, name: str) -> Any:
        """A JSON artifact of the run, parsed; BenchError naming the run's artifacts when it is missing."""
        present = self.artifacts(run_id, _folder(name))
        if name not in present:
            listed = ", ".join(sorted(present)) or "none"
            raise BenchError(f"MLflow run '{run_id}' has no artifact '{name}' (it has: {listed})")
        return self._download_json(run_id, name)

    def find_json(self, run_id: str, name: str) -> Any | None:
        """A JSON artifact of the run, parsed; None when the run has none (older runs lack some)."""
        if name not in self.artifacts(run_id, _folder(name)):
            return None
        return self._download_json(run_id, name)

    def _download_json(self, run_id: str, name: str) -> Any:
        with tempfile.TemporaryDirectory() as tmp:
            return json.loads(Path(self.client.download_artifacts(run_id, name, tmp)).read_text())


def _folder(name: str) -> str | None:
    """The artifact folder of ``name`` (None for the root), the argument ``list_artifacts`` takes."""
    return name.rpartition("/")[0] or None


# --- URIs ----------------------------------------------------------------------------------------


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI; None for other schemes and in-memory databases."""
    return sqlite_file(uri)  # "sqlite://" (no third slash) is SQLAlchemy's in-memory form: None


def check_server(uri: str, timeout_s: float = 10.0) -> None:
    """Fail fast on an unreachable server: MLflow's own client retries for minutes before failing."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        return  # the server answered (perhaps 401 behind auth): it is reachable
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise BenchError(
            f"the MLflow server {uri} is not reachable ({reason}); start it, or fix --tracking-uri (or ${ENV_URI})"
        ) from exc


def open_error(uri: str, exc: BaseException) -> BenchError:
    """The one-line error for a store MLflow cannot open (a bad scheme, a broken database)."""
    return BenchError(
        f"cannot open the MLflow tracking store {uri!r}: {first_line(exc)}; use sqlite:///<file>.db, "
        f"a directory, or http(s)://host:port via --tracking-uri (or ${ENV_URI})"
    )


def quote(value: str) -> str:
    """Quote a value for an MLflow search filter; rejects quotes, which the filter grammar can't escape."""
    if any(ch in value for ch in "'\"\\"):
        raise ValueError(f"run keys and ids must not contain quotes or backslashes: {value!r}")
    return f"'{value}'"


__all__ = ["ENV_URI", "PAGE_SIZE", "Store", "check_server", "open_error", "quote", "sqlite_path"]
