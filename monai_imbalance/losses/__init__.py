# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Losses for class-imbalanced segmentation (Li, Kamnitsas, Glocker, IEEE TMI 40(3), 2021).

- :class:`MarginFocalLoss`: cross-entropy, large-margin and focal cross-entropy, each symmetric or asymmetric
  (margin on rare classes only, focal weight on common classes only), plus the focal-weighted soft Dice term of the
  authors' nnU-Net code; optional mask of counted voxels (mixup).
- :class:`FBetaLoss`: soft F-beta (F1 = Dice, F2 / F4 / F8), as :class:`monai.losses.TverskyLoss` with the matching
  weights and smoothing.
"""

from __future__ import annotations

from .fbeta import FBetaLoss
from .margin_focal import MarginFocalLoss

__all__ = ["FBetaLoss", "MarginFocalLoss"]
