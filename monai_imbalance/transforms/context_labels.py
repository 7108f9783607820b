# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Context-label transforms of CoLab: distance mask, baseline context labels, the K-channel target, inference collapse.

Li, Kamnitsas, Ouyang, Chen, Glocker, "Context label learning: improving background class representations in semantic
segmentation", IEEE TMI 2023 (method section: context labels, inference, and the baselines of the experiments). A CoLab
segmenter has ``K = C + t - 1`` output channels ``[ctx_0, FG_1 .. FG_{C-1}, ctx_1 .. ctx_{t-1}]``: the background is
split into ``t`` context classes.

Training-side dict transforms (computed on the whole image, before patch extraction; the outputs carry the label's
meta data, so list them with ``image`` / ``label`` in the crop and flip transforms):

- :class:`ContextDistanceMaskd` (:func:`context_distance_mask`): ``M = min(1, exp((tau_sub - D) / tau_dev))`` from the
  Euclidean distance ``D`` to the foreground; far background becomes hard context 0.
- :class:`KMeansContextLabelsd` (:func:`kmeans_context_labels`): the k-means baseline (k = t on background
  intensities, clusters ordered by mean intensity).
- :class:`DilatedRingContextLabelsd` (:func:`dilated_ring_context_labels`): the dilated-mask baseline (ring ``i`` of
  successive dilations of the foreground = context ``i``).
- :class:`RemapContextLabelsd`: human-defined context from an extra label (e.g. the liver around a liver tumour).
- :class:`ContextTargetd`: a hard context-label map + labels (+ mask) -> the ``K``-channel target, after cropping, so
  a baseline trains with :class:`~monai_imbalance.losses.ContextLabelLoss` in an ordinary trainer.

Inference-side post-transform: :class:`CollapseContextChannels` / :class:`CollapseContextChannelsd` map the ``K``
channels back to the ``C`` original classes (context channels = background).
"""

from __future__ import annotations

import math
import operator
import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform, Transform
from monai.utils import convert_to_dst_type, convert_to_tensor

from monai_imbalance.losses.context_label import context_label_target
from monai_imbalance.networks.context_channels import (
    check_num_classes,
    check_num_context,
    fold_context_channels,
)

__all__ = [
    "CollapseContextChannels",
    "CollapseContextChannelsd",
    "ContextDistanceMaskd",
    "ContextTargetd",
    "DilatedRingContextLabelsd",
    "KMeansContextLabelsd",
    "RemapContextLabelsd",
    "context_distance_mask",
    "dilated_ring_context_labels",
    "kmeans_context_labels",
]

EMPTY_FOREGROUND_MODES = ("zero", "one", "raise")


def _label_array(label: NdarrayOrTensor, name: str) -> np.ndarray:
    """A ``(1, *spatial)`` label as a numpy array (``ValueError`` for another channel count)."""
    arr = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
    if arr.ndim < 2 or arr.shape[0] != 1:
        raise ValueError(
            f"{name}: label must be channel-first (1, *spatial) class indices, got shape {tuple(arr.shape)}."
        )
    return arr


def _finite(value: Any, what: str, name: str, positive: bool = False) -> float:
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0):
        kind = "a finite number > 0" if positive else "a finite number"
        raise ValueError(f"{name}: {what} must be {kind}, got {what}={value}.")
    return value


def _single_key(keys: KeysCollection, name: str) -> Hashable:
    keys = list(keys) if isinstance(keys, (list, tuple)) else [keys]
    if len(keys) != 1:
        raise ValueError(f"{name}: keys must name exactly one label, got keys={keys!r}.")
    return keys[0]


class _ContextMapTransformd(MapTransform):
    """Base of the dict transforms that read one label (``keys``) and write or read a context map (``context_key``).

    Checks that ``keys`` names exactly one label and that ``num_context`` is ``t >= 1`` (``None`` allowed where
    :attr:`num_context_optional`), naming the subclass in the error.
    """

    num_context_optional = False

    def __init__(
        self, keys: KeysCollection, context_key: Hashable, num_context: int | None, allow_missing_keys: bool
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        name = type(self).__name__
        self.label_key = _single_key(self.keys, name)
        self.context_key = context_key
        optional = num_context is None and self.num_context_optional
        self.num_context = None if optional else check_num_context(num_context, name)


def context_distance_mask(
    label: NdarrayOrTensor,
    tau_sub: float = 30.0,
    tau_dev: float = 20.0,
    spacing: Sequence[float] | float | str | None = None,
    on_empty: str = "zero",
) -> NdarrayOrTensor:
    """CoLab's distance restriction ``M = min(1, exp((tau_sub - D) / tau_dev))`` (the authors' ``--distdetach``).

    ``D`` is the Euclidean distance of every voxel to the nearest foreground voxel (the union of all classes ``> 0``;
    ``D = 0`` on the foreground, so ``M = 1`` there), computed with :func:`scipy.ndimage.distance_transform_edt` in
    voxel units (``spacing=None``, as the authors' code on its resampled images) or in physical units (``spacing``;
    ``"pixdim"``: the label's own voxel size, so ``tau_sub`` and ``tau_dev`` are millimetres at any resolution).
    The authors' map is signed (``D <= 0`` inside), which gives the same ``M``. ``M = 1`` within ``tau_sub`` of the
    foreground and falls off as ``exp(-(D - tau_sub) / tau_dev)`` beyond: far background becomes hard context 0.
    Compute it on the whole image, before patch extraction (the distance must see foreground outside the patch).

    Args:
        label: ``(1, *spatial)`` class indices (numpy array, tensor or MetaTensor).
        tau_sub: distance (voxels, or ``spacing`` units) up to which ``M = 1``; the authors' 30 voxels.
        tau_dev: fall-off scale ``> 0``; the authors' 20 voxels.
        spacing: voxel spacing per spatial dim (or one number) for physical distances; ``"pixdim"``: that of the
            MetaTensor ``label``; ``None``: voxel units.
        on_empty: what a label without foreground gives: ``"zero"`` (default: ``M = 0``, every background voxel hard
            context 0, as ``D = +inf``; a warning is issued), ``"one"`` (``M = 1``: no restriction) or ``"raise"``.

    Returns:
        ``(1, *spatial)`` float32 ``M`` of ``label``'s type (a MetaTensor keeps ``label``'s meta data).

    Raises:
        ValueError: ``tau_dev <= 0``, a non-finite ``tau_sub``, a label that is not ``(1, *spatial)``, a ``spacing``
            of the wrong length (or ``"pixdim"`` without a MetaTensor), an unknown ``on_empty``; an empty foreground
            with ``on_empty="raise"``.
    """
    name = "context_distance_mask"
    tau_sub = _finite(tau_sub, "tau_sub", name)
    tau_dev = _finite(tau_dev, "tau_dev", name, positive=True)
    if on_empty not in EMPTY_FOREGROUND_MODES:
        raise ValueError(f"{name}: on_empty must be one of {EMPTY_FOREGROUND_MODES}, got on_empty={on_empty!r}.")
    arr = _label_array(label, name)
    nd = arr.ndim - 1
    if isinstance(spacing, str):
        if spacing != "pixdim" or not isinstance(label, MetaTensor):
            raise ValueError(
                f"{name}: spacing='pixdim' reads the voxel size from a MetaTensor label's meta data, got "
                f"spacing={spacing!r} and a {type(label).__name__} label."
            )
        spacing = [float(v) for v in label.pixdim[:nd]]
    if spacing is not None:
        spacing = [float(spacing)] * nd if np.isscalar(spacing) else [float(s) for s in spacing]  # type: ignore[union-attr]
        if len(spacing) != nd or min(spacing) <= 0:
            raise ValueError(f"{name}: spacing must hold {nd} positive values, got spacing={spacing}.")
    foreground = arr[0] > 0
    if not foreground.any():
        if on_empty == "raise":
            raise ValueError(f"{name}: the label has no foreground voxel (on_empty='raise').")
        if on_empty == "zero":
            warnings.warn(
                f"{name}: the label has no foreground voxel; the distance mask is 0 everywhere, so every voxel is "
                "hard context 0 (on_empty='zero').",
                stacklevel=2,
            )
        mask = np.full(arr.shape, 1.0 if on_empty == "one" else 0.0, dtype=np.float32)
    else:
        from scipy.ndimage import distance_transform_edt

        dist = distance_transform_edt(~foreground, sampling=spacing)
        mask = np.minimum(1.0, np.exp((tau_sub - dist) / tau_dev))
        mask[foreground] = 1.0
        mask = mask[None].astype(np.float32)
    out, *_ = convert_to_dst_type(mask, label, dtype=torch.float32 if isinstance(label, torch.Tensor) else np.float32)
    return out


class ContextDistanceMaskd(MapTransform):
    """Dict version of :func:`context_distance_mask`: writes ``M`` under ``mask_key``.

    Place it after the label is loaded and resampled, before the crop, and list ``mask_key`` with the image and label
    in the crop / flip transforms so ``M`` is cropped with them (it carries the label's meta data).

    Args:
        keys: the label key (exactly one).
        mask_key: output key of ``M`` (``(1, *spatial)`` float32).
        tau_sub, tau_dev, spacing, on_empty: as in :func:`context_distance_mask`.
        allow_missing_keys: skip silently when the label is missing.

    Example::

        ContextDistanceMaskd(keys="label", mask_key="context_mask", tau_sub=30, tau_dev=20, spacing="pixdim")  # mm
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        mask_key: Hashable = "context_mask",
        tau_sub: float = 30.0,
        tau_dev: float = 20.0,
        spacing: Sequence[float] | float | str | None = None,
        on_empty: str = "zero",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        name = type(self).__name__
        self.label_key = _single_key(self.keys, name)
        self.mask_key = mask_key
        self.tau_sub = _finite(tau_sub, "tau_sub", name)
        self.tau_dev = _finite(tau_dev, "tau_dev", name, positive=True)
        if on_empty not in EMPTY_FOREGROUND_MODES:
            raise ValueError(f"{name}: on_empty must be one of {EMPTY_FOREGROUND_MODES}, got on_empty={on_empty!r}.")
        self.spacing = spacing
        self.on_empty = on_empty

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.mask_key] = context_distance_mask(d[key], self.tau_sub, self.tau_dev, self.spacing, self.on_empty)
        return d


def kmeans_context_labels(
    image: NdarrayOrTensor,
    label: NdarrayOrTensor,
    num_context: int,
    roi: NdarrayOrTensor | None = None,
    seed: int = 0,
    max_iter: int = 100,
    max_samples: int = 100_000,
    tol: float = 1e-6,
) -> NdarrayOrTensor:
    """The k-means context baseline of CoLab's experiments: ``k = t`` clusters of the background intensities.

    Background voxels (``label == 0``, inside ``roi`` when given) are clustered by their intensity vector (all image
    channels) with Lloyd's k-means (numpy; no scikit-learn needed). The fit is deterministic: at most
    ``max_samples`` voxels are drawn with ``numpy.random.default_rng(seed)`` (all of them when there are fewer), the
    centroids start at the ``(j + 0.5) / k`` quantiles of the voxels ordered by mean intensity, an emptied cluster
    keeps its centroid. Every background voxel is then assigned to its nearest centroid, and the clusters are
    numbered by increasing mean intensity of their centroid (so the labels do not depend on the fit's internals):
    context 0 is the darkest cluster. Foreground voxels and voxels outside ``roi`` get context 0.

    Args:
        image: ``(C_in, *spatial)`` intensities.
        label: ``(1, *spatial)`` class indices (foreground ``> 0``).
        num_context: ``t >= 1`` (``t = 1``: all zeros).
        roi: optional ``(1, *spatial)`` or ``(*spatial)`` mask (nonzero inside), e.g. the brain or body mask.
        seed: seed of the voxel subsample.
        max_iter: Lloyd iterations at most.
        max_samples: voxels used for the fit at most.
        tol: stop when no centroid moves more than ``tol`` times the intensity range.

    Returns:
        ``(1, *spatial)`` context labels in ``[0, t)``, with ``label``'s type, dtype and meta data.

    Raises:
        ValueError: ``t < 1``, shapes that do not match, ``max_iter`` / ``max_samples`` < 1.
    """
    name = "kmeans_context_labels"
    t = check_num_context(num_context, name)
    lab = _label_array(label, name)
    img = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if img.ndim != lab.ndim or img.shape[1:] != lab.shape[1:]:
        raise ValueError(
            f"{name}: image shape {tuple(img.shape)} does not match the label {tuple(lab.shape)} "
            "(expected (C_in, *spatial) with the label's spatial shape)."
        )
    if int(max_iter) < 1 or int(max_samples) < 1:
        raise ValueError(f"{name}: max_iter and max_samples must be >= 1, got {max_iter}, {max_samples}.")
    select = lab[0] == 0
    if roi is not None:
        r = roi.detach().cpu().numpy() if isinstance(roi, torch.Tensor) else np.asarray(roi)
        if r.shape == lab.shape:
            r = r[0]
        if r.shape != lab.shape[1:]:
            raise ValueError(f"{name}: roi shape {tuple(r.shape)} does not match the label {tuple(lab.shape)}.")
        select &= r != 0
    context = np.zeros(lab.shape[1:], dtype=np.int64)
    features = img[:, select].T.astype(np.float64)  # (n, C_in)
    n = features.shape[0]
    if t > 1 and n > 0:
        fit = features
        if n > int(max_samples):
            idx = np.sort(np.random.default_rng(seed).choice(n, int(max_samples), replace=False))
            fit = features[idx]
        order = np.argsort(fit.mean(axis=1), kind="stable")
        starts = ((np.arange(t) + 0.5) / t * fit.shape[0]).astype(np.int64)
        centroids = fit[order[starts]].copy()
        scale = float(np.ptp(fit)) or 1.0
        for _ in range(int(max_iter)):
            assign = _nearest(fit, centroids)
            new = centroids.copy()
            for j in range(t):
                members = assign == j
                if members.any():
                    new[j] = fit[members].mean(axis=0)
            shift = float(np.abs(new - centroids).max())
            centroids = new
            if shift <= tol * scale:
                break
        rank = np.empty(t, dtype=np.int64)
        rank[np.argsort(centroids.mean(axis=1), kind="stable")] = np.arange(t)
        context[select] = rank[_nearest(features, centroids)]
    out, *_ = convert_to_dst_type(context[None], label)
    return out


def _nearest(x: np.ndarray, centroids: np.ndarray, chunk: int = 1 << 20) -> np.ndarray:
    """Index of the nearest centroid of every row of ``x`` (squared Euclidean distance; in chunks)."""
    out = np.empty(x.shape[0], dtype=np.int64)
    for start in range(0, x.shape[0], chunk):
        part = x[start : start + chunk]
        d = ((part[:, None, :] - centroids[None]) ** 2).sum(-1)
        out[start : start + chunk] = d.argmin(1)
    return out


class KMeansContextLabelsd(_ContextMapTransformd):
    """Dict version of :func:`kmeans_context_labels`: writes the context map under ``context_key``.

    Args:
        keys: the label key (exactly one).
        image_key: key of the ``(C_in, *spatial)`` image.
        context_key: output key of the ``(1, *spatial)`` context labels (label's type, dtype and meta data).
        num_context: ``t >= 1``.
        roi_key: optional key of a mask restricting the clustered background (outside: context 0).
        seed, max_iter, max_samples: as in :func:`kmeans_context_labels`.
        allow_missing_keys: skip silently when the label is missing.
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        image_key: Hashable = "image",
        context_key: Hashable = "context_label",
        num_context: int = 2,
        roi_key: Hashable | None = None,
        seed: int = 0,
        max_iter: int = 100,
        max_samples: int = 100_000,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, context_key, num_context, allow_missing_keys)
        self.image_key = image_key
        self.roi_key = roi_key
        self.seed = int(seed)
        self.max_iter = int(max_iter)
        self.max_samples = int(max_samples)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            roi = d[self.roi_key] if self.roi_key is not None else None
            d[self.context_key] = kmeans_context_labels(
                d[self.image_key], d[key], self.num_context, roi, self.seed, self.max_iter, self.max_samples
            )
        return d


def dilated_ring_context_labels(
    label: NdarrayOrTensor, num_context: int, ring_width: int = 1, connectivity: int = 1
) -> NdarrayOrTensor:
    """The dilated-mask context baseline of CoLab's experiments: rings of successive dilations of the foreground.

    With ``F_0`` the foreground (all classes ``> 0``) and ``F_i`` = ``F_{i-1}`` dilated ``ring_width`` times
    (:func:`scipy.ndimage.binary_dilation`, structuring element of the given ``connectivity``: 1 = face neighbours,
    i.e. rings of city-block width; ``ndim`` = full neighbourhood, chessboard width), ring ``i = F_i \\ F_{i-1}`` is
    context class ``i`` for ``i = 1 .. t-1``; the remaining background and the foreground are context 0. A label
    without foreground gives all zeros.

    Args:
        label: ``(1, *spatial)`` class indices.
        num_context: ``t >= 1`` (``t - 1`` rings).
        ring_width: dilations per ring (voxels), ``>= 1``.
        connectivity: 1 .. ndim, as :func:`scipy.ndimage.generate_binary_structure`.

    Returns:
        ``(1, *spatial)`` context labels in ``[0, t)``, with ``label``'s type, dtype and meta data.

    Raises:
        ValueError: ``t < 1``, ``ring_width < 1``, ``connectivity`` outside ``[1, ndim]``, a label that is not
            ``(1, *spatial)``.
    """
    name = "dilated_ring_context_labels"
    t = check_num_context(num_context, name)
    lab = _label_array(label, name)
    nd = lab.ndim - 1
    width = operator.index(ring_width)
    if width < 1:
        raise ValueError(f"{name}: ring_width must be >= 1, got ring_width={ring_width}.")
    conn = operator.index(connectivity)
    if not 1 <= conn <= nd:
        raise ValueError(f"{name}: connectivity must be in [1, {nd}], got connectivity={connectivity}.")
    from scipy.ndimage import binary_dilation, generate_binary_structure

    current = lab[0] > 0
    context = np.zeros(current.shape, dtype=np.int64)
    if t > 1 and current.any():
        structure = generate_binary_structure(nd, conn)
        for i in range(1, t):
            grown = binary_dilation(current, structure=structure, iterations=width)
            context[grown & ~current] = i
            current = grown
    out, *_ = convert_to_dst_type(context[None], label)
    return out


class DilatedRingContextLabelsd(_ContextMapTransformd):
    """Dict version of :func:`dilated_ring_context_labels`: writes the context map under ``context_key``.

    Args:
        keys: the label key (exactly one).
        context_key: output key of the ``(1, *spatial)`` context labels.
        num_context: ``t >= 1``.
        ring_width: dilations per ring (voxels).
        connectivity: structuring-element connectivity of the dilation.
        allow_missing_keys: skip silently when the label is missing.
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        context_key: Hashable = "context_label",
        num_context: int = 2,
        ring_width: int = 1,
        connectivity: int = 1,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, context_key, num_context, allow_missing_keys)
        if operator.index(ring_width) < 1:
            raise ValueError(f"{type(self).__name__}: ring_width must be >= 1, got ring_width={ring_width}.")
        self.ring_width = int(ring_width)
        self.connectivity = int(connectivity)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.context_key] = dilated_ring_context_labels(
                d[key], self.num_context, self.ring_width, self.connectivity
            )
        return d


def _value_map(mapping: Mapping[Any, Any] | None, what: str, name: str, minimum: int) -> dict[int, int]:
    out: dict[int, int] = {}
    for src, dst in (mapping or {}).items():
        try:
            s = int(src) if isinstance(src, str) else operator.index(src)
            v = operator.index(dst)
        except (TypeError, ValueError):
            raise ValueError(
                f"{name}: {what} must map integer label values to integer classes, got {src!r}: {dst!r}."
            ) from None
        if v < minimum:
            raise ValueError(f"{name}: {what} maps label value {s} to {v}; classes must be >= {minimum}.")
        out[s] = v
    return out


class RemapContextLabelsd(_ContextMapTransformd):
    """Human-defined context (CoLab): split a dataset label into foreground classes and a context map.

    The authors' ``--manuallabel`` mode treats an anatomy mask as extra context class (e.g. KiTS / LiTS: label 1
    = organ, 2 = tumour -> foreground ``{2: 1}``, context ``{1: 1}``). The label under ``keys`` is replaced by the
    foreground classes only (values in ``foreground`` mapped, everything else 0) and ``context_key`` receives the
    context map (values in ``context`` mapped, everything else context 0). Keys of the maps may be strings (JSON).

    Use the same transform (or :class:`monai.transforms.MapLabelValued`) in validation, so the metric sees the
    remapped foreground.

    Args:
        keys: the label key (exactly one).
        context_key: output key of the ``(1, *spatial)`` context labels (label's type, dtype and meta data).
        foreground: ``{dataset value: class}`` for the foreground classes (classes ``>= 1``).
        context: ``{dataset value: context class}`` (context classes ``>= 0``).
        num_context: optional ``t``: context classes must be ``< t``.
        allow_missing_keys: skip silently when the label is missing.

    Raises:
        ValueError: a value mapped in both maps, classes out of range, non-integer entries, an empty ``foreground``.
    """

    num_context_optional = True

    def __init__(
        self,
        keys: KeysCollection = "label",
        context_key: Hashable = "context_label",
        foreground: Mapping[Any, int] | None = None,
        context: Mapping[Any, int] | None = None,
        num_context: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, context_key, num_context, allow_missing_keys)
        name = type(self).__name__
        self.foreground = _value_map(foreground, "foreground", name, 1)
        self.context = _value_map(context, "context", name, 0)
        if not self.foreground:
            raise ValueError(f"{name}: foreground must map at least one label value to a class, got {foreground!r}.")
        both = sorted(set(self.foreground) & set(self.context))
        if both:
            raise ValueError(f"{name}: label value {both[0]} is mapped both to a foreground and to a context class.")
        if self.num_context is not None:
            bad = [v for v in self.context.values() if v >= self.num_context]
            if bad:
                raise ValueError(f"{name}: context class {bad[0]} is out of range for num_context={self.num_context}.")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            arr = _label_array(label, type(self).__name__)
            fg = np.zeros(arr.shape, dtype=np.int64)
            ctx = np.zeros(arr.shape, dtype=np.int64)
            for src, dst in self.foreground.items():
                fg[arr == src] = dst
            for src, dst in self.context.items():
                ctx[arr == src] = dst
            d[key], *_ = convert_to_dst_type(fg, label)
            d[self.context_key], *_ = convert_to_dst_type(ctx, label)
        return d


class ContextTargetd(_ContextMapTransformd):
    """Labels + a hard context-label map (+ distance mask) -> the ``K = C + t - 1`` channel training target.

    Applies :func:`~monai_imbalance.losses.context_label_target` to one sample (channel-first, no batch dim), so the
    k-means, dilated-ring and human-defined baselines train with :class:`~monai_imbalance.losses.ContextLabelLoss` in an
    ordinary ``SupervisedTrainer``. Place it last, after the crop and the spatial augmentation (which must treat the
    context map like the label: nearest interpolation). Foreground voxels keep their class, background voxels get
    their context class, voxels with ``M < 1`` are pulled to context 0.

    Args:
        keys: the label key (exactly one): ``(1, *spatial)`` class indices in ``[0, C)``.
        context_key: key of the ``(1, *spatial)`` context labels in ``[0, t)``.
        num_classes: ``C >= 2``.
        num_context: ``t >= 1``.
        mask_key: optional key of the distance mask ``M`` (:class:`ContextDistanceMaskd`).
        target_key: output key of the ``(K, *spatial)`` float32 target; ``None`` replaces the label.
        allow_missing_keys: skip silently when the label is missing.
    """

    def __init__(
        self,
        keys: KeysCollection = "label",
        context_key: Hashable = "context_label",
        num_classes: int = 2,
        num_context: int = 2,
        mask_key: Hashable | None = None,
        target_key: Hashable | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, context_key, num_context, allow_missing_keys)
        self.num_classes = check_num_classes(num_classes, type(self).__name__)
        self.mask_key = mask_key
        self.target_key = target_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            lab = convert_to_tensor(label, track_meta=False)
            ctx = convert_to_tensor(d[self.context_key], track_meta=False)
            mask = None
            if self.mask_key is not None:
                mask = convert_to_tensor(d[self.mask_key], track_meta=False)[None]
            target = context_label_target(ctx[None], lab[None], self.num_classes, self.num_context, mask)[0]
            d[self.target_key if self.target_key is not None else key], *_ = convert_to_dst_type(
                target, label, dtype=torch.float32 if isinstance(label, torch.Tensor) else np.float32
            )
        return d


COLLAPSE_OUTPUTS = ("label", "probs", "logits", "max")


class CollapseContextChannels(Transform):
    """Collapse a CoLab segmenter's ``K = C + t - 1`` channels to the ``C`` original classes (CoLab's inference).

    The continuous outputs use :func:`~monai_imbalance.networks.fold_context_channels` (``"probs"``: ``"sum"``,
    ``"logits"``: ``"logsumexp"``, ``"max"``: ``"max"``).

    Channel layout ``[ctx_0, FG_1 .. FG_{C-1}, ctx_1 .. ctx_{t-1}]``. Three outputs:

    - ``"label"`` (the paper's rule, default): ``argmax`` over all ``K`` channels, context channels (``0`` and
      ``C .. K-1``) mapped to class 0: a ``(1, *spatial)`` label in ``[0, C)``. A foreground class is predicted
      only where its channel beats every context channel.
    - ``"probs"``: ``(C, *spatial)`` probabilities, the context channels' probabilities summed into channel 0 and the
      foreground channels kept (``softmax=True`` applies the softmax over ``K`` first). Note that ``argmax`` of these
      can differ from the ``"label"`` rule where several context channels together outweigh a foreground channel
      that wins individually; use ``"label"`` for the paper's segmentation, ``"probs"`` for calibrated scores.
    - ``"logits"``: ``(C, *spatial)`` logits whose softmax is the ``"probs"`` output (channel 0 is the log-sum-exp of
      the context logits), for post-processing chains that expect ``C``-channel logits.
    - ``"max"``: ``(C, *spatial)``, channel 0 the maximum over the context channels, the foreground channels kept (of
      logits or of probabilities alike): its ``argmax`` is the ``"label"`` rule, and it stays a continuous
      ``C``-channel map, so it can go through ``Invertd`` (interpolation) and ``AsDiscreted(argmax=True)`` like any
      ``C``-class prediction. The bundles use it.

    Either way a context channel never yields a foreground class. Works on a decollated prediction after
    :class:`monai.transforms.Invertd` (a MetaTensor in gives a MetaTensor out with the same meta data), before
    ``AsDiscreted`` / ``SaveImaged``.

    Args:
        num_classes: ``C >= 2``.
        num_context: ``t >= 1``; ``None`` infers ``t = K - C + 1`` from the input's channel count (every channel from
            ``C`` on is context); given, the input must have exactly ``K = C + t - 1`` channels.
        output: ``"label"``, ``"probs"``, ``"logits"`` or ``"max"``.
        softmax: for ``"probs"``: whether the input holds logits (apply the softmax) or already probabilities.
        dtype: dtype of the ``"label"`` output (float32 like :class:`monai.transforms.AsDiscrete`).

    Raises:
        ValueError: invalid ``C``, ``t`` or ``output``; at call, an input whose first dim is not ``K`` (with
            ``num_context``) or is below ``C`` (without).
    """

    backend = [torch.Tensor.__name__]

    def __init__(
        self,
        num_classes: int,
        num_context: int | None = None,
        output: str = "label",
        softmax: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        name = type(self).__name__
        self.num_classes = check_num_classes(num_classes, name)
        self.num_context = None if num_context is None else check_num_context(num_context, name)
        if output not in COLLAPSE_OUTPUTS:
            raise ValueError(f"{name}: output must be one of {COLLAPSE_OUTPUTS}, got output={output!r}.")
        self.output = output
        self.softmax = bool(softmax)
        self.dtype = dtype

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """Collapse ``img``: ``(K, *spatial)`` logits (or probabilities for ``output="probs", softmax=False``)."""
        name = type(self).__name__
        c, t = self.num_classes, self.num_context
        x = convert_to_tensor(img, track_meta=get_track_meta())
        if t is None:
            if x.ndim < 2 or x.shape[0] < c:
                raise ValueError(
                    f"{name}: expected a channel-first (K, *spatial) input with K >= num_classes={c} channels, got "
                    f"shape {tuple(x.shape)}."
                )
            t = int(x.shape[0]) - c + 1
        k = c + t - 1
        if x.ndim < 2 or x.shape[0] != k:
            raise ValueError(
                f"{name}: expected a channel-first (K, *spatial) input with K = C + t - 1 = {k} channels "
                f"(num_classes={c}, num_context={t}), got shape {tuple(x.shape)}."
            )
        if self.output == "label":
            idx = torch.argmax(x, dim=0, keepdim=True)
            out = torch.where(idx >= c, torch.zeros_like(idx), idx).to(self.dtype)
        else:
            if not x.is_floating_point():
                x = x.float()
            if self.output == "max":
                out = fold_context_channels(x, c, dim=0, reduction="max")
            elif self.output == "logits":
                out = fold_context_channels(x, c, dim=0, reduction="logsumexp")
            else:
                p = torch.softmax(x, dim=0) if self.softmax else x
                out = fold_context_channels(p, c, dim=0, reduction="sum")
        result, *_ = convert_to_dst_type(out, img, dtype=out.dtype)
        return result


class CollapseContextChannelsd(MapTransform):
    """Dict version of :class:`CollapseContextChannels` (e.g. ``keys="pred"`` after ``Invertd`` in inference.json).

    Args:
        keys: keys of the ``(K, *spatial)`` predictions.
        num_classes, num_context, output, softmax, dtype: as in :class:`CollapseContextChannels`.
        allow_missing_keys: skip silently when a key is missing.
    """

    backend = CollapseContextChannels.backend

    def __init__(
        self,
        keys: KeysCollection,
        num_classes: int,
        num_context: int | None = None,
        output: str = "label",
        softmax: bool = True,
        dtype: torch.dtype = torch.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.collapse = CollapseContextChannels(num_classes, num_context, output, softmax, dtype)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.collapse(d[key])
        return d
