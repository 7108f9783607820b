# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""A bounded-memory form of a labelled 3D validation set for fitting the segmentation estimators, and the true Dice
of a model's own (argmax) prediction.

What the fits need (Li et al., MICCAI 2022, the segmentation estimators): per case ``n`` and class ``c``, sums over
voxels of calibrated probabilities, ``A_nc = sum_{v: y_hat_v = c} p~_vc`` and ``P_nc = sum_v p~_vc``, the predicted and
true voxel counts, and, for the voxel-level fits, weighted means of the confidence over the voxels predicted as one
class. No spatial structure is used, so the set is kept as a flat list of voxels, built one case at a time
(:class:`SegmentationSetReducer`; the full-resolution logits of a case are released once it is added):

- **kept exactly** (their logits, channel-first ``(C, V)``, float32, or float64 when given): every voxel predicted
  as foreground, every voxel labelled foreground, and every voxel whose logit margin ``z_(1) - z_(2)`` (top-1 minus
  top-2) is below ``keep_margin``. This replaces a crop around the predicted and true foreground with a spatial margin
  by what that margin stands for: the uncertain voxels, wherever they are.
- **counted exactly**: the per-case confusion matrix (predicted x true class) at full resolution, hence the true Dice,
  the accuracies and the predicted / true counts.
- **represented by a sample**: the remaining voxels (predicted and labelled background, margin ``>= keep_margin``).
  ``background_samples`` of them per case, evenly spaced in raster order (deterministic), each weighted by
  ``n_dropped / k``, stand for them in every sum.

Exact vs approximate:

- The foreground Dice objectives of the class-specific fits under the ``"moval"`` convention (only the predicted
  class's probability enters the soft Dice) are **exact**: they only read voxels predicted as that class, all kept.
- The true Dice, the accuracies, the counts and every sum over kept voxels are **exact**.
- Sums that include the dropped voxels (the voxel-level confidence of the background, the global all-voxel fits, the
  ``"paper"`` soft Dice's ``sum_{y_hat != c} p~_vc`` term, the NLL of VS and NORCAL) are **approximate**: the dropped
  part is estimated from the systematic sample. Each dropped voxel has margin ``>= M = keep_margin``, so at
  temperature ``T`` its confidence deficit ``1 - s_v`` and each of its foreground probabilities are at most
  ``(C - 1) exp(-M / T)``; the error of a mean over ``n`` voxels is at most ``n_dropped / n`` times the sampling error
  of that tiny quantity (``min_dropped_margin`` is recorded per case). With ``keep_margin=None`` (or ``inf``) nothing
  is dropped and the fit is the full-resolution fit.

Memory: ``4 C + 10`` bytes per stored voxel (float32 logits, uint8 class indices, int32 case index, float32 weight)
instead of ``4 C`` bytes per voxel of the whole set; for a trained network most background voxels are far beyond a
margin of 10 logits (the benchmark's synthetic 64^3 cases: 20 % of the voxels stored, 2.8 times less memory than
the float32 logits alone).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .calibration import channel_argmax
from .inputs import check_cases, check_segmentation_case

__all__ = [
    "ReducedSegmentationSet",
    "SegmentationSetReducer",
    "reduce_segmentation_set",
    "confusion_counts",
    "dice_from_confusion",
    "prediction_dice",
]


def confusion_counts(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(C, C)`` int64 counts ``[predicted class, true class]`` of two integer maps of the same shape."""
    idx = pred.reshape(-1) * num_classes + label.reshape(-1)
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def dice_from_confusion(confusion: torch.Tensor) -> torch.Tensor:
    """Per-class Dice ``2 TP / (n_pred + n_true)`` from ``(..., C, C)`` confusion counts, ``1`` where both the
    prediction and the reference are empty (the evaluation module's rule); float64 ``(..., C)``."""
    conf = confusion.to(torch.float64)
    tp = conf.diagonal(dim1=-2, dim2=-1)
    denom = conf.sum(-1) + conf.sum(-2)
    return torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.ones_like(tp))


def prediction_dice(logits: Sequence[Any], labels: Sequence[Any], include_background: bool = False) -> torch.Tensor:
    """True per-case Dice of the model's own prediction ``argmax_c logits`` against the labels.

    Args:
        logits: ``N`` per-case ``(C, *spatial)`` logits (or probabilities).
        labels: ``N`` per-case ``(*spatial)`` or ``(1, *spatial)`` integer label maps.
        include_background: keep class 0.

    Returns:
        ``(N, C - 1)`` float64 (``(N, C)`` with the background); 1 where prediction and reference are both empty,
        0 where only one is (as :func:`monai.metrics.compute_dice` with ``ignore_empty=False``).

    Raises:
        ValueError: as the estimators' ``fit`` (lengths, shapes, labels out of range, non-finite logits).
    """
    name = "prediction_dice"
    n = check_cases(logits, labels, name)
    out = []
    c = None
    for i in range(n):
        z, y = check_segmentation_case(logits[i], labels[i], i, name, c)
        c = z.shape[0]
        out.append(dice_from_confusion(confusion_counts(channel_argmax(z), y, c)).cpu())
    dice = torch.stack(out)
    return dice if include_background else dice[:, 1:]


@dataclass
class ReducedSegmentationSet:
    """A validation set reduced for fitting (see the module docstring for what is exact).

    Attributes:
        logits: ``(C, V)`` channel-first logits of the kept and sampled voxels (float32, or float64 when given).
        pred: ``(V,)`` predicted class ``argmax`` (of the full-precision logits); uint8 (int32 for more than 256
            classes).
        label: ``(V,)`` true class, same dtype.
        case: ``(V,)`` int32 case index.
        weight: ``(V,)`` float32: 1 for kept voxels, ``n_dropped / k`` for the sampled background voxels.
        confusion: ``(N, C, C)`` int64 full-resolution counts ``[case, predicted, true]``.
        n_dropped: ``(N,)`` int64 dropped voxels per case.
        min_dropped_margin: ``(N,)`` float64 smallest logit margin among a case's dropped voxels (``inf`` if none).
        keep_margin: the margin threshold used (``inf``: nothing dropped).
        background_samples: the per-case sample size of the dropped voxels.
    """

    logits: torch.Tensor
    pred: torch.Tensor
    label: torch.Tensor
    case: torch.Tensor
    weight: torch.Tensor
    confusion: torch.Tensor
    n_dropped: torch.Tensor
    min_dropped_margin: torch.Tensor
    keep_margin: float
    background_samples: int

    @property
    def num_cases(self) -> int:
        return int(self.confusion.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.confusion.shape[1])

    @property
    def n_pred(self) -> torch.Tensor:
        """``(N, C)`` predicted voxel counts (exact)."""
        return self.confusion.sum(2)

    @property
    def n_true(self) -> torch.Tensor:
        """``(N, C)`` true voxel counts (exact)."""
        return self.confusion.sum(1)

    @property
    def true_positives(self) -> torch.Tensor:
        """``(N, C)`` correctly predicted voxel counts (exact)."""
        return self.confusion.diagonal(dim1=1, dim2=2)

    @property
    def true_dice(self) -> torch.Tensor:
        """``(N, C)`` float64 Dice of the argmax prediction per case and class (exact)."""
        return dice_from_confusion(self.confusion)

    @property
    def num_voxels(self) -> int:
        """Voxels of the full-resolution set."""
        return int(self.confusion.sum())

    @property
    def kept_fraction(self) -> float:
        """Stored voxels (kept + sampled) over all voxels."""
        return self.logits.shape[1] / max(self.num_voxels, 1)


class SegmentationSetReducer:
    """Builds a :class:`ReducedSegmentationSet` one case at a time (e.g. from an evaluator's iterations).

    Args:
        keep_margin: voxels predicted and labelled background with a top-1 minus top-2 logit margin ``>=`` this are
            dropped (sampled); ``None`` or ``inf`` keeps every voxel (the full-resolution fit).
        background_samples: ``k >= 1`` dropped voxels per case kept as a weighted systematic sample.
        name: who reduces, for error messages.

    Raises:
        ValueError: ``keep_margin <= 0`` or ``background_samples < 1``; at :meth:`add`: bad case inputs.
    """

    def __init__(
        self, keep_margin: float | None = 10.0, background_samples: int = 4096, name: str = "SegmentationSetReducer"
    ) -> None:
        margin = math.inf if keep_margin is None else float(keep_margin)
        if not margin > 0:
            raise ValueError(f"{name}: keep_margin must be > 0 (or None to keep every voxel), got {keep_margin}.")
        if isinstance(background_samples, bool) or int(background_samples) != background_samples:
            raise ValueError(f"{name}: background_samples must be an integer >= 1, got {background_samples!r}.")
        if int(background_samples) < 1:
            raise ValueError(f"{name}: background_samples must be >= 1, got {background_samples}.")
        self.keep_margin = margin
        self.background_samples = int(background_samples)
        self.name = name
        self._parts: list[tuple[torch.Tensor, ...]] = []
        self._confusion: list[torch.Tensor] = []
        self._dropped: list[int] = []
        self._min_margin: list[float] = []
        self._num_classes: int | None = None

    def __len__(self) -> int:
        return len(self._confusion)

    @property
    def num_classes(self) -> int | None:
        """``C`` of the cases added so far (``None`` before the first)."""
        return self._num_classes

    @property
    def confusion(self) -> list[torch.Tensor]:
        """The exact per-case ``(C, C)`` confusion counts (rows: predicted class, columns: true class) added so far."""
        return list(self._confusion)

    def add(self, logits: Any, label: Any) -> None:
        """Add one case: ``(C, *spatial)`` logits and its ``(*spatial)`` or ``(1, *spatial)`` label map."""
        index = len(self._confusion)
        z, y = check_segmentation_case(logits, label, index, self.name, self._num_classes)
        c = z.shape[0]
        self._num_classes = c
        zf = z.reshape(c, -1)
        yf = y.reshape(-1)
        top = zf.max(0)
        pred = top.indices
        self._confusion.append(confusion_counts(pred, yf, c))
        if math.isinf(self.keep_margin):
            keep = torch.ones_like(pred, dtype=torch.bool)
            margin = None
        else:
            second = zf.scatter(0, pred[None], float("-inf")).max(0).values
            margin = top.values - second
            keep = (pred != 0) | (yf != 0) | (margin < self.keep_margin)
        kept = keep.nonzero().squeeze(1)
        dropped = (~keep).nonzero().squeeze(1)
        n_drop = int(dropped.numel())
        weight = torch.ones(kept.numel(), dtype=torch.float32, device=z.device)
        if n_drop:
            k = min(self.background_samples, n_drop)
            sample = dropped[torch.arange(k, device=z.device) * n_drop // k]
            kept = torch.cat([kept, sample])
            weight = torch.cat([weight, torch.full((k,), n_drop / k, dtype=torch.float32, device=z.device)])
            self._min_margin.append(float(margin[dropped].min()))
        else:
            self._min_margin.append(math.inf)
        self._dropped.append(n_drop)
        store = z.dtype if z.dtype == torch.float64 else torch.float32
        classes = torch.uint8 if c <= 256 else torch.int32
        self._parts.append(
            (
                zf[:, kept].to(store),
                pred[kept].to(classes),
                yf[kept].to(classes),
                torch.full((kept.numel(),), index, dtype=torch.int32, device=z.device),
                weight,
            )
        )

    def finalize(self) -> ReducedSegmentationSet:
        """The reduced set of the cases added so far.

        Raises:
            ValueError: no case was added.
        """
        if not self._parts:
            raise ValueError(f"{self.name}: no case was added: the validation set is empty.")
        cols = list(zip(*self._parts, strict=True))
        device = cols[0][0].device
        return ReducedSegmentationSet(
            logits=torch.cat(cols[0], dim=1),
            pred=torch.cat(cols[1]),
            label=torch.cat(cols[2]),
            case=torch.cat(cols[3]),
            weight=torch.cat(cols[4]),
            confusion=torch.stack(self._confusion),
            n_dropped=torch.tensor(self._dropped, dtype=torch.int64, device=device),
            min_dropped_margin=torch.tensor(self._min_margin, dtype=torch.float64, device=device),
            keep_margin=self.keep_margin,
            background_samples=self.background_samples,
        )


def reduce_segmentation_set(
    logits: Sequence[Any],
    labels: Sequence[Any],
    keep_margin: float | None = 10.0,
    background_samples: int = 4096,
    name: str = "reduce_segmentation_set",
) -> ReducedSegmentationSet:
    """Reduce a labelled segmentation set case by case (see :class:`SegmentationSetReducer`).

    Args:
        logits: ``N`` per-case ``(C, *spatial)`` logits (any sequence; cases are read one at a time).
        labels: ``N`` per-case ``(*spatial)`` or ``(1, *spatial)`` label maps.
        keep_margin: see :class:`SegmentationSetReducer`.
        background_samples: see :class:`SegmentationSetReducer`.
        name: who reduces, for error messages.

    Raises:
        ValueError: different lengths, an empty set, bad shapes, labels out of range, non-finite logits.
    """
    n = check_cases(logits, labels, name)
    reducer = SegmentationSetReducer(keep_margin, background_samples, name)
    for i in range(n):
        reducer.add(logits[i], labels[i])
    return reducer.finalize()
