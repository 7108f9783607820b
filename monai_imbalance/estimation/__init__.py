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
- :data:`ESTIMATOR_SPECS` (``"cs-ts"`` = class-specific TS, ...), :func:`create_estimators`,
  :class:`SegmentationFitSet` (fit them all on one bounded-memory validation set), :func:`save_estimators` /
  :func:`load_estimators` (one JSON file).
- :class:`ShiftBenchmark`: every estimator on every simulated shift and severity and on natural shifts -> the MAE
  table (:func:`summarize_shift_benchmark`, :func:`format_mae_table`).
"""

from __future__ import annotations

from .base import PerformanceEstimator
from .benchmark import CONDITION_KINDS, ShiftBenchmark, format_mae_table, summarize_shift_benchmark
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
from .suite import (
    ESTIMATOR_FILE_FORMAT,
    ESTIMATOR_SPECS,
    SegmentationFitSet,
    create_estimators,
    load_estimators,
    parse_estimator_spec,
    read_estimator_file,
    save_estimators,
)

__all__ = [
    "CLASSIFICATION_METHODS",
    "CLASS_SPECIFIC_NAMES",
    "CONDITION_KINDS",
    "CONVENTIONS",
    "ClassificationEstimator",
    "ESTIMATOR_FILE_FORMAT",
    "ESTIMATOR_NAMES",
    "ESTIMATOR_SPECS",
    "PerformanceEstimator",
    "QualityRegressionEstimator",
    "ReducedSegmentationSet",
    "SEGMENTATION_METHODS",
    "SOLVERS",
    "SegmentationEstimator",
    "SegmentationFitSet",
    "SegmentationSetReducer",
    "ShiftBenchmark",
    "TASKS",
    "classification_quality_features",
    "confusion_counts",
    "create_estimator",
    "create_estimators",
    "dice_from_confusion",
    "fit_scalar",
    "format_mae_table",
    "load_estimator",
    "load_estimators",
    "parse_estimator_spec",
    "prediction_dice",
    "read_estimator_file",
    "reduce_segmentation_set",
    "save_estimators",
    "segmentation_quality_features",
    "summarize_shift_benchmark",
]
