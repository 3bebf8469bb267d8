"""The built-in methods (l1, slim) against their papers' definitions on real models, and the
conformance kit over every registered method (future methods are covered automatically)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench import models, registry, surgery
from bench.api import Context
from bench.errors import BenchError
from bench.units import Member, PrunableUnit
from methods.l1 import L1Config, L1Norm
from methods.slim import NetworkSlimming, SlimConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def make_context(model: nn.Module, model_name: str, seed: int = 0) -> Context:
    return Context(
        model_name, surgery.prunable_units(model), torch.device("cpu"), seed, torch.Generator().manual_seed(seed)
    )


@pytest.fixture
def resnet20() -> nn.Module:
    torch.manual_seed(0)
    return models.create("resnet20")


def batchnorms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def batch(n: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


# --- l1 ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", ["layer_mean", "per_weight", "none"])
def test_l1_importance_is_the_filter_l1_norm_scaled_per_layer(resnet20: nn.Module, normalize: str) -> None:
    ctx = make_context(resnet20, "resnet20")
    scores = L1Norm(L1Config(normalize=normalize)).importance(resnet20, ctx)
    assert set(scores) == {u.name for u in ctx.units}
    assert len(ctx.units) == 9  # resnet20: the first conv of each of the 9 basic blocks
    for unit in ctx.units:
        conv = resnet20.get_submodule(unit.name)
        assert isinstance(conv, nn.Conv2d)
        c_in, (kh, kw) = conv.in_channels, conv.kernel_size
        raw = conv.weight.detach().abs().sum(dim=(1, 2, 3))
        expected = {"layer_mean": raw / raw.mean(), "per_weight": raw / (c_in * kh * kw), "none": raw}[normalize]
        assert scores[unit.name].shape == (unit.channels,)
        torch.testing.assert_close(scores[unit.name], expected)
        # scaling a layer never changes the ranking inside it (Li et al.'s ranking)
        assert torch.equal(torch.argsort(scores[unit.name], stable=True), torch.argsort(raw, stable=True))


def test_l1_layer_mean_keeps_a_flops_target_from_emptying_wide_layers(resnet20: nn.Module) -> None:
    """With fan-out init, raw mean |w| is half as large in 64-wide layers; layer_mean normalisation
    keeps a global 50% FLOPs target from stripping them while per_weight strips them first."""
    from bench.allocation import CostModel, by_flops_target

    ctx = make_context(resnet20, "resnet20")
    cost = CostModel(resnet20, ctx.units)
    kept = {}
    for normalize in ("layer_mean", "per_weight"):
        scores = L1Norm(L1Config(normalize=normalize)).importance(resnet20, ctx)
        counts = by_flops_target(ctx.units, scores, cost, 0.5)
        kept[normalize] = [counts[u.name] / u.channels for u in ctx.units]
    assert min(kept["layer_mean"]) > 0.25  # every block keeps a real share of its channels
    assert min(kept["per_weight"][-3:]) < min(kept["layer_mean"][-3:])


def test_l1_scores_are_comparable_across_layers_of_different_fan_in(resnet20: nn.Module) -> None:
    """A layer with 4x the fan-in does not get 4x the score: that is what per_weight is for."""
    with torch.no_grad():
        for conv in (m for m in resnet20.modules() if isinstance(m, nn.Conv2d)):
            conv.weight.fill_(0.01)
    ctx = make_context(resnet20, "resnet20")
    scores = L1Norm(L1Config(normalize="per_weight")).importance(resnet20, ctx)
    values = torch.cat(list(scores.values()))
    torch.testing.assert_close(values, torch.full_like(values, 0.01))


def test_l1_importance_does_not_touch_the_model_or_its_grads(resnet20: nn.Module) -> None:
    before = copy.deepcopy(resnet20.state_dict())
    scores = L1Norm().importance(resnet20, make_context(resnet20, "resnet20"))
    assert all(not s.requires_grad for s in scores.values())
    for key, value in resnet20.state_dict().items():
        assert torch.equal(value, before[key])


# --- slim ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("model_name", "lam"), [("resnet20", 1e-5), ("vgg16", 1e-4)])
def test_slim_setup_resolves_lam_and_sets_gamma(model_name: str, lam: float) -> None:
    torch.manual_seed(0)
    model = models.create(model_name)
    method = NetworkSlimming()
    assert method.config.lam is None
    method.setup(model, make_context(model, model_name))
    assert method.config.lam == pytest.approx(lam)
    bns = batchnorms(model)
    assert bns
    for bn in bns:
        assert torch.equal(bn.weight.detach(), torch.full_like(bn.weight, 0.5))


def test_slim_setup_keeps_an_explicit_lam_and_gamma_init_none_keeps_the_init(resnet20: nn.Module) -> None:
    before = [bn.weight.detach().clone() for bn in batchnorms(resnet20)]
    method = NetworkSlimming(SlimConfig(lam=3e-3, gamma_init=None))
    method.setup(resnet20, make_context(resnet20, "resnet20"))
    assert method.config.lam == 3e-3
    for bn, old in zip(batchnorms(resnet20), before, strict=True):
        assert torch.equal(bn.weight.detach(), old)


def test_slim_after_backward_adds_exactly_the_subgradient(resnet20: nn.Module) -> None:
    lam = 1e-3
    method = NetworkSlimming(SlimConfig(lam=lam))
    ctx = make_context(resnet20, "resnet20")
    method.setup(resnet20, ctx)
    bns = batchnorms(resnet20)
    with torch.no_grad():  # mixed signs, and a zero whose subgradient must be 0
        bns[0].weight[:4] = -0.3
        bns[0].weight[4] = 0.0
        bns[-1].weight[::2] = -1.0
    x, y = batch()
    resnet20.train()
    F.cross_entropy(resnet20(x), y).backward()
    before = [bn.weight.grad.clone() for bn in bns]
    others = {n: p.grad.clone() for n, p in resnet20.named_parameters() if p.grad is not None}
    method.after_backward(resnet20, ctx)
    for bn, grad in zip(bns, before, strict=True):
        expected = grad + lam * torch.sign(bn.weight.detach())
        torch.testing.assert_close(bn.weight.grad, expected, rtol=0, atol=1e-9)
    assert bns[0].weight.grad[4] == before[0][4]
    bn_weights = {id(bn.weight) for bn in bns}
    for name, param in resnet20.named_parameters():  # convs, linear and BN biases are untouched
        if id(param) not in bn_weights and param.grad is not None:
            assert torch.equal(param.grad, others[name]), name


def test_slim_after_backward_skips_parameters_without_grads(resnet20: nn.Module) -> None:
    method = NetworkSlimming(SlimConfig(lam=1e-3))
    method.after_backward(resnet20, make_context(resnet20, "resnet20"))  # no backward yet: nothing to edit
    assert all(bn.weight.grad is None for bn in batchnorms(resnet20))


def _sum_abs_gamma_after_training(model: nn.Module, lam: float, steps: int = 5) -> float:
    model = copy.deepcopy(model)
    method = NetworkSlimming(SlimConfig(lam=lam))
    ctx = make_context(model, "resnet20")
    method.setup(model, ctx)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = batch(8)
    model.train()
    torch.manual_seed(0)
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        method.after_backward(model, ctx)
        optimizer.step()
    return sum(bn.weight.detach().abs().sum().item() for bn in batchnorms(model))


def test_slim_sparsity_training_drives_gamma_toward_zero(resnet20: nn.Module) -> None:
    plain = _sum_abs_gamma_after_training(resnet20, lam=0.0)
    sparse = _sum_abs_gamma_after_training(resnet20, lam=1e-2)
    channels = sum(bn.num_features for bn in batchnorms(resnet20))
    assert sparse < plain
    # each gamma moves about lr * lam per step toward 0 (more with momentum); demand a clear part of it
    assert plain - sparse > 0.5 * 5 * 0.1 * 1e-2 * channels


def test_slim_importance_is_abs_gamma_of_each_units_bn(resnet20: nn.Module) -> None:
    ctx = make_context(resnet20, "resnet20")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for bn in batchnorms(resnet20):
            bn.weight.copy_(torch.randn(bn.num_features, generator=g))
    scores = NetworkSlimming().importance(resnet20, ctx)
    assert set(scores) == {u.name for u in ctx.units}
    for unit in ctx.units:
        bn = resnet20.get_submodule(unit.name.replace("conv1", "bn1"))  # layerS.B.conv1 -> layerS.B.bn1
        torch.testing.assert_close(scores[unit.name], bn.weight.detach().abs())
        assert not scores[unit.name].requires_grad
    first = ctx.units[0].name
    saved = scores[first].clone()
    with torch.no_grad():
        resnet20.get_submodule(first.replace("conv1", "bn1")).weight.fill_(9.0)
    assert torch.equal(scores[first], saved)  # a copy, not a view of the live weights


def test_slim_importance_on_vgg_uses_the_bn_after_each_conv() -> None:
    model = models.create("vgg16")
    ctx = make_context(model, "vgg16")
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for bn in batchnorms(model):
            bn.weight.copy_(torch.randn(bn.num_features, generator=g))
    scores = NetworkSlimming().importance(model, ctx)
    names = [name for name, _ in model.named_modules()]
    for unit in ctx.units:
        following = names[names.index(unit.name) + 1]  # VGG: conv, then its BN
        bn = model.get_submodule(following)
        assert isinstance(bn, nn.BatchNorm2d)
        torch.testing.assert_close(scores[unit.name], bn.weight.detach().abs())


def test_slim_on_a_unit_without_bn_is_a_bench_error(resnet20: nn.Module) -> None:
    ctx = make_context(resnet20, "resnet20")
    ctx.units = [PrunableUnit("layer1.0.conv1", 16, (Member("layer1.0.conv1", "out"), Member("layer1.0.conv2", "in")))]
    with pytest.raises(BenchError, match=r"slim needs a BatchNorm after 'layer1\.0\.conv1'"):
        NetworkSlimming().importance(resnet20, ctx)


# --- params --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        (
            "slim",
            {"lamb": 1e-4},
            r"unknown parameter 'lamb' for method 'slim'\. Did you mean 'lam'\? Valid: gamma_init, lam",
        ),
        ("l1", {"normalise": "none"}, r"unknown parameter 'normalise' for method 'l1'\. Did you mean 'normalize'\?"),
        ("l1", {"normalize": "max"}, r"bad parameters for method 'l1': normalize must be one of layer_mean"),
        ("slim", {"lam": -1.0}, r"bad parameters for method 'slim': lam must be >= 0, got -1.0"),
    ],
)
def test_bad_method_params_are_bench_errors(name: str, params: dict, message: str) -> None:
    with pytest.raises(BenchError, match=message):
        registry.create_method(name, params)


def test_method_params_round_trip_through_from_params() -> None:
    method = registry.get_method("slim").from_params({"lam": 1e-4, "gamma_init": 1.0})
    assert method.config == SlimConfig(lam=1e-4, gamma_init=1.0)
    assert method.config_dict() == {"lam": 1e-4, "gamma_init": 1.0}


# --- conformance of every registered method ----------------------------------------------------


@pytest.mark.parametrize("model_name", ["resnet20", "timm:resnet18"])
@pytest.mark.parametrize("name", registry.method_names())
def test_every_registered_method_conforms(name: str, model_name: str) -> None:
    """resnet20 takes the direct path (chain units); timm:resnet18 takes DepGraph, whose units are
    coupled groups with several producer convs and BNs (about 5-10 s per method on one CPU thread)."""
    from bench.testing import check_method

    check_method(name, model=model_name)


# --- random --------------------------------------------------------------------------------------


def test_random_scores_are_seeded_uniform_and_independent_of_the_weights(resnet20: nn.Module) -> None:
    from methods.random_scores import RandomScores

    first = RandomScores().importance(resnet20, make_context(resnet20, "resnet20", seed=0))
    again = RandomScores().importance(resnet20, make_context(resnet20, "resnet20", seed=0))
    other = RandomScores().importance(resnet20, make_context(resnet20, "resnet20", seed=1))
    assert all(torch.equal(first[n], again[n]) for n in first)  # same seed, same plan
    assert not all(torch.equal(first[n], other[n]) for n in first)
    values = torch.cat(list(first.values()))
    assert values.min() >= 0 and values.max() < 1 and 0.35 < values.mean() < 0.65  # 336 uniform draws
    with torch.no_grad():
        for p in resnet20.parameters():
            p.mul_(3.0)
    scaled = RandomScores().importance(resnet20, make_context(resnet20, "resnet20", seed=0))
    assert all(torch.equal(first[n], scaled[n]) for n in first)  # weights play no part
