"""Sparsity curves on hand-made weights, where every fraction can be counted by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

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
    assert len(metrics) == 2 * len(REPORT_EPS)
    assert metrics["sparsity/unstructured_eps_1e-03"] == fraction_below(EPS_GRID, curves.unstructured, 1e-3)
    assert all(0 <= v <= 1 for v in metrics.values())
