# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Tests of the training-time policy (:class:`monai_imbalance.augment.AugmentationPolicy`).

Init presets give the probabilities of methods.md 3.2, a mapping of bin probabilities sets each categorical; class
groups map centre classes as in 3.3; sampled and recomputed weights are 1 in value with gradient to their own group's
logits only; the hypergradient update equals ``w.backward(g)`` without baseline / normalisation and the explicit
formula of 3.4 with them; NaN logits and a state dict of another pool or group count raise clear errors.
"""

from __future__ import annotations

import math

import pytest
import torch

from monai_imbalance.augment import AugmentationPolicy, TrainingTransformPool


def _set_mass(policy: AugmentationPolicy, group: str, op: str, bin_index: int) -> None:
    with torch.no_grad():
        p = policy.logits[group][op]
        p.fill_(float("-inf"))
        p[bin_index] = 0.0


@pytest.mark.parametrize(
    "init,expected",
    [
        (2, {"scale": 0.2, "rotate_y": 0.1, "mirror_z": 0.5, "gamma": 0.3, "brightness_add": 0.05, "noise": 0.1}),
        ("deepmedic", {"rotate_x": 0.2, "mirror_x": 0.5, "mirror_y": 0.05, "brightness_add": 0.15, "gamma": 0.05}),
        (4, {"scale": 0.1, "blur_sharpen": 0.1}),
        (5, {"contrast": 0.05}),
    ],
)
def test_presets_set_identity_to_one_minus_p_and_spread_the_rest(init, expected) -> None:
    probs = AugmentationPolicy(init=init).probabilities()
    for g in ("background", "foreground"):
        for op, p in expected.items():
            q = probs[g][op].double()
            # a float32 softmax of float32 logits: 2.6e-7 from the exact value here, and CPU-dependent in the last bits
            assert float(q[0]) == pytest.approx(1 - p, abs=1e-5)
            assert torch.allclose(q[1:], torch.full_like(q[1:], p / (q.numel() - 1)), atol=1e-6)
    # the authors' logit form: identity logit 1, the others log(p e / ((K - 1)(1 - p)))
    logit = AugmentationPolicy(init=2).logits["background"]["scale"].detach()
    assert float(logit[0]) == 1.0
    assert float(logit[1]) == pytest.approx(math.log(0.2 * math.e / (5 * 0.8)), abs=1e-6)


def test_uniform_half_and_mapping_inits() -> None:
    u = AugmentationPolicy(init=0).probabilities()["foreground"]["rotate_x"]
    assert torch.allclose(u, torch.full((5,), 0.2))
    h = AugmentationPolicy(init="identity_half").probabilities()["foreground"]["blur_sharpen"]
    assert float(h[0]) == pytest.approx(0.5) and torch.allclose(h[1:], torch.full((6,), 0.5 / 6))
    pool = TrainingTransformPool(["scale", "noise"])
    m = AugmentationPolicy(pool, init={"scale": 0.4, "noise": 0.0}).probabilities()["background"]
    assert float(m["scale"][0]) == pytest.approx(0.6) and float(m["noise"][0]) == 1.0
    with pytest.raises(ValueError, match="missing"):
        AugmentationPolicy(pool, init={"scale": 0.4})
    with pytest.raises(ValueError, match="unknown init"):
        AugmentationPolicy(init=7)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        AugmentationPolicy(pool, init={"scale": 1.0, "noise": 0.1})
    with pytest.raises(ValueError, match="temperature"):
        AugmentationPolicy(temperature=0)


def test_mapping_of_bin_probabilities_sets_each_categorical() -> None:
    pool = TrainingTransformPool(["scale", "mirror_x", "noise"])
    scale = [0.5, 0.0, 0.2, 0.0, 0.3, 0.0]
    policy = AugmentationPolicy(pool, init={"scale": scale, "mirror_x": torch.tensor([0.25, 0.75]), "noise": 0.3})
    for g in ("background", "foreground"):
        probs = policy.probabilities()[g]
        assert torch.allclose(probs["scale"], torch.tensor(scale), atol=1e-7)
        assert torch.allclose(probs["mirror_x"], torch.tensor([0.25, 0.75]), atol=1e-7)
        assert torch.allclose(probs["noise"], torch.tensor([0.7, 0.1, 0.1, 0.1]), atol=1e-6)  # p form, mixed in
    logit = policy.logits["background"]["scale"].detach()
    assert torch.isneginf(logit[[1, 3, 5]]).all()  # probability 0: never drawn
    sampled = policy.sample(torch.zeros(200, dtype=torch.long)).bins[:, 0]
    assert set(sampled.tolist()) <= {0, 2, 4}
    with torch.no_grad():  # the groups' logits are separate parameters
        policy.logits["foreground"]["scale"][0] += 1.0
    assert torch.allclose(policy.probabilities()["background"]["scale"], torch.tensor(scale), atol=1e-7)
    with pytest.raises(ValueError, match=r"op 'scale'.* 6 bin probabilities, got shape \(5,\)"):
        AugmentationPolicy(pool, init={"scale": scale[:5], "mirror_x": 0.5, "noise": 0.1})
    with pytest.raises(ValueError, match=r"op 'mirror_x'.*sum to 1"):
        AugmentationPolicy(pool, init={"scale": 0.1, "mirror_x": [0.5, 0.6], "noise": 0.1})
    with pytest.raises(ValueError, match=r"op 'mirror_x'.*>= 0"):
        AugmentationPolicy(pool, init={"scale": 0.1, "mirror_x": [1.5, -0.5], "noise": 0.1})


def test_groups_map_centre_classes() -> None:
    policy = AugmentationPolicy()
    assert policy.group_index([0, 1, 2, 0]).tolist() == [0, 1, 1, 0]
    per_class = AugmentationPolicy(groups={"bg": [0], "kidney": [1], "tumour": [2]})
    assert per_class.group_index(torch.tensor([2, 0, 1])).tolist() == [2, 0, 1]
    with pytest.raises(ValueError, match="belong to no group"):
        per_class.group_index([3])
    assert AugmentationPolicy(groups={"all": None}).group_index([0, 5]).tolist() == [0, 0]
    with pytest.raises(ValueError, match="both groups"):
        AugmentationPolicy(groups={"a": [0, 1], "b": [1]})
    with pytest.raises(ValueError, match="at most one"):
        AugmentationPolicy(groups={"a": None, "b": None})
    with pytest.raises(ValueError, match="identifiers"):
        AugmentationPolicy(groups={"a.b": [0]})


def test_sample_follows_each_groups_probabilities() -> None:
    torch.manual_seed(0)
    policy = AugmentationPolicy(init=0)
    _set_mass(policy, "background", "mirror_x", 0)
    _set_mass(policy, "foreground", "mirror_x", 1)
    groups = torch.tensor([0, 1] * 500)
    pw = policy.sample(groups)
    o = policy.pool.index("mirror_x")
    assert bool((pw.bins[groups == 0, o] == 0).all()) and bool((pw.bins[groups == 1, o] == 1).all())
    freq = torch.bincount(pw.bins[:, policy.pool.index("scale")], minlength=6).double() / 1000
    assert torch.allclose(freq, torch.full((6,), 1 / 6, dtype=torch.float64), atol=0.04)
    assert torch.allclose(pw.weight, torch.ones(1000))


def test_recomputed_weights_have_value_one_and_gradient_to_their_group_only() -> None:
    policy = AugmentationPolicy()
    bins = torch.zeros(3, 15, dtype=torch.long)
    bins[:, 0] = torch.tensor([1, 4, 0])
    pw = policy.weights(bins, torch.tensor([1, 1, 1]))
    assert pw.per_op.shape == (3, 15)
    assert torch.allclose(pw.weight, torch.ones(3))
    pw.weight.sum().backward()
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in policy.logits["background"].values())
    assert float(policy.logits["foreground"]["scale"].grad.abs().sum()) > 0


def test_accumulate_without_baseline_equals_backward_of_the_weights() -> None:
    torch.manual_seed(1)
    a, b = AugmentationPolicy(), AugmentationPolicy()
    bins = a.sample(torch.tensor([0, 1, 1, 0, 1])).bins
    groups = torch.tensor([0, 1, 1, 0, 1])
    gen = torch.Generator().manual_seed(5)
    pa = a.weights(bins, groups, generator=gen)
    gen.manual_seed(5)
    pb = b.weights(bins, groups, generator=gen)
    g = torch.randn(5)
    a.accumulate_hypergradient(pa, g, baseline=False, normalize=False)
    pb.weight.backward(g)
    for grp in ("background", "foreground"):
        for op in a.pool.op_names:
            assert torch.allclose(a.logits[grp][op].grad, b.logits[grp][op].grad, atol=1e-6)


def test_accumulate_matches_the_formula_of_methods_3_4() -> None:
    torch.manual_seed(2)
    pool = TrainingTransformPool(["scale", "mirror_x"])
    policy = AugmentationPolicy(pool, init=0)
    bins = torch.tensor([[1, 0], [1, 1], [0, 1], [3, 1], [1, 0], [2, 1]])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    pw = policy.weights(bins, groups)
    g = torch.randn(6)
    policy.accumulate_hypergradient(pw, g)
    for gi, grp in enumerate(("background", "foreground")):
        members = [i for i in range(6) if groups[i] == gi]
        gc = {i: float(g[i]) - sum(float(g[j]) for j in members) / len(members) for i in members}
        for o, op in enumerate(pool.op_names):
            k = pool.num_bins[o]
            expected = torch.zeros(k, dtype=torch.float64)
            for i in members:
                n = sum(1 for j in members if bins[j, o] == bins[i, o])
                y = pw.soft[o][i].double()
                kb = int(bins[i, o])
                expected += gc[i] / n * y[kb] * (torch.nn.functional.one_hot(torch.tensor(kb), k).double() - y)
            assert torch.allclose(policy.logits[grp][op].grad.double(), expected, atol=1e-6)


def test_nan_logits_and_bad_batches_raise_clear_errors() -> None:
    policy = AugmentationPolicy()
    with pytest.raises(ValueError, match="out of range"):
        policy.weights(torch.full((2, 15), 9), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"\(B, 15\)"):
        policy.weights(torch.zeros(2, 14, dtype=torch.long), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="group indices"):
        policy.weights(torch.zeros(2, 15, dtype=torch.long), torch.tensor([0, 2]))
    pw = policy.weights(torch.zeros(2, 15, dtype=torch.long), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="grad_w holds NaN"):
        policy.accumulate_hypergradient(pw, torch.tensor([float("nan"), 0.0]))
    with torch.no_grad():
        policy.logits["foreground"]["gamma"][2] = float("nan")
    for call in (policy.probabilities, lambda: policy.sample([0]), lambda: policy.weights(torch.zeros(1, 15), [0])):
        with pytest.raises(ValueError, match="'foreground', op 'gamma' holds NaN"):
            call()


def test_state_dict_round_trip_and_mismatch_errors() -> None:
    src = AugmentationPolicy(init=3)
    dst = AugmentationPolicy(init=0)
    dst.load_state_dict(src.state_dict())
    assert torch.equal(dst.logits["foreground"]["scale"], src.logits["foreground"]["scale"])
    with pytest.raises(ValueError, match="ops .*'scale', 'noise'"):
        AugmentationPolicy(TrainingTransformPool(["scale", "noise"])).load_state_dict(src.state_dict())
    with pytest.raises(ValueError, match=r"2 class group\(s\).*this policy has 1"):
        AugmentationPolicy(groups={"all": None}).load_state_dict(src.state_dict(), strict=False)
    with pytest.raises(ValueError, match="class groups"):
        AugmentationPolicy(groups={"background": [0], "lesion": None}).load_state_dict(src.state_dict(), strict=False)
