"""oicsr (Li et al. CVPR 2019, as methods/README.md reconstructs it): the out-in group regulariser, the
per-layer energy importance, and the global greedy allocation with its per-round cap."""

from __future__ import annotations

import pytest
import torch
from method_models import tiny
from torch import nn

from bench import models, registry, surgery
from bench.allocation import CostModel
from bench.api import Context, out_in_sq
from bench.config import PruneConfig
from bench.errors import BenchError
from methods.oicsr import OICSR, OICSRConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def resnet20_ctx(target: float = 0.5, **prune) -> tuple[nn.Module, Context]:
    torch.manual_seed(0)
    model = models.create("resnet20")
    rule = prune or {"target_flops_reduction": target}
    ctx = Context(
        "resnet20", surgery.prunable_units(model), torch.device("cpu"), 0, torch.Generator(), prune=PruneConfig(**rule)
    )
    return model, ctx


def synthetic_scores(ctx: Context, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {u.name: torch.rand(u.channels, generator=g) for u in ctx.units}


# --- regulariser ---------------------------------------------------------------------------------


def test_regularizer_is_the_out_in_group_lasso() -> None:
    model, ctx = tiny()
    w0, w3, fc = model[0].weight, model[3].weight, model[8].weight
    unit0 = sum((w0[i].pow(2).sum() + w3[:, i].pow(2).sum()).sqrt() for i in range(4))
    unit3 = sum((w3[i].pow(2).sum() + fc[:, 4 * i : 4 * i + 4].pow(2).sum()).sqrt() for i in range(6))
    reg = OICSR(OICSRConfig(lam=0.2)).regularization(model, [], ctx)
    torch.testing.assert_close(reg, 0.2 * (unit0 + unit3))


@pytest.mark.parametrize(("unit", "consumer"), [(0, 3), (1, 8)])
def test_group_i_includes_the_next_layers_input_channel_i_and_only_it(unit: int, consumer: int) -> None:
    model, ctx = tiny()
    u = ctx.units[unit]
    before = out_in_sq(model, u).detach().clone()
    per_channel = 1 if consumer == 3 else 4  # the linear sees 4 features per channel
    with torch.no_grad():
        model[consumer].weight[:, 2 * per_channel : 3 * per_channel] += 1.0  # input channel 2
    after = out_in_sq(model, u).detach()
    changed = (after != before).nonzero().flatten().tolist()
    assert changed == [2]
    assert after[2] > before[2]


def test_gradient_of_a_group_is_lam_times_its_direction_in_both_layers() -> None:
    model, ctx = tiny()
    ctx.units = ctx.units[:1]  # unit '0' only: conv '0' filters and conv '3' input channels
    OICSR(OICSRConfig(lam=0.5)).regularization(model, [], ctx).backward()
    w0, w3 = model[0].weight.detach(), model[3].weight.detach()
    norms = (w0.flatten(1).pow(2).sum(1) + w3.transpose(0, 1).flatten(1).pow(2).sum(1)).sqrt()
    torch.testing.assert_close(model[0].weight.grad, 0.5 * w0 / norms.view(-1, 1, 1, 1))
    torch.testing.assert_close(model[3].weight.grad, 0.5 * w3 / norms.view(1, -1, 1, 1))


# --- importance ----------------------------------------------------------------------------------


def test_importance_is_each_layers_energy_over_its_mean_or_its_share() -> None:
    model, ctx = resnet20_ctx()
    share = OICSR(OICSRConfig(normalize="layer_share")).importance(model, ctx)
    mean = OICSR().importance(model, ctx)
    for u in ctx.units:
        conv1, conv2 = model.get_submodule(u.name), model.get_submodule(u.name.replace("conv1", "conv2"))
        energy = conv1.weight.detach().pow(2).sum((1, 2, 3)) + conv2.weight.detach().pow(2).sum((0, 2, 3))
        torch.testing.assert_close(share[u.name], energy / energy.sum())
        torch.testing.assert_close(share[u.name].sum(), torch.tensor(1.0))
        torch.testing.assert_close(mean[u.name], energy / energy.mean())
        assert not share[u.name].requires_grad


def test_default_scores_are_width_neutral() -> None:
    """Every channel of every unit with the same out-in energy scores the same, whatever the unit's
    width: a 64-wide layer is not pruned before a 16-wide one for being wide (layer_share gave 1/C)."""
    model, ctx = resnet20_ctx()
    with torch.no_grad():
        for u in ctx.units:  # equal filter energy in conv1, equal input-channel energy in conv2
            conv1, conv2 = model.get_submodule(u.name), model.get_submodule(u.name.replace("conv1", "conv2"))
            conv1.weight.copy_(conv1.weight / conv1.weight.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
            conv2.weight.copy_(conv2.weight / conv2.weight.transpose(0, 1).flatten(1).norm(dim=1).view(1, -1, 1, 1))
    assert OICSRConfig().normalize == "layer_mean"
    for u, scores in OICSR().importance(model, ctx).items():
        torch.testing.assert_close(scores, torch.ones_like(scores), msg=u)


def test_default_does_not_send_the_widest_stage_to_its_cap() -> None:
    """The measurement behind the default (module docs): resnet20 at init, three greedy rounds to a
    50% FLOPs target. layer_share cuts every 64-wide conv1 to its cap twice (64 -> 16); layer_mean
    keeps more than half of each, and takes more from the 16-wide stage instead."""
    kept = {}
    for name, config in (("layer_share", OICSRConfig(normalize="layer_share")), ("default", OICSRConfig())):
        model, ctx = resnet20_ctx(0.5)
        method = OICSR(config)
        method.setup(model, ctx)
        ctx.rounds = 3
        for r in range(3):
            ctx.round = r
            surgery.apply(model, method.allocate(model, method.importance(model, ctx), ctx))
            ctx.units = surgery.prunable_units(model)
        kept[name] = {u.name: u.channels for u in ctx.units}
    stage3 = [name for name in kept["default"] if name.startswith("layer3")]
    assert max(kept["layer_share"][n] for n in stage3) <= 16
    assert min(kept["default"][n] for n in stage3) > 32


# --- allocation ----------------------------------------------------------------------------------


def test_no_unit_loses_more_than_half_in_one_round_even_with_the_lowest_scores() -> None:
    model, ctx = resnet20_ctx(0.3)
    method = OICSR()
    method.setup(model, ctx)
    scores = synthetic_scores(ctx)
    weakest = ["layer1.0.conv1", "layer3.0.conv1"]
    for name in weakest:
        scores[name] = scores[name] * 1e-3  # every channel below every other unit's
    plan = method.allocate(model, scores, ctx)
    widths = {u.name: u.channels for u in ctx.units}
    for name in weakest:
        assert len(plan.keep[name]) == widths[name] // 2  # capped at 50%, not emptied
    achieved = 1 - CostModel(surgery.apply(model, plan), surgery.prunable_units(model)).base / method.original_macs
    assert 0.3 <= achieved <= 0.31


def test_three_rounds_reach_the_cumulative_target() -> None:
    model, ctx = resnet20_ctx(0.5)
    method = OICSR()
    method.setup(model, ctx)
    ctx.rounds = method.rounds(ctx)
    assert ctx.rounds == 3
    for r in range(ctx.rounds):
        ctx.round = r
        before = {u.name: u.channels for u in ctx.units}
        plan = method.allocate(model, synthetic_scores(ctx, seed=r), ctx)
        assert plan.meta["round"] == r and plan.meta["rule"] == "target_flops_reduction"
        surgery.apply(model, plan)
        ctx.units = surgery.prunable_units(model)
        for u in ctx.units:
            assert u.channels >= before[u.name] - before[u.name] // 2
        achieved = 1 - CostModel(model, ctx.units).base / method.original_macs
        assert 0.5 * (r + 1) / 3 <= achieved <= 0.5 * (r + 1) / 3 + 0.01
        assert plan.meta["predicted_macs"] == pytest.approx(CostModel(model, ctx.units).base)


def test_a_target_the_cap_cannot_reach_is_a_bench_error_naming_the_settings() -> None:
    model, ctx = resnet20_ctx(0.6)  # one round may remove at most about half of resnet20's MACs
    method = OICSR(OICSRConfig(rounds=1))
    method.setup(model, ctx)
    with pytest.raises(BenchError, match=r"max_layer_fraction=0\.5.*rounds \(now 1\)"):
        method.allocate(model, synthetic_scores(ctx), ctx)
    ctx.rounds = 2  # the same target in two rounds is reachable
    assert method.allocate(model, synthetic_scores(ctx), ctx) is not None


def test_channel_fraction_is_greedy_and_capped_and_layer_rules_defer_to_the_harness() -> None:
    model, ctx = resnet20_ctx(channel_fraction=0.3)
    method = OICSR()
    method.setup(model, ctx)
    ctx.rounds = 1
    scores = synthetic_scores(ctx)
    scores["layer1.0.conv1"] = scores["layer1.0.conv1"] * 1e-3
    plan = method.allocate(model, scores, ctx)
    total = sum(u.channels for u in ctx.units)
    removed = sum(u.channels - len(plan.keep.get(u.name, range(u.channels))) for u in ctx.units)
    assert removed == round(0.3 * total)
    assert len(plan.keep["layer1.0.conv1"]) == 8
    for rule in ({"layer_ratio": 0.2}, {"plan": "l1-a"}):
        ctx.prune = PruneConfig(**rule)
        assert method.allocate(model, scores, ctx) is None
    ctx.prune = None
    assert method.allocate(model, scores, ctx) is None


def test_min_keep_fraction_still_holds_under_the_cap() -> None:
    model, ctx = resnet20_ctx(target_flops_reduction=0.2, min_keep_fraction=0.75)
    method = OICSR()
    method.setup(model, ctx)
    scores = synthetic_scores(ctx)
    scores["layer2.1.conv1"] = scores["layer2.1.conv1"] * 1e-3
    plan = method.allocate(model, scores, ctx)
    assert len(plan.keep["layer2.1.conv1"]) == 24  # 75% of 32, though the cap alone allows 16


# --- config --------------------------------------------------------------------------------------


def test_rounds_start_state_and_bad_params() -> None:
    assert OICSR.start == "dense" and OICSR.sparsity_training
    model, ctx = resnet20_ctx()
    method = OICSR(OICSRConfig(rounds=4))
    assert method.rounds(ctx) == 4
    method.setup(model, ctx)
    restored = OICSR()
    restored.load_state_dict(method.state_dict())
    assert restored.original_macs == method.original_macs == pytest.approx(40.55e6, rel=1e-3)
    with pytest.raises(BenchError, match=r"max_layer_fraction must be in \(0, 1\]"):
        registry.create_method("oicsr", {"max_layer_fraction": 0.0})
    with pytest.raises(BenchError, match=r"rounds must be an integer >= 1"):
        registry.create_method("oicsr", {"rounds": 0})


def test_search_space_samples_config_kwargs() -> None:
    optuna = pytest.importorskip("optuna")
    params = OICSR().search_space(optuna.trial.FixedTrial({"lam": 1e-4, "rounds": 2, "normalize": "layer_mean"}))
    assert OICSR.from_params(params).config == OICSRConfig(lam=1e-4, rounds=2, normalize="layer_mean")
