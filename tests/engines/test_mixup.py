# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Asymmetric mixup labels (Li, Kamnitsas, Glocker, IEEE TMI 2021; methods.md 1.5) against a literal per-voxel rule."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from monai_imbalance.engines import mixup_batch, mixup_images, mixup_labels, sample_mixup_lambda


def reference_voxel(ya: int, yb: int, lam: float, num_classes: int, rare: set[int], m: float):
    """methods.md 1.5, written out literally for one voxel: returns (Y after floor, mask)."""
    y0 = yb if yb in rare else ya
    y0 = ya if ya in rare else y0
    y1 = ya if ya in rare else yb
    y1 = yb if yb in rare else y1
    big_y = [0.0] * num_classes
    big_y[y0 if lam < 1 - m else ya] += lam
    big_y[y1 if 1 - lam < 1 - m else yb] += 1 - lam
    mask = not any(0 < v < 1 for v in big_y)
    return [float(math.floor(v)) for v in big_y], float(mask)


def reference(y_a: torch.Tensor, y_b: torch.Tensor, lam: float, num_classes: int, rare, m: float):
    targets, masks = [], []
    for a, b in zip(y_a.flatten().tolist(), y_b.flatten().tolist(), strict=True):
        t, k = reference_voxel(a, b, lam, num_classes, set(rare), m)
        targets.append(t)
        masks.append(k)
    bsz, _, *sp = y_a.shape
    target = torch.tensor(targets).view(bsz, *sp, num_classes).movedim(-1, 1)
    mask = torch.tensor(masks).view(bsz, 1, *sp)
    return target, mask


def _pairs(num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (y_a, y_b) label pair once, as (1, 1, n) label maps."""
    pairs = list(itertools.product(range(num_classes), repeat=2))
    y_a = torch.tensor([a for a, _ in pairs]).view(1, 1, -1)
    y_b = torch.tensor([b for _, b in pairs]).view(1, 1, -1)
    return y_a, y_b


def _voxel(ya: int, yb: int, lam: float, num_classes: int, rare, m: float = 0.2):
    target, mask = mixup_labels(
        torch.tensor([[[ya]]]), torch.tensor([[[yb]]]), lam, num_classes, rare_classes=rare, margin=m
    )
    return target[0, :, 0], float(mask[0, 0, 0])


def _kept_as(target: torch.Tensor, mask: float) -> int | None:
    """The class a voxel is kept as, or None if dropped."""
    if mask == 0.0:
        assert target.sum() == 0
        return None
    assert target.sum() == 1
    return int(target.argmax())


LAMBDAS = [0.0, 0.125, 0.1875, 0.25, 0.5, 0.625, 0.75, 0.8125, 1.0]  # exact in binary: floor(lam + 1 - lam) = 1


@pytest.mark.parametrize("lam", LAMBDAS)
@pytest.mark.parametrize("rare", [[2], [1, 2], [1], [0, 2]])
@pytest.mark.parametrize("margin", [0.2, 0.25, 0.0])
def test_every_label_pair_matches_literal_rule(lam, rare, margin):
    y_a, y_b = _pairs(4)
    target, mask = mixup_labels(y_a, y_b, lam, 4, rare_classes=rare, margin=margin)
    ref_target, ref_mask = reference(y_a, y_b, lam, 4, rare, margin)
    assert target.dtype == torch.float32 and mask.dtype == torch.float32
    assert target.shape == (1, 4, 16) and mask.shape == (1, 1, 16)
    torch.testing.assert_close(target, ref_target, rtol=0, atol=0)
    torch.testing.assert_close(mask, ref_mask, rtol=0, atol=0)


def test_random_volumes_match_literal_rule():
    g = torch.Generator().manual_seed(0)
    y_a = torch.randint(0, 3, (2, 1, 4, 4, 4), generator=g)
    y_b = torch.randint(0, 3, (2, 1, 4, 4, 4), generator=g)
    target, mask = mixup_labels(y_a, y_b, 0.375, 3, rare_classes=[2], margin=0.2)
    ref_target, ref_mask = reference(y_a, y_b, 0.375, 3, [2], 0.2)
    assert torch.equal(target, ref_target) and torch.equal(mask, ref_mask)
    assert 0 < mask.mean() < 1


# the named cases of methods.md 1.5 (3 classes: 0 background, 1 kidney, 2 tumour), lam > margin
def test_background_plus_rare_gives_rare():
    assert _kept_as(*_voxel(0, 2, 0.5, 3, [2])) == 2
    assert _kept_as(*_voxel(2, 0, 0.5, 3, [2])) == 2


def test_common_plus_rare_gives_rare_when_only_that_one_is_rare():
    assert _kept_as(*_voxel(1, 2, 0.5, 3, [2])) == 2
    assert _kept_as(*_voxel(2, 1, 0.625, 3, [2])) == 2


def test_common_plus_background_is_dropped_when_neither_is_rare():
    assert _kept_as(*_voxel(1, 0, 0.5, 3, [2])) is None


def test_two_different_rare_classes_are_dropped():
    assert _kept_as(*_voxel(1, 2, 0.5, 3, [1, 2])) is None
    assert _kept_as(*_voxel(2, 1, 0.5, 3, [1, 2])) is None


@pytest.mark.parametrize("label", [0, 1, 2])
def test_identical_labels_are_kept(label):
    assert _kept_as(*_voxel(label, label, 0.5, 3, [2])) == label
    assert _kept_as(*_voxel(label, label, 0.125, 3, [1, 2])) == label


def test_partner_dominates_when_lam_below_margin():
    """lam <= m: the partner component keeps its own label, so a rare voxel of the small contributor is dropped."""
    assert _kept_as(*_voxel(2, 0, 0.125, 3, [2])) is None
    assert _kept_as(*_voxel(0, 2, 0.125, 3, [2])) == 2


def test_symmetric_soft_labels_and_full_mask():
    g = torch.Generator().manual_seed(1)
    y_a = torch.randint(0, 3, (2, 1, 4, 4, 4), generator=g)
    y_b = torch.randint(0, 3, (2, 1, 4, 4, 4), generator=g)
    lam = 0.3
    target, mask = mixup_labels(y_a, y_b, lam, 3, rare_classes=None, margin=0.2)
    onehot = lambda y: torch.nn.functional.one_hot(y[:, 0], 3).movedim(-1, 1).float()  # noqa: E731
    torch.testing.assert_close(target, lam * onehot(y_a) + (1 - lam) * onehot(y_b))
    assert torch.equal(mask, torch.ones(2, 1, 4, 4, 4))
    torch.testing.assert_close(target.sum(1), torch.ones(2, 4, 4, 4))


def test_accepts_float_and_uint8_labels_and_tensor_lambda():
    y_a, y_b = _pairs(3)
    ref = mixup_labels(y_a, y_b, 0.5, 3, rare_classes=[2])
    for a, b in ((y_a.float(), y_b.float()), (y_a.to(torch.uint8), y_b.to(torch.uint8))):
        out = mixup_labels(a, b, torch.tensor(0.5), 3, rare_classes=[2])
        assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])


def test_sample_lambda_range_and_reproducible():
    torch.manual_seed(0)
    lams = [sample_mixup_lambda(0.2, 0.2) for _ in range(200)]
    assert all(0.0 <= v <= 0.8 for v in lams)
    torch.manual_seed(0)
    assert [sample_mixup_lambda(0.2, 0.2) for _ in range(200)] == lams
    torch.manual_seed(0)
    uniform = torch.tensor([sample_mixup_lambda(1.0, 0.0) for _ in range(2000)])
    assert abs(float(uniform.mean()) - 0.5) < 0.03  # Beta(1, 1) is uniform


def test_mixup_batch_mixes_with_flipped_partner():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 1, 4, 4, 4, generator=g)
    y = torch.randint(0, 3, (3, 1, 4, 4, 4), generator=g)
    x_mix, target, mask, lam = mixup_batch(x, y, 3, rare_classes=[2], lam=0.375)
    assert lam == 0.375
    torch.testing.assert_close(x_mix, 0.375 * x + 0.625 * x.flip(0))
    ref_target, ref_mask = mixup_labels(y, y.flip(0), 0.375, 3, rare_classes=[2])
    assert torch.equal(target, ref_target) and torch.equal(mask, ref_mask)
    # the middle sample is its own partner: everything kept with its own label
    assert torch.equal(mask[1], torch.ones_like(mask[1]))
    torch.manual_seed(3)
    _, _, _, sampled = mixup_batch(x, y, 3, alpha=0.2, margin=0.2)
    assert 0.0 <= sampled <= 0.8
    torch.testing.assert_close(mixup_images(x, 1.0), x)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rare_classes": [3]}, r"rare_classes=\[3\].*class 3"),
        ({"rare_classes": [-1]}, r"rare_classes=\[-1\]"),
        ({"rare_classes": []}, r"rare_classes=\[\]"),
        ({"margin": -0.1}, "margin=-0.1"),
        ({"margin": 1.0}, "margin=1.0"),
        ({"lam": 1.5}, "lam=1.5"),
        ({"lam": -0.5}, "lam=-0.5"),
        ({"num_classes": 0}, "num_classes=0"),
    ],
)
def test_bad_arguments(kwargs, match):
    y_a, y_b = _pairs(3)
    args = {"y_a": y_a, "y_b": y_b, "lam": 0.5, "num_classes": 3, "rare_classes": [2], **kwargs}
    with pytest.raises(ValueError, match=match):
        mixup_labels(**args)


def test_bad_labels_and_shapes():
    y_a, y_b = _pairs(3)
    with pytest.raises(ValueError, match="y_a holds label 3"):
        mixup_labels(y_a + 1, y_b, 0.5, 3)
    with pytest.raises(ValueError, match="y_b holds label 5"):
        mixup_labels(y_a, torch.full_like(y_b, 5), 0.5, 3)
    with pytest.raises(ValueError, match="non-integral"):
        mixup_labels(y_a.float() + 0.5, y_b, 0.5, 3)
    with pytest.raises(ValueError, match=r"\(1, 1, 9\) and \(1, 1, 4\)"):
        mixup_labels(y_a, y_b[..., :4], 0.5, 3)
    with pytest.raises(ValueError, match=r"\(1, 3, 9\)"):
        onehot = torch.nn.functional.one_hot(y_a[:, 0], 3).movedim(-1, 1)
        mixup_labels(onehot, onehot, 0.5, 3)
    with pytest.raises(ValueError, match="alpha=0"):
        sample_mixup_lambda(0, 0.2)
    with pytest.raises(ValueError, match="alpha=-1"):
        mixup_batch(torch.zeros(2, 1, 9), torch.zeros(2, 1, 9), 3, alpha=-1)
    with pytest.raises(ValueError, match=r"\(2, 1, 9\) and \(2, 1, 4\)"):
        mixup_batch(torch.zeros(2, 1, 9), torch.zeros(2, 1, 4), 3, lam=0.5)
