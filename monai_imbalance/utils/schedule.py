# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""A meta learning rate scaled to a schedule shorter than the authors'."""

from __future__ import annotations

import math

__all__ = ["scaled_learning_rate"]


def scaled_learning_rate(lr: float, reference_updates: float, updates: float, cap: float = 100.0) -> float:
    """``lr * min(cap, max(1, reference_updates / updates))``: the rule for meta-learners on short schedules.

    With Adam a parameter moves by at most about the learning rate per update, so a learner given ``updates`` steps
    where the authors gave ``reference_updates`` (CoLab's generator: about 80,000; JCSAugment's training-time policy:
    about 200,000) can travel only ``updates / reference_updates`` of the authors' distance at the paper's rate. This
    rule gives it the same total budget, ``lr * reference_updates``, capped at ``cap`` times the paper's rate. It is an
    option (the bundles' ``*_scaled_meta_lr`` variants); the paper's rate stays the default.

    Args:
        lr: the paper's learning rate (``> 0``).
        reference_updates: the authors' number of updates of the learner (``> 0``).
        updates: this run's number of updates (``> 0``).
        cap: the largest factor (``>= 1``).

    Returns:
        the scaled learning rate, never below ``lr``.

    Raises:
        ValueError: a non-positive or non-finite ``lr``, ``reference_updates`` or ``updates``, or ``cap < 1``.
    """
    for name, value in (("lr", lr), ("reference_updates", reference_updates), ("updates", updates)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"scaled_learning_rate: {name} must be a finite number > 0, got {name}={value!r}.")
    if not (isinstance(cap, (int, float)) and cap >= 1):
        raise ValueError(f"scaled_learning_rate: cap must be >= 1, got cap={cap!r}.")
    return float(lr) * min(float(cap), max(1.0, float(reference_updates) / float(updates)))
