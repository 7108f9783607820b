# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""MONAI components and bundles for class imbalance in medical image segmentation.

The methods of four papers by Li, Kamnitsas, Glocker et al.: asymmetric losses and regularisers ("Analyzing
overfitting under class imbalance in neural networks for image segmentation", IEEE TMI 2021), context label learning
(CoLab, IEEE TMI 2023), joint class-specific training- and test-time augmentation (JCSAugment, IEEE TMI 2023) and
performance estimation with class-specific confidence scores (MICCAI 2022).

Subpackages (each re-exports its public names):

- :mod:`monai_imbalance.augment`: JCSAugment's transformation pools, training- and test-time policies, the shared
  probability table of the loader workers, and the learned-TTA inferer.
- :mod:`monai_imbalance.bundle`: bundle tooling, offline Model Zoo checks (``python -m monai_imbalance.bundle verify``).
- :mod:`monai_imbalance.data`: datalists from MSD ``dataset.json``, training-fraction subsets, input validation,
  the built-in dataset (``python -m monai_imbalance.data prepare``), synthetic phantoms, lesions and domain shifts.
- :mod:`monai_imbalance.engines`: one home per method: a ``SupervisedTrainer`` with asymmetric adversarial and mixup
  steps; CoLab's and JCSAugment's ``iteration_update`` hooks with their learners; the post-hoc test-time policy
  trainer; the one-step look-ahead hypergradient CoLab and JCSAugment share.
- :mod:`monai_imbalance.estimation`: performance estimators (accuracy or Dice from calibrated confidences, global or
  class-specific) and the shift benchmark.
- :mod:`monai_imbalance.evaluation`: per-case, per-class DSC / sensitivity / precision / HD95 tables.
- :mod:`monai_imbalance.experiments`: the (variant x training fraction x seed) comparison tables and their results.
- :mod:`monai_imbalance.handlers`: ignite handlers (evaluation report, atomic checkpoints and resume, logit-margin
  distributions, performance estimation, context-label montages, policy plots, gradient-norm clipping).
- :mod:`monai_imbalance.inspect`: ``python -m monai_imbalance.inspect logits``: logit distributions of a trained model.
- :mod:`monai_imbalance.losses`: margin / focal cross-entropy (symmetric or asymmetric) with Dice, F-beta losses,
  CoLab's soft-target loss and meta-objective.
- :mod:`monai_imbalance.networks`: CoLab's context generator, channel layout and the folding of context channels.
- :mod:`monai_imbalance.transforms`: a class-balanced crop that records each patch's centre class,
  class-conditional augmentation, CoLab's context-label transforms, JCSAugment's policy augmentation and a
  ``Spacingd`` that MONAI Label's inputs pass.
- :mod:`monai_imbalance.utils`: small shared helpers (atomic writes, settings checks, plain tensors, unwrapping DDP,
  the full-resolution head of a network output, extra values in an engine's output, schedule-scaled learning rates).
- :mod:`monai_imbalance.visualize`: plots (logit-margin histograms, context montages, policy evolution, estimation).
"""

from __future__ import annotations

__version__ = "0.1.0"
