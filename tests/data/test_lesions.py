# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Tests of the synthetic lesions (:mod:`monai_imbalance.data.lesions`) on small synthetic subjects."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy import ndimage

from monai_imbalance.data import Lesion, LesionParams, add_lesions, lesion_centre_region

SPACING = 2.0
#: no mass effect: the anatomy outside the lesions stays as it was
STILL = LesionParams(mass_effect_probability=0.0)


def _ellipsoid(shape: tuple[int, ...], centre: tuple[float, ...], radii: tuple[float, ...]) -> np.ndarray:
    grid = np.indices(shape, dtype=float)
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1.0


def _subject(shape: tuple[int, int, int] = (56, 64, 52)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A small 'brain': (image float32, label uint8 with two organ blobs = 1, brain mask with a dark ventricle)."""
    centre = tuple((n - 1) / 2 for n in shape)
    head = _ellipsoid(shape, centre, tuple(n / 2 - 2 for n in shape))
    brain = _ellipsoid(shape, centre, tuple(n / 2 - 6 for n in shape))
    ventricle = _ellipsoid(shape, (centre[0], centre[1] + 3, centre[2] + 2), (2.5, 5.0, 3.0))
    label = np.zeros(shape, dtype=np.uint8)
    for dx in (-6, 6):
        label[_ellipsoid(shape, (centre[0] + dx, centre[1], centre[2]), (3.0, 5.0, 3.5))] = 1
    rng = np.random.default_rng(123)
    image = np.where(head, 30.0, 0.0) + np.where(brain, 70.0, 0.0) + np.where(label == 1, -15.0, 0.0)
    image = image + ndimage.gaussian_filter(rng.normal(0, 8, shape), 1.0) * brain
    image[ventricle] = 15.0
    brain &= ~ventricle
    return image.astype(np.float32), label, brain


def _ball_dice(mask: np.ndarray) -> float:
    """Dice of a mask with the ball of the same volume centred on its centroid."""
    grid = np.indices(mask.shape, dtype=float)
    centroid = np.argwhere(mask).mean(axis=0)
    radius = (3 * mask.sum() / (4 * math.pi)) ** (1 / 3)
    ball = sum((g - c) ** 2 for g, c in zip(grid, centroid, strict=True)) <= radius**2
    return 2 * float((ball & mask).sum()) / float(ball.sum() + mask.sum())


def _lesion_masks(label: np.ndarray, lesions: list[Lesion]) -> list[np.ndarray]:
    """The connected lesion component holding each lesion's centre (lesions are kept apart in a roomy brain)."""
    components, _ = ndimage.label(label == 2)
    return [components == components[lesion.centre] for lesion in lesions]


# ---------------------------------------------------------------------------------------------------------------------
# parameters


def test_lesion_params_defaults_are_the_documented_ones() -> None:
    params = LesionParams()
    assert params.num_lesions == (1, 3)
    assert params.volume_fraction == (0.0002, 0.005)
    assert params.contrast == (1.0, 3.0) and params.texture == (0.1, 0.5)
    assert 0 < params.rim_probability < 1 and 0 < params.mass_effect_probability < 1
    for field in dataclasses.fields(LesionParams):
        assert field.name in (LesionParams.__doc__ or ""), f"LesionParams.{field.name} is documented"
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.contrast = (0.0, 1.0)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"contrast": (3.0, 1.0)}, r"contrast.*\(3\.0, 1\.0\)"),
        ({"num_lesions": (0, 2)}, r"num_lesions.*\(0, 2\)"),
        ({"num_lesions": (1.5, 2)}, r"num_lesions.*integers"),
        ({"volume_fraction": (0.0, 0.01)}, r"volume_fraction.*positive"),
        ({"volume_fraction": (0.01,)}, r"volume_fraction.*pair"),
        ({"mass_effect": (0.1, 0.8)}, r"mass_effect.*0\.8"),
        ({"rim_probability": 1.5}, r"rim_probability.*1\.5"),
        ({"texture_scale_mm": 0.0}, r"texture_scale_mm.*0\.0"),
        ({"centre_margin_mm": "far"}, r"centre_margin_mm.*'far'"),
    ],
)
def test_lesion_params_reject_bad_values(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        LesionParams(**changes)
    assert "\n" not in str(info.value)


def test_add_lesions_rejects_bad_input() -> None:
    image, label, brain = _subject((24, 26, 22))
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"one shape.*\(24, 26, 21\)"):
        add_lesions(image, label[..., :-1], brain, SPACING, rng)
    with pytest.raises(ValueError, match="spacing.*0"):
        add_lesions(image, label, brain, 0.0, rng)
    with pytest.raises(ValueError, match="brain mask is empty"):
        add_lesions(image, label, np.zeros_like(brain), SPACING, rng)
    with pytest.raises(ValueError, match="label 1 dilated by 8.0 mm"):
        add_lesions(image, np.zeros_like(label), brain, SPACING, rng)
    with pytest.raises(ValueError, match="organ_label and lesion_label"):
        add_lesions(image, label, brain, SPACING, rng, organ_label=2)


# ---------------------------------------------------------------------------------------------------------------------
# where, how big, which label


def test_lesions_lie_in_the_allowed_region_and_override_the_organ() -> None:
    image, label, brain = _subject()
    region = lesion_centre_region(label, brain, SPACING, STILL.centre_margin_mm)
    distance = ndimage.distance_transform_edt(label != 1, sampling=SPACING)
    assert region.any() and not region[~brain].any()
    assert region[label == 1].all() or not (brain & (label == 1)).all()
    assert distance[region].max() <= STILL.centre_margin_mm
    for seed in range(12):
        out_image, out_label, lesions = add_lesions(image, label, brain, SPACING, np.random.default_rng(seed), STILL)
        lesion = out_label == 2
        assert out_image.dtype == np.float32 and out_label.dtype == np.uint8 and out_label.shape == label.shape
        assert lesion.any(), "label 2 is present"
        assert STILL.num_lesions[0] <= len(lesions) <= STILL.num_lesions[1]
        assert not lesion[~brain].any(), "lesions lie inside the brain mask"
        assert all(region[item.centre] for item in lesions), "centres lie in the organ or next to it"
        reach = STILL.centre_margin_mm + 3 * max(item.radius_mm for item in lesions)
        assert distance[lesion].max() <= reach
        # the lesion overrides the organ; elsewhere the label is untouched
        np.testing.assert_array_equal(out_label[~lesion], label[~lesion])
        assert set(np.unique(out_label)) <= {0, 1, 2}
    inside = LesionParams(centre_margin_mm=0.0, num_lesions=(3, 3), volume_fraction=(0.004, 0.005))
    _, out_label, lesions = add_lesions(image, label, brain, SPACING, np.random.default_rng(0), inside)
    assert all(label[item.centre] == 1 for item in lesions), "margin 0: centres in the organ"
    overlap = (label == 1) & (out_label == 2)
    assert overlap.sum() > 0 and (out_label[overlap] == 2).all()
    assert (out_label == 1).sum() == (label == 1).sum() - overlap.sum()


def test_lesion_volumes_are_log_uniform_fractions_of_the_brain() -> None:
    image, label, brain = _subject()
    params = dataclasses.replace(STILL, volume_fraction=(0.001, 0.01))
    brain_voxels = int(brain.sum())
    low, high = math.ceil(0.001 * brain_voxels), math.floor(0.01 * brain_voxels)
    volumes = []
    for seed in range(15):
        _, out_label, lesions = add_lesions(image, label, brain, SPACING, np.random.default_rng(seed), params)
        assert (out_label == 2).sum() == sum(item.volume for item in lesions), "lesions are disjoint"
        for item, mask in zip(lesions, _lesion_masks(out_label, lesions), strict=True):
            assert low <= item.volume <= high
            assert 0.001 <= item.volume_fraction <= 0.01
            assert item.volume == round(item.volume_fraction * brain_voxels)
            assert mask.sum() >= item.volume, "each lesion is connected"
            volumes.append(item.volume)
    ratios = np.log(volumes) - np.log(low)
    assert ratios.min() < 0.25 * np.log(high / low) and ratios.max() > 0.75 * np.log(high / low), "the range is used"


def test_lesion_shapes_are_not_balls() -> None:
    image, label, brain = _subject((64, 72, 60))
    big = dataclasses.replace(STILL, volume_fraction=(0.004, 0.008), num_lesions=(1, 1))
    dice, ball_dice = [], []
    for seed in range(12):
        _, out_label, lesions = add_lesions(image, label, brain, SPACING, np.random.default_rng(seed), big)
        dice += [_ball_dice(mask) for mask in _lesion_masks(out_label, lesions)]
        round_params = dataclasses.replace(big, irregularity=(0.0, 0.0))
        _, round_label, lesions = add_lesions(image, label, brain, SPACING, np.random.default_rng(seed), round_params)
        ball_dice += [_ball_dice(mask) for mask in _lesion_masks(round_label, lesions)]
    assert np.mean(ball_dice) > 0.93, "the measure recognises a (voxelised, brain-clipped) ball"
    assert np.mean(dice) < 0.85 and np.mean(dice) < np.mean(ball_dice) - 0.08, (np.mean(dice), np.mean(ball_dice))


# ---------------------------------------------------------------------------------------------------------------------
# appearance and randomness


def test_lesion_appearance_varies_across_lesions() -> None:
    image, label, brain = _subject()
    brain_std = float(image[brain].std())
    signs, contrasts, rims, measured = [], [], [], []
    for seed in range(20):
        out_image, out_label, lesions = add_lesions(image, label, brain, SPACING, np.random.default_rng(seed), STILL)
        for item, mask in zip(lesions, _lesion_masks(out_label, lesions), strict=True):
            change = float(np.mean(out_image[mask] - image[mask]))
            assert np.sign(change) == item.sign, "the change inside the lesion has the drawn sign"
            assert item.intensity_change == pytest.approx(item.sign * item.contrast * brain_std, rel=1e-6)
            assert STILL.contrast[0] <= item.contrast <= STILL.contrast[1]
            assert STILL.texture[0] <= item.texture <= STILL.texture[1]
            signs.append(item.sign)
            contrasts.append(item.contrast)
            rims.append(item.rim_ratio is not None)
            measured.append(abs(change) / brain_std)
    assert set(signs) == {-1, 1}, "hyper- and hypo-intense lesions"
    assert max(contrasts) - min(contrasts) > 1.0 and max(measured) > 2 * min(measured), "faint to strong"
    assert any(rims) and not all(rims)
    assert np.corrcoef(contrasts, measured)[0, 1] > 0.5, "the drawn contrast drives the visible change"


def test_lesion_boundary_is_blurred_and_texture_is_heterogeneous() -> None:
    image, label, brain = _subject()
    params = dataclasses.replace(
        STILL, volume_fraction=(0.008, 0.01), boundary_blur_mm=(2.0, 2.0), texture=(0.5, 0.5), rim_probability=0.0
    )
    out_image, out_label, lesions = add_lesions(image, label, brain, SPACING, np.random.default_rng(3), params)
    change = np.abs(out_image - image)
    lesion = out_label == 2
    ring = ndimage.binary_dilation(lesion) & ~lesion
    assert change[ring].mean() > 0.05 * change[lesion].mean(), "the intensity change spreads past the label"
    core = ndimage.binary_erosion(lesion, iterations=2)
    assert core.any() and change[core].std() > 0.05 * change[core].mean(), "the inside is not uniform"
    far = ~ndimage.binary_dilation(lesion, structure=np.ones((3, 3, 3)), iterations=4)  # blur: 3 sigma = 3 voxels
    assert far.any() and not change[far].any(), "nothing changes far from the lesions"


def test_mass_effect_pushes_the_surrounding_tissue() -> None:
    image, label, brain = _subject()
    pushed = dataclasses.replace(STILL, mass_effect_probability=1.0, mass_effect=(0.4, 0.4), num_lesions=(1, 1))
    out_image, out_label, lesions = add_lesions(image, label, brain, SPACING, np.random.default_rng(1), pushed)
    assert lesions[0].mass_effect_mm == pytest.approx(0.4 * lesions[0].radius_mm)
    outside = out_label != 2
    assert (out_label[outside] != label[outside]).any(), "the organ around the lesion moved"
    _, still_label, _ = add_lesions(image, label, brain, SPACING, np.random.default_rng(1), STILL)
    np.testing.assert_array_equal(still_label[still_label != 2], label[still_label != 2])
    reach = math.ceil(4 * lesions[0].radius_mm / SPACING) + 2  # the displacement is local
    offsets = np.abs(np.indices(image.shape) - np.array(lesions[0].centre)[:, None, None, None]).max(axis=0)
    np.testing.assert_array_equal(out_image[offsets > reach], image[offsets > reach])
    np.testing.assert_array_equal(out_label[offsets > reach], label[offsets > reach])
    assert out_image.min() >= 0, "a non-negative image stays non-negative"


def test_add_lesions_is_seeded() -> None:
    image, label, brain = _subject()
    copies = image.copy(), label.copy(), brain.copy()
    first = add_lesions(image, label, brain, SPACING, np.random.default_rng([4, 2]))
    again = add_lesions(image, label, brain, SPACING, np.random.default_rng([4, 2]))
    other = add_lesions(image, label, brain, SPACING, np.random.default_rng([5, 2]))
    assert first[0].tobytes() == again[0].tobytes() and first[1].tobytes() == again[1].tobytes()
    assert first[2] == again[2]
    assert not np.array_equal(first[1] == 2, other[1] == 2), "another seed gives other lesions"
    for array, copy in zip((image, label, brain), copies, strict=True):
        np.testing.assert_array_equal(array, copy)  # the inputs are not modified
