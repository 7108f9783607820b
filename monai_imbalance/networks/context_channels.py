# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Channel layout of a context-label (CoLab) segmenter: ``K = C + t - 1`` outputs.

Li, Kamnitsas, Ouyang, Chen, Glocker, "Context label learning: improving background class representations in semantic
segmentation", IEEE TMI 2023 (method section): the background class is split into ``t`` context classes. The segmenter's
``K = C + t - 1`` channels are ``[ctx_0, FG_1 ... FG_{C-1}, ctx_1 ... ctx_{t-1}]``: context class 0 keeps the original
background slot (channel 0), the foreground classes keep theirs (channels ``1 .. C-1``) and the extra context classes
are appended (channels ``C .. K-1``). With ``t = 1`` the layout is the ordinary ``C``-class one.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
import torch

__all__ = [
    "FOLD_REDUCTIONS",
    "check_num_classes",
    "check_num_context",
    "context_channel",
    "context_channel_indices",
    "context_channels",
    "fold_context_channels",
    "foreground_channel_indices",
]

#: The ways :func:`fold_context_channels` merges the context channels into the background channel.
FOLD_REDUCTIONS: tuple[str, ...] = ("logsumexp", "sum", "max")


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
    """The segmenter's number of output channels ``K = C + t - 1`` (CoLab).

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


def fold_context_channels(
    x: torch.Tensor, num_classes: int, dim: int = 1, reduction: str = "logsumexp"
) -> torch.Tensor:
    """Fold a CoLab segmenter's ``K = C + t - 1`` channels into the ``C`` original classes.

    The context classes together are the background class (CoLab, Li et al., IEEE TMI 2023), so the rule
    is: the probabilities of the context channels (``0`` and ``C .. K-1``) add up to the background probability and
    the foreground channels ``1 .. C-1`` are kept,

    ``p_0 = sum_{j in ctx} p_j``,  i.e. on logits  ``z_0 = logsumexp_{j in ctx} z_j``.

    The logit form is exact: the softmax over the ``C`` folded logits equals the ``K``-channel softmax with the
    context probabilities summed. ``reduction`` says what ``x`` holds:

    - ``"logsumexp"`` (default): logits, folded by the exact rule above.
    - ``"sum"``: probabilities, folded by the exact rule above.
    - ``"max"``: logits or probabilities, channel 0 the largest context channel. Not a probability (it
      under-estimates ``p_0``), but its ``argmax`` is the paper's label rule (``argmax`` over all ``K`` channels,
      context channels mapped to class 0: a foreground class wins only where it beats every context channel), and
      channel 0 stays one of the network's own logits. Use it where that decision rule is what is measured.

    Args:
        x: a tensor with ``K >= C`` channels along ``dim``, e.g. ``(B, K, *spatial)`` logits (``dim=1``) or a
            channel-first ``(K, *spatial)`` prediction (``dim=0``).
        num_classes: ``C``, the original classes (background included).
        dim: the channel dimension of ``x``.
        reduction: ``"logsumexp"``, ``"sum"`` or ``"max"``.

    Returns:
        a new tensor with ``C`` channels along ``dim`` (``x`` itself when ``K == C``: there is nothing to fold).

    Raises:
        ValueError: ``K < C``, ``C < 1`` or an unknown ``reduction``.

    Example::

        probs = torch.softmax(logits, 1)  # (B, K, *spatial)
        folded = fold_context_channels(logits, num_classes=3)  # (B, 3, *spatial) logits
        torch.testing.assert_close(torch.softmax(folded, 1), fold_context_channels(probs, 3, reduction="sum"))
    """
    if reduction not in FOLD_REDUCTIONS:
        raise ValueError(f"reduction must be one of {FOLD_REDUCTIONS}, got reduction={reduction!r}.")
    k, c = int(x.shape[dim]), _as_int(num_classes, "num_classes", None)
    if c < 1:
        raise ValueError(f"num_classes must be >= 1, got num_classes={c}.")
    if k < c:
        raise ValueError(f"the input has {k} channels along dim {dim}, fewer than num_classes={c}.")
    if k == c:
        return x
    context = torch.cat([x.narrow(dim, 0, 1), x.narrow(dim, c, k - c)], dim)
    if reduction == "logsumexp":
        background = torch.logsumexp(context, dim, keepdim=True)
    elif reduction == "sum":
        background = context.sum(dim, keepdim=True)
    else:
        background = torch.amax(context, dim, keepdim=True)
    return torch.cat([background, x.narrow(dim, 1, c - 1)], dim)
