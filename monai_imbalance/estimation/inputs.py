# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Checks of the estimators' inputs: logits and integer labels for classification ``(N, C)`` / ``(N,)`` and for
segmentation (sequences of per-case ``(C, *spatial)`` logits and ``(*spatial)`` or ``(1, *spatial)`` labels).

Every failure is a :class:`ValueError` naming the argument, the case and the offending value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.utils import convert_to_tensor

__all__ = ["as_logits", "as_labels", "check_classification_inputs", "check_segmentation_case", "check_cases"]


def as_logits(value: Any, what: str) -> torch.Tensor:
    """A plain floating tensor (float16 / bfloat16 / integers become float32, float64 stays) with finite values.

    Raises:
        ValueError: not array-like, boolean, or holding NaN / inf; the message names ``what``.
    """
    try:
        t = convert_to_tensor(value, track_meta=False)
    except Exception as err:  # noqa: BLE001 - report any conversion failure as bad input
        raise ValueError(f"{what} must be a tensor or array, got {type(value).__name__}.") from err
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{what} must be a tensor or array, got {type(value).__name__}.")
    if t.dtype == torch.bool:
        raise ValueError(f"{what} must hold floating-point logits, got a boolean tensor.")
    if t.dtype != torch.float64 and t.dtype != torch.float32:
        t = t.to(torch.float32)
    if t.numel() and not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{what} hold {bad} non-finite value(s) (NaN or inf): logits must be finite.")
    return t


def as_labels(value: Any, what: str, num_classes: int) -> torch.Tensor:
    """An int64 tensor of class indices in ``[0, num_classes)`` (floating labels must be integral, as loaders give).

    Raises:
        ValueError: not array-like, non-integral or non-finite values, or an index out of range.
    """
    try:
        t = convert_to_tensor(value, track_meta=False)
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"{what} must be a tensor or array of class indices, got {type(value).__name__}.") from err
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{what} must be a tensor or array of class indices, got {type(value).__name__}.")
    if t.is_floating_point():
        if t.numel() and not bool((torch.isfinite(t) & (t == t.round())).all()):
            raise ValueError(f"{what} must hold integer class indices, got non-integral or non-finite values.")
    t = t.to(torch.int64)
    if t.numel():
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"{what} hold class index {bad}, out of range for {num_classes} classes (valid 0..{num_classes - 1})."
            )
    return t


def check_classification_inputs(
    logits: Any, labels: Any | None, name: str, num_classes: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Classification logits ``(N, C)`` (``C >= 2``, ``N >= 1``) and labels ``(N,)``.

    Args:
        logits: ``(N, C)`` logits.
        labels: ``(N,)`` class indices, or ``None`` (estimation).
        name: who checks, for the messages.
        num_classes: the ``C`` seen at fit, if any: the logits must have it.

    Raises:
        ValueError: wrong dimensions, an empty set, fewer than 2 classes, a class count different from the fitted
            one, a label count different from the logit count, labels out of range, non-finite logits.
    """
    z = as_logits(logits, f"{name}: logits")
    if z.ndim != 2:
        raise ValueError(f"{name}: classification logits must be (N, C), got shape {tuple(z.shape)}.")
    n, c = z.shape
    if n == 0:
        raise ValueError(f"{name}: logits hold no sample (shape {tuple(z.shape)}).")
    if c < 2:
        raise ValueError(f"{name}: logits need at least 2 classes, got C={c}.")
    if num_classes is not None and c != num_classes:
        raise ValueError(f"{name}: logits have C={c} classes, the estimator was fitted with {num_classes}.")
    if labels is None:
        return z, None
    y = as_labels(labels, f"{name}: labels", c)
    if y.ndim != 1:
        raise ValueError(f"{name}: classification labels must be (N,), got shape {tuple(y.shape)}.")
    if y.shape[0] != n:
        raise ValueError(f"{name}: logits and labels have different lengths ({n} logits vs {y.shape[0]} labels).")
    return z, y.to(z.device)


def check_cases(logits: Any, labels: Any | None, name: str) -> int:
    """The number of cases of a segmentation set; ``logits`` (and ``labels``) must be non-empty sequences of the
    same length (a tensor counts as a sequence along its first dimension).

    Raises:
        ValueError: not a sequence, empty, or different lengths.
    """
    if isinstance(logits, (str, bytes)) or not (
        isinstance(logits, (Sequence, torch.Tensor)) or hasattr(logits, "__len__")
    ):
        raise ValueError(
            f"{name}: segmentation logits must be a sequence of per-case (C, *spatial) tensors, got "
            f"{type(logits).__name__}."
        )
    n = len(logits)
    if n == 0:
        raise ValueError(f"{name}: logits hold no case.")
    if labels is not None:
        if isinstance(labels, (str, bytes)) or not hasattr(labels, "__len__"):
            raise ValueError(
                f"{name}: segmentation labels must be a sequence of per-case label maps, got {type(labels).__name__}."
            )
        if len(labels) != n:
            raise ValueError(
                f"{name}: logits and labels have different lengths ({n} cases of logits vs {len(labels)} of labels)."
            )
    return n


def check_segmentation_case(
    logits: Any, label: Any | None, index: int, name: str, num_classes: int | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One segmentation case: logits ``(C, *spatial)`` and label ``(*spatial)`` or ``(1, *spatial)``.

    Returns:
        The logits (plain float tensor) and the label squeezed to ``(*spatial)`` (int64, on the logits' device), or
        ``None``.

    Raises:
        ValueError: fewer than 1 spatial dimension, fewer than 2 classes, a class count different from the other
            cases, a label whose spatial shape differs from the logits', labels out of range, non-finite logits.
    """
    z = as_logits(logits, f"{name}: logits of case {index}")
    if z.ndim < 2:
        raise ValueError(
            f"{name}: logits of case {index} must be (C, *spatial) with at least one spatial dimension, got shape "
            f"{tuple(z.shape)}."
        )
    c = z.shape[0]
    if c < 2:
        raise ValueError(f"{name}: logits of case {index} need at least 2 channels (classes), got C={c}.")
    if num_classes is not None and c != num_classes:
        raise ValueError(f"{name}: logits of case {index} have C={c} channels, expected {num_classes}.")
    if z.shape[1:].numel() == 0:
        raise ValueError(f"{name}: logits of case {index} have an empty spatial shape {tuple(z.shape[1:])}.")
    if label is None:
        return z, None
    y = as_labels(label, f"{name}: labels of case {index}", c)
    if y.ndim == z.ndim and y.shape[0] == 1:
        y = y[0]
    if tuple(y.shape) != tuple(z.shape[1:]):
        raise ValueError(
            f"{name}: labels of case {index} have shape {tuple(y.shape)}, the logits' spatial shape is "
            f"{tuple(z.shape[1:])} (labels must be (*spatial) or (1, *spatial))."
        )
    return z, y.to(z.device)
