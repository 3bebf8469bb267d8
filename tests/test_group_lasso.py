"""group_lasso (SSL, Wen et al. 2016): the regulariser against a direct computation, its gradient
against the group lasso subgradient, its effect under SGD, and the importance it yields."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from method_models import tiny
from torch import nn

from bench import models, registry, surgery
from bench.allocation import CostModel, by_flops_target
from bench.api import Context
from bench.errors import BenchError
from methods.group_lasso import GroupLasso, GroupLassoConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def direct_penalty(model: nn.Module, lam_n: float, lam_c: float) -> torch.Tensor:
    """SSL's terms written out for the tiny model: filters of both producers, input channels of
    both consumers (conv '3', and the linear's 4 features per channel of conv '3')."""
    w0, w3, fc = model[0].weight, model[3].weight, model[8].weight
    filters = sum(w[n].norm() for w in (w0, w3) for n in range(w.shape[0]))
    channels = sum(w3[:, c].norm() for c in range(4)) + sum(fc[:, 4 * c : 4 * c + 4].norm() for c in range(6))
    return lam_n * filters + lam_c * channels


def test_regularizer_equals_the_group_lasso_sum() -> None:
    model, ctx = tiny()
    method = GroupLasso(GroupLassoConfig(lambda_filter=0.3, lambda_channel=0.7))
    torch.testing.assert_close(method.regularization(model, [], ctx), direct_penalty(model, 0.3, 0.7))


def test_gradient_on_a_filter_is_lambda_times_its_direction_plus_the_channel_term() -> None:
    model, ctx = tiny()
    lam_n, lam_c = 0.3, 0.7
    GroupLasso(GroupLassoConfig(lambda_filter=lam_n, lambda_channel=lam_c)).regularization(model, [], ctx).backward()
    w0, w3 = model[0].weight.detach(), model[3].weight.detach()
    # conv '0' only produces: each filter's gradient is lam_n * W_n / ||W_n||
    expected0 = lam_n * w0 / w0.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    torch.testing.assert_close(model[0].weight.grad, expected0)
    # conv '3' produces unit '3' and consumes unit '0': filter term plus channel term, elementwise
    filter_dir = w3 / w3.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    channel_dir = w3 / w3.transpose(0, 1).flatten(1).norm(dim=1).view(1, -1, 1, 1)
    torch.testing.assert_close(model[3].weight.grad, lam_n * filter_dir + lam_c * channel_dir)


def test_scope_all_regularizes_every_conv_and_only_convs() -> None:
    torch.manual_seed(0)
    model = models.create("resnet20")
    ctx = Context("resnet20", surgery.prunable_units(model), torch.device("cpu"), 0, torch.Generator())
    everything = GroupLasso(GroupLassoConfig(lambda_filter=1.0, lambda_channel=2.0, scope="all"))
    reg = everything.regularization(model, [], ctx)
    convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    expected = sum(w.flatten(1).norm(dim=1).sum() + 2.0 * w.transpose(0, 1).flatten(1).norm(dim=1).sum() for w in convs)
    torch.testing.assert_close(reg, expected)
    units = GroupLasso(GroupLassoConfig(lambda_filter=1.0, lambda_channel=2.0)).regularization(model, [], ctx)
    assert units < reg  # the default scope leaves the stem, shortcuts' feeders and conv2 filters alone


def test_an_all_zero_group_has_a_finite_gradient() -> None:
    model, ctx = tiny()
    with torch.no_grad():
        model[0].weight[1].zero_()
        model[3].weight[:, 2].zero_()
    GroupLasso(GroupLassoConfig(lambda_filter=1.0, lambda_channel=1.0)).regularization(model, [], ctx).backward()
    assert torch.isfinite(model[0].weight.grad).all() and torch.isfinite(model[3].weight.grad).all()
    assert model[0].weight.grad[1].abs().sum() == 0


def _producer_norms_after_sgd(lam: float, steps: int = 4) -> torch.Tensor:
    torch.manual_seed(0)
    model = models.create("resnet20")
    ctx = Context("resnet20", surgery.prunable_units(model), torch.device("cpu"), 0, torch.Generator())
    method = GroupLasso(GroupLassoConfig(lambda_filter=lam, lambda_channel=lam))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        (F.cross_entropy(model(x), y) + method.regularization(model, [], ctx)).backward()
        optimizer.step()
    return torch.cat([model.get_submodule(u.name).weight.detach().flatten(1).norm(dim=1) for u in ctx.units])


def test_sgd_with_a_large_lambda_shrinks_the_filter_groups() -> None:
    plain, sparse = _producer_norms_after_sgd(0.0), _producer_norms_after_sgd(0.05)
    assert (sparse < plain).float().mean() > 0.95
    # each group moves lr * lam = 0.005 per step toward 0, more with momentum (4 steps: >= 0.02)
    assert (plain - sparse).mean() > 0.02


def test_importance_is_the_producer_filter_l2_norm() -> None:
    torch.manual_seed(0)
    model = models.create("resnet20")
    ctx = Context("resnet20", surgery.prunable_units(model), torch.device("cpu"), 0, torch.Generator())
    raw = GroupLasso(GroupLassoConfig(normalize="none")).importance(model, ctx)
    mean = GroupLasso().importance(model, ctx)
    for unit in ctx.units:
        norms = model.get_submodule(unit.name).weight.detach().flatten(1).norm(dim=1)
        torch.testing.assert_close(raw[unit.name], norms)
        torch.testing.assert_close(mean[unit.name], norms / norms.mean())
        assert not raw[unit.name].requires_grad


def test_layer_mean_keeps_the_stage_entry_blocks_that_raw_norms_strip() -> None:
    """Kaiming fan-out init gives the stage-entry convs (C_in = C_out / 2) filter norms of about 1
    instead of 1.41; a global 50% FLOPs target on raw norms empties them, layer_mean does not."""
    torch.manual_seed(0)
    model = models.create("resnet20")
    ctx = Context("resnet20", surgery.prunable_units(model), torch.device("cpu"), 0, torch.Generator())
    cost = CostModel(model, ctx.units)
    kept = {}
    for normalize in ("none", "layer_mean"):
        counts = by_flops_target(
            ctx.units, GroupLasso(GroupLassoConfig(normalize=normalize)).importance(model, ctx), cost, 0.5
        )
        kept[normalize] = {u.name: counts[u.name] / u.channels for u in ctx.units}
    assert kept["none"]["layer2.0.conv1"] < 0.1 and kept["none"]["layer3.0.conv1"] < 0.1
    assert min(kept["layer_mean"].values()) > 0.3


@pytest.mark.parametrize("normalize", ["layer_mean", "none"])
def test_groups_that_ssl_zeroed_go_first_under_a_flops_target(normalize: str) -> None:
    """What SSL produces (whole filters near zero) is what a global threshold removes first."""
    torch.manual_seed(0)
    model = models.create("resnet20")
    units = surgery.prunable_units(model)
    zeroed = {"layer1.0.conv1": 8, "layer3.2.conv1": 40}
    with torch.no_grad():
        for name, count in zeroed.items():
            model.get_submodule(name).weight[:count].mul_(1e-4)
    ctx = Context("resnet20", units, torch.device("cpu"), 0, torch.Generator())
    cost = CostModel(model, units)
    scores = GroupLasso(GroupLassoConfig(normalize=normalize)).importance(model, ctx)
    widths = {u.name: u.channels for u in units}
    target = cost.reduction({name: widths[name] - count for name, count in zeroed.items()})
    counts = by_flops_target(units, scores, cost, target)
    for unit in units:
        assert counts[unit.name] == unit.channels - zeroed.get(unit.name, 0)


def test_sparsity_training_flag_and_bad_params() -> None:
    assert GroupLasso.sparsity_training
    with pytest.raises(BenchError, match=r"scope must be one of units, all, got 'convs'"):
        registry.create_method("group_lasso", {"scope": "convs"})
    with pytest.raises(BenchError, match=r"lambda_channel must be >= 0"):
        registry.create_method("group_lasso", {"lambda_channel": -1e-4})


def test_search_space_samples_config_kwargs() -> None:
    optuna = pytest.importorskip("optuna")
    trial = optuna.trial.FixedTrial({"lambda_filter": 1e-4, "lambda_channel": 2e-4})
    params = GroupLasso().search_space(trial)
    assert GroupLasso.from_params(params).config == GroupLassoConfig(lambda_filter=1e-4, lambda_channel=2e-4)


def test_importance_does_not_touch_the_model() -> None:
    model, ctx = tiny()
    before = copy.deepcopy(model.state_dict())
    GroupLasso().importance(model, ctx)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])


def test_starts_from_the_dense_baseline_with_the_official_cifar_lambdas() -> None:
    """SSL's official CIFAR commands (wenwei202/caffe, branch scnn, examples/cifar10/readme.md)
    fine-tune ``yourbaseline.caffemodel`` with breadth_decay = kernel_shape_decay = 0.003: the run
    starts from the dense baseline, and its training budget counts the baseline's 160 epochs."""
    from bench.config import resolve
    from bench.estimate import method_phases

    assert GroupLasso.start == "dense"
    assert GroupLassoConfig() == GroupLassoConfig(lambda_filter=3e-3, lambda_channel=3e-3)
    cfg = resolve("paper", None, {"methods": ["group_lasso"]}, [])
    phases = method_phases(cfg, "group_lasso", GroupLasso(), 1)
    assert phases.dense_epochs == cfg.dense.epochs == 160
    assert [s.epochs for s in phases.sparsity] == [160]
