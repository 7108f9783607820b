# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""``create_estimator``: any performance estimator by name, for classification or segmentation.

Reference: Z. Li, K. Kamnitsas, M. Islam, C. Chen, B. Glocker, "Estimating model performance under domain shifts with
class-specific confidence scores", MICCAI 2022, method section.
"""

from __future__ import annotations

import inspect
from typing import Any

from .base import PerformanceEstimator
from .classification import CLASS_SPECIFIC_METHODS, ClassificationEstimator
from .qc import QualityRegressionEstimator
from .segmentation import SegmentationEstimator

__all__ = ["ESTIMATOR_NAMES", "CLASS_SPECIFIC_NAMES", "TASKS", "create_estimator", "load_estimator"]

#: Every estimator name.
ESTIMATOR_NAMES: tuple[str, ...] = ("ac", "ts", "vs", "norcal", "doc", "atc", "ts-atc", "qc")
#: The names with a class-specific variant (CS-TS, CS-DoC, CS-ATC, CS-TS-ATC).
CLASS_SPECIFIC_NAMES: tuple[str, ...] = CLASS_SPECIFIC_METHODS
TASKS: tuple[str, ...] = ("classification", "segmentation")


def create_estimator(
    name: str, class_specific: bool = False, task: str = "segmentation", **kwargs: Any
) -> PerformanceEstimator:
    """Build a performance estimator.

    Combinations: every name for both tasks; ``class_specific=True`` for ``ts``, ``doc``, ``atc`` and ``ts-atc``
    only (the paper defines no class-specific AC, VS, NORCAL or QC: AC has no parameter, VS is already per class,
    NORCAL's one ``gamma`` acts through the class frequencies, QC is a regressor).

    Classes: ``qc`` builds a :class:`~.qc.QualityRegressionEstimator` for either task; the other names build a
    :class:`~.segmentation.SegmentationEstimator` (task ``"segmentation"``) or a
    :class:`~.classification.ClassificationEstimator` (task ``"classification"``).

    Args:
        name: ``"ac"``, ``"ts"``, ``"vs"``, ``"norcal"``, ``"doc"``, ``"atc"``, ``"ts-atc"`` or ``"qc"``
            (case-insensitive, ``_`` for ``-`` accepted).
        class_specific: one parameter per class.
        task: ``"classification"`` or ``"segmentation"``.
        kwargs: passed to the estimator class (segmentation: ``convention``, ``solver``, ``keep_margin``,
            ``background_samples``, ``smooth``, ``class_counts``; classification: ``solver``, ``class_counts``;
            QC: ``ridge``).

    Raises:
        ValueError: an unknown name or task, ``class_specific=True`` for a name without that variant, or a keyword
            the estimator does not take.
    """
    key = str(name).lower().replace("_", "-")
    if key not in ESTIMATOR_NAMES:
        raise ValueError(f"create_estimator: unknown estimator name {name!r}; choose one of {list(ESTIMATOR_NAMES)}.")
    if task not in TASKS:
        raise ValueError(f"create_estimator: unknown task {task!r}; choose one of {list(TASKS)}.")
    if class_specific and key not in CLASS_SPECIFIC_NAMES:
        raise ValueError(
            f"create_estimator: class_specific=True is not defined for {key!r} (task {task!r}); class-specific "
            f"variants exist for {list(CLASS_SPECIFIC_NAMES)} only."
        )
    if key == "qc":
        cls: type[PerformanceEstimator] = QualityRegressionEstimator
        kwargs = {"task": task, **kwargs}
    else:
        cls = SegmentationEstimator if task == "segmentation" else ClassificationEstimator
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "method", "class_specific"}
    unknown = sorted(set(kwargs) - accepted - ({"task"} if key == "qc" else set()))
    if unknown:
        raise ValueError(
            f"create_estimator: {cls.__name__} ({key!r}, task {task!r}) takes no keyword(s) {unknown}; "
            f"it accepts {sorted(accepted)}."
        )
    return cls(method=key, class_specific=class_specific, **kwargs)


def load_estimator(data: dict[str, Any]) -> PerformanceEstimator:
    """Rebuild any estimator from :meth:`~.base.PerformanceEstimator.to_dict` output (e.g. read from JSON)."""
    return PerformanceEstimator.from_dict(data)
