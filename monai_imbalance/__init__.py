# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""MONAI components and bundles for class imbalance in medical image segmentation.

Subpackages (each re-exports its public names):

- :mod:`monai_imbalance.data`: datalists from MSD ``dataset.json``, training-fraction subsets, input validation,
  the built-in dataset (``python -m monai_imbalance.data prepare``) and synthetic phantoms for tests.
- :mod:`monai_imbalance.losses`: margin / focal cross-entropy (symmetric or asymmetric) with Dice, F-beta losses.
- :mod:`monai_imbalance.engines`: asymmetric adversarial and mixup steps, and the trainer that runs them.
- :mod:`monai_imbalance.transforms`: a class-balanced crop that records each patch's centre class, and
  class-conditional augmentation.
- :mod:`monai_imbalance.evaluation`: per-case, per-class DSC / sensitivity / precision / HD95 tables.
- :mod:`monai_imbalance.handlers`: ignite handlers (evaluation report, atomic checkpoints, resume, logit-margin
  distributions).
- :mod:`monai_imbalance.visualize`: plots (logit-margin histograms).
- :mod:`monai_imbalance.inspect`: ``python -m monai_imbalance.inspect logits``: logit distributions of a trained model.
- :mod:`monai_imbalance.experiments`: the (variant x training fraction) comparison table.
"""

from __future__ import annotations

__version__ = "0.1.0"
