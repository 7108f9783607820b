# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Class-conditional (asymmetric) data augmentation.

Li, Kamnitsas, Glocker, "Analyzing overfitting under class imbalance in neural networks for image segmentation", IEEE
TMI 2021 (method section: asymmetric augmentation): with few data and a small foreground class, the network overfits the
rare class. Augmenting every patch that is centred on a rare (foreground) class, while augmenting background-centred
patches only with probability ``p_bg``, spends the augmentation where it regularises the rare class.

The decision needs the class each patch was sampled for. In DeepMedic (Kamnitsas et al., "Efficient multi-scale
3D CNN with fully connected CRF for accurate brain lesion segmentation", Medical Image Analysis 2017) segments are
sampled per category (foreground / background, or per class), and the authors' fork decides ``Augmflag`` from that
sampling category, not from the label found at the segment's centre. Two transforms implement this in MONAI:

- :class:`RandCropByLabelClassesWithCentreClassd` is MONAI's :class:`~monai.transforms.RandCropByLabelClassesd`
  (same sampling, same random stream, same crops) that also writes, into every output sample dict, the class index
  its centre was sampled for (``"patch_class"``, a Python ``int``).
- :class:`ClassConditionalAugmentd` wraps any (random) dict augmentation: it always applies it to patches whose
  ``patch_class`` is foreground (non-zero), or one of ``rare_classes`` when given, and applies it to the other
  patches with probability ``prob_background``. ``prob_background=1`` is ordinary augmentation of every patch.

Typical pipeline (the bundle's ``train#random_transforms``)::

    ClassesToIndicesd (cached) -> RandCropByLabelClassesWithCentreClassd -> SpatialPadd
        -> ClassConditionalAugmentd([RandFlipd, RandScaleIntensityd, RandShiftIntensityd], prob_background=0.5)
        -> DeleteItemsd("patch_class")
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    MapTransform,
    RandCropByLabelClassesd,
    Randomizable,
    RandomizableTransform,
    apply_transform,
)
from monai.transforms.utils import correct_crop_centers, map_classes_to_indices, unravel_index
from monai.utils import MAX_SEED

from monai_imbalance.utils import check_rare_classes

__all__ = ["RandCropByLabelClassesWithCentreClassd", "ClassConditionalAugmentd", "DEFAULT_CLASS_KEY"]

#: The sample-dict key under which the crop records the class each patch's centre was sampled for.
DEFAULT_CLASS_KEY = "patch_class"


class _RecordingRandomState:
    """A stand-in for ``np.random.RandomState`` that delegates every call and records ``choice`` and ``randint``.

    It draws from the wrapped state itself, so the random stream (and therefore every crop) is exactly what MONAI
    produces without it.
    """

    def __init__(self, state: np.random.RandomState) -> None:
        self.state = state
        self.choices: list[np.ndarray] = []
        self.randints: list[int] = []

    def choice(self, *args: Any, **kwargs: Any) -> Any:
        out = self.state.choice(*args, **kwargs)
        self.choices.append(np.asarray(out))
        return out

    def randint(self, *args: Any, **kwargs: Any) -> Any:
        out = self.state.randint(*args, **kwargs)
        self.randints.append(out)
        return out

    def __getattr__(self, name: str) -> Any:
        if name == "state":  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.state, name)


def _spatial_shape(label: NdarrayOrTensor | None, image: NdarrayOrTensor | None) -> tuple[int, ...]:
    """The spatial shape MONAI's sampler uses (pending lazy shape of a MetaTensor, else ``shape[1:]``)."""
    ref = label if label is not None else image
    if ref is None:
        raise ValueError("label or image must be provided to infer the output spatial shape.")
    shape = ref.peek_pending_shape() if isinstance(ref, MetaTensor) else ref.shape[1:]
    return tuple(int(s) for s in shape)


class RandCropByLabelClassesWithCentreClassd(RandCropByLabelClassesd):
    """:class:`monai.transforms.RandCropByLabelClassesd` that records each patch's sampled centre class.

    The sampling is MONAI's own (``generate_label_classes_crop_centers``): a class ``c`` is drawn with the given
    ``ratios``, then a voxel of class ``c`` (from ``indices_key`` or from the label), then the centre is shifted so
    the patch stays inside the image (``correct_crop_centers``; with ``allow_smaller`` a dimension smaller than the
    patch is not cropped). Every output sample dict additionally holds ``class_key`` (default ``"patch_class"``):
    the class ``c`` the sample was **drawn for**, as a Python ``int``.

    Which class is recorded: near the border the shifted centre can land on another class than the one sampled
    (e.g. a lesion voxel in the image corner: the corrected centre lies in background). DeepMedic (Kamnitsas et al.
    2017) and the asymmetric augmentation of Li et al. (IEEE TMI 2021) decide augmentation from the sampling
    category, so the sampled class is recorded. Where no shift happens it equals ``label[centre]``. For a one-hot
    label the class is the channel index the centre was drawn from.

    The class is read exactly, not re-derived: during sampling MONAI's random state is wrapped by a proxy that
    passes every draw through unchanged and records the class draw (``choice``) and the voxel draws (``randint``).
    Each recorded (class, voxel) pair is then checked to reproduce the crop centre MONAI chose; if a future MONAI
    samples differently, a ``RuntimeError`` says so instead of recording wrong classes.

    Args:
        keys: keys of the items to crop, e.g. ``["image", "label"]``; each is ``(C, *spatial)``.
        label_key: key of the label used for sampling, ``(1, *spatial)`` class indices or ``(K, *spatial)``
            one-hot.
        spatial_size: patch size, e.g. ``[48, 48, 48]``; non-positive components take the image size.
        ratios: sampling ratio of every class, background included; ``None``: equal ratios.
        num_classes: number of classes for a class-index label (not needed for one-hot).
        num_samples: patches per input dict.
        image_key: if given (and no ``indices_key``), centres are only drawn where ``image > image_threshold``.
        image_threshold: threshold for ``image_key``.
        indices_key: key of precomputed per-class flat indices (``ClassesToIndicesd``, cached); removed from the
            output as in MONAI.
        allow_smaller: if ``True``, dimensions smaller than the patch are not cropped instead of raising.
        allow_missing_keys: don't raise if one of ``keys`` is missing.
        warn: warn when a class with non-zero ratio is absent.
        max_samples_per_class: subsample each class's indices to this many (memory).
        lazy: MONAI lazy resampling flag.
        class_key: output key of the sampled centre class; must not be one of ``keys``.

    Returns (``__call__``):
        a list of ``num_samples`` dicts; the ``keys`` items are cropped to ``(C, *spatial_size)`` (smaller where
        ``allow_smaller`` applies), every other item is deep-copied, and ``class_key`` holds the sampled class.

    Raises:
        ValueError: if ``class_key`` is one of ``keys``.
        RuntimeError: if MONAI's sampler no longer draws the way this class records it.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str,
        spatial_size: Sequence[int] | int,
        ratios: list[float | int] | None = None,
        num_classes: int | None = None,
        num_samples: int = 1,
        image_key: str | None = None,
        image_threshold: float = 0.0,
        indices_key: str | None = None,
        allow_smaller: bool = False,
        allow_missing_keys: bool = False,
        warn: bool = True,
        max_samples_per_class: int | None = None,
        lazy: bool = False,
        class_key: str = DEFAULT_CLASS_KEY,
    ) -> None:
        super().__init__(
            keys=keys,
            label_key=label_key,
            spatial_size=spatial_size,
            ratios=ratios,
            num_classes=num_classes,
            num_samples=num_samples,
            image_key=image_key,
            image_threshold=image_threshold,
            indices_key=indices_key,
            allow_smaller=allow_smaller,
            allow_missing_keys=allow_missing_keys,
            warn=warn,
            max_samples_per_class=max_samples_per_class,
            lazy=lazy,
        )
        if class_key in self.keys:
            raise ValueError(f"class_key '{class_key}' is also one of the keys to crop {list(self.keys)}.")
        self.class_key = class_key
        #: the classes the last call's centres were sampled for, one per sample.
        self.centre_classes: tuple[int, ...] = ()

    def randomize(
        self,
        label: torch.Tensor | None,
        indices: list[NdarrayOrTensor] | None = None,
        image: torch.Tensor | None = None,
    ) -> None:
        """Draw the crop centres with MONAI's sampler and record the class each was drawn for.

        Args:
            label: ``(1, *spatial)`` class indices or ``(K, *spatial)`` one-hot, or ``None`` with ``indices``.
            indices: per-class flat voxel indices (as from ``ClassesToIndicesd``); computed from ``label`` if
                ``None``, exactly as MONAI does.
            image: optional image restricting centres to ``image > image_threshold`` (only without ``indices``).
        """
        cropper = self.cropper
        if indices is None:
            indices = cropper.indices
        if indices is None:
            if label is None:
                raise ValueError("label must not be None.")
            indices = map_classes_to_indices(
                label, cropper.num_classes, image, cropper.image_threshold, cropper.max_samples_per_class
            )
        recorder = _RecordingRandomState(cropper.R)
        cropper.R = recorder  # type: ignore[assignment]
        try:
            cropper.randomize(label=label, indices=indices, image=image)
        finally:
            cropper.R = recorder.state
        self.centre_classes = self._sampled_classes(recorder, indices, _spatial_shape(label, image))

    def _sampled_classes(
        self, recorder: _RecordingRandomState, indices: Sequence[NdarrayOrTensor], shape: tuple[int, ...]
    ) -> tuple[int, ...]:
        """Check the recorded draws against MONAI's centres and return the sampled class of each."""
        cropper = self.cropper
        centres = cropper.centers or ()
        n = len(centres)
        if len(recorder.choices) != 1 or recorder.choices[0].shape != (n,) or len(recorder.randints) != n:
            raise RuntimeError(
                "MONAI's generate_label_classes_crop_centers no longer draws one class choice and one voxel per "
                f"sample (recorded {len(recorder.choices)} class draws and {len(recorder.randints)} voxel draws for "
                f"{n} samples); RandCropByLabelClassesWithCentreClassd cannot record the sampled classes."
            )
        classes = tuple(int(c) for c in recorder.choices[0])
        for cls, pick, centre in zip(classes, recorder.randints, centres, strict=True):
            voxel = unravel_index(indices[cls][int(pick)], shape).tolist()
            expected = correct_crop_centers(voxel, cropper.spatial_size, shape, cropper.allow_smaller)
            if tuple(int(v) for v in expected) != tuple(int(v) for v in centre):
                raise RuntimeError(
                    f"recorded class {cls} and voxel {voxel} do not reproduce MONAI's crop centre {tuple(centre)}: "
                    "MONAI's sampler changed; RandCropByLabelClassesWithCentreClassd needs updating."
                )
        return classes

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> list[dict[Hashable, Any]]:
        """Crop ``num_samples`` patches and record their sampled centre classes.

        Args:
            data: a dict with the ``keys`` items ``(C, *spatial)``, ``label_key`` and optionally ``indices_key``.
            lazy: override of the lazy flag for this call.

        Returns:
            ``num_samples`` dicts with cropped items and ``class_key`` (an ``int``).
        """
        samples = super().__call__(data, lazy=lazy)
        for sample, cls in zip(samples, self.centre_classes, strict=True):
            sample[self.class_key] = cls
        return samples


def _as_class_index(value: Any, key: Hashable) -> int:
    """An integer class index from an int, a numpy integer, or a one-element array or tensor."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        n = value.size if isinstance(value, np.ndarray) else value.numel()
        if n != 1:
            raise ValueError(
                f"'{key}' must hold one class index per patch, got an array of shape {tuple(value.shape)}."
            )
        value = value.reshape(-1)[0].item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer, float, np.floating)):
        raise ValueError(f"'{key}' must be an integer class index, got {value!r}.")
    if not float(value).is_integer():
        raise ValueError(f"'{key}' must be an integer class index, got {value!r}.")
    return int(value)


class ClassConditionalAugmentd(RandomizableTransform, MapTransform):
    """Apply an augmentation always to rare-class-centred patches, to the others with ``prob_background``.

    Asymmetric augmentation of Li, Kamnitsas, Glocker (IEEE TMI 2021, method section):
    ``augment = (patch class is rare) or U < prob_background`` with ``U ~ U(0, 1)``, decided per patch from the class
    its centre was sampled for (written by :class:`RandCropByLabelClassesWithCentreClassd`), as in the authors'
    DeepMedic (Kamnitsas et al. 2017) fork, which decides from the sampling category.

    Note:
        The released DeepMedic fork writes ``Augmflag = cat_i != 0 or U > probaugmentbackground``; with
        DeepMedic's fore/background sampling the category order is [foreground, background], so read literally
        that line would always augment background and augment foreground with ``1 - p``. This class follows the
        documented intent instead (the fork's config comment "How much probability the background cls gets
        augmented", default 1.0 = every patch augmented, and the nnU-Net branch that replaces the non-foreground
        batch element by a raw one with probability ``1 - p``).

    One uniform number is drawn per patch, whatever its class, so the decision stream does not depend on the class
    sequence; the wrapped transform has its own random state, seeded from this one by :meth:`set_random_state`
    (``monai.data.DataLoader`` calls it in every worker, so ``monai.utils.set_determinism`` makes runs repeatable).

    Args:
        transform: a dict transform, or a list of them (wrapped in :class:`monai.transforms.Compose`), applied to
            the whole sample dict when the patch is augmented; usually random (``RandFlipd``,
            ``RandScaleIntensityd``, ...). Non-``Randomizable`` callables are used as they are.
        prob_background: probability in ``[0, 1]`` of augmenting a patch whose class is not rare; ``1.0``: every
            patch is augmented (ordinary augmentation), ``0.0``: only rare-class patches are.
        class_key: the sample-dict key holding the patch's centre class (an int, or a one-element array/tensor).
        rare_classes: class indices always augmented; ``None``: every non-zero (foreground) class.

    Raises:
        ValueError: if ``prob_background`` is not in ``[0, 1]``, ``rare_classes`` holds a negative or non-integer
            index, or ``transform`` is not callable.
    """

    def __init__(
        self,
        transform: Callable | Sequence[Callable],
        prob_background: float = 1.0,
        class_key: str = DEFAULT_CLASS_KEY,
        rare_classes: int | Iterable[int] | None = None,
    ) -> None:
        try:
            prob = float(prob_background)
        except (TypeError, ValueError):
            raise ValueError(f"prob_background must be a number in [0, 1], got {prob_background!r}.") from None
        if math.isnan(prob) or not 0.0 <= prob <= 1.0:
            raise ValueError(f"prob_background must be in [0, 1], got {prob_background!r}.")
        RandomizableTransform.__init__(self, prob=prob)
        MapTransform.__init__(self, keys=class_key)
        if isinstance(transform, Sequence) and not isinstance(transform, (str, bytes)):
            transforms = list(transform)
            for t in transforms:
                if not callable(t):
                    raise ValueError(f"every element of transform must be callable, got {t!r}.")
            self.transform: Callable = Compose(transforms)
        elif callable(transform):
            self.transform = transform
        else:
            raise ValueError(f"transform must be a callable or a list of callables, got {transform!r}.")
        self.prob_background = prob
        self.class_key = class_key
        self.rare_classes: frozenset[int] | None = (
            None if rare_classes is None else frozenset(check_rare_classes(rare_classes))
        )

    def is_rare(self, patch_class: int) -> bool:
        """Whether a patch of this centre class is always augmented."""
        return patch_class != 0 if self.rare_classes is None else patch_class in self.rare_classes

    @property
    def applied(self) -> bool:
        """Whether the last call applied the wrapped transform."""
        return bool(self._do_transform)

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> ClassConditionalAugmentd:
        """Seed this transform's decisions and, from them, the wrapped transform(s), as ``Compose`` does.

        Args:
            seed: integer seed.
            state: a ``np.random.RandomState`` to use instead.

        Returns:
            self.
        """
        super().set_random_state(seed=seed, state=state)
        if isinstance(self.transform, Randomizable):
            self.transform.set_random_state(seed=int(self.R.randint(MAX_SEED, dtype="uint32")))
        return self

    def randomize(self, data: int) -> None:
        """Decide whether to augment a patch of centre class ``data`` (one uniform draw per call)."""
        draw = self.R.rand()
        self._do_transform = self.is_rare(data) or draw < self.prob

    def __call__(self, data: Mapping[Hashable, Any]) -> Any:
        """Augment one sample dict (or not) according to its centre class.

        Args:
            data: a sample dict, e.g. ``{"image": (C, *spatial), "label": (1, *spatial), "patch_class": int}``.

        Returns:
            the wrapped transform's output if the patch is augmented, else a shallow copy of ``data``.

        Raises:
            KeyError: if ``class_key`` is missing.
        """
        d = dict(data)
        if self.class_key not in d:
            raise KeyError(
                f"ClassConditionalAugmentd needs the patch's centre class under '{self.class_key}', which is missing "
                f"(keys: {list(d)}). Crop with monai_imbalance.transforms.RandCropByLabelClassesWithCentreClassd "
                f"(class_key='{self.class_key}') before this transform."
            )
        self.randomize(_as_class_index(d[self.class_key], self.class_key))
        if not self._do_transform:
            return d
        return apply_transform(self.transform, d)
