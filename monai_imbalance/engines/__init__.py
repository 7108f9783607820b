# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Engines: one trainer or iteration hook per method, and the look-ahead they share.

- :class:`RegularisedSupervisedTrainer` (and :func:`adversarial_perturbation`, :func:`mixup_labels`,
  :func:`sample_mixup_lambda`, :func:`mixup_images`, :func:`mixup_batch`): asymmetric adversarial training and
  asymmetric mixup as extra steps after the normal step (Li, Kamnitsas, Glocker, "Analyzing overfitting under class
  imbalance in neural networks for image segmentation", IEEE TMI 2021, method section).
- :class:`ContextLabelIteration`, :class:`ContextLabelLearner`, :class:`ContextTargetLoss`: CoLab's context targets
  and the generator's meta step, or the baselines' fixed context maps (Li et al., "Context label learning: improving
  background class representations in semantic segmentation", IEEE TMI 2023, method section).
- :class:`AugmentationPolicyIteration`, :class:`TrainingPolicyLearner`, :class:`TestTimePolicyLearner` (and
  :class:`TransformedValidation`, :func:`per_sample_ce_dice`, :func:`foreground_dice_loss`): learned augmentation,
  the joint schedule of the training-time policy's meta step (TRA) and the test-time policy's step (TEA), either of
  which may be absent (Li et al., "Joint optimization of class-specific training- and test-time data augmentation in
  segmentation", IEEE TMI 2023, method section); :class:`TestTimePolicyTrainer`: the test-time policy learned after
  training, on the frozen segmenter (the authors' TEA-only stage).
- :func:`lookahead_hypergradient` (and :func:`per_sample_lookahead_hypergradient`, :func:`apply_hypergradient`,
  :func:`functional_forward`, :func:`step_from_lookahead`): the one-step look-ahead shared by CoLab and learned
  augmentation.

The CoLab and learned-augmentation hooks are a trainer's ``iteration_update`` (MONAI's way to plug a method into
``SupervisedTrainer``): each runs its meta step and then ``engine._iteration``, so they compose with the adversarial
and mixup steps of :class:`RegularisedSupervisedTrainer` where the methods allow it.
"""

from __future__ import annotations

from monai_imbalance.utils import highest_resolution

from .adversarial import adversarial_perturbation, normalize_per_sample
from .augmentation_losses import foreground_dice_loss, per_sample_ce_dice
from .augmentation_policy import AugmentationPolicyIteration
from .context_labels import ContextLabelIteration, ContextLabelLearner, ContextTargetLoss
from .lookahead import (
    DEFAULT_RADIUS,
    LOOKAHEAD_METHODS,
    LookaheadResult,
    LookaheadTrainPass,
    LookaheadTrainStep,
    apply_hypergradient,
    check_lookahead_settings,
    functional_forward,
    lookahead_hypergradient,
    lookahead_step_blockers,
    per_sample_lookahead_hypergradient,
    step_from_lookahead,
)
from .mixup import mixup_batch, mixup_images, mixup_labels, sample_mixup_lambda
from .regularized_trainer import AdversarialConfig, MixupConfig, RegularisedSupervisedTrainer
from .test_time_policy import TestTimePolicyLearner, TransformedValidation
from .test_time_policy_trainer import TestTimePolicyTrainer
from .training_policy import TrainingPolicyLearner

__all__ = [
    "AdversarialConfig",
    "AugmentationPolicyIteration",
    "ContextLabelIteration",
    "ContextLabelLearner",
    "ContextTargetLoss",
    "DEFAULT_RADIUS",
    "LOOKAHEAD_METHODS",
    "LookaheadResult",
    "LookaheadTrainPass",
    "LookaheadTrainStep",
    "MixupConfig",
    "RegularisedSupervisedTrainer",
    "TestTimePolicyLearner",
    "TestTimePolicyTrainer",
    "TrainingPolicyLearner",
    "TransformedValidation",
    "adversarial_perturbation",
    "apply_hypergradient",
    "check_lookahead_settings",
    "foreground_dice_loss",
    "functional_forward",
    "highest_resolution",
    "lookahead_hypergradient",
    "lookahead_step_blockers",
    "mixup_batch",
    "mixup_images",
    "mixup_labels",
    "normalize_per_sample",
    "per_sample_ce_dice",
    "per_sample_lookahead_hypergradient",
    "sample_mixup_lambda",
    "step_from_lookahead",
]
