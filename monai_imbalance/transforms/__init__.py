# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Transforms: class-conditional (asymmetric) augmentation.

- :class:`RandCropByLabelClassesWithCentreClassd`: MONAI's ``RandCropByLabelClassesd`` that also records, per
  patch, the class its centre was sampled for (``"patch_class"``).
- :class:`ClassConditionalAugmentd`: applies a wrapped augmentation always to rare-class-centred patches and to
  the others with probability ``prob_background`` (Li, Kamnitsas, Glocker, IEEE TMI 2021).
"""

from __future__ import annotations

from .class_conditional import DEFAULT_CLASS_KEY, ClassConditionalAugmentd, RandCropByLabelClassesWithCentreClassd

__all__ = [
    "DEFAULT_CLASS_KEY",
    "ClassConditionalAugmentd",
    "RandCropByLabelClassesWithCentreClassd",
]
