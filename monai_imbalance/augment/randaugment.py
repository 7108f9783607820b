# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""RandAugment as a fixed training-time policy: ``N`` operations at magnitude level ``M``.

Cubuk, Zoph, Shlens, Le, "RandAugment: Practical automated data augmentation with a reduced search space", CVPR
Workshops 2020; the baseline of Li, Kamnitsas, Dou, Qin, Glocker, "Joint Optimization of Class-Specific Training- and
Test-Time Data Augmentation in Segmentation", IEEE TMI 2023. RandAugment applies ``N`` operations drawn uniformly
from the ``O`` operations of the pool, all at one magnitude ``M``. The policy of
:class:`~monai_imbalance.augment.AugmentationPolicy` draws every operation independently, so the closest fixed
policy applies each operation with probability ``N / O`` (``N`` operations **on average**, Binomial(``O``,
``N / O``)) at the bin(s) of level ``M`` of the :class:`~monai_imbalance.augment.TrainingTransformPool`'s three
magnitude levels:

==================  ===============================  ==========================================
operation family    bins of level ``M`` (1, 2, 3)    magnitudes
==================  ===============================  ==========================================
``scale``           ``2M - 1``                       0.05, 0.25, 0.45 of 0.05 ... 0.45
``rotate``          ``M``                            5, 15, 25 degrees (never the ``rot90`` bin)
``mirror``          ``1`` (the flip), any ``M``
``blur_sharpen``    ``M`` and ``3 + M``, half each   blur 0.5 / 0.7 / 0.9, sharpen 0.9 / 0.7 / 0.5
all others          ``M``                            their first, second or third magnitude
==================  ===============================  ==========================================

:func:`randaugment_probabilities` returns the per-operation probability vectors, which ``AugmentationPolicy``
takes as ``init`` (a mapping ``{op: probabilities}``).
"""

from __future__ import annotations

import numbers

import torch

from .training_pool import TrainingOp, TrainingTransformPool

__all__ = ["RANDAUGMENT_LEVELS", "randaugment_bins", "randaugment_probabilities"]

#: The magnitude levels ``M`` every operation family of the training-time pool has (mirrors: one flip at any level).
RANDAUGMENT_LEVELS: tuple[int, ...] = (1, 2, 3)
_ONE_BIN_PER_LEVEL = (
    "rotate", "gamma", "inverse_gamma", "brightness_add", "brightness_mul", "contrast", "noise", "low_resolution",
)  # fmt: skip


def _check_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {name}={value!r}.")
    return int(value)


def randaugment_bins(op: TrainingOp, magnitude: int) -> tuple[int, ...]:
    """The bins of ``op`` at RandAugment magnitude level ``magnitude`` (module docstring).

    Args:
        op: an operation of the training-time pool.
        magnitude: the level ``M`` in :data:`RANDAUGMENT_LEVELS`.

    Returns:
        the bin indices (bin 0 is the identity, never returned).

    Raises:
        ValueError: ``magnitude`` not an integer in :data:`RANDAUGMENT_LEVELS`, or an unknown operation family.
    """
    m = _check_int(magnitude, "magnitude")
    if m not in RANDAUGMENT_LEVELS:
        raise ValueError(f"magnitude must be one of the levels {list(RANDAUGMENT_LEVELS)}, got magnitude={magnitude}.")
    if op.family == "mirror":
        return (1,)
    if op.family == "scale":
        return (2 * m - 1,)
    if op.family == "blur_sharpen":
        return (m, len(RANDAUGMENT_LEVELS) + m)
    if op.family in _ONE_BIN_PER_LEVEL:
        return (m,)
    raise ValueError(f"no RandAugment magnitude levels for the op family {op.family!r} (op {op.name!r}).")


def randaugment_probabilities(
    pool: TrainingTransformPool | None = None, num_ops: int = 2, magnitude: int = 2
) -> dict[str, torch.Tensor]:
    """Per-operation bin probabilities of RandAugment with ``N = num_ops`` operations at level ``M = magnitude``.

    Each operation keeps the identity (bin 0) with probability ``1 - N / O`` and spreads ``N / O`` evenly over its
    bins of level ``M`` (:func:`randaugment_bins`); every other bin gets 0.

    Args:
        pool: the operations, ``O = len(pool)`` (default: the full 15-operation pool).
        num_ops: ``N``, the expected number of operations applied to a patch, ``1 <= N <= O``.
        magnitude: ``M`` in :data:`RANDAUGMENT_LEVELS`.

    Returns:
        ``{op name: (K_o,) float32 probabilities}`` in pool order, each summing to 1; ready for
        ``AugmentationPolicy(init=...)``.

    Raises:
        ValueError: ``num_ops`` not an integer in ``[1, O]``, or ``magnitude`` not a level.
    """
    pool = pool if pool is not None else TrainingTransformPool()
    n = _check_int(num_ops, "num_ops")
    if not 1 <= n <= len(pool):
        raise ValueError(f"num_ops must be in [1, {len(pool)}] (the pool's operations), got num_ops={num_ops}.")
    p = n / len(pool)
    out: dict[str, torch.Tensor] = {}
    for op in pool.ops:
        bins = randaugment_bins(op, magnitude)
        probs = torch.zeros(op.num_bins, dtype=torch.float64)
        probs[0] = 1.0 - p
        probs[list(bins)] = p / len(bins)
        out[op.name] = probs.float()
    return out
