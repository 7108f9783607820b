# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Learned augmentation in the trainer (JCSAugment, Li et al., IEEE TMI 2023): the joint schedule of the
``AugmentationPolicyIteration`` hook (TRA meta step, TEA step, segmenter step on one held-out batch), the reuse of the
look-ahead's pass for the segmenter step, composition with the mixup step, checkpoints and the JSON route.

The learners alone are tested in ``test_training_policy.py`` and ``test_test_time_policy.py``.
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

from monai_imbalance.augment import (
    AugmentationPolicy,
    SharedPolicyProbabilities,
    TestTimePolicy,
    TestTimeTransformPool,
    TrainingTransformPool,
)
from monai_imbalance.engines import (
    AugmentationPolicyIteration,
    RegularisedSupervisedTrainer,
    TestTimePolicyLearner,
    TrainingPolicyLearner,
    per_sample_ce_dice,
)

torch.set_num_threads(1)

SHAPE = (8, 8, 8)


class NormSeg(nn.Module):
    """A tiny smooth segmenter with a normalisation layer (``nn.InstanceNorm3d`` or ``nn.BatchNorm3d``)."""

    def __init__(self, norm: type[nn.Module] | None = nn.InstanceNorm3d) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(1, 3, 3, padding=1)
        self.norm = nn.Identity() if norm is None else norm(3, affine=True)
        self.conv2 = nn.Conv3d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.tanh(self.norm(self.conv1(x))))


def _data(seed: int, b: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 1, *SHAPE, generator=g), torch.randint(0, 2, (b, 1, *SHAPE), generator=g)


def _training_batches(policy: AugmentationPolicy, n: int, bins: bool = True) -> list[dict[str, torch.Tensor]]:
    out = []
    for i in range(n):
        x, y = _data(10 + i)
        batch = {"image": x, "label": y}
        if bins:
            g = torch.Generator().manual_seed(20 + i)
            batch["policy_bins"] = torch.stack(
                [torch.randint(0, k, (2,), generator=g) for k in policy.pool.num_bins], 1
            )
            batch["policy_group"] = torch.tensor([0, 1])
        out.append(batch)
    return out


def _validation(n: int = 2) -> list[dict[str, torch.Tensor]]:
    return [dict(zip(("image", "label"), _data(30 + i), strict=True)) for i in range(n)]


def _ce_dice(pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    return per_sample_ce_dice(pred, label).mean()


def _trainer(net, hook, data, epochs=2, loss=_ce_dice, trainer_cls=SupervisedTrainer, **kw):
    return trainer_cls(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=data,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_function=loss,
        iteration_update=hook,
        **kw,
    )


def _tea(names=("identity", "mirror_x", "mirror_y"), **init) -> TestTimePolicy:
    return TestTimePolicy(TestTimeTransformPool(list(names)), **init)


def test_hook_settings_are_checked():
    policy, val = AugmentationPolicy(), _validation()
    with pytest.raises(ValueError, match="needs a training learner \\(TRA\\), a test_time learner \\(TEA\\), or both"):
        AugmentationPolicyIteration(validation_loader=val)
    with pytest.raises(ValueError, match="validation_loader is required"):
        AugmentationPolicyIteration(training={"policy": policy})
    with pytest.raises(ValueError, match="augment_validation"):
        AugmentationPolicyIteration(training={"policy": policy}, validation_loader=val, augment_validation="yes")
    with pytest.raises(ValueError, match="training must be a TrainingPolicyLearner"):
        AugmentationPolicyIteration(training=TestTimePolicyLearner(_tea()), validation_loader=val)
    # the JSON route names a bad key and the learner it belongs to
    with pytest.raises(ValueError, match="TrainingPolicyLearner has unknown setting\\(s\\) \\['test_time_interval'\\]"):
        AugmentationPolicyIteration(training={"policy": policy, "test_time_interval": 2}, validation_loader=val)
    with pytest.raises(ValueError, match="TestTimePolicyLearner num_samples must be an integer >= 1"):
        AugmentationPolicyIteration(test_time={"policy": _tea(), "num_samples": 0}, validation_loader=val)
    hook = AugmentationPolicyIteration(test_time={"policy": _tea()}, validation_loader=val)
    assert hook.training is None and isinstance(hook.test_time, TestTimePolicyLearner) and hook.augment_validation


def test_trainer_runs_the_schedule_and_keeps_the_segmenter_step():
    torch.manual_seed(0)
    net, policy = NormSeg(None), AugmentationPolicy()
    plain_net = copy.deepcopy(net)
    shared = SharedPolicyProbabilities(policy)
    tea = _tea()
    data = _training_batches(policy, 3)
    hook = AugmentationPolicyIteration(
        training=TrainingPolicyLearner(policy, shared=shared, interval=2, warmup_epochs=1),
        test_time=TestTimePolicyLearner(tea, interval=3, num_samples=3),
        validation_loader=_validation(),
    )
    trainer = _trainer(net, hook, data)
    seen = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(dict(e.state.output[0])))
    version, tea_before = shared.version, tea.logits.detach().clone()
    trainer.run()
    # iterations 1-3 are epoch 1 (TRA warm-up), 4-6 epoch 2: TRA at 4, 6; TEA at 3, 6
    assert [("policy_meta_loss" in o) for o in seen] == [False, False, False, True, False, True]
    assert [("test_time_loss" in o) for o in seen] == [False, False, True, False, False, True]
    assert hook.training.steps == 2 and hook.test_time.steps == 2 and hook.training.skipped == 0
    assert shared.version == version + 2 * 2 + 2  # the first call's refresh + two updates
    assert torch.equal(shared._table, policy.probability_matrix())
    assert not torch.equal(tea.logits, tea_before)

    plain = _trainer(plain_net, None, data)
    plain.run()
    for a, b in zip(net.parameters(), plain_net.parameters(), strict=True):
        torch.testing.assert_close(a, b)  # the policy steps leave the segmenter's own step unchanged


def _recording_hook(augment_validation=True, test_time=True):
    """A TRA + TEA hook whose learners record each call: what ran, in which order, on which validation batch."""
    policy = AugmentationPolicy()
    tea = _tea(("identity", "mirror_x", "scale+0.45"), init={"scale+0.45": 1.0})  # every draw: the zoom
    hook = AugmentationPolicyIteration(
        training=TrainingPolicyLearner(policy),
        test_time=TestTimePolicyLearner(tea, interval=2, num_samples=2) if test_time else None,
        validation_loader=_validation(),
        augment_validation=augment_validation,
    )
    calls: list[tuple] = []
    meta_step, tea_step = hook.training.meta_step, None if hook.test_time is None else hook.test_time.step

    def record_meta(network, opt, image, label, bins, groups, validation, generator=None, transformed=None):
        calls.append(("tra", validation[0].clone(), transformed))
        return meta_step(network, opt, image, label, bins, groups, validation, generator, transformed)

    def record_tea(network, validation, *args, **kw):
        calls.append(("tea", validation[0].clone(), [p.detach().clone() for p in network.parameters()]))
        return tea_step(network, validation, *args, **kw)

    hook.training.meta_step = record_meta
    if hook.test_time is not None:
        hook.test_time.step = record_tea
    return hook, policy, tea, calls


def test_joint_schedule_tra_then_tea_then_the_segmenter_on_one_validation_batch():
    torch.manual_seed(0)
    hook, policy, tea, calls = _recording_hook()
    net = NormSeg()
    trainer = _trainer(net, hook, _training_batches(policy, 3))
    trainer.optimizer.register_step_post_hook(
        lambda *_: calls.append(("seg", None, [p.detach().clone() for p in net.parameters()]))
    )
    before = [p.detach().clone() for p in net.parameters()]
    trainer.run()
    # TRA every iteration, TEA every 2nd: each iteration's steps in the order TRA, TEA, segmenter
    per_iteration = [["tra", "seg"], ["tra", "tea", "seg"]] * 3
    assert [c[0] for c in calls] == [s for steps in per_iteration for s in steps]
    # one validation batch per iteration, shared by TRA and TEA, the loader cycled (2 batches, 6 iterations)
    val = _validation()
    tra = [c for c in calls if c[0] == "tra"]
    assert all(torch.equal(c[1], val[i % 2]["image"]) for i, c in enumerate(tra))
    segs = [before] + [c[2] for c in calls if c[0] == "seg"]
    for i, c in enumerate(calls):
        if c[0] == "tea":
            assert torch.equal(c[1], calls[i - 1][1])  # the TRA step's validation batch
            # the segmenter as the previous iteration left it, before this iteration's segmenter step
            done = sum(1 for d in calls[:i] if d[0] == "seg")
            assert all(torch.equal(a, b) for a, b in zip(c[2], segs[done], strict=True))
            assert not all(torch.equal(a, b) for a, b in zip(c[2], segs[done + 1], strict=True))
    # joint: the TRA validation batch is seen through the current test-time policy (here always the zoom)
    zoom = tea.pool.index("scale+0.45")
    assert all(c[2] is not None and c[2].transforms == [zoom] * 2 and c[2].mask is not None for c in tra)


@pytest.mark.parametrize("augment_validation, test_time", [(False, True), (True, False)])
def test_tra_validation_is_plain_unless_joint(augment_validation, test_time):
    torch.manual_seed(0)
    hook, policy, _, calls = _recording_hook(augment_validation, test_time)
    _trainer(NormSeg(), hook, _training_batches(policy, 2), epochs=1).run()
    tra = [c for c in calls if c[0] == "tra"]
    assert len(tra) == 2 and all(c[2] is None for c in tra)
    assert len([c for c in calls if c[0] == "tea"]) == (1 if test_time else 0)


def test_tea_only_needs_no_recorded_bins_and_tra_does():
    torch.manual_seed(0)
    policy, tea = AugmentationPolicy(), _tea()
    hook = AugmentationPolicyIteration(test_time=TestTimePolicyLearner(tea), validation_loader=_validation())
    trainer = _trainer(NormSeg(), hook, _training_batches(policy, 3, bins=False), epochs=1)
    trainer.run()
    assert hook.test_time.steps == 3 and hook.test_time.skipped == 0
    hook = AugmentationPolicyIteration(training=TrainingPolicyLearner(policy), validation_loader=_validation())
    with pytest.raises(ValueError, match="policy_bins"):
        _trainer(NormSeg(), hook, _training_batches(policy, 1, bins=False), epochs=1).run()


def test_state_dict_holds_both_learners_in_one_dict_with_weights_only():
    policy, tea = AugmentationPolicy(), _tea()
    hook = AugmentationPolicyIteration(
        training=TrainingPolicyLearner(policy),
        test_time=TestTimePolicyLearner(tea, num_samples=2),
        validation_loader=_validation(),
    )
    _trainer(NormSeg(), hook, _training_batches(policy, 1), epochs=1).run()
    buf = io.BytesIO()
    torch.save(hook.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    keys = {"policy", "optimizer", "steps", "skipped"}
    assert set(state) == keys | {"singletons"} | {f"test_time_{k}" for k in keys}
    policy2 = AugmentationPolicy()
    shared2 = SharedPolicyProbabilities(policy2)
    other = AugmentationPolicyIteration(
        training=TrainingPolicyLearner(policy2, shared=shared2),
        test_time=TestTimePolicyLearner(_tea()),
        validation_loader=_validation(),
    )
    other.load_state_dict(state)
    assert torch.equal(policy2.probability_matrix(), policy.probability_matrix())
    assert torch.equal(shared2._table, policy.probability_matrix())
    assert torch.equal(other.test_time.policy.logits, tea.logits)
    assert other.training.steps == other.test_time.steps == 1 and other.training.optimizer.state
    tra_only = AugmentationPolicyIteration(training=TrainingPolicyLearner(AugmentationPolicy()), validation_loader=[{}])
    with pytest.raises(ValueError, match="test_time_policy"):
        tra_only.load_state_dict(state)
    with pytest.raises(ValueError, match="lacks 'test_time_policy'"):
        other.load_state_dict({k: v for k, v in state.items() if not k.startswith("test_time_")})


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
    """An op that corrupts the label alignment loses probability in a few hundred iterations."""
    torch.manual_seed(0)
    policy = AugmentationPolicy(TrainingTransformPool(["mirror_x", "mirror_y"]), groups={"all": None}, init=0)
    shared = SharedPolicyProbabilities(policy)
    net = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv3d(4, 2, 1))
    val_x, val_y = _toy_patches(8, torch.Generator().manual_seed(1))
    hook = AugmentationPolicyIteration(
        training={
            "policy": policy,
            "optimizer": torch.optim.Adam(policy.parameters(), lr=1e-2),  # toy scale: 200 iterations, not 200k
            "shared": shared,
        },
        validation_loader=[{"image": val_x, "label": val_y}],
    )
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=4,
        train_data_loader=_ToyLoader(shared, 50),
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9),
        loss_function=_ce_dice,
        iteration_update=hook,
    )
    trainer.run()
    probs = policy.probabilities()["all"]
    assert hook.training.steps == 200 and hook.training.skipped == 0
    assert float(probs["mirror_x"][1]) < 0.25  # from 0.5
    assert 0.35 < float(probs["mirror_y"][1]) < 0.65  # the harmless flip stays near 0.5
    torch.testing.assert_close(shared.read(0), policy.probability_matrix()[0].double().numpy())


def test_trainer_from_a_bundle_style_config():
    from monai.bundle import ConfigParser

    x, y = _data(1)
    config = {
        "network": "$torch.nn.Conv3d(1, 2, 3, padding=1)",
        "policy": {"_target_": "monai_imbalance.augment.AugmentationPolicy", "init": "nnunet"},
        "shared_policy": {"_target_": "monai_imbalance.augment.SharedPolicyProbabilities", "policy": "@policy"},
        "policy_optimizer": {"_target_": "torch.optim.Adam", "params": "$@policy.parameters()", "lr": 5e-4},
        "test_time_policy": {"_target_": "monai_imbalance.augment.TestTimePolicy"},
        "train_data": "$[]",
        "validation_data": "$[]",
        "policy_learner": {
            "_target_": "monai_imbalance.engines.TrainingPolicyLearner",
            "policy": "@policy",
            "optimizer": "@policy_optimizer",
            "shared": "@shared_policy",
            "interval": 1,
            "validation_loss": 2,
        },
        "test_time_learner": {
            "_target_": "monai_imbalance.engines.TestTimePolicyLearner",
            "_disabled_": True,
            "policy": "@test_time_policy",
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
                "training": "@policy_learner",
                "test_time": "@test_time_learner",
                "validation_loader": "@validation_data",
            },
        },
    }
    parser = ConfigParser(config)
    bins = _training_batches(AugmentationPolicy(), 1)[0]["policy_bins"]
    groups = torch.tensor([1, 1])  # one group: the per-group baseline leaves a signal
    parser["train_data"] = [{"image": x, "label": y, "policy_bins": bins, "policy_group": groups}]
    parser["validation_data"] = [{"image": x, "label": y}]
    trainer = parser.get_parsed_content("trainer")
    before = parser.get_parsed_content("policy").probability_matrix()
    trainer.run()
    hook = parser.get_parsed_content("trainer#iteration_update")
    learner = parser.get_parsed_content("policy_learner")
    assert hook.training is learner and hook.test_time is None  # a disabled learner is no learner
    assert learner.steps == 1 and learner.validation_loss == "ce_dice" and learner.optimizer.defaults["lr"] == 5e-4
    assert learner.shared is parser.get_parsed_content("shared_policy")
    assert not torch.equal(before, learner.policy.probability_matrix())


# -- the segmenter step from the look-ahead's pass at theta --------------------------------------------------------
def _bundle_loss():
    """The bundle's training loss (train.json): the batch mean of per_sample_ce_dice on equal-sized patches."""
    from monai.losses import DiceCELoss

    return DiceCELoss(include_background=False, to_onehot_y=True, softmax=True)


def _policy_trainer(net, loss, reuse, epochs=2, seed=0, trainer_cls=SupervisedTrainer, **kw):
    """A trainer with TRA (every iteration) and TEA (every 2nd), identical data and seeds for each call."""
    torch.manual_seed(seed)
    policy = AugmentationPolicy()
    tea = _tea(("identity", "mirror_x", "rot90_yz+", "scale+0.05"))
    hook = AugmentationPolicyIteration(
        training={
            "policy": policy,
            "optimizer": torch.optim.Adam(policy.parameters(), lr=1e-1),
            "reuse_lookahead_gradient": reuse,
        },
        test_time={"policy": tea, "interval": 2, "num_samples": 3},
        validation_loader=_validation(),
    )
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
    trainer.policy_hook = hook  # for the assertions
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
    hr, hp = reused.policy_hook, plain.policy_hook
    assert hr.training.reuses_lookahead_gradient and not hp.training.reuses_lookahead_gradient
    assert hr.training.steps == hp.training.steps == 6
    assert len(fwd_p) - len(fwd_r) == 6  # one segmenter forward pass fewer per TRA iteration
    for a, b in zip(out_r, out_p, strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-6 and a["policy_meta_loss"] == pytest.approx(b["policy_meta_loss"], 1e-5)
        torch.testing.assert_close(a["pred"], b["pred"], rtol=1e-6, atol=1e-6)
    for a, b in zip(reused.network.state_dict().values(), plain.network.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)  # parameters and BatchNorm running statistics
    if norm is nn.BatchNorm3d:
        assert int(reused.network.norm.num_batches_tracked) == 6  # step 1's forward pass, once per iteration
    tr, tp = hr.training.policy, hp.training.policy
    torch.testing.assert_close(tr.probability_matrix(), tp.probability_matrix(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(hr.test_time.policy.logits, hp.test_time.policy.logits, rtol=1e-5, atol=1e-7)


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
    assert trainer.policy_hook.training.steps == 1 and abs(outputs[0]["loss"] - float(ref_loss.detach())) < 1e-6
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
    assert not auto.policy_hook.training.reuses_lookahead_gradient and len(fwd_a) == len(fwd_p)
    for a, b in zip(auto.network.parameters(), plain.network.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    required, _, _ = _policy_trainer(copy.deepcopy(net), batch_dice, True, epochs=1)
    with pytest.raises(ValueError, match="different gradients"):
        required.run()
    # trainer settings: automatic reuse switches off, a required one raises
    sliding = {"inferer": SlidingWindowInferer(roi_size=SHAPE)}
    trainer = _policy_trainer(NormSeg(), _bundle_loss(), None, epochs=1, epoch_length=1, **sliding)[0]
    trainer.run()
    assert not trainer.policy_hook.training.reuses_lookahead_gradient
    with pytest.raises(ValueError, match="SlidingWindowInferer"):
        _policy_trainer(NormSeg(), _bundle_loss(), True, **sliding)[0].run()
    with pytest.raises(ValueError, match="accumulation_steps"):
        _policy_trainer(NormSeg(), _bundle_loss(), True, accumulation_steps=2)[0].run()
    with pytest.raises(ValueError, match="extra steps \\(mixup\\)"):
        mixup = {"mixup": {"alpha": 0.2}, "trainer_cls": RegularisedSupervisedTrainer}
        _policy_trainer(NormSeg(), _bundle_loss(), True, **mixup)[0].run()


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
    hook = trainer.policy_hook
    assert hook.training.steps == 3 and hook.test_time.steps == 1 and hook.training.skipped == 0
    assert not hook.training.reuses_lookahead_gradient  # the extra step blocks the reuse of the look-ahead's pass
    assert len(steps) == 6  # step 1 and the mixup step of each iteration
    assert all({"policy_meta_loss", "loss_mixup", "mixup_lambda"} <= set(o) for o in outputs)
    assert [("test_time_loss" in o) for o in outputs] == [False, True, False]


def test_tra_takes_its_own_meta_training_batches_when_given_a_training_loader():
    """The authors' meta batch: the TRA look-ahead runs on batches of ``training_loader`` (here 4 patches, the
    segmenter's 2), whatever the trainer's batch; the trainer's batches then need no recorded bins, and the normal
    step cannot reuse the look-ahead's pass."""
    policy = AugmentationPolicy()
    a, b = _training_batches(policy, 2)
    meta = [{k: torch.cat([a[k], b[k]]) for k in a}] * 3  # 4 patches, both groups twice
    seen = []

    class Recording(TrainingPolicyLearner):
        def meta_step(self, network, segmenter_optimizer, image, label, *args, **kwargs):
            seen.append(image.shape[0])
            return super().meta_step(network, segmenter_optimizer, image, label, *args, **kwargs)

    learner = Recording(policy, optimizer=torch.optim.Adam(policy.parameters(), lr=0.1))
    hook = AugmentationPolicyIteration(training=learner, validation_loader=_validation(), training_loader=meta)
    before = policy.probability_matrix()
    _trainer(NormSeg(), hook, _training_batches(policy, 2, bins=False), epochs=2).run()  # no bins in these
    assert seen == [4, 4, 4, 4] and learner.steps == 4  # every TRA step on a 4-patch meta batch, the loader cycled
    assert not learner.reuses_lookahead_gradient
    assert not torch.equal(before, policy.probability_matrix())
