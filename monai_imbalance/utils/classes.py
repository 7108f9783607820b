# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The one check of a rare-class list, shared by the losses, the engines and the transforms.

``rare_classes`` selects the classes an asymmetric method protects (Li, Kamnitsas, Glocker, IEEE TMI 2021);
``None`` means the symmetric method (every class alike).
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

__all__ = ["check_rare_classes"]


def check_rare_classes(
    rare_classes: int | Iterable[int] | torch.Tensor | None, num_classes: int | None = None, name: str | None = None
) -> tuple[int, ...] | None:
    """Normalise ``rare_classes`` to a sorted tuple of distinct non-negative class indices (``None`` stays ``None``).

    Args:
        rare_classes: ``None``, one class index, or an iterable (list, tuple, tensor) of class indices.
        num_classes: the number of classes ``C``; when given, every index must be below it.
        name: who checks (e.g. the loss's class name), to prefix the error message.

    Raises:
        ValueError: booleans, strings, an empty list, non-integer or negative entries, or an index ``>= C``;
            the message names the value.
    """
    if rare_classes is None:
        return None
    prefix = f"{name}: " if name else ""
    original: Any = rare_classes
    if isinstance(rare_classes, torch.Tensor):
        rare_classes = rare_classes.flatten().tolist()
    elif isinstance(rare_classes, (bool, np.bool_, str, bytes)) or not (
        isinstance(rare_classes, Iterable) or _is_index(rare_classes)
    ):
        raise ValueError(f"{prefix}rare_classes must be None or class indices, got rare_classes={original!r}.")
    values = [rare_classes] if _is_index(rare_classes) else list(rare_classes)
    if not values:
        raise ValueError(
            f"{prefix}rare_classes={original!r} is empty: it names no class; use None for the symmetric version."
        )
    out = []
    for c in values:
        if not _is_index(c):
            raise ValueError(f"{prefix}rare_classes must hold integer class indices, got {c!r} in {original!r}.")
        c = operator.index(c)
        if c < 0:
            raise ValueError(f"{prefix}rare_classes holds a negative class index {c} (rare_classes={original!r}).")
        if num_classes is not None and c >= num_classes:
            raise ValueError(
                f"{prefix}rare_classes={list(values)!r} holds class {c}, out of range for {num_classes} classes "
                f"(valid indices 0..{num_classes - 1})."
            )
        out.append(c)
    return tuple(sorted(set(out)))


def _is_index(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True
