# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""``PolicyPlotHandler``: records the policies' probabilities every epoch, plots them, logs TensorBoard scalars."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events

from monai_imbalance.augment import (
    AugmentationPolicy,
    TestTimePolicy,
    TestTimeTransformPool,
    TrainingTransformPool,
    load_policy,
)
from monai_imbalance.handlers import PolicyPlotHandler

OPS = ["scale", "mirror_x", "gamma"]


def _policies():
    policy = AugmentationPolicy(TrainingTransformPool(OPS), init="nnunet")
    tea = TestTimePolicy(TestTimeTransformPool(["identity", "mirror_x", "mirror_y"]), init="uniform")
    return policy, tea


def _drift(policy, tea):
    """Change the logits every epoch, as the policy steps would (a known change to compare against)."""

    def step(engine):
        with torch.no_grad():
            policy.logits["foreground"]["gamma"][1] += 0.5 * engine.state.epoch
            policy.logits["background"]["scale"][0] -= 0.3
            tea.logits[2] += 0.4

    return step


def _softmax(x):
    e = np.exp(np.asarray(x, dtype=np.float64) - np.max(x))
    return e / e.sum()


def test_records_every_epoch_the_policies_probabilities(tmp_path):
    policy, tea = _policies()
    handler = PolicyPlotHandler(policy, tmp_path / "png", tea, interval=2, policy_dir=tmp_path / "models")
    engine = Engine(lambda e, b: None)
    expected_gamma, expected_scale, expected_tea = [], [], []

    def snapshot(_):  # an independent copy of the probabilities, by hand from the logits
        expected_gamma.append(_softmax(policy.logits["foreground"]["gamma"].detach().numpy()))
        expected_scale.append(_softmax(policy.logits["background"]["scale"].detach().numpy()))
        expected_tea.append(_softmax(tea.logits.detach().numpy()))

    engine.add_event_handler(Events.EPOCH_COMPLETED, _drift(policy, tea))
    handler.attach(engine)  # after the drift: it records the epoch's final probabilities
    engine.add_event_handler(Events.EPOCH_COMPLETED, snapshot)
    engine.run([0], max_epochs=3)

    assert handler.epochs == [1, 2, 3]
    assert list(handler.training) == ["background", "foreground"] and list(handler.training["foreground"]) == OPS
    # the handler records the policies' float32 softmax, the references are float64: up to 2.6e-7 relative apart here
    # (1 - p amplifies), CPU-dependent in the last bits; one epoch's drift changes each probability by 6 % or more
    np.testing.assert_allclose(handler.training["foreground"]["gamma"], expected_gamma, rtol=1e-5)
    np.testing.assert_allclose(handler.training["background"]["scale"], expected_scale, rtol=1e-5)
    np.testing.assert_allclose([handler.test_time[n] for n in tea.pool.names], np.transpose(expected_tea), rtol=1e-5)
    applied = handler.applied()
    np.testing.assert_allclose(applied["background"]["scale"], [1 - p[0] for p in expected_scale], rtol=1e-5)
    assert handler.top_test_time().keys() == {"identity", "mirror_x", "mirror_y"}
    assert next(iter(handler.top_test_time())) == "mirror_y"  # the most probable at the last epoch first

    # PNG every 2 epochs and at the last one, non-empty
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert [p.name for p in pngs] == ["policy_epoch0002.png", "policy_epoch0003.png"]
    assert all(p.stat().st_size > 1000 for p in pngs)
    # the policy files hold the final policies (what the bundle's inference and evaluation read)
    loaded = load_policy(tmp_path / "models" / "policy")
    torch.testing.assert_close(loaded.probability_matrix(), policy.probability_matrix())
    desc = json.loads((tmp_path / "models" / "test_time_policy.json").read_text())
    assert desc["ranking"][0] == "mirror_y"
    np.testing.assert_allclose(list(desc["probabilities"].values()), expected_tea[-1], atol=1e-6)


def test_tensorboard_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    policy, tea = _policies()
    handler = PolicyPlotHandler(policy, tmp_path / "png", tea, interval=5, log_dir=tmp_path / "tb")
    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    engine.run([0], max_epochs=2)
    handler.summary_writer.close()
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    expected = {f"policy/{g}/{op}" for g in ("background", "foreground") for op in OPS}
    expected |= {f"test_time_policy/{n}" for n in tea.pool.names}
    assert tags == expected
    events = acc.Scalars("policy/foreground/mirror_x")
    assert [e.step for e in events] == [1, 2]
    assert all(abs(e.value - 0.5) < 1e-6 for e in events)  # nnU-Net preset: mirrors applied with p = 0.5
    assert [e.step for e in acc.Scalars("test_time_policy/identity")] == [1, 2]
    assert abs(acc.Scalars("test_time_policy/identity")[0].value - 1 / 3) < 1e-6


def test_state_dict_round_trip_and_resume(tmp_path):
    policy, tea = _policies()
    handler = PolicyPlotHandler(policy, tmp_path, tea)
    for epoch in (1, 2, 3):
        handler.record(epoch)
    state = handler.state_dict()
    torch.save(state, tmp_path / "state.pt")
    restored = PolicyPlotHandler(policy, tmp_path, tea)
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))  # primitives only
    assert restored.history == handler.history
    restored.record(2)  # a run resumed from epoch 1 re-records epoch 2: the later records are replaced
    assert restored.epochs == [1, 2] and len(restored.training["background"]["scale"]) == 2
    assert all(len(v) == 2 for v in restored.test_time.values())
    with pytest.raises(ValueError, match="series of lengths"):
        restored.load_state_dict({"epochs": [1], "training": {}, "test_time": {"identity": [0.1, 0.2]}})


def test_test_time_policy_alone_and_bad_arguments(tmp_path):
    _, tea = _policies()
    handler = PolicyPlotHandler(None, tmp_path, tea)
    handler.record(1)
    path = handler.plot()
    assert path.name == "policy_epoch0001.png" and path.stat().st_size > 0
    with pytest.raises(ValueError, match="needs a policy"):
        PolicyPlotHandler(None, tmp_path)
    with pytest.raises(ValueError, match="interval"):
        PolicyPlotHandler(None, tmp_path, tea, interval=0)
    with pytest.raises(ValueError, match="AugmentationPolicy"):
        PolicyPlotHandler(tea, tmp_path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nothing recorded"):
        PolicyPlotHandler(None, tmp_path, tea).plot()


def test_movement_is_the_largest_probability_change_since_the_start(tmp_path, caplog):
    policy, tea = _policies()
    start_gamma = _softmax(policy.logits["foreground"]["gamma"].detach().numpy())
    start_tea = _softmax(tea.logits.detach().numpy())
    handler = PolicyPlotHandler(policy, tmp_path / "png", tea, interval=5)
    assert handler.movement() == {"training": None, "test_time": None}  # before the run: nothing to compare with
    engine = Engine(lambda e, b: None)
    engine.add_event_handler(Events.EPOCH_COMPLETED, _drift(policy, tea))
    handler.attach(engine)
    with caplog.at_level("INFO"):
        engine.run([0], max_epochs=2)
    moved = handler.movement()
    # by hand: the foreground gamma logits moved most (+0.5, +1.0 on bin 1); every other table changes less
    gamma = np.abs(_softmax(policy.logits["foreground"]["gamma"].detach().numpy()) - start_gamma)
    assert moved["training"][1] == f"foreground/gamma[{int(gamma.argmax())}]"
    assert moved["training"][0] == pytest.approx(float(gamma.max()), rel=1e-5)
    tea_change = np.abs(_softmax(tea.logits.detach().numpy()) - start_tea)
    assert moved["test_time"] == (pytest.approx(float(tea_change.max()), rel=1e-5), "mirror_y")
    assert "largest change of a probability since the start of the run" in caplog.text  # the last epoch logs it
    handler._remember_start()
    assert handler.movement()["training"][0] == 0.0  # a frozen policy: no change
