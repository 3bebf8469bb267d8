"""Where a run keeps its files under the results dir (git ignores all of it; see results/README.md)."""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from bench.atomic import atomic_write_text
from bench.errors import BenchError


@dataclass(frozen=True)
class Paths:
    """Where a run keeps its files under the results dir (git ignores all of it)."""

    root: Path

    @property
    def baselines(self) -> Path:
        return self.root / "baselines"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def data_cache(self) -> Path:
        """Decoded-image cache; ``$BENCH_DATASET_CACHE`` shares one across results dirs."""
        override = os.environ.get("BENCH_DATASET_CACHE")
        return Path(override) if override else self.root / "cache" / "datasets"


STORE_FILE = "tracking_uri.txt"  # in runs/<parent run id>/: the MLflow store that parent lives in
RESUME_FILE = re.compile(r"(.*\.ckpt|r\d+-done\.pt)")  # epoch checkpoints and completed prune rounds


def resume_files(folder: Path) -> list[Path]:
    """The resume checkpoints in a run's work dir or a baseline's cache folder: epoch checkpoints
    (``*.ckpt``, ``training.fit``) and completed prune rounds (``r<k>-done.pt``, ``bench.method_run``).
    Only a run that has not finished needs them."""
    if not folder.is_dir():
        return []
    return sorted(f for f in folder.iterdir() if f.is_file() and RESUME_FILE.fullmatch(f.name))


def remove_resume_files(folder: Path) -> int:
    """Delete the resume checkpoints of a finished run in ``folder``; returns the bytes freed."""
    freed = 0
    for file in resume_files(folder):
        try:
            size = file.stat().st_size
            file.unlink()
        except FileNotFoundError:  # another process sharing the results dir removed it first
            continue
        freed += size
    return freed


def record_store(run_dir: Path, uri: str) -> None:
    """Note in ``runs/<parent run id>/`` which MLflow store holds that run, so that ``bench clean``
    asks the right store whether the run still exists. A password in the URI is left out."""
    marker = run_dir / STORE_FILE
    if not marker.exists():
        atomic_write_text(without_password(uri) + "\n", marker)


def without_password(uri: str) -> str:
    """``scheme://user:secret@host/x`` -> ``scheme://user@host/x``; other URIs unchanged."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}@{host}"))


def prepare_results_dir(path: str) -> Paths:
    """Create the results dir or fail with a one-line error if it cannot be written."""
    root = Path(path).expanduser().resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise BenchError(f"results dir '{root}' is not writable ({exc.strerror}); pass --results-dir DIR") from exc
    return Paths(root)


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created, with its folder, if missing); other
    processes on this machine wait for it. The kernel drops the lock if the holder dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
