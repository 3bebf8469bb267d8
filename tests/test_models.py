"""Model registry and measurement: the reference table of methods/README.md, reproduced exactly.

Params are all trainable parameters (BN included); FLOPs are conv + linear MACs counted by fvcore,
cross-checked against ``torch.utils.flop_counter`` (which counts 2 per MAC).
"""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from bench import measure, models
from bench.errors import BenchError
from bench.models.cifar_resnet import CifarResNet

# name -> (params, MACs at 32 px / 10 classes): the exact integers behind methods/README.md's table.
REFERENCE = {
    "resnet20": (269_722, 40_551_040),
    "resnet56": (853_018, 125_485_696),
    "resnet110": (1_727_962, 252_887_680),
    "vgg16": (14_987_722, 313_463_808),
    "vgg19": (20_035_018, 398_136_320),
}
# name -> (published params in M, its precision; published MACs in M, its precision), methods/README.md.
PUBLISHED = {
    "resnet20": ("0.27", "40.55"),
    "resnet56": ("0.85", "125.49"),
    "resnet110": ("1.73", "252.89"),
    "vgg16": ("14.99", "313.46"),  # the table gives 14.98M-14.99M; 14,987,722 rounds to 14.99
    "vgg19": ("20.04", "398.1"),
}
OUR_MODELS = ["resnet20", "resnet32", "resnet56", "resnet110", "vgg16", "vgg19"]
RESNET_DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet56": 56, "resnet110": 110}


pytestmark = pytest.mark.usefixtures("one_thread")


@functools.cache
def _fvcore_macs(name: str, num_classes: int = 10, input_size: int = 32) -> int:
    torch.manual_seed(0)
    return measure.count_macs(models.create(name, num_classes, input_size), input_size)


def _rounded(value: int, digits_text: str) -> str:
    decimals = len(digits_text.split(".")[1])
    return f"{value / 1e6:.{decimals}f}"


def resnet_conv_macs(depth: int, input_size: int = 32) -> int:
    """Conv MACs of a CIFAR ResNet by hand: the stem plus 3 stages of (depth-2)/6 basic blocks."""
    blocks = (depth - 2) // 6
    side = input_size
    total = side * side * 3 * 3 * 3 * 16  # stem: 3 -> 16 channels, 3x3, stride 1
    in_planes = 16
    for stage, planes in enumerate((16, 32, 64)):
        if stage > 0:
            side //= 2  # the first conv of stages 2 and 3 has stride 2
        for _ in range(blocks):
            total += side * side * 9 * in_planes * planes  # conv1
            total += side * side * 9 * planes * planes  # conv2
            in_planes = planes
    return total


def vgg_conv_macs(cfg: tuple[int | str, ...], input_size: int = 32) -> int:
    side, in_ch, total = input_size, 3, 0
    for v in cfg:
        if v == "M":
            side //= 2
        else:
            total += side * side * 9 * in_ch * int(v)
            in_ch = int(v)
    return total


# --- the reference table ------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(REFERENCE))
def test_reference_params_and_macs_exact(name: str) -> None:
    params, macs = REFERENCE[name]
    model = models.create(name)
    assert measure.count_params(model) == params
    assert _fvcore_macs(name) == macs
    published_params, published_macs = PUBLISHED[name]
    assert _rounded(params, published_params) == published_params
    assert _rounded(macs, published_macs) == published_macs


def test_vgg16_params_within_published_range() -> None:
    params = measure.count_params(models.create("vgg16"))
    assert 14.98e6 <= params < 14.995e6  # methods/README.md: 14.98M-14.99M depending on rounding


def test_resnet56_conv_and_fc_parts_by_hand() -> None:
    """125,485,696 MACs = 125,485,056 in conv (stem + 3 stages, computed here) + 640 in fc."""
    from fvcore.nn import FlopCountAnalysis

    conv = resnet_conv_macs(56)
    assert conv == 125_485_056
    fc = 64 * 10
    assert conv + fc == REFERENCE["resnet56"][1] == _fvcore_macs("resnet56")
    model = models.create("resnet56").eval()
    with torch.no_grad():
        analysis = FlopCountAnalysis(model, torch.randn(1, 3, 32, 32))
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        by_op = analysis.by_operator()
    assert by_op["conv"] == conv
    assert sum(by_op.get(op, 0) for op in ("linear", "addmm")) == fc


@pytest.mark.parametrize("name", ["resnet20", "resnet32", "resnet56", "resnet110"])
def test_resnet_macs_match_hand_count(name: str) -> None:
    assert _fvcore_macs(name) == resnet_conv_macs(RESNET_DEPTHS[name]) + 64 * 10


@pytest.mark.parametrize(
    ("name", "cfg_name", "linear"), [("vgg16", "VGG16_CFG", 512 * 512 + 512 * 10), ("vgg19", "VGG19_CFG", 512 * 10)]
)
def test_vgg_macs_match_hand_count(name: str, cfg_name: str, linear: int) -> None:
    from bench.models import vgg

    assert _fvcore_macs(name) == vgg_conv_macs(getattr(vgg, cfg_name)) + linear


def test_resnet_params_by_hand() -> None:
    """Option-A shortcuts carry no parameters: params are convs + BN (2 per channel) + fc."""
    for depth in (20, 32, 56, 110):
        model = CifarResNet(depth)
        blocks = (depth - 2) // 6
        expected = 3 * 9 * 16 + 2 * 16  # stem conv + BN
        in_planes = 16
        for planes in (16, 32, 64):
            for _ in range(blocks):
                expected += 9 * in_planes * planes + 9 * planes * planes + 4 * planes
                in_planes = planes
        expected += 64 * 10 + 10
        assert measure.count_params(model) == expected
        assert not any(isinstance(m, nn.Conv2d) and m.bias is not None for m in model.modules())


def test_resnet32_exists() -> None:
    assert "resnet32" in models.list_models()
    params = measure.count_params(models.create("resnet32"))
    assert f"{params / 1e6:.2f}" == "0.46"


def test_list_models_names_every_registered_model_and_timm() -> None:
    listed = models.list_models()
    for name in OUR_MODELS:
        assert name in listed
        assert listed[name]
    assert any(name.startswith("timm:") for name in listed)


# --- the two counters agree -----------------------------------------------------------------------


@pytest.mark.parametrize("name", [*OUR_MODELS, "timm:resnet18"])
def test_fvcore_equals_torch_flop_counter(name: str) -> None:
    torch.manual_seed(0)
    model = models.create(name)
    assert measure.count_macs_torch(model) == _fvcore_macs(name)


def test_counters_restore_training_mode() -> None:
    model = models.create("resnet20").train()
    measure.count_macs(model)
    assert model.training
    measure.count_macs_torch(model)
    assert model.training
    model.eval()
    measure.count_macs(model)
    assert not model.training


def test_cost_bundles_params_and_macs() -> None:
    c = measure.cost(models.create("resnet20"))
    assert (c.params, c.macs, c.input_size) == (*REFERENCE["resnet20"], 32)
    assert "MAC" in c.convention


# --- classes and input sizes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "head", "features"),
    [("resnet20", "fc", 64), ("resnet56", "fc", 64), ("vgg16", "classifier.3", 512), ("vgg19", "classifier.0", 512),
     ("timm:resnet18", "fc", 512)],
)  # fmt: skip
def test_num_classes_changes_only_the_classifier(name: str, head: str, features: int) -> None:
    small, large = models.create(name, 10), models.create(name, 100)
    s_shapes = {k: v.shape for k, v in small.state_dict().items()}
    l_shapes = {k: v.shape for k, v in large.state_dict().items()}
    assert s_shapes.keys() == l_shapes.keys()
    differing = {k for k in s_shapes if s_shapes[k] != l_shapes[k]}
    assert differing == {f"{head}.weight", f"{head}.bias"}
    assert l_shapes[f"{head}.weight"] == (100, features)
    assert measure.count_params(large) - measure.count_params(small) == 90 * (features + 1)
    if name in REFERENCE:
        assert _fvcore_macs(name, 100) - _fvcore_macs(name) == 90 * features
    with torch.no_grad():
        assert large.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 100)


@pytest.mark.parametrize("name", ["resnet20", "resnet56", "vgg16"])
def test_64px_input_works_and_conv_macs_scale_4x(name: str) -> None:
    model = models.create(name, 10, 64).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)
    linear = {"resnet20": 640, "resnet56": 640, "vgg16": 512 * 512 + 5120}[name]
    conv32 = _fvcore_macs(name) - linear
    assert _fvcore_macs(name, 10, 64) == 4 * conv32 + linear
    if name.startswith("resnet"):
        assert conv32 == resnet_conv_macs(RESNET_DEPTHS[name])
        assert _fvcore_macs(name, 10, 64) - linear == resnet_conv_macs(RESNET_DEPTHS[name], 64)


# --- timm -------------------------------------------------------------------------------------


def test_timm_resnet18_stem_adapted_for_small_inputs() -> None:
    model = models.create("timm:resnet18", num_classes=10, input_size=32).eval()
    note = model.bench_stem_adaptation
    assert "conv1" in note and "maxpool" in note
    assert model.conv1.stride == (1, 1) and model.conv1.kernel_size == (3, 3)
    assert isinstance(model.maxpool, nn.Identity)
    assert model.bench_name == "timm:resnet18"
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # the adapted stem keeps full resolution: layer1 sees 32x32 maps
    seen = {}

    def record(_module: nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
        seen["shape"] = out.shape

    handle = model.layer1.register_forward_hook(record)
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    handle.remove()
    assert seen["shape"][-2:] == (32, 32)


def test_timm_large_input_keeps_imagenet_stem() -> None:
    model = models.create("timm:resnet18", num_classes=10, input_size=224)
    assert model.bench_stem_adaptation == "none"
    assert model.conv1.stride == (2, 2)
    assert isinstance(model.maxpool, nn.MaxPool2d)


def test_unknown_model_suggests_closest() -> None:
    with pytest.raises(BenchError) as info:
        models.create("resnet5")
    message = str(info.value)
    assert "Did you mean 'resnet56'" in message
    for name in OUR_MODELS:
        assert name in message


def test_unknown_timm_model_raises_bench_error() -> None:
    with pytest.raises(BenchError, match="timm model 'no_such_net_xyz'"):
        models.create("timm:no_such_net_xyz")


# --- latency ------------------------------------------------------------------------------------


def test_measure_latency_reports_median_iqr_and_protocol() -> None:
    model = models.create("resnet20").train()
    lat = measure.measure_latency(model, input_size=32, batch_size=2, device="cpu", warmup=2, repeats=7)
    assert lat.median_ms > 0
    assert lat.iqr_ms > 0
    p = lat.protocol
    assert (p.batch_size, p.input_size, p.device, p.warmup, p.repeats) == (2, 32, "cpu", 2, 7)
    assert p.threads == torch.get_num_threads() == 1  # the module runs on one thread (fixture above)
    assert p.timer == "perf_counter" and p.dtype == "float32"
    record = lat.as_dict()
    for key in ("median_ms", "iqr_ms", "batch_size", "threads", "warmup", "repeats", "device", "timer"):
        assert key in record
    assert model.training  # the caller's train/eval mode is left as it was


def test_side_by_side_latency_interleaves_the_models_in_rounds() -> None:
    built = {"a": models.create("resnet20").train(), "b": models.create("resnet20").eval()}
    calls: list[str] = []
    for name, model in built.items():
        model.register_forward_hook(lambda *_, name=name: calls.append(name))
    lats = measure.measure_latencies(built, batch_size=2, warmup=2, repeats=7, rounds=3)
    assert set(lats) == {"a", "b"}
    assert all((lat.protocol.repeats, lat.protocol.rounds, lat.protocol.warmup) == (7, 3, 2) for lat in lats.values())
    # warm-up of each, then per round per model: one untimed forward after the switch and 3, 2, 2 timed ones
    rounds = [["a"] * 4 + ["b"] * 4, ["a"] * 3 + ["b"] * 3, ["a"] * 3 + ["b"] * 3]
    assert calls == ["a", "a", "b", "b"] + [c for r in rounds for c in r]
    assert built["a"].training and not built["b"].training  # each caller's mode is left as it was
    with pytest.raises(BenchError, match="rounds <= repeats"):
        measure.measure_latencies(built, repeats=2, rounds=3)


@pytest.mark.parametrize("kwargs", [{"repeats": 0}, {"warmup": -1}, {"batch_size": 0}])
def test_measure_latency_rejects_empty_protocol(kwargs: dict) -> None:
    with pytest.raises(BenchError):
        measure.measure_latency(models.create("resnet20"), **kwargs)


@pytest.mark.gpu
def test_measure_latency_on_cuda_uses_cuda_events() -> None:
    model = models.create("resnet20")
    lat = measure.measure_latency(model, batch_size=8, device="cuda", warmup=3, repeats=10)
    assert lat.median_ms > 0 and lat.iqr_ms >= 0
    assert lat.protocol.timer == "cuda-events" and lat.protocol.device.startswith("cuda")
    assert measure.count_macs(model) == REFERENCE["resnet20"][1]  # the counter follows the model's device


@pytest.mark.parametrize(("typo", "meant"), [("resnet21", "resnet20"), ("resnet57", "resnet56"), ("vgg61", "vgg16")])
def test_a_one_character_typo_suggests_the_name_one_edit_away(typo: str, meant: str) -> None:
    """difflib scores resnet21 alike against resnet20 and resnet32; the edit distance breaks the tie."""
    with pytest.raises(BenchError, match=f"Did you mean '{meant}'"):
        models.create(typo)
