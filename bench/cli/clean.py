"""``bench clean``: report, and remove, what a results dir no longer needs.

Safe by default, in the manner of ``pip cache purge`` and ``docker system prune``:

- removed by default: the resume checkpoints (``*.ckpt``, ``r<k>-done.pt``) of finished runs and of
  complete cached baselines (a run deletes its own when it finishes; these are left by older
  versions or by a kill at the very end), the work dirs of runs no longer in MLflow (deleted there,
  or absent from the store the run recorded in ``runs/<id>/tracking_uri.txt``), baseline folders
  with neither weights nor a checkpoint, temporary files of interrupted atomic writes, and lock
  files that no process holds;
- kept unless asked: the checkpoints of runs that can still be resumed (their MLflow run KILLED or
  FAILED, a baseline cut short): ``--interrupted``; the decoded-image cache ``cache/``: ``--cache``;
- always kept: runs RUNNING in MLflow (in progress, or killed by SIGKILL: resume them), a baseline
  being trained (its lock is held), what a rerun reads back (``result.json``, ``plans.json``,
  ``model.pt``; a baseline's ``model.pt`` and ``meta.json``), and any file bench did not write.

Never touched: the MLflow store (``mlflow.db``, ``mlartifacts/``), ``reference/`` and ``studies/``.
``--dry-run`` prints the same report and removes nothing. Torch-free; mlflow is imported only when
there are work dirs to check.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.cli.common import add_command
from bench.errors import BenchError
from bench.paths import STORE_FILE, Paths, resume_files

NAME = "clean"
GRACE_S = 600  # a temporary or lock file touched this recently may belong to a running command
RUN_ID = re.compile(r"[0-9a-f]{32}")  # runs/<parent MLflow run id>/
WORK_DIR = re.compile(r"(?P<label>.+)-s(?P<seed>\d+)")  # runs/<id>/<method or trial>-s<seed>/
BASELINE_KEY = re.compile(r"[0-9a-f]{12}")  # baselines/<key>/ (bench.config.stable_hash)
TEMP_FILE = re.compile(r"\..+\.tmp")  # bench.atomic's temporary files: .<name>.<random>.tmp
RUN_FILES = frozenset({"result.json", "plans.json", "model.pt"})  # what a finished work dir keeps
RESULTS_ENTRIES = ("runs", "baselines", "cache", "mlflow.db", "mlartifacts")  # one marks a results dir
INTERRUPTED_HINT = "--interrupted removes it"


def add_parser(subparsers: Any) -> None:
    p = add_command(
        subparsers,
        NAME,
        "report and remove leftover checkpoints, orphaned work dirs, stale locks (and caches)",
        "examples:\n"
        "  python -m bench clean --dry-run              # what would go, and its size\n"
        "  python -m bench clean                        # remove what no run needs any more\n"
        "  python -m bench clean --interrupted --cache  # also unfinished runs' checkpoints and the image cache\n\n"
        "By default only what nothing needs goes: checkpoints of finished runs, work dirs of runs no longer\n"
        "in MLflow, stale temporary and lock files. The MLflow store (mlflow.db, mlartifacts/) is never\n"
        "touched. Run it while no bench command is running for the surest result.",
    )
    p.add_argument("--results-dir", default="results", help="the results dir to clean (default results/)")
    p.add_argument(
        "--tracking-uri",
        help="the MLflow store of work dirs that do not record theirs (default $MLFLOW_TRACKING_URI, "
        "else mlflow.db in the results dir)",
    )
    p.add_argument("--dry-run", action="store_true", help="only report what would be removed")
    p.add_argument(
        "--interrupted",
        action="store_true",
        help="also remove the checkpoints of runs that could still be resumed (KILLED or FAILED in MLflow)",
    )
    p.add_argument("--cache", action="store_true", help="also remove the decoded-image cache (cache/)")


@dataclass(frozen=True)
class Leftover:
    """Files, or one whole folder, that ``clean`` reports: why, whether they go, and their size."""

    where: Path  # the folder the files are in, or the folder removed whole
    files: tuple[Path, ...]  # the files that go; () when the whole folder goes
    why: str
    remove: bool = True
    size: int = 0  # bytes
    lock: Path | None = None  # removed only while this lock is free (held: a command is using it)


def leftover(
    where: Path, files: list[Path] | None, why: str, remove: bool = True, lock: Path | None = None
) -> Leftover:
    """A ``Leftover`` with its size measured now; ``files=None``: the whole folder ``where``."""
    size = folder_size(where) if files is None else sum(_size(f) for f in files)
    return Leftover(where, tuple(files or ()), why, remove, size, lock)


def handle(args: argparse.Namespace) -> int:
    root = results_root(args.results_dir)
    stores = Stores(root, args.tracking_uri)
    items = [*run_leftovers(root, stores, args.interrupted), *baseline_leftovers(root, args.interrupted)]
    items += [*lock_leftovers(root), *cache_leftovers(root, args.cache)]
    failed = [] if args.dry_run else [error for item in items if item.remove and (error := remove(item))]
    print(report(root, items, args.dry_run))
    for error in failed:
        print(f"error: {error}")
    return 1 if failed else 0


def results_root(path: str) -> Path:
    """The results dir, or a one-line error: it must exist and look like one (never clean elsewhere)."""
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise BenchError(f"results dir '{root}' does not exist; pass --results-dir DIR (where runs/ and mlflow.db are)")
    if not any((root / entry).exists() for entry in RESULTS_ENTRIES):
        raise BenchError(
            f"'{root}' is not a bench results dir (it has none of {', '.join(RESULTS_ENTRIES)}); pass --results-dir DIR"
        )
    return root


# --- run work dirs: runs/<parent id>/<label>-s<seed>/ --------------------------------------------


class Stores:
    """The MLflow stores that runs' work dirs recorded, each opened once for reading; None where one
    cannot be opened (a work dir of an unreachable store is then kept). An explicit ``--tracking-uri``
    that cannot be opened is a user error."""

    def __init__(self, root: Path, tracking_uri: str | None) -> None:
        self.root, self.given = root, tracking_uri
        self.opened: dict[str, Any] = {}
        if tracking_uri:  # checked before anything is removed: a bad one is a user error
            self.opened[tracking_uri] = self._open(tracking_uri, strict=True)

    def for_dir(self, parent: Path) -> Any:
        """The store of the runs under ``parent``: the one it recorded, else the default."""
        from bench.tracking import resolve_tracking_uri  # mlflow: only for a results dir with work dirs

        marker = parent / STORE_FILE
        uri = marker.read_text().strip() if marker.is_file() else resolve_tracking_uri(self.given, self.root)
        if uri not in self.opened:
            self.opened[uri] = self._open(uri, strict=False)
        return self.opened[uri]

    @staticmethod
    def _open(uri: str, *, strict: bool) -> Any:
        from bench.store import Store

        try:
            return Store.open(uri)
        except BenchError:
            if strict:
                raise
            return None


def run_leftovers(root: Path, stores: Stores, interrupted: bool) -> list[Leftover]:
    runs = root / "runs"
    parents = sorted(d for d in runs.iterdir() if d.is_dir() and RUN_ID.fullmatch(d.name)) if runs.is_dir() else []
    return [item for parent in parents for item in _parent_leftovers(parent, stores.for_dir(parent), interrupted)]


def _parent_leftovers(parent: Path, store: Any, interrupted: bool) -> list[Leftover]:
    """A parent no longer in MLflow goes whole (if bench wrote everything in it); else each work dir."""
    run = _parent_run(store, parent.name)
    if run is False:
        if _only_bench_files(parent):
            return [leftover(parent, None, "work dir of a run no longer in MLflow")]
        return [leftover(parent, None, "run no longer in MLflow, but holds files bench did not write", False)]
    works = sorted(d for d in parent.iterdir() if d.is_dir() and WORK_DIR.fullmatch(d.name))
    items = [_work_dir_leftover(work, store, run, interrupted) for work in works]
    if temps := stale_temps(parent):
        items.append(leftover(parent, temps, "stale temporary files"))
    return [item for item in items if item is not None]


def _parent_run(store: Any, run_id: str) -> Any:
    """The parent's MLflow run; False when the store says it is gone (deleted or absent); None when
    there is no store to ask."""
    if store is None:
        return None
    from mlflow.exceptions import MlflowException

    try:
        run = store.client.get_run(run_id)
    except MlflowException as exc:
        return False if exc.error_code == "RESOURCE_DOES_NOT_EXIST" else None
    return False if run.info.lifecycle_stage == "deleted" else run


def _work_dir_leftover(work: Path, store: Any, parent: Any, interrupted: bool) -> Leftover | None:
    """A finished work dir's checkpoints go; an unfinished one's only with ``--interrupted`` and only
    when MLflow says its run stopped (a RUNNING run, or one no store can confirm, is kept)."""
    resume, temps = resume_files(work), stale_temps(work)
    if (work / "result.json").exists():
        return leftover(work, resume + temps, "finished run") if resume or temps else None
    if not resume:
        return leftover(work, temps, "stale temporary files") if temps else None
    status = _child_status(store, parent, work)
    if status is None:
        return leftover(work, resume + temps, "unfinished run; no MLflow store to check it (--tracking-uri)", False)
    if status == "RUNNING":
        why = "MLflow run RUNNING: in progress, or killed by SIGKILL (run the command again to resume it)"
        return leftover(work, resume + temps, why, False)
    why = f"interrupted run (MLflow {status}), resumable"
    return leftover(work, resume + temps, why if interrupted else f"{why}; {INTERRUPTED_HINT}", interrupted)


def _child_status(store: Any, parent: Any, work: Path) -> str | None:
    """The status of the work dir's MLflow run (newest with its key), "no run" if it has none."""
    if store is None or parent is None:
        return None
    from bench.schema import PARENT_TAG, Tag
    from bench.store import quote

    match = WORK_DIR.fullmatch(work.name)
    key = f"{parent.info.run_id}/{match['label']}/s{match['seed']}"
    query = f"tags.`{Tag.KEY}` = {quote(key)} and tags.`{PARENT_TAG}` = {quote(parent.info.run_id)}"
    runs = store.search([parent.info.experiment_id], query, order_by=["attributes.start_time DESC"])
    return runs[0].info.status if runs else "no run"


def _only_bench_files(parent: Path) -> bool:
    """Everything under ``parent`` is what bench writes in a work dir (never remove a stranger's files)."""
    for entry in parent.iterdir():
        if entry.is_dir() and not entry.is_symlink() and WORK_DIR.fullmatch(entry.name):
            if not all(_is_run_file(f) for f in entry.iterdir()):
                return False
        elif not (entry.is_file() and (entry.name == STORE_FILE or TEMP_FILE.fullmatch(entry.name))):
            return False
    return True


def _is_run_file(path: Path) -> bool:
    name = path.name
    known = name in RUN_FILES or bool(TEMP_FILE.fullmatch(name)) or path in resume_files(path.parent)
    return path.is_file() and not path.is_symlink() and known


# --- cached baselines, locks, the image cache ------------------------------------------------------


def baseline_leftovers(root: Path, interrupted: bool) -> list[Leftover]:
    """A complete baseline keeps ``model.pt`` and ``meta.json``; one cut short keeps its checkpoint
    unless ``--interrupted``; one with neither goes. One being trained (its lock held) is left alone."""
    folder = root / "baselines"
    keys = (
        sorted(d for d in folder.iterdir() if d.is_dir() and BASELINE_KEY.fullmatch(d.name)) if folder.is_dir() else []
    )
    return [item for key in keys if (item := _baseline_leftover(key, interrupted)) is not None]


def _baseline_leftover(folder: Path, interrupted: bool) -> Leftover | None:
    lock = folder / ".lock"
    resume, temps = resume_files(folder), stale_temps(folder)
    if is_held(lock):
        return leftover(folder, resume, "baseline being trained now (its lock is held)", False) if resume else None
    if (folder / "meta.json").exists():
        return leftover(folder, resume + temps, "complete cached baseline", lock=lock) if resume or temps else None
    if resume:
        why = "baseline cut short, resumable"
        return leftover(folder, None, why if interrupted else f"{why}; {INTERRUPTED_HINT}", interrupted, lock)
    if all(f.name == ".lock" or TEMP_FILE.fullmatch(f.name) for f in folder.iterdir()):
        return leftover(folder, None, "baseline folder with neither weights nor a checkpoint", lock=lock)
    return None


def lock_leftovers(root: Path) -> list[Leftover]:
    """Lock files no process holds and none opened lately: beside the stores (``mlflow.db.lock``,
    ``optuna.db.lock``) and in complete baselines. Locks are re-created when next needed."""
    candidates = [*root.glob("*.lock"), *(root / "baselines").glob("*/.lock")]
    stale = [
        lock
        for lock in sorted(candidates)
        if lock.is_file() and _is_old(lock) and (lock.parent == root or (lock.parent / "meta.json").exists())
    ]
    return [leftover(lock.parent, [lock], "stale lock file", lock=lock) for lock in stale if not is_held(lock)]


def cache_leftovers(root: Path, remove_cache: bool) -> list[Leftover]:
    """The decoded-image cache under the results dir (a shared ``$BENCH_DATASET_CACHE`` is not ours)."""
    cache = root / "cache"
    if not cache.is_dir():
        return []
    why = "decoded-image cache, decoded again by the next run"
    shared = Paths(root).data_cache
    if not shared.is_relative_to(cache):
        why += f"; runs now use $BENCH_DATASET_CACHE={shared}, never cleaned here"
    return [leftover(cache, None, why if remove_cache else f"{why}; --cache removes it", remove_cache)]


def stale_temps(folder: Path) -> list[Path]:
    """Temporary files of atomic writes that a killed process left (untouched for ``GRACE_S``)."""
    return sorted(f for f in folder.iterdir() if f.is_file() and TEMP_FILE.fullmatch(f.name) and _is_old(f))


def _is_old(path: Path) -> bool:
    try:
        return time.time() - path.stat().st_mtime > GRACE_S
    except FileNotFoundError:
        return False


def is_held(lock: Path) -> bool:
    """Whether a process holds an flock on ``lock`` now (a missing file is not held)."""
    with _try_lock(lock) as free:
        return not free


@contextmanager
def _try_lock(lock: Path) -> Iterator[bool]:
    """Hold ``lock`` for the block if it is free (yields True), without waiting; False if held."""
    if not lock.is_file():
        yield True
        return
    with open(lock, "rb") as handle:  # "rb": opening must not touch the file's mtime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- removing and reporting -------------------------------------------------------------------------


def remove(item: Leftover) -> str | None:
    """Remove ``item`` (while its lock is free); the error line if it could not be removed."""
    with _try_lock(item.lock) if item.lock is not None else nullcontext(True) as free:
        if not free:
            return f"{item.where} is in use now (its lock is held); left as it is"
        try:
            if item.files:
                for file in item.files:
                    file.unlink(missing_ok=True)
            else:
                shutil.rmtree(item.where)
        except OSError as exc:
            return f"cannot remove {exc.filename or item.where} ({exc.strerror})"
    return None


def report(root: Path, items: list[Leftover], dry_run: bool) -> str:
    """One line per leftover (what, size, why), then the totals in bytes."""
    if not items:
        return f"nothing to clean in {root}"
    verb = "would remove" if dry_run else "removed"
    gone = [i for i in items if i.remove]
    kept = [i for i in items if not i.remove]
    lines = [f"bench clean: {root}{' (dry run: nothing is removed)' if dry_run else ''}"]
    lines += [
        f"  {verb if i.remove else 'kept':<12} {human(i.size):>9}  {_what(root, i)} ({i.why})" for i in gone + kept
    ]
    count, total = sum(len(i.files) or 1 for i in gone), sum(i.size for i in gone)
    summary = f"{verb} {human(total)} ({total:,} bytes) in {count} file(s) or folder(s)"
    summary = summary if gone else "nothing to remove"
    kept_size = human(sum(i.size for i in kept))
    lines.append(f"{summary}; kept {kept_size}. The MLflow store (mlflow.db, mlartifacts/) is never touched.")
    return "\n".join(lines)


def _what(root: Path, item: Leftover) -> str:
    where = item.where.relative_to(root).as_posix()
    if not item.files:
        return f"{where}/"
    names = [f.name for f in item.files]
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return f"{'' if where == '.' else where + ': '}{shown}"


def human(size: int) -> str:
    """Bytes in decimal units (kB, MB, GB), as ``du --si`` and pip print them."""
    if size < 1000:
        return f"{size} B"
    exponent = min(3, (len(str(size)) - 1) // 3)  # 1: kB, 2: MB, 3: GB
    return f"{size / 1000**exponent:.1f} {('kB', 'MB', 'GB')[exponent - 1]}"


def folder_size(folder: Path) -> int:
    """Bytes of the files under ``folder`` (symlinks not followed)."""
    total = 0
    for base, _, names in os.walk(folder):
        total += sum(_size(Path(base) / name) for name in names)
    return total


def _size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except FileNotFoundError:
        return 0
