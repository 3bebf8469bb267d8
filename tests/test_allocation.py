"""Allocation: analytic cost model, the allocation rules, and Li et al.'s named plans (methods/README.md)."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn

from bench import allocation, measure, models, named_plans, surgery
from bench.allocation import CostModel, by_channel_fraction, by_flops_target, by_layer_ratio, plan_from_counts
from bench.errors import BenchError
from bench.units import PrunableUnit, chain_unit

pytestmark = pytest.mark.usefixtures("one_thread")


def l1_scores(model: nn.Module, units: list[PrunableUnit]) -> dict[str, torch.Tensor]:
    """Filter L1 norms of each unit's producing conv (Li et al.)."""
    return {u.name: model.get_submodule(u.producer).weight.detach().abs().sum(dim=(1, 2, 3)) for u in units}


def random_counts(units: list[PrunableUnit], seed: int) -> dict[str, int]:
    g = torch.Generator().manual_seed(seed)
    return {u.name: int(torch.randint(1, u.channels + 1, (1,), generator=g)) for u in units}


def random_scores(units: list[PrunableUnit], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {u.name: torch.rand(u.channels, generator=g) for u in units}


@pytest.fixture(scope="module")
def resnet56():
    torch.manual_seed(0)
    model = models.create("resnet56")
    units = surgery.prunable_units(model)
    return model, units, CostModel(model, units), l1_scores(model, units)


# --- the cost model equals fvcore on physically pruned models ----------------------------------


@pytest.mark.parametrize(("name", "seeds"), [("resnet20", (0, 1)), ("vgg16", (2, 3)), ("timm:resnet18", (4, 5))])
def test_cost_model_equals_fvcore_on_pruned_model(name: str, seeds: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = models.create(name)
    units = surgery.prunable_units(model)
    cost = CostModel(model, units)
    assert cost.base == measure.count_macs(model)
    assert cost.macs({}) == cost.base and cost.reduction({}) == 0
    for seed in seeds:
        counts = random_counts(units, seed)
        plan = plan_from_counts(name, units, random_scores(units, seed), counts, surgery.backend_of(model))
        widths = {u.name: u.channels for u in units}
        assert plan.kept_counts() == {n: c for n, c in counts.items() if c < widths[n]}
        pruned = surgery.apply(copy.deepcopy(model), plan)
        fvcore = measure.count_macs(pruned)
        assert fvcore < cost.base
        assert cost.macs(counts) == pytest.approx(fvcore, abs=0.5)


# --- by_flops_target -------------------------------------------------------------------------


@pytest.mark.parametrize("target", [0.2, 0.4, 0.6])
def test_flops_target_reached_within_one_point(resnet56, target: float) -> None:
    model, units, cost, scores = resnet56
    counts = by_flops_target(units, scores, cost, target)
    achieved = cost.reduction(counts)
    assert target <= achieved <= target + 0.01
    assert_global_threshold(units, scores, counts, min_keep_fraction=0.0)
    if target == 0.4:  # the analytic figure is what fvcore measures on the pruned model
        plan = plan_from_counts("resnet56", units, scores, counts, "direct")
        pruned = surgery.apply(copy.deepcopy(model), plan)
        assert 1 - measure.count_macs(pruned) / cost.base == pytest.approx(achieved, abs=1e-12)


def test_flops_target_is_minimal(resnet56) -> None:
    """Putting back the highest-scoring pruned channel drops the reduction below the target."""
    _, units, cost, scores = resnet56
    target = 0.4
    counts = by_flops_target(units, scores, cost, target)
    pruned_scores = [
        (float(v), u.name) for u in units for v in torch.sort(scores[u.name]).values[: u.channels - counts[u.name]]
    ]
    _, last = max(pruned_scores)
    restored = {**counts, last: counts[last] + 1}
    assert cost.reduction(restored) < target


@pytest.mark.parametrize("min_keep_fraction", [0.0, 0.1])
def test_flops_target_never_goes_below_unit_minimum(resnet56, min_keep_fraction: float) -> None:
    _, units, cost, scores = resnet56
    floors = {u.name: max(1, math.ceil(min_keep_fraction * u.channels)) for u in units}
    if min_keep_fraction == 0.1:
        assert {floors[u.name] for u in units} == {2, 4, 7}  # ceil(1.6), ceil(3.2), ceil(6.4)
    everything = cost.reduction(floors)  # the most any rule can prune under this minimum
    counts = by_flops_target(units, scores, cost, everything - 0.002, min_keep_fraction)
    assert all(counts[u.name] >= floors[u.name] for u in units)
    assert sum(counts[u.name] == floors[u.name] for u in units) >= len(units) // 2  # the floor binds
    assert by_flops_target(units, scores, cost, everything, min_keep_fraction) == floors


@pytest.mark.parametrize(("target", "min_keep_fraction"), [(0.99, 0.0), (0.97, 0.1), (1.5, 0.0)])
def test_unreachable_flops_target_raises(resnet56, target: float, min_keep_fraction: float) -> None:
    _, units, cost, scores = resnet56
    with pytest.raises(BenchError, match="unreachable"):
        by_flops_target(units, scores, cost, target, min_keep_fraction)


def test_score_count_mismatch_raises(resnet56) -> None:
    _, units, cost, scores = resnet56
    bad = {**scores, units[0].name: torch.ones(3)}
    with pytest.raises(BenchError, match="3 scores for 16 channels"):
        by_flops_target(units, bad, cost, 0.2)


# --- scores as the harness takes them (bench.allocation.as_scores) ------------------------------


def test_scores_attached_to_autograd_are_detached_without_a_warning() -> None:
    """A plugin may return ``weight.abs().mean(...)`` as computed; allocation used to call float() on
    it element by element (a UserWarning per run, bench/allocation.py:167 in issue 14)."""
    units = [chain_unit("a", 4, None, ()), chain_unit("b", 3, None, ())]
    weight = torch.tensor([[0.1, 0.9, 0.5, 0.7]], requires_grad=True)
    scores = {"a": weight.abs().mean(0), "b": torch.tensor([1, 2, 3], dtype=torch.float64, requires_grad=True)}
    clean = allocation.as_scores(units, scores)
    assert all(not s.requires_grad and s.dtype == torch.float32 and s.device.type == "cpu" for s in clean.values())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert by_channel_fraction(units, scores, 3 / 7) == {"a": 1, "b": 3}  # the 3 lowest are all in a
        assert plan_from_counts("m", units, scores, {"a": 2, "b": 3}, "direct").keep == {"a": (1, 3)}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"a": torch.ones(4)}, "importance has no scores for unit 'b'"),
        ({"a": torch.ones(4), "b": torch.ones(2)}, "importance of 'b' has 2 scores for 3 channels"),
        ({"a": torch.ones(4), "b": torch.ones(3, 1)}, r"importance of 'b' has shape \(3, 1\); expected \(3,\)"),
        ({"a": torch.tensor([1.0, math.nan, 1.0, math.inf]), "b": torch.ones(3)}, "'a' has 2 non-finite scores"),
        ({"a": [1.0, 2.0, 3.0, 4.0], "b": torch.ones(3)}, "importance of 'a' is a list, not a torch.Tensor"),
    ],
    ids=["missing-unit", "count", "shape", "non-finite", "not-a-tensor"],
)
def test_bad_scores_are_a_bench_error_naming_the_unit(bad: dict, message: str) -> None:
    units = [chain_unit("a", 4, None, ()), chain_unit("b", 3, None, ())]
    with pytest.raises(BenchError, match=message):
        allocation.as_scores(units, bad)
    with pytest.raises(BenchError, match=message):  # every rule goes through it
        by_channel_fraction(units, bad, 0.5)


# --- by_channel_fraction: one global threshold ---------------------------------------------------


def assert_global_threshold(units, scores, counts, min_keep_fraction: float) -> None:
    """Every pruned channel scores <= every kept channel, except each unit's protected top channels."""
    plan = plan_from_counts("m", units, scores, counts, "direct")
    pruned, kept_unprotected = [], []
    for u in units:
        s = scores[u.name]
        kept = set(plan.keep.get(u.name, range(u.channels)))
        floor = allocation.min_keep(u.channels, min_keep_fraction)
        protected = set(torch.argsort(s, descending=True, stable=True)[:floor].tolist())
        pruned += [float(s[i]) for i in range(u.channels) if i not in kept]
        kept_unprotected += [float(s[i]) for i in kept - protected]
        assert protected <= kept
    if pruned and kept_unprotected:
        assert max(pruned) <= min(kept_unprotected)


@pytest.mark.parametrize(("fraction", "min_keep_fraction"), [(0.7, 0.0), (0.5, 0.1), (0.3, 0.0)])
def test_channel_fraction_is_a_global_threshold(fraction: float, min_keep_fraction: float) -> None:
    model = models.create("vgg16")
    units = surgery.prunable_units(model)
    scores = random_scores(units, seed=11)
    # one layer scores far below the rest, so the protected minimum is what keeps it alive
    scores["features.10"] = scores["features.10"] * 1e-3
    counts = by_channel_fraction(units, scores, fraction, min_keep_fraction)
    total = sum(u.channels for u in units)
    assert sum(u.channels - counts[u.name] for u in units) == round(fraction * total)
    assert counts["features.10"] == allocation.min_keep(128, min_keep_fraction)
    assert all(counts[u.name] >= allocation.min_keep(u.channels, min_keep_fraction) for u in units)
    assert_global_threshold(units, scores, counts, min_keep_fraction)


def test_channel_fraction_caps_at_the_protected_minimum() -> None:
    units = [chain_unit(f"c{i}", c, None, ()) for i, c in enumerate((8, 16, 32))]
    scores = random_scores(units, seed=0)
    assert by_channel_fraction(units, scores, 1.0) == {"c0": 1, "c1": 1, "c2": 1}
    assert by_channel_fraction(units, scores, 1.0, 0.5) == {"c0": 4, "c1": 8, "c2": 16}
    assert by_channel_fraction(units, scores, 0.0) == {"c0": 8, "c1": 16, "c2": 32}


# --- by_layer_ratio ---------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5, 0.6])
def test_layer_ratio_keeps_int_c_times_one_minus_p(resnet56, ratio: float) -> None:
    _, units, _, _ = resnet56
    counts = by_layer_ratio(units, ratio)
    expected = {16: {0.1: 14, 0.3: 11, 0.5: 8, 0.6: 6}, 32: {0.1: 28, 0.3: 22, 0.5: 16, 0.6: 12},
                64: {0.1: 57, 0.3: 44, 0.5: 32, 0.6: 25}}  # fmt: skip
    assert counts == {u.name: expected[u.channels][ratio] for u in units}
    assert all(counts[u.name] == int(u.channels * (1 - ratio)) for u in units)


def test_layer_ratio_respects_minimum_and_float_noise() -> None:
    units = [chain_unit(f"c{c}", c, None, ()) for c in (10, 20, 50, 64)]
    # 50 * (1 - 0.9) is 4.999... in floating point; the rule means int(5.0) = 5
    assert by_layer_ratio(units, 0.9) == {"c10": 1, "c20": 2, "c50": 5, "c64": 6}
    assert by_layer_ratio(units, 0.95) == {"c10": 1, "c20": 1, "c50": 2, "c64": 3}
    assert by_layer_ratio(units, 1.0) == {"c10": 1, "c20": 1, "c50": 1, "c64": 1}  # never empty
    assert by_layer_ratio(units, 0.9, min_keep_fraction=0.25) == {"c10": 3, "c20": 5, "c50": 13, "c64": 16}
    assert by_layer_ratio(units, 0.0) == {"c10": 10, "c20": 20, "c50": 50, "c64": 64}


def test_min_keep_is_ceil_without_float_noise() -> None:
    assert allocation.min_keep(16, 0.0) == 1
    assert allocation.min_keep(16, 0.1) == 2
    assert allocation.min_keep(64, 0.1) == 7
    assert allocation.min_keep(100, 0.07) == 7  # 0.07 * 100 is 7.000000000000001 in floating point
    assert allocation.min_keep(10, 1.0) == 10


def test_plan_from_counts_keeps_highest_scores() -> None:
    units = [chain_unit("a", 4, None, ()), chain_unit("b", 3, None, ())]
    scores = {"a": torch.tensor([0.1, 0.9, 0.5, 0.7]), "b": torch.tensor([1.0, 2.0, 3.0])}
    plan = plan_from_counts("m", units, scores, {"a": 2, "b": 3}, "direct", {"rule": "x"})
    assert plan.keep == {"a": (1, 3)}  # b keeps everything and is left out of the plan
    assert plan.channels == {"a": 4}
    assert plan.meta == {"rule": "x"}
    with pytest.raises(BenchError, match="zero channels"):
        plan_from_counts("m", units, scores, {"a": 0}, "direct")


# --- named plans (Li et al.) ------------------------------------------------------------------


def resnet_conv_id(block_name: str, blocks_per_stage: int) -> int:
    """methods/README.md: convs numbered from 1 (the stem); block b (global, from 0) has its first conv at 2 + 2b."""
    stage, block = block_name.removeprefix("layer").split(".")[:2]
    return 2 + 2 * ((int(stage) - 1) * blocks_per_stage + int(block))


def expected_resnet(blocks: int, keep_by_stage: tuple[int | None, ...], skip: set[int]) -> dict[str, int]:
    counts = {}
    for s, keep in enumerate(keep_by_stage, start=1):
        for b in range(blocks):
            name = f"layer{s}.{b}.conv1"
            if keep is not None and resnet_conv_id(name, blocks) not in skip:
                counts[name] = keep
    return counts


VGG16_IDS = {1: "features.0", 2: "features.3", 8: "features.24", 13: "features.40"}

NAMED = {
    # (model, plan): (expected kept counts, measured MACs reduction %, Li et al.'s published %)
    ("resnet56", "l1-a"): (expected_resnet(9, (14, 28, 57), {16, 20, 38, 54}), 10.4, 10.4),
    ("resnet56", "l1-b"): (expected_resnet(9, (6, 22, 57), {16, 18, 20, 34, 38, 54}), 27.6, 27.6),
    ("resnet110", "l1-a"): (expected_resnet(18, (8, None, None), {36}), 15.9, 15.9),
    ("resnet110", "l1-b"): (expected_resnet(18, (8, 19, 44), {36, 38, 74}), 38.7, 38.6),
    ("vgg16", "l1-a"): ({"features.0": 32, **{f"features.{i}": 256 for i in (24, 27, 30, 34, 37, 40)}}, 34.2, 34.2),
}


def test_resnet_conv_id_mapping() -> None:
    """The id -> block mapping of methods/README.md: stage 1 holds 2-19, stage 2 20-37, stage 3 38-55 (ResNet-56)."""
    assert resnet_conv_id("layer1.0.conv1", 9) == 2
    assert resnet_conv_id("layer1.7.conv1", 9) == 16
    assert resnet_conv_id("layer1.8.conv1", 9) == 18
    assert resnet_conv_id("layer2.0.conv1", 9) == 20
    assert resnet_conv_id("layer2.7.conv1", 9) == 34
    assert resnet_conv_id("layer3.0.conv1", 9) == 38
    assert resnet_conv_id("layer3.8.conv1", 9) == 54
    assert resnet_conv_id("layer1.17.conv1", 18) == 36
    assert resnet_conv_id("layer2.0.conv1", 18) == 38
    assert resnet_conv_id("layer3.0.conv1", 18) == 74
    model = models.create("vgg16")
    convs = model.convs()
    for conv_id, name in VGG16_IDS.items():
        assert convs[conv_id - 1] == name


def test_resnet56_l1b_stage1_skips_layer1_7_and_layer1_8() -> None:
    units = surgery.prunable_units(models.create("resnet56"))
    counts = named_plans.named_counts("resnet56", "l1-b", {u.name: u.channels for u in units})
    stage1 = {n: c for n, c in counts.items() if n.startswith("layer1.")}
    assert stage1 == {f"layer1.{b}.conv1": int(16 * 0.4) for b in range(7)}
    assert int(16 * 0.4) == 6
    assert "layer1.7.conv1" not in counts and "layer1.8.conv1" not in counts


@pytest.mark.parametrize(("model_name", "plan_name"), list(NAMED))
def test_named_plan_counts_and_macs_reduction(model_name: str, plan_name: str) -> None:
    expected, measured, published = NAMED[(model_name, plan_name)]
    torch.manual_seed(0)
    model = models.create(model_name)
    units = surgery.prunable_units(model)
    counts = named_plans.named_counts(model_name, plan_name, {u.name: u.channels for u in units})
    assert counts == expected
    assert plan_name in named_plans.plans_for(model_name)

    cost = CostModel(model, units)
    scores = l1_scores(model, units)
    plan = plan_from_counts(model_name, units, scores, counts, "direct", {"named_plan": plan_name})
    assert plan.kept_counts() == expected
    params = measure.count_params(model)
    pruned = surgery.apply(copy.deepcopy(model), plan)
    reduction = 100 * (1 - measure.count_macs(pruned) / cost.base)
    assert reduction == pytest.approx(100 * cost.reduction(counts), abs=1e-9)
    assert round(reduction, 1) == measured
    assert abs(reduction - published) <= 0.2
    if model_name == "vgg16":
        assert round(100 * (1 - measure.count_params(pruned) / params), 1) == 64.0


def test_unknown_named_plan_lists_valid_ones() -> None:
    channels = {u.name: u.channels for u in surgery.prunable_units(models.create("resnet56"))}
    with pytest.raises(BenchError) as info:
        named_plans.named_counts("resnet56", "l1-c", channels)
    message = str(info.value)
    for valid in ("resnet56/l1-a", "resnet56/l1-b", "resnet110/l1-a", "resnet110/l1-b", "vgg16/l1-a"):
        assert valid in message
    with pytest.raises(BenchError, match="no named plan 'l1-a' for model 'resnet20'"):
        named_plans.named_counts("resnet20", "l1-a", channels)
    assert named_plans.plans_for("resnet56") == ["l1-a", "l1-b"]
    assert named_plans.plans_for("resnet20") == []


@pytest.mark.parametrize("round_to", [2, 4, 8])
def test_round_to_keeps_multiples_and_still_meets_the_target(resnet56, round_to: int) -> None:
    _, units, cost, scores = resnet56
    counts = by_flops_target(units, scores, cost, 0.5, round_to=round_to)
    width = {u.name: u.channels for u in units}
    assert all(c % round_to == 0 or c == width[n] for n, c in counts.items())
    assert cost.reduction(counts) >= 0.5
    plain = cost.reduction(by_flops_target(units, scores, cost, 0.5))
    assert cost.reduction(counts) - 0.5 <= 0.05 and plain - 0.5 <= 0.01  # one rounding step at most overshoots
    assert by_flops_target(units, scores, cost, 0.5, round_to=round_to) == counts  # deterministic


def test_round_counts_rounds_up_and_caps_at_the_width() -> None:
    units = [PrunableUnit("a", 16, ()), PrunableUnit("b", 10, ())]
    assert allocation.round_counts(units, {"a": 9, "b": 9}, 8) == {"a": 16, "b": 10}
    assert allocation.round_counts(units, {"a": 1, "b": 8}, 8) == {"a": 8, "b": 8}
    assert allocation.round_counts(units, {"a": 5, "b": 3}, 1) == {"a": 5, "b": 3}


def test_round_to_is_validated() -> None:
    from bench.config import PruneConfig

    with pytest.raises(BenchError, match=r"prune\.round_to must be an integer >= 1"):
        PruneConfig(round_to=0)
