# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Engines: a ``SupervisedTrainer`` with extra regularisation steps, and the steps' building blocks.

- :func:`adversarial_perturbation`, :func:`mixup_labels` (and :func:`sample_mixup_lambda`, :func:`mixup_images`,
  :func:`mixup_batch`): asymmetric adversarial training and asymmetric mixup (Li, Kamnitsas, Glocker, "Analyzing
  overfitting under class imbalance in neural networks for image segmentation", IEEE TMI 2021, method section).
- :class:`RegularisedSupervisedTrainer`: the normal step, then optional adversarial and mixup steps, each on the
  augmented or the raw batch; with ``context_labels`` (:class:`ContextLabelLearner`), CoLab's context targets and
  the generator's meta step (Li et al., "Context label learning: improving background class representations in
  semantic segmentation", IEEE TMI 2023, method section), or the baselines' fixed context maps; with
  ``augmentation_policy`` (:class:`AugmentationPolicyLearner`), learned augmentation: the TRA meta step, the TEA step
  and their joint schedule (Li et al., "Joint optimization of class-specific training- and test-time data
  augmentation in segmentation", IEEE TMI 2023, method section).
- :func:`lookahead_hypergradient` (and :func:`per_sample_lookahead_hypergradient`, :func:`apply_hypergradient`,
  :func:`functional_forward`): the one-step look-ahead hypergradient shared by CoLab and learned augmentation.
- :func:`highest_resolution`: the full-resolution logits of a network output (DynUNet deep supervision).
"""

from __future__ import annotations

from monai_imbalance.utils import highest_resolution

from .adversarial import adversarial_perturbation, normalize_per_sample
from .augmentation_policy import AugmentationPolicyLearner, foreground_dice_loss, per_sample_ce_dice
from .context_labels import ContextLabelLearner, ContextTargetLoss
from .lookahead import (
    DEFAULT_RADIUS,
    LOOKAHEAD_METHODS,
    LookaheadResult,
    apply_hypergradient,
    check_lookahead_settings,
    functional_forward,
    lookahead_hypergradient,
    per_sample_lookahead_hypergradient,
)
from .mixup import mixup_batch, mixup_images, mixup_labels, sample_mixup_lambda
from .regularized_trainer import AdversarialConfig, MixupConfig, RegularisedSupervisedTrainer

__all__ = [
    "AdversarialConfig",
    "AugmentationPolicyLearner",
    "ContextLabelLearner",
    "ContextTargetLoss",
    "DEFAULT_RADIUS",
    "LOOKAHEAD_METHODS",
    "LookaheadResult",
    "MixupConfig",
    "RegularisedSupervisedTrainer",
    "adversarial_perturbation",
    "apply_hypergradient",
    "check_lookahead_settings",
    "foreground_dice_loss",
    "functional_forward",
    "highest_resolution",
    "lookahead_hypergradient",
    "mixup_batch",
    "mixup_images",
    "mixup_labels",
    "normalize_per_sample",
    "per_sample_ce_dice",
    "per_sample_lookahead_hypergradient",
    "sample_mixup_lambda",
]
