"""MLflow tracking and provenance against real stores: a local sqlite file and a real `mlflow server`.

No mocks: every value is written through ``Tracker`` and read back with a fresh ``MlflowClient``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from bench import store as store_module
from bench.errors import BenchError
from bench.provenance import environment
from bench.schema import Result, Source, stored_number
from bench.store import Store
from bench.tracking import (
    ARTIFACT_DIR,
    KEY_TAG,
    PARENT_TAG,
    RESUMES_TAG,
    Tracker,
    default_tracking_uri,
    flatten,
    resolve_tracking_uri,
)

SERVER_START_TIMEOUT_S = 90  # about 13-20 s on 2 busy cores; first-time schema creation included


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One sqlite store per module: creating the schema costs seconds, experiments are cheap."""
    results = tmp_path_factory.mktemp("results")
    return results, default_tracking_uri(results)


def _tracker(store: tuple[Path, str], request: pytest.FixtureRequest) -> Tracker:
    """A tracker on the module store, in an experiment named after the test."""
    return Tracker(store[1], request.node.name)


def _children(client: MlflowClient, experiment_id: str, parent_id: str) -> list:
    return client.search_runs([experiment_id], f"tags.`{PARENT_TAG}` = '{parent_id}'")


# --------------------------------------------------------------------------------- URIs, flatten


def test_default_uri_and_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default = default_tracking_uri(tmp_path / "results")
    assert default == f"sqlite:///{(tmp_path / 'results').resolve()}/mlflow.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, tmp_path / "results") == default
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5555")
    assert resolve_tracking_uri(None, tmp_path / "results") == "http://127.0.0.1:5555"
    assert resolve_tracking_uri("sqlite:///x.db", tmp_path / "results") == "sqlite:///x.db"


def test_flatten_nested_dicts_and_dataclasses() -> None:
    @dataclasses.dataclass(frozen=True)
    class Dense:
        epochs: int = 160
        lr: float = 0.1

    flat = flatten({"dense": Dense(), "method": {"name": "l1", "opts": {}}, "seeds": [0, 1]})
    assert flat == {"dense.epochs": 160, "dense.lr": 0.1, "method.name": "l1", "method.opts": {}, "seeds": [0, 1]}


# ------------------------------------------------------------------------------ local sqlite store


def test_local_store_roundtrip(store: tuple[Path, str], request: pytest.FixtureRequest, tmp_path: Path) -> None:
    results, uri = store
    tracker = _tracker(store, request)
    assert Tracker(uri, request.node.name).experiment_id == tracker.experiment_id  # created once

    parent = tracker.start_run("compare", key="parent", tags={"bench.kind": "comparison"})
    children = [
        tracker.start_run(f"l1-seed{seed}", parent_id=parent, key=f"l1-{seed}", tags={"seed": str(seed)})
        for seed in (0, 1)
    ]
    params = {"dense": {"epochs": 3, "lr": 0.1}, "method": "l1", "many": {f"p{i}": i for i in range(150)}}
    long_value = "x" * 7000  # over MLflow's 6000-character param limit
    for seed, run_id in enumerate(children):
        tracker.log_params(run_id, {**params, "seed": seed, "long": long_value})
        for epoch in range(3):
            tracker.log_metrics(run_id, {"train.loss": 1.0 / (epoch + 1), "val.acc": 0.5 + 0.1 * epoch + seed}, epoch)
        tracker.log_metrics(run_id, {"test.acc": 0.9 + seed / 100, "flops.ratio": 0.5})
        tracker.log_dict(run_id, {"layers": {"conv1": 0.5}, "seed": seed}, "plan/plan.json")
        tracker.log_table(run_id, pd.DataFrame({"layer": ["conv1", "conv2"], "kept": [8, 16]}), "plan/layers.json")
        note = tmp_path / f"note{seed}.txt"
        note.write_text(f"seed {seed}\n")
        tracker.log_artifact(run_id, note, "notes")
        tracker.end_run(run_id)
    tracker.end_run(parent)

    client = MlflowClient(tracking_uri=uri)  # a fresh client reads what the tracker wrote
    found = _children(client, tracker.experiment_id, parent)
    assert sorted(r.info.run_id for r in found) == sorted(children)
    for seed, run_id in enumerate(children):
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.info.run_name == f"l1-seed{seed}"
        assert run.data.tags[KEY_TAG] == f"l1-{seed}"
        assert run.data.tags[PARENT_TAG] == parent
        assert run.data.params["dense.epochs"] == "3"
        assert run.data.params["dense.lr"] == "0.1"
        assert run.data.params["many.p149"] == "149"
        assert run.data.params["seed"] == str(seed)
        assert len(run.data.params) == 155
        assert len(run.data.params["long"]) == 6000 and run.data.params["long"].endswith("[truncated]")
        assert run.data.metrics["test.acc"] == pytest.approx(0.9 + seed / 100)
        history = client.get_metric_history(run_id, "val.acc")
        assert sorted((m.step, round(m.value, 6)) for m in history) == [
            (e, round(0.5 + 0.1 * e + seed, 6)) for e in range(3)
        ]

        local = Path(client.download_artifacts(run_id, "", str(tmp_path / f"dl{seed}")))
        assert json.loads((local / "plan" / "plan.json").read_text()) == {"layers": {"conv1": 0.5}, "seed": seed}
        assert (local / "notes" / f"note{seed}.txt").read_text() == f"seed {seed}\n"
        table = pd.read_json(local / "plan" / "layers.json", orient="split")
        assert table.to_dict("list") == {"layer": ["conv1", "conv2"], "kept": [8, 16]}
        assert (results / ARTIFACT_DIR / run_id / "artifacts" / "plan" / "plan.json").is_file()
        assert run.info.artifact_uri.startswith((results / ARTIFACT_DIR).as_uri())

    reader = Store.open(uri)  # the one reader sees the same runs and artifacts
    nested = reader.children(parent)
    assert sorted(r.info.run_id for r in nested) == sorted(children)
    assert {r.data.params["method"] for r in nested} == {"l1"}
    assert sorted(round(r.data.metrics["test.acc"], 4) for r in nested) == [0.9, 0.91]
    assert {r.info.status for r in nested} == {"FINISHED"}
    assert [r.info.run_id for r in reader.expand(children[0])] == [children[0]]  # no children: the run itself
    assert reader.read_json(children[1], "plan/plan.json") == {"layers": {"conv1": 0.5}, "seed": 1}
    assert reader.find_json(children[1], "plan/missing.json") is None
    with pytest.raises(BenchError, match=r"no artifact 'missing\.json' \(it has: .*notes"):
        reader.read_json(children[1], "missing.json")


def test_log_table_replaces_instead_of_appending(store: tuple[Path, str], request: pytest.FixtureRequest) -> None:
    tracker = _tracker(store, request)
    run_id = tracker.start_run("t", key="t")
    tracker.log_table(run_id, pd.DataFrame({"a": [1, 2]}), "results.json")
    tracker.log_table(run_id, pd.DataFrame({"a": [3, 4, 5]}), "results.json")  # e.g. after a resume
    assert tracker.read_json(run_id, "results.json")["data"] == [[3], [4], [5]]  # pandas "split" layout


# ---------------------------------------------------------------------------------------- resume


def test_resume_unfinished_run_by_key(store: tuple[Path, str], request: pytest.FixtureRequest) -> None:
    tracker = _tracker(store, request)
    parent = tracker.start_run("sweep", key="sweep")
    first = tracker.start_run("trial", parent_id=parent, key="trial-0")
    tracker.log_params(first, {"dense": {"epochs": 3}, "lr": 0.1})
    client = MlflowClient(tracking_uri=store[1])
    assert RESUMES_TAG not in client.get_run(first).data.tags

    # The process was killed: the run stays RUNNING. A new invocation (a new Tracker) resumes it.
    again = Tracker(store[1], request.node.name)
    assert again.start_run("trial", parent_id=parent, key="trial-0") == first
    assert client.get_run(first).data.tags[RESUMES_TAG] == "1"
    again.log_params(first, {"dense": {"epochs": 3}, "lr": 0.1})  # same values: fine
    with pytest.raises(BenchError, match=r"dense\.epochs.*'3'.*'4'"):
        again.log_params(first, {"dense": {"epochs": 4}})

    # A crash recorded as KILLED (or FAILED) is resumed too, and set RUNNING again.
    again.end_run(first, "KILLED")
    assert again.start_run("trial", parent_id=parent, key="trial-0") == first
    run = client.get_run(first)
    assert run.info.status == "RUNNING"
    assert run.data.tags[RESUMES_TAG] == "2"
    assert len(_children(client, tracker.experiment_id, parent)) == 1  # no duplicate

    # Same key under a different parent (or none) is a different piece of work.
    assert tracker.start_run("trial", key="trial-0") != first

    # After FINISHED the same key is a deliberate repeat: a new run.
    assert tracker.find_finished("trial-0", parent_id=parent) is None
    tracker.end_run(first)
    assert tracker.find_finished("trial-0", parent_id=parent) == first
    repeat = tracker.start_run("trial", parent_id=parent, key="trial-0")
    assert repeat != first and RESUMES_TAG not in client.get_run(repeat).data.tags
    assert len(_children(client, tracker.experiment_id, parent)) == 2
    with pytest.raises(ValueError, match="end status"):
        tracker.end_run(repeat, "DONE")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- errors


def test_unwritable_results_dir_is_a_bench_error(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        results = locked / "results"
        if os.access(locked, os.W_OK):  # root ignores permissions: a path under a file never works
            (tmp_path / "afile").write_text("not a directory")
            results = tmp_path / "afile" / "results"
        with pytest.raises(BenchError, match=re.escape(str(results))) as info:
            Tracker(default_tracking_uri(results), "e")
        assert "\n" not in str(info.value)
        assert "--tracking-uri" in str(info.value)
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("uri", ["bogus://nowhere", "http://127.0.0.1:9"])
def test_bad_uri_is_a_bench_error(uri: str) -> None:
    with pytest.raises(BenchError, match=re.escape(uri)) as info:
        Tracker(uri, "e")
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- the reader (store)


def test_search_follows_pagination(
    store: tuple[Path, str], request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    tracker = _tracker(store, request)
    parent = tracker.start_run("parent", key="p")
    nested = {tracker.start_run(f"c{i}", parent_id=parent, key=f"c{i}") for i in range(5)}
    monkeypatch.setattr(store_module, "PAGE_SIZE", 2)  # 5 children: three pages
    reader = Store.open(store[1])
    assert {r.info.run_id for r in reader.children(parent)} == nested
    assert {r.info.run_id for r in reader.expand(parent)} == nested
    everything = reader.search([reader.experiment(request.node.name).experiment_id])
    assert len(everything) == 6
    assert tracker.find_finished("c4", parent_id=parent) is None  # the writer's look-ups page too
    tracker.end_run(sorted(nested)[0])


def test_reader_errors_are_one_line(store: tuple[Path, str], tmp_path: Path) -> None:
    missing = f"sqlite:///{tmp_path / 'none.db'}"
    with pytest.raises(BenchError, match=r"no MLflow store at .* \(file missing\)"):
        Store.open(missing)
    assert not (tmp_path / "none.db").exists()  # reading never creates a store
    reader = Store.open(store[1])
    with pytest.raises(BenchError, match=r"no MLflow experiment 'nope' at .*; experiments: "):
        reader.experiment("nope")
    with pytest.raises(BenchError, match="no MLflow run '0123abcd'"):
        reader.get_run("0123abcd")
    for uri in ("bogus://nowhere", "http://127.0.0.1:9"):
        with pytest.raises(BenchError, match=re.escape(uri)) as info:
            Store.open(uri)
        assert "\n" not in str(info.value)


def test_parent_tag_is_mlflows_own() -> None:
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    assert PARENT_TAG == MLFLOW_PARENT_RUN_ID


# ----------------------------------------------------------------------------------- result record


def test_result_row_round_trip_and_logged_fields() -> None:
    latency = {"median_ms": 1.5, "iqr_ms": 0.1, "batch_size": 8, "device": "cpu", "timer": "perf_counter"}
    result = Result("l1", 0, 0.9, 0.91, 100, 200, 0.92, 150, 400, train_epochs=5, latency=latency, run_id="r")
    budgeted = dataclasses.replace(result, budget={"budget/dense_epochs": 2.0, "budget/finetune_epochs": 3.0})
    row = result.to_row()
    assert list(row) == [
        "method", "seed", "test_acc", "best_val_acc", "params", "macs", "dense_test_acc", "dense_params",
        "dense_macs", "acc_change", "params_reduction", "flops_reduction", "latency_median_ms", "latency_iqr_ms",
        "latency_batch_size", "latency_device", "latency_timer", "train_epochs", "run_id",
    ]  # fmt: skip
    assert (
        row["acc_change"] == 0.9 - 0.92 and row["params_reduction"] == 1 - 100 / 150 and row["flops_reduction"] == 0.5
    )
    assert Result.from_row(row) == result and Result.from_row(row).to_row() == row
    dense = Result("dense", 1, 0.92, 0.93, 150, 400, 0.92, 150, 400)
    assert list(dense.to_row())[-1] == "flops_reduction" and Result.from_row(dense.to_row()) == dense
    # measurements are metrics; settings (seed, budget) params; the latency protocol and text tags
    assert result.tags() == {
        "bench.method": "l1", "bench.latency_device": "cpu", "bench.latency_timer": "perf_counter",
        "bench.latency_batch_size": "8",
    }  # fmt: skip
    assert budgeted.settings() == {
        "seed": "0", "train_epochs": "5", "budget/dense_epochs": "2", "budget/finetune_epochs": "3"
    }  # fmt: skip
    settings = {"method", "run_id", "seed", "train_epochs", "latency_device", "latency_timer", "latency_batch_size"}
    assert set(budgeted.metrics()) == set(row) - settings
    assert all(isinstance(v, float) for v in result.metrics().values())


def test_results_read_back_alike_from_this_layout_and_the_one_before(
    store: tuple[Path, str], request: pytest.FixtureRequest
) -> None:
    """Measurements are metrics, settings params, the latency protocol tags; a report reads a run
    logged so exactly as one logged before issue 14 (every number a metric)."""
    from reports.source import load_mlflow

    latency = {
        "median_ms": 1.5,
        "iqr_ms": 0.1,
        "batch_size": 8,
        "repeats": 30,
        "device": "cpu",
        "timer": "perf_counter",
    }
    budget = {"budget/dense_epochs": 2.0, "budget/finetune_epochs": 3.0}
    result = Result("l1", 3, 0.9, 0.91, 100, 200, 0.92, 150, 400, 5, 250, budget, 0.25, latency)
    tracker = _tracker(store, request)
    identity = {"bench.model": "resnet20", "bench.dataset": "cifar10", "bench.seed": "3"}
    new, old = (tracker.start_run(name, key=name, tags=identity) for name in ("new", "old"))
    tracker.log_metrics(new, result.metrics())
    tracker.log_params(new, result.settings())
    tracker.set_tags(new, result.tags())
    row = result.to_row()
    tracker.log_metrics(old, {k: float(v) for k, v in row.items() if isinstance(v, int | float)})  # the old layout
    tracker.set_tags(old, {f"bench.{k}": v for k, v in row.items() if isinstance(v, str)})
    for run_id in (new, old):
        tracker.end_run(run_id)

    client = MlflowClient(tracking_uri=store[1])
    stored = client.get_run(new).data
    settings = {"seed", "train_epochs", "train_images", "latency_batch_size", "latency_repeats", *budget}
    assert not settings & set(stored.metrics) and {"test_acc", "latency_median_ms", "channels_removed"} <= set(
        stored.metrics
    )
    assert stored.params["train_epochs"] == "5" and stored.params["budget/finetune_epochs"] == "3"
    assert stored.tags["bench.latency_repeats"] == "30" and stored.tags["bench.latency_batch_size"] == "8"
    for key in (*settings, "test_acc", "latency_median_ms"):
        assert stored_number(stored, key) == stored_number(client.get_run(old).data, key) == pytest.approx(row[key])
    frame = load_mlflow(store[1], experiment=request.node.name).set_index("run_id")
    columns = ["seed", "test_acc", "macs", "train_epochs", "train_images", "channels_removed", "latency_median_ms"]
    assert (
        frame.loc[new, [*columns, "latency_batch_size"]].tolist()
        == frame.loc[old, [*columns, "latency_batch_size"]].tolist()
    )
    assert frame.loc[new, "train_epochs"] == 5 and frame.loc[new, "latency_batch_size"] == 8


def test_every_run_carries_mlflows_source_tags(store: tuple[Path, str], request: pytest.FixtureRequest) -> None:
    from mlflow.utils import mlflow_tags

    names = (mlflow_tags.MLFLOW_GIT_COMMIT, mlflow_tags.MLFLOW_SOURCE_NAME, mlflow_tags.MLFLOW_SOURCE_TYPE)
    assert (*names, mlflow_tags.MLFLOW_USER) == (Source.GIT_COMMIT, Source.NAME, Source.TYPE, Source.USER)
    tracker = _tracker(store, request)
    parent = tracker.start_run("parent", key="parent")
    child = tracker.start_run("child", parent_id=parent, key="child", tags={"bench.method": "l1"})
    tracker.end_run(child, "KILLED")
    assert tracker.start_run("child", parent_id=parent, key="child") == child  # resumed: tagged again
    client = MlflowClient(tracking_uri=store[1])
    sha = environment()["env.git_sha"]
    for run_id in (parent, child):
        tags = client.get_run(run_id).data.tags
        assert tags[Source.TYPE] == "LOCAL" and tags[Source.NAME] and tags[Source.USER]
        assert tags.get(Source.GIT_COMMIT, "unknown") == sha  # the commit of this checkout (none outside git)
    assert client.get_run(child).data.tags["bench.method"] == "l1"


# ------------------------------------------------------------------------------------ provenance


def test_environment_keys() -> None:
    env = environment()
    expected = {
        "git_sha", "git_dirty", "python", "torch", "torchvision", "timm", "mlflow", "optuna", "fvcore",
        "torch_pruning", "cuda", "cuda_available", "cudnn", "device", "torch_threads", "hostname", "platform",
    }  # fmt: skip
    assert {f"env.{k}" for k in expected} <= set(env)
    assert all(isinstance(v, str) and v for v in env.values())
    assert re.fullmatch(r"[0-9a-f]{40}", env["env.git_sha"]) or env["env.git_sha"] == "unknown"
    assert env["env.git_dirty"] in {"true", "false", "unknown"}
    assert env["env.python"] == ".".join(map(str, sys.version_info[:3]))
    assert env["env.mlflow"] != "not installed"
    assert int(env["env.torch_threads"]) >= 1


# ------------------------------------------------------------------------------- a real server


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> float:
    """Poll GET /health until it answers; returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < SERVER_START_TIMEOUT_S:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except OSError:
            time.sleep(0.25)
    pytest.fail(f"mlflow server not healthy after {SERVER_START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real `mlflow server` on 127.0.0.1 with a sqlite backend and proxied local artifacts."""
    root = tmp_path_factory.mktemp("server")
    port = _free_port()
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root / 'db.sqlite'}",
        "--artifacts-destination", str(root / "art"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    # The job runner adds eight huey processes (and a /dev/shm directory a kill leaves behind);
    # the tracking API does not need it.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = root / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        took = _wait_healthy(url, proc, log)
        print(f"\nmlflow server healthy after {took:.1f} s")
        yield url, root
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    """Terminate the server's whole process group (uvicorn runs as a child), then kill if needed."""
    for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.mark.server
def test_server_roundtrip(mlflow_server: tuple[str, Path], tmp_path: Path) -> None:
    url, root = mlflow_server
    tracker = Tracker(url, "server-test")
    parent = tracker.start_run("compare", key="parent")
    child = tracker.start_run("l1-seed0", parent_id=parent, key="l1-0", tags={"seed": "0"})
    tracker.log_params(child, {"dense": {"epochs": 3}, "method": "l1"})
    for epoch in range(3):
        tracker.log_metrics(child, {"val.acc": 0.5 + 0.1 * epoch}, step=epoch)
    model = tmp_path / "model.txt"
    model.write_text("pruned weights\n")
    tracker.log_artifact(child, model, "model")
    tracker.log_dict(child, {"conv1": 0.5}, "plan.json")
    tracker.end_run(child)
    tracker.end_run(parent)

    client = MlflowClient(tracking_uri=url)
    experiment = client.get_experiment_by_name("server-test")
    assert experiment is not None and experiment.artifact_location.startswith("mlflow-artifacts:")
    [run] = _children(client, experiment.experiment_id, parent)
    assert run.info.run_id == child and run.info.status == "FINISHED"
    assert run.data.params == {"dense.epochs": "3", "method": "l1"}
    assert run.data.tags["seed"] == "0"
    history = client.get_metric_history(child, "val.acc")
    assert sorted((m.step, round(m.value, 6)) for m in history) == [(0, 0.5), (1, 0.6), (2, 0.7)]
    local = Path(client.download_artifacts(child, "model/model.txt", str(tmp_path / "dl")))
    assert local.read_text() == "pruned weights\n"
    assert json.loads(Path(client.download_artifacts(child, "plan.json", str(tmp_path / "dl"))).read_text()) == {
        "conv1": 0.5
    }
    assert list((root / "art").rglob("model.txt")), "the server stored the artifact under --artifacts-destination"
    assert [r.info.run_id for r in Store.open(url).children(parent)] == [child]


@pytest.mark.server
def test_a_report_reads_runs_over_http(mlflow_server: tuple[str, Path]) -> None:
    """bench report against a tracking server: runs logged as bench logs them, read back over HTTP."""
    from reports.report import ReportRequest, build_report

    url, _ = mlflow_server
    tracker = Tracker(url, "report-over-http")
    parent = tracker.start_run("resnet20 cifar10 l1", key="report-parent", tags={"bench.model": "resnet20"})
    dense = {"test_acc": 0.91, "params": 270000, "macs": 40550000}
    for seed in (0, 1):
        for method, acc, macs in (("dense", 0.91 + seed / 100, 40550000), ("l1", 0.90 + seed / 100, 20200000)):
            run = tracker.start_run(f"{method} {seed}", parent_id=parent, key=f"{method}-{seed}",
                                    tags={"bench.method": method, "bench.seed": str(seed), "bench.dataset": "cifar10",
                                          "bench.model": "resnet20", "bench.baseline_key": f"k{seed}"})  # fmt: skip
            metrics = {"test_acc": acc, "params": 270000 if method == "dense" else 140000, "macs": macs,
                       "dense_test_acc": 0.91 + seed / 100, "dense_params": dense["params"],
                       "dense_macs": dense["macs"]}  # fmt: skip
            tracker.log_metrics(run, metrics)
            tracker.end_run(run)
    tracker.end_run(parent)
    report = build_report(ReportRequest(tracking_uri=url, run_ids=(parent,), fmt="md"))
    [table] = report.tables
    assert [row["method"] for row in table.rows] == ["dense", "l1"]
    assert table.rows[1]["n"] == "2" and table.rows[1]["test acc (%)"] == "90.50 +- 0.71"
    assert table.rows[1]["FLOPs red. (%)"].startswith("50.2")
