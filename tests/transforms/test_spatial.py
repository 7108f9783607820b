# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
"""``MetaSafeSpacingd`` resamples as MONAI's ``Spacingd`` and passes MONAI Label's ``image_path`` string through."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd, LoadImaged, Orientationd, Spacingd

from monai_imbalance.transforms import MetaSafeSpacingd

PIXDIM = (2.0, 1.5, 3.0)


@pytest.fixture
def loaded(tmp_path) -> dict:
    """A NIfTI image loaded as MONAI Label loads it (``image_only=False``), with the request's ``image_path``."""
    path = tmp_path / "case.nii.gz"
    affine = np.diag([1.25, 1.0, 2.0, 1.0])
    affine[:3, 3] = (10.0, -5.0, 3.0)
    data = np.random.default_rng(0).random((20, 18, 12)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, affine), path)
    d = {"image": str(path), "image_path": str(path), "image_transforms_note": ["kept"], "model": "m"}
    return LoadImaged("image", ensure_channel_first=True, image_only=False)(d)


def test_monai_spacingd_fails_on_monai_labels_image_path(loaded):
    # the reason for the class: MONAI 1.6.1 calls .update on every "image_*" entry (if MONAI fixes this, drop the class)
    with pytest.raises(AttributeError, match="'str' object has no attribute 'update'"):
        Spacingd("image", pixdim=PIXDIM)(dict(loaded))


def test_resamples_as_spacingd_and_keeps_other_entries(loaded):
    expected = Spacingd("image", pixdim=PIXDIM)({k: v for k, v in loaded.items() if k in ("image", "image_meta_dict")})
    out = MetaSafeSpacingd("image", pixdim=PIXDIM)(dict(loaded))
    assert isinstance(out["image"], MetaTensor)
    assert out["image"].shape == expected["image"].shape and out["image"].shape != loaded["image"].shape
    assert torch.equal(out["image"].as_tensor(), expected["image"].as_tensor())
    assert torch.allclose(out["image"].affine, expected["image"].affine)
    assert np.allclose(out["image"].pixdim, PIXDIM)
    # the legacy meta dictionary is refreshed as Spacingd refreshes it
    assert np.allclose(out["image_meta_dict"]["affine"], expected["image_meta_dict"]["affine"])
    assert not np.allclose(out["image_meta_dict"]["affine"], loaded["image"].affine)
    # entries that are not dictionaries pass unchanged
    assert out["image_path"] == loaded["image_path"] and out["image_transforms_note"] == ["kept"]
    assert out["model"] == "m"


def test_inverts_with_invertd(loaded):
    pre = Compose([Orientationd("image", axcodes="RAS"), MetaSafeSpacingd("image", pixdim=PIXDIM)])
    d = pre(dict(loaded))
    d["pred"] = d["image"].clone()
    out = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False)(d)
    assert out["pred"].shape == loaded["image"].shape
    assert torch.allclose(out["pred"].affine, loaded["image"].affine)
    assert out["image_path"] == loaded["image_path"]


def test_missing_keys_allowed(loaded):
    d = {"image_path": "x.nii.gz"}
    assert MetaSafeSpacingd("image", pixdim=PIXDIM, allow_missing_keys=True)(d) == d
    with pytest.raises(KeyError):
        MetaSafeSpacingd("image", pixdim=PIXDIM)(d)
