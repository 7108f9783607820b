# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Losses for class-imbalanced segmentation.

Li, Kamnitsas, Glocker, IEEE TMI 40(3), 2021:

- :class:`MarginFocalLoss`: cross-entropy, large-margin and focal cross-entropy, each symmetric or asymmetric
  (margin on rare classes only, focal weight on common classes only), plus the focal-weighted soft Dice term of the
  authors' nnU-Net code; optional mask of counted voxels (mixup).
- :class:`FBetaLoss`: soft F-beta (F1 = Dice, F2 / F4 / F8), as :class:`monai.losses.TverskyLoss` with the matching
  weights and smoothing.

Context label learning (CoLab; Li, Kamnitsas, Ouyang, Chen, Glocker, IEEE TMI 2023):

- :func:`compose_context_target`, :func:`context_label_target`, :func:`context_targets_for_scales`: the
  ``K = C + t - 1`` channel soft target from generator probabilities (or hard context labels), the ground truth and
  the distance mask, at one or every deep-supervision scale.
- :class:`ContextLabelLoss`: soft-target cross-entropy + soft Dice over the ``K`` channels, with deep supervision
  (:func:`deep_supervision_weights`).
- :func:`context_foreground_bce`: the meta-objective (foreground-channel BCE against the original labels).
"""

from __future__ import annotations

from .context_label import (
    ContextLabelLoss,
    compose_context_target,
    context_foreground_bce,
    context_label_target,
    context_targets_for_scales,
    deep_supervision_weights,
)
from .fbeta import FBetaLoss
from .margin_focal import MarginFocalLoss

__all__ = [
    "ContextLabelLoss",
    "FBetaLoss",
    "MarginFocalLoss",
    "compose_context_target",
    "context_foreground_bce",
    "context_label_target",
    "context_targets_for_scales",
    "deep_supervision_weights",
]
