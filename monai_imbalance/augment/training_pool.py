# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The training-time (TRA) transformation pool of JCSAugment: 15 operations, 62 magnitude bins.

Li, Kamnitsas, Dou, Qin, Glocker, "Joint optimization of class-specific training- and test-time data augmentation in
segmentation", IEEE TMI 2023 (method section: the transformation pool; the authors'
``sampler_gambels.py::SampleNet_compose`` and ``augmentSamplerng.py``). Every operation is one categorical of the
policy; bin 0 is the identity, each other bin a magnitude ``m``. At training time the actual value is drawn in a *range*
around ``m`` with a random sign:

======================  =====================================  =========================================
operation               bins (``m``)                           value drawn for bin ``m``
======================  =====================================  =========================================
``scale``               0.05, 0.15, 0.25, 0.35, 0.45           zoom ``(1 + U(max(0, m - .05), m + .05)) ** +-1``
``rotate_x/y/z``        5, 15, 25 degrees, ``rot90``           ``+-U(max(0, m - 5), m + 5)`` deg; ``rot90``: 90 / 270
``mirror_x/y/z``        ``flip``                               flip the axis
``gamma``               0.1, 0.3, 0.5                          ``gamma = (1 + U(max(0, m - .1), m + .1)) ** +-1``
``inverse_gamma``       0.1, 0.3, 0.5                          the same on ``-x``
``brightness_add``      0.05, 0.15, 0.25                       ``x + (+-U(max(0, m - .05), m + .05))``
``brightness_mul``      0.05, 0.15, 0.25                       ``x * (1 + U(max(0, m - .05), m + .05)) ** +-1``
``contrast``            0.05, 0.15, 0.25                       ``(x - mean) * f + mean``, ``f`` as above, clipped
``blur_sharpen``        blur 0.5, 0.7, 0.9; sharpen 0.9, 0.7, 0.5  ``sigma ~ U(m - .1, m + .1)``
``noise``               0.025, 0.075, 0.125                    ``std ~ U(max(0, m - .025), m + .025)``
``low_resolution``      0.9, 0.7, 0.5                          zoom ``U(m - .1, min(1, m + .1))``
======================  =====================================  =========================================

Axes: ``x, y, z`` are the spatial axes 0, 1, 2 of a ``(C, X, Y, Z)`` patch; ``rotate_x`` turns the plane of axes
1 and 2. For an RAS-oriented volume the authors' mirrorS / mirrorF / mirrorA are ``mirror_x / y / z``, their
rotations rotS / rotF / rotL about the left-right / anterior-posterior / superior-inferior axes are
``rotate_x / y / z`` (the DeepMedic preset, which treats the sagittal mirror differently, relies on this).

The composite is applied in the authors' order: affine (rotations, 90-degree rotations and zoom as **one** resampling of
an enlarged crop, ``monai.transforms.Affine``) -> noise -> blur / sharpen -> brightness add -> brightness multiply ->
contrast -> low resolution -> inverse gamma -> gamma -> flips. Labels get the affine (nearest) and the flips only. The
90-degree rotations are folded into the affine, so a patch keeps its shape even when the rotated plane is not square
(the authors rotate the enlarged crop with ``np.rot90``).

A pool is identified by its operation names and bin labels (:meth:`TrainingTransformPool.describe`); a policy file
records it, and loading a policy for another pool fails with a message naming the difference. A subset of the
operations can be selected by name (the order stays the canonical one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..utils import index_by_name, plain_tensor
from .ops import (
    affine_resample,
    brightness_add,
    brightness_multiply,
    check_image,
    contrast_adjust,
    flip_axes,
    gamma_correction,
    gaussian_blur,
    gaussian_noise,
    laplacian_sharpen,
    simulate_low_resolution,
    zoom_rotation_matrix,
)

__all__ = ["TRAINING_OPS", "TrainingOp", "TrainingTransformPool"]

_SCALE = (0.05, 0.15, 0.25, 0.35, 0.45)
_ROTATE = (5.0, 15.0, 25.0)
_GAMMA = (0.1, 0.3, 0.5)
_BRIGHTNESS = (0.05, 0.15, 0.25)
_BLUR = (0.5, 0.7, 0.9)
_SHARPEN = (0.9, 0.7, 0.5)
_NOISE = (0.025, 0.075, 0.125)
_LOW_RES = (0.9, 0.7, 0.5)


@dataclasses.dataclass(frozen=True)
class TrainingOp:
    """One operation of the training-time pool (one categorical of the policy).

    Attributes:
        name: e.g. ``"scale"``, ``"rotate_x"``.
        family: ``"scale"``, ``"rotate"``, ``"mirror"``, ``"gamma"``, ``"inverse_gamma"``, ``"brightness_add"``,
            ``"brightness_mul"``, ``"contrast"``, ``"blur_sharpen"``, ``"noise"`` or ``"low_resolution"``.
        magnitudes: the magnitude ``m`` of bins 1, 2, ... (bin 0 is the identity); for ``blur_sharpen`` the blur
            sigmas then the sharpen sigmas; ``nan`` for ``rot90`` and ``flip`` bins.
        half_width: the half width of the range the value is drawn from.
        axis: the spatial axis of a rotation or mirror, else ``None``.
    """

    name: str
    family: str
    magnitudes: tuple[float, ...]
    half_width: float = 0.0
    axis: int | None = None

    @property
    def num_bins(self) -> int:
        """Bins including the identity."""
        return len(self.magnitudes) + 1

    @property
    def spatial(self) -> bool:
        """Whether the operation moves voxels (applied to labels too)."""
        return self.family in ("scale", "rotate", "mirror")

    @property
    def bin_labels(self) -> tuple[str, ...]:
        """Readable labels of the bins, ``"identity"`` first."""
        labels = ["identity"]
        for i, m in enumerate(self.magnitudes):
            if self.family == "rotate" and np.isnan(m):
                labels.append("rot90")
            elif self.family == "mirror":
                labels.append("flip")
            elif self.family == "blur_sharpen":
                labels.append(f"{'blur' if i < len(_BLUR) else 'sharpen'}_{m:g}")
            else:
                labels.append(f"{m:g}")
        return tuple(labels)


#: The 15 operations in the authors' order (``SampleNet_compose``): 6 + 3 * 5 + 3 * 2 + 5 * 4 + 7 + 4 + 4 = 62 bins.
TRAINING_OPS: tuple[TrainingOp, ...] = (
    TrainingOp("scale", "scale", _SCALE, 0.05),
    TrainingOp("rotate_x", "rotate", (*_ROTATE, float("nan")), 5.0, axis=0),
    TrainingOp("rotate_y", "rotate", (*_ROTATE, float("nan")), 5.0, axis=1),
    TrainingOp("rotate_z", "rotate", (*_ROTATE, float("nan")), 5.0, axis=2),
    TrainingOp("mirror_x", "mirror", (float("nan"),), axis=0),
    TrainingOp("mirror_y", "mirror", (float("nan"),), axis=1),
    TrainingOp("mirror_z", "mirror", (float("nan"),), axis=2),
    TrainingOp("gamma", "gamma", _GAMMA, 0.1),
    TrainingOp("inverse_gamma", "inverse_gamma", _GAMMA, 0.1),
    TrainingOp("brightness_add", "brightness_add", _BRIGHTNESS, 0.05),
    TrainingOp("brightness_mul", "brightness_mul", _BRIGHTNESS, 0.05),
    TrainingOp("contrast", "contrast", _BRIGHTNESS, 0.05),
    TrainingOp("blur_sharpen", "blur_sharpen", (*_BLUR, *_SHARPEN), 0.1),
    TrainingOp("noise", "noise", _NOISE, 0.025),
    TrainingOp("low_resolution", "low_resolution", _LOW_RES, 0.1),
)

_OPS_BY_NAME = {op.name: op for op in TRAINING_OPS}


def _as_random_state(rng: np.random.RandomState | int | None) -> np.random.RandomState:
    if isinstance(rng, np.random.RandomState):
        return rng
    if rng is None or isinstance(rng, (int, np.integer)):
        return np.random.RandomState(rng)
    raise ValueError(f"rng must be a numpy RandomState, an int seed or None, got {type(rng).__name__}.")


class TrainingTransformPool:
    """The TRA pool: draws values for a patch's bins and applies them in the authors' order (module docstring).

    Args:
        op_names: the operations to use, a subset of :data:`TRAINING_OPS` names (default: all 15); kept in the
            canonical order.
        padding_mode: ``grid_sample`` padding of the affine resampling of images (labels are padded with 0).

    Raises:
        ValueError: an unknown or repeated operation name, or an empty selection.
    """

    #: The name of the pool family, recorded in policy files.
    name = "jcsaugment_training"

    def __init__(self, op_names: Sequence[str] | None = None, padding_mode: str = "zeros") -> None:
        if op_names is None:
            ops = TRAINING_OPS
        else:
            names = list(op_names)
            unknown = [n for n in names if n not in _OPS_BY_NAME]
            if unknown:
                raise ValueError(f"unknown training op(s) {unknown}; known: {list(_OPS_BY_NAME)}.")
            if len(set(names)) != len(names) or not names:
                raise ValueError(f"op_names must be non-empty and without repeats, got {names}.")
            ops = tuple(op for op in TRAINING_OPS if op.name in names)
        self.ops: tuple[TrainingOp, ...] = ops
        self.padding_mode = padding_mode

    @property
    def op_names(self) -> tuple[str, ...]:
        """Operation names, in order."""
        return tuple(op.name for op in self.ops)

    @property
    def num_bins(self) -> tuple[int, ...]:
        """Bins per operation (identity included)."""
        return tuple(op.num_bins for op in self.ops)

    def __len__(self) -> int:
        return len(self.ops)

    def index(self, op: str | int) -> int:
        """The position of an operation given by name or position.

        Raises:
            ValueError: unknown name or position out of range.
        """
        return index_by_name(self.op_names, op, "op")

    def describe(self) -> dict[str, Any]:
        """The pool's identity: ``{"name": ..., "ops": [{"name", "bins": [labels]}]}`` (JSON-ready)."""
        return {"name": self.name, "ops": [{"name": op.name, "bins": list(op.bin_labels)} for op in self.ops]}

    def check_bins(self, bins: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
        """``bins`` as an ``(O,)`` int array, checked against the pool.

        Raises:
            ValueError: wrong length or a bin out of range.
        """
        arr = np.asarray(torch.as_tensor(bins).cpu(), dtype=np.int64).reshape(-1)
        if arr.shape[0] != len(self.ops):
            raise ValueError(f"bins must hold one bin per op ({len(self.ops)}), got {arr.shape[0]}.")
        for op, b in zip(self.ops, arr, strict=True):
            if not 0 <= b < op.num_bins:
                raise ValueError(f"bin {int(b)} of op {op.name!r} out of range [0, {op.num_bins}).")
        return arr

    def sample_values(
        self, bins: Sequence[int] | np.ndarray | torch.Tensor, rng: np.random.RandomState | int | None = None
    ) -> dict[str, Any]:
        """Draw the concrete values of the chosen bins (the authors' random ranges per bin).

        Args:
            bins: one bin per operation, ``(O,)``.
            rng: a numpy ``RandomState`` (a MONAI transform's ``R``), a seed, or ``None``.

        Returns:
            ``{op name: value}`` for the non-identity bins only: zoom factor (``scale``), angle in degrees
            (``rotate_*``; 90 or 270 for ``rot90``), ``True`` (``mirror_*``), gamma, offset, factor,
            ``("blur" | "sharpen", sigma)``, ``(std, seed)`` (``noise``), zoom (``low_resolution``). Feed it to
            :meth:`apply_image` / :meth:`apply_label`.
        """
        arr = self.check_bins(bins)
        r = _as_random_state(rng)
        values: dict[str, Any] = {}
        for op, b in zip(self.ops, arr, strict=True):
            if b == 0:
                continue
            m = op.magnitudes[b - 1]
            w = op.half_width
            fam = op.family
            if fam == "mirror":
                values[op.name] = True
            elif fam == "rotate":
                if np.isnan(m):
                    values[op.name] = float(r.choice((90.0, 270.0)))
                else:
                    values[op.name] = float(r.choice((1.0, -1.0)) * r.uniform(max(0.0, m - w), m + w))
            elif fam in ("scale", "gamma", "inverse_gamma", "brightness_mul", "contrast"):
                sign = r.choice((1.0, -1.0))
                values[op.name] = float((1.0 + r.uniform(max(0.0, m - w), m + w)) ** sign)
            elif fam == "brightness_add":
                values[op.name] = float(r.choice((1.0, -1.0)) * r.uniform(max(0.0, m - w), m + w))
            elif fam == "blur_sharpen":
                kind = "blur" if b - 1 < len(_BLUR) else "sharpen"
                values[op.name] = (kind, float(r.uniform(m - w, m + w)))
            elif fam == "noise":
                values[op.name] = (float(r.uniform(max(0.0, m - w), m + w)), int(r.randint(0, 2**31 - 1)))
            elif fam == "low_resolution":
                values[op.name] = float(r.uniform(m - w, min(1.0, m + w)))
            else:  # pragma: no cover - the table above is exhaustive
                raise ValueError(f"unknown op family {fam!r}.")
        return values

    def _affine(self, values: Mapping[str, Any]) -> torch.Tensor | None:
        angles = [0.0, 0.0, 0.0]
        zoom = float(values.get("scale", 1.0))
        moved = "scale" in values
        for op in self.ops:
            if op.family == "rotate" and op.name in values:
                angles[int(op.axis)] += float(values[op.name])  # type: ignore[arg-type]
                moved = True
        return zoom_rotation_matrix(angles, zoom) if moved else None

    def _flip_axes(self, values: Mapping[str, Any]) -> list[int]:
        return [int(op.axis) for op in self.ops if op.family == "mirror" and values.get(op.name)]  # type: ignore[arg-type]

    def _spatial(
        self, x: torch.Tensor, values: Mapping[str, Any], spatial_size: Sequence[int] | None, label: bool
    ) -> torch.Tensor:
        matrix = self._affine(values)
        size = None if spatial_size is None else tuple(int(s) for s in spatial_size)
        mode = "nearest" if label else "bilinear"
        padding = "zeros" if label else self.padding_mode
        if matrix is not None:
            x = affine_resample(x, matrix, size, mode=mode, padding_mode=padding)
        elif size is not None and tuple(x.shape[1:]) != size:
            from monai.transforms import ResizeWithPadOrCrop

            x = ResizeWithPadOrCrop(size)(x)  # centre crop (zero padding where the input is smaller)
            x = plain_tensor(x)
        return x

    def apply_image(
        self, image: torch.Tensor, values: Mapping[str, Any], spatial_size: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Apply drawn values to an image in the authors' order (module docstring).

        Args:
            image: ``(C, X, Y, Z)``, intensity-normalised.
            values: from :meth:`sample_values` (or written by hand: ``{"gamma": 1.3}``); ops absent are identity.
            spatial_size: output size, the centre of an enlarged input patch (default: the input size).

        Returns:
            ``(C, *spatial_size)``, a new plain tensor.
        """
        x = untouched = check_image(image)
        x = self._spatial(x, values, spatial_size, label=False)
        if "noise" in values:
            std, seed = values["noise"]
            x = gaussian_noise(x, std, seed)
        if "blur_sharpen" in values:
            kind, sigma = values["blur_sharpen"]
            x = gaussian_blur(x, sigma) if kind == "blur" else laplacian_sharpen(x, sigma)
        if "brightness_add" in values:
            x = brightness_add(x, values["brightness_add"])
        if "brightness_mul" in values:
            x = brightness_multiply(x, values["brightness_mul"])
        if "contrast" in values:
            x = contrast_adjust(x, values["contrast"])
        if "low_resolution" in values:
            x = simulate_low_resolution(x, values["low_resolution"])
        if "inverse_gamma" in values:
            x = gamma_correction(x, values["inverse_gamma"], invert=True)
        if "gamma" in values:
            x = gamma_correction(x, values["gamma"])
        axes = self._flip_axes(values)
        if axes:
            x = flip_axes(x, axes)
        return x.clone() if x is untouched else x

    def apply_label(
        self, label: torch.Tensor, values: Mapping[str, Any], spatial_size: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Apply the spatial part of drawn values to a label ``(C, X, Y, Z)`` (nearest, padded with 0)."""
        y = untouched = check_image(label, "label")
        y = self._spatial(y, values, spatial_size, label=True)
        axes = self._flip_axes(values)
        if axes:
            y = flip_axes(y, axes)
        return y.clone() if y is untouched else y

    def apply_op(
        self,
        op: str | int,
        bin_index: int,
        image: torch.Tensor,
        label: torch.Tensor | None = None,
        rng: np.random.RandomState | int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One operation at one bin (all the others identity): op + bin in, transformed patch out.

        Args:
            op: operation name or position.
            bin_index: its bin (0 = identity).
            image: ``(C, X, Y, Z)``.
            label: optional ``(C', X, Y, Z)``; gets the spatial part.
            rng: random state for the value drawn in the bin's range.

        Returns:
            ``(image, label)`` transformed (``label`` ``None`` when not given).
        """
        bins = [0] * len(self.ops)
        bins[self.index(op)] = int(bin_index)
        values = self.sample_values(bins, rng)
        out = self.apply_image(image, values)
        return out, None if label is None else self.apply_label(label, values)
