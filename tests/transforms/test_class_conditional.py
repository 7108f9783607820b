# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""Tests of the class-conditional augmentation (:mod:`monai_imbalance.transforms.class_conditional`).

The crop is checked against the label (every unconstrained centre lies on its recorded class), against MONAI's own
crop (same patches for the same seed) and at the border (the sampled class is recorded, not the class at the shifted
centre). The augmentation wrapper is checked with a marker transform and with real MONAI random transforms, for the
extreme probabilities, a binomial bound at 0.3, seeding, ``monai.data.DataLoader`` workers and a bundle config.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader, Dataset
from monai.transforms import (
    ClassesToIndicesd,
    Compose,
    RandCropByLabelClassesd,
    RandFlipd,
    Randomizable,
    RandShiftIntensityd,
    Transform,
)
from monai.utils import set_determinism

from monai_imbalance.transforms import (
    ClassConditionalAugmentd,
    RandCropByLabelClassesWithCentreClassd,
    class_conditional,
)

SHAPE = (20, 20, 20)
PATCH = (4, 4, 4)


def _case(seed: int = 0) -> dict[str, Any]:
    """A (1, 20, 20, 20) image and a label with class 1 in [6:10]^3 and class 2 in [11:14]^3.

    Both foreground blocks are far from the border, so a background centre shifted inwards by the crop (at most
    ``PATCH // 2`` voxels) stays in background: every centre lies on the class it was sampled for.
    """
    label = torch.zeros((1, *SHAPE), dtype=torch.uint8)
    label[0, 6:10, 6:10, 6:10] = 1
    label[0, 11:14, 11:14, 11:14] = 2
    image = torch.randn((1, *SHAPE), generator=torch.Generator().manual_seed(seed))
    return {"image": image, "label": label}


def _crop(**kwargs: Any) -> RandCropByLabelClassesWithCentreClassd:
    args: dict[str, Any] = {
        "keys": ["image", "label"],
        "label_key": "label",
        "spatial_size": PATCH,
        "num_classes": 3,
        "num_samples": 8,
        "ratios": [1, 1, 1],
    }
    args.update(kwargs)
    return RandCropByLabelClassesWithCentreClassd(**args)


class MarkApplied(Transform):
    """Deterministic marker: sets ``d["augmented"] = True``."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        d["augmented"] = True
        return d


# ----------------------------------------------------------------------------------------------------------------
# the crop


@pytest.mark.parametrize("use_indices", [False, True])
def test_crop_records_class_at_every_centre(use_indices: bool) -> None:
    data = _case()
    label = data["label"][0]
    kwargs: dict[str, Any] = {}
    if use_indices:
        data = ClassesToIndicesd("label", num_classes=3)(data)
        kwargs["indices_key"] = "label_cls_indices"
    crop = _crop(**kwargs).set_random_state(seed=3)
    seen = set()
    for _ in range(20):
        samples = crop(data)
        assert len(samples) == 8
        for s in samples:
            cls = s["patch_class"]
            assert type(cls) is int
            centre = tuple(s["image"].meta["crop_center"])
            assert int(label[centre]) == cls
            assert s["image"].shape == (1, *PATCH) and s["label"].shape == (1, *PATCH)
            # the centre voxel of the label patch is the recorded class (even patch: centre at index size // 2)
            assert int(s["label"][0][tuple(p // 2 for p in PATCH)]) == cls
            assert "label_cls_indices" not in s
            seen.add(cls)
    assert seen == {0, 1, 2}


def test_crop_equals_monai_crop_for_the_same_seed() -> None:
    data = ClassesToIndicesd("label", num_classes=3)(_case())
    args = {
        "keys": ["image", "label"],
        "label_key": "label",
        "spatial_size": PATCH,
        "num_classes": 3,
        "num_samples": 8,
        "indices_key": "label_cls_indices",
    }
    ours = RandCropByLabelClassesWithCentreClassd(**args).set_random_state(seed=11)
    monai_crop = RandCropByLabelClassesd(**args).set_random_state(seed=11)
    for _ in range(5):
        a, b = ours(data), monai_crop(data)
        for sa, sb in zip(a, b, strict=True):
            assert sa["image"].meta["crop_center"] == sb["image"].meta["crop_center"]
            assert torch.equal(sa["image"], sb["image"]) and torch.equal(sa["label"], sb["label"])
            assert set(sa) - set(sb) == {"patch_class"}


def test_crop_records_sampled_class_not_class_at_shifted_centre() -> None:
    """Class 1 only in the corner: the centre is shifted into background, the record stays 1."""
    label = torch.zeros((1, 10, 10), dtype=torch.uint8)
    label[0, 0, 0] = 1
    data = {"image": torch.randn(1, 10, 10), "label": label}
    crop = RandCropByLabelClassesWithCentreClassd(
        ["image", "label"], "label", spatial_size=(6, 6), ratios=[0, 1], num_classes=2, num_samples=4
    ).set_random_state(seed=0)
    for s in crop(data):
        centre = tuple(s["image"].meta["crop_center"])
        assert centre == (3, 3)
        assert int(label[0][centre]) == 0
        assert s["patch_class"] == 1


def test_crop_allow_smaller_records_sampled_class() -> None:
    """A (4, 10) image with patch (8, 8): the first dimension is not cropped, the record is the sampled class."""
    label = torch.zeros((1, 4, 10), dtype=torch.uint8)
    label[0, 0, 9] = 1
    data = {"image": torch.randn(1, 4, 10), "label": label}
    crop = RandCropByLabelClassesWithCentreClassd(
        ["image", "label"],
        "label",
        spatial_size=(8, 8),
        ratios=[1, 1],
        num_classes=2,
        num_samples=16,
        allow_smaller=True,
    ).set_random_state(seed=1)
    samples = crop(data)
    classes = [s["patch_class"] for s in samples]
    assert set(classes) == {0, 1}
    for s in samples:
        assert s["image"].shape == (1, 4, 8)
        if s["patch_class"] == 1:
            assert int(label[0][tuple(s["image"].meta["crop_center"])]) == 0  # shifted off the lesion


def test_crop_one_hot_label() -> None:
    data = _case()
    onehot = torch.stack([data["label"][0] == c for c in range(3)]).to(torch.uint8)
    crop = RandCropByLabelClassesWithCentreClassd(
        ["image", "label"], "label", spatial_size=PATCH, num_samples=8
    ).set_random_state(seed=2)
    for s in crop({"image": data["image"], "label": onehot}):
        centre = tuple(s["image"].meta["crop_center"])
        assert int(onehot[s["patch_class"]][centre]) == 1


def test_crop_is_deterministic_under_seed() -> None:
    data = _case()

    def run(seed: int) -> list[tuple[int, tuple]]:
        crop = _crop().set_random_state(seed=seed)
        return [(s["patch_class"], tuple(s["image"].meta["crop_center"])) for _ in range(3) for s in crop(data)]

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_crop_rejects_class_key_among_keys() -> None:
    with pytest.raises(ValueError, match="'label'"):
        _crop(class_key="label")


def test_crop_detects_changed_monai_sampler(monkeypatch: pytest.MonkeyPatch) -> None:
    """If MONAI stopped drawing one class choice per call, the crop must fail loudly, not record wrong classes."""
    import monai.transforms.croppad.array as croppad_array

    original = croppad_array.generate_label_classes_crop_centers

    def multinomial_sampler(spatial_size, num_samples, shape, indices, ratios=None, rand_state=None, *args, **kw):
        rand_state.multinomial(1, [0.5, 0.5])
        return original(spatial_size, num_samples, shape, indices, ratios, rand_state.state, *args, **kw)

    monkeypatch.setattr(croppad_array, "generate_label_classes_crop_centers", multinomial_sampler)
    with pytest.raises(RuntimeError, match="generate_label_classes_crop_centers"):
        _crop()(_case())


# ----------------------------------------------------------------------------------------------------------------
# the augmentation wrapper


def _patches(classes: list[int]) -> list[dict[str, Any]]:
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.randn(1, 4, 4, 4, generator=g), "patch_class": c} for c in classes]


def test_prob_background_zero_never_augments_background() -> None:
    aug = ClassConditionalAugmentd(MarkApplied(), prob_background=0.0).set_random_state(seed=0)
    for d in _patches([0, 1, 2, 0, 0, 3] * 20):
        out = aug(d)
        assert out.get("augmented", False) == (d["patch_class"] != 0)
        assert aug.applied == (d["patch_class"] != 0)


def test_prob_background_one_always_augments() -> None:
    aug = ClassConditionalAugmentd(MarkApplied(), prob_background=1.0).set_random_state(seed=0)
    assert all(aug(d).get("augmented", False) for d in _patches([0, 1, 0, 2] * 25))


def test_real_random_transform_with_crop() -> None:
    """Crop then a real MONAI augmentation: background patches are untouched, foreground ones always shifted."""
    crop = _crop(num_samples=8).set_random_state(seed=4)
    aug = ClassConditionalAugmentd(
        [RandShiftIntensityd("image", offsets=(1.0, 2.0), prob=1.0), RandFlipd(["image", "label"], prob=0.5)],
        prob_background=0.0,
    ).set_random_state(seed=4)
    assert isinstance(aug.transform, Compose)
    counts = {True: 0, False: 0}
    for _ in range(10):
        for s in crop(_case()):
            before = s["image"].clone()
            out = aug(s)
            changed = not torch.equal(out["image"].as_tensor(), before.as_tensor())
            assert changed == (s["patch_class"] != 0)
            counts[changed] += 1
    assert counts[True] > 0 and counts[False] > 0


def test_rare_classes() -> None:
    aug = ClassConditionalAugmentd(MarkApplied(), prob_background=0.0, rare_classes=[2]).set_random_state(seed=0)
    for d in _patches([0, 1, 2] * 10):
        assert aug(d).get("augmented", False) == (d["patch_class"] == 2)
    assert ClassConditionalAugmentd(MarkApplied(), rare_classes=1).rare_classes == frozenset({1})


def test_background_fraction_close_to_prob() -> None:
    n, p = 4000, 0.3
    aug = ClassConditionalAugmentd(MarkApplied(), prob_background=p).set_random_state(seed=123)
    hits = sum(aug(d).get("augmented", False) for d in _patches([0] * n))
    # 5 standard deviations of a Binomial(n, p) fraction
    assert abs(hits / n - p) <= 5 * math.sqrt(p * (1 - p) / n)


def test_class_value_types() -> None:
    aug = ClassConditionalAugmentd(MarkApplied(), prob_background=0.0)
    for value in (1, np.int64(1), torch.tensor(1), torch.tensor([1]), np.array([1])):
        assert aug({"patch_class": value})["augmented"]
    assert "augmented" not in aug({"patch_class": torch.tensor([0])})
    with pytest.raises(ValueError, match="one class index"):
        aug({"patch_class": torch.tensor([0, 1])})
    with pytest.raises(ValueError, match="integer class index"):
        aug({"patch_class": 0.5})


def test_determinism_under_set_random_state() -> None:
    def run(seed: int) -> tuple[list[bool], list[torch.Tensor]]:
        aug = ClassConditionalAugmentd(
            [RandShiftIntensityd("image", offsets=1.0, prob=1.0), MarkApplied()], prob_background=0.5
        ).set_random_state(seed=seed)
        outs = [aug(d) for d in _patches([0, 1, 0, 0, 2] * 10)]
        return [o.get("augmented", False) for o in outs], [o["image"] for o in outs]

    flags_a, images_a = run(7)
    flags_b, images_b = run(7)
    assert flags_a == flags_b
    assert all(torch.equal(a, b) for a, b in zip(images_a, images_b, strict=True))
    flags_c, images_c = run(8)
    assert flags_c != flags_a or not all(torch.equal(a, c) for a, c in zip(images_a, images_c, strict=True))


def test_set_random_state_forwards_to_wrapped_transforms() -> None:
    inner = RandShiftIntensityd("image", offsets=1.0, prob=1.0)
    aug = ClassConditionalAugmentd(inner)
    assert inner.R is Randomizable.R  # the shared class-level state before seeding
    aug.set_random_state(seed=0)
    assert inner.R is not Randomizable.R and inner.R is not aug.R
    a = ClassConditionalAugmentd([RandShiftIntensityd("image", offsets=1.0, prob=1.0)]).set_random_state(seed=0)
    b = ClassConditionalAugmentd([RandShiftIntensityd("image", offsets=1.0, prob=1.0)]).set_random_state(seed=0)
    assert a.transform.transforms[0].R.randint(1 << 30) == b.transform.transforms[0].R.randint(1 << 30)


def test_missing_class_key_raises_key_error() -> None:
    aug = ClassConditionalAugmentd(MarkApplied(), class_key="centre_class")
    with pytest.raises(KeyError, match="centre_class.*RandCropByLabelClassesWithCentreClassd"):
        aug({"image": torch.zeros(1, 2, 2)})


@pytest.mark.parametrize("prob", [-0.1, 1.5, float("nan"), "high"])
def test_prob_background_out_of_range(prob: Any) -> None:
    with pytest.raises(ValueError, match=f"got {prob!r}".replace("(", r"\(").replace(")", r"\)")):
        ClassConditionalAugmentd(MarkApplied(), prob_background=prob)


@pytest.mark.parametrize("bad", [[-1], [1.5], [True], ["1"]])
def test_bad_rare_classes(bad: Any) -> None:
    with pytest.raises(ValueError, match="rare_classes"):
        ClassConditionalAugmentd(MarkApplied(), rare_classes=bad)


def test_bad_transform() -> None:
    with pytest.raises(ValueError, match="callable"):
        ClassConditionalAugmentd(3)
    with pytest.raises(ValueError, match="callable"):
        ClassConditionalAugmentd([MarkApplied(), 3])


# ----------------------------------------------------------------------------------------------------------------
# pipelines


def _pipeline(prob_background: float) -> Compose:
    return Compose(
        [
            ClassesToIndicesd("label", num_classes=3),
            _crop(num_samples=4, indices_key="label_cls_indices"),
            ClassConditionalAugmentd(
                [RandShiftIntensityd("image", offsets=1.0, prob=1.0), RandFlipd(["image", "label"], prob=0.5)],
                prob_background=prob_background,
            ),
        ]
    )


def _batches(seed: int) -> list[dict[str, torch.Tensor]]:
    set_determinism(seed=seed)
    dataset = Dataset([_case(i) for i in range(6)], transform=_pipeline(0.5))
    loader = DataLoader(dataset, batch_size=2, num_workers=2, shuffle=True)
    return [
        {k: (v.as_tensor() if hasattr(v, "as_tensor") else v) for k, v in b.items()} for _ in range(2) for b in loader
    ]


def test_dataloader_two_workers_is_deterministic() -> None:
    try:
        first, second = _batches(0), _batches(0)
        other = _batches(1)
    finally:
        set_determinism(seed=None)
    assert len(first) == len(second) == 6
    for a, b in zip(first, second, strict=True):
        assert a.keys() == b.keys()
        assert a["image"].shape == (8, 1, *PATCH)
        assert a["patch_class"].shape == (8,)
        for key in ("image", "label", "patch_class"):
            assert torch.equal(a[key], b[key])
    assert any(not torch.equal(a["image"], c["image"]) for a, c in zip(first, other, strict=True))


def test_bundle_config_snippet() -> None:
    config = {
        "num_classes": 3,
        "patch_size": list(PATCH),
        "random_transforms": [
            {
                "_target_": "monai_imbalance.transforms.RandCropByLabelClassesWithCentreClassd",
                "keys": ["image", "label"],
                "label_key": "label",
                "spatial_size": "@patch_size",
                "num_classes": "@num_classes",
                "ratios": "$[@num_classes - 1] + [1] * (@num_classes - 1)",
                "num_samples": 4,
                "indices_key": "label_cls_indices",
                "allow_smaller": True,
                "warn": False,
                "class_key": "patch_class",
            },
            {
                "_target_": "monai_imbalance.transforms.ClassConditionalAugmentd",
                "transform": [
                    {
                        "_target_": "monai.transforms.RandFlipd",
                        "keys": ["image", "label"],
                        "spatial_axis": 0,
                        "prob": 0.5,
                    },
                    {"_target_": "monai.transforms.RandScaleIntensityd", "keys": "image", "factors": 0.1, "prob": 0.5},
                ],
                "prob_background": 0.0,
                "class_key": "patch_class",
            },
            {"_target_": "monai.transforms.DeleteItemsd", "keys": ["label_cls_indices"]},
        ],
    }
    parser = ConfigParser(config)
    transforms = parser.get_parsed_content("random_transforms")
    assert isinstance(transforms[0], RandCropByLabelClassesWithCentreClassd)
    assert isinstance(transforms[1], ClassConditionalAugmentd) and isinstance(transforms[1].transform, Compose)
    pipeline = Compose([ClassesToIndicesd("label", num_classes=3), *transforms]).set_random_state(seed=0)
    for _ in range(3):
        for s in pipeline(_case()):
            assert s["image"].shape == (1, *PATCH) and s["patch_class"] in (0, 1, 2)
            assert "label_cls_indices" not in s


def test_module_exports() -> None:
    assert set(class_conditional.__all__) >= {"ClassConditionalAugmentd", "RandCropByLabelClassesWithCentreClassd"}
