# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""FinalEpochValidationHandler on real MONAI engines: the periodic validations of MONAI's handler, plus the last
epoch (or iteration) when it is off the interval, never twice."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import ValidationHandler

from monai_imbalance.handlers import FinalEpochValidationHandler


def _engines(max_epochs: int) -> tuple[SupervisedTrainer, SupervisedEvaluator, list[int]]:
    g = torch.Generator().manual_seed(0)
    data = [{"image": torch.randn(1, 8, 8, generator=g), "label": torch.zeros(1, 8, 8)} for _ in range(4)]
    net = torch.nn.Conv2d(1, 2, 3, padding=1)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=DataLoader(data[:1], batch_size=1), network=net
    )
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=max_epochs,
        train_data_loader=DataLoader(data, batch_size=2),
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.01),
        loss_function=lambda pred, label: torch.nn.functional.cross_entropy(pred, label[:, 0].long()),
    )
    validated: list[int] = []
    evaluator.add_event_handler(Events.STARTED, lambda e: validated.append(trainer.state.iteration))
    return trainer, evaluator, validated


@pytest.mark.parametrize(
    "max_epochs, interval, epochs",
    [(1, 5, [1]), (12, 5, [5, 10, 12]), (10, 5, [5, 10]), (3, 1, [1, 2, 3])],
)
def test_validates_every_interval_and_the_last_epoch_once(max_epochs, interval, epochs):
    trainer, evaluator, validated = _engines(max_epochs)
    FinalEpochValidationHandler(interval=interval, validator=evaluator).attach(trainer)
    trainer.run()
    assert validated == [2 * e for e in epochs]  # 2 iterations per epoch


def test_monai_handler_alone_skips_the_last_epoch_off_the_interval():
    """The gap the handler closes: MONAI's ValidationHandler never validates a run shorter than its interval."""
    trainer, evaluator, validated = _engines(3)
    ValidationHandler(interval=5, validator=evaluator).attach(trainer)
    trainer.run()
    assert validated == []


@pytest.mark.parametrize("interval, iterations", [(4, [4, 6]), (3, [3, 6])])
def test_iteration_level_validates_after_the_last_iteration(interval, iterations):
    trainer, evaluator, validated = _engines(3)  # 6 iterations
    FinalEpochValidationHandler(interval=interval, validator=evaluator, epoch_level=False).attach(trainer)
    trainer.run()
    assert validated == iterations
