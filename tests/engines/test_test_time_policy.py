# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The test-time policy learner alone (TEA; JCSAugment, Li et al., IEEE TMI 2023): settings, the TEA step, the
transformed validation batch it gives the training-time learner, and checkpoints.

Tiny smooth (tanh) networks on 8^3 patches, checked against hand-written losses and per-transform loops.
"""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from monai_imbalance.augment import TestTimePolicy, TestTimeTransformPool
from monai_imbalance.engines import TestTimePolicyLearner, foreground_dice_loss
from monai_imbalance.engines.test_time_policy import _uses_batch_statistics

torch.set_num_threads(1)

SHAPE = (8, 8, 8)
B = 4


class NormSeg(nn.Module):
    """A tiny smooth segmenter with a normalisation layer (``nn.InstanceNorm3d`` or ``nn.BatchNorm3d``)."""

    def __init__(self, norm: type[nn.Module] | None = nn.InstanceNorm3d, out_channels: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(1, 3, 3, padding=1)
        self.norm = nn.Identity() if norm is None else norm(3, affine=True)
        self.conv2 = nn.Conv3d(3, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.tanh(self.norm(self.conv1(x))))


def _data(seed: int, c: int = 2, b: int = B) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 1, *SHAPE, generator=g), torch.randint(0, c, (b, 1, *SHAPE), generator=g)


def _learner(names, batch_size=None, **kw) -> tuple[TestTimePolicyLearner, TestTimePolicy]:
    tea = TestTimePolicy(TestTimeTransformPool(names), init=kw.pop("init", 0))
    kw.setdefault("optimizer", torch.optim.SGD(tea.parameters(), lr=0.0))
    return TestTimePolicyLearner(policy=tea, patches=None, batch_size=batch_size, **kw), tea


@pytest.mark.parametrize(
    "config, match",
    [
        ({"policy": None}, "policy must be a TestTimePolicy"),
        ({"interval": 0}, "interval"),
        ({"warmup_epochs": -1}, "warmup_epochs"),
        ({"num_samples": 0}, "num_samples"),
        ({"patches": 0}, "patches"),
        ({"batch_size": 0}, "batch_size"),
        ({"baseline": "yes"}, "baseline"),
        ({"unknown_key": 1}, "unknown_key"),
        ({"meta_interval": 1}, "meta_interval"),  # a TRA setting is not a TEA setting
    ],
)
def test_bad_settings_are_named(config, match):
    with pytest.raises(ValueError, match=match) as err:
        TestTimePolicyLearner.from_mapping({"policy": TestTimePolicy(), **config})
    assert str(err.value).startswith("TestTimePolicyLearner")
    with pytest.raises(ValueError, match="TestTimePolicyLearner needs policy"):
        TestTimePolicyLearner.from_mapping({"num_samples": 4})


def test_defaults_follow_the_paper():
    learner = TestTimePolicyLearner(TestTimePolicy(TestTimeTransformPool(["identity", "mirror_x"])))
    assert isinstance(learner.optimizer, torch.optim.Adam) and learner.optimizer.defaults["lr"] == 5e-5
    assert learner.num_samples == 10 and learner.patches == 1 and learner.batch_size is None  # Z = 10, one FG patch
    assert learner.interval == 1 and learner.warmup_epochs == 0 and learner.baseline and learner.normalize
    late = TestTimePolicyLearner(TestTimePolicy(), interval=2, warmup_epochs=1)
    assert [it for it in range(1, 7) if late.is_due(it, 1 + (it > 3))] == [4, 6]


def _dice_fg(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(pred, 1)
    t = F.one_hot(y[:, 0], pred.shape[1]).movedim(-1, 1).float()
    inter, denom = (p * t).sum((0, 2, 3, 4)), (p + t).sum((0, 2, 3, 4))
    return 1 - ((2 * inter + 1e-5) / (denom + 1e-5))[1:].mean()


def test_step_gradient_matches_hand_computation():
    torch.manual_seed(0)
    net = NormSeg(None, out_channels=3)
    names = ["identity", "mirror_x", "mirror_y", "rot90_yz+"]
    learner, tea = _learner(names)  # the whole batch, all patches in one forward
    xv, yv = _data(2, c=3)
    idx = torch.tensor([1, 1, 3, 0, 2, 1])
    out = learner.step(net, (xv, yv), indices=idx, generator=torch.Generator().manual_seed(5))
    got = tea.logits.grad.detach().clone()

    forward = {
        0: (lambda v: v, lambda v: v),
        1: (lambda v: v.flip(2), lambda v: v.flip(2)),
        2: (lambda v: v.flip(3), lambda v: v.flip(3)),
        3: (lambda v: torch.rot90(v, 1, (3, 4)), lambda v: torch.rot90(v, -1, (3, 4))),
    }
    with torch.no_grad():
        losses = torch.stack([_dice_fg(forward[i][1](net(forward[i][0](xv))), yv) for i in idx.tolist()])
    assert out["test_time_loss"] == pytest.approx(float(losses.mean()), rel=1e-5)
    z = len(idx)
    counts = (idx[:, None] == idx[None, :]).sum(1).float()  # per-transform normalisation
    soft = tea.weights(idx, generator=torch.Generator().manual_seed(5)).soft[0]  # the same re-drawn soft sample
    onehot = F.one_hot(idx, len(names)).float()
    yk = soft.gather(1, idx[:, None])

    def gradient(losses: torch.Tensor) -> torch.Tensor:
        g = (losses - losses.mean()) / z  # d (sum w_z L_z / sum w) / d w_z at w = 1
        g = g - g.mean()  # baseline
        return ((g / counts)[:, None] * yk * (onehot - soft)).sum(0)  # d ST_k / d beta = y_k (e_k - y)

    expected = gradient(losses)
    assert float(expected.abs().max()) > 1e-8
    # The gradient is a difference of float32 losses about 1e-3 apart, from the learner's batched forward and the
    # loop's one-transform forwards: their last-bit differences (which depend on the CPU's kernels) are ~1e-4 of it.
    # The tolerance still resolves a change of 1e-4 in one transform's loss.
    tol = {"rtol": 1e-3, "atol": 1e-3 * float(expected.abs().max())}
    torch.testing.assert_close(got, expected.float(), **tol)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(got, gradient(losses + torch.tensor([1e-4, 0, 0, 0, 0, 0])).float(), **tol)
    assert learner.steps == 1 and net.training  # mode restored


def test_step_masks_padding_skips_nan_and_steps_the_scheduler():
    torch.manual_seed(0)
    net = NormSeg(None)
    tea = TestTimePolicy(TestTimeTransformPool(["identity", "scale+0.45"]))
    optimizer = torch.optim.Adam(tea.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=4, power=1.0)
    learner = TestTimePolicyLearner(tea, optimizer=optimizer, lr_scheduler=scheduler, patches=None)
    xv, yv = _data(2)
    out = learner.step(net, (xv, yv), indices=torch.tensor([1]))
    pool = tea.pool
    with torch.no_grad():
        pred = torch.stack([pool.inverse(net(pool.forward(v, 1)[None])[0], 1) for v in xv])
    mask = (pool.coverage(SHAPE, 1) > 0).float()[None].expand(B, -1, -1, -1, -1)
    assert float(mask.mean()) < 0.99  # magnified content leaves the field of view
    assert out["test_time_loss"] == pytest.approx(float(foreground_dice_loss(pred, yv, mask)), rel=1e-5)
    assert out["test_time_loss"] != pytest.approx(float(foreground_dice_loss(pred, yv)), rel=1e-5)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * 3 / 4)
    xv[:, :, 0] = float("nan")
    logits = tea.logits.detach().clone()
    adam_steps = float(optimizer.state[tea.logits]["step"])
    out = learner.step(net, (xv, yv))
    assert out["test_time_skipped"] == 1.0 and learner.skipped == 1 and learner.steps == 2
    assert torch.equal(tea.logits, logits) and tea.logits.grad is None
    assert float(optimizer.state[tea.logits]["step"]) == adam_steps  # no Adam step


def test_step_uses_foreground_patches_first():
    learner = TestTimePolicyLearner(TestTimePolicy(TestTimeTransformPool(["identity"])))
    x, y = _data(3)
    y[[0, 1, 3]] = 0
    xs, ys = learner._patches(x, y)
    assert torch.equal(xs, x[2:3]) and torch.equal(ys, y[2:3])
    learner.patches = 3
    assert torch.equal(learner._patches(x, y)[0], x[[2, 0, 1]])
    seen: list[torch.Tensor] = []
    net = NormSeg()
    net.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    learner.step(net, (x, y), indices=torch.tensor([0]))
    assert torch.equal(seen[0], x[[2, 0, 1]])  # the identity transform: the selected patches themselves


def test_uses_batch_statistics():
    assert not _uses_batch_statistics(NormSeg(nn.InstanceNorm3d)) and not _uses_batch_statistics(NormSeg(None))
    bn = NormSeg(nn.BatchNorm3d)
    assert _uses_batch_statistics(bn) and not _uses_batch_statistics(bn.eval())
    bn.norm.track_running_stats = False  # batch statistics in eval mode too
    assert _uses_batch_statistics(bn)


@pytest.mark.parametrize("norm", [nn.InstanceNorm3d, nn.BatchNorm3d])
def test_batched_step_equals_the_per_transform_loop(norm):
    """One forward pass per patch shape (or per chunk) gives the loop's losses and policy gradient (to 1e-6)."""
    torch.manual_seed(0)
    net = NormSeg(norm, out_channels=3)
    if norm is nn.BatchNorm3d:  # running statistics that differ from the identity (the TEA runs in eval mode)
        net.train()
        with torch.no_grad():
            for _ in range(3):
                net(torch.randn(4, 1, 8, 8, 6) * 2 + 1)
    names = ["identity", "scale+0.25", "rotate_x+15", "mirror_y", "rot90_yz+", "rot90_xz-", "gamma+0.3", "blur_0.7"]
    g = torch.Generator().manual_seed(3)
    xv, yv = torch.randn(3, 1, 8, 8, 6, generator=g), torch.randint(0, 3, (3, 1, 8, 8, 6), generator=g)
    idx = torch.tensor([4, 1, 4, 2, 3, 5, 0, 6, 7, 1])  # non-square rot90 planes change the patch shape; repeats
    pool = TestTimeTransformPool(names)
    with torch.no_grad():
        net.eval()
        losses = []
        for t in idx.tolist():  # the per-transform, per-patch loop, written out
            pred = torch.stack([pool.inverse(net(pool.forward(v, t)[None])[0], t) for v in xv])
            cover = pool.coverage(xv.shape[2:], t)
            mask = None if cover is None else (cover > 0).float()[None].expand(3, -1, -1, -1, -1)
            losses.append(foreground_dice_loss(pred, yv, mask))
        net.train()
    expected = float(torch.stack(losses).mean())
    grads, calls = {}, {}
    for size in (None, 4, 1):
        learner, tea = _learner(names, size)
        seen: list[int] = []
        handle = net.register_forward_hook(lambda m, i, o, seen=seen: seen.append(i[0].shape[0]))
        out = learner.step(net, (xv, yv), indices=idx, generator=torch.Generator().manual_seed(5))
        handle.remove()
        assert out["test_time_loss"] == pytest.approx(expected, rel=1e-6, abs=1e-6)
        grads[size], calls[size] = tea.logits.grad.detach().clone(), seen
        assert net.training
    for size in (4, 1):
        torch.testing.assert_close(grads[size], grads[None], rtol=1e-6, atol=1e-7)
    assert float(grads[None].abs().max()) > 1e-6
    # 8 distinct transforms x 3 patches: shapes (8, 8, 6) x 6 transforms, (8, 6, 8) and (6, 8, 8) x 1 each
    assert sorted(calls[None]) == [3, 3, 18] and sum(calls[4]) == sum(calls[1]) == 24 and max(calls[4]) == 4
    assert calls[1] == [1] * 24


@pytest.mark.parametrize("norm", [nn.InstanceNorm3d, nn.BatchNorm3d])
def test_transformed_validation_draws_from_the_current_policy(norm):
    torch.manual_seed(0)
    learner, tea = _learner(["identity", "mirror_x", "scale+0.45"], init={"scale+0.45": 1.0})  # every draw: the zoom
    zoom, mirror = tea.pool.index("scale+0.45"), tea.pool.index("mirror_x")
    net = NormSeg(norm).train()
    xv, _ = _data(4, b=5)
    view = learner.transformed_validation(net, xv)
    assert view.transforms == [zoom] * 5 and view.pool is tea.pool
    cover = (tea.pool.coverage(SHAPE, zoom) > 0).float()
    torch.testing.assert_close(view.mask, cover[None].expand(5, -1, -1, -1, -1))
    assert float(view.mask.mean()) < 0.99  # magnified content leaves the field of view
    assert view.size == (1 if norm is nn.BatchNorm3d else 5)  # batch statistics: one patch per forward pass
    with torch.no_grad():
        expected = torch.stack([tea.pool.inverse(net(tea.pool.forward(v, zoom)[None])[0], zoom) for v in xv])
        torch.testing.assert_close(view.predict(net, xv), expected, rtol=1e-5, atol=1e-6)
        logits = torch.zeros(3)
        logits[mirror] = 30.0
        tea.logits.copy_(logits)  # the policy moves: the draws follow its current probabilities
    assert learner.transformed_validation(net, xv).transforms == [mirror] * 5
    assert learner.transformed_validation(net, xv).mask is None  # a mirror keeps the whole field of view
    assert _learner(["identity"], batch_size=2)[0].transformed_validation(net.eval(), xv).size == 2


def test_state_dict_round_trip_with_weights_only():
    names = ["identity", "mirror_x", "mirror_y"]
    learner, tea = _learner(names, optimizer=None)
    learner.step(NormSeg(), _data(2))
    buf = io.BytesIO()
    torch.save(learner.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert set(state) == {"policy", "optimizer", "steps", "skipped"}
    other, tea2 = _learner(names, optimizer=None)
    other.load_state_dict(state)
    assert torch.equal(tea2.logits, tea.logits) and other.steps == 1 and other.optimizer.state
    with pytest.raises(ValueError):
        _learner(["identity", "mirror_x"], optimizer=None)[0].load_state_dict(state)  # another pool
