# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Asymmetric mixup for segmentation: mixed inputs, and mixed labels by the rare-label rule.

Li, Kamnitsas, Glocker, "Analyzing overfitting under class imbalance in neural networks for image
segmentation", IEEE TMI 2021, method section: asymmetric mixup (the authors' nnU-Net ``mixND_Crossentropy.py`` and
DeepMedic ``cost_functions.py``).

The inputs are mixed as usual, ``x~ = lam * x_a + (1 - lam) * x_b`` with ``lam = Beta(alpha, alpha) * (1 - margin)``
and, as in nnU-Net, the partner ``x_b`` is the batch in reverse order (``x.flip(0)``). The labels are not soft in the
asymmetric version: per voxel, with ``R`` the set of rare classes,

- each mixing component takes the rare label when either source voxel is rare, its own rare label winning over the
  partner's (the component of ``x_a`` uses that rule when ``lam < 1 - margin``, the component of ``x_b`` when
  ``1 - lam < 1 - margin``; otherwise a component keeps its own label);
- a voxel keeps a label only when both components agree on it; the other voxels are ambiguous and are dropped from
  the loss through the returned mask (their one-hot row is all zeros, the reference code's ``floor``).

So background + rare gives rare, common + rare gives rare when only that one is rare, two different rare classes are
dropped, identical labels are kept, and two different common classes are dropped. Symmetric mixup
(``rare_classes=None``) returns the usual soft labels ``lam * onehot(y_a) + (1 - lam) * onehot(y_b)`` and a full mask.

Example::

    x_mix, target, mask, lam = mixup_batch(x, y, num_classes=3, rare_classes=[2])
    loss = loss_function(network(x_mix), target, mask=mask)
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

from monai_imbalance.utils import check_rare_classes, plain_tensor

__all__ = ["mixup_labels", "sample_mixup_lambda", "mixup_images", "mixup_batch"]


def validate_label_map(y: torch.Tensor, num_classes: int, name: str = "y") -> torch.Tensor:
    """Check a label map ``(B, 1, *spatial)`` and return it as ``int64``.

    Args:
        y: integer (or integral float) class labels, shape ``(B, 1, *spatial)``.
        num_classes: the number of classes ``C``.
        name: the argument name used in error messages.

    Returns:
        ``y`` as an ``int64`` tensor (a plain ``torch.Tensor``), same shape.

    Raises:
        ValueError: a wrong shape, a negative label, a label ``>= num_classes`` or a non-integral value.
    """
    if y.ndim < 3 or y.shape[1] != 1:
        raise ValueError(f"{name} must be a label map of shape (B, 1, *spatial), got shape {tuple(y.shape)}.")
    y = plain_tensor(y)
    if y.is_floating_point():
        if not torch.equal(y, y.round()):
            raise ValueError(f"{name} must hold integer class labels, got non-integral values.")
    elif y.dtype == torch.bool:
        y = y.to(torch.uint8)
    if y.numel() > 0:
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"{name} holds label {bad}, out of range for {num_classes} classes (valid labels 0..{num_classes - 1})."
            )
    return y.long()


def _check_lam_margin(lam: float, margin: float) -> None:
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must be in [0, 1), got margin={margin!r}.")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got lam={lam!r}.")


def _one_hot(y: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(B, 1, *sp)`` int64 labels -> ``(B, C, *sp)`` one-hot."""
    out = torch.zeros((y.shape[0], num_classes, *y.shape[2:]), dtype=dtype, device=y.device)
    return out.scatter_(1, y, 1.0)


def mixup_labels(
    y_a: torch.Tensor,
    y_b: torch.Tensor,
    lam: float | torch.Tensor,
    num_classes: int,
    rare_classes: Sequence[int] | None = None,
    margin: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixed segmentation target and loss mask for ``lam * x_a + (1 - lam) * x_b`` (Li et al., IEEE TMI 2021).

    Asymmetric (``rare_classes`` given): per voxel, with ``R`` the rare set,
    ``y0 = y_a if y_a in R else (y_b if y_b in R else y_a)`` (own rare label wins),
    ``y1 = y_b if y_b in R else (y_a if y_a in R else y_b)``;
    component A takes ``y0`` if ``lam < 1 - margin`` else ``y_a``; component B takes ``y1`` if
    ``1 - lam < 1 - margin`` else ``y_b``. The target is the one-hot of the label when both components agree, and
    all zeros (masked out) when they do not. ``lam = 1`` (or ``0``) gives component A's (B's) label everywhere.
    The decision is made on integer labels, so it does not depend on ``lam + (1 - lam)`` rounding to 1.

    Symmetric (``rare_classes=None``): ``target = lam * onehot(y_a) + (1 - lam) * onehot(y_b)``, mask all ones.

    Args:
        y_a: labels of the first batch, ``(B, 1, *spatial)``.
        y_b: labels of the partner batch, same shape (``y_a.flip(0)`` in :func:`mixup_batch`).
        lam: the mixing weight of ``x_a``, in ``[0, 1]``.
        num_classes: the number of classes ``C`` (including background 0).
        rare_classes: the rare classes, or ``None`` for symmetric (soft-label) mixup.
        margin: ``m_mix`` in ``[0, 1)``, the margin of the sampled ``lam`` (default 0.2, the authors').

    Returns:
        ``(target, mask)``: ``target`` float32 ``(B, C, *spatial)`` (one-hot or soft), ``mask`` float32
        ``(B, 1, *spatial)`` with 1 for voxels that count in the loss.

    Raises:
        ValueError: mismatched shapes, labels ``>= num_classes``, ``rare_classes`` out of range, ``lam`` outside
            ``[0, 1]`` or ``margin`` outside ``[0, 1)``.
    """
    lam = float(lam)
    margin = float(margin)
    _check_lam_margin(lam, margin)
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got num_classes={num_classes!r}.")
    if tuple(y_a.shape) != tuple(y_b.shape):
        raise ValueError(f"y_a and y_b must have the same shape, got {tuple(y_a.shape)} and {tuple(y_b.shape)}.")
    rare = check_rare_classes(rare_classes, num_classes)
    ya = validate_label_map(y_a, num_classes, "y_a")
    yb = validate_label_map(y_b, num_classes, "y_b").to(ya.device)

    if rare is None:
        target = lam * _one_hot(ya, num_classes) + (1.0 - lam) * _one_hot(yb, num_classes)
        return target, torch.ones_like(ya, dtype=torch.float32)

    is_rare = torch.zeros(num_classes, dtype=torch.bool, device=ya.device)
    is_rare[list(rare)] = True
    ra, rb = is_rare[ya], is_rare[yb]
    y0 = torch.where(ra, ya, torch.where(rb, yb, ya))  # own rare label wins over the partner's
    y1 = torch.where(rb, yb, torch.where(ra, ya, yb))
    label_a = y0 if lam < 1.0 - margin else ya
    label_b = y1 if 1.0 - lam < 1.0 - margin else yb
    if lam >= 1.0:  # component B has weight 0: component A's label everywhere
        keep, label = torch.ones_like(ra), label_a
    elif lam <= 0.0:
        keep, label = torch.ones_like(ra), label_b
    else:
        keep, label = label_a == label_b, label_a
    mask = keep.to(torch.float32)
    target = _one_hot(label, num_classes) * mask  # ambiguous voxels: all-zero rows (the reference's floor)
    return target, mask


def sample_mixup_lambda(alpha: float = 0.2, margin: float = 0.2) -> float:
    """Sample ``lam = Beta(alpha, alpha) * (1 - margin)`` from the global torch random stream.

    Args:
        alpha: the Beta concentration, ``> 0`` (nnU-Net default 0.2, DeepMedic 1.0).
        margin: ``m_mix`` in ``[0, 1)``; 0 gives vanilla mixup.

    Returns:
        ``lam`` in ``[0, 1 - margin]``.

    Raises:
        ValueError: ``alpha <= 0`` or ``margin`` outside ``[0, 1)``.
    """
    if not float(alpha) > 0.0:
        raise ValueError(f"alpha must be > 0, got alpha={alpha!r} (disable mixup instead of passing 0).")
    if not 0.0 <= float(margin) < 1.0:
        raise ValueError(f"margin must be in [0, 1), got margin={margin!r}.")
    a = torch.tensor(float(alpha), dtype=torch.float64)
    beta = torch.distributions.Beta(a, a).sample()
    return float(beta) * (1.0 - float(margin))


def mixup_images(x: torch.Tensor, lam: float | torch.Tensor) -> torch.Tensor:
    """Mix a batch with itself in reverse order, as nnU-Net does: ``lam * x + (1 - lam) * x.flip(0)``.

    Args:
        x: images ``(B, C_in, *spatial)``.
        lam: the weight of ``x``, in ``[0, 1]``.

    Returns:
        the mixed images, same shape and dtype as ``x``.
    """
    lam = float(lam)
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got lam={lam!r}.")
    x = plain_tensor(x)
    return lam * x + (1.0 - lam) * x.flip(0)


def mixup_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    alpha: float = 0.2,
    margin: float = 0.2,
    rare_classes: Sequence[int] | None = None,
    lam: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """One (asymmetric) mixup batch: mixed images, target and mask, with the partner ``x.flip(0)``.

    Args:
        x: images ``(B, C_in, *spatial)``.
        y: labels ``(B, 1, *spatial)``.
        num_classes: the number of classes ``C``.
        alpha: the Beta concentration (used when ``lam`` is None).
        margin: ``m_mix`` in ``[0, 1)``.
        rare_classes: the rare classes, or ``None`` for symmetric mixup.
        lam: a fixed mixing weight; sampled with :func:`sample_mixup_lambda` when None.

    Returns:
        ``(x_mix, target, mask, lam)``: ``(B, C_in, *sp)``, ``(B, C, *sp)``, ``(B, 1, *sp)`` and the float ``lam``.

    Raises:
        ValueError: as :func:`mixup_labels` and :func:`sample_mixup_lambda`, or when ``x`` and ``y`` differ in batch
            or spatial shape.
    """
    if x.ndim != y.ndim or x.shape[0] != y.shape[0] or tuple(x.shape[2:]) != tuple(y.shape[2:]):
        raise ValueError(
            f"x (B, C_in, *spatial) and y (B, 1, *spatial) must share batch and spatial shape, got "
            f"{tuple(x.shape)} and {tuple(y.shape)}."
        )
    if lam is None:
        lam = sample_mixup_lambda(alpha, margin)
    target, mask = mixup_labels(y, y.flip(0), lam, num_classes, rare_classes=rare_classes, margin=margin)
    return mixup_images(x, lam), target, mask, float(lam)
