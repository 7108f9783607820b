# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Tests of `segmentation_case_metrics` against hand-computed and brute-force (scipy cdist) values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy.spatial.distance import cdist

from monai_imbalance.evaluation import METRIC_NAMES, segmentation_case_metrics

SPACING = (0.8, 1.3, 2.5)


def _two_class_case() -> tuple[np.ndarray, np.ndarray]:
    """8x8x8 label maps with known counts.

    class 1: pred [2:4,2:4,2:4] (8 voxels) inside label [2:4,2:4,2:5] (12): TP 8, FP 0, FN 4.
    class 2: pred [5:7,5:7,5:7] (8), label [5:7,5:7,6:8] (8), overlap [5:7,5:7,6:7] (4): TP 4, FP 4, FN 4.
    """
    pred = np.zeros((8, 8, 8), dtype=np.int64)
    label = np.zeros((8, 8, 8), dtype=np.int64)
    pred[2:4, 2:4, 2:4] = 1
    label[2:4, 2:4, 2:5] = 1
    pred[5:7, 5:7, 5:7] = 2
    label[5:7, 5:7, 6:8] = 2
    return pred, label


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face neighbour outside the mask (outside the image counts as outside)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = np.ones_like(mask)
    centre = tuple(slice(1, -1) for _ in range(mask.ndim))
    for axis in range(mask.ndim):
        for shift in (-1, 1):
            neighbour = list(centre)
            neighbour[axis] = slice(1 + shift, padded.shape[axis] - 1 + shift)
            interior &= padded[tuple(neighbour)]
    return mask & ~interior


def _brute_force_hd95(pred: np.ndarray, label: np.ndarray, spacing: tuple[float, ...]) -> float:
    """Symmetric HD95: max of the 95th percentiles of the surface-to-surface nearest distances (all pairs)."""
    a = np.argwhere(_surface(pred)) * np.asarray(spacing)
    b = np.argwhere(_surface(label)) * np.asarray(spacing)
    d = cdist(a, b)
    return float(max(np.percentile(d.min(axis=1), 95), np.percentile(d.min(axis=0), 95)))


def test_hand_computed_dice_sensitivity_precision_counts():
    pred, label = _two_class_case()
    out = segmentation_case_metrics(pred, label, num_classes=3)
    assert set(out) == {1, 2}
    assert out[1]["dice"] == pytest.approx(2 * 8 / (2 * 8 + 0 + 4))
    assert out[1]["sensitivity"] == pytest.approx(8 / 12)
    assert out[1]["precision"] == pytest.approx(1.0)
    assert (out[1]["n_label"], out[1]["n_pred"]) == (12, 8)
    assert out[2]["dice"] == pytest.approx(0.5)
    assert out[2]["sensitivity"] == pytest.approx(0.5)
    assert out[2]["precision"] == pytest.approx(0.5)
    assert (out[2]["n_label"], out[2]["n_pred"]) == (8, 8)
    assert isinstance(out[1]["n_label"], int)
    for values in out.values():
        assert set(values) == set(METRIC_NAMES) | {"n_label", "n_pred"}


def test_hand_computed_hd95_single_voxels_anisotropic():
    pred = np.zeros((6, 6, 6), dtype=np.int64)
    label = np.zeros((6, 6, 6), dtype=np.int64)
    pred[1, 1, 1] = 1
    label[1, 1, 4] = 1  # 3 voxels along the last axis
    assert segmentation_case_metrics(pred, label, 2)[1]["hd95"] == pytest.approx(3.0)
    assert segmentation_case_metrics(pred, label, 2, spacing=SPACING)[1]["hd95"] == pytest.approx(3 * 2.5)
    label[1, 1, 4], label[3, 1, 1] = 0, 1  # 2 voxels along the first axis
    assert segmentation_case_metrics(pred, label, 2, spacing=SPACING)[1]["hd95"] == pytest.approx(2 * 0.8)
    assert segmentation_case_metrics(pred, label, 2, spacing=2.0)[1]["hd95"] == pytest.approx(4.0)


def test_hand_computed_hd95_blocks():
    # label = pred + one extra slice along z: 8 of 12 label surface voxels at 0, 4 at one z-step; the 95th
    # percentile of [0]*8 + [d]*4 is d, pred -> label is all 0.
    pred, label = _two_class_case()
    out = segmentation_case_metrics(pred, label, 3, spacing=SPACING)
    assert out[1]["hd95"] == pytest.approx(2.5)
    assert segmentation_case_metrics(pred, label, 3)[1]["hd95"] == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_hd95_matches_brute_force_with_anisotropic_spacing(seed):
    rng = np.random.default_rng(seed)
    shape = (12, 10, 9)
    smooth = rng.random(shape)
    # blobs: threshold a box-filtered noise field so masks are irregular, multi-component and touch the border
    from scipy.ndimage import uniform_filter

    field = uniform_filter(smooth, size=3)
    pred = (field > np.quantile(field, 0.7)).astype(np.int64)
    label = (uniform_filter(smooth + 0.3 * rng.random(shape), size=3) > np.quantile(field, 0.72)).astype(np.int64)
    assert pred.any() and label.any()
    expected = _brute_force_hd95(pred.astype(bool), label.astype(bool), SPACING)
    got = segmentation_case_metrics(pred, label, 2, spacing=SPACING)[1]["hd95"]
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-5)
    expected_vox = _brute_force_hd95(pred.astype(bool), label.astype(bool), (1.0, 1.0, 1.0))
    assert segmentation_case_metrics(pred, label, 2)[1]["hd95"] == pytest.approx(expected_vox, rel=1e-5, abs=1e-5)
    # Dice / SEN / PRC against counts
    tp = int(np.sum((pred == 1) & (label == 1)))
    out = segmentation_case_metrics(pred, label, 2)[1]
    assert out["dice"] == pytest.approx(2 * tp / (pred.sum() + label.sum()), rel=1e-6)
    assert out["sensitivity"] == pytest.approx(tp / label.sum(), rel=1e-6)
    assert out["precision"] == pytest.approx(tp / pred.sum(), rel=1e-6)


def test_hd95_brute_force_distant_small_structure():
    # a far-away false-positive speck is 1 of ~100 prediction surface voxels: HD95 ignores it, the maximum would not
    pred = np.zeros((16, 16, 16), dtype=np.int64)
    label = np.zeros_like(pred)
    label[3:8, 3:8, 3:8] = 1
    pred[3:8, 3:8, 4:9] = 1
    pred[14, 14, 14] = 1
    expected = _brute_force_hd95(pred.astype(bool), label.astype(bool), SPACING)
    got = segmentation_case_metrics(pred, label, 2, spacing=SPACING)[1]["hd95"]
    assert got == pytest.approx(expected, rel=1e-5)
    assert got == pytest.approx(2.5)  # the one-slice shift along z, not the ~13 mm of the speck


@pytest.mark.parametrize("spacing", [None, SPACING])
def test_empty_rules(spacing):
    empty = np.zeros((6, 6, 6), dtype=np.int64)
    blob = empty.copy()
    blob[2:4, 2:4, 2:4] = 1

    both = segmentation_case_metrics(empty, empty, 2, spacing=spacing)[1]
    assert both["dice"] == 1.0 and both["hd95"] == 0.0
    assert math.isnan(both["sensitivity"]) and math.isnan(both["precision"])
    assert (both["n_label"], both["n_pred"]) == (0, 0)

    spurious = segmentation_case_metrics(blob, empty, 2, spacing=spacing)[1]  # label empty, prediction not
    assert spurious["dice"] == 0.0 and spurious["precision"] == 0.0
    assert math.isnan(spurious["sensitivity"]) and math.isnan(spurious["hd95"])
    assert (spurious["n_label"], spurious["n_pred"]) == (0, 8)

    missed = segmentation_case_metrics(empty, blob, 2, spacing=spacing)[1]  # prediction empty, label not
    assert missed["dice"] == 0.0 and missed["sensitivity"] == 0.0
    assert math.isnan(missed["precision"]) and math.isnan(missed["hd95"])
    assert (missed["n_label"], missed["n_pred"]) == (8, 0)


def test_include_background():
    pred, label = _two_class_case()
    without = segmentation_case_metrics(pred, label, 3, include_background=False)
    with_bg = segmentation_case_metrics(pred, label, 3, include_background=True)
    assert set(without) == {1, 2} and set(with_bg) == {0, 1, 2}
    for c in (1, 2):
        assert with_bg[c] == pytest.approx(without[c])
    n_label_bg, n_pred_bg = int(np.sum(label == 0)), int(np.sum(pred == 0))
    tp_bg = int(np.sum((label == 0) & (pred == 0)))
    bg = with_bg[0]
    assert (bg["n_label"], bg["n_pred"]) == (512 - 20, 512 - 16)
    assert bg["dice"] == pytest.approx(2 * tp_bg / (n_label_bg + n_pred_bg))
    assert bg["sensitivity"] == pytest.approx(tp_bg / n_label_bg)
    assert bg["precision"] == pytest.approx(tp_bg / n_pred_bg)
    # background surfaces: both include the image border; the difference is local to the structures
    expected = _brute_force_hd95(pred == 0, label == 0, (1.0, 1.0, 1.0))
    assert bg["hd95"] == pytest.approx(expected, abs=1e-5)


def _one_hot(x: np.ndarray, num_classes: int) -> np.ndarray:
    return np.stack([x == c for c in range(num_classes)]).astype(np.float32)


def test_one_hot_and_label_map_inputs_agree():
    pred, label = _two_class_case()
    reference = segmentation_case_metrics(pred, label, 3, spacing=SPACING, include_background=True)
    variants = [
        (pred[None], label[None]),
        (torch.from_numpy(pred), torch.from_numpy(label)[None].float()),
        (_one_hot(pred, 3), label),
        (torch.from_numpy(_one_hot(pred, 3)), torch.from_numpy(_one_hot(label, 3))),
        (MetaTensor(torch.from_numpy(_one_hot(pred, 3))), MetaTensor(torch.from_numpy(label)[None])),
        (pred.astype(np.uint8), _one_hot(label, 3).astype(bool)),
    ]
    for p, y in variants:
        out = segmentation_case_metrics(p, y, 3, spacing=SPACING, include_background=True)
        assert set(out) == set(reference)
        for c in reference:
            for key, value in reference[c].items():
                assert out[c][key] == pytest.approx(value, nan_ok=True), (type(p), c, key)


def test_spacing_forms_agree():
    pred, label = _two_class_case()
    base = segmentation_case_metrics(pred, label, 3, spacing=SPACING)
    for spacing in (np.asarray(SPACING), torch.tensor(SPACING, dtype=torch.float64), list(SPACING)):
        assert segmentation_case_metrics(pred, label, 3, spacing=spacing)[1]["hd95"] == base[1]["hd95"]


def test_two_dimensional_inputs():
    pred = np.zeros((7, 9), dtype=np.int64)
    label = np.zeros((7, 9), dtype=np.int64)
    pred[1, 1], label[1, 5] = 1, 1  # 4 pixels apart along the second axis
    assert segmentation_case_metrics(pred, label, 2, spacing=(0.5, 0.25))[1]["hd95"] == pytest.approx(1.0)
    # a (1, H, W) input with a channel needs spatial_dims=2 (or a 2-value spacing) to be read as 2-D
    out = segmentation_case_metrics(pred[None], label[None], 2, spatial_dims=2)
    assert out[1]["hd95"] == pytest.approx(4.0)
    assert segmentation_case_metrics(pred[None], _one_hot(label, 2), 2, spacing=(0.5, 0.25))[1]["dice"] == 0.0


def test_invalid_inputs_raise_naming_the_problem():
    pred, label = _two_class_case()
    with pytest.raises(ValueError, match="shape mismatch"):
        segmentation_case_metrics(pred[:, :, :7], label, 3)
    with pytest.raises(ValueError, match=r"label label map has value 3 >= num_classes \(3\)"):
        segmentation_case_metrics(pred, np.where(label == 2, 3, label), 3)
    with pytest.raises(ValueError, match=r"pred label map has value 2 >= num_classes \(2\)"):
        segmentation_case_metrics(pred, np.clip(label, 0, 1), 2)
    nan_pred = pred.astype(np.float32)
    nan_pred[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="pred contains NaN"):
        segmentation_case_metrics(nan_pred, label, 3)
    with pytest.raises(ValueError, match="label contains NaN"):
        segmentation_case_metrics(pred, torch.full((8, 8, 8), float("nan")), 3)
    with pytest.raises(ValueError, match="negative"):
        segmentation_case_metrics(pred, label - 1, 3)
    with pytest.raises(ValueError, match="non-integer"):
        segmentation_case_metrics(pred + 0.5, label, 3)
    logits = _one_hot(pred, 3) * 0.7
    with pytest.raises(ValueError, match="other than 0 and 1"):
        segmentation_case_metrics(logits, label, 3)
    with pytest.raises(ValueError, match="neither a label map"):
        segmentation_case_metrics(_one_hot(pred, 3)[:2], label, 3)
    with pytest.raises(ValueError, match="no batch dimension"):
        segmentation_case_metrics(pred[None, None], label, 3)
    with pytest.raises(ValueError, match="num_classes"):
        segmentation_case_metrics(pred, label, 1)
    with pytest.raises(ValueError, match="spacing must be positive"):
        segmentation_case_metrics(pred, label, 3, spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="spacing must have 1 or 3 values"):
        segmentation_case_metrics(pred, label, 3, spacing=(1.0, 1.0), spatial_dims=3)
    with pytest.raises(ValueError, match="must be a torch.Tensor"):
        segmentation_case_metrics(pred.tolist(), label, 3)
