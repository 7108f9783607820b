# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""MarginFocalLoss against an independent per-voxel computation of methods.md 1.2 / 1.3 (Li et al., TMI 2021)."""

from __future__ import annotations

import itertools

import monai.losses
import pytest
import torch
import torch.nn.functional as F

from monai_imbalance.losses import MarginFocalLoss

EPS = 1e-6
DTYPE = torch.float64


def _random(shape, num_classes, seed=0, scale=3.0, soft=False):
    """Random logits ``(B, C, *shape)``, labels ``(B, 1, *shape)`` (every class present) and a random mask."""
    g = torch.Generator().manual_seed(seed)
    b = shape[0]
    logits = scale * torch.randn(b, num_classes, *shape[1:], generator=g, dtype=DTYPE)
    labels = torch.randint(0, num_classes, (b, 1, *shape[1:]), generator=g)
    labels.view(-1)[:num_classes] = torch.arange(num_classes)
    mask = (torch.rand(b, 1, *shape[1:], generator=g) > 0.3).to(DTYPE)
    if soft:
        lam = 0.3
        other = labels.flip(0)
        target = lam * F.one_hot(labels[:, 0], num_classes).movedim(-1, 1) + (1 - lam) * F.one_hot(
            other[:, 0], num_classes
        ).movedim(-1, 1)
        return logits, target.to(DTYPE), mask
    return logits, labels, mask


def _onehot(labels, num_classes):
    return F.one_hot(labels[:, 0].long(), num_classes).movedim(-1, 1).to(DTYPE)


def reference_loss(
    z,
    y,
    margin=0.0,
    gamma=0.0,
    rare=None,
    lambda_dice=0.0,
    include_background=False,
    batch=True,
    mask=None,
    smooth=1e-5,
):
    """methods.md 1.2 / 1.3 written out literally, one voxel row and one class column at a time.

    ``z``: (B, C, *spatial) logits; ``y``: (B, C, *spatial) one-hot / soft target; ``mask``: (B, 1, *spatial).
    Returns (total, per-voxel CE as a (B, V) tensor).
    """
    b, c = z.shape[:2]
    zv = z.reshape(b, c, -1)  # (B, C, V)
    yv = y.reshape(b, c, -1)
    mv = torch.ones(b, zv.shape[-1], dtype=z.dtype) if mask is None else mask.reshape(b, -1)
    r = [1.0] * c if rare is None else [1.0 if k in rare else 0.0 for k in range(c)]
    focal_on = [True] * c if rare is None else [k not in rare for k in range(c)]
    # z_hat_ic = z_ic - m * y_ic * r_c
    z_hat = [zv[:, k] - margin * yv[:, k] * r[k] for k in range(c)]
    # softmax, written out
    zmax = torch.stack(z_hat, 0).max(0).values
    expo = [torch.exp(zk - zmax) for zk in z_hat]
    denom = sum(expo)
    p = [e / denom for e in expo]
    w = [(1 - p[k] + EPS) ** gamma if focal_on[k] else torch.ones_like(p[k]) for k in range(c)]
    ce_vox = -sum(yv[:, k] * w[k] * torch.log(p[k] + EPS) for k in range(c))  # (B, V)
    ce = (ce_vox * mv).sum() / mv.sum()
    if lambda_dice == 0:
        return ce, ce_vox
    terms = []
    samples = [slice(None)] if batch else [slice(i, i + 1) for i in range(b)]
    classes = range(c) if include_background else range(1, c)
    for s in samples:
        for k in classes:
            pk, yk, wk, mk = p[k][s], yv[:, k][s], w[k][s], mv[s]
            tp = (pk * yk * mk).sum()
            fp = (pk * (1 - yk) * mk).sum()
            fn = ((1 - pk) * yk * mk).sum()
            fn_w = ((1 - pk) * yk * wk * mk).sum()
            terms.append((fp + fn_w + smooth) / (2 * tp + fp + fn + smooth))
    dice = torch.stack(terms).mean()
    return ce + lambda_dice * dice, ce_vox


CONFIGS = [
    # margin, gamma, rare, lambda_dice, include_background, batch
    (0.0, 0.0, None, 0.0, False, True),
    (1.0, 0.0, None, 0.0, False, True),
    (1.0, 0.0, (1,), 0.0, False, True),
    (0.0, 4.0, None, 0.0, False, True),
    (0.0, 4.0, (1,), 0.0, False, True),
    (0.0, 0.0, None, 1.0, False, True),
    (0.5, 2.0, (2,), 1.0, False, True),
    (0.5, 2.0, (1, 2), 1.0, True, False),
    (0.2, 4.0, None, 0.5, False, False),
    (2.0, 3.0, (0,), 1.0, True, True),
]


@pytest.mark.parametrize("num_classes,spatial", [(3, (2, 5, 4, 3)), (2, (3, 6, 5))])
@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("config", CONFIGS)
def test_value_and_gradient_match_reference(config, use_mask, num_classes, spatial):
    margin, gamma, rare, lambda_dice, include_background, batch = config
    if rare is not None and max(rare) >= num_classes:
        rare = (num_classes - 1,)
    logits, labels, mask = _random(spatial, num_classes, seed=CONFIGS.index(config))
    mask = mask if use_mask else None
    loss = MarginFocalLoss(
        margin=margin,
        gamma=gamma,
        rare_classes=rare,
        lambda_dice=lambda_dice,
        include_background=include_background,
        batch=batch,
    )
    z1 = logits.clone().requires_grad_(True)
    z2 = logits.clone().requires_grad_(True)
    value = loss(z1, labels, mask=mask)
    expected, _ = reference_loss(
        z2, _onehot(labels, num_classes), margin, gamma, rare, lambda_dice, include_background, batch, mask
    )
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    value.backward()
    expected.backward()
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("rare", [None, (1,)])
def test_soft_targets_match_reference(rare):
    """Symmetric mixup targets: the formulas with y the target weights (margin m * y * r)."""
    logits, target, mask = _random((2, 4, 3, 5), 3, seed=3, soft=True)
    loss = MarginFocalLoss(margin=1.0, gamma=2.0, rare_classes=rare, lambda_dice=1.0, to_onehot_y=False)
    z1 = logits.clone().requires_grad_(True)
    z2 = logits.clone().requires_grad_(True)
    value = loss(z1, target, mask)
    expected, _ = reference_loss(z2, target, 1.0, 2.0, rare, 1.0, False, True, mask)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    value.backward()
    expected.backward()
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-8, atol=1e-12)
    # with to_onehot_y=True a C-channel target is taken as one-hot / soft as well
    torch.testing.assert_close(
        MarginFocalLoss(margin=1.0, gamma=2.0, rare_classes=rare, lambda_dice=1.0)(logits, target, mask), value.detach()
    )


def test_ce_equals_cross_entropy():
    logits, labels, _ = _random((2, 6, 5, 4), 3, seed=1, scale=2.0)
    expected = F.cross_entropy(logits, labels[:, 0])
    # the authors' log(p + 1e-6): equal up to the epsilon (|diff| <= 1e-6 / min p)
    value = MarginFocalLoss()(logits, labels)
    p_true = torch.softmax(logits, 1).gather(1, labels)
    assert abs(value - expected) <= EPS / p_true.min() + 1e-12
    assert abs(value - expected) > 0  # the epsilon is there
    # log_eps=0: log_softmax, exactly the standard cross-entropy
    torch.testing.assert_close(MarginFocalLoss(log_eps=0.0)(logits, labels), expected, rtol=1e-12, atol=1e-12)
    # per voxel as well
    per_voxel = MarginFocalLoss(log_eps=0.0, reduction="none")(logits, labels)
    torch.testing.assert_close(per_voxel[:, 0], F.cross_entropy(logits, labels[:, 0], reduction="none"))
    torch.testing.assert_close(
        MarginFocalLoss(log_eps=0.0, reduction="sum")(logits, labels),
        F.cross_entropy(logits, labels[:, 0], reduction="sum"),
    )


def test_labels_and_one_hot_give_the_same_loss():
    logits, labels, mask = _random((2, 4, 4, 4), 3, seed=2)
    loss = MarginFocalLoss(margin=1.0, gamma=2.0, rare_classes=(2,), lambda_dice=1.0)
    onehot = _onehot(labels, 3)
    torch.testing.assert_close(loss(logits, labels, mask), loss(logits, onehot, mask))
    torch.testing.assert_close(
        loss(logits, labels, mask), MarginFocalLoss(1.0, 2.0, (2,), 1.0, to_onehot_y=False)(logits, onehot, mask)
    )
    # float labels holding integers and bool masks are accepted
    torch.testing.assert_close(loss(logits, labels.double(), mask.bool()), loss(logits, labels, mask))


@pytest.mark.parametrize("rare", [(2,), (1, 2)])
def test_margin_moves_only_rare_true_class_logits(rare):
    logits, labels, _ = _random((2, 5, 4, 3), 3, seed=4)
    z_margin = logits.clone().requires_grad_(True)
    z_plain = logits.clone().requires_grad_(True)
    margin = MarginFocalLoss(margin=1.5, rare_classes=rare, reduction="none")(z_margin, labels)
    plain = MarginFocalLoss(reduction="none")(z_plain, labels)
    is_rare = torch.zeros_like(labels, dtype=torch.bool)
    for k in rare:
        is_rare |= labels == k
    # voxels of non-rare classes: the same loss as plain CE; rare voxels: a larger loss
    torch.testing.assert_close(margin[~is_rare], plain[~is_rare], rtol=0, atol=0)
    assert torch.all(margin[is_rare] > plain[is_rare])
    # the same shift of the rare true-class logit, done by hand, gives the plain loss
    shifted = logits - 1.5 * _onehot(labels, 3) * is_rare
    torch.testing.assert_close(margin, MarginFocalLoss(reduction="none")(shifted, labels), rtol=0, atol=0)
    # gradients: identical at non-rare voxels
    margin.sum().backward()
    plain.sum().backward()
    keep = (~is_rare).expand_as(logits)
    torch.testing.assert_close(z_margin.grad[keep], z_plain.grad[keep], rtol=0, atol=0)
    assert not torch.allclose(z_margin.grad[~keep], z_plain.grad[~keep])


def test_symmetric_margin_shifts_every_true_class_logit():
    logits, labels, _ = _random((2, 5, 4, 3), 3, seed=5)
    margin = MarginFocalLoss(margin=0.7, reduction="none")(logits, labels)
    shifted = logits - 0.7 * _onehot(labels, 3)
    torch.testing.assert_close(margin, MarginFocalLoss(reduction="none")(shifted, labels), rtol=0, atol=0)


def test_asymmetric_focal_leaves_rare_class_terms_unweighted():
    logits, labels, _ = _random((2, 5, 4, 3), 3, seed=6)
    rare = (2,)
    focal = MarginFocalLoss(gamma=4.0, rare_classes=rare, reduction="none")(logits, labels)
    plain = MarginFocalLoss(reduction="none")(logits, labels)
    is_rare = labels == 2
    torch.testing.assert_close(focal[is_rare], plain[is_rare], rtol=0, atol=0)
    p_true = torch.softmax(logits, 1).gather(1, labels)
    weight = (1 - p_true + EPS) ** 4.0
    torch.testing.assert_close(focal[~is_rare], (weight * plain)[~is_rare], rtol=1e-12, atol=1e-15)
    assert torch.all(focal[~is_rare] < plain[~is_rare])


@pytest.mark.parametrize("gamma", [2.0, 4.0])
def test_symmetric_focal_equals_standard_focal(gamma):
    logits, labels, _ = _random((2, 6, 5, 4), 3, seed=7, scale=2.0)
    ours = MarginFocalLoss(gamma=gamma, log_eps=0.0)(logits, labels)
    # the standard focal loss (Lin et al.) -(1 - p_t)^gamma log p_t, averaged over voxels
    log_p_true = torch.log_softmax(logits, 1).gather(1, labels)
    standard = (-((1 - log_p_true.exp()) ** gamma) * log_p_true).mean()
    torch.testing.assert_close(ours, standard, rtol=1e-5, atol=0)  # (1 - p + 1e-6) vs (1 - p)
    # and MONAI's softmax focal loss (its mean runs over classes too)
    monai_focal = monai.losses.FocalLoss(include_background=True, to_onehot_y=True, gamma=gamma, use_softmax=True)
    torch.testing.assert_close(ours, 3 * monai_focal(logits, labels).to(DTYPE), rtol=1e-5, atol=0)


def test_dice_term_uses_focal_weighted_false_negatives():
    """Dice' = mean_{c>=1} (FP + FN' + s) / (2 TP + FP + FN + s), with FN' weighted only for non-rare classes."""
    logits, labels, _ = _random((2, 6, 5, 4), 3, seed=8)
    gamma, s = 4.0, 1e-5
    ce = MarginFocalLoss(gamma=gamma, rare_classes=(2,))(logits, labels)
    total = MarginFocalLoss(gamma=gamma, rare_classes=(2,), lambda_dice=1.0)(logits, labels)
    p = torch.softmax(logits, 1)
    y = _onehot(labels, 3)
    dims = (0, 2, 3, 4)
    tp = (p * y).sum(dims)
    fp = (p * (1 - y)).sum(dims)
    fn = ((1 - p) * y).sum(dims)
    w = (1 - p + EPS) ** gamma
    fn_w = torch.stack([((1 - p) * y * w)[:, 0].sum(), ((1 - p) * y * w)[:, 1].sum(), fn[2]])
    dice = ((fp + fn_w + s) / (2 * tp + fp + fn + s))[1:].mean()
    torch.testing.assert_close(total - ce, dice, rtol=1e-10, atol=1e-12)
    # kidney (class 1, not rare) is down-weighted; without focal it is 1 - Dice
    no_focal = MarginFocalLoss(lambda_dice=1.0)(logits, labels) - MarginFocalLoss()(logits, labels)
    soft_dice = 1 - (2 * tp) / (2 * tp + fp + fn + s)
    torch.testing.assert_close(no_focal, soft_dice[1:].mean(), rtol=1e-10, atol=1e-12)
    assert dice < no_focal


def test_dice_term_against_monai_dice_loss_without_focal():
    """With gamma=0 the Dice term is MONAI's DiceLoss with smooth_nr=0, smooth_dr=s (batch, no background)."""
    logits, labels, _ = _random((2, 6, 5, 4), 3, seed=9)
    dice_only = MarginFocalLoss(lambda_dice=1.0)(logits, labels) - MarginFocalLoss()(logits, labels)
    monai_dice = monai.losses.DiceLoss(
        include_background=False, to_onehot_y=True, softmax=True, batch=True, smooth_nr=0.0, smooth_dr=1e-5
    )
    torch.testing.assert_close(dice_only, monai_dice(logits, labels), rtol=1e-10, atol=1e-12)


def test_mask_semantics():
    logits, labels, mask = _random((2, 5, 4, 3), 3, seed=10)
    loss = MarginFocalLoss(margin=1.0, gamma=2.0, rare_classes=(2,), lambda_dice=1.0)
    # masked-out voxels may hold anything: the loss does not change
    other_logits = torch.where(mask.bool(), logits, 100 * torch.randn_like(logits))
    other_labels = torch.where(mask.bool(), labels, torch.zeros_like(labels))
    torch.testing.assert_close(loss(logits, labels, mask), loss(other_logits, other_labels, mask))
    # and get no gradient
    z = logits.clone().requires_grad_(True)
    loss(z, labels, mask).backward()
    assert torch.all(z.grad[~mask.bool().expand_as(z)] == 0)
    assert torch.any(z.grad[mask.bool().expand_as(z)] != 0)
    # masking a whole sample is the loss of the other sample alone (CE averaged over counted voxels)
    keep_first = torch.zeros_like(mask)
    keep_first[0] = 1
    torch.testing.assert_close(loss(logits, labels, keep_first), loss(logits[:1], labels[:1]))
    # a full mask is no mask
    torch.testing.assert_close(loss(logits, labels, torch.ones_like(mask)), loss(logits, labels))
    # an empty mask gives a finite CE of 0
    empty = MarginFocalLoss(margin=1.0)(logits, labels, torch.zeros_like(mask))
    assert empty.item() == 0.0
    # reduction="none": zero at masked voxels
    per_voxel = MarginFocalLoss(reduction="none")(logits, labels, mask)
    assert per_voxel.shape == labels.shape
    assert torch.all(per_voxel[mask == 0] == 0)


def test_half_precision_is_computed_in_float32():
    logits, labels, _ = _random((2, 4, 4, 4), 3, seed=11)
    loss = MarginFocalLoss(margin=1.0, gamma=4.0, rare_classes=(1,), lambda_dice=1.0)
    value = loss(logits.half(), labels)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value.double(), loss(logits.half().double(), labels), rtol=1e-5, atol=1e-6)


def test_sum_reduction():
    logits, labels, mask = _random((2, 4, 3, 5), 3, seed=12)
    total = MarginFocalLoss(margin=1.0, gamma=2.0, rare_classes=(1,), lambda_dice=0.5, reduction="sum", batch=False)
    _, ce_vox = reference_loss(logits, _onehot(labels, 3), 1.0, 2.0, (1,), 0.0, mask=mask)
    dice_mean = (
        reference_loss(logits, _onehot(labels, 3), 1.0, 2.0, (1,), 1.0, batch=False, mask=mask)[0]
        - reference_loss(logits, _onehot(labels, 3), 1.0, 2.0, (1,), 0.0, mask=mask)[0]
    )
    expected = (ce_vox * mask.reshape(2, -1)).sum() + 0.5 * dice_mean * 2 * 2  # 2 samples x 2 foreground classes
    torch.testing.assert_close(total(logits, labels, mask), expected, rtol=1e-10, atol=1e-12)


def test_rare_classes_forms():
    assert MarginFocalLoss(rare_classes=1).rare_classes == (1,)
    assert MarginFocalLoss(rare_classes=[2, 1, 2]).rare_classes == (1, 2)
    assert MarginFocalLoss(rare_classes=torch.tensor([1])).rare_classes == (1,)
    assert MarginFocalLoss().rare_classes is None


def test_not_a_monai_name():
    for name in ("MarginFocalLoss",):
        assert not hasattr(monai.losses, name)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"margin": -0.5}, r"margin=-0\.5"),
        ({"gamma": -1.0}, r"gamma=-1\.0"),
        ({"margin": float("nan")}, r"margin=nan"),
        ({"lambda_dice": -1.0}, r"lambda_dice=-1\.0"),
        ({"smooth": -1.0}, r"smooth=-1\.0"),
        ({"log_eps": -1.0}, r"log_eps=-1\.0"),
        ({"rare_classes": (-1,)}, r"negative class index -1"),
        ({"rare_classes": (1, -2)}, r"negative class index -2"),
        ({"rare_classes": ()}, r"rare_classes=\(\) is empty"),
        ({"rare_classes": (1.5,)}, r"1\.5"),
        ({"rare_classes": True}, r"True"),
        ({"reduction": "max"}, r"reduction='max'"),
        ({"reduction": "none", "lambda_dice": 1.0}, r"lambda_dice=1\.0"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MarginFocalLoss(**kwargs)


def test_bad_inputs():
    logits, labels, mask = _random((2, 4, 4, 4), 3, seed=13)
    loss = MarginFocalLoss(rare_classes=(1,))
    with pytest.raises(ValueError, match=r"rare_classes=\(3,\) holds class 3.*C=3"):
        MarginFocalLoss(rare_classes=(3,))(logits, labels)
    with pytest.raises(ValueError, match=r"rare_classes=\(1, 5\) holds class 5"):
        MarginFocalLoss(rare_classes=(1, 5))(logits, labels)
    with pytest.raises(ValueError, match=r"target label 3 is out of range for C=3"):
        loss(logits, torch.where(labels == 2, 3, labels))
    with pytest.raises(ValueError, match=r"target label -1 is out of range"):
        loss(logits, torch.where(labels == 2, -1, labels))
    with pytest.raises(ValueError, match=r"must be integers, found label value 0\.5"):
        loss(logits, torch.where(labels == 2, 0.5, labels.double()))
    with pytest.raises(ValueError, match=r"target shape \(2, 1, 4, 4, 3\) does not match"):
        loss(logits, labels[..., :3])
    with pytest.raises(ValueError, match=r"target shape \(2, 2, 4, 4, 4\) does not match"):
        loss(logits, _onehot(labels, 3)[:, :2])
    with pytest.raises(ValueError, match=r"target shape \(2, 1, 4, 4, 4\) does not match.*to_onehot_y=False"):
        MarginFocalLoss(to_onehot_y=False)(logits, labels)
    with pytest.raises(ValueError, match=r"mask shape \(2, 4, 4, 4\) does not match"):
        loss(logits, labels, mask[:, 0])
    with pytest.raises(ValueError, match=r"mask shape \(1, 1, 4, 4, 4\) does not match"):
        loss(logits, labels, mask[:1])
    with pytest.raises(ValueError, match=r"at least 2 channels.*C=1"):
        loss(logits[:, :1], labels.clamp(max=0))
    with pytest.raises(ValueError, match=r"\(B, C, \*spatial\).*\(2, 3\)"):
        loss(logits[:, :, 0, 0, 0], labels[:, :, 0, 0, 0])


def test_float32_patch_batch_is_finite_for_extreme_logits():
    """float32 logits of any scale give a finite loss and gradient (no log(0), no overflow in the softmax)."""
    labels = torch.randint(0, 3, (2, 1, 16, 16, 16), generator=torch.Generator().manual_seed(14))
    for scale in (1.0, 1e4):
        logits = (scale * torch.randn(2, 3, 16, 16, 16)).requires_grad_(True)
        for margin, gamma, log_eps in itertools.product((0.0, 1.0), (0.0, 4.0), (EPS, 0.0)):
            loss = MarginFocalLoss(margin=margin, gamma=gamma, rare_classes=(2,), lambda_dice=1.0, log_eps=log_eps)
            value = loss(logits, labels)
            (grad,) = torch.autograd.grad(value, logits)
            assert torch.isfinite(value) and torch.all(torch.isfinite(grad))
