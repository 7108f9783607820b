# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Tests of the test-time pool (:class:`monai_imbalance.augment.TestTimeTransformPool`).

The index layout is the authors' (nnU-Net's mirrorings at 0, 29, 30, 31, 34, 37, 40, 83 are the eight flip
combinations); every transform is checked for its effect (signed zooms and rotations measured on a blob, flips and
quarter turns against ``torch``, intensity transforms against the elementary operations with the fixed value), and
every spatial transform for forward-then-inverse returning the input (exactly for flips and quarter turns, within
interpolation error where the field of view is kept for zooms and rotations).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from monai_imbalance.augment import NNUNET_MIRRORING, TEST_TIME_TRANSFORMS, TestTimeTransformPool, ops

N = 20
G = torch.arange(N, dtype=torch.float64) - (N - 1) / 2
R2 = G[:, None, None] ** 2 + G[None, :, None] ** 2 + G[None, None, :] ** 2
POOL = TestTimeTransformPool()


def _smooth() -> torch.Tensor:
    """A smooth two-channel image (low-frequency sinusoids times a broad Gaussian)."""
    x, y, z = torch.meshgrid(G, G, G, indexing="ij")
    a = torch.exp(-R2 / 60.0) * (1 + 0.3 * torch.sin(x / 3.0) * torch.cos(y / 4.0 + z / 5.0))
    b = torch.exp(-((x - 2) ** 2 + y**2 + (z + 1) ** 2) / 40.0)
    return torch.stack([a, b]).float()


def _principal_angle(img: torch.Tensor, plane: tuple[int, int]) -> float:
    w = img[0].double().clamp_min(0)
    coords = torch.meshgrid(G, G, G, indexing="ij")
    a, b = coords[plane[0]], coords[plane[1]]
    m = w.sum()
    ma, mb = (w * a).sum() / m, (w * b).sum() / m
    caa, cbb = (w * (a - ma) ** 2).sum() / m, (w * (b - mb) ** 2).sum() / m
    cab = (w * (a - ma) * (b - mb)).sum() / m
    return math.degrees(0.5 * math.atan2(2 * float(cab), float(caa - cbb)))


def test_index_layout_is_the_authors() -> None:
    names = [t.name for t in TEST_TIME_TRANSFORMS]
    assert len(names) == 84 and len(set(names)) == 84
    assert names[0] == "identity" and names[83] == "mirror_xyz"
    assert names[1:3] == ["scale+0.05", "scale-0.05"] and names[10] == "scale-0.45"
    assert names[11] == "rotate_x+5" and names[28] == "rotate_z-25"
    assert names[29:32] == ["mirror_x", "mirror_y", "mirror_z"]
    assert names[32:41] == [
        "rot90_yz+",
        "rot90_yz-",
        "rot180_yz",
        "rot90_xz+",
        "rot90_xz-",
        "rot180_xz",
        "rot90_xy+",
        "rot90_xy-",
        "rot180_xy",
    ]
    assert names[41] == "gamma+0.1" and names[70] == "contrast-0.25"
    assert names[71] == "blur_0.5" and names[82] == "low_resolution_0.5"
    # the authors' nninitindex
    assert [names.index(n) for n in NNUNET_MIRRORING] == [0, 29, 30, 31, 34, 37, 40, 83]


def test_nnunet_mirrorings_are_the_eight_flip_combinations() -> None:
    x = torch.randn(1, 5, 6, 7)
    got = [POOL.forward(x, n) for n in NNUNET_MIRRORING]
    expected = [
        torch.flip(x, dims=tuple(d + 1 for d in dims)) if dims else x
        for r in range(4)
        for dims in itertools.combinations(range(3), r)
    ]
    for e in expected:
        assert sum(torch.equal(g, e) for g in got) == 1


@pytest.mark.parametrize("m", [0.05, 0.25, 0.45])
def test_scale_zooms_by_the_signed_value(m: float) -> None:
    blob = torch.exp(-R2 / 6.0)[None].float()
    for sign, factor in (("+", 1 + m), ("-", 1 / (1 + m))):
        out = POOL.forward(blob, f"scale{sign}{m:g}")
        ratio = (float(out.sum()) / float(blob.sum())) ** (1 / 3)
        assert ratio == pytest.approx(factor, rel=0.02)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("d", [5, 15, 25])
def test_rotation_turns_by_the_signed_angle(axis: int, d: int) -> None:
    plane = tuple(a for a in range(3) if a != axis)
    s = [2.0, 2.0, 2.0]
    s[plane[0]] = 5.0
    coords = torch.meshgrid(G, G, G, indexing="ij")
    img = torch.exp(-sum(c**2 / si**2 for c, si in zip(coords, s, strict=True)))[None].float()
    base = _principal_angle(img, plane)
    plus = _principal_angle(POOL.forward(img, f"rotate_{'xyz'[axis]}+{d}"), plane) - base
    minus = _principal_angle(POOL.forward(img, f"rotate_{'xyz'[axis]}-{d}"), plane) - base
    assert abs(abs(plus) - d) < 1.0 and abs(abs(minus) - d) < 1.0
    assert plus * minus < 0


def test_flips_and_quarter_turns_match_torch() -> None:
    x = torch.randn(2, 6, 6, 6)
    for a in range(3):
        assert torch.equal(POOL.forward(x, f"mirror_{'xyz'[a]}"), torch.flip(x, dims=(a + 1,)))
    assert torch.equal(POOL.forward(x, "mirror_xyz"), torch.flip(x, dims=(1, 2, 3)))
    for tag, dims in (("yz", (2, 3)), ("xz", (1, 3)), ("xy", (1, 2))):
        assert torch.equal(POOL.forward(x, f"rot90_{tag}+"), torch.rot90(x, 1, dims=dims))
        assert torch.equal(POOL.forward(x, f"rot90_{tag}-"), torch.rot90(x, 3, dims=dims))
        assert torch.equal(POOL.forward(x, f"rot180_{tag}"), torch.rot90(x, 2, dims=dims))


@pytest.mark.parametrize("i", range(41, 83))
def test_intensity_transforms_use_their_fixed_signed_value(i: int) -> None:
    t = TEST_TIME_TRANSFORMS[i]
    x = _smooth() + 0.1 * torch.randn(2, N, N, N)
    out = POOL.forward(x, i)
    fam, v = t.family, t.value
    m = float(t.name.split("+")[-1].split("-")[-1].split("_")[-1])
    if fam in ("gamma", "inverse_gamma", "brightness_mul", "contrast"):
        assert v == pytest.approx(1 + m if "+" in t.name else 1 / (1 + m))
    if fam == "brightness_add":
        assert v == pytest.approx(m if "+" in t.name else -m)
    ref = {
        "gamma": lambda: ops.gamma_correction(x, v),
        "inverse_gamma": lambda: ops.gamma_correction(x, v, invert=True),
        "brightness_add": lambda: x + v,
        "brightness_mul": lambda: x * v,
        "contrast": lambda: ops.contrast_adjust(x, v),
        "blur": lambda: ops.gaussian_blur(x, v),
        "sharpen": lambda: ops.laplacian_sharpen(x, v),
        "noise": lambda: x + (ops.gaussian_noise(torch.zeros_like(x), v, seed=i)),
        "low_resolution": lambda: ops.simulate_low_resolution(x, v),
    }[fam]()
    assert torch.allclose(out, ref, atol=1e-5)
    assert not torch.allclose(out, x, atol=1e-3)
    assert torch.equal(POOL.forward(x, i), out)  # deterministic (noise has a fixed seed)
    logits = torch.randn(3, N, N, N)
    assert POOL.inverse(logits, i) is logits or torch.equal(POOL.inverse(logits, i), logits)
    assert POOL.coverage((N, N, N), i) is None


@pytest.mark.parametrize("i", [i for i, t in enumerate(TEST_TIME_TRANSFORMS) if t.spatial])
def test_forward_then_inverse_returns_the_input(i: int) -> None:
    t = TEST_TIME_TRANSFORMS[i]
    x = _smooth()
    back = POOL.inverse(POOL.forward(x, i), i)
    assert back.shape == x.shape
    if t.exact:
        assert torch.equal(back, x)
        assert POOL.coverage((N, N, N), i) is None
        return
    cov = POOL.coverage((N, N, N), i)
    assert cov.shape == (1, N, N, N) and float(cov.min()) >= 0 and float(cov.max()) <= 1
    kept = (cov > 0.999).expand_as(x)
    assert float(kept.float().mean()) > 0.2
    err = (back - x).abs()[kept]
    # two linear interpolations (one a down-sampling for a zoom out) of a smooth image of amplitude ~1.3
    assert float(err.max()) < 0.05 and float(err.mean()) < 0.005
    # where the field of view was lost, the round trip returns padding (coverage < 1 there)
    if t.family == "scale" and t.value > 1:
        assert float(cov[0, 0, 0, 0]) < 0.5


def test_quarter_turns_of_a_non_cubic_image_swap_and_restore_the_shape() -> None:
    x = torch.randn(1, 4, 6, 8)
    f = POOL.forward(x, "rot90_xz+")
    assert f.shape == (1, 8, 6, 4)
    assert torch.equal(POOL.inverse(f, "rot90_xz+"), x)


def test_zoom_out_keeps_the_whole_field_of_view() -> None:
    cov = POOL.coverage((N, N, N), "scale-0.45")
    assert float(cov[:, 1:-1, 1:-1, 1:-1].min()) > 0.999
    assert POOL.coverage((N, N, N), "scale-0.45") is cov  # cached


def test_subset_and_bad_names() -> None:
    pool = TestTimeTransformPool(["mirror_x", "identity"])
    assert pool.names == ("identity", "mirror_x")
    with pytest.raises(ValueError, match="identity"):
        TestTimeTransformPool(["mirror_x"])
    with pytest.raises(ValueError, match="unknown test-time"):
        TestTimeTransformPool(["identity", "warp"])
    with pytest.raises(ValueError, match="not in this pool"):
        pool.forward(torch.zeros(1, 4, 4, 4), "mirror_y")
    with pytest.raises(ValueError, match="out of range"):
        pool.index(5)
