"""Surgery: physical channel removal, checked by the dead-channel equivalence.

If the channels a plan removes are made exactly dead first (their BN gamma and beta set to zero, in
eval mode, so they output 0 whatever the running statistics), removing them must not change the
logits. That holds only if conv outputs, BN channels and running stats, consumer conv inputs and
the linear layer's inputs are all sliced with the same indices, so it is the correctness check.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from bench import measure, models, surgery
from bench.errors import BenchError
from bench.plan import PruningPlan, load_plans, save_plans
from bench.units import PrunableUnit

pytestmark = pytest.mark.usefixtures("one_thread")


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN non-trivial affine parameters and running stats, so slicing them matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    return model


def random_plan(name: str, units: list[PrunableUnit], seed: int, backend: str, every: int = 1) -> PruningPlan:
    """Keep a random, unsorted subset (1..C-1 channels) of every ``every``-th unit wider than 1."""
    g = torch.Generator().manual_seed(seed)
    keep = {}
    for u in units[::every]:
        if u.channels < 2:
            continue
        count = int(torch.randint(1, u.channels, (1,), generator=g))
        keep[u.name] = tuple(torch.randperm(u.channels, generator=g)[:count].tolist())
    return PruningPlan(name, keep, {n: next(u.channels for u in units if u.name == n) for n in keep}, backend)


def kill_removed_channels(model: nn.Module, units: list[PrunableUnit], plan: PruningPlan) -> int:
    """Zero gamma and beta of every BN channel the plan removes; returns how many BNs were touched."""
    by_unit = {u.name: u for u in units}
    touched = 0
    with torch.no_grad():
        for name, kept in plan.keep.items():
            removed = sorted(set(range(plan.channels[name])) - set(kept))
            for member in by_unit[name].members:
                module = model.get_submodule(member.module)
                if member.side == "out" and isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
                    module.weight[removed] = 0
                    module.bias[removed] = 0
                    touched += 1
    return touched


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return copy.deepcopy(model).double().eval()(x.double())


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# --- direct path ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "seed"), [("resnet20", 0), ("resnet56", 1), ("vgg16", 2)])
def test_direct_surgery_shrinks_model_and_preserves_dead_channel_logits(name: str, seed: int) -> None:
    torch.manual_seed(seed)
    model = randomize_bn(models.create(name), seed).eval()
    units = surgery.prunable_units(model)
    assert surgery.backend_of(model) == "direct"
    plan = random_plan(name, units, seed, "direct")
    assert kill_removed_channels(model, units, plan) == len(plan.keep)  # one BN per unit
    x = torch.randn(4, 3, 32, 32)
    before = logits(model, x)
    params_before = measure.count_params(model)

    pruned = surgery.apply(copy.deepcopy(model), plan)

    # physically smaller: every member of every unit has the kept width
    for unit in units:
        if unit.name not in plan.keep:
            continue
        kept = len(plan.keep[unit.name])
        for member in unit.members:
            module = pruned.get_submodule(member.module)
            if isinstance(module, nn.Conv2d):
                width = module.out_channels if member.side == "out" else module.in_channels
                weight_dim = 0 if member.side == "out" else 1
                assert width == module.weight.shape[weight_dim] == kept
            elif isinstance(module, nn.BatchNorm2d):
                assert module.num_features == kept
                for t in (module.weight, module.bias, module.running_mean, module.running_var):
                    assert t.shape == (kept,)
            elif isinstance(module, nn.Linear):
                assert module.in_features == module.weight.shape[1] == kept
    removed_params = measure.count_params(model) - measure.count_params(pruned)
    assert removed_params > 0
    assert params_before - measure.count_params(pruned) == removed_params
    assert measure.count_macs(pruned) < measure.count_macs(model)
    assert [u.channels for u in surgery.prunable_units(pruned)] == [
        len(plan.keep.get(u.name, range(u.channels))) for u in units
    ]

    after = logits(pruned, x)
    assert after.shape == (4, 10)
    torch.testing.assert_close(after, before, rtol=1e-9, atol=1e-9)


def test_dead_channel_check_detects_a_mismatched_slice() -> None:
    """The equivalence test has teeth: removing a live channel instead of a dead one changes the logits."""
    torch.manual_seed(0)
    model = randomize_bn(models.create("resnet20")).eval()
    units = surgery.prunable_units(model)
    unit = units[0]
    plan = PruningPlan("resnet20", {unit.name: tuple(range(1, unit.channels))}, {unit.name: unit.channels})
    kill_removed_channels(model, units, plan)  # channel 0 is dead
    wrong = PruningPlan("resnet20", {unit.name: tuple(range(unit.channels - 1))}, {unit.name: unit.channels})
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(logits(surgery.apply(copy.deepcopy(model), plan), x), logits(model, x))
    assert not torch.allclose(logits(surgery.apply(copy.deepcopy(model), wrong), x), logits(model, x))


def test_vgg_last_conv_slices_the_first_linear_layer() -> None:
    model = models.create("vgg16")
    last = surgery.prunable_units(model)[-1]
    assert last.modules("in") == ("classifier.0",)
    plan = PruningPlan("vgg16", {last.name: tuple(range(0, 512, 2))}, {last.name: 512})
    surgery.apply(model, plan)
    assert model.classifier[0].in_features == 256
    assert model.classifier[0].weight.shape == (512, 256)
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet_internal_rule_leaves_stage_widths_alone() -> None:
    model = models.create("resnet20")
    units = surgery.prunable_units(model)
    assert [u.name for u in units] == [f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in range(3)]
    plan = PruningPlan("resnet20", {u.name: (0,) for u in units}, {u.name: u.channels for u in units})
    surgery.apply(model, plan)
    for _, block in model.blocks():
        assert block.conv1.out_channels == block.conv2.in_channels == 1
        assert block.conv2.out_channels in (16, 32, 64)  # the coupled stage channels are untouched
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


# --- depgraph path (timm) ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def timm_resnet18() -> tuple[nn.Module, list[PrunableUnit]]:
    torch.manual_seed(0)
    model = randomize_bn(models.create("timm:resnet18")).eval()
    return model, surgery.prunable_units(model)


def test_depgraph_units_of_timm_resnet18(timm_resnet18) -> None:
    model, units = timm_resnet18
    assert surgery.backend_of(model) == "depgraph"
    names = {u.name for u in units}
    assert {"conv1", "layer1.0.conv1", "layer4.1.conv1"} <= names
    stem = next(u for u in units if u.name == "conv1")
    # the stem's channels are coupled through the residual additions of layer1 and into layer2
    assert {"bn1", "layer1.0.bn2", "layer1.1.bn2"} <= set(stem.modules("out"))
    assert {"layer1.0.conv1", "layer2.0.conv1", "layer2.0.downsample.0"} <= set(stem.modules("in"))
    assert "fc" not in names  # the classifier is never a unit


def test_depgraph_surgery_preserves_dead_channel_logits(timm_resnet18) -> None:
    model, units = timm_resnet18
    model = copy.deepcopy(model)
    by_name = {u.name: u for u in units}
    picks = {"conv1": (0, 64), "layer1.0.conv1": (1, 64), "layer3.1.conv1": (2, 256), "layer3.0.downsample.0": (3, 256)}
    keep = {}
    for name, (seed, channels) in picks.items():
        assert by_name[name].channels == channels
        g = torch.Generator().manual_seed(seed)
        keep[name] = tuple(sorted(torch.randperm(channels, generator=g)[: channels // 3].tolist()))
    plan = PruningPlan("timm:resnet18", keep, {n: by_name[n].channels for n in keep}, "depgraph")
    assert kill_removed_channels(model, units, plan) >= len(keep)
    x = torch.randn(2, 3, 32, 32)
    before = logits(model, x)

    pruned = surgery.apply(copy.deepcopy(model), plan)

    assert pruned.conv1.out_channels == pruned.bn1.num_features == 64 // 3
    assert pruned.layer1[0].conv2.in_channels == pruned.layer1[0].conv1.out_channels == 64 // 3
    assert pruned.layer3[1].conv2.in_channels == 256 // 3
    assert pruned.layer3[0].conv2.out_channels == pruned.layer3[0].downsample[0].out_channels == 256 // 3
    assert pruned.layer4[0].conv1.in_channels == 256 // 3
    assert pruned.fc.in_features == 512  # layer4's coupled channels were not in the plan
    assert measure.count_params(pruned) < measure.count_params(model)
    torch.testing.assert_close(logits(pruned, x), before, rtol=1e-9, atol=1e-9)


def test_depgraph_plan_replays_through_json_onto_fresh_model(timm_resnet18, tmp_path: Path) -> None:
    model, units = timm_resnet18
    plan = random_plan("timm:resnet18", units, seed=5, backend="depgraph", every=3)
    pruned = surgery.apply(copy.deepcopy(model), plan)
    save_plans([plan], tmp_path / "plan.json")
    (loaded,) = load_plans(tmp_path / "plan.json")
    assert loaded == plan
    fresh = surgery.apply(models.create("timm:resnet18"), loaded)
    assert shapes(fresh) == shapes(pruned)
    torch.save(pruned.state_dict(), tmp_path / "pruned.pt")
    fresh.load_state_dict(torch.load(tmp_path / "pruned.pt", weights_only=True))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), pruned.eval()(x), rtol=0, atol=0)


def test_depgraph_multi_round_replays_in_order(timm_resnet18) -> None:
    model, _ = timm_resnet18
    model = copy.deepcopy(model)
    first = PruningPlan("timm:resnet18", {"conv1": tuple(range(0, 64, 2)), "layer2.0.conv1": tuple(range(100))},
                        {"conv1": 64, "layer2.0.conv1": 128}, "depgraph")  # fmt: skip
    surgery.apply(model, first)
    widths = {u.name: u.channels for u in surgery.prunable_units(model)}
    assert widths["conv1"] == 32 and widths["layer2.0.conv1"] == 100 and widths["layer1.0.conv1"] == 64
    second = PruningPlan("timm:resnet18", {"conv1": (1, 5, 9), "layer1.0.conv1": (3,)},
                         {"conv1": 32, "layer1.0.conv1": 64}, "depgraph")  # fmt: skip
    surgery.apply(model, second)
    assert model.conv1.out_channels == model.layer1[1].conv2.out_channels == 3
    fresh = models.create("timm:resnet18")
    for plan in (first, second):
        surgery.apply(fresh, plan)
    assert shapes(fresh) == shapes(model)
    with pytest.raises(BenchError, match="replay earlier rounds"):
        surgery.apply(models.create("timm:resnet18"), second)


# --- plans: JSON, replay, state_dict --------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet20", "vgg16"])
def test_plan_json_round_trip_and_replay_on_fresh_model(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = randomize_bn(models.create(name)).eval()
    units = surgery.prunable_units(model)
    plan = random_plan(name, units, seed=3, backend="direct", every=2)
    plan = PruningPlan(plan.model, plan.keep, plan.channels, plan.backend, {"method": "test", "round": 1})
    pruned = surgery.apply(model, plan)

    path = tmp_path / "plans.json"
    save_plans([plan], path)
    data = json.loads(path.read_text())
    assert data[0]["model"] == name and data[0]["backend"] == "direct"
    (loaded,) = load_plans(path)
    assert loaded == plan
    assert loaded.kept_counts() == plan.kept_counts()
    assert loaded.pruned_channels() == plan.pruned_channels() > 0

    replayed = surgery.apply(models.create(name), loaded)
    assert shapes(replayed) == shapes(pruned)

    # the pruned weights load (weights_only) into a replayed fresh model and give identical outputs
    torch.save(pruned.state_dict(), tmp_path / "pruned.pt")
    state = torch.load(tmp_path / "pruned.pt", weights_only=True)
    target = surgery.apply(models.create(name), loaded)
    target.load_state_dict(state)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(target.eval()(x), pruned.eval()(x), rtol=0, atol=0)


def test_load_plans_accepts_a_single_plan_object(tmp_path: Path) -> None:
    plan = PruningPlan("resnet20", {"layer1.0.conv1": (0, 2)}, {"layer1.0.conv1": 16})
    path = tmp_path / "one.json"
    path.write_text(json.dumps(plan.to_dict()))
    assert load_plans(path) == [plan]


def test_multi_round_plans_replay_in_order(tmp_path: Path) -> None:
    torch.manual_seed(0)
    name = "resnet20"
    model = randomize_bn(models.create(name)).eval()
    first = random_plan(name, surgery.prunable_units(model), seed=1, backend="direct", every=2)
    surgery.apply(model, first)
    second = random_plan(name, surgery.prunable_units(model), seed=2, backend="direct")
    # the second round's channel counts are the widths the first round left
    for unit_name, kept in first.keep.items():
        assert second.channels[unit_name] == len(kept)
    surgery.apply(model, second)

    save_plans([first, second], tmp_path / "rounds.json")
    rounds = load_plans(tmp_path / "rounds.json")
    assert rounds == [first, second]
    fresh = models.create(name)
    for plan in rounds:
        surgery.apply(fresh, plan)
    assert shapes(fresh) == shapes(model)
    fresh.load_state_dict(torch.load(_save(model, tmp_path), weights_only=True))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), model(x), rtol=0, atol=0)

    # out of order: the second round does not fit the unpruned widths
    with pytest.raises(BenchError, match="replay earlier rounds"):
        surgery.apply(models.create(name), second)


def test_multi_round_dead_channel_equivalence() -> None:
    """Two rounds compose: kill round 1's and round 2's channels up front, prune both, same logits."""
    torch.manual_seed(0)
    name = "resnet20"
    model = randomize_bn(models.create(name)).eval()
    units = surgery.prunable_units(model)
    first = random_plan(name, units, seed=7, backend="direct")
    pruned = surgery.apply(copy.deepcopy(model), first)
    second = random_plan(name, surgery.prunable_units(pruned), seed=8, backend="direct")
    # express the union of both rounds as original indices, and kill those channels in the original
    combined = {
        n: tuple(kept[i] for i in second.keep[n]) if n in second.keep else kept for n, kept in first.keep.items()
    }
    assert any(n in second.keep for n in first.keep)
    union = PruningPlan(name, combined, {u.name: u.channels for u in units if u.name in combined})
    kill_removed_channels(model, units, union)
    x = torch.randn(2, 3, 32, 32)
    pruned = surgery.apply(surgery.apply(copy.deepcopy(model), first), second)
    torch.testing.assert_close(logits(pruned, x), logits(model, x), rtol=1e-9, atol=1e-9)


def _save(model: nn.Module, tmp_path: Path) -> Path:
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    return path


# --- invalid plans -------------------------------------------------------------------------------

UNIT = "layer1.0.conv1"


@pytest.mark.parametrize(
    "keep",
    [(), (0, 16), (-1, 2), (1, 1, 2)],
    ids=["zero-channels", "out-of-range", "negative", "duplicate"],
)
def test_invalid_kept_indices_raise(keep: tuple[int, ...]) -> None:
    with pytest.raises(BenchError):
        PruningPlan("resnet20", {UNIT: keep}, {UNIT: 16})


def test_plan_without_channel_count_raises() -> None:
    with pytest.raises(BenchError, match="no channel count"):
        PruningPlan("resnet20", {UNIT: (0,)}, {})


def test_malformed_plan_data_raises() -> None:
    with pytest.raises(BenchError, match="malformed"):
        PruningPlan.from_dict({"model": "resnet20", "keep": {UNIT: ["x"]}, "channels": {UNIT: 16}})
    with pytest.raises(BenchError, match="malformed"):
        PruningPlan.from_dict({"keep": {}})
    with pytest.raises(BenchError, match="zero channels"):
        PruningPlan.from_dict({"model": "resnet20", "keep": {UNIT: []}, "channels": {UNIT: 16}})


def test_unknown_unit_raises() -> None:
    plan = PruningPlan("resnet20", {"layer9.0.conv1": (0,)}, {"layer9.0.conv1": 16})
    with pytest.raises(BenchError, match="not a prunable unit"):
        surgery.apply(models.create("resnet20"), plan)
    # the stage-coupled conv2 is not a unit under the internal-channel rule
    plan = PruningPlan("resnet20", {"layer1.0.conv2": (0,)}, {"layer1.0.conv2": 16})
    with pytest.raises(BenchError, match="not a prunable unit"):
        surgery.apply(models.create("resnet20"), plan)


def test_wrong_channel_count_raises() -> None:
    plan = PruningPlan("resnet20", {UNIT: (0, 1)}, {UNIT: 32})
    with pytest.raises(BenchError, match="expects 32 channels"):
        surgery.apply(models.create("resnet20"), plan)


def test_failed_check_leaves_model_untouched() -> None:
    model = models.create("resnet20")
    before = shapes(model)
    plan = PruningPlan("resnet20", {UNIT: (0, 1), "layer1.1.conv1": (0,)}, {UNIT: 16, "layer1.1.conv1": 8})
    with pytest.raises(BenchError):
        surgery.apply(model, plan)
    assert shapes(model) == before  # validated before any slicing
