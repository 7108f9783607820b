# Copyright (c) monai-imbalance contributors
# Licensed under the Apache License, Version 2.0 (the "License").
from __future__ import annotations

import json
import os

import pytest

from monai_imbalance.data import (
    DataValidationError,
    holdout_split,
    load_datalist,
    load_evaluation_datalist,
    load_inference_datalist,
    load_labels,
    make_phantom_dataset,
    training_subset,
)

FRACTIONS = (0.05, 0.1, 0.2, 0.5, 1.0)


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    return make_phantom_dataset(tmp_path_factory.mktemp("ph"), num_training=6, num_validation=2, shape=(12, 12, 12))


def test_training_subsets_are_nested_deterministic_and_sized():
    cases = [f"case_{i:03d}" for i in range(40)]
    for seed in (0, 1, 7):
        subsets = [training_subset(cases, f, seed) for f in FRACTIONS]
        assert [len(s) for s in subsets] == [2, 4, 8, 20, 40]
        for small, large in zip(subsets, subsets[1:], strict=False):
            assert set(small) <= set(large)
        assert subsets == [training_subset(cases, f, seed) for f in FRACTIONS]  # same seed, same cases
        assert all(s == sorted(s) for s in subsets)  # original order kept
    assert training_subset(cases, 0.2, 0) != training_subset(cases, 0.2, 1)  # the seed matters
    assert training_subset(cases[:3], 0.05, 0) and len(training_subset(cases[:3], 0.05, 0)) == 1  # never empty


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, float("nan")])
def test_training_subset_rejects_bad_fractions(fraction):
    with pytest.raises(DataValidationError, match="training_fraction"):
        training_subset(list(range(10)), fraction)


def test_holdout_split_partitions_and_is_deterministic():
    cases = list(range(25))
    train, val = holdout_split(cases, 0.2, seed=3)
    assert len(val) == 5 and sorted(train + val) == cases and not set(train) & set(val)
    assert (train, val) == holdout_split(cases, 0.2, seed=3)
    with pytest.raises(DataValidationError, match="cannot hold out"):
        holdout_split([1], 0.2)


def test_load_datalist_splits_and_absolute_paths(phantom_dir):
    train = load_datalist(phantom_dir, "training")
    val = load_datalist(phantom_dir, "validation")
    test = load_datalist(phantom_dir, "test", require_label=True)
    assert (len(train), len(val), len(test)) == (6, 2, 2)
    for entry in train + val + test:
        assert os.path.isabs(entry["image"]) and os.path.isfile(entry["label"])
    assert not {e["image"] for e in train} & {e["image"] for e in val}
    half = load_datalist(phantom_dir, "training", training_fraction=0.5, seed=0)
    assert len(half) == 3 and all(e in train for e in half)
    assert load_labels(phantom_dir) == {0: "background", 1: "class_1"}


def test_validation_held_out_of_training_when_missing(tmp_path):
    root = make_phantom_dataset(tmp_path, num_training=10, num_validation=0, shape=(10, 10, 10))
    train = load_datalist(root, "training", validation_fraction=0.2, seed=0)
    val = load_datalist(root, "validation", validation_fraction=0.2, seed=0)
    assert len(train) == 8 and len(val) == 2
    assert not {e["image"] for e in train} & {e["image"] for e in val}
    # the validation cases do not depend on the training fraction
    assert val == load_datalist(root, "validation", training_fraction=0.1, seed=0)
    assert set(e["image"] for e in load_datalist(root, "training", 0.5)) <= set(e["image"] for e in train)


def test_evaluation_datalist_tags_splits_and_skips_missing(phantom_dir, tmp_path, caplog):
    entries = load_evaluation_datalist(phantom_dir, ("test", "external"))
    assert [e["split"] for e in entries] == ["test", "test", "external"]
    root = make_phantom_dataset(tmp_path, num_training=2, num_validation=1, num_external=0, shape=(10, 10, 10))
    assert [e["split"] for e in load_evaluation_datalist(root, ("test", "external"))] == ["test", "test"]
    assert "no 'external'" in caplog.text
    with pytest.raises(DataValidationError, match="external"):
        load_evaluation_datalist(root, ("external",), skip_missing=False)


def _edit_dataset_json(root, edit):
    path = root / "dataset.json"
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(content))


def test_missing_files_are_named(tmp_path):
    root = make_phantom_dataset(tmp_path, num_training=3, num_validation=1, shape=(10, 10, 10))
    missing = root / "labelsTr" / "phantom_001.nii.gz"
    missing.unlink()
    with pytest.raises(DataValidationError, match="phantom_001.nii.gz") as err:
        load_datalist(root, "training")
    assert "1 file(s) not found" in str(err.value) and "dataset.json" in str(err.value)


def test_unlabelled_test_split_needs_labels_for_evaluation(tmp_path):
    root = make_phantom_dataset(tmp_path, num_training=3, num_validation=1, shape=(10, 10, 10))
    _edit_dataset_json(root, lambda c: c.__setitem__("test", [e["image"] for e in c["test"]]))  # MSD style
    assert len(load_datalist(root, "test")) == 2  # images only: fine for inference
    with pytest.raises(DataValidationError, match="has no 'label'"):
        load_evaluation_datalist(root, ("test",))


def test_unknown_split_and_missing_dataset(tmp_path):
    with pytest.raises(DataValidationError, match="does not exist"):
        load_datalist(tmp_path / "nowhere")
    with pytest.raises(DataValidationError, match="dataset.json"):
        load_datalist(tmp_path)
    root = make_phantom_dataset(tmp_path / "d", num_training=2, num_validation=1, shape=(10, 10, 10))
    with pytest.raises(DataValidationError, match="unknown split"):
        load_datalist(root, "train")


def test_inference_datalist_reads_the_nifti_files_of_a_folder(tmp_path):
    for name in ("b.nii.gz", "a.nii", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.nii.gz").mkdir()  # a folder named like an image is not one
    assert load_inference_datalist(tmp_path) == [{"image": str(tmp_path / n)} for n in ("a.nii", "b.nii.gz")]


@pytest.mark.parametrize(
    "files, message",
    [
        (None, r"input folder '.*missing' does not exist \(inference reads \*\.nii, \*\.nii\.gz\)"),
        ([], r"has no images to segment: inference reads \*\.nii, \*\.nii\.gz; it is empty"),
        (["a.nrrd", "b.nrrd"], r"has no images to segment: .* it holds 2 other entries, e.g. a\.nrrd, b\.nrrd"),
    ],
)
def test_inference_input_problems_are_named_in_one_line(tmp_path, files, message):
    folder = tmp_path / "missing"
    if files is not None:
        folder.mkdir()
        for name in files:
            (folder / name).write_bytes(b"")
    with pytest.raises(DataValidationError, match=message) as info:
        load_inference_datalist(folder)
    assert "\n" not in str(info.value)
