"""Training budgets and multi-round targets: the matched-budget scaling, its refusals, and rules that
compound over rounds so that R rounds reach the requested value."""

from __future__ import annotations

import pytest

from bench import budget, surgery
from bench.allocation import CostModel
from bench.config import PruneConfig, RunConfig, Schedule, from_dict
from bench.errors import BenchError
from bench.estimate import method_phases, planned_rounds
from bench.importance import filter_l1, layer_mean
from bench.models import create
from bench.pruning import Origin, default_plan
from bench.registry import create_method


@pytest.mark.parametrize(
    ("planned", "total", "expected"),
    [
        ([160, 160], 200, [100, 100]),
        ([40], 7, [7]),
        ([160, 160, 160, 40, 40, 40], 40, [11, 10, 10, 3, 3, 3]),
        ([160, 160, 160, 40, 40, 40], 6, [1, 1, 1, 1, 1, 1]),  # every phase keeps one epoch
        ([1, 100], 3, [1, 2]),
        ([3, 0, 3], 5, [3, 0, 2]),  # a phase with no epochs stays empty
    ],
)
def test_shares_split_the_total_in_proportion(planned, total, expected) -> None:
    got = budget.shares(planned, total)
    assert got == expected
    assert sum(got) == total


def _cfg(**extra) -> RunConfig:
    base = {"dense": {"epochs": 160}, "finetune": {"epochs": 40}, "method": {"slim": {"finetune": {"epochs": 160}}}}
    return from_dict({**base, **extra})


def test_the_paper_budgets_differ_and_a_matched_budget_equalises_them() -> None:
    configured = {name: _phases(_cfg(), name).total for name in ("l1", "slim", "oicsr")}
    assert configured == {"l1": 200, "slim": 320, "oicsr": 160 + 3 * (160 + 40)}
    matched = {name: _phases(_cfg(budget=200), name) for name in ("l1", "slim", "oicsr")}
    assert {name: plan.total for name, plan in matched.items()} == {"l1": 200, "slim": 200, "oicsr": 200}
    assert matched["l1"].epochs == {"dense": 160, "finetune": 40}
    assert matched["slim"].epochs == {"sparsity": 100, "finetune": 100}  # slim starts from scratch: 160:160
    assert [s.epochs for s in matched["oicsr"].sparsity] == [11, 10, 10]  # 40 left over 3 rounds, 4:1
    assert matched["slim"].scale == pytest.approx(200 / 320)


@pytest.mark.parametrize(
    ("method", "given", "message"),
    [
        ("l1", 100, "below the 160 epochs of the dense baseline that l1 starts from"),
        ("oicsr", 163, "leaves oicsr 3 epoch\\(s\\) after its 160 dense epochs, but its 3 round\\(s\\) have 6"),
    ],
)
def test_a_budget_a_method_cannot_fit_is_refused(method, given, message) -> None:
    with pytest.raises(BenchError, match=message):
        _phases(_cfg(budget=given), method)


def test_scaled_phases_keep_their_recipe_and_clamp_warmup() -> None:
    plan = budget.PhasePlan(0, (Schedule(epochs=10, warmup_epochs=5, lr=0.3),), (Schedule(epochs=10),))
    scaled = budget.matched(plan, 4, "m")
    assert [s.epochs for s in (*scaled.sparsity, *scaled.finetune)] == [2, 2]
    assert scaled.sparsity[0].lr == 0.3 and scaled.sparsity[0].warmup_epochs == 2


def _phases(cfg: RunConfig, name: str) -> budget.PhasePlan:
    method = create_method(name)
    return method_phases(cfg, name, method, planned_rounds(cfg, method))


# --- rules that compound over rounds -------------------------------------------------------------


def _prune_in_rounds(prune: PruneConfig, rounds: int) -> tuple[dict[str, int], dict[str, int]]:
    """Prune resnet20 in ``rounds`` rounds of ``default_plan``; (unpruned widths, final widths)."""
    model = create("resnet20", 10, 32)
    units = surgery.prunable_units(model, 32)
    origin = Origin({u.name: u.channels for u in units}, CostModel(model, units, 32).base)
    for r in range(rounds):
        scores = {name: layer_mean(s) for name, s in filter_l1(model, units).items()}
        plan = default_plan(
            prune, "resnet20", model, units, scores, backend="torch", input_size=32, round_index=r, rounds=rounds,
            origin=origin,
        )  # fmt: skip
        surgery.apply(model, plan, 32)
        units = surgery.prunable_units(model, 32)
    return dict(origin.widths), {u.name: u.channels for u in units}


def test_three_rounds_of_a_channel_fraction_reach_the_fraction() -> None:
    before, after = _prune_in_rounds(PruneConfig(channel_fraction=0.6), rounds=3)
    achieved = 1 - sum(after.values()) / sum(before.values())
    assert achieved == pytest.approx(0.6, abs=len(before) / sum(before.values()))  # one channel per unit
    assert achieved > 0.55  # the old per-round share of the current channels stopped at 48.8%


def test_three_rounds_of_a_layer_ratio_reach_the_ratio_in_every_unit() -> None:
    before, after = _prune_in_rounds(PruneConfig(layer_ratio=0.6), rounds=3)
    for name, width in before.items():
        assert abs(after[name] - int(width * 0.4)) <= 1, name


def test_one_round_is_unchanged_by_compounding() -> None:
    one, _ = _prune_in_rounds(PruneConfig(channel_fraction=0.5), rounds=1)
    _, after = _prune_in_rounds(PruneConfig(channel_fraction=0.5), rounds=1)
    assert 1 - sum(after.values()) / sum(one.values()) == pytest.approx(0.5, abs=0.01)
