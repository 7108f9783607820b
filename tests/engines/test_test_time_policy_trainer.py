# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Post-hoc TEA (JCSAugment, Li et al., IEEE TMI 2023): the test-time policy learned on a frozen, trained segmenter.

A tiny smooth segmenter on 8^3 patches and a four-transform pool; the trained weights are a saved ``state_dict`` that
the trainer loads, and the checks compare against that file and against the policy's starting probabilities.
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from monai_imbalance.augment import LearnedTTAInferer, TestTimePolicy, TestTimeTransformPool, load_policy
from monai_imbalance.engines import TestTimePolicyLearner, TestTimePolicyTrainer

torch.set_num_threads(1)

SHAPE = (8, 8, 8)
NAMES = ["identity", "mirror_x", "mirror_y", "rot90_xy+"]


class Seg(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(1, 3, 3, padding=1)
        self.norm = nn.InstanceNorm3d(3, affine=True)
        self.conv2 = nn.Conv3d(3, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.tanh(self.norm(self.conv1(x))))


def _loader(n: int = 2) -> list[dict[str, torch.Tensor]]:
    """``n`` batches of two patches whose label is a bright blob (the segmenter can be right or wrong on it)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        image = torch.randn(2, 1, *SHAPE, generator=g)
        label = (image > 0.5).to(torch.uint8)
        label[..., :2] = 0  # not symmetric under the flips
        out.append({"image": image, "label": label})
    return out


def _setup(tmp_path, lr: float, **kw) -> tuple[TestTimePolicyTrainer, dict[str, torch.Tensor], Seg]:
    torch.manual_seed(1)
    trained = Seg()
    with torch.no_grad():  # "trained": weights no fresh Seg() has
        for p in trained.parameters():
            p.mul_(3.0)
    torch.save(trained.state_dict(), tmp_path / "model.pt")
    saved = {k: v.clone() for k, v in trained.state_dict().items()}
    network = Seg()  # another initialisation: the trainer must load the file
    policy = TestTimePolicy(TestTimeTransformPool(NAMES), init=0)
    optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
    learner = TestTimePolicyLearner(policy=policy, optimizer=optimizer, num_samples=6, patches=None)
    settings = {"checkpoint": tmp_path / "model.pt", "policy_file": tmp_path / "out" / "test_time_policy", **kw}
    trainer = TestTimePolicyTrainer("cpu", 2, _loader(), network, learner, epoch_length=3, log_interval=2, **settings)
    return trainer, saved, network


def test_the_policy_moves_on_the_frozen_segmenter_and_is_written(tmp_path, caplog):
    trainer, saved, network = _setup(tmp_path, lr=0.1)
    start = trainer.learner.policy.probabilities().clone()
    with caplog.at_level(logging.INFO, logger="monai_imbalance.engines.test_time_policy_trainer"):
        trainer.run()
    # the segmenter: the trained weights, loaded and left bit for bit as they were; frozen
    state = network.state_dict()
    assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in saved)
    assert not network.training and not any(p.requires_grad for p in network.parameters())
    # the policy: 2 epochs x 3 steps (the 2-batch loader re-iterated), moved from its start
    learner = trainer.learner
    assert learner.steps == 6 and learner.skipped == 0 and trainer.state.iteration == 6
    probs = learner.policy.probabilities()
    change = (probs - start).abs().max().item()
    assert change > 1e-3 and trainer.state.metrics["test_time_policy_max_change"] == pytest.approx(change, abs=1e-7)
    assert 0.0 <= trainer.state.metrics["test_time_loss"] <= 1.0  # mean soft-Dice loss of the last epoch
    # the file the learned-TTA inferer reads holds this policy
    torch.testing.assert_close(load_policy(tmp_path / "out" / "test_time_policy").probabilities(), probs)
    inferer = LearnedTTAInferer(policy=tmp_path / "out" / "test_time_policy.pt", top_k=2).load()
    assert inferer.indices == learner.policy.top_k(2)[0]
    # progress every 2 iterations, then how far the policy moved
    lines = [r.getMessage() for r in caplog.records]
    assert sum("post-hoc TEA epoch" in line and "loss" in line for line in lines) == 3
    assert any("largest change of a transform probability" in line for line in lines)


def test_no_learning_rate_no_move(tmp_path):
    trainer, saved, network = _setup(tmp_path, lr=0.0)
    start = trainer.learner.policy.probabilities().clone()
    trainer.run()
    assert trainer.learner.steps == 6
    assert torch.equal(trainer.learner.policy.probabilities(), start)
    assert trainer.state.metrics["test_time_policy_max_change"] == 0.0
    assert all(torch.equal(network.state_dict()[k], saved[k]) for k in saved)
    torch.testing.assert_close(load_policy(tmp_path / "out" / "test_time_policy").probabilities(), start)


def test_a_missing_checkpoint_fails_naming_it(tmp_path):
    trainer, _, _ = _setup(tmp_path, lr=0.1)
    (tmp_path / "model.pt").unlink()  # built without the file (a config checker builds it before training) ...
    with pytest.raises(FileNotFoundError, match="no trained segmenter at '.*model.pt'"):
        trainer.run()  # ... and refused when run, before any step
    assert trainer.learner.steps == 0 and not (tmp_path / "out").exists()


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="TestTimePolicyTrainer learner must be a TestTimePolicyLearner"):
        TestTimePolicyTrainer("cpu", 1, _loader(), Seg(), learner={"policy": TestTimePolicy()})
    with pytest.raises(ValueError, match="log_interval"):
        TestTimePolicyTrainer("cpu", 1, _loader(), Seg(), TestTimePolicyLearner(TestTimePolicy()), log_interval=0)
