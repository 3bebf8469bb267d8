"""ffr: the feature-flow regularizer against the formulas of methods/README.md on hand-made features, its
feature capture inside the loss's own forward pass, and its effect in a short real training."""

from __future__ import annotations

import copy
import math
from itertools import pairwise

import optuna
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench import models, registry, surgery
from bench.api import Context
from bench.config import Schedule
from bench.errors import BenchError
from bench.flow import FlowEngine
from bench.testing import synthetic_splits
from bench.training import EpochTrainer, FeatureCapture, Runtime, evaluate, make_optimizer, train_loader
from methods.ffr import FeatureFlow, FFRConfig, align_to, flow_curvature, flow_length, flow_terms
from methods.l1 import L1Norm

pytestmark = pytest.mark.usefixtures("one_thread")

NORMS = ("l2", "l2sq", "l1")


def direct_norm(v: torch.Tensor, norm: str) -> torch.Tensor:
    """The per-sample norm of methods/README.md written out, averaged over the batch."""
    flat = v.reshape(len(v), -1)
    n = flat.shape[1]
    per = {
        "l2": flat.pow(2).sum(1).sqrt() / math.sqrt(n),
        "l2sq": flat.pow(2).sum(1) / n,
        "l1": flat.abs().sum(1) / n,
    }[norm]
    return per.mean()


def trajectory(steps: list[torch.Tensor], start: torch.Tensor) -> list[torch.Tensor]:
    features = [start]
    for step in steps:
        features.append(features[-1] + step)
    return features


REFERENCE_FORMULAS = {"curvature": "second_difference", "norm": "l2"}  # what the formula helpers default to


def context(model: nn.Module, name: str) -> Context:
    return Context(name, surgery.prunable_units(model), torch.device("cpu"), 0, torch.Generator().manual_seed(0))


def captured(model: nn.Module, x: torch.Tensor, method: FeatureFlow) -> list[torch.Tensor]:
    capture = FeatureCapture(model, method.feature_modules(model))
    try:
        model(x)
        return capture.take()
    finally:
        capture.close()


# --- the formulas on hand-made tensors ------------------------------------------------------------


@pytest.mark.parametrize("norm", NORMS)
def test_length_and_second_difference_match_the_formula(norm: str) -> None:
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(3, 2, 4, 4, generator=g) for _ in range(4)]
    length = sum(direct_norm(xs[i + 1] - xs[i], norm) for i in range(3))
    curv = sum(direct_norm(xs[i + 1] - 2 * xs[i] + xs[i - 1], norm) for i in (1, 2))
    torch.testing.assert_close(flow_length(xs, "shortcut", norm), length)
    torch.testing.assert_close(flow_curvature(xs, "shortcut", "second_difference", norm), curv)


def test_angle_is_the_arccos_of_the_cosine_between_consecutive_segments() -> None:
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(5, 3, 2, 2, generator=g) for _ in range(4)]
    expected = 0.0
    for i in (1, 2):
        a, b = (xs[i + 1] - xs[i]).flatten(1), (xs[i] - xs[i - 1]).flatten(1)
        expected += torch.acos(F.cosine_similarity(a, b, dim=1)).mean()
    torch.testing.assert_close(flow_curvature(xs, "shortcut", "angle"), expected)
    # a right turn and a U-turn, per sample
    e1, e2 = torch.tensor([1.0, 0, 0, 0]).view(1, 4, 1, 1), torch.tensor([0, 1.0, 0, 0]).view(1, 4, 1, 1)
    torch.testing.assert_close(flow_curvature([0 * e1, e1, e1 + e2], curvature="angle"), torch.tensor(math.pi / 2))
    torch.testing.assert_close(flow_curvature([0 * e1, e1, 0 * e1], curvature="angle"), torch.tensor(math.pi))


@pytest.mark.parametrize("norm", NORMS)
def test_a_straight_trajectory_has_zero_curvature(norm: str) -> None:
    g = torch.Generator().manual_seed(2)
    start, d = torch.randn(4, 3, 5, 5, generator=g), torch.randn(4, 3, 5, 5, generator=g)
    xs = [start + i * d for i in range(6)]
    assert flow_length(xs, norm=norm) > 0
    assert flow_curvature(xs, curvature="second_difference", norm=norm).item() == pytest.approx(0, abs=1e-5)
    assert flow_curvature(xs, curvature="angle", norm=norm).item() == pytest.approx(0, abs=1e-5)
    # equal steps of different lengths along one direction do not turn either
    scaled = trajectory([d, 2 * d, 0.5 * d], start)
    assert flow_curvature(scaled, curvature="angle").item() == pytest.approx(0, abs=1e-5)


@pytest.mark.parametrize(("norm", "power"), [("l2", 1), ("l1", 1), ("l2sq", 2)])
def test_scaling_the_steps_by_k_scales_the_length_by_k_or_k_squared(norm: str, power: int) -> None:
    g = torch.Generator().manual_seed(3)
    start = torch.randn(2, 4, 3, 3, generator=g)
    steps = [torch.randn(2, 4, 3, 3, generator=g) for _ in range(3)]
    base = flow_length(trajectory(steps, start), norm=norm)
    for k in (0.5, 3.0):
        scaled = flow_length(trajectory([k * s for s in steps], start), norm=norm)
        torch.testing.assert_close(scaled, base * k**power)


def test_shortcut_alignment_is_subsample_and_zero_padded_channels() -> None:
    x = torch.arange(32.0).view(1, 2, 4, 4)
    expected = torch.zeros(1, 4, 2, 2)
    expected[0, 1] = torch.tensor([[0.0, 2.0], [8.0, 10.0]])
    expected[0, 2] = torch.tensor([[16.0, 18.0], [24.0, 26.0]])
    assert torch.equal(align_to(x, torch.Size([4, 2, 2])), expected)
    assert torch.equal(align_to(x.contiguous(memory_format=torch.channels_last), torch.Size([4, 2, 2])), expected)
    nxt = torch.ones(1, 4, 2, 2)
    for norm in NORMS:
        torch.testing.assert_close(flow_length([x, nxt], norm=norm), direct_norm(nxt - expected, norm))
    # P(P(x_{l-1})) in the second difference
    mid, last = torch.ones(1, 2, 4, 4), torch.full((1, 4, 2, 2), 3.0)
    twice = align_to(align_to(x, mid.shape[1:]), last.shape[1:])
    torch.testing.assert_close(
        flow_curvature([x, mid, last]), direct_norm(last - 2 * align_to(mid, last.shape[1:]) + twice, "l2")
    )
    assert align_to(torch.ones(1, 1, 7, 7), torch.Size([1, 4, 4])).shape == (1, 1, 4, 4)  # stride-2 conv, pad 1


@pytest.mark.parametrize(("shape", "message"), [((1, 4, 4), "only widens"), ((2, 3, 3), "4-pixel feature map to 3")])
def test_impossible_alignments_are_bench_errors(shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(BenchError, match=message):
        align_to(torch.ones(1, 2, 4, 4), torch.Size(shape))


def test_stage_alignment_ignores_pairs_across_shape_changes() -> None:
    g = torch.Generator().manual_seed(4)
    a, b, c = (torch.randn(2, 2, 4, 4, generator=g) for _ in range(3))
    d, e = (torch.randn(2, 4, 2, 2, generator=g) for _ in range(2))
    xs = [a, b, c, d, e]
    length = direct_norm(b - a, "l2") + direct_norm(c - b, "l2") + direct_norm(e - d, "l2")
    torch.testing.assert_close(flow_length(xs, "stage"), length)
    torch.testing.assert_close(flow_curvature(xs, "stage"), direct_norm(c - 2 * b + a, "l2"))
    assert flow_length(xs, "shortcut") > length  # the shortcut alignment also counts c -> d


def test_l2_normalisation_weighs_maps_of_different_shapes_alike() -> None:
    for norm in NORMS:
        wide = flow_length([torch.zeros(2, 16, 32, 32), torch.full((2, 16, 32, 32), 0.5)], norm=norm)
        deep = flow_length([torch.zeros(2, 64, 8, 8), torch.full((2, 64, 8, 8), 0.5)], norm=norm)
        torch.testing.assert_close(wide, deep)
        torch.testing.assert_close(wide, torch.tensor({"l2": 0.5, "l2sq": 0.25, "l1": 0.5}[norm]))


def test_the_term_is_float32_under_bf16_autocast() -> None:
    g = torch.Generator().manual_seed(5)
    xs = [torch.randn(2, 2, 4, 4, generator=g).bfloat16().requires_grad_() for _ in range(3)]
    method = FeatureFlow(FFRConfig(lambda_grad=1.0, lambda_curv=1.0, **REFERENCE_FORMULAS))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        term = method.regularization(nn.Identity(), xs, None)
    assert term.dtype == torch.float32
    expected = flow_length([x.float() for x in xs]) + flow_curvature([x.float() for x in xs])
    torch.testing.assert_close(term, expected)


def test_lambdas_weigh_the_term_and_zero_lambdas_give_zero() -> None:
    g = torch.Generator().manual_seed(6)
    xs = [torch.randn(2, 3, 4, 4, generator=g).requires_grad_() for _ in range(4)]
    method = FeatureFlow(FFRConfig(lambda_grad=0.3, lambda_curv=0.2, **REFERENCE_FORMULAS))
    term = method.regularization(nn.Identity(), xs, None)
    torch.testing.assert_close(term, 0.3 * flow_length(xs) + 0.2 * flow_curvature(xs))
    term.backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in xs)
    zero = FeatureFlow(FFRConfig(lambda_grad=0.0, lambda_curv=0.0)).regularization(nn.Identity(), xs, None)
    assert zero.item() == 0.0


def reference_terms(xs: list[torch.Tensor], align: str, norm: str) -> tuple[torch.Tensor, torch.Tensor]:
    """G and the second-difference C by plain autograd through the formulas of methods/README.md."""
    ds = [None if align == "stage" and a.shape != b.shape else b - align_to(a, b.shape[1:]) for a, b in pairwise(xs)]
    length = sum(direct_norm(d, norm) for d in ds if d is not None)
    curv = sum(
        direct_norm(d - align_to(prev, d.shape[1:]), norm)
        for prev, d in pairwise(ds)
        if prev is not None and d is not None
    )
    return length, curv


def shape_changing_features(seed: int, dtype=torch.float64, channels_last: bool = False) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(2, 4, 4), (2, 4, 4), (2, 4, 4), (4, 2, 2), (4, 2, 2), (6, 1, 1)]
    xs = [torch.randn(3, *shape, generator=g, dtype=dtype) for shape in shapes]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return [x.contiguous(memory_format=fmt).requires_grad_() for x in xs]


@pytest.mark.parametrize("align", ["shortcut", "stage"])
@pytest.mark.parametrize("norm", NORMS)
def test_the_hand_written_backward_matches_autograd_through_the_formulas(align: str, norm: str) -> None:
    xs = shape_changing_features(7)
    copies = [x.detach().clone().requires_grad_() for x in xs]
    length, curv = flow_terms(xs, align, "second_difference", norm)
    (0.7 * length + 0.3 * curv).backward()
    ref_length, ref_curv = reference_terms(copies, align, norm)
    (0.7 * ref_length + 0.3 * ref_curv).backward()
    torch.testing.assert_close(length, ref_length)
    torch.testing.assert_close(curv, ref_curv)
    for x, ref in zip(xs, copies, strict=True):
        torch.testing.assert_close(x.grad, ref.grad)


def test_the_backward_keeps_channels_last_features_right() -> None:
    xs = shape_changing_features(8, torch.float32, channels_last=True)
    copies = [x.detach().contiguous().requires_grad_() for x in xs]
    sum(flow_terms(xs, "shortcut", "second_difference", "l2")).backward()
    sum(reference_terms(copies, "shortcut", "l2")).backward()
    for x, ref in zip(xs, copies, strict=True):
        torch.testing.assert_close(x.grad, ref.grad)


def test_the_workspace_reuses_buffers_and_never_mixes_two_pending_graphs() -> None:
    engine = FlowEngine("eager")
    workspace = engine.workspace
    first, second = shape_changing_features(9), shape_changing_features(10)
    expected = []
    for xs in (first, second):
        copies = [x.detach().clone().requires_grad_() for x in xs]
        sum(reference_terms(copies, "shortcut", "l2")).backward()
        expected.append([c.grad for c in copies])
    a = sum(flow_terms(first, "shortcut", "second_difference", "l2", engine=engine))
    buffers = {key: b.data_ptr() for key, b in workspace.buffers.items()}
    assert buffers
    b = sum(flow_terms(second, "shortcut", "second_difference", "l2", engine=engine))  # first still pending
    b.backward()
    a.backward()
    for xs, grads in zip((first, second), expected, strict=True):
        for x, grad in zip(xs, grads, strict=True):
            torch.testing.assert_close(x.grad, grad)
    again = sum(flow_terms(second, "shortcut", "second_difference", "l2", engine=engine))
    assert {key: b.data_ptr() for key, b in workspace.buffers.items()} == buffers  # reused after backward
    del again  # a graph dropped without backward frees the claim too
    sum(flow_terms(second, "shortcut", "second_difference", "l2", engine=engine)).backward()
    assert {key: b.data_ptr() for key, b in workspace.buffers.items()} == buffers
    for x, grad in zip(first, expected[0], strict=True):  # gradients handed out never alias reused buffers
        torch.testing.assert_close(x.grad, grad)


def test_a_second_backward_through_the_same_graph_is_refused() -> None:
    term = sum(flow_terms(shape_changing_features(11), "shortcut", "second_difference", "l2"))
    term.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="runs once per forward"):
        term.backward()


@pytest.mark.parametrize(
    ("align", "norm", "channels_last"), [("shortcut", "l2", True), ("stage", "l1", False), ("shortcut", "l2sq", False)]
)
def test_the_compiled_kernels_match_autograd_through_the_formulas(align: str, norm: str, channels_last: bool) -> None:
    xs = shape_changing_features(12, torch.float32, channels_last)
    copies = [x.detach().clone().requires_grad_() for x in xs]
    engine = FlowEngine("compiled")
    length, curv = flow_terms(xs, align, "second_difference", norm, engine=engine)
    assert engine.status == "compiled"
    (0.7 * length + 0.3 * curv).backward()
    ref_length, ref_curv = reference_terms(copies, align, norm)
    (0.7 * ref_length + 0.3 * ref_curv).backward()
    torch.testing.assert_close(length, ref_length)
    torch.testing.assert_close(curv, ref_curv)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for x, ref in zip(xs, copies, strict=True):
        torch.testing.assert_close(x.grad, ref.grad)
        assert x.grad is None or x.grad.is_contiguous(memory_format=fmt)  # no layout change for autograd to pay


def test_auto_runs_eager_then_compiled_and_other_shapes_stay_eager() -> None:
    method = FeatureFlow(FFRConfig(lambda_grad=0.5, lambda_curv=0.5, **REFERENCE_FORMULAS))
    engine = method.engine
    engine.compile_after = 2
    kinds = []
    for step in range(4):
        xs = shape_changing_features(20 + step, torch.float32)
        if step == 3:  # a short last batch: other shapes than the compiled ones
            xs = [x.detach()[:2].requires_grad_() for x in xs]
        copies = [x.detach().clone().requires_grad_() for x in xs]
        method.regularization(nn.Identity(), xs, None).backward()
        kinds.append(engine.status if engine._compiled is None or engine._compiled.signature[0][0][0] == xs[0].shape
                     else "eager")  # fmt: skip
        sum(0.5 * t for t in reference_terms(copies, "shortcut", "l2")).backward()
        for x, ref in zip(xs, copies, strict=True):
            torch.testing.assert_close(x.grad, ref.grad)
    assert kinds == ["eager", "eager", "compiled", "eager"]


def test_a_failing_compile_leaves_the_engine_eager_with_the_reason(capsys) -> None:
    from torch._inductor import config as inductor_config

    g = torch.Generator().manual_seed(13)
    xs = [torch.randn(3, 5, 3, 3, generator=g).requires_grad_() for _ in range(4)]
    copies = [x.detach().clone().requires_grad_() for x in xs]
    engine = FlowEngine("compiled")
    # inductor's own patch (monkeypatch's undo deletes config entries); no cache, which needs no compiler
    with inductor_config.patch({"cpp.cxx": ("/nonexistent/c++",), "fx_graph_cache": False}):
        length, curv = flow_terms(xs, "shortcut", "second_difference", "l2", engine=engine)
    assert engine.status.startswith("eager (compile failed: ") and "C++ compiler" in engine.status
    assert "ffr kernel eager (compile failed" in capsys.readouterr().err
    (length + curv).backward()
    sum(reference_terms(copies, "shortcut", "l2")).backward()
    for x, ref in zip(xs, copies, strict=True):
        torch.testing.assert_close(x.grad, ref.grad)
    flow_terms(xs, "shortcut", "second_difference", "l2", engine=engine)
    assert engine._compiled is None  # no second attempt


# --- on real models ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "first_conv", "count"),
    [("resnet20", "conv1", 10), ("vgg16", "features.0", 13), ("timm:resnet18", "conv1", 9)],
)
def test_regularization_on_real_models_reaches_the_first_conv(name: str, first_conv: str, count: int) -> None:
    torch.manual_seed(0)
    model = models.create(name).train()
    method = FeatureFlow()
    names = method.feature_modules(model)
    assert len(names) == count
    if name == "vgg16":  # each conv's output after BN and ReLU
        assert all(isinstance(model.get_submodule(n), nn.ReLU) for n in names)
        sequence = list(model.features)
        assert all(isinstance(sequence[int(n.split(".")[1]) - 1], nn.BatchNorm2d) for n in names)
    elif name == "timm:resnet18":  # stem after its ReLU (max-pool removed), then the 8 residual blocks
        assert names == ["act1", *[f"layer{s}.{b}" for s in range(1, 5) for b in range(2)]]
    else:
        assert names[0] == "relu" and isinstance(model.get_submodule("relu"), nn.ReLU)
    features = captured(model, torch.randn(2, 3, 32, 32), method)
    assert len(features) == count
    term = method.regularization(model, features, context(model, name))
    assert term.dim() == 0 and torch.isfinite(term) and term > 0
    term.backward()
    assert model.get_submodule(first_conv).weight.grad.abs().sum() > 0


@pytest.mark.parametrize(("name", "count"), [("resnet20", 19), ("timm:resnet18", 17), ("vgg16", 13)])
def test_layer_features_put_each_blocks_internal_channel_on_the_trajectory(name: str, count: int) -> None:
    torch.manual_seed(0)
    model = models.create(name).train()
    method = FeatureFlow(FFRConfig(features="layers"))
    names = method.feature_modules(model)
    assert len(names) == count and names[:1] == FeatureFlow().feature_modules(model)[:1]
    if name == "resnet20":  # stem, then (internal conv1-BN-ReLU, block output) per block
        assert names[1:3] == ["layer1.0.relu1", "layer1.0"] and names[-2:] == ["layer3.2.relu1", "layer3.2"]
    elif name == "timm:resnet18":
        assert names[1:3] == ["layer1.0.act1", "layer1.0"]
    features = captured(model, torch.randn(2, 3, 32, 32), method)
    if name == "resnet20":  # the internal feature is relu(bn1(conv1(x))) of its block, in the loss's pass
        block = model.layer1[0]
        assert torch.equal(features[1], torch.relu(block.bn1(block.conv1(features[0]))))
    term = method.regularization(model, features, context(model, name))
    assert term.dim() == 0 and torch.isfinite(term) and term > 0


def test_an_unknown_feature_kind_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="features must be one of blocks, layers"):
        FFRConfig(features="convs")


def test_models_without_a_known_feature_flow_are_bench_errors() -> None:
    with pytest.raises(BenchError, match=r"ffr cannot find the feature flow .* timm ResNets"):
        FeatureFlow().feature_modules(nn.Sequential(nn.Conv2d(3, 4, 3)))


def test_a_timm_resnet_that_keeps_its_max_pool_starts_the_flow_after_it() -> None:
    model = models.create("timm:resnet50", input_size=224)  # no stem adaptation above 64 px
    names = FeatureFlow().feature_modules(model)
    assert names == ["maxpool", *[f"layer{s}.{b}" for s, n in enumerate((3, 4, 6, 3), 1) for b in range(n)]]


def test_features_come_from_the_losss_own_forward_pass_and_evaluation_keeps_none() -> None:
    torch.manual_seed(0)
    data = synthetic_splits(n_train=8, n_eval=8)
    model = models.create("resnet20").train()
    runtime = Runtime(torch.device("cpu"), progress=False, epoch_lines=False)
    schedule = Schedule(epochs=1, batch_size=8, lr=0.01)
    seen: list[list[torch.Tensor]] = []

    class Spy(FeatureFlow):
        def regularization(self, model, features, ctx):
            seen.append(features)
            return super().regularization(model, features, ctx)

    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    trainer = EpochTrainer(
        model, train_loader(data, schedule, runtime, 0), make_optimizer(model, schedule), schedule, runtime,
        Spy(), context(model, "resnet20"),
    )  # fmt: skip
    x, y = next(iter(trainer.loader))
    trainer.step(x, y)
    assert len(calls) == 1  # one forward for both the loss and the features
    assert len(seen) == 1 and len(seen[0]) == 10 and all(f.requires_grad for f in seen[0])
    evaluate(model, trainer.loader, runtime)  # hooks stay attached during evaluation
    assert trainer.capture.features == []
    trainer.close()


def test_a_large_lambda_grad_shortens_the_flow_in_a_short_training() -> None:
    torch.manual_seed(0)
    base = models.create("resnet20")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g)
    lengths = {}
    for lam in (0.0, 10.0):
        model = copy.deepcopy(base).train()
        method = FeatureFlow(FFRConfig(lambda_grad=lam, lambda_curv=0.0))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        capture = FeatureCapture(model, method.feature_modules(model))
        for _ in range(6):
            loss = F.cross_entropy(model(x), y) + method.regularization(model, capture.take(), None)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model(x)
        lengths[lam] = flow_length(capture.take()).item()
        capture.close()
    assert lengths[10.0] < 0.6 * lengths[0.0], lengths  # measured: 2.7 vs 7.2


# --- importance, config, registry --------------------------------------------------------------


def test_importance_is_l1_layer_mean_or_bn_gamma() -> None:
    torch.manual_seed(0)
    model = models.create("resnet20")
    ctx = context(model, "resnet20")
    l1 = FeatureFlow().importance(model, ctx)
    for unit, score in L1Norm().importance(model, ctx).items():
        torch.testing.assert_close(l1[unit], score)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(-1, 1)
    bn = FeatureFlow(FFRConfig(importance="bn")).importance(model, ctx)
    for unit in ctx.units:
        gamma = model.get_submodule(unit.name.replace("conv1", "bn1")).weight.detach().abs()
        torch.testing.assert_close(bn[unit.name], gamma)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"lambda_grad": -1.0}, "lambda_grad must be a finite number >= 0"),
        ({"lambda_curv": float("nan")}, "lambda_curv must be a finite number >= 0"),
        ({"align": "none"}, "align must be one of shortcut, stage"),
        ({"curvature": "menger"}, "curvature must be one of second_difference, angle"),
        ({"norm": "linf"}, "norm must be one of l2, l2sq, l1"),
        ({"importance": "taylor"}, "importance must be one of l1, bn"),
    ],
)
def test_bad_config_values_are_bench_errors(params: dict, message: str) -> None:
    with pytest.raises(BenchError, match=f"bad parameters for method 'ffr': {message}"):
        registry.create_method("ffr", params)


def test_registered_and_search_space_builds_a_valid_config() -> None:
    cls = registry.get_method("ffr")
    assert cls is FeatureFlow and cls.start == "scratch" and cls.sparsity_training
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    params = FeatureFlow().search_space(study.ask())
    assert set(params) == {"lambda_grad", "lambda_curv", "features", "curvature", "norm"}
    assert cls.from_params(params).config == FFRConfig(**params)


def test_the_defaults_are_the_best_trial_of_the_committed_study() -> None:
    """methods/ffr.py's defaults name the study that set them, and equal its best trial (two digits)."""
    from pathlib import Path

    from reports.source import load_export

    study = "ffr-resnet20-cifar10"
    folder = Path(__file__).parents[1] / "results" / "studies" / study
    assert study in (FFRConfig.__doc__ or "") and (folder / "README.md").exists()
    runs = load_export(folder / "runs.csv")
    trials = runs[(runs["study"] == study) & runs["trial"].notna()]
    assert len(trials) >= 5
    best = trials.sort_values("best_val_acc", ascending=False).iloc[0]
    setting = lambda key: best[f"protocol.method_config.{key}"]  # noqa: E731
    defaults = FFRConfig()
    for key in ("lambda_grad", "lambda_curv"):
        assert getattr(defaults, key) == float(f"{float(setting(key)):.1e}")
    for key in ("features", "curvature", "norm", "align", "importance"):
        assert getattr(defaults, key) == setting(key)
