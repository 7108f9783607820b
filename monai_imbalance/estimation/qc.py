# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""QC: a learned quality regressor from prediction features to the metric, the learned baseline of the
performance-estimation study (Li et al., MICCAI 2022, the compared baselines; after the segmentation quality control of
Robinson et al., "Real-time prediction of segmentation quality", MICCAI 2018).

Not in the authors' released code; this is the best-grounded simple form. Features are computed from the logits only
(the model's own argmax prediction, no image, no labels):

- segmentation, per case and foreground class ``c``: ``log(1 + n_c)`` (predicted voxels), the mean confidence
  ``max softmax`` and the mean normalised entropy ``H / log C`` over the voxels predicted as ``c`` (0 and 1 when none
  is), the boundary fraction of the predicted mask (voxels with a 26-neighbour (3 x 3 x 3; 8 in 2D) outside the mask
  or the image, over the mask's voxels; 0 when empty) and the uncalibrated soft Dice of the ``"paper"`` convention;
  target: the true Dice of the case;
- classification, per sample: the confidence, ``1 - H / log C`` and the gap between the two largest probabilities;
  target: correctness ``1[y_hat = y]``.

The regressor is ridge regression on standardised features (closed form, ``torch.linalg.lstsq`` on the augmented
system, intercept not penalised), one per foreground class, trained on the validation cases whose labels contain the
class; a pooled regressor over all classes is the fallback (with a warning) for a class absent from the validation
labels. Predictions are clipped to ``[0, 1]``; for classification the accuracy is the mean predicted correctness.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F

from .base import PerformanceEstimator
from .calibration import channel_argmax
from .inputs import check_cases, check_classification_inputs, check_segmentation_case
from .reduction import confusion_counts, dice_from_confusion

__all__ = ["QualityRegressionEstimator", "segmentation_quality_features", "classification_quality_features"]

SEGMENTATION_FEATURES: tuple[str, ...] = (
    "log_volume",
    "mean_confidence",
    "mean_entropy",
    "boundary_fraction",
    "soft_dice",
)
CLASSIFICATION_FEATURES: tuple[str, ...] = ("confidence", "certainty", "top2_gap")


def segmentation_quality_features(logits: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """``(C - 1, 5)`` float64 features (see the module docstring) of one case's ``(C, *spatial)`` logits, 1 to 3
    spatial dimensions.

    Raises:
        ValueError: more than 3 spatial dimensions.
    """
    c = logits.shape[0]
    spatial = logits.shape[1:]
    nd = len(spatial)
    if nd > 3:
        raise ValueError(f"segmentation_quality_features: 1 to 3 spatial dimensions, got shape {tuple(logits.shape)}.")
    zf = logits.reshape(c, -1)
    probs = torch.softmax(zf.to(torch.float32 if zf.dtype != torch.float64 else zf.dtype), dim=0)
    pred = channel_argmax(zf)
    conf = probs.gather(0, pred[None]).squeeze(0).to(torch.float64)
    ent = -(probs * torch.log(probs.clamp_min(1e-30))).sum(0).to(torch.float64) / math.log(c)
    n = torch.bincount(pred, minlength=c).to(torch.float64)
    has = n > 0
    conf_sum = torch.zeros(c, dtype=torch.float64, device=zf.device).index_add_(0, pred, conf)
    ent_sum = torch.zeros(c, dtype=torch.float64, device=zf.device).index_add_(0, pred, ent)
    mean_conf = torch.where(has, conf_sum / n.clamp_min(1), torch.zeros_like(n))
    mean_ent = torch.where(has, ent_sum / n.clamp_min(1), torch.ones_like(n))
    soft = (2 * conf_sum + smooth) / (probs.sum(1, dtype=torch.float64) + n + smooth)
    onehot = (pred.reshape(spatial)[None] == torch.arange(1, c, device=zf.device).reshape(-1, *([1] * nd))).float()
    outside = F.pad(1.0 - onehot[None], (1, 1) * nd, value=1.0)
    pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[nd - 1]
    near_outside = pool(outside, kernel_size=3, stride=1)[0] > 0
    boundary = (onehot.bool() & near_outside).reshape(c - 1, -1).sum(1).to(torch.float64)
    frac = torch.where(has[1:], boundary / n[1:].clamp_min(1), torch.zeros_like(boundary))
    return torch.stack([torch.log1p(n[1:]), mean_conf[1:], mean_ent[1:], frac, soft[1:]], dim=1)


def classification_quality_features(logits: torch.Tensor) -> torch.Tensor:
    """``(N, 3)`` float64 features of ``(N, C)`` logits: confidence, ``1 - H / log C``, top-2 probability gap."""
    probs = torch.softmax(logits.to(torch.float64), dim=1)
    top2 = probs.topk(2, dim=1).values
    ent = -(probs * torch.log(probs.clamp_min(1e-300))).sum(1) / math.log(logits.shape[1])
    return torch.stack([top2[:, 0], 1.0 - ent, top2[:, 0] - top2[:, 1]], dim=1)


def ridge_regression(x: torch.Tensor, y: torch.Tensor, ridge: float) -> dict[str, list[float]]:
    """Ridge regression on standardised features, intercept unpenalised: ``{"mean", "std", "coef"}``."""
    n, f = x.shape
    mean = x.mean(0)
    std = x.std(0, unbiased=False)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    design = torch.cat([torch.ones(n, 1, dtype=x.dtype, device=x.device), (x - mean) / std], dim=1)
    penalty = math.sqrt(ridge) * torch.cat(
        [torch.zeros(f, 1, dtype=x.dtype, device=x.device), torch.eye(f, dtype=x.dtype, device=x.device)], dim=1
    )
    a = torch.cat([design, penalty])
    b = torch.cat([y, torch.zeros(f, dtype=y.dtype, device=y.device)])
    coef = torch.linalg.lstsq(a.cpu(), b.cpu()[:, None]).solution[:, 0]
    return {"mean": mean.tolist(), "std": std.tolist(), "coef": coef.tolist()}


def _predict(model: dict[str, list[float]], x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(model["mean"], dtype=torch.float64, device=x.device)
    std = torch.tensor(model["std"], dtype=torch.float64, device=x.device)
    coef = torch.tensor(model["coef"], dtype=torch.float64, device=x.device)
    return (coef[0] + ((x - mean) / std) @ coef[1:]).clamp(0.0, 1.0)


class QualityRegressionEstimator(PerformanceEstimator):
    """QC: ridge regression from prediction features to the Dice (segmentation) or correctness (classification).

    Args:
        method: ``"qc"``.
        class_specific: must be ``False`` (a segmentation model is already fitted per foreground class).
        task: ``"segmentation"`` or ``"classification"``.
        ridge: ridge penalty ``>= 0`` on the standardised features.

    Shapes:
        As :class:`~monai_imbalance.estimation.segmentation.SegmentationEstimator` (segmentation) and
        :class:`~monai_imbalance.estimation.classification.ClassificationEstimator` (classification).

    Raises:
        ValueError: another method, ``class_specific=True``, an unknown task, ``ridge < 0``; at fit: bad inputs or
            no foreground class in any validation label (segmentation).
        RuntimeError: ``estimate`` before ``fit``.
    """

    def __init__(
        self, method: str = "qc", class_specific: bool = False, task: str = "segmentation", ridge: float = 1.0
    ) -> None:
        name = type(self).__name__
        if str(method).lower() != "qc":
            raise ValueError(f"{name}: method must be 'qc', got {method!r}.")
        if class_specific:
            raise ValueError(f"{name}: class_specific=True is not defined for 'qc'.")
        if task not in ("segmentation", "classification"):
            raise ValueError(f"{name}: unknown task {task!r}; choose 'classification' or 'segmentation'.")
        ridge = float(ridge)
        if not (ridge >= 0 and math.isfinite(ridge)):
            raise ValueError(f"{name}: ridge must be a finite number >= 0, got {ridge}.")
        super().__init__("qc", False, {"task": task, "ridge": ridge})
        self.task = task  # type: ignore[misc]  # QC serves both tasks
        self.ridge = ridge

    # ------------------------------------------------------------------ fit
    def fit(self, logits: Any, labels: Any) -> QualityRegressionEstimator:
        """Fit on labelled validation data (per-case features are computed one case at a time). Returns ``self``."""
        if self.task == "classification":
            z, y = check_classification_inputs(logits, labels, self._name())
            x = classification_quality_features(z)
            target = (z.argmax(1) == y).to(torch.float64)
            self._set_fitted(z.shape[1], {"global": ridge_regression(x, target, self.ridge)})
            return self
        name = self._name()
        n = check_cases(logits, labels, name)
        feats, dice, present, c = [], [], [], None
        for i in range(n):
            z, y = check_segmentation_case(logits[i], labels[i], i, name, c)
            c = z.shape[0]
            feats.append(segmentation_quality_features(z))
            conf = confusion_counts(channel_argmax(z), y, c)
            dice.append(dice_from_confusion(conf)[1:])
            present.append(conf.sum(0)[1:] > 0)
        x, t, m = torch.stack(feats), torch.stack(dice), torch.stack(present)  # (N, C-1, F), (N, C-1), (N, C-1)
        return self.fit_features(x, t, m, name=name, stacklevel=3)

    def fit_features(
        self, x: torch.Tensor, t: torch.Tensor, present: torch.Tensor, name: str | None = None, stacklevel: int = 2
    ) -> QualityRegressionEstimator:
        """Fit the segmentation regressors on precomputed features (what :meth:`fit` does after its feature pass).

        Args:
            x: ``(N, C-1, F)`` per-case, per-foreground-class features (:func:`segmentation_quality_features`).
            t: ``(N, C-1)`` true Dice of the cases' predictions.
            present: ``(N, C-1)`` bool, whether the class is in the case's label (only those cases train its regressor).
            name: the name in errors and warnings (default this estimator's).
            stacklevel: of the absent-class warning.

        Returns:
            ``self``: one ridge regressor per foreground class, and a pooled one for classes absent from every case.
        """
        name = self._name() if name is None else name
        if not bool(present.any()):
            raise ValueError(f"{name}: no foreground class in any validation label: the QC regressor has no target.")
        pooled = ridge_regression(x[present], t[present], self.ridge)
        models, absent = [], []
        for k in range(x.shape[1]):
            rows = present[:, k]
            if bool(rows.any()):
                models.append(ridge_regression(x[rows, k], t[rows, k], self.ridge))
            else:
                absent.append(k + 1)
                models.append(pooled)
        if absent:
            warnings.warn(
                f"{name}: class(es) {absent} absent from the validation labels: the pooled regressor is used.",
                UserWarning,
                stacklevel=stacklevel,
            )
        self._set_fitted(x.shape[1] + 1, {"per_class": models, "pooled": pooled})
        return self

    # ------------------------------------------------------------- estimate
    def estimate_case(self, logits: Any) -> torch.Tensor:
        """Predicted Dice of one case's ``(C, *spatial)`` logits, ``(C - 1,)`` float64 (segmentation)."""
        self._require_fitted()
        if self.task != "segmentation":
            raise ValueError(
                f"{self._name()}: estimate_case is for segmentation; this estimator is for classification."
            )
        z, _ = check_segmentation_case(logits, None, 0, self._name(), self._num_classes)
        return self._case(z)

    def _case(self, z: torch.Tensor) -> torch.Tensor:
        x = segmentation_quality_features(z)
        return torch.stack([_predict(model, x[k]) for k, model in enumerate(self._params["per_class"])]).cpu()

    def estimate(self, logits: Any) -> dict[str, Any]:
        """Segmentation: ``{"mean": (C - 1,), "per_case": (N, C - 1)}``; classification: ``{"overall": float,
        "per_class": (C,)}`` (NaN for a class never predicted). All in ``[0, 1]``."""
        self._require_fitted()
        name = self._name()
        if self.task == "classification":
            z, _ = check_classification_inputs(logits, None, name, self._num_classes)
            scores = _predict(self._params["global"], classification_quality_features(z))
            pred = z.argmax(1)
            c = z.shape[1]
            sums = torch.zeros(c, dtype=torch.float64, device=z.device).index_add_(0, pred, scores)
            counts = torch.bincount(pred, minlength=c).to(torch.float64)
            per_class = torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, float("nan")))
            return {"overall": float(scores.mean()), "per_class": per_class.cpu()}
        n = check_cases(logits, None, name)
        rows = []
        for i in range(n):
            z, _ = check_segmentation_case(logits[i], None, i, name, self._num_classes)
            rows.append(self._case(z))
        per_case = torch.stack(rows)
        return {"mean": per_case.mean(0), "per_case": per_case}
