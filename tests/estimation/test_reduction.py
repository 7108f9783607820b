# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The bounded-memory validation set: what is exact (counts, kept voxels) and what the weighted sample approximates."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from monai_imbalance.estimation import SegmentationSetReducer, reduce_segmentation_set


def cases(n=3, size=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    grid = torch.stack(torch.meshgrid(*[torch.arange(size, dtype=torch.float32)] * 3, indexing="ij"))
    logits, labels = [], []
    for _ in range(n):
        sd = size / 4 - ((grid - size / 2 + torch.rand(3, 1, 1, 1, generator=g)) ** 2).sum(0).sqrt()
        noise = F.avg_pool3d(torch.randn(1, size, size, size, generator=g), 3, 1, 1)[0] * 3
        z1 = 12 * torch.tanh((sd + noise) / 4)
        logits.append(torch.stack([torch.zeros_like(z1), z1, z1 - 3 + noise]))
        labels.append((sd > 0).long() + (sd > size / 8).long())
    return logits, labels


def test_counts_and_kept_voxels_are_exact():
    logits, labels = cases()
    r = reduce_segmentation_set(logits, labels, keep_margin=10.0, background_samples=256)
    assert r.kept_fraction < 0.6  # the reduction is real
    for i, (z, y) in enumerate(zip(logits, labels, strict=True)):
        pred = z.argmax(0)
        expected = torch.bincount((pred * 3 + y).flatten(), minlength=9).reshape(3, 3)
        assert torch.equal(r.confusion[i], expected)
        m = r.case == i
        assert float(r.weight[m].sum()) == pytest.approx(y.numel())
        fg = (pred != 0) | (y != 0)
        assert int(((r.pred[m] != 0) | (r.label[m] != 0)).sum()) == int(fg.sum())  # every foreground voxel kept
        top2 = z.reshape(3, -1).topk(2, 0).values
        margin = top2[0] - top2[1]
        dropped = ~fg.flatten() & (margin >= 10.0)
        assert int(r.n_dropped[i]) == int(dropped.sum())
        assert float(r.min_dropped_margin[i]) == pytest.approx(float(margin[dropped].min()))
        assert int((r.weight[m] > 1).sum()) == min(256, int(dropped.sum()))
    assert r.logits.dtype == torch.float32 and r.logits.shape == (3, r.pred.numel())


def test_weighted_sample_approximates_sums_over_dropped_voxels():
    logits, labels = cases(seed=1)
    r = reduce_segmentation_set(logits, labels, keep_margin=8.0, background_samples=512)
    z = torch.cat([x.reshape(3, -1) for x in logits], 1).double()
    for t in (1.0, 3.0):
        full = (1 - torch.softmax(z / t, 0).max(0).values).sum()
        approx = (r.weight * (1 - torch.softmax(r.logits.double() / t, 0).max(0).values)).sum()
        assert float(approx) == pytest.approx(float(full), rel=2e-3)


def test_keep_everything_is_the_full_set():
    logits, labels = cases(n=2, seed=2)
    logits = [x.double() for x in logits]
    r = reduce_segmentation_set(logits, labels, keep_margin=None)
    assert r.kept_fraction == 1.0 and bool((r.weight == 1).all()) and int(r.n_dropped.sum()) == 0
    assert r.logits.dtype == torch.float64
    assert torch.equal(r.logits, torch.cat([x.reshape(3, -1) for x in logits], 1))
    assert torch.equal(r.label.long(), torch.cat([y.flatten() for y in labels]))
    assert r.pred.dtype == torch.uint8 and r.case.dtype == torch.int32 and r.weight.dtype == torch.float32


def test_incremental_reducer_equals_the_function():
    logits, labels = cases(n=2, seed=3)
    reducer = SegmentationSetReducer(keep_margin=6.0, background_samples=100)
    for z, y in zip(logits, labels, strict=True):
        reducer.add(z, y[None])
    a = reducer.finalize()
    b = reduce_segmentation_set(logits, labels, keep_margin=6.0, background_samples=100)
    for key in ("logits", "pred", "label", "case", "weight", "confusion", "n_dropped"):
        assert torch.equal(getattr(a, key), getattr(b, key)), key
    assert len(reducer) == 2


def test_bad_arguments():
    with pytest.raises(ValueError, match="keep_margin must be > 0"):
        SegmentationSetReducer(keep_margin=-1)
    with pytest.raises(ValueError, match="background_samples must be >= 1"):
        SegmentationSetReducer(background_samples=0)
    with pytest.raises(ValueError, match="background_samples must be an integer"):
        SegmentationSetReducer(background_samples=True)
    with pytest.raises(ValueError, match="no case was added"):
        SegmentationSetReducer().finalize()
    reducer = SegmentationSetReducer()
    reducer.add(torch.zeros(3, 4, 4), torch.zeros(4, 4))
    with pytest.raises(ValueError, match="C=2 channels, expected 3"):
        reducer.add(torch.zeros(2, 4, 4), torch.zeros(4, 4))
