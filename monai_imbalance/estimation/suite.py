# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""A named set of segmentation performance estimators, as the handler and the bundle use them: the paper's spec names
(``"cs-ts"`` = class-specific TS), one labelled validation set fitting all of them at bounded memory, and one JSON file
holding them all.

Reference: Z. Li, K. Kamnitsas, M. Islam, C. Chen, B. Glocker, "Estimating model performance under domain shifts with
class-specific confidence scores", MICCAI 2022 (the rows of its Table 1).

- :data:`ESTIMATOR_SPECS`: the twelve estimators of the study, ``ac``, ``ts``, ``cs-ts``, ``doc``, ``cs-doc``,
  ``atc``, ``cs-atc``, ``ts-atc``, ``cs-ts-atc``, ``vs``, ``norcal``, ``qc``; :func:`parse_estimator_spec` and
  :func:`create_estimators` build them with :func:`~.factory.create_estimator`.
- :class:`SegmentationFitSet`: labelled validation cases added one at a time (e.g. from an evaluator's iterations);
  the calibration estimators are fitted on one shared
  :class:`~.reduction.SegmentationSetReducer` (:meth:`~.segmentation.SegmentationEstimator.fit_reduced`, so the fit
  equals ``est.fit(logits, labels)`` with the same ``keep_margin`` / ``background_samples``), QC on per-case features
  computed as each case arrives (:func:`~.qc.segmentation_quality_features`, the same regression as
  :meth:`~.qc.QualityRegressionEstimator.fit`). No full-resolution logits are kept.
- :func:`save_estimators` / :func:`read_estimator_file` / :func:`load_estimators`: one JSON file (format
  :data:`ESTIMATOR_FILE_FORMAT`) with the label names, the number of classes and every estimator's
  :meth:`~.base.PerformanceEstimator.to_dict`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .base import PerformanceEstimator
from .factory import CLASS_SPECIFIC_NAMES, ESTIMATOR_NAMES, create_estimator, load_estimator
from .inputs import check_segmentation_case
from .qc import QualityRegressionEstimator, segmentation_quality_features
from .reduction import SegmentationSetReducer, dice_from_confusion
from .segmentation import SegmentationEstimator

__all__ = [
    "ESTIMATOR_SPECS",
    "ESTIMATOR_FILE_FORMAT",
    "parse_estimator_spec",
    "create_estimators",
    "SegmentationFitSet",
    "save_estimators",
    "read_estimator_file",
    "load_estimators",
]

#: The estimators of the study (rows of the paper's Table 1), ``cs-`` marking the class-specific variants.
ESTIMATOR_SPECS: tuple[str, ...] = (
    "ac",
    "ts",
    "cs-ts",
    "doc",
    "cs-doc",
    "atc",
    "cs-atc",
    "ts-atc",
    "cs-ts-atc",
    "vs",
    "norcal",
    "qc",
)
#: The ``"format"`` tag of the estimator file.
ESTIMATOR_FILE_FORMAT = "monai_imbalance.estimators/1"


def parse_estimator_spec(spec: str) -> tuple[str, bool]:
    """``"cs-ts-atc"`` -> ``("ts-atc", True)``; ``"atc"`` -> ``("atc", False)`` (case-insensitive, ``_`` for ``-``).

    Raises:
        ValueError: not a string, an unknown name, or ``cs-`` on a name without a class-specific variant.
    """
    if not isinstance(spec, str):
        raise ValueError(f"estimator spec must be a string such as 'cs-ts', got {type(spec).__name__}.")
    key = spec.strip().lower().replace("_", "-")
    class_specific = key.startswith("cs-")
    name = key[3:] if class_specific else key
    if name not in ESTIMATOR_NAMES:
        raise ValueError(f"unknown estimator spec {spec!r}; choose from {list(ESTIMATOR_SPECS)}.")
    if class_specific and name not in CLASS_SPECIFIC_NAMES:
        raise ValueError(
            f"estimator spec {spec!r}: {name!r} has no class-specific variant (those are {list(CLASS_SPECIFIC_NAMES)})."
        )
    return name, class_specific


def _spec_name(spec: str) -> str:
    name, cs = parse_estimator_spec(spec)
    return f"cs-{name}" if cs else name


def create_estimators(
    specs: Sequence[str] | str | None = None, qc_ridge: float = 1.0, **kwargs: Any
) -> dict[str, PerformanceEstimator]:
    """Unfitted segmentation estimators by spec, in the order given.

    Args:
        specs: spec names (default :data:`ESTIMATOR_SPECS`); one string is one spec.
        qc_ridge: the ridge penalty of ``"qc"``.
        kwargs: passed to every :class:`~.segmentation.SegmentationEstimator` (``convention``, ``solver``, ...).

    Returns:
        ``{normalised spec: estimator}``.

    Raises:
        ValueError: an empty list, a bad or repeated spec, or a keyword the estimators do not take.
    """
    specs = ESTIMATOR_SPECS if specs is None else ([specs] if isinstance(specs, str) else list(specs))
    if not specs:
        raise ValueError(f"create_estimators: specs is empty; give at least one of {list(ESTIMATOR_SPECS)}.")
    out: dict[str, PerformanceEstimator] = {}
    for spec in specs:
        key = _spec_name(spec)
        if key in out:
            raise ValueError(f"create_estimators: estimator spec {spec!r} is repeated in {list(specs)}.")
        name, cs = parse_estimator_spec(key)
        options = {"ridge": qc_ridge} if name == "qc" else kwargs
        out[key] = create_estimator(name, class_specific=cs, task="segmentation", **options)
    return out


class SegmentationFitSet:
    """Labelled validation cases for fitting a set of segmentation estimators, at bounded memory.

    Each :meth:`add` reduces the case at once (:class:`~.reduction.SegmentationSetReducer`: foreground and uncertain
    voxels kept, confident background sampled, confusion counts at full resolution) and, if ``quality_features``,
    computes the QC features of its prediction; the caller can then drop the logits.

    Args:
        keep_margin: see :class:`~.reduction.SegmentationSetReducer`.
        background_samples: see :class:`~.reduction.SegmentationSetReducer`.
        quality_features: compute the per-case QC features (needed to fit ``"qc"``).
        name: who collects, for error messages.

    Shapes:
        ``add(logits, label)``: ``(C, *spatial)`` logits, ``(*spatial)`` or ``(1, *spatial)`` label;
        :attr:`true_dice`: ``(N, C - 1)`` float64.
    """

    def __init__(
        self,
        keep_margin: float | None = 10.0,
        background_samples: int = 4096,
        quality_features: bool = True,
        name: str = "SegmentationFitSet",
    ) -> None:
        self.name = name
        self.quality_features = bool(quality_features)
        self._reducer = SegmentationSetReducer(keep_margin, background_samples, name=name)
        self._features: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self._reducer)

    @property
    def num_classes(self) -> int | None:
        """``C`` of the cases added (``None`` before the first)."""
        return self._reducer.num_classes

    def add(self, logits: Any, label: Any) -> None:
        """Add one labelled case (checked as the estimators' ``fit`` checks it)."""
        z, y = check_segmentation_case(logits, label, len(self), self.name, self.num_classes)
        self._reducer.add(z, y)
        if self.quality_features:
            self._features.append(segmentation_quality_features(z).cpu())

    @property
    def confusion(self) -> torch.Tensor:
        """``(N, C, C)`` int64 full-resolution confusion counts ``[case, predicted, true]``."""
        if not len(self):
            raise ValueError(f"{self.name}: no labelled case was added.")
        return torch.stack([c.cpu() for c in self._reducer.confusion])

    @property
    def true_dice(self) -> torch.Tensor:
        """``(N, C - 1)`` float64 true Dice of the argmax prediction of each case (exact)."""
        return dice_from_confusion(self.confusion)[:, 1:]

    def fit(self, estimators: Mapping[str, PerformanceEstimator]) -> dict[str, PerformanceEstimator]:
        """Fit every estimator (in place) on the cases added; returns them as a dict.

        Raises:
            ValueError: no case was added, an estimator that is not a segmentation estimator, ``"qc"`` without
                ``quality_features``, no foreground class in any label (QC).
        """
        if not len(self):
            raise ValueError(
                f"{self.name}: no labelled validation case was collected, nothing to fit the estimators on (did the "
                "validation evaluator run, and do its batches carry labels?)."
            )
        reduced = None
        for key, est in estimators.items():
            if isinstance(est, QualityRegressionEstimator):
                if est.task != "segmentation":
                    raise ValueError(f"{self.name}: estimator {key!r} is a classification QC, not a segmentation one.")
                if not self.quality_features:
                    raise ValueError(f"{self.name}: estimator {key!r} (QC) needs quality_features=True.")
                self._fit_quality(est)
            elif isinstance(est, SegmentationEstimator):
                reduced = self._reducer.finalize() if reduced is None else reduced
                est.fit_reduced(reduced)
            else:
                raise ValueError(
                    f"{self.name}: estimator {key!r} is a {type(est).__name__}, not a segmentation estimator."
                )
        return dict(estimators)

    def _fit_quality(self, est: QualityRegressionEstimator) -> None:
        """The regression of :meth:`QualityRegressionEstimator.fit` (segmentation) on the stored features."""
        conf = self.confusion
        x = torch.stack(self._features)  # (N, C-1, F)
        t = dice_from_confusion(conf)[:, 1:]  # (N, C-1)
        m = conf.sum(1)[:, 1:] > 0  # class present in the case's label
        est.fit_features(x, t, m, name=self.name, stacklevel=4)


def _labels_dict(labels: Mapping[Any, str] | Sequence[str] | None, num_classes: int) -> dict[int, str]:
    if labels is None:
        return {0: "background", **{c: f"class_{c}" for c in range(1, num_classes)}}
    items = dict(labels) if isinstance(labels, Mapping) else dict(enumerate(labels))
    out = {int(k): str(v) for k, v in items.items()}
    if sorted(out) != list(range(num_classes)):
        raise ValueError(f"labels {items} do not name the classes 0..{num_classes - 1} of the fitted estimators.")
    return dict(sorted(out.items()))


def save_estimators(
    path: str | os.PathLike,
    estimators: Mapping[str, PerformanceEstimator],
    labels: Mapping[Any, str] | Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write fitted estimators to one JSON file (atomically).

    Args:
        path: the ``.json`` file (its folder is created).
        estimators: ``{spec: fitted estimator}``, all with the same number of classes.
        labels: class names ``{index: name}`` or a list (default ``background``, ``class_1``, ...).
        extra: JSON-able information stored under ``"info"`` (e.g. the validation Dice).

    Raises:
        ValueError: no estimator, an unfitted one, different class counts, labels not naming ``0..C-1``.
    """
    from monai_imbalance.utils import atomic_write_text

    if not estimators:
        raise ValueError("save_estimators: no estimator to save.")
    unfitted = [k for k, e in estimators.items() if not e.fitted]
    if unfitted:
        raise ValueError(f"save_estimators: estimator(s) {unfitted} are not fitted.")
    counts = {k: e.num_classes for k, e in estimators.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"save_estimators: the estimators were fitted with different class counts {counts}.")
    c = int(next(iter(counts.values())))
    data = {
        "format": ESTIMATOR_FILE_FORMAT,
        "num_classes": c,
        "labels": {str(k): v for k, v in _labels_dict(labels, c).items()},
        "estimators": {k: e.to_dict() for k, e in estimators.items()},
        "info": dict(extra or {}),
    }
    return atomic_write_text(json.dumps(data, indent=2) + "\n", path)


def read_estimator_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a file of :func:`save_estimators`; ``"labels"`` comes back as ``{int: name}``.

    Raises:
        FileNotFoundError: no file at ``path`` (the message names it and how to create it).
        ValueError: not such a file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no fitted estimator file at '{path}': fit the estimators first (the bundle's fit config, or "
            "PerformanceEstimationHandler in 'fit' mode), or point to the file written by that run."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"'{path}' is not valid JSON: {err}.") from err
    if not isinstance(data, dict) or data.get("format") != ESTIMATOR_FILE_FORMAT:
        raise ValueError(f"'{path}' is not a fitted-estimator file (format {ESTIMATOR_FILE_FORMAT!r} expected).")
    missing = [k for k in ("num_classes", "labels", "estimators") if k not in data]
    if missing:
        raise ValueError(f"'{path}' lacks the keys {missing}.")
    data["labels"] = _labels_dict(data["labels"], int(data["num_classes"]))
    return data


def load_estimators(
    path: str | os.PathLike, names: Sequence[str] | str | None = None
) -> dict[str, PerformanceEstimator]:
    """The fitted estimators of a file of :func:`save_estimators`, all or the ``names`` chosen (in that order).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a bad file, or a chosen name not in it (the message lists those that are).
    """
    data = read_estimator_file(path)
    stored = data["estimators"]
    keys = list(stored) if names is None else [_spec_name(n) for n in ([names] if isinstance(names, str) else names)]
    absent = [k for k in keys if k not in stored]
    if absent:
        raise ValueError(f"estimator(s) {absent} are not in '{path}'; it holds {list(stored)}.")
    out = {}
    for k in keys:
        est = load_estimator(stored[k])
        if not est.fitted:
            raise ValueError(f"estimator {k!r} in '{path}' is not fitted.")
        out[k] = est
    return out
