# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Tests of the policy-driven augmentation data path (:class:`monai_imbalance.transforms.PolicyAugmentd`).

The transform draws bins from its class group's shared probabilities (a background-identity / foreground-flip
policy flips exactly the foreground patches), applies exactly what the pool gives for those bins (recomputed
independently from the same random stream), records bins and group so that they collate with the batch and the
policy recomputes differentiable weights from them, and, in ``DataLoader`` worker processes started before a policy
update, samples from the updated policy (same persistent worker process before and after).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset, MetaTensor, list_data_collate
from monai.transforms import Compose, Transform

from monai_imbalance.augment import AugmentationPolicy, SharedPolicyProbabilities, TrainingTransformPool
from monai_imbalance.transforms import PolicyAugmentd, RandCropByLabelClassesWithCentreClassd


def _policy(groups=None) -> AugmentationPolicy:
    """Identity everywhere, except what the tests set."""
    pool = TrainingTransformPool(["scale", "mirror_x", "gamma"])
    return AugmentationPolicy(pool, groups=groups, init={"scale": 0.0, "mirror_x": 0.0, "gamma": 0.0})


def _force(policy: AugmentationPolicy, group: str, op: str, bin_index: int) -> None:
    with torch.no_grad():
        p = policy.logits[group][op]
        p.fill_(float("-inf"))
        p[bin_index] = 0.0


def _sample(cls: int, seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(1, 6, 6, 6, generator=g),
        "label": torch.randint(0, 2, (1, 6, 6, 6), generator=g),
        "patch_class": cls,
    }


class _RecordProcess(Transform):
    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        d["pid"] = os.getpid()
        return d


def test_class_groups_pick_their_policy_and_bins_are_recorded() -> None:
    policy = _policy()
    _force(policy, "foreground", "mirror_x", 1)
    t = PolicyAugmentd(["image", "label"], SharedPolicyProbabilities(policy), label_keys="label")
    for cls in (0, 1, 2):
        d = _sample(cls)
        out = t(d)
        flipped = cls != 0
        ref = (lambda x: torch.flip(x, dims=(1,))) if flipped else (lambda x: x)
        assert torch.equal(out["image"], ref(d["image"]))
        assert torch.equal(out["label"], ref(d["label"]))
        assert out["policy_bins"].dtype == torch.long and out["policy_bins"].tolist() == [0, int(flipped), 0]
        assert out["policy_group"] == int(flipped)
        assert out["patch_class"] == cls


def test_output_is_what_the_pool_gives_for_the_drawn_bins() -> None:
    policy = AugmentationPolicy(TrainingTransformPool(["scale", "rotate_z", "gamma", "noise"]), init=0)
    shared = SharedPolicyProbabilities(policy)
    t = PolicyAugmentd(["image", "label"], shared, label_keys=["label"], spatial_size=(4, 4, 4))
    for seed in range(4):
        d = _sample(1, seed)
        t.set_random_state(seed)
        out = t(d)
        # independent recomputation from the same random stream: group -> bins -> values -> pool
        r = np.random.RandomState(seed)
        bins = shared.sample_bins(1, r)
        values = shared.pool.sample_values(bins, r)
        assert out["policy_bins"].tolist() == bins.tolist()
        assert torch.allclose(out["image"], shared.pool.apply_image(d["image"], values, (4, 4, 4)), atol=1e-6)
        assert torch.equal(out["label"], shared.pool.apply_label(d["label"], values, (4, 4, 4)))
        assert out["image"].shape == (1, 4, 4, 4)


def test_batches_carry_bins_and_groups_for_differentiable_weights() -> None:
    policy = _policy()
    t = PolicyAugmentd(["image", "label"], SharedPolicyProbabilities(policy), label_keys="label")
    t.set_random_state(0)
    batch = list_data_collate([t(_sample(c, c)) for c in (0, 1, 1, 0)])
    assert batch["policy_bins"].shape == (4, 3) and batch["policy_group"].tolist() == [0, 1, 1, 0]
    w = policy.weights(batch["policy_bins"], batch["policy_group"]).weight
    assert torch.allclose(w, torch.ones(4))
    w.sum().backward()
    assert policy.logits["foreground"]["scale"].grad is not None


def test_metatensor_metadata_is_kept() -> None:
    policy = _policy()
    _force(policy, "background", "gamma", 2)
    t = PolicyAugmentd("image", SharedPolicyProbabilities(policy))
    img = MetaTensor(torch.rand(1, 5, 5, 5) + 1, affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    out = t({"image": img, "patch_class": 0})
    assert isinstance(out["image"], MetaTensor)
    assert torch.equal(out["image"].affine, img.affine)
    assert not torch.allclose(out["image"].as_tensor(), img.as_tensor())


def test_bad_input() -> None:
    shared = SharedPolicyProbabilities(_policy())
    with pytest.raises(KeyError, match="patch_class"):
        PolicyAugmentd("image", shared)({"image": torch.zeros(1, 4, 4, 4)})
    agnostic = SharedPolicyProbabilities(_policy(groups={"all": None}))
    out = PolicyAugmentd("image", agnostic)({"image": torch.zeros(1, 4, 4, 4)})
    assert out["policy_group"] == 0
    with pytest.raises(ValueError, match="label_keys"):
        PolicyAugmentd("image", shared, label_keys="label")
    with pytest.raises(ValueError, match="SharedPolicyProbabilities"):
        PolicyAugmentd("image", _policy())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="spatial_size"):
        PolicyAugmentd("image", shared, spatial_size=(4, 4))
    with pytest.raises(ValueError, match="bins_key"):
        PolicyAugmentd(["image", "policy_bins"], shared)


def test_after_a_class_tagging_crop() -> None:
    policy = _policy()
    _force(policy, "foreground", "mirror_x", 1)
    label = torch.zeros(1, 12, 12, 12, dtype=torch.long)
    label[:, 4:8, 4:8, 4:8] = 1
    image = torch.randn(1, 12, 12, 12)
    crop = RandCropByLabelClassesWithCentreClassd(["image", "label"], "label", (8, 8, 8), num_classes=2, num_samples=6)
    crop.set_random_state(1)
    aug = PolicyAugmentd(["image", "label"], SharedPolicyProbabilities(policy), label_keys="label", spatial_size=6)
    for s in crop({"image": image, "label": label}):
        out = aug(s)
        assert out["policy_group"] == int(s["patch_class"] != 0)
        assert int(out["policy_bins"][1]) == int(s["patch_class"] != 0)


def test_a_running_worker_sees_an_update_made_after_the_loader_started() -> None:
    policy = _policy()
    shared = SharedPolicyProbabilities(policy)
    data = [_sample(i % 2, i) for i in range(4)]
    transform = Compose([PolicyAugmentd(["image", "label"], shared, label_keys="label"), _RecordProcess()])
    loader = DataLoader(
        Dataset(data, transform),
        batch_size=2,
        num_workers=1,
        persistent_workers=True,
        multiprocessing_context="fork",
    )
    first = list(loader)  # the worker process starts here, with the identity-only policy
    assert all(int(b["policy_bins"].abs().sum()) == 0 for b in first)
    pids = {int(p) for b in first for p in b["pid"]}
    assert len(pids) == 1 and os.getpid() not in pids

    _force(policy, "foreground", "mirror_x", 1)  # the trainer's policy step ...
    shared.update(policy)  # ... and its publication to the workers
    second = list(loader)
    assert {int(p) for b in second for p in b["pid"]} == pids  # the same, already running process
    for b in second:
        for i in range(2):
            fg = int(b["patch_class"][i]) == 1
            assert int(b["policy_bins"][i, 1]) == int(fg)
    # the augmented images are the flipped originals for the foreground samples only
    images = torch.cat([b["image"] for b in second])
    for i, d in enumerate(data):
        expected = torch.flip(d["image"], dims=(1,)) if d["patch_class"] == 1 else d["image"]
        assert torch.equal(images[i], expected)
