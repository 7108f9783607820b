# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Per-case, per-class segmentation metrics: Dice (DSC), sensitivity (SEN), precision (PRC) and HD95.

:func:`segmentation_case_metrics` evaluates one case (one predicted and one reference segmentation of the same
grid) and returns, for every evaluated class, ``dice``, ``sensitivity``, ``precision``, ``hd95`` and the voxel
counts ``n_label`` (reference) and ``n_pred`` (prediction).

The numbers come from MONAI (:func:`monai.metrics.compute_dice`, :func:`monai.metrics.get_confusion_matrix` with
:func:`monai.metrics.compute_confusion_matrix_metric` for ``"sensitivity"`` / ``"precision"``, and
:func:`monai.metrics.compute_hausdorff_distance` with ``percentile=95``). HD95 is MONAI's symmetric 95th percentile
Hausdorff distance: the surface of a mask is the set of its voxels with at least one 6-connected (face) neighbour
outside the mask (outside the image counts as outside), the distances are Euclidean between voxel centres scaled by
``spacing``, the 95th percentile (linear interpolation) is taken of the prediction-to-reference distances and of the
reference-to-prediction distances, and HD95 is the larger of the two. It is in mm when ``spacing`` is given, and in
voxels otherwise.

Empty rules
-----------
When the reference or the prediction of a class is empty in a case, the metrics are set by these rules (they
change the reported means, so they are stated here and in the tables' footnote):

======================================  =====  =====  =====  =====
case                                     DSC    SEN    PRC    HD95
======================================  =====  =====  =====  =====
both empty (true negative case)          1      NaN    NaN    0
reference empty, prediction not (FP)     0      NaN    0      NaN
prediction empty, reference not (miss)   0      0      NaN    NaN
======================================  =====  =====  =====  =====

NaN means *undefined* (a ratio with a zero denominator): it is left out of the means, and the summaries of
:class:`~monai_imbalance.evaluation.report.SegmentationReport` report, for every metric, how many cases were defined.

Why HD95 is NaN, not a worst-case distance, for a missed or a spurious structure: a worst-case value (the image
diagonal, or a fixed constant such as BraTS' 373.13 mm) depends on the field of view and on the cropping, so tables of
different datasets or preprocessing are not comparable; and one such value dominates the mean of a small structure
(a single 400 mm miss among 5 mm cases), turning HD95 into a second detection-rate measure. Detection failures are
already counted where they belong: a miss scores DSC 0 and SEN 0, a spurious structure DSC 0 and PRC 0, and those
enter the means. HD95 then stays a boundary-quality measure over the cases where both surfaces exist, and the
number of cases where it was undefined is reported next to it (``hd95_count`` in the summary, ``(k/n)`` in the
Markdown table), so a method that only looks good because it misses hard cases is visible.

Inputs are one case, without batch dimension: integer label maps ``(*spatial)`` or ``(1, *spatial)``, or one-hot
maps ``(num_classes, *spatial)``, as :class:`torch.Tensor`, :class:`monai.data.MetaTensor` or :class:`numpy.ndarray`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import (
    compute_confusion_matrix_metric,
    compute_dice,
    compute_hausdorff_distance,
    get_confusion_matrix,
)
from monai.utils import convert_to_tensor

from monai_imbalance.utils import plain_tensor

__all__ = ["METRIC_NAMES", "COUNT_NAMES", "segmentation_case_metrics"]

#: The metric keys of every class entry, in table order.
METRIC_NAMES: tuple[str, ...] = ("dice", "sensitivity", "precision", "hd95")
#: The voxel-count keys of every class entry.
COUNT_NAMES: tuple[str, ...] = ("n_label", "n_pred")

ArrayLike = torch.Tensor | np.ndarray
SpacingLike = float | Sequence[float] | np.ndarray | torch.Tensor


def segmentation_case_metrics(
    pred: ArrayLike,
    label: ArrayLike,
    num_classes: int,
    spacing: SpacingLike | None = None,
    include_background: bool = False,
    spatial_dims: int | None = None,
) -> dict[int, dict[str, float]]:
    """Dice, sensitivity, precision and HD95 of every class of one case.

    Args:
        pred: the discrete prediction, an integer label map ``(*spatial)`` or ``(1, *spatial)``, or a one-hot map
            ``(num_classes, *spatial)`` with values in {0, 1}.
        label: the reference segmentation, in any of the formats of ``pred`` (the two may differ).
        num_classes: number of classes including the background (class 0); at least 2.
        spacing: voxel spacing, one number (isotropic) or one per spatial dimension, e.g. a MetaTensor's
            ``pixdim``. HD95 is in the unit of ``spacing`` (mm for NIfTI), in voxels when ``None``.
        include_background: whether class 0 is evaluated too.
        spatial_dims: number of spatial dimensions. ``None`` infers it: from the length of ``spacing`` when it has
            one per dimension, else 2 when an input is 2-D, else 3. Give it for 2-D inputs with a channel
            dimension, e.g. ``(1, H, W)`` or ``(C, H, W)``.

    Returns:
        ``{class_index: {"dice", "sensitivity", "precision", "hd95", "n_label", "n_pred"}}`` for the classes
        ``0..num_classes-1`` (``1..`` without background); metrics are floats (NaN when undefined, see the module
        docstring's empty rules), counts are ints.

    Raises:
        ValueError: when ``num_classes`` < 2, the shapes do not match or cannot be read as a label map or a one-hot
            map, a value is NaN or infinite, a label-map value is negative, not an integer or ``>= num_classes``,
            a one-hot value is not 0 or 1, or ``spacing`` is not positive and finite with one value per dimension.
    """
    if int(num_classes) != num_classes or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2 (background included), got {num_classes}.")
    num_classes = int(num_classes)
    pred_t = _to_cpu_tensor(pred, "pred")
    label_t = _to_cpu_tensor(label, "label")
    if spatial_dims is None:
        spatial_dims = _infer_spatial_dims(pred_t, label_t, spacing)
    spacing_list = _check_spacing(spacing, spatial_dims)
    pred_c = _canonical(pred_t, "pred", num_classes, spatial_dims)
    label_c = _canonical(label_t, "label", num_classes, spatial_dims)
    pred_shape = tuple(pred_c.shape[-spatial_dims:])
    label_shape = tuple(label_c.shape[-spatial_dims:])
    if pred_shape != label_shape:
        raise ValueError(
            f"shape mismatch: pred has spatial shape {pred_shape} (input {tuple(pred_t.shape)}), label has "
            f"{label_shape} (input {tuple(label_t.shape)}); they must be on the same grid "
            f"(spatial_dims={spatial_dims}; pass spatial_dims for 2-D inputs with a channel dimension)."
        )

    first = 0 if include_background else 1
    out: dict[int, dict[str, float]] = {}
    for c in range(first, num_classes):
        p = _class_mask(pred_c, c)
        y = _class_mask(label_c, c)
        out[c] = _binary_metrics(p, y, spacing_list)
    return out


def _binary_metrics(p: torch.Tensor, y: torch.Tensor, spacing: list[float] | None) -> dict[str, float]:
    """Metrics of one class from its boolean masks ``(*spatial)``; the empty rules, else MONAI's functions."""
    n_pred = int(p.sum())
    n_label = int(y.sum())
    nan = math.nan
    if n_label == 0 and n_pred == 0:
        values = {"dice": 1.0, "sensitivity": nan, "precision": nan, "hd95": 0.0}
    elif n_label == 0:
        values = {"dice": 0.0, "sensitivity": nan, "precision": 0.0, "hd95": nan}
    elif n_pred == 0:
        values = {"dice": 0.0, "sensitivity": 0.0, "precision": nan, "hd95": nan}
    else:
        # Crop to the bounding box of both masks (plus one voxel): TP/FP/FN and the surfaces are unchanged, and
        # small structures in large volumes cost little. MONAI's confusion matrix needs float (not bool) inputs.
        box = _bounding_box(p | y)
        yp = p[box][None, None].float()
        yt = y[box][None, None].float()
        dice = compute_dice(yp, yt, include_background=True, ignore_empty=False)
        cm = get_confusion_matrix(yp, yt, include_background=True)
        sen = compute_confusion_matrix_metric("sensitivity", cm)
        prc = compute_confusion_matrix_metric("precision", cm)
        with warnings.catch_warnings():
            # MONAI 1.6 passes its own deprecated `always_return_as_numpy` argument internally; not actionable here
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
            hd = compute_hausdorff_distance(yp, yt, include_background=True, percentile=95, spacing=spacing)
        values = {
            "dice": float(dice.flatten()[0]),
            "sensitivity": float(sen.flatten()[0]),
            "precision": float(prc.flatten()[0]),
            "hd95": float(hd.flatten()[0]),
        }
    return {**values, "n_label": n_label, "n_pred": n_pred}


def _to_cpu_tensor(x: Any, name: str) -> torch.Tensor:
    """A plain CPU tensor (MetaTensor metadata dropped) from a tensor, MetaTensor or array."""
    if not isinstance(x, (torch.Tensor, np.ndarray)):
        raise ValueError(f"{name} must be a torch.Tensor, MetaTensor or numpy array, got {type(x).__name__}.")
    t = plain_tensor(convert_to_tensor(x, track_meta=False), detach=True).cpu()
    if t.ndim < 2:
        raise ValueError(f"{name} must have at least 2 spatial dimensions, got shape {tuple(t.shape)}.")
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or infinite values.")
    if t.is_complex():
        raise ValueError(f"{name} must be real-valued, got dtype {t.dtype}.")
    return t


def _spacing_array(spacing: SpacingLike) -> np.ndarray:
    if isinstance(spacing, torch.Tensor):
        spacing = spacing.detach().cpu().numpy()
    return np.asarray(spacing, dtype=np.float64).ravel()


def _infer_spatial_dims(pred: torch.Tensor, label: torch.Tensor, spacing: SpacingLike | None) -> int:
    if spacing is not None and _spacing_array(spacing).size > 1:
        return int(_spacing_array(spacing).size)
    return 2 if min(pred.ndim, label.ndim) == 2 else 3


def _check_spacing(spacing: SpacingLike | None, spatial_dims: int) -> list[float] | None:
    if spacing is None:
        return None
    values = _spacing_array(spacing)
    if values.size == 1:
        values = np.repeat(values, spatial_dims)
    if values.size != spatial_dims:
        raise ValueError(f"spacing must have 1 or {spatial_dims} values (one per spatial dimension), got {values}.")
    if not (np.all(np.isfinite(values)) and np.all(values > 0)):
        raise ValueError(f"spacing must be positive and finite, got {values}.")
    return values.tolist()


def _canonical(x: torch.Tensor, name: str, num_classes: int, spatial_dims: int) -> torch.Tensor:
    """A label map ``(*spatial)`` of int64, or a one-hot map ``(num_classes, *spatial)`` of bool."""
    if x.ndim == spatial_dims + 1 and x.shape[0] == 1:
        x = x[0]
    if x.ndim == spatial_dims:
        if x.dtype == torch.bool:
            x = x.to(torch.int64)
        if x.is_floating_point() and not bool((x == torch.round(x)).all()):
            raise ValueError(f"{name} label map has non-integer values; pass a discrete label map or one-hot map.")
        if x.numel() and int(x.min()) < 0:
            raise ValueError(f"{name} label map has negative values (min {int(x.min())}).")
        if x.numel() and int(x.max()) >= num_classes:
            raise ValueError(
                f"{name} label map has value {int(x.max())} >= num_classes ({num_classes}); "
                f"classes are 0..{num_classes - 1}."
            )
        return x.to(torch.int64)
    if x.ndim == spatial_dims + 1:
        if x.shape[0] != num_classes:
            raise ValueError(
                f"{name} with shape {tuple(x.shape)} is neither a label map (1, *spatial) nor a one-hot map with "
                f"num_classes={num_classes} channels."
            )
        if not bool(((x == 0) | (x == 1)).all()):
            raise ValueError(f"{name} one-hot map of shape {tuple(x.shape)} has values other than 0 and 1.")
        return x.bool()
    raise ValueError(
        f"{name} has shape {tuple(x.shape)}, expected (*spatial), (1, *spatial) or ({num_classes}, *spatial) with "
        f"{spatial_dims} spatial dimensions (one case, no batch dimension)."
    )


def _class_mask(x: torch.Tensor, c: int) -> torch.Tensor:
    """Boolean mask ``(*spatial)`` of class ``c`` from a canonical label map or one-hot map."""
    return x[c] if x.dtype == torch.bool else x == c


def _bounding_box(mask: torch.Tensor) -> tuple[slice, ...]:
    """Slices of the bounding box of a non-empty boolean mask, grown by one voxel within the image."""
    box = []
    for d in range(mask.ndim):
        others = tuple(i for i in range(mask.ndim) if i != d)
        idx = torch.nonzero(mask.any(dim=others) if others else mask).flatten()
        box.append(slice(max(int(idx[0]) - 1, 0), min(int(idx[-1]) + 2, mask.shape[d])))
    return tuple(box)
