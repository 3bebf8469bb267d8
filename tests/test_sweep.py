"""``bench sweep`` on real storages: slots on a real Optuna study, then whole sweeps of real trials
(real CIFAR-10 images, real training) with 2 worker processes on sqlite and on a PostgreSQL server
started for the test, a worker killed with SIGKILL mid-trial, a grid run twice, and failing trials."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState, create_trial

from bench.errors import BenchError
from bench.sweeps import (
    CELL,
    SLOT,
    SURPLUS,
    SweepSpec,
    enqueue_missing_cells,
    is_surplus,
    load_grid,
    open_study,
    slot_of,
    work_left,
)

TINY = [
    "--preset",
    "smoke",
    "--set",
    "data.train_limit=256",
    "--set",
    "data.val_size=128",
    "--set",
    "data.test_limit=256",
    "--set",
    "dense.epochs=1",
]


def _spec(tmp_path: Path, kind: str = "search", trials: int = 2) -> SweepSpec:
    return SweepSpec(
        study="unit", storage=f"sqlite:///{tmp_path / 'optuna.db'}", kind=kind, base={}, method="l1", trials=trials
    )


# --- slots on a real study ------------------------------------------------------------------------


def test_a_slot_counts_once_and_a_retry_inherits_it(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    study = open_study(spec)
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.5, user_attrs={SLOT: "n0"}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={SLOT: "n1"}))  # its worker was killed
    retry = create_trial(state=TrialState.WAITING, user_attrs={SLOT: "n1"}, system_attrs={"failed_trial": 1})
    study.add_trial(retry)
    trials = study.get_trials(deepcopy=False)
    assert slot_of(trials[2], trials) == "n1" and not is_surplus(trials[2], "n1", trials, spec)
    assert work_left(study, spec) == "run"  # the retry waits

    study.add_trial(create_trial(state=TrialState.RUNNING))  # a fresh trial racing for a third slot
    trials = study.get_trials(deepcopy=False)
    assert slot_of(trials[3], trials) == "n2"  # fresh, non-surplus trials below it: 0 and 1
    assert is_surplus(trials[3], "n2", trials, spec)  # only 2 trials were asked for

    twin = create_trial(state=TrialState.RUNNING, user_attrs={SLOT: "n0"})  # two trials for one slot
    study.add_trial(twin)
    trials = study.get_trials(deepcopy=False)
    assert is_surplus(trials[4], "n0", trials, spec)


def test_work_left_waits_for_running_trials_and_then_is_done(tmp_path: Path) -> None:
    spec = _spec(tmp_path, trials=1)
    study = open_study(spec)
    assert work_left(study, spec) == "run"
    study.add_trial(create_trial(state=TrialState.RUNNING, user_attrs={SLOT: "n0"}))
    assert work_left(study, spec) == "wait"  # it may still fail over and come back as a retry
    running = study.get_trials(deepcopy=False)[0]
    study._storage.set_trial_state_values(running._trial_id, TrialState.FAIL)
    assert work_left(study, spec) == "done"  # a failed trial keeps its slot: it is not run again
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={SURPLUS: True}))
    trials = study.get_trials(deepcopy=False)
    assert slot_of(trials[1], trials) == "n1" and work_left(study, spec) == "done"


def test_grid_cells_are_enqueued_once(tmp_path: Path) -> None:
    grid_file = tmp_path / "grid.toml"
    grid_file.write_text('models = ["resnet20"]\nmethods = ["l1", "random"]\ntargets = [0.3, 0.5]\nseeds = [0, 1]\n')
    grid = load_grid(grid_file)
    cells = grid.cells()
    assert len(cells) == 8 and cells[0] == {
        "model": "resnet20",
        "dataset": "cifar10",
        "method": "l1",
        "target": 0.3,
        "seed": 0,
    }
    study = open_study(_spec(tmp_path, "grid"))
    assert enqueue_missing_cells(study, cells) == (0, 8)
    assert enqueue_missing_cells(study, cells) == (8, 0)
    first = study.get_trials(deepcopy=False)[0]
    study._storage.set_trial_state_values(first._trial_id, TrialState.FAIL)  # a failed cell runs again
    assert enqueue_missing_cells(study, cells) == (7, 1)
    assert study.get_trials(deepcopy=False)[-1].user_attrs[CELL] == first.user_attrs[CELL]


CLAIMER = """
import json, sys
from bench.sweeps import SweepSpec, open_study
study = open_study(SweepSpec.from_json(open(sys.argv[1]).read()), worker=int(sys.argv[2]))
claimed = []
while True:
    trial = study.ask()  # what optimize() does first: pop a WAITING trial, else create one
    if "cell" not in trial.user_attrs:
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        break
    claimed.append(trial.user_attrs["cell"])
    study.tell(trial, 0.5)  # a second claimer of the same trial would fail here: "Cannot tell a COMPLETE trial"
print(json.dumps(claimed))
""".replace("import json, sys", "import json, sys\nimport optuna")


def test_concurrent_workers_on_sqlite_never_claim_the_same_waiting_trial(tmp_path: Path) -> None:
    """sqlite ignores SELECT FOR UPDATE; without our lock two processes both pop one enqueued trial."""
    spec = _spec(tmp_path, "grid")
    study = open_study(spec)
    for cell in range(60):
        study.enqueue_trial({}, user_attrs={"cell": cell})
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(spec.to_json())
    procs = [
        subprocess.Popen([sys.executable, "-c", CLAIMER, str(spec_file), str(w)], stdout=subprocess.PIPE, text=True)
        for w in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    claimed = [cell for out in outputs for cell in json.loads(out)]
    assert sorted(claimed) == list(range(60))  # each exactly once
    assert all(json.loads(out) for out in outputs)  # and both workers got some


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('models = ["resnet20"]\nmethods = ["l1"]\ntargets = [1.5]\n', "targets are FLOPs reductions in [0, 1)"),
        ('models = ["resnet20"]\nmethods = ["nope"]\ntargets = [0.5]\n', "unknown method 'nope'"),
        ('models = ["resnet20"]\nmethods = ["l1"]\ntargets = [0.5]\nmodel = 3\n', "unknown keys model"),
        ('models = []\nmethods = ["l1"]\ntargets = [0.5]\n', "'models' must be a non-empty list"),
    ],
)
def test_bad_grids_are_refused_with_what_is_valid(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "grid.toml"
    path.write_text(text)
    with pytest.raises(BenchError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_grid(path)


def test_a_study_with_other_objectives_is_refused(tmp_path: Path) -> None:
    open_study(_spec(tmp_path))
    pareto = SweepSpec(**{**_spec(tmp_path).__dict__, "objectives": ("acc", "flops")})
    with pytest.raises(BenchError, match="optimises 1 objective"):
        open_study(pareto)


# --- whole sweeps through the CLI -----------------------------------------------------------------


def _env(cifar_root: Path, dataset_cache: Path) -> dict[str, str]:
    env = {**os.environ, "BENCH_DATA_DIR": str(cifar_root), "BENCH_DATASET_CACHE": str(dataset_cache)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def sweep(args: list[str], work: Path, env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "bench", "sweep", *args, "--results-dir", str(work / "results"), "--no-progress"]
    return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)


def _study(storage: str, name: str) -> optuna.Study:
    from bench.sweeps import normalize_storage_url

    return optuna.load_study(study_name=name, storage=normalize_storage_url(storage))


def _assert_exactly(study: optuna.Study, n: int) -> list:
    counted = [t for t in study.get_trials() if not t.user_attrs.get(SURPLUS)]
    complete = [t for t in counted if t.state == TrialState.COMPLETE]
    slots = [t.user_attrs[SLOT] for t in complete]
    assert len(complete) == n, [(t.number, t.state, t.user_attrs.get(SLOT)) for t in study.get_trials()]
    assert sorted(slots) == [f"n{i}" for i in range(n)]  # no slot twice, none lost
    return complete


def _trial_runs(results: Path) -> list:
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("bench")
    return [r for r in client.search_runs([exp.experiment_id], max_results=1000) if "optuna.trial" in r.data.tags]


@pytest.mark.slow
def test_two_workers_on_sqlite_complete_exactly_n_trials(tmp_path, cifar_root, dataset_cache) -> None:
    args = ["--method", "l1", "--model", "resnet20", *TINY, "--trials", "4", "--workers", "2", "--study", "sq"]
    proc = sweep(args, tmp_path, _env(cifar_root, dataset_cache))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "database is locked" not in out
    assert "study 'sq'" in out and "4 complete, 0 pruned, 0 failed" in out
    complete = _assert_exactly(_study(f"sqlite:///{tmp_path / 'results' / 'optuna.db'}", "sq"), 4)
    workers = {t.user_attrs["bench.worker"] for t in complete}
    assert len(workers) == 2  # both processes ran trials
    assert all(
        0 <= t.user_attrs["bench.test_acc"] <= 1 and t.value == t.user_attrs["bench.best_val_acc"] for t in complete
    )
    runs = _trial_runs(tmp_path / "results")
    assert sorted(int(r.data.tags["optuna.trial"]) for r in runs) == sorted(t.number for t in complete)
    parent = {r.data.tags["mlflow.parentRunId"] for r in runs}
    assert len(parent) == 1 and all(r.info.status == "FINISHED" for r in runs)
    assert all("method_config.normalize" in r.data.params for r in runs)  # the sampled hyperparameter

    report = subprocess.run(
        [sys.executable, "-m", "bench", "report", "--sweep", "sq", "--results-dir", str(tmp_path / "results")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr[-2000:]
    rows = [line.split("|")[1].strip() for line in report.stdout.splitlines() if line.startswith("| ")][1:]
    assert sorted(rows) == sorted(f"l1 (trial {t.number})" for t in complete)  # one row per trial, never averaged

    again = sweep(args, tmp_path, _env(cifar_root, dataset_cache))  # the study is full: nothing runs
    assert again.returncode == 0 and "nothing left to run" in again.stdout
    _assert_exactly(_study(f"sqlite:///{tmp_path / 'results' / 'optuna.db'}", "sq"), 4)

    best = sweep([*args, "--best", "1", "--seeds", "0,1"], tmp_path, _env(cifar_root, dataset_cache))
    assert best.returncode == 0, best.stderr[-3000:]
    rows = [line.split("|")[1].strip() for line in best.stdout.splitlines() if line.startswith("| ")]
    assert rows[1] == "dense" and rows[2].startswith("l1 (trial ")
    assert "| 2 |" in best.stdout  # two seeds per row


@pytest.mark.slow
def test_two_workers_on_postgresql_complete_exactly_n_trials(tmp_path, cifar_root, dataset_cache, postgres_db) -> None:
    args = ["--method", "l1", "--model", "resnet20", *TINY, "--trials", "4", "--workers", "2"]
    proc = sweep([*args, "--study", "pg", "--storage", postgres_db], tmp_path, _env(cifar_root, dataset_cache))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "4 complete, 0 pruned, 0 failed" in proc.stdout
    complete = _assert_exactly(_study(postgres_db, "pg"), 4)
    assert len({t.user_attrs["bench.worker"] for t in complete}) == 2


@pytest.mark.slow
def test_a_worker_killed_mid_trial_loses_nothing(tmp_path, cifar_root, dataset_cache) -> None:
    args = [
        "--method", "l1", "--model", "resnet20", *TINY, "--set", "finetune.epochs=4", "--trials", "3",
        "--workers", "2", "--study", "kill", "--heartbeat", "1", "--grace", "4",
    ]  # fmt: skip
    cmd = [sys.executable, "-m", "bench", "sweep", *args, "--results-dir", str(tmp_path / "results"), "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(cifar_root, dataset_cache), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    storage = f"sqlite:///{tmp_path / 'results' / 'optuna.db'}"
    victim = None
    deadline = time.monotonic() + 600
    while victim is None and time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            running = _study(storage, "kill").get_trials(states=(TrialState.RUNNING,))
        except Exception:  # the study or its tables are not created yet
            continue
        started = [t for t in running if "bench.worker" in t.user_attrs and t.intermediate_values]
        if started:  # it has trained at least one fine-tune epoch
            victim = started[0]
    assert victim is not None, "no trial started"
    os.kill(int(victim.user_attrs["bench.worker"].rsplit(":", 1)[1]), signal.SIGKILL)
    out, _ = proc.communicate(timeout=900)
    study = _study(storage, "kill")
    _assert_exactly(study, 3)
    killed = study.trials[victim.number]
    assert killed.state == TrialState.FAIL
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].user_attrs[SLOT] == victim.user_attrs[SLOT]
    assert "3 complete, 0 pruned, 1 failed" in out
    runs = _trial_runs(tmp_path / "results")  # the retry resumed the killed trial's MLflow run
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)


@pytest.mark.slow
def test_a_grid_run_twice_runs_nothing_the_second_time(tmp_path, cifar_root, dataset_cache) -> None:
    grid = tmp_path / "grid.toml"
    grid.write_text(
        'models = ["resnet20"]\nmethods = ["l1", "random"]\ntargets = [0.3, 0.5]\nseeds = [0]\npreset = "smoke"\n'
        '[set]\n"data.train_limit" = 256\n"data.val_size" = 128\n"data.test_limit" = 256\n"dense.epochs" = 1\n'
    )
    env = _env(cifar_root, dataset_cache)
    first = sweep(["--grid", str(grid), "--workers", "2"], tmp_path, env)
    assert first.returncode == 0, (first.stdout + first.stderr)[-3000:]
    assert "grid: 4 cells, 0 done or under way, 4 enqueued" in first.stdout
    assert "4 complete, 0 pruned, 0 failed" in first.stdout
    study = _study(f"sqlite:///{tmp_path / 'results' / 'optuna.db'}", "grid")
    cells = [t.user_attrs[CELL] for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(set(cells)) == 4
    reductions: dict[str, list[float]] = {"l1": [], "random": []}
    for t in study.trials:
        cell = json.loads(t.user_attrs[CELL])
        assert t.user_attrs["bench.flops_reduction"] == pytest.approx(cell["target"], abs=0.01)  # its own target
        reductions[cell["method"]].append(cell["target"])
    assert all(sorted(r) == [0.3, 0.5] for r in reductions.values())

    second = sweep(["--grid", str(grid), "--workers", "2"], tmp_path, env)
    assert second.returncode == 0
    assert "grid: 4 cells, 4 done or under way, 0 enqueued" in second.stdout
    assert "nothing left to run" in second.stdout
    assert len(_study(f"sqlite:///{tmp_path / 'results' / 'optuna.db'}", "grid").trials) == 4


@pytest.mark.slow
def test_failing_trials_are_recorded_with_the_reason_and_the_sweep_goes_on(tmp_path, cifar_root, dataset_cache):
    args = ["--method", "l1", "--model", "resnet20", *TINY, "--trials", "2", "--study", "nan"]
    args += ["--set", "method.l1.finetune.lr=1e30"]  # the fine-tuning diverges
    proc = sweep(args, tmp_path, _env(cifar_root, dataset_cache))
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "0 complete, 0 pruned, 2 failed" in proc.stdout and "DivergedError" in proc.stdout
    study = _study(f"sqlite:///{tmp_path / 'results' / 'optuna.db'}", "nan")
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
    assert all("DivergedError" in t.user_attrs["bench.error"] for t in study.trials)
    runs = _trial_runs(tmp_path / "results")
    assert len(runs) == 2 and all(
        r.info.status == "FAILED" and "DivergedError" in r.data.tags["bench.error"] for r in runs
    )


@pytest.mark.slow
def test_a_two_objective_study_gives_a_pareto_front(tmp_path, cifar_root, dataset_cache) -> None:
    args = ["--method", "l1", "--model", "resnet20", *TINY, "--trials", "3", "--objectives", "acc,flops"]
    proc = sweep([*args, "--study", "pareto"], tmp_path, _env(cifar_root, dataset_cache))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Pareto front (val acc, FLOPs reduction)" in proc.stdout
    study = _study(f"sqlite:///{tmp_path / 'results' / 'optuna.db'}", "pareto")
    for t in study.trials:
        assert 0.2 <= t.params["target_flops_reduction"] <= 0.8
        assert t.values[1] == pytest.approx(t.params["target_flops_reduction"], abs=0.01)  # achieved, not asked
    assert study.best_trials


SCALING_ROW_FIELDS = {"workers", "threads_per_worker", "seconds", "startup_seconds", "trial_phase_seconds",
                      "trials_per_minute", "steady_trials_per_minute", "ratio", "steady_ratio"}  # fmt: skip


@pytest.mark.slow
def test_sweep_bench_runs_both_worker_counts_and_its_json_has_the_fields(tmp_path, cifar_root, dataset_cache) -> None:
    cmd = [sys.executable, "-m", "bench", "sweep-bench", "--trials", "2", "--threads", "1", "--json"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(cifar_root, dataset_cache), capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["trials"] == 2 and report["target_ratio_2_over_1"] == 1.7
    assert [row["workers"] for row in report["rows"]] == [1, 2]
    for row in report["rows"]:
        assert set(row) >= SCALING_ROW_FIELDS and row["threads_per_worker"] == 1
        assert 0 < row["startup_seconds"] < row["seconds"] and 0 < row["trial_phase_seconds"] < row["seconds"]
    assert report["rows"][0]["ratio"] == report["rows"][0]["steady_ratio"] == 1.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "resnet20"], "sweep needs --method and --model"),
        (["--method", "l1", "--model", "resnet20", "--objectives", "flops"], "the first objective must be acc"),
        (["--method", "l1", "--model", "resnet20", "--storage", "redis://x"], "unsupported --storage"),
        (["--method", "nope", "--model", "resnet20"], "unknown method 'nope'"),
        (["--method", "l1", "--model", "resnet20", "--workers", "0"], "--workers must be >= 1"),
        (["--method", "l1", "--model", "resnet20", "--set", "prune.plan=l1-a"], "no named plan 'l1-a'"),
    ],
)
def test_bad_sweep_arguments_exit_2_with_a_clear_error(tmp_path, args, message) -> None:
    cmd = [sys.executable, "-m", "bench", "sweep", *args, "--results-dir", str(tmp_path / "r")]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "r" / "optuna.db").exists()  # checked before the study exists
