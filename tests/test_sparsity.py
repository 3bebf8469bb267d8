"""Sparsity curves on hand-made weights, where every fraction can be counted by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.curves import CURVES, format_curves, mean_by_method
from bench.sparsity import EPS_GRID, REPORT_EPS, fraction_below, sparsity_curves


def _model_with(conv_filters: list[float], linear: list[float]) -> nn.Module:
    """A conv whose filter c has every weight equal to conv_filters[c], and a linear of given weights."""
    conv = nn.Conv2d(1, len(conv_filters), 1, bias=False)
    fc = nn.Linear(len(linear), 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(conv_filters).view(-1, 1, 1, 1))
        fc.weight.copy_(torch.tensor([linear]))
    return nn.Sequential(conv, nn.BatchNorm2d(len(conv_filters)), nn.Flatten(), fc)


def test_fractions_count_weights_and_filters_below_each_eps():
    model = _model_with([0.0, 1e-5, 0.5, -2e-3], [1e-7, -0.3])
    curves = sparsity_curves(model, eps=(1e-6, 1e-4, 1e-2, 1.0))
    assert curves.weights == 6 and curves.filters == 4  # BN is not counted
    # |w| < eps over the 6 weights: {0, 1e-7} < 1e-6; + 1e-5 < 1e-4; + 2e-3 < 1e-2; + 0.3, 0.5 < 1
    assert curves.unstructured == pytest.approx((2 / 6, 3 / 6, 4 / 6, 6 / 6))
    # filter means |w|: 0, 1e-5, 0.5, 2e-3
    assert curves.structured == pytest.approx((1 / 4, 2 / 4, 3 / 4, 4 / 4))


def test_threshold_is_strict():
    curves = sparsity_curves(_model_with([1e-3], [1e-3]), eps=(1e-3,))
    assert curves.unstructured == (0.0,) and curves.structured == (0.0,)


def test_structured_uses_the_mean_not_the_max():
    """A filter with one large weight among zeros is structurally sparse only if its mean is small."""
    conv = nn.Conv2d(1, 1, 3, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 9e-3  # mean = 1e-3
    curves = sparsity_curves(conv, eps=(5e-4, 2e-3))
    assert curves.structured == (0.0, 1.0)
    assert curves.unstructured == pytest.approx((8 / 9, 8 / 9))


def test_curves_are_monotone_on_a_real_model_and_metrics_use_the_grid():
    from bench import models

    curves = sparsity_curves(models.create("resnet20"))
    assert list(curves.unstructured) == sorted(curves.unstructured)
    assert list(curves.structured) == sorted(curves.structured)
    assert curves.eps == EPS_GRID and curves.eps[-1] == pytest.approx(1.0)
    metrics = curves.metrics()
    assert len(metrics) == len(CURVES) * len(REPORT_EPS)
    assert metrics["sparsity/unstructured_eps_1e-03"] == fraction_below(EPS_GRID, curves.unstructured, 1e-3)
    assert all(0 <= v <= 1 for v in metrics.values())


def _conv_bn_with_batch_statistics(scales: list[float]) -> nn.Sequential:
    """conv (filter c scaled by scales[c]) + BN whose running variance is the exact variance of the
    conv's outputs on a fixed batch, as training leaves it (momentum None = cumulative average)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, len(scales), 3, bias=False), nn.BatchNorm2d(len(scales), momentum=None))
    with torch.no_grad():
        model[0].weight.mul_(torch.tensor(scales).view(-1, 1, 1, 1))
    model.train()(torch.randn(64, 3, 8, 8))
    return model.eval()


def test_folding_sees_through_a_filter_scaled_down_behind_its_batchnorm():
    """Weight decay can shrink a filter that a BN rescales back: raw curves call it sparse, folded ones do not."""
    eps = (1e-2,)
    plain = sparsity_curves(_conv_bn_with_batch_statistics([1.0, 1.0, 1.0, 1.0]), eps)
    shrunk = sparsity_curves(_conv_bn_with_batch_statistics([1e-3, 1.0, 1.0, 1.0]), eps)
    assert plain.structured == (0.0,) and shrunk.structured == (0.25,)  # raw: one filter of four below eps
    assert shrunk.structured_folded == plain.structured_folded == (0.0,)  # folded: the function is unchanged
    assert shrunk.structured_folded == pytest.approx(plain.structured_folded)


def test_folding_and_the_gamma_curve_see_a_channel_switched_off_by_its_gamma():
    """Slimming's sparsity lives in gamma: invisible to the raw filter curves, seen by the folded and gamma ones."""
    model = _conv_bn_with_batch_statistics([1.0, 1.0, 1.0, 1.0])
    with torch.no_grad():
        model[1].weight[2] = 0.0
    curves = sparsity_curves(model, (1e-2,))
    assert curves.structured == (0.0,)  # no filter is small
    assert curves.structured_folded == (0.25,) and curves.gamma == (0.25,) and curves.bn_channels == 4
    assert curves.unstructured_folded[0] >= 0.25  # every weight of the switched-off filter folds to 0


def test_folded_curves_are_relative_to_each_layer():
    """Two layers whose weights differ by 1000x in scale but not in shape of distribution count alike."""
    eps = tuple(float(e) for e in torch.logspace(-3, 1, 9))
    small = nn.Conv2d(4, 4, 3, bias=False)
    big = nn.Conv2d(4, 4, 3, bias=False)
    with torch.no_grad():
        big.weight.copy_(small.weight * 1000)
    alone = sparsity_curves(nn.Sequential(small), eps)
    both = sparsity_curves(nn.Sequential(small, big), eps)
    assert both.unstructured_folded == pytest.approx(alone.unstructured_folded)
    assert both.structured_folded == pytest.approx(alone.structured_folded)
    assert both.unstructured != pytest.approx(alone.unstructured)  # raw curves mix the two scales


def test_mean_by_method_averages_seeds_and_the_table_has_one_column_per_method():
    model = _conv_bn_with_batch_statistics([1.0, 1.0, 1.0, 1.0])
    first = sparsity_curves(model).as_dict()
    with torch.no_grad():
        model[1].weight[:2] = 0.0
    second = sparsity_curves(model).as_dict()
    means = mean_by_method({"ffr s0": first, "ffr s1": second, "dense s0": first})
    assert means["ffr"]["seeds"] == 2 and means["dense"]["seeds"] == 1
    index = EPS_GRID.index(min(EPS_GRID, key=lambda e: abs(e / 1e-2 - 1)))
    assert means["ffr"]["gamma"][index] == pytest.approx((0.0 + 0.5) / 2)
    text = format_curves(means)
    assert text.count("| eps | ffr (n=2) | dense (n=1) |") == len(CURVES)
    assert "BN-folded" in text
