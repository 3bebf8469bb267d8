"""`bench clean` on real results dirs: a smoke run of l1 and slim stopped by SIGTERM during slim's
sparsity training (l1 finished, slim KILLED in MLflow with its checkpoints), then what clean keeps,
removes and reports; the decoded-image cache; runs gone from a real MLflow store; bad input."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bench.checkpoint import load
from bench.cli.clean import human

SMOKE = ["--model", "resnet20", "--preset", "smoke", "--seeds", "0", "--no-progress"]
HOUR_AGO = time.time() - 3600


def _env(data_dir: Path, cache: Path) -> dict[str, str]:
    env = {**os.environ, "BENCH_DATA_DIR": str(data_dir), "BENCH_DATASET_CACHE": str(cache)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def bench(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "bench", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def clean(results: Path, *flags: str, env: dict[str, str] | None = None) -> str:
    proc = bench(["clean", "--results-dir", str(results), *flags], results.parent, env or _bare_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc.stdout


def _bare_env() -> dict[str, str]:
    env = {**os.environ}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("BENCH_DATASET_CACHE", None)
    return env


def _tree(root: Path) -> dict[str, int]:
    """Every file under ``root`` with its size."""
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def _line(out: str, *parts: str) -> str:
    """The one report line holding every part."""
    found = [line for line in out.splitlines() if all(part in line for part in parts)]
    assert len(found) == 1, (parts, out)
    return found[0]


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, cifar_root, dataset_cache):
    """A smoke run of l1 and slim, SIGTERMed once slim's sparsity checkpoint holds an epoch."""
    work = tmp_path_factory.mktemp("clean")
    results = work / "results"
    env = _env(cifar_root, dataset_cache)
    cmd = [sys.executable, "-m", "bench", "run", "--methods", "l1,slim", *SMOKE, "--results-dir", str(results)]
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(results, "runs/*/slim-s0/r0-sparsity.ckpt", proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 143, proc.stderr.read()[-3000:]
    finally:
        proc.kill()
    return results


def _wait_for(results: Path, pattern: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    """Until a checkpoint matching ``pattern`` records a completed epoch."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ckpt in results.glob(pattern):
            try:
                if load(ckpt)["epoch"] >= 1:
                    return
            except (RuntimeError, OSError, EOFError, KeyError):
                continue  # replaced while we read it
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {pattern} appeared: {proc.stderr.read()[-3000:]}")
        time.sleep(0.2)
    pytest.fail(f"{pattern} did not appear in time")


@pytest.mark.slow
def test_clean_keeps_what_can_resume_and_removes_what_nothing_needs(stopped_run):
    results = stopped_run
    slim = next(results.glob("runs/*/slim-s0"))
    parent_id = slim.parent.name
    resume = sorted(f.name for f in slim.iterdir() if f.suffix == ".ckpt" or f.name.endswith("-done.pt"))
    assert "r0-sparsity.ckpt" in resume
    assert not [f for f in next(results.glob("runs/*/l1-s0")).iterdir() if f.suffix == ".ckpt"]  # l1 finished
    lock = next(results.glob("baselines/*/.lock"))
    os.utime(lock, (HOUR_AGO, HOUR_AGO))  # a lock no process has held for an hour
    store = {"mlflow.db": (results / "mlflow.db").stat().st_mtime_ns, **_tree(results / "mlartifacts")}
    before = _tree(results)

    dry = clean(results, "--dry-run")
    assert "dry run" in dry.splitlines()[0] and _tree(results) == before  # it lists, it never deletes
    kept = _line(dry, "kept", f"runs/{parent_id}/slim-s0: ")
    assert "MLflow KILLED" in kept and "--interrupted removes it" in kept and all(name in kept for name in resume)
    assert "would remove" in _line(dry, ".lock", "stale lock file")

    out = clean(results)  # the default: the stale lock goes, the resumable checkpoints stay
    assert not lock.exists() and all((slim / name).exists() for name in resume)
    assert "removed" in _line(out, ".lock") and "kept" in _line(out, "slim-s0")

    size = sum((slim / name).stat().st_size for name in resume)
    out = clean(results, "--interrupted")
    assert f"removed {human(size)} ({size:,} bytes)" in out.splitlines()[-1]
    assert not any((slim / name).exists() for name in resume)
    assert (results / "runs" / parent_id / "l1-s0" / "result.json").exists()  # what a rerun reads back stays
    assert {"mlflow.db": (results / "mlflow.db").stat().st_mtime_ns, **_tree(results / "mlartifacts")} == store

    MlflowClient(f"sqlite:///{results / 'mlflow.db'}").delete_run(parent_id)  # deleted in the MLflow UI
    size = sum(_tree(results / "runs" / parent_id).values())
    out = clean(results)
    assert not (results / "runs" / parent_id).exists()
    assert "work dir of a run no longer in MLflow" in _line(out, f"runs/{parent_id}/")
    assert f"({size:,} bytes)" in out.splitlines()[-1]
    assert clean(results).splitlines()[1:-1] == []  # nothing left to remove


@pytest.mark.slow
def test_clean_removes_the_decoded_image_cache_only_when_asked(stopped_run, dataset_cache, tmp_path):
    cached = min(dataset_cache.glob("*.pt"), key=lambda p: p.stat().st_size)  # decoded by the run above
    results = tmp_path / "results"
    (results / "cache" / "datasets").mkdir(parents=True)
    copy = results / "cache" / "datasets" / cached.name
    shutil.copy(cached, copy)
    assert "--cache removes it" in _line(clean(results), "kept", "cache/") and copy.exists()
    assert "would remove" in _line(clean(results, "--cache", "--dry-run"), "cache/") and copy.exists()
    out = clean(results, "--cache")
    size = cached.stat().st_size
    assert not (results / "cache").exists() and f"({size:,} bytes)" in out.splitlines()[-1]


def test_clean_removes_work_dirs_of_runs_absent_from_the_store_but_never_a_strangers_files(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    MlflowClient(f"sqlite:///{results / 'mlflow.db'}").create_experiment("bench")  # a real store, no runs
    ours, theirs = results / "runs" / ("a" * 32), results / "runs" / ("b" * 32)
    for parent in (ours, theirs):
        (parent / "l1-s0").mkdir(parents=True)
        (parent / "l1-s0" / "finetune.ckpt").write_bytes(b"x" * 1000)
        (parent / "l1-s0" / "result.json").write_text("{}")
    (theirs / "l1-s0" / "notes.txt").write_text("mine")  # not a file bench writes
    out = clean(results)
    assert not ours.exists() and (theirs / "l1-s0" / "notes.txt").exists()
    assert "finetune.ckpt" not in _line(out, "b" * 32)  # the stranger's dir is kept whole
    assert "files bench did not write" in _line(out, "kept", "b" * 32)


@pytest.mark.parametrize(
    ("setup", "flags", "message"),
    [
        ("missing", [], "does not exist"),
        ("foreign", [], "is not a bench results dir"),
        ("results", ["--tracking-uri", "sqlite:////nonexistent/mlflow.db"], "no MLflow store"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path, setup, flags, message):
    target = tmp_path / "results"
    if setup != "missing":
        target.mkdir()
        (target / ("runs" if setup == "results" else "notes")).mkdir()
    proc = bench(["clean", "--results-dir", str(target), *flags], tmp_path, _bare_env())
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and message in proc.stderr
    assert proc.stdout == ""
