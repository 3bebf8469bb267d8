"""One process at a time creates a database's schema: the first use of an MLflow or Optuna store.

Neither MLflow nor Optuna makes its first use safe when several processes do it at once: MLflow's
alembic migrations of a fresh sqlite file fail with ``table _alembic_tmp_... already exists``,
``duplicate column name: step`` or ``Online migration expected to match one row``; Optuna's
``create_all`` of a fresh database fails with ``table ... already exists`` on sqlite and with
``UniqueViolation ... pg_type_typname_nsp_index`` on PostgreSQL (two sessions creating one table).
So opening a store (the schema creation, and the get-or-create of its experiment or study) runs
under :func:`schema_lock`:

- sqlite: ``fcntl.flock`` on ``<database>.lock`` beside the file (sqlite is local to one machine);
- PostgreSQL: a session-level advisory lock (``pg_advisory_lock``) on a fixed key, taken on a
  connection of its own, so every machine that shares the database waits its turn;
- anything else (an MLflow server, MySQL): no lock; an MLflow server migrates its store itself.

The lock is re-entrant within a thread (a nested ``schema_lock`` of the same database is free), and
the holder's death releases it (the kernel drops the flock; PostgreSQL ends the session).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from bench.paths import exclusive_lock

ADVISORY_KEY = 0x62656E6368  # "bench" in ASCII: the pg_advisory_lock key of schema creation
CONNECT_TIMEOUT_S = 30  # a PostgreSQL server that does not answer in 30 s is down, not busy
_HELD = threading.local()  # lock id -> depth, per thread: re-entrancy without self-deadlock


def lock_file(db: Path) -> Path:
    """The lock file of an sqlite database: ``mlflow.db`` -> ``mlflow.db.lock``."""
    return db.with_name(db.name + ".lock")


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL; None for other schemes and in-memory databases."""
    if not url.startswith("sqlite:///"):
        return None
    raw = url.removeprefix("sqlite:///").split("?", 1)[0]
    return None if raw in ("", ":memory:") else Path(raw).expanduser().resolve()


def is_postgres(url: str) -> bool:
    """``postgresql://``, ``postgres://`` and SQLAlchemy's ``postgresql+<driver>://``."""
    return url.split("://", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


@contextmanager
def schema_lock(url: str) -> Iterator[None]:
    """Hold the first-use lock of the database at ``url`` (see the module docstring)."""
    db = sqlite_file(url)
    if db is not None:
        with file_lock(lock_file(db)):
            yield
    elif is_postgres(url):
        with _reentrant(url, lambda: advisory_lock(url)):
            yield
    else:
        yield


def file_lock(path: Path) -> AbstractContextManager[None]:
    """An exclusive ``flock`` on ``path`` that this thread may take again while it holds it."""
    return _reentrant(str(path), lambda: exclusive_lock(path))


@contextmanager
def _reentrant(lock_id: str, acquire: Callable[[], AbstractContextManager[None]]) -> Iterator[None]:
    """Take ``acquire()`` unless this thread holds ``lock_id`` already."""
    held: dict[str, int] = _HELD.__dict__.setdefault("depth", {})
    if held.get(lock_id):
        held[lock_id] += 1
        try:
            yield
        finally:
            held[lock_id] -= 1
        return
    with acquire():
        held[lock_id] = 1
        try:
            yield
        finally:
            held.pop(lock_id, None)


@contextmanager
def advisory_lock(url: str) -> Iterator[None]:
    """``pg_advisory_lock(ADVISORY_KEY)`` on a connection of its own (psycopg 3), released on exit.
    Advisory locks are per database, so stores in other databases of the server do not wait."""
    import psycopg

    with psycopg.connect(libpq_url(url), autocommit=True, connect_timeout=CONNECT_TIMEOUT_S) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_KEY,))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_KEY,))


def libpq_url(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as libpq takes it: ``postgresql+psycopg://u@h/db`` -> ``postgresql://u@h/db``."""
    return "postgresql://" + url.split("://", 1)[1]
