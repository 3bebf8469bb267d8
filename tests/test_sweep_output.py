"""What a sweep prints: every line a worker prints carries its worker and trial (a real sweep of
real trials with 2 worker processes), accuracies in %, and Optuna's own log lines only with
``--verbose`` (a real in-memory study; a real sweep's output)."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys

import optuna
import pytest

from bench.sweeps.output import PrefixedLines, WorkerLabel, optuna_logging
from bench.sweeps.trial import SurplusTrial

TINY = ["--preset", "smoke", "--set", "data.train_limit=256", "--set", "data.val_size=128",
        "--set", "data.test_limit=256", "--set", "dense.epochs=1"]  # fmt: skip


def test_prefixed_lines_label_each_whole_line_with_the_current_trial() -> None:
    target, label = io.StringIO(), WorkerLabel(1)
    out = PrefixedLines(target, label)
    out.write("waiting\n")
    label.trial = 7
    out.write("l1 fine-tune s0 epoch 1/4: ")
    assert target.getvalue() == "[w1] waiting\n"  # a partial line waits for its end
    out.write("loss 2.3\nl1 fine-tune s0 epoch 2/4: loss 2.1\n")
    label.trial = None
    print("done", file=out)
    assert target.getvalue().splitlines() == [
        "[w1] waiting",
        "[w1 t7] l1 fine-tune s0 epoch 1/4: loss 2.3",
        "[w1 t7] l1 fine-tune s0 epoch 2/4: loss 2.1",
        "[w1] done",
    ]


def _objective(trial: optuna.Trial) -> float:
    if trial.number == 1:
        raise ValueError("diverged: loss became nan")
    if trial.number == 2:
        raise SurplusTrial("slot n0 is already filled")
    return 0.5


@pytest.mark.parametrize("verbose", [False, True])
def test_optuna_logs_warnings_only_and_no_tracebacks_unless_verbose(verbose: bool) -> None:
    before = optuna.logging.get_verbosity()
    handler = logging.getLogger("optuna").handlers[0]  # Optuna's own, as every process has it
    stream = handler.setStream(io.StringIO())
    optuna_logging(verbose)
    try:
        study = optuna.create_study()
        study.optimize(_objective, n_trials=3, catch=(Exception,))
        err = handler.stream.getvalue()
    finally:
        optuna_logging(True)  # no filter left behind
        optuna.logging.set_verbosity(before)
        handler.setStream(stream)
    assert ("Trial 0 finished" in err) is verbose and ("A new study created" in err) is verbose
    assert ("Traceback" in err) is verbose and ("Trial 2 failed" in err) is verbose  # 2: a surplus trial
    assert sum("Trial 1 failed" in line and "diverged: loss became nan" in line for line in err.splitlines()) == 1


@pytest.mark.slow
def test_a_two_worker_sweep_labels_every_worker_line_and_prints_percent(tmp_path, cifar_root, dataset_cache) -> None:
    env = {**os.environ, "BENCH_DATA_DIR": str(cifar_root), "BENCH_DATASET_CACHE": str(dataset_cache)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PYTHONUNBUFFERED", None)  # a pipe buffers: the order of the lines is the processes' doing
    args = ["--method", "l1", "--model", "resnet20", *TINY, "--trials", "3", "--workers", "2", "--study", "out"]
    cmd = [sys.executable, "-m", "bench", "sweep", *args, "--results-dir", str(tmp_path / "results"), "--no-progress"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    lines = proc.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("sweep 'out': 2 worker(s)"))
    end = next(i for i, line in enumerate(lines) if line.startswith("study 'out'"))
    worker_lines = lines[start + 1 : end]
    assert worker_lines and all(re.match(r"\[w[01](?: t\d+)?\] ", line) for line in worker_lines), worker_lines
    epochs = [line for line in worker_lines if " epoch " in line]
    assert len(epochs) >= 3 and all(re.match(r"\[w[01] t[012]\] l1 [a-z -]+ s0 epoch \d+/\d+: ", x) for x in epochs)
    for line in worker_lines:  # a trial's own announcement carries its own number
        if m := re.match(r"\[w[01] t(\d+)\] trial (\d+): ", line):
            assert m[1] == m[2]
    assert {re.match(r"\[(w[01])", line)[1] for line in epochs} == {"w0", "w1"}  # both workers ran trials
    best = [line for line in lines[end:] if line.startswith("  trial ")]
    assert len(best) == 3 and all(
        re.match(r"  trial \d+: \d+\.\d\d% \(test \d+\.\d\d%, reported only\)", x) for x in best
    )
    assert "Trial 0 finished" not in out and "A new study created" not in out and "[I " not in out
