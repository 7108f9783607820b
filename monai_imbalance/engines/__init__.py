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
  augmented or the raw batch, configured from JSON.
"""

from __future__ import annotations

from .adversarial import adversarial_perturbation, normalize_per_sample
from .mixup import mixup_batch, mixup_images, mixup_labels, sample_mixup_lambda
from .regularized_trainer import AdversarialConfig, MixupConfig, RegularisedSupervisedTrainer

__all__ = [
    "AdversarialConfig",
    "MixupConfig",
    "RegularisedSupervisedTrainer",
    "adversarial_perturbation",
    "mixup_batch",
    "mixup_images",
    "mixup_labels",
    "normalize_per_sample",
    "sample_mixup_lambda",
]
