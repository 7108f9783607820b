# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""QC: the prediction features against direct computations, the regressor against an independent ridge solve."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from monai_imbalance.estimation import QualityRegressionEstimator, prediction_dice, segmentation_quality_features


def cube_logits(size=10, lo=2, hi=7, classes=3, value=4.0):
    z = torch.zeros(classes, size, size, size)
    z[1, lo:hi, lo:hi, lo:hi] = value
    return z


def test_features_of_a_cube():
    z = cube_logits()
    f = segmentation_quality_features(z)
    k = 5
    assert f.shape == (2, 5)
    p = torch.softmax(z.double(), 0)
    inside = z[1] > 0
    assert f[0, 0] == pytest.approx(math.log1p(k**3))
    assert f[0, 1] == pytest.approx(float(p[1][inside].mean()))
    ent = -(p * p.log()).sum(0) / math.log(3)
    # the feature comes from float32 probabilities (the logits' dtype), the reference is float64: they differ by 3e-7
    # relative here, and the last bits of float32 exp / log depend on the CPU
    assert f[0, 2] == pytest.approx(float(ent[inside].mean()), rel=1e-5)
    assert f[0, 3] == pytest.approx((k**3 - (k - 2) ** 3) / k**3)
    onehot = torch.stack([(z.argmax(0) == c).double() for c in range(3)])
    soft = (2 * (p * onehot).sum((1, 2, 3)) + 1e-5) / (p.sum((1, 2, 3)) + onehot.sum((1, 2, 3)) + 1e-5)
    assert f[0, 4] == pytest.approx(float(soft[1]))
    assert f[1, :4].tolist() == [0.0, 0.0, 1.0, 0.0]  # class 2 never predicted
    # touching the image border: outside the image counts as outside (every voxel of a 2-thick slab is boundary)
    slab = cube_logits(lo=0, hi=2)
    assert segmentation_quality_features(slab)[0, 3] == pytest.approx(1.0)
    square = torch.zeros(2, 8, 8)
    square[1, 1:6, 1:6] = 3.0
    assert segmentation_quality_features(square)[0, 3] == pytest.approx((25 - 9) / 25)


def phantoms(n, seed):
    g = torch.Generator().manual_seed(seed)
    out, labels = [], []
    for _ in range(n):
        lo, hi = int(torch.randint(1, 4, (1,), generator=g)), int(torch.randint(6, 9, (1,), generator=g))
        z = cube_logits(lo=lo, hi=hi, value=float(1 + 4 * torch.rand(1, generator=g))) + 0.5 * torch.randn(
            3, 10, 10, 10, generator=g
        )
        z[2, 4:6, 4:6, 4:6] += 8.0
        y = torch.zeros(10, 10, 10, dtype=torch.long)
        y[2:7, 2:7, 2:7] = 1
        y[4:6, 4:6, 4:7] = 2
        out.append(z)
        labels.append(y)
    return out, labels


def test_regressor_is_an_independent_ridge_solve():
    logits, labels = phantoms(8, 0)
    est = QualityRegressionEstimator(ridge=0.3).fit(logits, labels)
    x = torch.stack([segmentation_quality_features(z) for z in logits]).numpy()
    t = prediction_dice(logits, labels).numpy()
    test, _ = phantoms(3, 1)
    xt = torch.stack([segmentation_quality_features(z) for z in test]).numpy()
    for k in range(2):
        mu, sd = x[:, k].mean(0), x[:, k].std(0)
        sd = np.where(sd > 1e-12, sd, 1.0)
        a = np.c_[np.ones(len(x)), (x[:, k] - mu) / sd]
        coef = np.linalg.solve(a.T @ a + 0.3 * np.diag([0.0] + [1.0] * 5), a.T @ t[:, k])
        expected = np.clip(np.c_[np.ones(len(xt)), (xt[:, k] - mu) / sd] @ coef, 0, 1)
        assert np.allclose(est.estimate(test)["per_case"][:, k].numpy(), expected, atol=1e-8)


def test_absent_class_uses_the_pooled_regressor():
    logits, labels = phantoms(6, 2)
    for y in labels:
        y[y == 2] = 1
    with pytest.warns(UserWarning, match=r"\[2\] absent from the validation labels: the pooled regressor"):
        est = QualityRegressionEstimator().fit(logits, labels)
    assert est.params["per_class"][1] == est.params["pooled"]
    out = est.estimate(logits)
    assert bool(((out["per_case"] >= 0) & (out["per_case"] <= 1)).all())


def test_bad_inputs():
    with pytest.raises(ValueError, match="class_specific=True is not defined for 'qc'"):
        QualityRegressionEstimator(class_specific=True)
    with pytest.raises(ValueError, match="ridge must be"):
        QualityRegressionEstimator(ridge=-1)
    with pytest.raises(ValueError, match="unknown task"):
        QualityRegressionEstimator(task="detection")
    with pytest.raises(RuntimeError, match="not fitted"):
        QualityRegressionEstimator().estimate([torch.zeros(3, 4, 4)])
    with pytest.raises(ValueError, match="no foreground class"):
        QualityRegressionEstimator().fit([torch.randn(3, 4, 4)], [torch.zeros(4, 4)])
    with pytest.raises(ValueError, match="1 to 3 spatial dimensions"):
        segmentation_quality_features(torch.zeros(2, 3, 3, 3, 3))
