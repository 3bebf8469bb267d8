"""The scratch control (Liu et al., ICLR 2019): another method's plans replayed onto a fresh init and
trained with the dense recipe for Scratch-E, Scratch-B or the source's pipeline budget, from the same
run or from an MLflow run id, on real CIFAR-10 images."""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient
from test_run import SMOKE, _env, bench

from bench import controls, measure
from bench.config import from_dict
from bench.errors import BenchError
from bench.models import create
from bench.pruning import replay
from bench.schema import stored_number
from bench.testing import run_pipeline
from methods.l1 import L1Norm

pytestmark = pytest.mark.usefixtures("one_thread")


def _row(budget: str) -> controls.ScratchControl:
    return controls.ScratchControl(f"scratch-{budget}", budget, "l1")


def test_budgets_are_liu_et_als_and_the_pipelines() -> None:
    cfg = from_dict({"dense": {"epochs": 160}})
    assert _row("E").epochs(cfg, source_epochs=200, macs_ratio=2.0) == 160  # the dense model's epochs
    assert _row("B").epochs(cfg, source_epochs=200, macs_ratio=2.0) == 320  # same compute: x dense/pruned MACs
    assert _row("B").epochs(cfg, source_epochs=200, macs_ratio=1 / 0.6) == 267
    assert _row("pipeline").epochs(cfg, source_epochs=200, macs_ratio=2.0) == 200
    matched = from_dict({"dense": {"epochs": 160}, "budget": 100})
    assert _row("E").epochs(matched, source_epochs=100, macs_ratio=2.0) == 100  # the budget replaces the dense epochs
    assert _row("B").epochs(matched, source_epochs=100, macs_ratio=2.0) == 200


def test_scratch_expands_to_its_budgets_and_checks_its_source() -> None:
    cfg = from_dict({"methods": ["scratch", "ffr", "l1"]})
    assert controls.expand(cfg) == ("scratch-E", "scratch-B", "ffr", "l1")
    assert {row.source for row in controls.controls(cfg).values()} == {"ffr"}
    three = from_dict({"methods": ["l1", "scratch"], "scratch": {"budgets": ["pipeline", "E", "B"]}})
    assert controls.expand(three) == ("l1", "scratch-pipeline", "scratch-E", "scratch-B")
    with pytest.raises(BenchError, match="list a pruning method in --methods"):
        controls.controls(from_dict({"methods": ["scratch"]}))
    with pytest.raises(BenchError, match="'slim' is not a pruning method of this run"):
        controls.controls(from_dict({"methods": ["l1", "scratch-B"], "scratch": {"source": "slim"}}))
    with pytest.raises(BenchError, match=r"scratch\.budgets must be one of E, B, pipeline"):
        from_dict({"scratch": {"budgets": ["flops"]}})
    with pytest.raises(BenchError, match="needs an MLflow run id"):
        from_dict({"scratch": {"source": "run:"}})


def test_replay_gives_the_sources_shapes_and_fresh_weights() -> None:
    source = run_pipeline(L1Norm, "resnet20", 0.5, seed=0)
    fresh = create("resnet20", 10, 32)
    replay(fresh, [source.plan], 32, fresh_init_seed=3)
    assert measure.cost(fresh, 32) == source.pruned_cost
    for name, weight in fresh.state_dict().items():
        assert weight.shape == source.model.state_dict()[name].shape, name
    conv = fresh.layer2[0].conv1.weight
    assert not torch.equal(conv, source.model.layer2[0].conv1.weight)
    fan_out = conv.shape[0] * conv.shape[2] * conv.shape[3]  # kaiming fan-out at the pruned width
    assert conv.std().item() == pytest.approx((2 / fan_out) ** 0.5, rel=0.2)
    again = create("resnet20", 10, 32)
    replay(again, [source.plan], 32, fresh_init_seed=3)
    assert torch.equal(again.layer2[0].conv1.weight, conv)  # the seed reproduces the draw


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
    assert "scratch-B: train (l1's architecture)" in first.stdout
    table = [line.split("|")[1].strip() for line in first.stdout.splitlines() if line.startswith("| ")]
    assert table[1:] == ["dense", "l1", "scratch-E", "scratch-B"]

    client, children = _children(results)
    by_method = {r.data.tags["bench.method"]: r for r in children}
    l1, e_row, b_row = by_method["l1"], by_method["scratch-E"], by_method["scratch-B"]
    for row in (e_row, b_row):
        assert row.data.tags["bench.plan_source"] == "l1"
        assert row.data.tags["bench.plan_source_run"] == l1.info.run_id
        assert row.data.metrics["macs"] == l1.data.metrics["macs"]
        assert row.data.metrics["params"] == l1.data.metrics["params"]
        assert row.data.params["train_schedule.lr"] == "0.05"  # the smoke preset's dense recipe
    assert stored_number(l1.data, "train_epochs") == 3  # smoke: 2 dense epochs + 1 fine-tune epoch
    assert stored_number(e_row.data, "train_epochs") == 2  # Scratch-E: the dense model's epochs
    expected = round(2 * l1.data.metrics["dense_macs"] / l1.data.metrics["macs"])  # Scratch-B: same compute
    assert stored_number(b_row.data, "train_epochs") == expected
    assert len(client.get_metric_history(b_row.info.run_id, "train/val_acc")) == expected
    assert e_row.data.tags["bench.protocol"] != b_row.data.tags["bench.protocol"]

    again = bench(
        [*args, "--methods", "scratch-pipeline", "--set", f"scratch.source=run:{l1.info.run_id}"], tmp_path, env
    )
    assert again.returncode == 0, again.stderr[-3000:]
    _, children = _children(results)
    newest = next(r for r in children if r.data.tags["bench.method"] == "scratch-pipeline")
    assert newest.data.tags["bench.plan_source_run"] == l1.info.run_id
    assert stored_number(newest.data, "train_epochs") == 3  # the source's whole pipeline
    assert newest.data.metrics["macs"] == l1.data.metrics["macs"]


@pytest.mark.slow
def test_a_matched_budget_gives_every_method_the_same_total(tmp_path, cifar_root, dataset_cache) -> None:
    env, results = _env(cifar_root, dataset_cache), tmp_path / "results"
    args = ["run", *SMOKE, "--results-dir", str(results), "--methods", "l1,slim,scratch-E", "--budget", "4"]
    proc = bench(args, tmp_path, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "matched to --budget 4" in proc.stdout
    _, children = _children(results)
    by_method = {r.data.tags["bench.method"]: r for r in children}
    totals = {m: stored_number(by_method[m].data, "train_epochs") for m in ("l1", "slim", "scratch-E")}
    assert totals == {"l1": 4, "slim": 4, "scratch-E": 4}
    slim = by_method["slim"].data  # smoke: sparsity 2 (the dense recipe) : fine-tune 1, scaled to 4
    assert (stored_number(slim, "budget/sparsity_epochs"), stored_number(slim, "budget/finetune_epochs")) == (3, 1)
    l1 = by_method["l1"].data
    assert (stored_number(l1, "budget/dense_epochs"), stored_number(l1, "budget/finetune_epochs")) == (2, 2)
    assert stored_number(l1, "train_images") == 4 * stored_number(l1, "budget/dense_images") / 2
    assert by_method["l1"].data.params["protocol.budget"] == "4"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--methods", "scratch"], "list a pruning method in --methods"),
        (["--methods", "scratch,l1", "--set", "scratch.source=slim"], "not a pruning method of this run"),
        (["--methods", "scratch", "--set", "scratch.source=run:0123abcd"], "no MLflow run '0123abcd'"),
        (["--methods", "oicsr", "--budget", "4"], "leaves oicsr 2 epoch(s) after its 2 dense epochs"),
    ],
)
def test_bad_sources_and_budgets_fail_before_any_training(tmp_path, cifar_root, dataset_cache, extra, message) -> None:
    args = ["run", *SMOKE, "--results-dir", str(tmp_path / "r"), *extra]
    proc = bench(args, tmp_path, _env(cifar_root, dataset_cache))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert "epoch 1/" not in proc.stdout
