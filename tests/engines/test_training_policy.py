# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""The training-time policy learner alone (TRA; JCSAugment, Li et al., IEEE TMI 2023): settings, the meta step,
the look-ahead reuse and checkpoints.

Tiny smooth (tanh) networks on 8^3 patches, checked against unrolled autograd and hand-written losses.
"""

from __future__ import annotations

import io
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from monai_imbalance.augment import AugmentationPolicy, SharedPolicyProbabilities, TestTimeTransformPool
from monai_imbalance.engines import TrainingPolicyLearner, TransformedValidation, per_sample_ce_dice
from monai_imbalance.engines.lookahead import LookaheadTrainStep

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


class NormSeg(TinySeg):
    """The tiny segmenter with instance normalisation (each sample alone)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.InstanceNorm3d(3, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.tanh(self.norm(self.conv1(x))))


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


def _learner(**kw) -> TrainingPolicyLearner:
    kw.setdefault("policy", AugmentationPolicy())
    return TrainingPolicyLearner(**kw)


def _sgd(net: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(net.parameters(), lr=0.1)


@pytest.mark.parametrize(
    "config, match",
    [
        ({"policy": None}, "policy must be an AugmentationPolicy"),
        ({"interval": 0}, "interval"),
        ({"warmup_epochs": -1}, "warmup_epochs"),
        ({"validation_loss": "bce"}, "validation_loss"),
        ({"validation_loss": 3}, "validation_loss"),
        ({"method": "hessian"}, "method"),
        ({"r": 0}, " r "),
        ({"meta_lr": -1.0}, "meta_lr"),
        ({"baseline": "yes"}, "baseline"),
        ({"bins_key": 3}, "bins_key"),
        ({"shared": "table"}, "shared"),
        ({"loss_function": 3}, "loss_function"),
        ({"reuse_lookahead_gradient": "yes"}, "reuse_lookahead_gradient"),
        ({"unknown_key": 1}, "unknown_key"),
        ({"num_test_time_samples": 10}, "num_test_time_samples"),  # a TEA setting is not a TRA setting
    ],
)
def test_bad_settings_are_named(config, match):
    with pytest.raises(ValueError, match=match) as err:
        TrainingPolicyLearner.from_mapping({"policy": AugmentationPolicy(), **config})
    assert str(err.value).startswith("TrainingPolicyLearner")
    with pytest.raises(ValueError, match="TrainingPolicyLearner needs policy"):
        TrainingPolicyLearner.from_mapping({"interval": 1})


def test_defaults_follow_the_paper():
    learner = _learner()
    assert isinstance(learner.optimizer, torch.optim.Adam) and learner.optimizer.defaults["lr"] == 5e-4
    assert learner.optimizer.defaults["betas"] == (0.9, 0.999) and learner.optimizer.defaults["weight_decay"] == 0.0
    assert learner.validation_loss == "ce_dice" and learner.interval == 1 and learner.warmup_epochs == 0
    assert _learner(validation_loss=1).validation_loss == "dice"  # the authors' softdsc numbers
    assert learner.method == "forward_difference" and learner.r is None  # one-sided, r = DEFAULT_RADIUS (1e-3)
    assert learner.reuse_lookahead_gradient is None and learner.baseline and learner.normalize


def test_is_due_follows_the_interval_and_the_warmup():
    learner = _learner(interval=2, warmup_epochs=1)
    due = [(it, ep) for ep in (1, 2) for it in range(3 * ep - 2, 3 * ep + 1) if learner.is_due(it, ep)]
    assert due == [(4, 2), (6, 2)]


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
def test_meta_step_follows_the_unrolled_hypergradient(method, rtol):
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
    before = [p.detach().clone() for p in net.parameters()]
    out = learner.meta_step(net, _sgd(net), x, y, bins, groups, (xv, yv), generator=torch.Generator().manual_seed(7))
    got = {n: p.grad.detach().clone() for n, p in policy.named_parameters()}
    assert out["policy_meta_skipped"] == 0.0 and learner.steps == 1 and learner.skipped == 0
    assert all(torch.equal(a, p) for a, p in zip(before, net.parameters(), strict=True))  # segmenter untouched
    expected = _unrolled_policy_gradient(net, policy, bins, groups, 7, x, y, xv, yv, 0.5)
    flat_got = torch.cat([got[n] for n in expected])
    flat_exp = torch.cat(list(expected.values()))
    assert float(flat_exp.abs().max()) > 1e-7
    assert float((flat_got - flat_exp).norm() / flat_exp.norm()) < rtol


def test_meta_step_skips_nan_and_leaves_the_policy(caplog):
    torch.manual_seed(0)
    net, policy = TinySeg(), AugmentationPolicy()
    shared = SharedPolicyProbabilities(policy)
    learner = _learner(policy=policy, shared=shared)
    x, y = _data(1)
    x[0, 0, 0, 0, 0] = float("nan")
    logits = [p.detach().clone() for p in policy.parameters()]
    version = shared.version
    with caplog.at_level(logging.WARNING):
        out = learner.meta_step(net, _sgd(net), x, y, *_bins(policy, 3), _data(2))
    assert out["policy_meta_skipped"] == 1.0 and learner.skipped == 1 and learner.steps == 1
    assert all(torch.equal(a, p) for a, p in zip(logits, policy.parameters(), strict=True))
    assert not learner.optimizer.state and shared.version == version
    assert all(p.grad is None for p in policy.parameters())
    assert "skipped (nonfinite_train_grad)" in caplog.text


def test_meta_step_with_baseline_updates_the_policy_the_table_and_the_scheduler():
    torch.manual_seed(0)
    net, policy = TinySeg(), AugmentationPolicy()
    shared = SharedPolicyProbabilities(policy)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=4, power=1.0)
    learner = _learner(policy=policy, shared=shared, optimizer=optimizer, lr_scheduler=scheduler)
    before, version = policy.probability_matrix(), shared.version
    out = learner.meta_step(net, _sgd(net), *_data(1), *_bins(policy, 3), _data(2))
    assert out["policy_meta_skipped"] == 0.0
    after = policy.probability_matrix()
    assert not torch.equal(before, after)
    assert torch.equal(shared._table, after) and shared.version == version + 2  # one update (two version bumps)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 * 3 / 4)  # one scheduler step


def _view(names, transforms, b=B, size=None):
    """The validation batch seen through ``transforms`` (one per patch), as the test-time learner would give it."""
    pool = TestTimeTransformPool(names)
    covers = [pool.coverage(SHAPE, t) for t in transforms]
    mask = None
    if any(c is not None for c in covers):
        mask = torch.stack([torch.ones(1, *SHAPE) if c is None else (c > 0).float() for c in covers])  # (B, 1, *sp)
    return pool, TransformedValidation(pool, list(transforms), mask, size or b)


def test_meta_step_on_a_transformed_validation_batch_masks_the_padding():
    torch.manual_seed(0)
    net, policy = TinySeg(), AugmentationPolicy()
    learner = _learner(policy=policy, validation_loss="ce", meta_lr=1e-9)
    xv, yv = _data(2)
    pool, view = _view(["identity", "scale+0.45"], [1] * B)
    assert view.mask.shape == (B, 1, *SHAPE)
    assert float(view.mask.mean()) < 0.99  # magnified content leaves the field of view
    out = learner.meta_step(net, _sgd(net), *_data(1), *_bins(policy, 3), (xv, yv), transformed=view)
    with torch.no_grad():
        pred = torch.stack([pool.inverse(net(pool.forward(v, 1)[None])[0], 1) for v in xv])
    ce = F.cross_entropy(pred, yv[:, 0], reduction="none")
    expected = (ce * view.mask[:, 0]).sum() / view.mask.sum()  # meta_lr ~ 0: L_val at theta, padding left out
    assert out["policy_meta_loss"] == pytest.approx(float(expected), rel=1e-5)
    plain = _learner(policy=AugmentationPolicy(), validation_loss="ce", meta_lr=1e-9)
    out_plain = plain.meta_step(net, _sgd(net), *_data(1), *_bins(policy, 3), (xv, yv))
    with torch.no_grad():
        plain_loss = float(F.cross_entropy(net(xv), yv[:, 0]))
    assert out_plain["policy_meta_loss"] == pytest.approx(plain_loss, rel=1e-5)
    assert abs(out_plain["policy_meta_loss"] - out["policy_meta_loss"]) > 1e-4  # the transform does change it


def test_batched_transformed_validation_equals_per_patch():
    """The transformed validation batch in one forward pass (instance norm): the per-patch result (to 1e-6)."""
    names = ["identity", "mirror_x", "rot90_yz+", "scale+0.05", "rotate_z-5"]
    transforms = [2, 0, 4, 1, 3, 2]  # cubic patches: every transformed patch has the same shape
    results = {}
    for size in (6, 1):
        torch.manual_seed(0)
        net, policy = NormSeg(), AugmentationPolicy()
        learner = _learner(policy=policy, optimizer=torch.optim.SGD(policy.parameters(), lr=0.0), meta_lr=0.5)
        _, view = _view(names, transforms, b=6, size=size)
        calls: list[int] = []
        handle = net.register_forward_hook(lambda m, i, o, calls=calls: calls.append(i[0].shape[0]))
        out = learner.meta_step(
            net, _sgd(net), *_data(1), *_bins(policy, 3), _data(2, b=6), torch.Generator().manual_seed(7), view
        )
        handle.remove()
        results[size] = (out["policy_meta_loss"], torch.cat([p.grad.flatten() for p in policy.parameters()]))
        assert (6 in calls and 1 not in calls) if size == 6 else (6 not in calls and calls.count(1) >= 6)
    assert results[6][0] == pytest.approx(results[1][0], rel=1e-6)
    assert float(results[1][1].abs().max()) > 1e-7
    torch.testing.assert_close(results[6][1], results[1][1], rtol=1e-4, atol=1e-6)


def test_policy_batch_needs_the_recorded_bins():
    learner = _learner()
    x, y = _data(1, b=2)
    bins, groups = _bins(learner.policy, 0, b=2)
    got = learner.policy_batch({"image": x, "policy_bins": bins, "policy_group": groups[:, None]}, torch.device("cpu"))
    assert torch.equal(got[0], bins) and torch.equal(got[1], groups)  # groups flattened to (B,)
    with pytest.raises(ValueError, match="'policy_bins'.*PolicyAugmentd"):
        learner.policy_batch({"image": x, "label": y}, torch.device("cpu"))


def test_resolve_reuse():
    auto = _learner()
    assert not auto.reuses_lookahead_gradient  # resolved by the trainer
    assert auto.resolve_reuse([], []) and auto.reuses_lookahead_gradient
    assert not auto.resolve_reuse([], ["amp"]) and not auto.resolve_reuse(["SlidingWindowInferer"], [])
    required = _learner(reuse_lookahead_gradient=True)
    assert required.reuses_lookahead_gradient and required.resolve_reuse([], ["amp"])
    with pytest.raises(ValueError, match="SlidingWindowInferer"):
        required.resolve_reuse(["inferer SlidingWindowInferer"], [])
    assert not _learner(reuse_lookahead_gradient=False).resolve_reuse([], [])


def test_meta_step_keeps_its_pass_at_theta_once_when_reusing():
    torch.manual_seed(0)
    net, policy = TinySeg(), AugmentationPolicy()
    learner = _learner(policy=policy, reuse_lookahead_gradient=True)
    x, y = _data(1)
    learner.meta_step(net, _sgd(net), x, y, *_bins(policy, 3), _data(2))
    step = learner.pop_train_step()
    assert isinstance(step, LookaheadTrainStep) and learner.pop_train_step() is None  # handed out once
    torch.testing.assert_close(step.pred, net(x))  # the prediction at theta
    off = _learner(policy=policy, reuse_lookahead_gradient=False)
    off.meta_step(net, _sgd(net), x, y, *_bins(policy, 3), _data(2))
    assert off.pop_train_step() is None


def test_reused_step_loss_checks_the_trainer_loss(caplog):
    from monai.losses import DiceCELoss

    pred, label = torch.randn(B, 2, *SHAPE), _data(3)[1]
    step = LookaheadTrainStep(pred=pred, loss=torch.zeros(()), grads={})
    same = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True)  # the batch mean of per_sample_ce_dice
    loss = _learner().reused_step_loss(same, step, label)
    assert loss is not None and float(loss) == pytest.approx(float(per_sample_ce_dice(pred, label).mean()), rel=1e-5)
    batch_dice = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)
    auto = _learner()
    auto.resolve_reuse([], [])
    with caplog.at_level(logging.WARNING):
        assert auto.reused_step_loss(batch_dice, step, label) is None
    assert "different gradients" in caplog.text and not auto.reuses_lookahead_gradient  # switched off
    with pytest.raises(ValueError, match="different gradients"):
        _learner(reuse_lookahead_gradient=True).reused_step_loss(batch_dice, step, label)


def test_state_dict_round_trip_with_weights_only():
    policy = AugmentationPolicy()
    learner = _learner(policy=policy)
    net = TinySeg()
    learner.meta_step(net, _sgd(net), *_data(1), *_bins(policy, 3), _data(2))
    buf = io.BytesIO()
    torch.save(learner.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    assert set(state) == {"policy", "optimizer", "steps", "skipped", "singletons"}
    policy2 = AugmentationPolicy()
    shared2 = SharedPolicyProbabilities(policy2)
    other = _learner(policy=policy2, shared=shared2)
    other.load_state_dict(state)
    assert torch.equal(policy2.probability_matrix(), policy.probability_matrix())
    assert torch.equal(shared2._table, policy.probability_matrix())  # the loader workers' table follows
    assert other.steps == 1 and other.skipped == 0 and other.optimizer.state
    assert other.state_dict()["singletons"] == learner.state_dict()["singletons"]  # the running baselines too
    with pytest.raises(ValueError, match="group"):
        _learner(policy=AugmentationPolicy(groups={"all": None})).load_state_dict(state)
    with pytest.raises(ValueError, match="lacks 'optimizer'"):
        _learner().load_state_dict({"policy": state["policy"]})


def _group_grads(policy: AugmentationPolicy) -> dict[str, float]:
    """The size of the accumulated gradient of each group's logits."""
    return {
        group: sum(float(p.grad.abs().sum()) for p in ops.values() if p.grad is not None)
        for group, ops in policy.logits.items()
    }


@pytest.mark.parametrize("singleton_baseline", [True, False])
def test_a_group_alone_in_the_batch_still_gets_a_gradient(singleton_baseline):
    """Batches of 4 patches, 3 background and 1 foreground: with the authors' per-group batch mean alone, the
    foreground policy never learns; the running baseline gives it a gradient from its second occurrence on."""
    torch.manual_seed(0)
    net, policy = TinySeg(), AugmentationPolicy()
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.0)  # keep the policy fixed: look at the gradients only
    learner = _learner(policy=policy, optimizer=optimizer, singleton_baseline=singleton_baseline)
    bins, _ = _bins(policy, 3)
    groups = torch.tensor([0, 0, 0, 1])  # 0 background, 1 foreground (AugmentationPolicy's default groups)
    names = list(policy.logits)
    seen = []
    for step in range(3):
        learner.meta_step(net, _sgd(net), *_data(10 + step), bins, groups, _data(20 + step))
        seen.append(_group_grads(policy))
    assert all(s[names[0]] > 0 for s in seen)  # the background group (3 patches) always learns
    assert seen[0][names[1]] == 0.0  # the first time alone: no running mean yet
    if singleton_baseline:
        assert seen[1][names[1]] > 0 and seen[2][names[1]] > 0
        assert learner.state_dict()["singletons"]["singletons"] == 3
        assert learner.state_dict()["singletons"]["without_baseline"] == 1
    else:
        assert seen[1][names[1]] == 0.0 and seen[2][names[1]] == 0.0  # a silent zero every time
