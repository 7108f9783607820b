# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Engines: a ``SupervisedTrainer`` with extra regularisation steps, and the steps' building blocks.

Li, Kamnitsas, Glocker, "Analyzing overfitting under class imbalance in neural networks for image segmentation",
IEEE TMI 2021 (methods.md 1.4, 1.5, 1.8):

- :func:`adversarial_perturbation`: perturbation of L2 norm ``eps`` per sample, directed by the loss on rare-class
  voxels (all voxels when symmetric).
- :func:`mixup_labels`: mixed one-hot target and loss mask by the rare-label rule (soft labels when symmetric);
  :func:`sample_mixup_lambda`, :func:`mixup_images`, :func:`mixup_batch` mix with the partner ``x.flip(0)``.
- :class:`RegularisedSupervisedTrainer`: the normal step, then optional adversarial and mixup steps, each on the
  augmented or the raw batch, configured from JSON; with ``context_labels`` (:class:`ContextLabelLearner`), CoLab's
  context targets and the generator's meta step every ``meta_interval`` iterations (Li et al., IEEE TMI 2023,
  methods.md 2.2-2.5), or the baselines' fixed context maps.
- :func:`lookahead_hypergradient` (and :func:`per_sample_lookahead_hypergradient`, :func:`apply_hypergradient`,
  :func:`functional_forward`): the one-step look-ahead hypergradient shared by CoLab and learned augmentation (Li et
  al., IEEE TMI 2023; methods.md 2.4, 3.4, 6.4).
- :class:`AugmentationPolicyLearner`: learned augmentation in the trainer (``augmentation_policy=``): the TRA meta
  step, the TEA step and their joint schedule (JCSAugment, Li et al., IEEE TMI 2023; methods.md 3.4-3.6).
"""

from __future__ import annotations

from .adversarial import adversarial_perturbation, normalize_per_sample
from .augmentation_policy import AugmentationPolicyLearner, foreground_dice_loss, per_sample_ce_dice
from .context_labels import ContextLabelLearner, ContextTargetLoss, highest_resolution
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
