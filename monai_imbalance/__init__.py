# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""MONAI components and bundles for class imbalance in medical image segmentation.

Subpackages (each re-exports its public names):

- :mod:`monai_imbalance.data`: datalists from MSD ``dataset.json``, training-fraction subsets, input validation,
  the built-in dataset (``python -m monai_imbalance.data prepare``) and synthetic phantoms for tests.
- :mod:`monai_imbalance.evaluation`: per-case, per-class DSC / sensitivity / precision / HD95 tables.
- :mod:`monai_imbalance.handlers`: ignite handlers (evaluation report, resume from the latest checkpoint).
"""

from __future__ import annotations

__version__ = "0.1.0"
