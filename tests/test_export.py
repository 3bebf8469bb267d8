"""Models back out: ``bench.load_pruned`` rebuilds a finished run's pruned model for any dataset and
input size (CIFAR-10 at 32 px with 10 classes, Tiny ImageNet at 64 px with 200, a timm model), and
``bench export`` writes it as safetensors, a ``torch.export`` program and ONNX, each loaded in a fresh
interpreter in which bench cannot be imported and compared with the pruned model. The MLflow model
(``log_mlflow_model``) loads with ``mlflow.pytorch.load_model``. All on real smoke runs of real images,
stored in a real MLflow store by the real CLI."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from bench import datasets, measure
from bench.errors import BenchError
from bench.export import FORMATS, example_input, log_mlflow_model, normalization, read_stored, rebuild
from bench.plan import PruningPlan

pytestmark = pytest.mark.slow
SMALL = ["--preset", "smoke", "--seeds", "0", "--no-progress", "--set", "data.train_limit=256"]
TINY = "tinyimagenet"
NO_BENCH = "import sys\nsys.modules['bench'] = None  # any 'import bench' now fails\n"  # prefix of fresh interpreters


@dataclass(frozen=True)
class Store:
    work: Path
    results: Path
    env: dict[str, str]
    uri: str

    def child(self, dataset: str, method: str, model: str = "resnet20") -> str:
        client = MlflowClient(self.uri)
        experiment = client.get_experiment_by_name("bench")
        for run in client.search_runs([experiment.experiment_id]):
            tags = run.data.tags
            found = (tags.get("bench.dataset"), tags.get("bench.method"), tags.get("bench.model"))
            if found == (dataset, method, model):
                return run.info.run_id
        raise AssertionError(f"no {method} run of {model} on {dataset}")


def bench(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def without_bench(code: str, cwd: Path) -> str:
    """Run ``code`` in a fresh isolated interpreter in which bench cannot be imported; its stdout."""
    check = "\nassert not [m for m in sys.modules if m.split('.')[0] == 'bench' and sys.modules[m] is not None]\n"
    done = subprocess.run(
        [sys.executable, "-I", "-c", NO_BENCH + code + check], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def assert_same_outputs_without_bench(model: torch.nn.Module, x: torch.Tensor, load: str, tmp_path: Path) -> None:
    """``load`` (code that defines ``f``, a callable from a batch tensor to logits) run without bench
    gives ``model``'s outputs on ``x`` and on its first image alone (the batch dimension is dynamic)."""
    torch.save(x, tmp_path / "x.pt")
    without_bench(
        load + f"x = torch.load({str(tmp_path / 'x.pt')!r})\n"
        f"torch.save((f(x), f(x[:1])), {str(tmp_path / 'y.pt')!r})\n",
        tmp_path,
    )
    y, y1 = torch.load(tmp_path / "y.pt")
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(y1, expected[:1], atol=1e-5, rtol=0)


@pytest.fixture(scope="module")
def store(tmp_path_factory, cifar_root: Path, dataset_cache: Path) -> Store:
    """l1 on resnet20, smoke preset, on CIFAR-10 and on Tiny ImageNet, in one real MLflow store."""
    if not (cifar_root / "tiny-imagenet-200-subset").is_dir():
        pytest.fail(f"{cifar_root} has no tiny-imagenet-200-subset/")
    work = tmp_path_factory.mktemp("export")
    env = {**os.environ, "BENCH_DATA_DIR": str(cifar_root), "BENCH_DATASET_CACHE": str(dataset_cache)}
    env.pop("MLFLOW_TRACKING_URI", None)
    results = work / "results"
    for dataset, limit in (("cifar10", 200), (TINY, 200)):  # Tiny ImageNet: one test image per class
        args = ["run", "--methods", "l1", "--model", "resnet20", "--dataset", dataset, *SMALL]
        proc = bench([*args, "--set", f"data.test_limit={limit}", "--results-dir", str(results)], work, env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return Store(work, results, env, f"sqlite:///{results / 'mlflow.db'}")


def _test_split(store: Store, run_id: str) -> datasets.Split:
    """The run's own test split, rebuilt from its stored config."""
    client = MlflowClient(store.uri)
    data = json.loads(Path(client.download_artifacts(run_id, "config.json", str(store.work))).read_text())["data"]
    return datasets.build(
        data["name"],
        store.env["BENCH_DATA_DIR"],
        cache_dir=Path(store.env["BENCH_DATASET_CACHE"]),
        val_size=data["val_size"],
        split_seed=data["split_seed"],
        train_limit=data["train_limit"],
        test_limit=data["test_limit"],
    ).test


def _normalized(images: torch.Tensor, dataset: str) -> torch.Tensor:
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in normalization(dataset))
    return (images.float() / 255 - mean) / std


# --- load_pruned -------------------------------------------------------------------------------


@pytest.mark.parametrize(("dataset", "classes", "px"), [("cifar10", 10, 32), (TINY, 200, 64)])
def test_load_pruned_rebuilds_the_runs_model_for_its_dataset(store: Store, dataset: str, classes: int, px: int) -> None:
    """The rebuilt model is the run's: its params and MACs (at the run's input size) are the run's,
    and on the run's test split it scores exactly the run's test accuracy."""
    import bench

    run_id = store.child(dataset, "l1")
    metrics = MlflowClient(store.uri).get_run(run_id).data.metrics
    model = bench.load_pruned(run_id, tracking_uri=store.uri)
    assert not model.training
    assert measure.count_params(model) == metrics["params"] < metrics["dense_params"]
    assert measure.cost(model, px).macs == metrics["macs"]  # MACs grow with the input size: 64 px is right
    test = _test_split(store, run_id)
    with torch.no_grad():
        logits = model(_normalized(test.images, dataset))
    assert logits.shape == (len(test), classes)
    correct = (logits.argmax(1) == test.labels).sum().item()
    assert correct / len(test) == pytest.approx(metrics["test_acc"], abs=1e-12)


def test_the_old_readme_snippet_fails_on_tiny_imagenet_where_load_pruned_works(store: Store) -> None:
    """The README's earlier recipe assumed 10 classes at 32 px (the reported size mismatch)."""
    from bench import models, surgery

    stored = read_stored(store.child(TINY, "l1"), store.uri)
    model = models.create("resnet20")
    for plan in stored.plans:
        surgery.apply(model, plan)
    with pytest.raises(RuntimeError, match=r"size mismatch for fc.weight"):
        model.load_state_dict(stored.state)
    assert (stored.num_classes, stored.input_size) == (200, 64)


def test_load_pruned_of_a_dense_run_is_the_dense_model(store: Store) -> None:
    import bench

    run_id = store.child(TINY, "dense")
    metrics = MlflowClient(store.uri).get_run(run_id).data.metrics
    model = bench.load_pruned(run_id, tracking_uri=store.uri)
    assert measure.count_params(model) == metrics["params"] == metrics["dense_params"]
    assert read_stored(run_id, store.uri).plans == ()


def test_load_pruned_leaves_the_global_rng_alone(store: Store) -> None:
    import bench

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    bench.load_pruned(store.child("cifar10", "l1"), tracking_uri=store.uri)
    assert torch.equal(torch.rand(3), expected)


def test_a_run_without_a_model_is_a_one_line_error_naming_it(store: Store, tmp_path: Path, monkeypatch) -> None:
    import bench

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client = MlflowClient(store.uri)
    missing = "0123456789abcdef0123456789abcdef"
    with pytest.raises(BenchError, match=f"no MLflow run '{missing}'"):
        bench.load_pruned(missing, tracking_uri=store.uri)
    parent_id = client.get_run(store.child("cifar10", "l1")).data.tags["mlflow.parentRunId"]
    with pytest.raises(BenchError, match=f"'{parent_id}' is the parent run of a bench run.* l1 s0 [0-9a-f]{{32}}"):
        bench.load_pruned(parent_id, tracking_uri=store.uri)
    bare = client.create_run(client.get_experiment_by_name("bench").experiment_id).info.run_id
    client.set_terminated(bare, "KILLED")
    with pytest.raises(BenchError, match=f"'{bare}' \\(KILLED\\) has no model.pt"):
        bench.load_pruned(bare, tracking_uri=store.uri)
    with pytest.raises(BenchError, match="no MLflow store"):
        bench.load_pruned(bare, results_dir=tmp_path)


def test_load_pruned_rebuilds_a_timm_model(store: Store) -> None:
    """timm:resnet10t (DepGraph surgery, the adapted stem), the smallest slice that trains."""
    args = ["run", "--methods", "l1", "--model", "timm:resnet10t", *SMALL, "--set", "data.train_limit=128"]
    args += ["--set", "data.val_size=64", "--set", "data.test_limit=64", "--set", "dense.epochs=1"]
    proc = bench([*args, "--results-dir", str(store.results)], store.work, store.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = store.child("cifar10", "l1", "timm:resnet10t")
    metrics = MlflowClient(store.uri).get_run(run_id).data.metrics
    stored = read_stored(run_id, store.uri)
    assert stored.plans and stored.plans[0].backend == "depgraph"
    model = rebuild(stored)
    assert measure.count_params(model) == metrics["params"]
    assert measure.cost(model, 32).macs == metrics["macs"]


# --- export ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(store: Store) -> tuple[str, torch.nn.Module, torch.Tensor]:
    """The Tiny ImageNet l1 run: its id, its pruned model and a batch of its own test images."""
    run_id = store.child(TINY, "l1")
    test = _test_split(store, run_id)
    return run_id, rebuild(read_stored(run_id, store.uri)), _normalized(test.images[:5], TINY)


def _export(store: Store, run_id: str, fmt: str, out: Path) -> list[Path]:
    args = ["export", run_id, "--format", fmt, "--out", str(out), "--results-dir", str(store.results)]
    proc = bench(args, store.work, store.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = [Path(line.removeprefix("wrote ")) for line in proc.stdout.splitlines() if line.startswith("wrote ")]
    assert all(path.is_file() for path in written)
    return written


def test_pt2_export_runs_without_bench_and_matches(store: Store, tiny_model, tmp_path: Path) -> None:
    run_id, model, x = tiny_model
    meta_file, program = _export(store, run_id, "pt2", tmp_path)
    assert program.suffix == ".pt2" and meta_file.suffix == ".json"
    load = f"import torch\nf = torch.export.load({str(program)!r}).module()\n"
    assert_same_outputs_without_bench(model, x, load, tmp_path)


def test_safetensors_export_holds_the_weights_and_the_architecture(store: Store, tiny_model, tmp_path: Path) -> None:
    """Read without bench: every tensor equals the pruned model's, and the JSON (beside it and in the
    header) names the model, classes, input, normalisation, each layer's channels and the plans."""
    run_id, model, _ = tiny_model
    meta_file, weights = _export(store, run_id, "safetensors", tmp_path)
    torch.save(model.state_dict(), tmp_path / "expected.pt")
    out = without_bench(
        "import json, torch\nfrom safetensors import safe_open\nfrom safetensors.torch import load_file\n"
        f"got = load_file({str(weights)!r})\nexpected = torch.load({str(tmp_path / 'expected.pt')!r})\n"
        "assert got.keys() == expected.keys()\n"
        "assert all(torch.equal(got[k], expected[k]) for k in got)\n"
        f"with safe_open({str(weights)!r}, 'pt') as f:\n    header = json.loads(f.metadata()['bench'])\n"
        f"assert header == json.load(open({str(meta_file)!r}))\nprint(json.dumps(header))\n",
        tmp_path,
    )
    meta = json.loads(out)
    assert (meta["model"], meta["method"], meta["seed"], meta["run_id"]) == ("resnet20", "l1", 0, run_id)
    assert (meta["dataset"], meta["num_classes"], meta["input_size"]) == (TINY, 200, 64)
    assert meta["input"]["normalize"] == {"mean": list(normalization(TINY)[0]), "std": list(normalization(TINY)[1])}
    convs = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert {n: (meta["layers"][n]["in"], meta["layers"][n]["out"]) for n in convs} == {
        n: (m.in_channels, m.out_channels) for n, m in convs.items()
    }
    assert meta["layers"]["fc"] == {"type": "Linear", "in": model.fc.in_features, "out": 200}
    assert [PruningPlan.from_dict(p) for p in meta["plans"]] == list(read_stored(run_id, store.uri).plans)


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime is not installed")
def test_onnx_export_runs_in_onnxruntime_and_matches(store: Store, tiny_model, tmp_path: Path) -> None:
    if any(importlib.util.find_spec(name) is None for name in ("onnx", "onnxscript")):
        pytest.skip("onnx/onnxscript are not installed (test_onnx_without_its_packages_is_a_clear_error covers it)")
    run_id, model, x = tiny_model
    _, graph = _export(store, run_id, "onnx", tmp_path)
    load = (
        f"import onnxruntime, torch\nsession = onnxruntime.InferenceSession({str(graph)!r})\n"
        "def f(x):\n    return torch.from_numpy(session.run(None, {'input': x.numpy()})[0])\n"
    )
    assert_same_outputs_without_bench(model, x, load, tmp_path)


# the interpreter without the ONNX packages: a None in sys.modules is what importlib reports as not installed
WITHOUT_ONNX = "import sys; sys.modules.update(onnx=None, onnxscript=None); from bench.cli import main; "


def test_onnx_without_its_packages_is_a_clear_error(store: Store) -> None:
    args = ["export", "0" * 32, "--format", "onnx", "--results-dir", str(store.results)]
    code = WITHOUT_ONNX + f"raise SystemExit(main({args!r}))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=store.work, env=store.env, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "needs the package(s)" in proc.stderr and "uv sync --extra onnx" in proc.stderr


def test_export_errors_exit_2_with_one_line(store: Store, tmp_path: Path) -> None:
    results = ["--results-dir", str(store.results), "--out", str(tmp_path)]
    bad_format = bench(["export", store.child("cifar10", "l1"), "--format", "tflite", *results], store.work, store.env)
    assert bad_format.returncode == 2
    assert bad_format.stderr.strip().splitlines() == [
        f"error: unknown export format 'tflite'. Valid export formats: {', '.join(sorted(FORMATS))}."
    ]
    unknown = bench(["export", "f" * 32, *results], store.work, store.env)
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert f"no MLflow run '{'f' * 32}'" in unknown.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_the_cli_names_the_formats_of_bench_export() -> None:
    from bench.cli.export import FORMAT_NAMES

    assert set(FORMAT_NAMES) == set(FORMATS)


# --- the MLflow model --------------------------------------------------------------------------


def test_log_mlflow_model_loads_with_mlflow_pytorch_without_bench(tiny_model, tmp_path: Path) -> None:
    """Logged into a run of a fresh sqlite store; ``mlflow.pytorch.load_model("runs:/<id>/model")``
    in an interpreter without bench gives the same outputs, for any batch size."""
    _, model, x = tiny_model
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("export", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment).info.run_id
    start = time.perf_counter()
    assert log_mlflow_model(model, run_id, example_input(64), client) is None
    print(f"log_mlflow_model: {time.perf_counter() - start:.1f} s")  # measured for the report (-s shows it)
    assert "model/MLmodel" in {a.path for a in client.list_artifacts(run_id, "model")}
    load = (
        f"import mlflow, mlflow.pytorch, torch\nmlflow.set_tracking_uri({uri!r})\n"
        f"f = mlflow.pytorch.load_model('runs:/{run_id}/model')\n"
    )
    assert_same_outputs_without_bench(model, x, load, tmp_path)


def test_a_model_that_cannot_be_logged_leaves_the_run_alone(tmp_path: Path, capsys) -> None:
    """A failed export is a warning and a returned reason, never an exception that would fail the run."""
    from bench import models

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("export", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(experiment).info.run_id
    reason = log_mlflow_model(models.create("resnet20"), run_id, torch.randn(2, 5, 32, 32), client)  # 5 channels
    assert reason is not None and "5 channels" in reason
    assert f"warning: the MLflow model of run {run_id} was not logged" in capsys.readouterr().err
    assert not client.list_artifacts(run_id)
