# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Input checks shared by the losses of :mod:`monai_imbalance.losses`: logits, targets, masks, class lists, numbers.

Every check raises ``ValueError`` naming the loss, the argument and the offending value.
"""

from __future__ import annotations

import math

import torch
from monai.networks.utils import one_hot
from monai.utils import LossReduction

from monai_imbalance.utils import check_rare_classes

__all__ = [
    "check_input",
    "check_nonnegative",
    "check_reduction",
    "check_rare_classes",
    "prepare_mask",
    "prepare_target",
]


def check_input(input: torch.Tensor, name: str) -> int:
    """Check ``input`` is ``(B, C, *spatial)`` with ``C >= 2`` and return ``C``."""
    if input.ndim < 3:
        raise ValueError(
            f"{name}: input must be (B, C, *spatial) with at least one spatial dim, got {tuple(input.shape)}."
        )
    if not input.is_floating_point():
        raise ValueError(f"{name}: input must be floating point (logits or probabilities), got dtype {input.dtype}.")
    num_classes = int(input.shape[1])
    if num_classes < 2:
        raise ValueError(
            f"{name}: input must have at least 2 channels (background + one class), got C={num_classes} "
            f"(input shape {tuple(input.shape)})."
        )
    return num_classes


def prepare_target(input: torch.Tensor, target: torch.Tensor, to_onehot_y: bool, name: str) -> torch.Tensor:
    """Validate ``target`` against ``input`` and return it as a ``(B, C, *spatial)`` tensor of ``input``'s dtype.

    Args:
        input: ``(B, C, *spatial)`` logits or probabilities.
        target: ``(B, 1, *spatial)`` integer labels in ``[0, C)`` (only when ``to_onehot_y``), or
            ``(B, C, *spatial)`` one-hot / soft targets (accepted whatever ``to_onehot_y`` is, so one configured
            loss serves both the normal step with labels and a mixup step with mixed one-hot / soft targets).
        to_onehot_y: whether a one-channel ``target`` holds labels to convert to one-hot.
        name: the loss' name, for messages.

    Raises:
        ValueError: shape mismatch, labels that are not integers or outside ``[0, C)``.
    """
    num_classes = int(input.shape[1])
    expected_onehot = tuple(input.shape)
    expected_labels = (input.shape[0], 1, *input.shape[2:])
    shape = tuple(target.shape)
    if shape == expected_onehot:
        return target.to(dtype=input.dtype)
    if to_onehot_y and shape == expected_labels:
        if target.is_floating_point():
            if bool(torch.any(target != torch.round(target))):
                bad = target[target != torch.round(target)].flatten()[0].item()
                raise ValueError(f"{name}: target labels must be integers, found label value {bad}.")
        elif target.dtype == torch.bool:
            target = target.to(torch.uint8)
        if target.numel() > 0:
            lo, hi = (v.item() for v in torch.aminmax(target))
            if lo < 0 or hi >= num_classes:
                bad = lo if lo < 0 else hi
                raise ValueError(
                    f"{name}: target label {bad:g} is out of range for C={num_classes} input channels "
                    f"(labels must be in [0, {num_classes - 1}])."
                )
        return one_hot(target.long(), num_classes=num_classes, dtype=input.dtype, dim=1)
    if to_onehot_y:
        raise ValueError(
            f"{name}: target shape {shape} does not match the input {tuple(input.shape)}: expected labels "
            f"{tuple(expected_labels)} or one-hot / soft targets {expected_onehot}."
        )
    raise ValueError(
        f"{name}: target shape {shape} does not match the input {tuple(input.shape)}: expected one-hot / soft "
        f"targets {expected_onehot} (to_onehot_y=False)."
    )


def prepare_mask(input: torch.Tensor, mask: torch.Tensor | None, name: str) -> torch.Tensor | None:
    """Validate a ``(B, 1, *spatial)`` mask of counted voxels and return it as a 0/1 tensor of ``input``'s dtype.

    Any nonzero (or ``True``) mask value counts the voxel; zero excludes it.

    Raises:
        ValueError: when the mask's shape is not ``(B, 1, *spatial)`` of ``input``.
    """
    if mask is None:
        return None
    expected = (input.shape[0], 1, *input.shape[2:])
    if tuple(mask.shape) != tuple(expected):
        raise ValueError(
            f"{name}: mask shape {tuple(mask.shape)} does not match the input {tuple(input.shape)}: "
            f"expected {tuple(expected)}."
        )
    return (mask != 0).to(dtype=input.dtype)


def check_nonnegative(value: float, what: str, name: str) -> float:
    value = float(value)
    if not (value >= 0.0 and math.isfinite(value)):
        raise ValueError(f"{name}: {what} must be a finite number >= 0, got {what}={value}.")
    return value


def check_reduction(reduction: LossReduction | str, name: str) -> str:
    """The value of ``reduction`` as a :class:`monai.utils.LossReduction` string, or a ``ValueError``."""
    try:
        return LossReduction(reduction).value
    except ValueError:
        raise ValueError(f"{name}: reduction={reduction!r} is not one of 'mean', 'sum', 'none'.") from None
