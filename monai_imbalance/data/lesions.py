# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Synthetic lesions painted onto a real (pseudo-)subject: irregular shapes, varied appearance, optional mass effect.

The lesions are synthetic; the anatomy they are painted on is real. :func:`add_lesions` takes an image, its label
map (with an "organ" label) and a brain tissue mask on an isotropic grid, and adds a random number of lesions:

- **where**: each centre is a voxel of the organ dilated by ``centre_margin_mm``, inside the brain mask
  (:func:`lesion_centre_region`); lesions keep apart from each other when the region allows it;
- **size**: the volume is log-uniform in ``volume_fraction`` x the brain mask's volume (exactly, in voxels);
- **shape**: the voxels with the smallest *perturbed distance* ``|x - c| / (1 + a n(x))`` grown from the centre
  inside the brain mask (``n``: Gaussian-smoothed white noise of unit standard deviation, ``a``: the
  irregularity), so a ball whose radius is modulated by smooth noise, kept connected;
- **appearance**: an intensity change of sign +1 (hyper-intense) or -1 (hypo-intense), of ``contrast`` x the
  brain's intensity standard deviation, modulated by a smoothed texture ``1 + texture n'(x)``, optionally with a
  rim of another strength (``rim_ratio`` x the core's), then blurred by a Gaussian of ``boundary_blur_mm`` so that
  the boundary is soft;
- **mass effect** (optional): before the lesion is painted, the surrounding tissue (image, label and brain mask)
  is pushed away from the centre by a smooth radial displacement, largest (``mass_effect`` x the lesion's
  equivalent radius) at that radius.

The lesion label overrides the organ label where they overlap. Every draw comes from the generator passed in,
so the same generator state gives the same bytes.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["Lesion", "LesionParams", "add_lesions", "lesion_centre_region"]

#: tries to find a centre away from the lesions already placed before accepting one that is too close
_PLACEMENT_TRIES = 100
#: the perturbed distance divides by ``max(1 + a n, _MIN_RADIUS_FACTOR)``, so the shape stays a star around its centre
_MIN_RADIUS_FACTOR = 0.25


def _check_range(name: str, value: object, low: float, high: float, integer: bool = False) -> None:
    if not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"LesionParams.{name} must be a (low, high) pair, got {value!r}.")
    first, second = value
    kind = int if integer else (int, float)
    if not all(isinstance(v, kind) and not isinstance(v, bool) for v in value):
        raise ValueError(f"LesionParams.{name} must hold {'integers' if integer else 'numbers'}, got {value!r}.")
    if not low <= first <= second <= high:
        raise ValueError(f"LesionParams.{name} must satisfy {low} <= low <= high <= {high}, got {value!r}.")


def _check_number(name: str, value: object, low: float, high: float, strict_low: bool = False) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"LesionParams.{name} must be a number, got {value!r}.")
    if value < low or value > high or (strict_low and value == low):
        bound = f"in ({low}, {high}]" if strict_low else f"in [{low}, {high}]"
        raise ValueError(f"LesionParams.{name} must be {bound}, got {value!r}.")


@dataclass(frozen=True)
class LesionParams:
    """The distributions of the synthetic lesions (one draw per lesion unless said otherwise).

    Ranges are ``(low, high)`` pairs; a value is drawn uniformly in its range unless said otherwise. The defaults
    give visible, learnable lesions whose appearance still varies widely from lesion to lesion.

    Attributes:
        num_lesions: number of lesions per subject, an integer uniform in ``[low, high]`` (inclusive).
        volume_fraction: lesion volume as a fraction of the brain mask's volume, log-uniform in this range
            (0.0002-0.005: 0.02-0.5 %, about 30-800 voxels of a 2 mm adult brain, equivalent radii of about
            2-6 voxels).
        centre_margin_mm: a lesion's centre lies within this distance (mm) of the organ label, inside the brain
            mask: in the organ or the white matter next to it.
        irregularity: amplitude ``a`` of the radius perturbation (relative to the radius; the noise has unit
            standard deviation); 0 gives a ball.
        shape_smoothness: standard deviation of the Gaussian that smooths the shape noise, as a fraction of the
            lesion's equivalent radius (small: bumpy outline; large: ellipsoid-like).
        hyperintense_probability: probability that a lesion is brighter than its host tissue (otherwise darker).
        contrast: intensity change of the lesion core, in units of the brain's intensity standard deviation.
        texture: relative amplitude of the heterogeneity inside the lesion (the change is multiplied by
            ``1 + texture n'`` with smoothed unit noise ``n'``, clipped at 0).
        texture_scale_mm: standard deviation (mm) of the Gaussian that smooths the texture noise.
        rim_probability: probability that a lesion has a rim of another intensity.
        rim_ratio: intensity change of the rim as a multiple of the core's (above 1: a brighter ring, below 1:
            a fainter one).
        rim_width_mm: the rim is the lesion's voxels within this distance (mm) of its outside.
        boundary_blur_mm: standard deviation (mm) of the Gaussian that blurs the intensity change (soft boundary).
        mass_effect_probability: probability that a lesion pushes the surrounding tissue away.
        mass_effect: largest displacement of the surrounding tissue, as a fraction of the lesion's equivalent
            radius (at most 0.5, which keeps the displacement free of folding).
    """

    num_lesions: tuple[int, int] = (1, 3)
    volume_fraction: tuple[float, float] = (0.0002, 0.005)
    centre_margin_mm: float = 8.0
    irregularity: tuple[float, float] = (0.2, 0.5)
    shape_smoothness: float = 0.5
    hyperintense_probability: float = 0.5
    contrast: tuple[float, float] = (1.0, 3.0)
    texture: tuple[float, float] = (0.1, 0.5)
    texture_scale_mm: float = 3.0
    rim_probability: float = 0.3
    rim_ratio: tuple[float, float] = (0.3, 2.0)
    rim_width_mm: float = 2.0
    boundary_blur_mm: tuple[float, float] = (0.5, 2.0)
    mass_effect_probability: float = 0.3
    mass_effect: tuple[float, float] = (0.1, 0.4)

    def __post_init__(self) -> None:
        _check_range("num_lesions", self.num_lesions, 1, 1000, integer=True)
        _check_range("volume_fraction", self.volume_fraction, 0.0, 1.0)
        if self.volume_fraction[0] <= 0:
            raise ValueError(f"LesionParams.volume_fraction must be positive, got {self.volume_fraction!r}.")
        _check_number("centre_margin_mm", self.centre_margin_mm, 0.0, math.inf)
        _check_range("irregularity", self.irregularity, 0.0, 1.0)
        _check_number("shape_smoothness", self.shape_smoothness, 0.0, 10.0, strict_low=True)
        _check_number("hyperintense_probability", self.hyperintense_probability, 0.0, 1.0)
        _check_range("contrast", self.contrast, 0.0, math.inf)
        _check_range("texture", self.texture, 0.0, 10.0)
        _check_number("texture_scale_mm", self.texture_scale_mm, 0.0, math.inf, strict_low=True)
        _check_number("rim_probability", self.rim_probability, 0.0, 1.0)
        _check_range("rim_ratio", self.rim_ratio, 0.0, math.inf)
        _check_number("rim_width_mm", self.rim_width_mm, 0.0, math.inf)
        _check_range("boundary_blur_mm", self.boundary_blur_mm, 0.0, math.inf)
        _check_number("mass_effect_probability", self.mass_effect_probability, 0.0, 1.0)
        _check_range("mass_effect", self.mass_effect, 0.0, 0.5)


@dataclass(frozen=True)
class Lesion:
    """What was drawn for one lesion.

    Attributes:
        centre: (3,) voxel index of the drawn centre (inside the lesion unless another lesion already covers it).
        volume: number of voxels of the lesion label (may be smaller when the brain mask around it runs out).
        volume_fraction: the drawn volume as a fraction of the brain mask's volume (before any mass effect).
        radius_mm: radius of the ball of the drawn volume, mm.
        irregularity: amplitude of the radius perturbation.
        sign: +1 hyper-intense, -1 hypo-intense.
        contrast: intensity change of the core in brain standard deviations.
        intensity_change: the same in image units (``sign * contrast * brain SD``).
        texture: relative amplitude of the texture.
        rim_ratio: rim change / core change, or None without a rim.
        blur_mm: standard deviation of the boundary blur, mm.
        mass_effect_mm: largest displacement of the surrounding tissue, mm (0 without mass effect).
    """

    centre: tuple[int, int, int]
    volume: int
    volume_fraction: float
    radius_mm: float
    irregularity: float
    sign: int
    contrast: float
    intensity_change: float
    texture: float
    rim_ratio: float | None
    blur_mm: float
    mass_effect_mm: float


def _box(centre: Sequence[int], half: int, shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(max(0, c - half), min(n, c + half + 1)) for c, n in zip(centre, shape, strict=True))


def _unit_noise(rng: np.random.Generator, shape: Sequence[int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise scaled to zero mean and unit standard deviation over the array."""
    noise = ndimage.gaussian_filter(rng.standard_normal(tuple(shape)), sigma, mode="reflect", truncate=3.0)
    std = float(noise.std())
    return (noise - noise.mean()) / std if std > 0 else np.zeros_like(noise)


def _offsets(box: tuple[slice, ...], centre: Sequence[int]) -> list[np.ndarray]:
    """Voxel offsets from ``centre`` along each axis for the voxels of ``box``, broadcastable to the box."""
    axes = [np.arange(s.start, s.stop, dtype=float) - c for s, c in zip(box, centre, strict=True)]
    return list(np.ix_(*axes))


def lesion_centre_region(
    label: np.ndarray, brain: np.ndarray, spacing: float, margin_mm: float, organ_label: int = 1
) -> np.ndarray:
    """Where a lesion may be centred: the organ dilated by ``margin_mm``, inside the brain mask.

    Args:
        label: (X, Y, Z) integer label map.
        brain: (X, Y, Z) boolean brain tissue mask.
        spacing: isotropic voxel size, mm.
        margin_mm: largest distance (mm) of a centre from the organ.
        organ_label: the organ's value in ``label``.

    Returns:
        (X, Y, Z) boolean mask (empty when the label has no organ voxel).
    """
    organ = np.asarray(label) == organ_label
    region = np.zeros(organ.shape, dtype=bool)
    if not organ.any():
        return region
    reach = int(math.ceil(margin_mm / spacing)) + 1
    low = np.maximum(np.argwhere(organ).min(axis=0) - reach, 0)
    high = np.minimum(np.argwhere(organ).max(axis=0) + reach + 1, organ.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))
    distance = ndimage.distance_transform_edt(~organ[box], sampling=spacing)
    region[box] = (distance <= margin_mm) & np.asarray(brain, dtype=bool)[box]
    return region


def _grow(priority: np.ndarray, allowed: np.ndarray, start: Sequence[int], volume: int) -> np.ndarray:
    """The ``volume`` allowed voxels of lowest priority that are 6-connected to ``start``, grown in priority order.

    Args:
        priority: (X, Y, Z) float priorities (the perturbed distance).
        allowed: (X, Y, Z) boolean mask of the voxels that may join.
        start: (3,) voxel where the growth starts; when it is not allowed, the allowed voxel of lowest priority.
        volume: number of voxels wanted.

    Returns:
        (X, Y, Z) boolean mask of at most ``volume`` voxels (fewer when the connected allowed voxels run out).
    """
    nx, ny, nz = priority.shape
    flat_priority = priority.ravel()
    reachable = np.asarray(allowed, dtype=bool).ravel().copy()
    mask = np.zeros(priority.size, dtype=bool)
    first = (int(start[0]) * ny + int(start[1])) * nz + int(start[2])
    if not reachable[first]:
        if not reachable.any():
            return mask.reshape(priority.shape)
        first = int(np.argmin(np.where(reachable, flat_priority, np.inf)))
    reachable[first] = False
    heap = [(float(flat_priority[first]), first)]
    count = 0
    while heap and count < volume:
        _, index = heapq.heappop(heap)
        mask[index] = True
        count += 1
        x, rest = divmod(index, ny * nz)
        y, z = divmod(rest, nz)
        for ok, neighbour in (
            (x > 0, index - ny * nz),
            (x < nx - 1, index + ny * nz),
            (y > 0, index - nz),
            (y < ny - 1, index + nz),
            (z > 0, index - 1),
            (z < nz - 1, index + 1),
        ):
            if ok and reachable[neighbour]:
                reachable[neighbour] = False
                heapq.heappush(heap, (float(flat_priority[neighbour]), neighbour))
    return mask.reshape(priority.shape)


def _push_away(
    arrays: list[np.ndarray], centre: Sequence[int], radius: float, amplitude: float, orders: Sequence[int]
) -> None:
    """Mass effect, in place: resample each array at ``x - u(x)``, ``u`` radial, largest (``amplitude``) at ``radius``.

    ``u(x) = amplitude (x - c) / radius exp((1 - |x - c|^2 / radius^2) / 2)`` (voxels), negligible beyond
    4 radii; with ``amplitude <= radius / 2`` the map ``x -> x - u(x)`` does not fold.
    """
    shape = arrays[0].shape
    box = _box(centre, int(math.ceil(4 * radius)) + 2, shape)
    offsets = _offsets(box, centre)
    squared = sum(o**2 for o in offsets)
    factor = amplitude / radius * np.exp(0.5 * (1.0 - squared / radius**2))
    grid = np.indices(tuple(s.stop - s.start for s in box), dtype=float)
    coords = np.stack([grid[a] - factor * offsets[a] for a in range(3)])
    for array, order in zip(arrays, orders, strict=True):
        crop = array[box]
        array[box] = ndimage.map_coordinates(crop, coords, order=order, mode="nearest", output=crop.dtype)


def add_lesions(
    image: np.ndarray,
    label: np.ndarray,
    brain: np.ndarray,
    spacing: float,
    rng: np.random.Generator,
    params: LesionParams = LesionParams(),
    organ_label: int = 1,
    lesion_label: int = 2,
) -> tuple[np.ndarray, np.ndarray, list[Lesion]]:
    """Paint random synthetic lesions onto a subject (see the module docstring for the model).

    Args:
        image: (X, Y, Z) intensity volume.
        label: (X, Y, Z) integer label map holding ``organ_label`` voxels.
        brain: (X, Y, Z) boolean brain tissue mask: the lesions lie inside it, their volumes and contrasts are
            relative to it.
        spacing: isotropic voxel size, mm.
        rng: the random generator; every draw comes from it.
        params: the lesion distributions.
        organ_label: the organ's value in ``label`` (lesion centres lie in or next to it).
        lesion_label: the lesions' value in the returned label (it overrides the organ).

    Returns:
        ``(image, label, lesions)``: new float32 image and label (``label``'s dtype) of the same shape, and what
        was drawn for each lesion. A non-negative input image stays non-negative.

    Raises:
        ValueError: shapes differ, the spacing is not positive, the brain mask is empty or no voxel may hold a
            lesion centre.
    """
    image = np.array(image, dtype=np.float32)
    label = np.array(label)
    brain = np.array(brain, dtype=bool)
    if image.ndim != 3 or label.shape != image.shape or brain.shape != image.shape:
        raise ValueError(
            f"add_lesions: image, label and brain must be 3-D of one shape, got {image.shape}, {label.shape} and "
            f"{brain.shape}."
        )
    try:
        spacing = float(spacing)
    except (TypeError, ValueError):
        raise ValueError(f"add_lesions: spacing must be a positive number of mm, got {spacing!r}.") from None
    if not (math.isfinite(spacing) and spacing > 0):
        raise ValueError(f"add_lesions: spacing must be a positive number of mm, got {spacing!r}.")
    if organ_label == lesion_label:
        raise ValueError(f"add_lesions: organ_label and lesion_label must differ, got {organ_label} for both.")
    brain_voxels = int(brain.sum())
    if brain_voxels == 0:
        raise ValueError("add_lesions: the brain mask is empty.")
    region = lesion_centre_region(label, brain, spacing, params.centre_margin_mm, organ_label)
    candidates = np.argwhere(region)
    if len(candidates) == 0:
        raise ValueError(
            f"add_lesions: no voxel may hold a lesion centre (label {organ_label} dilated by "
            f"{params.centre_margin_mm} mm, inside the brain mask, is empty)."
        )
    non_negative = bool(image.min() >= 0)
    brain_std = float(image[brain].astype(np.float64).std())

    # 1. draw every lesion's geometry and appearance
    count = int(rng.integers(params.num_lesions[0], params.num_lesions[1] + 1))
    low_volume = max(1, math.ceil(params.volume_fraction[0] * brain_voxels))
    high_volume = max(low_volume, math.floor(params.volume_fraction[1] * brain_voxels))
    drawn: list[dict] = []
    for _ in range(count):
        fraction = float(np.exp(rng.uniform(*np.log(params.volume_fraction))))
        volume = int(np.clip(round(fraction * brain_voxels), low_volume, high_volume))
        radius = (3 * volume / (4 * math.pi)) ** (1 / 3)  # voxels
        best, best_slack = None, -math.inf
        for _ in range(_PLACEMENT_TRIES):  # keep apart from the others; failing that, as far apart as found
            centre = candidates[int(rng.integers(len(candidates)))]
            slack = min(
                (np.linalg.norm(centre - other["centre"]) - 1.5 * (radius + other["radius"]) - 1 for other in drawn),
                default=0.0,
            )
            if slack > best_slack:
                best, best_slack = centre, slack
            if slack >= 0:
                break
        centre = best
        sign = 1 if rng.random() < params.hyperintense_probability else -1
        contrast = float(rng.uniform(*params.contrast))
        texture = float(rng.uniform(*params.texture))
        rim_ratio = float(rng.uniform(*params.rim_ratio)) if rng.random() < params.rim_probability else None
        blur_mm = float(rng.uniform(*params.boundary_blur_mm))
        mass = float(rng.uniform(*params.mass_effect)) if rng.random() < params.mass_effect_probability else 0.0
        drawn.append(
            {
                "centre": centre,
                "volume": volume,
                "radius": radius,
                "irregularity": float(rng.uniform(*params.irregularity)),
                "sign": sign,
                "contrast": contrast,
                "texture": texture,
                "rim_ratio": rim_ratio,
                "blur_mm": blur_mm,
                "mass": mass,
            }
        )

    # 2. mass effects: the tissue around each lesion moves before any lesion is painted
    if any(lesion["mass"] > 0 for lesion in drawn):
        brain_values = brain.astype(np.uint8)
        for lesion in drawn:
            if lesion["mass"] > 0:
                amplitude = lesion["mass"] * lesion["radius"]
                _push_away([image, label, brain_values], lesion["centre"], lesion["radius"], amplitude, (1, 0, 0))
        brain = brain_values.astype(bool)

    # 3. shapes and intensities
    lesion_mask = label == lesion_label
    lesions: list[Lesion] = []
    for lesion in drawn:
        centre, radius = lesion["centre"], lesion["radius"]
        blur = lesion["blur_mm"] / spacing
        box = _box(centre, int(math.ceil(2.5 * radius + 3 * blur)) + 2, image.shape)
        local_centre = [int(c - s.start) for c, s in zip(centre, box, strict=True)]
        crop_shape = tuple(s.stop - s.start for s in box)
        distance = np.sqrt(sum(o**2 for o in _offsets(box, centre)))
        shape_noise = _unit_noise(rng, crop_shape, params.shape_smoothness * radius)
        perturbed = distance / np.maximum(1.0 + lesion["irregularity"] * shape_noise, _MIN_RADIUS_FACTOR)
        mask = _grow(perturbed, brain[box] & ~lesion_mask[box], local_centre, lesion["volume"])

        profile = 1.0 + lesion["texture"] * _unit_noise(rng, crop_shape, params.texture_scale_mm / spacing)
        if lesion["rim_ratio"] is not None:
            inside = ndimage.distance_transform_edt(mask, sampling=spacing)
            profile = np.where(mask & (inside <= params.rim_width_mm), lesion["rim_ratio"] * profile, profile)
        profile = np.where(mask, np.maximum(profile, 0.0), 0.0)
        if blur > 0:
            profile = ndimage.gaussian_filter(profile, blur, mode="constant", truncate=3.0)
        change = lesion["sign"] * lesion["contrast"] * brain_std
        painted = image[box] + (change * profile).astype(np.float32)
        image[box] = np.maximum(painted, 0.0) if non_negative else painted
        lesion_mask[box] |= mask
        label[box][mask] = lesion_label
        lesions.append(
            Lesion(
                centre=tuple(int(c) for c in centre),
                volume=int(mask.sum()),
                volume_fraction=lesion["volume"] / brain_voxels,
                radius_mm=radius * spacing,
                irregularity=lesion["irregularity"],
                sign=lesion["sign"],
                contrast=lesion["contrast"],
                intensity_change=change,
                texture=lesion["texture"],
                rim_ratio=lesion["rim_ratio"],
                blur_mm=lesion["blur_mm"],
                mass_effect_mm=lesion["mass"] * radius * spacing,
            )
        )
    return image, label, lesions
