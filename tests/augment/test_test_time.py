# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Tests of the test-time policy (:class:`monai_imbalance.augment.TestTimePolicy`).

Init presets give the probabilities of methods.md 3.5 (0.1 on each of nnU-Net's eight mirrorings, the remaining 0.2
spread), ``top_k`` renormalises the most probable transforms, sampled weights are 1 with gradient, the update
follows the baseline-subtracted, count-normalised formula, and NaN logits / mismatched state dicts raise errors.
"""

from __future__ import annotations

import pytest
import torch

from monai_imbalance.augment import NNUNET_MIRRORING, TestTimePolicy, TestTimeTransformPool


def test_nnunet_preset() -> None:
    policy = TestTimePolicy()
    p = policy.probabilities().double()
    names = policy.pool.names
    for i, n in enumerate(names):
        expected = 0.1 if n in NNUNET_MIRRORING else 0.2 / 76
        assert float(p[i]) == pytest.approx(expected, rel=1e-5)
    idx, w = policy.top_k(8)
    assert sorted(names[i] for i in idx) == sorted(NNUNET_MIRRORING)
    assert torch.allclose(w, torch.full((8,), 0.125))


def test_other_presets_and_errors() -> None:
    p4 = TestTimePolicy(init="mirror_axes").probabilities()
    # float32 softmax over 84 logits: its last bits depend on the CPU's exp and summation order (rel 1e-5 as above)
    assert float(p4[0]) == pytest.approx(0.2, rel=1e-5) and float(p4[29]) == pytest.approx(0.2, rel=1e-5)
    assert float(p4[83]) == pytest.approx(0.2 / 80, rel=1e-5)
    assert torch.allclose(TestTimePolicy(init=0).probabilities(), torch.full((84,), 1 / 84))
    custom = TestTimePolicy(init={"identity": 0.5, "mirror_x": 0.3}).probabilities()
    assert float(custom[0]) == pytest.approx(0.5, rel=1e-5) and float(custom[1]) == pytest.approx(0.2 / 82, rel=1e-5)
    # a preset on a subset pool keeps the transforms the pool has
    small = TestTimePolicy(TestTimeTransformPool(["identity", "mirror_x", "blur_0.5"])).probabilities()
    assert torch.allclose(small, torch.tensor([0.1, 0.1, 0.8]), atol=1e-6)
    with pytest.raises(ValueError, match="sum to"):
        TestTimePolicy(init={"identity": 0.8, "mirror_x": 0.3})
    with pytest.raises(ValueError, match="not in this pool"):
        TestTimePolicy(init={"warp": 0.1})
    with pytest.raises(ValueError, match="unknown init"):
        TestTimePolicy(init=3)
    with pytest.raises(ValueError, match="top_k"):
        TestTimePolicy().top_k(0)


def test_top_k_renormalises_the_most_probable() -> None:
    policy = TestTimePolicy(init={"identity": 0.4, "mirror_y": 0.3, "rot90_xy+": 0.2})
    idx, w = policy.top_k(2)
    assert [policy.pool.names[i] for i in idx] == ["identity", "mirror_y"]
    assert torch.allclose(w, torch.tensor([0.4 / 0.7, 0.3 / 0.7]), atol=1e-6)


def test_sampling_and_the_update() -> None:
    torch.manual_seed(0)
    policy = TestTimePolicy(init=0)
    pw = policy.sample(4000)
    freq = torch.bincount(pw.bins[:, 0], minlength=84).double() / 4000
    assert float((freq - 1 / 84).abs().max()) < 0.015
    assert torch.allclose(pw.weight, torch.ones(4000))
    idx = torch.tensor([0, 29, 29, 5])
    w = policy.weights(idx)
    g = torch.tensor([0.3, -0.1, 0.2, 0.4])
    policy.accumulate_hypergradient(w, g)
    y = w.soft[0].double()
    gc = g.double() - g.double().mean()
    counts = torch.tensor([1.0, 2.0, 2.0, 1.0], dtype=torch.float64)
    expected = torch.zeros(84, dtype=torch.float64)
    for z in range(4):
        onehot = torch.nn.functional.one_hot(idx[z], 84).double()
        expected += gc[z] / counts[z] * y[z, idx[z]] * (onehot - y[z])
    assert torch.allclose(policy.logits.grad.double(), expected, atol=1e-6)


def test_nan_and_state_dict_mismatch() -> None:
    policy = TestTimePolicy()
    small = TestTimePolicy(TestTimeTransformPool(["identity", "mirror_x"]))
    with pytest.raises(ValueError, match="another test-time pool"):
        small.load_state_dict(policy.state_dict(), strict=False)
    with torch.no_grad():
        policy.logits[3] = float("nan")
    with pytest.raises(ValueError, match="test-time policy holds NaN"):
        policy.top_k(4)
    with pytest.raises(ValueError, match="indices"):
        TestTimePolicy().weights([84])
