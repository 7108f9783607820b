# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""FBetaLoss against the direct F-beta formula (methods.md 1.7), MONAI's TverskyLoss and DiceLoss."""

from __future__ import annotations

import monai.losses
import pytest
import torch
import torch.nn.functional as F

from monai_imbalance.losses import FBetaLoss

DTYPE = torch.float64


def _random(shape=(2, 6, 5, 4), num_classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = shape[0]
    logits = 2 * torch.randn(b, num_classes, *shape[1:], generator=g, dtype=DTYPE)
    labels = torch.randint(0, num_classes, (b, 1, *shape[1:]), generator=g)
    mask = (torch.rand(b, 1, *shape[1:], generator=g) > 0.3).to(DTYPE)
    return logits, labels, mask


def _onehot(labels, num_classes):
    return F.one_hot(labels[:, 0], num_classes).movedim(-1, 1).to(DTYPE)


def direct_fbeta(logits, labels, beta, include_background=False, batch=True, mask=None, s=1e-5):
    """``1 - ((1 + b^2) TP + s) / ((1 + b^2) TP + b^2 FN + FP + s)``, mean over classes (and samples)."""
    c = logits.shape[1]
    p = torch.softmax(logits, 1)
    y = _onehot(labels, c)
    m = torch.ones_like(p[:, :1]) if mask is None else mask
    b2 = beta**2
    samples = [slice(None)] if batch else [slice(i, i + 1) for i in range(logits.shape[0])]
    terms = []
    for sl in samples:
        for k in range(0 if include_background else 1, c):
            pk, yk, mk = p[sl, k], y[sl, k], m[sl, 0]
            tp = (pk * yk * mk).sum()
            fp = (pk * (1 - yk) * mk).sum()
            fn = ((1 - pk) * yk * mk).sum()
            terms.append(1 - ((1 + b2) * tp + s) / ((1 + b2) * tp + b2 * fn + fp + s))
    return torch.stack(terms).mean()


@pytest.mark.parametrize("beta", [1.0, 2.0, 4.0, 8.0])
@pytest.mark.parametrize("include_background,batch", [(False, True), (True, False)])
@pytest.mark.parametrize("use_mask", [False, True])
def test_matches_direct_formula(beta, include_background, batch, use_mask):
    logits, labels, mask = _random(seed=int(beta))
    mask = mask if use_mask else None
    z1 = logits.clone().requires_grad_(True)
    z2 = logits.clone().requires_grad_(True)
    value = FBetaLoss(beta=beta, include_background=include_background, batch=batch)(z1, labels, mask)
    expected = direct_fbeta(z2, labels, beta, include_background, batch, mask)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    value.backward()
    expected.backward()
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("beta", [1.0, 2.0, 4.0, 8.0])
def test_is_tversky_with_rescaled_smoothing(beta):
    logits, labels, _ = _random(seed=10 + int(beta))
    b2 = beta**2
    s = 1e-5
    tversky = monai.losses.TverskyLoss(
        include_background=False,
        to_onehot_y=True,
        softmax=True,
        alpha=1 / (1 + b2),
        beta=b2 / (1 + b2),
        smooth_nr=s / (1 + b2),
        smooth_dr=s / (1 + b2),
        batch=True,
    )
    torch.testing.assert_close(FBetaLoss(beta=beta)(logits, labels), tversky(logits, labels), rtol=1e-12, atol=1e-14)


def test_smoothing_matters_for_the_equivalence():
    """With the un-rescaled smoothing Tversky is a different loss (visible with a large s on an absent class)."""
    logits, labels, _ = _random(seed=20)
    labels = labels.clamp(max=1)  # class 2 absent
    b2 = 4.0
    same_s = monai.losses.TverskyLoss(
        include_background=False, to_onehot_y=True, softmax=True, alpha=1 / (1 + b2), beta=b2 / (1 + b2),
        smooth_nr=1.0, smooth_dr=1.0, batch=True,
    )  # fmt: skip
    ours = FBetaLoss(beta=2.0, smooth=1.0)(logits, labels)
    direct = direct_fbeta(logits, labels, 2.0, s=1.0)
    torch.testing.assert_close(ours, direct, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(same_s(logits, labels), direct)


def test_f1_is_monai_dice_loss():
    logits, labels, _ = _random(seed=21)
    dice = monai.losses.DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)
    torch.testing.assert_close(FBetaLoss(beta=1.0)(logits, labels), dice(logits, labels), rtol=1e-12, atol=1e-14)


def test_larger_beta_penalises_false_negatives_more():
    logits, labels, _ = _random(seed=22)
    onehot = _onehot(labels, 3)
    under = torch.where(onehot.bool(), torch.zeros_like(logits), logits)  # low scores on the true classes: many FN
    losses = [FBetaLoss(beta=b)(under, labels).item() for b in (1.0, 2.0, 4.0, 8.0)]
    assert losses == sorted(losses)


def test_targets_probabilities_and_reductions():
    logits, labels, mask = _random(seed=23)
    onehot = _onehot(labels, 3)
    loss = FBetaLoss(beta=2.0)
    torch.testing.assert_close(loss(logits, labels, mask), loss(logits, onehot, mask))
    torch.testing.assert_close(
        loss(logits, labels), FBetaLoss(beta=2.0, to_onehot_y=False, softmax=False)(torch.softmax(logits, 1), onehot)
    )
    per_class = FBetaLoss(beta=2.0, reduction="none", batch=False)(logits, labels)
    assert per_class.shape == (2, 2)
    torch.testing.assert_close(per_class.mean(), FBetaLoss(beta=2.0, batch=False)(logits, labels))
    torch.testing.assert_close(per_class.sum(), FBetaLoss(beta=2.0, batch=False, reduction="sum")(logits, labels))
    # masked-out voxels may hold anything
    other = torch.where(mask.bool(), logits, 50 * torch.randn_like(logits))
    torch.testing.assert_close(loss(other, labels, mask), loss(logits, labels, mask))
    assert loss(logits.half(), labels).dtype == torch.float32


def test_not_a_monai_name():
    assert not hasattr(monai.losses, "FBetaLoss")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"beta": 0.0}, r"beta=0\.0"),
        ({"beta": -2.0}, r"beta=-2\.0"),
        ({"beta": float("inf")}, r"beta=inf"),
        ({"smooth": -1.0}, r"smooth=-1\.0"),
        ({"reduction": "avg"}, r"reduction='avg'"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FBetaLoss(**kwargs)


def test_bad_inputs():
    logits, labels, mask = _random(seed=24)
    loss = FBetaLoss(beta=2.0)
    with pytest.raises(ValueError, match=r"target label 3 is out of range for C=3"):
        loss(logits, torch.where(labels == 2, 3, labels))
    with pytest.raises(ValueError, match=r"target shape \(2, 1, 6, 5, 3\) does not match"):
        loss(logits, labels[..., :3])
    with pytest.raises(ValueError, match=r"mask shape \(2, 6, 5, 4\) does not match"):
        loss(logits, labels, mask[:, 0])
