# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The test-time (TEA) transformation pool of JCSAugment: 84 signed transforms with fixed values, each invertible.

Li, Kamnitsas, Dou, Qin, Glocker, "Joint optimization of class-specific training- and test-time data augmentation in
segmentation", IEEE TMI 2023 (method section: test-time augmentation). The test-time policy is one categorical over
these transforms; the learned-TTA inferer applies the most probable ones to the whole image, predicts, and maps the
logits back with the inverse transform. Indices (the authors' layout, ``SampleNet(84, orgts)``):

====== ==============================================================================================
index  transform
====== ==============================================================================================
0      ``identity``
1-10   ``scale+m`` / ``scale-m``, ``m`` in 0.05 ... 0.45: zoom ``(1 + m) ** +-1`` (``+``: magnify)
11-28  ``rotate_{x,y,z}+d`` / ``-d``, ``d`` in 5, 15, 25 degrees about spatial axis 0, 1, 2
29-31  ``mirror_x``, ``mirror_y``, ``mirror_z``
32-40  ``rot90_yz+``, ``rot90_yz-``, ``rot180_yz``, then the ``xz`` and ``xy`` planes (``+``: ``k = 1``)
41-70  ``gamma``, ``inverse_gamma`` (``(1 + m) ** +-1``, ``m`` in 0.1, 0.3, 0.5), ``brightness_add`` (``+-m``),
       ``brightness_mul``, ``contrast`` (``(1 + m) ** +-1``, ``m`` in 0.05, 0.15, 0.25), ``+m`` then ``-m``
71-82  ``blur_s`` (0.5, 0.7, 0.9), ``sharpen_s`` (0.9, 0.7, 0.5), ``noise_s`` (0.025, 0.075, 0.125),
       ``low_resolution_z`` (0.9, 0.7, 0.5)
83     ``mirror_xyz``
====== ==============================================================================================

nnU-Net's eight mirrorings (the heuristic TTA baseline, ``nninitindex`` of the authors) are indices
0, 29, 30, 31, 34, 37, 40, 83: a 180-degree rotation in a plane is the flip of both its axes
(:data:`NNUNET_MIRRORING`).

Inverses, applied to the network's logits ``(K, *spatial)``:

- flips: the same flip; ``rot90`` / ``rot180``: ``Rotate90`` with ``4 - k`` (exact, shapes restored);
- zoom and the small rotations: ``Affine`` with the inverse matrix (bilinear). The forward resampling keeps the
  image size, so content zoomed or rotated out of the field of view is lost and padded with zeros: the inverse maps
  back the rest. :meth:`TestTimeTransformPool.coverage` is the fraction of each voxel that came from inside the
  image (the inverse of the forward of an image of ones); the inferer weights each transform's logits by it so that
  padded voxels do not count, and the authors' TEA loss masks them for the same reason;
- intensity transforms (gamma, brightness, contrast, blur, sharpen, noise, low resolution): none (identity), the
  prediction is already on the input grid.

The ``traced`` inverse of MONAI (``Affine.inverse`` on a ``MetaTensor``) needs the forward's trace on the tensor
being inverted; the logits are a new tensor produced by the network, so the inverse is written explicitly with the
same MONAI array transforms. Noise uses a fixed seed per index, so a TTA prediction is deterministic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from ..utils import index_by_name
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
    rotate90,
    simulate_low_resolution,
    zoom_rotation_matrix,
)

__all__ = ["NNUNET_MIRRORING", "TEST_TIME_TRANSFORMS", "TestTimeTransform", "TestTimeTransformPool"]

_AXES = "xyz"
_PLANES = ((1, 2), (0, 2), (0, 1))


@dataclasses.dataclass(frozen=True)
class TestTimeTransform:
    """One signed test-time transform with a fixed value.

    Attributes:
        name: e.g. ``"rotate_y-15"``, ``"mirror_x"``.
        family: ``"identity"``, ``"scale"``, ``"rotate"``, ``"mirror"``, ``"rot90"``, ``"gamma"``,
            ``"inverse_gamma"``, ``"brightness_add"``, ``"brightness_mul"``, ``"contrast"``, ``"blur"``,
            ``"sharpen"``, ``"noise"`` or ``"low_resolution"``.
        value: the zoom, angle (degrees), gamma, offset, factor, sigma, std or zoom; for ``rot90`` the number of
            quarter turns ``k``.
        axes: the spatial axes a rotation / flip acts on (a rotation about axis ``a`` turns the other two).
    """

    __test__ = False  # not a pytest test class despite the name

    name: str
    family: str
    value: float = 0.0
    axes: tuple[int, ...] = ()

    @property
    def spatial(self) -> bool:
        """Whether the transform moves voxels (needs an inverse on the logits)."""
        return self.family in ("scale", "rotate", "mirror", "rot90")

    @property
    def exact(self) -> bool:
        """Whether forward and inverse are exact (no interpolation, no field-of-view loss)."""
        return self.family not in ("scale", "rotate")


def _build() -> tuple[TestTimeTransform, ...]:
    t: list[TestTimeTransform] = [TestTimeTransform("identity", "identity")]
    for m in (0.05, 0.15, 0.25, 0.35, 0.45):
        t.append(TestTimeTransform(f"scale+{m:g}", "scale", 1.0 + m))
        t.append(TestTimeTransform(f"scale-{m:g}", "scale", 1.0 / (1.0 + m)))
    for a, axis in enumerate(_AXES):
        for d in (5, 15, 25):
            t.append(TestTimeTransform(f"rotate_{axis}+{d}", "rotate", float(d), (a,)))
            t.append(TestTimeTransform(f"rotate_{axis}-{d}", "rotate", -float(d), (a,)))
    for a, axis in enumerate(_AXES):
        t.append(TestTimeTransform(f"mirror_{axis}", "mirror", 0.0, (a,)))
    for plane in _PLANES:
        tag = _AXES[plane[0]] + _AXES[plane[1]]
        t.append(TestTimeTransform(f"rot90_{tag}+", "rot90", 1.0, plane))
        t.append(TestTimeTransform(f"rot90_{tag}-", "rot90", 3.0, plane))
        t.append(TestTimeTransform(f"rot180_{tag}", "rot90", 2.0, plane))
    for fam, levels in (
        ("gamma", (0.1, 0.3, 0.5)),
        ("inverse_gamma", (0.1, 0.3, 0.5)),
        ("brightness_add", (0.05, 0.15, 0.25)),
        ("brightness_mul", (0.05, 0.15, 0.25)),
        ("contrast", (0.05, 0.15, 0.25)),
    ):
        for m in levels:
            plus, minus = (m, -m) if fam == "brightness_add" else (1.0 + m, 1.0 / (1.0 + m))
            t.append(TestTimeTransform(f"{fam}+{m:g}", fam, plus))
            t.append(TestTimeTransform(f"{fam}-{m:g}", fam, minus))
    for fam, levels in (
        ("blur", (0.5, 0.7, 0.9)),
        ("sharpen", (0.9, 0.7, 0.5)),
        ("noise", (0.025, 0.075, 0.125)),
        ("low_resolution", (0.9, 0.7, 0.5)),
    ):
        for v in levels:
            t.append(TestTimeTransform(f"{fam}_{v:g}", fam, v))
    t.append(TestTimeTransform("mirror_xyz", "mirror", 0.0, (0, 1, 2)))
    return tuple(t)


#: The 84 test-time transforms in the authors' index layout (module docstring).
TEST_TIME_TRANSFORMS: tuple[TestTimeTransform, ...] = _build()

#: nnU-Net's eight mirrorings (identity, the three single flips, the three double flips, the triple flip).
NNUNET_MIRRORING: tuple[str, ...] = (
    "identity",
    "mirror_x",
    "mirror_y",
    "mirror_z",
    "rot180_yz",
    "rot180_xz",
    "rot180_xy",
    "mirror_xyz",
)

_BY_NAME = {t.name: t for t in TEST_TIME_TRANSFORMS}


class TestTimeTransformPool:
    """The TEA pool: forward and inverse of each test-time transform (module docstring).

    Args:
        names: the transforms to use, a subset of :data:`TEST_TIME_TRANSFORMS` names (default: all 84, in the
            authors' order); kept in the canonical order. ``"identity"`` must be included.
        padding_mode: ``grid_sample`` padding of the zoom / rotation resampling (``"zeros"``, as the authors).

    Raises:
        ValueError: an unknown or repeated name, or no ``"identity"``.
    """

    __test__ = False  # not a pytest test class despite the name

    #: The name of the pool family, recorded in policy files.
    name = "jcsaugment_test_time"

    def __init__(self, names: Sequence[str] | None = None, padding_mode: str = "zeros") -> None:
        if names is None:
            transforms = TEST_TIME_TRANSFORMS
        else:
            chosen = list(names)
            unknown = [n for n in chosen if n not in _BY_NAME]
            if unknown:
                raise ValueError(f"unknown test-time transform(s) {unknown}; known: {list(_BY_NAME)}.")
            if len(set(chosen)) != len(chosen):
                raise ValueError(f"names must not repeat, got {chosen}.")
            if "identity" not in chosen:
                raise ValueError("names must include 'identity'.")
            transforms = tuple(t for t in TEST_TIME_TRANSFORMS if t.name in chosen)
        self.transforms: tuple[TestTimeTransform, ...] = transforms
        self.padding_mode = padding_mode
        self._coverage: dict[tuple[int, tuple[int, ...], str], torch.Tensor] = {}

    @property
    def names(self) -> tuple[str, ...]:
        """Transform names, in order."""
        return tuple(t.name for t in self.transforms)

    def __len__(self) -> int:
        return len(self.transforms)

    def describe(self) -> dict[str, Any]:
        """The pool's identity: ``{"name": ..., "transforms": [names]}`` (JSON-ready)."""
        return {"name": self.name, "transforms": list(self.names)}

    def index(self, transform: str | int) -> int:
        """The position of a transform given by name or position.

        Raises:
            ValueError: unknown name or position out of range.
        """
        return index_by_name(self.names, transform, "test-time transform")

    def __getitem__(self, transform: str | int) -> TestTimeTransform:
        return self.transforms[self.index(transform)]

    @staticmethod
    def _matrix(t: TestTimeTransform) -> torch.Tensor:
        if t.family == "scale":
            return zoom_rotation_matrix((0.0, 0.0, 0.0), t.value)
        angles = [0.0, 0.0, 0.0]
        angles[t.axes[0]] = t.value
        return zoom_rotation_matrix(angles, 1.0)

    def forward(self, image: torch.Tensor, transform: str | int) -> torch.Tensor:
        """Apply a test-time transform to one image.

        Args:
            image: ``(C, X, Y, Z)``.
            transform: name or index.

        Returns:
            the transformed image (a ``rot90`` in a non-square plane swaps those two sizes).
        """
        i = self.index(transform)
        t = self.transforms[i]
        x = check_image(image)
        fam = t.family
        if fam == "identity":
            return x
        if fam in ("scale", "rotate"):
            return affine_resample(x, self._matrix(t), mode="bilinear", padding_mode=self.padding_mode)
        if fam == "mirror":
            return flip_axes(x, t.axes)
        if fam == "rot90":
            return rotate90(x, int(t.value), (t.axes[0], t.axes[1]))
        if fam in ("gamma", "inverse_gamma"):
            return gamma_correction(x, t.value, invert=fam == "inverse_gamma")
        if fam == "brightness_add":
            return brightness_add(x, t.value)
        if fam == "brightness_mul":
            return brightness_multiply(x, t.value)
        if fam == "contrast":
            return contrast_adjust(x, t.value)
        if fam == "blur":
            return gaussian_blur(x, t.value)
        if fam == "sharpen":
            return laplacian_sharpen(x, t.value)
        if fam == "noise":
            return gaussian_noise(x, t.value, seed=TEST_TIME_TRANSFORMS.index(t))
        if fam == "low_resolution":
            return simulate_low_resolution(x, t.value)
        raise ValueError(f"unknown test-time transform family {fam!r}.")  # pragma: no cover

    def inverse(self, output: torch.Tensor, transform: str | int) -> torch.Tensor:
        """Map a prediction of the transformed image back to the original grid.

        Args:
            output: ``(K, *spatial')`` logits (or any map) on the transformed grid.
            transform: name or index.

        Returns:
            ``(K, *spatial)`` on the original grid (bilinear for zoom / rotation; exact otherwise; intensity
            transforms: ``output`` itself).
        """
        t = self.transforms[self.index(transform)]
        y = check_image(output, "output")
        if t.family in ("scale", "rotate"):
            inv = torch.linalg.inv(self._matrix(t))
            return affine_resample(y, inv, mode="bilinear", padding_mode="zeros")
        if t.family == "mirror":
            return flip_axes(y, t.axes)
        if t.family == "rot90":
            return rotate90(y, 4 - int(t.value), (t.axes[0], t.axes[1]))
        return y

    def coverage(
        self, spatial_shape: Sequence[int], transform: str | int, device: torch.device | str = "cpu"
    ) -> torch.Tensor | None:
        """The fraction of each voxel that the forward-then-inverse keeps inside the field of view.

        Args:
            spatial_shape: ``(X, Y, Z)`` of the original image.
            transform: name or index.
            device: where to put the result.

        Returns:
            ``(1, X, Y, Z)`` in ``[0, 1]`` for zoom / rotations (cached), ``None`` for exact transforms (coverage 1
            everywhere).
        """
        i = self.index(transform)
        t = self.transforms[i]
        if t.exact:
            return None
        shape = tuple(int(s) for s in spatial_shape)
        key = (i, shape, str(device))
        if key not in self._coverage:
            ones = torch.ones((1, *shape), dtype=torch.float32, device=device)
            fwd = affine_resample(ones, self._matrix(t), mode="bilinear", padding_mode="zeros")
            self._coverage[key] = self.inverse(fwd, i).clamp_(0.0, 1.0)
        return self._coverage[key]
