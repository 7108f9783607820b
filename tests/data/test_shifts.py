# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Tests of the simulated domain shifts (monai_imbalance.data.shifts), against closed-form computations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from monai_imbalance.data import (
    RANDOM_SHIFTS,
    SHIFT_SEVERITIES,
    SHIFTS,
    SimulateDomainShiftd,
    apply_shift,
    make_phantom_case,
    shift_parameters,
)

IDENTITY = {"std_fraction": 0.0, "sigma": 0.0, "factor": 1.0, "gamma": 1.0, "coeff_bound": 0.0, "zoom": 1.0}
MAIN = {
    "noise": "std_fraction",
    "blur": "sigma",
    "contrast": "factor",
    "gamma": "gamma",
    "bias_field": "coeff_bound",
    "resolution": "zoom",
}


def _phantom(shape=(16, 16, 16), seed=0, dtype=np.float64) -> np.ndarray:
    """A (1, *shape) textured phantom with a positive floor."""
    img, _ = make_phantom_case(shape, num_classes=3, seed=seed)
    return (img[None] + 1.0).astype(dtype)


def _hf_power(x: np.ndarray) -> float:
    """High-frequency energy: mean squared discrete Laplacian over the interior voxels (no wrap-around)."""
    nd = x.ndim - 1
    inner = (slice(None),) + (slice(1, -1),) * nd
    lap = -2.0 * nd * x[inner]
    for axis in range(1, x.ndim):
        for start in (0, 2):
            sl = list(inner)
            sl[axis] = slice(start, x.shape[axis] - 2 + start)
            lap = lap + x[tuple(sl)]
    return float((lap**2).mean())


def test_table_is_monotone_and_severity_zero_is_identity():
    assert SHIFT_SEVERITIES == (1, 2, 3, 4, 5)
    assert set(RANDOM_SHIFTS) <= set(SHIFTS) and len(SHIFTS) == 6
    for name in SHIFTS:
        key = MAIN[name]
        values = [shift_parameters(name, s)[key] for s in range(6)]
        assert values[0] == IDENTITY[key]
        distance = [abs(v - IDENTITY[key]) for v in values]
        assert all(a < b for a, b in itertools.pairwise(distance)), (name, values)
    p = shift_parameters("noise", 2)
    p["std_fraction"] = 99.0
    assert shift_parameters("noise", 2)["std_fraction"] != 99.0  # a fresh dict


@pytest.mark.parametrize("name", SHIFTS)
def test_severity_zero_is_identity_and_every_severity_changes_the_image(name):
    img = _phantom()
    same = apply_shift(img, name, 0)
    assert same is not img and np.array_equal(same, img)
    for s in SHIFT_SEVERITIES:
        out = apply_shift(img, name, s, seed=3)
        assert np.abs(out - img).max() > 1e-3, (name, s)


def test_noise_std_is_the_documented_fraction_of_each_channels_robust_range():
    rng = np.random.default_rng(0)
    img = np.stack([_phantom((20, 20, 20))[0], 100.0 * rng.random((20, 20, 20))])  # two very different ranges
    first = None
    for s in SHIFT_SEVERITIES:
        residual = apply_shift(img, "noise", s, seed=7) - img
        frac = shift_parameters("noise", s)["std_fraction"]
        for c in range(2):
            expected = frac * (np.percentile(img[c], 99) - np.percentile(img[c], 1))
            assert residual[c].std() == pytest.approx(expected, rel=0.05)
            assert abs(residual[c].mean()) < 0.1 * expected
        assert abs(np.corrcoef(residual[0].ravel(), residual[1].ravel())[0, 1]) < 0.1  # independent per channel
        if first is None:
            first, frac1 = residual, frac
        else:  # the same draw, scaled: strength monotone in the severity for a fixed seed
            np.testing.assert_allclose(residual, first * (frac / frac1), rtol=1e-6, atol=1e-9)


def test_blur_removes_high_frequencies_monotonically_and_is_exact_on_constants_and_ramps():
    img = _phantom()
    powers = [_hf_power(apply_shift(img, "blur", s)) for s in (0, *SHIFT_SEVERITIES)]
    assert all(a > b for a, b in itertools.pairwise(powers)), powers
    const = np.full((1, 9, 9, 9), 2.5)
    np.testing.assert_allclose(apply_shift(const, "blur", 5), const, atol=1e-12)  # replicated borders, no darkening
    ramp = np.broadcast_to(np.arange(16.0)[:, None, None], (1, 16, 16, 16)).copy()
    out = apply_shift(ramp, "blur", 3)  # sigma 1: kernel tail 4 voxels; a symmetric kernel keeps a linear ramp
    np.testing.assert_allclose(out[:, 4:12], ramp[:, 4:12], atol=1e-9)


def test_contrast_scales_deviations_from_the_channel_mean():
    img = np.concatenate([_phantom(), 50.0 * _phantom(seed=1) - 3.0])
    for s in SHIFT_SEVERITIES:
        c = shift_parameters("contrast", s)["factor"]
        out = apply_shift(img, "contrast", s)
        mean = img.mean(axis=(1, 2, 3), keepdims=True)
        np.testing.assert_allclose(out, mean + c * (img - mean), rtol=1e-10, atol=1e-9)


def test_gamma_matches_the_closed_form_preserves_order_and_range_and_grows():
    img = np.concatenate([_phantom(), 10.0 * _phantom(seed=2) - 5.0])
    flat = img[0].ravel()
    order = np.argsort(flat, kind="stable")
    changes = []
    for s in SHIFT_SEVERITIES:
        g = shift_parameters("gamma", s)["gamma"]
        out = apply_shift(img, "gamma", s)
        lo = img.min(axis=(1, 2, 3), keepdims=True)
        r = img.max(axis=(1, 2, 3), keepdims=True) - lo
        np.testing.assert_allclose(out, ((img - lo) / (r + 1e-7)) ** g * r + lo, rtol=1e-9, atol=1e-9)
        assert np.all(np.diff(out[0].ravel()[order]) >= 0)  # intensity order preserved
        np.testing.assert_allclose(out.min(axis=(1, 2, 3)), img.min(axis=(1, 2, 3)), atol=1e-9)
        # not an affine map: the correlation with the input drops below 1
        assert np.corrcoef(out[0].ravel(), flat)[0, 1] < 1 - 1e-4
        changes.append(np.abs(out - img).mean())
    assert all(a < b for a, b in itertools.pairwise(changes))


def _log_field(out: np.ndarray, img: np.ndarray) -> np.ndarray:
    floor = img.min(axis=tuple(range(1, img.ndim)), keepdims=True)
    return np.log((out - floor)[:, 1:] / (img - floor)[:, 1:])  # skip index 0 of axis 1: it holds the minimum voxel


def test_bias_field_is_a_smooth_multiplicative_field_of_degree_three():
    img = _phantom()
    img[0, 0, 0, 0] = img.min() - 1.0  # a unique minimum, excluded by _log_field
    shape = img.shape[1:]
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    basis = np.stack(
        [(x**i * y**j * z**k)[1:].ravel() for i in range(4) for j in range(4) for k in range(4) if i + j + k <= 3], 1
    )
    logs, stds = [], []
    for s in SHIFT_SEVERITIES:
        lf = _log_field(apply_shift(img, "bias_field", s, seed=5), img)[0]
        coef, *_ = np.linalg.lstsq(basis, lf.ravel(), rcond=None)
        assert np.abs(basis @ coef - lf.ravel()).max() < 1e-6  # a polynomial of total degree 3: low frequency
        logs.append(lf)
        stds.append(lf.std())
    assert all(a < b for a, b in itertools.pairwise(stds))
    a1 = shift_parameters("bias_field", 1)["coeff_bound"]
    for s, lf in zip(SHIFT_SEVERITIES, logs, strict=True):
        np.testing.assert_allclose(lf, logs[0] * shift_parameters("bias_field", s)["coeff_bound"] / a1, atol=1e-9)
    # the field does not depend on the image: another image, same seed, same field
    other = _phantom(seed=4)
    other[0, 0, 0, 0] = other.min() - 1.0
    np.testing.assert_allclose(_log_field(apply_shift(other, "bias_field", 3, seed=5), other)[0], logs[2], atol=1e-9)
    # a constant background at the channel minimum stays put (normalised images)
    bg = img.copy()
    bg[:, :4] = bg.min()
    np.testing.assert_allclose(apply_shift(bg, "bias_field", 5, seed=5)[:, :4], bg[:, :4], atol=1e-12)


def test_resolution_removes_high_frequencies_monotonically_and_keeps_constants():
    img = _phantom((20, 20, 20))
    # 20 voxels: down-sampled grids of 15, 12, 10, 8, 6 voxels (on small grids two severities can round alike)
    outs = [apply_shift(img, "resolution", s) for s in (0, *SHIFT_SEVERITIES)]
    powers = [_hf_power(out) for out in outs]
    assert all(a > b for a, b in itertools.pairwise(powers)), powers
    errors = [np.abs(out - img).mean() for out in outs]
    assert all(a < b for a, b in itertools.pairwise(errors)), errors
    np.testing.assert_allclose([out.mean() for out in outs], img.mean(), rtol=0.02)  # area + linear keep the mean
    const = np.full((2, 10, 12), -1.5, dtype=np.float32)
    np.testing.assert_allclose(apply_shift(const, "resolution", 5), const, atol=1e-6)


@pytest.mark.parametrize("name", SHIFTS)
def test_determinism_by_seed(name):
    img = _phantom((12, 12, 12))
    a, b, c = (apply_shift(img, name, 4, seed=seed) for seed in (11, 11, 12))
    assert np.array_equal(a, b)
    assert (not np.allclose(a, c)) == (name in RANDOM_SHIFTS)


@pytest.mark.parametrize(
    "make",
    [
        lambda a: a.astype(np.float32),
        lambda a: a.astype(np.float64),
        lambda a: torch.as_tensor(a, dtype=torch.float32),
        lambda a: torch.as_tensor(a, dtype=torch.float64),
        lambda a: MetaTensor(torch.as_tensor(a, dtype=torch.float32), affine=2 * torch.eye(4), meta={"x": "case1"}),
    ],
    ids=["np32", "np64", "torch32", "torch64", "meta"],
)
@pytest.mark.parametrize("shape", [(2, 10, 12), (1, 8, 9, 10)], ids=["2d", "3d"])
def test_type_shape_dtype_preserved_and_input_untouched(make, shape):
    image = make(np.random.default_rng(1).random(shape) * 10)
    before = image.copy() if isinstance(image, np.ndarray) else image.clone()
    for name in SHIFTS:
        out = apply_shift(image, name, 3, seed=1)
        assert type(out) is type(image) and tuple(out.shape) == shape and out.dtype == image.dtype, name
        if isinstance(image, MetaTensor):
            assert out.meta["x"] == "case1" and torch.equal(out.affine, image.affine)
            assert len(out.applied_operations) == 0
    assert (before == image).all()


def test_bad_input_raises_clear_errors():
    img = _phantom((8, 8, 8))
    with pytest.raises(ValueError, match="valid shifts: noise, blur, contrast, gamma, bias_field, resolution"):
        apply_shift(img, "jpeg", 1)
    for bad in (6, -1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="severity"):
            apply_shift(img, "noise", bad)
        with pytest.raises(ValueError, match="severity"):
            shift_parameters("blur", bad)
    for bad in (-1, 2**32, 1.5):
        with pytest.raises(ValueError, match="seed"):
            apply_shift(img, "noise", 1, seed=bad)
    nan = img.copy()
    nan[0, 1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        apply_shift(nan, "blur", 1)
    with pytest.raises(ValueError, match="floating dtype"):
        apply_shift(img.astype(np.int16), "blur", 1)
    with pytest.raises(ValueError, match="channel-first"):
        apply_shift(img[0, 0], "blur", 1)
    with pytest.raises(ValueError, match="channel-first"):
        apply_shift(img[None], "blur", 1)
    with pytest.raises(ValueError, match="empty"):
        apply_shift(np.zeros((1, 0, 4)), "blur", 1)
    with pytest.raises(ValueError, match="valid shifts"):
        SimulateDomainShiftd("image", "snow", 1)
    with pytest.raises(ValueError, match="severity"):
        SimulateDomainShiftd("image", "noise", 7)


def test_dict_transform_touches_only_the_image():
    img_a, lab = make_phantom_case((12, 12, 12), num_classes=3, seed=0)
    img_b, _ = make_phantom_case((12, 12, 12), num_classes=3, seed=1)
    lab = torch.as_tensor(lab[None])
    data = {"image": torch.as_tensor(img_a[None]), "label": lab, "name": "a"}
    fixed = SimulateDomainShiftd("image", "noise", 3, seed=9, per_case_seed=False)(data)
    assert fixed["label"] is lab and torch.equal(lab, data["label"]) and fixed["name"] == "a"
    assert torch.equal(fixed["image"], apply_shift(data["image"], "noise", 3, seed=9))
    assert fixed is not data and torch.equal(data["image"], torch.as_tensor(img_a[None]))  # input not mutated
    # per-case seeds: reproducible for one image, independent draws across images, whatever the order
    xform = Compose([SimulateDomainShiftd(["image"], "noise", 3, seed=9)])
    b = {"image": torch.as_tensor(img_b[None]), "label": lab}
    res_b1 = xform(b)["image"] - b["image"]
    res_a = xform(data)["image"] - data["image"]
    res_b2 = xform(b)["image"] - b["image"]
    assert torch.equal(res_b1, res_b2)
    assert abs(np.corrcoef(res_a.ravel().numpy(), res_b1.ravel().numpy())[0, 1]) < 0.15
    assert not torch.equal(res_a, fixed["image"] - data["image"])
    # a deterministic shift equals the array function, and a missing key is allowed when asked
    blurred = SimulateDomainShiftd(["image", "other"], "blur", 2, allow_missing_keys=True)(data)
    assert torch.equal(blurred["image"], apply_shift(data["image"], "blur", 2)) and blurred["label"] is lab
