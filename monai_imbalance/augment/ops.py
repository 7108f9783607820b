# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The elementary deterministic operations of the JCSAugment transformation pool, on MONAI array transforms.

Li, Kamnitsas, Dou, Qin, Glocker, "Joint optimization of class-specific training- and test-time data augmentation in
segmentation", IEEE TMI 2023 (method section: the transformation pool). Each function takes concrete parameter values
(no randomness except the noise realisation, which is fixed by a seed) and one image ``(C, *spatial)`` with three
spatial dimensions, and returns a new plain ``torch.Tensor`` of the same dtype (MONAI transforms would wrap a plain
tensor into a ``MetaTensor``; the callers keep the metadata themselves). The training-time pool
(:mod:`~monai_imbalance.augment.training_pool`) draws the values from the magnitude bins; the test-time pool
(:mod:`~monai_imbalance.augment.test_time_pool`) uses fixed signed values and the inverse operations here.

Which MONAI transform does what:

- :func:`affine_resample`: ``monai.transforms.Affine`` with a given ``(4, 4)`` matrix that maps output voxel
  coordinates (centred) to input ones; :func:`zoom_rotation_matrix` builds it from ``create_rotate`` /
  ``create_scale``. One resampling for scaling, the three rotations and the 90-degree rotations of the training pool.
- :func:`flip_axes`: ``Flip``; :func:`rotate90`: ``Rotate90`` (exact, invertible by ``4 - k``).
- :func:`gamma_correction`: ``AdjustContrast(gamma, invert_image, retain_stats=True)`` per channel: min-max
  normalise, ``x ** gamma``, rescale, then restore the mean and standard deviation (``invert_image``: the same on
  ``-x``, the authors' inverse gamma).
- :func:`brightness_add`: ``ShiftIntensity``; :func:`brightness_multiply`: ``ScaleIntensity(factor=f - 1)``.
- :func:`contrast_adjust`: ``ScaleIntensityFixedMean(factor=f - 1, preserve_range=True)`` per channel,
  ``(x - mean) * f + mean`` clipped to the channel's ``[min, max]``.
- :func:`gaussian_blur`: ``GaussianSmooth``.
- :func:`laplacian_sharpen`: ``x - LoG_sigma(x)`` clipped to ``[min, max]``, the authors' sharpening (MONAI's
  ``GaussianSharpen`` is an unsharp mask of a blurred image, a different operation); the Laplacian of Gaussian is
  ``scipy.ndimage.gaussian_laplace``.
- :func:`gaussian_noise`: ``RandGaussianNoise(prob=1, std, sample_std=False)`` seeded.
- :func:`simulate_low_resolution`: ``RandSimulateLowResolution(prob=1, zoom_range=(z, z))``, down-sampling linear,
  up-sampling nearest (the authors' orders 1 and 0).

Statistics: the authors compute the min / max / mean / std of gamma and contrast on a 4x-subsampled whole image (their
``augmentImagerng.py``). A loader worker only sees the patch after cropping, so at training time they are the patch's
own (as in nnU-Net and MONAI's ``retain_stats``); at test time the transforms are applied to the whole image, so there
the statistics are the whole image's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from monai.transforms import (
    AdjustContrast,
    Affine,
    Flip,
    GaussianSmooth,
    RandGaussianNoise,
    RandSimulateLowResolution,
    Rotate90,
    ScaleIntensity,
    ScaleIntensityFixedMean,
    ShiftIntensity,
)
from monai.transforms.utils import create_rotate, create_scale

from monai_imbalance.utils import plain_tensor

__all__ = [
    "SPATIAL_DIMS",
    "affine_resample",
    "brightness_add",
    "brightness_multiply",
    "check_image",
    "contrast_adjust",
    "flip_axes",
    "gamma_correction",
    "gaussian_blur",
    "gaussian_noise",
    "laplacian_sharpen",
    "rotate90",
    "simulate_low_resolution",
    "zoom_rotation_matrix",
]

#: The pool is defined for 3D patches (three rotation axes, three mirror axes).
SPATIAL_DIMS = 3


def check_image(image: torch.Tensor, name: str = "image") -> torch.Tensor:
    """``image`` as a plain tensor, checking it is ``(C, X, Y, Z)``.

    Raises:
        ValueError: not a 4D tensor / array.
    """
    t = plain_tensor(image)
    if t.ndim != SPATIAL_DIMS + 1:
        raise ValueError(
            f"{name} must be (C, X, Y, Z) with three spatial dimensions, got shape {tuple(t.shape)} "
            "(the JCSAugment pool is 3D)."
        )
    return t


def zoom_rotation_matrix(rotate_degrees: Sequence[float] = (0.0, 0.0, 0.0), zoom: float = 1.0) -> torch.Tensor:
    """The ``(4, 4)`` output-to-input matrix of a rotation about the three spatial axes and an isotropic zoom.

    Args:
        rotate_degrees: rotation angles about spatial axes 0, 1, 2, in degrees (MONAI's ``create_rotate`` order:
            the axis-0 rotation is applied first to the output grid).
        zoom: content magnification (``> 1`` zooms in: structures get bigger), ``> 0``.

    Returns:
        ``R @ S`` with ``S = diag(1 / zoom)``, float64.

    Raises:
        ValueError: ``zoom <= 0`` or not three angles.
    """
    if not zoom > 0:
        raise ValueError(f"zoom must be > 0, got zoom={zoom!r}.")
    angles = [math.radians(float(a)) for a in rotate_degrees]
    if len(angles) != SPATIAL_DIMS:
        raise ValueError(f"rotate_degrees must hold three angles, got {rotate_degrees!r}.")
    rot = torch.as_tensor(create_rotate(SPATIAL_DIMS, angles), dtype=torch.float64)
    scale = torch.as_tensor(create_scale(SPATIAL_DIMS, [1.0 / float(zoom)] * SPATIAL_DIMS), dtype=torch.float64)
    return rot @ scale


def affine_resample(
    image: torch.Tensor,
    matrix: torch.Tensor,
    spatial_size: Sequence[int] | None = None,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Resample ``image`` with ``monai.transforms.Affine`` and an output-to-input matrix, about the image centre.

    Args:
        image: ``(C, X, Y, Z)``.
        matrix: ``(4, 4)`` affine from centred output voxel coordinates to centred input ones
            (:func:`zoom_rotation_matrix`); its inverse undoes the transform (up to interpolation and the field of
            view).
        spatial_size: output size (default: the input's); a smaller size takes the centre of an enlarged crop.
        mode: ``"bilinear"`` for images and logits, ``"nearest"`` for labels.
        padding_mode: ``grid_sample`` padding outside the input (``"zeros"``, ``"border"``, ``"reflection"``).

    Returns:
        ``(C, *spatial_size)``, the input's dtype (labels keep their integer values with ``"nearest"``).
    """
    img = check_image(image)
    size = tuple(int(s) for s in (spatial_size if spatial_size is not None else img.shape[1:]))
    out = Affine(
        affine=torch.as_tensor(matrix, dtype=torch.float32),
        spatial_size=size,
        mode=mode,
        padding_mode=padding_mode,
        image_only=True,
    )(img)
    return plain_tensor(out, img.dtype)


def flip_axes(image: torch.Tensor, axes: Sequence[int]) -> torch.Tensor:
    """``monai.transforms.Flip`` over the given spatial axes (0, 1, 2); its own inverse."""
    img = check_image(image)
    return plain_tensor(Flip(spatial_axis=[int(a) for a in axes])(img), img.dtype)


def rotate90(image: torch.Tensor, k: int, plane: tuple[int, int]) -> torch.Tensor:
    """``monai.transforms.Rotate90``: ``k`` quarter turns in the plane of two spatial axes; inverse ``4 - k``."""
    img = check_image(image)
    return plain_tensor(Rotate90(k=int(k) % 4, spatial_axes=(int(plane[0]), int(plane[1])))(img), img.dtype)


def _per_channel(image: torch.Tensor, fn) -> torch.Tensor:
    img = check_image(image)
    return torch.stack([plain_tensor(fn(c[None]))[0] for c in img]).to(img.dtype)


def gamma_correction(image: torch.Tensor, gamma: float, invert: bool = False) -> torch.Tensor:
    """Gamma on min-max normalised intensities with mean / std restored, per channel (``AdjustContrast``).

    ``gamma > 1`` darkens the mid-tones relative to the extremes (the histogram gets a longer bright tail), ``< 1``
    brightens them. ``invert=True`` applies the same to ``-x`` (the authors' inverse gamma).

    Raises:
        ValueError: ``gamma <= 0``.
    """
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got gamma={gamma!r}.")
    t = AdjustContrast(gamma=float(gamma), invert_image=bool(invert), retain_stats=True)
    return _per_channel(image, t)


def brightness_add(image: torch.Tensor, offset: float) -> torch.Tensor:
    """``x + offset`` (``ShiftIntensity``)."""
    img = check_image(image)
    return plain_tensor(ShiftIntensity(offset=float(offset))(img), img.dtype)


def brightness_multiply(image: torch.Tensor, factor: float) -> torch.Tensor:
    """``x * factor`` (``ScaleIntensity(minv=None, maxv=None, factor=factor - 1)``)."""
    img = check_image(image)
    return plain_tensor(ScaleIntensity(minv=None, maxv=None, factor=float(factor) - 1.0)(img), img.dtype)


def contrast_adjust(image: torch.Tensor, factor: float) -> torch.Tensor:
    """``(x - mean) * factor + mean`` clipped to ``[min, max]``, per channel (``ScaleIntensityFixedMean``)."""
    t = ScaleIntensityFixedMean(factor=float(factor) - 1.0, preserve_range=True, fixed_mean=True, channel_wise=True)
    img = check_image(image)
    return plain_tensor(t(img), img.dtype)


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian smoothing with standard deviation ``sigma`` voxels (``GaussianSmooth``)."""
    img = check_image(image)
    return plain_tensor(GaussianSmooth(sigma=float(sigma))(img), img.dtype)


def laplacian_sharpen(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """``x - LoG_sigma(x)`` clipped to each channel's ``[min, max]``: the authors' sharpening (JCSAugment's pool).

    A smaller ``sigma`` sharpens finer detail more strongly; the Laplacian of Gaussian is
    ``scipy.ndimage.gaussian_laplace``.
    """
    from scipy.ndimage import gaussian_laplace

    img = check_image(image)
    dtype = np.float64 if img.dtype == torch.float64 else np.float32
    arr = img.detach().cpu().numpy().astype(dtype, copy=False)
    out = np.empty_like(arr)
    for c in range(arr.shape[0]):
        out[c] = np.clip(arr[c] - gaussian_laplace(arr[c], float(sigma)), arr[c].min(), arr[c].max())
    return torch.from_numpy(out).to(device=img.device, dtype=img.dtype)


def gaussian_noise(image: torch.Tensor, std: float, seed: int) -> torch.Tensor:
    """Additive zero-mean Gaussian noise of standard deviation ``std``, realisation fixed by ``seed``."""
    img = check_image(image)
    t = RandGaussianNoise(prob=1.0, mean=0.0, std=float(std), sample_std=False)
    t.set_random_state(seed=int(seed) % (2**32))
    return plain_tensor(t(img), img.dtype)


def simulate_low_resolution(image: torch.Tensor, zoom: float) -> torch.Tensor:
    """Down-sample by ``zoom`` (linear) and up-sample back (nearest), ``RandSimulateLowResolution``.

    Raises:
        ValueError: ``zoom`` not in ``(0, 1]``.
    """
    if not 0 < zoom <= 1:
        raise ValueError(f"zoom must be in (0, 1], got zoom={zoom!r}.")
    img = check_image(image)
    if zoom == 1:
        return img.clone()
    t = RandSimulateLowResolution(
        prob=1.0, downsample_mode="trilinear", upsample_mode="nearest", zoom_range=(float(zoom), float(zoom))
    )
    return plain_tensor(t(img), img.dtype)
