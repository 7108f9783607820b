# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Tiny synthetic phantoms in the Medical Segmentation Decathlon layout, for tests and smoke runs.

A phantom is an ellipsoidal "head" with a heterogeneous background (an outer shell and an inner region of
different intensities, plus smooth texture and noise) and small ellipsoidal foreground structures, one per
foreground class, whose sizes shrink with the class index so that higher classes are rarer. The intensities of
the classes differ, so a small network learns them in a few iterations; everything is deterministic by seed.

:func:`make_phantom_dataset` writes NIfTI files and a ``dataset.json`` with ``training``, ``validation``,
``test`` and ``external`` lists, the same layout as the built-in dataset, so bundle tests run unchanged on it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["make_phantom_case", "make_phantom_dataset"]


def _ellipsoid(grid: Sequence[np.ndarray], centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1.0


def make_phantom_case(
    shape: Sequence[int] = (32, 32, 32),
    num_classes: int = 2,
    seed: int = 0,
    intensity_scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One phantom image and its label map.

    Args:
        shape: spatial shape ``(H, W, D)``.
        num_classes: number of classes including background (>= 2).
        seed: random seed; the same seed gives the same arrays.
        intensity_scale: multiplies the image (simulates another scanner's range for an external domain).

    Returns:
        ``(image, label)``: float32 ``(H, W, D)`` and uint8 ``(H, W, D)`` with values ``0..num_classes-1``; every
        foreground class is present.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be 3 sizes of at least 8 voxels, got {shape}.")
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    centre = np.array(shape, dtype=np.float32) / 2 + rng.uniform(-1, 1, 3)
    head_radii = np.array(shape, dtype=np.float32) * rng.uniform(0.38, 0.44, 3)
    head = _ellipsoid(grid, centre, head_radii)
    inner = _ellipsoid(grid, centre, head_radii * 0.8)

    image = np.zeros(shape, dtype=np.float32)
    image[head] = 0.3  # outer shell ("skull and scalp")
    image[inner] = 0.55  # inner background ("brain")
    texture = sum(np.sin(g * rng.uniform(0.2, 0.5) + rng.uniform(0, 6.3)) for g in grid) / 3.0
    image[inner] += 0.08 * texture[inner]
    label = np.zeros(shape, dtype=np.uint8)

    for c in range(1, num_classes):
        radii = head_radii * 0.8 * max(0.1, 0.32 / c**0.5) * rng.uniform(0.85, 1.15, 3)
        radii = np.maximum(radii, 1.6)
        offset = (head_radii * 0.8 - radii) * rng.uniform(-0.6, 0.6, 3)
        blob = _ellipsoid(grid, centre + offset, radii) & inner
        label[blob] = c
        image[blob] = 0.85 + 0.15 * (c - 1) / max(1, num_classes - 2)
    image += rng.normal(0.0, 0.03, shape).astype(np.float32)
    return image * np.float32(intensity_scale), label


def _write_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))


def make_phantom_dataset(
    root: str | os.PathLike,
    num_training: int = 4,
    num_validation: int = 2,
    num_test: int = 2,
    num_external: int = 1,
    shape: Sequence[int] = (32, 32, 32),
    num_classes: int = 2,
    spacing: Sequence[float] = (2.0, 2.0, 2.0),
    seed: int = 0,
) -> Path:
    """Write a phantom dataset (NIfTI + ``dataset.json``) into ``root`` and return ``root``.

    Layout: ``imagesTr/``, ``labelsTr/`` (training and validation), ``imagesTs/``, ``labelsTs/`` (test),
    ``imagesExt/``, ``labelsExt/`` (external: intensities scaled by 3, as from another scanner).

    Args:
        root: output folder (created).
        num_training: number of training cases.
        num_validation: number of validation cases (0 leaves the list out, so loaders hold out from training).
        num_test: number of test cases.
        num_external: number of external cases (0 leaves the list out).
        shape: spatial shape of every case.
        num_classes: classes including background; foreground names are ``class_1``, ``class_2``, ...
        spacing: voxel size in mm, written into the affine.
        seed: base seed; case ``i`` uses ``seed * 1000 + i``.
    """
    root = Path(root)
    affine = np.diag([*map(float, spacing), 1.0])
    counts = {"training": num_training, "validation": num_validation, "test": num_test, "external": num_external}
    folders = {"training": "Tr", "validation": "Tr", "test": "Ts", "external": "Ext"}
    lists: dict[str, list[dict[str, str]]] = {}
    index = 0
    for split, count in counts.items():
        lists[split] = []
        for _ in range(count):
            scale = 3.0 if split == "external" else 1.0
            image, label = make_phantom_case(shape, num_classes, seed * 1000 + index, intensity_scale=scale)
            name = f"phantom_{index:03d}.nii.gz"
            entry = {"image": f"images{folders[split]}/{name}", "label": f"labels{folders[split]}/{name}"}
            _write_nifti(image, affine, root / entry["image"])
            _write_nifti(label, affine, root / entry["label"])
            lists[split].append(entry)
            index += 1
    labels = {"0": "background", **{str(c): f"class_{c}" for c in range(1, num_classes)}}
    content = {
        "name": "phantom",
        "description": "synthetic phantoms for tests (monai_imbalance.data.make_phantom_dataset)",
        "tensorImageSize": "3D",
        "modality": {"0": "synthetic"},
        "labels": labels,
        "numTraining": num_training,
        "numValidation": num_validation,
        "numTest": num_test,
        **{split: entries for split, entries in lists.items() if entries or split in ("training", "test")},
    }
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "dataset.json", "w", encoding="utf-8") as f:
        json.dump(content, f, indent=4)
    return root
