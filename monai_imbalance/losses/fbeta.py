# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Soft F-beta loss (F1 = Dice, F2 / F4 / F8 weight false negatives more), as MONAI's Tversky loss.

Reference: the F-beta baselines of Z. Li, K. Kamnitsas, B. Glocker, "Analyzing overfitting under class imbalance in
neural networks for image segmentation", IEEE Transactions on Medical Imaging 40(3), 2021 (not in the authors'
released code; this is the standard form).
"""

from __future__ import annotations

import math

import torch
from monai.losses import TverskyLoss
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from .utils import check_input, check_nonnegative, check_reduction, prepare_mask, prepare_target

__all__ = ["FBetaLoss"]


class FBetaLoss(_Loss):
    """Soft F-beta loss ``1 - ((1 + b^2) TP + s) / ((1 + b^2) TP + b^2 FN + FP + s)`` per class.

    With ``p`` the softmax probabilities and ``y`` the one-hot target, ``TP_c = sum_i p_ic y_ic``,
    ``FP_c = sum_i p_ic (1 - y_ic)``, ``FN_c = sum_i (1 - p_ic) y_ic`` (over the batch and space with ``batch=True``,
    over space per sample otherwise); the loss is the mean over classes (channel 0 excluded unless
    ``include_background``) and samples. ``beta = 1`` is the soft Dice loss; ``beta = 2, 4, 8`` are the F2 / F4 / F8
    baselines of Li, Kamnitsas, Glocker, "Analyzing overfitting under class imbalance in neural networks for image
    segmentation", IEEE TMI 40(3), 2021, which penalise false negatives ``beta^2`` times as much as false positives.

    This is exactly :class:`monai.losses.TverskyLoss` (with its original, non-decoupled ``TP / FP / FN``) with
    ``alpha = 1 / (1 + b^2)`` (FP weight), ``beta = b^2 / (1 + b^2)`` (FN weight) and both smoothing terms
    ``s / (1 + b^2)``: dividing the numerator and denominator of the F-beta ratio by ``1 + b^2`` gives the Tversky
    ratio ``(TP + s') / (TP + alpha FP + beta FN + s')``. The smoothing must be rescaled: Tversky with the same ``s``
    would be a different (more smoothed) loss. So this class validates the inputs, applies the softmax, one-hot and
    mask, and delegates to a ``TverskyLoss``. Soft targets use the same formulas with ``y`` the target weights (not
    MONAI's ``soft_label`` L1 formulation).

    Args:
        beta: ``b > 0``; 1 is Dice, larger values weight false negatives more.
        include_background: whether channel 0 enters the mean.
        to_onehot_y: whether a ``(B, 1, *spatial)`` target holds integer labels to convert to one-hot.
        softmax: apply a softmax over channels to ``input`` (``False``: ``input`` already holds probabilities).
        smooth: ``s`` in the F-beta ratio (added to the numerator and the denominator).
        batch: sum the statistics over the batch before dividing (nnU-Net's batch dice).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (the ``(C',)`` or ``(B, C')`` per-class losses, as
            :class:`monai.losses.TverskyLoss` returns them).

    Shapes:
        ``input``: ``(B, C, *spatial)``, ``C >= 2``. ``target``: ``(B, 1, *spatial)`` labels (with ``to_onehot_y``)
        or ``(B, C, *spatial)`` one-hot / soft targets. ``mask``: ``(B, 1, *spatial)``, nonzero for voxels that
        count (masked-out voxels add nothing to TP, FP or FN).

    Raises:
        ValueError: ``beta <= 0``, ``smooth < 0``; at forward: labels outside ``[0, C)``, a target or mask whose
            shape does not match the input.
    """

    def __init__(
        self,
        beta: float = 1.0,
        include_background: bool = False,
        to_onehot_y: bool = True,
        softmax: bool = True,
        smooth: float = 1e-5,
        batch: bool = True,
        reduction: LossReduction | str = LossReduction.MEAN,
    ) -> None:
        name = type(self).__name__
        super().__init__(reduction=check_reduction(reduction, name))
        beta = float(beta)
        if not (beta > 0 and math.isfinite(beta)):
            raise ValueError(f"{name}: beta must be a finite number > 0, got beta={beta}.")
        smooth = check_nonnegative(smooth, "smooth", name)
        self.beta = beta
        self.smooth = smooth
        self.include_background = bool(include_background)
        self.to_onehot_y = bool(to_onehot_y)
        self.softmax = bool(softmax)
        self.batch = bool(batch)
        b2 = beta * beta
        self.tversky = TverskyLoss(
            include_background=self.include_background,
            to_onehot_y=False,
            softmax=False,
            alpha=1.0 / (1.0 + b2),
            beta=b2 / (1.0 + b2),
            smooth_nr=smooth / (1.0 + b2),
            smooth_dr=smooth / (1.0 + b2),
            batch=self.batch,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return f"beta={self.beta}, smooth={self.smooth}, batch={self.batch}, reduction={self.reduction!r}"

    def forward(self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Compute the loss.

        Args:
            input: ``(B, C, *spatial)`` logits (``softmax=True``) or probabilities.
            target: ``(B, 1, *spatial)`` integer labels (with ``to_onehot_y``) or ``(B, C, *spatial)`` one-hot /
                soft targets.
            mask: optional ``(B, 1, *spatial)``; voxels where it is zero are left out.
        """
        name = type(self).__name__
        check_input(input, name)
        if input.dtype in (torch.float16, torch.bfloat16):
            input = input.float()
        y = prepare_target(input, target, self.to_onehot_y, name)
        m = prepare_mask(input, mask, name)
        p = torch.softmax(input, dim=1) if self.softmax else input
        if m is not None:
            p = p * m
            y = y * m
        return self.tversky(p, y)
