# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The losses of learned augmentation (JCSAugment, Li et al., IEEE TMI 2023), checked against hand-written formulas."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from monai_imbalance.engines import foreground_dice_loss, per_sample_ce_dice

SHAPE = (8, 8, 8)


def test_per_sample_ce_dice_by_hand():
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(2, 3, *SHAPE, generator=g)
    label = torch.randint(0, 3, (2, 1, *SHAPE), generator=g)
    p = torch.softmax(pred, 1)
    t = F.one_hot(label[:, 0], 3).movedim(-1, 1).float()
    ce = -(t * torch.log_softmax(pred, 1)).sum(1).flatten(1).mean(1)
    inter, denom = (p * t).flatten(2).sum(2), (p + t).flatten(2).sum(2)
    dice = 1 - (2 * inter + 1e-5) / (denom + 1e-5)  # (B, C)
    torch.testing.assert_close(per_sample_ce_dice(pred, label), ce + dice[:, 1:].mean(1))


def test_foreground_dice_loss_by_hand_with_and_without_a_mask():
    g = torch.Generator().manual_seed(2)
    pred = torch.randn(2, 3, *SHAPE, generator=g)
    label = torch.randint(0, 3, (2, 1, *SHAPE), generator=g)
    p = torch.softmax(pred, 1)
    t = F.one_hot(label[:, 0], 3).movedim(-1, 1).float()
    mask = (torch.rand(1, 1, *SHAPE, generator=g) > 0.3).float()
    for m in (torch.ones_like(mask), mask):
        inter_b, denom_b = (p * t * m).sum((0, 2, 3, 4)), ((p + t) * m).sum((0, 2, 3, 4))
        expected = 1 - ((2 * inter_b + 1e-5) / (denom_b + 1e-5))[1:].mean()  # batch Dice, every foreground class
        given = None if m is not mask else mask.expand(2, -1, -1, -1, -1)
        torch.testing.assert_close(foreground_dice_loss(pred, label, given), expected)
