# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Symmetric and asymmetric large-margin / focal cross-entropy, with an optional focal-weighted soft Dice term.

Reference: Z. Li, K. Kamnitsas, B. Glocker, "Analyzing overfitting under class imbalance in neural networks for
image segmentation", IEEE Transactions on Medical Imaging 40(3), 2021 (Sections on the asymmetric large-margin
loss and the asymmetric focal loss; the authors' nnU-Net code: ``mND_Crossentropy.py`` and ``mSoftDiceLoss``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from .utils import check_input, check_nonnegative, check_rare_classes, check_reduction, prepare_mask, prepare_target

__all__ = ["MarginFocalLoss"]

#: the authors' epsilon inside ``log(p + eps)`` and ``(1 - p + eps) ** gamma`` ("without the small margin, it would
#: lead to nan after several epochs", ``mND_Crossentropy.py``).
AUTHORS_EPS = 1e-6


class MarginFocalLoss(_Loss):
    """Cross-entropy with a (rare-class) large margin and (common-class) focal weight, plus an optional soft Dice.

    One loss for the cross-entropy rows of Table II of Li, Kamnitsas, Glocker, "Analyzing overfitting under class
    imbalance in neural networks for image segmentation", IEEE TMI 40(3), 2021:

    ========================  ===========================================================
    configuration             arguments
    ========================  ===========================================================
    CE                        ``margin=0, gamma=0``
    large margin              ``margin=m`` (every class' true logit is shifted)
    asymmetric large margin   ``margin=m, rare_classes=(1,)`` (only rare true logits)
    focal                     ``gamma=g`` (every class is down-weighted)
    asymmetric focal          ``gamma=g, rare_classes=(1,)`` (only common classes)
    + Dice (nnU-Net)          ``lambda_dice=1``
    ========================  ===========================================================

    With ``r_c = 1`` for the rare classes (all classes when ``rare_classes is None``), per voxel ``i``::

        z'_ic  = z_ic - m * y_ic * r_c                     # margin on the true-class logit of rare classes
        p'_i   = softmax(z'_i)
        w_ic   = (1 - p'_ic + 1e-6) ** gamma  if the focal weight applies to c else 1
        CE     = -(1 / N) sum_i sum_c y_ic * w_ic * log(p'_ic + 1e-6)

    where the focal weight applies to every class when symmetric and to the non-rare classes (``r_c = 0``) when
    asymmetric: rare classes keep plain CE, so they are never switched off when already well classified. ``N`` is
    the number of counted voxels (all voxels, or those of ``mask``). The Dice term (the authors' nnU-Net
    ``mSoftDiceLoss``) is computed on the same margin-shifted softmax ``p'`` with focal-weighted false negatives::

        TP_c = sum_i p'_ic y_ic    FP_c = sum_i p'_ic (1 - y_ic)    FN_c = sum_i (1 - p'_ic) y_ic
        FN'_c = sum_i (1 - p'_ic) y_ic w_ic
        Dice' = mean_c (FP_c + FN'_c + s) / (2 TP_c + FP_c + FN_c + s)      # c >= 1 unless include_background

    summed over the batch and space (``batch=True``, nnU-Net's batch dice) or over space per sample. The total is
    ``CE + lambda_dice * Dice'``. With ``gamma = 0``, ``Dice' = 1 - 2 TP / (2 TP + FP + FN + s)``, i.e. MONAI's
    ``DiceLoss(smooth_nr=0, smooth_dr=s)``: unlike nnU-Net's plain soft Dice (``s`` in the numerator too), a class
    absent from the target (of the whole batch with ``batch=True``) scores 1 whatever the prediction, with no
    gradient, as in the authors' code.

    For soft targets (symmetric mixup) the formulas are applied as written, with ``y`` the target weights (the
    margin is ``m * y_ic * r_c``).

    Numerics, and where this matches or deviates from the authors' code:

    - ``log(p' + 1e-6)`` and ``(1 - p' + 1e-6) ** gamma`` match the authors exactly (``log_eps=1e-6``, the
      default). The epsilon caps the per-voxel loss at ``-log(1e-6) ~ 13.8`` and makes CE differ from
      :func:`torch.nn.functional.cross_entropy` by at most ``~1e-6 / p'``. ``log_eps=0`` switches to
      :func:`torch.log_softmax` (exact, standard CE; numerically stable for any logits). The focal weight always
      uses the authors' epsilon. The gradient flows through the focal weight (as in the authors' code, it is not
      detached).
    - half-precision inputs (AMP) are computed in float32: ``1e-6`` is below float16's resolution near 1.
    - with a ``mask``, CE is averaged over the counted voxels (the authors' mixup loss divides by all voxels of the
      batch: a per-batch constant factor, the fraction of counted voxels, apart); masked-out voxels add nothing to
      TP, FP or FN of the Dice term (as the authors' ``loss_mask``).
    - the rare-class CE weight of the authors' nnU-Net CLI (``--weights``) is not included.

    Args:
        margin: ``m >= 0``, subtracted from the true-class logit (of rare classes when ``rare_classes`` is given).
            Suggested 0.2-2.0; the authors' nnU-Net default is 1.0, their DeepMedic BRATS config 0.2.
        gamma: focal exponent ``>= 0`` (0: no focal weight). Suggested 2-6; the authors' default is 4.
        rare_classes: indices of the rare classes (e.g. ``(1,)``, or ``(2,)`` for tumour in kidney+tumour), or
            ``None`` for the symmetric (original) loss. Indices must be ``>= 0`` and ``< C`` (checked at forward).
        lambda_dice: weight of the Dice term (0: cross-entropy only; the authors' nnU-Net runs use 1).
        include_background: whether channel 0 enters the Dice term (the cross-entropy always uses all classes).
        to_onehot_y: whether a ``(B, 1, *spatial)`` target holds integer labels to convert to one-hot.
        reduction: ``"mean"`` (mean CE over counted voxels + ``lambda_dice`` * mean Dice term over classes, and
            samples if ``batch=False``), ``"sum"`` (sums instead of means), or ``"none"`` (the per-voxel CE map
            ``(B, 1, *spatial)``, zero at masked-out voxels; only with ``lambda_dice=0``).
        smooth: ``s`` of the Dice term (nnU-Net: 1e-5).
        batch: sum the Dice statistics over the batch before dividing (nnU-Net ``batch_dice=True``).
        log_eps: the epsilon in ``log(p' + eps)``; 1e-6 matches the authors, 0 uses ``log_softmax``.

    Shapes:
        ``input``: ``(B, C, *spatial)`` logits, ``C >= 2``. ``target``: ``(B, 1, *spatial)`` labels (with
        ``to_onehot_y``) or ``(B, C, *spatial)`` one-hot / soft targets. ``mask``: ``(B, 1, *spatial)``, nonzero
        for voxels that count. Output: a scalar, or ``(B, 1, *spatial)`` for ``reduction="none"``.

    Raises:
        ValueError: ``margin < 0``, ``gamma < 0``, ``lambda_dice < 0``, ``smooth < 0``, ``log_eps < 0``, a negative
            or empty ``rare_classes``, ``reduction="none"`` with a Dice term; at forward: a rare class ``>= C``,
            labels outside ``[0, C)``, a target or mask whose shape does not match the input.

    Example::

        loss = MarginFocalLoss(gamma=4.0, rare_classes=(1,), lambda_dice=1.0)   # asymmetric focal + Dice
        value = loss(logits, labels)            # logits (B, 2, H, W, D), labels (B, 1, H, W, D)
    """

    def __init__(
        self,
        margin: float = 0.0,
        gamma: float = 0.0,
        rare_classes: int | Sequence[int] | None = None,
        lambda_dice: float = 0.0,
        include_background: bool = False,
        to_onehot_y: bool = True,
        reduction: LossReduction | str = LossReduction.MEAN,
        smooth: float = 1e-5,
        batch: bool = True,
        log_eps: float = AUTHORS_EPS,
    ) -> None:
        name = type(self).__name__
        super().__init__(reduction=check_reduction(reduction, name))
        self.margin = check_nonnegative(margin, "margin", name)
        self.gamma = check_nonnegative(gamma, "gamma", name)
        self.lambda_dice = check_nonnegative(lambda_dice, "lambda_dice", name)
        self.smooth = check_nonnegative(smooth, "smooth", name)
        self.log_eps = check_nonnegative(log_eps, "log_eps", name)
        self.rare_classes = check_rare_classes(rare_classes, name=name)
        if self.reduction == LossReduction.NONE.value and self.lambda_dice > 0:
            raise ValueError(
                f"{name}: reduction='none' returns the per-voxel cross-entropy and cannot hold the Dice term "
                f"(lambda_dice={self.lambda_dice}); use 'mean' or 'sum', or lambda_dice=0."
            )
        self.include_background = bool(include_background)
        self.to_onehot_y = bool(to_onehot_y)
        self.batch = bool(batch)

    def extra_repr(self) -> str:
        return (
            f"margin={self.margin}, gamma={self.gamma}, rare_classes={self.rare_classes}, "
            f"lambda_dice={self.lambda_dice}, reduction={self.reduction!r}"
        )

    def _rare_indicator(self, input: torch.Tensor) -> torch.Tensor | None:
        """``r`` as a ``(1, C, 1, ...)`` 0/1 tensor, or ``None`` when symmetric."""
        num_classes = int(input.shape[1])
        if self.rare_classes is None:
            return None
        out_of_range = [c for c in self.rare_classes if c >= num_classes]
        if out_of_range:
            raise ValueError(
                f"{type(self).__name__}: rare_classes={self.rare_classes} holds class {out_of_range[0]}, out of "
                f"range for C={num_classes} input channels."
            )
        r = torch.zeros(num_classes, dtype=input.dtype, device=input.device)
        r[list(self.rare_classes)] = 1.0
        return r.view(1, num_classes, *([1] * (input.ndim - 2)))

    def forward(self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Compute the loss.

        Args:
            input: ``(B, C, *spatial)`` logits (no softmax applied).
            target: ``(B, 1, *spatial)`` integer labels (with ``to_onehot_y``) or ``(B, C, *spatial)`` one-hot /
                soft targets.
            mask: optional ``(B, 1, *spatial)``; voxels where it is zero count in neither the CE nor the Dice term.

        Returns:
            A scalar (``reduction`` "mean" / "sum") or the ``(B, 1, *spatial)`` CE map (``"none"``).
        """
        name = type(self).__name__
        check_input(input, name)
        if input.dtype in (torch.float16, torch.bfloat16):
            input = input.float()
        r = self._rare_indicator(input)
        y = prepare_target(input, target, self.to_onehot_y, name)
        m = prepare_mask(input, mask, name)

        # z' = z - m * y * r (r = 1 for all classes when symmetric)
        logits = input
        if self.margin > 0:
            shift = y if r is None else y * r
            logits = input - self.margin * shift

        if self.log_eps > 0:
            p = torch.softmax(logits, dim=1)
            log_p = torch.log(p + self.log_eps)
        else:
            log_p = torch.log_softmax(logits, dim=1)
            p = log_p.exp() if (self.lambda_dice > 0 or self.gamma > 0) else None

        # focal weight w (None: all ones)
        w = None
        if self.gamma > 0:
            focal = (1.0 - p + AUTHORS_EPS).pow(self.gamma)
            w = focal if r is None else focal.masked_fill(r > 0, 1.0)

        weighted_y = y if w is None else y * w
        ce = -(weighted_y * log_p).sum(dim=1, keepdim=True)  # (B, 1, *spatial)
        if m is not None:
            ce = ce * m

        if self.reduction == LossReduction.NONE.value:
            return ce
        if self.reduction == LossReduction.SUM.value:
            ce_total = ce.sum()
        else:
            count = m.sum() if m is not None else torch.tensor(float(ce.numel()), dtype=ce.dtype, device=ce.device)
            ce_total = ce.sum() / count.clamp_min(1.0)
        if self.lambda_dice == 0:
            return ce_total

        dice = self._dice_term(p, y, weighted_y, m)
        dice_total = dice.sum() if self.reduction == LossReduction.SUM.value else dice.mean()
        return ce_total + self.lambda_dice * dice_total

    def _dice_term(
        self, p: torch.Tensor, y: torch.Tensor, weighted_y: torch.Tensor, m: torch.Tensor | None
    ) -> torch.Tensor:
        """nnU-Net ``mSoftDiceLoss``: ``(FP + FN' + s) / (2 TP + FP + FN + s)`` per class (and sample)."""
        axes = list(range(2, p.ndim))
        if self.batch:
            axes = [0, *axes]
        focal = weighted_y is not y
        if m is not None:
            p = p * m
            y = y * m
            weighted_y = weighted_y * m if focal else y
        tp = (p * y).sum(dim=axes)
        fp = p.sum(dim=axes) - tp  # sum p (1 - y)
        fn = y.sum(dim=axes) - tp  # sum (1 - p) y
        if focal:
            fn_w = weighted_y.sum(dim=axes) - (p * weighted_y).sum(dim=axes)  # sum (1 - p) y w
        else:
            fn_w = fn
        dice = (fp + fn_w + self.smooth) / (2 * tp + fp + fn + self.smooth)
        if not self.include_background:
            dice = dice[..., 1:]
        return dice
