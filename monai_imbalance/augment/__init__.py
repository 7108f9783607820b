# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Learned class-specific training-time and test-time augmentation (JCSAugment).

Li, Kamnitsas, Dou, Qin, Glocker, "Joint optimization of class-specific training- and test-time data augmentation in
segmentation", IEEE TMI 2023 (JCSAugment), method section:

- :class:`TrainingTransformPool` (:data:`TRAINING_OPS`): the 15 training-time operations and their 62 magnitude
  bins, drawn in ranges and applied in the authors' order, on MONAI array transforms (elementary ops in
  :mod:`~monai_imbalance.augment.ops`).
- :class:`TestTimeTransformPool` (:data:`TEST_TIME_TRANSFORMS`, :data:`NNUNET_MIRRORING`): the 84 signed test-time
  transforms with their inverses and field-of-view coverage.
- :class:`AugmentationPolicy`: one straight-through Gumbel categorical per operation, one policy per class group
  (background- vs foreground-centred patches by default), init presets; :class:`PolicyWeights`.
- :func:`randaugment_probabilities`: RandAugment (``N`` ops at level ``M``) as a fixed policy's ``init``.
- :class:`TestTimePolicy`: one categorical over the test-time transforms.
- :class:`SharedPolicyProbabilities`: the probability table in shared memory that the loader workers read
  (used by :class:`monai_imbalance.transforms.PolicyAugmentd`).
- :class:`LearnedTTAInferer`: top-K learned TTA around any inferer; presets ``"none"`` and ``"mirroring"``.
- :func:`save_policy` / :func:`load_policy` / :func:`describe_policy`: state dict + readable JSON.
- :mod:`~monai_imbalance.augment.gumbel`: the straight-through estimator and the per-bin normalised update.
"""

from __future__ import annotations

from .gumbel import (
    SingletonGroupBaseline,
    backward_per_bin,
    conditional_gumbel,
    per_bin_coefficients,
    sample_straight_through,
    straight_through_given,
)
from .inferer import TTA_PRESETS, LearnedTTAInferer
from .io import describe_policy, load_policy, policy_paths, save_policy
from .policy import DEFAULT_GROUPS, TRAINING_INIT_PRESETS, AugmentationPolicy, PolicyWeights, check_groups
from .randaugment import RANDAUGMENT_LEVELS, randaugment_bins, randaugment_probabilities
from .shared import SharedPolicyProbabilities
from .test_time import TEST_TIME_INIT_PRESETS, TestTimePolicy
from .test_time_pool import NNUNET_MIRRORING, TEST_TIME_TRANSFORMS, TestTimeTransform, TestTimeTransformPool
from .training_pool import TRAINING_OPS, TrainingOp, TrainingTransformPool

__all__ = [
    "DEFAULT_GROUPS",
    "NNUNET_MIRRORING",
    "RANDAUGMENT_LEVELS",
    "TEST_TIME_INIT_PRESETS",
    "TEST_TIME_TRANSFORMS",
    "TRAINING_INIT_PRESETS",
    "TRAINING_OPS",
    "TTA_PRESETS",
    "AugmentationPolicy",
    "LearnedTTAInferer",
    "PolicyWeights",
    "SharedPolicyProbabilities",
    "TestTimePolicy",
    "TestTimeTransform",
    "TestTimeTransformPool",
    "TrainingOp",
    "TrainingTransformPool",
    "backward_per_bin",
    "check_groups",
    "conditional_gumbel",
    "describe_policy",
    "load_policy",
    "per_bin_coefficients",
    "SingletonGroupBaseline",
    "policy_paths",
    "randaugment_bins",
    "randaugment_probabilities",
    "sample_straight_through",
    "save_policy",
    "straight_through_given",
]
