# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""CoLab targets and losses (methods.md 2.2-2.4) against per-voxel and hand-written references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from monai_imbalance.losses import (
    ContextLabelLoss,
    compose_context_target,
    context_foreground_bce,
    context_label_target,
    context_targets_for_scales,
    deep_supervision_weights,
)

DTYPE = torch.float64
C, T = 3, 3
K = C + T - 1


def _data(b=2, spatial=(4, 6), c=C, t=T, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.softmax(3 * torch.randn(b, t, *spatial, generator=g, dtype=DTYPE), 1)
    label = torch.randint(0, c, (b, 1, *spatial), generator=g)
    mask = torch.rand(b, 1, *spatial, generator=g, dtype=DTYPE)
    mask[..., 0] = 0.0  # some voxels fully restricted (includes foreground ones)
    return q, label, mask


def _reference_target(q, label, c, mask=None):
    """Per-voxel loop of methods.md 2.2 in numpy: [q0, onehot_1..C-1, q1..], fg one-hot, y = M y + (1-M) e0."""
    q, label = q.numpy(), label.numpy()
    b, t = q.shape[:2]
    k = c + t - 1
    out = np.zeros((b, k, *q.shape[2:]))
    for idx in np.ndindex(b, *q.shape[2:]):
        n, sp = idx[0], idx[1:]
        y = int(label[(n, 0, *sp)])
        row = np.zeros(k)
        if y >= 1:
            row[y] = 1.0
        else:
            row[0] = q[(n, 0, *sp)]
            for j in range(1, t):
                row[c + j - 1] = q[(n, j, *sp)]
            m = 1.0 if mask is None else float(mask[(n, 0, *sp)])
            row = m * row
            row[0] += 1 - m
        out[(n, slice(None), *sp)] = row
    return torch.from_numpy(out)


@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("t", [1, 2, 3])
def test_compose_matches_per_voxel_reference(use_mask, t):
    q, label, mask = _data(t=t)
    m = mask if use_mask else None
    target = compose_context_target(q, label, C, m)
    assert target.shape == (2, C + t - 1, 4, 6)
    torch.testing.assert_close(target, _reference_target(q, label, C, m), rtol=0, atol=1e-12)
    torch.testing.assert_close(target.sum(1), torch.ones_like(target[:, 0]), rtol=0, atol=1e-12)  # rows sum to 1
    fg = label[:, 0] > 0
    onehot = F.one_hot(label[:, 0], C + t - 1).movedim(-1, 1).to(DTYPE)
    assert torch.equal(target.movedim(1, -1)[fg], onehot.movedim(1, -1)[fg])  # fg one-hot even where M = 0
    if use_mask:
        far = (mask[:, 0] == 0) & ~fg
        assert far.any()
        e0 = torch.zeros(C + t - 1, dtype=DTYPE)
        e0[0] = 1
        assert torch.equal(target.movedim(1, -1)[far], e0.expand(int(far.sum()), -1))


def test_compose_gradient_flows_to_generator_probs():
    q, label, mask = _data()
    q = q.clone().requires_grad_(True)
    w = torch.randn(2, K, 4, 6, dtype=DTYPE)
    (compose_context_target(q, label, C, mask) * w).sum().backward()
    # d y_hat[ctx channel of j] / d q_j = M on background voxels, 0 on foreground voxels
    bg = (label == 0).to(DTYPE)
    ctx = [0, *range(C, K)]
    expected = w[:, ctx] * mask * bg
    torch.testing.assert_close(q.grad, expected, rtol=0, atol=1e-12)


def test_context_label_target_is_one_hot_compose():
    _, label, mask = _data()
    ctx = torch.randint(0, T, label.shape, generator=torch.Generator().manual_seed(3))
    target = context_label_target(ctx, label, C, T, mask, dtype=DTYPE)
    q = F.one_hot(ctx[:, 0], T).movedim(-1, 1).to(DTYPE)
    torch.testing.assert_close(target, _reference_target(q, label, C, mask), rtol=0, atol=1e-12)
    hard = context_label_target(ctx, label, C, T)
    assert set(hard.unique().tolist()) == {0.0, 1.0}
    # background voxel with context j is one-hot on channel 0 (j = 0) or C + j - 1
    expected = torch.where(label > 0, label, torch.where(ctx > 0, ctx + C - 1, torch.zeros_like(ctx)))
    assert torch.equal(hard.argmax(1, keepdim=True), expected)


def test_compose_bad_input():
    q, label, mask = _data()
    with pytest.raises(ValueError, match="label value 3 is out of range"):
        compose_context_target(q, torch.full_like(label, 3), C)
    with pytest.raises(ValueError, match="label value -1"):
        compose_context_target(q, torch.full_like(label, -1), C)
    with pytest.raises(ValueError, match="label shape"):
        compose_context_target(q, label[..., :3], C)
    with pytest.raises(ValueError, match="integer class indices"):
        compose_context_target(q, label.to(DTYPE) + 0.5, C)
    with pytest.raises(ValueError, match="distance_mask shape"):
        compose_context_target(q, label, C, mask[:, :, :2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        compose_context_target(q, label, C, mask + 1)
    with pytest.raises(ValueError, match="probabilities"):
        compose_context_target(q * 2, label, C)
    with pytest.raises(ValueError, match="num_classes=1"):
        compose_context_target(q, label, 1)
    with pytest.raises(ValueError, match="num_context=0"):
        context_label_target(label, label, C, 0)
    with pytest.raises(ValueError, match="out of range for num_classes=2"):
        context_label_target(torch.full_like(label, 2), label, C, 2)


def test_targets_for_scales_match_pooled_reference():
    g = torch.Generator().manual_seed(5)
    q = torch.softmax(torch.randn(2, T, 8, 8, generator=g, dtype=DTYPE), 1)
    label = torch.randint(0, C, (2, 1, 8, 8), generator=g)
    mask = torch.rand(2, 1, 8, 8, generator=g, dtype=DTYPE)
    targets = context_targets_for_scales(q, label, C, [(8, 8), (4, 4), (2, 2)], mask)
    assert [tuple(t.shape) for t in targets] == [(2, K, 8, 8), (2, K, 4, 4), (2, K, 2, 2)]
    torch.testing.assert_close(targets[0], _reference_target(q, label, C, mask), rtol=0, atol=1e-12)
    for target, f in zip(targets[1:], (2, 4), strict=True):
        n = 8 // f
        # nearest-exact: output voxel i takes input voxel floor((i + 0.5) * f)
        pick = ((torch.arange(n) + 0.5) * f).floor().long()
        lab_s = label[:, :, pick][:, :, :, pick]
        q_s = q.reshape(2, T, n, f, n, f).mean((3, 5))  # average pooling
        m_s = mask.reshape(2, 1, n, f, n, f).amin((3, 5))  # min pooling
        torch.testing.assert_close(target, _reference_target(q_s, lab_s, C, m_s), rtol=0, atol=1e-12)
        torch.testing.assert_close(target.sum(1), torch.ones_like(target[:, 0]), rtol=0, atol=1e-12)


def test_deep_supervision_weights():
    assert deep_supervision_weights(1) == [1.0]
    np.testing.assert_allclose(deep_supervision_weights(4), np.array([1, 0.5, 0.25, 0]) / 1.75)
    np.testing.assert_allclose(deep_supervision_weights(3, drop_lowest=False), np.array([1, 0.5, 0.25]) / 1.75)
    with pytest.raises(ValueError, match="num_scales=0"):
        deep_supervision_weights(0)


def _manual_loss(logits, target, smooth=1e-5, lambda_ce=1.0, lambda_dice=1.0):
    """Soft-target CE (mean over voxels) + per-sample soft Dice over channels 1..K-1, written out."""
    log_p = logits - torch.logsumexp(logits, 1, keepdim=True)
    p = log_p.exp()
    ce = -(target * log_p).sum(1).flatten(1).mean(1)
    dices = []
    for k in range(1, logits.shape[1]):
        pk, yk = p[:, k].flatten(1), target[:, k].flatten(1)
        tp = (pk * yk).sum(1)
        fp = (pk * (1 - yk)).sum(1)
        fn = ((1 - pk) * yk).sum(1)
        dices.append((2 * tp + smooth) / (2 * tp + fp + fn + smooth))
    dice_loss = 1 - torch.stack(dices, 1).mean(1)
    return lambda_ce * ce + lambda_dice * dice_loss  # (B,)


@pytest.mark.parametrize("lambda_ce,lambda_dice", [(1.0, 1.0), (1.0, 0.0), (0.5, 2.0)])
def test_loss_matches_manual_value_and_gradient(lambda_ce, lambda_dice):
    q, label, mask = _data(spatial=(5, 4, 3))
    target = compose_context_target(q, label, C, mask)
    logits = 2 * torch.randn(2, K, 5, 4, 3, generator=torch.Generator().manual_seed(1), dtype=DTYPE)
    z1, z2 = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    value = ContextLabelLoss(lambda_ce=lambda_ce, lambda_dice=lambda_dice)(z1, target)
    expected = _manual_loss(z2, target, lambda_ce=lambda_ce, lambda_dice=lambda_dice).mean()
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    value.backward()
    expected.backward()
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-8, atol=1e-12)
    per_sample = ContextLabelLoss(lambda_ce=lambda_ce, lambda_dice=lambda_dice, reduction="none")(logits, target)
    torch.testing.assert_close(per_sample, _manual_loss(logits, target, 1e-5, lambda_ce, lambda_dice))
    total = ContextLabelLoss(lambda_ce=lambda_ce, lambda_dice=lambda_dice, reduction="sum")(logits, target)
    torch.testing.assert_close(total, per_sample.sum())


def test_loss_gradient_through_generator_probs():
    """The meta step differentiates the loss w.r.t. q through the composed target: compare with the manual chain."""
    q, label, mask = _data()
    logits = torch.randn(2, K, 4, 6, generator=torch.Generator().manual_seed(2), dtype=DTYPE)
    q1, q2 = q.clone().requires_grad_(True), q.clone().requires_grad_(True)
    ContextLabelLoss()(logits, compose_context_target(q1, label, C, mask)).backward()
    _manual_loss(logits, _reference_target_torch(q2, label, C, mask)).mean().backward()
    torch.testing.assert_close(q1.grad, q2.grad, rtol=1e-8, atol=1e-12)
    assert q1.grad.abs().sum() > 0


def _reference_target_torch(q, label, c, mask):
    """Differentiable reference: channel by channel with explicit masks."""
    bg = (label == 0).to(q.dtype)
    m = mask * bg + (1 - bg)
    chans = [m * q[:, :1] * bg + (1 - m)]
    chans += [(label == k).to(q.dtype) for k in range(1, c)]
    chans += [m * q[:, j : j + 1] * bg for j in range(1, q.shape[1])]
    return torch.cat(chans, 1)


def test_loss_deep_supervision_stacked_and_list():
    q, label, mask = _data(spatial=(8, 8))
    target = compose_context_target(q, label, C, mask)
    g = torch.Generator().manual_seed(4)
    stacked = torch.randn(2, 3, K, 8, 8, generator=g, dtype=DTYPE)  # DynUNet training output (B, 1 + 2, K, H, W)
    per_scale = [_manual_loss(stacked[:, s], target).mean() for s in range(3)]
    expected = (per_scale[0] * 1 + per_scale[1] * 0.5) / 1.5  # normalize([1, 1/2, 0])
    torch.testing.assert_close(ContextLabelLoss()(stacked, target), expected)
    all_scales = sum(w * v for w, v in zip([1, 0.5, 0.25], per_scale, strict=True)) / 1.75
    torch.testing.assert_close(ContextLabelLoss(drop_lowest_scale=False)(stacked, target), all_scales)
    custom = ContextLabelLoss(scale_weights=[1, 1, 2])(list(torch.unbind(stacked, 1)), target)
    torch.testing.assert_close(custom, (per_scale[0] + per_scale[1] + 2 * per_scale[2]) / 4)
    # lower-resolution heads with one target per scale
    logits = [torch.randn(2, K, n, n, generator=g, dtype=DTYPE) for n in (8, 4, 2)]
    targets = context_targets_for_scales(q, label, C, [(8, 8), (4, 4), (2, 2)], mask)
    expected = sum(
        w * _manual_loss(z, y).mean() for w, z, y in zip(deep_supervision_weights(3), logits, targets, strict=True)
    )
    torch.testing.assert_close(ContextLabelLoss()(logits, targets), expected)
    with pytest.warns(UserWarning, match="only the final output"):
        ContextLabelLoss()(stacked[:, :2], target)


def test_loss_accepts_integer_labels_as_one_hot():
    _, label, _ = _data()
    logits = torch.randn(2, K, 4, 6, generator=torch.Generator().manual_seed(6), dtype=DTYPE)
    onehot = F.one_hot(label[:, 0], K).movedim(-1, 1).to(DTYPE)
    torch.testing.assert_close(ContextLabelLoss()(logits, label), ContextLabelLoss()(logits, onehot))


def test_loss_bad_input():
    q, label, _ = _data(spatial=(8, 8))
    target = compose_context_target(q, label, C)
    logits = torch.randn(2, K, 8, 8, dtype=DTYPE)
    with pytest.raises(ValueError, match="does not match"):
        ContextLabelLoss()(logits[:, :4], target)
    with pytest.raises(ValueError, match="context_targets_for_scales"):
        ContextLabelLoss()([logits, logits, logits[..., :4, :4]], target)
    with pytest.raises(ValueError, match="2 targets for 3"):
        ContextLabelLoss()([logits] * 3, [target] * 2)
    with pytest.raises(ValueError, match="2 scale_weights for 3"):
        ContextLabelLoss(scale_weights=[1, 1])(torch.stack([logits] * 3, 1), target)
    with pytest.raises(ValueError, match="lambda_ce"):
        ContextLabelLoss(lambda_ce=-1)
    with pytest.raises(ValueError, match="scale_weights"):
        ContextLabelLoss(scale_weights=[0, 0])
    with pytest.raises(ValueError, match="input shape"):
        ContextLabelLoss()(logits[0, 0], target)


@pytest.mark.parametrize("eps", [1e-6, 0.0])
def test_foreground_bce_matches_formula(eps):
    g = torch.Generator().manual_seed(7)
    logits = 3 * torch.randn(2, K, 4, 5, generator=g, dtype=DTYPE)
    label = torch.randint(0, C, (2, 1, 4, 5), generator=g)
    p = torch.softmax(logits, 1)[:, 1:C]
    y = F.one_hot(label[:, 0], C).movedim(-1, 1)[:, 1:].to(DTYPE)
    if eps > 0:  # the authors' calcualte_loss_val
        bce = -(y * torch.log(p + eps) + (1 - y) * torch.log(1 - p + eps))
        expected = bce.sum() / (2 * 4 * 5)
    else:
        expected = F.binary_cross_entropy(p, y, reduction="sum") / (2 * 4 * 5)
    z = logits.clone().requires_grad_(True)
    value = context_foreground_bce(z, label, C, eps=eps)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    value.backward()
    assert z.grad[:, [0, *range(C, K)]].abs().sum() > 0  # context logits enter through the softmax
    stacked = torch.stack([logits, torch.zeros_like(logits)], 1)  # deep supervision: scale 0 is used
    torch.testing.assert_close(context_foreground_bce(stacked, label, C, eps=eps), expected, rtol=1e-10, atol=1e-12)
    per = context_foreground_bce(logits, label, C, eps=eps, reduction="none")
    assert per.shape == (2,)
    torch.testing.assert_close(per.mean(), expected, rtol=1e-10, atol=1e-12)


def test_foreground_bce_exact_mode_is_finite_for_extreme_logits():
    logits = torch.zeros(1, K, 2, 2, dtype=torch.float32)
    logits[:, 0] = 200.0  # p_fg underflows to 0 for a foreground voxel
    logits[:, 1, 0, 0] = 400.0  # p_1 = 1 on a background voxel
    label = torch.tensor([[[[0, 1], [2, 0]]]])
    z = logits.clone().requires_grad_(True)
    value = context_foreground_bce(z, label, C, eps=0.0)
    value.backward()
    assert torch.isfinite(value) and value > 50 and torch.isfinite(z.grad).all()


def test_foreground_bce_bad_input():
    logits = torch.randn(2, K, 4, 5)
    with pytest.raises(ValueError, match="label value 3"):
        context_foreground_bce(logits, torch.full((2, 1, 4, 5), 3), C)
    with pytest.raises(ValueError, match="label shape"):
        context_foreground_bce(logits, torch.zeros(2, 1, 4, 4, dtype=torch.long), C)
    with pytest.raises(ValueError, match="fewer than num_classes"):
        context_foreground_bce(logits[:, :2], torch.zeros(2, 1, 4, 5, dtype=torch.long), C)


def test_mask_restricts_the_loss_to_its_voxels():
    """``mask=``: the CE is the mean over the masked voxels and the Dice is computed on them alone (asymmetric
    mixup's ambiguous voxels); the logits elsewhere do not matter."""
    q, label, _ = _data(spatial=(5, 4, 3))
    target = compose_context_target(q, label, C)
    g = torch.Generator().manual_seed(2)
    logits = 2 * torch.randn(2, K, 5, 4, 3, generator=g, dtype=DTYPE)
    mask = (torch.rand(2, 1, 5, 4, 3, generator=g) > 0.4).to(DTYPE)
    loss = ContextLabelLoss(reduction="none")
    value = loss(logits, target, mask=mask)
    # by hand, on the masked voxels only (each sample's voxels gathered into a flat list)
    expected = []
    for b in range(2):
        keep = mask[b, 0].flatten() > 0
        z = logits[b].flatten(1)[:, keep][None, :, :, None]
        y = target[b].flatten(1)[:, keep][None, :, :, None]
        expected.append(_manual_loss(z, y)[0])
    torch.testing.assert_close(value, torch.stack(expected), rtol=1e-6, atol=1e-8)
    changed = logits + 50.0 * (1 - mask) * torch.randn(logits.shape, generator=g, dtype=DTYPE)
    torch.testing.assert_close(loss(changed, target, mask=mask), value, rtol=1e-6, atol=1e-8)
    assert not torch.allclose(loss(changed, target), loss(logits, target), rtol=1e-3)  # unmasked: they matter
    torch.testing.assert_close(loss(logits, target, mask=torch.ones_like(mask)), loss(logits, target))
    with pytest.raises(ValueError, match="mask shape"):
        loss(logits, target, mask=mask[..., :2])
