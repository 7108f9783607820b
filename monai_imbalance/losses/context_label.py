# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Context-label targets and losses of CoLab (context label learning).

Li, Kamnitsas, Ouyang, Chen, Glocker, "Context label learning: improving background class representations in semantic
segmentation", IEEE TMI 2023 (method section: context labels, the segmenter's loss and the meta-objective; the authors'
``common.py::calculate_loss`` and ``calcualte_loss_val``):

- :func:`compose_context_target`: generator probabilities ``q`` (``t`` channels) + ground truth (``C`` classes)
  + optional distance mask ``M`` -> the ``K = C + t - 1`` channel soft target ``y_hat``.
- :func:`context_label_target`: the same from a hard context-label map (k-means, dilated rings, human-defined
  context: :mod:`monai_imbalance.transforms.context_labels`).
- :func:`context_targets_for_scales`: one target per deep-supervision scale (labels nearest-resized, ``q``
  average-pooled, ``M`` min-pooled), as the authors' nnU-Net code.
- :class:`ContextLabelLoss`: soft-target cross-entropy + soft Dice over the ``K`` channels, per deep-supervision scale.
- :func:`context_foreground_bce`: the meta-objective, the BCE of the foreground channels (softmax over all ``K``)
  against the original labels.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from monai.networks.utils import one_hot
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from monai_imbalance.networks.context_channels import check_num_classes, check_num_context
from monai_imbalance.utils import highest_resolution

from .utils import check_input, check_nonnegative, check_reduction, prepare_target

__all__ = [
    "ContextLabelLoss",
    "compose_context_target",
    "context_foreground_bce",
    "context_label_target",
    "context_targets_for_scales",
    "deep_supervision_weights",
]


def _class_labels(
    label: torch.Tensor, batch: int, spatial: tuple[int, ...], num_classes: int, name: str
) -> torch.Tensor:
    """Validate a ``(B, 1, *spatial)`` class-index map and return it as ``long``."""
    expected = (batch, 1, *spatial)
    if tuple(label.shape) != expected:
        raise ValueError(f"{name}: label shape {tuple(label.shape)} does not match: expected {expected}.")
    if label.dtype == torch.bool:
        label = label.to(torch.uint8)
    elif label.is_floating_point() and bool(torch.any(label != torch.round(label))):
        bad = label[label != torch.round(label)].flatten()[0].item()
        raise ValueError(f"{name}: label must hold integer class indices, found label value {bad}.")
    if label.numel() > 0:
        lo, hi = (v.item() for v in torch.aminmax(label))
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"{name}: label value {bad:g} is out of range for num_classes={num_classes} "
                f"(labels must be in [0, {num_classes - 1}])."
            )
    return label.long()


def _check_probs(probs: torch.Tensor, name: str) -> None:
    with torch.no_grad():
        tol = 1e-2 if probs.dtype in (torch.float16, torch.bfloat16) else 1e-3
        low = probs.min().item() if probs.numel() else 0.0
        sums = probs.sum(dim=1)
        err = (sums - 1).abs().max().item() if sums.numel() else 0.0
    if low < -tol or not err <= tol:
        raise ValueError(
            f"{name}: generator_probs must be probabilities over its t channels (softmax of the generator logits): "
            f"found min {low:.3g} and a channel sum off 1 by {err:.3g}."
        )


def compose_context_target(
    generator_probs: torch.Tensor,
    label: torch.Tensor,
    num_classes: int,
    distance_mask: torch.Tensor | None = None,
    check_probs: bool = True,
) -> torch.Tensor:
    """Compose the ``K = C + t - 1`` channel soft target of CoLab (its context labels).

    With ``q = softmax(g_phi(x))`` (``t`` channels) and the labels ``y`` (``C`` classes)::

        y_tilde = concat(q_0, onehot(y)_{1..C-1}, q_1 .. q_{t-1})     # layout [ctx_0, FG_1.., ctx_1..]
        y_tilde_i = e_c                   for voxels with y_i = c >= 1  (foreground keeps its hard label)
        y_hat = M * y_tilde + (1 - M) * e_0,   M_i = 1 on foreground voxels

    so background voxels get the generator's soft context labels (far background, ``M ~ 0``, becomes hard context
    0) and foreground voxels are one-hot on their class. Every row sums to ``sum_j q_j = 1``. Differentiable with
    respect to ``generator_probs`` (the meta step differentiates through it); nothing is detached here.

    Args:
        generator_probs: ``(B, t, *spatial)`` probabilities ``q`` (the softmax of the generator; one-hot for hard
            context labels, see :func:`context_label_target`).
        label: ``(B, 1, *spatial)`` integer class indices in ``[0, C)`` (the original labels).
        num_classes: ``C >= 2``.
        distance_mask: optional ``(B, 1, *spatial)`` ``M`` in ``[0, 1]``
            (:class:`~monai_imbalance.transforms.ContextDistanceMaskd`); ``None`` means ``M = 1`` (no restriction).
        check_probs: check that ``generator_probs`` is a distribution over its channels (non-negative, summing to 1
            within 1e-3); one small reduction, no gradient.

    Returns:
        ``(B, K, *spatial)`` target of ``generator_probs``' dtype.

    Raises:
        ValueError: ``C < 2``; shapes that do not match; label values outside ``[0, C)`` or not integers; a mask
            outside ``[0, 1]``; ``generator_probs`` not a distribution (with ``check_probs``).
    """
    name = "compose_context_target"
    c = check_num_classes(num_classes, name)
    q = generator_probs
    if q.ndim < 3 or not q.is_floating_point():
        raise ValueError(
            f"{name}: generator_probs must be a floating (B, t, *spatial) tensor, got shape {tuple(q.shape)} "
            f"and dtype {q.dtype}."
        )
    check_num_context(q.shape[1], name)
    batch, spatial = int(q.shape[0]), tuple(int(s) for s in q.shape[2:])
    lab = _class_labels(label, batch, spatial, c, name)
    if check_probs:
        _check_probs(q, name)
    background = (lab == 0).to(q.dtype)  # (B, 1, *S)
    foreground = one_hot(lab, num_classes=c, dim=1, dtype=q.dtype)[:, 1:]  # (B, C-1, *S)
    ctx = q * background
    target = torch.cat([ctx[:, :1], foreground, ctx[:, 1:]], dim=1)
    if distance_mask is None:
        return target
    expected = (batch, 1, *spatial)
    if tuple(distance_mask.shape) != expected:
        raise ValueError(
            f"{name}: distance_mask shape {tuple(distance_mask.shape)} does not match: expected {expected}."
        )
    m = distance_mask.to(device=q.device, dtype=q.dtype)
    if m.numel() and (m.min().item() < 0 or m.max().item() > 1):
        raise ValueError(
            f"{name}: distance_mask must lie in [0, 1], got values in [{m.min().item():.3g}, {m.max().item():.3g}]."
        )
    m = m * background + (1 - background)  # M = 1 on foreground voxels
    return torch.cat([m * target[:, :1] + (1 - m), m * target[:, 1:]], dim=1)


def context_label_target(
    context_label: torch.Tensor,
    label: torch.Tensor,
    num_classes: int,
    num_context: int,
    distance_mask: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The ``K``-channel target from a hard context-label map (k-means, dilated rings, human-defined context).

    ``compose_context_target(onehot(context_label, t), label, C, distance_mask)``: background voxels are one-hot
    on their context class, foreground voxels on their class (the context label of foreground voxels is ignored).

    Args:
        context_label: ``(B, 1, *spatial)`` integer context classes in ``[0, t)``.
        label: ``(B, 1, *spatial)`` class indices in ``[0, C)``.
        num_classes: ``C >= 2``.
        num_context: ``t >= 1``.
        distance_mask: optional ``(B, 1, *spatial)`` ``M`` in ``[0, 1]``.
        dtype: floating dtype of the target.

    Returns:
        ``(B, C + t - 1, *spatial)`` one-hot (soft where ``0 < M < 1``) target.

    Raises:
        ValueError: ``t < 1``; context labels outside ``[0, t)``; the errors of :func:`compose_context_target`.
    """
    name = "context_label_target"
    t = check_num_context(num_context, name)
    if context_label.ndim < 3:
        raise ValueError(f"{name}: context_label must be (B, 1, *spatial), got shape {tuple(context_label.shape)}.")
    ctx = _class_labels(
        context_label, int(context_label.shape[0]), tuple(context_label.shape[2:]), t, f"{name} (context_label)"
    )
    q = one_hot(ctx, num_classes=t, dim=1, dtype=dtype)
    return compose_context_target(q, label, num_classes, distance_mask, check_probs=False)


_AVG_POOL = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
_MAX_POOL = {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d}


def context_targets_for_scales(
    generator_probs: torch.Tensor,
    label: torch.Tensor,
    num_classes: int,
    scale_shapes: Sequence[Sequence[int]],
    distance_mask: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """One composed target per deep-supervision scale, as the authors' nnU-Net code builds them.

    At each scale the labels are resized by nearest neighbour (``"nearest-exact"``, as
    :class:`monai.losses.DeepSupervisionLoss`), the generator probabilities are average-pooled (rows still sum to 1)
    and the distance mask is min-pooled (``-maxpool(-M)``: a coarse voxel is restricted as soon as one of its fine
    voxels is), then :func:`compose_context_target` composes them (so ``M = 1`` again on the coarse foreground).
    Pooling is adaptive, so integer ratios (2, 4, ... as in U-Nets) give exactly the authors' ``avg_pool`` /
    ``max_pool`` with kernel = stride = ratio. A scale equal to the input shape gets the full-resolution target.

    Only needed for networks whose deep-supervision outputs have lower resolution (a list of tensors). MONAI's
    :class:`~monai.networks.nets.DynUNet` upsamples its deep-supervision heads to full resolution, so its stacked
    output uses the one full-resolution target.

    Args:
        generator_probs: ``(B, t, *spatial)`` probabilities (1 to 3 spatial dims).
        label: ``(B, 1, *spatial)`` class indices in ``[0, C)``.
        num_classes: ``C >= 2``.
        scale_shapes: spatial shape of each scale's output, e.g. ``[(32, 32, 32), (16, 16, 16), (8, 8, 8)]``.
        distance_mask: optional ``(B, 1, *spatial)`` mask ``M``.

    Returns:
        a list of ``(B, K, *scale_shape)`` targets, in the order of ``scale_shapes``.

    Raises:
        ValueError: a scale shape of the wrong length or non-positive, and the errors of
            :func:`compose_context_target`.
    """
    name = "context_targets_for_scales"
    spatial = tuple(int(s) for s in generator_probs.shape[2:])
    nd = len(spatial)
    if nd not in _AVG_POOL:
        raise ValueError(
            f"{name}: 1 to 3 spatial dims are supported, got generator_probs {tuple(generator_probs.shape)}."
        )
    out = []
    for shape in scale_shapes:
        shape = tuple(int(s) for s in shape)
        if len(shape) != nd or min(shape) < 1:
            raise ValueError(f"{name}: scale shape {shape} must have {nd} positive sizes (input spatial {spatial}).")
        if shape == spatial:
            out.append(compose_context_target(generator_probs, label, num_classes, distance_mask))
            continue
        if tuple(label.shape[2:]) != spatial:
            raise ValueError(f"{name}: label shape {tuple(label.shape)} does not match the spatial shape {spatial}.")
        lab = F.interpolate(label.float(), size=shape, mode="nearest-exact").round().long()
        q = _AVG_POOL[nd](generator_probs, shape)
        m = None
        if distance_mask is not None:
            if tuple(distance_mask.shape[2:]) != spatial:
                raise ValueError(
                    f"{name}: distance_mask shape {tuple(distance_mask.shape)} does not match the spatial shape "
                    f"{spatial}."
                )
            m = -_MAX_POOL[nd](-distance_mask.to(generator_probs.dtype), shape)
        out.append(compose_context_target(q, lab, num_classes, m, check_probs=False))
    return out


def deep_supervision_weights(num_scales: int, drop_lowest: bool = True) -> list[float]:
    """nnU-Net v1's deep-supervision weights: ``normalize([1, 1/2, 1/4, ...])`` with the lowest scale set to 0.

    ``drop_lowest`` zeroes the last (lowest-resolution) scale's weight when there are at least 2 scales, as nnU-Net v1
    and the authors' code do (``w = normalize([1, 1/2, 1/4, 0])`` for 4 scales). One scale gets ``[1.0]``.
    """
    n = int(num_scales)
    if n < 1:
        raise ValueError(f"deep_supervision_weights: num_scales must be >= 1, got num_scales={num_scales}.")
    w = [0.5**i for i in range(n)]
    if drop_lowest and n > 1:
        w[-1] = 0.0
    total = sum(w)
    return [x / total for x in w]


class ContextLabelLoss(_Loss):
    """Soft-target cross-entropy + soft Dice over the ``K = C + t - 1`` channels of a CoLab segmenter.

    For each deep-supervision scale ``s`` with logits ``z`` and soft target ``y`` (both ``(B, K, *spatial)``),
    per sample ``b``::

        CE_b   = -(1 / N) sum_i sum_k y_ik log softmax(z)_ik                   # N voxels of the sample
        Dice_b = 1 - mean_{k=1..K-1} (2 TP_k + s) / (2 TP_k + FP_k + FN_k + s)   # channel 0 (ctx_0) excluded
        L_b    = sum_s w_s (lambda_ce * CE_b + lambda_dice * Dice_b)

    with ``TP_k = sum_i p_ik y_ik``, ``FP_k = sum_i p_ik (1 - y_ik)``, ``FN_k = sum_i (1 - p_ik) y_ik`` per sample
    (the authors' ``SoftDiceLoss(batch_dice=False)``, soft targets allowed), ``s = 1e-5``. The Dice part is
    :class:`monai.losses.DiceLoss` (``include_background=False``, ``batch=False``, ``smooth_nr = smooth_dr = s``) on the
    softmax; the CE part is :func:`torch.nn.functional.cross_entropy` with probability targets.

    Differences from the authors' code, none of which changes a gradient: their Dice term is ``-Dice`` (here
    ``1 - Dice``, a constant ``lambda_dice`` apart); their CE is ``log(p + 1e-32)`` (here the exact ``log_softmax``,
    which differs only where ``p`` underflows).

    Deep supervision: ``input`` may be a ``(B, K, *spatial)`` tensor (one scale), a stacked
    ``(B, S, K, *spatial)`` tensor as :class:`~monai.networks.nets.DynUNet` returns in training mode with
    ``deep_supervision=True`` (all heads upsampled to full resolution; scale 0 is the final output), or a list of
    ``(B, K, *spatial_s)`` tensors, highest resolution first. The default scale weights are
    :func:`deep_supervision_weights` (``normalize([1, 1/2, 1/4, ...])`` with the lowest scale weighted 0, like nnU-Net
    v1; ``drop_lowest_scale=False`` keeps it); ``scale_weights`` overrides them (normalised to sum 1). Scales of
    weight 0 are not computed. nnU-Net's dropped scale is the coarsest decoder output, which a DynUNet only returns
    with the maximal ``deep_supr_num = len(strides) - 2``; with fewer heads prefer ``drop_lowest_scale=False``
    (with 2 scales, dropping the lowest leaves the final output alone: a warning says so).

    Args:
        lambda_ce: weight of the cross-entropy term (``>= 0``).
        lambda_dice: weight of the soft Dice term (``>= 0``).
        smooth: ``s`` of the Dice ratio.
        scale_weights: explicit per-scale weights (length = number of scales), or ``None``.
        drop_lowest_scale: with default weights, weight the lowest scale 0 (nnU-Net v1).
        reduction: ``"mean"`` (over samples), ``"sum"`` (over samples) or ``"none"`` (the ``(B,)`` per-sample
            losses, e.g. for a per-sample look-ahead step).

    Shapes:
        ``input``: as above, ``K >= 2``. ``target``: ``(B, K, *spatial)`` soft targets
        (:func:`compose_context_target`), used at every scale of full resolution; or a list with one target per
        scale (:func:`context_targets_for_scales`); or ``(B, 1, *spatial)`` integer labels in ``[0, K)`` (converted to
        one-hot: with ``t > 1`` this is the authors' "vanilla" mode, background all context 0).

    Raises:
        ValueError: negative weights or ``smooth``; at forward: a target whose shape does not match a scale (use
            :func:`context_targets_for_scales` for lower-resolution scales), a number of targets or scale weights
            that differs from the number of scales.
    """

    def __init__(
        self,
        lambda_ce: float = 1.0,
        lambda_dice: float = 1.0,
        smooth: float = 1e-5,
        scale_weights: Sequence[float] | None = None,
        drop_lowest_scale: bool = True,
        reduction: LossReduction | str = LossReduction.MEAN,
    ) -> None:
        name = type(self).__name__
        super().__init__(reduction=check_reduction(reduction, name))
        self.lambda_ce = check_nonnegative(lambda_ce, "lambda_ce", name)
        self.lambda_dice = check_nonnegative(lambda_dice, "lambda_dice", name)
        self.smooth = check_nonnegative(smooth, "smooth", name)
        if scale_weights is not None:
            scale_weights = [check_nonnegative(w, "scale_weights", name) for w in scale_weights]
            if not scale_weights or sum(scale_weights) <= 0:
                raise ValueError(f"{name}: scale_weights must hold at least one positive weight, got {scale_weights}.")
        self.scale_weights = scale_weights
        self.drop_lowest_scale = bool(drop_lowest_scale)
        self.dice = DiceLoss(
            include_background=False,
            to_onehot_y=False,
            softmax=False,
            smooth_nr=self.smooth,
            smooth_dr=self.smooth,
            batch=False,
            reduction=LossReduction.NONE,
        )

    def extra_repr(self) -> str:
        return (
            f"lambda_ce={self.lambda_ce}, lambda_dice={self.lambda_dice}, smooth={self.smooth}, "
            f"scale_weights={self.scale_weights}, drop_lowest_scale={self.drop_lowest_scale}, "
            f"reduction={self.reduction!r}"
        )

    def _weights(self, n: int) -> list[float]:
        if self.scale_weights is None:
            if n == 2 and self.drop_lowest_scale:
                warnings.warn(
                    f"{type(self).__name__}: 2 deep-supervision scales with drop_lowest_scale=True: the second scale "
                    "gets weight 0, so only the final output is supervised; set drop_lowest_scale=False or more heads.",
                    stacklevel=3,
                )
            return deep_supervision_weights(n, self.drop_lowest_scale)
        if len(self.scale_weights) != n:
            raise ValueError(
                f"{type(self).__name__}: {len(self.scale_weights)} scale_weights for {n} deep-supervision scales."
            )
        total = sum(self.scale_weights)
        return [w / total for w in self.scale_weights]

    def _scale_loss(self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Per-sample ``lambda_ce * CE + lambda_dice * Dice`` of one scale, ``(B,)``, over the voxels of ``mask``."""
        name = type(self).__name__
        check_input(logits, name)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        y = prepare_target(logits, target, True, name)
        out = logits.new_zeros(logits.shape[0])
        if self.lambda_ce > 0:
            ce = F.cross_entropy(logits, y, reduction="none")  # (B, *spatial)
            if mask is None:
                out = out + self.lambda_ce * ce.flatten(1).mean(1)
            else:
                m = mask[:, 0].to(ce.dtype)
                out = out + self.lambda_ce * (ce * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)
        if self.lambda_dice > 0:
            p = torch.softmax(logits, dim=1)
            if mask is not None:  # MONAI's MaskedDiceLoss: the Dice of the voxels of the mask
                p, y = p * mask.to(p.dtype), y * mask.to(y.dtype)
            dice = self.dice(p, y)  # (B, K - 1, 1, ...)
            out = out + self.lambda_dice * dice.flatten(1).mean(1)
        return out

    def forward(
        self,
        input: torch.Tensor | Sequence[torch.Tensor],
        target: torch.Tensor | Sequence[torch.Tensor],
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Compute the loss.

        Args:
            input: ``(B, K, *spatial)`` logits, stacked ``(B, S, K, *spatial)`` deep-supervision logits, or a list of
                ``(B, K, *spatial_s)`` logits (highest resolution first).
            target: ``(B, K, *spatial)`` soft target (or ``(B, 1, *spatial)`` labels), or one per scale.
            mask: optional ``(B, 1, *spatial)`` voxels that count (e.g. asymmetric mixup's agreeing voxels): the CE
                is averaged over them and the Dice computed on them alone; full-resolution scales only.

        Returns:
            a scalar (``"mean"``, ``"sum"``) or the ``(B,)`` per-sample losses (``"none"``).
        """
        name = type(self).__name__
        targets = list(target) if isinstance(target, (list, tuple)) else None
        ref_ndim = targets[0].ndim if targets else target.ndim  # type: ignore[union-attr]
        if isinstance(input, (list, tuple)):
            scales = list(input)
        elif input.ndim == ref_ndim + 1:
            scales = list(torch.unbind(input, dim=1))
        elif input.ndim == ref_ndim:
            scales = [input]
        else:
            raise ValueError(
                f"{name}: input shape {tuple(input.shape)} does not fit the target ({ref_ndim} dims): expected "
                f"(B, K, *spatial) logits or stacked (B, S, K, *spatial) deep-supervision logits."
            )
        if not scales:
            raise ValueError(f"{name}: input holds no deep-supervision scale.")
        if targets is None:
            targets = [target] * len(scales)  # type: ignore[list-item]
        elif len(targets) != len(scales):
            raise ValueError(f"{name}: {len(targets)} targets for {len(scales)} deep-supervision scales.")
        weights = self._weights(len(scales))
        total = None
        for w, logits, y in zip(weights, scales, targets, strict=True):
            if tuple(y.shape[2:]) != tuple(logits.shape[2:]):
                raise ValueError(
                    f"{name}: target shape {tuple(y.shape)} does not match the scale's logits {tuple(logits.shape)}; "
                    "build one target per scale with context_targets_for_scales."
                )
            if w == 0:
                continue
            if mask is not None and tuple(mask.shape[2:]) != tuple(logits.shape[2:]):
                raise ValueError(
                    f"{name}: mask shape {tuple(mask.shape)} does not match the scale's logits {tuple(logits.shape)}."
                )
            value = w * self._scale_loss(logits, y, mask)
            total = value if total is None else total + value
        assert total is not None  # at least one positive weight
        if self.reduction == LossReduction.MEAN.value:
            return total.mean()
        if self.reduction == LossReduction.SUM.value:
            return total.sum()
        return total


def context_foreground_bce(
    logits: torch.Tensor,
    label: torch.Tensor,
    num_classes: int,
    eps: float = 1e-6,
    reduction: LossReduction | str = LossReduction.MEAN,
) -> torch.Tensor:
    """CoLab's meta-objective: BCE of the foreground channels, softmax over all ``K`` channels.

    ::

        p = softmax(z) over the K channels;  y = onehot(label) (original C classes)
        L = (1 / N) sum_i sum_{c=1}^{C-1} -[ y_ic log(p_ic + eps) + (1 - y_ic) log(1 - p_ic + eps) ]

    with ``N`` the voxels of a sample (per-sample values, then the mean over samples), exactly the authors'
    ``calcualte_loss_val`` (``eps = 1e-6``, "larger smooth here ... otherwise nan" in the meta-gradient).
    ``eps = 0`` computes the exact BCE from ``log_softmax`` (``log(1 - p_c)`` as the log-sum-exp of the other
    channels), finite for any logits. Context channels only enter through the softmax normalisation: the generator
    is rewarded for context labels after which the foreground is segmented better.

    Args:
        logits: ``(B, K, *spatial)`` segmenter logits, ``K >= C`` (a stacked ``(B, S, K, *spatial)`` deep-supervision
            output is accepted; its scale 0, the full-resolution output, is used).
        label: ``(B, 1, *spatial)`` class indices in ``[0, C)``.
        num_classes: ``C >= 2``.
        eps: the epsilon inside the logs (``>= 0``).
        reduction: ``"mean"`` / ``"sum"`` over samples, or ``"none"`` for the ``(B,)`` per-sample values.

    Raises:
        ValueError: ``C < 2``, ``K < C``, ``eps < 0``, a label shape or value that does not fit.
    """
    name = "context_foreground_bce"
    c = check_num_classes(num_classes, name)
    eps = check_nonnegative(eps, "eps", name)
    red = check_reduction(reduction, name)
    logits = highest_resolution(logits, label.ndim)
    k = check_input(logits, name)
    if k < c:
        raise ValueError(f"{name}: logits have K={k} channels, fewer than num_classes={c}.")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    lab = _class_labels(label, int(logits.shape[0]), tuple(logits.shape[2:]), c, name)
    y = one_hot(lab, num_classes=c, dim=1, dtype=logits.dtype)[:, 1:]
    if eps > 0:
        p = torch.softmax(logits, dim=1)[:, 1:c]
        bce = -(y * torch.log(p + eps) + (1 - y) * torch.log(1 - p + eps))
    else:
        log_p = torch.log_softmax(logits, dim=1)
        fg = log_p[:, 1:c]
        others = []
        for ch in range(1, c):
            rest = torch.cat([log_p[:, :ch], log_p[:, ch + 1 :]], dim=1)
            others.append(torch.logsumexp(rest, dim=1))
        log_1mp = torch.stack(others, dim=1)
        bce = -(y * fg + (1 - y) * log_1mp)
    per_sample = bce.sum(1).flatten(1).mean(1)
    if red == LossReduction.MEAN.value:
        return per_sample.mean()
    if red == LossReduction.SUM.value:
        return per_sample.sum()
    return per_sample
