# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Tests of the learned-TTA inferer (:class:`monai_imbalance.augment.LearnedTTAInferer`).

With a policy whose mass is on the identity, the prediction equals plain sliding-window inference exactly; the
mirroring preset equals an independent average of flipped predictions; with a network that commutes with every
spatial transform, zoom and rotation TTA returns the plain prediction inside the field of view, and the coverage
weighting keeps the border right; the weights are the renormalised top-K probabilities. A policy file is read on the
first call (or ``load()``), and a missing file, a training-time policy or a policy of another pool fails there,
before the network is called.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import SimpleInferer, SlidingWindowInferer

from monai_imbalance.augment import (
    NNUNET_MIRRORING,
    AugmentationPolicy,
    LearnedTTAInferer,
    TestTimePolicy,
    TestTimeTransformPool,
    TrainingTransformPool,
    save_policy,
)

torch.manual_seed(0)
NET = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv3d(4, 3, 3, padding=1))
NET.eval()
X = torch.randn(2, 1, 12, 11, 10)


def _identity_policy() -> TestTimePolicy:
    policy = TestTimePolicy()
    with torch.no_grad():
        policy.logits.fill_(float("-inf"))
        policy.logits[0] = 0.0
    return policy


def _pointwise(x: torch.Tensor) -> torch.Tensor:
    """A network that commutes with every spatial transform."""
    return torch.cat([x, -2 * x], dim=1)


@torch.no_grad()
def test_identity_policy_equals_plain_sliding_window_inference() -> None:
    sw = SlidingWindowInferer(roi_size=(8, 8, 8), sw_batch_size=2, overlap=0.5, mode="gaussian")
    plain = sw(X, NET)
    tta = LearnedTTAInferer(sw, policy=_identity_policy(), top_k=8)
    assert tta.transform_names[0] == "identity" and tta.weights[0] == 1.0
    assert torch.equal(tta(X, NET), plain)
    assert torch.equal(LearnedTTAInferer(sw, preset="none")(X, NET), plain)
    # the test would see a difference: the default policy (nnU-Net mirrorings) changes the prediction
    assert not torch.allclose(LearnedTTAInferer(sw, policy=TestTimePolicy())(X, NET), plain, atol=1e-4)


@torch.no_grad()
def test_mirroring_preset_is_the_average_of_flipped_predictions() -> None:
    got = LearnedTTAInferer(SimpleInferer(), preset="mirroring")(X, NET)
    preds = []
    for r in range(4):
        for axes in itertools.combinations((2, 3, 4), r):
            xf = torch.flip(X, dims=axes) if axes else X
            out = NET(xf)
            preds.append(torch.flip(out, dims=axes) if axes else out)
    assert torch.allclose(got, torch.stack(preds).mean(0), atol=1e-6)


@torch.no_grad()
def test_weights_are_the_renormalised_top_k_probabilities() -> None:
    policy = TestTimePolicy(init={"identity": 0.5, "mirror_z": 0.3, "rot90_xy+": 0.15})
    tta = LearnedTTAInferer(policy=policy, top_k=2)
    assert tta.transform_names == ["identity", "mirror_z"]
    assert tta.weights == pytest.approx([0.5 / 0.8, 0.3 / 0.8], abs=1e-6)
    ref = (0.5 * NET(X) + 0.3 * torch.flip(NET(torch.flip(X, dims=(4,))), dims=(4,))) / 0.8
    assert torch.allclose(tta(X, NET), ref, atol=1e-6)


@torch.no_grad()
def test_spatial_tta_with_an_equivariant_network_returns_the_plain_prediction() -> None:
    g = torch.arange(16, dtype=torch.float32) - 7.5
    x = torch.exp(-(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2) / 30.0)[None, None]
    plain = _pointwise(x)
    names = ["identity", "scale+0.45", "rotate_z+25", "rot90_xz+", "mirror_y"]
    got = LearnedTTAInferer(transforms=names)(x, _pointwise)
    assert float((got - plain).abs().max()) < 0.03
    # coverage weighting: without it the zoomed-in transform's padding pulls the border down
    x1, plain1 = x + 1, _pointwise(x + 1)
    no_cov = LearnedTTAInferer(transforms=["identity", "scale+0.45"], coverage_weighting=False)(x1, _pointwise)
    with_cov = LearnedTTAInferer(transforms=["identity", "scale+0.45"])(x1, _pointwise)
    corner = (slice(None), slice(None), 0, 0, 0)
    assert torch.allclose(with_cov[corner], plain1[corner], atol=1e-4)
    assert torch.allclose(no_cov[corner], plain1[corner] / 2, atol=1e-4)  # the padding counted as a prediction
    assert float((with_cov - plain1).abs().max()) < 0.03


@torch.no_grad()
def test_policy_file_is_read_on_the_first_call_and_metatensor(tmp_path) -> None:
    sw = SlidingWindowInferer(roi_size=(8, 8, 8), overlap=0.25)
    lazy = LearnedTTAInferer(sw, policy=str(tmp_path / "tea.pt"))  # no file yet: nothing is read when built
    assert not lazy.loaded and lazy.policy_file == tmp_path / "tea.pt"
    save_policy(_identity_policy(), tmp_path / "tea")  # e.g. written by training after the config was parsed
    img = MetaTensor(X, affine=torch.diag(torch.tensor([1.5, 1.5, 2.0, 1.0])))
    out = lazy(img, NET)
    assert lazy.loaded and lazy.transform_names[0] == "identity" and lazy.weights[0] == 1.0
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, img.affine)
    ref = sw(X, NET)
    assert torch.equal(out.as_tensor(), ref.as_tensor() if isinstance(ref, MetaTensor) else ref)
    # read once: a later change of the file does not change the transforms of an inferer already in use
    names = lazy.transform_names
    save_policy(TestTimePolicy(), tmp_path / "tea")  # the nnU-Net mirrorings
    assert lazy.transform_names == names and torch.equal(lazy(X, NET), out.as_tensor())
    assert set(LearnedTTAInferer(sw, policy=tmp_path / "tea").transform_names) == set(NNUNET_MIRRORING)
    save_policy(_identity_policy(), tmp_path / "tea")
    (tmp_path / "tea.json").unlink()  # the state dict alone loads into the default 84-transform policy
    by_stem = LearnedTTAInferer(sw, policy=tmp_path / "tea")
    assert by_stem.load() is by_stem and by_stem.transform_names[0] == "identity"


class _CountingNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return NET(x)


@torch.no_grad()
def test_a_bad_policy_file_fails_on_load_before_any_prediction(tmp_path) -> None:
    net = _CountingNet()
    missing = LearnedTTAInferer(policy=tmp_path / "absent.pt")
    for attempt in (missing.load, lambda: missing(X, net), lambda: missing.indices):
        with pytest.raises(FileNotFoundError, match="absent.pt"):
            attempt()
    assert net.calls == 0 and not missing.loaded
    # a training-time policy where the test-time one is expected
    save_policy(AugmentationPolicy(TrainingTransformPool(["scale", "gamma"]), groups={"all": None}), tmp_path / "tra")
    wrong_type = LearnedTTAInferer(policy=tmp_path / "tra.pt")
    for attempt in (wrong_type.load, lambda: wrong_type(X, net)):
        with pytest.raises(ValueError, match="not a TestTimePolicy"):
            attempt()
    # a test-time policy of another pool than the one given
    small = TestTimeTransformPool(["identity", "mirror_x", "mirror_y"])
    save_policy(TestTimePolicy(small, init=0), tmp_path / "small")
    with pytest.raises(ValueError, match="pool differs"):
        LearnedTTAInferer(policy=tmp_path / "small.pt", pool=TestTimeTransformPool())(X, net)
    (tmp_path / "small.json").unlink()  # its state dict alone, checked against the default 84-transform pool
    with pytest.raises(ValueError, match="another test-time pool"):
        LearnedTTAInferer(policy=tmp_path / "small.pt").load()
    assert net.calls == 0
    # without a pool argument the file's own pool is used
    save_policy(TestTimePolicy(small, init={"identity": 0.6, "mirror_y": 0.3}), tmp_path / "small")
    own = LearnedTTAInferer(policy=tmp_path / "small", top_k=2)
    assert own.pool.names == small.names and own.transform_names == ["identity", "mirror_y"]
    assert own.weights == pytest.approx([0.6 / 0.9, 0.3 / 0.9], abs=1e-6)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        LearnedTTAInferer(preset="none", transforms=["identity"])
    with pytest.raises(ValueError, match="exactly one"):
        LearnedTTAInferer()
    with pytest.raises(ValueError, match="top_k=0"):
        LearnedTTAInferer(policy="tea.pt", top_k=0)
    with pytest.raises(ValueError, match="unknown preset"):
        LearnedTTAInferer(preset="flips")
    with pytest.raises(ValueError, match="weights"):
        LearnedTTAInferer(transforms=["identity", "mirror_x"], weights=[1.0])
    with pytest.raises(ValueError, match="positive sum"):
        LearnedTTAInferer(transforms=["identity"], weights=[0.0])
    with pytest.raises(ValueError, match=r"\(B, C, X, Y, Z\)"):
        LearnedTTAInferer(preset="none")(torch.zeros(1, 8, 8, 8), NET)
    with pytest.raises(ValueError, match="one logits tensor"):
        LearnedTTAInferer(preset="none")(X, lambda t: (t, t))
