# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The losses of learned augmentation: the TRA training loss per patch and the foreground Dice of TRA and TEA.

JCSAugment: Li, Kamnitsas, Dou, Qin, Glocker, "Joint optimization of class-specific training- and test-time data
augmentation in segmentation", IEEE TMI 2023, method section. Used by
:class:`~monai_imbalance.engines.TrainingPolicyLearner` (training loss, meta-validation loss) and
:class:`~monai_imbalance.engines.TestTimePolicyLearner` (the TEA loss).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["foreground_dice_loss", "per_sample_ce_dice"]


def per_sample_ce_dice(pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """The TRA training loss per patch: cross-entropy + soft Dice over the foreground classes (JCSAugment, TRA).

    Args:
        pred: logits ``(B, C, *spatial)``.
        label: class indices ``(B, 1, *spatial)``.

    Returns:
        ``(B,)``: mean voxel CE of each patch plus ``1 - mean_{c >= 1} Dice_c`` of each patch (MONAI ``DiceLoss``,
        softmax, background excluded, ``reduction="none"``).
    """
    from monai.losses import DiceLoss

    target = label.long()
    ce = F.cross_entropy(pred, target[:, 0], reduction="none").flatten(1).mean(1)
    dice = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, reduction="none")(pred, target)
    return ce + dice.flatten(1).mean(1)


def foreground_dice_loss(pred: torch.Tensor, label: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Batch soft Dice loss over all foreground classes, optionally restricted to a mask (JCSAugment's TEA loss).

    ``Dice_fg`` of the TEA loss and of the meta-validation loss; the authors' code used class 1 only.

    Args:
        pred: logits ``(B, C, *spatial)``.
        label: class indices ``(B, 1, *spatial)``.
        mask: ``(B, 1, *spatial)`` or ``(1, 1, *spatial)``, voxels to count (``None``: all).

    Returns:
        a scalar, ``1 - mean_{c >= 1} Dice_c`` with the sums taken over the batch (MONAI ``MaskedDiceLoss``,
        ``batch=True``).
    """
    from monai.losses import DiceLoss, MaskedDiceLoss

    if mask is None:
        return DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)(pred, label.long())
    loss = MaskedDiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)
    return loss(pred, label.long(), mask=mask)
