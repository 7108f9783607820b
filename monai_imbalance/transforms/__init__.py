# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Transforms: class-conditional (asymmetric) augmentation and context-label (CoLab) transforms.

- :class:`RandCropByLabelClassesWithCentreClassd`: MONAI's ``RandCropByLabelClassesd`` that also records, per
  patch, the class its centre was sampled for (``"patch_class"``).
- :class:`ClassConditionalAugmentd`: applies a wrapped augmentation always to rare-class-centred patches and to
  the others with probability ``prob_background`` (Li, Kamnitsas, Glocker, IEEE TMI 2021).

Context label learning (Li, Kamnitsas, Ouyang, Chen, Glocker, IEEE TMI 2023):

- :class:`ContextDistanceMaskd` (:func:`context_distance_mask`): the distance restriction ``M`` of the context labels.
- :class:`KMeansContextLabelsd`, :class:`DilatedRingContextLabelsd`, :class:`RemapContextLabelsd`: k-means,
  dilated-ring and human-defined context labels (baselines); :class:`ContextTargetd` turns them into the
  ``K = C + t - 1`` channel target.
- :class:`CollapseContextChannels` / :class:`CollapseContextChannelsd`: ``K`` channels -> the ``C`` original classes
  at inference (context channels = background).

Inference pre-processing:

- :class:`MetaSafeSpacingd`: MONAI's ``Spacingd`` that leaves entries ``<key>_*`` which are not meta dictionaries
  (MONAI Label's ``image_path``) alone, so ``inference.json`` runs unchanged in a MONAI Label server.
"""

from __future__ import annotations

from .class_conditional import DEFAULT_CLASS_KEY, ClassConditionalAugmentd, RandCropByLabelClassesWithCentreClassd
from .context_labels import (
    CollapseContextChannels,
    CollapseContextChannelsd,
    ContextDistanceMaskd,
    ContextTargetd,
    DilatedRingContextLabelsd,
    KMeansContextLabelsd,
    RemapContextLabelsd,
    context_distance_mask,
    dilated_ring_context_labels,
    kmeans_context_labels,
)
from .policy_augment import DEFAULT_BINS_KEY, DEFAULT_GROUP_KEY, PolicyAugmentd
from .spatial import MetaSafeSpacingd

__all__ = [
    "DEFAULT_BINS_KEY",
    "DEFAULT_CLASS_KEY",
    "DEFAULT_GROUP_KEY",
    "ClassConditionalAugmentd",
    "CollapseContextChannels",
    "CollapseContextChannelsd",
    "ContextDistanceMaskd",
    "ContextTargetd",
    "DilatedRingContextLabelsd",
    "KMeansContextLabelsd",
    "MetaSafeSpacingd",
    "PolicyAugmentd",
    "RandCropByLabelClassesWithCentreClassd",
    "RemapContextLabelsd",
    "context_distance_mask",
    "dilated_ring_context_labels",
    "kmeans_context_labels",
]
