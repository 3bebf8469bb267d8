"""Where a run keeps its files under the results dir (git ignores all of it; see results/README.md)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

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
