# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Learned augmentation in the trainer: the TRA meta step, the TEA step and their schedule.

Methods.md 3.4-3.6. Tiny smooth (tanh) networks on 8^3 patches, checked against unrolled autograd and hand-written
losses.
"""

from __future__ import annotations

import copy
import io
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from torch import nn
from torch.func import functional_call

from monai_imbalance.augment import (
    AugmentationPolicy,
    SharedPolicyProbabilities,
    TestTimePolicy,
    TestTimeTransformPool,
    TrainingTransformPool,
)
from monai_imbalance.engines import (
    AugmentationPolicyIteration,
    AugmentationPolicyLearner,
    RegularisedSupervisedTrainer,
    foreground_dice_loss,
    per_sample_ce_dice,
)

torch.set_num_threads(1)

SHAPE = (8, 8, 8)
B = 4


class TinySeg(nn.Module):
    """A smooth (tanh) tiny segmenter."""

    def __init__(self, out_channels: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(1, 3, 3, padding=1)
        self.conv2 = nn.Conv3d(3, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.tanh(self.conv1(x)))


def _data(seed: int, c: int = 2, b: int = B) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 1, *SHAPE, generator=g)
    y = torch.randint(0, c, (b, 1, *SHAPE), generator=g)
    return x, y


def _bins(policy: AugmentationPolicy, seed: int, b: int = B) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    bins = torch.stack([torch.randint(0, k, (b,), generator=g) for k in policy.pool.num_bins], 1)
    return bins, torch.tensor([0, 1] * (b // 2))


def _mse_per_sample(pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    target = F.one_hot(label[:, 0].long(), pred.shape[1]).movedim(-1, 1).to(pred.dtype)
    return ((torch.softmax(pred, 1) - target) ** 2).flatten(1).mean(1)


def _learner(**kw) -> AugmentationPolicyLearner:
    x, y = _data(100)
    kw.setdefault("validation_loader", [{"image": x, "label": y}])
    kw.setdefault("policy", AugmentationPolicy())
    return AugmentationPolicyLearner(num_classes=2, **kw)


@pytest.mark.parametrize(
    "config, match",
    [
        ({"policy": None}, "policy"),
        ({"meta_interval": 0}, "meta_interval"),
        ({"warmup_epochs": -1}, "warmup_epochs"),
        ({"num_test_time_samples": 0}, "num_test_time_samples"),
        ({"validation_loss": "bce"}, "validation_loss"),
        ({"validation_loss": 3}, "validation_loss"),
        ({"method": "hessian"}, "method"),
        ({"r": 0}, " r "),
        ({"meta_lr": -1.0}, "meta_lr"),
        ({"validation_loader": None}, "validation_loader"),
        ({"baseline": "yes"}, "baseline"),
        ({"bins_key": 3}, "bins_key"),
        ({"unknown_key": 1}, "unknown_key"),
    ],
)
def test_bad_settings_are_named(config, match):
    x, y = _data(0)
    base = {"num_classes": 2, "policy": AugmentationPolicy(), "validation_loader": [{"image": x, "label": y}]}
    with pytest.raises(ValueError, match=match):
        AugmentationPolicyLearner.from_mapping({**base, **config})
    with pytest.raises(ValueError, match="num_classes"):
        AugmentationPolicyLearner.from_mapping({"policy": AugmentationPolicy()})


def test_defaults_follow_the_paper():
    learner = _learner(test_time_policy=TestTimePolicy(TestTimeTransformPool(["identity", "mirror_x"])))
    assert learner.validation_loss == "ce_dice" and learner.meta_interval == 1 and learner.num_test_time_samples == 10
    assert isinstance(learner.optimizer, torch.optim.Adam) and learner.optimizer.defaults["lr"] == 5e-4
    assert learner.test_time_optimizer.defaults["lr"] == 5e-5
    assert _learner(validation_loss=1).validation_loss == "dice"  # the authors' softdsc numbers
    assert learner.reuse_lookahead_gradient is None and learner.test_time_batch_size is None  # automatic, all at once
    assert learner.method == "forward_difference" and learner.r is None  # one-sided, r = DEFAULT_RADIUS (1e-3)


def test_per_sample_ce_dice_by_hand():
    pred = torch.randn(2, 3, *SHAPE)
    _, label = _data(1, c=3, b=2)
    p = torch.softmax(pred, 1)
    t = F.one_hot(label[:, 0], 3).movedim(-1, 1).float()
    ce = -(t * torch.log_softmax(pred, 1)).sum(1).flatten(1).mean(1)
    inter, denom = (p * t).flatten(2).sum(2), (p + t).flatten(2).sum(2)
    dice = 1 - (2 * inter + 1e-5) / (denom + 1e-5)  # (B, C)
    torch.testing.assert_close(per_sample_ce_dice(pred, label), ce + dice[:, 1:].mean(1))
    # batch Dice over every foreground class, with a mask
    mask = (torch.rand(1, 1, *SHAPE) > 0.3).float()
    inter_b, denom_b = (p * t * mask).sum((0, 2, 3, 4)), ((p + t) * mask).sum((0, 2, 3, 4))
    expected = 1 - ((2 * inter_b + 1e-5) / (denom_b + 1e-5))[1:].mean()
    torch.testing.assert_close(foreground_dice_loss(pred, label, mask.expand(2, -1, -1, -1, -1)), expected)


def _unrolled_policy_gradient(net, policy, bins, groups, seed, x, y, xv, yv, lr):
    """d L_val(theta - lr grad L_tr(theta, w(alpha))) / d alpha by autograd through the unrolled step."""
    policy.zero_grad(set_to_none=True)
    w = policy.weights(bins, groups, generator=torch.Generator().manual_seed(seed)).weight
    theta = dict(net.named_parameters())
    l_tr = (w * _mse_per_sample(functional_call(net, theta, (x,)), y)).mean()
    g = torch.autograd.grad(l_tr, list(theta.values()), create_graph=True)
    theta_p = {k: v - lr * gi for (k, v), gi in zip(theta.items(), g, strict=True)}
    F.cross_entropy(functional_call(net, theta_p, (xv,)), yv[:, 0]).backward(inputs=list(policy.parameters()))
    return {n: p.grad.detach().clone() for n, p in policy.named_parameters()}


@pytest.mark.parametrize("method, rtol", [("exact", 1e-4), ("finite_difference", 1e-3)])
def test_tra_step_follows_the_unrolled_hypergradient(method, rtol):
    torch.manual_seed(0)
    net, policy = TinySeg(), AugmentationPolicy()
    x, y = _data(1)
    xv, yv = _data(2)
    bins, groups = _bins(policy, 3)
    learner = _learner(
        policy=policy,
        optimizer=torch.optim.SGD(policy.parameters(), lr=0.0),
        method=method,
        baseline=False,
        normalize=False,
        meta_lr=0.5,
        loss_function=_mse_per_sample,
        validation_loss="ce",
    )
    seg_opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = [p.detach().clone() for p in net.parameters()]
    out = learner.meta_step(net, seg_opt, x, y, bins, groups, (xv, yv), generator=torch.Generator().manual_seed(7))
    got = {n: p.grad.detach().clone() for n, p in policy.named_parameters()}
    assert out["policy_meta_skipped"] == 0.0 and learner.steps == 1 and learner.skipped == 0
    assert all(torch.equal(a, p) for a, p in zip(before, net.parameters(), strict=True))  # segmenter untouched
    expected = _unrolled_policy_gradient(net, policy, bins, groups, 7, x, y, xv, yv, 0.5)
    flat_got = torch.cat([got[n] for n in expected])
    flat_exp = torch.cat(list(expected.values()))
    assert float(flat_exp.abs().max()) > 1e-7
    assert float((flat_got - flat_exp).norm() / flat_exp.norm()) < rtol


def test_tra_step_skips_nan_and_leaves_the_policy(caplog):
    torch.manual_seed(0)
    net, policy = TinySeg(), AugmentationPolicy()
    shared = SharedPolicyProbabilities(policy)
    learner = _learner(policy=policy, shared=shared)
    x, y = _data(1)
    x[0, 0, 0, 0, 0] = float("nan")
    bins, groups = _bins(policy, 3)
    logits = [p.detach().clone() for p in policy.parameters()]
    version = shared.version
    with caplog.at_level(logging.WARNING):
        out = learner.meta_step(net, torch.optim.SGD(net.parameters(), lr=0.1), x, y, bins, groups, _data(2))
    assert out["policy_meta_skipped"] == 1.0 and learner.skipped == 1 and learner.steps == 1
    assert all(torch.equal(a, p) for a, p in zip(logits, policy.parameters(), strict=True))
    assert not learner.optimizer.state and shared.version == version
    assert all(p.grad is None for p in policy.parameters())
    assert "skipped (nonfinite_train_grad)" in caplog.text


def test_tra_step_with_baseline_updates_policy_and_shared_table():
    torch.manual_seed(0)
    net, policy = TinySeg(), AugmentationPolicy()
    shared = SharedPolicyProbabilities(policy)
    tea = TestTimePolicy(TestTimeTransformPool(["identity", "mirror_x", "rot90_yz+", "scale+0.05"]))
    learner = _learner(policy=policy, shared=shared, test_time_policy=tea)  # validation through the TEA policy
    bins, groups = _bins(policy, 3)
    before = policy.probability_matrix()
    out = learner.meta_step(net, torch.optim.SGD(net.parameters(), lr=0.1), *_data(1), bins, groups, _data(2))
    assert out["policy_meta_skipped"] == 0.0
    after = policy.probability_matrix()
    assert not torch.equal(before, after)
    assert torch.equal(shared._table, after) and shared.version == 4  # initial write + one update


def _dice_fg(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(pred, 1)
    t = F.one_hot(y[:, 0], pred.shape[1]).movedim(-1, 1).float()
    inter, denom = (p * t).sum((0, 2, 3, 4)), (p + t).sum((0, 2, 3, 4))
    return 1 - ((2 * inter + 1e-5) / (denom + 1e-5))[1:].mean()


def test_tea_step_gradient_matches_hand_computation():
    torch.manual_seed(0)
    net = TinySeg(out_channels=3)
    names = ["identity", "mirror_x", "mirror_y", "rot90_yz+"]
    learner, tea = _tea_learner(net, None, names)  # the whole batch, all patches in one forward
    xv, yv = _data(2, c=3)
    idx = torch.tensor([1, 1, 3, 0, 2, 1])
    out = learner.test_time_step(net, (xv, yv), indices=idx, generator=torch.Generator().manual_seed(5))
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
    assert learner.test_time_steps == 1 and net.training  # mode restored


def test_tea_step_masks_padding_and_skips_nan():
    torch.manual_seed(0)
    net = TinySeg()
    tea = TestTimePolicy(TestTimeTransformPool(["identity", "scale+0.45"]))
    learner = AugmentationPolicyLearner(
        num_classes=2, test_time_policy=tea, validation_loader=[{}], test_time_patches=None
    )
    xv, yv = _data(2)
    out = learner.test_time_step(net, (xv, yv), indices=torch.tensor([1]))
    pool = tea.pool
    with torch.no_grad():
        pred = torch.stack([pool.inverse(net(pool.forward(v, 1)[None])[0], 1) for v in xv])
    mask = (pool.coverage(SHAPE, 1) > 0).float()[None].expand(B, -1, -1, -1, -1)
    assert float(mask.mean()) < 0.99  # magnified content leaves the field of view
    assert out["test_time_loss"] == pytest.approx(float(foreground_dice_loss(pred, yv, mask)), rel=1e-5)
    xv[:, :, 0] = float("nan")
    logits = tea.logits.detach().clone()
    adam_steps = float(learner.test_time_optimizer.state[tea.logits]["step"])
    out = learner.test_time_step(net, (xv, yv))
    assert out["test_time_skipped"] == 1.0 and learner.test_time_skipped == 1
    assert torch.equal(tea.logits, logits) and tea.logits.grad is None
    assert float(learner.test_time_optimizer.state[tea.logits]["step"]) == adam_steps  # no Adam step


def test_tea_uses_foreground_patches_first():
    learner = _learner(policy=None, test_time_policy=TestTimePolicy(TestTimeTransformPool(["identity"])))
    x, y = _data(3)
    y[[0, 1, 3]] = 0
    xs, ys = learner._test_time_patches(x, y)
    assert torch.equal(xs, x[2:3]) and torch.equal(ys, y[2:3])
    learner.test_time_patches = 3
    assert torch.equal(learner._test_time_patches(x, y)[0], x[[2, 0, 1]])


def test_tra_validation_through_tea_masks_the_padding():
    torch.manual_seed(0)
    net, policy = TinySeg(), AugmentationPolicy()
    tea = TestTimePolicy(TestTimeTransformPool(["identity", "scale+0.45"]), init={"scale+0.45": 1.0})
    learner = _learner(policy=policy, test_time_policy=tea, validation_loss="ce", meta_lr=1e-9)
    xv, yv = _data(2)
    out = learner.meta_step(net, torch.optim.SGD(net.parameters(), lr=0.1), *_data(1), *_bins(policy, 3), (xv, yv))
    pool = tea.pool
    with torch.no_grad():
        pred = torch.stack([pool.inverse(net(pool.forward(v, 1)[None])[0], 1) for v in xv])
    mask = (pool.coverage(SHAPE, 1) > 0).float()
    ce = F.cross_entropy(pred, yv[:, 0], reduction="none")
    expected = (ce * mask).sum() / (mask.sum() * B)  # meta_lr ~ 0: L_val at theta
    assert out["policy_meta_loss"] == pytest.approx(float(expected), rel=1e-5)


def _training_batches(policy: AugmentationPolicy, n: int) -> list[dict[str, torch.Tensor]]:
    out = []
    for i in range(n):
        x, y = _data(10 + i, b=2)
        bins, groups = _bins(policy, 20 + i, b=2)
        out.append({"image": x, "label": y, "policy_bins": bins, "policy_group": groups})
    return out


def test_trainer_runs_the_schedule_and_keeps_the_segmenter_step():
    torch.manual_seed(0)
    net, policy = TinySeg(), AugmentationPolicy()
    plain_net = copy.deepcopy(net)
    shared = SharedPolicyProbabilities(policy)
    tea = TestTimePolicy(TestTimeTransformPool(["identity", "mirror_x", "mirror_y"]))
    data = _training_batches(policy, 3)
    val = [{"image": _data(30 + i, b=2)[0], "label": _data(30 + i, b=2)[1]} for i in range(2)]
    config = {
        "num_classes": 2,
        "policy": policy,
        "shared": shared,
        "test_time_policy": tea,
        "validation_loader": val,
        "meta_interval": 2,
        "test_time_interval": 3,
        "warmup_epochs": 1,
        "num_test_time_samples": 3,
    }

    def loss(pred, label):
        return per_sample_ce_dice(pred, label).mean()

    hook = AugmentationPolicyIteration(config)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=2,
        train_data_loader=data,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_function=loss,
        iteration_update=hook,
    )
    seen = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(dict(e.state.output[0])))
    version, tea_before = shared.version, tea.logits.detach().clone()
    trainer.run()
    learner = hook.learner
    # iterations 1-3 are epoch 1 (TRA warm-up), 4-6 epoch 2: TRA at 4, 6; TEA at 3, 6
    assert [("policy_meta_loss" in o) for o in seen] == [False, False, False, True, False, True]
    assert [("test_time_loss" in o) for o in seen] == [False, False, True, False, False, True]
    assert learner.steps == 2 and learner.test_time_steps == 2 and learner.skipped == 0
    assert shared.version == version + 2 * 2 + 2  # STARTED refresh + two updates
    assert torch.equal(shared._table, policy.probability_matrix())
    assert not torch.equal(tea.logits, tea_before)

    plain = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=2,
        train_data_loader=data,
        network=plain_net,
        optimizer=torch.optim.SGD(plain_net.parameters(), lr=0.1),
        loss_function=loss,
    )
    plain.run()
    for a, b in zip(net.parameters(), plain_net.parameters(), strict=True):
        torch.testing.assert_close(a, b)  # the policy steps leave the segmenter's own step unchanged


def test_trainer_needs_the_recorded_bins():
    net = TinySeg()
    x, y = _data(1, b=2)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=[{"image": x, "label": y}],
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_function=lambda p, t: per_sample_ce_dice(p, t).mean(),
        iteration_update=AugmentationPolicyIteration(_learner()),
    )
    with pytest.raises(ValueError, match="policy_bins"):
        trainer.run()


def test_state_dict_round_trip_with_weights_only():
    policy = AugmentationPolicy()
    tea = TestTimePolicy(TestTimeTransformPool(["identity", "mirror_x"]))
    learner = _learner(policy=policy, test_time_policy=tea)
    net = TinySeg()
    learner.meta_step(net, torch.optim.SGD(net.parameters(), lr=0.1), *_data(1), *_bins(policy, 3), _data(2))
    learner.test_time_step(net, _data(2))
    buf = io.BytesIO()
    torch.save(learner.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    policy2 = AugmentationPolicy()
    shared2 = SharedPolicyProbabilities(policy2)
    other = _learner(policy=policy2, shared=shared2, test_time_policy=TestTimePolicy(copy.deepcopy(tea.pool)))
    other.load_state_dict(state)
    assert torch.equal(policy2.probability_matrix(), policy.probability_matrix())
    assert torch.equal(other.test_time_policy.logits, tea.logits)
    assert torch.equal(shared2._table, policy.probability_matrix())
    assert other.steps == 1 and other.test_time_steps == 1 and other.optimizer.state
    with pytest.raises(ValueError, match="test_time_policy"):
        _learner(policy=AugmentationPolicy()).load_state_dict(state)


class _ToyLoader:
    """Smooth-noise patches labelled by a threshold; bins drawn from the shared table, as a loader worker would.

    ``mirror_x`` flips the image only (it corrupts the label alignment); ``mirror_y`` flips image and label (harmless).
    """

    def __init__(self, shared: SharedPolicyProbabilities, length: int, batch: int = 8) -> None:
        self.shared, self.length, self.batch = shared, length, batch
        self.rng = np.random.RandomState(0)
        self.gen = torch.Generator().manual_seed(0)

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        for _ in range(self.length):
            x, y = _toy_patches(self.batch, self.gen)
            bins = torch.as_tensor(np.stack([self.shared.sample_bins(0, self.rng) for _ in x]))
            fx, fy = (bins[:, 0] == 1).view(-1, 1, 1, 1, 1), (bins[:, 1] == 1).view(-1, 1, 1, 1, 1)
            x = torch.where(fx, x.flip(2), x)
            x, y = torch.where(fy, x.flip(3), x), torch.where(fy, y.flip(3), y)
            yield {"image": x, "label": y, "policy_bins": bins, "policy_group": torch.zeros(len(x), dtype=torch.long)}


def _toy_patches(b: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = F.avg_pool3d(torch.randn(b, 1, *SHAPE, generator=gen), 3, 1, 1) * 3
    return x, (x > 0.3).long()


def test_toy_a_harmful_op_loses_probability():
    """Must hold (issue 6): an op that corrupts the label alignment loses probability in a few hundred iterations."""
    torch.manual_seed(0)
    policy = AugmentationPolicy(TrainingTransformPool(["mirror_x", "mirror_y"]), groups={"all": None}, init=0)
    shared = SharedPolicyProbabilities(policy)
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv3d(4, 2, 1))
    val_x, val_y = _toy_patches(8, torch.Generator().manual_seed(1))
    hook = AugmentationPolicyIteration(
        {
            "num_classes": 2,
            "policy": policy,
            "optimizer": torch.optim.Adam(policy.parameters(), lr=1e-2),  # toy scale: 200 iterations, not 200k
            "shared": shared,
            "validation_loader": [{"image": val_x, "label": val_y}],
        }
    )
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=4,
        train_data_loader=_ToyLoader(shared, 50),
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9),
        loss_function=lambda p, t: per_sample_ce_dice(p, t).mean(),
        iteration_update=hook,
    )
    trainer.run()
    probs = policy.probabilities()["all"]
    assert hook.learner.steps == 200 and hook.learner.skipped == 0
    assert float(probs["mirror_x"][1]) < 0.25  # from 0.5
    assert 0.35 < float(probs["mirror_y"][1]) < 0.65  # the harmless flip stays near 0.5
    print("toy P(flip):", float(probs["mirror_x"][1]), float(probs["mirror_y"][1]))
    torch.testing.assert_close(shared.read(0), policy.probability_matrix()[0].double().numpy())


def test_trainer_from_a_bundle_style_config():
    from monai.bundle import ConfigParser

    x, y = _data(1, b=2)
    config = {
        "network": "$torch.nn.Conv3d(1, 2, 3, padding=1)",
        "policy": {"_target_": "monai_imbalance.augment.AugmentationPolicy", "init": "nnunet"},
        "shared_policy": {"_target_": "monai_imbalance.augment.SharedPolicyProbabilities", "policy": "@policy"},
        "policy_optimizer": "$torch.optim.Adam(@policy.parameters(), lr=5e-4)",
        "train_data": "$[]",
        "validation_data": "$[]",
        "augmentation_learner": {
            "_target_": "monai_imbalance.engines.AugmentationPolicyLearner",
            "num_classes": 2,
            "policy": "@policy",
            "optimizer": "@policy_optimizer",
            "shared": "@shared_policy",
            "validation_loader": "@validation_data",
            "meta_interval": 1,
            "validation_loss": 2,
        },
        "trainer": {
            "_target_": "monai.engines.SupervisedTrainer",
            "device": "$torch.device('cpu')",
            "max_epochs": 1,
            "train_data_loader": "@train_data",
            "network": "@network",
            "optimizer": "$torch.optim.SGD(@network.parameters(), lr=0.1)",
            "loss_function": "$monai.losses.DiceCELoss(to_onehot_y=True, softmax=True)",
            "iteration_update": {
                "_target_": "monai_imbalance.engines.AugmentationPolicyIteration",
                "learner": "@augmentation_learner",
            },
        },
    }
    parser = ConfigParser(config)
    bins = _bins(AugmentationPolicy(), 0, 2)[0]
    groups = torch.tensor([1, 1])  # one group: the per-group baseline leaves a signal
    parser["train_data"] = [{"image": x, "label": y, "policy_bins": bins, "policy_group": groups}]
    parser["validation_data"] = [{"image": x, "label": y}]
    trainer = parser.get_parsed_content("trainer")
    before = parser.get_parsed_content("policy").probability_matrix()
    trainer.run()
    learner = parser.get_parsed_content("augmentation_learner")
    assert learner.steps == 1 and learner.validation_loss == "ce_dice" and learner.optimizer.defaults["lr"] == 5e-4
    assert learner.shared is parser.get_parsed_content("shared_policy")
    assert not torch.equal(before, learner.policy.probability_matrix())


# -- cost: step 1 of a TRA iteration from the look-ahead, batched TEA ---------------------------------------------
class NormSeg(nn.Module):
    """A tiny segmenter with a normalisation layer (``nn.InstanceNorm3d`` or ``nn.BatchNorm3d``)."""

    def __init__(self, norm: type[nn.Module] = nn.InstanceNorm3d, out_channels: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(1, 3, 3, padding=1)
        self.norm = norm(3, affine=True)
        self.conv2 = nn.Conv3d(3, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.tanh(self.norm(self.conv1(x))))


def _bundle_loss():
    """The bundle's training loss (train.json): the batch mean of per_sample_ce_dice on equal-sized patches."""
    from monai.losses import DiceCELoss

    return DiceCELoss(include_background=False, to_onehot_y=True, softmax=True)


def _policy_trainer(net, loss, reuse, epochs=2, seed=0, trainer_cls=SupervisedTrainer, **kw):
    """A trainer with TRA (every iteration) and TEA (every 2nd), identical data and seeds for each call."""
    torch.manual_seed(seed)
    policy = AugmentationPolicy()
    tea = TestTimePolicy(TestTimeTransformPool(["identity", "mirror_x", "rot90_yz+", "scale+0.05"]))
    val = [{"image": _data(30 + i, b=2)[0], "label": _data(30 + i, b=2)[1]} for i in range(2)]
    config = {
        "num_classes": 2,
        "policy": policy,
        "optimizer": torch.optim.Adam(policy.parameters(), lr=1e-1),
        "test_time_policy": tea,
        "validation_loader": val,
        "test_time_interval": 2,
        "num_test_time_samples": 3,
        "reuse_lookahead_gradient": reuse,
    }
    hook = AugmentationPolicyIteration(config)
    trainer = trainer_cls(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=_training_batches(policy, 3),
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9),
        loss_function=loss,
        iteration_update=hook,
        **kw,
    )
    trainer.policy_learner = hook.learner  # for the assertions
    outputs, forwards = [], []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(dict(e.state.output[0])))
    net.register_forward_hook(lambda *_: forwards.append(1))
    return trainer, outputs, forwards


@pytest.mark.parametrize("norm", [nn.InstanceNorm3d, nn.BatchNorm3d])
def test_reused_step_equals_the_separate_normal_step(norm):
    """The default reuses the look-ahead's pass at theta; the training is that of a separate normal step (to 1e-6)."""
    torch.manual_seed(1)
    net = NormSeg(norm)
    twins = {reuse: _policy_trainer(copy.deepcopy(net), _bundle_loss(), reuse) for reuse in (None, False)}
    for trainer, _, _ in twins.values():
        torch.manual_seed(3)  # the same draws (TEA transforms, Gumbel noise) in both runs
        trainer.run()
    (reused, out_r, fwd_r), (plain, out_p, fwd_p) = twins[None], twins[False]
    assert reused.policy_learner.reuses_lookahead_gradient and not plain.policy_learner.reuses_lookahead_gradient
    assert reused.policy_learner.steps == plain.policy_learner.steps == 6
    assert len(fwd_p) - len(fwd_r) == 6  # one segmenter forward pass fewer per TRA iteration
    for a, b in zip(out_r, out_p, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-6 and a["policy_meta_loss"] == pytest.approx(b["policy_meta_loss"], 1e-5)
        torch.testing.assert_close(a["pred"], b["pred"], rtol=1e-6, atol=1e-6)
    for a, b in zip(reused.network.state_dict().values(), plain.network.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)  # parameters and BatchNorm running statistics
    if norm is nn.BatchNorm3d:
        assert int(reused.network.norm.num_batches_tracked) == 6  # step 1's forward pass, once per iteration
    pr, pp = reused.policy_learner, plain.policy_learner
    torch.testing.assert_close(pr.policy.probability_matrix(), pp.policy.probability_matrix(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(pr.test_time_policy.logits, pp.test_time_policy.logits, rtol=1e-5, atol=1e-7)


def test_reused_step_is_an_sgd_step_on_the_bundle_loss():
    """An independent step: SGD on DiceCELoss of the batch at theta, by autograd on a copy of the network."""
    torch.manual_seed(2)
    net = NormSeg()
    reference = copy.deepcopy(net)
    trainer, outputs, _ = _policy_trainer(net, _bundle_loss(), None, epochs=1, epoch_length=1)
    batch = trainer.data_loader[0]
    ref_loss = _bundle_loss()(reference(batch["image"]), batch["label"])
    ref_loss.backward()
    trainer.run()
    assert trainer.policy_learner.steps == 1 and abs(outputs[0]["loss"] - float(ref_loss.detach())) < 1e-6
    for p, r in zip(trainer.network.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, r - 0.5 * r.grad, rtol=1e-6, atol=1e-6)  # SGD, lr 0.5, first momentum step


def test_reuse_checks_the_loss_and_the_trainer(caplog):
    from monai.inferers import SlidingWindowInferer
    from monai.losses import DiceCELoss

    # a trainer loss other than the batch mean of the learner's per-sample loss (batch Dice): no reuse
    batch_dice = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)
    net = NormSeg()
    auto, out_a, fwd_a = _policy_trainer(copy.deepcopy(net), batch_dice, None, epochs=1)
    plain, out_p, fwd_p = _policy_trainer(copy.deepcopy(net), batch_dice, False, epochs=1)
    torch.manual_seed(3)
    with caplog.at_level(logging.WARNING):
        auto.run()
    torch.manual_seed(3)
    plain.run()
    assert caplog.text.count("have different gradients on the same prediction") == 1
    assert not auto.policy_learner.reuses_lookahead_gradient and len(fwd_a) == len(fwd_p)
    for a, b in zip(auto.network.parameters(), plain.network.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    required, _, _ = _policy_trainer(copy.deepcopy(net), batch_dice, True, epochs=1)
    with pytest.raises(ValueError, match="different gradients"):
        required.run()
    # trainer settings: automatic reuse switches off, a required one raises
    sliding = {"inferer": SlidingWindowInferer(roi_size=SHAPE)}
    trainer = _policy_trainer(NormSeg(), _bundle_loss(), None, epochs=1, epoch_length=1, **sliding)[0]
    trainer.run()
    assert not trainer.policy_learner.reuses_lookahead_gradient
    with pytest.raises(ValueError, match="SlidingWindowInferer"):
        _policy_trainer(NormSeg(), _bundle_loss(), True, **sliding)[0].run()
    with pytest.raises(ValueError, match="accumulation_steps"):
        _policy_trainer(NormSeg(), _bundle_loss(), True, accumulation_steps=2)[0].run()
    with pytest.raises(ValueError, match="extra steps \\(mixup\\)"):
        mixup = {"mixup": {"alpha": 0.2}, "trainer_cls": RegularisedSupervisedTrainer}
        _policy_trainer(NormSeg(), _bundle_loss(), True, **mixup)[0].run()
    learner = _learner(reuse_lookahead_gradient=None)
    assert not learner.resolve_reuse([], ["amp"]) and _learner(reuse_lookahead_gradient=True).resolve_reuse([], ["amp"])
    assert learner.resolve_reuse([], []) and not _learner(reuse_lookahead_gradient=False).resolve_reuse([], [])
    for bad in ({"reuse_lookahead_gradient": "yes"}, {"test_time_batch_size": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            _learner(**bad)


def test_uses_batch_statistics():
    from monai_imbalance.engines.augmentation_policy import _uses_batch_statistics

    assert not _uses_batch_statistics(NormSeg(nn.InstanceNorm3d)) and not _uses_batch_statistics(TinySeg())
    bn = NormSeg(nn.BatchNorm3d)
    assert _uses_batch_statistics(bn) and not _uses_batch_statistics(bn.eval())
    bn.norm.track_running_stats = False  # batch statistics in eval mode too
    assert _uses_batch_statistics(bn)


def _tea_learner(net, batch_size, names):
    tea = TestTimePolicy(TestTimeTransformPool(names), init=0)
    learner = AugmentationPolicyLearner(
        num_classes=3,
        test_time_policy=tea,
        test_time_optimizer=torch.optim.SGD(tea.parameters(), lr=0.0),
        validation_loader=[{}],
        test_time_patches=None,
        test_time_batch_size=batch_size,
    )
    return learner, tea


@pytest.mark.parametrize("norm", [nn.InstanceNorm3d, nn.BatchNorm3d])
def test_batched_tea_step_equals_the_per_transform_loop(norm):
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
        learner, tea = _tea_learner(net, size, names)
        seen: list[int] = []
        handle = net.register_forward_hook(lambda m, i, o, seen=seen: seen.append(i[0].shape[0]))
        out = learner.test_time_step(net, (xv, yv), indices=idx, generator=torch.Generator().manual_seed(5))
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


def test_batched_tra_validation_equals_per_patch():
    """The TEA-transformed TRA validation batch in one forward pass (instance norm): the per-patch result (1e-6)."""
    names = ["identity", "mirror_x", "rot90_yz+", "scale+0.05", "rotate_z-5"]
    results = {}
    for size in (None, 1):
        torch.manual_seed(0)
        net, policy = NormSeg(), AugmentationPolicy()
        tea = TestTimePolicy(TestTimeTransformPool(names), init=0)
        learner = _learner(
            policy=policy,
            optimizer=torch.optim.SGD(policy.parameters(), lr=0.0),
            test_time_policy=tea,
            test_time_batch_size=size,
            meta_lr=0.5,
        )
        torch.manual_seed(4)  # the validation transforms drawn from the TEA probabilities
        out = learner.meta_step(
            net,
            torch.optim.SGD(net.parameters(), lr=0.1),
            *_data(1),
            *_bins(policy, 3),
            _data(2, b=6),
            generator=torch.Generator().manual_seed(7),
        )
        results[size] = (out["policy_meta_loss"], torch.cat([p.grad.flatten() for p in policy.parameters()]))
    assert results[None][0] == pytest.approx(results[1][0], rel=1e-6)
    assert float(results[1][1].abs().max()) > 1e-7
    torch.testing.assert_close(results[None][1], results[1][1], rtol=1e-4, atol=1e-6)


def test_learned_augmentation_composes_with_the_mixup_step():
    """The policy hook on a ``RegularisedSupervisedTrainer``: policy steps, then step 1 and the mixup step."""
    torch.manual_seed(4)
    from monai_imbalance.losses import MarginFocalLoss

    mixup_loss = MarginFocalLoss(margin=0.0, gamma=0.0, rare_classes=None, lambda_dice=1.0, to_onehot_y=True)
    mixup = {
        "mixup": {"alpha": 0.2, "rare_classes": [1], "loss_function": mixup_loss},  # the bundle's asymmetric mixup
        "trainer_cls": RegularisedSupervisedTrainer,
    }
    trainer, outputs, forwards = _policy_trainer(NormSeg(), _bundle_loss(), None, epochs=1, **mixup)
    steps = []
    trainer.optimizer.register_step_post_hook(lambda *_: steps.append(1))
    trainer.run()
    learner = trainer.policy_learner
    assert learner.steps == 3 and learner.test_time_steps == 1 and learner.skipped == 0
    assert not learner.reuses_lookahead_gradient  # the extra step blocks the reuse of the look-ahead's pass
    assert len(steps) == 6  # step 1 and the mixup step of each iteration
    assert all({"policy_meta_loss", "loss_mixup", "mixup_lambda"} <= set(o) for o in outputs)
    assert [("test_time_loss" in o) for o in outputs] == [False, True, False]
