"""The Python API for notebooks: ``bench.run`` returns the results table as a DataFrame from a real
smoke run (through the CLI's config checks and the same runner), ``bench.report`` returns the report's
tables from that store, bad input is a ``BenchError`` before any work, and ``import bench`` stays light
(the API loads on first use)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from bench.errors import BenchError
from bench.notebook import settings_layer
from bench.schema import ROW_HEAD


def test_import_bench_loads_no_torch_mlflow_or_pandas_until_the_api_is_used() -> None:
    code = (
        "import sys, bench\n"
        "heavy = [m for m in ('torch', 'mlflow', 'pandas', 'bench.notebook', 'bench.export') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert {'run', 'report', 'load_pruned'} <= set(dir(bench))\n"
        "from bench import errors, schema  # submodules still import through the package\n"
        "try:\n    bench.nope\nexcept AttributeError as exc:\n    assert 'nope' in str(exc)\n"
        "assert bench.run.__module__ == 'bench.notebook' and bench.load_pruned.__module__ == 'bench.export'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_settings_map_to_set_keys() -> None:
    assert settings_layer({"finetune__epochs": 2, "latency": True}) == {"finetune": {"epochs": 2}, "latency": True}
    assert settings_layer({"method.slim.params.lam": 1e-4, "method__slim__params__x": "a"}) == {
        "method": {"slim": {"params": {"lam": 1e-4, "x": "a"}}}
    }
    with pytest.raises(BenchError, match="malformed setting 'finetune__'"):
        settings_layer({"finetune__": 2})
    with pytest.raises(BenchError, match="conflicts"):
        settings_layer({"latency": True, "latency__x": 1})


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"seeds": -1}, "seeds must be non-negative integers"),
        ({"model": "resnet21"}, "unknown model 'resnet21'. Did you mean 'resnet20'?"),
        ({"finetune__epoch": 2}, "unknown config key 'finetune.epoch'. Did you mean 'finetune.epochs'?"),
        ({"methods": "l2"}, "unknown method 'l2'. Did you mean 'l1'?"),
        ({"methods": []}, "methods is empty"),
        ({"preset": "smokey"}, "smoke"),
        ({"target_flops_reduction": 1.5}, "target_flops_reduction"),
    ],
)
def test_bad_input_is_a_bench_error_before_any_work(tmp_path: Path, given: dict, message: str) -> None:
    import bench

    args = {"methods": "l1", "model": "resnet20", "preset": "smoke", "results_dir": tmp_path, **given}
    with pytest.raises(BenchError, match=message.replace("(", r"\(").replace("?", r"\?")):
        bench.run(**args)
    assert not list(tmp_path.iterdir())  # no store, no cache, no run


def test_report_of_a_missing_store_or_two_selections_is_a_bench_error(tmp_path: Path, monkeypatch) -> None:
    import bench

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(BenchError, match="no MLflow store"):
        bench.report(results_dir=tmp_path)
    with pytest.raises(BenchError, match="choose one of"):
        bench.report(experiment="bench", runs="abc", results_dir=tmp_path)


# --- a real smoke run ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ran(tmp_path_factory, cifar_root: Path, dataset_cache: Path) -> tuple[pd.DataFrame, Path, str]:
    """``bench.run`` of l1 on resnet20, smoke preset, in this process; its table, results dir and output."""
    import contextlib
    import io

    import bench

    results = tmp_path_factory.mktemp("api") / "results"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setenv("BENCH_DATASET_CACHE", str(dataset_cache))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        frame = bench.run(
            methods=["l1"],
            model="resnet20",
            preset="smoke",
            seeds=[0],
            data_dir=cifar_root,
            results_dir=results,
            progress=False,
            data__train_limit=256,  # a --set key, with __ for the dot
        )
    return frame, results, printed.getvalue()


@pytest.mark.slow
def test_run_returns_one_row_per_method_and_seed(ran) -> None:
    frame, results, printed = ran
    assert "plan: resnet20 on CIFAR-10 (JPEG copy)" in printed and "| l1 | 1 | 3 |" in printed  # as bench run
    assert list(frame.columns[: len(ROW_HEAD)]) == list(ROW_HEAD) and "run_id" in frame
    assert list(zip(frame["method"], frame["seed"], strict=True)) == [("dense", 0), ("l1", 0)]
    assert frame.loc[1, "flops_reduction"] == pytest.approx(0.5, abs=0.01)  # the smoke preset's target
    assert 0 <= frame.loc[1, "test_acc"] <= 1 and frame.loc[1, "train_epochs"] == 3
    assert frame.attrs["tracking_uri"] == f"sqlite:///{results.resolve() / 'mlflow.db'}"
    client = MlflowClient(frame.attrs["tracking_uri"])
    runs = {run_id: client.get_run(run_id) for run_id in frame["run_id"]}
    assert {run.info.status for run in runs.values()} == {"FINISHED"}
    parent = client.get_run(runs[frame.loc[1, "run_id"]].data.tags["mlflow.parentRunId"])
    assert parent.data.params["data.train_limit"] == "256"  # the setting reached the config
    assert parent.info.status == "FINISHED"


@pytest.mark.slow
def test_report_returns_the_tables_of_the_run(ran) -> None:
    import bench

    frame, results, _ = ran
    by_runs = bench.report(runs=frame["run_id"], results_dir=results)
    by_experiment = bench.report(experiment="bench", results_dir=results)
    assert isinstance(by_runs, bench.Report)
    ((title, table),) = by_runs.tables.items()
    assert title.startswith("resnet20 on CIFAR-10 (JPEG copy)")
    assert list(table["method"]) == ["dense", "l1"] and "test acc (%)" in table
    assert by_experiment.tables[title].equals(table)
    numbers = by_runs.numbers.set_index("method")
    assert numbers.loc["l1", "test_acc_mean"] == pytest.approx(100 * frame.loc[1, "test_acc"], abs=1e-4)
    assert numbers.loc["l1", "macs_m"] == pytest.approx(frame.loc[1, "macs"] / 1e6, abs=1e-6)
    assert set(by_runs.runs["run_id"]) == set(frame["run_id"])
    assert "| method |" in by_runs._repr_markdown_()


@pytest.mark.slow
def test_the_run_ids_give_the_models_back(ran) -> None:
    import bench
    from bench import measure

    frame, _, _ = ran
    model = bench.load_pruned(frame.loc[1, "run_id"], tracking_uri=frame.attrs["tracking_uri"])
    assert measure.count_params(model) == frame.loc[1, "params"]
