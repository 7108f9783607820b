# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Tests of the elementary operations (:mod:`monai_imbalance.augment.ops`) against independent computations.

Each operation is compared with a formula written out in numpy / torch (gamma with restored statistics, contrast
about the mean with clipping, ``x - LoG``, noise statistics, block structure of the low-resolution simulation),
and the matrix builder with the geometry it should produce.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_imbalance.augment import ops

torch.manual_seed(0)
SHAPE = (16, 16, 16)


def _ramp() -> torch.Tensor:
    """A (1, 16, 16, 16) image with a uniform histogram on [-1, 1]."""
    return torch.linspace(-1, 1, 16**3).reshape(1, *SHAPE)[:, torch.randperm(16)]


def _skew(x: torch.Tensor) -> float:
    v = x.double().flatten()
    return float(((v - v.mean()) ** 3).mean() / v.std(unbiased=False) ** 3)


def test_check_image_rejects_2d() -> None:
    with pytest.raises(ValueError, match="three spatial dimensions"):
        ops.check_image(torch.zeros(1, 8, 8))


@pytest.mark.parametrize("gamma", [0.6, 1.0, 1.5])
def test_gamma_matches_formula_and_skews_the_histogram(gamma: float) -> None:
    x = _ramp()
    out = ops.gamma_correction(x, gamma)
    # independent: min-max normalise, power, rescale, restore mean / std
    v = x.double()
    lo, hi = v.min(), v.max()
    ref = ((v - lo) / (hi - lo)) ** gamma * (hi - lo) + lo
    ref = (ref - ref.mean()) / ref.std() * v.std() + v.mean()
    assert torch.allclose(out.double(), ref, atol=1e-4)
    assert out.mean().item() == pytest.approx(x.mean().item(), abs=1e-5)
    assert out.std().item() == pytest.approx(x.std().item(), rel=1e-4)
    # gamma > 1 darkens the mid-tones: a long bright tail (positive skew); < 1 the opposite
    assert np.sign(round(_skew(out), 3)) == np.sign(round(gamma - 1.0, 3))


def test_inverse_gamma_is_gamma_of_the_negated_image() -> None:
    x = _ramp()
    out = ops.gamma_correction(x, 1.5, invert=True)
    assert torch.allclose(out, -ops.gamma_correction(-x, 1.5), atol=1e-6)
    assert _skew(out) < 0  # mirrored skew


def test_gamma_rejects_nonpositive() -> None:
    with pytest.raises(ValueError, match="gamma"):
        ops.gamma_correction(_ramp(), 0.0)


def test_brightness_add_and_multiply() -> None:
    x = torch.randn(2, *SHAPE)
    assert torch.allclose(ops.brightness_add(x, 0.2), x + 0.2)
    assert torch.allclose(ops.brightness_multiply(x, 1.25), x * 1.25, atol=1e-6)


def test_contrast_about_the_mean_clipped_per_channel() -> None:
    x = torch.randn(2, *SHAPE)
    x[1] = x[1] * 3 + 5
    out = ops.contrast_adjust(x, 1.3)
    for c in range(2):
        m = x[c].mean()
        ref = ((x[c] - m) * 1.3 + m).clamp(x[c].min(), x[c].max())
        assert torch.allclose(out[c], ref, atol=1e-5)
    assert out[0].std() > x[0].std()  # factor > 1 raises the contrast
    lower = ops.contrast_adjust(x, 1 / 1.3)
    assert lower[0].std() < x[0].std()


def test_blur_reduces_noise_variance_and_keeps_mean() -> None:
    x = torch.randn(1, *SHAPE)
    out = ops.gaussian_blur(x, 0.9)
    inner = (slice(None), slice(4, -4), slice(4, -4), slice(4, -4))
    # white noise through a 3D Gaussian of sigma s: variance * (1 / (2 s sqrt(pi)))^3 (continuous approximation)
    expected = (1.0 / (2 * 0.9 * np.sqrt(np.pi))) ** 3
    ratio = float(out[inner].var() / x[inner].var())
    assert 0.5 * expected < ratio < 2.0 * expected
    const = torch.full((1, *SHAPE), 2.0)
    assert torch.allclose(ops.gaussian_blur(const, 0.7)[inner], const[inner], atol=1e-5)


def test_sharpen_is_x_minus_log_clipped() -> None:
    from scipy.ndimage import gaussian_filter

    g = torch.arange(16, dtype=torch.float64) - 7.5
    blob = torch.exp(-(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2) / 8.0)[None]
    out = ops.laplacian_sharpen(blob.float(), 0.7)
    arr = blob[0].numpy()
    # independent LoG: sum of second derivatives of the Gaussian-smoothed image
    log = sum(gaussian_filter(arr, 0.7, order=[2 if a == i else 0 for a in range(3)]) for i in range(3))
    ref = np.clip(arr - log, arr.min(), arr.max())
    assert np.allclose(out[0].numpy(), ref, atol=1e-5)
    # sharpening: the blob's edges get steeper (larger gradient energy), the range is kept
    grad = lambda t: sum(float((torch.diff(t, dim=d) ** 2).sum()) for d in (1, 2, 3))  # noqa: E731
    assert grad(out.double()) > grad(blob)
    assert out.min() >= blob.min() - 1e-6 and out.max() <= blob.max() + 1e-6


def test_noise_statistics_and_seed() -> None:
    x = torch.zeros(1, 24, 24, 24)
    out = ops.gaussian_noise(x, 0.1, seed=3)
    assert abs(float(out.mean())) < 0.01
    assert float(out.std()) == pytest.approx(0.1, rel=0.05)
    assert torch.equal(out, ops.gaussian_noise(x, 0.1, seed=3))
    assert not torch.equal(out, ops.gaussian_noise(x, 0.1, seed=4))


def test_low_resolution_makes_blocks() -> None:
    x = torch.randn(1, *SHAPE)
    out = ops.simulate_low_resolution(x, 0.5)
    # down by 2 (linear) then up by 2 (nearest): every voxel pair along each axis is equal
    for d in (1, 2, 3):
        even = out.index_select(d, torch.arange(0, 16, 2))
        odd = out.index_select(d, torch.arange(1, 16, 2))
        assert torch.equal(even, odd)
    ref = torch.nn.functional.interpolate(x[None], size=(8, 8, 8), mode="trilinear")
    ref = torch.nn.functional.interpolate(ref, size=SHAPE, mode="nearest")[0]
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.equal(ops.simulate_low_resolution(x, 1.0), x)
    with pytest.raises(ValueError, match="zoom"):
        ops.simulate_low_resolution(x, 1.5)


def test_flip_and_rotate90() -> None:
    x = torch.randn(2, 4, 5, 6)
    assert torch.equal(ops.flip_axes(x, [0, 2]), torch.flip(x, dims=(1, 3)))
    r = ops.rotate90(x, 1, (0, 2))
    assert torch.equal(r, torch.rot90(x, 1, dims=(1, 3)))
    assert torch.equal(ops.rotate90(r, 3, (0, 2)), x)


def test_zoom_matrix_magnifies_and_affine_keeps_dtype() -> None:
    y = torch.zeros(1, *SHAPE, dtype=torch.uint8)
    y[:, 6:10, 6:10, 6:10] = 1
    big = ops.affine_resample(y, ops.zoom_rotation_matrix(zoom=2.0), mode="nearest")
    assert big.dtype == torch.uint8
    assert int(big.sum()) == 8**3  # a 4^3 cube centred in the image becomes 8^3
    small = ops.affine_resample(y, ops.zoom_rotation_matrix(zoom=0.5), mode="nearest")
    assert int(small.sum()) == 2**3
    with pytest.raises(ValueError, match="zoom"):
        ops.zoom_rotation_matrix(zoom=0.0)
    # 90 degrees about axis 0 turns the plane of axes 1 and 2, exactly
    x = torch.randn(1, 6, 8, 8)
    rot = ops.affine_resample(x, ops.zoom_rotation_matrix((90.0, 0.0, 0.0)), mode="bilinear")
    assert any(torch.allclose(rot, torch.rot90(x, k, dims=(2, 3)), atol=1e-4) for k in (1, 3))
