# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Tests of saving and loading policies (:mod:`monai_imbalance.augment.io`).

A saved policy round-trips (into a given policy or rebuilt from its JSON), the JSON states the probabilities per
group, operation and bin label (and the test-time ranking), the state dict loads with ``weights_only=True``, and a
file for another op pool, another class-group count, another policy type, or with NaN logits raises a clear error.
"""

from __future__ import annotations

import json

import pytest
import torch

from monai_imbalance.augment import (
    AugmentationPolicy,
    TestTimePolicy,
    TrainingTransformPool,
    describe_policy,
    load_policy,
    policy_paths,
    save_policy,
)


def test_paths() -> None:
    for name in ("p", "p.pt", "p.json"):
        pt, js = policy_paths(f"/tmp/x/{name}")
        assert (pt.name, js.name) == ("p.pt", "p.json")


def test_training_policy_round_trip_and_readable_json(tmp_path) -> None:
    policy = AugmentationPolicy(init="nnunet")
    with torch.no_grad():
        policy.logits["foreground"]["gamma"].add_(torch.tensor([0.0, 0.5, 1.0, 1.5]))
    pt, js = save_policy(policy, tmp_path / "policy")
    desc = json.loads(js.read_text())
    assert desc["type"] == "AugmentationPolicy" and desc["groups"] == {"background": [0], "foreground": None}
    assert [o["name"] for o in desc["pool"]["ops"]][:2] == ["scale", "rotate_x"]
    fg = desc["probabilities"]["foreground"]
    assert list(fg["rotate_z"]) == ["identity", "5", "15", "25", "rot90"]
    assert fg["mirror_y"] == {"identity": 0.5, "flip": 0.5}
    gamma = torch.softmax(policy.logits["foreground"]["gamma"].detach(), 0)
    assert list(fg["gamma"].values()) == pytest.approx(gamma.tolist(), abs=1e-6)
    assert all(sum(v.values()) == pytest.approx(1.0, abs=1e-5) for v in fg.values())
    assert js.read_text().startswith("{\n    ")  # indented by 4
    # MONAI loads with weights_only=True
    torch.load(pt, weights_only=True)
    into = load_policy(tmp_path / "policy.json", AugmentationPolicy(init=0))
    rebuilt = load_policy(pt)
    for p in (into, rebuilt):
        assert torch.equal(p.logits["foreground"]["gamma"], policy.logits["foreground"]["gamma"])
    assert isinstance(rebuilt, AugmentationPolicy) and rebuilt.groups == policy.groups


def test_test_time_policy_round_trip(tmp_path) -> None:
    policy = TestTimePolicy(init={"mirror_z": 0.6})
    save_policy(policy, tmp_path / "tea")
    desc = describe_policy(policy)
    assert desc["ranking"][0] == "mirror_z" and desc["probabilities"]["mirror_z"] == pytest.approx(0.6)
    loaded = load_policy(tmp_path / "tea")
    assert isinstance(loaded, TestTimePolicy) and torch.equal(loaded.logits, policy.logits)


def test_mismatched_files_raise_clear_errors(tmp_path) -> None:
    save_policy(AugmentationPolicy(TrainingTransformPool(["scale", "noise"])), tmp_path / "subset")
    with pytest.raises(ValueError, match="another op pool: ops \\['scale', 'noise'\\]"):
        load_policy(tmp_path / "subset", AugmentationPolicy())
    save_policy(AugmentationPolicy(groups={"all": None}), tmp_path / "agnostic")
    with pytest.raises(ValueError, match="1 class group.*this policy has 2"):
        load_policy(tmp_path / "agnostic", AugmentationPolicy())
    save_policy(TestTimePolicy(), tmp_path / "tea")
    with pytest.raises(ValueError, match="TestTimePolicy.*expected a 'AugmentationPolicy'"):
        load_policy(tmp_path / "tea", AugmentationPolicy())
    # without the JSON, the state dict's own record of the pool is checked
    (tmp_path / "subset.json").unlink()
    with pytest.raises(ValueError, match="another op pool"):
        load_policy(tmp_path / "subset", AugmentationPolicy())
    with pytest.raises(ValueError, match="missing: pass the policy"):
        load_policy(tmp_path / "subset")
    with pytest.raises(FileNotFoundError):
        load_policy(tmp_path / "absent")


def test_nan_logits_in_a_file(tmp_path) -> None:
    policy = AugmentationPolicy()
    pt, _ = save_policy(policy, tmp_path / "p")
    state = torch.load(pt, weights_only=True)
    state["logits.background.noise"][1] = float("nan")
    torch.save(state, pt)
    with pytest.raises(ValueError, match="p.pt: policy group 'background', op 'noise' holds NaN"):
        load_policy(pt, AugmentationPolicy())
    with torch.no_grad():
        policy.logits["foreground"]["scale"][0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        save_policy(policy, tmp_path / "q")
    with pytest.raises(ValueError, match="AugmentationPolicy or a TestTimePolicy"):
        describe_policy(torch.nn.Linear(2, 2))  # type: ignore[arg-type]
