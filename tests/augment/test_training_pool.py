# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Tests of the training-time pool (:class:`monai_imbalance.augment.TrainingTransformPool`).

Every operation is checked for its effect on an image and a label (a zoom magnifies a ball by the drawn factor, a
rotation turns the principal axis of an elongated blob by the drawn angle, a flip flips, a 90-degree bin equals
``torch.rot90``, intensity operations leave the label alone and match the elementary operation), every bin 0 is the
identity, every bin draws its value in the range of methods.md 3.1, and the composite follows the authors' order.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from monai_imbalance.augment import TRAINING_OPS, TrainingTransformPool, ops

N = 24
G = torch.arange(N, dtype=torch.float64) - (N - 1) / 2


def _ball(radius: float = 5.0) -> torch.Tensor:
    r2 = G[:, None, None] ** 2 + G[None, :, None] ** 2 + G[None, None, :] ** 2
    return (r2 <= radius**2).to(torch.uint8)[None]


def _elongated(axis_long: int) -> torch.Tensor:
    """A Gaussian blob elongated along one spatial axis, (1, N, N, N)."""
    s = [2.0, 2.0, 2.0]
    s[axis_long] = 6.0
    return torch.exp(
        -(G[:, None, None] ** 2 / s[0] ** 2 + G[None, :, None] ** 2 / s[1] ** 2 + G[None, None, :] ** 2 / s[2] ** 2)
    )[None].float()


def _principal_angle(img: torch.Tensor, plane: tuple[int, int]) -> float:
    """Angle (degrees) of the principal axis of the intensity distribution in a plane."""
    w = img[0].double().clamp_min(0)
    coords = torch.meshgrid(G, G, G, indexing="ij")
    a, b = coords[plane[0]], coords[plane[1]]
    m = w.sum()
    ma, mb = (w * a).sum() / m, (w * b).sum() / m
    caa = (w * (a - ma) ** 2).sum() / m
    cbb = (w * (b - mb) ** 2).sum() / m
    cab = (w * (a - ma) * (b - mb)).sum() / m
    return math.degrees(0.5 * math.atan2(2 * float(cab), float(caa - cbb)))


def _spread(img: torch.Tensor, axis: int) -> float:
    """Second moment of the intensity along one spatial axis (about the centre)."""
    coord = torch.meshgrid(G, G, G, indexing="ij")[axis]
    return float((img[0].double() * coord**2).sum() / img[0].double().sum())


def test_layout_matches_the_authors_pool() -> None:
    pool = TrainingTransformPool()
    assert pool.op_names == (
        "scale",
        "rotate_x",
        "rotate_y",
        "rotate_z",
        "mirror_x",
        "mirror_y",
        "mirror_z",
        "gamma",
        "inverse_gamma",
        "brightness_add",
        "brightness_mul",
        "contrast",
        "blur_sharpen",
        "noise",
        "low_resolution",
    )
    assert pool.num_bins == (6, 5, 5, 5, 2, 2, 2, 4, 4, 4, 4, 4, 7, 4, 4)
    assert sum(pool.num_bins) == 62
    assert TRAINING_OPS[1].bin_labels == ("identity", "5", "15", "25", "rot90")
    assert TRAINING_OPS[12].bin_labels[1:] == (
        "blur_0.5",
        "blur_0.7",
        "blur_0.9",
        "sharpen_0.9",
        "sharpen_0.7",
        "sharpen_0.5",
    )
    assert [o["name"] for o in pool.describe()["ops"]] == list(pool.op_names)


def test_every_identity_bin_is_identity() -> None:
    pool = TrainingTransformPool()
    x = torch.randn(2, 8, 8, 8)
    y = _ball(3)[:, 8:16, 8:16, 8:16]
    for op in pool.ops:
        xi, yi = pool.apply_op(op.name, 0, x, y, rng=1)
        assert torch.equal(xi, x) and torch.equal(yi, y), op.name
        assert xi is not x  # a new tensor


# expected range of the drawn value for bin magnitude m, per family (methods.md 3.1)
def _expected_range(op, m: float) -> tuple[float, float]:
    w = op.half_width
    return max(0.0, m - w), m + w


@pytest.mark.parametrize("op", TRAINING_OPS, ids=lambda o: o.name)
def test_values_are_drawn_in_the_bin_range(op) -> None:
    pool = TrainingTransformPool()
    rng = np.random.RandomState(0)
    for b in range(1, op.num_bins):
        bins = [0] * len(pool)
        bins[pool.index(op.name)] = b
        draws = [pool.sample_values(bins, rng)[op.name] for _ in range(60)]
        m = op.magnitudes[b - 1]
        fam = op.family
        if fam == "mirror":
            assert all(d is True for d in draws)
        elif fam == "rotate" and math.isnan(m):
            assert set(draws) == {90.0, 270.0}
        elif fam in ("rotate", "brightness_add"):
            lo, hi = _expected_range(op, m)
            assert all(lo - 1e-9 <= abs(d) <= hi + 1e-9 for d in draws)
            assert min(draws) < 0 < max(draws)  # both signs
        elif fam in ("scale", "gamma", "inverse_gamma", "brightness_mul", "contrast"):
            lo, hi = _expected_range(op, m)
            mags = [d - 1 if d >= 1 else 1 / d - 1 for d in draws]  # (1 + u) ** +-1 -> u
            assert all(lo - 1e-9 <= u <= hi + 1e-9 for u in mags)
            assert min(draws) < 1 < max(draws)  # both directions
        elif fam == "blur_sharpen":
            kind, _ = draws[0]
            assert kind == ("blur" if b <= 3 else "sharpen")
            assert all(m - 0.1 - 1e-9 <= s <= m + 0.1 + 1e-9 for _, s in draws)
        elif fam == "noise":
            lo, hi = _expected_range(op, m)
            assert all(lo - 1e-9 <= s <= hi + 1e-9 for s, _ in draws)
            assert len({seed for _, seed in draws}) > 50  # a new realisation each time
        elif fam == "low_resolution":
            assert all(m - 0.1 - 1e-9 <= z <= min(1.0, m + 0.1) + 1e-9 for z in draws)


@pytest.mark.parametrize("b", [1, 3, 5])
def test_scale_bin_zooms_image_and_label_by_the_drawn_factor(b: int) -> None:
    pool = TrainingTransformPool()
    ball = _ball(5.0)
    blob = torch.exp(-(G[:, None, None] ** 2 + G[None, :, None] ** 2 + G[None, None, :] ** 2) / 8.0)[None].float()
    m = TRAINING_OPS[0].magnitudes[b - 1]
    for seed in range(3):
        values = pool.sample_values([b] + [0] * 14, seed)
        f = values["scale"]
        img_out, lab_out = pool.apply_op("scale", b, blob, ball, rng=seed)
        # a zoom by f multiplies the integral of a (smooth, inside the field of view) blob by f^3
        ratio = (float(img_out.sum()) / float(blob.sum())) ** (1 / 3)
        assert ratio == pytest.approx(f, rel=0.02)
        u = f - 1 if f >= 1 else 1 / f - 1
        assert max(0, m - 0.05) - 1e-9 <= u <= m + 0.05 + 1e-9
        # the label moves with the image: the ball is the same level set of the zoomed blob (nearest vs linear)
        level = float(blob[ball.bool()].min())
        agree = ((img_out >= level - 1e-3).to(torch.uint8) == lab_out).float().mean()
        assert float(agree) > 0.98


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_rotation_turns_the_principal_axis_by_the_angle(axis: int) -> None:
    pool = TrainingTransformPool()
    plane = tuple(a for a in range(3) if a != axis)
    img = _elongated(plane[0])
    base = _principal_angle(img, plane)
    turned = []
    for angle in (20.0, -20.0):
        out = pool.apply_image(img, {f"rotate_{'xyz'[axis]}": angle})
        delta = _principal_angle(out, plane) - base
        assert abs(abs(delta) - 20.0) < 1.5
        # the rotation axis stays fixed: the spread along it is unchanged
        assert _spread(out, axis) == pytest.approx(_spread(img, axis), rel=0.02)
        turned.append(delta)
    assert turned[0] * turned[1] < 0  # opposite signs turn opposite ways


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_rot90_bin_is_a_quarter_turn_of_image_and_label(axis: int) -> None:
    pool = TrainingTransformPool()
    plane = tuple(a + 1 for a in range(3) if a != axis)
    x = torch.randn(1, 10, 10, 10)
    y = (torch.rand(1, 10, 10, 10) > 0.5).to(torch.int64)
    bins = [0] * 15
    bins[1 + axis] = 4
    turns: dict[float, set[int]] = {90.0: set(), 270.0: set()}
    for seed in range(8):
        angle = pool.sample_values(bins, seed)[f"rotate_{'xyz'[axis]}"]
        xo, yo = pool.apply_op(f"rotate_{'xyz'[axis]}", 4, x, y, rng=seed)
        options = {k: torch.rot90(x, k, dims=plane) for k in (1, 3)}
        match = [k for k, ref in options.items() if torch.allclose(xo, ref, atol=1e-4)]
        assert len(match) == 1
        assert torch.equal(yo, torch.rot90(y, match[0], dims=plane))
        assert yo.dtype == torch.int64
        turns[angle].add(match[0])
    # both quarter turns are drawn, 90 and 270 degrees are consistently the two different turns
    assert len(turns[90.0]) == 1 and len(turns[270.0]) == 1 and turns[90.0] != turns[270.0]


def test_rot90_keeps_the_shape_of_a_non_square_patch() -> None:
    pool = TrainingTransformPool()
    x = torch.randn(1, 8, 12, 10)
    out = pool.apply_image(x, {"rotate_z": 90.0})
    assert out.shape == x.shape


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_mirror_flips_image_and_label(axis: int) -> None:
    pool = TrainingTransformPool()
    x = torch.randn(2, 6, 7, 8)
    y = torch.randint(0, 3, (1, 6, 7, 8))
    xo, yo = pool.apply_op(f"mirror_{'xyz'[axis]}", 1, x, y)
    assert torch.equal(xo, torch.flip(x, dims=(axis + 1,)))
    assert torch.equal(yo, torch.flip(y, dims=(axis + 1,)))


@pytest.mark.parametrize(
    "name,fn",
    [
        ("gamma", lambda x, v: ops.gamma_correction(x, v)),
        ("inverse_gamma", lambda x, v: ops.gamma_correction(x, v, invert=True)),
        ("brightness_add", lambda x, v: x + v),
        ("brightness_mul", lambda x, v: x * v),
        ("contrast", lambda x, v: ops.contrast_adjust(x, v)),
        ("blur_sharpen", lambda x, v: ops.gaussian_blur(x, v[1]) if v[0] == "blur" else ops.laplacian_sharpen(x, v[1])),
        ("noise", lambda x, v: ops.gaussian_noise(x, v[0], v[1])),
        ("low_resolution", lambda x, v: ops.simulate_low_resolution(x, v)),
    ],
)
def test_intensity_ops_apply_the_drawn_value_and_leave_labels(name: str, fn) -> None:
    pool = TrainingTransformPool()
    x = torch.randn(1, 12, 12, 12)
    y = torch.randint(0, 2, (1, 12, 12, 12))
    o = pool.index(name)
    for b in range(1, pool.num_bins[o]):
        bins = [0] * 15
        bins[o] = b
        value = pool.sample_values(bins, 7)[name]
        xo, yo = pool.apply_op(name, b, x, y, rng=7)
        assert torch.allclose(xo, fn(x, value), atol=1e-5), (name, b)
        assert not torch.allclose(xo, x)
        assert torch.equal(yo, y)


def test_composite_order_follows_the_authors() -> None:
    pool = TrainingTransformPool()
    x = torch.randn(1, 12, 12, 12)
    # brightness add before multiply: (x + 1) * 2
    assert torch.allclose(pool.apply_image(x, {"brightness_add": 1.0, "brightness_mul": 2.0}), (x + 1) * 2, atol=1e-5)
    # noise before blur: the noise gets smoothed
    zero = torch.zeros(1, 16, 16, 16)
    out = pool.apply_image(zero, {"noise": (0.5, 1), "blur_sharpen": ("blur", 1.0)})
    assert float(out.std()) < 0.25
    # inverse gamma before gamma, flips last (after the intensity changes)
    values = {"inverse_gamma": 1.4, "gamma": 0.7, "mirror_y": True, "brightness_add": 0.3}
    ref = ops.flip_axes(ops.gamma_correction(ops.gamma_correction(x + 0.3, 1.4, invert=True), 0.7), [1])
    assert torch.allclose(pool.apply_image(x, values), ref, atol=1e-5)


def test_spatial_size_takes_the_centre_of_an_enlarged_patch() -> None:
    pool = TrainingTransformPool()
    x = torch.randn(1, 24, 24, 24)
    y = torch.randint(0, 2, (1, 24, 24, 24))
    centre = (slice(None), slice(4, 20), slice(4, 20), slice(4, 20))
    assert torch.equal(pool.apply_image(x, {}, (16, 16, 16)), x[centre])
    assert torch.equal(pool.apply_label(y, {"mirror_x": True}, (16, 16, 16)), torch.flip(y[centre], dims=(1,)))
    # a rotation of the enlarged patch samples real data in the corners, not padding
    out = pool.apply_image(x.clamp(-3, 3) + 10, {"rotate_z": 25.0}, (16, 16, 16))
    assert out.shape == (1, 16, 16, 16) and float(out.min()) > 6.9


def test_pool_subset_and_bad_input() -> None:
    pool = TrainingTransformPool(["noise", "scale"])
    assert pool.op_names == ("scale", "noise")
    with pytest.raises(ValueError, match="unknown training op"):
        TrainingTransformPool(["warp"])
    with pytest.raises(ValueError, match="one bin per op"):
        pool.check_bins([0, 0, 0])
    with pytest.raises(ValueError, match="out of range"):
        pool.check_bins([6, 0])
    with pytest.raises(ValueError, match="not in this pool"):
        pool.index("gamma")
    with pytest.raises(ValueError, match="three spatial"):
        pool.apply_image(torch.zeros(1, 8, 8), {})
