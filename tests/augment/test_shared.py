# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Tests of the shared probability table (:class:`monai_imbalance.augment.SharedPolicyProbabilities`).

The table lives in shared memory, follows ``update``, survives ``copy.deepcopy`` and the pickling that a spawned
worker receives (the copy reads the same memory), draws bins with the table's probabilities, maps classes to groups
like the policy, and refuses a policy of another pool. The end-to-end check with ``DataLoader`` workers is in
``tests/transforms/test_policy_augment.py``.
"""

from __future__ import annotations

import copy
import io
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest
import torch
import torch.multiprocessing  # noqa: F401  (registers the tensor reductions of ForkingPickler)

from monai_imbalance.augment import AugmentationPolicy, SharedPolicyProbabilities, TrainingTransformPool


def _policy(**kw) -> AugmentationPolicy:
    return AugmentationPolicy(TrainingTransformPool(["scale", "mirror_x", "noise"]), **kw)


def test_table_is_shared_and_follows_updates() -> None:
    policy = _policy(init=0)
    shared = SharedPolicyProbabilities(policy)
    assert shared.is_shared
    assert shared.version == 2
    assert np.allclose(shared.read(1), np.concatenate([np.full(6, 1 / 6), [0.5, 0.5], np.full(4, 0.25)]))
    with torch.no_grad():
        policy.logits["foreground"]["mirror_x"].copy_(torch.tensor([0.0, float("-inf")]))
    shared.update(policy)
    assert shared.version == 4
    assert np.allclose(shared.read(1)[6:8], [1.0, 0.0]) and np.allclose(shared.read(0)[6:8], [0.5, 0.5])


def test_table_follows_a_loaded_state_dict() -> None:
    """A checkpoint loaded into the policy (resume) is what the loader workers sample from, without update()."""
    policy = _policy(init=0)
    shared = SharedPolicyProbabilities(policy)
    trained = _policy(init=0)
    with torch.no_grad():
        trained.logits["foreground"]["mirror_x"].copy_(torch.tensor([0.0, 2.0]))
    assert not np.allclose(shared.read(1), trained.probability_matrix()[1].double().numpy())
    policy.load_state_dict(trained.state_dict())
    np.testing.assert_allclose(shared.read(1), trained.probability_matrix()[1].double().numpy(), atol=1e-7)
    assert shared.version == 4


def test_copies_and_pickled_copies_read_the_same_memory() -> None:
    policy = _policy(init=0)
    shared = SharedPolicyProbabilities(policy)
    assert copy.deepcopy(shared) is shared and copy.copy(shared) is shared
    # what a spawned worker receives: torch's multiprocessing pickler passes the shared storage by handle
    buf = io.BytesIO()
    ForkingPickler(buf).dump(shared)
    clone = ForkingPickler.loads(buf.getvalue())
    assert clone is not shared
    with torch.no_grad():
        policy.logits["background"]["scale"].copy_(torch.tensor([5.0, 0, 0, 0, 0, 0]))
    shared.update(policy)
    assert clone.version == shared.version
    assert np.allclose(clone.read(0), shared.read(0))


def test_sample_bins_follow_the_probabilities() -> None:
    policy = _policy(init=0)
    with torch.no_grad():
        policy.logits["background"]["scale"].copy_(torch.log(torch.tensor([0.5, 0.3, 0.2, 0, 0, 0])))
    shared = SharedPolicyProbabilities(policy)
    rng = np.random.RandomState(0)
    draws = np.stack([shared.sample_bins(0, rng) for _ in range(4000)])
    freq = np.bincount(draws[:, 0], minlength=6) / 4000
    assert np.allclose(freq, [0.5, 0.3, 0.2, 0, 0, 0], atol=0.03)
    assert set(np.unique(draws[:, 1])) == {0, 1}
    assert np.allclose(np.bincount(draws[:, 2], minlength=4) / 4000, 0.25, atol=0.03)


def test_groups_and_errors() -> None:
    shared = SharedPolicyProbabilities(_policy(groups={"bg": [0], "tumour": [2], "rest": None}))
    assert [shared.group_of(c) for c in (0, 1, 2, 7)] == [0, 2, 1, 2]
    with pytest.raises(ValueError, match="no group"):
        SharedPolicyProbabilities(_policy(groups={"bg": [0], "fg": [1]})).group_of(2)
    with pytest.raises(ValueError, match="out of range"):
        shared.read(3)
    with pytest.raises(ValueError, match="ops"):
        shared.update(AugmentationPolicy(groups={"bg": [0], "tumour": [2], "rest": None}))
    with pytest.raises(ValueError, match="class group"):
        shared.update(_policy())
