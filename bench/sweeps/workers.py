"""Worker processes: the loop one worker runs, and starting and waiting for local workers.

A worker runs trials until every slot is filled and no trial runs anywhere. A killed worker stops
sending heartbeats; the next worker that looks fails its trial, and Optuna's retry callback enqueues
a copy that inherits the slot, so nothing is lost and nothing is run twice.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna

from bench.sweeps.output import label_output, optuna_logging
from bench.sweeps.slots import work_left
from bench.sweeps.spec import SweepSpec
from bench.sweeps.storage import open_study
from bench.sweeps.trial import TrialRunner

POLL_S = 1.0  # while only others' trials run: one of them may end (or fail over) any moment; a poll is one query


def threads_per_worker(workers: int) -> int:
    """Torch CPU threads for each of ``workers`` local workers: this machine's cores split evenly (at least 1)."""
    return max(1, (os.cpu_count() or 1) // workers)


def work(spec: SweepSpec, worker: int, say: Callable[[str], None] = print, verbose: bool = False) -> None:
    """One worker: run trials until every slot is filled and no trial is running anywhere. Every
    line it prints starts with its worker and trial (``[w1 t7] ``: it wraps this process's stdout
    and stderr, so it runs in a worker process of its own); Optuna logs only warnings unless ``verbose``."""
    label = label_output(worker)
    optuna_logging(verbose)
    if spec.threads:
        import torch

        torch.set_num_threads(spec.threads)
    study = open_study(spec, worker)
    objective = TrialRunner(spec, say, label)
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        state = work_left(study, spec)
        if state == "done":
            return
        if state == "wait":
            time.sleep(POLL_S)
            continue
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)


def start_workers(
    spec_file: Path, count: int, log_dir: Path | None = None, verbose: bool = False
) -> list[subprocess.Popen]:
    """``count`` worker processes (``python -m bench sweep --worker SPEC``), sharing our stdout, or
    each writing ``worker-<i>.log`` under ``log_dir``; ``verbose`` passes ``--verbose`` on."""
    procs = []
    for worker in range(count):
        cmd = [sys.executable, "-m", "bench", "sweep", "--worker", str(spec_file), "--worker-index", str(worker)]
        cmd += ["--verbose"] if verbose else []
        if log_dir is None:
            procs.append(subprocess.Popen(cmd, start_new_session=True))
            continue
        with open(log_dir / f"worker-{worker}.log", "w") as out:  # the child keeps its own copy of the handle
            procs.append(subprocess.Popen(cmd, start_new_session=True, stdout=out, stderr=subprocess.STDOUT))
    return procs


def wait_for(procs: list[subprocess.Popen], say: Callable[[str], None]) -> list[int]:
    """Wait for every worker; on Ctrl-C stop them all (their trials fail over by heartbeat)."""
    try:
        return [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            p.wait()
        raise
