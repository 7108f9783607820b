# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
from __future__ import annotations

import json
import logging
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose, LoadImaged

from monai_imbalance.data import (
    DataValidationError,
    ValidateSegmentationPaird,
    data_error_in,
    install_error_summary,
    load_datalist,
    make_phantom_dataset,
    parse_labels,
    read_dataset_json,
)


@pytest.fixture()
def root(tmp_path):
    return make_phantom_dataset(tmp_path, num_training=3, num_validation=1, shape=(10, 10, 10), num_classes=3)


def _write(root, name, array, affine=None):
    path = root / name
    nib.save(nib.Nifti1Image(array, np.diag([2.0, 2.0, 2.0, 1.0]) if affine is None else affine), str(path))
    return str(path)


def _check(root, image, label, labels=3, allow_empty=True):
    load = LoadImaged(keys=["image", "label"], ensure_channel_first=True, image_only=True)
    check = ValidateSegmentationPaird(keys="image", labels=labels, allow_empty_foreground=allow_empty)
    return check(load({"image": image, "label": label}))


@pytest.mark.parametrize(
    "text, match",
    [
        ("{not json", "not valid JSON.*line 1"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"training": []}', "no 'labels' key"),
        ('{"labels": {"0": "background"}}', "no 'training' key"),
        ('{"labels": {"0": "bg", "x": "fg"}, "training": []}', "label key 'x'"),
        ('{"labels": {"0": "bg", "2": "fg"}, "training": []}', "0..C-1"),
        ('{"labels": {"1": "fg"}, "training": []}', "0..C-1"),
        ('{"labels": {"0": "bg", "1": "fg"}, "training": {"a": 1}}', "'training' must be a list"),
        ('{"labels": {"0": "bg", "1": "fg"}, "training": [{"label": "a.nii"}]}', "entry 0 of 'training'"),
    ],
)
def test_malformed_dataset_json_is_named(tmp_path, text, match):
    (tmp_path / "dataset.json").write_text(text)
    with pytest.raises(DataValidationError, match=match) as err:
        read_dataset_json(tmp_path)
    assert str(tmp_path / "dataset.json") in str(err.value)


def test_parse_labels_sorted_ints():
    assert parse_labels({"1": "a", "0": "bg"}) == {0: "bg", 1: "a"}


def test_shape_mismatch_caught_from_headers_and_voxels(root):
    image = _write(root, "img.nii.gz", np.zeros((10, 10, 10), np.float32))
    label = _write(root, "lab.nii.gz", np.zeros((10, 10, 9), np.uint8))
    content = json.loads((root / "dataset.json").read_text())
    content["training"].append({"image": "img.nii.gz", "label": "lab.nii.gz"})
    (root / "dataset.json").write_text(json.dumps(content))
    with pytest.raises(DataValidationError, match=r"lab.nii.gz.*\(10, 10, 9\)") as err:
        load_datalist(root, "training", training_fraction=1.0, validation_fraction=0.25)
    assert "img.nii.gz" in str(err.value)
    with pytest.raises(DataValidationError, match="spatial shape"):
        _check(root, image, label)


def test_affine_mismatch(root):
    image = _write(root, "img.nii.gz", np.zeros((10, 10, 10), np.float32))
    shifted = np.diag([2.0, 2.0, 2.0, 1.0])
    shifted[0, 3] = 5.0
    label = _write(root, "lab.nii.gz", np.zeros((10, 10, 10), np.uint8), affine=shifted)
    with pytest.raises(DataValidationError, match="different affines") as err:
        _check(root, image, label)
    assert "lab.nii.gz" in str(err.value) and "5" in str(err.value)


def test_unexpected_label_values_are_listed(root):
    image = _write(root, "img.nii.gz", np.zeros((10, 10, 10), np.float32))
    lab = np.zeros((10, 10, 10), np.uint8)
    lab[1, 1, 1], lab[2, 2, 2] = 1, 7
    label = _write(root, "lab.nii.gz", lab)
    with pytest.raises(DataValidationError, match=r"lab.nii.gz.*value\(s\) \[7\].*\[0, 1, 2\]"):
        _check(root, image, label)
    frac = np.zeros((10, 10, 10), np.float32)
    frac[0, 0, 0] = 0.5
    with pytest.raises(DataValidationError, match=r"\[0.5\]"):
        _check(root, image, _write(root, "frac.nii.gz", frac))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_intensities(root, bad):
    img = np.zeros((10, 10, 10), np.float32)
    img[3, 3, 3] = bad
    image = _write(root, "img.nii.gz", img)
    label = _write(root, "lab.nii.gz", np.ones((10, 10, 10), np.uint8))
    with pytest.raises(DataValidationError, match=r"img.nii.gz.*1 non-finite"):
        _check(root, image, label)


def test_empty_foreground_warns_or_raises(root, caplog):
    image = _write(root, "img.nii.gz", np.zeros((10, 10, 10), np.float32))
    label = _write(root, "lab.nii.gz", np.zeros((10, 10, 10), np.uint8))
    with caplog.at_level(logging.WARNING):
        out = _check(root, image, label)
    assert "no foreground" in caplog.text and "lab.nii.gz" in caplog.text
    assert torch.equal(torch.as_tensor(out["label"]), torch.zeros(1, 10, 10, 10, dtype=torch.uint8))
    with pytest.raises(DataValidationError, match="no foreground"):
        _check(root, image, label, allow_empty=False)


def test_valid_case_passes_unchanged(root):
    entry = load_datalist(root, "training")[0]
    out = _check(root, entry["image"], entry["label"], labels={"0": "bg", "1": "a", "2": "b"})
    assert out["image"].shape == (1, 10, 10, 10) and int(out["label"].max()) == 2


def test_error_surfaces_through_a_monai_pipeline(root):
    """Inside ``Compose`` MONAI wraps errors; the cause is still our error, naming the file."""
    image = _write(root, "img.nii.gz", np.zeros((10, 10, 10), np.float32))
    lab = np.full((10, 10, 10), 9, np.uint8)
    label = _write(root, "lab.nii.gz", lab)
    pipeline = Compose(
        [
            LoadImaged(keys=["image", "label"], ensure_channel_first=True, image_only=True),
            ValidateSegmentationPaird("image"),
        ]
    )
    with pytest.raises(RuntimeError) as err:
        pipeline({"image": image, "label": label})
    assert isinstance(err.value.__cause__, DataValidationError) and "lab.nii.gz" in str(err.value.__cause__)


def test_a_2d_image_given_to_a_3d_bundle_is_named(root, tmp_path):
    from PIL import Image

    image, label = tmp_path / "slice.png", tmp_path / "slice_seg.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 12), dtype=np.uint8)).save(image)
    Image.fromarray(np.zeros((16, 12), dtype=np.uint8)).save(label)
    load = LoadImaged(keys=["image", "label"], ensure_channel_first=True, image_only=True)
    check = ValidateSegmentationPaird(keys="image", labels=2, spatial_dims=3)
    with pytest.raises(DataValidationError, match=r"image '.*slice\.png' has 2 spatial dimension\(s\) .* takes 3D"):
        check(load({"image": str(image), "label": str(label)}))
    ValidateSegmentationPaird(keys="image", labels=2, spatial_dims=2)(load({"image": str(image), "label": str(label)}))
    entry = load_datalist(root, "training")[0]  # a 3D case passes the 3D check
    ValidateSegmentationPaird(keys="image", labels=3, spatial_dims=3)(
        load({"image": entry["image"], "label": entry["label"]})
    )


def _wrapped_data_error(message: str) -> RuntimeError:
    """A data error as MONAI's config parser raises it: a RuntimeError from the failed expression."""
    try:
        try:
            raise DataValidationError(message)
        except DataValidationError as e:
            raise RuntimeError("Failed to evaluate ConfigExpression: $load_datalist(...)") from e
    except RuntimeError as wrapped:
        return wrapped


def test_data_error_in_follows_causes_and_contexts():
    wrapped = _wrapped_data_error("'x/dataset.json' not found")
    assert str(data_error_in(wrapped)) == "'x/dataset.json' not found"
    try:
        try:
            raise DataValidationError("inner")
        except DataValidationError:
            raise KeyError("during handling")  # noqa: B904  (an implicit __context__, as a handler bug would make)
    except KeyError as e:
        assert str(data_error_in(e)) == "inner"
    assert data_error_in(RuntimeError("unrelated")) is None and data_error_in(None) is None


def test_error_summary_prints_one_line_before_the_traceback(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(sys, "excepthook", lambda *args: calls.append(args))
    install_error_summary()
    install_error_summary()  # idempotent: one wrapper only
    hook = sys.excepthook
    wrapped = _wrapped_data_error("'d/dataset.json' has no 'training' key\n(MSD layout).")
    hook(RuntimeError, wrapped, wrapped.__traceback__)
    assert capsys.readouterr().err == "ERROR: 'd/dataset.json' has no 'training' key (MSD layout).\n"
    assert calls == [(RuntimeError, wrapped, wrapped.__traceback__)]  # then the usual traceback
    other = ValueError("not a data error")
    hook(ValueError, other, None)
    assert capsys.readouterr().err == "" and calls[-1] == (ValueError, other, None)


def test_error_summary_of_an_error_reraised_from_a_loader_worker(monkeypatch, capsys):
    monkeypatch.setattr(sys, "excepthook", lambda *args: None)
    install_error_summary()
    text = (
        "Caught DataValidationError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        "  File \"x.py\", line 1, in f\nmonai_imbalance.data.validation.DataValidationError: label 'a.nii' has 3 values"
    )
    sys.excepthook(DataValidationError, DataValidationError(text), None)
    assert capsys.readouterr().err == "ERROR: label 'a.nii' has 3 values\n"
