"""End to end through the CLI on real CIFAR-10 images: `bench run` with l1 and slim, read back from
MLflow; baseline reuse; resume after SIGKILL without a duplicate MLflow run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from bench import measure, models, surgery
from bench.checkpoint import load
from bench.plan import load_plans

pytestmark = pytest.mark.slow
SMOKE = ["--model", "resnet20", "--preset", "smoke", "--seeds", "0", "--no-progress"]


def _env(data_dir: Path, cache: Path) -> dict[str, str]:
    env = {**os.environ, "BENCH_DATA_DIR": str(data_dir), "BENCH_DATASET_CACHE": str(cache)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def bench(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, cifar_root, dataset_cache):
    """One smoke run of l1 and slim; the tests below inspect what it printed and stored."""
    work = tmp_path_factory.mktemp("smoke-run")
    env = _env(cifar_root, dataset_cache)
    proc = bench(["run", "--methods", "l1,slim", *SMOKE, "--results-dir", str(work / "results")], work, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, env, proc


def _client(results: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")


def _runs(client: MlflowClient) -> list:
    exp = client.get_experiment_by_name("bench")
    return client.search_runs([exp.experiment_id], max_results=1000)


def test_run_prints_plan_estimate_and_table(smoke_run):
    _, _, proc = smoke_run
    out = proc.stdout
    assert "plan: resnet20 on CIFAR-10 (JPEG copy)" in out and "estimated" in out  # never "CIFAR-10" alone
    assert out.index("plan:") < out.index("epoch 1/")  # the plan comes before any work
    # the header names the preset, the pruning rule with its value and the device; the ETA says where
    assert "\n  preset smoke; pruning rule: target FLOPs reduction 50%; device cpu\n" in out
    assert re.search(r"-> estimated \d+ (s|min) on cpu ", out)
    assert not re.search(r"^  about .* on cpu; ", out, re.MULTILINE)  # under an hour: no preset suggested
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| method | n | epochs | base acc (%) | test acc (%)")
    rows = [[cell.strip() for cell in row.split("|")[1:4]] for row in table[1:]]
    assert rows == [["dense", "1", "2"], ["l1", "1", "3"], ["slim", "1", "3"]]  # the budget column: 2 + 1, 2 + 1
    assert "cifar10-jpeg" in out  # the data source is stated


def test_runs_are_in_mlflow_with_config_metrics_and_artifacts(smoke_run):
    work, _, _ = smoke_run
    client = _client(work / "results")
    runs = _runs(client)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = {
        r.data.tags["bench.method"]: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert set(children) == {"dense", "l1", "slim"}
    assert parent.data.params["dense.epochs"] == "2" and parent.data.params["model"] == "resnet20"
    assert "cifar10-jpeg" in parent.data.tags["bench.data_source"]
    assert parent.data.tags["bench.data_label"] == "CIFAR-10 (JPEG copy)"
    assert len(parent.data.tags["env.git_sha"]) in (40, len("unknown"))
    assert parent.data.tags["env.torch"] == torch.__version__
    parent_artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"config.json", "comparison_table.json", "results.json"} <= parent_artifacts
    for name in ("l1", "slim"):
        run = children[name]
        assert run.info.status == "FINISHED"
        assert {"plans.json", "model.pt", "config.json"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
        assert abs(run.data.metrics["flops_reduction"] - 0.5) <= 0.01  # smoke preset target 0.5
        history = client.get_metric_history(run.info.run_id, "finetune/val_acc")
        assert len(history) == 1  # smoke: 1 fine-tune epoch, logged per epoch
    slim_sparsity = client.get_metric_history(children["slim"].info.run_id, "sparsity/train_loss")
    assert len(slim_sparsity) == 2  # sparsity training reuses the dense schedule (2 epochs)
    assert children["slim"].data.params["method_config.lam"] == "1e-05"  # resolved default for ResNets


CHILD_LINE = re.compile(r"^  (\S+) seed (\d+): run ([0-9a-f]{32}), artifacts (.+)$", re.MULTILINE)


def test_run_prints_each_child_run_and_where_its_model_is(smoke_run):
    work, _, proc = smoke_run
    client = _client(work / "results")
    parent_id = re.search(r"MLflow: parent run ([0-9a-f]{32})", proc.stdout)[1]
    printed = CHILD_LINE.findall(proc.stdout)
    assert [(method, seed) for method, seed, _, _ in printed] == [("dense", "0"), ("l1", "0"), ("slim", "0")]
    for method, _, run_id, location in printed:
        run = client.get_run(run_id)  # the printed id is a run of the store, a child of the parent
        assert run.data.tags["mlflow.parentRunId"] == parent_id and run.data.tags["bench.method"] == method
        assert (Path(location) / "model.pt").is_file()  # the printed location is a local folder
        if method != "dense":
            assert (Path(location) / "plans.json").is_file()


def test_a_finished_run_leaves_no_resume_checkpoints(smoke_run):
    work, _, _ = smoke_run
    results = work / "results"
    assert list(results.rglob("*.ckpt")) == [] and list(results.rglob("r*-done.pt")) == []
    for name in ("l1", "slim"):  # what a rerun and the scratch control read back stays
        finished = next((results / "runs").glob(f"*/{name}-s0"))
        assert {f.name for f in finished.iterdir()} == {"result.json", "plans.json", "model.pt"}
    baseline = next((results / "baselines").iterdir())
    assert {"model.pt", "meta.json"} <= {f.name for f in baseline.iterdir()}


def test_sparsity_curves_are_stored_and_printed_beside_the_dense_baseline(smoke_run):
    work, env, _ = smoke_run
    client = _client(work / "results")
    runs = _runs(client)
    for run in (r for r in runs if "mlflow.parentRunId" in r.data.tags):
        assert "sparsity.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
        assert 0 <= run.data.metrics["sparsity/unstructured_eps_1e-02"] <= 1
        assert 0 <= run.data.metrics["sparsity/structured_folded_eps_1e-02"] <= 1
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    proc = bench(["sparsity", parent.info.run_id, "--results-dir", str(work / "results")], work, env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    header = next(line for line in proc.stdout.splitlines() if line.startswith("| eps"))
    assert "dense (n=1)" in header and "slim (n=1)" in header
    assert "BN-folded" in proc.stdout and "gamma" in proc.stdout
    assert len([line for line in proc.stdout.splitlines() if line.startswith("| ") and "e-" in line]) >= 5 * 6


def test_pruned_model_reloads_from_artifacts(smoke_run, tmp_path):
    work, _, _ = smoke_run
    client = _client(work / "results")
    run = next(r for r in _runs(client) if r.data.tags.get("bench.method") == "l1")
    local = Path(
        mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, dst_path=str(tmp_path), tracking_uri=f"sqlite:///{work / 'results' / 'mlflow.db'}"
        )
    )
    model = models.create("resnet20")
    for plan in load_plans(local / "plans.json"):
        surgery.apply(model, plan)
    model.load_state_dict(torch.load(local / "model.pt", weights_only=True))
    assert measure.count_params(model) == run.data.metrics["params"]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_second_run_reuses_the_baseline_and_measures_latency(smoke_run):
    work, env, _ = smoke_run
    latency = ["--set", "latency=true", "--set", "latency_batch_size=8"]  # not part of the baseline's key
    args = ["run", "--methods", "l1", *SMOKE, *latency, "--published", "--results-dir", str(work / "results")]
    proc = bench(args, work, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| group_lasso (depth 20 -> 18) [published, Wen et al. 2016; not reproducible here:" in proc.stdout
    assert "- published rows are copied from the papers" in proc.stdout  # the footnote on their protocol
    assert "| latency (ms) | speed-up |" in proc.stdout  # measured latency joins the table
    assert "reusing cached baseline" in proc.stdout
    assert "dense s0 epoch" not in proc.stdout  # nothing was trained for the baseline
    runs = _runs(_client(work / "results"))
    reused = [
        r
        for r in runs
        if r.data.tags.get("bench.method") == "dense" and r.data.tags.get("bench.baseline_reused") == "true"
    ]
    assert len(reused) == 1
    measured = [r for r in runs if "latency_median_ms" in r.data.metrics]
    assert {r.data.tags["bench.method"] for r in measured} == {"dense", "l1"}
    for run in measured:  # the protocol is stored with every measured run
        assert run.data.tags["bench.latency_batch_size"] == "8" and int(run.data.tags["bench.latency_repeats"]) > 0
        assert run.data.tags["bench.latency_device"] == "cpu" and run.data.tags["bench.latency_timer"] == "perf_counter"


def _kill_when_checkpointed(args: list[str], cwd: Path, env: dict[str, str], pattern: str, at_least: int) -> int:
    """Start ``bench run``, SIGKILL it once a checkpoint matching ``pattern`` holds ``at_least`` epochs."""
    proc = subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        epoch = _wait_for_checkpoint_epoch(cwd / "results", pattern, at_least, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    return epoch


def _first_epoch_line(stdout: str, prefix: str) -> int:
    lines = [line for line in stdout.splitlines() if line.startswith(prefix)]
    return int(lines[0].split("epoch ")[1].split("/")[0])


def _assert_one_finished_run_each(results: Path, methods: set[str]) -> None:
    runs = _runs(_client(results))
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert int(parents[0].data.tags.get("bench.resumes", "0")) >= 1
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.data.tags["bench.method"] for r in children) == sorted(methods)  # no duplicates
    assert all(r.info.status == "FINISHED" for r in children)


def test_killed_during_the_baseline_resumes_without_duplicate_mlflow_runs(tmp_path, cifar_root, dataset_cache):
    env = _env(cifar_root, dataset_cache)
    args = ["run", "--methods", "l1", *SMOKE, "--set", "dense.epochs=5", "--results-dir", str(tmp_path / "results")]
    epoch = _kill_when_checkpointed(args, tmp_path, env, "baselines/*/train.ckpt", at_least=1)
    again = bench(args, tmp_path, env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _first_epoch_line(again.stdout, "dense s0 epoch") >= epoch + 2  # epochs 0..epoch were done (1-based)
    _assert_one_finished_run_each(tmp_path / "results", {"dense", "l1"})


def test_killed_during_a_method_resumes_its_phase(tmp_path, cifar_root, dataset_cache):
    env = _env(cifar_root, dataset_cache)
    finetune = ["--set", "method.l1.finetune.epochs=4", "--set", "method.l1.finetune.lr=0.01"]
    args = ["run", "--methods", "l1", *SMOKE, *finetune, "--results-dir", str(tmp_path / "results")]
    epoch = _kill_when_checkpointed(args, tmp_path, env, "runs/*/l1-s0/finetune.ckpt", at_least=1)
    again = bench(args, tmp_path, env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "dense s0 epoch" not in again.stdout  # the cached baseline is reused
    assert _first_epoch_line(again.stdout, "l1 fine-tune s0 epoch") >= epoch + 2
    _assert_one_finished_run_each(tmp_path / "results", {"dense", "l1"})


def test_a_rerun_reuses_the_finished_method_whose_checkpoints_are_gone(tmp_path, cifar_root, dataset_cache):
    """l1 finishes (its checkpoints deleted), slim is killed mid-sparsity; the rerun reads l1 back."""
    env = _env(cifar_root, dataset_cache)
    results = tmp_path / "results"
    args = ["run", "--methods", "l1,slim", *SMOKE, "--results-dir", str(results)]
    _kill_when_checkpointed(args, tmp_path, env, "runs/*/slim-s0/r0-sparsity.ckpt", at_least=1)
    l1 = next((results / "runs").glob("*/l1-s0"))
    assert {f.name for f in l1.iterdir()} == {"result.json", "plans.json", "model.pt"}
    assert list(results.glob("baselines/*/*.ckpt")) == [] and list(results.glob("baselines/*/model.pt"))
    l1_run = json.loads((l1 / "result.json").read_text())["run_id"]
    again = bench(args, tmp_path, env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "l1 seed 0: already finished in this run, skipping" in again.stdout
    assert "reusing cached baseline" in again.stdout and "l1 fine-tune" not in again.stdout
    assert ("l1", "0", l1_run) in [line[:3] for line in CHILD_LINE.findall(again.stdout)]
    assert list(results.rglob("*.ckpt")) == [] and list(results.rglob("r*-done.pt")) == []
    _assert_one_finished_run_each(results, {"dense", "l1", "slim"})


def test_the_literal_usage_line_names_its_default_preset_and_a_preset_that_fits(tmp_path, cifar_root, dataset_cache):
    """`run --methods ffr,l1 --model resnet56` means the quick preset: the plan says so and, being
    hours on CPU, names the largest preset estimated under an hour. Killed once the plan is out."""
    env = {**_env(cifar_root, dataset_cache), "PYTHONUNBUFFERED": "1"}
    args = ["run", "--methods", "ffr,l1", "--model", "resnet56", "--seeds", "0,1,2,3,4", "--set", "device=cpu"]
    cmd = [sys.executable, "-m", "bench", *args, "--results-dir", str(tmp_path / "results")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("  total per seed"):
                lines.append(proc.stdout.readline().rstrip("\n"))  # the suggestion, printed with the plan
                break
    finally:
        proc.kill()
        proc.wait(timeout=30)
    header = "  preset quick (the default: no --preset given); pruning rule: target FLOPs reduction 50%; device cpu"
    assert header in lines
    eta = re.search(r"-> estimated ([\d.]+) h on cpu", lines[-2])
    assert eta and float(eta[1]) > 1, lines[-2]  # 5 seeds of resnet56 on the quick preset: hours on any CPU
    fits = rf"  about {eta[1]} h on cpu; --preset smoke takes ~[\d.]+ (s|min) \(the largest preset under an hour\)"
    assert re.fullmatch(fits, lines[-1]), lines[-1]  # quick is what does not fit; paper is longer still


def _wait_for_checkpoint_epoch(
    root: Path, pattern: str, at_least: int, proc: subprocess.Popen, timeout: float = 300
) -> int:
    """Poll epoch checkpoints matching ``pattern`` until one records ``at_least`` completed epochs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for ckpt in root.glob(pattern):
            try:
                epoch = load(ckpt)["epoch"]
            except (RuntimeError, OSError, EOFError, KeyError):
                continue  # replaced while we read it
            if epoch >= at_least:
                return epoch
        if proc.poll() is not None:
            pytest.fail(f"run ended before the checkpoint appeared: {proc.stdout.read()[-3000:]}")
        time.sleep(0.2)
    pytest.fail("no epoch checkpoint appeared in time")


def test_results_json_in_workdir_matches_mlflow(smoke_run):
    work, _, _ = smoke_run
    results = list((work / "results" / "runs").glob("*/l1-s0/result.json"))
    assert results
    row = json.loads(results[0].read_text())
    assert row["method"] == "l1" and 0 <= row["test_acc"] <= 1


def test_report_from_the_runs_in_the_real_mlflow_store(smoke_run, tmp_path):
    work, env, _ = smoke_run
    args = ["report", "--results-dir", str(work / "results"), "--format", "html", "--out", str(tmp_path)]
    proc = bench(args, work, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split("|")[1].strip() for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert rows[1:] == ["dense", "l1", "slim"]
    page = (tmp_path / "report.html").read_text()
    for figure in ("accuracy_vs_flops", "channels_per_layer", "sparsity_curves"):
        assert f'alt="{figure}_resnet20_cifar10"' in page
    assert page.count("data:image/png;base64,") >= 3
    assert torch.__version__ in page  # the environment of the stored runs
    latex = bench(["report", "--results-dir", str(work / "results"), "--format", "latex"], work, env)
    assert latex.returncode == 0 and r"\toprule" in latex.stdout
