"""The first use of a fresh Optuna storage from several processes (or machines) at once, and the
study's metric names.

Optuna creates a fresh database's tables on first use; two processes doing that at once failed
(sqlite: ``table study_directions already exists``; PostgreSQL: ``UniqueViolation ...
pg_type_typname_nsp_index``), so two machines starting the same ``bench sweep`` on a fresh
PostgreSQL database ended with one exiting 2. Here real processes, released together by a file
barrier after their imports, open the study through ``bench.sweeps.open_study`` (what the sweep
command and every worker call) on one fresh database; all must succeed and see one study.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import optuna
import pytest
from test_store_race import outcomes, start_together

from bench.sweeps.spec import SweepSpec
from bench.sweeps.storage import metric_names, normalize_storage_url, open_study

PROCESSES = 4

OPEN_STUDY_IMPORTS = """
import json, sys
from bench.sweeps.spec import SweepSpec
from bench.sweeps.storage import open_study
storage = sys.argv[3]
spec = SweepSpec(study="race", storage=storage, kind="search", base={}, method="l1", trials=2,
                 objectives=("acc", "flops"))
"""
OPEN_STUDY = """
study = open_study(spec)
print(json.dumps([study._study_id, study.metric_names]))
"""


def _race(storage: str, tmp_path: Path) -> None:
    """``PROCESSES`` processes open the study on ``storage`` at once: all succeed and see one study."""
    ended = outcomes(start_together(OPEN_STUDY_IMPORTS, OPEN_STUDY, [storage], tmp_path / "barrier", PROCESSES))
    assert [rc for rc, _, _ in ended] == [0] * PROCESSES, ended
    seen = {out for _, out, _ in ended}
    assert len(seen) == 1, f"one study for all: {seen}"
    assert json.loads(seen.pop())[1] == ["best_val_acc", "flops_reduction"]
    assert [s.study_name for s in optuna.get_all_study_summaries(normalize_storage_url(storage))] == ["race"]


@pytest.mark.slow
def test_processes_opening_a_fresh_sqlite_storage_at_once_all_join_one_study(tmp_path: Path) -> None:
    _race(f"sqlite:///{tmp_path / 'results' / 'optuna.db'}", tmp_path)
    assert (tmp_path / "results" / "optuna.db.lock").is_file()


@pytest.mark.slow
@pytest.mark.server
def test_processes_opening_a_fresh_postgresql_database_at_once_all_join_one_study(
    tmp_path: Path, postgres_db: str
) -> None:
    """Machines sharing one fresh PostgreSQL database (``postgres_db``: created for this test): the
    advisory lock serialises the schema creation."""
    _race(postgres_db, tmp_path)


def _spec(storage: str, objectives: tuple[str, ...]) -> SweepSpec:
    return SweepSpec(
        study="named", storage=storage, kind="search", base={}, method="l1", objectives=objectives, trials=1
    )


def test_a_study_names_its_objectives_once_and_an_old_study_is_named_when_joined(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    old = optuna.create_study(study_name="named", storage=storage, directions=["maximize"])  # before issue 14
    assert old.metric_names is None
    spec = _spec(storage, ("acc",))
    assert open_study(spec).metric_names == metric_names(spec) == ["best_val_acc"]
    assert open_study(spec).metric_names == ["best_val_acc"]  # joined again: unchanged
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        assert optuna.load_study(study_name="named", storage=storage).metric_names == ["best_val_acc"]
    pareto = _spec(f"sqlite:///{tmp_path / 'pareto.db'}", ("acc", "flops"))
    assert open_study(pareto).metric_names == ["best_val_acc", "flops_reduction"]
