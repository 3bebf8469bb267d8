"""timm stems on 32 and 64 px inputs: every supported family is cut to a total stride of 8 (last stage
4x4 at 32 px, 8x8 at 64 px, measured here with a hook on the last stage timm lists), the change is
recorded on the model, the adapted model prunes through DepGraph, and other families are refused
with the reason, before any work starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from bench import measure, models, surgery
from bench.api import Context
from bench.config import PruneConfig
from bench.errors import BenchError
from bench.models import timm_models
from bench.pruning import default_plan
from bench.registry import get_method
from bench.schema import DENSE, Tag

pytestmark = pytest.mark.usefixtures("one_thread")

# model -> what its family's rule changes (the recorded description, before "; last stage ...")
CHANGES = {
    "resnet18": "conv1 7x7/2 -> 3x3/1, maxpool 3x3/2 removed",
    "mobilenetv3_small_100": "conv_stem 3x3/2 -> 3x3/1, blocks.0.0.conv_dw 3x3/2 -> 3x3/1",
    "efficientnet_b0": "conv_stem 3x3/2 -> 3x3/1, blocks.1.0.conv_dw 3x3/2 -> 3x3/1",
    "convnext_atto": "stem.0 4x4/4 -> 1x1/1 (patch size 1)",
    "regnetx_002": "stem.conv 3x3/2 -> 3x3/1, s1.b1.conv2.conv 3x3/2 -> 3x3/1, s1.b1.downsample.conv 1x1/2 -> 1x1/1",
}
SIZES = (32, 64)
TARGET = 0.3  # FLOPs reduction of the pruning check


def last_stage_size(model: nn.Module, size: int) -> tuple[int, int]:
    """Height and width of the last stage timm's ``feature_info`` lists, by a forward hook."""
    seen = {}

    def record(_module: nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
        seen["shape"] = out.shape

    handle = model.get_submodule(model.feature_info[-1]["module"]).register_forward_hook(record)
    with torch.no_grad():
        logits = model.eval()(torch.randn(2, 3, size, size))
    handle.remove()
    assert logits.shape == (2, 10)
    return tuple(seen["shape"][-2:])


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", list(CHANGES))
def test_each_family_runs_at_stride_8_and_records_what_changed(name: str, size: int) -> None:
    unadapted = models.create(f"timm:{name}", 10, 224)
    assert unadapted.bench_stem_adaptation == "none"  # above 64 px the ImageNet stem stays
    assert last_stage_size(unadapted, size) == (size // 32, size // 32)  # 1x1 at 32 px, 2x2 at 64 px

    model = models.create(f"timm:{name}", 10, size)
    side = size // 8
    assert last_stage_size(model, size) == (side, side)
    expected = f"{CHANGES[name]}; last stage {side}x{side} at {size} px (was {size // 32}x{size // 32})"
    assert model.bench_stem_adaptation == expected


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", list(CHANGES))
def test_each_adapted_family_prunes_through_depgraph(name: str, size: int) -> None:
    """l1 scores, the harness's FLOPs rule at 30%, DepGraph surgery, then forward and backward."""
    model_name = f"timm:{name}"
    model = models.create(model_name, 10, size)
    assert surgery.backend_of(model) == "depgraph"
    dense = measure.cost(model, size)
    units = surgery.prunable_units(model, size)
    ctx = Context(model_name, units, torch.device("cpu"), 0, torch.Generator().manual_seed(0), None, size,
                  prune=PruneConfig(target_flops_reduction=TARGET))  # fmt: skip
    scores = get_method("l1")().importance(model.eval(), ctx)
    plan = default_plan(ctx.prune, model_name, model, units, scores, backend="depgraph", input_size=size)
    surgery.apply(model, plan, size)

    pruned = measure.cost(model, size)
    assert abs((1 - pruned.macs / dense.macs) - TARGET) <= 0.01
    assert pruned.params < dense.params
    logits = model.train()(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 10)
    logits.sum().backward()
    assert last_stage_size(model, size) == (size // 8, size // 8)


# --- refused -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("vit_tiny_patch16_224", r"'vision_transformer' models are vision transformers: their patch and position"),
        ("swin_tiny_patch4_window7_224", r"'swin_transformer' models are vision transformers"),
        ("resnetv2_50", r"'resnetv2' family has no small-input rule in bench"),
    ],
)
def test_unsupported_families_are_refused_by_name_with_the_reason(name: str, why: str) -> None:
    for check in (lambda: models.validate_name(f"timm:{name}"), lambda: models.create(f"timm:{name}")):
        with pytest.raises(BenchError, match=why) as info:
            check()
        message = str(info.value)
        assert message.startswith(f"timm:{name} is not supported: ")
        for family in timm_models.FAMILIES:
            assert f"timm.list_models(module='{family.module}')" in message and f"timm:{family.example}" in message


def test_a_variant_the_rule_cannot_adapt_is_refused_by_measurement() -> None:
    """resnetblur18 is in timm's resnet module, but its stem downsamples with a BlurPool the rule does not
    touch: measured, its last stage stays at 2x2 on 32 px, so it is refused rather than run half-adapted."""
    models.validate_name("timm:resnetblur18")  # its family is supported by name
    with pytest.raises(BenchError, match=r"timm:resnetblur18: bench's ResNet rule .* last stage at 2x2 on 32 px"):
        models.create("timm:resnetblur18", 10, 32)
    assert models.create("timm:resnetblur18", 10, 224).bench_stem_adaptation == "none"


def test_list_models_names_each_family_and_its_rule() -> None:
    listed = models.list_models()
    assert "refused" in listed["timm:<name>"] and "stride 8" in listed["timm:<name>"]
    for family in timm_models.FAMILIES:
        line = listed[f"timm:{family.example}"]
        assert family.name in line and f"module='{family.module}'" in line and family.rule in line


@pytest.mark.slow
def test_a_refused_family_exits_2_before_any_work(tmp_path: Path) -> None:
    results = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--methods", "l1", "--model", "timm:vit_tiny_patch16_224",
         "--preset", "smoke", "--results-dir", str(results)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "vision transformers" in proc.stderr and "Traceback" not in proc.stderr
    assert not results.exists()


# --- end to end ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_smoke_run_of_a_timm_model_records_its_adaptation(tmp_path: Path, cifar_root: Path, dataset_cache: Path):
    """The cheapest of the five (mobilenetv3_small_100, about 70 s on 2 CPU cores) through `bench run`;
    every run of it carries the adaptation as the ``bench.stem_adaptation`` tag."""
    env = {**os.environ, "BENCH_DATA_DIR": str(cifar_root), "BENCH_DATASET_CACHE": str(dataset_cache)}
    env.pop("MLFLOW_TRACKING_URI", None)
    results = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--methods", "l1", "--model", "timm:mobilenetv3_small_100",
         "--preset", "smoke", "--seeds", "0", "--no-progress", "--results-dir", str(results)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{results / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("bench").experiment_id])
    children = [r for r in runs if r.data.tags.get(Tag.METHOD) in (DENSE, "l1")]
    assert len(children) == 2
    expected = f"{CHANGES['mobilenetv3_small_100']}; last stage 4x4 at 32 px (was 1x1)"
    assert {r.data.tags.get(Tag.STEM_ADAPTATION) for r in children} == {expected}
