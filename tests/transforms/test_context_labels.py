# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""CoLab transforms: distance mask, k-means / dilated-ring / human context labels, K-channel target, collapse."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd, SpatialCropd, SpatialPadd

from monai_imbalance.losses import compose_context_target, context_label_target
from monai_imbalance.transforms import (
    CollapseContextChannels,
    CollapseContextChannelsd,
    ContextDistanceMaskd,
    ContextTargetd,
    DilatedRingContextLabelsd,
    KMeansContextLabelsd,
    RemapContextLabelsd,
    context_distance_mask,
    dilated_ring_context_labels,
    kmeans_context_labels,
)

AFFINE = torch.diag(torch.tensor([2.0, 3.0, 1.0, 1.0], dtype=torch.float64))


def _point_label(shape=(41, 41), centre=(20, 12), value=1):
    label = np.zeros((1, *shape), dtype=np.float32)
    label[(0, *centre)] = value
    return label


def _grid_distance(shape, centre, spacing=(1.0, 1.0)):
    ii, jj = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    return np.hypot((ii - centre[0]) * spacing[0], (jj - centre[1]) * spacing[1])


@pytest.mark.parametrize("spacing", [None, (2.0, 0.5)])
def test_distance_mask_formula(spacing):
    label = _point_label()
    mask = context_distance_mask(label, tau_sub=5.0, tau_dev=2.0, spacing=spacing)
    d = _grid_distance((41, 41), (20, 12), spacing or (1.0, 1.0))
    expected = np.minimum(1.0, np.exp((5.0 - d) / 2.0))
    assert mask.shape == (1, 41, 41) and mask.dtype == np.float32
    np.testing.assert_allclose(mask[0], expected, rtol=1e-5, atol=1e-7)
    assert np.all(mask[0][d <= 5.0] == 1.0)  # exactly 1 within tau_sub
    assert mask[0][d >= 25].max() < 1e-4  # ~0 far away (exp(-10) at d = 25)


def test_distance_mask_in_mm_from_the_label_meta_data():
    """``spacing="pixdim"``: distances in mm are voxels times the label's own voxel size, at any resolution."""
    from monai.data import MetaTensor

    arr = _point_label()
    label = MetaTensor(torch.from_numpy(arr), affine=torch.diag(torch.tensor([2.0, 0.5, 1.0, 1.0])))
    mask = context_distance_mask(label, tau_sub=6.0, tau_dev=2.0, spacing="pixdim")
    d_mm = _grid_distance((41, 41), (20, 12), (2.0, 0.5))
    np.testing.assert_allclose(np.asarray(mask[0]), np.minimum(1.0, np.exp((6.0 - d_mm) / 2.0)), rtol=1e-5, atol=1e-7)
    assert isinstance(mask, MetaTensor) and torch.equal(mask.affine, label.affine)
    coarse = context_distance_mask(label, tau_sub=6.0, tau_dev=2.0)  # voxel units: another mask at this spacing
    assert not np.allclose(np.asarray(coarse), np.asarray(mask))
    with pytest.raises(ValueError, match="pixdim"):
        context_distance_mask(arr, spacing="pixdim")  # no meta data to read it from


def test_distance_mask_then_compose_far_background_is_context_0():
    label = torch.from_numpy(_point_label(value=2)).long()
    mask = torch.as_tensor(context_distance_mask(label.numpy(), tau_sub=3.0, tau_dev=1.0))
    q = torch.softmax(torch.randn(1, 3, 41, 41, dtype=torch.float64), 1)
    target = compose_context_target(q, label[None], 3, mask[None].double())
    d = torch.from_numpy(_grid_distance((41, 41), (20, 12)))
    far = d >= 20  # M <= exp(-17)
    torch.testing.assert_close(target[0, 0][far], torch.ones(int(far.sum()), dtype=torch.float64), atol=1e-7, rtol=0)
    near = (d <= 3) & (d > 0)
    torch.testing.assert_close(target[0, [0, 3, 4]][:, near], q[0][:, near])  # unrestricted soft context
    assert target[0, 2, 20, 12] == 1  # foreground one-hot on its class


def test_distance_mask_dict_is_cropped_with_the_label():
    label = MetaTensor(torch.from_numpy(_point_label()), affine=AFFINE)
    image = MetaTensor(torch.randn(1, 41, 41), affine=AFFINE)
    data = ContextDistanceMaskd(keys="label", mask_key="context_mask", tau_sub=4.0, tau_dev=3.0)(
        {"image": image, "label": label}
    )
    mask = data["context_mask"]
    assert isinstance(mask, MetaTensor) and torch.equal(mask.affine, AFFINE)
    crop = SpatialCropd(keys=["image", "label", "context_mask"], roi_start=(0, 20), roi_end=(20, 41))(data)
    # the patch holds no foreground, yet its mask keeps the distance to the foreground outside it
    assert crop["label"].sum() == 0
    np.testing.assert_allclose(crop["context_mask"].numpy(), mask.numpy()[:, :20, 20:])
    assert crop["context_mask"].max() > 0.05


def test_distance_mask_empty_foreground():
    label = np.zeros((1, 6, 6), dtype=np.float32)
    with pytest.warns(UserWarning, match="no foreground"):
        assert np.all(context_distance_mask(label) == 0)
    assert np.all(context_distance_mask(label, on_empty="one") == 1)
    with pytest.raises(ValueError, match="no foreground"):
        context_distance_mask(label, on_empty="raise")


def test_distance_mask_bad_input():
    label = _point_label()
    with pytest.raises(ValueError, match="tau_dev"):
        context_distance_mask(label, tau_dev=0)
    with pytest.raises(ValueError, match="spacing"):
        context_distance_mask(label, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"\(1, \*spatial\)"):
        context_distance_mask(np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="on_empty"):
        ContextDistanceMaskd(on_empty="nan")
    with pytest.raises(ValueError, match="exactly one"):
        ContextDistanceMaskd(keys=["label", "other"])


def _three_population_image(seed=0, levels=(0.0, 5.0, 10.0)):
    rng = np.random.default_rng(seed)
    shape = (30, 30)
    population = rng.integers(0, 3, size=shape)
    image = np.asarray(levels)[population] + 0.3 * rng.standard_normal(shape)
    label = np.zeros((1, *shape), dtype=np.float32)
    label[0, 10:14, 10:14] = 1
    image[10:14, 10:14] = 7.5  # foreground intensity must not matter
    return image[None].astype(np.float32), label, population


def test_kmeans_recovers_populations_ordered_by_intensity():
    image, label, population = _three_population_image()
    ctx = kmeans_context_labels(image, label, num_context=3)
    bg = label[0] == 0
    assert ctx.shape == label.shape and ctx.dtype == label.dtype
    np.testing.assert_array_equal(ctx[0][bg], population[bg])  # darkest -> 0, brightest -> 2
    assert np.all(ctx[0][~bg] == 0)
    # reversed intensities: the cluster numbers follow the intensity order, not the positions
    image_rev, _, _ = _three_population_image(levels=(10.0, 5.0, 0.0))
    ctx_rev = kmeans_context_labels(image_rev, label, num_context=3)
    np.testing.assert_array_equal(ctx_rev[0][bg], 2 - population[bg])


def test_kmeans_is_deterministic_and_a_lloyd_fixed_point():
    rng = np.random.default_rng(1)
    image = rng.gamma(2.0, 2.0, size=(2, 20, 20)).astype(np.float32)  # no clear clusters, 2 channels
    label = np.zeros((1, 20, 20), dtype=np.float32)
    label[0, :3, :3] = 2
    a = kmeans_context_labels(image, label, 4, seed=3)
    b = kmeans_context_labels(image, label, 4, seed=3)
    np.testing.assert_array_equal(a, b)
    bg = label[0] == 0
    x = image[:, bg].T.astype(np.float64)
    assign = a[0][bg].astype(int)
    centroids = np.stack([x[assign == j].mean(0) for j in range(4)])
    assert np.all(np.diff(centroids.mean(1)) > 0)  # numbered by mean intensity
    nearest = ((x[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(nearest, assign)  # converged: every voxel is nearest to its own cluster's mean
    # subsampled fits with different seeds still order clusters by intensity
    c = kmeans_context_labels(image, label, 4, seed=7, max_samples=200)
    cents = [x[c[0][bg].astype(int) == j].mean(0).mean() for j in range(4)]
    assert np.all(np.diff(cents) > 0)


def test_kmeans_dict_roi_and_trivial_cases():
    image, label, population = _three_population_image()
    roi = np.zeros_like(label)
    roi[0, :, :15] = 1
    data = KMeansContextLabelsd(keys="label", image_key="image", num_context=3, roi_key="roi")(
        {"image": torch.from_numpy(image), "label": MetaTensor(torch.from_numpy(label), affine=AFFINE), "roi": roi}
    )
    ctx = data["context_label"]
    assert isinstance(ctx, MetaTensor) and torch.equal(ctx.affine, AFFINE)
    assert torch.all(ctx[0, :, 15:] == 0)
    inside = (label[0] == 0) & (roi[0] > 0)
    np.testing.assert_array_equal(ctx[0].numpy()[inside], population[inside])
    assert np.all(kmeans_context_labels(image, label, 1) == 0)
    assert np.all(kmeans_context_labels(image, np.ones_like(label), 3) == 0)  # no background voxel
    with pytest.raises(ValueError, match="num_context=0"):
        kmeans_context_labels(image, label, 0)
    with pytest.raises(ValueError, match="image shape"):
        kmeans_context_labels(image[:, :5], label, 2)


@pytest.mark.parametrize("connectivity,metric", [(1, "taxicab"), (2, "chessboard")])
@pytest.mark.parametrize("ring_width", [1, 2])
def test_rings_at_the_right_distances(connectivity, metric, ring_width):
    label = np.zeros((1, 25, 25), dtype=np.float32)
    label[0, 11:13, 10:12] = 1
    label[0, 12, 12] = 2
    t = 4
    ctx = dilated_ring_context_labels(label, t, ring_width=ring_width, connectivity=connectivity)
    fg = np.argwhere(label[0] > 0)
    ii, jj = np.meshgrid(np.arange(25), np.arange(25), indexing="ij")
    di = np.abs(ii[..., None] - fg[:, 0])
    dj = np.abs(jj[..., None] - fg[:, 1])
    d = (di + dj if metric == "taxicab" else np.maximum(di, dj)).min(-1)  # distance to the foreground
    expected = np.where((d > 0) & (d <= (t - 1) * ring_width), np.ceil(d / ring_width), 0)
    np.testing.assert_array_equal(ctx[0], expected)
    assert set(np.unique(ctx)) == set(range(t))


def test_rings_dict_and_edge_cases():
    label = MetaTensor(torch.zeros(1, 9, 9, 9), affine=AFFINE)
    assert torch.all(DilatedRingContextLabelsd(num_context=3)({"label": label})["context_label"] == 0)  # empty fg
    label[0, 4, 4, 4] = 1
    out = DilatedRingContextLabelsd(keys="label", num_context=2, ring_width=1)({"label": label})["context_label"]
    assert isinstance(out, MetaTensor) and int(out.sum()) == 6  # the 6 face neighbours
    with pytest.raises(ValueError, match="ring_width"):
        DilatedRingContextLabelsd(ring_width=0)
    with pytest.raises(ValueError, match="connectivity"):
        dilated_ring_context_labels(label, 2, connectivity=4)
    with pytest.raises(ValueError, match="num_context=0"):
        DilatedRingContextLabelsd(num_context=0)


def test_remap_human_context():
    label = MetaTensor(torch.tensor([[[0, 1, 2, 3], [2, 1, 0, 1]]], dtype=torch.float32), affine=AFFINE)
    out = RemapContextLabelsd(keys="label", foreground={"2": 1}, context={1: 1}, num_context=2)({"label": label})
    assert torch.equal(out["label"].as_tensor(), torch.tensor([[[0, 0, 1, 0], [1, 0, 0, 0]]], dtype=torch.float32))
    assert torch.equal(
        out["context_label"].as_tensor(), torch.tensor([[[0, 1, 0, 0], [0, 1, 0, 1]]], dtype=torch.float32)
    )
    assert torch.equal(out["context_label"].affine, AFFINE)
    with pytest.raises(ValueError, match="both"):
        RemapContextLabelsd(foreground={1: 1}, context={1: 1})
    with pytest.raises(ValueError, match="out of range for num_context=2"):
        RemapContextLabelsd(foreground={2: 1}, context={1: 2}, num_context=2)
    with pytest.raises(ValueError, match=">= 1"):
        RemapContextLabelsd(foreground={2: 0})
    with pytest.raises(ValueError, match="at least one"):
        RemapContextLabelsd(foreground={})


def test_context_target_dict_matches_function():
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 3, (1, 5, 6), generator=g).float()
    ctx = torch.randint(0, 3, (1, 5, 6), generator=g).float()
    mask = torch.rand(1, 5, 6, generator=g)
    data = {"label": MetaTensor(label, affine=AFFINE), "context_label": ctx, "context_mask": mask}
    out = ContextTargetd(num_classes=3, num_context=3, mask_key="context_mask", target_key="target")(data)
    expected = context_label_target(ctx[None].long(), label[None].long(), 3, 3, mask[None])[0]
    assert out["target"].shape == (5, 5, 6) and isinstance(out["target"], MetaTensor)
    torch.testing.assert_close(out["target"].as_tensor(), expected)
    assert torch.equal(out["label"].as_tensor(), label)  # label kept with a target_key
    replaced = ContextTargetd(num_classes=3, num_context=3)(data)
    torch.testing.assert_close(replaced["label"].as_tensor(), context_label_target(ctx[None], label[None], 3, 3)[0])


def _collapse_reference(logits, c):
    """Paper rule written out: argmax over all K; only channels 1..C-1 are foreground."""
    idx = logits.argmax(0, keepdim=True)
    return torch.where((idx >= 1) & (idx < c), idx, torch.zeros_like(idx)).float()


@pytest.mark.parametrize("c,t", [(2, 2), (3, 4), (2, 1)])
def test_collapse_label_rule(c, t):
    k = c + t - 1
    logits = torch.randn(k, 6, 7, generator=torch.Generator().manual_seed(c * 10 + t))
    label = CollapseContextChannels(c, t)(logits)
    expected = _collapse_reference(logits, c)
    assert torch.equal(label, expected) and label.shape == (1, 6, 7)
    assert torch.equal(CollapseContextChannels(c)(logits), expected)  # t inferred from K
    dominated = logits.clone()
    dominated[[0, *range(c, k)]] += 50.0  # context logits dominate everywhere
    dominated[k - 1, 0, 0] = 100.0  # the last context channel (a foreground one when t = 1) wins outright
    out = CollapseContextChannels(c, t)(dominated)
    if t > 1:
        assert torch.all(out == 0)  # context never leaks as foreground
    else:
        assert out[0, 0, 0] == c - 1 and torch.all(out.flatten()[1:] == 0)
    assert set(torch.unique(CollapseContextChannels(c, t)(logits)).tolist()) <= set(range(c))
    for x in (logits, torch.softmax(logits, 0), dominated):  # "max": C channels whose argmax is the label rule
        folded = CollapseContextChannels(c, t, output="max")(x)
        assert folded.shape == (c, 6, 7)
        assert torch.equal(folded.argmax(0, keepdim=True).float(), CollapseContextChannels(c, t)(x))
        torch.testing.assert_close(folded[0], x[[0, *range(c, k)]].amax(0))


def test_collapse_probs_and_logits():
    c, t = 3, 3
    logits = torch.randn(5, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    p = torch.softmax(logits, 0)
    probs = CollapseContextChannels(c, t, output="probs")(logits)
    torch.testing.assert_close(probs[0], p[0] + p[3] + p[4])
    torch.testing.assert_close(probs[1:], p[1:3])
    torch.testing.assert_close(probs.sum(0), torch.ones(4, 4, dtype=torch.float64))
    torch.testing.assert_close(CollapseContextChannels(c, t, output="probs", softmax=False)(p), probs)
    collapsed_logits = CollapseContextChannels(c, t, output="logits")(logits)
    assert collapsed_logits.shape == (3, 4, 4)
    torch.testing.assert_close(torch.softmax(collapsed_logits, 0), probs)
    np_out = CollapseContextChannels(c, t)(logits.numpy())
    assert isinstance(np_out, np.ndarray) and np_out.shape == (1, 4, 4)


def test_collapse_after_invertd_keeps_meta():
    c, t = 2, 3
    image = MetaTensor(torch.randn(1, 6, 5), affine=AFFINE)
    pre = Compose([SpatialPadd(keys="image", spatial_size=(8, 8))])
    data = pre({"image": image})
    logits = torch.randn(c + t - 1, 8, 8)
    logits[0] -= 5
    data["pred"] = MetaTensor(logits, meta=data["image"].meta, applied_operations=data["image"].applied_operations)
    post = Compose(
        [
            Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False),
            CollapseContextChannelsd(keys="pred", num_classes=c, num_context=t),
        ]
    )
    out = post(data)["pred"]
    assert isinstance(out, MetaTensor) and out.shape == (1, 6, 5)
    assert torch.equal(out.affine, image.affine)
    expected = _collapse_reference(logits[:, 1:7, 1:6], c)  # SpatialPadd pads symmetrically (1, 1) and (1, 2)
    assert torch.equal(out.as_tensor(), expected)


def test_collapse_bad_input():
    with pytest.raises(ValueError, match=r"K = C \+ t - 1 = 4"):
        CollapseContextChannels(3, 2)(torch.randn(3, 4, 4))
    with pytest.raises(ValueError, match="K >= num_classes=3"):
        CollapseContextChannels(3)(torch.randn(2, 4, 4))
    with pytest.raises(ValueError, match="output"):
        CollapseContextChannels(3, 2, output="argmax")
    with pytest.raises(ValueError, match="num_context=0"):
        CollapseContextChannelsd(keys="pred", num_classes=3, num_context=0)


def test_context_target_one_hot_background_matches_kmeans_path():
    """K-means labels -> ContextTargetd -> argmax recovers [ctx_0, FG.., ctx_1..] channel of every voxel."""
    image, label, population = _three_population_image()
    data = KMeansContextLabelsd(num_context=3)({"image": image, "label": label})
    data = ContextTargetd(num_classes=2, num_context=3)(data)
    target = torch.as_tensor(data["label"])
    expected = np.where(label[0] > 0, 1, np.where(population > 0, population + 1, 0))
    np.testing.assert_array_equal(target.argmax(0).numpy(), expected)
    assert torch.all(F.one_hot(target.argmax(0), 4).movedim(-1, 0).float() == target)
