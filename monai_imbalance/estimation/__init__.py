# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Performance estimation under domain shift from class-specific confidence scores (Li, Kamnitsas, Islam, Chen,
Glocker, MICCAI 2022): fit on labelled validation logits, estimate accuracy or Dice on unlabelled logits.

- :func:`create_estimator`: ``ac``, ``ts``, ``vs``, ``norcal``, ``doc``, ``atc``, ``ts-atc``, ``qc``, global or
  class-specific, for ``"classification"`` or ``"segmentation"``.
- :class:`ClassificationEstimator`, :class:`SegmentationEstimator` (binary and multi-class, ``"paper"`` or
  ``"moval"`` convention), :class:`QualityRegressionEstimator` (QC); all with ``fit``, ``estimate``, ``fitted``,
  ``to_dict`` / ``from_dict`` (JSON-able parameters).
- :func:`prediction_dice`: the true per-case Dice of the argmax prediction (for MAE against the estimates).
- :class:`SegmentationSetReducer` / :func:`reduce_segmentation_set`: the bounded-memory validation set of the fits.
"""

from __future__ import annotations

from .base import PerformanceEstimator
from .classification import CLASSIFICATION_METHODS, ClassificationEstimator
from .factory import CLASS_SPECIFIC_NAMES, ESTIMATOR_NAMES, TASKS, create_estimator, load_estimator
from .qc import QualityRegressionEstimator, classification_quality_features, segmentation_quality_features
from .reduction import (
    ReducedSegmentationSet,
    SegmentationSetReducer,
    confusion_counts,
    dice_from_confusion,
    prediction_dice,
    reduce_segmentation_set,
)
from .segmentation import CONVENTIONS, SEGMENTATION_METHODS, SegmentationEstimator
from .solver import SOLVERS, fit_scalar

__all__ = [
    "CLASSIFICATION_METHODS",
    "CLASS_SPECIFIC_NAMES",
    "CONVENTIONS",
    "ClassificationEstimator",
    "ESTIMATOR_NAMES",
    "PerformanceEstimator",
    "QualityRegressionEstimator",
    "ReducedSegmentationSet",
    "SEGMENTATION_METHODS",
    "SOLVERS",
    "SegmentationEstimator",
    "SegmentationSetReducer",
    "TASKS",
    "classification_quality_features",
    "confusion_counts",
    "create_estimator",
    "dice_from_confusion",
    "fit_scalar",
    "load_estimator",
    "prediction_dice",
    "reduce_segmentation_set",
    "segmentation_quality_features",
]
