"""stressednet (Shafiee et al.): survival probabilities, their direction, stress, offspring sampling
that follows P while meeting the harness's FLOPs target."""

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


def spread_filter_norms(model: nn.Module, ctx: Context) -> None:
    """Filter c of every unit gets L1 norm proportional to c + 1, so P rises with the index."""
    with torch.no_grad():
        for unit in ctx.units:
            w = model.get_submodule(unit.producer).weight
            w.copy_(w.sign() * (torch.arange(1, w.shape[0] + 1, dtype=w.dtype) / w.shape[0]).view(-1, 1, 1, 1))


def test_survival_probability_formula_on_hand_made_weights() -> None:
    w = torch.zeros(3, 2, 1, 1)
    w[0] = torch.tensor([3.0, -1.0]).view(2, 1, 1)  # L1 norm 4: the layer's max
    w[1] = torch.tensor([-1.0, 1.0]).view(2, 1, 1)  # 2
    p = survival_probability(w, F_ENV)
    expected = F_ENV * torch.exp(torch.tensor([0.0, -0.5, -1.0]))
    torch.testing.assert_close(p, expected)
    assert p[0] == pytest.approx(F_ENV)  # the strongest filter survives with probability F
    # Z = the mean norm (2): the 4-norm filter's exp(1) is clipped to 1, so its P is F
    torch.testing.assert_close(survival_probability(w, F_ENV, "mean"), F_ENV * torch.tensor([1.0, 1.0, math.exp(-1)]))
    # an all-zero layer has no strongest filter: every P is F / e, and finite
    torch.testing.assert_close(survival_probability(torch.zeros(4, 3, 3, 3), 1.0), torch.full((4,), math.exp(-1)))


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


def test_stress_multiplies_exactly_the_dropped_filters_at_epoch_end(resnet20: nn.Module) -> None:
    method = StressedNet(StressedNetConfig(stress_factor=0.8))
    ctx = make_context(resnet20)
    method.setup(resnet20, ctx)
    ctx.phase, ctx.epoch = "sparsity", 3
    before = {k: v.clone() for k, v in resnet20.state_dict().items()}
    # the draw the method makes: same generator, units in order, keep with probability P
    g = method.generator(ctx, 3)
    dropped = {}
    for unit in ctx.units:
        p = survival_probability(before[f"{unit.producer}.weight"], method.config.environment)
        dropped[unit.producer] = ~keep_sample(p, g)
    method.on_epoch_end(resnet20, ctx)
    after = resnet20.state_dict()
    n_dropped = 0
    for key, value in after.items():
        conv = key.removesuffix(".weight")
        if conv in dropped:
            d = dropped[conv]
            n_dropped += int(d.sum())
            assert torch.equal(value[d], before[key][d] * torch.tensor(0.8)), key
            assert torch.equal(value[~d], before[key][~d]), key
        else:
            assert torch.equal(value, before[key]), key  # conv2s, BN, fc untouched
    total = sum(u.channels for u in ctx.units)
    assert 0 < n_dropped < total
    # not while fine-tuning
    ctx.phase = "finetune"
    method.on_epoch_end(resnet20, ctx)
    for key, value in resnet20.state_dict().items():
        assert torch.equal(value, after[key])


def test_stress_drops_weak_filters_more_often(resnet20: nn.Module) -> None:
    ctx = make_context(resnet20)
    spread_filter_norms(resnet20, ctx)
    method = StressedNet(StressedNetConfig(stress_factor=0.5))
    method.setup(resnet20, ctx)
    ctx.phase = "sparsity"
    w = resnet20.get_submodule("layer3.0.conv1").weight
    start = w.detach().abs().flatten(1).sum(1)
    for epoch in range(5):
        ctx.epoch = epoch
        method.on_epoch_end(resnet20, ctx)
    shrink = w.detach().abs().flatten(1).sum(1) / start
    assert shrink[:16].mean() < shrink[-16:].mean()  # the weakest quarter was stressed more


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
