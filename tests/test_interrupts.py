"""Ctrl-C and SIGTERM on a real ``bench run``, started the way a user starts it: ``uv run``.

``uv run`` forwards a SIGINT to its child while the terminal sends it to the whole process group,
so one Ctrl-C reaches bench twice; a third one arrives during the first one's cleanup here. Each
stop prints one line, no traceback and no "Exception ignored", leaves no MLflow run RUNNING, and
says whether the same command run again resumes (and the rerun says what it resumes) or starts
over. Real processes, real signals, real data and a real sqlite MLflow store.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bench.checkpoint import load

pytestmark = pytest.mark.slow
TIMEOUT = 300  # s: a cold start of torch + mlflow and the smoke data on a loaded 2-core machine
UV = shutil.which("uv")


class Bench:
    """``bench run`` (resnet20, l1, smoke, seed 0) in its own process group, under ``uv run`` by
    default, with every line of stdout and stderr collected as it comes."""

    def __init__(self, tmp_path: Path, env: dict[str, str], *extra: str, uv: bool = True) -> None:
        self.results = tmp_path / "results"
        command = ["run", "--methods", "l1", "--model", "resnet20", "--preset", "smoke", "--seeds", "0",
                   "--no-progress", "--results-dir", str(self.results), *extra]  # fmt: skip
        python = [UV, "run", "--no-project", "--python", sys.executable, "python"] if uv else [sys.executable]
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        self.proc = subprocess.Popen([*python, "-m", "bench", *command], cwd=tmp_path, env=env, text=True,
                                     start_new_session=True, **pipes)  # fmt: skip
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [self._read(self.proc.stdout, self.out), self._read(self.proc.stderr, self.err)]

    @staticmethod
    def _read(stream, lines: list[str]) -> threading.Thread:
        thread = threading.Thread(target=lambda: lines.extend(iter(stream.readline, "")), daemon=True)
        thread.start()
        return thread

    def wait_until(self, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not done():
            if self.proc.poll() is not None:
                self.finish()
                pytest.fail(f"bench ended before {what}: {''.join(self.err)[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: not within {TIMEOUT} s")
            time.sleep(0.05)

    def bench_pid(self) -> int:
        """The pid of the Python process running bench (uv's child, or the process itself)."""
        if self.proc.args[0] != UV:
            return self.proc.pid
        for children in Path(f"/proc/{self.proc.pid}/task").glob("*/children"):
            pids = children.read_text().split()
            if pids:
                return int(pids[0])
        pytest.fail("uv run has no child process")

    def finish(self) -> int:
        code = self.proc.wait(timeout=120)
        for reader in self._readers:
            reader.join(10)
        return code

    def stderr(self) -> str:
        return "".join(self.err)


def _env(data_dir: Path, cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(BENCH_DATA_DIR=str(data_dir), BENCH_DATASET_CACHE=str(cache), PYTHONUNBUFFERED="1",
               OMP_NUM_THREADS="1")  # fmt: skip
    return env


def _ctrl_c_under_uv(bench: Bench) -> int:
    """What a terminal and ``uv run`` deliver for one Ctrl-C (the group's SIGINT, which uv forwards
    to bench once more), then one more SIGINT to bench while its cleanup runs. Returns how many
    stderr lines there were before the first signal."""
    pid = bench.bench_pid()
    time.sleep(0.3)  # let the lines printed before the signal arrive
    before = len(bench.err)
    os.killpg(bench.proc.pid, signal.SIGINT)
    time.sleep(0.2)
    with_cleanup_running = bench.proc.poll() is None
    if with_cleanup_running:
        os.kill(pid, signal.SIGINT)
    return before


def _lines_after(bench: Bench, before: int) -> list[str]:
    return [line.strip() for line in bench.err[before:] if line.strip()]


def _assert_clean_stop(bench: Bench, code: int, before: int, expected: str) -> None:
    """The exit code, exactly one line after the signal, no traceback anywhere, no run RUNNING."""
    stderr = bench.stderr()
    assert bench.finish() == code, stderr[-3000:]
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr[-3000:]
    lines = _lines_after(bench, before)
    assert len(lines) == 1 and lines[0].startswith(expected), lines
    runs = _runs(bench.results)
    assert {r.data.tags.get("bench.method", "parent") for r in runs} >= {"parent", "dense"}
    assert all(r.info.status in {"KILLED", "FINISHED"} for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    assert any(r.info.status == "KILLED" for r in runs)


def _runs(results: Path) -> list:
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("bench")
    return client.search_runs([experiment.experiment_id], max_results=1000)


def _dense_checkpoint(results: Path) -> Path | None:
    found = sorted(results.glob("baselines/*/train.ckpt"))
    return found[0] if found else None


@pytest.mark.skipif(UV is None, reason="uv is not installed")
def test_ctrl_c_under_uv_run_stops_once_and_the_rerun_says_what_it_resumes(
    tmp_path: Path, cifar_root: Path, dataset_cache: Path
) -> None:
    env = _env(cifar_root, dataset_cache)
    first = Bench(tmp_path, env, "--set", "dense.epochs=4")
    first.wait_until(lambda: _dense_checkpoint(first.results) is not None, "the first dense checkpoint")
    before = _ctrl_c_under_uv(first)
    _assert_clean_stop(
        first, 130, before, "interrupted; run the same command again to resume (saved: dense seed 0 epoch"
    )
    ckpt = _dense_checkpoint(first.results)
    done = load(ckpt)["epoch"] + 1
    assert f"(saved: dense seed 0 epoch {done}/4)" in _lines_after(first, before)[0]

    again = Bench(tmp_path, env, "--set", "dense.epochs=4")
    said = f"dense seed 0: resuming at epoch {done + 1}/4 from {ckpt}"
    again.wait_until(lambda: any(line.startswith(said) for line in again.out), f"the line {said!r}")
    time.sleep(0.3)
    before = len(again.err)
    again.proc.send_signal(signal.SIGTERM)  # uv forwards it; the restored checkpoint is still there to resume
    resume = f"terminated (SIGTERM); run the same command again to resume (saved: dense seed 0 epoch {done}/4)"
    _assert_clean_stop(again, 143, before, resume)


def test_ctrl_c_before_anything_was_saved_says_a_rerun_starts_over(
    tmp_path: Path, cifar_root: Path, dataset_cache: Path
) -> None:
    bench = Bench(tmp_path, _env(cifar_root, dataset_cache), "--set", "dense.epochs=50", uv=False)
    bench.wait_until(lambda: any(line.startswith("dense baseline seed 0: training") for line in bench.out),
                     "the dense phase")  # fmt: skip
    before = len(bench.err)
    os.killpg(bench.proc.pid, signal.SIGINT)  # twice, as uv run delivers it
    os.kill(bench.proc.pid, signal.SIGINT)
    _assert_clean_stop(bench, 130, before, "interrupted before anything was saved; running the same command again")
    assert _dense_checkpoint(bench.results) is None
