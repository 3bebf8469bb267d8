"""The first use of a fresh MLflow store from several processes at once: every one succeeds.

MLflow creates and migrates a fresh sqlite database's schema on first use, and two processes doing
that at once failed (``table _alembic_tmp_... already exists``, ``duplicate column name: step``,
``Online migration expected to match one row``): three ``bench run`` commands started together on a
new ``--results-dir`` all exited 2. Here real processes, released together by a file barrier after
their imports, open the store through ``Tracker`` (what ``bench run`` and ``bench sweep`` open it
with) on one fresh results dir; all must succeed and share one experiment.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bench.tracking import default_tracking_uri

ROOT = Path(__file__).resolve().parents[1]
PROCESSES = 4
TIMEOUT_S = 240  # imports (a few s each on 2 busy cores), one schema creation, then three look-ups

# Every process imports first (the code before the barrier), then waits at the barrier until all
# are ready, so the store is opened at the same moment (not staggered by import times); a barrier
# not met in 120 s exits 3. argv: barrier folder, process count, then the test's own arguments.
BARRIER = """
import os, sys, time
from pathlib import Path
barrier, n = Path(sys.argv[1]), int(sys.argv[2])
(barrier / str(os.getpid())).touch()
deadline = time.monotonic() + 120
while len(list(barrier.iterdir())) < n:
    if time.monotonic() > deadline:
        sys.exit(3)
    time.sleep(0.005)
"""

OPEN_STORE_IMPORTS = """
import os, sys
from pathlib import Path
from bench.tracking import Tracker, default_tracking_uri
results = Path(sys.argv[3])
"""
OPEN_STORE = """
tracker = Tracker(default_tracking_uri(results), "bench")
run = tracker.start_run("race", key=f"race-{os.getpid()}")
tracker.end_run(run)
print(tracker.experiment_id)
"""


def start_together(imports: str, code: str, args: list[str], barrier: Path, n: int) -> list[subprocess.Popen]:
    """``n`` real interpreters running ``imports``, then waiting for each other at ``barrier``, then
    running ``code``; ``barrier``, ``n`` and ``args`` are their arguments."""
    barrier.mkdir()
    cmd = [sys.executable, "-c", imports + BARRIER + code, str(barrier), str(n), *args]
    return [
        subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(n)
    ]


def outcomes(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    """(exit code, stdout, last stderr line) of each process, after it ends."""
    done = [(p.wait(timeout=TIMEOUT_S), *p.communicate()) for p in procs]
    return [(rc, out.strip(), (err.strip().splitlines() or [""])[-1]) for rc, out, err in done]


@pytest.mark.slow
def test_processes_opening_a_fresh_mlflow_store_at_once_all_succeed(tmp_path: Path) -> None:
    results = tmp_path / "results"
    procs = start_together(OPEN_STORE_IMPORTS, OPEN_STORE, [str(results)], tmp_path / "barrier", PROCESSES)
    ended = outcomes(procs)
    assert [rc for rc, _, _ in ended] == [0] * PROCESSES, ended
    assert len({out for _, out, _ in ended}) == 1, f"one experiment for all: {ended}"
    client = MlflowClient(tracking_uri=default_tracking_uri(results))
    experiment = client.get_experiment_by_name("bench")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == PROCESSES and {r.info.status for r in runs} == {"FINISHED"}
    assert (results / "mlflow.db.lock").is_file()  # the lock beside the database
