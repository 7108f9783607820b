# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Channel layout of a context-label (CoLab) segmenter: ``K = C + t - 1`` outputs.

Li, Kamnitsas, Ouyang, Chen, Glocker, "Context Label Learning: Improving Background Class Representations in Semantic
Segmentation", IEEE TMI 2023 (methods.md 2.1): the background class is split into ``t`` context classes. The
segmenter's ``K = C + t - 1`` channels are ``[ctx_0, FG_1 ... FG_{C-1}, ctx_1 ... ctx_{t-1}]``: context class 0 keeps
the original background slot (channel 0), the foreground classes keep theirs (channels ``1 .. C-1``) and the extra
context classes are appended (channels ``C .. K-1``). With ``t = 1`` the layout is the ordinary ``C``-class one.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

__all__ = [
    "check_num_classes",
    "check_num_context",
    "context_channel",
    "context_channel_indices",
    "context_channels",
    "foreground_channel_indices",
]


def _as_int(value: Any, what: str, name: str | None) -> int:
    prefix = f"{name}: " if name else ""
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{prefix}{what} must be an integer, got {what}={value!r}.")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{prefix}{what} must be an integer, got {what}={value!r}.") from None


def check_num_classes(num_classes: Any, name: str | None = None) -> int:
    """``num_classes`` (``C``, background included) as an ``int >= 2``, or a ``ValueError`` naming the value."""
    c = _as_int(num_classes, "num_classes", name)
    if c < 2:
        prefix = f"{name}: " if name else ""
        raise ValueError(
            f"{prefix}num_classes must be >= 2 (background + at least one foreground class), got num_classes={c}."
        )
    return c


def check_num_context(num_context: Any, name: str | None = None) -> int:
    """``num_context`` (``t``, the number of context classes) as an ``int >= 1``, or a ``ValueError``."""
    t = _as_int(num_context, "num_context", name)
    if t < 1:
        prefix = f"{name}: " if name else ""
        raise ValueError(
            f"{prefix}num_context must be >= 1 (t context classes split the background; t=1 is plain training), "
            f"got num_context={t}."
        )
    return t


def context_channels(num_classes: int, num_context: int) -> int:
    """The segmenter's number of output channels ``K = C + t - 1`` (methods.md 2.1).

    Args:
        num_classes: ``C >= 2``, the original classes (background included).
        num_context: ``t >= 1``, the context classes the background is split into.

    Raises:
        ValueError: ``C < 2`` or ``t < 1`` (the message names the value).
    """
    return check_num_classes(num_classes) + check_num_context(num_context) - 1


def context_channel(context_class: int, num_classes: int) -> int:
    """The segmenter channel of context class ``j``: ``0`` for ``j = 0``, ``C + j - 1`` otherwise."""
    c = check_num_classes(num_classes)
    j = _as_int(context_class, "context_class", None)
    if j < 0:
        raise ValueError(f"context_class must be >= 0, got context_class={j}.")
    return 0 if j == 0 else c + j - 1


def context_channel_indices(num_classes: int, num_context: int) -> list[int]:
    """Segmenter channels of the context classes, in context-class order: ``[0, C, C + 1, ..., K - 1]``.

    Entry ``j`` is the channel of context class ``j`` (the channel of generator output ``j``), so
    ``logits[:, context_channel_indices(C, t)]`` reorders the segmenter's context logits like the generator's.
    """
    c = check_num_classes(num_classes)
    t = check_num_context(num_context)
    return [0, *range(c, c + t - 1)]


def foreground_channel_indices(num_classes: int) -> list[int]:
    """Segmenter channels of the foreground classes: ``[1, ..., C - 1]`` (channel ``c`` is class ``c``)."""
    return list(range(1, check_num_classes(num_classes)))
