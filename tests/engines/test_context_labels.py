# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""CoLab in the trainer: context targets, the generator's meta step and the baselines' context maps.

Methods.md 2.2-2.5.
Tiny smooth (tanh) networks, so the finite-difference hypergradient has no activation kinks to cross.
"""

from __future__ import annotations

import copy

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.inferers import SlidingWindowInferer
from torch import nn

from monai_imbalance.engines import (
    ContextLabelIteration,
    ContextLabelLearner,
    ContextTargetLoss,
    RegularisedSupervisedTrainer,
)
from monai_imbalance.losses import ContextLabelLoss, compose_context_target, context_foreground_bce

C, T = 2, 2
K = C + T - 1
SHAPE = (6, 6, 6)
_STEP_EVENTS = ("FORWARD_COMPLETED", "LOSS_COMPLETED", "BACKWARD_COMPLETED", "MODEL_COMPLETED")


class TinySeg(nn.Module):
    """A smooth (tanh) tiny segmenter with DynUNet's ``out_channels`` attribute, so the channel check can read it."""

    def __init__(self, out_channels: int = K) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.conv1 = nn.Conv3d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv3d(4, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.tanh(self.conv1(x)))


def _batch(seed: int = 0, b: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn((b, 1, *SHAPE), generator=g)
    label = torch.zeros((b, 1, *SHAPE), dtype=torch.long)
    label[:, :, 2:4, 2:4, 2:4] = 1
    return {"image": image, "label": label}


def _learner(**kw) -> ContextLabelLearner:
    torch.manual_seed(1)
    generator = TinySeg(T)
    defaults = dict(
        num_classes=C,
        num_context=T,
        generator=generator,
        optimizer=torch.optim.SGD(generator.parameters(), lr=1.0),
        meta_interval=1,
        lookahead="batched",  # one update per meta step; the authors' per-sample loop is tested on its own
    )
    return ContextLabelLearner(**{**defaults, **kw})


def _unrolled_hypergradient(seg, gen, loss, x, y, lr):
    """Independent reference: differentiate L_val(theta - lr grad L_tr(theta, phi)) w.r.t. phi through the graph."""
    params = dict(seg.named_parameters())
    target = compose_context_target(torch.softmax(gen(x), 1), y, C)
    l_tr = loss(torch.func.functional_call(seg, params, (x,)), target)
    grads = torch.autograd.grad(l_tr, list(params.values()), create_graph=True)
    fast = {k: p - lr * g for (k, p), g in zip(params.items(), grads, strict=True)}
    l_val = context_foreground_bce(torch.func.functional_call(seg, fast, (x,)), y, C)
    return torch.autograd.grad(l_val, list(gen.parameters()))


@pytest.mark.parametrize("method, tol", [("exact", 1e-9), ("finite_difference", 1e-2)])
def test_meta_step_follows_the_unrolled_hypergradient(method, tol):
    torch.set_default_dtype(torch.float64)
    try:
        learner = _learner(method=method, r=1e-3)
        seg, gen, loss = TinySeg(), learner.generator, ContextLabelLoss()
        batch = _batch()
        seg_before = copy.deepcopy(seg.state_dict())
        gen_before = [p.detach().clone() for p in gen.parameters()]
        expected = _unrolled_hypergradient(seg, gen, loss, batch["image"], batch["label"], lr=0.1)
        out = learner.meta_step(
            seg, loss, torch.optim.SGD(seg.parameters(), lr=0.1), batch["image"], batch["label"], None
        )
        assert out["meta_skipped"] == 0.0 and learner.steps == 1 and learner.skipped == 0
        # SGD with lr 1: the parameter change is minus the hypergradient
        num = sum(
            ((b - p.detach()) - e).pow(2).sum() for b, p, e in zip(gen_before, gen.parameters(), expected, strict=True)
        )
        den = sum(e.pow(2).sum() for e in expected)
        assert float(den) > 0 and float((num / den).sqrt()) < tol
        for k, v in seg.state_dict().items():  # the segmenter is untouched by the virtual step
            assert torch.equal(v, seg_before[k]), k
    finally:
        torch.set_default_dtype(torch.float32)


def test_meta_step_skips_a_nonfinite_gradient_and_leaves_the_generator():
    learner = _learner()
    seg = TinySeg()
    batch = _batch()

    def nan_loss(pred, target):
        return ContextLabelLoss()(pred, target) * float("nan")

    before = [p.detach().clone() for p in learner.generator.parameters()]
    out = learner.meta_step(
        seg, nan_loss, torch.optim.SGD(seg.parameters(), lr=0.1), batch["image"], batch["label"], None
    )
    assert out["meta_skipped"] == 1.0 and learner.skipped == 1 and learner.steps == 1
    for b, p in zip(before, learner.generator.parameters(), strict=True):
        assert torch.equal(b, p)
    assert all(p.grad is None for p in learner.generator.parameters())


def test_probabilities_from_generator_map_or_ones():
    batch = _batch()
    learner = _learner()
    q = learner.probabilities(batch["image"], batch)
    torch.testing.assert_close(q, torch.softmax(learner.generator(batch["image"]), 1))
    ctx = torch.zeros_like(batch["label"])
    ctx[:, :, :3] = 1
    fixed = ContextLabelLearner(num_classes=C, num_context=T, context_key="ctx")
    q = fixed.probabilities(batch["image"], {**batch, "ctx": ctx})
    assert torch.equal(q.argmax(1, keepdim=True), ctx) and torch.equal(q.sum(1), torch.ones_like(q.sum(1)))
    with pytest.raises(ValueError, match="values in"):
        fixed.probabilities(batch["image"], {**batch, "ctx": ctx + 1})
    with pytest.raises(ValueError, match="'ctx' in the batch"):
        fixed.probabilities(batch["image"], batch)
    plain = ContextLabelLearner(num_classes=C, num_context=1)
    assert torch.equal(plain.probabilities(batch["image"], batch), torch.ones((2, 1, *SHAPE)))
    assert plain.num_channels == C and fixed.num_channels == K


@pytest.mark.parametrize(
    "config, match",
    [
        ({"num_classes": C, "num_context": 0}, "num_context"),
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": C, "num_context": 2}, "needs a generator or a context_key"),
        ({"num_classes": C, "generator": TinySeg(T)}, "its own optimizer"),
        ({"num_classes": C, "context_key": "ctx", "generator": TinySeg(T), "optimizer": None}, "not both"),
        ({"num_classes": C, "num_context": 1, "meta_interval": 0}, "meta_interval"),
        ({"num_classes": C, "num_context": 1, "method": "newton"}, "method"),
        ({"num_classes": C, "num_context": 1, "colour": 1}, "unknown setting"),
        ({"num_context": 1}, "needs num_classes"),
    ],
)
def test_bad_settings_are_named(config, match):
    with pytest.raises(ValueError, match=match):
        ContextLabelLearner.from_mapping(config)


def test_context_target_loss_composes_from_the_batch_probabilities():
    learner = ContextLabelLearner(num_classes=C, num_context=T, context_key="ctx")
    adapter = ContextTargetLoss(ContextLabelLoss(), learner)
    batch = _batch()
    pred = torch.randn((2, K, *SHAPE))
    with pytest.raises(RuntimeError, match="before the trainer set"):
        adapter(pred, batch["label"])
    q = torch.softmax(torch.randn((2, T, *SHAPE)), 1)
    mask = torch.rand((2, 1, *SHAPE))
    adapter.probabilities, adapter.mask = q, mask
    expected = ContextLabelLoss()(pred, compose_context_target(q, batch["label"], C, mask))
    torch.testing.assert_close(adapter(pred, batch["label"]), expected)


def _trainer(learner, network=None, epochs=1, **kw):
    """A ``SupervisedTrainer`` (a ``RegularisedSupervisedTrainer`` with extra steps) with the learner's hook."""
    torch.manual_seed(0)
    network = TinySeg() if network is None else network
    data = [_batch(i) for i in range(3)]
    cls = RegularisedSupervisedTrainer if "adversarial" in kw or "mixup" in kw else SupervisedTrainer
    return cls(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=data,
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.1),
        loss_function=ContextTargetLoss(ContextLabelLoss(), learner),
        iteration_update=ContextLabelIteration(learner),
        **kw,
    )


def test_trainer_runs_meta_steps_at_the_interval_and_keeps_hard_labels():
    learner = _learner(meta_interval=2)
    trainer = _trainer(learner, epochs=2)
    seen = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(dict(e.state.output[0])))
    gen_before = [p.detach().clone() for p in learner.generator.parameters()]
    trainer.run()
    assert trainer.state.iteration == 6 and learner.steps == 3  # iterations 2, 4, 6
    assert [("meta_loss" in o) for o in seen] == [False, True] * 3
    assert all(o["label"].shape[0] == 1 for o in seen)  # the engine keeps the original label
    assert any(not torch.equal(b, p) for b, p in zip(gen_before, learner.generator.parameters(), strict=True))


def test_trainer_step_uses_the_detached_generator_target():
    """With the meta step off (interval beyond the run), step 1 equals a manual step on the composed target."""
    learner = _learner(meta_interval=100)
    trainer = _trainer(learner)
    reference = copy.deepcopy(trainer.network)
    opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    for batch in trainer.data_loader:
        q = torch.softmax(learner.generator(batch["image"]), 1).detach()
        opt.zero_grad()
        ContextLabelLoss()(reference(batch["image"]), compose_context_target(q, batch["label"], C)).backward()
        opt.step()
    gen_before = [p.detach().clone() for p in learner.generator.parameters()]
    trainer.run()
    for (name, p), r in zip(trainer.network.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, r, msg=name)
    for b, p in zip(gen_before, learner.generator.parameters(), strict=True):
        assert torch.equal(b, p)  # the normal step never trains the generator


def test_trainer_rejects_channel_mismatch_and_extra_steps():
    with pytest.raises(ValueError, match="out_channels=2"):
        _trainer(_learner(), network=TinySeg(out_channels=2)).run()
    with pytest.raises(ValueError, match="mixup raw=false"):
        _trainer(_learner(), mixup={"alpha": 0.2, "raw": True}).run()
    with pytest.raises(ValueError, match="adversarial raw=false"):
        _trainer(_learner(), adversarial={"eps": 1.0, "raw": True}).run()
    wrong_generator = _learner()
    wrong_generator.generator = TinySeg(3)
    with pytest.raises(ValueError, match="generator has out_channels=3"):
        _trainer(wrong_generator).run()
    trainer = _trainer(_learner())
    trainer.loss_function = ContextTargetLoss(ContextLabelLoss(), _learner())  # another learner's loss
    with pytest.raises(ValueError, match="ContextTargetLoss of the same ContextLabelLearner"):
        trainer.run()


def test_colab_composes_with_the_adversarial_step_on_the_context_target():
    """CoLab + asymmetric adversarial training: the adversarial step trains on the same K-channel context target as
    the normal step (the batch's context probabilities stay set during the trainer's extra step)."""
    learner = _learner(meta_interval=2)
    trainer = _trainer(learner, epochs=1, adversarial={"eps": 1.0, "rare_classes": [1]})
    targets = []
    loss = trainer.loss_function
    inner = loss.loss_function
    loss.loss_function = lambda pred, target: (targets.append(target.detach().clone()), inner(pred, target))[1]
    seen = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(dict(e.state.output[0])))
    trainer.run()
    assert learner.steps == 1 and all("loss_adversarial" in o for o in seen) and "meta_loss" in seen[1]
    # per iteration: the normal step's target, then the adversarial step's (the meta step adds its look-ahead calls)
    assert len(targets) >= 6 and all(t.shape[1] == K for t in targets)
    normal, adversarial = targets[-2], targets[-1]
    torch.testing.assert_close(normal, adversarial)  # the same context target for both steps of an iteration
    assert float(normal[:, C:].sum()) > 0  # context channels beyond the foreground carry target mass


@pytest.mark.parametrize("rare_classes", [None, [1]])
def test_colab_composes_with_the_mixup_step_on_the_mixed_context_target(rare_classes):
    """CoLab + mixup: symmetric, the context targets mixed as the images are; asymmetric, the rule's label with the
    background split by the mixed context probabilities, ambiguous voxels masked out."""
    from monai_imbalance.engines import mixup_labels

    learner = _learner(meta_interval=100)  # no meta step: the generator and so q stay fixed
    trainer = _trainer(learner, epochs=1, mixup={"alpha": 0.4, "margin": 0.2, "rare_classes": rare_classes})
    loss = trainer.loss_function
    calls = []
    inner = loss.loss_function

    def record(pred, target, mask=None):
        calls.append((target.detach().clone(), None if mask is None else mask.clone(), loss.probabilities.clone()))
        return inner(pred, target, mask=mask)

    loss.loss_function = record
    seen = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(dict(e.state.output[0])))
    trainer.run()
    assert len(calls) == 2 * 3 and all("loss_mixup" in o and "mixup_lambda" in o for o in seen)
    for it, out in enumerate(seen):
        (_, _, q), (target, mask, _) = calls[2 * it], calls[2 * it + 1]  # the normal step, then the mixup step
        lam, y = out["mixup_lambda"], trainer.data_loader[it]["label"]
        if rare_classes is None:  # by hand: the two composed targets, mixed
            expected = lam * compose_context_target(q, y, C) + (1 - lam) * compose_context_target(
                q.flip(0), y.flip(0), C
            )
            torch.testing.assert_close(target, expected)
            assert mask is None
        else:
            hard, keep = mixup_labels(y, y.flip(0), lam, C, [1], margin=0.2)
            expected = compose_context_target(lam * q + (1 - lam) * q.flip(0), hard.argmax(1, keepdim=True), C)
            torch.testing.assert_close(target, expected)
            torch.testing.assert_close(mask, keep)
            fg = hard[:, 1:2] * keep  # voxels the rule gives the rare label: the target is that class, no context
            assert torch.equal(target[:, 1:2][fg > 0], torch.ones_like(target[:, 1:2][fg > 0]))


def _twin_trainers(generator_lr: float, meta_interval: int = 1, **kw):
    """The authors' order and the reuse path from identical initial states (same seeds, same data)."""
    out = []
    for reuse in (False, True):
        learner = _learner(meta_interval=meta_interval, reuse_lookahead_gradient=reuse)
        learner.optimizer = torch.optim.SGD(learner.generator.parameters(), lr=generator_lr)
        out.append((learner, _trainer(learner, **kw)))
    return out


def test_reused_lookahead_step_equals_a_step_on_the_pre_update_target():
    (plain, plain_trainer), (learner, trainer) = _twin_trainers(generator_lr=1.0, epoch_length=1)
    batch = trainer.data_loader[0]
    x, y = batch["image"], batch["label"]
    reference = copy.deepcopy(trainer.network)
    with torch.no_grad():
        q_before = torch.softmax(learner.generator(x), 1)  # the generator before its meta update
    ref_pred = reference(x)
    ref_loss = ContextLabelLoss()(ref_pred, compose_context_target(q_before, y, C))
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    ref_opt.zero_grad()
    ref_loss.backward()
    ref_opt.step()

    fired = []
    for event in (Events.ITERATION_STARTED, *[getattr(IterationEvents, n) for n in _STEP_EVENTS]):
        trainer.add_event_handler(event, lambda e, name=str(event): fired.append(name))
    outputs = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(dict(e.state.output[0])))
    plain_trainer.run()
    trainer.run()
    assert learner.steps == 1 and learner.skipped == 0 and "meta_loss" in outputs[0]
    assert len(fired) == 1 + len(_STEP_EVENTS)  # the SupervisedTrainer events of step 1, once each
    # step 1 reused the look-ahead: the prediction, loss and update of the pre-update target
    torch.testing.assert_close(outputs[0]["pred"], ref_pred[0].detach(), rtol=1e-6, atol=1e-6)
    assert abs(outputs[0]["loss"] - float(ref_loss.detach())) < 1e-6
    for (name, p), r in zip(trainer.network.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, r, rtol=1e-6, atol=1e-6, msg=name)
    # the generator's update is the authors' one; step 1 differs from theirs by the generator's step in the target
    for a, b in zip(plain.generator.parameters(), learner.generator.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    diff = max(
        float((a - b).detach().abs().max())
        for a, b in zip(plain_trainer.network.parameters(), trainer.network.parameters(), strict=True)
    )
    assert diff > 1e-6


def test_reused_lookahead_step_is_the_default_step_when_the_generator_does_not_move():
    """Generator learning rate 0: the pre- and post-update targets agree, so both orders give the same training."""
    (_, plain_trainer), (learner, trainer) = _twin_trainers(generator_lr=0.0, meta_interval=2, epochs=2)
    seen = {id(plain_trainer): [], id(trainer): []}
    for t in (plain_trainer, trainer):
        t.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen[id(e)].append(dict(e.state.output[0])))
        t.run()
    assert learner.steps == 3 and trainer.state.iteration == 6
    for a, b in zip(seen[id(plain_trainer)], seen[id(trainer)], strict=True):
        assert abs(a["loss"] - b["loss"]) < 1e-6 and ("meta_loss" in a) == ("meta_loss" in b)
        torch.testing.assert_close(a["pred"], b["pred"], rtol=1e-6, atol=1e-6)
    for a, b in zip(plain_trainer.network.parameters(), trainer.network.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_reuse_falls_back_without_a_finite_gradient_and_checks_its_settings():
    learner = _learner(reuse_lookahead_gradient=True)
    batch = _batch()

    def nan_loss(pred, target):
        return ContextLabelLoss()(pred, target) * float("nan")

    seg = TinySeg()
    learner.meta_step(seg, nan_loss, torch.optim.SGD(seg.parameters(), lr=0.1), batch["image"], batch["label"], None)
    assert learner.pop_train_step() is None  # step 1 then runs as usual
    learner.meta_step(seg, ContextLabelLoss(), torch.optim.SGD(seg.parameters(), lr=0.1), *batch.values(), None)
    step = learner.pop_train_step()
    assert step is not None and set(step.grads) == {k for k, _ in seg.named_parameters()}
    assert learner.pop_train_step() is None  # handed out once
    with pytest.raises(ValueError, match="reuse_lookahead_gradient must be true or false"):
        _learner(reuse_lookahead_gradient="yes")
    with pytest.raises(ValueError, match="SimpleInferer"):
        _trainer(_learner(reuse_lookahead_gradient=True), inferer=SlidingWindowInferer(roi_size=SHAPE)).run()
    with pytest.raises(ValueError, match="accumulation_steps"):
        _trainer(_learner(reuse_lookahead_gradient=True), accumulation_steps=2).run()


def test_meta_step_runs_the_segmenter_in_training_mode_after_validation():
    learner = _learner()
    trainer = _trainer(learner, epoch_length=1)
    modes = []
    trainer.network.register_forward_pre_hook(lambda m, _: modes.append(m.training))
    trainer.network.eval()  # as a validation run leaves it
    trainer.run()
    assert learner.steps == 1 and modes and all(modes)


class BatchNormSeg(TinySeg):
    """``TinySeg`` with a BatchNorm layer: running statistics that the normal step's forward pass updates."""

    def __init__(self, out_channels: int = K) -> None:
        super().__init__(out_channels)
        self.norm = nn.BatchNorm3d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.tanh(self.norm(self.conv1(x))))


def test_reused_step_updates_batchnorm_statistics_as_the_normal_step():
    """The look-ahead restores the buffers; the reused step puts back those after its pass at theta (one update)."""
    trainers = []
    for reuse in (False, True):
        learner = _learner(reuse_lookahead_gradient=reuse)
        learner.optimizer = torch.optim.SGD(learner.generator.parameters(), lr=0.0)  # the same target in both
        torch.manual_seed(2)
        trainers.append(_trainer(learner, network=BatchNormSeg(), epochs=2))
    for trainer in trainers:
        trainer.run()
    plain, reused = trainers
    assert learner.steps == 6 and int(reused.network.norm.num_batches_tracked) == 6
    for (name, a), b in zip(plain.network.state_dict().items(), reused.network.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=name)  # parameters and running statistics
    assert float((reused.network.norm.running_var - 1).abs().max()) > 1e-3  # the statistics did move


def test_per_sample_meta_step_is_the_authors_loop_over_the_batch():
    """``lookahead="per_sample"`` (the authors' ``for kbatch`` loop): one look-ahead and one generator update per
    sample, each on the context labels of the generator as the previous sample's update left it."""
    batch = _batch(b=3)
    seg = TinySeg()
    learner = _learner(lookahead="per_sample")
    reference = _learner(lookahead="batched")  # same seed: the same initial generator
    for a, b in zip(learner.generator.parameters(), reference.generator.parameters(), strict=True):
        assert torch.equal(a, b)
    out = learner.meta_step(seg, ContextLabelLoss(), torch.optim.SGD(seg.parameters(), lr=0.1), *batch.values(), None)
    losses = []
    for b in range(3):  # the loop, by hand: the batched meta step on one sample at a time
        one = {k: v[b : b + 1] for k, v in batch.items()}
        losses.append(
            reference.meta_step(seg, ContextLabelLoss(), torch.optim.SGD(seg.parameters(), lr=0.1), *one.values(), None)
        )
    assert learner.steps == 1 and learner.updates == 3 and reference.updates == 3 and learner.skipped == 0
    for a, b in zip(learner.generator.parameters(), reference.generator.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert out["meta_loss"] == pytest.approx(sum(o["meta_loss"] for o in losses) / 3, rel=1e-5)
    # the batched form is another update: one step on the batch-mean hypergradient
    batched = _learner(lookahead="batched")
    batched.meta_step(seg, ContextLabelLoss(), torch.optim.SGD(seg.parameters(), lr=0.1), *batch.values(), None)
    diff = max(
        float((a - b).abs().max())
        for a, b in zip(batched.generator.parameters(), learner.generator.parameters(), strict=True)
    )
    assert batched.updates == 1 and diff > 1e-4
    with pytest.raises(ValueError, match="lookahead='batched'"):
        _learner(lookahead="per_sample", reuse_lookahead_gradient=True)
    with pytest.raises(ValueError, match="lookahead must be one of"):
        _learner(lookahead="vmap")
