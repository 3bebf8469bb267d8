"""stressednet (Shafiee et al. 2019): survival probabilities from BN-folded filter norms, their
direction, stress that the network feels, offspring sampling that follows P while meeting the
harness's FLOPs target, and whole coupled groups on DepGraph units."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bench import measure, models, surgery
from bench.allocation import CostModel, by_flops_target, plan_from_counts
from bench.api import Context
from bench.config import PruneConfig
from bench.errors import BenchError
from bench.pruning import Origin, default_plan
from methods.stressednet import (
    StressedNet,
    StressedNetConfig,
    bn_fold,
    conv_bn_pairs,
    keep_sample,
    offspring_scores,
    survival_probability,
)

pytestmark = pytest.mark.usefixtures("one_thread")

F_ENV = 0.8


def make_context(model: nn.Module, seed: int = 0) -> Context:
    return Context(
        "resnet20", surgery.prunable_units(model), torch.device("cpu"), seed, torch.Generator().manual_seed(seed)
    )


@pytest.fixture
def resnet20() -> nn.Module:
    torch.manual_seed(0)
    return models.create("resnet20")


def randomize_bns(model: nn.Module) -> None:
    """Trained-looking BNs: gamma, beta and running statistics away from their init values."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def spread_filter_norms(model: nn.Module, ctx: Context) -> None:
    """Filter c of every unit gets L1 norm proportional to c + 1, so P rises with the index."""
    with torch.no_grad():
        for unit in ctx.units:
            w = model.get_submodule(unit.producer).weight
            w.copy_(w.sign() * (torch.arange(1, w.shape[0] + 1, dtype=w.dtype) / w.shape[0]).view(-1, 1, 1, 1))


def test_survival_probability_formula_on_hand_made_strengths() -> None:
    s = torch.tensor([4.0, 2.0, 0.0])
    p = survival_probability(s, F_ENV)
    expected = F_ENV * torch.exp(torch.tensor([0.0, -0.5, -1.0]))
    torch.testing.assert_close(p, expected)
    assert p[0] == pytest.approx(F_ENV)  # the strongest channel survives with probability F
    # Z = the mean strength (2): the 4-strength channel's exp(1) is clipped to 1, so its P is F
    torch.testing.assert_close(survival_probability(s, F_ENV, "mean"), F_ENV * torch.tensor([1.0, 1.0, math.exp(-1)]))
    # an all-zero unit has no strongest channel: every P is F / e, and finite
    torch.testing.assert_close(survival_probability(torch.zeros(4), 1.0), torch.full((4,), math.exp(-1)))


def test_strength_is_the_l1_norm_of_the_bn_folded_filter(resnet20: nn.Module) -> None:
    """A chain unit: s_c = ||W_c||_1 |gamma_c| / sqrt(var_c + eps), up to the unit's mean, which Z cancels."""
    ctx = make_context(resnet20)
    randomize_bns(resnet20)
    method = StressedNet()
    assert conv_bn_pairs(resnet20, 32)["layer2.1.conv1"] == "layer2.1.bn1"
    probs = method.probabilities(resnet20, ctx)
    for unit in ctx.units:
        conv, bn = resnet20.get_submodule(unit.name), resnet20.get_submodule(unit.name.replace("conv", "bn"))
        fold = bn.weight.detach().abs() / (bn.running_var + bn.eps).sqrt()
        folded = conv.weight.detach().abs().flatten(1).sum(1) * fold
        torch.testing.assert_close(probs[unit.name], survival_probability(folded, F_ENV))


def test_keep_sample_keeps_with_probability_p_not_1_minus_p() -> None:
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.9, 0.1])
    kept = torch.stack([keep_sample(p, g) for _ in range(20_000)]).float().mean(0)
    torch.testing.assert_close(kept, p, rtol=0, atol=0.01)


def test_offspring_follows_p_when_the_target_matches_the_expected_survivors() -> None:
    """100 filters at P=0.9 and 100 at 0.1; keeping the 100 best scores (the expected number of
    Bernoulli survivors) keeps each group with frequency P: theta = 1, F unchanged."""
    g = torch.Generator().manual_seed(1)
    p = torch.cat([torch.full((100,), 0.9), torch.full((100,), 0.1)])
    freq = torch.zeros(200)
    draws = 400
    for _ in range(draws):
        scores = offspring_scores(p, g)
        freq[torch.topk(scores, 100).indices] += 1
    freq /= draws
    assert freq[:100].mean().item() == pytest.approx(0.9, abs=0.02)
    assert freq[100:].mean().item() == pytest.approx(0.1, abs=0.02)


def test_offspring_survival_rises_with_p_under_the_flops_target(resnet20: nn.Module) -> None:
    """Through the harness's own allocation (a 40% FLOPs target), over many seeds: filters with a
    higher P survive more often in every unit, and every sample meets the target."""
    ctx = make_context(resnet20)
    spread_filter_norms(resnet20, ctx)
    cost = CostModel(resnet20, ctx.units)
    method = StressedNet()
    probs = method.probabilities(resnet20, ctx)
    freq = {u.name: torch.zeros(u.channels) for u in ctx.units}
    seeds = 150
    for seed in range(seeds):
        method.setup(resnet20, make_context(resnet20, seed))
        scores = method.importance(resnet20, ctx)
        counts = by_flops_target(ctx.units, scores, cost, 0.4)
        assert 0.4 <= cost.reduction(counts) < 0.41
        plan = plan_from_counts("resnet20", ctx.units, scores, counts, "direct")
        for unit in ctx.units:
            freq[unit.name][list(plan.keep.get(unit.name, range(unit.channels)))] += 1
    for unit in ctx.units:
        f, p = freq[unit.name] / seeds, probs[unit.name]
        assert torch.all(p[1:] > p[:-1])
        quarter = unit.channels // 4
        assert f[-quarter:].mean() > f[:quarter].mean() + 0.2, unit.name  # strongest quarter vs weakest
        ranks_f, ranks_p = f.argsort().argsort().float(), p.argsort().argsort().float()
        assert torch.corrcoef(torch.stack([ranks_f, ranks_p]))[0, 1] > 0.8, unit.name  # Spearman


def test_stress_scales_gamma_and_beta_of_exactly_the_dropped_channels(resnet20: nn.Module) -> None:
    method = StressedNet(StressedNetConfig(stress_factor=0.8))
    ctx = make_context(resnet20)
    randomize_bns(resnet20)
    method.setup(resnet20, ctx)
    ctx.phase, ctx.epoch = "sparsity", 3
    before = {k: v.clone() for k, v in resnet20.state_dict().items()}
    # the draw the method makes: same generator, units in order, keep with probability P
    g = method.generator(ctx, 3)
    probs = method.probabilities(resnet20, ctx)
    dropped = {unit.name.replace("conv", "bn"): ~keep_sample(probs[unit.name], g) for unit in ctx.units}
    method.on_epoch_end(resnet20, ctx)
    after = resnet20.state_dict()
    for key, value in after.items():
        bn, _, field = key.rpartition(".")
        if bn in dropped and field in ("weight", "bias"):
            d = dropped[bn]
            assert torch.equal(value[d], before[key][d] * torch.tensor(0.8)), key
            assert torch.equal(value[~d], before[key][~d]), key
        else:
            assert torch.equal(value, before[key]), key  # convs, running statistics, fc untouched
    n_dropped = sum(int(d.sum()) for d in dropped.values())
    assert 0 < n_dropped < sum(u.channels for u in ctx.units)
    # not while fine-tuning
    ctx.phase = "finetune"
    method.on_epoch_end(resnet20, ctx)
    for key, value in resnet20.state_dict().items():
        assert torch.equal(value, after[key])


def test_stress_changes_the_training_forward_pass(resnet20: nn.Module) -> None:
    """Train mode, a fixed batch: BN normalises a conv's output by its batch statistics, so scaling
    a filter behind it (what stress did before) leaves the output unchanged up to eps. Scaling
    gamma and beta scales the channel's BN output: the logits move."""
    ctx = make_context(resnet20)
    randomize_bns(resnet20)
    method = StressedNet(StressedNetConfig(stress_factor=0.5))
    method.setup(resnet20, ctx)
    ctx.phase = "sparsity"
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    resnet20.train()
    with torch.no_grad():
        out = resnet20(x)
        method.on_epoch_end(resnet20, ctx)
        stressed = resnet20(x)
    assert (stressed - out).abs().max() > 1e-2 * out.abs().max()


def test_stress_lowers_the_survival_of_the_stressed_channels(resnet20: nn.Module) -> None:
    """The next generation's P reads the folded filter norm, which stress scales by the factor:
    dropped channels' P falls (or stays, when the unit's strongest also fell), kept ones' rises."""
    ctx = make_context(resnet20)
    randomize_bns(resnet20)
    method = StressedNet(StressedNetConfig(stress_factor=0.5))
    method.setup(resnet20, ctx)
    ctx.phase = "sparsity"
    g = method.generator(ctx, 0)
    p0 = method.probabilities(resnet20, ctx)
    dropped = {unit.name: ~keep_sample(p0[unit.name], g) for unit in ctx.units}
    s0 = {unit.name: method.strength(resnet20, unit, ctx) for unit in ctx.units}
    method.on_epoch_end(resnet20, ctx)
    p1 = method.probabilities(resnet20, ctx)
    for unit in ctx.units:
        d, s1 = dropped[unit.name], method.strength(resnet20, unit, ctx)
        ratio = (s1 / s1.mean()) / (s0[unit.name] / s0[unit.name].mean())  # s up to the unit's mean
        torch.testing.assert_close(ratio[d] / ratio[~d].mean(), torch.full_like(ratio[d], 0.5))
        assert torch.all(p1[unit.name][d] <= p0[unit.name][d] + 1e-6)
        assert torch.all(p1[unit.name][~d] >= p0[unit.name][~d] - 1e-6)
    assert sum((p1[u][dropped[u]] - p0[u][dropped[u]]).sum() for u in p0) < -0.1


def test_stress_drops_weak_channels_more_often(resnet20: nn.Module) -> None:
    ctx = make_context(resnet20)
    spread_filter_norms(resnet20, ctx)
    method = StressedNet(StressedNetConfig(stress_factor=0.5))
    method.setup(resnet20, ctx)
    ctx.phase = "sparsity"
    gamma = resnet20.get_submodule("layer3.0.bn1").weight
    start = gamma.detach().clone()
    for epoch in range(5):
        ctx.epoch = epoch
        method.on_epoch_end(resnet20, ctx)
    shrink = gamma.detach() / start
    assert shrink[:16].mean() < shrink[-16:].mean()  # the weakest quarter was stressed more


def test_a_conv_without_bn_is_stressed_on_its_filter() -> None:
    """No BN after the producer: its filter (and bias) is where the channel can be scaled."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1))
    from bench.units import chain_unit

    ctx = Context("plain", [chain_unit("0", 6, None, ("2",))], torch.device("cpu"), 0, torch.Generator(), input_size=8)
    method = StressedNet(StressedNetConfig(stress_factor=0.5, environment=0.5))
    method.setup(model, ctx)
    ctx.phase = "sparsity"
    w, b, consumer = model[0].weight.detach().clone(), model[0].bias.detach().clone(), model[2].weight.detach().clone()
    d = ~keep_sample(method.probabilities(model, ctx)["0"], method.generator(ctx, 0))
    method.on_epoch_end(model, ctx)
    assert d.any()
    torch.testing.assert_close(model[0].weight[d], 0.5 * w[d])
    torch.testing.assert_close(model[0].bias[d], 0.5 * b[d])
    assert torch.equal(model[0].weight[~d], w[~d]) and torch.equal(model[2].weight, consumer)


def test_same_seed_same_offspring_and_each_generation_draws_anew(resnet20: nn.Module) -> None:
    def scores(seed: int, round_index: int = 0) -> dict[str, torch.Tensor]:
        method = StressedNet()
        ctx = make_context(resnet20, seed)
        method.setup(resnet20, ctx)
        ctx.round = round_index
        return method.importance(resnet20, ctx)

    a, b, c, r1 = scores(0), scores(0), scores(1), scores(0, round_index=1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert not all(torch.equal(a[k], r1[k]) for k in a)
    assert all(torch.isfinite(v).all() for v in a.values())


def test_state_dict_restores_the_draws_of_a_resumed_run(resnet20: nn.Module) -> None:
    method = StressedNet()
    ctx = make_context(resnet20, 7)
    method.setup(resnet20, ctx)
    resumed = StressedNet()
    resumed.load_state_dict(method.state_dict())
    for k, v in method.importance(resnet20, ctx).items():
        assert torch.equal(resumed.importance(resnet20, ctx)[k], v)


def test_generations_meet_the_cumulative_flops_target_within_1pp(resnet20: nn.Module) -> None:
    method = StressedNet(StressedNetConfig(generations=3))
    ctx = make_context(resnet20)
    method.setup(resnet20, ctx)
    rounds = method.rounds(ctx)
    assert rounds == 3
    prune = PruneConfig(target_flops_reduction=0.4)
    original = measure.count_macs(resnet20, 32)
    origin = Origin({u.name: u.channels for u in ctx.units}, original)
    for r in range(rounds):
        ctx.round = r
        scores = method.importance(resnet20, ctx)
        plan = default_plan(
            prune,
            "resnet20",
            resnet20,
            ctx.units,
            scores,
            backend="direct",
            input_size=32,
            round_index=r,
            rounds=rounds,
            origin=origin,
        )
        surgery.apply(resnet20, plan)
        ctx.units = surgery.prunable_units(resnet20)
        achieved = 1 - measure.count_macs(resnet20, 32) / original
        assert abs(achieved - 0.4 * (r + 1) / rounds) <= 0.01, (r, achieved)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"offspring": 2}, "offspring must be 1"),
        ({"environment": 0.0}, r"environment must be in \(0, 1\]"),
        ({"stress_factor": 1.5}, r"stress_factor must be in \[0, 1\]"),
        ({"generations": 0}, "generations must be >= 1"),
        ({"normalizer": "sum"}, "normalizer must be one of max, mean"),
    ],
)
def test_bad_params_are_bench_errors(params: dict, message: str) -> None:
    with pytest.raises(BenchError, match=message):
        StressedNet.from_params(params)


def test_search_space_gives_valid_params() -> None:
    from optuna.trial import FixedTrial

    trial = FixedTrial({"environment": 0.7, "stress_factor": 0.9, "generations": 2})
    method = StressedNet.from_params(StressedNet().search_space(trial))
    assert method.config == StressedNetConfig(environment=0.7, stress_factor=0.9, generations=2)


def test_environment_factor_shifts_all_scores_alike(resnet20: nn.Module) -> None:
    """Under the target-aware draw F cancels: same draws, scores shifted by log F, same ranking."""
    ctx = make_context(resnet20)
    a, b = StressedNet(StressedNetConfig(environment=0.8)), StressedNet(StressedNetConfig(environment=0.5))
    a.setup(resnet20, make_context(resnet20, 3))
    b.setup(resnet20, make_context(resnet20, 3))
    sa, sb = a.importance(resnet20, ctx), b.importance(resnet20, ctx)
    for unit in sa:
        torch.testing.assert_close(sa[unit] - sb[unit], torch.full_like(sa[unit], math.log(0.8 / 0.5)))


# --- a DepGraph unit is a whole coupled group -----------------------------------------------------

GROUP = "layer4.0.downsample.0"  # on timm:resnet18 its channels are produced by three convs, each with a BN
PAIRS = {
    "layer4.0.downsample.0": "layer4.0.downsample.1",
    "layer4.0.conv2": "layer4.0.bn2",
    "layer4.1.conv2": "layer4.1.bn2",
}


@pytest.fixture
def timm18() -> tuple[nn.Module, Context]:
    torch.manual_seed(0)
    model = models.create("timm:resnet18", 10, 32)
    randomize_bns(model)  # timm zero-inits each block's last gamma; a trained parent has none at 0
    ctx = Context("timm:resnet18", surgery.prunable_units(model, 32), torch.device("cpu"), 0,
                  torch.Generator().manual_seed(0), input_size=32)  # fmt: skip
    return model, ctx


def test_a_group_is_scored_on_every_producer_and_its_bn(timm18) -> None:
    model, ctx = timm18
    unit = next(u for u in ctx.units if u.name == GROUP)
    pairs = conv_bn_pairs(model, 32)
    assert {conv: pairs[conv] for conv in PAIRS} == PAIRS
    method = StressedNet()
    members = []
    for conv, bn in PAIRS.items():
        folded = model.get_submodule(conv).weight.detach().abs().flatten(1).sum(1) * bn_fold(model.get_submodule(bn))
        members.append(folded / folded.mean())
    torch.testing.assert_close(method.strength(model, unit, ctx), torch.stack(members).mean(0))
    before = method.strength(model, unit, ctx)
    with torch.no_grad():
        model.get_submodule("layer4.1.bn2").weight[7] *= 0.1  # a non-root member's BN, one channel
    after = method.strength(model, unit, ctx)
    assert after[7] < before[7]


def test_stress_reaches_every_bn_of_a_group_and_no_conv_behind_one(timm18) -> None:
    model, ctx = timm18
    method = StressedNet(StressedNetConfig(stress_factor=0.5))
    method.setup(model, ctx)
    ctx.phase = "sparsity"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = method.generator(ctx, 0)
    probs = method.probabilities(model, ctx)
    dropped = {u.name: ~keep_sample(probs[u.name], g) for u in ctx.units}[GROUP]
    method.on_epoch_end(model, ctx)
    after = model.state_dict()
    assert dropped.any()
    for bn in PAIRS.values():
        for field in ("weight", "bias"):
            key = f"{bn}.{field}"
            torch.testing.assert_close(after[key][dropped], 0.5 * before[key][dropped])
            assert torch.equal(after[key][~dropped], before[key][~dropped])
    convs = [k for k in after if k.endswith(".weight") and after[k].dim() == 4]
    assert all(torch.equal(after[k], before[k]) for k in convs)  # every conv here has a BN after it
