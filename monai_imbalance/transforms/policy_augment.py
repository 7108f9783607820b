# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Policy-driven augmentation of a training patch in a loader worker, recording the sampled bins for the meta step.

Li, Kamnitsas, Dou, Qin, Glocker, "Joint optimization of class-specific training- and test-time data augmentation in
segmentation", IEEE TMI 2023 (method section: the class-specific training-time policy). :class:`PolicyAugmentd` runs in
the ``DataLoader`` workers, after :class:`~monai_imbalance.transforms.RandCropByLabelClassesWithCentreClassd` (which
records the class each patch's centre was sampled for, ``"patch_class"``):

1. the patch's class group is looked up (background- vs foreground-centred by default);
2. one bin per operation is drawn from that group's **current** probabilities, read from a
   :class:`~monai_imbalance.augment.SharedPolicyProbabilities` table in shared memory that the trainer updates after
   every policy step (see that module for how the update reaches the worker processes);
3. the values are drawn in the bins' ranges and applied (:class:`~monai_imbalance.augment.TrainingTransformPool`):
   images get every operation, label keys the spatial ones (nearest);
4. the bins (``"policy_bins"``, an ``(O,)`` long tensor) and the group index (``"policy_group"``, an ``int``) are
   written into the sample dict, next to ``"patch_class"``; the default collation stacks them into ``(B, O)`` and
   ``(B,)`` tensors that travel with the batch.

In the main process the meta step recomputes the weights from the batch with gradient::

    w = policy.weights(batch["policy_bins"], batch["policy_group"]).weight     # (B,), value 1

Typical pipeline (``persistent_workers=True`` keeps the workers, and their view of the shared table, alive)::

    shared = SharedPolicyProbabilities(policy)           # before the DataLoader starts its workers
    RandCropByLabelClassesWithCentreClassd(keys, "label", spatial_size=enlarged, ratios=[1, 1], ...)
        -> PolicyAugmentd(["image", "label"], shared, label_keys="label", spatial_size=patch)
    ... after each policy step: shared.update(policy)

The crop may be enlarged (the authors crop larger and rotate / zoom that, so that corners are not padding):
``spatial_size`` is then the final patch size, taken from the centre.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable
from monai.utils import ensure_tuple

from monai_imbalance.augment import SharedPolicyProbabilities
from monai_imbalance.utils import plain_tensor

from .class_conditional import DEFAULT_CLASS_KEY, _as_class_index

__all__ = ["DEFAULT_BINS_KEY", "DEFAULT_GROUP_KEY", "PolicyAugmentd"]

#: The sample-dict key of the sampled bins, ``(O,)`` long.
DEFAULT_BINS_KEY = "policy_bins"
#: The sample-dict key of the patch's class-group index.
DEFAULT_GROUP_KEY = "policy_group"


def _rewrap(out: torch.Tensor, src: Any) -> Any:
    if isinstance(src, MetaTensor):
        return MetaTensor(out, meta=dict(src.meta), applied_operations=list(src.applied_operations))
    if isinstance(src, np.ndarray):
        return out.cpu().numpy()
    return out


class PolicyAugmentd(Randomizable, MapTransform):
    """Augment a patch with bins drawn from the shared current policy and record them (module docstring).

    Args:
        keys: the items to augment, images and labels, each ``(C, X, Y, Z)``.
        probabilities: the shared probability table of the policy (it also carries the pool and the groups).
        label_keys: which of ``keys`` are labels (spatial operations only, nearest interpolation, padded with 0).
        class_key: the sample-dict key of the patch's centre class; may be absent when the policy has a single
            (class-agnostic) group.
        bins_key: output key of the sampled bins.
        group_key: output key of the group index.
        spatial_size: final patch size taken from the centre of an enlarged patch (default: keep the size).
        allow_missing_keys: don't raise if one of ``keys`` is missing.

    Raises:
        ValueError: ``label_keys`` not among ``keys``, output keys that clash with ``keys``, a bad
            ``spatial_size``, or a ``probabilities`` that is not a :class:`SharedPolicyProbabilities`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        probabilities: SharedPolicyProbabilities,
        label_keys: KeysCollection = (),
        class_key: str = DEFAULT_CLASS_KEY,
        bins_key: str = DEFAULT_BINS_KEY,
        group_key: str = DEFAULT_GROUP_KEY,
        spatial_size: Sequence[int] | int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        if not isinstance(probabilities, SharedPolicyProbabilities):
            raise ValueError(
                f"probabilities must be a SharedPolicyProbabilities, got {type(probabilities).__name__}: build it "
                "from the policy with monai_imbalance.augment.SharedPolicyProbabilities(policy)."
            )
        self.probabilities = probabilities
        self.label_keys = tuple(ensure_tuple(label_keys))
        extra = [k for k in self.label_keys if k not in self.keys]
        if extra:
            raise ValueError(f"label_keys {extra} are not among keys {list(self.keys)}.")
        for name, key in (("bins_key", bins_key), ("group_key", group_key)):
            if key in self.keys:
                raise ValueError(f"{name} {key!r} is also one of the keys to augment.")
        self.class_key = class_key
        self.bins_key = bins_key
        self.group_key = group_key
        if spatial_size is not None:
            size = ensure_tuple(spatial_size)
            size = size * 3 if len(size) == 1 else size
            if len(size) != 3 or any(int(s) < 1 for s in size):
                raise ValueError(f"spatial_size must be 3 positive ints, got {spatial_size!r}.")
            self.spatial_size: tuple[int, ...] | None = tuple(int(s) for s in size)
        else:
            self.spatial_size = None
        self._bins: np.ndarray | None = None
        self._values: dict[str, Any] = {}

    @property
    def pool(self):
        """The transformation pool."""
        return self.probabilities.pool

    def randomize(self, data: int) -> None:
        """Draw the bins of a patch of group ``data`` from the current shared probabilities, then their values."""
        self._bins = self.probabilities.sample_bins(int(data), self.R)
        self._values = self.pool.sample_values(self._bins, self.R)

    def _group(self, d: Mapping[Hashable, Any]) -> int:
        if self.class_key in d:
            return self.probabilities.group_of(_as_class_index(d[self.class_key], self.class_key))
        if len(self.probabilities.groups) == 1:
            return 0
        raise KeyError(
            f"PolicyAugmentd needs the patch's centre class under '{self.class_key}' to pick the class group's "
            f"policy (groups {list(self.probabilities.groups)}), but it is missing (keys: {list(d)}). Crop with "
            "monai_imbalance.transforms.RandCropByLabelClassesWithCentreClassd before this transform."
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Augment one sample dict and record its bins and group.

        Args:
            data: ``{"image": (C, X, Y, Z), "label": (1, X, Y, Z), "patch_class": int, ...}``.

        Returns:
            a new dict with the augmented items, ``bins_key`` (``(O,)`` long tensor) and ``group_key`` (``int``).
        """
        d = dict(data)
        group = self._group(d)
        self.randomize(group)
        for key in self.key_iterator(d):
            src = d[key]
            x = plain_tensor(src)
            if key in self.label_keys:
                out = self.pool.apply_label(x, self._values, self.spatial_size)
            else:
                out = self.pool.apply_image(x, self._values, self.spatial_size)
            d[key] = _rewrap(out, src)
        d[self.bins_key] = torch.as_tensor(self._bins, dtype=torch.long)
        d[self.group_key] = int(group)
        return d
