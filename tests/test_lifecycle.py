"""Checks before work, and no MLflow run left open, whatever ends a command.

Bad input found by a check exits 2 before any MLflow run exists. A failure, Ctrl-C or SIGTERM in any
phase ends every run the command opened FAILED or KILLED with the reason (``bench.error`` /
``bench.stopped``): by the context manager around each run, and by the CLI's safety net
(``bench.lifecycle``) for a run opened without one. Real stores (sqlite), real data, real processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bench import baseline, config, lifecycle
from bench.errors import BenchError, Terminated
from bench.session import Session, prepare
from bench.tracking import Tracker

TIMEOUT = 300  # s; a cold start of torch + mlflow on a loaded 2-core machine


def _env(data_dir: Path | None = None, cache: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"BENCH_DATA_DIR", "MLFLOW_TRACKING_URI"}}
    env["OMP_NUM_THREADS"] = "1"  # spin-waiting OpenMP threads on a shared 2-core machine
    if data_dir is not None:
        env["BENCH_DATA_DIR"] = str(data_dir)
    if cache is not None:
        env["BENCH_DATASET_CACHE"] = str(cache)
    return env


def _run_args(tmp_path: Path, *extra: str, methods: str = "l1") -> list[str]:
    """``bench run`` with every store under ``tmp_path``."""
    stores = ["--results-dir", str(tmp_path / "results"), "--tracking-uri", _uri(tmp_path)]
    command = ["run", "--methods", methods, "--model", "resnet20", "--preset", "smoke", "--no-progress"]
    return [sys.executable, "-m", "bench", *command, *stores, *extra]


def _uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'm.db'}"


def _runs(uri: str) -> list:
    """Every run of experiment 'bench' in the store (none when the experiment does not exist)."""
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("bench")
    return [] if experiment is None else client.search_runs([experiment.experiment_id], max_results=1000)


def _assert_user_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit 2, one stderr line 'error: ...' holding each fragment, no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


# --- checks before work --------------------------------------------------------------------------


def test_a_named_plan_the_model_lacks_fails_before_any_mlflow_run(tmp_path: Path, cifar_root: Path) -> None:
    cmd = _run_args(tmp_path, "--plan", "l1-a")
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(cifar_root), capture_output=True, text=True, timeout=TIMEOUT)
    _assert_user_error(proc, "no named plan 'l1-a' for model 'resnet20'", "resnet56/l1-a")
    assert not (tmp_path / "m.db").exists() or _runs(_uri(tmp_path)) == []
    assert not (tmp_path / "results" / "baselines").exists()  # nothing was trained


def test_a_named_plan_under_a_method_that_prunes_in_rounds_fails_before_any_run(tmp_path: Path) -> None:
    cmd = _run_args(tmp_path, "--plan", "l1-a", methods="l1,oicsr")
    cmd[cmd.index("resnet20")] = "resnet56"
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    _assert_user_error(proc, "named plan 'l1-a'", "oicsr (3 rounds)", "--target-flops-reduction")
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "results").exists()


def test_a_known_named_plan_passes_the_check() -> None:
    from bench import named_plans

    named_plans.check_plan("resnet56", "l1-b")
    with pytest.raises(BenchError, match="resnet56 has l1-a, l1-b"):
        named_plans.check_plan("resnet56", "l1-c")


@pytest.mark.parametrize("how", ["flag", "set", "toml"])
def test_a_negative_seed_exits_2_without_a_traceback(how: str, tmp_path: Path) -> None:
    toml = tmp_path / "seeds.toml"
    toml.write_text("seeds = [0, -1]\n")
    extra = {"flag": ["--seeds", "-1"], "set": ["--set", "seeds=[-1]"], "toml": ["--config", str(toml)]}[how]
    proc = subprocess.run(_run_args(tmp_path, *extra), cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=TIMEOUT)  # fmt: skip
    _assert_user_error(proc, "seeds must be non-negative integers", "-1")
    assert not (tmp_path / "m.db").exists() and not (tmp_path / "results").exists()


def test_an_unreadable_dataset_fails_before_any_mlflow_run(tmp_path: Path) -> None:
    empty = tmp_path / "no-data"
    empty.mkdir()
    cmd = _run_args(tmp_path, "--data-dir", str(empty))
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    _assert_user_error(proc)
    assert not (tmp_path / "m.db").exists() or _runs(_uri(tmp_path)) == []


# --- nothing left open: a kill in the dense phase -------------------------------------------------


def _wait_for_running_dense(uri: str, proc: subprocess.Popen, timeout: float = TIMEOUT) -> None:
    """Poll the store until the dense child run is RUNNING (the process is then in the dense phase)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            runs = _runs(uri)
        except Exception:  # the store is being created or written by the run: look again
            runs = []
        if any(r.data.tags.get("bench.method") == "dense" and r.info.status == "RUNNING" for r in runs):
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended before its dense phase: {proc.communicate()[1][-3000:]}")
        time.sleep(0.5)
    pytest.fail("the dense child run never appeared RUNNING")


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_kill_in_the_dense_phase_leaves_no_run_running(
    signum: int, code: int, tmp_path: Path, cifar_root: Path, dataset_cache: Path
) -> None:
    cmd = _run_args(tmp_path, "--seeds", "0", "--set", "dense.epochs=50")
    env = _env(cifar_root, dataset_cache)
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_running_dense(_uri(tmp_path), proc)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == code, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    how = {signal.SIGTERM: "terminated (SIGTERM)", signal.SIGINT: "interrupted"}[signum]
    saved = any((tmp_path / "results" / "baselines").glob("*/train.ckpt"))  # an epoch ended before the signal
    said = f"{how}; run the same command again to resume" if saved else f"{how} before anything was saved"
    assert stderr.strip().splitlines()[-1].startswith(said), stderr[-3000:]  # after decode bars, mlflow logs
    runs = _runs(_uri(tmp_path))
    assert {r.data.tags.get("bench.method", "parent") for r in runs} == {"parent", "dense"}
    for run in runs:
        assert run.info.status == "KILLED", (run.info.run_name, run.info.status)
        reason = {signal.SIGTERM: "Terminated('stopped by SIGTERM')", signal.SIGINT: "KeyboardInterrupt()"}[signum]
        assert run.data.tags["bench.stopped"] == reason, run.data.tags


# --- nothing left open: in-process ----------------------------------------------------------------


def _session(tmp_path: Path, cifar_root: Path, *sets: str) -> Session:
    """A real workspace on the smoke data and a parent run; ``sets`` as ``--set`` gives them."""
    flags = {"model": "resnet20", "data": {"root": str(cifar_root)}, "results_dir": str(tmp_path / "results")}
    cfg = config.resolve("smoke", None, {**flags, "tracking_uri": _uri(tmp_path)}, list(sets))
    work = prepare(cfg, progress=False)
    parent = work.tracker.start_run("parent", key="parent")
    return Session(cfg, work, parent, say=lambda _line: None)


@pytest.fixture()
def smoke_session(tmp_path: Path, cifar_root: Path, dataset_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Session:
    """A real workspace on the smoke data (decoded once per test session) and a parent run."""
    monkeypatch.setenv("BENCH_DATASET_CACHE", str(dataset_cache))
    return _session(tmp_path, cifar_root)


def test_a_failure_in_the_dense_phase_ends_the_dense_run_failed(
    tmp_path: Path, cifar_root: Path, dataset_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BENCH_DATASET_CACHE", str(dataset_cache))
    session = _session(tmp_path, cifar_root, "dense.lr=1e6", "dense.momentum=0")  # the loss diverges in epoch 1
    with pytest.raises(Exception) as raised:
        baseline.dense_baseline(session, 0)
    dense = next(r for r in _runs(session.tracker.uri) if r.data.tags.get("bench.method") == "dense")
    assert dense.info.status == "FAILED"
    assert type(raised.value).__name__ == "DivergedError"
    assert "DivergedError" in dense.data.tags["bench.error"]


def test_the_baseline_key_changes_with_the_code_version(
    smoke_session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = baseline.baseline_key(smoke_session, 0)
    assert baseline.baseline_key(smoke_session, 0) == key  # stable
    monkeypatch.setattr(baseline, "BASELINE_VERSION", baseline.BASELINE_VERSION + 1)
    bumped = baseline.baseline_key(smoke_session, 0)
    monkeypatch.setattr(baseline, "package_version", lambda: "999.0")
    released = baseline.baseline_key(smoke_session, 0)
    assert len({key, bumped, released}) == 3


def test_the_package_version_is_the_projects() -> None:
    import tomllib

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert baseline.package_version() == project["version"]  # not "unknown": the distribution name is right


@pytest.fixture()
def tracker(tmp_path: Path) -> Tracker:
    return Tracker(_uri(tmp_path), "bench")


@pytest.mark.parametrize(
    ("exc", "status", "tag"),
    [(RuntimeError("boom"), "FAILED", "bench.error"), (KeyboardInterrupt(), "KILLED", "bench.stopped")],
    ids=["error", "ctrl-c"],
)
def test_a_command_ends_the_runs_it_left_open(exc: BaseException, status: str, tag: str, tracker: Tracker) -> None:
    before = tracker.start_run("opened before the command", key="before")
    with pytest.raises(type(exc)), lifecycle.command():
        opened = tracker.start_run("opened without a context manager", key="open")
        finished = tracker.start_run("ended on its own", key="done")
        tracker.end_run(finished)
        raise exc
    runs = {r.info.run_id: r for r in _runs(tracker.uri)}
    assert runs[opened].info.status == status
    assert type(exc).__name__ in runs[opened].data.tags[tag]
    assert runs[finished].info.status == "FINISHED" and tag not in runs[finished].data.tags
    assert runs[before].info.status == "RUNNING"  # not this command's run


def test_a_command_that_returns_leaves_its_open_runs_alone(tracker: Tracker) -> None:
    """A sweep parent stays RUNNING on purpose while other machines' trials run."""
    with lifecycle.command():
        opened = tracker.start_run("kept open on purpose", key="open")
    assert tracker.get_run(opened).info.status == "RUNNING"


def test_sigterm_raises_terminated_within_a_command_and_the_handler_is_restored(tracker: Tracker) -> None:
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated, match="SIGTERM"), lifecycle.command():
        opened = tracker.start_run("running when SIGTERM arrives", key="open")
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    assert signal.getsignal(signal.SIGTERM) is previous
    run = tracker.get_run(opened)
    assert run.info.status == "KILLED" and "SIGTERM" in run.data.tags["bench.stopped"]
    assert isinstance(Terminated(), KeyboardInterrupt)  # every Ctrl-C handler treats a SIGTERM alike


def test_a_process_forked_within_a_command_dies_of_sigterm_as_usual() -> None:
    """A dataloader or decode pool worker forked inside a command inherits the handler; it must not
    raise Terminated there (a worker stopped by ``Pool.terminate`` inside a queue lock leaves the
    lock held and the parent's pool hangs), only the command's own process does."""
    import multiprocessing

    with lifecycle.command():
        child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(30,))
        child.start()
        time.sleep(0.5)
        child.terminate()  # SIGTERM
        child.join(10)
    assert child.exitcode == -signal.SIGTERM  # killed by the signal, not exited after a Terminated traceback


# --- Ctrl-C: raised once, whatever arrives during the cleanup -------------------------------------


@pytest.fixture()
def sigint_handler():
    """Put back the SIGINT handler a test's command left ignored on purpose."""
    previous = signal.getsignal(signal.SIGINT)
    yield previous
    signal.signal(signal.SIGINT, previous)


def test_a_second_sigint_during_the_cleanup_is_ignored_and_the_handler_restored(
    tracker: Tracker, sigint_handler
) -> None:
    with pytest.raises(KeyboardInterrupt) as raised, lifecycle.command():
        opened = tracker.start_run("running when Ctrl-C arrives", key="open")
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler raises before this ends
        finally:
            os.kill(os.getpid(), signal.SIGINT)  # uv run's duplicate, during the cleanup: ignored
            time.sleep(0.2)
    assert type(raised.value) is KeyboardInterrupt and lifecycle.stopping()
    assert signal.getsignal(signal.SIGINT) is sigint_handler  # an in-process caller gets Ctrl-C back
    run = tracker.get_run(opened)
    assert run.info.status == "KILLED" and run.data.tags["bench.stopped"] == "KeyboardInterrupt()"


def test_after_a_ctrl_c_the_cli_process_ignores_sigint_until_it_exits(sigint_handler) -> None:
    with pytest.raises(KeyboardInterrupt), lifecycle.command(exits=True):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored: a SIGTERM still ends it
    with lifecycle.command(exits=True):  # a command that ends without a stop leaves no trace
        pass
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN


def test_a_process_forked_within_a_command_dies_of_sigint_as_usual() -> None:
    import multiprocessing

    with lifecycle.command():
        child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(30,))
        child.start()
        time.sleep(0.5)
        os.kill(child.pid, signal.SIGINT)
        child.join(10)
    assert child.exitcode == -signal.SIGINT  # no KeyboardInterrupt traceback from the worker


_ATEXIT_SCRIPT = """
import atexit, sys, time
from bench import lifecycle

def slow_cleanup():  # the kind mlflow, torch and multiprocessing register
    print("cleanup", flush=True)
    time.sleep(2)
    print("cleaned", flush=True)

atexit.register(slow_cleanup)
try:
    with lifecycle.command(exits=True):
        print("ready", flush=True)
        time.sleep(60)
except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    sys.exit(lifecycle.SIGINT_EXIT)
"""


def test_sigints_during_the_atexit_handlers_are_ignored() -> None:
    """What ``uv run`` made happen one time in three: a Ctrl-C delivered twice, the second during
    the atexit handlers ("Exception ignored in atexit callback ... KeyboardInterrupt")."""
    proc = subprocess.Popen([sys.executable, "-c", _ATEXIT_SCRIPT], env=_env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGINT)
        assert proc.stdout.readline() == "cleanup\n"
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == lifecycle.SIGINT_EXIT, stderr
    assert stdout == "cleaned\n" and stderr == "interrupted\n"
