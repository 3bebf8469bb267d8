"""Group scoring: on the DepGraph path a prunable unit is a whole coupled group, and l1 and slim (and
ffr, through the same scorers) score every member of it, reduced as Torch-Pruning's group importance
does (mean by default). On timm's resnet18 the unit of ``layer4.0.downsample.0`` couples the
downsample conv, both blocks' second convs and their three BNs. On a CIFAR chain unit (one conv, one
BN) the scores are bit-identical to the root-only formula."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bench import models, surgery
from bench.api import (
    GROUP_REDUCTIONS,
    Context,
    bn_gamma,
    filter_l1,
    member_filters,
    reduce_group,
    unit_bns,
)
from bench.errors import BenchError
from bench.units import Member, PrunableUnit
from methods.l1 import L1Config, L1Norm
from methods.slim import NetworkSlimming, SlimConfig

pytestmark = pytest.mark.usefixtures("one_thread")

GROUP = "layer4.0.downsample.0"
CONVS = {"layer4.0.downsample.0", "layer4.0.conv2", "layer4.1.conv2"}
BNS = {"layer4.0.downsample.1", "layer4.0.bn2", "layer4.1.bn2"}
K = 5  # the channel we perturb


@pytest.fixture(scope="module")
def traced() -> tuple[nn.Module, list[PrunableUnit]]:
    """timm:resnet18 at 32 px with every BN scale drawn at random (timm zero-inits each block's last
    BN, which would hide a BN member), and its DepGraph units (traced once: a few seconds)."""
    torch.manual_seed(0)
    model = models.create("timm:resnet18", num_classes=10, input_size=32)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.weight.copy_(torch.rand(bn.num_features, generator=g) + 0.1)
    return model, surgery.prunable_units(model)


@pytest.fixture
def resnet18(traced: tuple[nn.Module, list[PrunableUnit]]) -> tuple[nn.Module, Context, PrunableUnit]:
    model, units = traced
    model = copy.deepcopy(model)
    ctx = Context("timm:resnet18", list(units), torch.device("cpu"), 0, torch.Generator().manual_seed(0))
    return model, ctx, next(u for u in units if u.name == GROUP)


def _name(model: nn.Module, module: nn.Module) -> str:
    return next(n for n, m in model.named_modules() if m is module)


# --- the members ---------------------------------------------------------------------------------


def test_downsample_unit_has_three_producer_convs_and_three_bns(resnet18) -> None:
    model, _, unit = resnet18
    filters = member_filters(model, unit)
    assert len(filters) == 3
    assert all(f.shape[0] == unit.channels == 512 for f in filters)
    assert filters[0].shape[1] == 256  # the root: the 1x1 downsample conv, first
    assert {_name(model, bn) for bn in unit_bns(model, unit)} == BNS
    convs = {n for n in unit.modules("out") if isinstance(model.get_submodule(n), nn.Conv2d)}
    assert convs == CONVS


def test_member_filters_are_views_that_keep_the_graph(resnet18) -> None:
    model, _, unit = resnet18
    convs = [n for n in unit.modules("out") if n in CONVS]
    filters = member_filters(model, unit)
    assert all(f.data_ptr() == model.get_submodule(n).weight.data_ptr() for f, n in zip(filters, convs, strict=True))
    filters[2][K].sum().backward()
    grad = model.get_submodule(convs[2]).weight.grad
    assert torch.equal(grad[K], torch.ones_like(grad[K]))
    assert grad.abs().sum() == grad[K].numel()  # only filter K of that member
    assert all(model.get_submodule(n).weight.grad is None for n in convs[:2])


def test_a_member_of_another_width_is_a_bench_error(resnet18) -> None:
    model, _, _ = resnet18
    wrong = PrunableUnit("layer4.0.conv1", 512, (Member("layer4.0.conv1", "out"), Member("layer3.0.bn1", "out")))
    with pytest.raises(BenchError, match=r"BN 'layer3\.0\.bn1' has 256 features, unit 'layer4\.0\.conv1' has 512"):
        unit_bns(model, wrong)
    narrow = PrunableUnit("layer3.0.conv1", 512, (Member("layer3.0.conv1", "out"),))
    with pytest.raises(
        BenchError, match=r"'layer3\.0\.conv1' has 256 output channels, unit 'layer3\.0\.conv1' has 512"
    ):
        member_filters(model, narrow)


# --- l1 and slim score every member ----------------------------------------------------------------


def _zero_channel(model: nn.Module, conv: str, bn: str, k: int) -> None:
    with torch.no_grad():
        model.get_submodule(conv).weight[k] = 0
        model.get_submodule(bn).weight[k] = 0


def test_l1_score_drops_when_a_non_root_members_filter_is_zeroed(resnet18) -> None:
    model, ctx, unit = resnet18
    before = L1Norm(L1Config(normalize="none")).importance(model, ctx)[GROUP]
    norms = [f.detach().abs().sum(1) for f in member_filters(model, unit)]
    torch.testing.assert_close(before, torch.stack(norms).mean(0))  # the mean over the three convs
    _zero_channel(model, "layer4.1.conv2", "layer4.1.bn2", K)
    after = L1Norm(L1Config(normalize="none")).importance(model, ctx)[GROUP]
    zeroed = norms[[n for n in unit.modules("out") if n in CONVS].index("layer4.1.conv2")][K]
    torch.testing.assert_close(before[K] - after[K], zeroed / 3)
    others = torch.arange(unit.channels) != K
    assert torch.equal(after[others], before[others])
    # root-only scoring (Torch-Pruning's "first") does not see the change: this test fails on it
    assert torch.equal(filter_l1(model, [unit], "none", reduction="first")[GROUP], norms[0])


def test_l1_layer_mean_scales_each_member_before_the_mean(resnet18) -> None:
    model, ctx, unit = resnet18
    scores = L1Norm().importance(model, ctx)[GROUP]
    per_member = [(n := f.detach().abs().sum(1)) / n.mean() for f in member_filters(model, unit)]
    torch.testing.assert_close(scores, torch.stack(per_member).mean(0))
    torch.testing.assert_close(scores.mean(), torch.tensor(1.0))  # still comparable across units
    _zero_channel(model, "layer4.0.conv2", "layer4.0.bn2", K)
    assert L1Norm().importance(model, ctx)[GROUP][K] < scores[K]


def test_slim_score_drops_when_a_non_root_bn_is_zeroed(resnet18) -> None:
    model, ctx, unit = resnet18
    gammas = {_name(model, bn): bn.weight.detach().abs().clone() for bn in unit_bns(model, unit)}
    before = NetworkSlimming().importance(model, ctx)[GROUP]
    torch.testing.assert_close(before, torch.stack(list(gammas.values())).mean(0))
    _zero_channel(model, "layer4.1.conv2", "layer4.1.bn2", K)
    after = NetworkSlimming().importance(model, ctx)[GROUP]
    torch.testing.assert_close(before[K] - after[K], gammas["layer4.1.bn2"][K] / 3)
    assert torch.equal(bn_gamma(model, [unit], reduction="first")[GROUP], gammas["layer4.0.downsample.1"])


def test_slim_subgradient_reaches_every_bn_of_the_group(resnet18) -> None:
    model, ctx, unit = resnet18
    lam = 1e-3
    for bn in unit_bns(model, unit):
        bn.weight.grad = torch.zeros_like(bn.weight)
    NetworkSlimming(SlimConfig(lam=lam)).after_backward(model, ctx)
    for bn in unit_bns(model, unit):
        torch.testing.assert_close(bn.weight.grad, lam * torch.sign(bn.weight.detach()), rtol=0, atol=0)


# --- chain units: unchanged --------------------------------------------------------------------------


@pytest.mark.parametrize("model_name", ["resnet20", "vgg16"])
def test_chain_unit_scores_are_bit_identical_to_the_root_only_formula(model_name: str) -> None:
    torch.manual_seed(0)
    model = models.create(model_name)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.weight.copy_(torch.randn(bn.num_features, generator=g))
    units = surgery.prunable_units(model)
    for normalize in ("layer_mean", "per_weight", "none"):
        scores = filter_l1(model, units, normalize)
        for unit in units:
            w = model.get_submodule(unit.name).weight.detach()
            raw = w.abs().flatten(1).sum(1)  # the pre-group formula
            old = {"layer_mean": raw / raw.mean().clamp_min(torch.finfo(raw.dtype).tiny), "none": raw}
            assert torch.equal(scores[unit.name], old.get(normalize, raw / w[0].numel()))
    gammas = bn_gamma(model, units)
    for unit in units:
        (bn,) = unit_bns(model, unit)
        assert torch.equal(gammas[unit.name], bn.weight.detach().abs())


# --- reduce_group --------------------------------------------------------------------------------


def test_reduce_group_follows_torch_pruning_reductions() -> None:
    a, b, c = torch.tensor([1.0, 4.0, 0.5]), torch.tensor([3.0, 2.0, 0.5]), torch.tensor([2.0, 0.0, 2.0])
    expected = {
        "mean": torch.tensor([2.0, 2.0, 1.0]),
        "sum": torch.tensor([6.0, 6.0, 3.0]),
        "max": torch.tensor([3.0, 4.0, 2.0]),
        "prod": torch.tensor([6.0, 0.0, 0.5]),
        "first": a,
    }
    assert set(expected) == set(GROUP_REDUCTIONS)
    for how, want in expected.items():
        assert torch.equal(reduce_group([a, b, c], how), want), how
        assert reduce_group([a], how) is a  # one member: its scores, untouched
    assert torch.equal(reduce_group([a, b, c]), expected["mean"])  # the default


@pytest.mark.parametrize(
    ("members", "how", "message"),
    [
        ([torch.ones(2)], "median", r"group reduction must be one of mean, sum, max, prod, first, got 'median'"),
        ([], "mean", r"reduce_group needs at least one member's scores, got none"),
    ],
)
def test_reduce_group_rejects_bad_input(members: list[torch.Tensor], how: str, message: str) -> None:
    with pytest.raises(BenchError, match=message):
        reduce_group(members, how)
