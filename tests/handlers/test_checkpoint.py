# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
from ignite.engine import Engine, Events

from monai_imbalance.handlers import (
    BestModelSaver,
    LatestCheckpointSaver,
    ResumeFromLatestCheckpoint,
    atomic_torch_save,
)


def test_atomic_save_replaces_whole_file_and_cleans_up(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "ckpt.pt"
    atomic_torch_save({"w": torch.arange(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(3))

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_torch_save({"w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(3))  # the old file is intact
    assert os.listdir(path.parent) == ["ckpt.pt"]  # no temporary file left behind


def _evaluator_with_metrics(values):
    engine = Engine(lambda e, b: None)
    engine.state.key_metric_name = "dice"
    it = iter(values)

    @engine.on(Events.EPOCH_STARTED)
    def _set(e):
        e.state.metrics = {"dice": next(it)}

    return engine


def test_best_model_saver_saves_only_improvements(tmp_path):
    net = torch.nn.Linear(2, 1)
    saver = BestModelSaver(tmp_path, net)
    evaluator = _evaluator_with_metrics([0.2, 0.5, 0.4, float("nan"), 0.6])
    saver.attach(evaluator)
    start = net.weight.data.clone()
    evaluator.add_event_handler(Events.EPOCH_STARTED, lambda e: net.weight.data.add_(1.0))
    saved_epoch = []  # which epoch's weights the file holds after each epoch
    evaluator.add_event_handler(
        Events.EPOCH_COMPLETED,
        lambda e: saved_epoch.append(round(float((torch.load(saver.path, weights_only=True)["weight"] - start)[0, 0]))),
    )
    evaluator.run([0], max_epochs=5)
    assert saved_epoch == [1, 2, 2, 2, 5]  # 0.4 and NaN are not improvements
    assert saver.state_dict() == {"best_metric": 0.6, "best_epoch": 5}
    # the file holds the weights of epoch 5 (5 increments), as a bare state dict
    assert torch.allclose(torch.load(saver.path, weights_only=True)["weight"], net.weight.data)
    restored = BestModelSaver(tmp_path, net)
    restored.load_state_dict(saver.state_dict())
    assert restored.best_metric == 0.6 and restored.best_epoch == 5


def test_latest_saver_and_resume_round_trip(tmp_path):
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def step(engine, batch):
        opt.zero_grad()
        net(torch.ones(1, 2)).sum().backward()
        opt.step()

    trainer = Engine(step)
    LatestCheckpointSaver(tmp_path, {"model": net, "optimizer": opt, "none": None}).attach(trainer)
    trainer.run([0, 1, 2], max_epochs=2)
    ckpt = torch.load(tmp_path / "latest.pt", weights_only=True)
    assert set(ckpt) == {"model", "optimizer", "trainer"} and ckpt["trainer"]["iteration"] == 6

    net2 = torch.nn.Linear(2, 1)
    opt2 = torch.optim.SGD(net2.parameters(), lr=0.1)
    trainer2 = Engine(lambda e, b: None)
    ResumeFromLatestCheckpoint(tmp_path, {"model": net2, "optimizer": opt2}, resume=True).attach(trainer2)
    seen = SimpleNamespace(first=None)
    trainer2.add_event_handler(Events.EPOCH_STARTED, lambda e: seen.first or setattr(seen, "first", e.state.epoch))
    trainer2.run([0, 1, 2], max_epochs=3)
    assert seen.first == 3  # epochs 1-2 were restored, not rerun
    assert torch.equal(net2.weight, net.weight)


def test_resume_disabled_is_a_no_op_and_missing_file_is_named(tmp_path):
    net = torch.nn.Linear(2, 1)
    ResumeFromLatestCheckpoint(tmp_path, {"model": net}, resume=False).attach(Engine(lambda e, b: None))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "latest.pt")):
        ResumeFromLatestCheckpoint(tmp_path, {"model": net}, resume=True).attach(Engine(lambda e, b: None))
