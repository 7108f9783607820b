# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Adversarial perturbation (Li, Kamnitsas, Glocker, IEEE TMI 2021; methods.md 1.4) vs an independent computation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from monai_imbalance.engines import adversarial_perturbation, normalize_per_sample

C = 3  # 0 background, 1 common foreground, 2 rare foreground
SHAPE = (8, 8, 8)


class TinyNet(nn.Module):
    """Two 3D convolutions with BatchNorm and InstanceNorm (both tracking running stats) and dropout."""

    def __init__(self, out_channels: int = C) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm3d(4)
        self.inorm = nn.InstanceNorm3d(4, affine=True, track_running_stats=True)
        self.drop = nn.Dropout3d(0.0)
        self.conv2 = nn.Conv3d(4, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.drop(torch.relu(self.inorm(self.bn(self.conv1(x))))))


def _net(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet()


def _data(batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 1, *SHAPE, generator=g)
    y = torch.randint(0, C, (batch, 1, *SHAPE), generator=g)
    return x, y


def _perturb(net, x, y, seed=5, **kwargs):
    torch.manual_seed(seed)
    return adversarial_perturbation(net, x, y, **kwargs)


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)


@pytest.mark.parametrize("rare_classes", [None, [2], [1, 2]])
@pytest.mark.parametrize("eps", [10.0, 0.5])
@pytest.mark.parametrize("dice", [False, True])
def test_norm_is_eps_per_sample(rare_classes, eps, dice):
    x, y = _data(batch=3)
    r = _perturb(_net(), x, y, eps=eps, rare_classes=rare_classes, dice=dice)
    assert r.shape == x.shape and r.dtype == x.dtype
    torch.testing.assert_close(r.flatten(1).norm(dim=1), torch.full((3,), eps), rtol=1e-5, atol=0)


def test_direction_matches_independent_computation():
    """grad_d of -(1/N) sum_i sum_c r_c y_ic log(p_ic(x + xi normalize(d)) + 1e-6), then eps * normalize."""
    net, (x, y), eps, xi = _net(), _data(), 10.0, 1e-5
    r = _perturb(net, x, y, seed=5, eps=eps, xi=xi, rare_classes=[2])

    ref_net = _net()
    torch.manual_seed(5)
    d = torch.randn(x.shape)
    d = d / d.flatten(1).abs().amax(1).view(-1, 1, 1, 1, 1)
    d = (xi * d / torch.sqrt((d**2).flatten(1).sum(1) + 1e-6).view(-1, 1, 1, 1, 1)).requires_grad_(True)
    p = torch.softmax(ref_net(x + d), dim=1)
    onehot = torch.nn.functional.one_hot(y[:, 0], C).movedim(-1, 1).float()
    rare = torch.tensor([0.0, 0.0, 1.0]).view(1, C, 1, 1, 1)
    loss = -(rare * onehot * torch.log(p + 1e-6)).sum(1).mean()
    (g,) = torch.autograd.grad(loss, d)
    g = g / g.flatten(1).abs().amax(1).view(-1, 1, 1, 1, 1)
    expected = eps * g / torch.sqrt((g**2).flatten(1).sum(1) + 1e-6).view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(r, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dice", [False, True])
def test_asymmetric_ignores_non_rare_labels_symmetric_does_not(dice):
    x, y = _data()
    # change only non-rare voxels' labels (rare class 2): swap background 0 and common class 1
    y_changed = torch.where(y == 2, y, 1 - y)
    assert (y_changed != y).any()
    net = _net()
    r1 = _perturb(net, x, y, rare_classes=[2], dice=dice)
    r2 = _perturb(net, x, y_changed, rare_classes=[2], dice=dice)
    torch.testing.assert_close(r1, r2, rtol=0, atol=1e-6)

    s1 = _perturb(net, x, y, rare_classes=None, dice=dice)
    s2 = _perturb(net, x, y_changed, rare_classes=None, dice=dice)
    assert (_cos(s1, s2) < 0.99).all()


def test_asymmetric_follows_rare_labels():
    x, y = _data()
    y_changed = y.clone()
    y_changed[:, :, :4][y_changed[:, :, :4] == 2] = 0  # remove half of the rare voxels
    net = _net()
    r1 = _perturb(net, x, y, rare_classes=[2])
    r2 = _perturb(net, x, y_changed, rare_classes=[2])
    assert (_cos(r1, r2) < 0.99).all()


def test_sample_without_rare_voxels_is_not_perturbed():
    """Without BatchNorm (which couples the samples of a batch) such a sample's direction is zero."""
    x, y = _data()
    y[1][y[1] == 2] = 0
    net = _net()
    net.bn = nn.Identity()
    r = _perturb(net, x, y, rare_classes=[2])
    assert r[1].abs().max() == 0
    torch.testing.assert_close(r[0].norm(), torch.tensor(10.0), rtol=1e-5, atol=0)


def test_leaves_no_gradients_restores_modes_and_running_stats():
    net = _net()
    net.eval()
    x, y = _data()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    _perturb(net, x, y, rare_classes=[2])
    assert not net.training and not any(m.training for m in net.modules())
    assert all(p.grad is None for p in net.parameters())
    for k, v in net.state_dict().items():  # running means/vars and num_batches_tracked unchanged
        assert torch.equal(v, state[k]), k

    net.train()
    net.bn.eval()  # a deliberately frozen submodule keeps its mode
    _perturb(net, x, y, rare_classes=[2])
    assert net.training and net.conv1.training and not net.bn.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_existing_gradients_are_untouched():
    net = _net()
    x, y = _data()
    net(x).sum().backward()
    grads = [p.grad.clone() for p in net.parameters()]
    _perturb(net, x, y)
    for p, g in zip(net.parameters(), grads, strict=True):
        assert torch.equal(p.grad, g)


def test_computed_in_training_mode():
    """With BatchNorm the probe uses batch statistics (train mode), whatever the caller's mode."""
    net = _net()
    x, y = _data()
    net.train()
    r_train = _perturb(net, x, y)
    net.eval()
    r_eval_caller = _perturb(net, x, y)
    torch.testing.assert_close(r_train, r_eval_caller)


def test_works_under_no_grad_and_autocast():
    net = _net()
    x, y = _data()
    reference = _perturb(net, x, y, rare_classes=[2])
    with torch.no_grad():
        torch.testing.assert_close(_perturb(net, x, y, rare_classes=[2]), reference)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        r = _perturb(net, x, y, rare_classes=[2])
    assert r.dtype == torch.float32 and torch.isfinite(r).all()
    torch.testing.assert_close(r.flatten(1).norm(dim=1), torch.full((2,), 10.0), rtol=1e-5, atol=0)
    assert (_cos(r, reference) > 0.9).all()


def test_custom_loss_gets_rare_voxel_mask():
    seen = {}

    def loss(logits, target, mask=None):
        seen["mask"], seen["target"] = mask, target
        return -(torch.log_softmax(logits, 1).gather(1, target) * mask).mean()

    x, y = _data()
    r = _perturb(_net(), x, y, rare_classes=[2], loss=loss)
    assert torch.equal(seen["mask"], (y == 2).float())
    assert torch.equal(seen["target"], y)
    torch.testing.assert_close(r.flatten(1).norm(dim=1), torch.full((2,), 10.0), rtol=1e-5, atol=0)


def test_uniform_start_and_deep_supervision_output():
    class DeepSup(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = _net()

        def forward(self, x):  # (B, heads, C, *sp) as DynUNet in training mode
            out = self.net(x)
            return torch.stack([out, 0.5 * out], dim=1)

    x, y = _data()
    r = _perturb(DeepSup(), x, y, rare_classes=[2], distribution="uniform")
    torch.testing.assert_close(r.flatten(1).norm(dim=1), torch.full((2,), 10.0), rtol=1e-5, atol=0)


def test_normalize_per_sample():
    d = torch.randn(4, 2, 3, 3) * torch.tensor([1e-9, 1.0, 1e3, 0.0]).view(4, 1, 1, 1)
    n = normalize_per_sample(d).flatten(1).norm(dim=1)
    torch.testing.assert_close(n, torch.tensor([1.0, 1.0, 1.0, 0.0]), rtol=1e-5, atol=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"eps": -1.0}, "eps=-1.0"),
        ({"xi": -1e-5}, "xi=-1e-05"),
        ({"rare_classes": [3]}, r"rare_classes=\[3\].*class 3"),
        ({"rare_classes": [-1]}, r"rare_classes"),
        ({"rare_classes": []}, r"rare_classes=\[\]"),
        ({"distribution": "laplace"}, "laplace"),
    ],
)
def test_bad_arguments(kwargs, match):
    x, y = _data()
    with pytest.raises(ValueError, match=match):
        adversarial_perturbation(_net(), x, y, **kwargs)


def test_bad_labels_and_shapes():
    net = _net()
    x, y = _data()
    with pytest.raises(ValueError, match="label 3"):
        adversarial_perturbation(net, x, torch.full_like(y, 3))
    with pytest.raises(ValueError, match="label -1"):
        adversarial_perturbation(net, x, torch.full_like(y, -1))
    with pytest.raises(ValueError, match=r"\(2, 1, 8, 8, 4\)"):
        adversarial_perturbation(net, x, y[..., :4])
    with pytest.raises(ValueError, match=r"\(2, 3, 8, 8, 8\)"):
        adversarial_perturbation(net, x, torch.nn.functional.one_hot(y[:, 0], C).movedim(-1, 1))
