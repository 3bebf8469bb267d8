"""sgl0 (Bui et al.): the variable-splitting step, the beta schedule, the regularizer, state, scores."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench import models, surgery
from bench.allocation import CostModel, by_flops_target, plan_from_counts
from bench.api import Context
from bench.checkpoint import atomic_save, load
from bench.config import Schedule
from bench.errors import BenchError
from bench.training import EpochTrainer, Runtime, make_optimizer
from methods.sgl0 import SGL0Config, SparseGroupL0

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = Runtime(torch.device("cpu"), progress=False, epoch_lines=False)
N = 45_000  # training-set size the regularizer is divided by


def make_context(model: nn.Module, seed: int = 0) -> Context:
    ctx = Context(
        "resnet20", surgery.prunable_units(model), torch.device("cpu"), seed, torch.Generator().manual_seed(0)
    )
    ctx.train_size = N
    return ctx


@pytest.fixture
def resnet20() -> nn.Module:
    torch.manual_seed(0)
    return models.create("resnet20")


def batch(n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def hard_threshold(w: torch.Tensor, t: float) -> torch.Tensor:
    return torch.where(w.abs() >= t, w, torch.zeros_like(w))


def regularized(model: nn.Module, ctx: Context) -> dict[str, torch.Tensor]:
    return {u.producer: model.get_submodule(u.producer).weight for u in ctx.units}


def test_after_a_real_step_u_is_exactly_the_hard_thresholded_w(resnet20: nn.Module) -> None:
    # lam 1e-4: t = sqrt(2e-4 / 0.04) = 0.0707, inside the weight range, so U has both kinds of entries
    method = SparseGroupL0(SGL0Config(lam=1e-4, beta=0.04))
    ctx = make_context(resnet20)
    method.setup(resnet20, ctx)
    schedule = Schedule(lr=0.1)
    trainer = EpochTrainer(resnet20, None, make_optimizer(resnet20, schedule), schedule, CPU, method, ctx)
    before = {n: w.detach().clone() for n, w in regularized(resnet20, ctx).items()}
    resnet20.train()
    trainer.step(*batch())
    assert method.threshold() == math.sqrt(2 * 1e-4 / 0.04)
    assert ctx.step == 1
    kept = total = 0
    for name, w in regularized(resnet20, ctx).items():
        assert not torch.equal(w.detach(), before[name])  # the step moved W, and U followed
        expected = hard_threshold(w.detach(), math.sqrt(2 * 1e-4 / 0.04))
        assert torch.equal(method.u[name], expected), name
        kept += int((method.u[name] != 0).sum())
        total += w.numel()
    assert 0.05 < kept / total < 0.95


def test_only_the_producer_conv_of_each_unit_is_regularized(resnet20: nn.Module) -> None:
    method = SparseGroupL0()
    ctx = make_context(resnet20)
    method.setup(resnet20, ctx)
    assert sorted(method.u) == sorted(f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3))


def test_soft_threshold_is_the_l1_prox_at_lam_over_beta(resnet20: nn.Module) -> None:
    method = SparseGroupL0(SGL0Config(lam=2e-3, beta=0.04, threshold="soft"))
    ctx = make_context(resnet20)
    method.after_step(resnet20, ctx)
    assert method.threshold() == pytest.approx(0.05)
    for name, w in regularized(resnet20, ctx).items():
        torch.testing.assert_close(method.u[name], F.softshrink(w.detach(), 0.05), rtol=0, atol=0)


def test_beta_grows_by_1_25_every_beta_every_sparsity_epochs(resnet20: nn.Module) -> None:
    method = SparseGroupL0(SGL0Config(beta=0.04, beta_every=20))
    ctx = make_context(resnet20)
    ctx.phase = "sparsity"
    seen = []
    for epoch in range(60):
        ctx.epoch = epoch
        method.on_epoch_end(resnet20, ctx)
        seen.append(method.beta)
    assert seen[18] == 0.04 and seen[19] == pytest.approx(0.05)  # after epoch 20 (index 19), as the authors
    assert seen[38] == pytest.approx(0.05) and seen[39] == pytest.approx(0.0625)
    assert seen[59] == pytest.approx(0.04 * 1.25**3)
    assert method.threshold() == pytest.approx(math.sqrt(2 * 1e-3 / (0.04 * 1.25**3)))
    ctx.phase, ctx.epoch = "finetune", 79
    method.on_epoch_end(resnet20, ctx)
    assert method.beta == pytest.approx(0.04 * 1.25**3)  # fine-tuning does not grow beta


def test_regularizer_equals_the_direct_formula_divided_by_n(resnet20: nn.Module) -> None:
    lam, beta = 1e-3, 0.04
    method = SparseGroupL0(SGL0Config(lam=lam, beta=beta))
    ctx = make_context(resnet20)
    method.setup(resnet20, ctx)
    g = torch.Generator().manual_seed(3)
    method.u = {n: torch.randn(w.shape, generator=g) * 0.1 for n, w in regularized(resnet20, ctx).items()}
    expected = 0.0
    for name, w in regularized(resnet20, ctx).items():
        w = w.detach()
        c_out, c_in, kh, kw = w.shape
        group = sum(math.sqrt(float((w[c].double() ** 2).sum())) for c in range(c_out))
        coupling = float(((w.double() - method.u[name].double()) ** 2).sum())
        expected += lam * math.sqrt(c_in * kh * kw) * group + beta / 2 * coupling
    value = method.regularization(resnet20, [], ctx)
    assert value.requires_grad
    assert value.item() == pytest.approx(expected / N, rel=1e-5)


def test_regularizer_gradient_is_finite_at_an_all_zero_filter(resnet20: nn.Module) -> None:
    method = SparseGroupL0()
    ctx = make_context(resnet20)
    conv = resnet20.get_submodule("layer1.0.conv1")
    with torch.no_grad():
        conv.weight[2].zero_()
    method.setup(resnet20, ctx)
    method.regularization(resnet20, [], ctx).backward()
    assert torch.isfinite(conv.weight.grad).all()
    assert torch.equal(conv.weight.grad[2], torch.zeros_like(conv.weight.grad[2]))


def test_regularizer_needs_the_training_set_size(resnet20: nn.Module) -> None:
    ctx = make_context(resnet20)
    ctx.train_size = 0
    with pytest.raises(BenchError, match="train_size"):
        SparseGroupL0().regularization(resnet20, [], ctx)


def test_u_and_beta_survive_state_dict_through_a_checkpoint(resnet20: nn.Module, tmp_path) -> None:
    method = SparseGroupL0(SGL0Config(lam=1e-4))
    ctx = make_context(resnet20)
    method.setup(resnet20, ctx)
    ctx.phase, ctx.epoch = "sparsity", 19
    method.on_epoch_end(resnet20, ctx)
    method.after_step(resnet20, ctx)
    atomic_save({"method_state": method.state_dict()}, tmp_path / "m.pt")
    restored = SparseGroupL0(SGL0Config(lam=1e-4))
    restored.load_state_dict(load(tmp_path / "m.pt")["method_state"])  # weights_only=True, as the harness loads
    assert restored.beta == method.beta == pytest.approx(0.05)
    assert restored.u_beta == method.u_beta
    assert sorted(restored.u) == sorted(method.u)
    for name, u in method.u.items():
        assert torch.equal(restored.u[name], u)
    # a restored U is used as is by the next step's regularizer, not re-initialized
    with torch.no_grad():
        resnet20.get_submodule("layer1.0.conv1").weight.mul_(2)
    restored.regularization(resnet20, [], ctx)
    assert torch.equal(restored.u["layer1.0.conv1"], method.u["layer1.0.conv1"])


def test_stale_u_after_surgery_restarts_as_the_threshold_of_w(resnet20: nn.Module) -> None:
    method = SparseGroupL0(SGL0Config(lam=1e-4))
    ctx = make_context(resnet20)
    method.setup(resnet20, ctx)
    old = method.u["layer1.0.conv1"].clone()
    scores = {u.name: torch.arange(u.channels, dtype=torch.float) for u in ctx.units}
    counts = {u.name: u.channels // 2 for u in ctx.units}
    plan = plan_from_counts("resnet20", ctx.units, scores, counts, surgery.backend_of(resnet20))
    surgery.apply(resnet20, plan)
    ctx.units = surgery.prunable_units(resnet20)
    method.regularization(resnet20, [], ctx)  # first step of the next phase
    for name, w in regularized(resnet20, ctx).items():
        assert method.u[name].shape == w.shape
        assert torch.equal(method.u[name], method.prox(w))
    # no training in between: the fresh U is the old U's kept filters
    assert torch.equal(method.u["layer1.0.conv1"], old[8:])


def test_an_all_zero_u_filter_scores_below_every_other_and_is_pruned_first(resnet20: nn.Module) -> None:
    method = SparseGroupL0(SGL0Config(lam=1e-4))  # t = 0.0707
    ctx = make_context(resnet20)
    wide = "layer3.0.conv1"  # 64 filters; weights ~N(0, 0.059^2): every filter has entries above t
    with torch.no_grad():
        w = resnet20.get_submodule(wide).weight
        w[5].clamp_(-0.05, 0.05)  # every entry below t: U group all zero
        w[9].clamp_(-0.01, 0.01)  # also empty, and with a smaller W
    scores = method.importance(resnet20, ctx)
    s = scores[wide]
    assert s[5] < 0 and s[9] < 0
    others = torch.cat([v for n, v in scores.items() if n != wide] + [s[[i for i in range(64) if i not in (5, 9)]]])
    assert (others > 0).all()
    assert s[9] < s[5]  # among empty groups the smaller W goes first
    cost = CostModel(resnet20, ctx.units)
    one = cost.base - cost.macs({wide: 63})
    counts = by_flops_target(ctx.units, scores, cost, one / cost.base)  # the target removes one channel
    assert counts[wide] == 63
    plan = plan_from_counts("resnet20", ctx.units, scores, counts, surgery.backend_of(resnet20))
    assert 9 not in plan.keep[wide] and 5 in plan.keep[wide]


def test_u_importance_is_u_norm_over_the_layers_mean_u_norm(resnet20: nn.Module) -> None:
    method = SparseGroupL0(SGL0Config(lam=1e-5))  # t = 0.022: no empty group at init
    ctx = make_context(resnet20)
    scores = method.importance(resnet20, ctx)
    w_scores = SparseGroupL0(SGL0Config(lam=1e-5, importance="W")).importance(resnet20, ctx)
    for name, w in regularized(resnet20, ctx).items():
        w = w.detach()
        u_norms = hard_threshold(w, method.threshold()).flatten(1).norm(dim=1)
        w_norms = w.flatten(1).norm(dim=1)
        assert (u_norms > 0).all()
        torch.testing.assert_close(scores[name], u_norms / u_norms.mean())
        torch.testing.assert_close(w_scores[name], w_norms / w_norms.mean())
        assert not scores[name].requires_grad
    for values in (scores.values(), w_scores.values()):  # every layer's mean score is 1: layers compare
        torch.testing.assert_close(torch.stack([v.mean() for v in values]), torch.ones(len(ctx.units)))


def test_u_importance_does_not_strip_the_layers_with_small_weights(resnet20: nn.Module) -> None:
    """One absolute threshold keeps a smaller share of small-weight layers' norms; per-layer U
    normalisation still keeps a real share of every layer at a 40% FLOPs target."""
    with torch.no_grad():
        resnet20.get_submodule("layer3.0.conv1").weight.mul_(0.5)
    ctx = make_context(resnet20)
    # t = 0.05: no group is empty, but little of the halved layer's norm survives (U / mean ||W_g||
    # and raw ||U_g|| both keep 2% of it; measured)
    scores = SparseGroupL0(SGL0Config(lam=5e-5)).importance(resnet20, ctx)
    assert all((s > 0).all() for s in scores.values())
    counts = by_flops_target(ctx.units, scores, CostModel(resnet20, ctx.units), 0.4)
    assert min(counts[u.name] / u.channels for u in ctx.units) > 0.25


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"lam": 0.0}, "lam must be > 0"),
        ({"beta_every": 0}, "beta_every must be >= 1"),
        ({"threshold": "l0"}, "threshold must be one of hard, soft"),
        ({"importance": "u"}, "importance must be one of U, W"),
    ],
)
def test_bad_params_are_bench_errors(params: dict, message: str) -> None:
    with pytest.raises(BenchError, match=message):
        SparseGroupL0.from_params(params)


def test_search_space_gives_valid_params() -> None:
    from optuna.trial import FixedTrial

    method = SparseGroupL0.from_params(SparseGroupL0().search_space(FixedTrial({"lam": 3e-4, "beta": 0.1})))
    assert method.config == SGL0Config(lam=3e-4, beta=0.1)
    assert method.beta == 0.1


# --- the authors' schedule, their optimizer settings and the EMA ------------------------------------


def test_paper_preset_runs_sgl0_on_the_authors_schedule() -> None:
    """kbui1993/Official_Nonconvex_SGL, train_group_relaxed_wideresnet.py: 200 epochs, batch 128,
    Nesterov, lr 0.1 x0.2 at epochs 60/120/160, wd 5e-4, EMA 0.99; beta x1.25 every 20 epochs."""
    from bench.config import resolve
    from bench.training import lr_factor

    cfg = resolve("paper", None, {"methods": ["sgl0", "l1"]}, [])
    s = cfg.sparsity_schedule("sgl0")
    assert (s.epochs, s.batch_size, s.lr, s.momentum, s.nesterov, s.weight_decay) == (200, 128, 0.1, 0.9, True, 5e-4)
    factors = [lr_factor(s, e) for e in (0, 59, 60, 119, 120, 159, 160, 199)]
    assert factors == pytest.approx([1, 1, 0.2, 0.2, 0.04, 0.04, 0.008, 0.008])
    method = SparseGroupL0.from_params(cfg.method_params("sgl0"))
    assert method.ema_decay(make_context(models.create("resnet20"))) == 0.99
    assert (method.config.beta_growth, method.config.beta_every) == (1.25, 20)
    assert cfg.sparsity_schedule("l1") == cfg.dense  # the section is sgl0's alone


def test_the_optimizer_gives_the_regularized_weights_no_weight_decay(resnet20: nn.Module) -> None:
    method = SparseGroupL0()
    ctx = make_context(resnet20)
    names = method.no_weight_decay(resnet20, ctx)
    assert names == {f"{u.producer}.weight" for u in ctx.units}
    optimizer = make_optimizer(resnet20, Schedule(weight_decay=5e-4), names)
    exempt = {id(p) for p in optimizer.param_groups[1]["params"]}
    assert optimizer.param_groups[1]["weight_decay"] == 0.0 and optimizer.param_groups[0]["weight_decay"] == 5e-4
    assert exempt == {id(w) for w in regularized(resnet20, ctx).values()}


def test_ema_is_an_option_off_by_default() -> None:
    ctx = make_context(models.create("resnet20"))
    assert SparseGroupL0().ema_decay(ctx) is None
    assert SparseGroupL0(SGL0Config(ema=0.99)).ema_decay(ctx) == 0.99
    with pytest.raises(BenchError, match=r"ema must be in \[0, 1\)"):
        SparseGroupL0.from_params({"ema": 1.0})


# --- a DepGraph unit is a whole coupled group -----------------------------------------------------

GROUP = "layer4.0.downsample.0"  # on timm:resnet18 its channels are produced by three convs
PRODUCERS = ("layer4.0.downsample.0", "layer4.0.conv2", "layer4.1.conv2")


@pytest.fixture(scope="module")
def timm18():
    torch.manual_seed(0)
    model = models.create("timm:resnet18", 10, 32)
    units = surgery.prunable_units(model, 32)
    ctx = Context("timm:resnet18", units, torch.device("cpu"), 0, torch.Generator().manual_seed(0), input_size=32)
    ctx.train_size = N
    return model, ctx


def test_every_producer_of_a_coupled_group_is_regularized_and_thresholded(timm18) -> None:
    model, ctx = timm18
    method = SparseGroupL0(SGL0Config(lam=1e-4))
    unit = next(u for u in ctx.units if u.name == GROUP)
    method.setup(model, ctx)
    assert set(PRODUCERS) <= set(method.layers(model, ctx))
    assert {f"{p}.weight" for p in PRODUCERS} <= method.no_weight_decay(model, ctx)
    ws = [model.get_submodule(p).weight for p in PRODUCERS]
    filters = torch.cat([w.flatten(1) for w in ws], dim=1)  # channel c: every producer's filter c
    coupling = sum((w - method.u[p]).pow(2).sum() for w, p in zip(ws, PRODUCERS, strict=True))
    expected = 1e-4 * math.sqrt(filters.shape[1]) * filters.norm(dim=1).sum() + 0.5 * method.beta * coupling
    torch.testing.assert_close(method.unit_penalty(model, unit), expected)
    for p, w in zip(PRODUCERS, ws, strict=True):
        assert torch.equal(method.u[p], hard_threshold(w.detach(), method.threshold()))


def test_a_group_channel_is_empty_only_when_every_producer_filter_is(timm18) -> None:
    model, ctx = timm18
    method = SparseGroupL0(SGL0Config(lam=1e-4))
    unit = next(u for u in ctx.units if u.name == GROUP)
    with torch.no_grad():
        saved = [model.get_submodule(p).weight.clone() for p in PRODUCERS]
        for p in PRODUCERS:
            model.get_submodule(p).weight[3].mul_(1e-6)  # channel 3: every member's U filter is zero
        model.get_submodule(PRODUCERS[0]).weight[5].mul_(1e-6)  # channel 5: only the root's
    try:
        scores = method.unit_scores(model, unit)
        assert scores[3] < 0 < scores[5]
        assert (scores[torch.arange(len(scores)) != 3] > 0).all()
    finally:
        with torch.no_grad():
            for p, w in zip(PRODUCERS, saved, strict=True):
                model.get_submodule(p).weight.copy_(w)
