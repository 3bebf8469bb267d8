"""The scratch control: another method's plans replayed onto a fresh init and trained for the source's
epoch budget, from the same run or from an MLflow run id, on real CIFAR-10 images."""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient
from test_run import SMOKE, _env, bench

from bench import measure
from bench.api import Inherited
from bench.errors import BenchError
from bench.pruning import inherited_model
from bench.testing import run_pipeline
from methods.l1 import L1Norm
from methods.scratch import Scratch, budget_epochs

pytestmark = pytest.mark.usefixtures("one_thread")


def _inherited(epochs: int, macs: int, dense_macs: int) -> Inherited:
    return Inherited("l1", None, (), epochs, macs, dense_macs)


def test_budget_is_the_sources_epochs_or_its_compute() -> None:
    assert budget_epochs("epochs", _inherited(20, 50, 100)) == 20
    assert budget_epochs("flops", _inherited(20, 50, 100)) == 40  # half the MACs per epoch: twice the epochs
    assert budget_epochs("flops", _inherited(20, 60, 100)) == 33  # 20 / 0.6 = 33.3, whole epochs
    assert budget_epochs("epochs", _inherited(0, 50, 100)) == 1


def test_plan_source_defaults_to_the_first_other_method_and_is_validated() -> None:
    assert Scratch().plan_source(("scratch", "ffr", "l1")) == "ffr"
    assert Scratch.from_params({"source": "run:abc"}).plan_source(("scratch",)) == "run:abc"
    with pytest.raises(BenchError, match="list another method before it"):
        Scratch().plan_source(("scratch",))
    with pytest.raises(BenchError, match="budget must be one of epochs, flops"):
        Scratch.from_params({"budget": "time"})
    with pytest.raises(BenchError, match="needs an MLflow run id"):
        Scratch.from_params({"source": "run:"})


def test_inherited_model_has_the_sources_shapes_and_fresh_weights() -> None:
    source = run_pipeline(L1Norm, "resnet20", 0.5, seed=0)
    fresh = inherited_model("resnet20", 10, 32, [source.plan], fresh_init_seed=3)
    assert measure.cost(fresh, 32) == source.pruned_cost
    for name, weight in fresh.state_dict().items():
        assert weight.shape == source.model.state_dict()[name].shape, name
    conv = fresh.layer2[0].conv1.weight
    assert not torch.equal(conv, source.model.layer2[0].conv1.weight)
    fan_out = conv.shape[0] * conv.shape[2] * conv.shape[3]  # kaiming fan-out at the pruned width
    assert conv.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.2)
    kept = inherited_model("resnet20", 10, 32, [source.plan], fresh_init_seed=None)
    assert not torch.equal(kept.layer2[0].conv1.weight, conv)


# --- through the CLI, on real images ------------------------------------------------------------


def _children(results) -> dict[str, object]:
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("bench")
    runs = client.search_runs([exp.experiment_id], max_results=1000, order_by=["attributes.start_time DESC"])
    return client, [r for r in runs if "mlflow.parentRunId" in r.data.tags]


@pytest.mark.slow
def test_scratch_trains_the_same_runs_l1_architecture_then_one_named_by_run_id(
    tmp_path, cifar_root, dataset_cache
) -> None:
    env, results = _env(cifar_root, dataset_cache), tmp_path / "results"
    args = ["run", *SMOKE, "--results-dir", str(results)]
    first = bench([*args, "--methods", "scratch,l1"], tmp_path, env)  # scratch listed first: it still runs last
    assert first.returncode == 0, first.stderr[-3000:]
    assert "scratch: train (l1's architecture)" in first.stdout
    table = [line.split("|")[1].strip() for line in first.stdout.splitlines() if line.startswith("| ")]
    assert table[1:] == ["dense", "l1", "scratch"]

    client, children = _children(results)
    by_method = {r.data.tags["bench.method"]: r for r in children}
    l1, scratch = by_method["l1"], by_method["scratch"]
    assert scratch.data.tags["bench.plan_source"] == "l1"
    assert scratch.data.tags["bench.plan_source_run"] == l1.info.run_id
    assert l1.data.metrics["train_epochs"] == 3  # smoke: 2 dense epochs + 1 fine-tune epoch
    assert scratch.data.metrics["train_epochs"] == 3
    assert len(client.get_metric_history(scratch.info.run_id, "train/val_acc")) == 3
    assert scratch.data.metrics["macs"] == l1.data.metrics["macs"]
    assert scratch.data.metrics["params"] == l1.data.metrics["params"]

    again = bench(
        [
            *args,
            "--methods",
            "scratch",
            "--set",
            f"method.scratch.params.source=run:{l1.info.run_id}",
            "--set",
            "method.scratch.params.budget=flops",
        ],
        tmp_path,
        env,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    _, children = _children(results)
    newest = next(r for r in children if r.data.tags["bench.method"] == "scratch")
    assert newest.info.run_id != scratch.info.run_id
    assert newest.data.tags["bench.plan_source_run"] == l1.info.run_id
    expected = round(3 * l1.data.metrics["dense_macs"] / l1.data.metrics["macs"])  # Scratch-B: same compute
    assert newest.data.metrics["train_epochs"] == expected
    assert newest.data.metrics["macs"] == l1.data.metrics["macs"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--methods", "scratch"], "list another method before it"),
        (["--methods", "scratch,l1", "--set", "method.scratch.params.source=slim"], "not another method of this run"),
        (["--methods", "scratch", "--set", "method.scratch.params.source=run:0123abcd"], "no MLflow run '0123abcd'"),
    ],
)
def test_bad_plan_sources_fail_before_any_training(tmp_path, cifar_root, dataset_cache, extra, message) -> None:
    args = ["run", *SMOKE, "--results-dir", str(tmp_path / "r"), *extra]
    proc = bench(args, tmp_path, _env(cifar_root, dataset_cache))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert "epoch 1/" not in proc.stdout
