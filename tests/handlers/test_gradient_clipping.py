# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""GradientNormClipping on a real SupervisedTrainer: a gradient above the bound is scaled onto it (same direction,
norm ``max_norm``), one inside is untouched, and the optimizer steps with the clipped gradient, also after gradient
accumulation and under a GradScaler; checked against gradients computed here by autograd."""

from __future__ import annotations

import copy

import pytest
import torch
from ignite.engine import Engine
from monai.data import DataLoader
from monai.engines import SupervisedTrainer

from monai_imbalance.handlers import GradientNormClipping


def _data(n: int = 2) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        {"image": torch.randn(1, 8, 8, generator=g), "label": (torch.rand(1, 8, 8, generator=g) > 0.5).float()}
        for _ in range(n)
    ]


def _loss(scale: float):
    def loss(pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return scale * torch.nn.functional.cross_entropy(pred, label[:, 0].long())

    return loss


def _network() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))


def _gradient(net: torch.nn.Module, batches: list[list[dict]], scale: float) -> list[torch.Tensor]:
    """The mean over ``batches`` of the loss gradient of a copy of ``net``, by autograd (no trainer, no clipping)."""
    net = copy.deepcopy(net)
    total = 0
    for batch in batches:
        image = torch.stack([d["image"] for d in batch])
        label = torch.stack([d["label"] for d in batch])
        total = total + _loss(scale)(net(image), label) / len(batches)
    return list(torch.autograd.grad(total, list(net.parameters())))


def _norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.cat([t.flatten() for t in tensors]))


def _trainer(net: torch.nn.Module, data: list[dict], scale: float, lr: float, **kwargs) -> SupervisedTrainer:
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=DataLoader(data, batch_size=2, shuffle=False),
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=lr),
        loss_function=_loss(scale),
        **kwargs,
    )


@pytest.mark.parametrize("scale, clipped", [(1000.0, True), (1e-3, False)])
def test_gradient_above_the_bound_is_scaled_onto_it_and_one_inside_is_untouched(scale, clipped):
    data, net = _data(), _network()
    expected = _gradient(net, [data], scale)
    norm = _norm(expected)
    max_norm = 1.0
    assert (norm > max_norm) == clipped  # the case is what it says
    trainer = _trainer(net, data, scale, lr=0.0)  # lr 0: the step leaves the weights, the gradients stay to be read
    handler = GradientNormClipping(max_norm=max_norm)
    handler.attach(trainer)
    trainer.run()
    grads = [p.grad for p in net.parameters()]
    torch.testing.assert_close(handler.total_norm, norm)
    if clipped:
        assert float(_norm(grads)) <= max_norm * (1 + 1e-5)
        torch.testing.assert_close(_norm(grads), torch.tensor(max_norm))
        for got, g in zip(grads, expected, strict=True):
            torch.testing.assert_close(got, g * (max_norm / norm), rtol=1e-5, atol=1e-7)
    else:
        for got, g in zip(grads, expected, strict=True):
            torch.testing.assert_close(got, g, rtol=0, atol=0)


def test_the_optimizer_steps_with_the_clipped_gradient():
    data, net = _data(), _network()
    scale, lr, max_norm = 1000.0, 0.1, 2.0
    g = _gradient(net, [data], scale)
    norm = _norm(g)
    assert norm > 10 * max_norm
    before = [p.detach().clone() for p in net.parameters()]
    unclipped = copy.deepcopy(net)
    trainer = _trainer(net, data, scale, lr)
    GradientNormClipping(max_norm=max_norm).attach(trainer)
    trainer.run()
    for w0, w, gi in zip(before, net.parameters(), g, strict=True):
        torch.testing.assert_close(w.detach(), w0 - lr * gi * (max_norm / norm), rtol=1e-5, atol=1e-6)
    _trainer(unclipped, data, scale, lr).run()  # without the handler the step is the full gradient's
    for w0, w, gi in zip(before, unclipped.parameters(), g, strict=True):
        torch.testing.assert_close(w.detach(), w0 - lr * gi, rtol=1e-5, atol=1e-6)


def test_accumulated_gradient_is_clipped_once_at_the_step():
    """With accumulation, MONAI fires BACKWARD_COMPLETED after each micro-batch; the step's gradient is the mean of
    both, and it is that gradient that is clipped (clipping each half would give another update)."""
    data, net = _data(4), _network()
    scale, lr, max_norm = 1000.0, 0.1, 2.0
    g = _gradient(net, [data[:2], data[2:]], scale)
    norm = _norm(g)
    assert norm > max_norm
    before = [p.detach().clone() for p in net.parameters()]
    trainer = _trainer(net, data, scale, lr, accumulation_steps=2)
    GradientNormClipping(max_norm=max_norm).attach(trainer)
    trainer.run()
    assert trainer.state.iteration == 2
    for w0, w, gi in zip(before, net.parameters(), g, strict=True):
        torch.testing.assert_close(w.detach(), w0 - lr * gi * (max_norm / norm), rtol=1e-5, atol=1e-6)


def test_every_optimizer_step_is_clipped_also_under_a_grad_scaler():
    """An extra step (as the adversarial and mixup trainers take) is clipped too, and under a GradScaler the
    clipping sees the unscaled gradient: the update is the clipped true gradient, not the clipped scaled one."""
    data, net = _data(), _network()
    scale, lr, max_norm = 1000.0, 0.1, 2.0
    trainer = _trainer(net, data, scale, lr)
    handler = GradientNormClipping(max_norm=max_norm)
    handler.attach(trainer)
    image = torch.stack([d["image"] for d in data])
    label = torch.stack([d["label"] for d in data])
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for _ in range(2):
        g = _gradient(net, [data], scale)
        norm = _norm(g)
        assert norm > max_norm
        before = [p.detach().clone() for p in net.parameters()]
        trainer.optimizer.zero_grad()
        scaler.scale(_loss(scale)(net(image), label)).backward()
        scaler.step(trainer.optimizer)
        scaler.update()
        torch.testing.assert_close(handler.total_norm, norm, rtol=1e-5, atol=1e-6)
        for w0, w, gi in zip(before, net.parameters(), g, strict=True):
            torch.testing.assert_close(w.detach(), w0 - lr * gi * (max_norm / norm), rtol=1e-5, atol=1e-6)


def test_one_hook_however_often_attached_or_run_and_detach_stops_the_clipping():
    data, net = _data(), _network()
    trainer = _trainer(net, data, 1000.0, lr=0.0)
    trainer.optimizer.register_step_pre_hook(lambda *args: None)  # someone else's hook stays
    handler = GradientNormClipping(max_norm=1.0)
    handler.attach(trainer)
    handler.attach(trainer)
    trainer.run()
    trainer.run()
    assert len(trainer.optimizer._optimizer_step_pre_hooks) == 2
    assert _norm([p.grad for p in net.parameters()]) <= 1.0 + 1e-5
    handler.detach(trainer)
    assert len(trainer.optimizer._optimizer_step_pre_hooks) == 1
    trainer.run()
    assert _norm([p.grad for p in net.parameters()]) > 1.0


def test_attached_while_the_trainer_is_built_as_a_bundle_attaches_its_handlers():
    """SupervisedTrainer attaches ``train_handlers`` before it holds its optimizer: the hook comes at the run."""
    data, net = _data(), _network()
    handler = GradientNormClipping(max_norm=1.0)
    trainer = _trainer(net, data, 1000.0, lr=0.0, train_handlers=[handler])
    assert handler.optimizer is None
    trainer.run()
    assert handler.optimizer is trainer.optimizer
    assert _norm([p.grad for p in net.parameters()]) <= 1.0 + 1e-5


def test_rejects_a_non_positive_bound_an_engine_without_optimizer_and_a_fused_optimizer():
    with pytest.raises(ValueError, match="positive"):
        GradientNormClipping(max_norm=0.0)
    engine = Engine(lambda engine, batch: None)
    GradientNormClipping().attach(engine)
    with pytest.raises(TypeError, match="optimizer"):
        engine.run([0])
    net = _network()
    trainer = _trainer(net, _data(), 1.0, lr=0.1)
    trainer.optimizer = torch.optim.SGD(net.parameters(), lr=0.1, fused=True)
    with pytest.raises(ValueError, match="fused"):
        GradientNormClipping().attach(trainer)
